"""integrations.yaml rules: every broken rule names the integration, the field and the rule."""

from datetime import datetime

import pytest

from affise_s3_assets.config import ConfigError
from affise_s3_assets.config.apply import load_integrations, parse_integrations
from affise_s3_assets.config.schema import ALLOWED_FREQUENCIES
from affise_s3_assets.config.secrets import resolve_reference
from tests.integrations_text import VALID_EXPORT, error_of, one_integration


def test_full_example_parses_with_defaults() -> None:
    parsed = parse_integrations(
        one_integration(
            extra="""      affiliates: [101, 102]
      advertisers: ["5a0c7d1e9f3b2a0012c4e8f1"]
      endpoint_url: http://127.0.0.1:7480
    conversions:
      frequency: 60
      bucket: acme-conv
      region: eu-west-1
      directory: ""
      access_key: AKIDLITERALISFINE
      secret_key: ${ACME_AWS_SECRET_ACCESS_KEY}
"""
        )
    )
    (acme,) = parsed.integrations
    assert acme.name == "acme"
    assert acme.start == datetime(2026, 11, 1)
    assert acme.enabled is True
    assert acme.clicks is not None and acme.conversions is not None
    assert acme.clicks.frequency == 15
    assert acme.clicks.affiliates == (101, 102)
    assert acme.clicks.advertisers == ("5a0c7d1e9f3b2a0012c4e8f1",)
    assert acme.conversions.frequency == 60
    assert acme.conversions.directory == ""
    assert acme.conversions.affiliates == ()
    assert [event for event, _ in acme.exports()] == ["clicks", "conversions"]


@pytest.mark.parametrize("frequency", [7, 45, 90, 0, -15, 2880])
def test_frequency_that_cannot_cut_a_day_evenly_is_rejected_with_allowed_list(
    frequency: int,
) -> None:
    message = error_of(one_integration(f"      frequency: {frequency}\n"))
    assert "integration 'acme': clicks.frequency:" in message
    assert "allowed values: " + ", ".join(map(str, ALLOWED_FREQUENCIES)) in message


@pytest.mark.parametrize("frequency", ALLOWED_FREQUENCIES)
def test_every_allowed_frequency_is_accepted(frequency: int) -> None:
    parsed = parse_integrations(one_integration(f"      frequency: {frequency}\n"))
    assert parsed.integrations[0].clicks.frequency == frequency


