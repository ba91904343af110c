"""Completion markers (issue 19, point 3): once every window of a UTC day (hour) of an export is
delivered, `_SUCCESS` lists each window's key, rows, bytes and SHA-256 from its latest record;
never before all its windows exist, re-written when one is delivered again. The planner is
tested directly with injected lookups; the rest on the real S3 server and DuckDB source."""

import hashlib
import json
import logging
import shutil
import textwrap
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg

from affise_s3_assets.automation.markers import build_marker_sensor
from affise_s3_assets.config.secrets import credential_variables
from affise_s3_assets.config.targets import ExportTarget, build_export_targets, build_window_groups
from affise_s3_assets.delivery.completion import (
    Period,
    marker_due,
    period_of,
    period_window_starts,
    plan_marker,
)
from affise_s3_assets.delivery.record import DeliveryRecord
from affise_s3_assets.delivery.writer import build_object_key
from tests.conftest import ROOT, Account, S3Server
from tests.delivered import (
    deliver,
    deny_intruders_puts,
    export_asset,
    fetch,
    insert_late_rows,
    integration,
    keys_in,
    range_tags,
    source_rows,
)
from tests.json_schema import problems

DAY = datetime(2026, 11, 25)
SCHEMA = json.loads((ROOT / "docs" / "completion.schema.json").read_text())


# The planner's tests need no server: an export's target, its endpoint never called.
NOWHERE = S3Server("http://127.0.0.1:9", *(Account("KEY", "secret"),) * 3)


def target(extra: str, frequency: int = 60) -> ExportTarget:
    config = integration(NOWHERE, "bkt", frequency=frequency, directory="d", extra=extra)
    (found,) = build_export_targets([config])
    return found


def records_for(export: ExportTarget, starts: Sequence[datetime]) -> dict[str, DeliveryRecord]:
    step = timedelta(minutes=export.frequency)
    found = {}
    for n, start in enumerate(starts):
        key = build_object_key("d", start, export.file_format, export.layout, export.file_name)
        found[start.strftime("%Y-%m-%d-%H:%M")] = DeliveryRecord(
            rows=n,
            window_start=start,
            window_end=start + step,
            object_bytes=100 + n,
            sha256=f"{n:064x}",
            s3_uri=f"s3://bkt/{key}",
        )
    return found


def test_a_period_holds_the_exports_windows_from_its_first_one() -> None:
    assert period_of(datetime(2026, 11, 25, 10, 45), "day") == Period("day", DAY)
    assert period_of(datetime(2026, 11, 25, 10, 45), "hour") == Period(
        "hour", datetime(2026, 11, 25, 10)
    )
    hour = Period("hour", datetime(2026, 11, 25, 10))
    assert period_window_starts(hour, DAY, 15) == [
        datetime(2026, 11, 25, 10, m) for m in (0, 15, 30, 45)
    ]
    # Windows before the export's first window are not its own: not waited for.
    first = datetime(2026, 11, 25, 10)
    assert period_window_starts(Period("day", DAY), first, 60) == [
        datetime(2026, 11, 25, h) for h in range(10, 24)
    ]
    assert period_window_starts(Period("day", DAY), datetime(2026, 11, 24), 120) == [
        datetime(2026, 11, 25, h) for h in range(0, 24, 2)
    ]


def test_a_marker_waits_for_every_window_of_its_period() -> None:
    export = target("      completion: hour\n", frequency=15)
    hour = Period("hour", datetime(2026, 11, 25, 10))
    starts = period_window_starts(hour, export.first_window, 15)
    records = records_for(export, starts)
    marker = plan_marker(export, hour, records)
    assert marker is not None and marker.key == "d/2026/11/25/_manifests/_SUCCESS_10"
    document = json.loads(marker.body)
    assert problems(document, SCHEMA) == []
    assert [w["key"] for w in document["windows"]] == [
        f"d/2026/11/25/2026-11-25 10:{m:02}:00.csv.gz" for m in (0, 15, 30, 45)
    ]
    assert document["windows"][1] == {
        "start": "2026-11-25T10:15:00Z",
        "end": "2026-11-25T10:30:00Z",
        "key": "d/2026/11/25/2026-11-25 10:15:00.csv.gz",
        "rows": 1,
        "bytes": 101,
        "sha256": f"{1:064x}",
    }
    assert (document["rows"], document["bytes"]) == (0 + 1 + 2 + 3, 400 + 6)
    assert document["period"] == {
        "unit": "hour",
        "start": "2026-11-25T10:00:00Z",
        "end": "2026-11-25T11:00:00Z",
    }
    assert document["export"] == {"integration": "acme", "event_type": "clicks"}
    # The same records give the same bytes.
    assert plan_marker(export, hour, dict(reversed(records.items()))) == marker

    # A window missing, or recorded at another key (the layout changed since): no marker.
    missing = dict(records)
    missing.pop("2026-11-25-10:30")
    assert plan_marker(export, hour, missing) is None
    moved = dict(records)
    moved["2026-11-25-10:30"] = DeliveryRecord(
        rows=2, object_bytes=1, sha256="0" * 64, s3_uri="s3://bkt/d/dt=2026-11-25/hour=10/x.csv.gz"
    )
    assert plan_marker(export, hour, moved) is None


