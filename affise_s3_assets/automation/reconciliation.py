"""Reconciliation: delivered windows whose rows the source has changed since (late events, a
corrected row) are delivered again, same key, saying why.

Each delivery records, with the window's materialization, the fingerprint of the rows it read
(`source_fingerprint`: rows and a digest, computed by DuckDB through the same connection as the
rows). Every `every_minutes`, `reconciliation_sensor` asks the source for the fingerprints of
every window in the look-back, in one scan per window group whatever its number of
integrations (source/events.py, `SourceRead.fingerprints`), compares them with the latest
materialization of each window not already settled (`reconcile_group`), and requests a run for
the windows that differ, tagged with the reason (`late_rows` when the source holds more rows,
`changed_rows` otherwise). Only delivered windows are compared: the others are the catch-up's.
A re-delivery that fails leaves the difference in place, so the next pass asks again.

Knows Dagster's records and the window groups; what the source holds comes from
source/events.py, how a window is delivered from delivery/step.py (through the run it
requests).
"""

import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import dagster as dg

from affise_s3_assets.automation.catch_up import expand_windows, ranged_requests
from affise_s3_assets.automation.runs import (
    CHANGED_ROWS,
    IN_FLIGHT,
    LATE_ROWS,
    REASON_TAG,
    run_window_span,
)
from affise_s3_assets.automation.shards import DEFAULT_EXPORTS_PER_RUN, exports_per_run
from affise_s3_assets.config.schema import Reconciliation
from affise_s3_assets.config.targets import ExportTarget, WindowGroup
from affise_s3_assets.config.windows import PARTITION_KEY_FORMAT, first_window_start
from affise_s3_assets.dagster_internal import (
    AssetJob,
    stopped_schedules,
    store_values,
    stored_values,
)
from affise_s3_assets.delivery.record import DeliveryRecord, latest_materializations
from affise_s3_assets.source.event_types import WINDOW_COLUMN
from affise_s3_assets.source.events import EventsDatabase
from affise_s3_assets.source.fingerprint import FilterKey, Fingerprint

RECONCILIATION_SENSOR = "reconciliation_sensor"
# Every row of a window, no filter: tells a window the source lost from one that lost a
# filtered export's rows only (`Changed.vanished`).
WHOLE_WINDOW: FilterKey = ((), ())
# The sensor looks this often whether a pass is due or under way; a tick compares groups for
# this long at most (well under the sensor's 60 s timeout) and requests this many runs.
TICK_SECONDS = 60
TICK_BUDGET_SECONDS = 30
# Reconciliation's runs queued or running at once, this tick's requests included; below the
# catch-up's backlog in the queue, which delivers windows never delivered at all.
REDELIVERIES_IN_FLIGHT = 10
RECONCILIATION_RUN_PRIORITY = "-2"


@dataclass(frozen=True)
class Changed:
    """A delivered window whose rows in the source are no longer those delivered."""

    target: ExportTarget
    window: str  # partition key
    before: Fingerprint
    after: Fingerprint
    window_rows: int = 0  # the source's rows in the window, whatever the filters

    @property
    def reason(self) -> str:
        return LATE_ROWS if self.after.rows > self.before.rows else CHANGED_ROWS

    @property
    def vanished(self) -> bool:
        """Every delivered row is gone from the source: far likelier a day folder unmounted or
        being rewritten than events all withdrawn, and an empty file would tell the customer
        there were none. Not delivered again by itself (an operator can, by hand). Only when
        the whole window is empty, whatever the filters: a filtered export losing its one row
        (deleted, or re-attributed) beside others' rows is an ordinary change. A
        conversion_updates window empties when its changes change again: those rows moved."""
        moves = WINDOW_COLUMN[self.target.event_type] != "created_at"
        return not moves and self.after.rows == 0 < self.before.rows and self.window_rows == 0


