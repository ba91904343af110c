"""In-memory clients standing in for S3 in the object writer's fast tests, and `feed`, which
writes a writer its data in chunks."""

import base64
import hashlib
import threading
import time
from typing import IO, Any

from affise_s3_assets.s3 import MIB, S3ObjectWriter


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
