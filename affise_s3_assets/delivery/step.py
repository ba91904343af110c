"""The export step: the Dagster side of every delivery, whoever started it.

Each window group (config/targets.py) is one multi-asset: an asset
`affise/<integration>/<event_type>` per integration, all delivered by one step. A run selects
some of those assets (the schedule: every integration due; the catch-up: the new ones; the UI:
the one an operator picked) and one window or a consecutive range of windows (catch-up,
backfills: up to a day). The step waits for the source to be complete, hands the range to the
engine (engine.py: one read, one object per window and integration through the S3 writer
resource, writer.py), logs each partition's materialization as its object lands, and reports
what failed on its own partition (report.py; `_deliver_selected` names where each failure is
reported); it fails at the end, after every other object is delivered: Dagster then shows
exactly the partitions that were planned and not delivered as Failed.

Knows Dagster's run context and the flow of a run; the format is encoding's, keys and uploads
writer.py's.
"""

import contextlib
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

import dagster as dg

from affise_s3_assets.automation.runs import (
    CATCH_UP_TAG,
    PARENT_RUN_ID_TAG,
    REASON_TAG,
    REDELIVERY_TAG,
    SCHEDULED_TAG,
    SOURCE_INCOMPLETE_CODE,
    SOURCE_ONLY_TAG,
)
from affise_s3_assets.config.targets import ExportTarget, WindowGroup
from affise_s3_assets.dagster_internal import AssetJob, add_run_tags
from affise_s3_assets.delivery.completion import (
    CompletionMarkers,
    marker_digest,
    marker_key,
    note_marker,
)
from affise_s3_assets.delivery.engine import Outcome, Window, deliver_windows
from affise_s3_assets.delivery.record import filters_metadata, latest_records
from affise_s3_assets.delivery.report import RunTally, failure_observation, failure_summary
from affise_s3_assets.delivery.writer import (
    DateFolderS3Writer,
    build_object_key,
)
from affise_s3_assets.s3 import (
    delivery_failure,
    error_code,
)
from affise_s3_assets.source.completeness import SourceIncomplete, SourceProgress, naive_utc
from affise_s3_assets.source.event_types import EVENT_SOURCE_KEYS
from affise_s3_assets.source.events import EventsDatabase
from affise_s3_assets.source.fingerprint import FilterKey, Fingerprint
from affise_s3_assets.source.window_read import SourceRead

# The resource every export step writes its objects with (DateFolderS3Writer): Dagster hands
# it to the step's parameter of the same name, `s3_writer`.
S3_WRITER_KEY = "s3_writer"
# A run for a window that closed less than this ago waits for the source to be complete past
# it (AFFISE_SOURCE_WAIT_SECONDS, default 60), checking every few seconds: events arrive a
# little after their time. An older window is not waited for: it failed and is tried again.
FRESH_WINDOW = timedelta(minutes=10)
SOURCE_POLL_SECONDS = 5


def _windows(context: dg.AssetExecutionContext, group: WindowGroup) -> list[Window]:
    partitions_def = group.partitions_def()
    windows = []
    for key in context.partition_keys:
        window = partitions_def.time_window_for_partition_key(key)
        windows.append(Window(key, naive_utc(window.start), naive_utc(window.end)))
    return windows


def build_window_asset(group: WindowGroup) -> dg.AssetsDefinition:
    """The assets of every integration in `group`, delivered by one step."""
    partitions_def = group.partitions_def()
    by_key = {target.asset_key: target for target in group.targets}
    specs = [_spec(target, partitions_def, group.lateness) for target in group.targets]

    @dg.multi_asset(
        name=group.step_name,
        specs=specs,
        can_subset=True,
        # A backfill of many windows runs as a few ranged runs, each window its own object.
        backfill_policy=dg.BackfillPolicy.multi_run(group.windows_per_run),
        description=f"Reads each {group.frequency}-minute window of {group.event_type} once and "
        "delivers it to every selected integration's bucket, one object per window.",
    )
    def deliver(
        context: dg.AssetExecutionContext, events: EventsDatabase, s3_writer: DateFolderS3Writer
    ) -> Iterator[dg.Output]:
        # A generator that yields no output: each partition's materialization is logged by
        # the step as its object lands (a returned None would make Dagster emit one more for
        # every selected asset). The outputs carry nothing: no IO manager is ever called.
        _deliver_selected(context, group, by_key, events, s3_writer)
        yield from ()

    return deliver


