"""Delivery: the IO manager that turns a partition's time window into a date-folder S3 key and
streams the object there. Knows keys and S3, nothing of DuckDB or CSV.
"""

import contextlib
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import boto3
import botocore.config
import botocore.exceptions
import dagster as dg
from pydantic import Field

from affise_s3_assets.config import ConfigError, resolve_reference

MIB = 1024 * 1024
# S3 caps a multipart upload at 10,000 parts; part sizes grow so a stream of unknown length
# never reaches the cap before 5 TiB (the largest object S3 accepts).
MAX_PARTS = 10_000
_PARTS_PER_SIZE_STEP = 1_000


@dataclass(frozen=True)
class S3Destination:
    """Where one integration's event type is delivered. Credentials stay `${VAR}` references."""

    integration: str
    event_type: str
    bucket: str
    region: str
    directory: str
    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)
    endpoint_url: str | None = None

    @property
    def label(self) -> str:
        return f"integration {self.integration!r} ({self.event_type})"


@dataclass
class Delivery:
    """What an export asset hands to the IO manager: a destination and a stream of bytes.

    `summary` is called after the stream is consumed, for the counts known only then.
    """

    destination: S3Destination
    chunks: Iterable[bytes]
    summary: Callable[[], Mapping[str, Any]] = dict


def build_object_key(directory: str, window_start: datetime) -> str:
    """`{directory}/YYYY/MM/DD/YYYY-MM-DD hh:mm:ss.csv.gz` from the window start in UTC."""
    start = window_start.astimezone(UTC) if window_start.tzinfo else window_start
    name = f"{start:%Y/%m/%d}/{start:%Y-%m-%d %H:%M:%S}.csv.gz"
    return f"{directory}/{name}" if directory else name


def s3_client(destination: S3Destination) -> Any:
    """A client for the destination's own account; secrets are resolved now, at delivery."""
    label = destination.label
    return boto3.session.Session().client(
        "s3",
        region_name=destination.region,
        endpoint_url=destination.endpoint_url,
        aws_access_key_id=resolve_reference(destination.access_key, f"{label} access_key"),
        aws_secret_access_key=resolve_reference(destination.secret_key, f"{label} secret_key"),
        config=botocore.config.Config(
            # S3-compatible stores (Ceph RGW, MinIO) want path-style URLs on a custom endpoint.
            s3={"addressing_style": "path" if destination.endpoint_url else "auto"},
            # RGW does not understand boto3's default trailing checksums.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            retries={"mode": "standard", "max_attempts": 5},
            connect_timeout=10,
            read_timeout=120,
        ),
    )


def part_size_for(part_number: int, base_part_size: int) -> int:
    """Part `part_number` (1-based) is base size for the first 1,000 parts, then doubles."""
    return base_part_size * 2 ** ((part_number - 1) // _PARTS_PER_SIZE_STEP)


def upload_stream(
    client: Any,
    bucket: str,
    key: str,
    chunks: Iterable[bytes],
    part_size: int = 16 * MIB,
    content_type: str = "application/gzip",
) -> tuple[int, int]:
    """Stream chunks to one object; return (bytes sent, parts), parts 0 for a single PUT.

    A stream that fits in one part is a single PUT. A longer one is a multipart upload whose
    parts go up one at a time in a worker thread while the next part is being produced, so at
    most two parts are in memory. It is aborted if anything fails: a failed delivery leaves
    neither an object nor orphan parts, and the previous object under the key (if any) stays.
    """
    buffer = bytearray()
    upload_id: str | None = None
    parts: list[dict[str, Any]] = []
    sent = 0
    in_flight: Future[dict[str, Any]] | None = None
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="s3-part") as uploader:
        try:
            for chunk in chunks:
                buffer += chunk
                while len(buffer) >= part_size_for(len(parts) + 1, part_size):
                    if upload_id is None:
                        upload_id = client.create_multipart_upload(
                            Bucket=bucket, Key=key, ContentType=content_type
                        )["UploadId"]
                    number = len(parts) + 1
                    if number > MAX_PARTS:
                        raise ValueError(f"s3://{bucket}/{key}: more than {MAX_PARTS} parts")
                    size = part_size_for(number, part_size)
                    body = bytes(buffer[:size])
                    del buffer[:size]
                    if in_flight is not None:
                        in_flight.result()
                    parts.append({"PartNumber": number})
                    in_flight = uploader.submit(
                        _upload_part, client, bucket, key, upload_id, parts[-1], body
                    )
                    sent += size
            if upload_id is None:
                client.put_object(
                    Bucket=bucket, Key=key, Body=bytes(buffer), ContentType=content_type
                )
                return len(buffer), 0
            if in_flight is not None:
                in_flight.result()
            if buffer:
                parts.append({"PartNumber": len(parts) + 1})
                _upload_part(client, bucket, key, upload_id, parts[-1], bytes(buffer))
                sent += len(buffer)
            client.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
            return sent, len(parts)
        except BaseException:
            if in_flight is not None:
                in_flight.cancel()
                with contextlib.suppress(BaseException):
                    in_flight.result()
            if upload_id is not None:
                # The original failure is the one worth reporting.
                with contextlib.suppress(
                    botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError
                ):
                    client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
            raise


