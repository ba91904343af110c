"""The export step: one engine for every delivery, whoever started it.

Each window group (config/targets.py) is one multi-asset: an asset
`affise/<integration>/<event_type>` per integration, all delivered by one step. A run selects some
of those assets (the schedule: every integration due; the catch-up: the new ones; the UI: the one an
operator picked) and one window or a consecutive range of windows (catch-up, backfills: up to a
day). The step reads the range from the source once, cuts it at window boundaries, and for every
window and selected integration filters, encodes and writes one object through the IO manager, then
logs that partition's materialization. A delivery that fails is reported on its own partition and
the step fails at the end, after every other object is delivered: Dagster then shows exactly the
partitions that were planned and not delivered as Failed.

Knows the flow of a window; the format is encoding/csv_gzip.py's, keys and uploads
delivery/writer.py's.
"""

import contextlib
import gc
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import dagster as dg
import polars as pl
from dagster._core.definitions.unresolved_asset_job_definition import (
    UnresolvedAssetJobDefinition,
)

from affise_s3_assets.automation.reconciliation import latest_materializations
from affise_s3_assets.automation.runs import (
    CATCH_UP_TAG,
    REASON_TAG,
    REDELIVERY_TAG,
    SCHEDULED_TAG,
    SOURCE_INCOMPLETE_CODE,
    SOURCE_ONLY_TAG,
)
from affise_s3_assets.config.targets import ExportTarget, WindowGroup
from affise_s3_assets.delivery.record import DeliveryRecord, filters_metadata, window_metadata
from affise_s3_assets.delivery.writer import (
    DateFolderS3IOManager,
    WindowObject,
    build_manifest_key,
    build_object_key,
)
from affise_s3_assets.encoding.csv_gzip import (
    GzipCsvEncoder,
    csv_bytes,
    event_filter,
    in_background,
    whole_second_text,
)
from affise_s3_assets.manifest import DeliveredObject, manifest_bytes
from affise_s3_assets.s3 import (
    CLEAN_UP_TIMED_OUT,
    TIMEOUT_CODES,
    VerificationFailed,
    delivery_failure,
    error_code,
    is_permanent,
)
from affise_s3_assets.source.events import (
    EVENT_COLUMNS,
    EVENT_SOURCE_KEYS,
    WINDOW_COLUMN,
    EventsDatabase,
    FilterKey,
    Fingerprint,
    SourceIncomplete,
    SourceProgress,
    naive_utc,
)

if TYPE_CHECKING:  # imported where used: a CSV export never loads pyarrow (~26 MB RSS)
    from affise_s3_assets.encoding.parquet import ParquetEncoder

IO_MANAGER_KEY = "date_folder_s3_io_manager"
# A window is delivered a little after it closes: the source may be waited for (60 s), the
# run may queue behind others and takes its time. Beyond this, an export is late.
FRESHNESS_GRACE = timedelta(minutes=10)
# Finishing objects is network-bound: the last parts and small PUTs go out in parallel.
CLOSE_THREADS = 16
# A destination that fails this many windows in a row (after botocore's own retries of each
# request) is not tried again for the rest of the run: an endpoint that never answers would
# otherwise cost every window of a day's range its timeouts, and hold up the whole group.
# One whose request took its whole time (our deadline, or botocore's timeouts on every
# attempt) is stopped at once: each window waits for every object of the one before, so a
# second wait would be everyone's.
STOP_AFTER_FAILED_WINDOWS = 2
# Memory for the parts being filled, shared by the objects open at once (one per integration
# due in the window), each keeping at least MIN_PART_MEMORY before spilling to a file.
PART_MEMORY_BUDGET = 64 * 1024 * 1024
MIN_PART_MEMORY = 256 * 1024
# Rows per batch fanned out to every integration's filter and CSV: with many integrations,
# fewer, larger batches cost far less; the loader's slices are of the same size.
FANOUT_BATCH_ROWS = 25_000
# A run for a window that closed less than this ago waits for the source to be complete past
# it (AFFISE_SOURCE_WAIT_SECONDS, default 60), checking every few seconds: events arrive a
# little after their time. An older window is not waited for: it failed and is tried again.
FRESH_WINDOW = timedelta(minutes=10)
SOURCE_POLL_SECONDS = 5
# How long closing a window waits for a failed object's abort (an endpoint that just failed
# may not answer it either: the lifecycle rule and the next re-delivery clean up then).
ABORT_WAIT_SECONDS = 30


