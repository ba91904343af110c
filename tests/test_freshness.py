"""Freshness that means the latest window (issue 19, point 7): an export whose latest due
window is missing or failed is late, whatever older windows were delivered since."""

import json
from datetime import datetime, timedelta
from typing import Any

import dagster as dg
import pytest

from affise_s3_assets.automation.freshness import (
    CHECK_NAME,
    FRESHNESS_GRACE,
    build_latest_window_sensor,
    latest_window,
)
from affise_s3_assets.config.apply import parse_integrations
from affise_s3_assets.config.schema import Lateness
from affise_s3_assets.config.targets import build_export_targets, build_window_groups
from tests.integrations_text import one_integration

LATENESS = timedelta(minutes=2)


def groups() -> list:
    parsed = parse_integrations(one_integration())  # acme clicks every 15 minutes
    return build_window_groups(build_export_targets(parsed.integrations), Lateness())


class Ticker:
    """A sensor's ticks one after another, each with the cursor the last one left."""

    def __init__(self, sensor: dg.SensorDefinition, instance: dg.DagsterInstance) -> None:
        self.sensor, self.instance = sensor, instance
        self.cursor: str | None = None

    def __call__(self) -> str:
        context = dg.build_sensor_context(instance=self.instance, cursor=self.cursor)
        result = self.sensor.evaluate_tick(context)
        self.cursor = result.cursor
        return str(result.skip_message)


def test_the_latest_due_window_is_the_one_judged() -> None:
    (group,) = groups()
    (target,) = group.targets
    delivered: set[str] = set()

    def lookup(_: dg.AssetKey, key: str) -> bool:
        return key in delivered

    # 10:15 closes at 10:30; due at 10:30 + 2 + 10 minutes.
    at = datetime(2026, 11, 25, 10, 30) + LATENESS + FRESHNESS_GRACE
    verdict = latest_window(target, LATENESS, at, lookup)
    assert (verdict.window, verdict.passed) == ("2026-11-25-10:15", False)
    # Only that window missing: a warning; the one before missing too: an error.
    delivered.add("2026-11-25-10:00")
    assert latest_window(target, LATENESS, at, lookup).severity == dg.AssetCheckSeverity.WARN
    delivered.clear()
    assert latest_window(target, LATENESS, at, lookup).severity == dg.AssetCheckSeverity.ERROR
    # A minute earlier the window judged is the one before.
    earlier = latest_window(target, LATENESS, at - timedelta(minutes=1), lookup)
    assert earlier.window == "2026-11-25-10:00"
    delivered.add("2026-11-25-10:15")
    assert latest_window(target, LATENESS, at, lookup).passed
    # Before the export's first window closes nothing is due.
    first = latest_window(target, LATENESS, datetime(2026, 11, 1, 0, 5), lookup)
    assert first.passed and first.window is None


def test_redelivering_an_old_window_does_not_make_a_late_export_fresh() -> None:
    (group,) = groups()
    (target,) = group.targets
    now = datetime(2026, 11, 25, 12, 0)
    sensor = build_latest_window_sensor([group], clock=lambda: now)
    check = dg.AssetCheckKey(target.asset_key, CHECK_NAME)
    with dg.instance_for_test() as instance:

        def deliver(partition: str) -> None:
            instance.report_runless_asset_event(
                dg.AssetMaterialization(target.asset_key, partition=partition)
            )

        def status() -> dg.AssetCheckSeverity | None:
            (record,) = instance.event_log_storage.get_asset_check_execution_history(check, 1)
            evaluation = record.event.dagster_event.event_specific_data
            return None if evaluation.passed else evaluation.severity

        tick = Ticker(sensor, instance)

        def recorded() -> int:
            return len(instance.event_log_storage.get_asset_check_execution_history(check, 100))

        # At 12:00 the latest due window is 11:30 (it closed at 11:45; + 2 + 10 minutes).
        deliver("2026-11-25-11:30")
        tick()
        assert status() is None
        now = datetime(2026, 11, 25, 12, 30)
        # Then 11:45 and 12:00 fall due undelivered, while an old window is re-delivered.
        deliver("2026-11-24-09:00")
        assert "1 of 1 exports late" in tick()
        assert status() == dg.AssetCheckSeverity.ERROR
        # Nothing changed: no new evaluation is recorded.
        before = recorded()
        tick()
        assert recorded() == before
        deliver("2026-11-25-12:00")
        tick()
        assert status() is None


def delivered(instance: dg.DagsterInstance, key: dg.AssetKey, *partitions: str) -> None:
    for partition in partitions:
        instance.report_runless_asset_event(dg.AssetMaterialization(key, partition=partition))


def failed(
    instance: dg.DagsterInstance, key: dg.AssetKey, partition: str, why: str, permanent: bool
) -> None:
    """A failure observation as the export step records it (delivery/report.py)."""
    instance.report_runless_asset_event(
        dg.AssetObservation(
            key, partition=partition, metadata={"delivery_failed": why, "permanent": permanent}
        )
    )


