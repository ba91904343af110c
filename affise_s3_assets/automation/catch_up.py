"""The catch-up sensor: every window a schedule does not deliver is delivered here.

Three kinds of window, planned by three pure functions the tests drive directly:

- **Backlog** (`plan_catch_up`): an integration added with a `start` in the past (or a whole
  deployment started on an empty instance) has every window since its start to deliver. Each
  tick requests ranged runs of up to a day of windows (one read, one object per window), new
  integrations' first range first, then round-robin, so one long history never starves another.
- **Missed ticks** (`plan_missed_windows`): Dagster 1.13's scheduler, back from being down or
  behind, evaluates only the latest missed tick (it catches up no schedule). A window closed
  for a while without a scheduled run gets one, for every integration due in it.
- **Failed windows** (`plan_redelivery`): windows a failed run planned and did not deliver are
  tried again at a slow cadence (2 minutes, doubling, at most an hour), so a broken destination
  is not hammered, and once it works every window it missed is delivered with no operator.

State is the typed, versioned `CatchUpState`, kept in the instance's key-value store (it holds
every export: megabytes at 10,000) and written only when it changed; the sensor's cursor, which
Dagster copies into every tick, names only which stored copy is current. What was delivered comes
from Dagster (materialized partitions), asked only for the few exports that need it.
"""

import functools
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg

from affise_s3_assets.automation.runs import (
    CATCH_UP_TAG,
    IN_FLIGHT,
    PARTITION_TAG,
    REASON_TAG,
    REDELIVERY_TAG,
    SOURCE_ONLY_TAG,
    run_window_span,
)
from affise_s3_assets.automation.schedules import (
    latest_scheduled_run,
    scheduled_exports,
    scheduled_run_requests,
)
from affise_s3_assets.automation.shards import DEFAULT_EXPORTS_PER_RUN, exports_per_run, sharded
from affise_s3_assets.config.targets import ExportTarget, WindowGroup
from affise_s3_assets.config.windows import PARTITION_KEY_FORMAT
from affise_s3_assets.dagster_internal import (
    AssetJob,
    materialized_partitions,
    partition_range_tags,
    stopped_schedules,
    store_values,
    stored_values,
)
from affise_s3_assets.source.events import EventsDatabase

SENSOR_NAME = "catch_up_sensor"
STATE_VERSION = 2  # of the stored state (the cursor held it before version 3)
POINTER_VERSION = 3  # of the cursor naming the stored copy
TICK_SECONDS = 30
# Catch-up runs queued or running at once, at most: backlog never fills the queue, so a window
# that just closed, or a new integration's first range, waits behind a few runs at most.
CATCH_UP_IN_FLIGHT = 6
# Below scheduled runs (10); a new integration's first range goes ahead of older backlog.
FIRST_RANGE_PRIORITY = "0"
CATCH_UP_RUN_PRIORITY = "-1"
# Windows examined per tick at most, so a tick stays fast whatever the backlog.
CATCH_UP_WINDOWS_PER_TICK = 20_000
# How long after a window closes its schedule has to create the run before the sensor does.
SCHEDULE_GRACE = timedelta(minutes=2)
# Windows a tick checks per window job at most (one run query each).
GAP_WINDOWS_PER_TICK = 50
# Failed windows are tried again after this, doubling with each failed attempt up to the cap.
REDELIVERY_FIRST_WAIT = timedelta(minutes=2)
REDELIVERY_MAX_WAIT = timedelta(hours=1)
# Failed runs read per tick at most (oldest first; the rest next tick).
FAILED_RUNS_PER_TICK = 100


# A tick turns the same few thousand window keys into datetimes and back many times over:
# cached, a tick at 10,000 exports stays well under a second of it.
@functools.lru_cache(maxsize=1 << 16)
def _key(moment: datetime) -> str:
    return moment.strftime(PARTITION_KEY_FORMAT)


@functools.lru_cache(maxsize=1 << 16)
def _moment(key: str) -> datetime:
    return datetime.strptime(key, PARTITION_KEY_FORMAT)


def _naive(now: datetime) -> datetime:
    return now.astimezone(UTC).replace(tzinfo=None) if now.tzinfo else now


@dataclass(frozen=True)
class ExportWindows:
    """The windows an export's progress was planned for: its first window and frequency. A
    change of either replans it. Stored as "first window key/frequency"."""

    first: datetime  # naive UTC
    frequency: int

    @classmethod
    def of(cls, target: ExportTarget) -> "ExportWindows":
        return cls(target.first_window, target.frequency)

    @classmethod
    def parse(cls, stored: str) -> "ExportWindows":
        first, frequency = stored.split("/")
        return cls(_moment(first), int(frequency))

    def stored(self) -> str:
        return f"{_key(self.first)}/{self.frequency}"

    @property
    def step(self) -> timedelta:
        return timedelta(minutes=self.frequency)