@pytest.mark.parametrize(
    ("line", "field", "rule"),
    [
        ("      directory: off\n", "clicks.directory", "read as the boolean False"),
        ("      directory: /leading\n", "clicks.directory", "must not start or end with a slash"),
        ("      directory: a//b\n", "clicks.directory", "empty, '.' or '..'"),
        ("      bucket: Not_A_Bucket\n", "clicks.bucket", "is not an S3 bucket name"),
        ("      region: mars\n", "clicks.region", "is not an AWS region name"),
        ("      affiliates: [101, x]\n", "clicks.affiliates", "affiliate ids are integers"),
        ("      advertisers: [5]\n", "clicks.advertisers", "advertiser ids are non-empty strings"),
        ("      endpoint_url: ftp://x\n", "clicks.endpoint_url", "http:// or https:// URL"),
        (
            "      endpoint_url: http://minio_1:9000\n",
            "clicks.endpoint_url",
            "not a valid endpoint",
        ),
        ("      compression_level: 12\n", "clicks.compression_level", "less than or equal to 9"),
        ("      compression_level: true\n", "clicks.compression_level", "valid integer"),
        ("      compression_level: '5'\n", "clicks.compression_level", "valid integer"),
        (
            "      region: Fr_Par\n      endpoint_url: https://s3.example.com\n",
            "clicks.region",
            "is not a region name",
        ),
        ("      colour: blue\n", "clicks.colour", "is not a known field"),
        # Accepted by the pattern, refused by S3 at delivery time.
        ("      bucket: 192.168.10.20\n", "clicks.bucket", "must not be an IP address"),
        # ...on AWS; an S3-compatible store (endpoint_url) has its own rules.
        ("      bucket: xn--acme-raw\n", "clicks.bucket", "AWS reserves the prefixes"),
        ("      bucket: acme-raw-s3alias\n", "clicks.bucket", "AWS reserves the prefixes"),
        ("      bucket: acme-raw--ol-s3\n", "clicks.bucket", "AWS reserves the prefixes"),
        # AWS's own endpoint written out is still AWS.
        (
            "      bucket: 192.168.10.20\n      endpoint_url: https://s3.us-west-2.amazonaws.com\n",
            "clicks.bucket",
            "must not be an IP address",
        ),
        (
            "      bucket: xn--acme\n      endpoint_url: https://s3.dualstack.us-west-2.amazonaws.com\n",
            "clicks.bucket",
            "AWS reserves the prefixes",
        ),
        (
            "      region: auto\n      endpoint_url: https://s3-fips.us-west-2.amazonaws.com\n",
            "clicks.region",
            "is not an AWS region name",
        ),
        # A literal key id is allowed (it is not secret), but not with its newline pasted in.
        (
            '      access_key: "AKIDLITERAL0123\\n"\n',
            "clicks.access_key",
            "holds whitespace or control characters",
        ),
        (
            "      directory: 'affise\\\\clicks'\n",
            "clicks.directory",
            "must not contain a backslash",
        ),
        (f"      directory: {'d' * 961}\n", "clicks.directory", "is 961 bytes; at most 960"),
        (f"      directory: {'é' * 481}\n", "clicks.directory", "is 962 bytes; at most 960"),
    ],
)
def test_broken_field_names_integration_field_and_rule(line: str, field: str, rule: str) -> None:
    # A key given twice is refused, so the valid line it replaces is left out.
    keys = {part.split(":")[0].strip() for part in line.splitlines()}
    export = "".join(
        kept + "\n" for kept in VALID_EXPORT.splitlines() if kept.split(":")[0].strip() not in keys
    )
    message = error_of(one_integration(line, export=export))
    assert f"integration 'acme': {field}: " in message
    assert rule in message


def test_literal_secret_is_rejected_without_echoing_it() -> None:
    export = VALID_EXPORT.replace(
        "${ACME_AWS_SECRET_ACCESS_KEY}", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    )
    message = error_of(one_integration(export=export))
    assert "integration 'acme': clicks.secret_key: must be an ${ENV_VAR} reference" in message
    assert "wJalrXUtnFEMI" not in message


@pytest.mark.parametrize(
    "url",
    [
        "https://AKIDINURL:wJalrXUtnFEMIsecret@s3.example.com",
        "AKIDINURL:wJalrXUtnFEMIsecret@s3.example.com",  # no scheme: no netloc either
        "https:/AKIDINURL:wJalrXUtnFEMIsecret@s3.example.com",
    ],
)
def test_credentials_in_the_endpoint_url_are_rejected_without_echoing_them(url: str) -> None:
    message = error_of(one_integration(f"      endpoint_url: {url}\n"))
    assert "integration 'acme': clicks.endpoint_url: must not carry credentials" in message
    assert "wJalrXUtnFEMI" not in message and "AKIDINURL" not in message


@pytest.mark.parametrize(
    ("region", "endpoint"),
    [("auto", "https://acct.r2.cloudflarestorage.com"), ("fr-par", "https://s3.fr-par.scw.cloud")],
)
def test_s3_compatible_stores_name_their_regions_their_own_way(region: str, endpoint: str) -> None:
    export = VALID_EXPORT.replace("us-west-2", region)
    line = f"      endpoint_url: {endpoint}\n"
    (acme,) = parse_integrations(one_integration(line, export=export)).integrations
    assert acme.clicks is not None and acme.clicks.region == region
    # Without an endpoint the region is AWS's, and `auto` is not one.
    message = error_of(one_integration(export=export))
    assert "integration 'acme': clicks.region: " in message


def test_missing_required_field_is_named() -> None:
    export = VALID_EXPORT.replace("      bucket: acme-affise-raw\n", "")
    assert "integration 'acme': clicks.bucket: is required" in error_of(
        one_integration(export=export)
    )


