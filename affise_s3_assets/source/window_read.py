"""One range of one event type read through one DuckDB connection, whatever the connection
reads (a DuckDB file's tables, a Parquet dataset's files): the range's fingerprints, and its
rows in order a bounded batch at a time; and the session every such connection is set up with.

Knows DuckDB and the window SQL; nothing of files, datasets, S3 or Dagster.
"""

import itertools
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import duckdb
import polars as pl

from affise_s3_assets.config.schema import EventType
from affise_s3_assets.source.event_types import WINDOW_COLUMN, row_order, window_query
from affise_s3_assets.source.fingerprint import (
    DIGEST_MODULUS,
    FINGERPRINT_GROUPS,
    FilterKey,
    Fingerprint,
    canonical_hash,
)

# DuckDB's hash() is stable within a version; the values are hashed as the schema's types
# (`canonical_hash`), whatever types a file or dataset declares them with.
SCHEME = f"duckdb-{duckdb.__version__}-canonical-hash"


@dataclass(frozen=True)
class ReadSettings:
    """How a source's reads use DuckDB and memory (the resource's fields, events.py)."""

    batch_rows: int  # rows per piece handed to the export
    slice_rows: int  # rows DuckDB sorts at a time
    memory_limit: str | None  # DuckDB memory_limit; None: the source's own default
    threads: int  # DuckDB threads


def configure(
    con: duckdb.DuckDBPyConnection, settings: ReadSettings, memory_limit: str
) -> duckdb.DuckDBPyConnection:
    """`con` set up for reading windows: `settings.memory_limit` (else `memory_limit`, the
    source's default), its threads, UTC, and a spill directory of its own."""
    con.execute(f"SET memory_limit = '{settings.memory_limit or memory_limit}'")
    con.execute(f"SET threads = {int(settings.threads)}")
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


@dataclass
class SourceRead:
    """One range of one event type, read through one connection (`EventSource.read`)."""

    settings: ReadSettings
    con: duckdb.DuckDBPyConnection | None  # None: a source with no file in the range
    event_type: EventType
    start: datetime
    end: datetime
    relation: str | None  # the rows' table, or a `read_parquet(...)` call (`window_query`)

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
                found[(filters[index], start)] = Fingerprint(rows, int(digest), SCHEME)
            first = last
        return found

    def empty(self) -> Fingerprint:
        return Fingerprint(0, 0, SCHEME)

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
            self.start, self.end, rows, self.settings.slice_rows
        ):
            yield from self._slice_frames(self.con, query, slice_start, slice_end)

    def _slice_frames(
        self, con: duckdb.DuckDBPyConnection, query: str, start: datetime, end: datetime
    ) -> Iterator[pl.DataFrame]:
        """One sub-window's rows in order. Sub-windows are equal in time, not in rows: one that
        holds more than twice `slice_rows` (events bunched in time) is halved, and a single
        instant that still does is read in id ranges (`_instant_frames`), so memory stays
        bounded whatever the source's shape."""
        limit = 2 * self.settings.slice_rows
        # Through the Arrow C stream: no pyarrow in the process (less RSS).
        frame = pl.DataFrame(con.sql(f"{query} LIMIT {limit + 1}", params=[start, end]))
        if frame.height <= limit:
            frame = frame.sort(row_order(self.event_type))
            for offset in range(0, frame.height, self.settings.batch_rows):
                yield frame.slice(offset, self.settings.batch_rows)
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
        page_rows = min(self.settings.batch_rows, self.settings.slice_rows)
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
        for offset in range(0, frame.height, self.settings.batch_rows):
            yield frame.slice(offset, self.settings.batch_rows)


EPOCH = datetime(1970, 1, 1)


def sub_windows(
    start: datetime, end: datetime, rows: int, slice_rows: int
) -> list[tuple[datetime, datetime]]:
    """Cut [start, end) into consecutive equal slices of about `slice_rows` rows each."""
    slices = max(1, -(-rows // max(1, slice_rows)))
    step = (end - start) / slices
    bounds = [start + step * i for i in range(slices)] + [end]
    return [(a, b) for a, b in itertools.pairwise(bounds) if a < b]
