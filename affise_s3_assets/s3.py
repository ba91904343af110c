"""The S3 library: clients for a destination's own account, streaming uploads of objects of
unknown length, riding out short outages of the store, journaling each multipart upload
(delivery/upload_journal.py) so that a killed process's is aborted by whoever comes next, and what
an S3 failure means. Knows S3 and the journal's protocol; nothing of Dagster, keys, windows or CSV.
"""

import base64
import bisect
import contextlib
import functools
import hashlib
import io
import itertools
import os
import re
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from concurrent.futures import Future, wait
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import IO, Any

import boto3
import botocore.config
import botocore.credentials
import botocore.exceptions
import botocore.handlers
import botocore.loaders
import botocore.session
from botocore.configprovider import (
    BOTOCORE_DEFAUT_SESSION_VARIABLES,
    ConfigValueStore,
    ConstantProvider,
)

from affise_s3_assets.config import ConfigError
from affise_s3_assets.config.secrets import resolve_reference
from affise_s3_assets.delivery.upload_journal import OpenUpload, UploadJournal

MIB = 1024 * 1024
DEFAULT_PART_SIZE_MIB = 8
# S3 caps a multipart upload at 10,000 parts; part sizes double every 1,000 parts so a stream
# of unknown length reaches the cap only past ~8 TiB at the default 8 MiB base (5 TiB is the
# largest object S3 accepts; ~4.9 TiB at the 5 MiB minimum base).
MAX_PARTS = 10_000
_PARTS_PER_SIZE_STEP = 1_000
# Each request is retried by botocore's "standard" mode on transient errors (5xx, SlowDown and
# other throttling, timeouts, connection resets): up to this many attempts, exponential backoff
# with full jitter (base 1 s, at most 20 s between attempts). Permanent errors are not retried.
MAX_ATTEMPTS = 5
CONNECT_TIMEOUT_SECONDS = 5
READ_TIMEOUT_SECONDS = 20
# A request's whole time, retries included: past it, the object fails (DeliveryTimeout, not
# permanent) and is delivered again later. An 8 MiB part takes a second or two to a healthy S3.
REQUEST_DEADLINE_SECONDS = 120
# ...plus this long per MiB of its body: a large part to a slow but working link gets its time.
SECONDS_PER_MIB = 1.0
# An object's requests together: REQUEST_DEADLINE_SECONDS once, plus this long per MiB of all
# they sent: a floor of 128 KiB/s on the object's average rate. A slow but working link (50
# large objects sharing a busy egress) stays well above it; an endpoint answering each 8 MiB
# part just before its own 128 s fails the object within a few parts (tighter than the
# 16 s/MiB a part gets alone, or it would never bite).
OBJECT_SECONDS_PER_MIB = 8.0
# S3's largest part; a part grows past its planned size only while the previous is in flight.
MAX_PART_BYTES = 5 * 1024 * MIB
# A connection that cannot be made or is cut (refused, reset, unreachable: a store restarting,
# a load balancer failing over) is tried again past botocore's own attempts, after 1 s, 2 s,
# 4 s, ... at most OUTAGE_MAX_WAIT_SECONDS apart, until the next wait would end past
# OUTAGE_SECONDS from the request's start (AFFISE_OUTAGE_SECONDS), and never past the
# request's own deadline: an outage of up to ~45 s costs a delivery some time, not its object.
# Only deliveries ride out outages (WindowObject asks for it); a writer's default is none, so
# a connection check answers at once. Read timeouts are no outage (an endpoint that accepts
# and stays silent is bounded by the deadlines above), nor is any HTTP error.
OUTAGE_SECONDS = 60.0
OUTAGE_FIRST_WAIT_SECONDS = 1.0
OUTAGE_MAX_WAIT_SECONDS = 15.0
OUTAGE_ERRORS = (
    botocore.exceptions.EndpointConnectionError,  # refused, unreachable, no such host
    botocore.exceptions.ConnectTimeoutError,
    botocore.exceptions.ConnectionClosedError,  # reset, or closed before an answer
)

# Errors a retry cannot fix: the destination's owner has to act. A delivery that fails with one
# stops trying that destination for the rest of its run; the catch-up sensor tries it again at
# its slow cadence (automation/catch_up.py), and once it works delivers every window it missed.
PERMANENT_ERROR_CODES = frozenset(
    {
        "AccessDenied",
        "AllAccessDisabled",
        "AccountProblem",
        "InvalidAccessKeyId",
        "InvalidBucketName",
        "InvalidToken",
        "KMS.DisabledException",  # the customer's key is disabled
        "KMS.NotFoundException",  # or gone
        "KMSAccessDeniedException",
        "InvalidClientTokenId",
        "NoSuchBucket",
        "PermanentRedirect",
        "SignatureDoesNotMatch",
        "AuthorizationHeaderMalformed",
        "UserSuspended",
    }
)


@dataclass(frozen=True)
class S3Destination:
    """Where one integration's event type is delivered. Credentials stay `${VAR}` references."""

    integration: str
    event_type: str
    bucket: str
    region: str
    directory: str
    # Keys (`${VAR}` references), or None with `role_arn`: the customer's role, assumed by
    # the deployment's own principal.
    access_key: str | None = field(default=None, repr=False)
    secret_key: str | None = field(default=None, repr=False)
    endpoint_url: str | None = None
    acl: str | None = None  # "bucket-owner-full-control" for another account's ACL bucket
    verify_etag: bool = True  # the store's ETags are MD5s (S3's own are, but for KMS and SSE-C)
    role_arn: str | None = None
    sse: str | None = None  # "AES256" or "aws:kms" (with kms_key_id); None: the bucket's default
    kms_key_id: str | None = None

    @property
    def label(self) -> str:
        return f"integration {self.integration!r} ({self.event_type})"

    @property
    def journal_name(self) -> str:
        """The name its open uploads are journaled under (delivery/upload_journal.py): no secret."""
        return f"{self.integration}/{self.event_type}"


