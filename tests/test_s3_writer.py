"""The object writer's own rules, with an in-memory client standing in for S3 (fast unit
tests; the real server's answers are in test_delivery, test_failures and test_security), and
an outage of the real server, through a proxy in front of it that refuses connections."""

import contextlib
import hashlib
import io
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import IO, Any

import botocore.exceptions
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from affise_s3_assets import s3
from affise_s3_assets.delivery.upload_journal import Holder, MemoryUploadJournal, OpenUpload
from affise_s3_assets.s3 import (
    MIB,
    TIMEOUT_CODES,
    ChunkReader,
    DeliveryTimeout,
    EndpointOutage,
    Journaling,
    S3Destination,
    S3ObjectWriter,
    describe_s3_error,
    error_code,
    is_permanent,
)
from tests.conftest import S3Server
from tests.memory_stores import AnsweringStore, SlowStore, feed


def test_every_request_carries_the_md5_of_its_own_body() -> None:
    store = SlowStore()
    data = bytes(range(256)) * (45 * 4096)  # 45 MiB: several parts
    writer = S3ObjectWriter(store, "b", "big", part_size=5 * MIB, memory_bytes=MIB)
    feed(writer, data)
    assert writer.close()[0] == len(data)
    single = S3ObjectWriter(store, "b", "small")
    single.write(b"a few rows\n")
    single.close()
    assert store.objects == {"big": data, "small": b"a few rows\n"}
    assert len(store.md5_ok) == writer.parts + 1 and all(store.md5_ok)
    assert writer.sha256 == hashlib.sha256(data).hexdigest()


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.binary(min_size=1, max_size=20), max_size=12),
    st.lists(
        st.tuples(
            st.integers(-40, 300),
            st.sampled_from([io.SEEK_SET, io.SEEK_CUR, io.SEEK_END]),
            st.one_of(st.none(), st.integers(-1, 60)),
            st.sampled_from(["read", "into"]),
        )
    ),
)
def test_a_part_read_from_its_chunks_reads_as_the_joined_bytes(
    chunks: list[bytes], steps: list[tuple[int, int, int | None, str]]
) -> None:
    """A part's body is its chunks, never joined: any seek and read (botocore hashes it,
    http.client sends it in blocks, a retry rewinds it) gives what the joined bytes would,
    and a seek before the start fails as it does for them."""
    body, joined = ChunkReader(chunks), io.BytesIO(b"".join(chunks))
    assert body.seek(0, io.SEEK_END) == joined.seek(0, io.SEEK_END)
    for offset, whence, size, how in steps:
        try:
            expected = joined.seek(offset, whence)
        except ValueError:
            with pytest.raises(ValueError):
                body.seek(offset, whence)
            continue
        assert body.seek(offset, whence) == expected
        if how == "read":
            assert body.read(size) == joined.read(size)
        else:
            mine, theirs = bytearray(max(size or 0, 0)), bytearray(max(size or 0, 0))
            assert body.readinto(mine) == joined.readinto(theirs) and mine == theirs
        assert body.tell() == joined.tell()
    body.seek(0)
    assert body.read() == b"".join(chunks)
    body.close()
    with pytest.raises(ValueError):
        body.read(1)


def test_a_slow_but_working_link_is_waited_for_not_failed() -> None:
    """The feed outruns the upload five times over. A writer spilling to a file lets the next
    part grow meanwhile; one keeping parts in memory waits once the next is four parts' worth
    (back-pressure). Either way the object arrives whole, although the upload takes longer
    than the bare deadline."""
    data = bytes(range(256)) * (40 * 4096)  # 40 MiB at 10 MiB/s: ~4 s, deadline 2 s + 1 s/MiB
    for memory in (MIB, None):
        store = SlowStore(mib_per_s=10)
        writer = S3ObjectWriter(store, "b", "k", part_size=5 * MIB, memory_bytes=memory, deadline=2)
        feed(writer, data)
        writer.close()
        assert store.objects["k"] == data
        if memory is None:
            assert max(len(part) for part in store.parts.values()) <= 4 * 5 * MIB + 256 * 1024


class CountingStore(SlowStore):
    """A slow link that keeps only how much each part held (large objects, little memory)."""

    def _take(self, body: bytes | IO[bytes], md5: str) -> bytes:
        size = len(body) if isinstance(body, bytes) else len(body.read())
        time.sleep(size / MIB / self.rate)
        return str(size).encode()

    def complete_multipart_upload(self, Key: str, MultipartUpload: Any, **_: Any) -> dict:
        numbers = [part["PartNumber"] for part in MultipartUpload["Parts"]]
        self.objects[Key] = str(sum(int(self.parts[n]) for n in numbers)).encode()
        return {"ETag": '"multi"'}