@dataclass(frozen=True)
class Window:
    key: str
    start: datetime  # naive UTC
    end: datetime


@dataclass(frozen=True)
class Outcome:
    """What became of one target's object for one window: what its partition reports."""

    target: ExportTarget
    failure: str | None = None  # None: delivered
    code: str = ""
    permanent: bool = False
    stops_destination: bool = False  # no later window of this run is tried for it
    record: DeliveryRecord | None = None  # what its materialization records, when delivered


@dataclass
class ObjectDelivery:
    """One target's object for one window, fed batch by batch."""

    target: ExportTarget
    window: Window
    object: WindowObject
    encoder: "GzipCsvEncoder | ParquetEncoder"
    failure: str | None = None
    permanent: bool = False
    code: str = ""
    stops_destination: bool = False  # no later window of this run is tried for it
    record: DeliveryRecord | None = None  # once complete
    clean_up: bool = False  # a re-delivery: abort the uploads an earlier attempt left open
    redelivery_reason: str | None = None  # for the manifest: why its rows changed

    def add(self, rows: int, data: Any) -> None:
        """Encode `rows` rows (CSV text, or a frame for Parquet) into the object."""
        if self.failure is not None:
            return
        try:
            for chunk in self.encoder.add(rows, data):
                self.object.write(chunk)
        # Anything one destination raises (a bad endpoint is a ValueError in botocore) fails
        # that destination only; the message says what and where, never a secret.
        except Exception as exc:
            self.fail(exc)

    def finish(self) -> None:
        """On the close pool: complete the object, or wait (bounded) for its abort, so a
        failed upload is gone before the run ends rather than killed with the process."""
        if self.failure is not None:
            aborting = self.object.writer.aborted if self.object.writer is not None else None
            if aborting is not None:
                with contextlib.suppress(Exception):
                    aborting.result(timeout=ABORT_WAIT_SECONDS)
            return
        try:
            finished = self.object.finish(self.encoder.finish(), clean_up=self.clean_up)
            record = DeliveryRecord.of_object(
                self.window.start,
                self.window.end,
                self.target.affiliates,
                self.target.advertisers,
                {**self.encoder.summary(), **finished},
            )
            self.record = record
        except VerificationFailed as exc:
            self.fail(exc, abort=False)  # complete, but not as sent: delivered again
            return
        except Exception as exc:
            self.fail(exc)
            return
        if self.target.manifest:
            delivered = DeliveredObject(
                event_type=self.target.event_type,
                window_start=self.window.start,
                window_end=self.window.end,
                key=self.object.key,
                rows=record.rows,
                bytes=record.object_bytes or 0,
                sha256=record.sha256 or "",
                columns=EVENT_COLUMNS[self.target.event_type],
                format=self.encoder.file_format,
                compression=self.encoder.compression,
                redelivery_reason=self.redelivery_reason,
            )
            try:
                uri = self.object.write_manifest(manifest_bytes(delivered))
                self.record = replace(record, manifest_uri=uri)
            # The data object is complete but unannounced: the window is Failed and delivered
            # again (the same bytes, then its manifest). Nothing is deleted: that would need
            # s3:DeleteObject, and a customer goes by the manifest.
            except Exception as exc:
                self.fail(exc, build_manifest_key(self.object.key), abort=False)
                self.record = None

    def fail(self, exc: BaseException, key: str | None = None, abort: bool = True) -> None:
        self.failure = delivery_failure(self.target.destination, key or self.object.key, exc)
        self.permanent = is_permanent(exc)
        self.code = error_code(exc)
        if abort:
            self.object.abort()

    def outcome(self) -> Outcome:
        return Outcome(
            self.target,
            self.failure,
            self.code,
            self.permanent,
            self.stops_destination,
            self.record,
        )