def _upload_part(
    client: Any, bucket: str, key: str, upload_id: str, part: dict[str, Any], body: bytes
) -> dict[str, Any]:
    response = client.upload_part(
        Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=part["PartNumber"], Body=body
    )
    part["ETag"] = response["ETag"]
    return part


def describe_s3_error(exc: BaseException) -> str:
    """A short, secret-free reason. RGW sends empty messages, so the error Code leads."""
    if isinstance(exc, ConfigError):
        return str(exc)
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = error.get("Code") or "error"
        message = error.get("Message") or ""
        return f"{code} (HTTP {status}){': ' + message if message else ''}"
    if isinstance(exc, botocore.exceptions.EndpointConnectionError):
        return f"cannot connect to endpoint {exc.kwargs.get('endpoint_url')}"
    return type(exc).__name__ + (f": {exc}" if str(exc) else "")


class DateFolderS3IOManager(dg.ConfigurableIOManager):
    """Writes each partition of an export asset to `directory/YYYY/MM/DD/<window start>.csv.gz`.

    One partition, one object, one deterministic key: re-materializing overwrites, never
    duplicates. A partition range is refused rather than merged into one file.
    """

    part_size_mib: int = Field(
        default=16, ge=5, le=512, description="multipart part size; bounds memory per delivery"
    )

    def handle_output(self, context: dg.OutputContext, obj: Delivery) -> None:
        if not isinstance(obj, Delivery):
            raise TypeError(f"{type(self).__name__} delivers Delivery objects, got {type(obj)}")
        destination = obj.destination
        if not context.has_asset_partitions:
            raise dg.Failure(f"{destination.label}: exports are time-partitioned; no partition")
        keys = context.asset_partition_keys
        if len(keys) != 1:
            raise dg.Failure(
                f"{destination.label}: one run delivers one window per object; got a range of "
                f"{len(keys)} partitions ({keys[0]}...{keys[-1]}). Launch a backfill with one "
                "run per partition instead."
            )
        window = context.asset_partitions_time_window
        key = build_object_key(destination.directory, window.start)
        uri = f"s3://{destination.bucket}/{key}"
        try:
            client = s3_client(destination)
            sent, parts = upload_stream(
                client, destination.bucket, key, obj.chunks, self.part_size_mib * MIB
            )
            head = client.head_object(Bucket=destination.bucket, Key=key)
        except (
            ConfigError,
            botocore.exceptions.BotoCoreError,
            botocore.exceptions.ClientError,
        ) as exc:
            raise dg.Failure(
                description=(
                    f"Delivery failed for {destination.label} to bucket "
                    f"{destination.bucket!r}, key {key!r}: {describe_s3_error(exc)}"
                ),
                metadata={"s3_uri": uri, "integration": destination.integration},
            ) from None
        if head["ContentLength"] != sent:
            raise dg.Failure(
                f"{destination.label}: {uri} holds {head['ContentLength']} bytes after sending "
                f"{sent}"
            )
        context.add_output_metadata(
            {
                **obj.summary(),
                "object_bytes": sent,
                "multipart_parts": parts,
                "s3_uri": uri,
                "etag": head.get("ETag", "").strip('"'),
            }
        )
        context.log.info(f"{destination.label}: delivered {uri} ({sent} bytes)")

    def load_input(self, context: dg.InputContext) -> Any:
        raise NotImplementedError(
            "exports are terminal: customers read them from S3, no asset loads them back"
        )
