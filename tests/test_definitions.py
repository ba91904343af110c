"""Snapshot of what the definitions produce: catches a config-driven factory drifting."""

import os
import subprocess
import sys
from datetime import UTC, datetime

import dagster as dg
from dagster._core.test_utils import create_run_for_test

from affise_s3_assets.assets import build_export_targets
from affise_s3_assets.config import parse_integrations
from affise_s3_assets.definitions import build_definitions
from affise_s3_assets.fanout import build_window_jobs
from affise_s3_assets.sensors import (
    CATCH_UP_RUN_PRIORITY,
    CATCH_UP_RUNS_PER_TICK,
    plan_catch_up,
    plan_missed_windows,
)
from tests.conftest import ROOT

SHIPPED = ROOT / "integrations.yaml"


def snapshot(defs: dg.Definitions) -> dict:
    graph = defs.resolve_asset_graph()
    assets = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        partitions = node.partitions_def
        assets[key.to_user_string()] = {
            "group": node.group_name,
            "deps": sorted(dep.to_user_string() for dep in node.parent_keys),
            "partitions": None
            if partitions is None
            else (
                partitions.cron_schedule,
                partitions.start.strftime("%Y-%m-%d %H:%M"),
                partitions.fmt,
                partitions.timezone,
            ),
        }
    schedules = {
        schedule.name: (schedule.cron_schedule, schedule.job_name, schedule.default_status.value)
        for schedule in defs.get_repository_def().schedule_defs
    }
    sensors = {
        sensor.name: (
            sorted(target.job_name for target in sensor.targets),
            sensor.default_status.value,
        )
        for sensor in defs.get_repository_def().sensor_defs
    }
    return {"assets": assets, "schedules": schedules, "sensors": sensors}


def test_shipped_integrations_snapshot() -> None:
    fmt = "%Y-%m-%d-%H:%M"
    assert snapshot(build_definitions(SHIPPED)) == {
        "assets": {
            "affise/acme/clicks": {
                "group": "acme",
                "deps": ["events/clicks"],
                "partitions": ("*/15 * * * *", "2026-11-26 00:00", fmt, "UTC"),
            },
            "affise/acme/conversions": {
                "group": "acme",
                "deps": ["events/conversions"],
                "partitions": ("0 * * * *", "2026-11-26 00:00", fmt, "UTC"),
            },
            "affise/globex/clicks": {
                "group": "globex",
                "deps": ["events/clicks"],
                "partitions": ("*/5 * * * *", "2026-11-26 12:00", fmt, "UTC"),
            },
            "affise/globex/conversions": {
                "group": "globex",
                "deps": ["events/conversions"],
                "partitions": ("*/30 * * * *", "2026-11-26 12:00", fmt, "UTC"),
            },
            "affise/initech/clicks": {
                "group": "initech",
                "deps": ["events/clicks"],
                "partitions": ("0 * * * *", "2026-11-20 00:00", fmt, "UTC"),
            },
            "events/clicks": {"group": "events", "deps": [], "partitions": None},
            "events/conversions": {"group": "events", "deps": [], "partitions": None},
        },
        # initech is disabled: its asset stays, nothing is scheduled for it.
        "schedules": {
            "acme_clicks_schedule": ("*/15 * * * *", "clicks_every_15min_job", "RUNNING"),
            "acme_conversions_schedule": ("0 * * * *", "conversions_every_60min_job", "RUNNING"),
            "globex_clicks_schedule": ("*/5 * * * *", "clicks_every_5min_job", "RUNNING"),
            "globex_conversions_schedule": (
                "*/30 * * * *",
                "conversions_every_30min_job",
                "RUNNING",
            ),
        },
        "sensors": {
            "integrations_config_sensor": ([], "RUNNING"),
            "new_integrations_sensor": (
                [
                    "clicks_every_15min_job",
                    "clicks_every_5min_job",
                    "conversions_every_30min_job",
                    "conversions_every_60min_job",
                ],
                "RUNNING",
            ),
        },
    }


