"""The delivery engine: one pass over a range's sorted rows delivers every window to each target
due in it, one object per target and window, filtering and encoding once per distinct filter.
Needs no Dagster run: the export step (step.py) and the tests call `deliver_windows` with the
windows, the frames and a callback that hears of each object as it is done.

Knows the flow of a window; the format is encoding's, keys and uploads writer.py's.
"""

import contextlib
import gc
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import dagster as dg
import polars as pl

from affise_s3_assets.config.targets import ExportTarget
from affise_s3_assets.delivery.record import DeliveryRecord
from affise_s3_assets.delivery.writer import (
    DateFolderS3Writer,
    WindowObject,
    build_manifest_key,
)
from affise_s3_assets.encoding.csv_gzip import (
    CsvText,
    CsvTexts,
    GzipCsvEncoder,
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
from affise_s3_assets.source.event_types import EVENT_COLUMNS, WINDOW_COLUMN

if TYPE_CHECKING:  # imported where used, as the Parquet format is
    from affise_s3_assets.encoding.parquet import ParquetEncoder

# What one object's encoding or upload may raise and fail that object alone: any Exception,
# and polars' panic (a BaseException), which would otherwise end the whole range's delivery.
OBJECT_ERRORS: tuple[type[BaseException], ...] = (Exception, pl.exceptions.PanicException)


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
# fewer, larger batches cost far less (each batch costs every filter its fixed share).
FANOUT_BATCH_ROWS = 25_000
# Up to CAPPED_ENCODINGS distinct encodings (filters, formats, columns) in a run, batches are
# of FEW_ENCODINGS_BATCH_ROWS, capped at half as much again (`_batches`): every stage holds a
# batch or two, so smaller ones hold less, at about the same CPU (docs/design.md, "Tuning
# choices"). The loader's pieces (EventsDatabase.batch_rows) are larger: they are cut.
FEW_ENCODINGS_BATCH_ROWS = 12_500
CAPPED_ENCODINGS = 8


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
        except OBJECT_ERRORS as exc:
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
        except OBJECT_ERRORS as exc:
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
                columns=columns_of(self.target),
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


def columns_of(target: ExportTarget) -> tuple[str, ...]:
    """The columns of the target's files, in order: its `columns`, or every column of its
    event type."""
    return target.columns or EVENT_COLUMNS[target.event_type]


def encoder_of(target: ExportTarget) -> "GzipCsvEncoder | ParquetEncoder":
    columns = columns_of(target)
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
    pieces: Iterable[tuple[int, pl.DataFrame]], rows: int, capped: bool = True
) -> Iterator[tuple[int, pl.DataFrame]]:
    """Pieces of one window joined into batches of about `rows` rows. `capped`: no batch grows
    past half as much again: a piece that would take one there starts the next (two pieces of
    almost `rows` rows are two batches, not one twice as large held by every stage), and a
    piece larger than that is cut into `rows`-row slices first."""
    pending: list[pl.DataFrame] = []
    count, index = 0, -1
    cap = rows + rows // 2
    for piece_index, whole in pieces:
        cut = capped and whole.height > cap
        for piece in _slices(whole, rows) if cut else (whole,):
            over = capped and count + piece.height > cap
            if pending and (piece_index != index or count >= rows or over):
                yield index, pl.concat(pending, rechunk=False)
                pending, count = [], 0
            index = piece_index
            pending.append(piece)
            count += piece.height
    if pending:
        yield index, pl.concat(pending, rechunk=False)


def _slices(frame: pl.DataFrame, rows: int) -> Iterator[pl.DataFrame]:
    return (frame.slice(offset, rows) for offset in range(0, frame.height, rows))


# (affiliates, advertisers, file format, columns): ExportTarget.encoding_key.
EncodingKey = tuple[tuple[int, ...], tuple[str, ...], str, tuple[str, ...]]


def _encoded(
    batches: Iterable[tuple[int, pl.DataFrame]],
    targets: Sequence[ExportTarget],
    windows: Sequence[Window],
    stopped: set[dg.AssetKey],
    texts: CsvTexts,
) -> Iterator[tuple[int, EncodingKey, int, CsvText | pl.DataFrame]]:
    """Each batch, once per distinct filter, format and columns of the targets due in its
    window and still tried, one at a time (the queue behind it bounds how much waits): CSV
    text for CSV targets (taken from `texts`, given back by the consumer), the filtered typed
    rows for Parquet ones (their encoder makes the row groups, of its schema's columns). A target
    with `columns` gets those columns only, in its order; one without, the batch as read (every
    column, in the schema's order)."""
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
            affiliates, advertisers, file_format, columns = key
            predicate = predicates[(affiliates, advertisers)]
            rows = text if file_format == "csv" else frame
            kept = rows.filter(predicate) if predicate is not None else rows
            if kept.height:
                if columns:
                    kept = kept.select(columns)
                yield index, key, kept.height, texts.write(kept) if file_format == "csv" else kept


def deliver_windows(
    targets: Sequence[ExportTarget],
    windows: Sequence[Window],
    frames: Iterable[pl.DataFrame],
    s3_writer: DateFolderS3Writer,
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
                s3_writer.open_object(
                    target.destination,
                    window.start,
                    in_memory,
                    target.file_format,
                    target.layout,
                    target.file_name,
                ),
                encoder_of(target),
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
    # Small, capped batches bound what each stage holds, for a few encodings; with many, every
    # batch costs each of them its fixed share (a filter, a CSV write), and fewer cost less.
    few = len({target.encoding_key for target in targets}) <= CAPPED_ENCODINGS
    batch_rows = FEW_ENCODINGS_BATCH_ROWS if few else FANOUT_BATCH_ROWS
    batches = in_background(_batches(pieces, batch_rows, capped=few), depth=1)
    texts = CsvTexts()
    encoded = in_background(_encoded(batches, targets, windows, stopped, texts), depth=1)
    try:
        for index, key, rows, data in encoded:
            move_to(index)
            payload = data.view if isinstance(data, CsvText) else data
            for delivery in by_filter.get(key, ()):
                delivery.add(rows, payload)
            # Every object has taken the text in (an encoder copies what it keeps of it):
            # its memory is written again by a later batch.
            if isinstance(data, CsvText):
                texts.release(data)
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