@pytest.mark.parametrize(
    ("name", "rule"), [("Acme", "must match"), ("1acme", "must match"), ("a-b", "must match")]
)
def test_bad_names_are_rejected(name: str, rule: str) -> None:
    message = error_of(one_integration().replace("name: acme", f"name: {name}"))
    assert f"integration '{name}': name: " in message
    assert rule in message


def test_bad_start_and_enabled_are_named() -> None:
    text = one_integration(head="    enabled: maybe\n").replace(
        '"2026-11-01 00:00:00"', '"1 Nov 2026"'
    )
    message = error_of(text)
    assert "integration 'acme': start: '1 Nov 2026' must be \"YYYY-MM-DD hh:mm:ss\"" in message
    assert "integration 'acme': enabled: must be true or false" in message


def test_duplicate_names_and_empty_integration_are_rejected() -> None:
    text = one_integration() + one_integration().replace("integrations:\n", "")
    assert "integration 'acme': name: appears more than once" in error_of(text)
    lone = 'integrations:\n  - name: lonely\n    start: "2026-11-01 00:00:00"\n'
    assert (
        "integration 'lonely': (entry): needs at least one of the blocks clicks, conversions, "
        "conversion_updates" in error_of(lone)
    )


def test_unnamed_entry_is_identified_by_position() -> None:
    text = one_integration() + '  - start: "2026-11-01 00:00:00"\n'
    assert "integration #2: name: is required" in error_of(text)


def test_unreadable_yaml_and_missing_file_are_reported(tmp_path) -> None:
    assert "not valid YAML" in error_of("integrations: [\n")
    with pytest.raises(ConfigError, match="cannot read integrations file"):
        load_integrations(tmp_path / "absent.yaml")


def test_empty_file_means_no_integrations() -> None:
    assert parse_integrations("").integrations == ()
    assert parse_integrations("integrations:\n").integrations == ()


def test_references_resolve_at_run_time_and_errors_never_show_values(monkeypatch) -> None:
    monkeypatch.setenv("ACME_SECRET", "s3cr3t-value")
    assert resolve_reference("${ACME_SECRET}", "acme secret_key") == "s3cr3t-value"
    assert resolve_reference("AKIDLITERAL", "acme access_key") == "AKIDLITERAL"
    monkeypatch.delenv("ACME_SECRET")
    with pytest.raises(ConfigError, match="acme secret_key: environment variable ACME_SECRET"):
        resolve_reference("${ACME_SECRET}", "acme secret_key")


def test_a_start_that_cannot_work_is_refused_with_the_rule() -> None:
    now = datetime(2026, 12, 1, 12, 0)
    ahead = one_integration().replace("2026-11-01 00:00:00", "2028-01-01 00:00:00")
    with pytest.raises(ConfigError) as caught:
        parse_integrations(ahead, now=now)
    assert "integration 'acme': start: 2028-01-01 00:00:00 is more than 366 days ahead" in str(
        caught.value
    )
    far_back = one_integration("      frequency: 1\n").replace(
        "2026-11-01 00:00:00", "1900-01-01 00:00:00"
    )
    with pytest.raises(ConfigError) as caught:
        parse_integrations(far_back, now=now)
    minutes = int((now - datetime(1900, 1, 1)).total_seconds() // 60)  # 66.7M
    assert (
        f"integration 'acme': start: 1900-01-01 00:00:00 is {minutes:,} windows of 1 min "
        "(clicks) before now; at most 1,000,000: start later or choose a longer frequency"
    ) in str(caught.value)
    # The bound is in windows: the same start at a day per window is 46,000-odd windows.
    daily = far_back.replace("frequency: 1\n", "frequency: 1440\n")
    assert parse_integrations(daily, now=now).integrations[0].clicks.frequency == 1440


def test_aws_reserved_bucket_names_are_allowed_on_other_stores() -> None:
    export = VALID_EXPORT.replace("acme-affise-raw", "raw--ol-s3")
    text = one_integration("      endpoint_url: http://127.0.0.1:7480\n", export=export)
    assert parse_integrations(text).integrations[0].clicks.bucket == "raw--ol-s3"
