"""The notify sensor: tells each integration with `notify:` (its webhook) when one of its
exports starts failing with a permanent error, reminds it at most once a day while the export
stays broken, and tells it when the export delivers again.

Health is read from what the export step already records on the instance: its failure
observations (delivery/report.py's `FailureRecord`: the words, the error code, whether a retry
can fix it, the action a refusal named) and its materializations (a window delivered), each
export read from the storage id where the last tick stopped. Each integration's notification
state (every export's health, the events still to send, the webhook's backoff) is one JSON
value in the instance's key-value store, written before an event is sent and again once it
is: a restart neither loses an event nor forgets one was sent (an event whose answer was lost
with the process is sent again, same `id`).

Events are sent from the sensor only, never from a run: each integration's webhook gets its
own thread and a short timeout per request, so a slow or dead receiver costs its own
integration a retry later (backoff), never a delivery and never another integration's event.
A webhook is an outbound request chosen by whoever edits the file: https only, to public
addresses only (every address its host resolves to, and the connection goes to a checked
one), no redirects followed; AFFISE_NOTIFY_ALLOW_PRIVATE=1 lifts both rules (tests,
on-premises receivers). Each body is signed with HMAC-SHA256 under the integration's
`${<NAME>_NOTIFY_SECRET}` (`sign`).

Knows the config's `notify:` block, the step's observation and materialization labels and
Dagster's sensors. Must not know how a window is read, encoded or uploaded, nor S3 calls: it
never talks to a bucket. Never puts a secret (keys, the webhook's URL, tokens) in a payload,
a tick's message or a log line.
"""

import contextlib
import hashlib
import hmac
import http.client
import ipaddress
import json
import os
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import dagster as dg

from affise_s3_assets.config import ConfigError
from affise_s3_assets.config.schema import EventType, IntegrationConfig
from affise_s3_assets.config.secrets import env_reference_name, resolve_reference
from affise_s3_assets.config.targets import export_asset_key
from affise_s3_assets.config.windows import PARTITION_KEY_FORMAT
from affise_s3_assets.dagster_internal import store_values, stored_values
from affise_s3_assets.delivery.report import FailureRecord

NOTIFY_SENSOR_NAME = "notify_sensor"
TICK_SECONDS = 60
STATE_PREFIX = "affise/notify/"
STATE_VERSION = 1
ALLOW_PRIVATE_VARIABLE = "AFFISE_NOTIFY_ALLOW_PRIVATE"
SIGNATURE_HEADER = "X-Affise-Signature"
TIMESTAMP_HEADER = "X-Affise-Timestamp"
EVENT_HEADER = "X-Affise-Event"
EVENT_SCHEMA = "affise-s3-delivery-event/1"

# A broken export is reminded of at most this often, counted from the last notice sent.
REMINDER_EVERY = timedelta(days=1)
# An export that delivers again heals once every window it missed is delivered, or this long
# after its first delivery since (the rest are then named as still missing: the catch-up
# sensor delivers them).
HEAL_SETTLE = timedelta(minutes=30)
# One request (resolving, connecting, sending, the answer's status) gets this long at most.
SEND_TIMEOUT_SECONDS = 5.0
# No new request starts after this much of a tick: what is left waits for the next tick.
TICK_SEND_BUDGET_SECONDS = 30.0
# Webhooks sent to at once, at most.
PARALLEL_SENDS = 16
# A failed send is tried again after this, doubling per failure, at most RETRY_MAX_WAIT.
RETRY_FIRST_WAIT = timedelta(minutes=1)
RETRY_MAX_WAIT = timedelta(hours=1)
# Records read per export and kind per tick at most; the rest next tick.
RECORDS_PER_READ = 1000
# Events waiting per integration at most.
MAX_QUEUED = 50
# Window starts listed in an event at most (the count and span are always given).
WINDOWS_LISTED = 100
# Of an answer, this much is read at most.
ANSWER_BYTES = 4096

