"""A Hive-partitioned Parquet events dataset as a source (a folder, or s3://bucket/prefix, whose
files parquet_dataset.py reaches): how far it is complete, from its watermark file or else its
newest day's files, and one range of it read by DuckDB from the files of the range's days (an
s3:// dataset's staged first, for as long as the read lasts).

Imports pyarrow (through parquet_dataset.py): only a dataset's runs load this module. Knows
DuckDB's read_parquet and the dataset's day folders; nothing of DuckDB files, nor of how a
store is listed or its objects fetched.
"""

import itertools
import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import duckdb

from affise_s3_assets.config.schema import EventType
from affise_s3_assets.source.completeness import (
    WATERMARK_FILE,
    SourceProgress,
    future_horizon,
    naive_utc,
    progress_with_creation,
)
from affise_s3_assets.source.event_types import EVENT_TABLE, WINDOW_COLUMN
from affise_s3_assets.source.parquet_dataset import DatasetUnreadable, ParquetDataset
from affise_s3_assets.source.window_read import ReadSettings, SourceRead, configure


def parquet_files(
    dataset: Path | ParquetDataset, event_type: EventType, start: datetime, end: datetime
) -> list[str]:
    """The files of a Hive-partitioned dataset (`<table>/date=YYYY-MM-DD/*.parquet`, days of
    created_at) that can hold rows of [start, end): only the window's days are opened (one
    listing of each day's folder). A conversion changed in the window may have been created
    any day before: every day up to the window's last (DuckDB skips row groups by their
    updated_at statistics)."""
    store = dataset if isinstance(dataset, ParquetDataset) else ParquetDataset.local(dataset)
    last = end - timedelta(microseconds=1)
    table = EVENT_TABLE[event_type]
    if WINDOW_COLUMN[event_type] != "created_at":
        days = [day for day, _ in store.day_folders(table) if day <= f"{last:%Y-%m-%d}"]
    else:
        count = (last.date() - start.date()).days + 1
        days = [f"{start.date() + timedelta(days=i):%Y-%m-%d}" for i in range(count)]
    return [file for day in days for file in store.files(table, day)]


@dataclass(frozen=True)
class ParquetSource:
    """The events of one Parquet dataset (an `EventSource`)."""

    dataset: ParquetDataset
    settings: ReadSettings

    @classmethod
    def open(cls, location: str | Path, settings: ReadSettings) -> "ParquetSource":
        return cls(ParquetDataset.open(location), settings)

    def _connect(self) -> duckdb.DuckDBPyConnection:
        # No database: an in-memory connection reads the files. DuckDB's Parquet reader
        # decodes whole column chunks in its memory: room for the largest row group.
        return configure(duckdb.connect(), self.settings, "256MB")

    def progress(self, event_type: EventType) -> SourceProgress:
        """How far the dataset is complete for `event_type` (`progress_with_creation`)."""
        return progress_with_creation(event_type, self._progress)

    def _progress(self, event_type: EventType, latest: bool) -> SourceProgress | None:
        """The watermark's progress, or else (with `latest`) the latest event's; without
        `latest`, None when there is no watermark. A store that cannot be read has none."""
        try:
            if not self.dataset.exists():
                return SourceProgress(event_type, None, f"{self.dataset.uri} does not exist")
            return self._dataset_progress(event_type, latest)
        except DatasetUnreadable as exc:
            return SourceProgress(event_type, None, str(exc))

    def _dataset_progress(self, event_type: EventType, latest: bool) -> SourceProgress | None:
        dataset = self.dataset
        try:
            text = dataset.read_text(WATERMARK_FILE)
            value = json.loads(text).get(event_type) if text is not None else None
            if value is not None:
                moment = datetime.strptime(value, "%Y-%m-%d %H:%M:%S")
                return SourceProgress(event_type, moment, "watermark")
        except (OSError, ValueError, AttributeError) as exc:
            where = f"{dataset.uri.rstrip('/')}/{WATERMARK_FILE}"
            return SourceProgress(event_type, None, f"{where} is unreadable: {exc}")
        if not latest:
            return None
        horizon = future_horizon()
        # A day folder missing between others has not arrived: complete up to it, at most.
        # Folders of days after the clock's are not taken for progress (FUTURE_EVENT_SKEW).
        table = EVENT_TABLE[event_type]
        days, dates = [], []
        for day, _ in dataset.day_folders(table):
            try:
                date = datetime.strptime(day, "%Y-%m-%d")
            except ValueError:
                continue
            # On S3 a folder is there only while objects are: no listing of each one.
            if date <= horizon and (dataset.remote or dataset.files(table, day)):
                days.append(day)
                dates.append(date)
        for earlier, later in itertools.pairwise(dates):
            if later - earlier > timedelta(days=1):
                gap = earlier + timedelta(days=1)
                return SourceProgress(event_type, gap, f"day folder date={gap:%Y-%m-%d} missing")
        # The newest day holds the latest creation (updates go by the conversions': above).
        column = WINDOW_COLUMN[event_type]
        for day in reversed(days):
            files = dataset.files(table, day)
            if not files:
                continue
            if dataset.remote:
                # From the footers' statistics: no day's rows are fetched for it.
                found = dataset.latest(files, column, horizon)
            else:
                with self._connect() as con:
                    ((found,),) = con.execute(
                        f"SELECT max({column}) FROM {_read_parquet(files)} WHERE {column} <= $1",
                        [horizon],
                    ).fetchall()
            if found is not None:
                return SourceProgress(event_type, naive_utc(found), "latest event")
        return SourceProgress(event_type, None, f"no {event_type} in dataset {dataset.uri}")

    @contextmanager
    def read(self, event_type: EventType, start: datetime, end: datetime) -> Iterator[SourceRead]:
        """One connection for the range [start, end): its fingerprints and its rows, read from
        the files of its days as they were listed when it began."""
        # The columns are naive UTC TIMESTAMPs; binding an aware datetime would make DuckDB
        # compare through the session time zone.
        start, end = naive_utc(start), naive_utc(end)
        if not self.dataset.exists():
            raise FileNotFoundError(f"events dataset {self.dataset.uri} does not exist")
        files = parquet_files(self.dataset, event_type, start, end)
        if not files:
            yield SourceRead(self.settings, None, event_type, start, end, None)
            return
        column = WINDOW_COLUMN[event_type]
        with self._connect() as con, self._local(files, column, start, end) as local:
            yield SourceRead(self.settings, con, event_type, start, end, _read_parquet(local))

    @contextmanager
    def _local(
        self, files: list[str], column: str, start: datetime, end: datetime
    ) -> Iterator[list[str]]:
        """The files as DuckDB reads them for `column` in [start, end): a local dataset's own;
        an `s3://` dataset's staged, for as long as the read lasts (ParquetDataset.stage)."""
        if not self.dataset.remote:
            yield files
            return
        with tempfile.TemporaryDirectory(prefix="affise-events-") as scratch:
            yield self.dataset.stage(files, column, start, end, Path(scratch))


def _read_parquet(files: list[str]) -> str:
    quoted = ", ".join("'" + file.replace("'", "''") + "'" for file in files)
    return f"read_parquet([{quoted}])"
