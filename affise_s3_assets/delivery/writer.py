"""The S3 window writer: turns a partition's time window into an S3 key (`build_object_key`:
date folders or Hive-style ones, as the export's layout says) and writes the window's object
there. Knows keys and the S3 library,
nothing of DuckDB or CSV.

Every export partition goes through it, whichever way it was started (a schedule, the catch-up
sensor, *Materialize* or a backfill in the UI): the export step (delivery/step.py) opens one
object per selected integration and window, streams the encoded bytes into it and finishes it,
which completes the upload (S3 checks every request body against its MD5). One window, one object,
one key derived only from the window, so a re-delivery overwrites and never duplicates.

Each object's multipart upload is journaled in the run's Dagster instance
(delivery/upload_journal.py) before its first part: the next delivery of the key aborts what a
killed run left open, with s3:AbortMultipartUpload alone, and `sweep_abandoned_uploads` does so for
every export.
"""

import contextlib
import time
from collections.abc import Iterable
from concurrent.futures import Future
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg
from pydantic import Field, PrivateAttr

from affise_s3_assets.config import ConfigError
from affise_s3_assets.delivery.upload_journal import InstanceUploadJournal, UploadJournal
from affise_s3_assets.s3 import (
    DEFAULT_PART_SIZE_MIB,
    MIB,
    JournalCleanUp,
    Journaling,
    S3Destination,
    S3ObjectWriter,
    Verification,
    VerificationFailed,
    abort_journaled_uploads,
    abort_leftover_uploads,
    delivered_metadata,
    object_uri,
    outage_seconds,
    s3_client,
)

# Per file format: the key's extension and the object's Content-Type.
EXTENSIONS = {"csv": "csv.gz", "parquet": "parquet"}
CONTENT_TYPES = {"csv": "application/gzip", "parquet": "application/vnd.apache.parquet"}


# Per export: how its folders are cut (`layout`) and how its files are named (`file_name`).
LAYOUTS = ("dated", "hive")
FILE_NAMES = ("datetime", "compact")


def _utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


def build_data_folder(directory: str, window_start: datetime, layout: str = "dated") -> str:
    """The folder a window's object lies in, from its start in UTC: `{directory}/YYYY/MM/DD`
    (dated) or `{directory}/dt=YYYY-MM-DD/hour=HH` (hive); no trailing slash."""
    start = _utc(window_start)
    if layout == "dated":
        folder = f"{start:%Y/%m/%d}"
    elif layout == "hive":
        folder = f"dt={start:%Y-%m-%d}/hour={start:%H}"
    else:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    return f"{directory}/{folder}" if directory else folder


def build_object_key(
    directory: str,
    window_start: datetime,
    file_format: str = "csv",
    layout: str = "dated",
    file_name: str = "datetime",
) -> str:
    """The window's key, from its start in UTC alone: `{directory}/YYYY/MM/DD/YYYY-MM-DD
    hh:mm:ss.csv.gz` (`.parquet`) by default; `layout: hive` puts it in
    `{directory}/dt=YYYY-MM-DD/hour=HH/`, `file_name: compact` names it `YYYYMMDDThhmmssZ`
    (no space or colon)."""
    start = _utc(window_start)
    if file_name == "datetime":
        stem = f"{start:%Y-%m-%d %H:%M:%S}"
    elif file_name == "compact":
        stem = f"{start:%Y%m%dT%H%M%SZ}"
    else:
        raise ValueError(f"file_name must be one of {FILE_NAMES}, got {file_name!r}")
    return f"{build_data_folder(directory, start, layout)}/{stem}.{EXTENSIONS[file_format]}"


# Manifests and completion markers lie in this sub-folder of their data's folder: table
# readers skip it (Hive-style readers skip names starting with `_` or `.`; a `*` glob, as
# DuckDB's, does not descend into a sub-folder), so a folder read takes data files only.
META_FOLDER = "_manifests"
MANIFEST_SUFFIX = ".manifest.json"


def build_manifest_key(object_key: str) -> str:
    """In the `_manifests/` sub-folder of its data object's folder, named after the object:
    `…/2026/11/25/_manifests/2026-11-25 10:00:00.csv.gz.manifest.json`."""
    folder, _, name = object_key.rpartition("/")
    meta = f"{folder}/{META_FOLDER}" if folder else META_FOLDER
    return f"{meta}/{name}{MANIFEST_SUFFIX}"


