"""Everything Dagster loads: the code location built from integrations.yaml."""

from pathlib import Path

import dagster as dg

from affise_s3_assets.assets import (
    IO_MANAGER_KEY,
    build_export_assets,
    build_export_targets,
    event_sources,
)
from affise_s3_assets.config import load_integrations
from affise_s3_assets.fanout import build_window_jobs
from affise_s3_assets.io_manager import DateFolderS3IOManager
from affise_s3_assets.schedules import build_export_schedule
from affise_s3_assets.sensors import build_new_integrations_sensor
from affise_s3_assets.source import EventsDatabase


def build_definitions(integrations_file: str | Path | None = None) -> dg.Definitions:
    """Definitions for the integrations file (default: $AFFISE_INTEGRATIONS).

    Reads no secret and calls no cloud API: it must load with every credential unset.
    """
    integrations = load_integrations(integrations_file).integrations
    # A disabled integration keeps its assets (history stays browsable, windows can still be
    # re-delivered by hand) but is in no window job, schedule or catch-up: nothing syncs.
    live = build_window_jobs(build_export_targets(integrations))
    return dg.Definitions(
        assets=[*event_sources, *build_export_assets(integrations)],
        jobs=list({job.name: job for _, job in live}.values()),
        schedules=[build_export_schedule(target, job) for target, job in live],
        sensors=[build_new_integrations_sensor(live)] if live else [],
        resources={
            "events": EventsDatabase(),
            IO_MANAGER_KEY: DateFolderS3IOManager(),
        },
    )


defs = build_definitions()
