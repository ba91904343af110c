"""What a delivery reads and says: its destination from its block alone, never the ambient
AWS environment, and no credential in any error, against the real S3 server."""

import base64
import contextlib
import hashlib
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest

from affise_s3_assets import s3
from affise_s3_assets.config.targets import build_export_targets
from affise_s3_assets.s3 import describe_s3_error
from tests.conftest import S3Server
from tests.delivered import (
    KEY,
    deliver,
    delivered_rows,
    export_asset,
    failure_message,
    fetch,
    grant_only_delivery,
    hex_clicks_db,
    integration,
    key_of,
    keys_in,
    source_rows,
)
from tests.stalling_endpoint import stalling_endpoint


@contextlib.contextmanager
def hostile_aws_environment(tmp_path: Path) -> Iterator[None]:
    """Everything botocore would read on its own, pointed somewhere else. (The tests' own
    client, which reads back what was delivered, is a plain boto3 one: used outside.)"""
    config = tmp_path / "aws-config"
    config.write_text(
        "[default]\nendpoint_url = http://127.0.0.1:9\nregion = ap-south-1\n"
        "[profile other]\nendpoint_url = http://127.0.0.1:8\n"
        "s3 =\n  addressing_style = virtual\n  use_dualstack_endpoint = true\n"
    )
    with pytest.MonkeyPatch.context() as patch:
        for name, value in {
            "AWS_ENDPOINT_URL": "http://127.0.0.1:7",
            "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:6",
            "AWS_CONFIG_FILE": str(config),
            "AWS_SHARED_CREDENTIALS_FILE": str(config),
            "AWS_PROFILE": "other",
            "AWS_DEFAULT_REGION": "ap-south-1",
            "AWS_USE_DUALSTACK_ENDPOINT": "true",
            "AWS_CA_BUNDLE": str(tmp_path / "no-such-bundle.pem"),
            "REQUESTS_CA_BUNDLE": str(tmp_path / "no-such-bundle.pem"),
            "AWS_MAX_ATTEMPTS": "1",
            # A module imported into every client, and a header added to every request.
            "BOTOCORE_EXPERIMENTAL__PLUGINS": "hostile=affise_hostile_plugin",
            "AWS_LAMBDA_FUNCTION_NAME": "hostile",
            "_X_AMZN_TRACE_ID": "Root=1-hostile",
        }.items():
            patch.setenv(name, value)
        # The process's one session and its clients were made before: made again here.
        loaded = tmp_path / "plugin-loaded"
        (tmp_path / "affise_hostile_plugin.py").write_text(
            f"def initialize_client_plugin(client):\n    open({str(loaded)!r}, 'w').close()\n"
        )
        patch.syspath_prepend(str(tmp_path))
        patch.setattr(s3, "_session", None)
        s3._cached_client.cache_clear()
        try:
            yield
            assert not loaded.exists(), "a plugin named by the environment was loaded"
        finally:
            s3._cached_client.cache_clear()


def test_an_integration_shown_as_aws_goes_to_aws_whatever_the_environment_says(
    tmp_path: Path,
) -> None:
    with hostile_aws_environment(tmp_path):
        client = s3._cached_client("eu-west-1", None, "AKIDEXAMPLE", "secret")
    assert client.meta.endpoint_url == "https://s3.eu-west-1.amazonaws.com"
    assert client.meta.region_name == "eu-west-1"
    assert client.meta.config.s3 == {"addressing_style": "auto"}
    assert client.meta.config.retries["total_max_attempts"] == s3.MAX_ATTEMPTS
    # The bundled CA store: botocore keeps the choice on its HTTP session only.
    assert client._endpoint.http_session._verify is True
    # No service model or endpoint rules from ~/.aws/models, only the installed packages'.
    session = s3.isolated_botocore_session()
    assert not any(".aws" in path for path in session.get_component("data_loader").search_paths)


def test_delivery_uses_its_blocks_endpoint_under_a_hostile_environment(
    s3_server: S3Server,
    bucket: str,
    customer_env: dict[str, str],
    events_db: Path,
    tmp_path: Path,
) -> None:
    acme = integration(s3_server, bucket, frequency=60)
    sent: list[dict[str, str]] = []
    with hostile_aws_environment(tmp_path):
        client = s3.s3_client(build_export_targets((acme,))[0].destination)
        client.meta.events.register(
            "before-send.s3", lambda request, **_: sent.append(dict(request.headers))
        )
        result = deliver(export_asset(acme), "2026-11-25-10:00", events_db)
    assert len(result.materializations(key_of(acme))) == 1
    assert keys_in(s3_server, bucket) == [KEY]
    assert sent and not any("X-Amzn-Trace-Id" in headers for headers in sent)


