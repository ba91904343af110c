"""The object writer's own rules, with an in-memory client standing in for S3 (fast unit
tests; the real server's answers are in test_delivery, test_failures and test_security)."""

import base64
import hashlib
import threading
import time
from typing import IO, Any

import pytest

from affise_s3_assets.s3 import MIB, DeliveryTimeout, S3ObjectWriter


class SlowStore:
    """Accepts everything at `mib_per_s`; records each request's body and Content-MD5."""

    def __init__(self, mib_per_s: float = 1000.0) -> None:
        self.rate = mib_per_s
        self.parts: dict[int, bytes] = {}
        self.md5_ok: list[bool] = []
        self.objects: dict[str, bytes] = {}
        self.lock = threading.Lock()

    def _take(self, body: bytes | IO[bytes], md5: str) -> bytes:
        data = body if isinstance(body, bytes) else body.read()
        time.sleep(len(data) / MIB / self.rate)
        with self.lock:
            self.md5_ok.append(base64.b64encode(hashlib.md5(data).digest()).decode() == md5)
        return data

    def put_object(self, Key: str, Body: Any, ContentMD5: str, **_: Any) -> dict[str, Any]:
        self.objects[Key] = self._take(Body, ContentMD5)
        return {"ETag": '"single"'}

    def create_multipart_upload(self, **_: Any) -> dict[str, Any]:
        return {"UploadId": "u1"}

    def upload_part(self, PartNumber: int, Body: Any, ContentMD5: str, **_: Any) -> dict:
        self.parts[PartNumber] = self._take(Body, ContentMD5)
        return {"ETag": f'"p{PartNumber}"'}

    def complete_multipart_upload(self, Key: str, MultipartUpload: Any, **_: Any) -> dict:
        numbers = [part["PartNumber"] for part in MultipartUpload["Parts"]]
        self.objects[Key] = b"".join(self.parts[n] for n in numbers)
        return {"ETag": '"multi-2"'}

    def abort_multipart_upload(self, **_: Any) -> dict[str, Any]:
        return {}


def feed(writer: S3ObjectWriter, data: bytes, chunk: int = 256 * 1024) -> None:
    for offset in range(0, len(data), chunk):
        writer.write(data[offset : offset + chunk])


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


class AnsweringStore(SlowStore):
    """Answers each request with an ETag as S3 computes it (the MD5 of the body; for a
    multipart object the MD5 of the parts' MD5s and their count), or as `lie` says, and with
    the encryption it claims."""

    def __init__(self, lie: str = "", encryption: str = "") -> None:
        super().__init__()
        self.lie, self.encryption = lie, encryption

    def _answer(self, etag: str, what: str) -> dict[str, Any]:
        if self.lie == what:
            etag = "0" * 32
        answer: dict[str, Any] = {"ETag": f'"{etag}"'}
        if self.encryption:
            answer["ServerSideEncryption"] = self.encryption
        return answer

    def put_object(self, Key: str, Body: Any, ContentMD5: str, **_: Any) -> dict[str, Any]:
        super().put_object(Key=Key, Body=Body, ContentMD5=ContentMD5)
        return self._answer(hashlib.md5(self.objects[Key]).hexdigest(), "single")

    def create_multipart_upload(self, **_: Any) -> dict[str, Any]:
        return {"UploadId": "u1", **self._answer("", "")}

    def upload_part(self, PartNumber: int, Body: Any, ContentMD5: str, **_: Any) -> dict:
        super().upload_part(PartNumber=PartNumber, Body=Body, ContentMD5=ContentMD5)
        return self._answer(hashlib.md5(self.parts[PartNumber]).hexdigest(), f"part {PartNumber}")

    def complete_multipart_upload(self, Key: str, MultipartUpload: Any, **_: Any) -> dict:
        super().complete_multipart_upload(Key=Key, MultipartUpload=MultipartUpload)
        numbers = [part["PartNumber"] for part in MultipartUpload["Parts"]]
        digests = b"".join(hashlib.md5(self.parts[n]).digest() for n in numbers)
        return self._answer(f"{hashlib.md5(digests).hexdigest()}-{len(numbers)}", "whole")


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
