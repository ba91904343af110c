"""`affise-s3 deliver`: windows delivered by hand from a shell, one or a range.

The windows asked for run as their window group's job, selecting only the exports asked for,
in ranged runs of at most a day of windows (as a backfill cuts them), on the instance of
DAGSTER_HOME and in this process, as `dagster asset materialize` runs its one window. A
disabled export, which its group's job does not select, runs as Dagster's own asset job (as
*Materialize* on its page does). Dagster's CLI has no command for a range of these assets:
`dagster asset materialize --partition-range` takes only assets whose backfill policy is a
single run (a window asset's cuts a backfill into runs of a day), and `dagster job execute`
selects no assets, so it would deliver every integration of the group.

Knows the definitions, the window groups and how Dagster executes a job; nothing of S3 or
DuckDB: the runs go through the same step as every other run.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import dagster as dg

from affise_s3_assets.automation.runs import BY_HAND_TAG
from affise_s3_assets.config.targets import ExportTarget, WindowGroup
from affise_s3_assets.config.windows import PARTITION_KEY_FORMAT, first_window_start
from affise_s3_assets.dagster_internal import partition_range_tags

# Dagster's job of every asset: the one a disabled export is delivered by.
ASSET_JOB = "__ASSET_JOB"


class RefusedDelivery(ValueError):
    """What was asked cannot be delivered; the message says why, in an operator's words."""


@dataclass(frozen=True)
class ManualRun:
    """One run: the windows starting `first` through `last` of `asset_keys`, by `job_name`."""

    job_name: str
    asset_keys: tuple[dg.AssetKey, ...]
    first: datetime
    last: datetime
    windows: int

    @property
    def tags(self) -> dict[str, str]:
        return {**partition_range_tags(_key(self.first), _key(self.last)), BY_HAND_TAG: "1"}

    def __str__(self) -> str:
        keys = ", ".join(key.to_user_string() for key in self.asset_keys)
        return f"{keys}: {_key(self.first)} .. {_key(self.last)} ({self.windows} windows)"


def _key(moment: datetime) -> str:
    return moment.strftime(PARTITION_KEY_FORMAT)


def _window(text: str, option: str) -> datetime:
    try:
        return datetime.strptime(text, PARTITION_KEY_FORMAT)
    except ValueError:
        raise RefusedDelivery(
            f"{option} {text!r}: a window is named by its start in UTC as its partition is, "
            "YYYY-MM-DD-hh:mm (e.g. 2026-11-26-10:15)"
        ) from None


def _check(
    target: ExportTarget, group: WindowGroup, first: datetime, last: datetime, now: datetime
) -> None:
    name = target.asset_key.to_user_string()
    for moment, option in ((first, "--from"), (last, "--to")):
        if first_window_start(moment, group.frequency) != moment:
            raise RefusedDelivery(
                f"{option} {_key(moment)}: not the start of one of {name}'s "
                f"{group.frequency}-minute windows (the one containing it starts at "
                f"{_key(first_window_start(moment, group.frequency))})"
            )
    if not target.covers(first):
        raise RefusedDelivery(
            f"--from {_key(first)}: before {name}'s first window, {_key(target.first_window)} "
            "(its start in the integrations file)"
        )
    if last + group.step > now:
        raise RefusedDelivery(
            f"--to {_key(last)}: that window of {name} has not closed yet (it ends at "
            f"{(last + group.step):%Y-%m-%d %H:%M} UTC)"
        )


def plan_manual_runs(
    groups: Sequence[WindowGroup],
    asset_keys: Sequence[str],
    first: str,
    last: str | None = None,
    now: datetime | None = None,
) -> list[ManualRun]:
    """The runs that deliver windows `first` through `last` (their partition keys; `last`
    absent: the one window) of the export assets named: per window group and job, one run per
    day of windows at most. RefusedDelivery names what cannot be delivered: an asset that is
    no export, a key that is no window of it, a window before its start or not closed `now`."""
    now = (now or datetime.now(UTC)).astimezone(UTC).replace(tzinfo=None)
    start, end = _window(first, "--from"), _window(last or first, "--to")
    if end < start:
        raise RefusedDelivery(f"--to {last} is before --from {first}")
    where = {t.asset_key: (group, t) for group in groups for t in group.targets}
    chosen: dict[tuple[str, str], tuple[WindowGroup, list[dg.AssetKey]]] = {}
    for name in asset_keys:
        key = dg.AssetKey.from_user_string(name)
        if key not in where:
            known = ", ".join(sorted(k.to_user_string() for k in where)) or "none"
            raise RefusedDelivery(f"{name}: not an export of the integrations file ({known})")
        group, target = where[key]
        _check(target, group, start, end, now)
        # The group's job selects its live exports (all, when none is live).
        job = group.job_name if target in (group.live or group.targets) else ASSET_JOB
        _, keys = chosen.setdefault((group.job_name, job), (group, []))
        if key not in keys:
            keys.append(key)
    runs = []
    for (_, job), (group, keys) in sorted(chosen.items()):
        first_of_run = start
        while first_of_run <= end:
            windows = min(group.windows_per_run, (end - first_of_run) // group.step + 1)
            last_of_run = first_of_run + (windows - 1) * group.step
            runs.append(ManualRun(job, tuple(keys), first_of_run, last_of_run, windows))
            first_of_run = last_of_run + group.step
    return runs


def execute_manual_run(
    run: ManualRun, defs: dg.Definitions, instance: dg.DagsterInstance
) -> dg.ExecuteInProcessResult:
    """Execute `run` in this process, recorded on `instance` as a run of its job: the sensors
    and the UI read it as they read any other."""
    if run.job_name == ASSET_JOB:
        job = defs.resolve_implicit_global_asset_job_def()
    else:
        job = defs.resolve_job_def(run.job_name)
    return job.execute_in_process(
        instance=instance,
        tags=run.tags,
        asset_selection=list(run.asset_keys),
        raise_on_error=False,
    )
