"""A DuckDB events file as a source (tables `clicks` and `conversions` and the watermarks' table,
schema.sql): how far it is complete, one range of it read through one connection, and the
connection a loader writes it through, waiting out another process's lock.

Knows DuckDB and the file; nothing of Parquet, pyarrow or S3.
"""

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import duckdb

from affise_s3_assets.config.schema import EventType
from affise_s3_assets.source.completeness import (
    WATERMARK_TABLE,
    SourceProgress,
    future_horizon,
    naive_utc,
    progress_with_creation,
)
from affise_s3_assets.source.event_types import EVENT_TABLE, WINDOW_COLUMN
from affise_s3_assets.source.window_read import ReadSettings, SourceRead, configure

# DuckDB lets one process write a file and no other open it meanwhile: a reader that meets
# the loader's write lock (or the loader meeting a reader's) waits for it, up to this long.
# Loaders should hold their write connection only while writing.
FILE_LOCK_WAIT = timedelta(seconds=30)


def connect_events_file(
    path: str | Path, read_only: bool = True, wait: timedelta = FILE_LOCK_WAIT
) -> duckdb.DuckDBPyConnection:
    """A connection to a DuckDB events file, waiting for another process's lock on it to be
    released (at most `wait`) rather than failing at once."""
    deadline = time.monotonic() + wait.total_seconds()
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.IOException as exc:
            if "could not set lock" not in str(exc).lower() or time.monotonic() >= deadline:
                raise
        time.sleep(0.1)


@dataclass(frozen=True)
class DuckDBFile:
    """The events of one DuckDB file (an `EventSource`)."""

    path: Path
    settings: ReadSettings

    def _connect(self) -> duckdb.DuckDBPyConnection:
        if not self.path.exists():
            raise FileNotFoundError(f"events database {self.path} does not exist")
        # Its blocks are read once and sorted in polars: DuckDB's cache buys nothing.
        return configure(connect_events_file(self.path), self.settings, "16MB")

    def progress(self, event_type: EventType) -> SourceProgress:
        """How far the file is complete for `event_type` (`progress_with_creation`)."""
        return progress_with_creation(event_type, self._progress)

    def _progress(self, event_type: EventType, latest: bool) -> SourceProgress | None:
        """The watermark's progress, or else (with `latest`) the latest event's; without
        `latest`, None when there is no watermark."""
        if not self.path.exists():
            return SourceProgress(event_type, None, f"{self.path} does not exist")
        with self._connect() as con:
            ((has_table,),) = con.execute(
                "SELECT count(*) FROM information_schema.tables WHERE table_name = $1",
                [WATERMARK_TABLE],
            ).fetchall()
            if has_table:
                row = con.execute(
                    f"SELECT complete_until FROM {WATERMARK_TABLE} WHERE event_type = $1",
                    [event_type],
                ).fetchone()
                if row is not None:
                    return SourceProgress(event_type, naive_utc(row[0]), "watermark")
            if not latest:
                return None
            column = WINDOW_COLUMN[event_type]
            ((found,),) = con.execute(
                f"SELECT max({column}) FROM {EVENT_TABLE[event_type]} WHERE {column} <= $1",
                [future_horizon()],
            ).fetchall()
        if found is None:
            return SourceProgress(event_type, None, f"no {event_type} in {self.path}")
        return SourceProgress(event_type, naive_utc(found), "latest event")

    @contextmanager
    def read(self, event_type: EventType, start: datetime, end: datetime) -> Iterator[SourceRead]:
        """One connection for the range [start, end): its fingerprints and its rows, read from
        one state of the file (no loader can write to it while it is open)."""
        # The columns are naive UTC TIMESTAMPs; binding an aware datetime would make DuckDB
        # compare through the session time zone.
        start, end = naive_utc(start), naive_utc(end)
        with self._connect() as con:
            yield SourceRead(self.settings, con, event_type, start, end, None)
