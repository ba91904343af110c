"""The upload journal: every multipart upload still open, recorded where it outlives the
process that began it, so that whoever comes next (the next delivery of its key, or a sweep)
aborts it with s3:AbortMultipartUpload alone, without s3:ListBucketMultipartUploads.

An entry is a destination's name, its endpoint, bucket, key and upload id, when it was
recorded and who holds it (host, process id, Dagster run id): never a credential. It is
recorded once the upload exists and before its first part, and forgotten once the upload is
completed or aborted (an entry whose upload is already gone is harmless: aborting it answers
NoSuchUpload, and it is forgotten then).

`InstanceUploadJournal` keeps the entries in the Dagster instance's key-value store (the
run storage's `kvs` table: Postgres on the cluster, SQLite locally), one key per destination,
which every run pod reaches and which a killed process leaves as it was. Concurrent runs of
one destination update its key by compare-and-swap, so neither loses the other's entries.

Knows the instance's run storage and run records (the key-value table's compare-and-swap is
dagster_internal's): nothing of S3 requests, clients or credentials.
"""

import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from affise_s3_assets.dagster_internal import (
    compare_and_set_key_value,
    sql_run_storage,
    store_values,
    stored_values,
)

# One key of the instance's key-value store per destination: its open uploads, as JSON.
KEY_PREFIX = "affise/upload-journal/"
# How often a compare-and-swap is tried against writers of the same key before giving up.
CAS_ATTEMPTS = 50
KEYS_PER_READ = 1000
# How long a run trusts its one read of which destinations hold uploads.
PREFETCH_SECONDS = 30.0


class JournalUnavailable(Exception):
    """The journal could not record an upload: it is not sent, the object fails (not
    permanently) and is delivered again later."""


@dataclass(frozen=True)
class Holder:
    """Who began an upload: the process that may still be sending its parts."""

    host: str  # where its pid means it: `process_space()`
    pid: int
    run_id: str = ""  # the Dagster run, when the upload is a run's

    @classmethod
    def this_process(cls, run_id: str = "") -> "Holder":
        return cls(process_space(), os.getpid(), run_id)


@dataclass(frozen=True)
class OpenUpload:
    """One open multipart upload, as journaled. No secret: whoever aborts it brings the
    destination's own credentials."""

    destination: str  # the export it belongs to: "<integration>/<event_type>"
    endpoint: str  # "" for AWS
    bucket: str
    key: str
    upload_id: str
    recorded_at: float  # seconds since the epoch
    holder: Holder = field(compare=False)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "OpenUpload":
        holder = data.get("holder") or {}
        return cls(
            destination=str(data["destination"]),
            endpoint=str(data.get("endpoint") or ""),
            bucket=str(data["bucket"]),
            key=str(data["key"]),
            upload_id=str(data["upload_id"]),
            recorded_at=float(data.get("recorded_at") or 0.0),
            holder=Holder(
                str(holder.get("host") or ""),
                int(holder.get("pid") or 0),
                str(holder.get("run_id") or ""),
            ),
        )


class UploadJournal(Protocol):
    """Where open uploads are recorded. `record` raises JournalUnavailable when it cannot;
    `forget` and `pending` may raise anything (their callers treat them as best effort)."""

    def record(
        self, destination: str, endpoint: str, bucket: str, key: str, upload_id: str
    ) -> OpenUpload:
        """Journal an upload just begun, before its first part; returns the entry."""
        ...

    def forget(self, upload: OpenUpload) -> None:
        """The upload is completed or aborted: drop its entry (no entry is no error)."""
        ...

    def pending(self, destination: str) -> list[OpenUpload]:
        """The uploads `destination` still has journaled, oldest first."""
        ...

    def abandoned(self, upload: OpenUpload) -> bool:
        """Whether nothing sends the upload's parts any more (its holder is gone): only then
        may anyone else abort it."""
        ...


def process_space() -> str:
    """Where a process id names one process: the host's name, its boot and the process-id
    namespace. Containers sharing a host name (host networking) have their own process ids:
    a pid seen from another namespace proves nothing."""
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as boot:
            booted = boot.read().strip()
    except OSError:
        return socket.gethostname()
    return f"{socket.gethostname()}/{booted}/{namespace}"


def process_gone(holder: Holder) -> bool | None:
    """Whether the holder's process is gone: True or False in the holder's own process
    space (`process_space`), None (cannot tell) elsewhere. A process id reused since reads as
    alive: the upload is then left to a later sweep, never aborted under a live writer."""
    if holder.host != process_space():
        return None
    if holder.pid == os.getpid():
        return False
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, another user's
    return False


def _encode(uploads: dict[str, OpenUpload]) -> str:
    entries = sorted(uploads.values(), key=lambda upload: (upload.recorded_at, upload.upload_id))
    return json.dumps(
        {"version": 1, "uploads": [upload.to_json() for upload in entries]},
        separators=(",", ":"),
        sort_keys=True,
    )


def _decode(text: str | None) -> dict[str, OpenUpload]:
    """The entries stored under one key; an unreadable value holds none (and is replaced
    by the next write)."""
    if not text:
        return {}
    try:
        found = [OpenUpload.from_json(item) for item in json.loads(text)["uploads"]]
    except (ValueError, KeyError, TypeError):
        return {}
    return {upload.upload_id: upload for upload in found}


