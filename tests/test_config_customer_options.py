"""The customer options of an export (issue 19): every one off by default, each refused with
the integration, the field and the rule when it is wrong."""

import pytest

from affise_s3_assets.config.apply import apply_integrations, parse_integrations
from affise_s3_assets.config.targets import build_export_targets
from affise_s3_assets.source.event_types import EVENT_COLUMNS
from tests.integrations_text import VALID_EXPORT, error_of, one_integration

KEYS = (
    "      access_key: ${ACME_AWS_ACCESS_KEY_ID}\n      secret_key: ${ACME_AWS_SECRET_ACCESS_KEY}\n"
)
ROLE = "      role_arn: arn:aws:iam::123456789012:role/affise-delivery\n"


def test_every_option_is_off_unless_written() -> None:
    (acme,) = parse_integrations(one_integration()).integrations
    export = acme.clicks
    assert export is not None
    assert (export.role_arn, export.sse, export.kms_key_id, export.completion) == (None,) * 4
    assert (export.layout, export.file_name, export.columns) == ("dated", "datetime", ())
    assert acme.notify is None
    (target,) = build_export_targets([acme])
    assert (target.layout, target.file_name, target.columns, target.completion) == (
        "dated",
        "datetime",
        (),
        None,
    )
    assert (target.destination.role_arn, target.destination.sse) == (None, None)


def test_a_role_takes_the_place_of_keys() -> None:
    export = VALID_EXPORT.replace(KEYS, ROLE)
    (acme,) = parse_integrations(one_integration(export=export)).integrations
    assert acme.clicks is not None
    assert acme.clicks.role_arn == "arn:aws:iam::123456789012:role/affise-delivery"
    assert acme.clicks.access_key is None and acme.clicks.secret_key is None
    (target,) = build_export_targets([acme])
    assert target.destination.role_arn == acme.clicks.role_arn
    # Ceph RGW's role ARNs have no account id.
    rgw = VALID_EXPORT.replace(KEYS, "      role_arn: arn:aws:iam:::role/affise-delivery\n")
    assert parse_integrations(one_integration(export=rgw)).integrations[0].clicks is not None


@pytest.mark.parametrize(
    ("export", "says"),
    [
        (VALID_EXPORT + ROLE, "clicks: role_arn: is given with access_key and secret_key"),
        (VALID_EXPORT.replace(KEYS, ""), "clicks: access_key and secret_key: missing"),
        (
            VALID_EXPORT.replace(KEYS, "      secret_key: ${ACME_AWS_SECRET_ACCESS_KEY}\n"),
            "clicks: access_key: missing",
        ),
        (
            VALID_EXPORT.replace(KEYS, "      role_arn: arn:aws:iam::123:user/someone\n"),
            "clicks.role_arn: 'arn:aws:iam::123:user/someone' is not an IAM role ARN",
        ),
    ],
)
def test_a_destination_is_reached_by_keys_or_by_a_role(export: str, says: str) -> None:
    assert f"integration 'acme': {says}" in error_of(one_integration(export=export))


def test_kms_needs_its_key_and_a_key_needs_kms() -> None:
    kms = "      sse: aws:kms\n      kms_key_id: alias/acme-exports\n"
    (acme,) = parse_integrations(one_integration(extra=kms)).integrations
    assert acme.clicks is not None
    (target,) = build_export_targets([acme])
    assert (target.destination.sse, target.destination.kms_key_id) == (
        "aws:kms",
        "alias/acme-exports",
    )
    assert "integration 'acme': clicks: kms_key_id: is required with sse: aws:kms" in error_of(
        one_integration(extra="      sse: aws:kms\n")
    )
    assert "clicks: kms_key_id: is used with sse: aws:kms only" in error_of(
        one_integration(extra="      sse: AES256\n      kms_key_id: alias/acme\n")
    )
    assert "clicks.sse: " in error_of(one_integration(extra="      sse: aws:kms:dsse\n"))
    assert "clicks.kms_key_id: 'alias/a b' is not a KMS key id" in error_of(
        one_integration(extra="      sse: aws:kms\n      kms_key_id: alias/a b\n")
    )


def test_layout_file_name_and_completion_take_only_their_values() -> None:
    extra = "      layout: hive\n      file_name: compact\n      completion: hour\n"
    (acme,) = parse_integrations(one_integration(extra=extra)).integrations
    (target,) = build_export_targets([acme])
    assert (target.layout, target.file_name, target.completion) == ("hive", "compact", "hour")
    assert "clicks: completion: hour needs windows of at most 60 minutes" in error_of(
        one_integration(extra="      frequency: 120\n      completion: hour\n")
    )
    for line, field in (
        ("layout: flat", "layout"),
        ("file_name: iso", "file_name"),
        ("completion: week", "completion"),
    ):
        assert f"integration 'acme': clicks.{field}: " in error_of(
            one_integration(extra=f"      {line}\n")
        )


def test_columns_are_a_known_subset_in_the_order_written() -> None:
    extra = "      columns: [offer_id, id, created_at]\n"
    (acme,) = parse_integrations(one_integration(extra=extra)).integrations
    (target,) = build_export_targets([acme])
    assert target.columns == ("offer_id", "id", "created_at")
    # The applied state (kept for the next start) reads back the same.
    applied = apply_integrations(one_integration(extra=extra))
    assert type(applied).from_json(applied.to_json()).integrations == applied.integrations
    message = error_of(one_integration(extra="      columns: [id, revenue]\n"))
    assert "integration 'acme': clicks.columns: revenue: not a column of clicks" in message
    assert ", ".join(EVENT_COLUMNS["clicks"]) in message
    assert "clicks.columns: names id more than once" in error_of(
        one_integration(extra="      columns: [id, id]\n")
    )
    assert "clicks.columns: must be a non-empty list" in error_of(
        one_integration(extra="      columns: []\n")
    )


def test_a_webhook_is_named_for_its_integration() -> None:
    good = "    notify:\n      url: ${ACME_NOTIFY_URL}\n      secret: ${ACME_NOTIFY_SECRET}\n"
    (acme,) = parse_integrations(one_integration(head=good)).integrations
    assert acme.notify is not None and acme.notify.url == "${ACME_NOTIFY_URL}"
    stolen = good.replace("${ACME_NOTIFY_SECRET}", "${DAGSTER_PG_PASSWORD}")
    message = error_of(one_integration(head=stolen))
    assert "integration 'acme': notify.secret: must be ${ACME_NOTIFY_SECRET}" in message
    literal = good.replace("${ACME_NOTIFY_URL}", "https://hooks.example.com/T0/abc")
    message = error_of(one_integration(head=literal))
    assert "notify.url: must be a ${ENV_VAR} reference" in message
    assert "hooks.example.com" not in message
