"""DeliveryRecord: the metadata a delivery writes, read back as it was written, labels and
values exactly as the UI has always shown them."""

from datetime import datetime

import dagster as dg

from affise_s3_assets.delivery.record import DeliveryRecord, filters_metadata
from affise_s3_assets.source.fingerprint import Fingerprint

START, END = datetime(2026, 11, 25, 10), datetime(2026, 11, 25, 10, 15)
# What the encoder's summary and the object's finish report for a CSV object.
REPORTED = {
    "rows": 1234,
    "csv_bytes": 98765,
    "object_bytes": 12345,
    "multipart_parts": 0,
    "s3_uri": "s3://bucket/dir/2026/11/25/20261125_1000.csv.gz",
    "etag": "0123456789abcdef0123456789abcdef",
    "sha256": "ab" * 32,
    "verified": "content-md5 and etag",
    "verified_by": "etag",
    "leftover_uploads_aborted": "not allowed to list",
    "manifest_uri": "s3://bucket/dir/2026/11/25/20261125_1000.csv.gz.manifest.json",
}


def delivered(**reported: object) -> DeliveryRecord:
    return DeliveryRecord.of_object(START, END, (102, 101), ("adv1",), {**REPORTED, **reported})


def stored(metadata: dict) -> dict:
    """The metadata as Dagster hands it back: MetadataValues."""
    return dg.AssetMaterialization(asset_key="a", partition="p", metadata=metadata).metadata


def test_a_redelivery_writes_the_labels_and_values_shown_before() -> None:
    record = DeliveryRecord(
        **{
            **delivered().__dict__,
            "reason": "late_rows",
            "rows_before": 1200,
            "source_fingerprint": "duckdb-v1:00000000deadbeef",
            "delivered_after_close_s": 61.3,
        }
    )
    # As delivery/step.py wrote them before DeliveryRecord: in this order; then the filters as
    # data, what they are read back from.
    assert list(record.to_metadata().items()) == [
        ("window_start", "2026-11-25 10:00:00"),
        ("window_end", "2026-11-25 10:15:00"),
        ("affiliates", "102, 101"),
        ("advertisers", "adv1"),
        *REPORTED.items(),
        ("reason", "late_rows"),
        ("rows_before", 1200),
        ("source_fingerprint", "duckdb-v1:00000000deadbeef"),
        ("delivered_after_close_s", 61.3),
        ("filters", dg.MetadataValue.json({"affiliates": [102, 101], "advertisers": ["adv1"]})),
    ]


def test_a_record_reads_back_as_written_plain_or_stored() -> None:
    record = delivered(journaled_uploads_aborted=2, journaled_uploads_left="1 held")
    for metadata in (record.to_metadata(), stored(record.to_metadata())):
        assert DeliveryRecord.from_metadata(metadata) == record


def test_a_parquet_object_without_filters_shows_all_and_no_csv_bytes() -> None:
    reported = {k: v for k, v in REPORTED.items() if k not in ("csv_bytes", "manifest_uri")}
    record = DeliveryRecord.of_object(START, END, (), (), reported)
    shown = record.to_metadata()
    assert (shown["affiliates"], shown["advertisers"]) == ("all", "all")
    assert "csv_bytes" not in shown and "manifest_uri" not in shown
    read = DeliveryRecord.from_metadata(stored(shown))
    assert read == record and read is not None and read.has_filters((), ())


def test_a_record_written_before_newer_fields_still_reads() -> None:
    older = {
        "window_start": "2026-11-25 10:00:00",
        "window_end": "2026-11-25 10:15:00",
        "affiliates": "101, 102",
        "advertisers": "all",
        "rows": 7,
        "object_bytes": 100,
        "s3_uri": "s3://bucket/key",
        "sha256": "cd" * 32,
    }
    record = DeliveryRecord.from_metadata(stored(older))
    assert record is not None
    assert (record.rows, record.window_start, record.window_end) == (7, START, END)
    assert record.affiliates == (101, 102) and record.advertisers == ()
    assert record.has_filters((102, 101, 101), ())
    assert not record.has_filters((101,), ())
    assert record.source_fingerprint is None and record.reason is None
    assert record.fingerprint() == Fingerprint(7, 0, "rows only")
    shown = record.to_metadata()
    filters = {"affiliates": [101, 102], "advertisers": []}
    assert shown.pop("filters") == dg.MetadataValue.json(filters)  # written now as data too
    assert shown == older


def test_the_fingerprint_is_read_with_the_delivered_rows() -> None:
    record = DeliveryRecord.from_metadata(
        stored({"rows": 5, "source_fingerprint": "duckdb-v1:00000000000000ff"})
    )
    assert record is not None and record.fingerprint() == Fingerprint(5, 255, "duckdb-v1")
    assert DeliveryRecord.from_metadata(stored({"window_start": "2026-11-25 10:00:00"})) is None


# Advertiser ids are any non-empty strings: a comma or spaces in one are not lost.
ODD_ADVERTISERS = ("adv,1", " adv 2 ")


def test_advertiser_ids_with_commas_and_spaces_read_back_as_written() -> None:
    record = DeliveryRecord.of_object(START, END, (101,), ODD_ADVERTISERS, REPORTED)
    shown = record.to_metadata()
    # Shown as before: the ids joined.
    assert shown["advertisers"] == "adv,1,  adv 2 "
    assert {k: shown[k] for k in ("affiliates", "advertisers")} == filters_metadata(
        (101,), ODD_ADVERTISERS
    )
    for metadata in (shown, stored(shown)):
        read = DeliveryRecord.from_metadata(metadata)
        assert read == record and read is not None
        assert read.advertisers == ODD_ADVERTISERS
        assert read.has_filters((101,), tuple(reversed(ODD_ADVERTISERS)))
        # What the ids shown split into is another filter.
        assert not read.has_filters((101,), ("adv", "1", "adv 2"))


def test_a_record_with_filters_shown_only_reads_them_as_before() -> None:
    """Written before the filters were recorded as data (or with data not of its shape): the
    ids shown are split at commas, spaces around them dropped, as they always were."""
    older = {"rows": 7, "affiliates": "101, 102", "advertisers": "adv,1,  adv 2 "}
    malformed = {**older, "filters": {"affiliates": ["101"], "advertisers": "adv"}}
    for metadata in (older, malformed):
        record = DeliveryRecord.from_metadata(stored(metadata))
        assert record is not None
        assert (record.affiliates, record.advertisers) == ((101, 102), ("adv", "1", "adv 2"))