# What the customer can do about each permanent error the step reports (s3.py's
# PERMANENT_ERROR_CODES, and the config's).
_WHAT_TO_DO = {
    "AccessDenied": "the bucket refused the write: grant the delivering principal the "
    "permissions_needed on the bucket and folder (and KMS key, if any)",
    "AllAccessDisabled": "all access to the bucket is disabled: re-enable it",
    "AccountProblem": "the bucket's account has a problem (billing, suspension): resolve it "
    "with the store",
    "InvalidAccessKeyId": "the access key id is not known to the store (deleted or mistyped): "
    "send new keys to your account manager",
    "InvalidBucketName": "the bucket name is not valid for the store: correct it",
    "InvalidToken": "the temporary credentials were refused: check the role and its trust policy",
    "NoSuchBucket": "the bucket does not exist (or not in this account and region): create it "
    "or send the right name",
    "PermanentRedirect": "the bucket is in another region than configured: send its region",
    "SignatureDoesNotMatch": "the secret key does not match the access key id: send the pair again",
    "AuthorizationHeaderMalformed": "the bucket is in another region than configured: send "
    "its region",
    "UserSuspended": "the user whose keys deliver is suspended: re-enable it or send new keys",
    "RoleAccessDenied": "the role refused the delivering principal or this ExternalId: check "
    "the role's trust policy against the one `affise-s3 external-id` printed",
    "RoleNotFound": "the role does not exist (or not under that ARN): create it, or send its ARN",
    "KMS.DisabledException": "the KMS key the files are encrypted with is disabled: enable it",
    "KMS.NotFoundException": "the KMS key the files are encrypted with does not exist: send the "
    "right key id",
    "KMSAccessDeniedException": "the KMS key refused the delivering principal: grant it "
    "kms:GenerateDataKey and kms:Decrypt",
}
# Permanent failures that are the deployment's to fix, not the customer's: no event is sent
# for them (the operator sees them on the asset's page and in the run).
DEPLOYMENT_FAULTS = frozenset(
    {
        "ConfigError",
        "NoDeploymentCredentials",
        "DeploymentCredentialsRefused",
        "InsecureStsEndpoint",
    }
)


class WebhookRefused(Exception):
    """A webhook a rule refuses: the message names the rule and the variable, never the URL."""


class WebhookFailed(Exception):
    """A send that did not get a 2xx answer in time: tried again later."""


def allow_private() -> bool:
    return os.environ.get(ALLOW_PRIVATE_VARIABLE) == "1"


