"""A failing destination fails only its own partition, with a message naming integration,
bucket and key, from the real server's error, and never a secret."""

from pathlib import Path

import botocore.exceptions
import pytest

from affise_s3_assets.s3 import upload_stream
from tests.conftest import S3Server
from tests.delivered import (
    KEY,
    deliver,
    export_asset,
    failure_message,
    integration,
    key_of,
    keys_in,
)


@pytest.mark.parametrize(
    ("secret", "access_key_env", "bucket_suffix", "code"),
    [
        ("wrong-secret-value-123", None, "", "SignatureDoesNotMatch"),
        (None, "UNKNOWNKEYID00000000", "", "InvalidAccessKeyId"),
        (None, None, "-does-not-exist", "NoSuchBucket"),
    ],
)
def test_bad_destination_fails_its_partition_with_the_servers_error(
    s3_server: S3Server,
    bucket: str,
    customer_env: dict[str, str],
    events_db: Path,
    monkeypatch: pytest.MonkeyPatch,
    secret: str | None,
    access_key_env: str | None,
    bucket_suffix: str,
    code: str,
) -> None:
    if secret:
        monkeypatch.setenv("ACME_AWS_SECRET_ACCESS_KEY", secret)
    if access_key_env:
        monkeypatch.setenv("ACME_AWS_ACCESS_KEY_ID", access_key_env)
    target = bucket + bucket_suffix
    asset = export_asset(integration(s3_server, target, frequency=60))
    result = deliver(asset, "2026-11-25-10:00", events_db, raise_on_error=False)
    assert not result.success
    message = failure_message(result)
    assert f"Delivery failed for integration 'acme' (clicks) to bucket '{target}'" in message
    assert f"key '{KEY}'" in message
    assert code in message
    everything = message + "".join(repr(event) for event in result.all_events)
    assert s3_server.customer.secret_key not in everything
    if secret:
        assert secret not in everything
    assert keys_in(s3_server, bucket) == []


def test_another_accounts_bucket_is_access_denied(
    s3_server: S3Server, bucket: str, events_db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ACME_AWS_ACCESS_KEY_ID", s3_server.intruder.access_key)
    monkeypatch.setenv("ACME_AWS_SECRET_ACCESS_KEY", s3_server.intruder.secret_key)
    asset = export_asset(integration(s3_server, bucket, frequency=60))
    result = deliver(asset, "2026-11-25-10:00", events_db, raise_on_error=False)
    message = failure_message(result)
    assert "AccessDenied (HTTP 403)" in message and bucket in message
    assert s3_server.intruder.secret_key not in message


def test_one_failing_bucket_does_not_stop_another_integration(
    s3_server: S3Server, bucket: str, customer_env: dict[str, str], events_db: Path
) -> None:
    good = integration(s3_server, bucket, frequency=60, name="good")
    bad = integration(s3_server, bucket + "-missing", frequency=60, name="bad")
    result = deliver(export_asset(good, bad), "2026-11-25-10:00", events_db, raise_on_error=False)
    assert not result.success
    assert "NoSuchBucket" in failure_message(result)
    assert len(result.materializations(key_of(good))) == 1
    assert result.materializations(key_of(bad)) == []
    assert keys_in(s3_server, bucket) == [KEY]


def test_unset_secret_names_the_variable_not_a_value(
    s3_server: S3Server, bucket: str, events_db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ACME_AWS_ACCESS_KEY_ID", s3_server.customer.access_key)
    monkeypatch.delenv("ACME_AWS_SECRET_ACCESS_KEY", raising=False)
    asset = export_asset(integration(s3_server, bucket, frequency=60))
    result = deliver(asset, "2026-11-25-10:00", events_db, raise_on_error=False)
    message = failure_message(result)
    assert "secret_key: environment variable ACME_AWS_SECRET_ACCESS_KEY is not set" in message
    assert f"bucket '{bucket}'" in message


def test_failed_multipart_stream_is_aborted_and_leaves_nothing(
    s3_server: S3Server, bucket: str
) -> None:
    client = s3_server.client()

    def chunks_then_crash():
        yield b"x" * (6 * 1024 * 1024)  # one full 5 MiB part goes up first
        raise RuntimeError("source failed mid-window")

    with pytest.raises(RuntimeError, match="mid-window"):
        upload_stream(client, bucket, "k.csv.gz", chunks_then_crash(), part_size=5 * 1024 * 1024)
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert keys_in(s3_server, bucket) == []


def test_a_failed_upload_closes_its_source(s3_server: S3Server) -> None:
    """The source must be stopped by the upload, not left to garbage collection: whoever
    still holds it (here the test, in a run the delivery object) keeps its producer alive."""
    closed = []

    def endless_chunks():
        try:
            while True:
                yield b"z" * 1024 * 1024
        finally:
            closed.append(True)

    source = endless_chunks()
    with pytest.raises(botocore.exceptions.ClientError, match="NoSuchBucket"):
        upload_stream(s3_server.client(), "no-such-bucket", "k", source, part_size=5 * 1024**2)
    assert closed == [True]


def test_failed_redelivery_keeps_the_previous_object(s3_server: S3Server, bucket: str) -> None:
    client = s3_server.client()
    upload_stream(client, bucket, "k.csv.gz", [b"previous"], part_size=5 * 1024 * 1024)

    def crash_after_a_part():
        yield b"y" * (6 * 1024 * 1024)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        upload_stream(client, bucket, "k.csv.gz", crash_after_a_part(), part_size=5 * 1024 * 1024)
    assert client.get_object(Bucket=bucket, Key="k.csv.gz")["Body"].read() == b"previous"
