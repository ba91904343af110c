"""Window jobs against the real S3 server: one read of the window, one object per
integration, one materialization per integration partition, failures isolated."""

from datetime import datetime
from pathlib import Path

import dagster as dg
import pytest

from affise_s3_assets.definitions import build_definitions
from tests.conftest import S3Server
from tests.test_delivery import (
    ADVERTISER,
    deliver,
    delivered_rows,
    export_asset,
    fetch,
    integration,
    keys_in,
    source_rows,
)

WINDOW = "2026-11-25-10:00"
START, END = datetime(2026, 11, 25, 10), datetime(2026, 11, 25, 11)


def clicks_block(s3: S3Server, bucket: str, directory: str, extra: str = "") -> str:
    return f"""    clicks:
      frequency: 60
      bucket: {bucket}
      region: us-west-2
      directory: {directory}
      access_key: ${{TEST_ACCESS_KEY_ID}}
      secret_key: ${{TEST_SECRET_ACCESS_KEY}}
      endpoint_url: {s3.endpoint_url}
{extra}"""


def write_config(tmp_path: Path, entries: list[tuple[str, str, str]]) -> Path:
    text = "integrations:\n" + "".join(
        f'  - name: {name}\n    start: "{start}"\n{block}' for name, start, block in entries
    )
    path = tmp_path / "integrations.yaml"
    path.write_text(text)
    return path


def run_window(
    path: Path,
    events_db: Path,
    monkeypatch: pytest.MonkeyPatch,
    instance: dg.DagsterInstance,
    only: list[str] | None = None,
) -> dg.ExecuteInProcessResult:
    monkeypatch.setenv("AFFISE_EVENTS_DB", str(events_db))
    job = build_definitions(path).get_job_def("clicks_every_60min_job")
    config = {"integrations": only} if only else {}
    return job.execute_in_process(
        partition_key=WINDOW,
        run_config={"ops": {"deliver_clicks_every_60min": {"config": config}}},
        instance=instance,
        raise_on_error=False,
    )


def materialized(instance: dg.DagsterInstance, name: str) -> set[str]:
    return set(instance.get_materialized_partitions(dg.AssetKey(["affise", name, "clicks"])))


