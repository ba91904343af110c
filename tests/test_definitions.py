"""Snapshot of what the definitions produce: catches a config-driven factory drifting."""

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from affise_s3_assets.automation.catch_up import (
    CATCH_UP_IN_FLIGHT,
    FIRST_RANGE_PRIORITY,
    CatchUpState,
    StoredState,
)
from affise_s3_assets.config.apply import apply_integrations
from affise_s3_assets.definitions import build_definitions
from affise_s3_assets.demo.events import generate_demo_events
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
            "first_window": node.metadata.get("first_window"),
            "checks": sorted(check.name for check in node.check_keys),
            # Dagster's time-window policy (none: the latest window's check says whether an
            # export is late, automation/freshness.py)
            "freshness": None
            if node.freshness_policy is None
            else (
                node.freshness_policy.warn_window.to_timedelta() // timedelta(minutes=1),
                node.freshness_policy.fail_window.to_timedelta() // timedelta(minutes=1),
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
                "first_window": "2026-11-26 00:00",
                "checks": ["latest_window_delivered"],
                "freshness": None,
            },
            "affise/acme/conversions": {
                "group": "acme",
                "deps": ["events/conversions"],
                "partitions": ("0 * * * *", "2026-11-26 00:00", fmt, "UTC"),
                "first_window": "2026-11-26 00:00",
                "checks": ["latest_window_delivered"],
                "freshness": None,
            },
            # The same table, windowed by each conversion's latest change.
            "affise/acme/conversion_updates": {
                "group": "acme",
                "deps": ["events/conversions"],
                "partitions": ("0 * * * *", "2026-11-26 00:00", fmt, "UTC"),
                "first_window": "2026-11-26 00:00",
                "checks": ["latest_window_delivered"],
                "freshness": None,
            },
            "affise/globex/clicks": {
                "group": "globex",
                "deps": ["events/clicks"],
                "partitions": ("*/5 * * * *", "2026-11-26 12:00", fmt, "UTC"),
                "first_window": "2026-11-26 12:00",
                "checks": ["latest_window_delivered"],
                "freshness": None,
            },
            "affise/globex/conversions": {
                "group": "globex",
                "deps": ["events/conversions"],
                "partitions": ("*/30 * * * *", "2026-11-26 12:00", fmt, "UTC"),
                "first_window": "2026-11-26 12:00",
                "checks": ["latest_window_delivered"],
                "freshness": None,
            },
            "affise/initech/clicks": {
                "group": "initech",
                "deps": ["events/clicks"],
                "partitions": ("0 * * * *", "2026-11-20 00:00", fmt, "UTC"),
                "first_window": "2026-11-20 00:00",
                "checks": [],
                "freshness": None,
            },
            "events/clicks": {
                "group": "events",
                "deps": [],
                "partitions": None,
                "first_window": None,
                "checks": [],
                "freshness": None,
            },
            "events/conversions": {
                "group": "events",
                "deps": [],
                "partitions": None,
                "first_window": None,
                "checks": [],
                "freshness": None,
            },
        },
        # One schedule per window group: the scheduler's work grows with frequencies, not
        # integrations. initech is disabled: its asset stays, nothing is scheduled for it.
        # Each ticks its event type's default lateness after every window's end: clicks 2
        # minutes, conversions 10.
        "schedules": {
            "clicks_every_15min_schedule": (
                "2,17,32,47 * * * *",
                "clicks_every_15min_job",
                "RUNNING",
            ),
            "clicks_every_5min_schedule": (
                "2,7,12,17,22,27,32,37,42,47,52,57 * * * *",
                "clicks_every_5min_job",
                "RUNNING",
            ),
            "conversion_updates_every_60min_schedule": (
                "10 * * * *",
                "conversion_updates_every_60min_job",
                "RUNNING",
            ),
            "conversions_every_30min_schedule": (
                "10,40 * * * *",
                "conversions_every_30min_job",
                "RUNNING",
            ),
            "conversions_every_60min_schedule": (
                "10 * * * *",
                "conversions_every_60min_job",
                "RUNNING",
            ),
        },
        "sensors": {
            "catch_up_sensor": (
                [
                    "clicks_every_15min_job",
                    "clicks_every_5min_job",
                    "conversion_updates_every_60min_job",
                    "conversions_every_30min_job",
                    "conversions_every_60min_job",
                ],
                "RUNNING",
            ),
            "integrations_config_sensor": ([], "RUNNING"),
            # Marks an export late when its latest due window is not delivered.
            "latest_window_sensor": ([], "RUNNING"),
            "upload_sweep_sensor": ([], "RUNNING"),
            "reconciliation_sensor": (
                [
                    "clicks_every_15min_job",
                    "clicks_every_5min_job",
                    "conversion_updates_every_60min_job",
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
        "affise/acme/conversion_updates",
        "affise/acme/conversions",
        "events/clicks",
        "events/conversions",
    ]
    assert sorted(snap["schedules"]) == [
        "clicks_every_15min_schedule",
        "conversion_updates_every_60min_schedule",
        "conversions_every_60min_schedule",
    ]


def test_one_schedule_per_group_requests_the_closed_window_for_every_due_integration(
    tmp_path,
) -> None:
    text = SHIPPED.read_text().replace("frequency: 5\n", "frequency: 15\n")
    path = tmp_path / "integrations.yaml"
    path.write_text(text)
    defs = build_definitions(path)
    repo = defs.get_repository_def()
    schedule = repo.get_schedule_def("clicks_every_15min_schedule")
    with dg.instance_for_test() as instance:

        def tick(moment: datetime) -> Any:
            context = dg.build_schedule_context(
                instance=instance, scheduled_execution_time=moment, repository_def=repo
            )
            return schedule.evaluate_tick(context)

        # 13:32: the 13:15 window's end and the clicks' default lateness of 2 minutes.
        (request,) = tick(datetime(2026, 11, 26, 13, 32, tzinfo=UTC)).run_requests
        assert request.partition_key == "2026-11-26-13:15"
        assert request.tags["dagster/priority"] == "10"
        assert request.run_key == "scheduled|clicks_every_15min_job|2026-11-26-13:15"
        # Every live integration is due: the run is the whole job, no selection to resolve.
        assert request.asset_selection is None
        job = defs.resolve_job_def("clicks_every_15min_job")
        assert sorted(key.to_user_string() for key in job.asset_layer.executable_asset_keys) == [
            "affise/acme/clicks",
            "affise/globex/clicks",
        ]
        # Before globex's start (12:00) only acme is due.
        (early,) = tick(datetime(2026, 11, 26, 11, 2, tzinfo=UTC)).run_requests
        assert [key.to_user_string() for key in early.asset_selection] == ["affise/acme/clicks"]
        # Before anyone's start there is nothing to request.
        none = tick(datetime(2026, 11, 25, 11, 2, tzinfo=UTC))
        assert none.run_requests == [] and "no enabled integration is due" in none.skip_message


def test_catch_up_sensor_requests_day_ranges_new_integrations_first() -> None:
    defs = build_definitions(SHIPPED)
    sensor = defs.get_repository_def().get_sensor_def("catch_up_sensor")
    with dg.instance_for_test() as instance:
        result = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, definitions=defs))
    requests = result.run_requests
    assert len(requests) == CATCH_UP_IN_FLIGHT
    first = requests[0]
    assert first.job_name == "clicks_every_15min_job"
    assert first.tags["dagster/asset_partition_range_start"] == "2026-11-26-00:00"
    assert first.tags["dagster/asset_partition_range_end"] == "2026-11-26-23:45"
    assert first.tags["dagster/priority"] == FIRST_RANGE_PRIORITY
    assert [key.to_user_string() for key in first.asset_selection] == ["affise/acme/clicks"]
    # Every group gets its first range before any gets a second one.
    assert {r.job_name for r in requests[:5]} == {
        "clicks_every_15min_job",
        "clicks_every_5min_job",
        "conversion_updates_every_60min_job",
        "conversions_every_30min_job",
        "conversions_every_60min_job",
    }