def look_back_range(
    group: WindowGroup, settings: Reconciliation, now: datetime
) -> tuple[datetime, datetime] | None:
    """[first window start, last window end) compared at `now` (naive UTC): the windows that
    started within the look-back and whose scheduled delivery is due. None: nothing to do."""
    if settings.look_back_hours == 0:
        return None
    first = max(first_window_start(now - settings.look_back, group.frequency), group.first_window)
    end = group.newest_ticked_window(now) + group.step
    return (first, end) if first < end else None


def find_changed(
    group: WindowGroup,
    current: Mapping[tuple[FilterKey, datetime], Fingerprint],
    delivered: Mapping[tuple[dg.AssetKey, str], Fingerprint],
    empty: Fingerprint,
) -> list[Changed]:
    """Every delivered window (of `delivered`, by asset and partition key) whose fingerprint in
    the source now (`current`, by filter and window start; absent: no rows) differs; with
    WHOLE_WINDOW's fingerprints in `current`, each says how many rows its window holds."""
    targets = {target.asset_key: target for target in group.live}
    changed = []
    for (asset_key, window), before in sorted(delivered.items()):
        target = targets.get(asset_key)
        if target is None:
            continue
        start = datetime.strptime(window, PARTITION_KEY_FORMAT)
        if not target.covers(start):
            continue
        after = current.get((target.filter_key, start), empty)
        if after.differs_from(before):
            whole = current.get((WHOLE_WINDOW, start), empty).rows
            changed.append(Changed(target, window, before, after, whole))
    return changed


def redelivery_requests(
    group: WindowGroup,
    changed: Sequence[Changed],
    busy: set[tuple[dg.AssetKey, str]],
    now: datetime,
    exports_per_run: int = DEFAULT_EXPORTS_PER_RUN,
) -> list[dg.RunRequest]:
    """Runs delivering the changed windows again: consecutive windows changed for the same
    integrations, for the same reason, share a run (one read); windows with a re-delivery
    already queued or running (`busy`) wait for the next pass."""
    by_window: dict[tuple[str, str], list[dg.AssetKey]] = {}
    for item in changed:
        if (item.target.asset_key, item.window) in busy or item.vanished:
            continue
        by_window.setdefault((item.window, item.reason), []).append(item.target.asset_key)
    runs: list[tuple[datetime, datetime, str, tuple[dg.AssetKey, ...]]] = []
    for (window, reason), keys in sorted(by_window.items()):
        start = datetime.strptime(window, PARTITION_KEY_FORMAT)
        members = tuple(sorted(keys, key=lambda key: key.to_user_string()))
        if runs:
            first, last, last_reason, last_members = runs[-1]
            span = (last - first) // group.step + 1
            if (
                start == last + group.step
                and (reason, members) == (last_reason, last_members)
                and span < group.windows_per_run
            ):
                runs[-1] = (first, start, reason, members)
                continue
        runs.append((start, start, reason, members))
    return [
        request
        for first, last, reason, members in runs
        for request in ranged_requests(
            group,
            members,
            first,
            last,
            "redeliver",
            RECONCILIATION_RUN_PRIORITY,
            extra_key=f"{reason}|{now.isoformat()}",
            extra_tags={REASON_TAG: reason},
            size=exports_per_run,
        )
    ]