def _encoder(target: ExportTarget) -> "GzipCsvEncoder | ParquetEncoder":
    columns = EVENT_COLUMNS[target.event_type]
    if target.file_format == "parquet":
        from affise_s3_assets.encoding.parquet import ParquetEncoder

        return ParquetEncoder(target.event_type, columns)
    return GzipCsvEncoder(columns, target.compression_level)


def cut_at_windows(
    frames: Iterable[pl.DataFrame], windows: Sequence[Window], column: str = "created_at"
) -> Iterator[tuple[int, pl.DataFrame]]:
    """(window index, rows) for frames sorted by `column` cut at the windows' boundaries."""
    current = 0
    for frame in frames:
        # A source storing instants (TIMESTAMPTZ, Parquet written with a zone) arrives zoned;
        # window bounds are naive UTC.
        zoned = getattr(frame.schema[column], "time_zone", None) is not None
        while frame.height:
            end = windows[current].end
            cut = frame[column].search_sorted(
                end.replace(tzinfo=UTC) if zoned else end, side="left"
            )
            if cut:
                yield current, frame.slice(0, cut)
            if cut == frame.height:
                break
            frame = frame.slice(cut)
            current += 1
            if current == len(windows):
                raise ValueError(f"the source returned rows at or after {end}, past the range")


def _batches(
    pieces: Iterable[tuple[int, pl.DataFrame]], rows: int
) -> Iterator[tuple[int, pl.DataFrame]]:
    """Pieces of one window joined into batches of about `rows` rows."""
    pending: list[pl.DataFrame] = []
    count, index = 0, -1
    for piece_index, piece in pieces:
        if pending and (piece_index != index or count >= rows):
            yield index, pl.concat(pending, rechunk=False)
            pending, count = [], 0
        index = piece_index
        pending.append(piece)
        count += piece.height
    if pending:
        yield index, pl.concat(pending, rechunk=False)


EncodingKey = tuple[tuple[int, ...], tuple[str, ...], str]


def _encoded(
    batches: Iterable[tuple[int, pl.DataFrame]],
    targets: Sequence[ExportTarget],
    windows: Sequence[Window],
    stopped: set[dg.AssetKey],
) -> Iterator[tuple[int, EncodingKey, int, memoryview | pl.DataFrame]]:
    """Each batch, once per distinct filter and format of the targets due in its window and
    still tried, one at a time (the queue behind it bounds how much waits): CSV text for CSV
    targets, the filtered typed rows for Parquet ones (their encoder makes the row groups)."""
    predicates = {target.filter_key: event_filter(*target.filter_key) for target in targets}
    for index, frame in batches:
        start = windows[index].start
        wanted = {
            target.encoding_key
            for target in targets
            if target.covers(start) and target.asset_key not in stopped
        }
        # Once per batch rather than once per integration: the timestamp text.
        text = whole_second_text(frame) if any(k[2] == "csv" for k in wanted) else frame
        for key in sorted(wanted):
            affiliates, advertisers, file_format = key
            predicate = predicates[(affiliates, advertisers)]
            rows = text if file_format == "csv" else frame
            kept = rows.filter(predicate) if predicate is not None else rows
            if kept.height:
                yield index, key, kept.height, csv_bytes(kept) if file_format == "csv" else kept


