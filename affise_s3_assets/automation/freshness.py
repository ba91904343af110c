"""Freshness that means the latest window: an export is late when its latest due window is not
delivered, whatever older windows were delivered or re-delivered since.

Dagster's time-window freshness goes by the newest materialization of any partition, so a
re-delivered old window made an export that missed its latest windows look fresh. Each live
export instead has an asset check, `latest_window_delivered`, and a sensor evaluates it every
minute (as a runless check evaluation: no run, no step). It fails at once, with ERROR
severity, when one of the export's latest windows failed with a permanent error (a failure
observation the export step recorded, not delivered since); else it passes when the latest due
window (its end plus the event type's lateness plus FRESHNESS_GRACE is past) has a
materialization, and fails with WARN severity once that window is overdue, ERROR once the one
before it is missing too (two windows behind). The check can be executed from the asset's page
as well, with the same verdict.

Knows the window groups and Dagster's records; nothing of how a window is delivered.
"""

import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg

from affise_s3_assets.config.targets import ExportTarget, WindowGroup
from affise_s3_assets.config.windows import PARTITION_KEY_FORMAT, first_window_start
from affise_s3_assets.dagster_internal import (
    newest_event_id,
    newest_materialized_partitions,
    observed_between,
)
from affise_s3_assets.delivery.report import FailureRecord

CHECK_NAME = "latest_window_delivered"
SENSOR_NAME = "latest_window_sensor"
# A window is delivered a little after it closes (and its lateness): the source may be waited
# for, the run may queue. Beyond this, the window is overdue.
FRESHNESS_GRACE = timedelta(minutes=10)
TICK_SECONDS = 60
# Observations read per export to find its newest failure (other observations are rare).
FAILURES_LOOKED_AT = 5


@dataclass(frozen=True)
class LatestWindow:
    """The verdict on one export's latest due window."""

    passed: bool
    severity: dg.AssetCheckSeverity
    window: str | None  # the partition key judged; None: no window due yet
    description: str

    def metadata(self) -> dict[str, str]:
        return {"window": self.window or "none due yet"}


def _key(moment: datetime) -> str:
    return moment.strftime(PARTITION_KEY_FORMAT)


def _latest_due(target: ExportTarget, lateness: timedelta, now: datetime) -> datetime:
    """The newest window whose end, lateness and grace are past: the latest due."""
    step = timedelta(minutes=target.frequency)
    return first_window_start(now - lateness - FRESHNESS_GRACE, target.frequency) - step


def judged_window(target: ExportTarget, lateness: timedelta, now: datetime) -> str | None:
    """The window a passing verdict at `now` names: the latest due, None before the first."""
    due = _latest_due(target, lateness, now)
    return _key(due) if target.covers(due) else None


def latest_window(
    target: ExportTarget,
    lateness: timedelta,
    now: datetime,
    delivered: Callable[[dg.AssetKey, str], bool],
    newest_failure: Callable[[dg.AssetKey], tuple[str, str] | None] = lambda _: None,
) -> LatestWindow:
    """The verdict for `target` at `now` (naive UTC); `delivered(asset key, partition key)`
    says whether a window has a materialization, `newest_failure(asset key)` the newest window
    whose delivery failed and was not delivered since (partition key, why), if any."""
    step = timedelta(minutes=target.frequency)
    due = _latest_due(target, lateness, now)
    failure = newest_failure(target.asset_key)
    if failure is not None and failure[0] >= _key(due - step):
        key, why = failure
        return LatestWindow(False, dg.AssetCheckSeverity.ERROR, key, f"window {key} failed: {why}")
    if not target.covers(due):
        return LatestWindow(
            True, dg.AssetCheckSeverity.WARN, None, "no window of this export is due yet"
        )
    key = _key(due)
    if delivered(target.asset_key, key):
        return LatestWindow(True, dg.AssetCheckSeverity.WARN, key, f"window {key} is delivered")
    # Two windows behind: the one before is due and missing too.
    before = due - step
    behind = target.covers(before) and not delivered(target.asset_key, _key(before))
    return LatestWindow(
        False,
        dg.AssetCheckSeverity.ERROR if behind else dg.AssetCheckSeverity.WARN,
        key,
        f"window {key} is not delivered "
        f"{'(nor the one before it) ' if behind else ''}"
        f"{FRESHNESS_GRACE // timedelta(minutes=1)} minutes after it was due; its partition "
        "says why (a failure observation), or it has not run",
    )