def catch_up_tick(
    defs: dg.Definitions, instance: dg.DagsterInstance, cursor: str | None
) -> dg.SensorResult:
    sensor = defs.get_repository_def().get_sensor_def("catch_up_sensor")
    context = dg.build_sensor_context(instance=instance, definitions=defs, cursor=cursor)
    return sensor.evaluate_tick(context)


def test_the_catch_up_cursor_names_stored_state_written_only_when_it_changes() -> None:
    """Dagster copies a sensor's cursor into every tick: it stays a few bytes whatever the
    number of exports, and the state it names survives a tick that never saved its cursor."""
    defs = build_definitions(SHIPPED)
    with dg.instance_for_test() as instance:

        def tick(cursor: str | None) -> dg.SensorResult:
            return catch_up_tick(defs, instance, cursor)

        first = tick(None)
        assert len(first.cursor) < 200
        store = StoredState.of(dg.build_sensor_context(instance=instance, definitions=defs))
        stored = store.stored_text(instance, first.cursor)
        assert CatchUpState.from_json(stored).exports["affise/acme/clicks"].started
        second = tick(first.cursor)
        assert {r.run_key for r in second.run_requests}.isdisjoint(
            r.run_key for r in first.run_requests
        )
        # The second tick's cursor was never saved (the daemon died): the next tick starts
        # again from the first cursor, whose stored copy is intact, and plans the same runs
        # (their run keys make them one run each).
        assert store.stored_text(instance, first.cursor) == stored
        again = tick(first.cursor)
        assert [r.run_key for r in again.run_requests] == [r.run_key for r in second.run_requests]
        # Once the backlog is requested, a tick that changes nothing writes nothing: the same
        # cursor. (A window may close between two ticks: then the next pair is compared.)
        cursor, unchanged = second.cursor, False
        for _ in range(40):
            following = tick(cursor).cursor
            unchanged, cursor = following == cursor, following
            if unchanged:
                break
        assert unchanged
        # A stale cursor (the UI's "Test sensor" long after) overwrote the current slot: its
        # state, a tick or so behind, is used; nothing is planned again from the start.
        # (Which state its slot holds now depends on how many ticks wrote since: either way,
        # none of the first tick's runs is planned again.)
        stale = tick(first.cursor)
        assert {r.run_key for r in stale.run_requests}.isdisjoint(
            r.run_key for r in first.run_requests
        )
        behind = tick(cursor)
        assert [r.run_key for r in behind.run_requests] == [
            r.run_key for r in tick(stale.cursor).run_requests
        ]
        # A cursor of the previous version (the whole state in it) is read and moved out.
        legacy = CatchUpState.from_json(stored).to_json()
        moved = tick(legacy)
        assert json.loads(moved.cursor)["version"] == 3
        assert [r.run_key for r in moved.run_requests] == [r.run_key for r in second.run_requests]


