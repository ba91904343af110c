"""Everything Dagster loads: the code location built from the applied integrations config."""

import warnings
from pathlib import Path

import dagster as dg

from affise_s3_assets.automation.catch_up import build_catch_up_sensor
from affise_s3_assets.automation.freshness import (
    build_latest_window_checks,
    build_latest_window_sensor,
)
from affise_s3_assets.automation.live_config import (
    APPLIED_CONFIG_KEY,
    apply_file,
    build_config_sensor,
    load_live_config,
    location_name,
)
from affise_s3_assets.automation.markers import build_marker_sensor
from affise_s3_assets.automation.notify import build_notify_sensor
from affise_s3_assets.automation.reconciliation import build_reconciliation_sensor
from affise_s3_assets.automation.schedules import build_window_schedule
from affise_s3_assets.automation.upload_sweep import build_upload_sweep_sensor
from affise_s3_assets.config.apply import AppliedConfig
from affise_s3_assets.config.targets import build_export_targets, build_window_groups
from affise_s3_assets.dagster_internal import pin_for_runs, reconstruction_value
from affise_s3_assets.delivery.step import S3_WRITER_KEY, build_window_asset, build_window_job
from affise_s3_assets.delivery.writer import DateFolderS3Writer
from affise_s3_assets.source.event_types import SOURCE_TABLE_KEYS
from affise_s3_assets.source.events import EventsDatabase

# Raw event tables, owned upstream of this project; declared so the UI shows the lineage.
event_sources = [
    dg.AssetSpec(
        key,
        group_name="events",
        description=f"Raw {table} of the affiliate network (DuckDB table `{table}`).",
        kinds={"duckdb"},
    )
    for table, key in SOURCE_TABLE_KEYS.items()
]


def build_definitions(config: str | Path | AppliedConfig | None = None) -> dg.Definitions:
    """Definitions for an applied config, or for a file applied on its own (no last good).

    Reads no secret and calls no cloud API: it must load with every credential unset.
    """
    applied = (
        config
        if isinstance(config, AppliedConfig)
        else apply_file(Path(config) if config is not None else None)
    )
    # A disabled integration keeps its assets (history stays browsable, windows can still be
    # re-delivered by hand) but no schedule or catch-up delivers it: nothing syncs.
    groups = build_window_groups(build_export_targets(applied.integrations), applied.lateness)
    live = [group for group in groups if group.live]
    jobs = {group.job_name: build_window_job(group) for group in groups}
    sensors = [build_config_sensor(applied, location_name())]
    if live:
        sensors.append(build_catch_up_sensor(live, list(jobs.values())))
        sensors.append(build_upload_sweep_sensor(live))
        sensors.append(build_latest_window_sensor(live))
        if any(t.completion is not None for group in live for t in group.live):
            sensors.append(build_marker_sensor(live))
        if applied.reconciliation.look_back_hours:
            sensors.append(
                build_reconciliation_sensor(live, list(jobs.values()), applied.reconciliation)
            )
    # Only a file with a webhook has the sensor: nothing to evaluate otherwise.
    if any(i.notify is not None and i.enabled for i in applied.integrations):
        sensors.append(build_notify_sensor(applied.integrations))
    with warnings.catch_warnings():
        # BackfillPolicy is beta in Dagster 1.13: its warning would repeat at every load.
        warnings.simplefilter("ignore", dg.BetaWarning)
        assets = [build_window_asset(group) for group in groups]
    return dg.Definitions(
        assets=[*event_sources, *assets],
        asset_checks=build_latest_window_checks(live),
        jobs=list(jobs.values()),
        schedules=[build_window_schedule(group, jobs[group.job_name]) for group in live],
        sensors=sensors,
        resources={
            "events": EventsDatabase(),
            S3_WRITER_KEY: DateFolderS3Writer(),
        },
    )


@dg.definitions
def defs() -> dg.Definitions:
    """The code location. A code server applies the file now and pins what it applied to every
    run it launches; a run's processes rebuild exactly those definitions, whatever the file
    says by the time they start (tests/test_definitions.py, tests/test_pinned_runs.py)."""
    pinned = reconstruction_value(APPLIED_CONFIG_KEY)
    applied = AppliedConfig.from_json(pinned) if pinned else load_live_config()
    pin_for_runs(APPLIED_CONFIG_KEY, applied.to_json())
    return build_definitions(applied)