def _delivered_in(
    instance: dg.DagsterInstance, newest: Mapping[dg.AssetKey, str | None] | None = None
) -> Callable[[dg.AssetKey, str], bool]:
    """`delivered(asset key, partition key)` from the instance; `newest` (each asset's newest
    materialized partition, read in bulk) answers the usual case without a query."""

    def delivered(asset_key: dg.AssetKey, partition: str) -> bool:
        if newest is not None and newest.get(asset_key) == partition:
            return True
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=asset_key, asset_partitions=[partition]), limit=1
        ).records
        return bool(records)

    return delivered


def _newest_failure_in(
    instance: dg.DagsterInstance,
) -> Callable[[dg.AssetKey], tuple[str, str] | None]:
    def newest_failure(asset_key: dg.AssetKey) -> tuple[str, str] | None:
        observations = instance.fetch_observations(
            dg.AssetRecordsFilter(asset_key=asset_key), limit=FAILURES_LOOKED_AT
        ).records
        for record in observations:  # newest first
            metadata = record.asset_observation.metadata if record.asset_observation else {}
            failure = FailureRecord.from_metadata(metadata)
            if failure is None or record.partition_key is None:
                continue
            # Only what no retry fixes: a transient failure, or a source not yet complete,
            # is the grace's to wait for (the window is judged when it falls due).
            if not failure.permanent:
                continue
            since = instance.fetch_materializations(
                dg.AssetRecordsFilter(
                    asset_key=asset_key,
                    asset_partitions=[record.partition_key],
                    after_storage_id=record.storage_id,
                ),
                limit=1,
            ).records
            if since:
                continue  # delivered after it failed: an older failure may still stand
            return record.partition_key, failure.failure
        return None

    return newest_failure


def _verdict_fields(target: ExportTarget, verdict: LatestWindow) -> dict[str, Any]:
    """What a check result and a runless evaluation of the verdict both say."""
    return {
        "asset_key": target.asset_key,
        "check_name": CHECK_NAME,
        "passed": verdict.passed,
        "severity": verdict.severity,
        "description": verdict.description,
        "metadata": verdict.metadata(),
    }


def build_latest_window_checks(groups: Sequence[WindowGroup]) -> list[dg.AssetChecksDefinition]:
    """One multi-check per group, a `latest_window_delivered` check per live export."""
    return [_group_checks(group) for group in groups if group.live]


def _group_checks(group: WindowGroup) -> dg.AssetChecksDefinition:
    live = {target.asset_key: target for target in group.live}

    @dg.multi_asset_check(
        name=f"{group.step_name}_latest_window",
        specs=[
            dg.AssetCheckSpec(
                CHECK_NAME,
                asset=key,
                description="The latest due window of this export is delivered.",
            )
            for key in live
        ],
        can_subset=True,
    )
    def check(context: dg.AssetCheckExecutionContext) -> Iterable[dg.AssetCheckResult]:
        now = datetime.now(UTC).replace(tzinfo=None)
        delivered = _delivered_in(context.instance)
        newest_failure = _newest_failure_in(context.instance)
        for check_key in context.selected_asset_check_keys:
            target = live[check_key.asset_key]
            verdict = latest_window(target, group.lateness, now, delivered, newest_failure)
            yield dg.AssetCheckResult(**_verdict_fields(target, verdict))

    return check