def sign(secret: str, body: bytes) -> str:
    """The signature header's value: `sha256=` and the HMAC-SHA256 of the exact body under the
    integration's notify secret, in hex."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, signature: str) -> bool:
    """What a receiver does: compare, in constant time, the header with its own signature."""
    return hmac.compare_digest(sign(secret, body), signature)


def _iso(moment: datetime) -> str:
    moment = moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def _window_start(key: str) -> str:
    return _iso(datetime.strptime(key, PARTITION_KEY_FORMAT))


@dataclass
class ExportHealth:
    """One export as the notifications see it. `after`: the storage id read up to. While it
    fails (`since` set): the windows not delivered (`missing`), those delivered again since it
    failed (`redelivered`), when it first delivered again, the last notice sent."""

    after: int = 0
    since: str | None = None
    error_code: str | None = None
    missing_permission: str | None = None
    missing: list[str] = field(default_factory=list)
    redelivered: list[str] = field(default_factory=list)
    delivering_since: str | None = None
    last_notice_sent: str | None = None


@dataclass
class Notices:
    """One integration's notification state, stored under STATE_PREFIX + its name."""

    exports: dict[str, ExportHealth] = field(default_factory=dict)
    outbox: list[dict[str, Any]] = field(default_factory=list)  # events to send, oldest first
    failed_sends: int = 0
    next_send: str | None = None  # no send before this while failed_sends > 0
    last_error: str | None = None

    def to_json(self) -> str:
        return json.dumps({"version": STATE_VERSION, **asdict(self)}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> "Notices":
        if not text:
            return cls()
        raw = json.loads(text)
        if raw.get("version") != STATE_VERSION:
            return cls()
        exports = {name: ExportHealth(**value) for name, value in raw["exports"].items()}
        return cls(
            exports=exports,
            outbox=list(raw["outbox"]),
            failed_sends=int(raw["failed_sends"]),
            next_send=raw["next_send"],
            last_error=raw["last_error"],
        )


def _latest_storage_id(result: Any) -> int:
    return result.records[0].storage_id if result.records else 0


def _new_records(instance: dg.DagsterInstance, key: dg.AssetKey, after: int) -> tuple[list, int]:
    """The export's failure observations and materializations after storage id `after`, in
    storage order, and the storage id read up to. When either kind has more than a page, only
    what precedes both pages' ends is taken: nothing is skipped."""
    records_filter = dg.AssetRecordsFilter(asset_key=key, after_storage_id=after)
    pages = [
        instance.fetch_observations(records_filter, limit=RECORDS_PER_READ, ascending=True),
        instance.fetch_materializations(records_filter, limit=RECORDS_PER_READ, ascending=True),
    ]
    bound = min(
        (page.records[-1].storage_id for page in pages if page.has_more and page.records),
        default=None,
    )
    records = sorted((r for page in pages for r in page.records), key=lambda r: r.storage_id)
    if bound is not None:
        records = [r for r in records if r.storage_id <= bound]
    return records, records[-1].storage_id if records else after


def _first_look(instance: dg.DagsterInstance, key: dg.AssetKey) -> int:
    """Where an export seen for the first time is read from: its latest delivery. Failures
    since then are its current health (an export already broken is announced); older ones
    healed long ago."""
    return _latest_storage_id(instance.fetch_materializations(key, limit=1))


def _windows(keys: Iterable[str], frequency: int) -> dict[str, Any]:
    ordered = sorted(keys)
    shown = {"count": len(ordered), "frequency_minutes": frequency}
    if ordered:
        shown |= {"first": _window_start(ordered[0]), "last": _window_start(ordered[-1])}
    shown["starts"] = [_window_start(key) for key in ordered[:WINDOWS_LISTED]]
    return shown


def permissions_needed(integration: IntegrationConfig, event_type: EventType) -> list[str]:
    """The IAM actions a delivery of this export takes (AccessDenied is one of them missing)."""
    export = getattr(integration, event_type)
    needed = ["s3:PutObject"]
    if export.acl:
        needed.append("s3:PutObjectAcl")
    if export.sse == "aws:kms":
        needed += ["kms:GenerateDataKey", "kms:Decrypt"]
    return needed


def _event(
    kind: str,
    integration: IntegrationConfig,
    event_type: EventType,
    health: ExportHealth,
    now: datetime,
) -> dict[str, Any]:
    """An event's body, but for `sent_at` (set at each send). No secret: the bucket and
    folder are the customer's own, the rest is this export's state."""
    export = getattr(integration, event_type)
    body: dict[str, Any] = {
        "schema": EVENT_SCHEMA,
        "id": uuid.uuid4().hex,
        "type": f"delivery.{kind}",
        "occurred_at": _iso(now),
        "integration": integration.name,
        "export": event_type,
        "bucket": export.bucket,
        "directory": export.directory,
        "failing_since": health.since,
        "error_code": health.error_code,
    }
    if kind == "healed":
        body["healed_at"] = _iso(now)
        body["windows_redelivered"] = _windows(health.redelivered, export.frequency)
        body["windows_still_missing"] = _windows(health.missing, export.frequency)
        return body
    body["permanent"] = True
    body["missing_permission"] = health.missing_permission
    if health.error_code == "AccessDenied":
        body["permissions_needed"] = permissions_needed(integration, event_type)
    body["what_to_do"] = _WHAT_TO_DO.get(health.error_code or "")
    body["windows_affected"] = _windows(health.missing, export.frequency)
    return body


def _follow(health: ExportHealth, records: Sequence[Any]) -> bool:
    """Move an export's health along its new records; whether it started failing now."""
    started = False
    missing, redelivered = set(health.missing), set(health.redelivered)
    for record in records:
        moment = _iso(datetime.fromtimestamp(record.timestamp, UTC))
        key = record.partition_key
        if record.asset_materialization is not None:
            if health.since is None:
                continue
            if key in missing:
                missing.discard(key)
                redelivered.add(key)
            health.delivering_since = health.delivering_since or moment
            continue
        observation = record.asset_observation
        failure = FailureRecord.from_metadata(observation.metadata) if observation else None
        if failure is None:
            continue
        ours = (failure.error_code or "") in DEPLOYMENT_FAULTS
        if failure.permanent and not ours:
            if health.since is None:
                health.since, started = moment, True
                missing, redelivered = set(), set()
            health.error_code = failure.error_code or "error"
            health.missing_permission = failure.missing_permission
            health.delivering_since = None  # broken again
        elif health.since is None:
            continue  # a transient failure: the catch-up heals it, nobody is told
        if key is not None:
            missing.add(key)
            redelivered.discard(key)
    health.missing, health.redelivered = sorted(missing), sorted(redelivered)
    return started


def _bounded(outbox: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """At most MAX_QUEUED events wait (a webhook dead for weeks): the oldest reminders go
    first, then the oldest events."""
    while len(outbox) > MAX_QUEUED:
        reminders = [i for i, event in enumerate(outbox) if event["type"] == "delivery.reminder"]
        del outbox[reminders[0] if reminders else 0]
    return outbox


def _queued(notices: Notices, event_type: str) -> list[dict[str, Any]]:
    return [event for event in notices.outbox if event["export"] == event_type]


def observe(
    instance: dg.DagsterInstance,
    integration: IntegrationConfig,
    notices: Notices,
    now: datetime,
) -> bool:
    """Read each export's new records into `notices` and queue the events they call for;
    whether anything changed."""
    changed = False
    for event_type, _ in integration.exports():
        key = export_asset_key(integration.name, event_type)
        health = notices.exports.get(event_type)
        if health is None:
            health = notices.exports[event_type] = ExportHealth(after=_first_look(instance, key))
            changed = True
        records, after = _new_records(instance, key, health.after)
        if records:
            changed = True
        health.after = after
        if _follow(health, records):
            notices.outbox.append(_event("failing", integration, event_type, health, now))
        if health.since is None:
            continue
        if health.delivering_since is not None and (
            not health.missing or now - _parse(health.delivering_since) >= HEAL_SETTLE
        ):
            # Reminders not sent yet are moot; a failing event not sent yet still goes first.
            notices.outbox = [
                event
                for event in notices.outbox
                if not (event["export"] == event_type and event["type"] == "delivery.reminder")
            ]
            notices.outbox.append(_event("healed", integration, event_type, health, now))
            notices.exports[event_type] = ExportHealth(after=health.after)
            changed = True
        elif (
            not _queued(notices, event_type)
            and health.last_notice_sent is not None
            and now - _parse(health.last_notice_sent) >= REMINDER_EVERY
        ):
            notices.outbox.append(_event("reminder", integration, event_type, health, now))
            changed = True
    notices.outbox = _bounded(notices.outbox)
    return changed


# IPv6 prefixes that carry an IPv4 address in their low 32 bits (NAT64, its local-use form,
# IPv4-compatible): such an address reaches that IPv4 one, so it is judged by it.
_EMBEDDING_IPV4 = tuple(
    ipaddress.ip_network(prefix)
    for prefix in ("64:ff9b::/96", "64:ff9b:1::/48", "::/96", "::ffff:0:0:0/96")
)
# Ranges `is_global` lets through on some Python versions (CVE-2024-4032's table).
_NEVER_PUBLIC = tuple(
    ipaddress.ip_network(net)
    for net in ("192.0.0.0/24", "100.64.0.0/10", "198.18.0.0/15", "2001:db8::/32", "2002::/16")
)


def _public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif ip.sixtofour is not None:  # 2002::/16 carries an IPv4 address in bits 16-48
            return False
        elif any(ip in net for net in _EMBEDDING_IPV4):
            ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if any(ip.version == net.version and ip in net for net in _NEVER_PUBLIC):
        return False
    return ip.is_global and not ip.is_multicast


@dataclass(frozen=True)
class Webhook:
    """Where an integration's events go: resolved from its variables when sending only."""

    integration: str
    variable: str  # the URL's variable, the name messages use for it
    url: str = field(repr=False)
    secret: str = field(repr=False)


def webhook_of(integration: IntegrationConfig) -> Webhook:
    """The webhook, its variables resolved; ConfigError names an unset variable, never a
    value."""
    assert integration.notify is not None
    what = f"integration {integration.name!r} notify"
    url = resolve_reference(integration.notify.url, f"{what}.url")
    secret = resolve_reference(integration.notify.secret, f"{what}.secret")
    variable = env_reference_name(integration.notify.url) or "notify.url"
    return Webhook(integration.name, variable, url, secret)


def check_url(webhook: Webhook, private_allowed: bool) -> tuple[str, str, int, str]:
    """(scheme, host, port, path and query) of a URL the rules allow; WebhookRefused names the
    rule broken."""
    try:
        parts = urlsplit(webhook.url)
        port = parts.port
    except ValueError:
        raise WebhookRefused(f"{webhook.variable} is not a URL") from None
    allowed = ("https", "http") if private_allowed else ("https",)
    if parts.scheme not in allowed:
        rule = "must be an https URL"
        if parts.scheme == "http":
            rule += f" (plain http only with {ALLOW_PRIVATE_VARIABLE}=1, for on-premises receivers)"
        raise WebhookRefused(f"{webhook.variable} {rule}")
    if parts.username is not None or parts.password is not None:
        raise WebhookRefused(
            f"{webhook.variable} must not hold credentials before '@' (a token may go in its "
            "path or query)"
        )
    if not parts.hostname:
        raise WebhookRefused(f"{webhook.variable} names no host")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80), target


def resolve_host(host: str, port: int, private_allowed: bool) -> list[str]:
    """Every address `host` resolves to, each checked: WebhookRefused when any is loopback,
    private, link-local, reserved or multicast (unless private addresses are allowed)."""
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise WebhookFailed(f"its host does not resolve ({type(exc).__name__})") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in found))
    if not private_allowed and not all(_public(address) for address in addresses):
        raise WebhookRefused(
            "its host resolves to a loopback, private, link-local or reserved address (allowed "
            f"only with {ALLOW_PRIVATE_VARIABLE}=1, for tests and on-premises receivers)"
        )
    return addresses