def deliver_windows(
    targets: Sequence[ExportTarget],
    windows: Sequence[Window],
    frames: Iterable[pl.DataFrame],
    io: DateFolderS3IOManager,
    on_window: Callable[[Window, list[Outcome]], None],
    clean_up: bool = False,
    redelivery_reason: str | None = None,
) -> None:
    """Deliver every window of `windows` (consecutive) to each target due in it, from one pass
    over the range's sorted `frames`; `on_window` reports each object as soon as it is done.

    Three stages overlap on their own threads (DuckDB and polars release the GIL): reading
    and sorting, filtering and writing CSV (once per distinct filter), and compressing and
    uploading each object. A target whose delivery fails with a permanent error (access
    denied, no such bucket, ...), or fails STOP_AFTER_FAILED_WINDOWS windows in a row, is not
    tried again for the later windows of this run: they stay undelivered, and are reported
    with the run. `clean_up` (a re-delivery) aborts the multipart uploads an earlier
    attempt left open for each key delivered; `redelivery_reason` goes in the manifests.
    """
    stopped: set[dg.AssetKey] = set()
    # Destinations whose clean-up ran out its deadline: not cleaned up again in this run, or
    # a store that lists slowly would hold every window of the range (the lifecycle rule and
    # the next re-delivery still clean up).
    no_clean_up: set[dg.AssetKey] = set()
    failed_in_a_row: dict[dg.AssetKey, int] = {}
    open_objects: list[ObjectDelivery] = []
    by_filter: dict[EncodingKey, list[ObjectDelivery]] = {}
    current = -1

    def open_window(index: int) -> None:
        window = windows[index]
        due = [
            target
            for target in targets
            if target.covers(window.start) and target.asset_key not in stopped
        ]
        # Each open object fills one part while another may be in flight: a few objects keep
        # theirs in memory, many share PART_MEMORY_BUDGET and spill the rest to a file.
        in_memory = max(MIN_PART_MEMORY, PART_MEMORY_BUDGET // (2 * max(1, len(due))))
        open_objects[:] = [
            ObjectDelivery(
                target,
                window,
                io.open_object(target.destination, window.start, in_memory, target.file_format),
                _encoder(target),
                clean_up=clean_up and target.asset_key not in no_clean_up,
                redelivery_reason=redelivery_reason,
            )
            for target in due
        ]
        by_filter.clear()
        for delivery in open_objects:
            by_filter.setdefault(delivery.target.encoding_key, []).append(delivery)

    def close_window(index: int) -> None:
        # Each object is reported as soon as it is complete: one slow destination (up to its
        # request deadline) delays no other's materialization.
        with ThreadPoolExecutor(max_workers=CLOSE_THREADS, thread_name_prefix="s3-close") as pool:
            finishing = {pool.submit(delivery.finish): delivery for delivery in open_objects}
            for done in as_completed(finishing):
                delivery = finishing[done]
                key = delivery.target.asset_key
                failed_in_a_row[key] = failed_in_a_row.get(key, 0) + 1 if delivery.failure else 0
                if (
                    delivery.permanent
                    or delivery.code in TIMEOUT_CODES
                    or failed_in_a_row[key] >= STOP_AFTER_FAILED_WINDOWS
                ):
                    delivery.stops_destination = True
                    stopped.add(key)
                record = delivery.record
                if record is not None and record.leftover_uploads_aborted in CLEAN_UP_TIMED_OUT:
                    no_clean_up.add(key)
                on_window(windows[index], [delivery.outcome()])
        open_objects.clear()

    def move_to(index: int) -> None:
        nonlocal current
        while current < index:
            if current >= 0:
                close_window(current)
            current += 1
            open_window(current)

    with _heap_left_alone():
        _stream(frames, targets, windows, stopped, by_filter, open_objects, move_to)
        close_window(current)


def _stream(
    frames: Iterable[pl.DataFrame],
    targets: Sequence[ExportTarget],
    windows: Sequence[Window],
    stopped: set[dg.AssetKey],
    by_filter: Mapping[EncodingKey, list[ObjectDelivery]],
    open_objects: list[ObjectDelivery],
    move_to: Callable[[int], None],
) -> None:
    """The range's rows, through the filters and encoders, into the windows' open objects."""
    column = WINDOW_COLUMN[targets[0].event_type] if targets else "created_at"
    pieces = cut_at_windows(frames, windows, column)
    batches = in_background(_batches(pieces, FANOUT_BATCH_ROWS), depth=1)
    encoded = in_background(_encoded(batches, targets, windows, stopped), depth=1)
    try:
        for index, key, rows, data in encoded:
            move_to(index)
            for delivery in by_filter.get(key, ()):
                delivery.add(rows, data)
        move_to(len(windows) - 1)
    except BaseException:
        # The range could not be read: nothing more is delivered, no upload is left open.
        aborts = [delivery.object.abort() for delivery in open_objects]
        for abort in aborts:
            if abort is not None:
                with contextlib.suppress(Exception):
                    abort.result(timeout=ABORT_WAIT_SECONDS)
        raise
    finally:
        encoded.close()
        batches.close()


@contextlib.contextmanager
def _heap_left_alone() -> Iterator[None]:
    """The objects alive when a range starts streaming (the definitions, the run's context:
    hundreds of thousands) are left out of the garbage collector's passes until it ends; they
    outlive it anyway, and scanning them again and again cost about 2% of a large window's CPU."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


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
        required_resource_keys={"events", IO_MANAGER_KEY},
        # A backfill of many windows runs as a few ranged runs, each window its own object.
        backfill_policy=dg.BackfillPolicy.multi_run(group.windows_per_run),
        description=f"Reads each {group.frequency}-minute window of {group.event_type} once and "
        "delivers it to every selected integration's bucket, one object per window.",
    )
    def deliver(context: dg.AssetExecutionContext) -> Iterator[dg.Output]:
        # A generator that yields no output: each partition's materialization is logged by
        # the step as its object lands (a returned None would be handed to the IO manager).
        _deliver_selected(context, group, by_key)
        yield from ()

    return deliver


def _deliver_selected(
    context: dg.AssetExecutionContext,
    group: WindowGroup,
    by_key: dict[dg.AssetKey, ExportTarget],
) -> None:
    events: EventsDatabase = context.resources.events
    io: DateFolderS3IOManager = getattr(context.resources, IO_MANAGER_KEY)
    selected = sorted(
        (by_key[key] for key in context.selected_asset_keys),
        key=lambda target: target.integration,
    )
    windows = _windows(context, group)
    early = [t.integration for t in selected if not t.covers(windows[-1].start)]
    if early:
        context.log.warning(f"before their start, nothing to deliver for: {early}")
    due = [t for t in selected if t.integration not in early]
    if not due:
        return
    # One read of the upload journal for all of them, not one per object.
    io.prepare([target.destination for target in due])
    failures: list[Outcome] = []
    delivered = 0
    # The windows each target was tried for, and the failure that stopped a destination:
    # the windows it was not tried for say why on its page.
    tried: set[tuple[dg.AssetKey, str]] = set()
    stopped_by: dict[dg.AssetKey, tuple[Window, Outcome]] = {}
    # What the source held for each (filter, window) delivered: recorded with the window, so
    # reconciliation can tell later whether the source's rows for it have changed since.
    fingerprints: dict[tuple[FilterKey, datetime], Fingerprint] = {}
    empty: Fingerprint | None = None  # set once the fingerprints are known
    # A window delivered again because its rows changed says so, with the rows it had.
    reason = context.run.tags.get(REASON_TAG)
    before = _delivered_rows(context.instance, due, windows) if reason else {}

    def report(window: Window, objects: list[Outcome]) -> None:
        nonlocal delivered
        lag = (datetime.now(UTC).replace(tzinfo=None) - window.end).total_seconds()
        for item in objects:
            target = item.target
            tried.add((target.asset_key, window.key))
            if item.stops_destination:
                stopped_by.setdefault(target.asset_key, (window, item))
            if item.failure is None:
                assert item.record is not None, "a delivered object has its record"
                delivered += 1
                source = fingerprints.get((target.filter_key, window.start), empty)
                record = replace(
                    item.record,
                    reason=reason or None,
                    rows_before=before.get((target.asset_key, window.key)) if reason else None,
                    source_fingerprint=source.text() if source else None,
                    delivered_after_close_s=round(lag, 1),
                )
                context.log_event(
                    dg.AssetMaterialization(
                        asset_key=target.asset_key,
                        partition=window.key,
                        metadata=record.to_metadata(),
                    )
                )
                continue
            failures.append(item)
            context.log.error(item.failure)
            context.log_event(_failure_observation(context, window, item))

    # Only windows the source is complete for: an empty file must mean "no events", never
    # "the events have not arrived".
    progress = _source_progress(context, events, group, windows[-1].end)
    ready = [window for window in windows if progress.covers(window.end)]
    if ready:
        due_in = [w for w in ready if any(t.covers(w.start) for t in due)]
        if due_in:
            try:
                with events.read(group.event_type, due_in[0].start, ready[-1].end) as source:
                    # Before the rows, through the same connection: what they are read from.
                    # Bookkeeping never fails a delivery: without one, a window is compared
                    # by its rows alone.
                    try:
                        found = source.fingerprints(
                            group.frequency, sorted({t.filter_key for t in due})
                        )
                        empty = source.empty()
                        fingerprints.update(found)
                    except Exception as exc:
                        context.log.warning(f"no source fingerprints recorded: {exc}")
                    deliver_windows(
                        due,
                        ready,
                        source.frames(),
                        io,
                        report,
                        clean_up=_is_redelivery(context.run.tags),
                        redelivery_reason=reason,
                    )
            finally:
                # Windows a stopped destination was not tried for, or that a failed read
                # never reached: their pages say so rather than Dagster's bare "failed".
                for window in due_in:
                    for target in due:
                        if (
                            target.covers(window.start)
                            and (target.asset_key, window.key) not in tried
                        ):
                            context.log_event(
                                _failure_observation(
                                    context, window, _not_attempted(target, stopped_by)
                                )
                            )
    for window in windows[len(ready) :]:
        incomplete = SourceIncomplete(
            f"{progress.describe()}; this window ends at {window.end:%Y-%m-%d %H:%M:%S}, and is "
            "delivered once the source is complete past its end"
        )
        report(
            window,
            [
                Outcome(
                    target,
                    delivery_failure(
                        target.destination,
                        build_object_key(
                            target.destination.directory, window.start, target.file_format
                        ),
                        incomplete,
                    ),
                    error_code(incomplete),
                )
                for target in due
                if target.covers(window.start)
            ],
        )
    if failures:
        if all(item.code == SOURCE_INCOMPLETE_CODE for item in failures):
            # The catch-up sensor then tries these as soon as the source passes them.
            context.instance.add_run_tags(context.run.run_id, {SOURCE_ONLY_TAG: "1"})
        raise dg.Failure(
            description=_failure_summary(failures, delivered, windows),
            metadata={"failed": len(failures), "delivered": delivered},
            allow_retries=False,
        )


def _delivered_rows(
    instance: dg.DagsterInstance, targets: Sequence[ExportTarget], windows: Sequence[Window]
) -> dict[tuple[dg.AssetKey, str], int]:
    """The rows each window's latest materialization delivered."""
    keys = [window.key for window in windows]
    found: dict[tuple[dg.AssetKey, str], int] = {}
    for target in targets:
        for key, materialization in latest_materializations(instance, target.asset_key, keys):
            record = DeliveryRecord.from_metadata(materialization.metadata)
            if record is not None:
                found[(target.asset_key, key)] = record.rows
    return found


def _is_redelivery(tags: Mapping[str, str]) -> bool:
    """Whether a run may follow one that died mid-upload: anything but a window's first
    delivery by its schedule or the catch-up's backlog (re-deliveries, the UI, backfills)."""
    first = tags.get(SCHEDULED_TAG) == "1" or tags.get(CATCH_UP_TAG) == "1"
    # Dagster's own re-execution of a crashed run copies its parent's tags.
    retried = "dagster/parent_run_id" in tags
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


def _failure_summary(
    failures: list[Outcome],
    delivered: int,
    windows: list[Window],
) -> str:
    by_target: dict[str, list[Outcome]] = {}
    for item in failures:
        by_target.setdefault(item.target.integration, []).append(item)
    lines = [
        f"{len(failures)} objects failed, {delivered} delivered, over {len(windows)} windows "
        f"({windows[0].key} to {windows[-1].key}). Failed and undelivered windows show as "
        "Failed on each asset; the catch-up sensor delivers them again once the destination "
        "works and the source is complete."
    ]
    for name, items in sorted(by_target.items()):
        first = items[0]
        stopped = " (its later windows in this run were not attempted)"
        lines.append(f"- {first.failure}{stopped if items[-1].stops_destination else ''}")
        if len(items) > 1:
            lines.append(f"  and {len(items) - 1} more windows of {name!r}")
    return "\n".join(lines)


def _failure_observation(
    context: dg.AssetExecutionContext, window: Window, item: Outcome
) -> dg.AssetObservation:
    """A window not delivered, on its asset's page next to the window: the partition shows
    as Failed once the step fails, and this says why."""
    return dg.AssetObservation(
        asset_key=item.target.asset_key,
        partition=window.key,
        metadata={
            **window_metadata(window.start, window.end),
            "delivery_failed": item.failure or "",
            "error_code": item.code,
            "permanent": item.permanent,
            "run_id": context.run.run_id,
        },
    )


def _not_attempted(
    target: ExportTarget, stopped_by: Mapping[dg.AssetKey, tuple[Window, Outcome]]
) -> Outcome:
    """A window this run did not try: why, in the words of the failure that stopped it."""
    stopper = stopped_by.get(target.asset_key)
    if stopper is None:
        return Outcome(target, "not attempted in this run (see the run's failure)", "NotAttempted")
    window, item = stopper
    return Outcome(
        target,
        f"not attempted in this run, stopped by window {window.key}'s failure: {item.failure}",
        item.code or "NotAttempted",
        item.permanent,
    )


def freshness_policy(frequency: int, lateness: timedelta = timedelta(0)) -> dg.FreshnessPolicy:
    """Each export should have delivered a window within its frequency plus its lateness and
    FRESHNESS_GRACE (warn), and within two frequencies (fail): the UI then marks an
    integration fallen behind."""
    step = timedelta(minutes=frequency)
    grace = lateness + FRESHNESS_GRACE
    return dg.FreshnessPolicy.time_window(warn_window=step + grace, fail_window=2 * step + grace)


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
            f"every {target.frequency} minutes under `{target.folder}YYYY/MM/DD/`, from the "
            f"window of {start} UTC (windows before it are not this integration's)."
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
        # A paused integration is not late: no policy that would show it red for ever.
        freshness_policy=freshness_policy(target.frequency, lateness) if target.enabled else None,
        kinds={"s3", target.file_format},
        tags={"integration": target.integration, "event_type": target.event_type},
    ).with_io_manager_key(IO_MANAGER_KEY)


def _compression(target: ExportTarget) -> str:
    if target.file_format == "csv":
        return f"gzip level {target.compression_level}"
    from affise_s3_assets.encoding.parquet import COMPRESSION, COMPRESSION_LEVEL

    return f"{COMPRESSION} level {COMPRESSION_LEVEL}"


def build_window_job(group: WindowGroup) -> UnresolvedAssetJobDefinition:
    """The job of `group`: runs select the integrations and the window (or range) to deliver."""
    # The live integrations: a run of the whole job delivers each of them. A disabled one is
    # re-delivered by hand from its asset's page (Dagster's own asset job).
    members = group.live or group.targets
    return dg.define_asset_job(
        name=group.job_name,
        selection=dg.AssetSelection.assets(*(target.asset_key for target in members)),
        executor_def=dg.in_process_executor,
        tags={"affise/event_type": group.event_type, "affise/frequency": str(group.frequency)},
        description=f"Delivers {group.frequency}-minute windows of {group.event_type} to the "
        "selected integrations, reading each window once.",
    )