def delivered_fingerprints(
    instance: dg.DagsterInstance,
    group: WindowGroup,
    windows: Mapping[dg.AssetKey, Sequence[str]],
    deadline: float | None = None,
) -> tuple[
    dict[tuple[dg.AssetKey, str], Fingerprint], set[tuple[dg.AssetKey, str]], set[dg.AssetKey]
]:
    """For each live target, each of its `windows` (partition keys) as its latest
    materialization recorded it: its fingerprint, or its rows alone for a window delivered
    before fingerprints were recorded. Also: the (asset, window) pairs whose latest delivery
    is not comparable with the export as configured now (another frequency's window, other
    filters: what it holds is not what a re-delivery would, and re-delivering it is the
    operator's call, not a late row's), and the targets read before `deadline` (monotonic
    seconds; the others wait for the next tick)."""
    found: dict[tuple[dg.AssetKey, str], Fingerprint] = {}
    other: set[tuple[dg.AssetKey, str]] = set()
    read: set[dg.AssetKey] = set()
    for target in group.live:
        wanted = list(windows.get(target.asset_key, ()))
        # At least one export per call, so a group whose scan alone outlasts the budget
        # still moves on at each tick.
        if wanted and read and deadline is not None and time.monotonic() > deadline:
            break
        for key, materialization in latest_materializations(instance, target.asset_key, wanted):
            fingerprint = _comparable(materialization.metadata, key, group, target)
            if fingerprint is None:
                other.add((target.asset_key, key))
            else:
                found[(target.asset_key, key)] = fingerprint
        read.add(target.asset_key)
    return found, other, read


def _comparable(
    metadata: Mapping[str, dg.MetadataValue], key: str, group: WindowGroup, target: ExportTarget
) -> Fingerprint | None:
    """The fingerprint a materialization of window `key` recorded; None when what it
    delivered is not what the export as configured now would (another frequency's window under
    a key this one also has, other filters), or it records no rows."""
    record = DeliveryRecord.from_metadata(metadata)
    if record is None:
        return None
    start = datetime.strptime(key, PARTITION_KEY_FORMAT)
    if (record.window_start, record.window_end) != (start, start + group.step):
        return None
    if not record.has_filters(target.affiliates, target.advertisers):
        return None
    return record.fingerprint()


@dataclass
class InFlight:
    """The window jobs' runs queued or running, as reconciliation must know them."""

    # (asset, window) some run is delivering: not requested again, never settled meanwhile.
    delivering: set[tuple[dg.AssetKey, str]] = field(default_factory=set)
    redeliveries: int = 0  # reconciliation's own runs


def runs_in_flight(instance: dg.DagsterInstance, groups: Sequence[WindowGroup]) -> InFlight:
    by_job = {group.job_name: group for group in groups}
    found = InFlight()
    for record in instance.get_run_records(dg.RunsFilter(statuses=IN_FLIGHT)):
        run = record.dagster_run
        group = by_job.get(run.job_name)
        if group is None:
            continue
        found.redeliveries += REASON_TAG in run.tags
        span = run_window_span(run.tags)
        if span is None:
            continue
        keys = run.asset_selection or {target.asset_key for target in group.targets}
        for window in expand_windows([span], group.step):
            found.delivering.update((key, window) for key in keys)
    return found


def _held(fingerprint: Fingerprint) -> str:
    """A target's window as the source holds it, short: what `settled` keeps."""
    return hashlib.sha256(f"{fingerprint.rows}|{fingerprint.text()}".encode()).hexdigest()[:12]


def settled_key(scope: str, group: WindowGroup) -> str:
    """Where a group's settled windows are kept (the instance's key-value store), per code
    location: two deployments on one instance keep their own."""
    return f"affise/{scope}/reconciliation/settled/{group.job_name}"


Settled = dict[str, dict[str, str]]  # asset key -> window -> what the source held (`_held`)


def _settled(stored: str | None) -> Settled:
    """A stored settled map; anything unreadable is nothing settled (compared again)."""
    try:
        data = json.loads(stored) if stored else {}
    except ValueError:
        return {}
    if not isinstance(data, dict):
        return {}
    return {
        str(asset): {str(w): v for w, v in windows.items() if isinstance(v, str)}
        for asset, windows in data.items()
        if isinstance(windows, dict)
    }


