"""Server-side encryption with the customer's choice (issue 19, point 2), on the real S3 server:
`sse: aws:kms` with `kms_key_id` (RGW's `testing` KMS backend holds the static keys
scripts/s3-server.sh gives it) and `sse: AES256` ride on every PutObject and
CreateMultipartUpload; an SSE-KMS object's ETag is no MD5, so it is verified by Content-MD5."""

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from affise_s3_assets import s3
from affise_s3_assets.config.apply import apply_integrations
from affise_s3_assets.config.schema import IntegrationConfig
from affise_s3_assets.config.targets import build_export_targets
from tests.delivered import (
    deliver,
    delivered_rows,
    export_asset,
    fetch,
    hex_clicks_db,
    integration,
    source_rows,
)
from tests.etag_rewriting_proxy import etag_rewriting_proxy
from tests.window_rig import START, WINDOW

KMS_KEY = "affise-test-key"  # one of the keys scripts/s3-server.sh gives RGW's testing backend
KMS = f"      sse: aws:kms\n      kms_key_id: {KMS_KEY}\n"
AES = "      sse: AES256\n"
KEY = "kms/2026/11/25/2026-11-25 10:00:00.csv.gz"


class Sent(list[tuple[str, dict[str, str]]]):
    """Each request the rig's integration sends, (operation, headers), recorded through its
    own client's events once `attach` is called (after the rig is configured)."""

    def __init__(self, rig: Any) -> None:
        super().__init__()
        self.rig = rig

    def attach_to(self, config: IntegrationConfig) -> None:
        (target,) = build_export_targets([config])
        events = s3.s3_client(target.destination).meta.events
        # One client per destination and encryption: attached once, whoever attaches.
        events.register("before-send.s3", self.record, unique_id="test-sse-sent")

    def record(self, request: Any, event_name: str, **_: Any) -> None:
        headers = {
            name.lower(): value.decode() if isinstance(value, bytes) else value
            for name, value in request.headers.items()
        }
        self.append((event_name.rsplit(".", 1)[-1], headers))

    def attach(self) -> None:
        self.attach_to(apply_integrations(self.rig.path.read_text()).integrations[0])


@pytest.fixture
def sent(rig: Any) -> Iterator[Sent]:
    # Clients are kept for the process: this test's get its recorder, and keep it to itself.
    s3._cached_client.cache_clear()
    yield Sent(rig)
    s3._cached_client.cache_clear()


def creating(requests: list[tuple[str, dict[str, str]]]) -> list[tuple[str, dict[str, str]]]:
    return [
        (op, headers) for op, headers in requests if op in ("PutObject", "CreateMultipartUpload")
    ]


def materialization(rig: Any, name: str = "acme") -> dict[str, Any]:
    key = dg.AssetKey(["affise", name, "clicks"])
    (record,) = rig.instance.fetch_materializations(key, limit=1).records
    return {k: v.value for k, v in record.asset_materialization.metadata.items()}


def test_kms_objects_carry_the_customers_key_and_read_back_whole(
    rig: Any, events_db: Path, sent: Sent
) -> None:
    rig.configure(
        [("acme", "2026-11-24 00:00:00", rig.clicks("kms", KMS + "      manifest: true\n"))]
    )
    sent.attach()
    assert rig.run().success
    (manifest,) = [key for key in rig.objects() if key.endswith(".manifest.json")]
    assert rig.objects() == sorted([KEY, manifest])
    client = rig.s3.client()
    for key in rig.objects():
        head = client.head_object(Bucket=rig.bucket, Key=key)
        assert (head["ServerSideEncryption"], head["SSEKMSKeyId"]) == ("aws:kms", KMS_KEY)
    expected = source_rows(events_db, "clicks", START, START + timedelta(hours=1))
    assert delivered_rows(fetch(rig.s3, rig.bucket, KEY)) == expected
    made = creating(sent)
    assert [op for op, _ in made] == ["PutObject", "PutObject"]  # the data, its manifest
    for _, headers in made:
        assert headers["x-amz-server-side-encryption"] == "aws:kms"
        assert headers["x-amz-server-side-encryption-aws-kms-key-id"] == KMS_KEY
    assert materialization(rig)["verified_by"] == "content-md5 only"


def big_delivery(rig: Any, tmp_path: Path, sent: Sent, extra: str) -> Path:
    """A window of several 5 MiB parts, delivered with `extra` in the export's block."""
    big = hex_clicks_db(tmp_path / "hex.duckdb", 120_000)
    config = integration(rig.s3, rig.bucket, frequency=60, directory="big", extra=extra)
    sent.attach_to(config)
    delivered = deliver(export_asset(config), WINDOW, big, part_size_mib=5)
    ((_, done),) = delivered.all_materializations()
    assert done.metadata["multipart_parts"].value > 1
    return big