@pytest.mark.parametrize("variable", ["ACME_AWS_ACCESS_KEY_ID", "ACME_AWS_SECRET_ACCESS_KEY"])
def test_a_credential_with_a_trailing_newline_is_refused_by_its_variables_name(
    s3_server: S3Server,
    bucket: str,
    customer_env: dict[str, str],
    events_db: Path,
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
) -> None:
    monkeypatch.setenv(variable, customer_env[variable] + "\n")
    asset = export_asset(integration(s3_server, bucket, frequency=60))
    result = deliver(asset, "2026-11-25-10:00", events_db, raise_on_error=False)
    message = failure_message(result)
    assert f"environment variable {variable} holds whitespace or control characters" in message
    everything = message + "".join(repr(event) for event in result.all_events)
    for value in customer_env.values():
        assert value not in everything
    assert "Signature=" not in everything and "Credential=" not in everything
    assert keys_in(s3_server, bucket) == []


def test_an_unexpected_errors_text_never_carries_request_headers() -> None:
    refused = ValueError(
        "Invalid header value b'AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE\\n/20261201/us-east-1/"
        "s3/aws4_request, SignedHeaders=host, Signature=0123abcd'"
    )
    text = describe_s3_error(refused)
    assert text == "ValueError: Invalid header value b'[request headers withheld]"
    assert "AKIDEXAMPLE" not in text


@pytest.mark.parametrize("rows", [300, 120_000], ids=["single PUT", "multipart"])
def test_delivery_works_under_the_published_least_privilege_policy(
    s3_server: S3Server, bucket: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, rows: int
) -> None:
    """Another account delivers with only s3:PutObject and s3:AbortMultipartUpload: no
    read-back (S3 checks each body's Content-MD5), and with `acl: bucket-owner-full-control`
    the bucket's owner reads what was delivered, every row."""
    grant_only_delivery(s3_server, bucket)
    monkeypatch.setenv("ACME_AWS_ACCESS_KEY_ID", s3_server.intruder.access_key)
    monkeypatch.setenv("ACME_AWS_SECRET_ACCESS_KEY", s3_server.intruder.secret_key)
    db = hex_clicks_db(tmp_path / "events.duckdb", rows)
    acme = integration(
        s3_server, bucket, frequency=60, extra="      acl: bucket-owner-full-control\n"
    )
    denied = s3_server.client(s3_server.intruder)
    with pytest.raises(botocore.exceptions.ClientError):  # the policy holds: no read
        denied.list_objects_v2(Bucket=bucket)
    result = deliver(export_asset(acme), "2026-11-25-10:00", db, part_size_mib=5)
    ((_, materialization),) = result.all_materializations()
    (key,) = keys_in(s3_server, bucket)  # read by the bucket's owner
    with pytest.raises(botocore.exceptions.ClientError):
        denied.head_object(Bucket=bucket, Key=key)
    data = fetch(s3_server, bucket, key)
    assert materialization.metadata["sha256"].value == hashlib.sha256(data).hexdigest()
    assert materialization.metadata["object_bytes"].value == len(data)
    assert (materialization.metadata["multipart_parts"].value >= 2) == (rows > 1000)
    # Verified from the store's answers alone: the policy allows no read.
    verified = materialization.metadata["verified"].value
    if rows > 1000:
        assert verified.startswith("each of the") and "parts' ETags is its MD5" in verified
    else:
        assert verified == "the store's ETag is the MD5 of the bytes sent"
    _, delivered = delivered_rows(data)
    start, end = datetime(2026, 11, 25, 10), datetime(2026, 11, 25, 11)
    assert delivered == source_rows(db, "clicks", start, end)[1]


def test_a_redelivery_under_the_least_privilege_policy_delivers_and_says_it_could_not_list(
    s3_server: S3Server, bucket: str, monkeypatch: pytest.MonkeyPatch, events_db: Path
) -> None:
    """A re-delivery looks for uploads an earlier attempt left open, which takes the optional
    s3:ListBucketMultipartUploads: denied, it still delivers, and the metadata says so."""
    grant_only_delivery(s3_server, bucket)
    monkeypatch.setenv("ACME_AWS_ACCESS_KEY_ID", s3_server.intruder.access_key)
    monkeypatch.setenv("ACME_AWS_SECRET_ACCESS_KEY", s3_server.intruder.secret_key)
    acme = integration(
        s3_server, bucket, frequency=60, extra="      acl: bucket-owner-full-control\n"
    )
    first = deliver(export_asset(acme), "2026-11-25-10:00", events_db)
    ((_, delivered),) = first.all_materializations()
    again = deliver(
        export_asset(acme), "2026-11-25-10:00", events_db, tags={"affise/redelivery": "1"}
    )
    ((_, redelivered),) = again.all_materializations()
    assert redelivered.metadata["leftover_uploads_aborted"].value == "not allowed to list"
    assert redelivered.metadata["sha256"].value == delivered.metadata["sha256"].value
    assert keys_in(s3_server, bucket) == [KEY]
    data = fetch(s3_server, bucket, KEY)  # read by the bucket's owner
    assert hashlib.sha256(data).hexdigest() == redelivered.metadata["sha256"].value


