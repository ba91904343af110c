"""Schedules: one per enabled (integration, event type), each ticking at its window boundaries.

All integrations sharing an event type and frequency are delivered by one run per window (the
window job, see fanout.py). Each integration's schedule asks for that run; the first to tick
creates it and the others record that the window is already requested, so the schedules keep
their per-integration names, crons and on/off switches while runs grow with windows, not with
integrations.
"""

from datetime import timedelta

import dagster as dg

from affise_s3_assets.fanout import ExportTarget
from affise_s3_assets.partitions import PARTITION_KEY_FORMAT, cron_for_frequency

# Queued runs start highest priority first: the window that just closed goes ahead of backlog.
SCHEDULED_RUN_PRIORITY = "10"
SCHEDULED_TAG = "affise/scheduled"
# On a run the sensor requested for a window whose schedule tick never came.
MISSED_TAG = "affise/missed_tick"


def latest_scheduled_run(
    instance: dg.DagsterInstance, job_name: str, partition_key: str | None = None
) -> dg.RunRecord | None:
    """The newest run a schedule (or the sensor, for a missed tick) created for `job_name`,
    for one window when `partition_key` is given."""
    tags = {SCHEDULED_TAG: "1"}
    if partition_key is not None:
        tags["dagster/partition"] = partition_key
    records = instance.get_run_records(dg.RunsFilter(job_name=job_name, tags=tags), limit=1)
    return records[0] if records else None


def schedule_name(target: ExportTarget) -> str:
    return f"{target.integration}_{target.event_type}_schedule"


def build_export_schedule(target: ExportTarget, job: dg.JobDefinition) -> dg.ScheduleDefinition:
    """Requests the window that just closed from the job delivering the target's group."""

    @dg.schedule(
        name=schedule_name(target),
        cron_schedule=cron_for_frequency(target.frequency),
        job=job,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"Every {target.frequency} minutes, the {target.event_type} window that "
        f"just closed for integration {target.integration}.",
    )
    def export_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
        tick = context.scheduled_execution_time
        window_start = tick - timedelta(minutes=target.frequency)
        partition_key = window_start.strftime(PARTITION_KEY_FORMAT)
        if window_start.replace(tzinfo=None) < target.first_window:
            return dg.SkipReason(f"window {partition_key} is before the integration's start")
        requested = latest_scheduled_run(context.instance, job.name, partition_key)
        if requested is not None:
            return dg.SkipReason(
                f"window {partition_key} is delivered for every {target.event_type} integration "
                f"at {target.frequency} minutes by run {requested.dagster_run.run_id}"
            )
        return dg.RunRequest(
            run_key=f"{job.name}|{partition_key}",
            partition_key=partition_key,
            tags={"dagster/priority": SCHEDULED_RUN_PRIORITY, SCHEDULED_TAG: "1"},
        )

    return export_schedule
