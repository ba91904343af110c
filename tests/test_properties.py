"""Properties, over generated inputs: the CSV round-trips whatever the text, a row lands in
exactly one window, and one integration's filter never lets another's rows through. A failing
example hypothesis finds is kept below as an `@example`, so it stays a regression case."""

import gzip
import tempfile
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import polars as pl
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from affise_s3_assets.config import ALLOWED_FREQUENCIES
from affise_s3_assets.csv_export import event_filter, gzip_csv
from affise_s3_assets.delivery import Window, cut_at_windows
from affise_s3_assets.demo import load_schema
from affise_s3_assets.source import EventsDatabase
from tests.csv_reader import read_rfc4180

DAY = datetime(2026, 11, 25)
# Any text a source can hold: every code point but surrogates (not UTF-8), NUL included.
TEXT = st.one_of(st.none(), st.text(st.characters(exclude_categories=["Cs"]), max_size=40))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(TEXT, TEXT, st.one_of(st.none(), st.integers(-(2**31), 2**31 - 1)))))
@example([("", None, 0)])  # an empty string and NULL must stay different
@example([('a,"b"\r\nc', "\r", None)])  # quotes, separators and line ends of every kind
def test_any_text_round_trips_through_the_delivered_csv(
    rows: list[tuple[str | None, str | None, int | None]],
) -> None:
    frame = pl.DataFrame(
        rows, schema={"ua": pl.String, "sub1": pl.String, "offer_id": pl.Int32}, orient="row"
    )
    data = gzip.decompress(b"".join(gzip_csv([frame], frame.columns)))
    parsed = read_rfc4180(data.decode("utf-8"))
    assert parsed[0] == ["ua", "sub1", "offer_id"]
    assert parsed[1:] == [[ua, sub1, None if n is None else str(n)] for ua, sub1, n in rows]


MOMENTS = st.datetimes(min_value=DAY - timedelta(hours=2), max_value=DAY + timedelta(hours=6))


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(MOMENTS, max_size=200),
    st.sampled_from([f for f in ALLOWED_FREQUENCIES if f <= 120]),
    st.integers(1, 6),
    st.integers(3, 50),
)
@example([DAY + timedelta(hours=1) - timedelta(microseconds=1), DAY + timedelta(hours=1)], 60, 2, 3)
def test_a_row_lands_in_exactly_the_window_that_contains_it(
    moments: list[datetime], frequency: int, count: int, slice_rows: int
) -> None:
    """From a real DuckDB file through the loader's bounded slices and the cut at window
    boundaries: every row of the range in one window, start <= created_at < end, none lost."""
    step = timedelta(minutes=frequency)
    windows = [Window(str(i), DAY + step * i, DAY + step * (i + 1)) for i in range(count)]
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "events.duckdb"
        with duckdb.connect(str(path)) as con:
            load_schema(con)
            if moments:
                con.executemany(
                    "INSERT INTO clicks (id, created_at) VALUES (?, ?)",
                    [[f"{i:08d}", moment] for i, moment in enumerate(moments)],
                )
        source = EventsDatabase(path=str(path), slice_rows=slice_rows, batch_rows=slice_rows)
        frames = source.window_frames("clicks", windows[0].start, windows[-1].end)
        placed = [
            (index, moment)
            for index, frame in cut_at_windows(frames, windows)
            for moment in frame["created_at"]
        ]
    expected = sorted(
        (index, moment)
        for moment in moments
        for index, window in enumerate(windows)
        if window.start <= moment < window.end
    )
    assert sorted(placed) == expected


ROWS = st.lists(st.tuples(st.integers(1, 6), st.sampled_from(["a", "b", "c", None])), max_size=80)
AFFILIATES = st.lists(st.integers(1, 6), max_size=3, unique=True)
ADVERTISERS = st.lists(st.sampled_from(["a", "b", "c"]), max_size=2, unique=True)


@settings(max_examples=300, deadline=None)
@given(ROWS, AFFILIATES, ADVERTISERS, AFFILIATES, ADVERTISERS)
@example([(1, None)], [], ["a"], [1], [])  # a NULL advertiser passes no advertiser filter
def test_an_integrations_filter_keeps_exactly_its_own_rows(
    rows: list[tuple[int, str | None]],
    affiliates: list[int],
    advertisers: list[str],
    other_affiliates: list[int],
    other_advertisers: list[str],
) -> None:
    """Two integrations over the same window: each gets exactly the rows its filters select
    (both filters: AND), whatever the other's are."""
    frame = pl.DataFrame(
        [(i, *row) for i, row in enumerate(rows)],
        schema={"id": pl.Int64, "affiliate_id": pl.Int32, "advertiser_id": pl.String},
        orient="row",
    )
    for mine, theirs in (
        ((affiliates, advertisers), (other_affiliates, other_advertisers)),
        ((other_affiliates, other_advertisers), (affiliates, advertisers)),
    ):
        predicate = event_filter(*mine)
        kept = frame if predicate is None else frame.filter(predicate)
        wanted = [
            i
            for i, (affiliate, advertiser) in enumerate(rows)
            if (not mine[0] or affiliate in mine[0]) and (not mine[1] or advertiser in mine[1])
        ]
        assert kept["id"].to_list() == wanted
        other = event_filter(*theirs)
        assert other is None or set(kept["id"]) >= set(kept.filter(other)["id"])