def test_marker_due_asks_nothing_while_the_run_still_has_a_window_of_the_period() -> None:
    export = target("      completion: day\n      layout: hive\n")
    starts = period_window_starts(Period("day", DAY), export.first_window, 60)
    asked: list[tuple[dg.AssetKey, list[str]]] = []

    def lookup(asset_key: dg.AssetKey, keys: Sequence[str]) -> Mapping[str, DeliveryRecord]:
        asked.append((asset_key, list(keys)))
        return records_for(export, starts)

    assert marker_due(export, starts[5], {starts[6]}, lookup) is None
    assert asked == []
    marker = marker_due(export, starts[-1], set(), lookup)
    assert marker is not None and marker.key == "d/dt=2026-11-25/_SUCCESS"
    assert asked == [(export.asset_key, [s.strftime("%Y-%m-%d-%H:%M") for s in starts])]
    assert len(json.loads(marker.body)["windows"]) == 24
    # No completion, no marker, nothing asked.
    plain = target("")
    assert marker_due(plain, starts[-1], set(), lookup) is None and len(asked) == 1


def customer_check(s3: Any, bucket: str, marker_key: str) -> int:
    """The customer contract's check of a day (or hour) from its marker, as
    docs/customer-contract.md prints it, run on this bucket and marker; returns its rows."""
    text = (ROOT / "docs" / "customer-contract.md").read_text()
    block = text.split("Verify a day from its marker:")[1].split("```python")[1].split("```")[0]
    code = textwrap.dedent(block)
    line = 's3, bucket = boto3.client("s3"), "acme-affise-raw"'
    key = 'key = "affise/clicks/2026/11/25/_manifests/_SUCCESS"'
    assert line in code and key in code
    code = code.replace(line, f"s3, bucket = CLIENT, {bucket!r}").replace(
        key, f"key = {marker_key!r}"
    )
    scope: dict[str, Any] = {"CLIENT": s3}
    exec(code, scope)  # fails with the window's key where a check does not hold
    return scope["total"]


def markers_in(s3: S3Server, bucket: str) -> list[str]:
    return [key for key in keys_in(s3, bucket) if "_SUCCESS" in key]


def test_a_day_marker_appears_once_its_last_window_is_in_and_is_rewritten_on_redelivery(
    s3_server: S3Server, bucket: str, customer_env: dict, events_db: Path, tmp_path: Path
) -> None:
    """An export starting at 10:00 with `completion: day`: the windows before its start are not
    waited for; delivering 10:00-22:00 writes no marker, 23:00 completes the day and writes
    `_manifests/_SUCCESS` listing the 14 objects as stored (rows summing to the source's day);
    a re-delivery of 11:00 with late rows re-writes it under the same key with the new object,
    and a delivery of the same rows again gives the same bytes."""
    db = tmp_path / "events.duckdb"
    shutil.copy(events_db, db)
    config = integration(
        s3_server, bucket, directory="affise/clicks", extra="      completion: day\n"
    )
    config = config.model_copy(update={"start": datetime(2026, 11, 25, 10)})
    asset = export_asset(config)
    instance = dg.DagsterInstance.ephemeral()
    first = deliver(
        asset,
        None,
        db,
        tags=range_tags("2026-11-25-10:00", "2026-11-25-22:00"),
        instance=instance,
    )
    assert first.success
    assert markers_in(s3_server, bucket) == []  # 23:00 is not delivered yet

    assert deliver(asset, "2026-11-25-23:00", db, instance=instance).success
    marker_key = "affise/clicks/2026/11/25/_manifests/_SUCCESS"
    assert markers_in(s3_server, bucket) == [marker_key]
    written = fetch(s3_server, bucket, marker_key)
    marker = json.loads(written)
    assert problems(marker, SCHEMA) == []
    data_keys = [k for k in keys_in(s3_server, bucket) if "/_" not in k]
    assert [w["key"] for w in marker["windows"]] == data_keys
    assert len(data_keys) == 14
    for window in marker["windows"]:
        data = fetch(s3_server, bucket, window["key"])
        assert window["sha256"] == hashlib.sha256(data).hexdigest()
        assert window["bytes"] == len(data)
    _, rows = source_rows(db, "clicks", datetime(2026, 11, 25, 10), DAY + timedelta(days=1))
    assert customer_check(s3_server.client(), bucket, marker_key) == len(rows) == marker["rows"]

    # Three late clicks at 11:30: the window delivered again re-writes the marker.
    insert_late_rows(db, datetime(2026, 11, 25, 11, 30), affiliate=101)
    assert deliver(asset, "2026-11-25-11:00", db, instance=instance).success
    rewritten = json.loads(fetch(s3_server, bucket, marker_key))
    assert rewritten["rows"] == marker["rows"] + 3
    changed = [
        (old["key"], new["rows"] - old["rows"])
        for old, new in zip(marker["windows"], rewritten["windows"], strict=True)
        if old != new
    ]
    assert changed == [("affise/clicks/2026/11/25/2026-11-25 11:00:00.csv.gz", 3)]
    assert customer_check(s3_server.client(), bucket, marker_key) == len(rows) + 3
    again = fetch(s3_server, bucket, marker_key)
    assert deliver(asset, "2026-11-25-11:00", db, instance=instance).success
    assert fetch(s3_server, bucket, marker_key) == again
    assert again != written