class _Attempt:
    """One POST of one event, abortable from another thread (`abort` closes its socket)."""

    def __init__(self, webhook: Webhook, body: bytes, headers: dict[str, str], timeout: float):
        self.webhook, self.body, self.headers, self.timeout = webhook, body, headers, timeout
        self.error: Exception | None = None
        self.done = threading.Event()
        self._sock: socket.socket | None = None
        self._aborted = False
        self._lock = threading.Lock()

    def run(self) -> None:
        try:
            self._post()
        except (WebhookRefused, WebhookFailed) as exc:
            self.error = exc
        # The socket's own timeout, the same as the caller's wait, may end first.
        except TimeoutError:
            self.error = WebhookFailed(f"no answer within {self.timeout:g} s")
        except Exception as exc:  # any other is a failed send, said without the URL
            self.error = WebhookFailed(_said(exc))
        finally:
            self.done.set()

    def abort(self) -> None:
        with self._lock:
            self._aborted = True
            sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _hold(self, sock: socket.socket) -> None:
        with self._lock:
            self._sock = sock
            aborted = self._aborted
        if aborted:
            sock.close()
            raise WebhookFailed("no answer in time")

    def _post(self) -> None:
        private = allow_private()
        scheme, host, port, target = check_url(self.webhook, private)
        addresses = resolve_host(host, port, private)
        # The connection goes to an address just checked, never to a second resolution's.
        raw = None
        last: OSError | None = None
        for address in addresses:
            try:
                raw = socket.create_connection((address, port), timeout=self.timeout)
                break
            except OSError as exc:
                last = exc
        if raw is None:
            raise WebhookFailed(f"cannot connect ({_said(last) if last else 'no address'})")
        self._hold(raw)  # an abort during the TLS handshake closes it
        sock: socket.socket = raw
        if scheme == "https":
            sock = ssl.create_default_context().wrap_socket(raw, server_hostname=host)
            self._hold(sock)
        connection_class = (
            http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
        )
        connection = connection_class(host, port, timeout=self.timeout)
        connection.sock = sock  # connected and checked: http.client sends on it as it is
        try:
            connection.request("POST", target, body=self.body, headers=self.headers)
            answer = connection.getresponse()
            answer.read(ANSWER_BYTES)
        finally:
            connection.close()
        if 300 <= answer.status < 400:
            raise WebhookFailed(f"answered HTTP {answer.status} (redirects are not followed)")
        if not 200 <= answer.status < 300:
            raise WebhookFailed(f"answered HTTP {answer.status}")