@dataclass(frozen=True)
class Covered:
    """Time an export delivered at an earlier frequency, [start, end): no window of the new
    frequency that overlaps it is delivered again. Stored as [start key, end key]."""

    start: datetime  # naive UTC
    end: datetime

    @classmethod
    def parse(cls, stored: Sequence[str]) -> "Covered":
        start, end = stored
        return cls(_moment(start), _moment(end))

    def stored(self) -> list[str]:
        return [_key(self.start), _key(self.end)]

    def overlaps(self, start: datetime, end: datetime) -> bool:
        return start < self.end and self.start < end


@dataclass(frozen=True)
class WindowSpan:
    """Consecutive windows of an export, [first, last]: both included, by their starts.
    Stored as [first key, last key]."""

    first: datetime  # naive UTC
    last: datetime

    @classmethod
    def parse(cls, stored: Sequence[str]) -> "WindowSpan":
        first, last = stored
        return cls(_moment(first), _moment(last))

    def stored(self) -> list[str]:
        return [_key(self.first), _key(self.last)]

    def windows(self, step: timedelta) -> list[datetime]:
        """Every window's start, `step` apart."""
        starts = []
        window = self.first
        while window <= self.last:
            starts.append(window)
            window += step
        return starts


@dataclass
class ExportProgress:
    """One export's catch-up: the windows from its start up to the moment it appeared."""

    windows: ExportWindows  # what it was planned for (built from its stored text too)
    next: str | None = None  # next window to request; None when caught up
    until: str | None = None  # last window of the backlog; later ones are the schedule's
    covered: list[Covered] = field(default_factory=list)  # delivered at an old frequency
    skip_materialized: bool = False  # replanned: windows delivered before are skipped
    started: bool = False  # a first range was requested

    def __post_init__(self) -> None:
        # Built from the stored form too (the text and [start, end] keys): read as typed.
        if isinstance(self.windows, str):
            self.windows = ExportWindows.parse(self.windows)
        self.covered = [c if isinstance(c, Covered) else Covered.parse(c) for c in self.covered]

    def compact(self) -> dict[str, object]:
        """The state holds every export: a caught-up one keeps only what a replan needs."""
        windows, covered = self.windows.stored(), [span.stored() for span in self.covered]
        data: dict[str, object] = {"windows": windows, "covered": covered}
        if self.next is not None:
            data = {
                "windows": windows,
                "next": self.next,
                "until": self.until,
                "covered": covered,
                "skip_materialized": self.skip_materialized,
                "started": self.started,
            }
        return {k: v for k, v in data.items() if v or k == "windows"}


@dataclass
class Redelivery:
    """An export's windows that failed and wait for the next attempt."""

    spans: list[WindowSpan]  # consecutive failed windows
    attempts: int = 0
    next_attempt: str = ""  # ISO time, UTC
    # The windows they were recorded for (None: not recorded): after a change of start or
    # frequency they are no longer partitions of the export, and the catch-up replans it.
    windows: ExportWindows | None = None
    # Only the source held it back: tried once the source is complete past a window's end,
    # every tick, with no back-off; any other failure among them brings the back-off back.
    waits_for_source: bool = False
    # How far the source was when such windows were last requested: a run that still finds
    # them incomplete sees another source than the sensor, and the back-off takes over.
    asked_until: str = ""

    def stored(self) -> dict[str, object]:
        """As kept in the state: fields at their default left out, so a release that does not
        know a newer field still reads the entry."""
        data = asdict(self)
        data["spans"] = [span.stored() for span in self.spans]
        data["windows"] = self.windows.stored() if self.windows is not None else ""
        return {
            k: v
            for k, v in data.items()
            if k in ("spans", "attempts", "next_attempt", "windows") or v
        }


