"""Window delivery at scale: one run per (event type, frequency, window) for every integration.

A Dagster run costs seconds of process start-up, so a run per integration and window does not
fit a thousand integrations on one machine. The window job reads the window once and fans each
batch out to every integration's filter, encoder and S3 object. Every integration still gets
its own asset materialization for that partition (logged here, with the same metadata the IO
manager writes), its own failure message, and can be re-delivered on its own: from the asset's
page (one partition, through the IO manager) or by running this job for the window with
`integrations: [name]`.
"""

from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import dagster as dg
import polars as pl
from pydantic import Field

from affise_s3_assets.config import EventType
from affise_s3_assets.csv_export import (
    GzipCsvEncoder,
    csv_bytes,
    event_filter,
    filters_metadata,
    in_background,
    whole_second_text,
)
from affise_s3_assets.io_manager import (
    DEFAULT_PART_SIZE_MIB,
    MIB,
    S3Destination,
    S3ObjectWriter,
    build_object_key,
    delivery_failure,
    s3_client,
    verify_object,
)
from affise_s3_assets.partitions import window_metadata, window_partitions
from affise_s3_assets.source import EVENT_COLUMNS, EventsDatabase

# Closing objects is network-bound: small PUTs and HEADs go out in parallel.
CLOSE_THREADS = 16
# One object per integration is open at once: the part each is filling keeps this much in
# memory and spills the rest to a temporary file, so a group of large integrations cannot
# cost a part (8 MiB, S3's minimum is 5) of RAM each.
PART_MEMORY_BYTES = 256 * 1024
# Rows per batch fanned out to every integration (the loader's slices are 25k rows). Measured
# with benchmarks/run_benchmarks.py, 834 integrations, 208k-row window: 250k-row batches
# peaked at 576 MB, 50k at 497 MB, 25k at ~450 MB, in the same 15-19 s per run.
FANOUT_BATCH_ROWS = 25_000


@dataclass(frozen=True)
class ExportTarget:
    """What the window job needs of one integration's export."""

    asset_key: dg.AssetKey
    event_type: EventType
    destination: S3Destination
    frequency: int
    first_window: datetime
    affiliates: tuple[int, ...]
    advertisers: tuple[str, ...]
    compression_level: int

    @property
    def integration(self) -> str:
        return self.destination.integration

    @property
    def filter_key(self) -> tuple[tuple[int, ...], tuple[str, ...]]:
        return self.affiliates, self.advertisers


def window_job_name(event_type: EventType, frequency: int) -> str:
    return f"{event_type}_every_{frequency}min_job"


class WindowDeliveryConfig(dg.Config):
    integrations: list[str] = Field(
        default_factory=list,
        description="deliver only these integrations (re-delivery, catch-up); empty = all due",
    )
    part_size_mib: int = Field(
        default=DEFAULT_PART_SIZE_MIB, ge=5, le=512, description="multipart part size"
    )


class _Delivery:
    """One integration's object for one window, fed batch by batch."""

    def __init__(self, target: ExportTarget, window_start: datetime, part_size: int) -> None:
        self.target = target
        self.key = build_object_key(target.destination.directory, window_start)
        self.encoder = GzipCsvEncoder(EVENT_COLUMNS[target.event_type], target.compression_level)
        self.writer: S3ObjectWriter | None = None
        self.part_size = part_size
        self.error: str | None = None
        self.metadata: dict[str, Any] = {}

    def _writer(self) -> S3ObjectWriter:
        if self.writer is None:
            client = s3_client(self.target.destination)
            self.writer = S3ObjectWriter(
                client,
                self.target.destination.bucket,
                self.key,
                self.part_size,
                memory_bytes=PART_MEMORY_BYTES,
            )
        return self.writer

    def add(self, rows: int, data: bytes) -> None:
        if self.error is not None:
            return
        try:
            for chunk in self.encoder.add(rows, data):
                self._writer().write(chunk)
        # Anything one destination raises (a bad endpoint is a ValueError in botocore) fails
        # that destination only; the message says what and where, never a secret.
        except Exception as exc:
            self.fail(exc)

    def close(self) -> None:
        if self.error is not None:
            return
        try:
            writer = self._writer()
            writer.write(self.encoder.finish())
            sent, parts = writer.close()
            self.metadata = {
                **self.encoder.summary(),
                **verify_object(writer.client, self.target.destination, self.key, sent, parts),
            }
        except Exception as exc:
            self.fail(exc)

    def fail(self, exc: BaseException) -> None:
        self.error = delivery_failure(self.target.destination, self.key, exc)
        if self.writer is not None:
            self.writer.abort()


def _regrouped(frames: Iterable[pl.DataFrame], rows: int) -> Iterator[pl.DataFrame]:
    """Batches of about `rows` rows: each batch costs every integration a filter and a CSV
    call, so with many integrations fewer, larger batches cost far less."""
    pending: list[pl.DataFrame] = []
    count = 0
    for frame in frames:
        pending.append(frame)
        count += frame.height
        if count >= rows:
            yield pl.concat(pending, rechunk=False)
            pending, count = [], 0
    if pending:
        yield pl.concat(pending, rechunk=False)