class WindowObject:
    """One partition's object while it is written: nothing is sent before the first chunk."""

    def __init__(
        self,
        destination: S3Destination,
        key: str,
        part_size: int,
        memory: int,
        content_type: str = CONTENT_TYPES["csv"],
        journal: UploadJournal | None = None,
    ) -> None:
        self.destination, self.key, self.content_type = destination, key, content_type
        self._part_size, self._memory = part_size, memory
        self._journal = journal
        self.writer: S3ObjectWriter | None = None
        self.verification: Verification | None = None  # once finished

    def _open(self) -> S3ObjectWriter:
        if self.writer is None:
            self.writer = S3ObjectWriter(
                s3_client(self.destination),
                self.destination.bucket,
                self.key,
                self._part_size,
                content_type=self.content_type,
                memory_bytes=self._memory,
                acl=self.destination.acl,
                journaling=self._journaling(),
                outage_seconds=outage_seconds(),
            )
        return self.writer

    def _journaling(self) -> Journaling | None:
        if self._journal is None:
            return None
        return Journaling(
            self._journal, self.destination.journal_name, self.destination.endpoint_url or ""
        )

    def write(self, chunk: bytes) -> None:
        self._open().write(chunk)

    def finish(self, last_chunk: bytes, clean_up: bool = False) -> dict[str, Any]:
        """Complete the object and check the store's answers about it (VerificationFailed if
        they say it holds other bytes); returns its materialization metadata. With `clean_up` (a
        re-delivery: an earlier attempt may have died mid-upload) the multipart uploads left
        open for its key are aborted."""
        writer = self._open()
        writer.write(last_chunk)
        writer.close()
        metadata = delivered_metadata(writer, self.destination)
        self.verification = self._verified(writer)
        metadata["verified"] = self.verification.how
        metadata["verified_by"] = {True: "etag", None: "content-md5 only"}[self.verification.intact]
        leftovers = writer.leftovers
        if leftovers is not None and leftovers.found:
            # Uploads of this key an earlier writer left (a killed run): aborted from the
            # journal, with no listing.
            metadata["journaled_uploads_aborted"] = leftovers.aborted + leftovers.gone
            if leftovers.held or leftovers.failed:
                metadata["journaled_uploads_left"] = _left_text(leftovers)
        if clean_up:
            aborted = abort_leftover_uploads(writer.client, self.destination.bucket, self.key)
            metadata["leftover_uploads_aborted"] = (
                "not allowed to list" if aborted is None else aborted
            )
        return metadata

    def write_manifest(self, body: bytes) -> str:
        """Write the object's manifest (`build_manifest_key`), after the object is complete:
        its presence says so; returns its URI."""
        assert self.writer is not None, "the manifest follows its complete object"
        return write_small_object(
            self.writer.client, self.destination, build_manifest_key(self.key), body
        )

    def _verified(self, writer: S3ObjectWriter) -> Verification:
        return verified(writer, self.destination)

    def abort(self) -> Future[None] | None:
        """Discard the object; the writer's abort, done on its own thread, is returned."""
        return self.writer.abort() if self.writer is not None else None


def verified(writer: S3ObjectWriter, destination: S3Destination) -> Verification:
    """The closed object's verification; VerificationFailed if the store's answers say it
    holds other bytes than were sent."""
    verification = writer.verification(destination.verify_etag)
    if verification.intact is False:
        uri = object_uri(destination, writer.key)
        raise VerificationFailed(f"{uri}: {verification.how}")
    return verification


def write_small_object(client: Any, destination: S3Destination, key: str, body: bytes) -> str:
    """One small JSON object (a manifest, a completion marker) in one verified PUT; returns
    its URI."""
    writer = S3ObjectWriter(
        client,
        destination.bucket,
        key,
        content_type="application/json",
        acl=destination.acl,
        outage_seconds=outage_seconds(),
    )
    writer.write(body)
    writer.close()
    verified(writer, destination)
    return object_uri(destination, key)


