"""Everything Dagster loads: the code location built from integrations.yaml."""

from pathlib import Path

import dagster as dg

from affise_s3_assets.assets import IO_MANAGER_KEY, build_export_assets, event_sources
from affise_s3_assets.config import load_integrations
from affise_s3_assets.io_manager import DateFolderS3IOManager
from affise_s3_assets.schedules import build_export_job, build_export_schedule
from affise_s3_assets.sensors import build_new_integrations_sensor
from affise_s3_assets.source import EventsDatabase


def build_definitions(integrations_file: str | Path | None = None) -> dg.Definitions:
    """Definitions for the integrations file (default: $AFFISE_INTEGRATIONS).

    Reads no secret and calls no cloud API: it must load with every credential unset.
    """
    integrations = load_integrations(integrations_file).integrations
    exports = build_export_assets(integrations)
    enabled_names = {integration.name for integration in integrations if integration.enabled}
    # A disabled integration keeps its assets (history stays browsable, windows can still be
    # re-delivered by hand) but has no schedule and no catch-up: nothing syncs on its own.
    jobs = [
        (asset, build_export_job(asset)) for asset in exports if asset.key.path[1] in enabled_names
    ]
    return dg.Definitions(
        assets=[*event_sources, *exports],
        jobs=[job for _, job in jobs],
        schedules=[build_export_schedule(job) for _, job in jobs],
        sensors=[build_new_integrations_sensor(jobs)] if jobs else [],
        resources={
            "events": EventsDatabase(),
            IO_MANAGER_KEY: DateFolderS3IOManager(),
        },
    )


defs = build_definitions()