@dataclass
class CatchUpState:
    exports: dict[str, ExportProgress] = field(default_factory=dict)
    # Missed ticks: per window job, the last window looked at (None: not followed yet).
    window_jobs: dict[str, str] | None = None
    # Per run status (failure, cancelation): the event log storage id after which runs that
    # ended so are still to be read. Storage ids only grow, whatever the clocks say.
    ended_runs_after: dict[str, int] | None = None
    redelivery: dict[str, Redelivery] = field(default_factory=dict)
    # Set once the stored state was lost: from then on an export seen for the first time may
    # have been delivered before, so its materialized windows are skipped (one query each).
    after_loss: bool = False

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": STATE_VERSION,
                "after_loss": self.after_loss,
                "exports": {name: p.compact() for name, p in sorted(self.exports.items())},
                "window_jobs": self.window_jobs,
                "ended_runs_after": self.ended_runs_after,
                "redelivery": {name: r.stored() for name, r in sorted(self.redelivery.items())},
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str | None) -> "CatchUpState":
        if not text:
            return cls()
        data = json.loads(text)
        if data.get("version") != STATE_VERSION:
            # Version 1 was a map of asset keys to untyped entries, plus "__window_jobs__".
            jobs = data.pop("__window_jobs__", None)
            exports = {name: _progress({**entry, "started": True}) for name, entry in data.items()}
            return cls(exports=exports, window_jobs=jobs)
        return cls(
            exports={n: ExportProgress(**p) for n, p in data["exports"].items()},
            window_jobs=data["window_jobs"],
            ended_runs_after=data.get("ended_runs_after"),
            redelivery={n: _redelivery(r) for n, r in data["redelivery"].items()},
            after_loss=bool(data.get("after_loss")),
        )


@dataclass(frozen=True)
class StoredState:
    """Where the sensor keeps its `CatchUpState`: two slots of the instance's key-value store,
    written alternately, and a cursor naming the current one.

    A tick writes the slot the cursor does not name, and only when the state changed, before
    it returns; Dagster then saves the new cursor with the tick's run requests. A tick whose
    cursor is never saved (the daemon died, the evaluation timed out) leaves the cursor on the
    slot it read, intact, and the next tick plans again from there; run keys make a repeated
    request a no-op. An evaluation from a stale cursor (the UI's *Test sensor*) can overwrite
    the current slot: the cursor's SHA-256 then differs, and the slot's state, a tick or so
    behind, is used as it is.
    """

    scope: str  # code location and repository: two deployments on one instance never mix

    @classmethod
    def of(cls, context: dg.SensorEvaluationContext) -> "StoredState":
        origin = context.code_location_origin
        location = origin.location_name if origin else ""
        return cls(f"{location}/{context.repository_name or ''}")

    def stored_text(self, instance: dg.DagsterInstance, cursor: str) -> str | None:
        """The stored state a cursor names, as stored (None: not there)."""
        slot = self._slot(json.loads(cursor)["generation"])
        return stored_values(instance, {slot}).get(slot)

    def _slot(self, generation: int) -> str:
        return f"affise/{self.scope}/{SENSOR_NAME}/state/{generation % 2}"

    def load(self, instance: dg.DagsterInstance, cursor: str | None) -> "LoadedState":
        if not cursor:
            return LoadedState(CatchUpState(), None, None, lost=False)
        pointer = json.loads(cursor)
        if pointer.get("version") != POINTER_VERSION:
            # Earlier versions kept the whole state in the cursor.
            return LoadedState(CatchUpState.from_json(cursor), None, None, lost=False)
        text = self.stored_text(instance, cursor)
        try:
            state = CatchUpState.from_json(text) if text else None
        except (ValueError, KeyError, TypeError):
            state = None
        if state is None:
            # Lost (a wiped key-value table): start over, but deliver no window again that
            # Dagster has as materialized.
            return LoadedState(CatchUpState(after_loss=True), None, None, lost=True)
        digest = hashlib.sha256(text.encode()).hexdigest() if text else None
        return LoadedState(state, pointer["generation"], digest, lost=False)

    def save(self, instance: dg.DagsterInstance, state: CatchUpState, read: "LoadedState") -> str:
        """Stores `state` if it changed; returns the cursor naming it."""
        text = state.to_json()
        digest = hashlib.sha256(text.encode()).hexdigest()
        generation = read.generation or 0
        if read.generation is None or digest != read.sha256:
            generation += 1
            store_values(instance, {self._slot(generation): text})
        return json.dumps(
            {"version": POINTER_VERSION, "generation": generation, "sha256": digest},
            separators=(",", ":"),
        )


@dataclass(frozen=True)
class LoadedState:
    state: CatchUpState
    generation: int | None  # of the slot it was read from; None: not stored yet
    sha256: str | None
    lost: bool  # the cursor named a slot that is gone


def _progress(data: dict[str, Any]) -> ExportProgress:
    """A version 1 entry: untyped, with no `started`."""
    return ExportProgress(
        windows=ExportWindows.parse(data["windows"]),
        next=data.get("next"),
        until=data.get("until"),
        covered=[Covered.parse(span) for span in data.get("covered", [])],
        skip_materialized=bool(data.get("skip_materialized")),
        started=bool(data.get("started")),
    )


