"""Window jobs against the real S3 server: one read of the window, one object per
integration, one materialization per integration partition, failures isolated."""

from collections.abc import Iterator
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
KEY_TAIL = "2026/11/25/2026-11-25 10:00:00.csv.gz"


class WindowRig:
    """One integrations file, one Dagster instance, one bucket on the real S3 server."""

    def __init__(
        self,
        s3: S3Server,
        bucket: str,
        events_db: Path,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        instance: dg.DagsterInstance,
    ) -> None:
        self.s3, self.bucket, self.events_db = s3, bucket, events_db
        self.tmp_path, self.monkeypatch, self.instance = tmp_path, monkeypatch, instance
        self.path = tmp_path / "integrations.yaml"

    def clicks(self, directory: str, extra: str = "", bucket: str | None = None) -> str:
        return f"""    clicks:
      frequency: 60
      bucket: {bucket or self.bucket}
      region: us-west-2
      directory: {directory}
      access_key: ${{TEST_ACCESS_KEY_ID}}
      secret_key: ${{TEST_SECRET_ACCESS_KEY}}
      endpoint_url: {self.s3.endpoint_url}
{extra}"""

    def configure(self, entries: list[tuple[str, str, str]]) -> None:
        """(name, start, clicks block) per integration."""
        self.path.write_text(
            "integrations:\n"
            + "".join(
                f'  - name: {name}\n    start: "{start}"\n{block}' for name, start, block in entries
            )
        )

    def run(
        self, only: list[str] | None = None, events_db: Path | None = None
    ) -> dg.ExecuteInProcessResult:
        self.monkeypatch.setenv("AFFISE_EVENTS_DB", str(events_db or self.events_db))
        job = build_definitions(self.path).get_job_def("clicks_every_60min_job")
        config = {"integrations": only} if only else {}
        return job.execute_in_process(
            partition_key=WINDOW,
            run_config={"ops": {"deliver_clicks_every_60min": {"config": config}}},
            instance=self.instance,
            raise_on_error=False,
        )

    def materialized(self, name: str) -> set[str]:
        key = dg.AssetKey(["affise", name, "clicks"])
        return set(self.instance.get_materialized_partitions(key))

    def keys(self, bucket: str | None = None) -> list[str]:
        return keys_in(self.s3, bucket or self.bucket)


