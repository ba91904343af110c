"""Delivering through the customer's IAM role: the deployment's own principal (the standard AWS
chain: AWS_* variables, a profile, IRSA, an instance profile) calls STS AssumeRole on the role
an export names, with the integration's ExternalId, and the export's S3 client signs with the
temporary credentials, refreshed before they expire. Knows STS and the ExternalId's derivation;
nothing of Dagster, windows or CSV.

The ExternalId is never written in the integrations file: it is the HMAC-SHA256 of the
integration's name under the deployment's secret AFFISE_EXTERNAL_ID_KEY, so no block can
present another customer's, and `affise-s3 external-id NAME` prints it for the customer's
trust policy. Neither the secret, nor a temporary credential, nor the deployment's own keys
appear in an error, a log line or a repr here.
"""

import hashlib
import hmac
import os
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import boto3
import botocore.config
import botocore.exceptions

from affise_s3_assets.config import ConfigError
from affise_s3_assets.s3 import (
    CONNECT_TIMEOUT_SECONDS,
    MAX_ATTEMPTS,
    READ_TIMEOUT_SECONDS,
    RoleNotAssumed,
    isolated_botocore_session,
)

EXTERNAL_ID_KEY_VARIABLE = "AFFISE_EXTERNAL_ID_KEY"
# The temporary credentials asked for, and how long before their end they are replaced: a
# request signed with them always has minutes left to complete.
SESSION_SECONDS = 3600
REFRESH_BEFORE_EXPIRY_SECONDS = 5 * 60
# STS's limit on RoleSessionName.
_SESSION_NAME_MAX = 64


def external_id(integration: str) -> str:
    """The integration's ExternalId: hex HMAC-SHA256 of its name under AFFISE_EXTERNAL_ID_KEY
    (64 characters of [0-9a-f]). ConfigError naming the variable when it is unset."""
    key = os.environ.get(EXTERNAL_ID_KEY_VARIABLE)
    if not key:
        raise ConfigError(
            f"{EXTERNAL_ID_KEY_VARIABLE} is not set: the deployment's secret from which each "
            "integration's ExternalId is derived (set it once for the deployment; changing it "
            "changes every ExternalId)"
        )
    return hmac.new(key.encode(), integration.encode(), hashlib.sha256).hexdigest()


# `1`: AssumeRole may go to a plain-http endpoint (a local S3-compatible store in tests).
ALLOW_HTTP_VARIABLE = "AFFISE_STS_ALLOW_HTTP"


def session_name(integration: str) -> str:
    """The RoleSessionName naming the integration in the customer's CloudTrail."""
    return f"affise-{integration}"[:_SESSION_NAME_MAX]


def sts_endpoint(region: str, endpoint_url: str | None) -> str:
    """Where AssumeRole goes: the export's endpoint (S3-compatible stores serve STS there, as
    Ceph RGW does), else, for AWS (no endpoint, or one of AWS's own S3 endpoints), AWS's
    regional STS endpoint for the export's region."""
    from affise_s3_assets.config.schema import store_of

    if endpoint_url and store_of(endpoint_url) != "AWS":
        return endpoint_url
    suffix = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    return f"https://sts.{region}.{suffix}"


@dataclass(frozen=True)
class RoleSession:
    """One role as one integration assumes it: the credentials' cache key (with the STS
    endpoint), and what the STS request carries."""

    integration: str
    role_arn: str
    region: str
    sts_endpoint: str
    external_id: str = field(repr=False)

    @property
    def cache_key(self) -> tuple[str, str, str]:
        return (self.role_arn, self.external_id, self.sts_endpoint)


def role_session(
    integration: str, role_arn: str, region: str, endpoint_url: str | None
) -> RoleSession:
    """The session an export with `role_arn` delivers through (ConfigError without the
    deployment's AFFISE_EXTERNAL_ID_KEY)."""
    return RoleSession(
        integration, role_arn, region, sts_endpoint(region, endpoint_url), external_id(integration)
    )


