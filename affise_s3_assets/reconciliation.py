"""Reconciliation: delivered windows whose rows the source has changed since (late events, a
corrected row) are delivered again, same key, saying why.

Each delivery records, with the window's materialization, the fingerprint of the rows it read
(`source_fingerprint`: rows and a digest, computed by DuckDB through the same connection as the
rows). Every `every_minutes`, `reconciliation_sensor` asks the source for the fingerprints of
every window in the look-back, in one query per window group whatever its number of
integrations (source.py, `SourceRead.fingerprints`), compares them with the latest
materialization of each window, and requests a run for the windows that differ, tagged with the
reason (`late_rows` when the source holds more rows, `changed_rows` otherwise). Only delivered
windows are compared: the others are the catch-up's. A re-delivery that fails leaves the
difference in place, so the next pass asks again.

Knows Dagster's records and the window groups; what the source holds comes from source.py, how
a window is delivered from delivery.py (through the run it requests).
"""

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import (
    UnresolvedAssetJobDefinition,
)
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)

from affise_s3_assets.config import Reconciliation
from affise_s3_assets.partitions import PARTITION_KEY_FORMAT, first_window_start
from affise_s3_assets.sensors import (
    _IN_FLIGHT,
    CATCH_UP_RUN_PRIORITY,
    REASON_TAG,
    REDELIVERY_TAG,
    paused_schedules,
    ranged_request,
)
from affise_s3_assets.source import EventsDatabase, FilterKey, Fingerprint
from affise_s3_assets.targets import ExportTarget, WindowGroup

RECONCILIATION_SENSOR = "reconciliation_sensor"
LATE_ROWS = "late_rows"  # the source holds more rows for the window than were delivered
CHANGED_ROWS = "changed_rows"  # as many or fewer rows, but not the same
# Materialization records read per request while collecting what was delivered.
RECORDS_PAGE = 1000


