"""Layouts for tools (issue 19, points 5 and 6): Hive-style folders and compact file names under
the same determinism as the default keys; manifests and completion markers where table readers
skip them; `columns` per export. Proven with real readers (DuckDB, pyarrow datasets) on the
objects as listed from the real S3 server, compared with the source's rows."""

import io
import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from affise_s3_assets.delivery.completion import Period, marker_key
from affise_s3_assets.delivery.writer import build_data_folder, build_manifest_key, build_object_key
from affise_s3_assets.source.event_types import EVENT_COLUMNS
from tests.conftest import S3Server
from tests.delivered import (
    ADVERTISER,
    as_csv_text,
    deliver,
    delivered_rows,
    export_asset,
    fetch,
    integration,
    keys_in,
    range_tags,
    source_rows,
)
from tests.window_rig import WindowRig

DAY = datetime(2026, 11, 25)
FIRST, LAST = "2026-11-25-00:00", "2026-11-25-23:00"
Row = tuple[str | None, ...]


def test_default_keys_are_todays_byte_for_byte() -> None:
    start = datetime(2026, 11, 25, 10, 15)
    assert build_object_key("affise/clicks", start) == (
        "affise/clicks/2026/11/25/2026-11-25 10:15:00.csv.gz"
    )
    assert build_object_key("", start, "parquet") == "2026/11/25/2026-11-25 10:15:00.parquet"
    # A zoned start is the same instant in UTC.
    zoned = datetime(2026, 11, 25, 12, 15, tzinfo=timezone(timedelta(hours=2)))
    assert build_object_key("d", zoned) == "d/2026/11/25/2026-11-25 10:15:00.csv.gz"


def test_hive_folders_and_compact_names_come_from_the_window_alone() -> None:
    start = datetime(2026, 11, 25, 10, 15)
    assert build_object_key("d", start, layout="hive") == (
        "d/dt=2026-11-25/hour=10/2026-11-25 10:15:00.csv.gz"
    )
    assert build_object_key("d", start, file_name="compact") == (
        "d/2026/11/25/20261125T101500Z.csv.gz"
    )
    compact = build_object_key("d", start, "parquet", "hive", "compact")
    assert compact == "d/dt=2026-11-25/hour=10/20261125T101500Z.parquet"
    assert " " not in compact.rsplit("/", 1)[1] and ":" not in compact
    assert build_object_key("", start.replace(tzinfo=UTC), "csv", "hive", "compact") == (
        "dt=2026-11-25/hour=10/20261125T101500Z.csv.gz"
    )
    assert build_data_folder("d", start, "hive") == "d/dt=2026-11-25/hour=10"
    with pytest.raises(ValueError, match="layout"):
        build_object_key("d", start, layout="flat")
    with pytest.raises(ValueError, match="file_name"):
        build_object_key("d", start, file_name="epoch")


def test_manifests_and_markers_lie_where_table_readers_skip_them() -> None:
    assert build_manifest_key("d/2026/11/25/2026-11-25 10:15:00.csv.gz") == (
        "d/2026/11/25/_manifests/2026-11-25 10:15:00.csv.gz.manifest.json"
    )
    assert build_manifest_key("d/dt=2026-11-25/hour=10/20261125T101500Z.parquet") == (
        "d/dt=2026-11-25/hour=10/_manifests/20261125T101500Z.parquet.manifest.json"
    )
    day, hour = Period("day", DAY), Period("hour", DAY.replace(hour=10))
    assert marker_key("d", day) == "d/2026/11/25/_manifests/_SUCCESS"
    assert marker_key("d", hour) == "d/2026/11/25/_manifests/_SUCCESS_10"
    assert marker_key("d", day, "hive") == "d/dt=2026-11-25/_SUCCESS"
    assert marker_key("d", hour, "hive") == "d/dt=2026-11-25/hour=10/_manifests/_SUCCESS"
    assert marker_key("", day, "hive") == "dt=2026-11-25/_SUCCESS"


def download(s3: S3Server, bucket: str, root: Path) -> list[str]:
    """Every object of the bucket, as listed, under `root` at its key's path; the keys."""
    keys = keys_in(s3, bucket)
    for key in keys:
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(fetch(s3, bucket, key))
    return keys


def day_source(events_db: Path, columns: tuple[str, ...] = ()) -> tuple[list[str], list[Row]]:
    header, rows = source_rows(events_db, "clicks", DAY, DAY + timedelta(days=1))
    if columns:
        index = [header.index(name) for name in columns]
        return list(columns), [tuple(row[i] for i in index) for row in rows]
    return header, [tuple(row) for row in rows]


def ordered(rows: list[Row]) -> list[Row]:
    return sorted(rows, key=lambda row: [(value is None, value or "") for value in row])