class MemoryUploadJournal:
    """A journal in this process's memory: for tests, and for writers without an instance.
    It does not outlive the process. An upload is abandoned once `gone` says its holder is
    (by default: its process is gone on this host)."""

    def __init__(
        self,
        holder: Holder | None = None,
        gone: Callable[[Holder], bool] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.holder = holder or Holder.this_process()
        self._gone = gone or (lambda holder: process_gone(holder) is True)
        self._clock = clock
        self._lock = threading.Lock()
        self.entries: dict[str, dict[str, OpenUpload]] = {}

    def record(
        self, destination: str, endpoint: str, bucket: str, key: str, upload_id: str
    ) -> OpenUpload:
        upload = OpenUpload(
            destination, endpoint, bucket, key, upload_id, self._clock(), self.holder
        )
        with self._lock:
            self.entries.setdefault(destination, {})[upload_id] = upload
        return upload

    def forget(self, upload: OpenUpload) -> None:
        with self._lock:
            self.entries.get(upload.destination, {}).pop(upload.upload_id, None)

    def pending(self, destination: str) -> list[OpenUpload]:
        with self._lock:
            found = list(self.entries.get(destination, {}).values())
        return sorted(found, key=lambda upload: upload.recorded_at)

    def abandoned(self, upload: OpenUpload) -> bool:
        return self._gone(upload.holder)


class InstanceUploadJournal:
    """The journal in a Dagster instance's key-value store, one key per destination
    (`affise/upload-journal/<integration>/<event_type>`), updated by compare-and-swap on the
    run storage's own table where it is a SQL one (SQLite, Postgres, MySQL); another storage
    gets a plain read-then-write (two runs of one destination recording at the same instant
    could then lose an entry, left to the bucket's lifecycle rule).

    An upload is abandoned when its run is finished or unknown to the instance, or when its
    process is gone from this host (a run worker killed while its run still reads as
    started); without a run, only by its process. A holder on another host whose run is
    still in progress is alive: its upload waits for run monitoring to fail that run."""

    def __init__(self, instance: Any, run_id: str = "", clock: Callable[[], float] = time.time):
        self.instance = instance
        self.holder = Holder.this_process(run_id)
        self._clock = clock
        # This process's own writers queue here rather than race each other's swaps.
        self._lock = threading.Lock()
        self._idle: set[str] = set()  # held nothing at `prefetch`, not recorded to since
        self._prefetched: set[str] = set()
        self._read_at = 0.0

    @staticmethod
    def storage_key(destination: str) -> str:
        return KEY_PREFIX + destination

    def record(
        self, destination: str, endpoint: str, bucket: str, key: str, upload_id: str
    ) -> OpenUpload:
        upload = OpenUpload(
            destination, endpoint, bucket, key, upload_id, self._clock(), self.holder
        )
        self._idle.discard(destination)
        try:
            self._update(destination, lambda uploads: uploads | {upload_id: upload})
        except Exception as exc:
            # Never the storage's own text: it may quote a connection string.
            raise JournalUnavailable(
                f"the upload journal could not record the upload ({type(exc).__name__})"
            ) from None
        return upload

    def forget(self, upload: OpenUpload) -> None:
        self._update(
            upload.destination,
            lambda uploads: {k: v for k, v in uploads.items() if k != upload.upload_id},
        )

    def pending(self, destination: str) -> list[OpenUpload]:
        if destination in self._prefetched and self._clock() - self._read_at > PREFETCH_SECONDS:
            # A long run's snapshot is read again: a writer killed since may have left one.
            self.prefetch(self._prefetched)
        if destination in self._idle:
            return []
        key = self.storage_key(destination)
        with self._lock:
            text = stored_values(self.instance, {key}).get(key)
        return sorted(_decode(text).values(), key=lambda upload: upload.recorded_at)

    def prefetch(self, destinations: Iterable[str]) -> None:
        """Read at once which of `destinations` hold nothing: their `pending` then asks the
        storage nothing (a run's objects would otherwise cost a query, and on Postgres a
        connection, each). The snapshot is read again once it is PREFETCH_SECONDS old (a
        writer killed meanwhile may have left an upload); what this process records is read
        at once."""
        names = set(destinations)
        idle = names - self.holding(names)
        with self._lock:
            self._idle, self._prefetched, self._read_at = idle, names, self._clock()

    def holding(self, destinations: Iterable[str]) -> set[str]:
        """Which of `destinations` have journaled uploads: one read for all of them."""
        keys = {self.storage_key(name): name for name in destinations}
        names = sorted(keys)
        found: dict[str, str] = {}
        # In reads of a bounded number of keys: SQLite takes at most 32,766 parameters.
        for first in range(0, len(names), KEYS_PER_READ):
            with self._lock:
                found |= stored_values(self.instance, set(names[first : first + KEYS_PER_READ]))
        return {keys[key] for key, text in found.items() if key in keys and _decode(text)}

    def abandoned(self, upload: OpenUpload) -> bool:
        gone = process_gone(upload.holder)
        if gone:
            return True
        if not upload.holder.run_id:
            return False
        run = self.instance.get_run_by_id(upload.holder.run_id)
        return run is None or bool(run.is_finished)

    def _update(
        self,
        destination: str,
        change: Callable[[dict[str, OpenUpload]], dict[str, OpenUpload]],
    ) -> None:
        key = self.storage_key(destination)
        storage = sql_run_storage(self.instance)
        with self._lock:
            for _ in range(CAS_ATTEMPTS):
                text = stored_values(self.instance, {key}).get(key)
                before = _decode(text)
                after = change(before)
                if after == before:
                    return
                new = _encode(after)
                if storage is None:
                    store_values(self.instance, {key: new})
                    return
                if compare_and_set_key_value(storage, key, text, new):
                    return
        raise JournalUnavailable(f"the upload journal's key {key!r} kept changing under it")