def test_a_multipart_kms_object_asks_for_the_key_when_created(
    rig: Any, tmp_path: Path, sent: Sent
) -> None:
    big = big_delivery(rig, tmp_path, sent, KMS)
    ((op, headers),) = creating(sent)
    assert op == "CreateMultipartUpload"
    assert headers["x-amz-server-side-encryption"] == "aws:kms"
    assert headers["x-amz-server-side-encryption-aws-kms-key-id"] == KMS_KEY
    (key,) = rig.objects()
    head = rig.s3.client().head_object(Bucket=rig.bucket, Key=key)
    assert (head["ServerSideEncryption"], head["SSEKMSKeyId"]) == ("aws:kms", KMS_KEY)
    expected = source_rows(big, "clicks", START, START + timedelta(hours=1))
    assert delivered_rows(fetch(rig.s3, rig.bucket, key)) == expected


def test_a_bucket_refusing_unencrypted_puts_accepts_ours(rig: Any) -> None:
    """The customer's policy denies s3:PutObject without `x-amz-server-side-encryption:
    aws:kms`. Only single PUTs are proven here: RGW evaluates such a policy on UploadPart too
    (which carries no encryption header, on AWS as here), so a multipart upload cannot pass it
    on RGW, while AWS applies the condition to the upload's creation."""
    deny = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "DenyUnencrypted",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "s3:PutObject",
                "Resource": f"arn:aws:s3:::{rig.bucket}/*",
                "Condition": {"StringNotEquals": {"s3:x-amz-server-side-encryption": "aws:kms"}},
            },
            {
                "Sid": "DenyWithoutEncryption",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "s3:PutObject",
                "Resource": f"arn:aws:s3:::{rig.bucket}/*",
                "Condition": {"Null": {"s3:x-amz-server-side-encryption": "true"}},
            },
        ],
    }
    rig.s3.client().put_bucket_policy(Bucket=rig.bucket, Policy=json.dumps(deny))
    rig.configure([("acme", "2026-11-24 00:00:00", rig.clicks("plain"))])
    refused = rig.run()
    assert not refused.success and rig.objects() == []
    rig.configure(
        [("acme", "2026-11-24 00:00:00", rig.clicks("kms", KMS + "      manifest: true\n"))]
    )
    assert rig.run().success
    assert KEY in rig.objects() and len(rig.objects()) == 2  # the data, its manifest


def test_aes256_is_asked_for_on_every_object_created(rig: Any, tmp_path: Path, sent: Sent) -> None:
    """RGW accepts `AES256` and stores the object as it is (no key is configured for it): the
    request headers are the proof."""
    big_delivery(rig, tmp_path, sent, AES)
    block = rig.clicks("aes", AES + "      manifest: true\n")
    rig.configure([("acme", "2026-11-24 00:00:00", block)])
    sent.attach()
    assert rig.run().success
    made = creating(sent)
    assert [op for op, _ in made] == ["CreateMultipartUpload", "PutObject", "PutObject"]
    for _, headers in made:
        assert headers["x-amz-server-side-encryption"] == "AES256"
        assert "x-amz-server-side-encryption-aws-kms-key-id" not in headers
    # The parts carry none: S3 refuses SSE headers on UploadPart but for SSE-C.
    parts = [headers for op, headers in sent if op == "UploadPart"]
    assert len(parts) > 1
    assert all("x-amz-server-side-encryption" not in headers for headers in parts)


def test_a_kms_objects_etag_is_not_taken_for_an_md5(rig: Any) -> None:
    """An answer whose ETag is not the MD5 sent fails an unencrypted object
    (tests/test_security.py); for an SSE-KMS object it is no MD5, so S3's Content-MD5 check
    of each body vouches for it and the window is delivered."""
    with etag_rewriting_proxy(rig.s3.endpoint_url) as (proxy, _):
        block = rig.clicks("kms", KMS).replace(rig.s3.endpoint_url, proxy)
        rig.configure([("acme", "2026-11-24 00:00:00", block)])
        assert rig.run().success
    metadata = materialization(rig)
    assert metadata["verified_by"] == "content-md5 only"
    assert "aws:kms" in metadata["verified"]
    assert rig.objects() == [KEY]


def test_a_kms_writer_does_not_take_the_etag_for_an_md5_even_unannounced() -> None:
    """The writer knows what it asked for: a store whose answer leaves out how it encrypted
    the object still has its KMS ETag left unchecked."""

    class Client:
        def put_object(self, **_: Any) -> dict[str, Any]:
            return {"ETag": '"' + "0" * 32 + '"'}

    client = Client()
    s3._client_encryption[client] = "aws:kms"
    writer = s3.S3ObjectWriter(client, "b", "k")
    writer.write(b"rows")
    writer.close()
    assert writer.verification().intact is None
    plain = s3.S3ObjectWriter(Client(), "b", "k")
    plain.write(b"rows")
    plain.close()
    assert plain.verification().intact is False
