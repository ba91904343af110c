"""Everything Dagster loads: the code location built from the applied integrations config."""

import warnings
from pathlib import Path

import dagster as dg
from dagster._core.definitions.definitions_load_context import (
    DefinitionsLoadContext,
    DefinitionsLoadType,
)

from affise_s3_assets.assets import (
    IO_MANAGER_KEY,
    build_export_assets,
    build_export_targets,
    event_sources,
)
from affise_s3_assets.config import AppliedConfig
from affise_s3_assets.fanout import build_window_jobs
from affise_s3_assets.io_manager import DateFolderS3IOManager
from affise_s3_assets.live_config import (
    APPLIED_CONFIG_KEY,
    apply_file,
    build_config_sensor,
    load_live_config,
    location_name,
)
from affise_s3_assets.schedules import build_export_schedule
from affise_s3_assets.sensors import build_new_integrations_sensor
from affise_s3_assets.source import EventsDatabase


def build_definitions(config: str | Path | AppliedConfig | None = None) -> dg.Definitions:
    """Definitions for an applied config, or for a file applied on its own (no last good).

    Reads no secret and calls no cloud API: it must load with every credential unset.
    """
    applied = (
        config
        if isinstance(config, AppliedConfig)
        else apply_file(Path(config) if config is not None else None)
    )
    integrations = applied.integrations
    # A disabled integration keeps its assets (history stays browsable, windows can still be
    # re-delivered by hand) but is in no window job, schedule or catch-up: nothing syncs.
    live = build_window_jobs(build_export_targets(integrations))
    sensors = [build_config_sensor(applied, location_name())]
    if live:
        sensors.append(build_new_integrations_sensor(live))
    return dg.Definitions(
        assets=[*event_sources, *build_export_assets(integrations)],
        jobs=list({job.name: job for _, job in live}.values()),
        schedules=[build_export_schedule(target, job) for target, job in live],
        sensors=sensors,
        resources={
            "events": EventsDatabase(),
            IO_MANAGER_KEY: DateFolderS3IOManager(),
        },
    )


@dg.definitions
def defs() -> dg.Definitions:
    """The code location. A code server applies the file now; a run rebuilds exactly the
    definitions it was launched with, whatever the file says by the time it starts."""
    context = DefinitionsLoadContext.get()
    pinned = (
        context.reconstruction_metadata.get(APPLIED_CONFIG_KEY)
        if context.load_type == DefinitionsLoadType.RECONSTRUCTION
        else None
    )
    applied = AppliedConfig.from_json(pinned) if pinned else load_live_config()
    with warnings.catch_warnings():
        # Reconstruction metadata is a preview API in Dagster 1.13; it is what pins a run.
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return build_definitions(applied).with_reconstruction_metadata(
            {APPLIED_CONFIG_KEY: applied.to_json()}
        )