class RoleNotAssumed(botocore.exceptions.BotoCoreError):
    """STS would not give the deployment the customer's role (missing, its trust policy
    refusing us or this ExternalId, the deployment's own credentials missing or refused), in
    words an account manager can act on; `permanent` unless STS throttled or failed itself.
    A BotoCoreError: raised by the request it was to sign, it is handled where any botocore
    failure is. Carries no credential and no ExternalId."""

    fmt = "{reason}"


def s3_client(destination: S3Destination) -> Any:
    """A client for the destination's own account; secrets are resolved now, at delivery.
    With `role_arn`, one signing with the role's temporary credentials, assumed on its first
    request and again before they expire (assume_role.py). Every PutObject and
    CreateMultipartUpload it sends carries the destination's `sse` (and `kms_key_id`)."""
    label = destination.label
    if destination.role_arn is not None:
        from affise_s3_assets.assume_role import role_session

        return _cached_role_client(
            destination.region,
            destination.endpoint_url,
            role_session(
                destination.integration,
                destination.role_arn,
                destination.region,
                destination.endpoint_url,
            ),
            destination.sse,
            destination.kms_key_id,
        )
    if destination.access_key is None or destination.secret_key is None:
        raise ConfigError(f"{label}: neither keys nor role_arn")
    return _cached_client(
        destination.region,
        destination.endpoint_url,
        resolve_reference(destination.access_key, f"{label} access_key"),
        resolve_reference(destination.secret_key, f"{label} secret_key"),
        destination.sse,
        destination.kms_key_id,
    )


# The encryption each client asks for, for S3ObjectWriter.verification: an SSE-KMS object's
# ETag is no MD5, whether or not the store's answer says how it encrypted.
_client_encryption: "weakref.WeakKeyDictionary[Any, str]" = weakref.WeakKeyDictionary()


def client_encryption(client: Any) -> str | None:
    """The `ServerSideEncryption` every object `client` creates asks for (None: the bucket's
    default)."""
    try:
        return _client_encryption.get(client)
    except TypeError:  # not weak-referenceable (a test's stand-in client)
        return None


def _ask_for_encryption(client: Any, sse: str | None, kms_key_id: str | None) -> Any:
    """`client`, its PutObject and CreateMultipartUpload carrying `sse` (and `kms_key_id`)."""
    if sse is None:
        return client
    wanted = {"ServerSideEncryption": sse}
    if kms_key_id is not None:
        wanted["SSEKMSKeyId"] = kms_key_id

    def add_encryption(params: dict[str, Any], **_: Any) -> None:
        for name, value in wanted.items():
            params.setdefault(name, value)

    for operation in ("PutObject", "CreateMultipartUpload"):
        client.meta.events.register(f"before-parameter-build.s3.{operation}", add_encryption)
    _client_encryption[client] = sse
    return client


_session_lock = threading.Lock()
_session: boto3.session.Session | None = None


class _SessionWithoutPlugins(botocore.session.Session):
    def _register_client_plugins(self, client: Any) -> None:
        # BOTOCORE_EXPERIMENTAL__PLUGINS would import a module into every client.
        return


def isolated_botocore_session() -> botocore.session.Session:
    """A botocore session that reads no `AWS_*` variable and no `~/.aws` file: a destination
    is its integration's block alone. (`AWS_ENDPOINT_URL` or a profile's `endpoint_url` would
    otherwise send an integration shown as AWS to another server; a profile's `s3` section
    would change its addressing.) Every setting botocore looks up is a constant, its default.
    What stays the deployment's, not a destination's: the HTTP(S)_PROXY / NO_PROXY network
    route (HTTP_PROXY, HTTPS_PROXY, NO_PROXY) and TLS key logging (SSLKEYLOGFILE), which only
    whoever runs the process can set. Neither botocore's experimental plugins nor the Lambda
    trace header (AWS_LAMBDA_FUNCTION_NAME, _X_AMZN_TRACE_ID) apply."""
    session = _SessionWithoutPlugins()
    session.unregister("before-call", botocore.handlers.add_recursion_detection_header)
    constants: dict[str, Any] = {
        name: ConstantProvider(default)
        for name, (_, _, default, _) in BOTOCORE_DEFAUT_SESSION_VARIABLES.items()
    }
    constants |= {
        "config_file": ConstantProvider(os.devnull),
        "credentials_file": ConstantProvider(os.devnull),
        "s3": ConstantProvider({}),
        "proxies_config": ConstantProvider({}),
        # Endpoints from AWS_ENDPOINT_URL(_S3) and the files are looked up apart from the
        # rest: this one switch turns that lookup off.
        "ignore_configured_endpoint_urls": ConstantProvider(True),
    }
    session.register_component("config_store", ConfigValueStore(mapping=constants))
    # Service models and endpoint rules from the installed packages only: a file under
    # ~/.aws/models would otherwise replace S3's. (boto3 adds its own data path to this.)
    session.register_component(
        "data_loader",
        botocore.loaders.Loader(
            extra_search_paths=[botocore.loaders.Loader.BUILTIN_DATA_PATH],
            include_default_search_paths=False,
        ),
    )
    return session


def _client_config(endpoint_url: str | None) -> botocore.config.Config:
    return botocore.config.Config(
        # S3-compatible stores (Ceph RGW, MinIO) want path-style URLs on an endpoint.
        s3={"addressing_style": "path" if endpoint_url else "auto"},
        # RGW does not understand boto3's default trailing checksums.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        retries={"mode": "standard", "total_max_attempts": MAX_ATTEMPTS},
        connect_timeout=CONNECT_TIMEOUT_SECONDS,
        read_timeout=READ_TIMEOUT_SECONDS,
        max_pool_connections=32,
        ignore_configured_endpoint_urls=True,
    )


@functools.lru_cache(maxsize=4096)
def _cached_client(
    region: str,
    endpoint_url: str | None,
    access_key: str,
    secret_key: str,
    sse: str | None = None,
    kms_key_id: str | None = None,
) -> Any:
    # One session for the process: a new session per client reloads the service model, a
    # client from a shared one does not (docs/design.md, "Tuning choices"). Sessions are not
    # thread-safe, hence the lock; the clients themselves are.
    global _session
    with _session_lock:
        if _session is None:
            _session = boto3.session.Session(botocore_session=isolated_botocore_session())
        client = _session.client(
            "s3",
            region_name=region,
            endpoint_url=endpoint_url,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            verify=True,  # the bundled CA store, not an AWS_CA_BUNDLE or REQUESTS_CA_BUNDLE
            config=_client_config(endpoint_url),
        )
    return _ask_for_encryption(client, sse, kms_key_id)


