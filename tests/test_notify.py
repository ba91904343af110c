"""The notify sensor (automation/notify.py) against a local HTTP receiver: a destination that
fails for real on the real S3 server is told once, reminded after a day, told when it delivers
again; every body signed, no secret in it; the URL rules; a hanging receiver."""

import hashlib
import hmac
import json
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from affise_s3_assets.automation.notify import (
    ALLOW_PRIVATE_VARIABLE,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Notices,
    Webhook,
    WebhookRefused,
    build_notify_sensor,
    check_url,
    resolve_host,
    verify,
)
from affise_s3_assets.config.apply import apply_integrations, parse_integrations
from affise_s3_assets.config.schema import IntegrationConfig, notify_variables
from affise_s3_assets.config.secrets import credential_variables
from affise_s3_assets.config.targets import export_asset_key
from affise_s3_assets.dagster_internal import stored_values
from tests.window_rig import WINDOW, WindowRig

WINDOW_START = "2026-11-25T10:00:00Z"
TOKEN = "tok-in-the-url-0123456789"


@dataclass
class Receiver:
    """A webhook receiver on 127.0.0.1: records each request; `mode` says how it answers
    (ok: 200, fail: 500, hang: never, redirect: 302 to `location`)."""

    mode: str = "ok"
    location: str = ""
    tls: tuple[Path, Path] | None = None  # (certificate, key): https
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    server: ThreadingHTTPServer | None = None

    def start(self) -> "Receiver":
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.requests.append((dict(self.headers), body))
                if receiver.mode == "hang":
                    receiver.release.wait(30)
                    return
                status = {"ok": 200, "fail": 500, "redirect": 302}[receiver.mode]
                self.send_response(status)
                if receiver.mode == "redirect":
                    self.send_header("Location", receiver.location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if self.tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*self.tls)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.server_address[1]
        if self.tls is not None:
            return f"https://localhost:{port}/hooks/affise?token={TOKEN}"
        return f"http://127.0.0.1:{port}/hooks/affise?token={TOKEN}"

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.requests]

    def close(self) -> None:
        self.release.set()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


@pytest.fixture
def receivers() -> Iterator[Any]:
    started: list[Receiver] = []

    def start(mode: str = "ok") -> Receiver:
        started.append(Receiver(mode).start())
        return started[-1]

    yield start
    for receiver in started:
        receiver.close()


class Clock:
    """The sensor's "now", moved by the test."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def notify_block(name: str) -> str:
    url, secret = notify_variables(name)
    return f"    notify:\n      url: ${{{url}}}\n      secret: ${{{secret}}}\n"


def point(monkeypatch: pytest.MonkeyPatch, name: str, url: str, secret: str | None = None) -> str:
    """The integration's webhook variables; returns its signing secret."""
    url_variable, secret_variable = notify_variables(name)
    secret = secret or f"whsec-{name}-0123456789abcdef"
    monkeypatch.setenv(url_variable, url)
    monkeypatch.setenv(secret_variable, secret)
    return secret


def tick(sensor: dg.SensorDefinition, instance: dg.DagsterInstance) -> str:
    result = sensor.evaluate_tick(dg.build_sensor_context(instance=instance))
    assert not result.run_requests
    return str(result.skip_message)


def notices(instance: dg.DagsterInstance, name: str) -> Notices:
    key = f"affise/notify/{name}"
    return Notices.from_json(stored_values(instance, [key]).get(key))


def integration(name: str, export_extra: str = "") -> IntegrationConfig:
    """One clicks export to AWS with `notify:`; keys and webhook in its own variables."""
    access, secret = credential_variables(name)
    text = f"""
integrations:
  - name: {name}
    start: "2026-11-24 00:00:00"
    clicks:
      frequency: 60
      bucket: {name.replace("_", "-")}-raw
      region: us-west-2
      directory: affise
      access_key: ${{{access}}}
      secret_key: ${{{secret}}}
{export_extra}{notify_block(name)}"""
    (config,) = parse_integrations(text).integrations
    return config


def report_failure(
    instance: dg.DagsterInstance,
    name: str,
    code: str = "AccessDenied",
    reason: str = "AccessDenied (HTTP 403)",
    window: str = WINDOW,
) -> None:
    """A failure observation as the step writes it (delivery/report.py), recorded runless."""
    instance.report_runless_asset_event(
        dg.AssetObservation(
            asset_key=export_asset_key(name, "clicks"),
            partition=window,
            metadata={
                "delivery_failed": f"Delivery failed for integration {name!r} (clicks): {reason}",
                "error_code": code,
                "permanent": True,
            },
        )
    )