def _deliver_selected(
    context: dg.AssetExecutionContext,
    group: WindowGroup,
    by_key: dict[dg.AssetKey, ExportTarget],
    events: EventsDatabase,
    s3_writer: DateFolderS3Writer,
) -> None:
    """Deliver the run's windows to its selected integrations. A window not delivered is
    reported on its own partition as one of three: an object that failed
    (`_PartitionLog.failed`), a window the run never tried (`_report_untried`), a window the
    source is not complete for (`_report_incomplete`); the step then fails (`_fail_step`)."""
    windows = _windows(context, group)
    due = _due_targets(context, by_key, windows[-1])
    if not due:
        return
    # One read of the upload journal for all of them, not one per object.
    s3_writer.prepare([target.destination for target in due])
    # A window delivered again because its rows changed says so, with the rows it had.
    reason = context.run.tags.get(REASON_TAG)
    before = _delivered_rows(context.instance, due, windows) if reason else {}
    # Only windows the source is complete for: an empty file must mean "no events", never
    # "the events have not arrived".
    progress = _source_progress(context, events, group, windows[-1].end)
    ready = [window for window in windows if progress.covers(window.end)]
    markers = CompletionMarkers(
        due,
        [window.start for window in ready],
        lambda asset_key, keys: latest_records(context.instance, asset_key, keys),
    )
    log = _PartitionLog(context, reason, before, markers)
    tally = RunTally(log.materialized, log.failed)
    _deliver_ready(context, group, events, s3_writer, due, ready, log, tally)
    _report_incomplete(tally, due, windows[len(ready) :], progress)
    _fail_step(context, tally, windows)


def _due_targets(
    context: dg.AssetExecutionContext, by_key: dict[dg.AssetKey, ExportTarget], last: Window
) -> list[ExportTarget]:
    """The selected exports, by integration, that the run's last window is due for; those it
    is before the start of are logged as having nothing to deliver."""
    selected = sorted(
        (by_key[key] for key in context.selected_asset_keys),
        key=lambda target: target.integration,
    )
    early = [t.integration for t in selected if not t.covers(last.start)]
    if early:
        context.log.warning(f"before their start, nothing to deliver for: {early}")
    return [t for t in selected if t.integration not in early]


@dataclass
class _PartitionLog:
    """What the step logs on a window's partition as the engine reports each of its objects:
    a delivered one's materialization (then the completion marker it may complete), a failed
    one's error and observation."""

    context: dg.AssetExecutionContext
    reason: str | None  # why the run delivers again (REASON_TAG), if it does
    rows_before: dict[tuple[dg.AssetKey, str], int]  # per window, the rows it had
    markers: CompletionMarkers
    # What the source held for each (filter, window) delivered: recorded with the window, so
    # reconciliation can tell later whether the source's rows for it have changed since. Set
    # once the range is read; `empty` is a window with no rows for its filter.
    fingerprints: dict[tuple[FilterKey, datetime], Fingerprint] = field(default_factory=dict)
    empty: Fingerprint | None = None

    def materialized(self, window: Window, item: Outcome, reported_at: datetime) -> None:
        target = item.target
        assert item.record is not None, "a delivered object has its record"
        source = self.fingerprints.get((target.filter_key, window.start), self.empty)
        key = (target.asset_key, window.key)
        record = replace(
            item.record,
            reason=self.reason or None,
            rows_before=self.rows_before.get(key) if self.reason else None,
            source_fingerprint=source.text() if source else None,
            delivered_after_close_s=round((reported_at - window.end).total_seconds(), 1),
        )
        self.context.log_event(
            dg.AssetMaterialization(
                asset_key=target.asset_key, partition=window.key, metadata=record.to_metadata()
            )
        )
        # After it is logged: the instance's records then hold this window.
        _completion_marker(self.context, self.markers, target, window)

    def failed(self, window: Window, item: Outcome) -> None:
        """An object not delivered: its failure in the run's log and on its partition's page."""
        self.context.log.error(item.failure)
        self.context.log_event(failure_observation(self.context, window, item))


def _deliver_ready(
    context: dg.AssetExecutionContext,
    group: WindowGroup,
    events: EventsDatabase,
    s3_writer: DateFolderS3Writer,
    due: list[ExportTarget],
    ready: list[Window],
    log: _PartitionLog,
    tally: RunTally,
) -> None:
    """Deliver the windows the source is complete for from one read of their range, each
    object reported to `tally` as it is done."""
    due_in = [w for w in ready if any(t.covers(w.start) for t in due)]
    if not due_in:
        return
    try:
        with events.read(group.event_type, due_in[0].start, ready[-1].end) as source:
            # Before the rows, through the same connection: what they are read from.
            log.fingerprints, log.empty = _source_fingerprints(context, source, group, due)
            deliver_windows(
                due,
                ready,
                source.frames(),
                s3_writer,
                tally,
                clean_up=_is_redelivery(context.run.tags),
                redelivery_reason=log.reason,
            )
    finally:
        _report_untried(context, tally, due_in, due)


