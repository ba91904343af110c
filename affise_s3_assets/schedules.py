"""Schedules: one per enabled (integration, event type), ticking at every window boundary."""

import dagster as dg

# Queued runs start highest priority first: the window that just closed goes ahead of backlog.
SCHEDULED_RUN_PRIORITY = "10"


def schedule_name(asset: dg.AssetsDefinition) -> str:
    _, integration, event_type = asset.key.path
    return f"{integration}_{event_type}_schedule"


def build_export_schedule(asset: dg.AssetsDefinition) -> dg.ScheduleDefinition:
    """Requests the window that just closed, on the cron its frequency implies."""
    _, integration, event_type = asset.key.path
    job = dg.define_asset_job(
        name=f"{integration}_{event_type}_job",
        selection=[asset.key],
        partitions_def=asset.partitions_def,
    )
    return dg.build_schedule_from_partitioned_job(
        job,
        name=schedule_name(asset),
        default_status=dg.DefaultScheduleStatus.RUNNING,
        tags={"dagster/priority": SCHEDULED_RUN_PRIORITY},
    )
