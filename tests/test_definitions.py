"""Snapshot of what the definitions produce: catches a config-driven factory drifting."""

import os
import subprocess
import sys
from datetime import UTC, datetime

import dagster as dg

from affise_s3_assets.definitions import build_definitions
from affise_s3_assets.sensors import CATCH_UP_RUN_PRIORITY, CATCH_UP_RUNS_PER_TICK
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
            "acme_clicks_schedule": ("*/15 * * * *", "acme_clicks_job", "RUNNING"),
            "acme_conversions_schedule": ("0 * * * *", "acme_conversions_job", "RUNNING"),
            "globex_clicks_schedule": ("*/5 * * * *", "globex_clicks_job", "RUNNING"),
            "globex_conversions_schedule": ("*/30 * * * *", "globex_conversions_job", "RUNNING"),
        },
        "sensors": {
            "new_integrations_sensor": (
                [
                    "acme_clicks_job",
                    "acme_conversions_job",
                    "globex_clicks_job",
                    "globex_conversions_job",
                ],
                "RUNNING",
            )
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


def test_schedule_requests_the_window_that_just_closed() -> None:
    defs = build_definitions(SHIPPED)
    schedule = defs.resolve_schedule_def("acme_clicks_schedule")
    context = dg.build_schedule_context(
        scheduled_execution_time=datetime(2026, 11, 26, 10, 30, tzinfo=UTC),
        repository_def=defs.get_repository_def(),
    )
    (request,) = schedule.evaluate_tick(context).run_requests
    assert request.partition_key == "2026-11-26-10:15"
    assert request.tags["dagster/priority"] == "10"


def test_catch_up_sensor_requests_each_undelivered_window_once(tmp_path) -> None:
    defs = build_definitions(SHIPPED)
    sensor = defs.resolve_sensor_def("new_integrations_sensor")
    with dg.instance_for_test() as instance:
        context = dg.build_sensor_context(instance=instance, definitions=defs, cursor=None)
        result = sensor.evaluate_tick(context)
    requests = result.run_requests
    assert len(requests) == CATCH_UP_RUNS_PER_TICK
    first = requests[0]
    assert first.job_name == "acme_clicks_job"
    assert first.partition_key == "2026-11-26-00:00"
    assert first.tags["dagster/priority"] == CATCH_UP_RUN_PRIORITY
    keys = [(request.job_name, request.partition_key) for request in requests]
    assert len(set(keys)) == len(keys)
    assert [key for _, key in keys] == sorted(key for _, key in keys)


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


def test_runs_carry_the_tags_the_run_queue_limits_key_on() -> None:
    defs = build_definitions(SHIPPED)
    tags = defs.resolve_job_def("globex_clicks_job").tags
    assert tags["affise/integration"] == "globex"
    assert tags["affise/bucket"] == "globex-events"
