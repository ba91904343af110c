"""What the delivery tests share: an integration and its export step, a run on an in-process
instance, and the objects and rows a bucket and the source hold, as the contract says."""

import gzip
import json
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb

from affise_s3_assets.config.apply import parse_integrations
from affise_s3_assets.config.schema import IntegrationConfig
from affise_s3_assets.config.secrets import credential_variables
from affise_s3_assets.config.targets import (
    build_export_targets,
    build_window_groups,
    export_asset_key,
)
from affise_s3_assets.definitions import event_sources
from affise_s3_assets.delivery.step import S3_WRITER_KEY, build_window_asset
from affise_s3_assets.delivery.writer import DateFolderS3Writer
from affise_s3_assets.demo.events import load_schema
from affise_s3_assets.source.completeness import write_watermark
from affise_s3_assets.source.duckdb_file import connect_events_file
from affise_s3_assets.source.events import EventsDatabase
from tests.conftest import ROOT, S3Server
from tests.csv_reader import read_rfc4180

ADVERTISER = "5a0c7d1e9f3b2a0012c4e8f1"
# The key of the 2026-11-25 10:00 window in integration()'s default directory.
KEY = "affise/raw/2026/11/25/2026-11-25 10:00:00.csv.gz"


def integration(
    s3: S3Server,
    bucket: str,
    event_type: str = "clicks",
    frequency: int = 60,
    directory: str = "affise/raw",
    extra: str = "",
    name: str = "acme",
    access_key: str | None = None,
    secret_key: str | None = None,
) -> IntegrationConfig:
    """One integration's one export; its keys in its own variables (config.credential_variables)."""
    own = [f"${{{variable}}}" for variable in credential_variables(name)]
    access_key, secret_key = access_key or own[0], secret_key or own[1]
    text = f"""
integrations:
  - name: {name}
    start: "2026-11-24 00:00:00"
    {event_type}:
      frequency: {frequency}
      bucket: {bucket}
      region: us-west-2
      directory: "{directory}"
      access_key: "{access_key}"
      secret_key: "{secret_key}"
      endpoint_url: {s3.endpoint_url}
{extra}"""
    return parse_integrations(text).integrations[0]


def export_asset(*configs: IntegrationConfig) -> dg.AssetsDefinition:
    """The export step of the one window group the integrations' exports form."""
    (group,) = build_window_groups(build_export_targets(configs))
    return build_window_asset(group)


def key_of(config: IntegrationConfig) -> dg.AssetKey:
    ((event_type, _),) = config.exports()
    return export_asset_key(config.name, event_type)


@dataclass
class Delivered:
    """A run's result and the instance it ran on: a failed step's materializations are in the
    instance (as in the UI), not in the in-process result."""

    result: dg.ExecuteInProcessResult
    instance: dg.DagsterInstance

    def __getattr__(self, name: str) -> Any:
        return getattr(self.result, name)

    def materializations(self, key: dg.AssetKey) -> list[dg.AssetMaterialization]:
        records = self.instance.fetch_materializations(key, limit=1000).records
        return [record.asset_materialization for record in reversed(records)]

    def all_materializations(self) -> list[tuple[dg.AssetKey, dg.AssetMaterialization]]:
        return [
            (key, materialization)
            for key in sorted(self.instance.all_asset_keys(), key=str)
            for materialization in self.materializations(key)
        ]


def deliver(
    asset: dg.AssetsDefinition,
    partition_key: str | None,
    events_db: Path,
    part_size_mib: int = 16,
    raise_on_error: bool = True,
    tags: dict[str, str] | None = None,
    selection: Sequence[dg.AssetKey] | None = None,
    instance: dg.DagsterInstance | None = None,
) -> Delivered:
    instance = instance or dg.DagsterInstance.ephemeral()
    result = dg.materialize(
        [asset, *event_sources],
        selection=list(selection or asset.keys),
        partition_key=partition_key,
        resources={
            "events": EventsDatabase(path=str(events_db)),
            S3_WRITER_KEY: DateFolderS3Writer(part_size_mib=part_size_mib),
        },
        raise_on_error=raise_on_error,
        tags=tags,
        instance=instance,
    )
    return Delivered(result, instance)


def failure_message(result: Delivered) -> str:
    (failure,) = result.get_step_failure_events()
    error = failure.step_failure_data.error
    return str(error.message) + "".join(error.stack or [])


def range_tags(first: str, last: str) -> dict[str, str]:
    return {
        "dagster/asset_partition_range_start": first,
        "dagster/asset_partition_range_end": last,
    }


def keys_in(s3: S3Server, bucket: str) -> list[str]:
    listing = s3.client().list_objects_v2(Bucket=bucket)
    return sorted(item["Key"] for item in listing.get("Contents", []))


def fetch(s3: S3Server, bucket: str, key: str) -> bytes:
    return s3.client().get_object(Bucket=bucket, Key=key)["Body"].read()


