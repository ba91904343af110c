"""AFFISE_EVENTS_DB=s3://bucket/prefix: the Parquet dataset read in place on the real S3 server,
with the deployment's own credentials (the standard AWS chain) and never an integration's.
The same bytes as the DuckDB file and the local dataset; the same completeness rules; a
store that cannot be read fails its windows with the reason, never an empty file."""

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import pytest

from affise_s3_assets.encoding.csv_gzip import gzip_csv
from affise_s3_assets.encoding.parquet import ParquetEncoder
from affise_s3_assets.source.completeness import WATERMARK_FILE, write_dataset_watermark
from affise_s3_assets.source.event_types import EVENT_COLUMNS
from affise_s3_assets.source.events import EventsDatabase
from affise_s3_assets.source.parquet_dataset import DatasetUnreadable, ParquetDataset
from affise_s3_assets.source.parquet_source import parquet_files
from tests.conftest import Account, S3Server
from tests.datasets import write_dataset
from tests.delivered import delivered_rows, fetch, source_rows
from tests.window_rig import START, WINDOW, WindowRig

LAKE = "affise-events-lake"
PREFIX = "exports/v1"


@pytest.fixture(scope="module")
def local_dataset(events_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The events as a loader writes them, in time order, in row groups of 1,000 rows: a
    15-minute window's rows are in one or two of a day's twenty, which is what lets a read
    skip the others."""
    root = tmp_path_factory.mktemp("parquet")
    write_dataset(events_db, root, ordered=True, row_group_size=1000)
    write_dataset_watermark(root, "clicks", datetime(2026, 11, 25, 12))
    return root


@pytest.fixture(scope="module")
def lake(s3_server: S3Server, local_dataset: Path) -> str:
    """The local dataset uploaded to a bucket of the deployment's account (the server's
    admin), which no customer account can read."""
    client = s3_server.client(s3_server.admin)
    client.create_bucket(Bucket=LAKE)
    for file in sorted(local_dataset.rglob("*")):
        if file.is_file() and not file.name.endswith(".lock"):
            key = f"{PREFIX}/{file.relative_to(local_dataset)}"
            client.put_object(Bucket=LAKE, Key=key, Body=file.read_bytes())
    return f"s3://{LAKE}/{PREFIX}"


def deployment_chain(monkeypatch: pytest.MonkeyPatch, s3: S3Server, account: Account) -> None:
    """The deployment's standard AWS chain: environment variables, and its store's endpoint."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", account.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", account.secret_key)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    # No instance-metadata lookups from a test: the environment's keys are the chain.
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AFFISE_EVENTS_S3_ENDPOINT", s3.endpoint_url)
    monkeypatch.setenv("AFFISE_EVENTS_S3_REGION", "us-east-1")


