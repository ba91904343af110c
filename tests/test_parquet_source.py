"""AFFISE_EVENTS_DB may be a Hive-partitioned Parquet dataset: same rows, same bytes, and a
window opens only its own days' files."""

import gzip
import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import duckdb
import pytest

from affise_s3_assets.delivery.engine import Window, cut_at_windows
from affise_s3_assets.demo.events import load_schema
from affise_s3_assets.encoding.csv_gzip import gzip_csv
from affise_s3_assets.source.completeness import WATERMARK_FILE, write_dataset_watermark
from affise_s3_assets.source.event_types import EVENT_COLUMNS
from affise_s3_assets.source.events import EventsDatabase
from affise_s3_assets.source.parquet_source import parquet_files
from tests.datasets import write_dataset


@pytest.fixture(scope="module")
def dataset(events_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("parquet")
    write_dataset(events_db, root)
    return root


def export(path: Path, event_type: str, start: datetime, end: datetime) -> bytes:
    database = EventsDatabase(path=str(path), slice_rows=2_000)
    frames = database.window_frames(event_type, start, end)
    return b"".join(gzip_csv(frames, EVENT_COLUMNS[event_type]))


@pytest.mark.parametrize("event_type", ["clicks", "conversions", "conversion_updates"])
def test_parquet_dataset_exports_the_same_bytes_as_the_duckdb_file(
    events_db: Path, dataset: Path, event_type: str
) -> None:
    windows = [
        (datetime(2026, 11, 25, 10), datetime(2026, 11, 25, 13)),
        (datetime(2026, 11, 25), datetime(2026, 11, 26)),
        (datetime(2026, 11, 24, 23), datetime(2026, 11, 25, 1)),
    ]
    if event_type == "conversion_updates":
        # Changes a day after: conversions from the 25th's folder, read for a window of the 26th.
        windows.append((datetime(2026, 11, 26, 10), datetime(2026, 11, 26, 13)))
    for start, end in windows:
        from_file = export(events_db, event_type, start, end)
        assert export(dataset, event_type, start, end) == from_file
        assert len(from_file) > 100


def test_a_window_opens_only_its_days(dataset: Path) -> None:
    files = parquet_files(dataset, "clicks", datetime(2026, 11, 25, 10), datetime(2026, 11, 25, 11))
    assert files and all("/clicks/date=2026-11-25/" in file for file in files)
    midnight = parquet_files(dataset, "clicks", datetime(2026, 11, 24), datetime(2026, 11, 25))
    assert midnight == []  # the window ends at 2026-11-25 00:00, exclusive
    assert parquet_files(dataset, "clicks", datetime(2026, 11, 25), datetime(2026, 11, 26)) == files


def test_days_without_files_give_a_header_only_export(dataset: Path) -> None:
    data = export(dataset, "clicks", datetime(2026, 11, 20), datetime(2026, 11, 20, 1))
    assert gzip.decompress(data).decode() == ",".join(EVENT_COLUMNS["clicks"]) + "\n"


def zoned_dataset(root: Path, rows: dict[str, str]) -> None:
    """A one-day clicks dataset storing instants (TIMESTAMPTZ, as Spark or pyarrow with a
    zone write them): id -> created_at in UTC."""
    day = root / "clicks" / "date=2026-11-25"
    day.mkdir(parents=True)
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        load_schema(con)
        for index, (row_id, created_at) in enumerate(rows.items()):
            con.execute(
                "INSERT INTO clicks (id, created_at, affiliate_id) VALUES (?, ?::TIMESTAMP, ?)",
                [row_id, created_at, index + 1],
            )
        con.execute(
            "COPY (SELECT * REPLACE (created_at::TIMESTAMPTZ AS created_at) FROM clicks) "
            f"TO '{day / 'part-0.parquet'}' (FORMAT parquet)"
        )


def test_instants_in_a_parquet_dataset_are_read_in_utc_whatever_the_host_zone(
    tmp_path: Path,
) -> None:
    """A dataset storing instants (TIMESTAMPTZ, as Spark or pyarrow with a zone write them)
    gives the same rows and times on a host set to New York as on a UTC one."""
    zoned_dataset(tmp_path, {"in": "2026-11-25 10:05:00", "out": "2026-11-25 15:05:00"})
    script = (
        "import gzip, sys; from datetime import datetime\n"
        "from affise_s3_assets.encoding.csv_gzip import gzip_csv\n"
        "from affise_s3_assets.source.event_types import EVENT_COLUMNS\n"
        "from affise_s3_assets.source.events import EventsDatabase\n"
        "frames = EventsDatabase(path=sys.argv[1]).window_frames("
        "'clicks', datetime(2026, 11, 25, 10), datetime(2026, 11, 25, 11))\n"
        "print(gzip.decompress(b''.join(gzip_csv(frames, EVENT_COLUMNS['clicks']))).decode())\n"
    )
    for zone in ("America/New_York", "Asia/Kolkata"):
        done = subprocess.run(
            [sys.executable, "-c", script, str(tmp_path)],
            env={**os.environ, "TZ": zone},
            capture_output=True,
            text=True,
            check=True,
        )
        rows = done.stdout.strip().splitlines()[1:]
        assert [row.split(",")[:2] for row in rows] == [["in", "2026-11-25 10:05:00"]], zone


def test_a_range_of_windows_is_cut_from_a_dataset_storing_instants(tmp_path: Path) -> None:
    """A ranged run cuts zoned `created_at` at naive-UTC window bounds (found by a review:
    polars refused to compare the two)."""
    zoned_dataset(tmp_path, {"a": "2026-11-25 10:05:00", "b": "2026-11-25 10:20:00"})
    start, middle, end = (datetime(2026, 11, 25, 10, m) for m in (0, 15, 30))
    frames = EventsDatabase(path=str(tmp_path)).window_frames("clicks", start, end)
    windows = [Window("10:00", start, middle), Window("10:15", middle, end)]
    cut = [(index, frame["id"].to_list()) for index, frame in cut_at_windows(frames, windows)]
    assert cut == [(0, ["a"]), (1, ["b"])]


def test_a_dataset_watermark_moves_forward_only_whatever_was_written_before(
    tmp_path: Path,
) -> None:
    """Compared as moments, not as text: a value another tool wrote as ISO text
    ("2026-11-25T09:00:00", which the exporter cannot read) is replaced, and an earlier
    moment never rolls a later one back."""
    marks = tmp_path / WATERMARK_FILE
    marks.write_text(json.dumps({"clicks": "2026-11-25T09:00:00"}))
    write_dataset_watermark(tmp_path, "clicks", datetime(2026, 11, 25, 12))
    assert json.loads(marks.read_text())["clicks"] == "2026-11-25 12:00:00"
    write_dataset_watermark(tmp_path, "clicks", datetime(2026, 11, 25, 11))
    assert json.loads(marks.read_text())["clicks"] == "2026-11-25 12:00:00"
    progress = EventsDatabase(path=str(tmp_path)).progress("clicks")
    assert (progress.complete_until, progress.how) == (datetime(2026, 11, 25, 12), "watermark")