def _redelivery(data: dict[str, Any]) -> Redelivery:
    """An entry as stored; fields a later release added are ignored (rolling back works)."""
    known = {f.name for f in fields(Redelivery)}
    entry = {k: v for k, v in data.items() if k in known}
    spans = [WindowSpan.parse(span) for span in entry.pop("spans")]
    windows = entry.pop("windows", "")
    return Redelivery(
        **entry, spans=spans, windows=ExportWindows.parse(windows) if windows else None
    )


def _covered_at_old_frequency(previous: ExportProgress, delivered: set[str]) -> list[Covered]:
    """The spans a changed frequency must not deliver again: the windows delivered at the old
    one (`delivered`: the asset's materialized partitions), merged into spans."""
    step = previous.windows.step
    spans = list(previous.covered)
    for key in sorted(delivered):
        start = _moment(key)
        if spans and spans[-1].end == start:
            spans[-1] = Covered(spans[-1].start, start + step)
        else:
            spans.append(Covered(start, start + step))
    return spans


def ranged_requests(
    group: WindowGroup,
    keys: Sequence[dg.AssetKey],
    first: datetime,
    last: datetime,
    kind: str,
    priority: str,
    extra_key: str = "",
    extra_tags: Mapping[str, str] | None = None,
    size: int = DEFAULT_EXPORTS_PER_RUN,
) -> list[dg.RunRequest]:
    """The runs delivering windows `first`..`last` (inclusive) to the assets `keys`: one, or
    one per shard of at most `size` of them."""
    names = ",".join(sorted(key.to_user_string() for key in keys))
    digest = hashlib.sha256(f"{names}|{extra_key}".encode()).hexdigest()[:16]
    tags = {"dagster/priority": priority, CATCH_UP_TAG: "1", **(extra_tags or {})}
    if kind == "redeliver":
        tags[REDELIVERY_TAG] = "1"
    partition_key = None
    if first == last:
        partition_key = _key(first)
    else:
        tags.update(partition_range_tags(_key(first), _key(last)))
    request = dg.RunRequest(
        run_key=f"{kind}|{group.job_name}|{_key(first)}|{_key(last)}|{digest}",
        job_name=group.job_name,
        partition_key=partition_key,
        asset_selection=list(keys),
        # The exports alone: their latest-window checks are the freshness sensor's, and a
        # selection of assets would bring them in as a step of every run.
        asset_check_keys=[],
        tags=tags,
    )
    return sharded(request, keys, size)


@dataclass
class _Member:
    group: WindowGroup
    target: ExportTarget
    progress: ExportProgress
    done: set[str]
    covered: list[Covered]
    until: datetime = field(init=False)

    def __post_init__(self) -> None:
        self.until = _moment(self.progress.until or "")

    @property
    def may_skip(self) -> bool:
        return bool(self.done or self.covered)

    def skips(self, window: datetime) -> bool:
        if not self.may_skip:
            return False
        if _key(window) in self.done:
            return True
        end = window + self.group.step
        return any(span.overlaps(window, end) for span in self.covered)