def test_removing_an_integration_removes_its_assets_and_schedules(tmp_path) -> None:
    text = SHIPPED.read_text()
    trimmed = text[: text.index("  # Pays only for two affiliates")]
    path = tmp_path / "integrations.yaml"
    path.write_text(trimmed)
    snap = snapshot(build_definitions(path))
    assert sorted(snap["assets"]) == [
        "affise/acme/clicks",
        "affise/acme/conversions",
        "events/clicks",
        "events/conversions",
    ]
    assert sorted(snap["schedules"]) == ["acme_clicks_schedule", "acme_conversions_schedule"]


def test_schedule_requests_the_window_that_just_closed_once_per_group(tmp_path) -> None:
    text = SHIPPED.read_text().replace("frequency: 5\n", "frequency: 15\n")
    path = tmp_path / "integrations.yaml"
    path.write_text(text)
    defs = build_definitions(path)
    repo = defs.get_repository_def()
    acme = defs.get_schedule_def("acme_clicks_schedule")
    globex = defs.get_schedule_def("globex_clicks_schedule")
    assert acme.job_name == globex.job_name == "clicks_every_15min_job"
    tick = datetime(2026, 11, 26, 13, 30, tzinfo=UTC)
    with dg.instance_for_test() as instance:
        context = dg.build_schedule_context(
            instance=instance, scheduled_execution_time=tick, repository_def=repo
        )
        (request,) = acme.evaluate_tick(context).run_requests
        assert request.partition_key == "2026-11-26-13:15"
        assert request.tags["dagster/priority"] == "10"
        assert request.run_key == "clicks_every_15min_job|2026-11-26-13:15"
        # The run acme's tick created covers globex too: globex's tick only records that.
        create_run_for_test(
            instance,
            job_name="clicks_every_15min_job",
            tags={**request.tags, "dagster/partition": request.partition_key},
        )
        result = globex.evaluate_tick(
            dg.build_schedule_context(
                instance=instance, scheduled_execution_time=tick, repository_def=repo
            )
        )
        assert result.run_requests == []
        assert "2026-11-26-13:15 is delivered for every clicks integration" in (
            result.skip_message or ""
        )
        # Before globex's start (12:00) there is nothing to request for it.
        early = globex.evaluate_tick(
            dg.build_schedule_context(
                instance=instance,
                scheduled_execution_time=datetime(2026, 11, 26, 11, 0, tzinfo=UTC),
            )
        )
        assert early.run_requests == [] and "before the integration's start" in early.skip_message


def test_catch_up_requests_each_window_once_for_all_new_integrations() -> None:
    defs = build_definitions(SHIPPED)
    sensor = defs.get_sensor_def("new_integrations_sensor")
    with dg.instance_for_test() as instance:
        result = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, definitions=defs))
    requests = result.run_requests
    assert len(requests) == CATCH_UP_RUNS_PER_TICK
    first = requests[0]
    assert first.job_name == "clicks_every_15min_job"
    assert first.partition_key == "2026-11-26-00:00"
    assert first.tags["dagster/priority"] == CATCH_UP_RUN_PRIORITY
    (op_config,) = first.run_config["ops"].values()
    assert op_config["config"]["integrations"] == ["acme"]
    keys = [(request.job_name, request.partition_key) for request in requests]
    assert len(set(keys)) == len(keys)
    assert [key for _, key in keys] == sorted(key for _, key in keys)


def test_catch_up_batches_new_integrations_sharing_a_window() -> None:
    targets = _targets_and_jobs(
        SHIPPED.read_text()
        .replace("frequency: 5\n", "frequency: 15\n")
        .replace('start: "2026-11-26 12:00:00"', 'start: "2026-11-26 00:00:00"')
    )
    requests, cursor = plan_catch_up(targets, {}, datetime(2026, 11, 26, 0, 40, tzinfo=UTC))
    by_window = {
        (r.job_name, r.partition_key): next(iter(r.run_config["ops"].values()))["config"]
        for r in requests
    }
    assert by_window[("clicks_every_15min_job", "2026-11-26-00:00")]["integrations"] == [
        "acme",
        "globex",
    ]
    assert by_window[("clicks_every_15min_job", "2026-11-26-00:15")]["integrations"] == [
        "acme",
        "globex",
    ]
    assert ("clicks_every_15min_job", "2026-11-26-00:30") not in by_window  # still open
    assert cursor["affise/acme/clicks"]["next"] is None
    again, _ = plan_catch_up(targets, cursor, datetime(2026, 11, 26, 5, 0, tzinfo=UTC))
    assert again == []  # later windows are the schedules'


