"""Deterministic demo data for the raw Affise-style ``clicks`` and ``conversions`` tables.

The rows are meant to break naive CSV exporters: sub-second and exact-boundary timestamps,
user agents with commas, sub values with quotes, newlines, emoji, ``''`` next to ``NULL``, ``'007'``
and formula-looking strings. Same arguments always give the same rows, and with the same seed and
clicks per day an hour holds the same rows whichever window it was generated in.

Usage as a script::

    python -m affise_s3_assets.demo --db data/events.duckdb --days 3 [--clicks-per-day 20000]
        [--seed 7] [--end "2024-05-01 12:00:00"]
"""

from __future__ import annotations

import argparse
import os
import random
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from affise_s3_assets.config.schema import EVENT_TYPES
from affise_s3_assets.source.completeness import write_watermark
from affise_s3_assets.source.duckdb_file import connect_events_file

# Bounds the Arrow working set: a 10M-click day is generated and inserted at most 500k rows at a
# time.
CHUNK_ROWS = 500_000
CONVERSION_RATE = 0.03

_EPOCH = datetime(1970, 1, 1)
_US = timedelta(microseconds=1)
_SECOND_US = 1_000_000
_HOUR_US = 3_600 * _SECOND_US
_DAY_US = 24 * _HOUR_US
_TS = pa.timestamp("us")

ADVERTISER_IDS = (
    "5a0c7d1e9f3b2a0012c4e8f1",
    "5b7e2f9a0c1d4e0013a6b9c2",
    "5c91a4e7d2b0f30014e7d5a3",
    "5d3f8b6a1e9c720015b8c4d4",
    "5e2a9c0b7f4d610016c9a3e5",
)


def _weighted(columns: Sequence[str], rows: Sequence[tuple[Any, ...]]) -> pa.Table:
    """Lookup table with each row repeated by its trailing weight: uniform picks become weighted."""
    expanded = [row[:-1] for row in rows for _ in range(row[-1])]
    return pa.table({name: [row[i] for row in expanded] for i, name in enumerate(columns)})


_AFFILIATES = _weighted(
    ["affiliate_id"],
    [(101, 30), (102, 20), (103, 15), (104, 10), (105, 10), (118, 8), (240, 5), (377, 2)],
)

# Offers belong to one advertiser, so offer_id and advertiser_id stay consistent per row.
_OFFERS = _weighted(
    ["offer_id", "advertiser_id"],
    [
        (1041, ADVERTISER_IDS[0], 30),
        (1042, ADVERTISER_IDS[0], 20),
        (1107, ADVERTISER_IDS[1], 15),
        (1108, ADVERTISER_IDS[1], 10),
        (2203, ADVERTISER_IDS[2], 10),
        (2210, ADVERTISER_IDS[2], 5),
        (3001, ADVERTISER_IDS[3], 5),
        (3002, ADVERTISER_IDS[3], 3),
        (4500, ADVERTISER_IDS[4], 2),
    ],
)

_LOCATIONS = _weighted(
    ["country", "city", "isp"],
    [
        ("US", "New York", "Verizon Fios", 12),
        ("US", "Los Angeles", "Charter Communications", 8),
        ("US", None, "Comcast Cable", 5),
        ("BR", "São Paulo", "Claro S.A.", 12),
        ("BR", "Rio de Janeiro", "Telefônica Brasil (Vivo)", 5),
        ("DE", "Köln", "Deutsche Telekom AG", 6),
        ("DE", "Berlin", "Vodafone GmbH", 4),
        ("RU", "Москва", "PJSC Rostelecom", 6),
        ("JP", "東京", "NTT Communications", 5),
        ("TR", "İstanbul", "Türk Telekom", 6),
        ("GB", "London", "BT", 5),
        ("FR", "Paris", "Orange S.A.", 4),
        ("MX", "Ciudad de México", "Telmex", 4),
        ("IN", "Mumbai", "Reliance Jio", 6),
        ("IN", None, "Bharti Airtel", 3),
        ("ID", "Jakarta", "Telkomsel", 4),
        ("ES", "Málaga", "Telefónica de España", 2),
        ("PL", "Kraków", "Orange Polska", 2),
    ],
)