def test_one_run_delivers_every_integration_with_its_own_filters(
    s3_server: S3Server,
    bucket: str,
    customer_env: dict[str, str],
    events_db: Path,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    both = f'      affiliates: [101, 102]\n      advertisers: ["{ADVERTISER}"]\n'
    path = write_config(
        tmp_path,
        [
            ("everything", "2026-11-24 00:00:00", clicks_block(s3_server, bucket, "all")),
            ("picky", "2026-11-24 00:00:00", clicks_block(s3_server, bucket, "picky", both)),
            ("twin", "2026-11-24 00:00:00", clicks_block(s3_server, bucket, "twin", both)),
            ("later", "2026-11-25 12:00:00", clicks_block(s3_server, bucket, "later")),
        ],
    )
    with dg.instance_for_test() as instance:
        result = run_window(path, events_db, monkeypatch, instance)
        assert result.success
        for name in ("everything", "picky", "twin"):
            assert materialized(instance, name) == {WINDOW}
        assert materialized(instance, "later") == set()  # its start is after this window
        event = instance.get_latest_materialization_event(
            dg.AssetKey(["affise", "picky", "clicks"])
        )
        metadata = {k: v.value for k, v in event.asset_materialization.metadata.items()}
    assert keys_in(s3_server, bucket) == [
        f"{d}/2026/11/25/2026-11-25 10:00:00.csv.gz" for d in ("all", "picky", "twin")
    ]
    _, everything = source_rows(events_db, "clicks", START, END)
    _, picky = source_rows(events_db, "clicks", START, END, (101, 102), (ADVERTISER,))
    assert 0 < len(picky) < len(everything)
    for directory, expected in (("all", everything), ("picky", picky), ("twin", picky)):
        key = f"{directory}/2026/11/25/2026-11-25 10:00:00.csv.gz"
        _, rows = delivered_rows(fetch(s3_server, bucket, key))
        assert rows == expected
    assert metadata["rows"] == len(picky)
    assert metadata["s3_uri"] == f"s3://{bucket}/picky/2026/11/25/2026-11-25 10:00:00.csv.gz"
    assert metadata["window_start"] == "2026-11-25 10:00:00"
    assert metadata["affiliates"] == "101, 102"


def test_window_job_and_asset_path_deliver_identical_bytes(
    s3_server: S3Server,
    bucket: str,
    customer_env: dict[str, str],
    events_db: Path,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    extra = "      affiliates: [101, 103]\n"
    path = write_config(
        tmp_path, [("acme", "2026-11-24 00:00:00", clicks_block(s3_server, bucket, "fan", extra))]
    )
    with dg.instance_for_test() as instance:
        assert run_window(path, events_db, monkeypatch, instance).success
    asset = export_asset(integration(s3_server, bucket, directory="single", extra=extra))
    deliver([asset], WINDOW, events_db)
    fanned = fetch(s3_server, bucket, "fan/2026/11/25/2026-11-25 10:00:00.csv.gz")
    single = fetch(s3_server, bucket, "single/2026/11/25/2026-11-25 10:00:00.csv.gz")
    assert fanned == single


def test_a_failing_integration_fails_alone_and_can_be_redelivered_alone(
    s3_server: S3Server,
    bucket: str,
    customer_env: dict[str, str],
    events_db: Path,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    missing = bucket + "-not-yet"
    path = write_config(
        tmp_path,
        [
            ("good", "2026-11-24 00:00:00", clicks_block(s3_server, bucket, "good")),
            ("broken", "2026-11-24 00:00:00", clicks_block(s3_server, missing, "broken")),
        ],
    )
    with dg.instance_for_test() as instance:
        result = run_window(path, events_db, monkeypatch, instance)
        assert not result.success
        (failure,) = result.get_step_failure_events()
        message = failure.step_failure_data.error.message
        assert "1 of 2 deliveries failed" in message
        assert f"integration 'broken' (clicks) to bucket '{missing}'" in message
        assert "broken/2026/11/25/2026-11-25 10:00:00.csv.gz" in message
        assert "NoSuchBucket" in message
        assert s3_server.customer.secret_key not in message
        assert materialized(instance, "good") == {WINDOW}
        assert materialized(instance, "broken") == set()
        assert keys_in(s3_server, bucket) == ["good/2026/11/25/2026-11-25 10:00:00.csv.gz"]

        # The operator fixes the cause and re-delivers only the failed integration.
        s3_server.client().create_bucket(Bucket=missing)
        again = run_window(path, events_db, monkeypatch, instance, only=["broken"])
        assert again.success
        assert materialized(instance, "broken") == {WINDOW}
        assert (
            len(
                instance.fetch_materializations(
                    dg.AssetKey(["affise", "good", "clicks"]), limit=10
                ).records
            )
            == 1
        )
    assert keys_in(s3_server, missing) == ["broken/2026/11/25/2026-11-25 10:00:00.csv.gz"]


def test_unknown_integration_in_run_config_is_refused(
    s3_server: S3Server,
    bucket: str,
    customer_env: dict[str, str],
    events_db: Path,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    path = write_config(
        tmp_path, [("acme", "2026-11-24 00:00:00", clicks_block(s3_server, bucket, "x"))]
    )
    with dg.instance_for_test() as instance:
        result = run_window(path, events_db, monkeypatch, instance, only=["acme", "nope"])
    assert not result.success
    assert "['nope']" in result.get_step_failure_events()[0].step_failure_data.error.message
    assert keys_in(s3_server, bucket) == []


def test_unreadable_source_fails_the_window_and_delivers_nothing(
    s3_server: S3Server,
    bucket: str,
    customer_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    path = write_config(
        tmp_path, [("acme", "2026-11-24 00:00:00", clicks_block(s3_server, bucket, "x"))]
    )
    with dg.instance_for_test() as instance:
        result = run_window(path, tmp_path / "absent.duckdb", monkeypatch, instance)
        assert not result.success
        error = result.get_step_failure_events()[0].step_failure_data.error
        assert "absent.duckdb does not exist" in str(error.cause.message)
        assert materialized(instance, "acme") == set()
    assert keys_in(s3_server, bucket) == []


def test_naming_an_integration_before_its_start_is_refused(
    s3_server: S3Server,
    bucket: str,
    customer_env: dict[str, str],
    events_db: Path,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    path = write_config(
        tmp_path,
        [
            ("acme", "2026-11-24 00:00:00", clicks_block(s3_server, bucket, "a")),
            ("late", "2026-11-25 12:00:00", clicks_block(s3_server, bucket, "l")),
        ],
    )
    with dg.instance_for_test() as instance:
        result = run_window(path, events_db, monkeypatch, instance, only=["late", "late"])
    assert not result.success
    message = result.get_step_failure_events()[0].step_failure_data.error.message
    assert "is before the start of ['late']" in message
    assert keys_in(s3_server, bucket) == []