def _said(exc: BaseException) -> str:
    """An error in words that cannot hold the URL: its kind, and the system's reason."""
    reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None)
    return type(exc).__name__ + (f": {reason}" if isinstance(reason, str) and reason else "")


def send_event(
    webhook: Webhook, event: dict[str, Any], now: datetime, timeout: float
) -> Exception | None:
    """POST one event, signed, within `timeout` seconds whatever the receiver does: None when
    it answered 2xx, else why not (WebhookRefused, WebhookFailed)."""
    body = json.dumps({**event, "sent_at": _iso(now)}, sort_keys=True).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "affise-s3-assets-notify/1",
        EVENT_HEADER: event["type"],
        TIMESTAMP_HEADER: str(int(now.timestamp())),
        SIGNATURE_HEADER: sign(webhook.secret, body),
    }
    attempt = _Attempt(webhook, body, headers, timeout)
    threading.Thread(target=attempt.run, daemon=True, name="notify-send").start()
    if not attempt.done.wait(timeout):
        attempt.abort()
        return WebhookFailed(f"no answer within {timeout:g} s")
    return attempt.error


@dataclass
class _Sending:
    """What one integration's sender did this tick."""

    sent: list[str] = field(default_factory=list)  # event ids
    error: Exception | None = None


def _send_due(
    webhook: Webhook, events: list[dict[str, Any]], now: datetime, timeout: float, deadline: float
) -> _Sending:
    """Send the events in order, stopping at the first failure or at the tick's deadline."""
    outcome = _Sending()
    for event in events:
        if time.monotonic() >= deadline:
            break
        error = send_event(webhook, event, now, timeout)
        if error is not None:
            outcome.error = error
            break
        outcome.sent.append(event["id"])
    return outcome