def verdict_after_a_tick(sensor: dg.SensorDefinition, instance: dg.DagsterInstance) -> Any:
    """The evaluation the sensor's tick recorded last for the one export."""
    sensor.evaluate_tick(dg.build_sensor_context(instance=instance))
    (target,) = groups()[0].targets
    check = dg.AssetCheckKey(target.asset_key, CHECK_NAME)
    (record,) = instance.event_log_storage.get_asset_check_execution_history(check, 1)
    return record.event.dagster_event.event_specific_data


def test_a_failed_latest_window_is_late_at_once_and_not_once_delivered() -> None:
    (group,) = groups()
    (target,) = group.targets
    sensor = build_latest_window_sensor([group], clock=lambda: datetime(2026, 11, 25, 12, 0))
    with dg.instance_for_test() as instance:
        delivered(instance, target.asset_key, "2026-11-25-11:15", "2026-11-25-11:30")
        # The window that just closed failed for good: late now, not after the grace.
        failed(instance, target.asset_key, "2026-11-25-11:45", "AccessDenied: s3:PutObject", True)
        evaluation = verdict_after_a_tick(sensor, instance)
        assert not evaluation.passed
        assert evaluation.severity == dg.AssetCheckSeverity.ERROR
        assert "window 2026-11-25-11:45 failed: AccessDenied" in evaluation.description
        # Delivered again: the failure no longer counts.
        delivered(instance, target.asset_key, "2026-11-25-11:45")
        assert verdict_after_a_tick(sensor, instance).passed


def test_a_transient_failure_waits_for_the_grace() -> None:
    (group,) = groups()
    (target,) = group.targets
    sensor = build_latest_window_sensor([group], clock=lambda: datetime(2026, 11, 25, 12, 0))
    with dg.instance_for_test() as instance:
        delivered(instance, target.asset_key, "2026-11-25-11:30")
        # The source was not complete yet for 11:45: tried again, not late.
        failed(instance, target.asset_key, "2026-11-25-11:45", "SourceIncomplete", False)
        assert verdict_after_a_tick(sensor, instance).passed


def test_a_delivery_run_holds_no_check_step() -> None:
    """The checks are the sensor's: a window job's only step is the delivery's, so a run
    costs what it did."""
    from affise_s3_assets.definitions import build_definitions
    from tests.conftest import ROOT

    repository = build_definitions(ROOT / "integrations.yaml").get_repository_def()
    jobs = [job for job in repository.get_all_jobs() if job.name.endswith("min_job")]
    assert jobs
    for job in jobs:
        (step,) = job.graph.node_defs
        assert step.name.startswith("deliver_") and not step.name.endswith("_latest_window")


def test_every_run_request_selects_the_exports_without_their_checks() -> None:
    """A selection of assets takes their checks with it unless told not to: the schedule's,
    the catch-up's and the shards' requests all say no checks."""
    from affise_s3_assets.automation.catch_up import ranged_requests
    from affise_s3_assets.automation.schedules import scheduled_run_requests

    (group,) = groups()
    (target,) = group.targets
    window = datetime(2026, 11, 25, 10, 0)
    requests = [
        *scheduled_run_requests(group, window),
        *scheduled_run_requests(group, window, size=1),
        *ranged_requests(group, [target.asset_key], window, window, "catch_up", "0"),
    ]
    assert requests
    assert all(request.asset_check_keys == [] for request in requests)