@dataclass(frozen=True)
class _Temporary:
    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)
    token: str = field(repr=False)
    expires: datetime
    # When they were assumed, on the process's monotonic clock.
    obtained: float = field(default_factory=time.monotonic, compare=False)

    def metadata(self) -> dict[str, str]:
        """As botocore's RefreshableCredentials takes them."""
        return {
            "access_key": self.access_key,
            "secret_key": self.secret_key,
            "token": self.token,
            "expiry_time": self.expires.isoformat(),
        }


class RoleCredentialCache:
    """Temporary credentials per (role, ExternalId, STS endpoint), for the whole process: every
    export of one role shares them, and AssumeRole is called again only once they have less
    than REFRESH_BEFORE_EXPIRY_SECONDS left. One AssumeRole at a time per role."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[tuple[str, str, str], _Temporary] = {}
        self._locks: dict[tuple[str, str, str], threading.Lock] = {}
        self._deployment: boto3.session.Session | None = None

    def clear(self) -> None:
        """Forget every credential and the deployment's session (read afresh next time)."""
        with self._lock:
            self._held.clear()
            self._deployment = None

    def metadata(self, session: RoleSession) -> dict[str, str]:
        """The role's credentials, assumed now if none are held with time left."""
        key = session.cache_key
        with self._lock:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            held = self._held.get(key)
            if held is None or _seconds_left(held.expires) <= REFRESH_BEFORE_EXPIRY_SECONDS:
                held = self._assume(session)
                self._held[key] = held
            return held.metadata()

    def forget(self, session: RoleSession, token: str) -> bool:
        """Drop the role's credentials if they are still those with session token `token`
        (a store refused them as expired), so the next request for them assumes the role
        again; credentials that already replaced them are kept, and so are credentials
        assumed less than RENEW_AT_MOST_EVERY_SECONDS ago: a store that calls a session that
        new expired (its clock far ahead of STS's) would call the next one so too, and each
        request of every upload would otherwise call AssumeRole. Whether any were dropped."""
        key = session.cache_key
        with self._lock:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            held = self._held.get(key)
            if held is None or held.token != token:
                return False
            if time.monotonic() - held.obtained < RENEW_AT_MOST_EVERY_SECONDS:
                return False
            del self._held[key]
            return True

    def _deployment_credentials(self, session: RoleSession) -> Any:
        """The deployment's own credentials, frozen, from the standard AWS chain."""
        with self._lock:
            if self._deployment is None:
                try:
                    self._deployment = boto3.session.Session()
                except botocore.exceptions.ProfileNotFound as exc:
                    raise _no_deployment_credentials(
                        session, f"profile {exc.kwargs.get('profile')!r} not found"
                    ) from None
            deployment = self._deployment
        try:
            credentials = deployment.get_credentials()
        except (
            botocore.exceptions.ProfileNotFound,
            botocore.exceptions.PartialCredentialsError,
        ) as exc:
            raise _no_deployment_credentials(session, type(exc).__name__) from None
        if credentials is None:
            raise _no_deployment_credentials(session, "none found")
        return credentials.get_frozen_credentials()

    def _assume(self, session: RoleSession) -> _Temporary:
        if (
            session.sts_endpoint.startswith("http://")
            and os.environ.get(ALLOW_HTTP_VARIABLE) != "1"
        ):
            # The answer carries the role's temporary secret and token, and the request the
            # deployment's own session token: never in clear, but on a test bench.
            raise RoleNotAssumed(
                reason=f"will not assume role {session.role_arn} over plain http "
                f"({session.sts_endpoint}): the role's temporary credentials would cross the "
                f"network in clear; give the export an https endpoint_url "
                f"({ALLOW_HTTP_VARIABLE}=1 allows http, for test benches only)",
                code="InsecureStsEndpoint",
                status=None,
                permanent=True,
            )
        own = self._deployment_credentials(session)
        client = _deployment_client("sts", session, own)
        try:
            answer = client.assume_role(
                RoleArn=session.role_arn,
                RoleSessionName=session_name(session.integration),
                ExternalId=session.external_id,
                DurationSeconds=SESSION_SECONDS,
            )
        except botocore.exceptions.ClientError as exc:
            error = refused(exc, session)
            if error.kwargs["code"] == "RoleAccessDenied" and not _aws_sts(session):
                error = refused(exc, session, check_own_credentials(session, own))
            raise error from None
        finally:
            client.close()
        credentials = answer["Credentials"]
        expires = credentials["Expiration"]
        if expires.tzinfo is None:
            expires = expires.replace(tzinfo=UTC)
        return _Temporary(
            credentials["AccessKeyId"],
            credentials["SecretAccessKey"],
            credentials["SessionToken"],
            expires,
        )


