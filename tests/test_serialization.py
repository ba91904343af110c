"""The loader and the serializer on their own: bytes depend on the rows, not on how the
window was cut, batched or compressed in pieces."""

import gzip
import itertools
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import polars as pl
import pytest

from affise_s3_assets.demo.events import load_schema
from affise_s3_assets.encoding.csv_gzip import GzipCsvEncoder, event_filter, gzip_csv, in_background
from affise_s3_assets.source.event_types import EVENT_COLUMNS, row_order
from affise_s3_assets.source.events import EventsDatabase
from affise_s3_assets.source.window_read import sub_windows

DAY = (datetime(2026, 11, 25), datetime(2026, 11, 26))


def export_bytes(events_db: Path, level: int = 1, **tuning: int) -> tuple[bytes, int]:
    database = EventsDatabase(path=str(events_db), **tuning)
    frames = list(database.window_frames("clicks", *DAY))
    data = b"".join(gzip_csv(frames, EVENT_COLUMNS["clicks"], level))
    return data, sum(frame.height for frame in frames)


def test_bytes_do_not_depend_on_slices_or_batches(events_db: Path) -> None:
    reference, rows = export_bytes(events_db)
    assert rows == 20_000
    for tuning in ({"slice_rows": 3_000, "batch_rows": 777}, {"slice_rows": 10**9}):
        assert export_bytes(events_db, **tuning) == (reference, rows)


@pytest.mark.parametrize("level", [1, 3, 6, 9])
def test_every_level_is_plain_gzip_of_the_same_csv(events_db: Path, level: int) -> None:
    reference, _ = export_bytes(events_db, 1)
    data, _ = export_bytes(events_db, level)
    assert gzip.decompress(data) == gzip.decompress(reference)
    assert data[4:8] == b"\x00\x00\x00\x00" and not data[3] & 0x08  # no mtime, no name


def test_blocks_not_batches_decide_the_bytes(events_db: Path) -> None:
    """The encoder compresses exact blocks: pushing the same CSV in other pieces (as the export
    step does when filters or window cuts split batches) gives the same bytes."""
    frames = list(EventsDatabase(path=str(events_db)).window_frames("clicks", *DAY))
    whole = b"".join(gzip_csv(frames, EVENT_COLUMNS["clicks"]))
    encoder = GzipCsvEncoder(EVENT_COLUMNS["clicks"])
    pieces = [piece for frame in frames for piece in (frame.head(7), frame.slice(7))]
    pushed = b"".join(chunk for piece in pieces for chunk in encoder.add_frame(piece))
    pushed += encoder.finish()
    assert len(gzip.decompress(whole)) > 4 * 1024 * 1024  # several compress blocks
    assert whole == pushed