def test_a_passing_export_is_judged_again_only_when_its_window_moves_or_it_is_observed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At 10,000 exports two queries per export every minute were the deployment's largest
    steady load: an export still passing on the same window, with no new observation, keeps
    its verdict without being read; a failure (an observation) is still seen on the next tick,
    and a new window due is judged."""
    from affise_s3_assets.automation import freshness

    # Exactly the observations since the last tick (the ids just behind it, read again on
    # Postgres for late commits, would judge an observed export a few ticks more).
    monkeypatch.setattr(freshness, "OBSERVATION_IDS_REREAD", 0)
    (group,) = groups()
    (target,) = group.targets
    check = dg.AssetCheckKey(target.asset_key, CHECK_NAME)
    now = datetime(2026, 11, 25, 12, 0)
    sensor = build_latest_window_sensor([group], clock=lambda: now)
    with dg.instance_for_test() as instance:
        tick = Ticker(sensor, instance)

        def latest() -> Any:
            (record,) = instance.event_log_storage.get_asset_check_execution_history(check, 1)
            return record.event.dagster_event.event_specific_data

        delivered(instance, target.asset_key, "2026-11-25-11:15", "2026-11-25-11:30")
        assert tick().endswith("1 judged")
        assert latest().passed
        # Nothing new: not judged. A materialization of another window changes nothing either.
        delivered(instance, target.asset_key, "2026-11-24-09:00")
        assert tick().endswith("0 judged")
        # The window that just closed failed for good: an observation, judged at once.
        failed(instance, target.asset_key, "2026-11-25-11:45", "AccessDenied: s3:PutObject", True)
        assert "1 of 1 exports late; 1 judged" in tick()
        assert not latest().passed and "11:45 failed" in latest().description
        # Still failing: judged every tick until delivered.
        assert tick().endswith("1 judged")
        delivered(instance, target.asset_key, "2026-11-25-11:45")
        assert "0 of 1 exports late" in tick() and latest().passed
        assert tick().endswith("0 judged")
        # The next window falls due undelivered: judged, and late.
        now = datetime(2026, 11, 25, 12, 15)
        assert "0 of 1 exports late; 1 judged" in tick()  # 11:45, delivered
        assert latest().metadata["window"].value == "2026-11-25-11:45"
        now = datetime(2026, 11, 25, 12, 30)
        assert "1 of 1 exports late; 1 judged" in tick()  # 12:00, not delivered
        assert latest().metadata["window"].value == "2026-11-25-12:00"
        assert tick().endswith("1 judged")  # late: judged every tick
        # A cursor as the sensor kept it before (the verdicts alone) judges every export once,
        # even one it says passes on the window judged now.
        delivered(instance, target.asset_key, "2026-11-25-12:00")
        assert tick().endswith("0 of 1 exports late; 1 judged")
        assert tick().endswith("0 judged")
        tick.cursor = json.dumps(
            {target.asset_key.to_user_string(): ["2026-11-25-12:00", True, "WARN"]}
        )
        assert tick().endswith("1 judged")


def three_exports() -> Any:
    text = one_integration()
    for name in ("beta", "gamma"):
        block = one_integration().split("integrations:\n", 1)[1]
        text += block.replace("acme", name).replace("ACME", name.upper())
    parsed = parse_integrations(text)
    (group,) = build_window_groups(build_export_targets(parsed.integrations), Lateness())
    assert len(group.live) == 3
    return group


def last_passed(instance: dg.DagsterInstance, key: dg.AssetKey) -> bool | None:
    check = dg.AssetCheckKey(key, CHECK_NAME)
    history = instance.event_log_storage.get_asset_check_execution_history(check, 1)
    return history[0].event.dagster_event.event_specific_data.passed if history else None


def test_a_tick_out_of_time_leaves_the_rest_to_the_next(monkeypatch: pytest.MonkeyPatch) -> None:
    """When a window moves for many exports at once, their verdicts (an event each) are
    recorded over several ticks, each within the sensor's budget: those left over go first
    next tick, so an export late forever never crowds out the others, and a failure seen by
    a tick that ran out of time is judged by the next."""
    from affise_s3_assets.automation import freshness

    monkeypatch.setattr(freshness, "OBSERVATION_IDS_REREAD", 0)
    group = three_exports()
    first, second, third = (target.asset_key for target in group.live)
    now = datetime(2026, 11, 25, 12, 0)
    sensor = build_latest_window_sensor([group], clock=lambda: now)
    with dg.instance_for_test() as instance:
        tick = Ticker(sensor, instance)
        # The first export is never delivered (late every tick, judged every tick).
        delivered(instance, second, "2026-11-25-11:30")
        delivered(instance, third, "2026-11-25-11:30")
        # Out of time after each export: a tick judges one.
        monkeypatch.setattr(freshness, "TICK_BUDGET_SECONDS", 0.0)
        assert tick().endswith("1 judged, 2 left for the next tick")
        assert tick().endswith("1 judged, 2 left for the next tick")
        assert tick().endswith("1 judged, 1 left for the next tick")
        assert [last_passed(instance, key) for key in (first, second, third)] == [
            False,
            True,
            True,
        ]
        monkeypatch.setattr(freshness, "TICK_BUDGET_SECONDS", 40.0)
        assert tick() == "0 verdicts recorded; 1 of 3 exports late; 1 judged"
        # Both passing exports are observed: the second's failure is transient, the third's
        # permanent. Each tick runs out of time after one: the late one, then the second.
        failed(instance, second, "2026-11-25-11:45", "SlowDown", False)
        failed(instance, third, "2026-11-25-11:45", "NoSuchBucket", True)
        monkeypatch.setattr(freshness, "TICK_BUDGET_SECONDS", 0.0)
        assert tick().endswith("1 judged, 2 left for the next tick")
        assert tick().endswith("1 judged, 2 left for the next tick")
        # No observation is new now, but the third was left: judged, and late at once.
        assert last_passed(instance, third) is True
        assert tick().endswith("2 of 3 exports late; 1 judged, 1 left for the next tick")
        assert last_passed(instance, third) is False