def test_parts_each_just_in_time_still_meet_the_objects_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each 8 MiB part answered just before its own deadline (120 s + 8 s): without one for
    the object, parts that slow would add up without end. The object's requests share 120 s
    plus 8 s per MiB, so it fails within a few parts. Time scaled 1:100."""
    monkeypatch.setattr("affise_s3_assets.s3.SECONDS_PER_MIB", 0.01)
    monkeypatch.setattr("affise_s3_assets.s3.OBJECT_SECONDS_PER_MIB", 0.08)
    store = CountingStore(mib_per_s=8 / 1.25)  # 1.25 s per 8 MiB part, under its own 1.28 s
    chunk = bytes(range(256)) * 4096  # 1 MiB, fed 48 times: six parts
    writer = S3ObjectWriter(store, "b", "k", part_size=8 * MIB, deadline=1.2)
    # Its own deadline (1.28 s: "1 s") was never reached: the object's was.
    with pytest.raises(DeliveryTimeout, match=r"\(1 s for it, \d s for the object's"):
        for _ in range(48):
            writer.write(chunk)
            time.sleep(0.17)  # a producer a little slower than the link: parts stay 8 MiB
        writer.close()
    assert "k" not in store.objects and len(store.parts) < 6


def test_a_link_slower_than_a_mib_per_second_still_delivers_a_large_object(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The object's deadline is a floor on its average rate (8 s per MiB), not a second
    request deadline: 160 MiB at 0.5 MiB/s (a large customer sharing a busy egress) gets
    through, where 1 s per MiB for the object would fail it after the upload. Time scaled
    1:1000."""
    monkeypatch.setattr("affise_s3_assets.s3.SECONDS_PER_MIB", 0.001)
    monkeypatch.setattr("affise_s3_assets.s3.OBJECT_SECONDS_PER_MIB", 0.008)
    store = CountingStore(mib_per_s=500)  # 2 ms per MiB: 0.5 MiB/s at scale
    chunk = bytes(range(256)) * 4096  # 1 MiB, fed 160 times
    writer = S3ObjectWriter(store, "b", "k", part_size=5 * MIB, memory_bytes=MIB, deadline=0.12)
    for _ in range(160):
        writer.write(chunk)
    writer.close()
    assert int(store.objects["k"]) == 160 * MIB


def test_time_spent_producing_the_object_is_not_the_endpoints() -> None:
    """The deadline is each request's own: a feed slower than the deadline (a large window,
    a thousand other objects to fill) fails nothing."""
    store = SlowStore()
    data = bytes(range(256)) * (12 * 4096)  # 12 MiB: a part goes up, then the rest at close
    writer = S3ObjectWriter(store, "b", "k", part_size=5 * MIB, deadline=0.5)
    feed(writer, data[: 6 * MIB])
    time.sleep(1.0)  # the producer is busy elsewhere, longer than the deadline
    feed(writer, data[6 * MIB :])
    writer.close()
    assert store.objects["k"] == data