_DEVICES = _weighted(
    ["device_type", "device", "os", "os_version", "browser", "ua"],
    [
        (
            "desktop", "PC", "Windows", "10", "Chrome",
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/124.0.0.0 Safari/537.36",
            14,
        ),
        (
            "desktop", "PC", "Windows", "11", "Edge",
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/124.0.0.0 Safari/537.36 Edg/124.0.2478.67",
            5,
        ),
        (
            "desktop", "PC", "Windows", "10", "Firefox",
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Firefox/125.0",
            4,
        ),
        (
            "desktop", "Mac", "macOS", "14.4", "Safari",
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 "
            "(KHTML, like Gecko) Version/17.4 Safari/605.1.15",
            5,
        ),
        (
            "desktop", "PC", "Linux", None, "Chrome",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/123.0.0.0 Safari/537.36",
            2,
        ),
        (
            "mobile", "iPhone", "iOS", "17.4.1", "Mobile Safari",
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4_1 like Mac OS X) AppleWebKit/605.1.15 "
            "(KHTML, like Gecko) Version/17.4.1 Mobile/15E148 Safari/604.1",
            18,
        ),
        (
            "mobile", "iPhone", "iOS", "16.6", "Facebook In-App",
            "Mozilla/5.0 (iPhone; CPU iPhone OS 16_6 like Mac OS X) AppleWebKit/605.1.15 "
            "(KHTML, like Gecko) Mobile/15E148 [FBAN/FBIOS;FBDV/iPhone14,5;FBMD/iPhone;FBSN/iOS;"
            "FBSV/16.6;FBSS/3;FBID/phone;FBLC/en_US;FBOP/5]",
            6,
        ),
        (
            "mobile", "Samsung Galaxy S23", "Android", "14", "Chrome Mobile",
            "Mozilla/5.0 (Linux; Android 14; SM-S911B) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/124.0.6367.82 Mobile Safari/537.36",
            16,
        ),
        (
            "mobile", "Xiaomi Redmi Note 12", "Android", "13", "MIUI Browser",
            "Mozilla/5.0 (Linux; U; Android 13; en-us; 23021RAA2Y Build/TKQ1.221114.001) "
            "AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/112.0.5615.136 "
            "Mobile Safari/537.36 XiaoMi/MiuiBrowser/14.8.0-gn",
            7,
        ),
        (
            "mobile", "Google Pixel 8", "Android", None, "Chrome Mobile",
            "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/124.0.0.0 Mobile Safari/537.36",
            4,
        ),
        (
            "tablet", "iPad", "iPadOS", "17.3", "Mobile Safari",
            "Mozilla/5.0 (iPad; CPU OS 17_3 like Mac OS X) AppleWebKit/605.1.15 "
            "(KHTML, like Gecko) Version/17.3 Mobile/15E148 Safari/604.1",
            4,
        ),
        (
            "tablet", "Samsung Galaxy Tab S8", "Android", "13", "Samsung Internet",
            "Mozilla/5.0 (Linux; Android 13; SM-X700) AppleWebKit/537.36 (KHTML, like Gecko) "
            "SamsungBrowser/24.0 Chrome/117.0.0.0 Safari/537.36",
            2,
        ),
    ],
)  # fmt: skip

_REFERRERS = _weighted(
    ["referrer"],
    [
        (None, 30),
        ("", 4),
        ("https://www.google.com/search?q=best+vpn%2C+cheap&hl=en&gl=us", 12),
        ("https://m.facebook.com/ads/?utm_source=fb&utm_medium=cpc&utm_campaign=spring,sale", 10),
        ("https://news.example.com/article?id=42&tags=finance,crypto&ref=top", 6),
        ("https://www.tiktok.com/@promo?lang=pt-BR&is_from_webapp=1&sender_device=pc", 6),
        ("https://yandex.ru/search/?text=купить+телефон&lr=213", 3),
        ("https://t.co/AbC123xyz", 3),
        ("android-app://com.google.android.gm/", 2),
    ],
)

