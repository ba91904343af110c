"""The sensor that accounts for every window the schedules do not deliver.

Schedules only request the window that has just closed. An integration added with a `start`
in the past (or a whole deployment started on an empty instance) would otherwise leave every
earlier window undelivered. The first time this sensor sees an export it records the windows
already closed, then requests them oldest first, a bounded number of runs per tick. New
integrations sharing a window job and a window are delivered by one run.

Dagster's scheduler, back from being down or behind, evaluates only the latest missed tick of
these schedules (they have no partition set), so the windows in between would never be
requested. The sensor also follows each window job: a window closed for a while without a
scheduled run gets one, for every integration due in it.
"""

import functools
import hashlib
import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg

from affise_s3_assets.fanout import ExportTarget
from affise_s3_assets.partitions import PARTITION_KEY_FORMAT, first_window_start
from affise_s3_assets.schedules import (
    MISSED_TAG,
    SCHEDULED_RUN_PRIORITY,
    SCHEDULED_TAG,
    latest_scheduled_run,
)

CATCH_UP_RUNS_PER_TICK = 20
# Windows examined per tick at most, so a tick stays fast whatever the backlog.
CATCH_UP_WINDOWS_PER_TICK = 20_000
# Lower than scheduled runs: the newest window of every integration goes first.
CATCH_UP_RUN_PRIORITY = "-1"
# How long after a window closes its schedule has to create the run before the sensor does.
SCHEDULE_GRACE = timedelta(minutes=2)
# Windows a tick checks per window job at most (one run query each).
GAP_WINDOWS_PER_TICK = 50
# The cursor entry following the window jobs; asset keys (`affise/...`) cannot collide.
GAPS_KEY = "__window_jobs__"

Cursor = dict[str, dict[str, Any]]


def _key(moment: datetime) -> str:
    return moment.strftime(PARTITION_KEY_FORMAT)


def _moment(key: str) -> datetime:
    return datetime.strptime(key, PARTITION_KEY_FORMAT)


def _windows(target: ExportTarget) -> str:
    """What the cursor entry was planned for: a change of start or frequency replans it."""
    return f"{_key(target.first_window)}/{target.frequency}"


def _covered_at_old_frequency(entry: dict[str, Any], delivered: set[str]) -> list[list[str]]:
    """The spans a changed frequency must not deliver again: the windows delivered at the old
    one (`delivered`: the asset's materialized partitions), merged into spans."""
    step = timedelta(minutes=int(entry["windows"].split("/")[1]))
    spans = [list(span) for span in entry.get("covered", [])]
    for key in sorted(delivered):
        end = _key(_moment(key) + step)
        if spans and spans[-1][1] == key:
            spans[-1][1] = end
        else:
            spans.append([key, end])
    return spans


def _overlaps(start: datetime, end: datetime, spans: list[tuple[datetime, datetime]]) -> bool:
    return any(start < span_end and span_start < end for span_start, span_end in spans)


def plan_catch_up(
    targets: Sequence[tuple[ExportTarget, dg.JobDefinition]],
    cursor: Cursor,
    now: datetime,
    budget: int = CATCH_UP_RUNS_PER_TICK,
    materialized: Callable[[dg.AssetKey], set[str]] | None = None,
) -> tuple[list[dg.RunRequest], Cursor]:
    """This tick's run requests and the next cursor; pure, so tests drive it directly.

    The cursor maps each export asset to its next window to request and the last window that
    had already closed when the export first appeared (later ones are the schedule's).
    Entries of integrations no longer configured are kept: one that comes back resumes where
    it was instead of re-delivering its history (windows while it was gone are not due). When
    an integration's start or frequency changes, its windows are planned again from its start
    and those already materialized (`materialized`, asked only for such assets) are skipped.
    After a frequency change, windows overlapping what the old frequency delivered are skipped
    too: their rows are in the customer's bucket already, under the old windows' keys.
    """
    now = now.astimezone(UTC).replace(tzinfo=None) if now.tzinfo else now
    # A replanned asset is asked once per tick, however many uses.
    materialized = functools.cache(materialized) if materialized else None
    state: Cursor = dict(cursor)
    pending: dict[str, datetime] = {}
    until: dict[str, datetime] = {}
    done: dict[str, set[str]] = {}
    # Parsed once per tick: a tick can examine thousands of windows.
    covered: dict[str, list[tuple[datetime, datetime]]] = {}
    for target, _ in targets:
        name = target.asset_key.to_user_string()
        entry = cursor.get(name)
        if entry is None or entry.get("windows", _windows(target)) != _windows(target):
            last_closed = first_window_start(now, target.frequency) - timedelta(
                minutes=target.frequency
            )
            replanned = entry is not None
            entry = {
                "next": _key(target.first_window),
                "until": _key(last_closed),
                "windows": _windows(target),
            }
            if replanned:
                entry["skip_materialized"] = "1"
                previous = cursor[name]
                if previous["windows"].split("/")[1] != str(target.frequency):
                    delivered = materialized(target.asset_key) if materialized else set()
                    entry["covered"] = _covered_at_old_frequency(previous, delivered)
                elif "covered" in previous:
                    entry["covered"] = previous["covered"]
        entry = dict(entry)
        entry["windows"] = _windows(target)
        if entry.get("skip_materialized") and materialized is not None:
            done[name] = materialized(target.asset_key)
        state[name] = entry
        covered[name] = [(_moment(a), _moment(b)) for a, b in entry.get("covered", [])]
        if entry["next"] is not None and entry["until"] is not None:
            if entry["next"] <= entry["until"]:
                pending[name] = _moment(entry["next"])
                until[name] = _moment(entry["until"])
            else:
                entry["next"] = None

    requested: dict[tuple[str, str], list[str]] = {}
    examined = 0
    while pending and len(requested) < budget and examined < CATCH_UP_WINDOWS_PER_TICK:
        window = min(pending.values())
        for target, job in targets:
            name = target.asset_key.to_user_string()
            if pending.get(name) != window:
                continue
            examined += 1
            following = window + timedelta(minutes=target.frequency)
            if _key(window) not in done.get(name, ()) and not _overlaps(
                window, following, covered[name]
            ):
                requested.setdefault((job.name, _key(window)), []).append(target.integration)
            if following <= until[name]:
                pending[name] = following
                state[name]["next"] = _key(following)
            else:
                del pending[name]
                state[name]["next"] = None
                state[name].pop("skip_materialized", None)

    ops = {job.name: next(iter(job.graph.node_dict)) for _, job in targets}
    requests = [
        dg.RunRequest(
            run_key=f"catch-up|{job_name}|{partition_key}|"
            + hashlib.sha256(",".join(sorted(names)).encode()).hexdigest()[:16],
            job_name=job_name,
            partition_key=partition_key,
            run_config={"ops": {ops[job_name]: {"config": {"integrations": sorted(names)}}}},
            tags={"dagster/priority": CATCH_UP_RUN_PRIORITY, "affise/catch_up": "1"},
        )
        for (job_name, partition_key), names in requested.items()
    ]
    return requests, state