@pytest.fixture
def deployment(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    deployment_chain(monkeypatch, s3_server, s3_server.admin)
    yield


def csv_export(location: str | Path, event_type: str, start: datetime, end: datetime) -> bytes:
    database = EventsDatabase(path=str(location), slice_rows=2_000)
    return b"".join(
        gzip_csv(database.window_frames(event_type, start, end), EVENT_COLUMNS[event_type])
    )


def parquet_export(location: str | Path, event_type: str, start: datetime, end: datetime) -> bytes:
    database = EventsDatabase(path=str(location), slice_rows=2_000)
    encoder = ParquetEncoder(event_type, EVENT_COLUMNS[event_type])
    out = b""
    for frame in database.window_frames(event_type, start, end):
        out += b"".join(encoder.add(frame.height, frame))
    return out + encoder.finish()


@pytest.mark.parametrize("event_type", ["clicks", "conversions", "conversion_updates"])
def test_an_s3_dataset_exports_the_same_bytes_as_the_duckdb_file_and_the_local_dataset(
    events_db: Path, local_dataset: Path, lake: str, deployment: None, event_type: str
) -> None:
    windows = [
        (datetime(2026, 11, 25, 10), datetime(2026, 11, 25, 10, 15)),
        (datetime(2026, 11, 25), datetime(2026, 11, 26)),
        (datetime(2026, 11, 24, 23), datetime(2026, 11, 25, 1)),
    ]
    for start, end in windows:
        for export in (csv_export, parquet_export):
            from_file = export(events_db, event_type, start, end)
            assert export(local_dataset, event_type, start, end) == from_file
            assert export(lake, event_type, start, end) == from_file
            assert len(from_file) > 100


def test_a_window_lists_and_opens_only_its_days_objects(lake: str, deployment: None) -> None:
    store = ParquetDataset.open(lake)
    files = parquet_files(store, "clicks", datetime(2026, 11, 25, 10), datetime(2026, 11, 25, 11))
    assert files and all(f.startswith(f"{LAKE}/{PREFIX}/clicks/date=2026-11-25/") for f in files)
    assert parquet_files(store, "clicks", datetime(2026, 11, 20), datetime(2026, 11, 20, 1)) == []


def test_a_window_fetches_only_the_row_groups_that_can_hold_it_and_nothing_else_is_read(
    lake: str, deployment: None, tmp_path: Path
) -> None:
    store = ParquetDataset.open(lake)
    start, end = datetime(2026, 11, 25, 10), datetime(2026, 11, 25, 10, 15)
    (remote,) = parquet_files(store, "clicks", start, end)
    (local,) = store.stage([remote], "created_at", start, end, tmp_path)
    size = Path(local).stat().st_size
    fetched = Path(local).stat().st_blocks * 512  # a sparse copy: the bytes written
    assert 0 < fetched < size / 4, (fetched, size)
    query = f"FROM read_parquet('{local}') WHERE created_at >= $1 AND created_at < $2"
    with duckdb.connect() as con:
        ((rows,),) = con.execute(f"SELECT count(id) {query}", [start, end]).fetchall()
        assert rows > 100
        # Outside the window, the unfetched row groups are zeros, which no page decodes
        # from: a read of them fails loudly, it never turns into rows.
        with pytest.raises(duckdb.Error, match="Invalid data"):
            con.execute(f"SELECT sum(hash(ua)) FROM read_parquet('{local}')").fetchall()


@pytest.mark.parametrize(
    ("unit", "zone"), [("ns", None), ("ns", "UTC"), ("ms", "UTC")], ids=["ns", "ns-utc", "ms-utc"]
)
def test_row_groups_are_chosen_by_statistics_of_any_timestamp_unit_and_zone(
    events_db: Path, s3_server: S3Server, deployment: None, tmp_path: Path, unit: str, zone: str
) -> None:
    """A dataset written by another tool (nanoseconds, instants): the same bytes from S3 as
    from the same files on disk, row groups still skipped, and the same latest event."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path / "dataset"
    folder = root / "clicks" / "date=2026-11-25"
    folder.mkdir(parents=True)
    with duckdb.connect(str(events_db), read_only=True) as con:
        table = con.sql("SELECT * FROM clicks ORDER BY created_at").arrow()
    if hasattr(table, "read_all"):
        table = table.read_all()
    kind = pa.timestamp(unit, tz=zone)
    at = table.schema.get_field_index("created_at")
    # A sub-microsecond part where the unit has one: statistics a microsecond cannot hold.
    moments = table.column(at).cast(pa.timestamp("us")).cast(pa.int64())
    shifted = pa.compute.add(pa.compute.multiply(moments, 1000), 999 if unit == "ns" else 0)
    values = shifted.cast(pa.timestamp("ns")).cast(kind, safe=False)
    pq.write_table(
        table.set_column(at, "created_at", values), folder / "part.parquet", row_group_size=1000
    )
    prefix = f"{unit}-{zone}"
    client = s3_server.client(s3_server.admin)
    client.put_object(
        Bucket=LAKE,
        Key=f"{prefix}/clicks/date=2026-11-25/part.parquet",
        Body=(folder / "part.parquet").read_bytes(),
    )
    remote = f"s3://{LAKE}/{prefix}"
    quarter = (datetime(2026, 11, 25, 10), datetime(2026, 11, 25, 10, 15))
    for start, end in (quarter, (datetime(2026, 11, 25), datetime(2026, 11, 26))):
        assert csv_export(remote, "clicks", start, end) == csv_export(root, "clicks", start, end)
    (staged,) = ParquetDataset.open(remote).stage(
        [f"{LAKE}/{prefix}/clicks/date=2026-11-25/part.parquet"], "created_at", *quarter, tmp_path
    )
    assert Path(staged).stat().st_blocks * 512 < Path(staged).stat().st_size / 4
    local, s3 = EventsDatabase(path=str(root)), EventsDatabase(path=remote)
    assert s3.progress("clicks") == local.progress("clicks")
    assert s3.progress("clicks").how == "latest event"


def test_watermarks_and_completeness_work_the_same_on_s3(
    lake: str, local_dataset: Path, s3_server: S3Server, deployment: None
) -> None:
    database = EventsDatabase(path=lake)
    progress = database.progress("clicks")
    assert (progress.complete_until, progress.how) == (datetime(2026, 11, 25, 12), "watermark")
    write_dataset_watermark(lake, "clicks", datetime(2026, 11, 25, 13))
    write_dataset_watermark(lake, "clicks", datetime(2026, 11, 25, 11))  # never backwards
    assert database.progress("clicks").complete_until == datetime(2026, 11, 25, 13)
    # Without a watermark: the latest event of the newest day folder, as the local dataset's.
    latest = database.progress("conversions")
    assert latest == EventsDatabase(path=str(local_dataset)).progress("conversions")
    assert latest.how == "latest event"
    assert latest.complete_until is not None and latest.complete_until < datetime(2026, 11, 26)
    # The written file is the local writer's format, read back by a customer-side client.
    body = fetch_admin(s3_server, f"{PREFIX}/{WATERMARK_FILE}")
    assert '"clicks": "2026-11-25 13:00:00"' in body


def fetch_admin(s3: S3Server, key: str) -> str:
    return s3.client(s3.admin).get_object(Bucket=LAKE, Key=key)["Body"].read().decode()


@pytest.mark.parametrize(
    "where", ["access denied", "bucket gone", "endpoint down"], ids=lambda w: w.replace(" ", "-")
)
def test_a_store_that_cannot_be_read_fails_its_windows_never_an_empty_file(
    lake: str, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    location = lake
    if where == "access denied":
        deployment_chain(monkeypatch, s3_server, s3_server.intruder)
    else:
        deployment_chain(monkeypatch, s3_server, s3_server.admin)
    if where == "bucket gone":
        location = f"s3://affise-no-such-lake/{PREFIX}"
    if where == "endpoint down":
        monkeypatch.setenv("AFFISE_EVENTS_S3_ENDPOINT", "http://127.0.0.1:9")
    database = EventsDatabase(path=location)
    progress = database.progress("clicks")
    assert progress.complete_until is None
    assert not progress.covers(datetime(2000, 1, 1))
    with pytest.raises(OSError) as failure:
        list(database.window_frames("clicks", START, START + timedelta(hours=1)))
    said = str(failure.value)
    expected = {
        "access denied": "ACCESS_DENIED",
        "bucket gone": "does not exist",
        "endpoint down": "127.0.0.1:9",
    }[where]
    assert expected in said or expected in progress.how, (said, progress.how)
    assert isinstance(failure.value, (DatasetUnreadable, FileNotFoundError))


def test_the_source_reads_with_the_deployments_chain_and_delivery_with_the_integrations_keys(
    rig: WindowRig, lake: str, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig.configure([("acme", "2026-11-24 00:00:00", rig.clicks("acme"))])
    # The deployment's chain can read the lake but not the customer's bucket; the customer's
    # keys can write its bucket but not read the lake: each works only with its own.
    deployment_chain(monkeypatch, s3_server, s3_server.admin)
    result = rig.run(events_db=lake)  # type: ignore[arg-type]
    assert result.success
    key = f"acme/2026/11/25/{START:%Y-%m-%d %H:%M:%S}.csv.gz"
    assert rig.objects() == [key]
    header, rows = delivered_rows(fetch(s3_server, rig.bucket, key))
    assert (header, rows) == source_rows(rig.events_db, "clicks", START, START + timedelta(hours=1))
    assert rows

    # The other direction: the deployment's chain holding the customer's keys (which cannot
    # read the lake) fails the window with the store's reason, and delivers nothing.
    deployment_chain(monkeypatch, s3_server, s3_server.customer)
    rig.instance.wipe()
    s3_server.client().delete_object(Bucket=rig.bucket, Key=key)
    failed = rig.run(events_db=lake)  # type: ignore[arg-type]
    assert not failed.success
    assert rig.objects() == []
    assert rig.status("acme", [WINDOW]) == ["FAILED"]