def _seconds_left(expires: datetime) -> float:
    return expires.timestamp() - time.time()


def _deployment_client(service: str, session: RoleSession, own: Any) -> Any:
    """A client of `service` at the session's STS endpoint signing with the deployment's own
    (frozen) credentials `own`, reading no AWS_* setting."""
    return isolated_botocore_session().create_client(
        service,
        region_name=session.region,
        endpoint_url=session.sts_endpoint,
        aws_access_key_id=own.access_key,
        aws_secret_access_key=own.secret_key,
        aws_session_token=own.token,
        verify=True,
        config=botocore.config.Config(
            retries={"mode": "standard", "total_max_attempts": MAX_ATTEMPTS},
            connect_timeout=CONNECT_TIMEOUT_SECONDS,
            read_timeout=READ_TIMEOUT_SECONDS,
            ignore_configured_endpoint_urls=True,
        ),
    )


def _aws_sts(session: RoleSession) -> bool:
    """Whether the session's STS endpoint is AWS's own, which answers keys it does not know, a
    wrong secret or an expired token with codes of their own (_DEPLOYMENT), never
    AccessDenied."""
    return session.sts_endpoint == sts_endpoint(session.region, None)


@dataclass(frozen=True)
class CredentialsCheck:
    """What an S3-compatible store's endpoint answered an S3 ListBuckets signed with the
    deployment's own credentials: `accepted` True (it listed), False (it refused the keys
    themselves: _KEYS_REFUSED, or HTTP 401), None when the answer does not tell; `denied`, with
    None: the answer was AccessDenied (HTTP 403), which a store gives both to keys it does not
    know (Ceph RGW 16) and to a user of its own without the right to list buckets (IAM-style
    policies: MinIO, Ceph account users). `said` is the answer's code and HTTP status, or the
    failure's kind."""

    accepted: bool | None
    said: str
    denied: bool = False


def check_own_credentials(session: RoleSession, own: Any) -> CredentialsCheck:
    """What the session's STS endpoint (an S3-compatible store's: S3 and STS at one URL) says
    of the deployment's own credentials `own`, by an S3 ListBuckets signed with them. Ceph
    RGW's STS answers an AssumeRole signed with a key it does not know, or a wrong secret,
    with AccessDenied, as it answers a trust policy refusing; RGW 16 has no GetCallerIdentity
    (405) and refuses GetSessionToken to users without an IAM policy allowing it, so neither
    tells the two apart. Only a key-level answer to ListBuckets refuses the keys; its bare
    AccessDenied does not tell either. The answer's buckets are not read."""
    client = _deployment_client("s3", session, own)
    try:
        client.list_buckets()
    except botocore.exceptions.ClientError as exc:
        code, status = _code_and_status(exc)
        said = f"{code} (HTTP {status})"
        if code in _KEYS_REFUSED or status == 401:
            return CredentialsCheck(False, said)
        return CredentialsCheck(None, said, denied=code in _DENIED or status == 403)
    except botocore.exceptions.BotoCoreError as exc:
        return CredentialsCheck(None, type(exc).__name__)
    finally:
        client.close()
    return CredentialsCheck(True, "accepted")


# The process's one cache (tests clear it).
CREDENTIALS = RoleCredentialCache()

# A role's credentials are assumed again on a store's word at most this often.
RENEW_AT_MOST_EVERY_SECONDS = 60.0
# What a store answers a request signed with temporary credentials it holds for expired,
# whatever the local clock says of them (a clock behind the store's, a revoked session).
EXPIRED_TOKEN_CODES = frozenset({"ExpiredToken", "TokenRefreshRequired"})
# Where a role client's request keeps the session token it was signed with.
_SIGNED_WITH = "affise_role_session_token"