def plan_catch_up(
    groups: Sequence[WindowGroup],
    exports: dict[str, ExportProgress],
    now: datetime,
    budget: int = CATCH_UP_IN_FLIGHT,
    materialized: Callable[[dg.AssetKey], set[str]] | None = None,
    after_loss: bool = False,
    exports_per_run: int = DEFAULT_EXPORTS_PER_RUN,
) -> tuple[list[dg.RunRequest], dict[str, ExportProgress]]:
    """This tick's backlog runs and the next progress of every export.

    An export seen for the first time is planned from its first window up to the last window
    closed now (later windows are the schedule's). Entries of exports no longer configured are
    kept: one that comes back resumes where it was instead of re-delivering its history. When
    an export's start or frequency changes, it is planned again from its start, skipping the
    windows already materialized (`materialized`, asked only for such exports); after a
    frequency change, windows overlapping what the old frequency delivered are skipped too.
    The sensor caches `materialized` for the tick: `plan_redelivery` asks it too. With
    `after_loss` (the stored progress was lost once) an export seen for the first time is
    planned from its start skipping what was materialized, as it may have been delivered.
    """
    now = _naive(now)
    state = dict(exports)
    members: list[_Member] = []
    for group in groups:
        for target in group.live:
            name = target.asset_key.to_user_string()
            previous = exports.get(name)
            if previous is None or previous.windows != ExportWindows.of(target):
                # Windows still within their lateness are the schedule's.
                last_closed = group.newest_ticked_window(now)
                progress = ExportProgress(
                    windows=ExportWindows.of(target),
                    next=_key(target.first_window),
                    until=_key(last_closed),
                )
                if after_loss:
                    progress.skip_materialized = True
                    progress.started = True
                if previous is not None:
                    progress.skip_materialized = True
                    progress.started = True
                    if previous.windows.frequency != target.frequency:
                        delivered = materialized(target.asset_key) if materialized else set()
                        progress.covered = _covered_at_old_frequency(previous, delivered)
                    else:
                        progress.covered = previous.covered
            else:
                progress = replace(previous, covered=list(previous.covered))
            state[name] = progress
            if progress.next is None or progress.until is None or progress.next > progress.until:
                progress.next = None
                continue
            done = (
                materialized(target.asset_key)
                if progress.skip_materialized and materialized is not None
                else set()
            )
            members.append(_Member(group, target, progress, done, progress.covered))

    # Skip what needs nothing, then group exports by (job, next window): one run serves them.
    examined = 0
    frontiers: dict[tuple[str, str], list[_Member]] = {}
    order: list[tuple[str, str]] = []

    def enqueue(member: _Member) -> None:
        nonlocal examined
        window, until = _moment(member.progress.next or ""), _moment(member.progress.until or "")
        while window <= until and member.skips(window) and examined < CATCH_UP_WINDOWS_PER_TICK:
            window += member.group.step
            examined += 1
        if window > until:
            member.progress.next = None
            member.progress.skip_materialized = False
            return
        member.progress.next = _key(window)
        if member.skips(window):
            return  # out of windows to examine this tick
        frontier = (member.group.job_name, member.progress.next)
        if frontier not in frontiers:
            frontiers[frontier] = []
            order.append(frontier)
        frontiers[frontier].append(member)

    for member in members:
        enqueue(member)
    # New exports' first range first, then oldest first; a served frontier goes to the back:
    # every pending export advances each tick before any gets a second range.
    order.sort(key=lambda f: (all(m.progress.started for m in frontiers[f]), f[1], f[0]))
    requests: list[dg.RunRequest] = []
    while order and len(requests) < budget:
        frontier = order.pop(0)
        group_members = frontiers.pop(frontier)
        group = group_members[0].group
        first = _moment(frontier[1])
        last = first
        limit = min(
            first + group.step * (group.windows_per_run - 1), *(m.until for m in group_members)
        )
        skippers = [m for m in group_members if m.may_skip]
        while last < limit and examined < CATCH_UP_WINDOWS_PER_TICK:
            following = last + group.step
            examined += 1
            if any(m.skips(following) for m in skippers):
                break
            last = following
        first_range = not all(m.progress.started for m in group_members)
        requests.extend(
            ranged_requests(
                group,
                [m.target.asset_key for m in group_members],
                first,
                last,
                "catch-up",
                FIRST_RANGE_PRIORITY if first_range else CATCH_UP_RUN_PRIORITY,
                size=exports_per_run,
            )
        )
        for member in group_members:
            member.progress.started = True
            member.progress.next = _key(last + group.step)
            enqueue(member)
    return requests, state


def plan_missed_windows(
    groups: Sequence[WindowGroup],
    checked: dict[str, str] | None,
    now: datetime,
    has_scheduled_run: Callable[[str, str], bool | frozenset[dg.AssetKey]],
    newest_scheduled: Callable[[str], str | None] | None = None,
    exports_per_run: int = DEFAULT_EXPORTS_PER_RUN,
) -> tuple[list[dg.RunRequest], dict[str, str]]:
    """Runs for windows closed more than SCHEDULE_GRACE ago that no schedule requested, and
    the next `checked` (per window job, the last window looked at).

    A job seen for the first time starts from the last window closed now: before it, windows
    are the catch-up's (a job back after a pause has none due while it was gone). Only when
    `checked` is None (state written before this existed, or lost) each job starts after its
    newest scheduled run (`newest_scheduled`), so windows missed meanwhile are found too.
    The newest closed window is never requested here: the scheduler, back from being down,
    evaluates that tick itself, and two runs for one window would race.

    `has_scheduled_run(job, window)` says what the window's scheduled runs deliver: True for
    all of the job, False for nothing, or the exports its shards selected; exports due and in
    none of them (a tick that failed after its first shards) are requested here.
    """
    now = _naive(now)
    live = {group.job_name: group for group in groups if group.live}
    # Jobs gone from the config are forgotten: if one returns, it starts again from then.
    state = {name: key for name, key in (checked or {}).items() if name in live}
    requests = []
    for name, group in live.items():
        step = group.step
        newest_tick_window = group.newest_ticked_window(now)
        if name not in state:
            seed = newest_scheduled(name) if checked is None and newest_scheduled else None
            state[name] = seed or _key(newest_tick_window)
            continue
        last = min(
            group.newest_ticked_window(now - SCHEDULE_GRACE),
            newest_tick_window - step,
        )
        window = _moment(state[name]) + step
        for _ in range(GAP_WINDOWS_PER_TICK):
            if window > last:
                break
            covered = has_scheduled_run(name, _key(window)) if group.due(window) else True
            if covered is not True:
                requests.extend(
                    scheduled_run_requests(
                        group,
                        window,
                        missed=True,
                        size=exports_per_run,
                        without=covered or frozenset(),
                    )
                )
            state[name] = _key(window)
            window += step
    return requests, state