def _source_fingerprints(
    context: dg.AssetExecutionContext,
    source: SourceRead,
    group: WindowGroup,
    due: list[ExportTarget],
) -> tuple[dict[tuple[FilterKey, datetime], Fingerprint], Fingerprint | None]:
    """What the source holds for each (filter, window) of the range, and for a window with no
    rows. Bookkeeping never fails a delivery: without them, a window is compared by its rows
    alone."""
    try:
        found = source.fingerprints(group.frequency, sorted({t.filter_key for t in due}))
        empty = source.empty()
    except Exception as exc:
        context.log.warning(f"no source fingerprints recorded: {exc}")
        return {}, None
    return found, empty


def _report_untried(
    context: dg.AssetExecutionContext,
    tally: RunTally,
    windows: list[Window],
    due: list[ExportTarget],
) -> None:
    """Windows a stopped destination was not tried for, or that a failed read never reached:
    their pages say so rather than Dagster's bare "failed"."""
    for window, outcome in tally.untried(windows, due):
        context.log_event(failure_observation(context, window, outcome))


def _report_incomplete(
    tally: RunTally,
    due: list[ExportTarget],
    windows: list[Window],
    progress: SourceProgress,
) -> None:
    """Each of `windows`, which the source is not complete for, reported as failed for every
    export due in it."""
    for window in windows:
        incomplete = SourceIncomplete(
            f"{progress.describe()}; this window ends at {window.end:%Y-%m-%d %H:%M:%S}, and is "
            "delivered once the source is complete past its end"
        )
        tally(
            window,
            [
                _not_delivered(target, window, incomplete)
                for target in due
                if target.covers(window.start)
            ],
        )


def _not_delivered(target: ExportTarget, window: Window, reason: Exception) -> Outcome:
    """`target`'s object of `window`, not delivered for `reason`: the failure names its key."""
    key = build_object_key(
        target.destination.directory,
        window.start,
        target.file_format,
        target.layout,
        target.file_name,
    )
    return Outcome(target, delivery_failure(target.destination, key, reason), error_code(reason))


def _fail_step(context: dg.AssetExecutionContext, tally: RunTally, windows: list[Window]) -> None:
    """The step's Failure, once every other object is delivered, if any object failed: one
    summary per failed export (`failure_summary`); Dagster then shows the partitions not
    delivered as Failed."""
    if not tally.failures:
        return
    if all(item.code == SOURCE_INCOMPLETE_CODE for item in tally.failures):
        # The catch-up sensor then tries these as soon as the source passes them.
        add_run_tags(context.instance, context.run.run_id, {SOURCE_ONLY_TAG: "1"})
    raise dg.Failure(
        description=failure_summary(tally.failures, tally.delivered, windows),
        metadata={"failed": len(tally.failures), "delivered": tally.delivered},
        allow_retries=False,
    )


def _delivered_rows(
    instance: dg.DagsterInstance, targets: Sequence[ExportTarget], windows: Sequence[Window]
) -> dict[tuple[dg.AssetKey, str], int]:
    """The rows each window's latest materialization delivered."""
    keys = [window.key for window in windows]
    return {
        (target.asset_key, key): record.rows
        for target in targets
        for key, record in latest_records(instance, target.asset_key, keys).items()
    }


def _completion_marker(
    context: dg.AssetExecutionContext,
    markers: CompletionMarkers,
    target: ExportTarget,
    window: Window,
) -> None:
    """Write the marker of the period `window` completes, if it does. A marker that cannot be
    written fails nothing (the window is delivered): it is noted as owed, and the marker
    sensor writes it (automation/markers.py), saying on its tick why it could not yet."""
    try:
        marker = markers.due(target, window.start)
    except Exception as exc:  # the records could not be read: the sensor looks again
        context.log.warning(f"{target.integration} {target.event_type}: no marker yet: {exc}")
        return
    if marker is None:
        return
    try:
        uri = markers.write(target, marker)
    except Exception as exc:
        key = marker_key(target.destination.directory, marker.period, target.layout)
        context.log.warning(
            f"{delivery_failure(target.destination, key, exc)}; the marker sensor writes it "
            "once it can"
        )
        with contextlib.suppress(Exception):
            note_marker(context.instance, target.asset_key, marker.period, "")
        return
    with contextlib.suppress(Exception):  # the sensor then writes it once more, no harm
        note_marker(context.instance, target.asset_key, marker.period, marker_digest(marker))
    context.log.info(
        f"{target.integration} {target.event_type}: the {marker.period.unit} of "
        f"{marker.period.start:%Y-%m-%d %H:%M} is complete ({marker.windows} windows, "
        f"{marker.rows} rows): {uri}"
    )