def plan_missed_windows(
    targets: Sequence[tuple[ExportTarget, dg.JobDefinition]],
    checked: dict[str, str] | None,
    now: datetime,
    has_scheduled_run: Callable[[str, str], bool],
    newest_scheduled: Callable[[str], str | None] | None = None,
) -> tuple[list[dg.RunRequest], dict[str, str]]:
    """Runs for windows closed more than SCHEDULE_GRACE ago that no schedule requested, and
    the next `checked` (per window job, the last window looked at).

    A job seen for the first time starts from the last window closed now: before it, windows
    are the catch-up's (a job back after a pause has none due while it was gone). Only when
    `checked` is None (a cursor written before this existed) each job starts after its newest
    scheduled run (`newest_scheduled`), so windows missed during that upgrade are found too.
    The newest closed window is never requested here: the scheduler, back from being down,
    evaluates that tick itself, and two runs for one window would race.
    """
    now = now.astimezone(UTC).replace(tzinfo=None) if now.tzinfo else now
    groups: dict[str, list[ExportTarget]] = {}
    for target, job in targets:
        groups.setdefault(job.name, []).append(target)
    # Jobs gone from the config are forgotten: if one returns, it starts again from then.
    state = {name: key for name, key in (checked or {}).items() if name in groups}
    requests = []
    for name, members in groups.items():
        frequency = members[0].frequency
        step = timedelta(minutes=frequency)
        newest_tick_window = first_window_start(now, frequency) - step
        if name not in state:
            seed = newest_scheduled(name) if checked is None and newest_scheduled else None
            state[name] = seed or _key(newest_tick_window)
            continue
        last = min(
            first_window_start(now - SCHEDULE_GRACE, frequency) - step, newest_tick_window - step
        )
        window = _moment(state[name]) + step
        for _ in range(GAP_WINDOWS_PER_TICK):
            if window > last:
                break
            due = any(member.first_window <= window for member in members)
            if due and not has_scheduled_run(name, _key(window)):
                requests.append(
                    dg.RunRequest(
                        run_key=f"missed|{name}|{_key(window)}",
                        job_name=name,
                        partition_key=_key(window),
                        # Marked scheduled: a schedule tick for this window, late, then skips.
                        tags={
                            "dagster/priority": SCHEDULED_RUN_PRIORITY,
                            SCHEDULED_TAG: "1",
                            MISSED_TAG: "1",
                        },
                    )
                )
            state[name] = _key(window)
            window += step
    return requests, state


def build_new_integrations_sensor(
    targets: Sequence[tuple[ExportTarget, dg.JobDefinition]],
) -> dg.SensorDefinition:
    """`targets` pairs each enabled export with the window job that delivers it."""
    jobs = list({job.name: job for _, job in targets}.values())

    @dg.sensor(
        name="new_integrations_sensor",
        jobs=jobs,
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            "Delivers every window of a newly configured integration from its start up to the "
            f"moment it appeared: at most {CATCH_UP_RUNS_PER_TICK} runs per tick, oldest first, "
            "one run per window for all new integrations sharing it. Also requests any window "
            "its schedules missed (the daemon was down or behind)."
        ),
    )
    def new_integrations_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        cursor = json.loads(context.cursor) if context.cursor else {}
        checked = cursor.pop(GAPS_KEY, None)
        now = datetime.now(UTC)

        def newest_scheduled(job_name: str) -> str | None:
            record = latest_scheduled_run(context.instance, job_name)
            return record.dagster_run.tags.get("dagster/partition") if record else None

        missed, checked = plan_missed_windows(
            targets,
            checked,
            now,
            lambda job_name, key: latest_scheduled_run(context.instance, job_name, key) is not None,
            newest_scheduled,
        )
        requests, next_cursor = plan_catch_up(
            targets,
            cursor,
            now,
            materialized=lambda key: set(context.instance.get_materialized_partitions(key)),
        )
        next_cursor[GAPS_KEY] = checked
        return dg.SensorResult(run_requests=missed + requests, cursor=json.dumps(next_cursor))

    return new_integrations_sensor