def _merge(keys: Iterable[str], step: timedelta) -> list[WindowSpan]:
    """Window keys, `step` apart, as the fewest spans, in order."""
    spans: list[WindowSpan] = []
    for key in sorted(set(keys)):
        window = _moment(key)
        if spans and spans[-1].last + step == window:
            spans[-1] = WindowSpan(spans[-1].first, window)
        else:
            spans.append(WindowSpan(window, window))
    return spans


def expand_windows(spans: Iterable[Sequence[str]], step: timedelta) -> list[str]:
    """Every window key of the inclusive spans (first key, last key), `step` apart."""
    return [_key(w) for span in spans for w in WindowSpan.parse(span).windows(step)]


@dataclass(frozen=True)
class FailedRun:
    """What a failed run planned: its assets and windows (Dagster marks the undelivered ones
    Failed)."""

    job_name: str
    asset_keys: frozenset[dg.AssetKey]
    first: str
    last: str
    # Every window it failed was one the source was not complete for (SourceIncomplete):
    # tried again as soon as the source has caught up, not at the destination's cadence.
    waits_for_source: bool = False


def redelivery_first_wait() -> timedelta:
    """REDELIVERY_FIRST_WAIT, or $AFFISE_REDELIVERY_FIRST_WAIT_SECONDS: read at each tick."""
    configured = os.environ.get("AFFISE_REDELIVERY_FIRST_WAIT_SECONDS")
    try:
        seconds = float(configured) if configured else 0.0
    except ValueError:
        seconds = 0.0
    # Unset, not a number or not positive: the default, rather than a tick that fails.
    return timedelta(seconds=seconds) if seconds > 0 else REDELIVERY_FIRST_WAIT