def _is_redelivery(tags: Mapping[str, str]) -> bool:
    """Whether a run may follow one that died mid-upload: anything but a window's first
    delivery by its schedule or the catch-up's backlog (re-deliveries, the UI, backfills)."""
    first = tags.get(SCHEDULED_TAG) == "1" or tags.get(CATCH_UP_TAG) == "1"
    # Dagster's own re-execution of a crashed run copies its parent's tags.
    retried = PARENT_RUN_ID_TAG in tags
    return tags.get(REDELIVERY_TAG) == "1" or retried or not first


def _source_progress(
    context: dg.AssetExecutionContext, events: EventsDatabase, group: WindowGroup, end: datetime
) -> SourceProgress:
    """The source's progress for the run's last window. A window that just closed (and whose
    lateness just passed) may still be arriving: the run waits up to SOURCE_WAIT for it."""
    progress = events.progress(group.event_type)
    age = datetime.now(UTC).replace(tzinfo=None) - end
    if progress.covers(end) or age > FRESH_WINDOW + group.lateness:
        return progress
    deadline = time.monotonic() + source_wait().total_seconds()
    context.log.info(f"waiting for the source: {progress.describe()}")
    while not progress.covers(end) and time.monotonic() < deadline:
        time.sleep(SOURCE_POLL_SECONDS)
        progress = events.progress(group.event_type)
    return progress


def source_wait() -> timedelta:
    """How long a run waits for a window that just closed to arrive in the source."""
    return timedelta(seconds=float(os.environ.get("AFFISE_SOURCE_WAIT_SECONDS") or 60))


def _spec(
    target: ExportTarget, partitions_def: dg.PartitionsDefinition, lateness: timedelta
) -> dg.AssetSpec:
    filters = filters_metadata(target.affiliates, target.advertisers)
    start = f"{target.first_window:%Y-%m-%d %H:%M}"
    return dg.AssetSpec(
        target.asset_key,
        group_name=target.integration,
        deps=[EVENT_SOURCE_KEYS[target.event_type]],
        partitions_def=partitions_def,
        # Never handed an output: each window's object is written by the step itself.
        skippable=True,
        description=(
            f"Raw {target.event_type} of integration `{target.integration}`, one "
            f"{'gzipped CSV' if target.file_format == 'csv' else 'Parquet file'} "
            f"every {target.frequency} minutes under `{target.folder}{_FOLDERS[target.layout]}`, "
            f"from the window of {start} UTC (windows before it are not this integration's)."
        ),
        # Shown in the UI for every operator: never the credentials or their references.
        metadata={
            "destination": target.folder,
            "region": target.destination.region,
            "endpoint_url": target.destination.endpoint_url or "AWS",
            "frequency_minutes": target.frequency,
            "lateness_minutes": lateness // timedelta(minutes=1),
            "first_window": start,
            "file_format": target.file_format,
            "compression": _compression(target),
            "object_acl": target.destination.acl or "none",
            "enabled": target.enabled,
            **{f"filter_{name}": value for name, value in filters.items()},
        },
        # No time-window freshness policy: Dagster's goes by the newest materialization of any
        # partition, so a re-delivered old window would make a late export look fresh. The
        # latest window's check says it instead (automation/freshness.py).
        kinds={"s3", target.file_format},
        tags={"integration": target.integration, "event_type": target.event_type},
    )


# How each layout's folders are shown on an asset's page.
_FOLDERS = {"dated": "YYYY/MM/DD/", "hive": "dt=YYYY-MM-DD/hour=HH/"}


def _compression(target: ExportTarget) -> str:
    if target.file_format == "csv":
        return f"gzip level {target.compression_level}"
    from affise_s3_assets.encoding.parquet import COMPRESSION, COMPRESSION_LEVEL

    return f"{COMPRESSION} level {COMPRESSION_LEVEL}"


def build_window_job(group: WindowGroup) -> AssetJob:
    """The job of `group`: runs select the integrations and the window (or range) to deliver."""
    # The live integrations: a run of the whole job delivers each of them. A disabled one is
    # re-delivered by hand from its asset's page (Dagster's own asset job).
    members = group.live or group.targets
    return dg.define_asset_job(
        name=group.job_name,
        # The assets alone: their latest-window checks are the freshness sensor's, never a
        # step of a delivery run (automation/freshness.py).
        selection=dg.AssetSelection.assets(
            *(target.asset_key for target in members)
        ).without_checks(),
        executor_def=dg.in_process_executor,
        tags={"affise/event_type": group.event_type, "affise/frequency": str(group.frequency)},
        description=f"Delivers {group.frequency}-minute windows of {group.event_type} to the "
        "selected integrations, reading each window once.",
    )