_CONNECTION_TYPES = _weighted(
    ["connection_type"],
    [("wifi", 45), ("cellular", 35), ("cable", 10), ("dsl", 5), ("corporate", 2), (None, 3)],
)

# Every sub column draws from these too, so the exporter's quoting is exercised everywhere.
_HOSTILE_SUBS = (
    "a,b,c",
    'say "hi"',
    '","',
    "line1\nline2",
    "line1\r\nline2",
    "São Paulo — promoção",
    "Москва, 東京 🚀🔥",
    "  padded both  ",
    " leading",
    "trailing ",
    "007",
    '=HYPERLINK("http://evil.example","click")',
    "=1+1",
    "tab\tinside",
    "back\\slash",
    "NULL",
    "\\N",
)

_SUB_NORMALS = (
    ("fb_cmp_2024q2", "gads_brand_pt", "tt_spring_sale", "taboola_native_17", "push_ext_9"),
    ("adset_17", "adset_42", "lookalike_br_2", "retarget_7d"),
    ("cr-blue-v2", "cr-video-15s", "cr-carousel-3"),
    ("feed", "stories", "reels", "search"),
    ("br", "de", "us", "tr"),
    ("Cj0KCQjw8pKxBhD_ARIsAPrG45k", "IwAR2x9sP"),
    ("v1", "v2"),
    ("organic",),
)
# (NULL weight, '' weight) per sub: later subs are mostly unused, like real affiliate traffic.
_SUB_MISSING = ((10, 5), (20, 5), (30, 8), (40, 8), (60, 10), (80, 10), (100, 10), (120, 10))
_SUBS = tuple(
    _weighted(
        [f"sub{i + 1}"],
        [(v, 20) for v in normals]
        + [(v, 1) for v in _HOSTILE_SUBS]
        + [(None, nulls), ("", empties)],
    )
    for i, (normals, (nulls, empties)) in enumerate(zip(_SUB_NORMALS, _SUB_MISSING, strict=True))
)

_GOALS = _weighted(
    ["goal"],
    [("1", 10), ("reg", 30), ("ftd", 20), ("deposit", 15), ("purchase", 15), ("install", 10)],
)
_STATUSES = _weighted(
    ["status"], [("confirmed", 60), ("pending", 25), ("declined", 10), ("hold", 5)]
)
_CURRENCIES = _weighted(
    ["currency"], [("USD", 70), ("EUR", 15), ("BRL", 8), ("GBP", 4), ("TRY", 3)]
)

# SQL that turns the raw random columns into final values; everything else is a plain cast.
_IP_SQL = (
    "CASE WHEN ip_v6"
    " THEN printf('2a02:%x:%x:%x::%x', ip_a >> 16, ip_a & 65535, ip_b >> 16, ip_b & 65535)"
    " ELSE printf('%d.%d.%d.%d', 1 + (ip_a >> 24) % 223, (ip_a >> 16) & 255, (ip_a >> 8) & 255,"
    " ip_a & 255) END"
)
_SQL_OVERRIDES = {
    "clicks": {"id": "lower(hex(id))", "ip": _IP_SQL},
    "conversions": {
        "id": "lower(hex(id))",
        "click_id": "lower(hex(click_id))",
        "action_id": "CAST(CAST(lower(hex(action_id)) AS UUID) AS VARCHAR)",
        # Integer ten-thousandths times a DECIMAL literal stays exact, unlike a float division.
        "payouts": "CAST(payouts AS DECIMAL(18,0)) * 0.0001",
        "revenue": "CAST(revenue AS DECIMAL(18,0)) * 0.0001",
        "ip": _IP_SQL,
    },
}