def _targets_and_jobs(text: str) -> list:
    targets = build_export_targets(parse_integrations(text).integrations)
    return build_window_jobs(targets)


def test_definitions_validate_with_secrets_unset() -> None:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.endswith(("_ACCESS_KEY_ID", "_SECRET_ACCESS_KEY"))
    }
    env.pop("AFFISE_INTEGRATIONS", None)
    done = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "All code locations passed validation" in done.stderr + done.stdout


def test_window_runs_carry_the_tags_the_run_queue_limits_key_on() -> None:
    defs = build_definitions(SHIPPED)
    tags = defs.get_job_def("clicks_every_5min_job").tags
    assert tags["affise/event_type"] == "clicks"
    assert tags["affise/frequency"] == "5"


def test_catch_up_replans_when_start_changes_and_skips_delivered_windows() -> None:
    text = SHIPPED.read_text()
    before = _targets_and_jobs(text)
    _, cursor = plan_catch_up(before, {}, datetime(2026, 11, 26, 2, 0, tzinfo=UTC), budget=0)
    assert cursor["affise/acme/clicks"]["next"] == "2026-11-26-00:00"
    # start moved later: the old next window would no longer be a partition.
    later = _targets_and_jobs(text.replace('"2026-11-26 00:00:00"', '"2026-11-26 01:00:00"'))
    requests, _ = plan_catch_up(
        later,
        cursor,
        datetime(2026, 11, 26, 2, 0, tzinfo=UTC),
        materialized=lambda key: {"2026-11-26-01:15"} if key.path[1] == "acme" else set(),
    )
    acme = sorted(
        r.partition_key
        for r in requests
        if r.job_name == "clicks_every_15min_job"
        and "acme" in next(iter(r.run_config["ops"].values()))["config"]["integrations"]
    )
    assert acme[0] == "2026-11-26-01:00"
    assert "2026-11-26-01:15" not in acme  # already delivered
    assert all(key >= "2026-11-26-01:00" for key in acme)


def test_catch_up_delivers_earlier_windows_when_start_moves_earlier() -> None:
    text = SHIPPED.read_text()
    now = datetime(2026, 11, 26, 2, 0, tzinfo=UTC)
    _, cursor = plan_catch_up(_targets_and_jobs(text), {}, now, budget=1_000)
    assert cursor["affise/acme/clicks"]["next"] is None  # caught up to 01:45
    delivered = {f"2026-11-26-{h:02d}:{m:02d}" for h in (0, 1) for m in (0, 15, 30, 45)}
    earlier = _targets_and_jobs(text.replace('"2026-11-26 00:00:00"', '"2026-11-25 23:00:00"'))
    requests, _ = plan_catch_up(
        earlier,
        cursor,
        now,
        budget=1_000,
        materialized=lambda key: delivered if key.path[1] == "acme" else set(),
    )
    acme = sorted(
        r.partition_key
        for r in requests
        if r.job_name == "clicks_every_15min_job"
        and "acme" in next(iter(r.run_config["ops"].values()))["config"]["integrations"]
    )
    assert acme == ["2026-11-25-23:00", "2026-11-25-23:15", "2026-11-25-23:30", "2026-11-25-23:45"]


def _one_clicks_export(frequency: int, start: str = "2026-11-26 00:00:00") -> list:
    return _targets_and_jobs(
        f"""integrations:
  - name: acme
    start: "{start}"
    clicks:
      frequency: {frequency}
      bucket: acme-affise-raw
      region: us-west-2
      directory: d
      access_key: ${{A}}
      secret_key: ${{S}}
"""
    )