def _backoff(failed_sends: int) -> timedelta:
    return min(RETRY_FIRST_WAIT * 2 ** max(failed_sends - 1, 0), RETRY_MAX_WAIT)


def deliver_outboxes(
    integrations: Sequence[IntegrationConfig],
    states: dict[str, Notices],
    now: datetime,
    timeout: float,
) -> list[str]:
    """Send each integration's due events, each integration in its own thread; update
    `states`. One line per integration that had something to send (never a URL or secret)."""
    started = time.monotonic()
    deadline = started + TICK_SEND_BUDGET_SECONDS
    due = [
        integration
        for integration in integrations
        if states[integration.name].outbox
        and (
            states[integration.name].next_send is None
            or _parse(states[integration.name].next_send) <= now
        )
    ]
    # Webhooks that answered last time go first.
    due.sort(key=lambda i: (states[i.name].failed_sends, i.name))
    slots = threading.BoundedSemaphore(PARALLEL_SENDS)
    results: dict[str, _Sending] = {}
    threads = []
    for integration in due:
        try:
            webhook = webhook_of(integration)
        except ConfigError as exc:
            results[integration.name] = _Sending(error=WebhookRefused(str(exc)))
            continue

        def run(name: str = integration.name, webhook: Webhook = webhook) -> None:
            if not slots.acquire(timeout=max(0.0, deadline - time.monotonic())):
                return  # no slot within this tick's budget: the next tick
            try:
                results[name] = _send_due(
                    webhook, list(states[name].outbox), now, timeout, deadline
                )
            finally:
                slots.release()

        thread = threading.Thread(target=run, daemon=True, name=f"notify-{integration.name}")
        thread.start()
        threads.append(thread)
    for thread in threads:
        # Each send ends within its timeout; none starts after the deadline.
        thread.join(max(0.0, deadline + timeout + 1 - time.monotonic()))
    lines = []
    for integration in due:
        name = integration.name
        notices = states[name]
        outcome = results.get(name)
        if outcome is None:
            lines.append(f"integration {name!r}: not sent this tick (others took its time)")
            continue
        sent = [event for event in notices.outbox if event["id"] in outcome.sent]
        notices.outbox = [event for event in notices.outbox if event["id"] not in outcome.sent]
        for event in sent:
            if event["type"] != "delivery.healed" and event["export"] in notices.exports:
                notices.exports[event["export"]].last_notice_sent = _iso(now)
        said = ", ".join(f"{e['type'].removeprefix('delivery.')} ({e['export']})" for e in sent)
        if outcome.error is None:
            notices.failed_sends, notices.next_send, notices.last_error = 0, None, None
            if sent:
                lines.append(f"integration {name!r}: sent {said}")
            continue
        notices.failed_sends += 1
        wait = _backoff(notices.failed_sends)
        notices.next_send = _iso(now + wait)
        refused = isinstance(outcome.error, WebhookRefused)
        notices.last_error = f"{'refused' if refused else 'failed'}: {outcome.error}"
        lines.append(
            f"integration {name!r}: "
            + (f"sent {said}; " if sent else "")
            + f"webhook {notices.last_error}; {len(notices.outbox)} event(s) wait, next try "
            f"at {notices.next_send}"
        )
    return lines