class _Draws:
    """Vectorised draws from one seeded ``random.Random``.

    Bytes come from the Mersenne Twister and the arithmetic runs in Arrow, which keeps the output
    reproducible while a 10M-row day takes seconds rather than minutes of per-row Python.
    """

    def __init__(self, seed: str) -> None:
        self._rng = random.Random(seed)  # str seeds are hashed with SHA-512: stable across runs

    def raw(self, n: int, width: int) -> pa.Array:
        """``n`` random byte strings of ``width`` bytes (ids are hexed later, in SQL)."""
        return pa.Array.from_buffers(
            pa.binary(width), n, [None, pa.py_buffer(self._rng.randbytes(width * n))]
        )

    def u32(self, n: int) -> pa.Array:
        return self.raw(n, 4).view(pa.uint32())

    def uniform(self, n: int) -> pa.Array:
        """Doubles in [0, 1) built from 53 random bits, which a double represents exactly."""
        bits = pc.shift_right(self.raw(n, 8).view(pa.uint64()), pa.scalar(11, pa.uint64()))
        return pc.multiply(bits.cast(pa.float64()), 2.0**-53)

    def index(self, n: int, k: int) -> pa.Array:
        """Integers in [0, k); clamped because ``x * k`` may round up to ``k`` for huge ``k``."""
        idx = pc.floor(pc.multiply(self.uniform(n), float(k))).cast(pa.int64())
        return pc.min_element_wise(idx, k - 1)

    def chance(self, n: int, p: float) -> pa.Array:
        return pc.less(self.u32(n), int(p * 2**32))

    def pick(self, table: pa.Table, n: int) -> pa.Table:
        return table.take(self.index(n, table.num_rows))


def _us(dt: datetime) -> int:
    return (dt - _EPOCH) // _US


def _naive_utc(dt: datetime) -> datetime:
    return dt.astimezone(UTC).replace(tzinfo=None) if dt.tzinfo else dt


def _shift(ts: pa.Array, delta_us: pa.Array | int) -> pa.Array:
    return pc.add(ts.cast(pa.int64()), delta_us).cast(_TS)


def _with_edge_cases(
    draws: _Draws, ts: pa.Array, lower: pa.Scalar | pa.Array, upper: pa.Scalar | None = None
) -> pa.Array:
    """Move some timestamps onto the spots where window logic goes wrong.

    About 0.1% land exactly on a 15-minute boundary, 0.1% one microsecond before one and 25% on a
    whole second; the rest keep microseconds. A snap that would leave [lower, upper) is skipped.
    """
    n = len(ts)
    kind = draws.index(n, 1000)
    if n >= 2:
        # Guarantees both edge cases even in tiny blocks; row order is random before sorting.
        kind = pa.concat_arrays([pa.array([0, 1], pa.int64()), kind[2:]])
    on_boundary = pc.floor_temporal(ts, multiple=15, unit="minute")
    before_boundary = _shift(pc.ceil_temporal(ts, multiple=15, unit="minute"), -1)
    whole_second = pc.floor_temporal(ts, unit="second")
    snapped = pc.if_else(
        pc.equal(kind, 0),
        on_boundary,
        pc.if_else(
            pc.equal(kind, 1),
            before_boundary,
            pc.if_else(pc.less(kind, 250), whole_second, ts),
        ),
    )
    inside = pc.greater_equal(snapped, lower)
    if upper is not None:
        inside = pc.and_(inside, pc.less(snapped, upper))
    return pc.if_else(inside, snapped, ts)


