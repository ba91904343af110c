"""The loader: reads one window of raw events out of DuckDB. Knows DuckDB, nothing of S3."""

import itertools
import json
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, overload

import dagster as dg
import duckdb
import polars as pl
from pydantic import Field

from affise_s3_assets.config.schema import EventType
from affise_s3_assets.source import is_remote

if TYPE_CHECKING:  # imported where used: a DuckDB file's runs never load pyarrow (~26 MB RSS)
    from affise_s3_assets.source.parquet_dataset import ParquetDataset
from affise_s3_assets.source.completeness import (
    WATERMARK_FILE,
    WATERMARK_TABLE,
    SourceProgress,
    future_horizon,
    naive_utc,
)
from affise_s3_assets.source.event_types import (
    CREATED_WITH,
    EVENT_TABLE,
    WINDOW_COLUMN,
    row_order,
    window_query,
)
from affise_s3_assets.source.fingerprint import (
    DIGEST_MODULUS,
    FINGERPRINT_GROUPS,
    FilterKey,
    Fingerprint,
    canonical_hash,
)

DEFAULT_EVENTS_DB = Path(__file__).resolve().parents[2] / "data" / "events.duckdb"


def parquet_files(
    dataset: "Path | ParquetDataset", event_type: EventType, start: datetime, end: datetime
) -> list[str]:
    """The files of a Hive-partitioned dataset (`<table>/date=YYYY-MM-DD/*.parquet`, days of
    created_at) that can hold rows of [start, end): only the window's days are opened (one
    listing of each day's folder). A conversion changed in the window may have been created
    any day before: every day up to the window's last (DuckDB skips row groups by their
    updated_at statistics)."""
    from affise_s3_assets.source.parquet_dataset import ParquetDataset

    store = dataset if isinstance(dataset, ParquetDataset) else ParquetDataset.local(dataset)
    last = end - timedelta(microseconds=1)
    table = EVENT_TABLE[event_type]
    if WINDOW_COLUMN[event_type] != "created_at":
        days = [day for day, _ in store.day_folders(table) if day <= f"{last:%Y-%m-%d}"]
    else:
        count = (last.date() - start.date()).days + 1
        days = [f"{start.date() + timedelta(days=i):%Y-%m-%d}" for i in range(count)]
    return [file for day in days for file in store.files(table, day)]


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

    def dataset(self) -> "ParquetDataset | None":
        """The Parquet dataset the events are, None for a DuckDB file."""
        location = self.location()
        if is_remote(location) or Path(location).is_dir():
            from affise_s3_assets.source.parquet_dataset import ParquetDataset

            return ParquetDataset.open(location)
        return None

    def _connect(self, dataset: "ParquetDataset | None") -> duckdb.DuckDBPyConnection:
        # A Parquet dataset needs no database: an in-memory connection reads the files.
        if dataset is None:
            path = Path(self.location())
            if not path.exists():
                raise FileNotFoundError(f"events database {path} does not exist")
            con = connect_events_file(path)
        else:
            con = duckdb.connect()
        memory_limit = self.memory_limit or ("16MB" if dataset is None else "256MB")
        con.execute(f"SET memory_limit = '{memory_limit}'")
        con.execute(f"SET threads = {int(self.threads)}")
        con.execute("SET preserve_insertion_order = false")
        # Window bounds are naive UTC. A source storing instants (TIMESTAMPTZ, Parquet written
        # with a time zone) is compared and printed in the session zone, which must not be
        # the host's.
        con.execute("SET TimeZone = 'UTC'")
        spill = f"{tempfile.gettempdir()}/affise-duckdb-spill"
        # Connections to one file share one database, whose spill directory cannot change
        # once something has spilled: set it only when it differs.
        ((current,),) = con.execute("SELECT current_setting('temp_directory')").fetchall()
        if current != spill:
            con.execute(f"SET temp_directory = '{spill}'")
        return con

    def progress(self, event_type: EventType) -> SourceProgress:
        """How far the source is complete: its watermark, or else its latest event (a source
        holding events at or after a window's end has moved past it). Every conversion is a
        change at its creation too: conversion_updates are complete no further than the
        conversions are."""
        if WINDOW_COLUMN[event_type] == "created_at":
            return self._progress(event_type)
        created = CREATED_WITH[event_type]
        base = self._progress(created)
        # Without a watermark of its own, its latest change is never before the latest
        # creation (updated_at >= created_at, same rows): the conversions' progress is it,
        # and scanning every change for it would only cost a full scan.
        own = self._progress(event_type, latest=False)
        if base.complete_until is None:
            return SourceProgress(event_type, None, base.how)
        if own is None:
            return SourceProgress(event_type, base.complete_until, f"{created}' {base.how}")
        if own.complete_until is None or own.complete_until <= base.complete_until:
            return own
        return SourceProgress(
            event_type, base.complete_until, f"{created}' {base.how}, before its own {own.how}"
        )

    @overload
    def _progress(self, event_type: EventType) -> SourceProgress: ...
    @overload
    def _progress(self, event_type: EventType, latest: bool) -> SourceProgress | None: ...

    def _progress(self, event_type: EventType, latest: bool = True) -> SourceProgress | None:
        """The watermark's progress, or else (with `latest`) the latest event's; without
        `latest`, None when there is no watermark."""
        dataset = self.dataset()
        if dataset is not None:
            from affise_s3_assets.source.parquet_dataset import DatasetUnreadable

            try:
                if not dataset.exists():
                    return SourceProgress(event_type, None, f"{dataset.uri} does not exist")
                return self._dataset_progress(dataset, event_type, latest)
            except DatasetUnreadable as exc:
                return SourceProgress(event_type, None, str(exc))
        path = Path(self.location())
        if not path.exists():
            return SourceProgress(event_type, None, f"{path} does not exist")
        with self._connect(None) as con:
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
            ((latest,),) = con.execute(
                f"SELECT max({column}) FROM {EVENT_TABLE[event_type]} WHERE {column} <= $1",
                [future_horizon()],
            ).fetchall()
        if latest is None:
            return SourceProgress(event_type, None, f"no {event_type} in {path}")
        return SourceProgress(event_type, naive_utc(latest), "latest event")

    def _dataset_progress(
        self, dataset: "ParquetDataset", event_type: EventType, latest: bool = True
    ) -> SourceProgress | None:
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
                latest = dataset.latest(files, column, horizon)
            else:
                with self._connect(dataset) as con:
                    ((latest,),) = con.execute(
                        f"SELECT max({column}) FROM {_read_parquet(files)} WHERE {column} <= $1",
                        [horizon],
                    ).fetchall()
            if latest is not None:
                return SourceProgress(event_type, naive_utc(latest), "latest event")
        return SourceProgress(event_type, None, f"no {event_type} in dataset {dataset.uri}")

    def window_frames(
        self, event_type: EventType, start: datetime, end: datetime
    ) -> Iterator[pl.DataFrame]:
        """Yield the window's rows in order, a bounded batch at a time (see `SourceRead`)."""
        with self.read(event_type, start, end) as source:
            yield from source.frames()

    @contextmanager
    def read(self, event_type: EventType, start: datetime, end: datetime) -> Iterator["SourceRead"]:
        """One connection for the range [start, end): its fingerprints and its rows, read from
        one state of a DuckDB file (no loader can write to it while it is open)."""
        # The columns are naive UTC TIMESTAMPs; binding an aware datetime would make DuckDB
        # compare through the session time zone.
        start, end = naive_utc(start), naive_utc(end)
        dataset = self.dataset()
        if dataset is None:
            with self._connect(None) as con:
                yield SourceRead(self, con, event_type, start, end, None, self._scheme())
            return
        if not dataset.exists():
            raise FileNotFoundError(f"events dataset {dataset.uri} does not exist")
        files = parquet_files(dataset, event_type, start, end)
        if not files:
            yield SourceRead(self, None, event_type, start, end, None, self._scheme())
            return
        column = WINDOW_COLUMN[event_type]
        with self._connect(dataset) as con, _local(dataset, files, column, start, end) as local:
            relation = _read_parquet(local)
            yield SourceRead(self, con, event_type, start, end, relation, self._scheme())

    @staticmethod
    def _scheme() -> str:
        # DuckDB's hash() is stable within a version; the values are hashed as the schema's
        # types (`canonical_hash`), whatever types a file or dataset declares them with.
        return f"duckdb-{duckdb.__version__}-canonical-hash"