def build_latest_window_sensor(
    groups: Sequence[WindowGroup], clock: Callable[[], datetime] | None = None
) -> dg.SensorDefinition:
    """Evaluates every live export's check each minute and records a verdict when it changed
    (the cursor keeps each export's last one), so the UI's check status follows the latest
    window without a run.

    An export whose last verdict passed on the window still judged, and that has no new
    observation (a failure is recorded as one), keeps its verdict without a query; the others
    are judged with their newest materialized partitions read in bulk. So a tick costs a
    query per export only when the judged window moves (once per window), not every minute:
    at 10,000 exports, two per export each minute were the deployment's largest steady load.
    A tick judges for at most TICK_BUDGET_SECONDS; what is left is the next tick's."""
    targets = [(target, group.lateness) for group in groups for target in group.live]

    @dg.sensor(
        name=SENSOR_NAME,
        minimum_interval_seconds=TICK_SECONDS,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Marks an export late when its latest due window is not delivered "
        f"(asset check `{CHECK_NAME}`).",
    )
    def latest_window_sensor(context: dg.SensorEvaluationContext) -> dg.SkipReason:
        began = time.monotonic()
        now = clock() if clock is not None else datetime.now(UTC).replace(tzinfo=None)
        instance = context.instance
        cursor = LatestWindowCursor.parse(context.cursor)
        known = cursor.verdicts
        newest_event = newest_event_id(instance)
        # Storage ids are handed out before their events commit (a Postgres sequence): an
        # observation committed late may hold an id below the last tick's newest, so the ids
        # just behind it are read again. An event log newer than the cursor (reset) is read whole.
        observed = (
            observed_between(
                instance,
                max(0, cursor.events - OBSERVATION_IDS_REREAD),
                newest_event,
                OBSERVATIONS_READ,
            )
            if cursor.events is not None and cursor.events <= newest_event
            else None
        )
        pending = set(cursor.pending)
        judged: list[tuple[ExportTarget, timedelta, bool]] = []
        for target, lateness in targets:
            name = target.asset_key.to_user_string()
            state = known.get(name)
            quiet = observed is not None and target.asset_key not in observed
            quiet = quiet and name not in pending
            passed = state is not None and state[1] is True
            if quiet and passed and state[0] == judged_window(target, lateness, now):
                continue  # still passing on the same window
            # A passing export with no new observation has no new failure to look for.
            judged.append((target, lateness, quiet and passed))
        # Those the last tick had no time for first, in its order: late exports, judged every
        # tick, never crowd them out.
        order = {name: n for n, name in enumerate(cursor.pending)}
        judged.sort(key=lambda item: order.get(item[0].asset_key.to_user_string(), len(order)))
        newest = newest_materialized_partitions(instance, [t.asset_key for t, _, _ in judged])
        delivered = _delivered_in(instance, newest)
        newest_failure = _newest_failure_in(instance)
        changed = 0
        left = 0
        for n, (target, lateness, no_new_failure) in enumerate(judged):
            if n and time.monotonic() - began > TICK_BUDGET_SECONDS:
                # The rest keep their last verdict and are judged next tick, whatever it reads.
                left = len(judged) - n
                break
            verdict = latest_window(
                target,
                lateness,
                now,
                delivered,
                (lambda _: None) if no_new_failure else newest_failure,
            )
            name = target.asset_key.to_user_string()
            state = [verdict.window, verdict.passed, verdict.severity.value]
            if known.get(name) == state:
                continue
            instance.report_runless_asset_event(
                dg.AssetCheckEvaluation(**_verdict_fields(target, verdict))
            )
            known[name] = state
            changed += 1
        live = {target.asset_key.to_user_string() for target, _ in targets}
        verdicts = {k: v for k, v in known.items() if k in live}
        rest = [t.asset_key.to_user_string() for t, _, _ in judged[len(judged) - left :]]
        context.update_cursor(LatestWindowCursor(newest_event, verdicts, rest).text())
        late = sum(1 for state in verdicts.values() if not state[1])
        return dg.SkipReason(
            f"{changed} verdicts recorded; {late} of {len(targets)} exports late; "
            f"{len(judged) - left} judged" + (f", {left} left for the next tick" if left else "")
        )

    return latest_window_sensor


# Observations read per tick to find the exports observed since the last; more than this and
# every export is judged.
OBSERVATIONS_READ = 10_000
# Storage ids behind the last tick's newest read again (see the sensor).
OBSERVATION_IDS_REREAD = 1_000
# A tick stops judging after this long (Dagster's deadline for a sensor tick is 60 s): each
# verdict recorded costs an event (about 15 ms on SQLite), and when a window moves for 10,000
# exports at once their verdicts are recorded over several ticks.
TICK_BUDGET_SECONDS = 40.0


@dataclass(frozen=True)
class LatestWindowCursor:
    """The sensor's cursor: the event log's newest storage id when the last tick began (None:
    judge every export), each export's last verdict, [window, passed, severity], and the
    exports the last tick had no time left to judge."""

    events: int | None
    verdicts: dict[str, list]
    pending: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str | None) -> "LatestWindowCursor":
        loaded = json.loads(text) if text else {}
        if "verdicts" not in loaded:  # the verdicts alone, as the sensor kept them before
            return cls(None, loaded)
        return cls(loaded.get("events"), loaded["verdicts"], loaded.get("pending", []))

    def text(self) -> str:
        return json.dumps(
            {"events": self.events, "verdicts": self.verdicts, "pending": self.pending}
        )