class RejectableCredentials(Protocol):
    """A role client's refreshable credentials (s3._RoleCredentials)."""

    def reject(self, token: str) -> None:
        """Count as expired now if still signing with session token `token`."""


def renew_when_rejected(
    events: Any, credentials: RejectableCredentials, session: RoleSession
) -> None:
    """Make a role client (its `events`, its `credentials`, refreshed from CREDENTIALS for
    `session`) drop the credentials a store answered with EXPIRED_TOKEN_CODES: from the cache
    and from the client, so its next request assumes the role again. The refresh otherwise
    goes by the local clock alone. The request so answered still fails, as a transient error
    (s3.PERMANENT_ERROR_CODES has none of these codes)."""

    def note_token(request: Any, **_: Any) -> None:
        # After the client's signer (request-created), which set the header.
        token = request.headers.get("X-Amz-Security-Token")
        if token:
            request.context[_SIGNED_WITH] = token.decode() if isinstance(token, bytes) else token

    def on_answer(parsed: Any = None, context: Any = None, **_: Any) -> None:
        error = (parsed or {}).get("Error") or {}
        token = (context or {}).get(_SIGNED_WITH)
        if error.get("Code") in EXPIRED_TOKEN_CODES and token:
            CREDENTIALS.forget(session, token)
            credentials.reject(token)

    events.register_last("request-created.s3", note_token)
    events.register("after-call.s3", on_answer)


def _no_deployment_credentials(session: RoleSession, why: str) -> RoleNotAssumed:
    return RoleNotAssumed(
        reason=(
            f"the deployment has no AWS credentials of its own ({why}) to assume role "
            f"{session.role_arn} with: an operator gives the deployment its AWS identity "
            "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile, IRSA or an instance profile)"
        ),
        code="NoDeploymentCredentials",
        status=None,
        permanent=True,
    )


# STS error codes that no retry fixes, by what the account manager does about them.
_DENIED = {"AccessDenied", "AccessDeniedException"}
_MISSING = {"NoSuchEntity"}
_DEPLOYMENT = {
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "ExpiredTokenException",
    "InvalidToken",
    "IncompleteSignature",
}
_INVALID = {"ValidationError", "InvalidParameterValue", "MalformedPolicyDocument"}
_REGION = {"RegionDisabledException"}
# What a store answers about the keys a request is signed with themselves (not about what
# their user may do): a key it does not know, a wrong secret, a suspended user, an expired or
# invalid session token.
_KEYS_REFUSED = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidClientTokenId",
    "UserSuspended",
    "ExpiredToken",
    "ExpiredTokenException",
    "InvalidToken",
}


def _code_and_status(exc: botocore.exceptions.ClientError) -> tuple[str, Any]:
    """The error's code (from the Error element, else the body's top level, as Ceph RGW's
    STS errors reach botocore) and HTTP status."""
    response = exc.response
    error = response.get("Error") or {}
    code = str(error.get("Code") or response.get("Code") or "Unknown")
    return code, response.get("ResponseMetadata", {}).get("HTTPStatusCode")