def reconcile_group(
    instance: dg.DagsterInstance,
    events: EventsDatabase,
    group: WindowGroup,
    settings: Reconciliation,
    now: datetime,
    in_flight: InFlight | None = None,
    settled: Settled | None = None,
    deadline: float | None = None,
) -> tuple[list[Changed], list[dg.RunRequest], Settled, bool]:
    """One pass over one window group: what changed, the runs delivering it again, the
    (export, window) pairs settled now, and whether every export was read before `deadline`.

    The source is read once over the look-back. An export's window whose source fingerprint
    is what it was when an earlier pass found its delivery equal to it (`settled`) is not
    looked up again: only windows new to the look-back, windows whose rows moved since, and
    windows not settled yet (undelivered, being delivered, or delivered again but not yet as
    the source is) are read from Dagster's records, export by export, so one export's broken
    destination costs reads of its own windows only. A window a run is still delivering is
    never settled: that run may record other rows than the source holds now.
    """
    now = now.astimezone(UTC).replace(tzinfo=None) if now.tzinfo else now
    span = look_back_range(group, settings, now)
    in_flight = in_flight or InFlight()
    if span is None or not group.live:
        return [], [], {}, True
    first, end = span
    with events.read(group.event_type, first, end) as source:
        current = source.fingerprints(
            group.frequency, sorted({WHOLE_WINDOW} | {t.filter_key for t in group.live})
        )
        empty = source.empty()
    starts = [first + group.step * i for i in range((end - first) // group.step)]
    settled = settled or {}
    held: dict[dg.AssetKey, dict[str, str]] = {}
    candidates: dict[dg.AssetKey, list[str]] = {}
    for target in group.live:
        before = settled.get(target.asset_key.to_user_string(), {})
        mine = held[target.asset_key] = {}
        for start in starts:
            if not target.covers(start):
                continue
            key = start.strftime(PARTITION_KEY_FORMAT)
            mine[key] = _held(current.get((target.filter_key, start), empty))
            # A window being delivered can be neither settled nor requested: not read now.
            delivering = (target.asset_key, key) in in_flight.delivering
            if before.get(key) != mine[key] and not delivering:
                candidates.setdefault(target.asset_key, []).append(key)
    delivered, other, read = delivered_fingerprints(instance, group, candidates, deadline)
    changed = find_changed(group, current, delivered, empty)
    differs = {(item.target.asset_key, item.window) for item in changed}
    now_settled: Settled = {}
    for target in group.live:
        name = target.asset_key.to_user_string()
        before = settled.get(name, {})
        fresh = set(candidates.get(target.asset_key, ())) if target.asset_key in read else set()
        mine = {}
        for key, digest in held[target.asset_key].items():
            pair = (target.asset_key, key)
            if pair in in_flight.delivering:
                continue
            if key in fresh:
                if (pair in delivered or pair in other) and pair not in differs:
                    mine[key] = digest
            elif before.get(key) == digest:
                mine[key] = digest
        if mine:
            now_settled[name] = mine
    requests = redelivery_requests(group, changed, in_flight.delivering, now, exports_per_run())
    return changed, requests, now_settled, read >= set(candidates)


@dataclass(frozen=True)
class PassCursor:
    """Where the reconciliation pass stands: under way (`next_group`, the next group to
    compare) or not (None), and when the next pass starts."""

    next_group: int | None = None
    due: str = ""  # ISO instant, UTC

    def to_json(self) -> str:
        return json.dumps({"next_group": self.next_group, "due": self.due}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> "PassCursor":
        try:
            data = json.loads(text or "{}")
            index = data.get("next_group")
            return cls(None if index is None else int(index), str(data.get("due", "")))
        except (ValueError, TypeError, AttributeError):
            return cls()


def build_reconciliation_sensor(
    groups: Sequence[WindowGroup],
    jobs: Sequence[AssetJob],
    settings: Reconciliation,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> dg.SensorDefinition:
    """Compares the look-back's delivered windows with the source every `every_minutes`: a
    pass over every live group, spread over ticks of about TICK_BUDGET_SECONDS (checked
    between groups and between a group's exports, at least one export being read per group
    and tick: one source scan, or one export's records, can still outlast it), with at most
    REDELIVERIES_IN_FLIGHT of its runs in flight."""
    live = sorted((group for group in groups if group.live), key=lambda g: g.job_name)
    job_names = {group.job_name for group in live}
    every = timedelta(minutes=settings.every_minutes)

    @dg.sensor(
        name=RECONCILIATION_SENSOR,
        jobs=[job for job in jobs if job.name in job_names],
        minimum_interval_seconds=TICK_SECONDS,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            f"Every {settings.every_minutes} minutes, compares each window delivered in the last "
            f"{settings.look_back_hours} hours with what the source holds now (rows and a "
            "content fingerprint, one DuckDB scan per window group) and delivers again, same "
            "key, each window whose rows changed (reason late_rows or changed_rows)."
        ),
    )
    def reconciliation_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        origin = context.code_location_origin
        scope = f"{origin.location_name if origin else ''}/{context.repository_name or ''}"
        cursor = PassCursor.from_json(context.cursor)
        now = clock()
        waiting = cursor.next_group is None
        if waiting and cursor.due and now < datetime.fromisoformat(cursor.due):
            return dg.SensorResult(
                skip_reason=f"next pass at {cursor.due}", cursor=cursor.to_json()
            )
        due = (now + every).isoformat() if waiting else cursor.due
        instance = context.instance
        paused = stopped_schedules(instance)
        in_flight = runs_in_flight(instance, live)
        # Requests this tick may add: within its own cap, and within what is still in flight.
        room = max(0, REDELIVERIES_IN_FLIGHT - in_flight.redeliveries)
        requests: list[dg.RunRequest] = []
        lines, failed, vanished = [], [], []
        deadline = time.monotonic() + TICK_BUDGET_SECONDS
        index = cursor.next_group or 0
        index = index if index < len(live) else 0
        # Every group's settled windows in one read, not one per group.
        stored = stored_values(instance, {settled_key(scope, g) for g in live})
        while index < len(live) and time.monotonic() < deadline:
            group = live[index]
            if group.schedule_name in paused:
                index += 1
                continue
            key = settled_key(scope, group)
            settled = _settled(stored.get(key))
            try:
                changed, wanted, now_settled, whole = reconcile_group(
                    instance, EventsDatabase(), group, settings, now, in_flight, settled, deadline
                )
                if now_settled != settled:
                    store_values(instance, {key: json.dumps(now_settled)})
            except Exception as exc:  # the source away: this group waits for the next pass
                failed.append(group.job_name)
                context.log.warning(f"{group.job_name}: not compared with the source: {exc}")
                index += 1
                continue
            # Beyond the room, the rest stay unsettled: the next pass finds them again.
            requests.extend(wanted[: max(0, room - len(requests))])
            for item in changed:
                if item.vanished:
                    vanished.append(
                        f"{item.target.integration} {group.event_type} {item.window}: all "
                        f"{item.before.rows} delivered rows are gone from the source; not "
                        "delivered again (an empty file would say there were no events): "
                        "re-materialize it by hand if they really were withdrawn"
                    )
                    continue
                lines.append(
                    f"{item.target.integration} {group.event_type} {item.window}: {item.reason} "
                    f"({item.before.rows} rows delivered, {item.after.rows} in the source)"
                )
            if not whole:
                break  # out of time among its exports: this group goes on next tick
            index += 1
        if lines:
            context.log.info("\n".join(lines))
        if vanished:
            context.log.warning("\n".join(vanished))
        finished = index >= len(live)
        state = PassCursor(None if finished else index, due)
        skip = None
        if not requests:
            skip = (
                f"not compared: {', '.join(failed)}"
                if failed
                else "every delivered window compared matches the source"
                + ("" if finished else f" (pass continues with {live[index].job_name})")
            )
        return dg.SensorResult(run_requests=requests, skip_reason=skip, cursor=state.to_json())

    return reconciliation_sensor