def plan_redelivery(
    groups: Sequence[WindowGroup],
    redelivery: dict[str, Redelivery],
    failed_runs: Sequence[FailedRun],
    now: datetime,
    materialized: Callable[[dg.AssetKey], set[str]],
    first_wait: timedelta = REDELIVERY_FIRST_WAIT,
    on_hold: frozenset[str] | set[str] = frozenset(),
    busy: frozenset[str] | set[str] = frozenset(),
    budget: int = CATCH_UP_IN_FLIGHT,
    complete_until: Callable[[str], datetime | None] | None = None,
    exports_per_run: int = DEFAULT_EXPORTS_PER_RUN,
) -> tuple[list[dg.RunRequest], dict[str, Redelivery]]:
    """Runs for failed windows whose next attempt is due, and the next redelivery state.

    Windows of `failed_runs` are added to their exports' waiting windows; windows delivered
    since (materialized) are dropped; an export with none left is healed. Exports of one job
    waiting for the same windows are tried in one run. Nothing is requested for jobs
    `on_hold` (a paused group) or exports `busy` (an attempt still queued or running), and
    entries of exports not configured now are kept as they are, for when they return. An
    export whose start or frequency changed forgets its waiting windows: they are no longer
    its partitions, and its catch-up is replanned from its start. Windows that failed only
    because the source was behind are requested as soon as `complete_until` (per event type,
    naive UTC) has passed their end, whatever the back-off: the windows it covers.
    """
    now = _naive(now)
    targets = {t.asset_key: (g, t) for g in groups for t in g.live}
    names = {key.to_user_string(): key for key in targets}
    state = dict(redelivery)
    waiting: dict[str, set[str]] = {}
    for name, entry in redelivery.items():
        if name not in names:
            continue
        group, target = targets[names[name]]
        if entry.windows is not None and entry.windows != ExportWindows.of(target):
            del state[name]
            continue
        waiting[name] = {
            _key(w) for span in entry.spans for w in span.windows(group.step) if target.covers(w)
        }
    for run in failed_runs:
        for key in run.asset_keys:
            if key not in targets:
                continue
            group, target = targets[key]
            if run.job_name != group.job_name:
                continue  # a run of an old frequency: not windows of this export now
            name = key.to_user_string()
            planned = [
                k
                for k in expand_windows([[run.first, run.last]], group.step)
                if target.covers(_moment(k))
            ]
            waiting.setdefault(name, set()).update(planned)
            entry = state.get(name)
            if entry is None:
                state[name] = Redelivery(
                    spans=[],
                    next_attempt=(now + first_wait).isoformat(),
                    windows=ExportWindows.of(target),
                    waits_for_source=run.waits_for_source,
                )
            else:
                still = entry.waits_for_source and run.waits_for_source
                if still and entry.asked_until and complete_until is not None:
                    # Requested as complete, found incomplete: the run reads another source.
                    until = complete_until(group.event_type)
                    still = until is not None and _key(until) > entry.asked_until
                entry.waits_for_source = still
                # The wait counts from the failure, not from when the attempt was requested
                # (it may have queued for longer than the wait).
                wait = min(first_wait * 2**entry.attempts, REDELIVERY_MAX_WAIT)
                entry.next_attempt = max(entry.next_attempt, (now + wait).isoformat())
    requests: list[dg.RunRequest] = []
    due: dict[tuple[str, tuple[WindowSpan, ...]], list[str]] = {}
    for name in sorted(waiting):
        group, _ = targets[names[name]]
        left = waiting[name] - materialized(names[name])
        if not left:
            state.pop(name, None)
            continue
        entry = state[name]
        entry.spans = _merge(left, group.step)
        if group.job_name in on_hold or name in busy:
            continue
        until = (
            complete_until(group.event_type)
            if entry.waits_for_source and complete_until is not None
            else None
        )
        if until is not None:
            ready = {k for k in left if _moment(k) + group.step <= until}
            if ready:
                due.setdefault((group.job_name, tuple(_merge(ready, group.step))), []).append(name)
                entry.asked_until = _key(until)
        # The back-off, for a destination's failures, or when the source cannot be read.
        elif datetime.fromisoformat(entry.next_attempt) <= now:
            due.setdefault((group.job_name, tuple(entry.spans)), []).append(name)
    by_job = {group.job_name: group for group in groups}
    # The longest-waiting first, within the budget; the others keep their turn.
    order = sorted(due.items(), key=lambda item: min(state[n].next_attempt for n in item[1]))
    for (job_name, spans), members in order:
        if len(requests) >= budget:
            break
        group = by_job[job_name]
        attempt = max(state[name].attempts for name in members) + 1
        for span in spans:
            window = span.first
            while window <= span.last and len(requests) < budget:
                last = min(window + group.step * (group.windows_per_run - 1), span.last)
                requests.extend(
                    ranged_requests(
                        group,
                        [names[name] for name in members],
                        window,
                        last,
                        "redeliver",
                        CATCH_UP_RUN_PRIORITY,
                        extra_key=f"{attempt}|{now.isoformat()}",
                        size=exports_per_run,
                    )
                )
                window = last + group.step
        wait = min(first_wait * 2**attempt, REDELIVERY_MAX_WAIT)
        for name in members:
            state[name].attempts = attempt
            state[name].next_attempt = (now + wait).isoformat()
    return requests, state


_ENDED = (dg.DagsterEventType.RUN_FAILURE, dg.DagsterEventType.RUN_CANCELED)


def ended_runs_since(
    instance: dg.DagsterInstance,
    after: dict[str, int] | None,
    jobs: Mapping[str, Iterable[dg.AssetKey]],
) -> tuple[list[FailedRun], dict[str, int]]:
    """Runs of the window jobs that failed or were canceled since `after` (event log storage
    ids, per status), oldest first, and the next `after`. `jobs` maps each window job to its
    assets: a run without a selection (a schedule's, every integration due) planned them all.
    Followed for the first time, it starts from now: older failures are not this sensor's."""
    job_names = set(jobs)
    state = dict(after or {})
    ended: list[FailedRun] = []
    for event_type in _ENDED:
        name = event_type.name
        if name not in state:
            newest = instance.fetch_run_status_changes(event_type, limit=1).records
            state[name] = newest[0].storage_id if newest else 0
            continue
        # No job-name filter: open-source storages other than SQLite refuse one (Postgres
        # raises), and the runs are filtered by job below.
        records = instance.fetch_run_status_changes(
            dg.RunStatusChangeRecordsFilter(event_type, after_storage_id=state[name]),
            limit=FAILED_RUNS_PER_TICK,
            ascending=True,
        ).records
        if not records:
            continue
        state[name] = records[-1].storage_id
        runs = [
            record.dagster_run
            for record in instance.get_run_records(
                dg.RunsFilter(run_ids=[r.run_id for r in records])
            )
        ]
        for run in runs:
            if run.job_name not in job_names:
                continue
            planned = frozenset(run.asset_selection or jobs[run.job_name])
            span = run_window_span(run.tags)
            if span is not None:
                # Every failure it reported was the source not being complete: the run
                # tags itself so (reading its events would cost a query per object).
                only_source = run.tags.get(SOURCE_ONLY_TAG) == "1"
                ended.append(FailedRun(run.job_name, planned, *span, only_source))
    return ended, state