def test_a_lost_catch_up_state_delivers_no_materialized_window_again() -> None:
    """The cursor names a slot that is gone (a wiped key-value table): every export is planned
    from its start skipping what Dagster has as materialized, and so is an export first seen
    after the loss (paused, disabled or out of the file meanwhile)."""
    without_globex = SHIPPED.read_text().split("  - name: globex")[0]
    acme = dg.AssetKey(["affise", "acme", "clicks"])
    globex = dg.AssetKey(["affise", "globex", "clicks"])

    def first_window(result: dg.SensorResult, key: dg.AssetKey) -> str:
        (request,) = [r for r in result.run_requests if r.asset_selection == [key]][:1]
        return request.tags["dagster/asset_partition_range_start"]

    with dg.instance_for_test() as instance:
        instance.report_runless_asset_event(
            dg.AssetMaterialization(acme, partition="2026-11-26-00:00")
        )
        instance.report_runless_asset_event(
            dg.AssetMaterialization(globex, partition="2026-11-26-12:00")
        )
        gone = json.dumps({"version": 3, "generation": 9, "sha256": "0" * 64})
        lost = catch_up_tick(build_definitions(apply_integrations(without_globex)), instance, gone)
        assert first_window(lost, acme) == "2026-11-26-00:15"
        later = catch_up_tick(build_definitions(SHIPPED), instance, lost.cursor)
        assert first_window(later, globex) == "2026-11-26-12:05"


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
    tags = defs.resolve_job_def("clicks_every_5min_job").tags
    assert tags["affise/event_type"] == "clicks"
    assert tags["affise/frequency"] == "5"


@pytest.mark.parametrize("file_format", ["csv", "parquet"])
def test_exports_from_a_duckdb_file_load_no_pyarrow(tmp_path: Path, file_format: str) -> None:
    """pyarrow (~26 MB of every run worker's RSS) is loaded only by a Parquet source: loading
    the shipped definitions, reading a window's fingerprints and rows from a DuckDB file and
    encoding them as CSV or as Parquet, in a fresh process, do not."""
    events = tmp_path / "events.duckdb"
    generate_demo_events(events, datetime(2026, 11, 25), datetime(2026, 11, 25, 2), 20_000, 3)
    code = (
        "import sys\n"
        "from dataclasses import replace\n"
        "from datetime import datetime\n"
        "from affise_s3_assets.definitions import defs\n"
        "from affise_s3_assets.delivery.engine import encoder_of\n"
        "from affise_s3_assets.source.events import EventsDatabase\n"
        "from affise_s3_assets.config.targets import build_export_targets\n"
        "from affise_s3_assets.config.apply import load_integrations\n"
        "defs()\n"
        "(target, *_) = build_export_targets(load_integrations(sys.argv[1]).integrations)\n"
        "assert target.file_format == 'csv'\n"
        "target = replace(target, file_format=sys.argv[3])\n"
        "encoder = encoder_of(target)\n"
        "start, end = datetime(2026, 11, 25), datetime(2026, 11, 25, 1)\n"
        "with EventsDatabase(path=sys.argv[2]).read('clicks', start, end) as source:\n"
        "    assert source.fingerprints(60, [((), ())])\n"
        "    rows, encoded = 0, b''\n"
        "    for frame in source.frames():\n"
        "        rows += frame.height\n"
        "        data = frame if sys.argv[3] == 'parquet' else frame.write_csv().encode()\n"
        "        encoded += b''.join(encoder.add(frame.height, data))\n"
        "    encoded += encoder.finish()\n"
        "assert rows > 0 and encoder.rows == rows and encoded\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'pyarrow'))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(SHIPPED), str(events), file_format],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
