"""The connection check of one export, as Affise's *Save* does: with the integration's own
credentials, endpoint and region, write a small probe object under its directory (outside the
`YYYY/` folders the deliveries use), remove it if the policy allows, and say what failed in
words an account manager can act on. Knows S3 and the destination, nothing of Dagster runs.
"""

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import botocore.exceptions

from affise_s3_assets.config import ConfigError
from affise_s3_assets.s3 import (
    CONNECT_TIMEOUT_SECONDS,
    DeliveryTimeout,
    RoleNotAssumed,
    S3Destination,
    S3ObjectWriter,
    error_code,
    s3_client,
    within_deadline,
)

# Where the probe goes: beside the deliveries' YYYY/ folders, never among them.
PROBE_FOLDER = "_affise_connection_check"


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    message: str  # one line, no secret


def probe_key(directory: str) -> str:
    name = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}.txt"
    return f"{directory}/{PROBE_FOLDER}/{name}" if directory else f"{PROBE_FOLDER}/{name}"


def check_connection(destination: S3Destination, deadline: float = 30) -> CheckResult:
    """Write, then try to delete, one probe object at the destination."""
    where = (
        f"s3://{destination.bucket}/{destination.directory + '/' if destination.directory else ''}"
    )
    try:
        client = s3_client(destination)
    except ConfigError as exc:
        # "secret_key: environment variable X is not set": the integration is named already.
        return CheckResult(False, f"credentials: {str(exc).removeprefix(destination.label + ' ')}")
    except ValueError as exc:  # botocore refusing the endpoint or region
        return CheckResult(False, f"the client cannot be made: {type(exc).__name__}")
    key = probe_key(destination.directory)
    writer = S3ObjectWriter(
        client,
        destination.bucket,
        key,
        content_type="text/plain",
        acl=destination.acl,
        deadline=deadline,
    )
    try:
        writer.write(b"affise-s3-assets connection check: safe to delete\n")
        writer.close()
    except Exception as exc:
        writer.abort()
        return CheckResult(False, explain(exc, destination))
    removed = "and removed it"
    try:
        within_deadline(deadline, client.delete_object, Bucket=destination.bucket, Key=key)
    except DeliveryTimeout:
        removed = f"and left it (the delete had no answer within {deadline:.0f} s)"
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError):
        # The least-privilege policy has no s3:DeleteObject: the probe stays, by design.
        removed = f"and left it (no s3:DeleteObject; delete s3://{destination.bucket}/{key})"
    return CheckResult(True, f"ok: wrote a probe object under {where} {removed}")


def explain(exc: BaseException, destination: S3Destination) -> str:
    """A failure in an account manager's words: what is wrong and who fixes it."""
    bucket, region = destination.bucket, destination.region
    endpoint = destination.endpoint_url or f"AWS S3 ({region})"
    if isinstance(exc, RoleNotAssumed):
        return f"cannot assume the customer's role: {exc}"
    if isinstance(exc, DeliveryTimeout):
        return f"endpoint {endpoint} accepts connections but does not answer ({exc})"
    if isinstance(
        exc, botocore.exceptions.EndpointConnectionError | botocore.exceptions.ConnectTimeoutError
    ):
        return (
            f"endpoint {endpoint} is unreachable (no connection within "
            f"{CONNECT_TIMEOUT_SECONDS} s): check endpoint_url and the network path"
        )
    if isinstance(exc, botocore.exceptions.ReadTimeoutError):
        return f"endpoint {endpoint} does not answer in time"
    if not isinstance(exc, botocore.exceptions.ClientError):
        return f"{type(exc).__name__}: the request did not complete"
    code = error_code(exc)
    response: dict[str, Any] = getattr(exc, "response", {})
    actual_region = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get(
        "x-amz-bucket-region"
    ) or response.get("Error", {}).get("Region")
    if code == "NoSuchBucket":
        return f"bucket {bucket!r} does not exist on {endpoint}: check the bucket name"
    if code in (
        "PermanentRedirect",
        "AuthorizationHeaderMalformed",
        "IllegalLocationConstraintException",
    ) or (actual_region and actual_region != region):
        real = f"the bucket is in {actual_region}" if actual_region else "the bucket is elsewhere"
        return f"wrong region: {real}, the integration says {region} ({code})"
    role = destination.role_arn
    if role and code in (
        "SignatureDoesNotMatch",
        "InvalidAccessKeyId",
        "InvalidToken",
        "ExpiredToken",
        "InvalidClientTokenId",
    ):
        return (
            f"the store refused the temporary credentials of role {role} ({code}): the "
            "store does not accept the sessions its STS issued, or they ran out; check again"
        )
    if code == "SignatureDoesNotMatch":
        return "the secret key does not match the access key id: check secret_key's variable"
    if code in ("InvalidAccessKeyId", "InvalidToken"):
        return "the access key id is unknown to the store: check access_key's variable"
    if code == "AccessDenied":
        folder = f"{destination.directory}/*" if destination.directory else "*"
        who = f"role {role}" if role else "these credentials"
        kms = (
            f"; and kms:GenerateDataKey, kms:Decrypt on KMS key {destination.kms_key_id}"
            if destination.sse == "aws:kms"
            else ""
        )
        return (
            f"access denied: {who} may not s3:PutObject on "
            f"arn:aws:s3:::{bucket}/{folder} (grant s3:PutObject and s3:AbortMultipartUpload"
            f"{kms}; see docs/customer-contract.md, 'The policy a customer grants')"
        )
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return f"the store refused the probe: {code} (HTTP {status})"