def _requested(requests: list[dg.RunRequest]) -> list[str]:
    return sorted(request.partition_key for request in requests)


def test_a_frequency_change_does_not_deliver_history_again_at_the_new_frequency() -> None:
    """Hourly files 00:00-03:00 are in the bucket: 15-minute files for 00:15, 00:30 ... would
    hold the same rows a second time."""
    now = datetime(2026, 11, 26, 3, 10, tzinfo=UTC)
    requests, cursor = plan_catch_up(_one_clicks_export(60), {}, now, budget=1_000)
    hourly = set(_requested(requests))
    assert hourly == {"2026-11-26-00:00", "2026-11-26-01:00", "2026-11-26-02:00"}
    later = datetime(2026, 11, 26, 5, 10, tzinfo=UTC)
    hourly |= {"2026-11-26-03:00", "2026-11-26-04:00"}  # the schedule delivered these
    requests, cursor = plan_catch_up(
        _one_clicks_export(15), cursor, later, budget=1_000, materialized=lambda key: hourly
    )
    assert requests == []
    # Moving the start an hour earlier as well delivers that hour only, at the new frequency.
    requests, _ = plan_catch_up(
        _one_clicks_export(15, "2026-11-25 23:00:00"),
        cursor,
        later,
        budget=1_000,
        materialized=lambda key: hourly,
    )
    assert _requested(requests) == [f"2026-11-25-23:{m:02d}" for m in (0, 15, 30, 45)]


def test_a_frequency_change_delivers_the_old_windows_that_never_were() -> None:
    """Caught up hourly at 02:05, then the daemon was down until 04:30: the 02:00 and 03:00
    files were never written, so the 15-minute frequency delivers 02:00 onwards."""
    _, cursor = plan_catch_up(
        _one_clicks_export(60), {}, datetime(2026, 11, 26, 2, 5, tzinfo=UTC), budget=1_000
    )
    delivered = {"2026-11-26-00:00", "2026-11-26-01:00"}
    requests, _ = plan_catch_up(
        _one_clicks_export(15),
        cursor,
        datetime(2026, 11, 26, 4, 30, tzinfo=UTC),
        budget=1_000,
        materialized=lambda key: delivered,
    )
    requested = _requested(requests)
    assert requested[0] == "2026-11-26-02:00" and requested[-1] == "2026-11-26-04:15"
    assert len(requested) == 10


def test_a_frequency_change_mid_catch_up_finishes_what_was_not_delivered() -> None:
    now = datetime(2026, 11, 26, 3, 10, tzinfo=UTC)
    requests, cursor = plan_catch_up(_one_clicks_export(15), {}, now, budget=2)
    delivered = set(_requested(requests))
    assert delivered == {"2026-11-26-00:00", "2026-11-26-00:15"}
    requests, _ = plan_catch_up(
        _one_clicks_export(5), cursor, now, budget=1_000, materialized=lambda key: delivered
    )
    delivered = _requested(requests)
    assert delivered[0] == "2026-11-26-00:30"  # 00:00-00:30 is delivered at 15 minutes
    # Up to the last 5-minute window closed at 03:10: 03:00-03:15 never closed at 15 minutes.
    assert delivered[-1] == "2026-11-26-03:05"
    assert len(delivered) == (190 - 30) // 5