class HungStore(SlowStore):
    """Takes the first part and never answers."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def upload_part(self, **_: Any) -> dict:
        self.release.wait()
        raise ConnectionError("gone")


def test_a_hung_endpoint_never_holds_the_feed() -> None:
    """The part going up never comes back: the feed goes on (a writer that waited for it
    would have raised at its deadline while being fed), and the object fails at close."""
    store = HungStore()
    writer = S3ObjectWriter(store, "b", "k", part_size=5 * MIB, memory_bytes=MIB, deadline=5)
    try:
        feed(writer, bytes(30 * MIB))
        assert writer.parts == 1  # the first part is still going up: the rest waits on disk
        writer._deadline = 0.1  # and now the endpoint has had its time
        with pytest.raises(DeliveryTimeout):
            writer.close()
    finally:
        store.release.set()
    writer.abort().result(timeout=5)


@pytest.mark.parametrize(
    ("size", "lie", "encryption", "intact"),
    [
        (100, "", "", True),
        (100, "single", "", False),
        (12 * MIB, "", "", True),
        (12 * MIB, "part 2", "", False),
        (12 * MIB, "whole", "", False),
        (100, "single", "aws:kms", None),
        (12 * MIB, "whole", "aws:kms", None),
    ],
    ids=[
        "PUT",
        "PUT, another ETag",
        "multipart",
        "a part's ETag another",
        "the object's ETag another",
        "SSE-KMS PUT",
        "SSE-KMS multipart",
    ],
)
def test_the_stores_answers_verify_the_object_or_say_they_cannot(
    size: int, lie: str, encryption: str, intact: bool | None
) -> None:
    """With no read-back: a single PUT's ETag must be the MD5 sent, each part's its own and
    the object's theirs; an SSE-KMS object's ETags are no MD5s, so they decide nothing."""
    store = AnsweringStore(lie, encryption)
    writer = S3ObjectWriter(store, "b", "k", part_size=5 * MIB, memory_bytes=MIB)
    feed(writer, bytes(range(256)) * (size // 256) + b"x" * (size % 256))
    writer.close()
    assert (writer.parts > 0) == (size > 5 * MIB)
    verification = writer.verification()
    assert verification.intact is intact, verification.how
    if lie and not encryption:
        assert "0" * 32 in verification.how


def test_a_destination_whose_etags_are_no_md5s_can_be_checked_by_content_md5_alone() -> None:
    """verify_etag: false (a store such as MinIO without S3 compatibility answers random
    ETags): the answers decide nothing, and say so, instead of failing every window. ETags
    in capitals are still MD5s."""
    store = AnsweringStore(lie="single")
    writer = S3ObjectWriter(store, "b", "k")
    writer.write(b"rows\n")
    writer.close()
    assert writer.verification().intact is False
    unchecked = writer.verification(etags=False)
    assert unchecked.intact is None and "verify_etag: false" in unchecked.how

    class Capitals(AnsweringStore):
        def _answer(self, etag: str, what: str) -> dict[str, Any]:
            return {"ETag": f'"{etag.upper()}"'}

    capitals = S3ObjectWriter(Capitals(), "b", "k")
    capitals.write(b"rows\n")
    capitals.close()
    assert capitals.verification().intact is True


# --- The upload journal, as the writer uses it -------------------------------------------------


class JournalWatchingStore(AnsweringStore):
    """Records, at each part, which upload ids the journal held: what a process killed at
    that moment would have left for the next writer to abort. Its uploads are numbered."""

    def __init__(self, journal: MemoryUploadJournal, destination: str) -> None:
        super().__init__()
        self.journal, self.destination = journal, destination
        self.journaled_at_part: list[list[str]] = []
        self.aborted: list[str] = []
        self.created = 0

    def create_multipart_upload(self, **_: Any) -> dict[str, Any]:
        self.created += 1
        return {"UploadId": f"u{self.created}"}

    def upload_part(self, PartNumber: int, Body: Any, ContentMD5: str, **kw: Any) -> dict:
        held = [upload.upload_id for upload in self.journal.pending(self.destination)]
        self.journaled_at_part.append(held)
        return super().upload_part(PartNumber=PartNumber, Body=Body, ContentMD5=ContentMD5)

    def abort_multipart_upload(self, UploadId: str, **_: Any) -> dict[str, Any]:
        self.aborted.append(UploadId)
        if UploadId.startswith("completed"):
            raise botocore.exceptions.ClientError(
                {"Error": {"Code": "NoSuchUpload"}}, "AbortMultipartUpload"
            )
        return {}


def test_an_upload_is_journaled_before_its_first_part_and_forgotten_once_complete() -> None:
    """A process killed at any part leaves the upload's id in the journal; once complete,
    nothing is left in it."""
    journal = MemoryUploadJournal()
    store = JournalWatchingStore(journal, "acme/clicks")
    writer = S3ObjectWriter(
        store, "b", "k", part_size=5 * MIB, journaling=Journaling(journal, "acme/clicks")
    )
    feed(writer, bytes(12 * MIB))
    writer.close()
    assert writer.parts >= 2 and store.journaled_at_part == [["u1"]] * writer.parts
    assert journal.pending("acme/clicks") == []
    assert writer.verification().intact is True


def test_an_aborted_upload_is_forgotten_and_one_whose_abort_fails_stays_journaled() -> None:
    """The abort is what makes the entry unneeded: a store that refuses it leaves the entry
    for the next writer of the key or a sweep."""
    journal = MemoryUploadJournal()
    store = JournalWatchingStore(journal, "acme/clicks")
    writer = S3ObjectWriter(
        store, "b", "k", part_size=5 * MIB, journaling=Journaling(journal, "acme/clicks")
    )
    feed(writer, bytes(6 * MIB))
    writer.abort().result(timeout=10)
    assert store.aborted == ["u1"] and journal.pending("acme/clicks") == []

    class RefusingAbort(JournalWatchingStore):
        def abort_multipart_upload(self, **_: Any) -> dict[str, Any]:
            raise botocore.exceptions.ClientError(
                {"Error": {"Code": "AccessDenied"}}, "AbortMultipartUpload"
            )

    refusing = RefusingAbort(journal, "acme/clicks")
    writer = S3ObjectWriter(
        refusing, "b", "k", part_size=5 * MIB, journaling=Journaling(journal, "acme/clicks")
    )
    feed(writer, bytes(6 * MIB))
    writer.abort().result(timeout=10)
    assert [upload.upload_id for upload in journal.pending("acme/clicks")] == ["u1"]


@pytest.mark.parametrize("size", [100, 6 * MIB], ids=["single PUT", "multipart"])
def test_the_next_writer_of_a_key_aborts_what_a_gone_writer_left_there_and_nothing_else(
    size: int,
) -> None:
    """Before its first request, a writer aborts the journaled uploads of its own key whose
    holder is gone (NoSuchUpload: one completed meanwhile, forgotten too). A live writer's
    upload of the same key, another key's and another destination's are left alone."""
    here = Holder.this_process()
    dead, live = Holder("host", 1), Holder("host", 2)
    journal = MemoryUploadJournal(holder=here, gone=lambda holder: holder == dead)
    for holder, destination, key, upload_id in [
        (dead, "acme/clicks", "k", "left-by-a-killed-run"),
        (dead, "acme/clicks", "k", "completed-before-the-kill"),
        (live, "acme/clicks", "k", "still-being-sent"),
        (dead, "acme/clicks", "other-key", "another-keys"),
        (dead, "other/clicks", "k", "another-destinations"),
    ]:
        upload = OpenUpload(destination, "", "b", key, upload_id, time.time(), holder)
        journal.entries.setdefault(destination, {})[upload_id] = upload
    store = JournalWatchingStore(journal, "acme/clicks")
    writer = S3ObjectWriter(
        store, "b", "k", part_size=5 * MIB, journaling=Journaling(journal, "acme/clicks")
    )
    feed(writer, bytes(size))
    writer.close()
    assert store.aborted == ["left-by-a-killed-run", "completed-before-the-kill"]
    assert writer.leftovers is not None
    assert (writer.leftovers.aborted, writer.leftovers.gone, writer.leftovers.held) == (1, 1, 1)
    left = {
        (u.key, u.upload_id) for d in ("acme/clicks", "other/clicks") for u in journal.pending(d)
    }
    assert left == {
        ("k", "still-being-sent"),
        ("other-key", "another-keys"),
        ("k", "another-destinations"),
    }


# --- Outages: connection errors ridden out, within the deadlines ------------------------------


class OutageStore(SlowStore):
    """Refuses `refusals` connections (as botocore reports them after its own attempts),
    then works; `error` is what each refusal raises."""

    def __init__(self, refusals: int, error: Exception | None = None) -> None:
        super().__init__()
        self.refusals, self.calls = refusals, 0
        self.error = error or botocore.exceptions.EndpointConnectionError(
            endpoint_url="http://store"
        )

    def upload_part(self, PartNumber: int, Body: Any, ContentMD5: str, **_: Any) -> dict:
        self.calls += 1
        if self.calls <= self.refusals:
            if not isinstance(Body, bytes):
                Body.read(1000)  # botocore had read some of it: a retry must rewind
            raise self.error
        return super().upload_part(PartNumber=PartNumber, Body=Body, ContentMD5=ContentMD5)


@pytest.fixture
def quick_outages(monkeypatch: pytest.MonkeyPatch) -> None:
    """Outage waits scaled 1:100: 10 ms, 20 ms, ... at most 150 ms apart."""
    monkeypatch.setattr(s3, "OUTAGE_FIRST_WAIT_SECONDS", 0.01)
    monkeypatch.setattr(s3, "OUTAGE_MAX_WAIT_SECONDS", 0.15)


@pytest.mark.parametrize(
    "error",
    [
        botocore.exceptions.EndpointConnectionError(endpoint_url="http://store"),
        botocore.exceptions.ConnectionClosedError(endpoint_url="http://store"),
        botocore.exceptions.ConnectTimeoutError(endpoint_url="http://store"),
    ],
    ids=["refused", "reset", "connect timeout"],
)
def test_connection_errors_are_ridden_out_and_the_object_lands_whole(
    quick_outages: None, error: Exception
) -> None:
    """Five refusals in a row (botocore's own five attempts each) cost the object nothing:
    each part's body, from memory or from its file, is sent again whole."""
    data = bytes(range(256)) * (12 * 4096)
    for memory in (MIB, None):
        store = OutageStore(refusals=5, error=error)
        writer = S3ObjectWriter(
            store, "b", "k", part_size=5 * MIB, memory_bytes=memory, outage_seconds=0.6
        )
        feed(writer, data)
        writer.close()
        assert store.objects["k"] == data and all(store.md5_ok)
        assert store.calls == 5 + writer.parts


def test_an_outage_longer_than_its_ride_fails_the_object_as_an_outage(quick_outages: None) -> None:
    """Past `outage_seconds` the object fails, not permanently, with a code that stops its
    destination for the rest of the run (it took a request's whole time) and a message
    naming the endpoint only. Without `outage_seconds` (a connection check) the first
    refusal fails it."""
    store = OutageStore(refusals=10**6)
    writer = S3ObjectWriter(store, "b", "k", part_size=5 * MIB, outage_seconds=0.3)
    with pytest.raises(EndpointOutage) as failed:
        feed(writer, bytes(6 * MIB))
        writer.close()
    assert store.calls > 2
    assert error_code(failed.value) in TIMEOUT_CODES and not is_permanent(failed.value)
    assert describe_s3_error(failed.value).startswith("cannot connect to endpoint http://store (")
    assert isinstance(failed.value, botocore.exceptions.EndpointConnectionError)
    quick = OutageStore(refusals=10**6)
    writer = S3ObjectWriter(quick, "b", "k", part_size=5 * MIB)
    with pytest.raises(botocore.exceptions.EndpointConnectionError) as refused:
        feed(writer, bytes(6 * MIB))
        writer.close()
    assert quick.calls == 1 and not isinstance(refused.value, EndpointOutage)


@pytest.mark.parametrize(
    "error",
    [
        botocore.exceptions.ClientError({"Error": {"Code": "AccessDenied"}}, "UploadPart"),
        botocore.exceptions.ClientError({"Error": {"Code": "InternalError"}}, "UploadPart"),
        botocore.exceptions.ReadTimeoutError(endpoint_url="http://store"),
        botocore.exceptions.SSLError(endpoint_url="http://store", error="bad certificate"),
    ],
    ids=["4xx", "5xx after botocore's retries", "read timeout", "TLS"],
)
def test_only_connection_errors_are_ridden_out(quick_outages: None, error: Exception) -> None:
    """An answer (4xx, or a 5xx botocore already retried), a silent endpoint (its deadlines
    bound it) or a certificate refused is no outage: the object fails at the first."""
    store = OutageStore(refusals=10**6, error=error)
    writer = S3ObjectWriter(store, "b", "k", part_size=5 * MIB, outage_seconds=60)
    with pytest.raises(type(error)):
        feed(writer, bytes(6 * MIB))
        writer.close()
    assert store.calls == 1


def test_an_outage_is_ridden_out_only_within_the_requests_deadline(quick_outages: None) -> None:
    """A request's deadline bounds its outage too: with 0.2 s left, an outage allowed a
    minute fails the object within that deadline, as an outage."""
    store = OutageStore(refusals=10**6)
    writer = S3ObjectWriter(store, "b", "k", part_size=5 * MIB, deadline=0.2, outage_seconds=60)
    with pytest.raises(EndpointOutage):
        feed(writer, bytes(6 * MIB))
        writer.close()


def test_an_abort_stops_a_request_waiting_out_an_outage(monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed window aborts its objects: a part waiting a minute for the endpoint to come
    back stops waiting at once, and the upload is aborted."""
    monkeypatch.setattr(s3, "OUTAGE_FIRST_WAIT_SECONDS", 3600.0)
    store = OutageStore(refusals=10**6)
    writer = S3ObjectWriter(store, "b", "k", part_size=5 * MIB, outage_seconds=7200)
    feed(writer, bytes(6 * MIB))
    assert writer._in_flight is not None
    _poll(lambda: store.calls >= 1, "the part's first try")
    writer.abort().result(timeout=30)  # a deadline for the test, not a measurement
    assert writer._in_flight.done()
    with pytest.raises(botocore.exceptions.EndpointConnectionError):
        writer._in_flight.result()


def _poll(condition: Any, what: str, timeout: float = 60.0) -> Any:
    """`condition()` once truthy, checked every 50 ms; fails the test after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.05)
    pytest.fail(f"not within {timeout:.0f} s: {what}")


class OutageProxy:
    """A TCP proxy to the real S3 server on a port of its own. `outage(seconds)` cuts every
    connection it carries and stops listening (new connections are refused), then listens on
    the same port again after `seconds`: a store restarting, as the client sees it."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream = (host, int(port))
        self.listener = self._listen(0)
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.lock = threading.Lock()
        self.open: list[socket.socket] = []
        self.accepted = 0
        self.closed = threading.Event()
        self.back = threading.Event()
        self.back.set()
        threading.Thread(target=self._accept, daemon=True).start()

    @staticmethod
    def _listen(port: int) -> socket.socket:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(64)
        listener.settimeout(0.1)
        return listener

    def _accept(self) -> None:
        while not self.closed.is_set():
            self.back.wait()
            with self.lock:
                listener = self.listener
            try:
                client, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            upstream = socket.create_connection(self.upstream)
            with self.lock:
                self.accepted += 1
                self.open += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def outage(self, seconds: float) -> None:
        with self.lock:
            self.back.clear()
            self.listener.close()
            for connection in self.open:
                # Reset, not a graceful close: what a dying server's connections do.
                connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                )
                connection.close()
            self.open.clear()

        def come_back() -> None:
            if not self.closed.wait(seconds):
                with self.lock:
                    self.listener = self._listen(self.port)
                self.back.set()

        threading.Thread(target=come_back, daemon=True).start()

    def close(self) -> None:
        self.closed.set()
        self.back.set()
        with self.lock:
            self.listener.close()
            for connection in self.open:
                connection.close()


@pytest.fixture
def proxy(s3_server: S3Server) -> Iterator[OutageProxy]:
    proxy = OutageProxy(s3_server.endpoint_url)
    try:
        yield proxy
    finally:
        proxy.close()


def test_a_five_second_outage_of_the_store_mid_object_costs_a_delay_not_the_object(
    s3_server: S3Server, bucket: str, proxy: OutageProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store goes away for 5 s after an object's first part (its connections reset, new
    ones refused). A delivery's writer (the production client, OUTAGE_SECONDS) rides it out
    and its object lands whole, as the bucket's owner reads it back; a writer that does not
    ride outages, started in the same outage, fails at once: botocore's own five attempts
    are over in well under a second."""
    monkeypatch.setenv("OUTAGE_KEY_ID", s3_server.customer.access_key)
    monkeypatch.setenv("OUTAGE_SECRET", s3_server.customer.secret_key)
    destination = S3Destination(
        "outage",
        "clicks",
        bucket,
        "us-east-1",
        "d",
        "${OUTAGE_KEY_ID}",
        "${OUTAGE_SECRET}",
        proxy.url,
    )
    client = s3.s3_client(destination)
    data = os.urandom(12 * MIB)
    writer = S3ObjectWriter(
        client, bucket, "d/k.csv.gz", part_size=5 * MIB, outage_seconds=s3.OUTAGE_SECONDS
    )
    feed(writer, data[: 6 * MIB])  # the first part goes up
    assert writer._in_flight is not None
    writer._in_flight.result(timeout=60)
    accepted_before = proxy.accepted
    proxy.outage(5.0)
    unridden = S3ObjectWriter(client, bucket, "d/other.csv.gz")
    unridden.write(b"a few rows\n")
    with pytest.raises(botocore.exceptions.EndpointConnectionError):
        unridden.close()
    assert not proxy.back.is_set()  # that writer failed inside the outage
    feed(writer, data[6 * MIB :])
    writer.close()
    assert proxy.accepted > accepted_before  # its parts went on over new connections
    owner = s3_server.client()
    assert owner.get_object(Bucket=bucket, Key="d/k.csv.gz")["Body"].read() == data
    assert writer.parts == 3
    listed = owner.list_objects_v2(Bucket=bucket).get("Contents", [])
    assert [item["Key"] for item in listed] == ["d/k.csv.gz"]