def refused(
    exc: botocore.exceptions.ClientError,
    session: RoleSession,
    own: CredentialsCheck | None = None,
) -> RoleNotAssumed:
    """AssumeRole's refusal in words an account manager can act on; permanent unless it is a
    throttle or the endpoint's own fault (5xx). Ceph RGW's STS errors reach botocore without
    an Error element (its S3-style error body is not STS's; ClientError says "Unknown"): the
    body's Code is read from the response's top level, and with none the HTTP status
    decides. An AccessDenied from an S3-compatible store's endpoint may be its answer to the
    deployment's own credentials: `own`, what the endpoint said of them (check_own_credentials),
    tells which when it refused the keys themselves or accepted them; otherwise the words name
    both."""
    code, status = _code_and_status(exc)
    role = session.role_arn
    fix = f"`affise-s3 external-id {session.integration}` prints what the role needs"
    if code in _MISSING or (code == "Unknown" and status == 404):
        reason = f"role {role} does not exist: the customer creates it ({fix})"
        code = "RoleNotFound"
    elif code in _DEPLOYMENT:
        reason = (
            f"the deployment's own AWS credentials were refused by STS ({code}) when assuming "
            f"role {role}: an operator renews or fixes the deployment's credentials"
        )
        code = "DeploymentCredentialsRefused"
    elif (code in _DENIED or (code == "Unknown" and status == 403)) and (
        own is not None and own.accepted is False
    ):
        reason = (
            f"the deployment's own AWS credentials were refused by {session.sts_endpoint} "
            f"when assuming role {role}: it answered AssumeRole {code} (HTTP {status}), and "
            f"S3 ListBuckets with the same credentials {own.said}, a refusal of the keys "
            "themselves; an operator gives the deployment the credentials of a user that "
            "store knows, or renews them"
        )
        code = "DeploymentCredentialsRefused"
    elif code in _DENIED or (code == "Unknown" and status == 403):
        reason = (
            f"role {role} may not be assumed by the deployment with integration "
            f"{session.integration!r}'s ExternalId: the role is missing, or its trust policy "
            "does not name the delivering principal with this ExternalId (it must be the "
            f"one derived for {session.integration!r}); {fix}"
        )
        if own is not None and own.accepted:
            reason += f" ({session.sts_endpoint} accepts the deployment's own credentials)"
        elif own is not None and own.denied:
            reason += (
                f"; or {session.sts_endpoint} does not accept the deployment's own "
                f"credentials: S3 ListBuckets with them was refused too ({own.said}), an "
                "answer a store gives both to keys it does not know (as Ceph RGW does) and to a "
                "user without the right to list buckets, so an operator checks the "
                "deployment's credentials against that store"
            )
        elif not _aws_sts(session):
            told = (
                f" (S3 ListBuckets with them, which would tell, answered {own.said})" if own else ""
            )
            reason += (
                f"; or {session.sts_endpoint} does not accept the deployment's own "
                f"credentials{told}: an S3-compatible store's STS, as Ceph "
                "RGW's, answers keys it does not know or a wrong secret with AccessDenied too, "
                "and an operator checks them"
            )
        code = "RoleAccessDenied"
    elif code in _REGION:
        reason = (
            f"STS is not enabled in region {session.region} of the deployment's account: an "
            "operator activates it (IAM > Account settings)"
        )
    elif code in _INVALID or (code == "Unknown" and status == 400):
        reason = f"STS refused to assume role {role} as asked ({code}): check role_arn"
    else:
        return RoleNotAssumed(
            reason=f"STS did not answer AssumeRole on role {role}: {code} (HTTP {status})",
            code=code,
            status=status,
            permanent=False,
        )
    return RoleNotAssumed(reason=reason, code=code, status=status, permanent=True)


POLICY_VERSION = "2012-10-17"
# What delivery needs on the customer's bucket (docs/customer-contract.md, "The policy a
# customer grants"), and on their KMS key when objects are encrypted with it.
S3_ACTIONS = ("s3:PutObject", "s3:AbortMultipartUpload")
KMS_ACTIONS = ("kms:GenerateDataKey", "kms:Decrypt")


def trust_policy(principal: str, integration_external_id: str) -> dict[str, Any]:
    """The trust policy the customer puts on their role: `principal` (the deployment's) may
    assume it with this ExternalId only."""
    return {
        "Version": POLICY_VERSION,
        "Statement": [
            {
                "Sid": "AffiseS3Delivery",
                "Effect": "Allow",
                "Principal": {"AWS": principal},
                "Action": "sts:AssumeRole",
                "Condition": {"StringEquals": {"sts:ExternalId": integration_external_id}},
            }
        ],
    }


@dataclass(frozen=True)
class PolicyTarget:
    """What one export writes to, for its role's permissions policy."""

    bucket: str
    directory: str
    region: str
    sse: str | None = None
    kms_key_id: str | None = None
    acl: str | None = None  # with an ACL, s3:PutObjectAcl as well


