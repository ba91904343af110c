"""Schedules: one per window group (event type, frequency), ticking at its window boundaries.

The scheduler's work grows with the number of distinct frequencies, not with integrations: at
each boundary one schedule per group requests the window that just closed, for every enabled
integration due in it: one run, or one per shard of at most `exports_per_run()`
(automation/shards.py).
Windows whose tick never came (the daemon was down or behind; Dagster 1.13's scheduler catches
up no schedule) are the catch-up sensor's (automation/catch_up.py).
"""

from datetime import datetime, timedelta

import dagster as dg

from affise_s3_assets.automation.runs import MISSED_TAG, PARTITION_TAG, SCHEDULED_TAG
from affise_s3_assets.automation.shards import DEFAULT_EXPORTS_PER_RUN, exports_per_run, sharded
from affise_s3_assets.config.targets import WindowGroup
from affise_s3_assets.config.windows import PARTITION_KEY_FORMAT, cron_for_frequency
from affise_s3_assets.dagster_internal import AssetJob

# Queued runs start highest priority first: the window that just closed goes ahead of backlog.
SCHEDULED_RUN_PRIORITY = "10"


def latest_scheduled_run(
    instance: dg.DagsterInstance, job_name: str, partition_key: str | None = None
) -> dg.RunRecord | None:
    """The newest run a schedule (or the sensor, for a missed tick) created for `job_name`,
    for one window when `partition_key` is given."""
    tags = {SCHEDULED_TAG: "1"}
    if partition_key is not None:
        tags[PARTITION_TAG] = partition_key
    records = instance.get_run_records(dg.RunsFilter(job_name=job_name, tags=tags), limit=1)
    return records[0] if records else None


def scheduled_exports(
    instance: dg.DagsterInstance, job_name: str, partition_key: str
) -> bool | frozenset[dg.AssetKey]:
    """What the scheduled runs of one window (the schedule's, or the sensor's for a missed
    tick) deliver: True for a run of the whole job, else the exports their shards select
    (none: no run)."""
    tags = {SCHEDULED_TAG: "1", PARTITION_TAG: partition_key}
    records = instance.get_run_records(dg.RunsFilter(job_name=job_name, tags=tags))
    runs = [record.dagster_run for record in records]
    if any(run.asset_selection is None for run in runs):
        return True
    return frozenset(key for run in runs for key in run.asset_selection or ())


def scheduled_run_requests(
    group: WindowGroup,
    window_start: datetime,
    missed: bool = False,
    size: int = DEFAULT_EXPORTS_PER_RUN,
    without: frozenset[dg.AssetKey] = frozenset(),
) -> list[dg.RunRequest]:
    """The runs delivering the window at `window_start` to every live integration due in it
    (but those `without`): one, or one per shard of at most `size` exports."""
    due = [t for t in group.due(window_start.replace(tzinfo=None)) if t.asset_key not in without]
    if not due:
        return []
    partition_key = window_start.strftime(PARTITION_KEY_FORMAT)
    tags = {"dagster/priority": SCHEDULED_RUN_PRIORITY, SCHEDULED_TAG: "1"}
    if missed:
        tags[MISSED_TAG] = "1"
    request = dg.RunRequest(
        run_key=f"{'missed' if missed else 'scheduled'}|{group.job_name}|{partition_key}"
        + (f"|{len(without)} done" if without else ""),
        job_name=group.job_name,
        partition_key=partition_key,
        # Every live integration due (the usual case once all have started) is the job
        # itself: no selection to resolve, whatever the number of integrations.
        asset_selection=None if len(due) == len(group.live) else [t.asset_key for t in due],
        asset_check_keys=[],  # the exports alone (automation/freshness.py)
        tags=tags,
    )
    return sharded(request, [target.asset_key for target in due], size)


def build_window_schedule(group: WindowGroup, job: AssetJob) -> dg.ScheduleDefinition:
    """Requests, at each boundary, the window that just closed for the whole group."""

    @dg.schedule(
        name=group.schedule_name,
        cron_schedule=cron_for_frequency(group.frequency, group.lateness // timedelta(minutes=1)),
        job=job,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"Every {group.frequency} minutes, the {group.event_type} window that "
        f"closed {group.lateness // timedelta(minutes=1)} minutes ago (the lateness), for every "
        f"enabled integration at that frequency ({len(group.live)} now).",
    )
    def window_schedule(
        context: dg.ScheduleEvaluationContext,
    ) -> list[dg.RunRequest] | dg.SkipReason:
        # The window whose end, plus the lateness, is the tick (or the last before it, for a
        # tick evaluated off the cron, as the UI's "Test schedule" may).
        window_start = group.newest_ticked_window(context.scheduled_execution_time)
        requests = scheduled_run_requests(group, window_start, size=exports_per_run())
        if not requests:
            return dg.SkipReason(
                f"no enabled integration is due in window {window_start:%Y-%m-%d %H:%M}"
            )
        return requests

    return window_schedule