@dataclass(frozen=True)
class Changed:
    """A delivered window whose rows in the source are no longer those delivered."""

    target: ExportTarget
    window: str  # partition key
    before: Fingerprint
    after: Fingerprint

    @property
    def reason(self) -> str:
        return LATE_ROWS if self.after.rows > self.before.rows else CHANGED_ROWS


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
    the source now (`current`, by filter and window start; absent: no rows) differs."""
    targets = {target.asset_key: target for target in group.live}
    changed = []
    for (asset_key, window), before in sorted(delivered.items()):
        target = targets.get(asset_key)
        if target is None:
            continue
        start = datetime.strptime(window, PARTITION_KEY_FORMAT)
        if start < target.first_window:
            continue
        after = current.get((target.filter_key, start), empty)
        if after.differs_from(before):
            changed.append(Changed(target, window, before, after))
    return changed


def redelivery_requests(
    group: WindowGroup,
    changed: Sequence[Changed],
    busy: set[tuple[dg.AssetKey, str]],
    now: datetime,
) -> list[dg.RunRequest]:
    """Runs delivering the changed windows again: consecutive windows changed for the same
    integrations, for the same reason, share a run (one read); windows with a re-delivery
    already queued or running (`busy`) wait for the next pass."""
    by_window: dict[tuple[str, str], list[dg.AssetKey]] = {}
    for item in changed:
        if (item.target.asset_key, item.window) in busy:
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
        ranged_request(
            group,
            members,
            first,
            last,
            "redeliver",
            CATCH_UP_RUN_PRIORITY,
            extra_key=f"{reason}|{now.isoformat()}",
            extra_tags={REASON_TAG: reason},
        )
        for first, last, reason, members in runs
    ]


def delivered_fingerprints(
    instance: dg.DagsterInstance, targets: Iterable[ExportTarget], first: datetime, end: datetime
) -> dict[tuple[dg.AssetKey, str], Fingerprint]:
    """Each window of [first, end) as its latest materialization recorded it: its fingerprint,
    or its rows alone for a window delivered before fingerprints were recorded."""
    found: dict[tuple[dg.AssetKey, str], Fingerprint] = {}
    # A window is delivered after it ends: older materializations cannot be of these windows.
    after = first.replace(tzinfo=UTC).timestamp()
    for target in targets:
        seen: set[str] = set()
        cursor = None
        while True:
            result = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=target.asset_key, after_timestamp=after),
                limit=RECORDS_PAGE,
                cursor=cursor,
            )
            for record in result.records:  # newest first: the first seen of a window counts
                key = record.partition_key
                if key is None or key in seen:
                    continue
                seen.add(key)
                start = datetime.strptime(key, PARTITION_KEY_FORMAT)
                if not first <= start < end:
                    continue
                metadata = record.asset_materialization.metadata
                rows = metadata.get("rows")
                if rows is None or not isinstance(rows.value, int):
                    continue
                text = metadata.get("source_fingerprint")
                if text is not None and isinstance(text.value, str) and ":" in text.value:
                    fingerprint = Fingerprint.parse(rows.value, text.value)
                else:
                    fingerprint = Fingerprint(rows.value, 0, "rows only")
                found[(target.asset_key, key)] = fingerprint
            if not result.has_more:
                break
            cursor = result.cursor
    return found


def reconciliation_busy(
    instance: dg.DagsterInstance, groups: Sequence[WindowGroup]
) -> set[tuple[dg.AssetKey, str]]:
    """(asset, window) of every re-delivery for changed rows queued or running."""
    steps = {group.job_name: group.step for group in groups}
    busy = set()
    runs = instance.get_runs(dg.RunsFilter(statuses=_IN_FLIGHT, tags={REDELIVERY_TAG: "1"}))
    for run in runs:
        step = steps.get(run.job_name)
        if REASON_TAG not in run.tags or step is None:
            continue
        single = run.tags.get("dagster/partition")
        first = single or run.tags.get(ASSET_PARTITION_RANGE_START_TAG)
        last = single or run.tags.get(ASSET_PARTITION_RANGE_END_TAG)
        if not first or not last:
            continue
        moment = datetime.strptime(first, PARTITION_KEY_FORMAT)
        while moment <= datetime.strptime(last, PARTITION_KEY_FORMAT):
            window = moment.strftime(PARTITION_KEY_FORMAT)
            busy.update((key, window) for key in run.asset_selection or ())
            moment += step
    return busy


def reconcile_group(
    instance: dg.DagsterInstance,
    events: EventsDatabase,
    group: WindowGroup,
    settings: Reconciliation,
    now: datetime,
    busy: set[tuple[dg.AssetKey, str]] | None = None,
) -> tuple[list[Changed], list[dg.RunRequest]]:
    """One pass over one window group: what changed, and the runs delivering it again."""
    now = now.astimezone(UTC).replace(tzinfo=None) if now.tzinfo else now
    span = look_back_range(group, settings, now)
    if span is None or not group.live:
        return [], []
    first, end = span
    delivered = delivered_fingerprints(instance, group.live, first, end)
    if not delivered:
        return [], []
    # The query spans the delivered windows only: the newest ones may not be delivered yet.
    starts = [datetime.strptime(window, PARTITION_KEY_FORMAT) for _, window in delivered]
    with events.read(group.event_type, min(starts), max(starts) + group.step) as source:
        current = source.fingerprints(
            group.frequency, sorted({target.filter_key for target in group.live})
        )
        empty = source.empty()
    changed = find_changed(group, current, delivered, empty)
    return changed, redelivery_requests(group, changed, busy or set(), now)


def build_reconciliation_sensor(
    groups: Sequence[WindowGroup],
    jobs: Sequence[UnresolvedAssetJobDefinition],
    settings: Reconciliation,
) -> dg.SensorDefinition:
    """Compares the look-back's delivered windows with the source every `every_minutes`."""
    live = [group for group in groups if group.live]
    job_names = {group.job_name for group in live}

    @dg.sensor(
        name=RECONCILIATION_SENSOR,
        jobs=[job for job in jobs if job.name in job_names],
        minimum_interval_seconds=settings.every_minutes * 60,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            f"Every {settings.every_minutes} minutes, compares each window delivered in the last "
            f"{settings.look_back_hours} hours with what the source holds now (rows and a "
            "content fingerprint, one DuckDB query per window group) and delivers again, same "
            "key, each window whose rows changed (reason late_rows or changed_rows)."
        ),
    )
    def reconciliation_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        instance = context.instance
        paused = paused_schedules(instance)
        busy = reconciliation_busy(instance, live)
        now = datetime.now(UTC)
        requests: list[dg.RunRequest] = []
        lines = []
        for group in live:
            if group.schedule_name in paused:
                continue
            try:
                changed, wanted = reconcile_group(
                    instance, EventsDatabase(), group, settings, now, busy
                )
            except Exception as exc:  # the source away: this group waits for the next pass
                lines.append(f"{group.job_name}: not compared: {exc}")
                continue
            requests.extend(wanted)
            for item in changed:
                lines.append(
                    f"{item.target.integration} {group.event_type} {item.window}: {item.reason} "
                    f"({item.before.rows} rows delivered, {item.after.rows} in the source)"
                )
        if lines:
            context.log.info("\n".join(lines))
        return dg.SensorResult(
            run_requests=requests,
            skip_reason=None if requests else "every delivered window matches the source",
        )

    return reconciliation_sensor