def deliver_window(
    targets: Sequence[ExportTarget],
    frames: Any,
    window_start: datetime,
    part_size: int,
) -> list[_Delivery]:
    """Feed every target's object from one pass over the window's frames, then close them.

    Integrations with the same filters share the CSV of each batch: it is written once.
    """
    deliveries = [_Delivery(target, window_start, part_size) for target in targets]
    by_filter: dict[tuple[tuple[int, ...], tuple[str, ...]], list[_Delivery]] = {}
    for delivery in deliveries:
        by_filter.setdefault(delivery.target.filter_key, []).append(delivery)
    predicates = {key: event_filter(*key) for key in by_filter}
    try:
        for frame in in_background(_regrouped(frames, FANOUT_BATCH_ROWS), depth=1):
            # Once per batch rather than once per integration: the timestamp text.
            frame = whole_second_text(frame)
            for key, group in by_filter.items():
                predicate = predicates[key]
                kept: pl.DataFrame = frame.filter(predicate) if predicate is not None else frame
                if kept.height == 0:
                    continue
                data = csv_bytes(kept)
                for delivery in group:
                    delivery.add(kept.height, data)
    except BaseException:
        # The window could not be read: nothing is delivered, no upload is left open.
        for delivery in deliveries:
            if delivery.writer is not None:
                delivery.writer.abort()
        raise
    with ThreadPoolExecutor(max_workers=CLOSE_THREADS, thread_name_prefix="s3-close") as pool:
        list(pool.map(_Delivery.close, deliveries))
    return deliveries


def build_window_jobs(
    targets: Sequence[ExportTarget],
) -> list[tuple[ExportTarget, dg.JobDefinition]]:
    """Each target paired with the window job of its (event type, frequency)."""
    groups: dict[tuple[EventType, int], list[ExportTarget]] = {}
    for target in targets:
        groups.setdefault((target.event_type, target.frequency), []).append(target)
    jobs = {
        (event_type, frequency): build_window_job(event_type, frequency, members)
        for (event_type, frequency), members in groups.items()
    }
    return [(target, jobs[(target.event_type, target.frequency)]) for target in targets]


def build_window_job(
    event_type: EventType, frequency: int, targets: Sequence[ExportTarget]
) -> dg.JobDefinition:
    """The job delivering one window of `event_type` to every integration at `frequency`."""
    by_name = {target.integration: target for target in targets}
    first = min(target.first_window for target in targets)
    name = window_job_name(event_type, frequency)

    @dg.op(
        name=f"deliver_{name.removesuffix('_job')}",
        description=f"Reads one {frequency}-minute window of {event_type} once and delivers it "
        f"to each of {len(targets)} integrations' buckets.",
    )
    def deliver(
        context: dg.OpExecutionContext,
        config: WindowDeliveryConfig,
        events: EventsDatabase,
    ) -> None:
        window = context.partition_time_window
        named = sorted(set(config.integrations))
        unknown = [name for name in named if name not in by_name]
        if unknown:
            raise dg.Failure(f"not {event_type} integrations at {frequency} minutes: {unknown}")
        start = window.start.replace(tzinfo=None)
        early = [name for name in named if by_name[name].first_window > start]
        if early:
            raise dg.Failure(f"window {context.partition_key} is before the start of {early}")
        chosen = [by_name[name] for name in named] if named else targets
        due = [t for t in chosen if t.first_window <= start]
        if not due:
            context.log.info(f"no integration is due for window {context.partition_key}")
            return
        deliveries = deliver_window(
            due,
            events.window_frames(event_type, window.start, window.end),
            window.start,
            config.part_size_mib * MIB,
        )
        shown_window = window_metadata(window.start, window.end)
        failures = []
        for delivery in deliveries:
            target = delivery.target
            if delivery.error is not None:
                failures.append(delivery.error)
                context.log.error(delivery.error)
                # A partition this job fails to deliver stays unmaterialized, which the UI
                # shows as missing: the observation puts the reason on the asset's own page.
                context.log_event(
                    dg.AssetObservation(
                        asset_key=target.asset_key,
                        partition=context.partition_key,
                        metadata={
                            **shown_window,
                            "delivery_failed": delivery.error,
                            "run_id": context.run_id,
                        },
                    )
                )
                continue
            context.log_event(
                dg.AssetMaterialization(
                    asset_key=target.asset_key,
                    partition=context.partition_key,
                    metadata={
                        **shown_window,
                        **filters_metadata(target.affiliates, target.advertisers),
                        **delivery.metadata,
                    },
                )
            )
        if failures:
            raise dg.Failure(
                description=f"{len(failures)} of {len(deliveries)} deliveries failed for window "
                f"{context.partition_key}; the others are delivered. Re-deliver each from its "
                "asset's partition, or run this job for the window with `integrations`.\n"
                + "\n".join(failures),
                metadata={"failed": len(failures), "delivered": len(deliveries) - len(failures)},
                allow_retries=False,
            )

    @dg.job(
        name=name,
        partitions_def=window_partitions(first, frequency),
        executor_def=dg.in_process_executor,
        tags={"affise/event_type": event_type, "affise/frequency": str(frequency)},
        description=f"Delivers each {frequency}-minute window of {event_type} to every "
        "integration sharing that frequency, reading the window once.",
    )
    def window_job() -> None:
        deliver()

    return window_job