@pytest.fixture
def rig(
    s3_server: S3Server,
    bucket: str,
    customer_env: dict[str, str],
    events_db: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[WindowRig]:
    with dg.instance_for_test() as instance:
        yield WindowRig(s3_server, bucket, events_db, tmp_path, monkeypatch, instance)


def observations(rig: WindowRig, name: str) -> list[dg.AssetObservation]:
    records = rig.instance.fetch_observations(dg.AssetKey(["affise", name, "clicks"]), limit=10)
    return [record.asset_observation for record in records.records]


def failure_message(result: dg.ExecuteInProcessResult) -> str:
    return result.get_step_failure_events()[0].step_failure_data.error.message


def test_one_run_delivers_every_integration_with_its_own_filters(rig: WindowRig) -> None:
    both = f'      affiliates: [101, 102]\n      advertisers: ["{ADVERTISER}"]\n'
    rig.configure(
        [
            ("everything", "2026-11-24 00:00:00", rig.clicks("all")),
            ("picky", "2026-11-24 00:00:00", rig.clicks("picky", both)),
            ("twin", "2026-11-24 00:00:00", rig.clicks("twin", both)),
            ("later", "2026-11-25 12:00:00", rig.clicks("later")),
        ]
    )
    assert rig.run().success
    for name in ("everything", "picky", "twin"):
        assert rig.materialized(name) == {WINDOW}
    assert rig.materialized("later") == set()  # its start is after this window
    event = rig.instance.get_latest_materialization_event(
        dg.AssetKey(["affise", "picky", "clicks"])
    )
    metadata = {k: v.value for k, v in event.asset_materialization.metadata.items()}
    assert rig.keys() == [f"{d}/{KEY_TAIL}" for d in ("all", "picky", "twin")]
    _, everything = source_rows(rig.events_db, "clicks", START, END)
    _, picky = source_rows(rig.events_db, "clicks", START, END, (101, 102), (ADVERTISER,))
    assert 0 < len(picky) < len(everything)
    for directory, expected in (("all", everything), ("picky", picky), ("twin", picky)):
        _, rows = delivered_rows(fetch(rig.s3, rig.bucket, f"{directory}/{KEY_TAIL}"))
        assert rows == expected
    assert metadata["rows"] == len(picky)
    assert metadata["s3_uri"] == f"s3://{rig.bucket}/picky/{KEY_TAIL}"
    assert metadata["window_start"] == "2026-11-25 10:00:00"
    assert metadata["affiliates"] == "101, 102"


def test_window_job_and_asset_path_deliver_identical_bytes(rig: WindowRig) -> None:
    extra = "      affiliates: [101, 103]\n"
    rig.configure([("acme", "2026-11-24 00:00:00", rig.clicks("fan", extra))])
    assert rig.run().success
    asset = export_asset(integration(rig.s3, rig.bucket, directory="single", extra=extra))
    deliver([asset], WINDOW, rig.events_db)
    fanned = fetch(rig.s3, rig.bucket, f"fan/{KEY_TAIL}")
    assert fanned == fetch(rig.s3, rig.bucket, f"single/{KEY_TAIL}")


def test_a_failing_integration_fails_alone_and_can_be_redelivered_alone(rig: WindowRig) -> None:
    missing = rig.bucket + "-not-yet"
    rig.configure(
        [
            ("good", "2026-11-24 00:00:00", rig.clicks("good")),
            ("broken", "2026-11-24 00:00:00", rig.clicks("broken", bucket=missing)),
        ]
    )
    result = rig.run()
    assert not result.success
    assert len(result.get_step_failure_events()) == 1
    message = failure_message(result)
    assert "1 of 2 deliveries failed" in message
    assert f"integration 'broken' (clicks) to bucket '{missing}'" in message
    assert f"broken/{KEY_TAIL}" in message
    assert "NoSuchBucket" in message
    assert rig.s3.customer.secret_key not in message
    assert rig.materialized("good") == {WINDOW}
    assert rig.materialized("broken") == set()
    assert rig.keys() == [f"good/{KEY_TAIL}"]
    # The broken asset's own page says why its partition is missing; the good one's says nothing.
    (observed,) = observations(rig, "broken")
    assert observed.partition == WINDOW
    reason = observed.metadata["delivery_failed"].value
    assert "NoSuchBucket" in reason and f"broken/{KEY_TAIL}" in reason
    assert rig.s3.customer.secret_key not in reason
    assert observations(rig, "good") == []

    # The operator fixes the cause and re-delivers only the failed integration.
    rig.s3.client().create_bucket(Bucket=missing)
    assert rig.run(only=["broken"]).success
    assert rig.materialized("broken") == {WINDOW}
    good = rig.instance.fetch_materializations(dg.AssetKey(["affise", "good", "clicks"]), limit=10)
    assert len(good.records) == 1
    assert rig.keys(missing) == [f"broken/{KEY_TAIL}"]


def test_unknown_integration_in_run_config_is_refused(rig: WindowRig) -> None:
    rig.configure([("acme", "2026-11-24 00:00:00", rig.clicks("x"))])
    result = rig.run(only=["acme", "nope"])
    assert not result.success
    assert "['nope']" in failure_message(result)
    assert rig.keys() == []


def test_unreadable_source_fails_the_window_and_delivers_nothing(rig: WindowRig) -> None:
    rig.configure([("acme", "2026-11-24 00:00:00", rig.clicks("x"))])
    result = rig.run(events_db=rig.tmp_path / "absent.duckdb")
    assert not result.success
    error = result.get_step_failure_events()[0].step_failure_data.error
    assert "absent.duckdb does not exist" in str(error.cause.message)
    assert rig.materialized("acme") == set()
    assert rig.keys() == []


def test_naming_an_integration_before_its_start_is_refused(rig: WindowRig) -> None:
    rig.configure(
        [
            ("acme", "2026-11-24 00:00:00", rig.clicks("a")),
            ("late", "2026-11-25 12:00:00", rig.clicks("l")),
        ]
    )
    result = rig.run(only=["late", "late"])
    assert not result.success
    assert "is before the start of ['late']" in failure_message(result)
    assert rig.keys() == []