@contextmanager
def _local(
    dataset: "ParquetDataset", files: list[str], column: str, start: datetime, end: datetime
) -> Iterator[list[str]]:
    """The files as DuckDB reads them for `column` in [start, end): a local dataset's own; an
    `s3://` dataset's staged, for as long as the read lasts (ParquetDataset.stage)."""
    if not dataset.remote:
        yield files
        return
    with tempfile.TemporaryDirectory(prefix="affise-events-") as scratch:
        yield dataset.stage(files, column, start, end, Path(scratch))


def _read_parquet(files: list[str]) -> str:
    quoted = ", ".join("'" + file.replace("'", "''") + "'" for file in files)
    return f"read_parquet([{quoted}])"


@dataclass
class SourceRead:
    """One range of one event type, read through one connection (`EventsDatabase.read`)."""

    database: EventsDatabase
    con: duckdb.DuckDBPyConnection | None  # None: a Parquet dataset with no file in the range
    event_type: EventType
    start: datetime
    end: datetime
    relation: str | None
    scheme: str

    def fingerprints(
        self, frequency: int, filters: Sequence[FilterKey]
    ) -> dict[tuple[FilterKey, datetime], Fingerprint]:
        """Every window's fingerprint for each filter, from one scan of the range whatever the
        number of filters: rows are counted and hashed once per (window, affiliate, advertiser)
        (only the ids some filter names are told apart), and each filter sums the groups it
        takes. The range is cut into spans of at most FINGERPRINT_GROUPS such groups, so the
        aggregation stays within DuckDB's memory limit. Windows with no rows for a filter are
        absent (their fingerprint is `empty()`)."""
        if self.con is None or not filters:
            return {}
        affiliates = sorted({a for f in filters for a in f[0]})
        advertisers = sorted({a for f in filters for a in f[1]})
        pairs = (len(affiliates) + 1) * (len(advertisers) + 1)
        step = timedelta(minutes=frequency)
        span = step * max(1, FINGERPRINT_GROUPS // pairs)
        step_us = frequency * 60_000_000
        # A window is [start, end) at full precision; epoch_us floors, so a row at
        # 10:14:59.9999999 falls in the 10:00 window here too.
        query = f"""
            WITH wanted AS (SELECT f.id, f.affiliates, f.advertisers FROM unnest($3) AS t(f)),
            named_affiliates AS (SELECT DISTINCT unnest($4::BIGINT[]) AS aff),
            named_advertisers AS (SELECT DISTINCT unnest($5::VARCHAR[]) AS adv),
            grouped AS (
                SELECT epoch_us(e.{WINDOW_COLUMN[self.event_type]}) // {step_us} AS slot,
                       aff, adv, count(*) AS n,
                       sum({canonical_hash(self.event_type, "e")}) % {DIGEST_MODULUS} AS h
                FROM ({window_query(self.event_type, self.relation)}) AS e
                -- Hash joins: a row finds its named ids in constant time, however many.
                LEFT JOIN named_affiliates ON e.affiliate_id = named_affiliates.aff
                LEFT JOIN named_advertisers ON e.advertiser_id = named_advertisers.adv
                GROUP BY ALL
            )
            SELECT wanted.id, slot, sum(n)::BIGINT, (sum(h) % {DIGEST_MODULUS})::VARCHAR
            FROM grouped JOIN wanted
              ON (len(wanted.affiliates) = 0 OR list_contains(wanted.affiliates, aff))
             AND (len(wanted.advertisers) = 0 OR list_contains(wanted.advertisers, adv))
            GROUP BY ALL
        """
        wanted = [
            {"id": i, "affiliates": list(a), "advertisers": list(b)}
            for i, (a, b) in enumerate(filters)
        ]
        found = {}
        first = self.start
        while first < self.end:
            last = min(self.end, first + span)
            params = [first, last, wanted, affiliates, advertisers]
            for index, slot, rows, digest in self.con.execute(query, params).fetchall():
                start = EPOCH + timedelta(microseconds=slot * step_us)
                found[(filters[index], start)] = Fingerprint(rows, int(digest), self.scheme)
            first = last
        return found

    def empty(self) -> Fingerprint:
        return Fingerprint(0, 0, self.scheme)

    def frames(self) -> Iterator[pl.DataFrame]:
        """The range's rows in order, a bounded batch at a time.

        Windows compare full precision: an event at 10:14:59.999999 belongs to the 10:00-10:15
        window even though the file shows it as 10:14:59.
        """
        if self.con is None:
            return
        query = window_query(self.event_type, self.relation)
        params = [self.start, self.end]
        ((rows,),) = self.con.execute(f"SELECT count(*) FROM ({query})", params).fetchall()
        # Sorted sub-windows, one after the other, are the sorted window. polars sorts a
        # slice several times faster than DuckDB's ORDER BY, which also materializes the
        # whole result under its memory limit.
        for slice_start, slice_end in sub_windows(
            self.start, self.end, rows, self.database.slice_rows
        ):
            yield from self._slice_frames(self.con, query, slice_start, slice_end)

    def _slice_frames(
        self, con: duckdb.DuckDBPyConnection, query: str, start: datetime, end: datetime
    ) -> Iterator[pl.DataFrame]:
        """One sub-window's rows in order. Sub-windows are equal in time, not in rows: one that
        holds more than twice `slice_rows` (events bunched in time) is halved, and a single
        instant that still does is read in id ranges (`_instant_frames`), so memory stays
        bounded whatever the source's shape."""
        limit = 2 * self.database.slice_rows
        # Through the Arrow C stream: no pyarrow in the process (less RSS).
        frame = pl.DataFrame(con.sql(f"{query} LIMIT {limit + 1}", params=[start, end]))
        if frame.height <= limit:
            frame = frame.sort(row_order(self.event_type))
            for offset in range(0, frame.height, self.database.batch_rows):
                yield frame.slice(offset, self.database.batch_rows)
            return
        del frame
        middle = start + (end - start) / 2
        if start < middle < end:
            yield from self._slice_frames(con, query, start, middle)
            yield from self._slice_frames(con, query, middle, end)
            return
        yield from self._instant_frames(con, query, start, end)

    def _instant_frames(
        self, con: duckdb.DuckDBPyConnection, query: str, start: datetime, end: datetime
    ) -> Iterator[pl.DataFrame]:
        """One microsecond holding more rows than a slice (a bulk import stamped with one
        time), in row order, a bounded batch at a time. DuckDB's ORDER BY of the whole instant
        fails at its memory limit, and so does a top-N of whole rows; a top-N of the sort keys
        alone is small. So the instant is read as consecutive key ranges: the n-th next
        (window column, id) bounds a range, whose rows polars sorts. (The time, not only id: a
        nanosecond source has many times in one microsecond.) DuckDB's string order is polars'
        (binary), so the bytes do not depend on the path. Each range scans the instant again:
        the cost grows with its rows squared over `slice_rows`, the memory does not.

        Rows with no id, and the copies of one repeated id, are read whole: rare, and not
        something a key range can split."""
        page_rows = min(self.database.batch_rows, self.database.slice_rows)
        # NULL ids sort first within their time; they cannot be paged by id.
        yield from self._sorted(con, f"{query} AND id IS NULL", [start, end])
        # Times as integer nanoseconds: Python's datetime would cut a nanosecond source's
        # digits, and a bound that matches none of the rows would page forever.
        at = f"epoch_ns({WINDOW_COLUMN[self.event_type]})"
        keyed = f"SELECT {at} AS t, id FROM ({query}) WHERE id IS NOT NULL"
        after = f" AND ({at} > $3 OR ({at} = $3 AND id > $4))"
        last: tuple[int, str] | None = None
        while True:
            params: list[object] = [start, end] if last is None else [start, end, *last]
            keys = con.execute(
                f"{keyed}{after if last else ''} ORDER BY t, id LIMIT {page_rows}", params
            ).fetchall()
            if not keys:
                return
            bound = keys[-1]
            # Every row of the range, ids equal to the bound's included: none is cut in two.
            n = len(params)
            upto = f" AND ({at} < ${n + 1} OR ({at} = ${n + 1} AND id <= ${n + 2}))"
            yield from self._sorted(
                con,
                f"{query} AND id IS NOT NULL{after if last else ''}{upto}",
                [*params, *bound],
            )
            last = (bound[0], bound[1])

    def _sorted(
        self, con: duckdb.DuckDBPyConnection, query: str, params: list[object]
    ) -> Iterator[pl.DataFrame]:
        frame = pl.DataFrame(con.sql(query, params=params))
        frame = frame.sort(row_order(self.event_type), nulls_last=False)
        for offset in range(0, frame.height, self.database.batch_rows):
            yield frame.slice(offset, self.database.batch_rows)


EPOCH = datetime(1970, 1, 1)


def sub_windows(
    start: datetime, end: datetime, rows: int, slice_rows: int
) -> list[tuple[datetime, datetime]]:
    """Cut [start, end) into consecutive equal slices of about `slice_rows` rows each."""
    slices = max(1, -(-rows // max(1, slice_rows)))
    step = (end - start) / slices
    bounds = [start + step * i for i in range(slices)] + [end]
    return [(a, b) for a, b in itertools.pairwise(bounds) if a < b]