def _state_key(name: str) -> str:
    return STATE_PREFIX + name


def build_notify_sensor(
    integrations: Sequence[IntegrationConfig],
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    send_timeout: float = SEND_TIMEOUT_SECONDS,
) -> dg.SensorDefinition:
    """The sensor telling each enabled integration with `notify:` about its exports' permanent
    failures, daily while they last, and their healing. `clock` is its "now" (UTC)."""
    watched = [i for i in integrations if i.notify is not None and i.enabled]

    @dg.sensor(
        name=NOTIFY_SENSOR_NAME,
        minimum_interval_seconds=TICK_SECONDS,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Tells each integration's webhook (notify:) when an export starts failing "
        "with a permanent error, daily while it stays broken, and when it delivers again; "
        "events signed with HMAC-SHA256.",
    )
    def notify_sensor(context: dg.SensorEvaluationContext) -> dg.SkipReason:
        if not watched:
            return dg.SkipReason("No enabled integration has notify:.")
        now = clock()
        stored = stored_values(context.instance, [_state_key(i.name) for i in watched])
        states = {i.name: Notices.from_json(stored.get(_state_key(i.name))) for i in watched}
        before = {name: notices.to_json() for name, notices in states.items()}
        for integration in watched:
            observe(context.instance, integration, states[integration.name], now)
        # Queued events are kept before any is sent: a restart then sends them, once.
        _store_changed(context.instance, states, before)
        before = {name: notices.to_json() for name, notices in states.items()}
        lines = deliver_outboxes(watched, states, now, send_timeout)
        _store_changed(context.instance, states, before)
        for line in lines:
            (context.log.warning if "webhook" in line else context.log.info)(line)
        waiting = sum(len(notices.outbox) for notices in states.values())
        quiet = "Nothing to send." + (f" {waiting} event(s) wait for a retry." if waiting else "")
        return dg.SkipReason("\n".join(lines or [quiet]))

    return notify_sensor


def _store_changed(
    instance: dg.DagsterInstance, states: dict[str, Notices], before: dict[str, str]
) -> None:
    changed = {
        _state_key(name): notices.to_json()
        for name, notices in states.items()
        if notices.to_json() != before[name]
    }
    if changed:
        store_values(instance, changed)