# The service models every role client's session reads: loaded once for all of them.
_role_loader: botocore.loaders.Loader | None = None


class _RoleCredentialProvider(botocore.credentials.CredentialProvider):
    METHOD = "assume-role"
    CANONICAL_NAME = "custom-affise-assume-role"

    def __init__(self, credentials: botocore.credentials.Credentials) -> None:
        super().__init__()
        self._credentials = credentials

    def load(self) -> botocore.credentials.Credentials:
        return self._credentials


class _RoleCredentials(botocore.credentials.DeferredRefreshableCredentials):
    # Asked of the shared cache REFRESH_BEFORE_EXPIRY_SECONDS (5 min) before the end, when it
    # assumes the role again; a failed refresh keeps the old ones until 2 min before the end.
    _advisory_refresh_timeout = 5 * 60
    _mandatory_refresh_timeout = 2 * 60

    def reject(self, token: str) -> None:
        # A store refused `token` as expired (assume_role.renew_when_rejected): unless they
        # were replaced meanwhile, these count as expired, and the next request refreshes them.
        with self._refresh_lock:
            frozen = self._frozen_credentials
            if frozen is not None and frozen.token == token:
                self._expiry_time = self._time_fetcher()


@functools.lru_cache(maxsize=4096)
def _cached_role_client(
    region: str,
    endpoint_url: str | None,
    role: Any,  # assume_role.RoleSession
    sse: str | None,
    kms_key_id: str | None,
) -> Any:
    """A client whose credentials are the role's, from the process's cache of them
    (assume_role.CREDENTIALS): its first request assumes the role if no export did yet, and
    a request within minutes of their end gets fresh ones, as does the one after a request the
    store answered ExpiredToken (assume_role.renew_when_rejected). Its session is isolated
    like the keys' one (isolated_botocore_session): only the deployment's AssumeRole call
    reads the standard AWS chain."""
    from affise_s3_assets.assume_role import CREDENTIALS, renew_when_rejected

    global _role_loader
    credentials = _RoleCredentials(
        refresh_using=functools.partial(CREDENTIALS.metadata, role), method="assume-role"
    )
    with _session_lock:
        session = isolated_botocore_session()
        if _role_loader is None:
            _role_loader = session.get_component("data_loader")
        session.register_component("data_loader", _role_loader)
        session.register_component(
            "credential_provider",
            botocore.credentials.CredentialResolver([_RoleCredentialProvider(credentials)]),
        )
        client = session.create_client(
            "s3",
            region_name=region,
            endpoint_url=endpoint_url,
            verify=True,
            config=_client_config(endpoint_url),
        )
    renew_when_rejected(client.meta.events, credentials, role)
    return _ask_for_encryption(client, sse, kms_key_id)