def csv_format(header: list[str]) -> ds.CsvFileFormat:
    """Every column as text, NULL (an empty unquoted field) as null, `""` as an empty string:
    the file as the contract writes it."""
    return ds.CsvFileFormat(
        convert_options=pacsv.ConvertOptions(
            column_types=dict.fromkeys(header, pa.string()),
            null_values=[""],
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
        )
    )


def duckdb_csv(glob: str, header: list[str], hive: bool = False) -> str:
    types = ", ".join(f"'{name}': 'VARCHAR'" for name in header)
    return (
        f"read_csv('{glob}', header=true, columns={{{types}}}, allow_quoted_nulls=false, "
        f"hive_partitioning={str(hive).lower()})"
    )


def typed_rows(table: pa.Table, header: list[str]) -> list[Row]:
    return [tuple(as_csv_text(row[name]) for name in header) for row in table.to_pylist()]


@pytest.mark.parametrize(
    ("file_format", "completion"), [("csv", "day"), ("parquet", "hour")], ids=["csv", "parquet"]
)
def test_a_hive_day_reads_as_a_partitioned_table_with_duckdb_and_pyarrow(
    s3_server: S3Server,
    bucket: str,
    customer_env: dict,
    events_db: Path,
    tmp_path: Path,
    file_format: str,
    completion: str,
) -> None:
    """`layout: hive` + `file_name: compact`, manifests and markers on: a day delivered in one
    run is 24 objects under `dt=2026-11-25/hour=HH/`, named without space or colon; DuckDB
    (`hive_partitioning=true`) and a pyarrow dataset (`partitioning="hive"`) on the objects as
    listed see `dt` and `hour` and every row of the source's day, and nothing else."""
    extra = (
        f"      layout: hive\n      file_name: compact\n      format: {file_format}\n"
        f"      manifest: true\n      completion: {completion}\n"
    )
    acme = integration(s3_server, bucket, directory="affise/clicks", extra=extra)
    assert deliver(export_asset(acme), None, events_db, tags=range_tags(FIRST, LAST)).success
    root = tmp_path / "bucket"
    keys = download(s3_server, bucket, root)
    extension = {"csv": "csv.gz", "parquet": "parquet"}[file_format]
    data = [
        f"affise/clicks/dt=2026-11-25/hour={h:02}/20261125T{h:02}0000Z.{extension}"
        for h in range(24)
    ]
    assert [key for key in keys if "/_" not in key] == data
    metadata = [key for key in keys if "/_" in key]
    assert len(metadata) == 24 + (1 if completion == "day" else 24)
    assert all("/_manifests/" in key or key.endswith("/dt=2026-11-25/_SUCCESS") for key in metadata)

    header, expected = day_source(events_db)
    assert len(expected) > 10_000
    export = root / "affise" / "clicks"
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    for glob in (f"{export}/dt=2026-11-25/*/*", f"{export}/*/*/*"):
        source = (
            duckdb_csv(glob, header, hive=True)
            if file_format == "csv"
            else f"read_parquet('{glob}', hive_partitioning=true)"
        )
        found = con.execute(f"SELECT * FROM {source}")
        names = [column[0] for column in found.description]
        assert names == [*header, "dt", "hour"]
        got = found.fetchall()
        assert {(str(row[-2]), int(row[-1])) for row in got} == {
            ("2026-11-25", h) for h in range(24)
        }
        # Each row's partition is its own window's.
        at = header.index("created_at")
        assert all(
            int(row[-1]) == (row[at].hour if file_format == "parquet" else int(row[at][11:13]))
            for row in got
        )
        if file_format == "csv":
            assert ordered([tuple(row[:-2]) for row in got]) == ordered(expected)
        else:
            assert ordered([tuple(as_csv_text(v) for v in row[:-2]) for row in got]) == ordered(
                expected
            )

    dataset = ds.dataset(
        export,
        format=csv_format(header) if file_format == "csv" else "parquet",
        partitioning="hive",
    )
    assert dataset.schema.names == [*header, "dt", "hour"]
    table = dataset.to_table()
    assert {str(v) for v in table.column("dt").to_pylist()} == {"2026-11-25"}
    assert sorted({int(v) for v in table.column("hour").to_pylist()}) == list(range(24))
    if file_format == "csv":
        rows = [tuple(row[name] for name in header) for row in table.to_pylist()]
    else:
        rows = typed_rows(table, header)
    assert ordered(rows) == ordered(expected)