def as_csv_text(value: Any) -> str | None:
    """How the contract says a source value appears in the file."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, Decimal):
        return format(value, "f")
    return str(value)


def source_rows(
    events_db: Path,
    event_type: str,
    start: datetime,
    end: datetime,
    affiliates: Sequence[int] = (),
    advertisers: Sequence[str] = (),
) -> tuple[list[str], list[list[str | None]]]:
    """Header and rows as the contract describes them, straight from DuckDB and Python:
    conversion_updates are the conversions whose updated_at is in the window, in that order."""
    table, at = (
        ("conversions", "updated_at")
        if event_type == "conversion_updates"
        else (event_type, "created_at")
    )
    with connect_events_file(events_db) as con:
        header = [
            row[0]
            for row in con.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = ? "
                "ORDER BY ordinal_position",
                [table],
            ).fetchall()
        ]
        rows = con.execute(
            f"SELECT * FROM {table} WHERE {at} >= ? AND {at} < ?", [start, end]
        ).fetchall()
    by_name = [dict(zip(header, row, strict=True)) for row in rows]
    kept = [
        row
        for row in by_name
        if (not affiliates or row["affiliate_id"] in affiliates)
        and (not advertisers or row["advertiser_id"] in advertisers)
    ]
    kept.sort(key=lambda row: (row[at], row["id"]))
    return header, [[as_csv_text(row[column]) for column in header] for row in kept]


def delivered_rows(data: bytes) -> tuple[list[str | None], list[list[str | None]]]:
    rows = read_rfc4180(gzip.decompress(data).decode("utf-8"))
    return rows[0], rows[1:]


def hex_clicks_db(path: Path, rows: int) -> Path:
    """`rows` clicks from 2026-11-25 10:00, 20 ms apart, carrying hex digests: they compress
    about 2:1, so 120k rows make a gzip of several 5 MiB parts. The loader says the hour is
    complete (the rows end before 11:00)."""
    with duckdb.connect(str(path)) as con:
        load_schema(con)
        con.execute(
            "INSERT INTO clicks (id, created_at, affiliate_id, sub1, sub2, sub3, sub4) "
            "SELECT lpad(i::VARCHAR, 8, '0'), TIMESTAMP '2026-11-25 10:00:00' + i * INTERVAL 20 "
            "MILLISECOND, 101, md5(i::VARCHAR), md5((i+1)::VARCHAR), sha256(i::VARCHAR), "
            f"sha256((i+7)::VARCHAR) FROM range({rows}) t(i)"
        )
        write_watermark(con, "clicks", datetime(2026, 11, 25, 11))
    return path


def insert_late_rows(db: Path, at: datetime, affiliate: int, count: int = 3) -> None:
    """Copies of existing clicks, new ids, stamped `at`, of `affiliate` and of an advertiser no
    filter takes, written after the window's delivery."""
    with connect_events_file(db, read_only=False) as con:
        con.execute(
            "INSERT INTO clicks SELECT * EXCLUDE (n) REPLACE (id || '-late-' || n AS id, "
            "$1 AS created_at, $2 AS affiliate_id, 'late-advertiser' AS advertiser_id) "
            "FROM (SELECT *, row_number() OVER () AS n FROM clicks LIMIT $3)",
            [at, affiliate, count],
        )


# The least privilege a customer grants us, as published in docs/customer-contract.md.
DELIVERY_ACTIONS = ["s3:PutObject", "s3:AbortMultipartUpload"]


def put_intruder_policy(
    s3_server: S3Server, bucket: str, denied: list[str], denied_resources: list[str]
) -> None:
    """A bucket policy letting the `intruder` user (tests/conftest.py: it stands for the
    delivering account) do DELIVERY_ACTIONS on the bucket's objects, but `denied` on
    `denied_resources`."""
    intruder = {"AWS": ["arn:aws:iam:::user/intruder"]}
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": intruder,
                "Action": DELIVERY_ACTIONS,
                "Resource": [f"arn:aws:s3:::{bucket}/*"],
            },
            {
                "Effect": "Deny",
                "Principal": intruder,
                "Action": denied,
                "Resource": denied_resources,
            },
        ],
    }
    s3_server.client().put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))


def grant_only_delivery(s3_server: S3Server, bucket: str) -> None:
    """The bucket owner's policy: the delivering account may do DELIVERY_ACTIONS on the
    bucket's objects, and is denied reading, listing and deleting them. (Ceph RGW does not
    honour NotAction: the denials are spelled out.)"""
    put_intruder_policy(
        s3_server,
        bucket,
        [
            "s3:GetObject",
            "s3:GetObjectAcl",
            "s3:ListBucket",
            "s3:ListBucketMultipartUploads",
            "s3:DeleteObject",
        ],
        [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
    )


def deny_intruders_puts(s3: S3Server, bucket: str, pattern: str) -> None:
    """A bucket policy letting the `intruder` user write the bucket except keys matching
    `pattern` (RGW's wildcards match `*word*` forms, not `*.suffix`)."""
    put_intruder_policy(s3, bucket, ["s3:PutObject"], [f"arn:aws:s3:::{bucket}/{pattern}"])


def readme_manifest_check(bucket: str, day: str) -> str:
    """The customer contract's check of a day against its manifests (docs/customer-contract.md),
    on this bucket and day."""
    text = (ROOT / "docs" / "customer-contract.md").read_text()
    block = text.split("Check a day against its")[1].split("```python")[1].split("```")[0]
    code = textwrap.dedent(block)
    line = 's3, bucket, day = boto3.client("s3"), "acme-affise-raw", "affise/clicks/2026/11/25/"'
    assert line in code
    return code.replace(line, f"s3, bucket, day = CLIENT, {bucket!r}, {day!r}")