def _click_chunk(draws: _Draws, t0_us: int, t1_us: int, n: int) -> pa.Table:
    """``n`` clicks spread over [t0_us, t1_us), in created_at order."""
    ts = pc.add(draws.index(n, t1_us - t0_us), t0_us).cast(_TS)
    lower, upper = pa.scalar(t0_us, _TS), pa.scalar(t1_us, _TS)
    ts = _with_edge_cases(draws, ts, lower, upper)
    # Chronological rows keep DuckDB's min/max zone maps useful for the exporter's window scans.
    ts = ts.take(pc.sort_indices(ts))

    offers = draws.pick(_OFFERS, n)
    columns: dict[str, Any] = {
        "id": draws.raw(n, 12),
        "created_at": ts,
        "affiliate_id": draws.pick(_AFFILIATES, n)["affiliate_id"],
        "advertiser_id": offers["advertiser_id"],
        "offer_id": offers["offer_id"],
        # Each offer has three landings numbered after it, e.g. offer 1041 -> 104101..104103.
        "landing_id": pc.add(pc.multiply(offers["offer_id"], 100), pc.add(draws.index(n, 3), 1)),
        "ip_a": draws.u32(n),
        "ip_b": draws.u32(n),
        "ip_v6": draws.chance(n, 0.07),
        "referrer": draws.pick(_REFERRERS, n)["referrer"],
        "connection_type": draws.pick(_CONNECTION_TYPES, n)["connection_type"],
        "uniq": draws.chance(n, 0.8),
    }
    for table in (
        draws.pick(_LOCATIONS, n),
        draws.pick(_DEVICES, n),
        *(draws.pick(sub, n) for sub in _SUBS),
    ):
        columns.update(zip(table.column_names, table.columns, strict=True))
    return pa.table(columns)


def _conversion_chunk(draws: _Draws, clicks: pa.Table) -> pa.Table:
    """Conversions for about 3% of ``clicks``, not yet cut at the window's end."""
    src = clicks.filter(draws.chance(clicks.num_rows, CONVERSION_RATE)).combine_chunks()
    m = src.num_rows
    click_time = src["created_at"].combine_chunks()
    # x**6 skews delays short (median ~45 min) with a tail out to two days.
    delay = pc.add(
        pc.floor(pc.multiply(pc.power(draws.uniform(m), 6), float(48 * _HOUR_US))).cast(pa.int64()),
        15 * _SECOND_US,
    )
    created = _with_edge_cases(draws, _shift(click_time, delay), click_time)

    touched = pc.multiply(pc.power(draws.uniform(m), 2), float(72 * _HOUR_US))
    updated = _shift(
        created, pc.if_else(draws.chance(m, 0.5), 0, pc.floor(touched).cast(pa.int64()))
    )
    status = draws.pick(_STATUSES, m)["status"]
    # Money is carried as integer ten-thousandths and becomes DECIMAL(18,4) in SQL.
    payouts = pc.add(draws.index(m, 1_495_001), 5_000)
    payouts = pc.if_else(pc.equal(status, "declined"), 0, payouts)
    margin = pc.add(draws.index(m, 71), 110)  # revenue is 110-180% of the payout
    revenue = pc.divide(pc.multiply(payouts, margin), 100)

    columns: dict[str, Any] = {
        "id": draws.raw(m, 12),
        "created_at": created,
        "updated_at": updated,
        "click_id": src["id"],
        "action_id": draws.raw(m, 16),
        "click_time": click_time,
        "affiliate_id": src["affiliate_id"],
        "advertiser_id": src["advertiser_id"],
        "offer_id": src["offer_id"],
        "goal": draws.pick(_GOALS, m)["goal"],
        "status": status,
        "payouts": payouts,
        "revenue": revenue,
        "currency": draws.pick(_CURRENCIES, m)["currency"],
    }
    # A postback carries the click's context, subs included.
    for name in ("country", "city", "ip_a", "ip_b", "ip_v6", "os", "device", "browser", "ua"):
        columns[name] = src[name]
    for name in ("referrer", *(f"sub{i}" for i in range(1, 9))):
        columns[name] = src[name]
    return pa.table(columns)


def _block_us(clicks_per_day: int, chunk_rows: int) -> int:
    """Longest block (dividing a day) that holds at most ``chunk_rows`` clicks."""
    for seconds in (3_600, 900, 300, 60, 10, 1):
        if clicks_per_day * seconds <= chunk_rows * 86_400:
            return seconds * _SECOND_US
    return _SECOND_US