def test_sub_windows_are_consecutive_and_cover_the_window() -> None:
    start, end = DAY
    for rows, slice_rows in ((0, 100), (1, 100), (10_000_000, 100_000), (7, 2)):
        slices = sub_windows(start, end, rows, slice_rows)
        assert slices[0][0] == start and slices[-1][1] == end
        assert all(a[1] == b[0] for a, b in itertools.pairwise(slices))
        assert len(slices) == max(1, -(-rows // slice_rows))
    odd = sub_windows(start, start + timedelta(microseconds=5), 10, 1)
    assert odd[0][0] == start and odd[-1][1] == start + timedelta(microseconds=5)


def test_background_iteration_propagates_errors_and_stops_early() -> None:
    def failing():
        yield 1
        raise RuntimeError("source broke")

    with pytest.raises(RuntimeError, match="source broke"):
        list(in_background(failing()))
    produced = []

    def endless():
        n = 0
        while True:
            produced.append(n)
            yield n
            n += 1

    iterator = in_background(endless(), depth=2)
    assert [next(iterator) for _ in range(3)] == [0, 1, 2]
    iterator.close()  # joins the worker: it must notice and stop
    assert len(produced) <= 3 + 2 + 1


def test_filters_keep_columns_and_order(events_db: Path) -> None:
    database = EventsDatabase(path=str(events_db))
    frames = list(database.window_frames("conversions", *DAY))
    predicate = event_filter(affiliates=[101], advertisers=())
    assert predicate is not None
    kept = [frame.filter(predicate) for frame in frames]
    assert all(frame.columns == list(EVENT_COLUMNS["conversions"]) for frame in kept)
    assert all(set(frame["affiliate_id"].to_list()) <= {101} for frame in kept)
    assert sum(frame.height for frame in kept) > 0


@pytest.fixture(scope="module")
def bunched_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A day whose events bunch in time: 1,000 share one microsecond (one with no id, ids in
    mixed case), 1,000 fall within one second, 300 are spread over the day."""
    path = tmp_path_factory.mktemp("bunched") / "events.duckdb"
    with duckdb.connect(str(path)) as con:
        load_schema(con)
        con.execute(
            "INSERT INTO clicks (id, created_at, affiliate_id) "
            "SELECT CASE WHEN i = 500 THEN NULL WHEN i % 3 = 0 THEN upper(md5(i::VARCHAR)) "
            "ELSE md5(i::VARCHAR) END, TIMESTAMP '2026-11-25 10:00:00', i FROM range(1000) t(i)"
        )
        con.execute(
            "INSERT INTO clicks (id, created_at, affiliate_id) SELECT md5('s' || i), "
            "TIMESTAMP '2026-11-25 10:00:01' + (i % 997) * INTERVAL 1 MILLISECOND, i "
            "FROM range(1000) t(i)"
        )
        con.execute(
            "INSERT INTO clicks (id, created_at, affiliate_id) SELECT md5('d' || i), "
            "TIMESTAMP '2026-11-25 00:00:00' + i * INTERVAL 288 SECOND, i FROM range(300) t(i)"
        )
    return path


def test_bunched_events_are_read_in_bounded_slices_in_the_same_order(bunched_db: Path) -> None:
    """Equal-time sub-windows would put 2,000 rows in one slice here; the loader halves a
    crowded sub-window, and reads a crowded single instant in id ranges, without changing a byte."""
    tight = EventsDatabase(path=str(bunched_db), slice_rows=100)
    frames = list(tight.window_frames("clicks", *DAY))
    assert max(frame.height for frame in frames) <= 200
    got = pl.concat(frames)
    with duckdb.connect(str(bunched_db), read_only=True) as con:
        everything = pl.DataFrame(con.sql("SELECT * FROM clicks"))
    assert got.height == everything.height == 2_300
    assert got.equals(everything.sort(row_order("clicks")))  # polars' order, NULL id first
    instant = got.filter(pl.col("created_at") == datetime(2026, 11, 25, 10))
    assert instant.height == 1_001 and instant["id"][0] is None  # one spread row lands here too
    whole, rows = export_bytes(bunched_db, slice_rows=10**9)  # one slice, sorted by polars
    assert (whole, rows) == export_bytes(bunched_db, slice_rows=100)


def test_a_crowded_instant_of_a_nanosecond_source_is_read_whole_and_in_order(
    tmp_path: Path,
) -> None:
    """Python's datetime cuts nanoseconds: paging a crowded microsecond by it would never
    advance. Paged by integer nanoseconds, every row comes once, and the rows with an id in
    (created_at, id) order. (Rows with no id come first, whole: within a nanosecond source's
    crowded microsecond that is not polars' order, a known limit.)"""
    path = tmp_path / "nanoseconds.duckdb"
    with duckdb.connect(str(path)) as con:
        load_schema(con)
        con.execute("ALTER TABLE clicks ALTER created_at TYPE TIMESTAMP_NS")
        con.execute(
            "INSERT INTO clicks (id, created_at, affiliate_id) SELECT CASE WHEN i % 5 = 0 THEN "
            "NULL ELSE md5(i::VARCHAR) END, make_timestamp_ns(epoch_ns("
            "'2026-11-25 10:07:00.123456'::TIMESTAMP) + (i * 37 % 900)::BIGINT), 1 "
            "FROM range(40) t(i)"
        )
    tight = EventsDatabase(path=str(path), slice_rows=2, batch_rows=2)
    got = pl.concat(list(tight.window_frames("clicks", *DAY)))
    assert got.height == 40
    named = got.filter(pl.col("id").is_not_null())
    assert named.equals(named.sort(row_order("clicks"))) and named["id"].n_unique() == 32
