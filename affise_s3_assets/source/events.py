"""The events' Dagster resource: where the events are (`path`: a DuckDB file or a Parquet
dataset) and how they are read. Each call goes to the one `EventSource` its location is
(duckdb_file.py, parquet_source.py, the latter imported only for a dataset: a DuckDB file's runs
never load pyarrow).

Knows Dagster's config and which location is which kind of source; no SQL, nor how a file or
a dataset is read.
"""

import os
from collections.abc import Iterator
from contextlib import AbstractContextManager
from datetime import datetime
from pathlib import Path

import dagster as dg
import polars as pl
from pydantic import Field

from affise_s3_assets.config.schema import EventType
from affise_s3_assets.source import is_remote
from affise_s3_assets.source.completeness import SourceProgress
from affise_s3_assets.source.duckdb_file import DuckDBFile
from affise_s3_assets.source.protocol import EventSource
from affise_s3_assets.source.window_read import ReadSettings, SourceRead

DEFAULT_EVENTS_DB = Path(__file__).resolve().parents[2] / "data" / "events.duckdb"


class EventsDatabase(dg.ConfigurableResource):
    """The DuckDB events database (tables `clicks` and `conversions`, see schema.sql)."""

    path: str | None = Field(
        default=None,
        description="a DuckDB file, or a Hive-partitioned Parquet dataset (clicks/date="
        "YYYY-MM-DD/*.parquet, conversions/...) in a directory or at s3://bucket/prefix; "
        "unset means $AFFISE_EVENTS_DB, then data/events.duckdb",
    )
    batch_rows: int = Field(
        default=25_000,
        description="rows per piece handed to the export (which cuts them smaller when few "
        "integrations share a run)",
    )
    # A slice is fetched, converted and sorted (about three copies in flight): each halving
    # saves peak RSS at about the same speed down to 25k rows; below that, per-query cost
    # shows (docs/design.md, "Tuning choices").
    slice_rows: int = Field(
        default=25_000,
        description="rows DuckDB sorts at a time: a window is read as consecutive sub-windows "
        "of about this many rows, each sorted, so sorting memory does not grow with the window",
    )
    # Unset, it depends on the source. A DuckDB file's blocks are read once and sorted in
    # polars, so DuckDB's cache buys nothing: 16 MB is less RSS at the same speed. The Parquet
    # reader decodes whole column chunks in DuckDB memory, which needs room for the dataset's
    # largest row group (16 MB fails on 122,880-row groups).
    memory_limit: str | None = Field(
        default=None,
        description="DuckDB memory_limit; unset: 16MB for a DuckDB file, 256MB for a Parquet "
        "dataset",
    )
    # A slice is smaller than one DuckDB row group (122,880 rows), which one thread scans; a
    # second thread only adds its own buffers.
    threads: int = Field(default=1, description="DuckDB threads")

    def location(self) -> str:
        # Read at run time, not at import, so definitions load the same everywhere.
        return str(self.path or os.environ.get("AFFISE_EVENTS_DB") or DEFAULT_EVENTS_DB)

    def source(self) -> EventSource:
        """The source the location is now: a Parquet dataset (a folder, or s3://), else a
        DuckDB file."""
        location = self.location()
        settings = ReadSettings(self.batch_rows, self.slice_rows, self.memory_limit, self.threads)
        if is_remote(location) or Path(location).is_dir():
            from affise_s3_assets.source.parquet_source import ParquetSource

            return ParquetSource.open(location, settings)
        return DuckDBFile(Path(location), settings)

    def progress(self, event_type: EventType) -> SourceProgress:
        """How far the source is complete for `event_type` (`EventSource.progress`)."""
        return self.source().progress(event_type)

    def read(
        self, event_type: EventType, start: datetime, end: datetime
    ) -> AbstractContextManager[SourceRead]:
        """One connection for the range [start, end): its fingerprints and its rows, read from
        one state of the source (`EventSource.read`)."""
        return self.source().read(event_type, start, end)

    def window_frames(
        self, event_type: EventType, start: datetime, end: datetime
    ) -> Iterator[pl.DataFrame]:
        """Yield the window's rows in order, a bounded batch at a time (see `SourceRead`)."""
        with self.read(event_type, start, end) as source:
            yield from source.frames()