def permissions_policy(targets: list[PolicyTarget]) -> dict[str, Any]:
    """The role's permissions: S3_ACTIONS on each export's folder and, for an export encrypted
    with the customer's KMS key, KMS_ACTIONS on that key. No target: placeholders."""
    if not targets:
        targets = [PolicyTarget("<bucket>", "<directory>", "<region>")]
    folders = sorted(
        {f"arn:aws:s3:::{t.bucket}/{t.directory + '/' if t.directory else ''}*" for t in targets}
    )
    statements: list[dict[str, Any]] = [
        {
            "Sid": "AffiseS3Delivery",
            "Effect": "Allow",
            "Action": list(S3_ACTIONS)
            + (["s3:PutObjectAcl"] if any(t.acl for t in targets) else []),
            "Resource": folders,
        }
    ]
    keys: set[str] = set()
    aliases: set[str] = set()
    for target in targets:
        if target.sse != "aws:kms" or not target.kms_key_id:
            continue
        key = target.kms_key_id
        if key.startswith("arn:") and ":alias/" in key:
            aliases.add(key.split(":", 5)[5])
        elif key.startswith("alias/"):
            aliases.add(key)
        elif key.startswith("arn:"):
            keys.add(key)
        else:
            keys.add(f"arn:aws:kms:{target.region}:<customer-account-id>:key/{key}")
    if keys:
        statements.append(
            {
                "Sid": "AffiseS3DeliveryKmsKey",
                "Effect": "Allow",
                "Action": list(KMS_ACTIONS),
                "Resource": sorted(keys),
            }
        )
    if aliases:
        # A key named by its alias: IAM authorizes the key, so the alias is a condition.
        statements.append(
            {
                "Sid": "AffiseS3DeliveryKmsAlias",
                "Effect": "Allow",
                "Action": list(KMS_ACTIONS),
                "Resource": "*",
                "Condition": {"ForAnyValue:StringEquals": {"kms:ResourceAliases": sorted(aliases)}},
            }
        )
    return {"Version": POLICY_VERSION, "Statement": statements}


# An assumed role's session, as GetCallerIdentity names it: partition, account, role name.
_ASSUMED_ROLE = re.compile(r"arn:(aws[\w-]*):sts::(\d*):assumed-role/([^/]+)/.+")


@dataclass(frozen=True)
class Principal:
    """The delivering principal as a trust policy names it. `path_unread`: why `arn`, a role's,
    may lack the role's path (None when it is the role's whole ARN, or no role's)."""

    arn: str
    path_unread: str | None = None


def deployment_principal() -> Principal:
    """The delivering principal, from STS GetCallerIdentity of the deployment's standard AWS
    chain. An assumed role's session (IRSA, an instance profile) is given as its role's ARN,
    path included, which GetCallerIdentity does not say: from AWS_ROLE_ARN when it names that
    role (IRSA sets it), else from IAM GetRole on the role; when neither says it, the ARN
    without a path, with `path_unread` saying why (AWS refuses a trust policy naming a role
    that has a path without it). A role's name is unique in its account, whatever its path."""
    session = boto3.session.Session()
    region = session.region_name or "us-east-1"
    arn = str(session.client("sts", region_name=region).get_caller_identity()["Arn"])
    match = _ASSUMED_ROLE.fullmatch(arn)
    if not match:
        return Principal(arn)
    partition, account, name = match.groups()
    head = f"arn:{partition}:iam::{account}:role/"

    def is_this_role(candidate: str) -> bool:
        return candidate.startswith(head) and candidate.endswith("/" + name)

    configured = os.environ.get("AWS_ROLE_ARN", "")
    if is_this_role(configured):
        return Principal(configured)
    try:
        role = session.client("iam", region_name=region).get_role(RoleName=name)
        found = str(role["Role"]["Arn"])
    except botocore.exceptions.ClientError as exc:
        code, status = _code_and_status(exc)
        return Principal(head + name, f"IAM GetRole answered {code} (HTTP {status})")
    except botocore.exceptions.BotoCoreError as exc:
        return Principal(head + name, f"IAM GetRole failed: {type(exc).__name__}")
    if not is_this_role(found):
        return Principal(head + name, f"IAM GetRole answered another role's ARN, {found}")
    return Principal(found)