def signed_by(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """A receiver's own check, with nothing but the standard library."""
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, headers[SIGNATURE_HEADER])


def test_a_broken_destination_is_told_once_reminded_daily_and_told_when_it_heals(
    rig: WindowRig,
    receivers: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    missing = rig.bucket + "-not-yet"
    rig.configure(
        [
            ("good", "2026-11-24 00:00:00", rig.clicks("good") + notify_block("good")),
            (
                "broken",
                "2026-11-24 00:00:00",
                rig.clicks("broken", bucket=missing) + notify_block("broken"),
            ),
        ]
    )
    good_hook, broken_hook = receivers(), receivers()
    point(monkeypatch, "good", good_hook.url)
    secret = point(monkeypatch, "broken", broken_hook.url)
    monkeypatch.setenv(ALLOW_PRIVATE_VARIABLE, "1")
    # The real export step delivers `good` and fails `broken`: its bucket does not exist.
    assert not rig.run().success
    assert rig.materialized("good") == {WINDOW}
    integrations = apply_integrations(rig.path.read_text()).integrations
    clock = Clock()
    sensor = build_notify_sensor(integrations, clock=clock)

    said = tick(sensor, rig.instance)
    assert "integration 'broken': sent failing (clicks)" in said
    ((headers, body),) = broken_hook.requests
    event = json.loads(body)
    assert event["type"] == "delivery.failing" and headers["X-Affise-Event"] == "delivery.failing"
    assert (event["integration"], event["export"]) == ("broken", "clicks")
    assert (event["error_code"], event["permanent"]) == ("NoSuchBucket", True)
    assert event["bucket"] == missing
    assert "does not exist" in event["what_to_do"]
    assert event["missing_permission"] is None  # NoSuchBucket names none
    assert event["windows_affected"] == {
        "count": 1,
        "frequency_minutes": 60,
        "first": WINDOW_START,
        "last": WINDOW_START,
        "starts": [WINDOW_START],
    }
    assert headers[TIMESTAMP_HEADER] == str(int(clock.now.timestamp()))
    assert event["sent_at"] == clock.now.strftime("%Y-%m-%dT%H:%M:%SZ")
    # Signed over the exact body with the integration's secret; another secret fails.
    assert signed_by(secret, headers, body) and verify(secret, body, headers[SIGNATURE_HEADER])
    assert not signed_by("whsec-another", headers, body)
    assert not verify(
        secret, body.replace(b"NoSuchBucket", b"NoSuchBuckez"), headers[SIGNATURE_HEADER]
    )
    # No secret: neither the keys, nor the webhook's URL, token or signing secret.
    for value in (rig.s3.customer.secret_key, rig.s3.customer.access_key, secret, TOKEN):
        assert value not in body.decode() and value not in said
    assert broken_hook.url not in body.decode() and "127.0.0.1" not in body.decode()
    assert good_hook.requests == []  # a destination that delivers is not told anything

    # Not again: the next tick, nor a new sensor (a restarted daemon), nor before a day.
    clock.advance(minutes=1)
    assert tick(sensor, rig.instance).startswith("Nothing to send.")
    assert tick(build_notify_sensor(integrations, clock=clock), rig.instance).startswith(
        "Nothing to send."
    )
    clock.advance(hours=23, minutes=58)
    tick(sensor, rig.instance)
    assert len(broken_hook.requests) == 1
    # A day after the last notice: one reminder, still naming the windows and the error.
    clock.advance(minutes=2)
    assert "sent reminder (clicks)" in tick(sensor, rig.instance)
    reminder = broken_hook.events()[-1]
    assert reminder["type"] == "delivery.reminder" and reminder["id"] != event["id"]
    assert reminder["error_code"] == "NoSuchBucket"
    assert reminder["failing_since"] == event["failing_since"]
    assert reminder["windows_affected"]["starts"] == [WINDOW_START]
    clock.advance(minutes=1)
    tick(sensor, rig.instance)
    assert len(broken_hook.requests) == 2

    # The customer creates the bucket; the window is delivered again by the real step.
    rig.s3.client().create_bucket(Bucket=missing)
    assert rig.run(only=["broken"]).success
    clock.advance(minutes=1)
    assert "sent healed (clicks)" in tick(sensor, rig.instance)
    (healed_headers, healed_body) = broken_hook.requests[-1]
    healed = json.loads(healed_body)
    assert healed["type"] == "delivery.healed"
    assert healed["failing_since"] == event["failing_since"]
    assert healed["windows_redelivered"]["starts"] == [WINDOW_START]
    assert healed["windows_redelivered"]["count"] == 1
    assert healed["windows_still_missing"]["count"] == 0
    assert signed_by(secret, healed_headers, healed_body)
    # Healed is the end of it: no reminder a day later, no event for `good` ever.
    clock.advance(days=2)
    tick(sensor, rig.instance)
    assert len(broken_hook.requests) == 3 and good_hook.requests == []
    assert notices(rig.instance, "broken").outbox == []


def test_a_webhook_against_the_rules_is_refused_by_name_and_tried_again_later(
    receivers: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    hook = receivers()
    monkeypatch.delenv(ALLOW_PRIVATE_VARIABLE, raising=False)
    config = integration("acme", "      sse: aws:kms\n      kms_key_id: alias/acme-raw\n")
    clock = Clock()
    sensor = build_notify_sensor([config], clock=clock)
    with dg.instance_for_test() as instance:
        report_failure(
            instance,
            "acme",
            reason="AccessDenied (HTTP 403): User: arn:aws:iam::123456789012:user/affise is "
            "not authorized to perform: kms:GenerateDataKey on resource: arn:aws:kms:x",
        )
        # Plain http: refused, the tick names the integration, the variable and the rule.
        point(monkeypatch, "acme", hook.url)
        said = tick(sensor, instance)
        assert "integration 'acme': webhook refused: ACME_NOTIFY_URL must be an https URL" in said
        assert TOKEN not in said and "127.0.0.1" not in said and "/hooks" not in said
        # https to a loopback address: refused too, whatever the port.
        port = hook.url.split(":")[2].split("/")[0]
        point(monkeypatch, "acme", f"https://localhost:{port}/hooks?token={TOKEN}")
        clock.advance(minutes=2)
        said = tick(sensor, instance)
        assert "loopback, private, link-local or reserved address" in said
        assert TOKEN not in said and "localhost" not in said
        assert hook.requests == []
        state = notices(instance, "acme")
        assert state.failed_sends == 2 and len(state.outbox) == 1
        # Allowed for on-premises receivers; the event waits for its backoff (2 min) first.
        monkeypatch.setenv(ALLOW_PRIVATE_VARIABLE, "1")
        point(monkeypatch, "acme", hook.url)
        clock.advance(minutes=1)
        assert "1 event(s) wait for a retry" in tick(sensor, instance)
        assert hook.requests == []
        clock.advance(minutes=1, seconds=1)
        assert "sent failing (clicks)" in tick(sensor, instance)
    (event,) = hook.events()
    # The permission the store named; the ones a delivery of this export takes.
    assert event["missing_permission"] == "kms:GenerateDataKey"
    assert event["permissions_needed"] == ["s3:PutObject", "kms:GenerateDataKey", "kms:Decrypt"]
    assert "arn:aws:iam" not in json.dumps(event)  # the message itself is not passed on


@pytest.mark.parametrize(
    ("url", "rule"),
    [
        ("http://hooks.example.com/x", "must be an https URL"),
        ("ftp://hooks.example.com/x", "must be an https URL"),
        ("https://user:pw@hooks.example.com/x", "must not hold credentials"),
        ("https:///x", "names no host"),
        ("https://127.0.0.1/x", "loopback"),
        ("https://10.1.2.3/x", "private"),
        ("https://192.168.0.10:8443/x", "private"),
        ("https://169.254.169.254/latest/meta-data", "link-local"),
        ("https://100.64.0.1/x", "reserved"),
        ("https://0.0.0.0/x", "reserved"),
        ("https://[::1]/x", "loopback"),
        ("https://[::ffff:127.0.0.1]/x", "loopback"),
        ("https://[fd00::1]/x", "private"),
        # IPv6 forms carrying a private IPv4 address: NAT64, 6to4, compatible, translated.
        ("https://[64:ff9b::a00:1]/x", "private|reserved"),
        ("https://[64:ff9b:1::a00:1]/x", "private|reserved"),
        ("https://[2002:7f00:1::1]/x", "private|reserved"),
        ("https://[::127.0.0.1]/x", "loopback|private|reserved"),
        ("https://[::ffff:0:a00:1]/x", "private|reserved"),
        ("https://192.0.0.8/x", "private|reserved"),
        ("https://224.0.0.1/x", "reserved"),
    ],
)
def test_the_url_rules(url: str, rule: str, monkeypatch: pytest.MonkeyPatch) -> None:
    webhook = Webhook("acme", "ACME_NOTIFY_URL", url, "s")
    with pytest.raises(WebhookRefused, match=rule) as refused:
        _, host, port, _ = check_url(webhook, private_allowed=False)
        resolve_host(host, port, private_allowed=False)
    assert url not in str(refused.value)


def test_a_public_address_passes_and_private_ones_pass_when_allowed() -> None:
    webhook = Webhook("acme", "ACME_NOTIFY_URL", "https://93.184.215.14:8443/h?t=1", "s")
    assert check_url(webhook, private_allowed=False) == ("https", "93.184.215.14", 8443, "/h?t=1")
    assert resolve_host("93.184.215.14", 443, private_allowed=False) == ["93.184.215.14"]
    assert resolve_host("127.0.0.1", 443, private_allowed=True) == ["127.0.0.1"]
    http = Webhook("acme", "ACME_NOTIFY_URL", "http://10.0.0.5/h", "s")
    assert check_url(http, private_allowed=True)[0] == "http"


def test_a_hanging_receiver_holds_the_tick_no_longer_than_its_timeout_nor_anyone_else(
    receivers: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    hanging, quick = receivers("hang"), receivers()
    monkeypatch.setenv(ALLOW_PRIVATE_VARIABLE, "1")
    point(monkeypatch, "slow", hanging.url)
    point(monkeypatch, "quick", quick.url)
    clock = Clock()
    sensor = build_notify_sensor([integration("slow"), integration("quick")], clock, 1.0)
    with dg.instance_for_test() as instance:
        report_failure(instance, "slow")
        report_failure(instance, "quick")
        began = time.monotonic()
        said = tick(sensor, instance)
        assert time.monotonic() - began < 3.0
        assert "integration 'quick': sent failing (clicks)" in said
        assert "integration 'slow': webhook failed: no answer within 1 s" in said
        assert len(quick.requests) == 1 and len(hanging.requests) == 1
        # Not tried again before its backoff; then sent, once, when it answers.
        hanging.mode = "ok"
        clock.advance(seconds=30)
        tick(sensor, instance)
        assert len(hanging.requests) == 1
        clock.advance(seconds=31)
        assert "integration 'slow': sent failing (clicks)" in tick(sensor, instance)
        assert [e["type"] for e in hanging.events()] == ["delivery.failing"] * 2
        assert hanging.events()[0]["id"] == hanging.events()[1]["id"]  # the same event again
        assert len(quick.requests) == 1
        # A receiver that fails is tried again later too, doubling the wait.
        report_failure(instance, "quick", window="2026-11-25-11:00")  # still the same outage
        clock.advance(days=1, minutes=1)
        quick.mode = "fail"
        assert "webhook failed: answered HTTP 500" in tick(sensor, instance)
        assert notices(instance, "quick").failed_sends == 1


def test_a_redirect_is_not_followed(receivers: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere, redirecting = receivers(), receivers("redirect")
    redirecting.location = elsewhere.url
    monkeypatch.setenv(ALLOW_PRIVATE_VARIABLE, "1")
    point(monkeypatch, "acme", redirecting.url)
    sensor = build_notify_sensor([integration("acme")], Clock())
    with dg.instance_for_test() as instance:
        report_failure(instance, "acme")
        said = tick(sensor, instance)
    assert "answered HTTP 302 (redirects are not followed)" in said
    assert len(redirecting.requests) == 1 and elsewhere.requests == []


def test_an_unset_webhook_variable_is_named_and_no_secret_is_told(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for variable in notify_variables("acme"):
        monkeypatch.delenv(variable, raising=False)
    sensor = build_notify_sensor([integration("acme")], Clock())
    with dg.instance_for_test() as instance:
        report_failure(instance, "acme")
        said = tick(sensor, instance)
    assert "integration 'acme': webhook refused:" in said
    assert "ACME_NOTIFY_URL is not set" in said


def test_an_https_receiver_gets_the_event_only_with_a_certificate_it_proves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    certificate, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(certificate), "-subj", "/CN=localhost"),
            *("-addext", "subjectAltName=DNS:localhost"),
        ],
        check=True,
        capture_output=True,
    )
    hook = Receiver(tls=(certificate, key)).start()
    try:
        monkeypatch.setenv(ALLOW_PRIVATE_VARIABLE, "1")
        secret = point(monkeypatch, "acme", hook.url)
        clock = Clock()
        sensor = build_notify_sensor([integration("acme")], clock)
        with dg.instance_for_test() as instance:
            report_failure(instance, "acme")
            # Not trusted: the certificate is checked, and the event waits.
            monkeypatch.delenv("SSL_CERT_FILE", raising=False)
            said = tick(sensor, instance)
            assert "webhook failed: SSLCertVerificationError" in said and TOKEN not in said
            # Trusted (the system's store, as OpenSSL reads it): sent, signed.
            monkeypatch.setenv("SSL_CERT_FILE", str(certificate))
            clock.advance(minutes=1, seconds=1)
            assert "integration 'acme': sent failing (clicks)" in tick(sensor, instance)
        ((headers, body),) = hook.requests
        assert signed_by(secret, headers, body)
    finally:
        hook.close()


def test_healed_once_it_delivers_again_naming_windows_still_missing_after_a_while(
    receivers: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    hook = receivers()
    monkeypatch.setenv(ALLOW_PRIVATE_VARIABLE, "1")
    point(monkeypatch, "acme", hook.url)
    clock = Clock()
    sensor = build_notify_sensor([integration("acme")], clock)
    with dg.instance_for_test() as instance:
        for window in ("2026-11-25-10:00", "2026-11-25-11:00"):
            report_failure(instance, "acme", code="NoSuchBucket", window=window)
        tick(sensor, instance)
        instance.report_runless_asset_event(
            dg.AssetMaterialization(
                asset_key=export_asset_key("acme", "clicks"),
                partition="2026-11-25-10:00",
                metadata={"rows": 3},
            )
        )
        # Delivering again, one window still missing: not healed yet (the catch-up is on it).
        clock.advance(minutes=1)
        tick(sensor, instance)
        assert [e["type"] for e in hook.events()] == ["delivery.failing"]
        clock.advance(minutes=30)
        assert "sent healed (clicks)" in tick(sensor, instance)
    failing, healed = hook.events()
    assert failing["windows_affected"]["count"] == 2
    assert healed["windows_redelivered"]["starts"] == [WINDOW_START]
    assert healed["windows_still_missing"]["starts"] == ["2026-11-25T11:00:00Z"]


def test_the_code_location_has_the_sensor_only_when_a_webhook_is_configured(tmp_path) -> None:
    from affise_s3_assets.definitions import build_definitions
    from tests.integrations_text import one_integration

    def sensors(text: str) -> set[str]:
        path = tmp_path / "integrations.yaml"
        path.write_text(text)
        return {s.name for s in build_definitions(path).get_repository_def().sensor_defs}

    hook = "    notify:\n      url: ${ACME_NOTIFY_URL}\n      secret: ${ACME_NOTIFY_SECRET}\n"
    assert "notify_sensor" in sensors(one_integration(head=hook))
    assert "notify_sensor" not in sensors(one_integration())


def test_a_failure_that_is_the_deployments_to_fix_is_not_told_to_the_customer(
    receivers: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    hook = receivers()
    point(monkeypatch, "acme", hook.url)
    sensor = build_notify_sensor([integration("acme")], clock=Clock())
    with dg.instance_for_test() as instance:
        report_failure(
            instance,
            "acme",
            code="NoDeploymentCredentials",
            reason="the deployment has no AWS credentials of its own",
        )
        tick(sensor, instance)
    assert hook.requests == []


def test_the_roles_policy_grants_the_acl_action_to_an_export_with_an_acl() -> None:
    from affise_s3_assets.assume_role import PolicyTarget, permissions_policy

    plain = permissions_policy([PolicyTarget("b", "d", "us-east-1")])
    granted = permissions_policy(
        [PolicyTarget("b", "d", "us-east-1", acl="bucket-owner-full-control")]
    )
    assert "s3:PutObjectAcl" not in plain["Statement"][0]["Action"]
    assert "s3:PutObjectAcl" in granted["Statement"][0]["Action"]