def test_without_the_acl_option_the_owner_of_an_acl_bucket_cannot_read_what_another_account_wrote(
    s3_server: S3Server, bucket: str, monkeypatch: pytest.MonkeyPatch, events_db: Path
) -> None:
    """Why `acl: bucket-owner-full-control` exists: the same delivery without it lands, and the
    bucket's owner is refused the object."""
    grant_only_delivery(s3_server, bucket)
    monkeypatch.setenv("ACME_AWS_ACCESS_KEY_ID", s3_server.intruder.access_key)
    monkeypatch.setenv("ACME_AWS_SECRET_ACCESS_KEY", s3_server.intruder.secret_key)
    acme = integration(s3_server, bucket, frequency=60)
    result = deliver(export_asset(acme), "2026-11-25-10:00", events_db)
    assert len(result.materializations(key_of(acme))) == 1
    assert keys_in(s3_server, bucket) == [KEY]
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        fetch(s3_server, bucket, KEY)
    assert refused.value.response["Error"]["Code"] == "AccessDenied"


def test_a_body_changed_on_the_way_is_refused_by_s3_and_fails_its_window(
    s3_server: S3Server, bucket: str, customer_env: dict[str, str], events_db: Path
) -> None:
    """Each request carries its body's MD5: bytes that arrive other than sent (here changed
    after signing, as a faulty proxy would) are refused by S3, and nothing lands. (Over plain
    HTTP, as here, the signed payload hash refuses them first; over HTTPS botocore signs no
    payload and Content-MD5 is what S3 checks: BadDigest.)"""
    acme = integration(s3_server, bucket, frequency=60)
    (target,) = build_export_targets([acme])
    client = s3.s3_client(target.destination)
    sent_md5: list[str] = []

    def corrupt(request: Any, **_: Any) -> None:
        sent_md5.append(request.headers.get("Content-MD5", ""))
        body = request.body.read() if hasattr(request.body, "read") else request.body
        if body:
            request.body = bytes([body[0] ^ 1]) + body[1:]

    client.meta.events.register("before-send.s3.PutObject", corrupt)
    try:
        result = deliver(export_asset(acme), "2026-11-25-10:00", events_db, raise_on_error=False)
    finally:
        client.meta.events.unregister("before-send.s3.PutObject", corrupt)
    message = failure_message(result)
    assert "BadDigest" in message or "XAmzContentSHA256Mismatch" in message
    assert sent_md5 and all(len(base64.b64decode(md5)) == 16 for md5 in sent_md5)
    assert keys_in(s3_server, bucket) == []


def test_a_redelivery_aborts_the_uploads_an_earlier_attempt_left_open(
    s3_server: S3Server, bucket: str, customer_env: dict[str, str], events_db: Path
) -> None:
    """A run killed mid-upload leaves an invisible multipart upload whose parts are billed:
    the next delivery of that window that is not its first (a re-delivery, the UI) aborts it.
    Another key's open upload is not touched."""
    client = s3_server.client()
    left = client.create_multipart_upload(Bucket=bucket, Key=KEY)["UploadId"]
    client.upload_part(Bucket=bucket, Key=KEY, UploadId=left, PartNumber=1, Body=b"x" * 1024)
    other = client.create_multipart_upload(Bucket=bucket, Key=KEY + ".other")["UploadId"]
    acme = integration(s3_server, bucket, frequency=60)
    result = deliver(
        export_asset(acme), "2026-11-25-10:00", events_db, tags={"affise/redelivery": "1"}
    )
    ((_, materialization),) = result.all_materializations()
    assert materialization.metadata["leftover_uploads_aborted"].value == 1
    uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert [(u["Key"], u["UploadId"]) for u in uploads] == [(KEY + ".other", other)]
    assert keys_in(s3_server, bucket) == [KEY]


def test_a_clean_up_the_store_never_finishes_answering_is_given_up_at_the_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The leftover clean-up runs after the object is delivered, and the window's step waits
    for it: a store that trickles its listing would hold every integration of the run. It is
    given up at one request's deadline, and says so."""
    monkeypatch.setenv("AFFISE_REQUEST_DEADLINE_SECONDS", "1")
    with stalling_endpoint(trickle_every=0.2) as url:
        destination = s3.S3Destination("slow", "clicks", "slow", "us-east-1", "d", "AK", "SK", url)
        client = s3.s3_client(destination)
        outcome: list[object] = []
        worker = threading.Thread(
            target=lambda: outcome.append(s3.abort_leftover_uploads(client, "slow", KEY)),
            daemon=True,
        )
        worker.start()
        worker.join(timeout=60)
        assert outcome == ["failed: DeliveryTimeout"]
