"""A failed window's observation is written and read back through one type
(delivery/report.py's FailureRecord): the sensors that judge freshness and notify customers
read data, never the words shown."""

import dagster as dg

from affise_s3_assets.delivery.report import FailureRecord, named_action

REFUSED = (
    "Delivery failed for integration 'acme' (clicks) to bucket 'b', key 'k': AccessDenied: "
    "User: arn:aws:iam::1:user/affise is not authorized to perform: kms:GenerateDataKey on "
    "resource: arn:aws:kms:eu-west-1:1:key/x"
)


def test_a_failure_reads_back_as_written_through_dagsters_metadata_values() -> None:
    record = FailureRecord(REFUSED, "AccessDenied", True, named_action(REFUSED), "run-1")
    assert record.missing_permission == "kms:GenerateDataKey"
    # As Dagster hands metadata back: each value wrapped.
    stored = {name: dg.MetadataValue.text(str(v)) for name, v in record.to_metadata().items()}
    stored["permanent"] = dg.MetadataValue.bool(True)
    assert FailureRecord.from_metadata(stored) == record
    assert FailureRecord.from_metadata(record.to_metadata()) == record


def test_an_observation_recorded_before_the_action_was_data_reads_it_from_its_words() -> None:
    older = {"delivery_failed": REFUSED, "error_code": "AccessDenied", "permanent": True}
    record = FailureRecord.from_metadata(older)
    assert record is not None
    assert (record.missing_permission, record.permanent, record.run_id) == (
        "kms:GenerateDataKey",
        True,
        None,
    )


def test_only_a_delivery_failure_reads_as_one_and_only_true_is_permanent() -> None:
    assert FailureRecord.from_metadata({"rows": 3, "error_code": "x"}) is None
    transient = FailureRecord.from_metadata(
        {"delivery_failed": "slow down", "error_code": "SlowDown", "permanent": "True"}
    )
    assert transient is not None and not transient.permanent
    assert transient.missing_permission is None
    assert "missing_permission" not in transient.to_metadata()