@pytest.mark.parametrize(
    ("file_format", "completion"), [("csv", "day"), ("parquet", "hour")], ids=["csv", "parquet"]
)
def test_a_day_folder_reads_whole_with_its_manifests_and_markers(
    s3_server: S3Server,
    bucket: str,
    customer_env: dict,
    events_db: Path,
    tmp_path: Path,
    file_format: str,
    completion: str,
) -> None:
    """The default layout with manifests and completion markers on: a whole-folder read of the
    day folder (pyarrow `dataset(<day folder>)`, DuckDB `read_csv('<day folder>/*')` and
    `read_parquet('<day folder>/*')`) takes the data files only and gives every row of the
    source's day: manifests and markers lie in its `_manifests/` sub-folder."""
    extra = f"      format: {file_format}\n      manifest: true\n      completion: {completion}\n"
    acme = integration(s3_server, bucket, directory="affise/clicks", extra=extra)
    assert deliver(export_asset(acme), None, events_db, tags=range_tags(FIRST, LAST)).success
    root = tmp_path / "bucket"
    keys = download(s3_server, bucket, root)
    day = root / "affise" / "clicks" / "2026" / "11" / "25"
    markers = [key for key in keys if "/_SUCCESS" in key]
    assert len(markers) == (1 if completion == "day" else 24)
    assert len([key for key in keys if key.endswith(".manifest.json")]) == 24
    assert sorted(path.name for path in day.iterdir() if path.is_file()) == sorted(
        key.rsplit("/", 1)[1] for key in keys if "/_" not in key
    )

    header, expected = day_source(events_db)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    if file_format == "csv":
        got = con.execute(f"SELECT * FROM {duckdb_csv(f'{day}/*', header)}").fetchall()
        table = ds.dataset(day, format=csv_format(header)).to_table()
        rows = [tuple(row[name] for name in header) for row in table.to_pylist()]
        assert ordered([tuple(row) for row in got]) == ordered(expected)
        # The plainest call of all, types inferred, reads the folder too.
        assert ds.dataset(day, format="csv").count_rows() == len(expected)
    else:
        found = con.execute(f"SELECT * FROM read_parquet('{day}/*')")
        assert [column[0] for column in found.description] == header
        got = found.fetchall()
        assert ordered([tuple(as_csv_text(v) for v in row) for row in got]) == ordered(expected)
        table = ds.dataset(day, format="parquet").to_table()
        rows = typed_rows(table, header)
        assert pq.read_table(day).num_rows == len(expected)  # the failing read
    assert table.schema.names == header
    assert ordered(rows) == ordered(expected)


def test_an_export_with_columns_holds_exactly_those_in_its_order(rig: WindowRig) -> None:
    """`columns:` per export: the CSV header and rows, and the Parquet schema and values, are
    the source's rows projected on them, in the order written; an export alike in filters but
    with every column (sharing the run) keeps every column; the manifests record the columns."""
    picked = ("sub1", "id", "created_at", "affiliate_id")
    filters = f'      affiliates: [101, 102]\n      advertisers: ["{ADVERTISER}"]\n'
    listed = f"      columns: [{', '.join(picked)}]\n      manifest: true\n"
    rig.configure(
        [
            ("narrow", "2026-11-24 00:00:00", rig.clicks("narrow", filters + listed)),
            ("wide", "2026-11-24 00:00:00", rig.clicks("wide", filters + "      manifest: true\n")),
            (
                "typed",
                "2026-11-24 00:00:00",
                rig.clicks("typed", filters + listed + "      format: parquet\n"),
            ),
        ]
    )
    assert rig.run().success
    start = datetime(2026, 11, 25, 10)
    header, rows = source_rows(
        rig.events_db, "clicks", start, start + timedelta(hours=1), (101, 102), (ADVERTISER,)
    )
    assert rows and header == list(EVENT_COLUMNS["clicks"])
    index = [header.index(name) for name in picked]
    projected = [[row[i] for i in index] for row in rows]

    key = "2026/11/25/2026-11-25 10:00:00"
    got_header, got = delivered_rows(fetch(rig.s3, rig.bucket, f"narrow/{key}.csv.gz"))
    assert got_header == list(picked) and got == projected
    wide_header, wide = delivered_rows(fetch(rig.s3, rig.bucket, f"wide/{key}.csv.gz"))
    assert wide_header == header and wide == rows

    table = pq.read_table(io.BytesIO(fetch(rig.s3, rig.bucket, f"typed/{key}.parquet")))
    assert table.schema.names == list(picked)
    assert table.schema.field("affiliate_id").type == pa.int32()
    assert [list(row) for row in typed_rows(table, list(picked))] == projected

    for directory, extension, columns in (
        ("narrow", "csv.gz", list(picked)),
        ("wide", "csv.gz", header),
        ("typed", "parquet", list(picked)),
    ):
        manifest_key = build_manifest_key(f"{directory}/{key}.{extension}")
        assert json.loads(fetch(rig.s3, rig.bucket, manifest_key))["columns"] == columns