def _demo_blocks(
    start_us: int, end_us: int, clicks_per_day: int, seed: int, block_us: int
) -> Iterator[tuple[pa.Table, pa.Table]]:
    """Yield (clicks, conversions) per block of the window, cut to the window.

    Blocks sit on fixed epoch offsets and are seeded by their position, so a given hour holds the
    same rows whatever window it was generated in: re-running a shifted window rewrites the
    overlap with identical rows instead of reshuffling data that may already have been exported.
    """
    start, end = pa.scalar(start_us, _TS), pa.scalar(end_us, _TS)
    for block in range(start_us // block_us, -(-end_us // block_us)):
        t0, t1 = block * block_us, (block + 1) * block_us
        # Integer arithmetic so the blocks of a day add up to exactly clicks_per_day.
        n = clicks_per_day * t1 // _DAY_US - clicks_per_day * t0 // _DAY_US
        if n == 0:
            continue
        draws = _Draws(f"affise-demo:{seed}:{clicks_per_day}:{block_us}:{block}")
        clicks = _click_chunk(draws, t0, t1, n)
        conversions = _conversion_chunk(draws, clicks)
        if t0 < start_us or t1 > end_us:
            clicks = clicks.filter(
                pc.and_(
                    pc.greater_equal(clicks["created_at"], start),
                    pc.less(clicks["created_at"], end),
                )
            )
            conversions = conversions.filter(pc.greater_equal(conversions["click_time"], start))
        # Conversions past the window are left for a later run, like late postbacks.
        yield clicks, conversions.filter(pc.less(conversions["created_at"], end))


def _insert(con: duckdb.DuckDBPyConnection, table: str, data: pa.Table) -> None:
    """Insert with an explicit column list, casting every column to the type the table declares."""
    targets = con.execute(
        "SELECT column_name, data_type FROM information_schema.columns"
        " WHERE table_schema = current_schema() AND table_name = ? ORDER BY ordinal_position",
        [table],
    ).fetchall()
    overrides = _SQL_OVERRIDES[table]
    select = ", ".join(f"CAST({overrides.get(name, name)} AS {dtype})" for name, dtype in targets)
    view = f"_demo_{table}_chunk"
    con.register(view, data)
    try:
        con.execute(
            f"INSERT INTO {table} ({', '.join(name for name, _ in targets)})"
            f" SELECT {select} FROM {view}"
        )
    finally:
        con.unregister(view)


def load_schema(con: duckdb.DuckDBPyConnection) -> None:
    """Create the ``clicks`` and ``conversions`` tables from the packaged ``schema.sql``."""
    ddl = (
        resources.files("affise_s3_assets.source")
        .joinpath("schema.sql")
        .read_text(encoding="utf-8")
    )
    con.execute(ddl)


def insert_demo_events(
    con: duckdb.DuckDBPyConnection,
    start: datetime,
    end: datetime,
    clicks_per_day: int = 20_000,
    seed: int = 7,
    chunk_rows: int = CHUNK_ROWS,
) -> dict[str, int]:
    """Append the demo clicks of [start, end) and their conversions, about ``chunk_rows`` at a time.

    Does not delete anything or manage transactions; ``generate_demo_events`` does both.
    Returns the inserted row count per table.
    """
    start, end = _naive_utc(start), _naive_utc(end)
    block_us = _block_us(clicks_per_day, chunk_rows)
    counts = {"clicks": 0, "conversions": 0}
    batch: list[tuple[pa.Table, pa.Table]] = []

    def flush() -> None:
        # Small blocks are batched so a light day is a handful of INSERTs, not one per hour.
        for i, table in enumerate(("clicks", "conversions")):
            data = pa.concat_tables(pair[i] for pair in batch)
            if table == "conversions":  # clicks are already in created_at order by construction
                data = data.sort_by("created_at")
            _insert(con, table, data)
            counts[table] += data.num_rows
        batch.clear()

    for pair in _demo_blocks(_us(start), _us(end), clicks_per_day, seed, block_us):
        if batch and sum(p[0].num_rows for p in batch) + pair[0].num_rows > chunk_rows:
            flush()
        batch.append(pair)
    if batch:
        flush()
    return counts


def generate_demo_events(
    db_path: str | Path,
    start: datetime,
    end: datetime,
    clicks_per_day: int = 20_000,
    seed: int = 7,
) -> dict[str, int]:
    """Replace the demo events in [start, end) of the DuckDB file at ``db_path``.

    Naive datetimes are UTC. Clicks and conversions whose ``created_at`` falls in the window, and
    conversions of clicks in the window, are deleted first, so re-running never duplicates and
    never leaves conversions pointing at replaced clicks. Returns the inserted row count per table.
    """
    start, end = _naive_utc(start), _naive_utc(end)
    if end <= start:
        raise ValueError(f"end {end} must be after start {start}")
    if clicks_per_day < 0:
        raise ValueError("clicks_per_day must not be negative")

    path = Path(db_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with connect_events_file(path, read_only=False) as con:
        load_schema(con)
        # Autocommit per statement, not one transaction: DuckDB holds uncommitted rows in memory
        # (gigabytes for a 10M-click day). No other process can open the file while we write it, and
        # a crash only leaves a partial window that the next run's DELETE clears.
        con.execute("DELETE FROM clicks WHERE created_at >= $1 AND created_at < $2", [start, end])
        con.execute(
            "DELETE FROM conversions WHERE (created_at >= $1 AND created_at < $2)"
            " OR (click_time >= $1 AND click_time < $2)",
            [start, end],
        )
        counts = insert_demo_events(con, start, end, clicks_per_day, seed)
        # As a real loader does once its events are in: the windows before `end` are complete.
        for event_type in EVENT_TYPES:
            write_watermark(con, event_type, end)
        return counts


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m affise_s3_assets.demo",
        description="Write deterministic demo clicks and conversions into a DuckDB file.",
    )
    parser.add_argument(
        "--db",
        default=os.environ.get("AFFISE_EVENTS_DB", "data/events.duckdb"),
        help="DuckDB file (default: $AFFISE_EVENTS_DB or data/events.duckdb)",
    )
    parser.add_argument(
        "--days",
        type=int,
        default=3,
        help="days of history before the current hour; a week ahead is always added (the "
        "watermark moves with it: a demo left running a week has windows waiting for data)",
    )
    parser.add_argument("--clicks-per-day", type=int, default=20_000)
    parser.add_argument(
        "--from-integrations",
        type=Path,
        help="start no later than the earliest integration start in this integrations file",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--end",
        type=datetime.fromisoformat,
        default=None,
        metavar="'YYYY-MM-DD HH:MM:SS'",
        help="use this UTC time as 'now' instead of the clock (for the integrations too)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """CLI entry point: window is [hour(now) - days, hour(now) + 7 days)."""
    args = _parse_args(argv)
    now = _naive_utc(args.end) if args.end else datetime.now(UTC).replace(tzinfo=None)
    hour = now.replace(minute=0, second=0, microsecond=0)
    # The week ahead lets a running demo keep finding fresh rows (and a watermark past them)
    # in every new window.
    start, end = hour - timedelta(days=args.days), hour + timedelta(days=7)
    if args.from_integrations:
        # Every window from each integration's start holds demo events, not empty files.
        # Applied as the code location applies it (its `demo:` dates moved to $AFFISE_DEMO_DAY
        # too), judged at `now`: one broken block must not stop the demo.
        from affise_s3_assets.config.apply import apply_integrations

        text = args.from_integrations.read_text(encoding="utf-8")
        applied = apply_integrations(text, str(args.from_integrations), now=now)
        start = min([start, *(i.start for i in applied.integrations)])
    began = time.perf_counter()
    counts = generate_demo_events(args.db, start, end, args.clicks_per_day, args.seed)
    print(
        f"{args.db}: {counts['clicks']:,} clicks, {counts['conversions']:,} conversions"
        f" in [{start}, {end}) in {time.perf_counter() - began:.1f}s"
    )


if __name__ == "__main__":
    main()