def test_hour_markers_in_hive_folders_follow_each_hours_last_window(
    s3_server: S3Server, bucket: str, customer_env: dict, events_db: Path
) -> None:
    """15-minute windows with `completion: hour` and `layout: hive`: three windows of 10:00
    write nothing; the fourth writes `dt=2026-11-25/hour=10/_manifests/_SUCCESS` listing the
    four; a range over 11:00-12:45 writes the markers of both its hours."""
    extra = "      completion: hour\n      layout: hive\n"
    asset = export_asset(
        integration(s3_server, bucket, frequency=15, directory="affise/clicks", extra=extra)
    )
    instance = dg.DagsterInstance.ephemeral()
    tags = range_tags("2026-11-25-10:00", "2026-11-25-10:30")
    assert deliver(asset, None, events_db, tags=tags, instance=instance).success
    assert markers_in(s3_server, bucket) == []
    assert deliver(asset, "2026-11-25-10:45", events_db, instance=instance).success
    ten = "affise/clicks/dt=2026-11-25/hour=10/_manifests/_SUCCESS"
    assert markers_in(s3_server, bucket) == [ten]
    marker = json.loads(fetch(s3_server, bucket, ten))
    assert problems(marker, SCHEMA) == []
    assert [w["start"][11:16] for w in marker["windows"]] == ["10:00", "10:15", "10:30", "10:45"]
    _, rows = source_rows(
        events_db, "clicks", datetime(2026, 11, 25, 10), datetime(2026, 11, 25, 11)
    )
    assert customer_check(s3_server.client(), bucket, ten) == len(rows)

    tags = range_tags("2026-11-25-11:00", "2026-11-25-12:45")
    assert deliver(asset, None, events_db, tags=tags, instance=instance).success
    assert markers_in(s3_server, bucket) == [
        ten,
        "affise/clicks/dt=2026-11-25/hour=11/_manifests/_SUCCESS",
        "affise/clicks/dt=2026-11-25/hour=12/_manifests/_SUCCESS",
    ]


def test_a_marker_that_cannot_be_written_is_owed_and_the_sensor_writes_it(
    s3_server: S3Server, bucket: str, customer_env: dict, events_db: Path, monkeypatch: Any
) -> None:
    """The window is delivered and its run succeeds, the marker's refusal in its log; the
    marker is owed, and the marker sensor writes it once it can (saying meanwhile why not),
    with no delivery of the period again."""
    # No data key says SUCCESS.
    deny_intruders_puts(s3_server, bucket, "*SUCCESS*")
    for variable, value in zip(
        credential_variables("acme"),
        (s3_server.intruder.access_key, s3_server.intruder.secret_key),
        strict=True,
    ):
        monkeypatch.setenv(variable, value)
    asset = export_asset(
        integration(s3_server, bucket, directory="d", extra="      completion: hour\n")
    )
    instance = dg.DagsterInstance.ephemeral()
    result = deliver(asset, "2026-11-25-10:00", events_db, instance=instance)
    assert result.success
    logged = [
        event.message or ""
        for event in instance.all_logs(result.run_id)
        if event.level >= logging.WARNING
    ]
    assert any("_manifests/_SUCCESS_10" in line and "AccessDenied" in line for line in logged)
    assert keys_in(s3_server, bucket) == ["d/2026/11/25/2026-11-25 10:00:00.csv.gz"]
    (key,) = asset.keys
    assert set(instance.get_materialized_partitions(key)) == {"2026-11-25-10:00"}
    # No failure recorded on the delivered window: it is not late, nobody is told it failed.
    assert not instance.fetch_observations(dg.AssetRecordsFilter(asset_key=key), limit=1).records

    config = integration(s3_server, bucket, directory="d", extra="      completion: hour\n")
    (export,) = build_export_targets([config])
    groups = build_window_groups([export])
    sensor = build_marker_sensor(groups)
    tick = sensor.evaluate_tick(dg.build_sensor_context(instance=instance))
    assert "not yet written" in str(tick.skip_message) and "AccessDenied" in str(tick.skip_message)
    assert markers_in(s3_server, bucket) == []

    s3_server.client().delete_bucket_policy(Bucket=bucket)
    for variable, value in zip(
        credential_variables("acme"),
        (s3_server.customer.access_key, s3_server.customer.secret_key),
        strict=True,
    ):
        monkeypatch.setenv(variable, value)
    tick = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=tick.cursor))
    assert "1 markers written" in str(tick.skip_message)
    assert markers_in(s3_server, bucket) == ["d/2026/11/25/_manifests/_SUCCESS_10"]
    # Written: the next tick writes nothing again.
    tick = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=tick.cursor))
    assert "0 markers written" in str(tick.skip_message)
