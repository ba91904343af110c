"""What a delivery reads and says: its destination from its block alone, never the ambient
AWS environment, and no credential in any error, against the real S3 server."""

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from affise_s3_assets import s3
from affise_s3_assets.s3 import describe_s3_error
from tests.conftest import S3Server
from tests.test_delivery import deliver, export_asset, integration, key_of, keys_in
from tests.test_failures import KEY, failure_message


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
            "AWS_MAX_ATTEMPTS": "1",
        }.items():
            patch.setenv(name, value)
        # The process's one session and its clients were made before: made again here.
        patch.setattr(s3, "_session", None)
        s3._cached_client.cache_clear()
        try:
            yield
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
    with hostile_aws_environment(tmp_path):
        result = deliver(export_asset(acme), "2026-11-25-10:00", events_db)
    assert len(result.materializations(key_of(acme))) == 1
    assert keys_in(s3_server, bucket) == [KEY]


@pytest.mark.parametrize("variable", ["TEST_ACCESS_KEY_ID", "TEST_SECRET_ACCESS_KEY"])
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
