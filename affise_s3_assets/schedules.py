"""Jobs and schedules: one of each per enabled (integration, event type)."""

import dagster as dg

# Not re-exported at the top level, but it is what define_asset_job returns.
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

# Queued runs start highest priority first: the window that just closed goes ahead of backlog.
SCHEDULED_RUN_PRIORITY = "10"


def _names(asset: dg.AssetsDefinition) -> tuple[str, str]:
    _, integration, event_type = asset.key.path
    return integration, event_type


def build_export_job(asset: dg.AssetsDefinition) -> UnresolvedAssetJobDefinition:
    """A job materializing one window of one export asset."""
    integration, event_type = _names(asset)
    return dg.define_asset_job(
        name=f"{integration}_{event_type}_job",
        selection=[asset.key],
        # Run-queue limits key on these (deploy/dagster.yaml): one run per integration at a
        # time, a few per bucket.
        tags={
            "affise/integration": integration,
            "affise/bucket": asset.metadata_by_key[asset.key]["bucket"],
        },
        # One step per run: a second process per run would only double the start-up cost.
        executor_def=dg.in_process_executor,
    )


def build_export_schedule(job: UnresolvedAssetJobDefinition) -> dg.ScheduleDefinition:
    """Requests the window that just closed, on the cron its frequency implies."""
    return dg.build_schedule_from_partitioned_job(
        job,
        name=job.name.removesuffix("_job") + "_schedule",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        tags={"dagster/priority": SCHEDULED_RUN_PRIORITY},
    )