def test_windows_whose_schedule_tick_never_came_get_a_run() -> None:
    """The scheduler, back after being down, evaluates only the latest missed tick: the sensor
    requests the windows in between, once, for the whole group."""
    targets = _one_clicks_export(15) + _one_clicks_export(5, "2026-11-26 12:00:00")
    first_sight = datetime(2026, 11, 26, 10, 1, tzinfo=UTC)
    requests, checked = plan_missed_windows(targets, {}, first_sight, lambda *_: False)
    assert requests == []  # what closed before is the catch-up's
    assert checked == {
        "clicks_every_15min_job": "2026-11-26-09:45",
        "clicks_every_5min_job": "2026-11-26-09:55",
    }
    scheduled = {("clicks_every_15min_job", "2026-11-26-10:15")}
    back = datetime(2026, 11, 26, 11, 1, tzinfo=UTC)  # down from 10:05 to 11:00, one tick ran
    requests, checked = plan_missed_windows(
        targets, checked, back, lambda job, key: (job, key) in scheduled
    )
    assert [(r.job_name, r.partition_key) for r in requests] == [
        ("clicks_every_15min_job", "2026-11-26-10:00"),
        ("clicks_every_15min_job", "2026-11-26-10:30"),
    ]  # 10:45 closed at 11:00, within the schedule's grace
    assert all(r.tags["affise/scheduled"] == "1" for r in requests)  # a late tick then skips
    again, _ = plan_missed_windows(targets, checked, back, lambda *_: False)
    assert again == []
    # The 5-minute group: its only integration starts at 12:00, nothing is due before.
    later, _ = plan_missed_windows(
        targets, checked, datetime(2026, 11, 26, 12, 20, tzinfo=UTC), lambda *_: True
    )
    assert later == []


def test_missed_windows_leave_the_newest_tick_to_the_scheduler_and_forget_gone_jobs() -> None:
    fifteen, hourly = _one_clicks_export(15), _one_clicks_export(60)
    never = lambda *_: False  # noqa: E731
    _, checked = plan_missed_windows(fifteen, {}, datetime(2026, 11, 26, 10, 1, tzinfo=UTC), never)
    # Down 10:05-11:20: the scheduler itself evaluates its latest missed tick (11:15, window
    # 11:00), so the sensor requests up to 10:45 only, although 11:00 closed 20 minutes ago.
    requests, checked = plan_missed_windows(
        fifteen, checked, datetime(2026, 11, 26, 11, 20, tzinfo=UTC), never
    )
    assert _requested(requests) == [f"2026-11-26-10:{m:02d}" for m in (0, 15, 30, 45)]
    # The 15-minute job goes away for three days (hourly instead), then comes back: nothing
    # from while it was gone is due, so it starts again from then.
    _, checked = plan_missed_windows(hourly, checked, datetime(2026, 11, 27, tzinfo=UTC), never)
    assert "clicks_every_15min_job" not in checked
    back = datetime(2026, 11, 29, 12, 1, tzinfo=UTC)
    requests, checked = plan_missed_windows(fifteen, checked, back, never)
    assert requests == [] and checked == {"clicks_every_15min_job": "2026-11-29-11:45"}


def test_missed_windows_after_an_upgrade_start_from_the_newest_scheduled_run() -> None:
    """A cursor written before missed windows were tracked: each job starts after its newest
    scheduled run, so windows missed while the new version was deployed are found."""
    requests, checked = plan_missed_windows(
        _one_clicks_export(15),
        None,
        datetime(2026, 11, 26, 11, 1, tzinfo=UTC),
        lambda *_: False,
        lambda job: "2026-11-26-09:30",
    )
    assert requests == [] and checked == {"clicks_every_15min_job": "2026-11-26-09:30"}
    requests, _ = plan_missed_windows(
        _one_clicks_export(15), checked, datetime(2026, 11, 26, 11, 1, tzinfo=UTC), lambda *_: False
    )
    assert _requested(requests) == [
        "2026-11-26-09:45",
        "2026-11-26-10:00",
        "2026-11-26-10:15",
        "2026-11-26-10:30",
    ]


def test_catch_up_keeps_removed_integrations_so_a_return_does_not_redeliver_history() -> None:
    text = SHIPPED.read_text()
    both = _targets_and_jobs(text)
    now = datetime(2026, 11, 26, 13, 0, tzinfo=UTC)
    cursor: dict = {}
    for _ in range(200):  # drain the catch-up completely
        requests, cursor = plan_catch_up(both, cursor, now)
        if not requests:
            break
    assert cursor["affise/globex/clicks"]["next"] is None
    only_acme = [(t, job) for t, job in both if t.integration == "acme"]
    _, cursor = plan_catch_up(only_acme, cursor, now)
    assert "affise/globex/clicks" in cursor
    again, _ = plan_catch_up(both, cursor, datetime(2026, 11, 26, 18, 0, tzinfo=UTC))
    assert again == []