class DateFolderS3Writer(dg.ConfigurableResource):
    """Writes each export partition to its key (`build_object_key`: by default
    `directory/YYYY/MM/DD/<window start>.csv.gz` or `.parquet`): the export step's resource
    (`S3_WRITER_KEY`).

    A resource, not an IO manager: an IO manager is handed a step's output whole, and a day's
    window is gigabytes; the step streams each window's object through `open_object` instead,
    and its assets' outputs carry nothing (no IO manager is ever called for them)."""

    part_size_mib: int = Field(
        default=DEFAULT_PART_SIZE_MIB,
        ge=5,
        le=512,
        description="multipart part size; bounds memory per delivery",
    )
    # The run's upload journal, in its instance; None outside a run (no journaling).
    _journal: UploadJournal | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        if context.instance is not None:
            run = context.run
            self._journal = InstanceUploadJournal(context.instance, run.run_id if run else "")

    def open_object(
        self,
        destination: S3Destination,
        window_start: datetime,
        in_memory: int = 256 * 1024,
        file_format: str = "csv",
        layout: str = "dated",
        file_name: str = "datetime",
    ) -> WindowObject:
        """The window's object, at its key (`build_object_key`). Its filling part keeps
        `in_memory` bytes in memory and the rest in a temporary file: the export step shares a
        budget among the objects it has open, so a group of large integrations cannot cost a
        part (8 MiB; S3's minimum is 5) each."""
        return WindowObject(
            destination,
            build_object_key(destination.directory, window_start, file_format, layout, file_name),
            self.part_size_mib * MIB,
            in_memory,
            CONTENT_TYPES[file_format],
            self._journal,
        )

    def prepare(self, destinations: Iterable[S3Destination]) -> None:
        """Before a run's objects: one read of which destinations' journals hold uploads, so
        an object of one that holds none asks the instance nothing. Best effort."""
        if isinstance(self._journal, InstanceUploadJournal):
            # On failure each object reads its own, as without it.
            with contextlib.suppress(Exception):
                self._journal.prefetch(d.journal_name for d in destinations)


def _left_text(outcome: JournalCleanUp) -> str:
    parts = []
    if outcome.held:
        parts.append(f"{outcome.held} still held by a live writer")
    if outcome.failed:
        parts.append(
            f"{len(outcome.failed)} not aborted ({', '.join(sorted(set(outcome.failed)))})"
        )
    return "; ".join(parts)


# A sweep aborts an upload recorded at least this long ago whose writer is gone...
SWEEP_OLDER_THAN = timedelta(minutes=15)
# ...and one recorded this long ago whoever holds it: no object takes that long to deliver.
SWEEP_STALE_AFTER = timedelta(days=2)


def sweep_abandoned_uploads(
    instance: dg.DagsterInstance,
    destinations: Iterable[S3Destination],
    older_than: timedelta = SWEEP_OLDER_THAN,
    stale_after: timedelta = SWEEP_STALE_AFTER,
    time_budget: float = 30.0,
) -> dict[str, JournalCleanUp | str]:
    """Abort the multipart uploads `instance`'s journal holds for `destinations` (the live
    exports' own, whose credentials abort them) that were recorded over `older_than` ago by
    a writer that is gone (its run finished or unknown, its process gone), or over
    `stale_after` ago whoever holds it; each with s3:AbortMultipartUpload alone. Spends at
    most about `time_budget` seconds on requests: what it did not reach waits for the next
    sweep. Never raises; returns, per destination that had any, what became of them (or why
    its uploads could not be tried: its credentials unset). Nothing returned is a secret.
    For a sensor's tick: see docs/customer-contract.md, "Leftover uploads need no listing"."""
    journal = InstanceUploadJournal(instance)
    started = time.monotonic()
    now = time.time()
    outcomes: dict[str, JournalCleanUp | str] = {}
    by_name = {destination.journal_name: destination for destination in destinations}
    try:
        # One read for every destination: most hold nothing.
        holding = journal.holding(by_name)
    except Exception as exc:
        return {"*": f"journal unreadable: {type(exc).__name__}"}
    for name in sorted(holding):
        destination = by_name[name]
        left = time_budget - (time.monotonic() - started)
        if left <= 0:
            outcomes[name] = "not reached: the sweep's time ran out"
            continue
        try:
            client = s3_client(destination)
        except (ConfigError, ValueError) as exc:
            outcomes[name] = f"no client: {exc if isinstance(exc, ConfigError) else 'ValueError'}"
            continue
        outcomes[name] = abort_journaled_uploads(
            client,
            journal,
            name,
            endpoint=destination.endpoint_url or "",
            recorded_before=now - older_than.total_seconds(),
            stale_after=stale_after.total_seconds(),
            time_budget=left,
        )
    return outcomes