def part_size_for(part_number: int, base_part_size: int) -> int:
    """Part `part_number` (1-based) is base size for the first 1,000 parts, then doubles."""
    return base_part_size * 2 ** ((part_number - 1) // _PARTS_PER_SIZE_STEP)


class VerificationFailed(Exception):
    """What the store says it holds is not what was sent: the window is delivered again."""


@dataclass(frozen=True)
class Verification:
    """What the store answered about an object, against what was sent. `intact` is None when
    its answers cannot tell (an SSE-KMS or SSE-C object's ETag is no MD5; a store that gave
    none): S3 then vouches for each body only by its Content-MD5 check."""

    intact: bool | None
    how: str


# ETags that are not the MD5 of the bytes: objects encrypted with KMS keys or the customer's.
_OPAQUE_ETAG_ENCRYPTION = ("aws:kms", "aws:kms:dsse")


class DeliveryTimeout(Exception):
    """A request the endpoint did not answer within REQUEST_DEADLINE (retries included)."""


class EndpointOutage(botocore.exceptions.EndpointConnectionError):
    """No connection to the endpoint held for as long as a request may ride out an outage
    (OUTAGE_SECONDS, or what was left of its deadline). An EndpointConnectionError: callers
    that tell an unreachable endpoint apart see one."""

    fmt = 'Could not connect to the endpoint URL: "{endpoint_url}" for {seconds:.0f} s'


def outage_seconds() -> float:
    """How long a delivery's request rides out an outage (AFFISE_OUTAGE_SECONDS, default
    OUTAGE_SECONDS); 0 turns it off."""
    return float(os.environ.get("AFFISE_OUTAGE_SECONDS") or OUTAGE_SECONDS)


@dataclass(frozen=True)
class Journaling:
    """Where a writer journals its multipart upload, and under which destination's name."""

    journal: UploadJournal
    destination: str  # S3Destination.journal_name
    endpoint: str = ""  # the destination's endpoint_url; "" for AWS


@dataclass
class JournalCleanUp:
    """What aborting a destination's journaled uploads did. Nothing here fails a delivery."""

    aborted: int = 0  # aborted now, and forgotten
    gone: int = 0  # already completed or aborted (NoSuchUpload): forgotten
    held: int = 0  # still sent by a live writer, or too recent: left alone
    failed: list[str] = field(default_factory=list)  # error codes; those entries stay

    @property
    def found(self) -> int:
        return self.aborted + self.gone + self.held + len(self.failed)

    def __add__(self, other: "JournalCleanUp") -> "JournalCleanUp":
        return JournalCleanUp(
            self.aborted + other.aborted,
            self.gone + other.gone,
            self.held + other.held,
            self.failed + other.failed,
        )


def abort_journaled_uploads(
    client: Any,
    journal: UploadJournal,
    destination: str,
    endpoint: str = "",
    bucket: str | None = None,
    key: str | None = None,
    recorded_before: float | None = None,
    stale_after: float | None = None,
    time_budget: float | None = None,
) -> JournalCleanUp:
    """Abort the uploads `destination` has journaled on `endpoint` (only in `bucket`, and of
    `key`, when given) that nothing sends any more, with s3:AbortMultipartUpload alone, and
    forget them; NoSuchUpload (completed, or aborted already) forgets them too.

    An upload is aborted once the journal says it is abandoned, or once it was recorded more
    than `stale_after` seconds ago whoever holds it; never one recorded after
    `recorded_before` (epoch seconds). With `time_budget`, each abort is given up at what is
    left of it and those not reached are left for next time. Never raises: a journal that
    cannot be read, or an abort refused, leaves the entries for the next delivery or sweep."""
    outcome = JournalCleanUp()
    started = time.monotonic()
    try:
        uploads = journal.pending(destination)
    except Exception as exc:
        outcome.failed.append(f"journal: {type(exc).__name__}")
        return outcome
    for upload in uploads:
        if upload.endpoint != endpoint or bucket not in (None, upload.bucket):
            continue
        if key is not None and upload.key != key:
            continue
        try:
            if recorded_before is not None and upload.recorded_at > recorded_before:
                outcome.held += 1
                continue
            stale = stale_after is not None and time.time() - upload.recorded_at > stale_after
            if not stale and not journal.abandoned(upload):
                outcome.held += 1
                continue
        except Exception as exc:  # the journal could not tell: leave it
            outcome.failed.append(f"journal: {type(exc).__name__}")
            continue
        left = None if time_budget is None else time_budget - (time.monotonic() - started)
        if left is not None and left <= 0:
            outcome.held += 1
            continue
        try:
            call = functools.partial(
                client.abort_multipart_upload,
                Bucket=upload.bucket,
                Key=upload.key,
                UploadId=upload.upload_id,
            )
            if left is None:
                call()
            else:
                within_deadline(min(left, request_deadline()), call)
            outcome.aborted += 1
        except botocore.exceptions.ClientError as exc:
            if error_code(exc) != "NoSuchUpload":
                outcome.failed.append(error_code(exc))
                continue
            outcome.gone += 1
        except (botocore.exceptions.BotoCoreError, DeliveryTimeout) as exc:
            outcome.failed.append(type(exc).__name__)
            continue
        _forget(journal, upload)
    return outcome


def _forget(journal: UploadJournal, upload: OpenUpload) -> None:
    """Best effort: an entry left behind is aborted again later, and answers NoSuchUpload."""
    with contextlib.suppress(Exception):
        journal.forget(upload)


def request_deadline() -> float:
    """Seconds a request may take, botocore's retries included, before SECONDS_PER_MIB per
    MiB of its body is added (AFFISE_REQUEST_DEADLINE_SECONDS, default
    REQUEST_DEADLINE_SECONDS): the per-attempt timeouts alone do not bound a server that
    trickles a byte now and then. Only the request's own time counts, never the time the
    caller spends producing the object."""
    return float(os.environ.get("AFFISE_REQUEST_DEADLINE_SECONDS") or REQUEST_DEADLINE_SECONDS)


def _in_thread(function: Any, *args: Any, **kwargs: Any) -> Future[Any]:
    """Run one request on a daemon thread of its own: a request an endpoint never answers is
    abandoned at its deadline and cannot keep the process from exiting."""
    future: Future[Any] = Future()

    def run() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(function(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)

    threading.Thread(target=run, name="s3-request", daemon=True).start()
    return future


def within_deadline(seconds: float, function: Any, *args: Any, **kwargs: Any) -> Any:
    """`function(*args, **kwargs)` (a request, or a few), on a thread of its own, given up with
    DeliveryTimeout after `seconds`: an endpoint that accepts and then trickles would otherwise
    hold its caller, and with it every object of the run, for as long as it likes."""
    future = _in_thread(function, *args, **kwargs)
    # Waited for, then read: a TimeoutError the function itself raised is its own failure.
    if not wait([future], timeout=seconds).done:
        raise DeliveryTimeout(f"no answer within {seconds:.0f} s")
    return future.result()


class S3ObjectWriter:
    """Push-based upload of one object of unknown length.

    Up to one part it is a single PUT at `close()`. Beyond, a multipart upload whose parts go
    up one at a time while the next is being filled. `abort()` (or any failure inside
    `upload_stream`) discards it: no object, and the previous object under the key, if any,
    stays as it was.

    The caller (in a window run, the one thread feeding every integration's object) does not
    wait on the network: each request runs on a thread of its own, and while a part is in
    flight the next one keeps filling. A writer with `memory_bytes` spills it to its file and
    lets it grow up to S3's 5 GiB; one without waits for the part in flight once the next is
    four times its planned size (back-pressure). Each request gets `deadline` seconds plus
    SECONDS_PER_MIB per MiB of its body, counted from its own start, and the object's requests
    together `deadline` once plus SECONDS_PER_MIB per MiB of all their bodies (the time spent
    producing the object is not counted): an endpoint that accepts and never answers, trickles,
    or answers every part just in time, fails the object there.

    With `memory_bytes`, a part being filled keeps at most that much in memory and the rest in
    a temporary file: a window job fills one object per integration at once, and S3's 5 MiB
    minimum part size would otherwise cost each large integration a part of RAM.

    With `journaling`, the multipart upload is journaled once it exists and before its first
    part, and forgotten once completed or aborted: a process killed in between leaves an
    entry from which the next writer of the key (or a sweep) aborts it. That next writer does
    so before its own first request, for every entry of its key whose holder is gone
    (`leftovers` says what it found). With `outage_seconds`, each request rides out that long
    a connection outage (OUTAGE_SECONDS), within its own deadline.
    """

    def __init__(
        self,
        client: Any,
        bucket: str,
        key: str,
        part_size: int = DEFAULT_PART_SIZE_MIB * MIB,
        content_type: str = "application/gzip",
        memory_bytes: int | None = None,
        acl: str | None = None,
        deadline: float | None = None,
        journaling: Journaling | None = None,
        outage_seconds: float = 0.0,
    ) -> None:
        self.client, self.bucket, self.key = client, bucket, key
        self._journaling = journaling
        self._journaled: OpenUpload | None = None  # this upload's entry, while it is open
        self.leftovers: JournalCleanUp | None = None  # the key's earlier uploads, once looked at
        self._outage_seconds = outage_seconds
        self._stopping = threading.Event()  # set by abort(): no request waits out an outage
        self._part_size = part_size
        self._memory_bytes = memory_bytes
        self._deadline = deadline if deadline is not None else request_deadline()
        self._spent = 0.0  # seconds the object's ended requests took
        # What every request creating the object carries: its type and, for a bucket of
        # another account that uses ACLs, the grant letting its owner read it.
        self._create_args: dict[str, str] = {"ContentType": content_type}
        if acl:
            self._create_args["ACL"] = acl
        # Each request body carries its MD5 (Content-MD5): S3 refuses a body that arrived
        # other than sent (BadDigest), so a delivery is checked by the server itself, with
        # no read-back (which would need s3:GetObject).
        self._part_md5 = hashlib.md5(usedforsecurity=False)
        self._sha256 = hashlib.sha256()
        self.etag = ""  # as the server answered (RGW's multipart answer has none)
        self._digests: list[bytes] = []  # the MD5 of each request body sent, in order
        self._encryption = ""  # how the store says it encrypted the object
        # An SSE-KMS object's ETag is no MD5 even where the store's answer does not say so.
        self._requested_encryption = client_encryption(client) or ""
        # Compressed chunks waiting for the next part: sent as they are (`ChunkReader`) when
        # the part is full, or written to `_spool` once they pass `memory_bytes`.
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._spool: IO[bytes] | None = None
        self._upload_id: str | None = None  # set by the first part's request
        self._parts: list[dict[str, Any]] = []
        self._in_flight: Future[dict[str, Any]] | None = None
        self._in_flight_started = 0.0  # when the request in flight began
        self._in_flight_bytes = 0  # and its body's size
        self.aborted: Future[None] | None = None  # the abort, once asked for
        self.sent = 0
        self.most_in_memory = 0  # the largest pending part held in memory, in bytes

    def write(self, chunk: bytes) -> None:
        # Parts only need a minimum size (all but the last), not equal sizes: a part is whole
        # chunks, one copy of them and never a second part-sized buffer.
        if not chunk:
            return
        self._part_md5.update(chunk)
        self._sha256.update(chunk)
        if self._spool is not None:
            self._spool.write(chunk)
        else:
            self._pending.append(chunk)
            if self._memory_bytes is not None and self._pending_bytes + len(chunk) > (
                self._memory_bytes
            ):
                self._spool = tempfile.TemporaryFile(prefix="affise-part-")  # noqa: SIM115
                self._spool.writelines(self._pending)
                self._pending = []
        self._pending_bytes += len(chunk)
        if self._spool is None:
            self.most_in_memory = max(self.most_in_memory, self._pending_bytes)
        planned = part_size_for(len(self._parts) + 1, self._part_size)
        if self._pending_bytes >= planned:
            if self._in_flight is not None and not self._in_flight.done():
                cap = MAX_PART_BYTES if self._memory_bytes is not None else 4 * planned
                if self._pending_bytes < min(cap, MAX_PART_BYTES):
                    self._check_in_flight()
                    return  # the previous part is still going up: this one grows meanwhile
                self._wait(self._in_flight, self._in_flight_started, self._in_flight_bytes)
            self._send_part(self._take_pending())

    @property
    def parts(self) -> int:
        """Parts sent: 0 for a single PUT."""
        return len(self._parts)

    @property
    def sha256(self) -> str:
        """The SHA-256 of every byte written so far: the whole object once closed."""
        return self._sha256.hexdigest()

    def _allowed(self, size: int) -> float:
        return self._deadline + SECONDS_PER_MIB * size / MIB

    def _left(self, size: int, started: float) -> float:
        """Seconds the request begun at `started` may still take: its own deadline, and the
        object's (the deadline once, plus SECONDS_PER_MIB per MiB of every body sent, less
        the time its ended requests took), so slow parts cannot add up without end."""
        elapsed = time.monotonic() - started
        return min(self._allowed(size), self._object_allowed() - self._spent) - elapsed

    def _object_allowed(self, more: int = 0) -> float:
        """The object's requests' time in all, once `more` bytes beyond those sent go too."""
        return self._deadline + OBJECT_SECONDS_PER_MIB * (self.sent + more) / MIB

    def _timeout(self, size: int) -> DeliveryTimeout:
        return DeliveryTimeout(
            f"a request got no complete answer in time ({self._allowed(size):.0f} s for it, "
            f"{self._object_allowed():.0f} s for the object's requests in all)"
        )

    def _started(self, future: Future[Any]) -> Future[Any]:
        """`future`, a request begun now, counted into the object's time once it ends."""
        started = time.monotonic()

        def ended(_: Future[Any]) -> None:
            self._spent += time.monotonic() - started

        future.add_done_callback(ended)
        return future

    def _check_in_flight(self) -> None:
        # Done meanwhile: its time is in _spent already (counting it as elapsed too would
        # be counting it twice).
        left = self._left(self._in_flight_bytes, self._in_flight_started)
        if left < 0 and not self._in_flight.done():
            raise self._timeout(self._in_flight_bytes)

    def _check_budget(self, size: int) -> None:
        """Before a request of `size` bytes starts: the object's deadline is not spent
        already (a request begun with none left would be given up at once, and might still
        land after its object was reported failed)."""
        if self._object_allowed(size) - self._spent <= 0:
            raise self._timeout(size)

    def _wait(self, future: Future[Any], started: float, size: int) -> Any:
        try:
            return future.result(timeout=max(0.0, self._left(size, started)))
        except FutureTimeout:
            raise self._timeout(size) from None

    def _take_pending(self) -> tuple[bytes | IO[bytes], str]:
        """The pending part (its one chunk, a `ChunkReader` of its chunks, or its temporary
        file rewound; either file is closed once uploaded) and its Content-MD5."""
        body: bytes | IO[bytes]
        if self._spool is not None:
            body, self._spool = self._spool, None
            body.seek(0)
        elif len(self._pending) == 1 and isinstance(self._pending[0], bytes):
            body = self._pending[0]
        else:
            body = ChunkReader(self._pending)
        self._pending, self._pending_bytes = [], 0
        digest = self._part_md5.digest()
        self._digests.append(digest)
        md5 = base64.b64encode(digest).decode()
        self._part_md5 = hashlib.md5(usedforsecurity=False)
        return body, md5

    def _send_part(self, pending: tuple[bytes | IO[bytes], str]) -> None:
        """Start the next part's upload; the previous one has ended (its error raises here)."""
        body, md5 = pending
        number = len(self._parts) + 1
        try:
            if number > MAX_PARTS:
                raise ValueError(f"s3://{self.bucket}/{self.key}: more than {MAX_PARTS} parts")
            if self._in_flight is not None:
                self._in_flight.result()
            self._check_budget(_body_size(body))
        except BaseException:
            if not isinstance(body, bytes):
                body.close()
            raise
        part: dict[str, Any] = {"PartNumber": number}
        self._parts.append(part)
        # Sized before the upload thread starts reading: measuring seeks the file.
        size = _body_size(body)
        self.sent += size
        self._in_flight_started, self._in_flight_bytes = time.monotonic(), size
        give_up_at = self._give_up_at(size, self._in_flight_started)
        self._in_flight = self._started(_in_thread(self._upload_part, part, body, md5, give_up_at))

    def _upload_part(
        self, part: dict[str, Any], body: bytes | IO[bytes], md5: str, give_up_at: float
    ) -> dict[str, Any]:
        try:
            if self._upload_id is None:
                self._abort_leftovers()
                created = self._call(
                    give_up_at,
                    self.client.create_multipart_upload,
                    Bucket=self.bucket,
                    Key=self.key,
                    **self._create_args,
                )
                self._note_encryption(created)
                self._upload_id = created["UploadId"]
                if self._journaling is not None:
                    # Before the first part: an upload with no part costs nothing, so a
                    # process killed before this line leaves nothing billed. JournalUnavailable
                    # fails the object, whose abort() then aborts this upload.
                    self._journaled = self._journaling.journal.record(
                        self._journaling.destination,
                        self._journaling.endpoint,
                        self.bucket,
                        self.key,
                        self._upload_id,
                    )
            response = self._call(
                give_up_at,
                self.client.upload_part,
                Bucket=self.bucket,
                Key=self.key,
                UploadId=self._upload_id,
                PartNumber=part["PartNumber"],
                Body=body,
                ContentMD5=md5,
            )
        finally:
            if not isinstance(body, bytes):
                body.close()
        part["ETag"] = response["ETag"]
        return part

    def _give_up_at(self, size: int, started: float) -> float:
        """When a request of `size` bytes begun at `started` (monotonic) is given up: the
        moment `_wait` would raise DeliveryTimeout for it."""
        return started + self._left(size, started)

    def _call(
        self, give_up_at: float, request: Callable[..., Any], stoppable: bool = True, **args: Any
    ) -> Any:
        """`request(**args)`, tried again while the connection fails (OUTAGE_ERRORS), waiting
        1 s, 2 s, 4 s, ... (at most OUTAGE_MAX_WAIT_SECONDS), as long as the next wait ends
        within `outage_seconds` of the first try and before `give_up_at` (monotonic); then
        EndpointOutage. A `stoppable` request stops waiting once the writer is aborted and
        raises its last error. A file body is rewound for each try."""
        began = time.monotonic()
        wait = OUTAGE_FIRST_WAIT_SECONDS
        while True:
            body = args.get("Body")
            if body is not None and not isinstance(body, bytes):
                body.seek(0)
            try:
                return request(**args)
            except OUTAGE_ERRORS as exc:
                if not self._outage_seconds or (stoppable and self._stopping.is_set()):
                    raise
                if time.monotonic() + wait > min(began + self._outage_seconds, give_up_at):
                    raise EndpointOutage(
                        endpoint_url=exc.kwargs.get("endpoint_url", ""),
                        error=exc,
                        seconds=time.monotonic() - began,
                    ) from exc
                if stoppable:
                    if self._stopping.wait(wait):
                        raise
                else:
                    time.sleep(wait)  # an abort's own retries: only time ends them
                wait = min(2 * wait, OUTAGE_MAX_WAIT_SECONDS)

    def _abort_leftovers(self) -> None:
        """Before the first request for the key: abort the uploads of it the journal holds
        from writers that are gone (a killed run's). Never fails the object."""
        if self._journaling is None or self.leftovers is not None:
            return
        self.leftovers = abort_journaled_uploads(
            self.client,
            self._journaling.journal,
            self._journaling.destination,
            endpoint=self._journaling.endpoint,
            bucket=self.bucket,
            key=self.key,
        )

    def _forget_upload(self) -> None:
        if self._journaling is not None and self._journaled is not None:
            _forget(self._journaling.journal, self._journaled)
            self._journaled = None

    def close(self) -> tuple[int, int]:
        """Complete the object; returns (bytes sent, parts), parts 0 for a single PUT."""
        if not self._parts:
            body, md5 = self._take_pending()
            self.sent = _body_size(body)

            def put(give_up_at: float) -> dict[str, Any]:
                try:
                    self._abort_leftovers()
                    return self._call(
                        give_up_at,
                        self.client.put_object,
                        Bucket=self.bucket,
                        Key=self.key,
                        Body=body,
                        ContentMD5=md5,
                        **self._create_args,
                    )
                finally:
                    if not isinstance(body, bytes):
                        body.close()

            # A PUT given up at the deadline may still land later: the same bytes under the
            # same key, so a re-delivery overwrites it with what it would have held.
            started = time.monotonic()
            give_up_at = self._give_up_at(self.sent, started)
            response = self._wait(self._started(_in_thread(put, give_up_at)), started, self.sent)
            self.etag = response.get("ETag", "").strip('"').lower()
            self._note_encryption(response)
            return self.sent, 0
        assert self._in_flight is not None
        self._wait(self._in_flight, self._in_flight_started, self._in_flight_bytes)
        if self._pending_bytes:
            self._send_part(self._take_pending())
            self._wait(self._in_flight, self._in_flight_started, self._in_flight_bytes)
        self._check_budget(0)
        started = time.monotonic()
        complete = self._started(
            _in_thread(
                self._call,
                self._give_up_at(0, started),
                self.client.complete_multipart_upload,
                Bucket=self.bucket,
                Key=self.key,
                UploadId=self._upload_id,
                MultipartUpload={"Parts": self._parts},
            )
        )
        self._in_flight = complete  # an abort after a deadline waits for it
        self._in_flight_started, self._in_flight_bytes = started, 0
        response = self._wait(complete, self._in_flight_started, 0)
        self._forget_upload()
        self.etag = response.get("ETag", "").strip('"').lower()
        self._close_spool()
        return self.sent, len(self._parts)

    def _note_encryption(self, response: dict[str, Any]) -> None:
        if response.get("SSECustomerAlgorithm"):
            self._encryption = "SSE-C"
        elif response.get("ServerSideEncryption") in _OPAQUE_ETAG_ENCRYPTION:
            self._encryption = str(response["ServerSideEncryption"])

    def verification(self, etags: bool = True) -> Verification:
        """The closed object as the store acknowledged it, from its answers alone (no read:
        that would need s3:GetObject): a single PUT's ETag is the MD5 of its bytes, a part's
        ETag its part's, a multipart object's the MD5 of its parts' MD5s and their count.
        Without `etags` (a store whose ETags are no MD5s, such as MinIO without its S3
        compatibility), Content-MD5 alone vouches for each body."""
        if not etags:
            return Verification(
                None,
                "this destination's ETags are not checked (verify_etag: false): "
                "checked by S3 against each request's Content-MD5 only",
            )
        encryption = self._encryption or (
            self._requested_encryption
            if self._requested_encryption in _OPAQUE_ETAG_ENCRYPTION
            else ""
        )
        if encryption:
            return Verification(
                None,
                f"the store encrypted it with {encryption}, whose ETags are not MD5s: "
                "checked by S3 against each request's Content-MD5 only",
            )
        if not self._parts:
            expected = self._digests[-1].hex()
            if not self.etag:
                return Verification(None, "the store answered no ETag: Content-MD5 only")
            if self.etag != expected:
                return Verification(
                    False, f"the store's ETag {self.etag} is not the MD5 sent, {expected}"
                )
            return Verification(True, "the store's ETag is the MD5 of the bytes sent")
        for number, (part, digest) in enumerate(zip(self._parts, self._digests, strict=True), 1):
            etag = str(part.get("ETag", "")).strip('"').lower()
            if etag != digest.hex():
                return Verification(
                    False, f"part {number}'s ETag {etag or '(none)'} is not its MD5, {digest.hex()}"
                )
        whole = f"{hashlib.md5(b''.join(self._digests), usedforsecurity=False).hexdigest()}"
        whole += f"-{len(self._parts)}"
        if self.etag and self.etag != whole:
            return Verification(
                False, f"the store's ETag {self.etag} is not the one of the parts sent, {whole}"
            )
        return Verification(
            True,
            f"each of the {len(self._parts)} parts' ETags is its MD5"
            + (
                ", and the object's ETag theirs"
                if self.etag
                else " (the store answered no ETag for the whole object)"
            ),
        )

    def abort(self) -> Future[None]:
        """Discard everything sent; never raises, the original failure is the one to report.
        The multipart upload is aborted on a thread of its own, once the request in flight has
        ended: the caller never waits on an endpoint that just failed. `aborted` (returned
        too) tells when that is done."""
        self._close_spool()
        self._stopping.set()
        in_flight = self._in_flight

        def abort_upload() -> None:
            if in_flight is not None:
                # Wait for it to end, whatever its outcome; one that never does is left to
                # the bucket's lifecycle rule and the next re-delivery's clean-up.
                with contextlib.suppress(FutureTimeout):
                    in_flight.exception(timeout=self._allowed(self._in_flight_bytes))
            if self._upload_id is not None:
                try:
                    self._call(
                        time.monotonic() + self._allowed(0),
                        self.client.abort_multipart_upload,
                        stoppable=False,
                        Bucket=self.bucket,
                        Key=self.key,
                        UploadId=self._upload_id,
                    )
                except botocore.exceptions.ClientError as exc:
                    if error_code(exc) != "NoSuchUpload":
                        return  # journaled still: the next writer of the key or a sweep
                except botocore.exceptions.BotoCoreError:
                    return
                self._forget_upload()

        self.aborted = _in_thread(abort_upload)
        return self.aborted

    def _close_spool(self) -> None:
        if self._spool is not None:
            self._spool.close()
            self._spool = None


class ChunkReader(io.RawIOBase):
    """A request body read from its chunks in order, never joined into one buffer: joining
    held a part's bytes twice, the chunks and their copy, at the moment it was full. botocore
    sends a `bytes` body as a file too (a BytesIO), so the request is the same."""

    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = chunks
        self._ends = list(itertools.accumulate(len(chunk) for chunk in chunks))
        self._size = self._ends[-1] if self._ends else 0
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence not in (io.SEEK_SET, io.SEEK_CUR, io.SEEK_END):
            raise ValueError(f"invalid whence ({whence})")
        if whence == io.SEEK_SET and offset < 0:
            raise ValueError(f"negative seek value {offset}")
        # As io.BytesIO: a relative seek before the start stops at it.
        self._position = max(0, (0, self._position, self._size)[whence] + offset)
        return self._position

    def readinto(self, buffer: Any) -> int:
        target = memoryview(buffer).cast("B")
        data = self.read(len(target))
        target[: len(data)] = data
        return len(data)

    def read(self, size: int | None = -1) -> bytes:
        if self.closed:
            raise ValueError("I/O operation on closed file")
        end = self._size if size is None or size < 0 else min(self._size, self._position + size)
        pieces = []
        while self._position < end:
            index = bisect.bisect_right(self._ends, self._position)
            start = self._ends[index] - len(self._chunks[index])
            piece = memoryview(self._chunks[index])[self._position - start : end - start]
            pieces.append(piece)
            self._position += len(piece)
        return b"".join(pieces)

    def close(self) -> None:
        self._chunks = []
        super().close()


def _body_size(body: bytes | IO[bytes]) -> int:
    if isinstance(body, bytes):
        return len(body)
    return body.seek(0, 2) - body.seek(0)


def upload_stream(
    client: Any,
    bucket: str,
    key: str,
    chunks: Iterable[bytes],
    part_size: int = DEFAULT_PART_SIZE_MIB * MIB,
    content_type: str = "application/gzip",
) -> tuple[int, int]:
    """Stream chunks to one object; returns (bytes sent, parts). See `S3ObjectWriter`."""
    writer = S3ObjectWriter(client, bucket, key, part_size, content_type)
    source = iter(chunks)
    try:
        for chunk in source:
            writer.write(chunk)
        return writer.close()
    except BaseException:
        # Its caller is told "nothing is left" once this returns: wait for the abort.
        with contextlib.suppress(Exception):
            writer.abort().result(timeout=2 * writer._deadline)
        raise
    finally:
        # A producer with threads of its own stops them when closed; don't rely
        # on garbage collection to do it.
        close = getattr(source, "close", None)
        if close is not None:
            close()


def describe_s3_error(exc: BaseException) -> str:
    """A short, secret-free reason. RGW sends empty messages, so the error Code leads."""
    if isinstance(exc, ConfigError | RoleNotAssumed):
        return str(exc)
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = error.get("Code") or "error"
        message = error.get("Message") or ""
        return f"{code} (HTTP {status}){': ' + message if message else ''}"
    if isinstance(exc, EndpointOutage):
        return (
            f"cannot connect to endpoint {exc.kwargs.get('endpoint_url')} "
            f"(tried for {exc.kwargs.get('seconds', 0):.0f} s)"
        )
    if isinstance(exc, botocore.exceptions.EndpointConnectionError):
        return f"cannot connect to endpoint {exc.kwargs.get('endpoint_url')}"
    text = _REQUEST_SECRETS.sub("[request headers withheld]", str(exc))
    return type(exc).__name__ + (f": {text}" if text else "")


# Where a request's signing material starts in an error's text (http.client quotes a refused
# header whole): everything from there on is left out.
_REQUEST_SECRETS = re.compile(
    r"(AWS4-HMAC-SHA256|Credential=|Signature=|X-Amz-|Authorization|aws_access_key_id"
    r"|aws_secret_access_key).*",
    re.IGNORECASE | re.DOTALL,
)


# What a delivery can fail with, other than a bug: reported per destination, never a secret.
DELIVERY_ERRORS = (
    ConfigError,
    DeliveryTimeout,
    botocore.exceptions.BotoCoreError,
    botocore.exceptions.ClientError,
)


def object_uri(destination: S3Destination, key: str) -> str:
    return f"s3://{destination.bucket}/{key}"


def delivery_failure(destination: S3Destination, key: str, exc: BaseException) -> str:
    return (
        f"Delivery failed for {destination.label} to bucket {destination.bucket!r}, "
        f"key {key!r}: {describe_s3_error(exc)}"
    )


def delivered_metadata(writer: S3ObjectWriter, destination: S3Destination) -> dict[str, Any]:
    """What a closed object's materialization records. Nothing is read back: S3 checked every
    request body against its Content-MD5, which takes no permission beyond s3:PutObject."""
    return {
        "object_bytes": writer.sent,
        "multipart_parts": writer.parts,
        "s3_uri": object_uri(destination, writer.key),
        "etag": writer.etag,
        "sha256": writer.sha256,
    }


def abort_leftover_uploads(client: Any, bucket: str, key: str) -> int | str | None:
    """Abort the multipart uploads still open for exactly `key` (a killed run's, an abort that
    failed): they are invisible, but their parts are billed. Best effort: None when listing
    them is not allowed (s3:ListBucketMultipartUploads is optional; the bucket's lifecycle rule
    AbortIncompleteMultipartUpload covers it), "failed: <why>" when the store would not or not
    within one request's deadline, else how many were aborted. Never raises: the object is
    already delivered."""

    def abort_all() -> int:
        aborted = 0
        pages = client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Prefix=key)
        for page in pages:
            for upload in page.get("Uploads", []):
                if upload["Key"] == key:
                    client.abort_multipart_upload(
                        Bucket=bucket, Key=key, UploadId=upload["UploadId"]
                    )
                    aborted += 1
        return aborted

    try:
        return within_deadline(request_deadline(), abort_all)
    except botocore.exceptions.ClientError as exc:
        if error_code(exc) in PERMANENT_ERROR_CODES:
            return None
        return f"failed: {error_code(exc)}"  # the object is delivered: this fails nothing
    except (botocore.exceptions.BotoCoreError, DeliveryTimeout) as exc:
        return f"failed: {type(exc).__name__}"


# Failures that took a request's whole time: our deadline, botocore's read timeouts after
# every attempt (a silent endpoint ends so, ~5 x 20 s, before the deadline), or an outage
# ridden out for OUTAGE_SECONDS. A connection error without that ride (a caller that asked
# for none) is cheaper: such a destination is stopped after two windows in a row.
TIMEOUT_CODES = ("DeliveryTimeout", "ReadTimeoutError", "EndpointOutage")
CLEAN_UP_TIMED_OUT = tuple(f"failed: {code}" for code in TIMEOUT_CODES)


def is_permanent(exc: BaseException) -> bool:
    """Whether retrying `exc` is pointless until someone fixes the destination or its config."""
    if isinstance(exc, ConfigError):
        return True
    if isinstance(exc, RoleNotAssumed):
        return bool(exc.kwargs.get("permanent"))
    if isinstance(exc, botocore.exceptions.ClientError):
        return exc.response.get("Error", {}).get("Code") in PERMANENT_ERROR_CODES
    return False


def error_code(exc: BaseException) -> str:
    """The S3 error code, or the kind of failure, for metadata an operator can filter on."""
    if isinstance(exc, botocore.exceptions.ClientError):
        return str(exc.response.get("Error", {}).get("Code") or "error")
    if isinstance(exc, ConfigError):
        return "ConfigError"
    if isinstance(exc, RoleNotAssumed):
        return str(exc.kwargs.get("code") or "RoleNotAssumed")
    return type(exc).__name__