def _complete_until(event_type: str) -> datetime | None:
    """How far the events source is complete for `event_type` (the code server reads the same
    $AFFISE_EVENTS_DB as the runs), None when it cannot be read now."""
    try:
        return EventsDatabase().progress(event_type).complete_until  # type: ignore[arg-type]
    except Exception:  # a file being replaced, a volume away: tried again next tick
        return None


def redeliveries_in_flight(instance: dg.DagsterInstance) -> set[str]:
    """Exports with a re-delivery run queued or running: not requested again meanwhile."""
    records = instance.get_run_records(
        dg.RunsFilter(statuses=IN_FLIGHT, tags={REDELIVERY_TAG: "1"})
    )
    runs = [record.dagster_run for record in records]
    return {key.to_user_string() for run in runs for key in run.asset_selection or ()}


def build_catch_up_sensor(
    groups: Sequence[WindowGroup], jobs: Sequence[AssetJob]
) -> dg.SensorDefinition:
    """Delivers the backlog, the missed ticks and the failed windows of every window group;
    `jobs` are the groups' window jobs."""
    all_live = [group for group in groups if group.live]
    job_names = {group.job_name for group in all_live}

    @dg.sensor(
        name=SENSOR_NAME,
        jobs=[job for job in jobs if job.name in job_names],
        minimum_interval_seconds=TICK_SECONDS,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            "Delivers every window the schedules do not: a new integration's history since its "
            "start (ranged runs of up to a day, at most "
            f"{CATCH_UP_IN_FLIGHT} catch-up runs in flight), windows whose schedule tick never "
            "came, and failed windows (again after 2 minutes, doubling up to an hour, until "
            "delivered)."
        ),
    )
    def catch_up_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        instance = context.instance
        store = StoredState.of(context)
        read = store.load(instance, context.cursor)
        state = read.state
        if read.lost:
            context.log.warning(
                "The catch-up state named by the cursor is gone: every export is planned again "
                "from its start, skipping what is materialized, and every failed run is read "
                "again."
            )
            state.ended_runs_after = {status.name: 0 for status in _ENDED}
        now = datetime.now(UTC)
        # A group whose schedule an operator stopped is paused: nothing of it is requested.
        paused = stopped_schedules(instance)
        live = [group for group in all_live if group.schedule_name not in paused]
        size = exports_per_run()

        def newest_scheduled(job_name: str) -> str | None:
            record = latest_scheduled_run(instance, job_name)
            return record.dagster_run.tags.get(PARTITION_TAG) if record else None

        missed, state.window_jobs = plan_missed_windows(
            live,
            state.window_jobs,
            now,
            lambda job_name, key: scheduled_exports(instance, job_name, key),
            newest_scheduled,
            exports_per_run=size,
        )
        # Reconciliation's runs share the catch-up tag's queue limit (the window that just
        # closed keeps its slot) but not this sensor's budget.
        in_flight = sum(
            REASON_TAG not in record.dagster_run.tags
            for record in instance.get_run_records(
                dg.RunsFilter(statuses=IN_FLIGHT, tags={CATCH_UP_TAG: "1"})
            )
        )
        materialized = functools.cache(lambda key: materialized_partitions(instance, key))
        backlog, state.exports = plan_catch_up(
            live,
            state.exports,
            now,
            budget=max(0, CATCH_UP_IN_FLIGHT - in_flight),
            materialized=materialized,
            after_loss=state.after_loss,
            exports_per_run=size,
        )
        failed, state.ended_runs_after = ended_runs_since(
            instance,
            state.ended_runs_after,
            {group.job_name: [t.asset_key for t in group.live] for group in all_live},
        )
        # Every live group is followed, paused ones too: their failures wait for them.
        progress = functools.cache(_complete_until)
        redeliveries, state.redelivery = plan_redelivery(
            all_live,
            state.redelivery,
            failed,
            now,
            materialized,
            redelivery_first_wait(),
            on_hold={group.job_name for group in all_live if group.schedule_name in paused},
            busy=redeliveries_in_flight(instance),
            budget=max(0, CATCH_UP_IN_FLIGHT - in_flight - len(backlog)),
            complete_until=progress,
            exports_per_run=size,
        )
        return dg.SensorResult(
            run_requests=missed + backlog + redeliveries, cursor=store.save(instance, state, read)
        )

    return catch_up_sensor
