"""How the customer's role fails, without a server: STS's refusals classified (Ceph RGW's reach
botocore with the code "Unknown", so the HTTP status decides; an S3-compatible store's
AccessDenied told apart, where it can be, by what it says of the deployment's own
credentials), a role's credentials a store holds for expired dropped and assumed again, and the
delivering principal named from GetCallerIdentity and its role's path. The refusals on the real
S3 server are in tests/test_assume_role.py."""

import http.server
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import botocore.config
import botocore.credentials
import botocore.exceptions
import botocore.session
import pytest
from botocore.stub import Stubber

from affise_s3_assets import assume_role, cli, s3
from affise_s3_assets.assume_role import CREDENTIALS, RoleSession, refused
from tests.caller_identity import CallerIdentity
from tests.local_http import serving

ROLE = "arn:aws:iam::123456789012:role/affise-delivery"
EXTERNAL_ID = "e" * 64


def session(region: str = "us-west-2") -> RoleSession:
    return RoleSession("acme", ROLE, region, f"https://sts.{region}.amazonaws.com", EXTERNAL_ID)


def sts_error(code: str | None, status: int, rgw: bool = False) -> botocore.exceptions.ClientError:
    """As botocore raises it for AssumeRole: from STS, the code in an Error element; from Ceph
    RGW (`rgw`), whose error body is S3-style, at the response's top level with no Error
    element (ClientError says "Unknown"). Code None: no code at all."""
    response: dict[str, Any] = {"ResponseMetadata": {"HTTPStatusCode": status}}
    if code is not None and rgw:
        response |= {"Code": code, "Message": None}
    elif code is not None:
        response["Error"] = {"Code": code, "Message": ""}
    return botocore.exceptions.ClientError(response, "AssumeRole")


FIX = "`affise-s3 external-id acme` prints what the role needs"
DENIED = (
    f"role {ROLE} may not be assumed by the deployment with integration 'acme''s ExternalId: "
    "the role is missing, or its trust policy does not name the delivering principal"
)
MISSING = f"role {ROLE} does not exist: the customer creates it ({FIX})"
DEPLOYMENT = "the deployment's own AWS credentials were refused by STS ({code}) when assuming"
RENEW = "an operator renews or fixes the deployment's credentials"


@pytest.mark.parametrize(
    ("code", "status", "named", "words"),
    [
        # No code to read: the status alone tells.
        ("Unknown", 403, "RoleAccessDenied", [DENIED, FIX]),
        (None, 403, "RoleAccessDenied", [DENIED, FIX]),
        ("Unknown", 404, "RoleNotFound", [MISSING]),
        (None, 404, "RoleNotFound", [MISSING]),
        ("Unknown", 400, "Unknown", [f"STS refused to assume role {ROLE} as asked", "role_arn"]),
        (None, 400, "Unknown", [f"STS refused to assume role {ROLE} as asked", "role_arn"]),
        # AWS: the code.
        ("AccessDenied", 403, "RoleAccessDenied", [DENIED, FIX]),
        ("NoSuchEntity", 404, "RoleNotFound", [MISSING]),
        ("ValidationError", 400, "ValidationError", ["as asked (ValidationError): check role_arn"]),
        ("MalformedPolicyDocument", 400, "MalformedPolicyDocument", ["check role_arn"]),
        ("RegionDisabledException", 403, "RegionDisabledException", ["STS is not enabled"]),
        # The deployment's own credentials, expired or refused: its operator's to fix.
        ("ExpiredToken", 400, "DeploymentCredentialsRefused", [DEPLOYMENT, RENEW]),
        ("ExpiredTokenException", 400, "DeploymentCredentialsRefused", [DEPLOYMENT, RENEW]),
        ("InvalidClientTokenId", 403, "DeploymentCredentialsRefused", [DEPLOYMENT, RENEW]),
        ("SignatureDoesNotMatch", 403, "DeploymentCredentialsRefused", [DEPLOYMENT, RENEW]),
    ],
)
def test_a_refusal_no_retry_fixes_is_permanent_and_says_who_acts(
    code: str | None, status: int, named: str, words: list[str]
) -> None:
    error = refused(sts_error(code, status), session())
    assert error.kwargs["permanent"] is True and s3.is_permanent(error)
    assert error.kwargs["code"] == named == s3.error_code(error)
    assert error.kwargs["status"] == status
    reason = str(error)
    for phrase in words:
        assert phrase.format(code=code) in reason
    assert EXTERNAL_ID not in reason + repr(error)


@pytest.mark.parametrize(
    ("code", "status", "named", "permanent"),
    [
        # Shaped as botocore hands over Ceph RGW 16's errors (the first is what
        # tests/test_assume_role.py gets from the real server for a trust policy refusing).
        ("AccessDenied", 403, "RoleAccessDenied", True),
        ("NoSuchEntity", 404, "RoleNotFound", True),
        ("InvalidParameterValue", 400, "InvalidParameterValue", True),
        ("ServiceUnavailable", 503, "ServiceUnavailable", False),
        ("SlowDown", 503, "SlowDown", False),
    ],
)
def test_rgws_code_outside_an_error_element_is_read(
    code: str, status: int, named: str, permanent: bool
) -> None:
    raised = sts_error(code, status, rgw=True)
    assert "(Unknown)" in str(raised)  # what botocore says of it
    error = refused(raised, session())
    assert (error.kwargs["code"], error.kwargs["permanent"]) == (named, permanent)


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("Unknown", 500),
        ("Unknown", 502),
        ("Unknown", 503),
        ("Unknown", 429),
        (None, 503),
        ("InternalFailure", 500),
        ("ServiceUnavailable", 503),
        ("Throttling", 400),
        ("ThrottlingException", 400),
        ("RequestLimitExceeded", 400),
        ("SlowDown", 503),
    ],
)
def test_a_throttle_or_the_endpoints_own_failure_is_transient(
    code: str | None, status: int
) -> None:
    error = refused(sts_error(code, status), session())
    assert error.kwargs["permanent"] is False and not s3.is_permanent(error)
    assert error.kwargs["code"] == (code or "Unknown") == s3.error_code(error)
    said = f"STS did not answer AssumeRole on role {ROLE}: {code or 'Unknown'} (HTTP {status})"
    assert said in str(error)


# --- a role's credentials the store holds for expired --------------------------------------


@dataclass
class FakeSts:
    """AssumeRole as the cache calls it: a new session token each time, an hour to live."""

    issued: list[str] = field(default_factory=list)

    def __call__(self, role: RoleSession) -> Any:
        token = f"session-token-{len(self.issued) + 1}"
        self.issued.append(token)
        expires = datetime.now(UTC) + timedelta(hours=1)
        return assume_role._Temporary(f"ASIA{len(self.issued):016d}", "secret", token, expires)


@dataclass
class FakeStore:
    """An S3 endpoint answering each request with the next of `answers` (then 200), recording
    the session token each was signed with."""

    url: str = ""
    answers: list[tuple[int, str | None]] = field(default_factory=list)  # status, error code
    tokens: list[str | None] = field(default_factory=list)


@contextmanager
def fake_store() -> Iterator[FakeStore]:
    store = FakeStore()
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_: object) -> None:
            pass

        def do_PUT(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with lock:
                store.tokens.append(self.headers.get("X-Amz-Security-Token"))
                status, code = store.answers.pop(0) if store.answers else (200, None)
            body = b""
            if code is not None:
                body = (
                    f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code>"
                    f"<Message>{code} (a test store)</Message></Error>"
                ).encode()
            self.send_response(status)
            if code is None:
                self.send_header("ETag", '"d41d8cd98f00b204e9800998ecf8427e"')
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    with serving(Handler) as url:
        store.url = url
        yield store


@pytest.fixture
def sts(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSts]:
    """The process's credential cache, assuming roles from a FakeSts."""
    fake = FakeSts()
    monkeypatch.setenv("AFFISE_EXTERNAL_ID_KEY", "test-deployment-external-id-key")
    # Sessions count as old enough to be renewed on a store's word (see the test of the
    # interval below).
    monkeypatch.setattr(assume_role, "RENEW_AT_MOST_EVERY_SECONDS", 0.0)
    monkeypatch.setattr(CREDENTIALS, "_assume", fake)
    CREDENTIALS.clear()
    s3._cached_role_client.cache_clear()
    yield fake
    CREDENTIALS.clear()
    s3._cached_role_client.cache_clear()


def role_client(store: FakeStore, sse: str | None = None) -> Any:
    destination = s3.S3Destination(
        "acme", "clicks", "b", "us-west-2", "d", endpoint_url=store.url, role_arn=ROLE, sse=sse
    )
    return s3.s3_client(destination)


def put(client: Any) -> Exception | None:
    try:
        client.put_object(Bucket="b", Key="d/k", Body=b"x")
    except botocore.exceptions.ClientError as exc:
        return exc
    return None


def test_credentials_the_store_answers_expired_are_assumed_again_on_the_next_request(
    sts: FakeSts,
) -> None:
    with fake_store() as store:
        client = role_client(store)
        assert put(client) is None
        store.answers.append((400, "ExpiredToken"))
        failed = put(client)
        # That attempt fails, transient: the next one is signed with a new session.
        assert failed is not None and s3.error_code(failed) == "ExpiredToken"
        assert not s3.is_permanent(failed)
        assert CREDENTIALS._held == {}
        assert put(client) is None
        assert put(client) is None
    assert sts.issued == ["session-token-1", "session-token-2"]
    assert store.tokens == ["session-token-1"] * 2 + ["session-token-2"] * 2


def test_other_refusals_keep_the_credentials(sts: FakeSts) -> None:
    with fake_store() as store:
        client = role_client(store)
        store.answers += [(403, "AccessDenied"), (400, "InvalidArgument")]
        assert put(client) is not None and put(client) is not None
        assert put(client) is None
    assert sts.issued == ["session-token-1"]
    assert store.tokens == ["session-token-1"] * 3


def test_a_session_already_replaced_is_not_dropped_again(sts: FakeSts) -> None:
    """Two exports of one role share its credentials: the second one's rejection of the old
    session, after the first already replaced it, assumes the role no third time."""
    with fake_store() as store:
        first, second = role_client(store), role_client(store, sse="AES256")
        assert first is not second
        assert put(first) is None and put(second) is None
        store.answers += [(400, "ExpiredToken"), (200, None), (400, "ExpiredToken")]
        assert put(first) is not None  # drops session 1
        assert put(first) is None  # assumes session 2
        assert put(second) is not None  # still signs with session 1: only its own copy goes
        assert put(second) is None  # takes session 2 from the cache
    assert sts.issued == ["session-token-1", "session-token-2"]
    one, two = sts.issued
    assert store.tokens == [one, one, one, two, one, two]


def test_a_store_calling_every_new_session_expired_gets_no_assume_role_storm(
    sts: FakeSts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A session assumed moments ago that the store calls expired (its clock far ahead) is
    kept: every request of every upload would otherwise call AssumeRole."""
    monkeypatch.setattr(assume_role, "RENEW_AT_MOST_EVERY_SECONDS", 60.0)
    with fake_store() as store:
        client = role_client(store)
        store.answers += [(400, "ExpiredToken")] * 3
        failures = [put(client) for _ in range(3)]
        assert all(f is not None and s3.error_code(f) == "ExpiredToken" for f in failures)
        assert put(client) is None
    assert sts.issued == ["session-token-1"]
    assert store.tokens == ["session-token-1"] * 4


def test_forget_drops_only_the_session_named(sts: FakeSts) -> None:
    role = session()
    assert CREDENTIALS.metadata(role)["token"] == "session-token-1"
    assert CREDENTIALS.forget(role, "session-token-0") is False
    assert CREDENTIALS.metadata(role)["token"] == "session-token-1"
    assert CREDENTIALS.forget(role, "session-token-1") is True
    assert CREDENTIALS.forget(role, "session-token-1") is False
    assert CREDENTIALS.metadata(role)["token"] == "session-token-2"


# --- an S3-compatible store's AccessDenied: the role, or the deployment's own credentials ------

STORE = "http://127.0.0.1:9"  # an S3-compatible store's endpoint, serving STS as RGW does
OWN_KEY_ID = "TESTOWNKEYID0000001"
OWN_SECRET = "test-own-secret/0123456789"
REFUSED_HERE = "the deployment's own AWS credentials were refused by {url} when assuming role"
LISTING_DENIED = (
    "S3 ListBuckets with them was refused too (AccessDenied (HTTP 403)), an answer a store "
    "gives both to keys it does not know (as Ceph RGW does) and to a user without the right to "
    "list buckets, so an operator checks the deployment's credentials against that store"
)


def store_session(url: str = STORE) -> RoleSession:
    return RoleSession("acme", ROLE, "us-west-2", url, EXTERNAL_ID)


@pytest.mark.parametrize("rgw", [True, False])
@pytest.mark.parametrize(
    "said",
    ["InvalidAccessKeyId (HTTP 403)", "SignatureDoesNotMatch (HTTP 403)", "Unknown (HTTP 401)"],
)
def test_a_stores_access_denied_is_the_deployments_credentials_when_the_store_refuses_the_keys(
    rgw: bool, said: str
) -> None:
    check = assume_role.CredentialsCheck(False, said)
    error = refused(sts_error("AccessDenied", 403, rgw=rgw), store_session(), check)
    assert (error.kwargs["code"], error.kwargs["permanent"]) == (
        "DeploymentCredentialsRefused",
        True,
    )
    reason = str(error)
    assert REFUSED_HERE.format(url=STORE) + f" {ROLE}: it answered AssumeRole AccessDenied" in (
        reason
    )
    assert f"S3 ListBuckets with the same credentials {said}, a refusal of the keys" in reason
    assert "an operator gives the deployment the credentials of a user that store knows" in reason
    assert "every user" not in reason
    assert "trust policy" not in reason and EXTERNAL_ID not in reason + repr(error)


@pytest.mark.parametrize("rgw", [True, False])
def test_a_stores_access_denied_names_both_causes_when_listing_buckets_is_denied_too(
    rgw: bool,
) -> None:
    """A bare AccessDenied to ListBuckets is a store's answer to keys it does not know (RGW 16)
    and to a user of its own without the right to list buckets (IAM-style policies): it does
    not tell, and the trust policy stays named beside the deployment's own credentials."""
    check = assume_role.CredentialsCheck(None, "AccessDenied (HTTP 403)", denied=True)
    error = refused(sts_error("AccessDenied", 403, rgw=rgw), store_session(), check)
    assert (error.kwargs["code"], error.kwargs["permanent"]) == ("RoleAccessDenied", True)
    reason = str(error)
    assert DENIED in reason and FIX in reason
    assert f"or {STORE} does not accept the deployment's own credentials: S3 ListBuckets" in (
        reason
    )
    assert LISTING_DENIED in reason
    assert "every user" not in reason and EXTERNAL_ID not in reason + repr(error)


def test_a_stores_access_denied_is_the_roles_when_the_store_accepts_the_credentials() -> None:
    said = assume_role.CredentialsCheck(True, "accepted")
    error = refused(sts_error("AccessDenied", 403, rgw=True), store_session(), said)
    assert (error.kwargs["code"], error.kwargs["permanent"]) == ("RoleAccessDenied", True)
    assert DENIED in str(error) and FIX in str(error)
    assert f"({STORE} accepts the deployment's own credentials)" in str(error)


@pytest.mark.parametrize("said", [None, assume_role.CredentialsCheck(None, "Unknown (HTTP 405)")])
def test_a_stores_access_denied_names_both_causes_when_the_store_does_not_tell(
    said: assume_role.CredentialsCheck | None,
) -> None:
    error = refused(sts_error(None, 403), store_session(), said)
    assert (error.kwargs["code"], error.kwargs["permanent"]) == ("RoleAccessDenied", True)
    reason = str(error)
    assert DENIED in reason and FIX in reason
    assert f"or {STORE} does not accept the deployment's own credentials" in reason
    assert "answers keys it does not know or a wrong secret with AccessDenied too" in reason
    if said is not None:
        assert "(S3 ListBuckets with them, which would tell, answered Unknown (HTTP 405))" in (
            reason
        )


def test_awss_access_denied_is_the_roles() -> None:
    """AWS's STS answers keys it does not know, a wrong secret or an expired token with codes of
    their own (DeploymentCredentialsRefused above): its AccessDenied is the role's alone."""
    reason = str(refused(sts_error("AccessDenied", 403), session()))
    assert DENIED in reason and "does not accept the deployment's own credentials" not in reason


@dataclass
class FakeStsStore:
    """An S3-compatible store serving STS at its S3 endpoint: AssumeRole answered 403
    AccessDenied in RGW's S3-style body; ListBuckets (GET /) answered `listing` (status, code).
    Records each request's action and the key id it was signed with."""

    url: str = ""
    listing: tuple[int, str | None] = (200, None)
    requests: list[tuple[str, str]] = field(default_factory=list)


@contextmanager
def fake_sts_store() -> Iterator[FakeStsStore]:
    store = FakeStsStore()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_: object) -> None:
            pass

        def _reply(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _note(self, action: str) -> None:
            key_id = self.headers.get("Authorization", "").split("Credential=", 1)[-1]
            store.requests.append((action, key_id.split("/", 1)[0]))

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self._note("AssumeRole")
            self._reply(403, b"<Error><Code>AccessDenied</Code><Message></Message></Error>")

        def do_GET(self) -> None:
            self._note("ListBuckets")
            status, code = store.listing
            if code is None:
                self._reply(
                    status,
                    b"<ListAllMyBucketsResult><Owner><ID>deployer</ID></Owner>"
                    b"<Buckets></Buckets></ListAllMyBucketsResult>",
                )
            else:
                self._reply(status, f"<Error><Code>{code}</Code></Error>".encode())

    with serving(Handler) as url:
        store.url = url
        yield store


@pytest.fixture
def own_keys(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> Iterator[None]:
    """The deployment's standard AWS chain holds OWN_KEY_ID and nothing else; plain-http STS
    allowed (the loopback stand-ins)."""
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ROLE_ARN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", OWN_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", OWN_SECRET)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AFFISE_STS_ALLOW_HTTP", "1")
    CREDENTIALS.clear()
    yield
    CREDENTIALS.clear()


@pytest.mark.parametrize(
    ("listing", "named", "words"),
    [
        ((200, None), "RoleAccessDenied", ["accepts the deployment's own credentials"]),
        ((403, "AccessDenied"), "RoleAccessDenied", [DENIED, LISTING_DENIED]),
        ((403, "InvalidAccessKeyId"), "DeploymentCredentialsRefused", ["InvalidAccessKeyId"]),
        ((403, "SignatureDoesNotMatch"), "DeploymentCredentialsRefused", ["HTTP 403"]),
        ((401, "Unauthorized"), "DeploymentCredentialsRefused", ["Unauthorized (HTTP 401)"]),
        ((400, "ExpiredToken"), "DeploymentCredentialsRefused", ["ExpiredToken (HTTP 400)"]),
        ((405, "MethodNotAllowed"), "RoleAccessDenied", ["which would tell, answered Method"]),
    ],
)
def test_an_assume_role_a_store_denies_asks_the_store_of_the_deployments_credentials(
    own_keys: None, listing: tuple[int, str | None], named: str, words: list[str]
) -> None:
    with fake_sts_store() as store:
        store.listing = listing
        with pytest.raises(s3.RoleNotAssumed) as raised:
            CREDENTIALS.metadata(store_session(store.url))
    error = raised.value
    assert (error.kwargs["code"], error.kwargs["permanent"]) == (named, True)
    for phrase in words:
        assert phrase in str(error)
    # One AssumeRole, then one ListBuckets, both signed with the deployment's own key.
    assert store.requests == [("AssumeRole", OWN_KEY_ID), ("ListBuckets", OWN_KEY_ID)]
    assert OWN_SECRET not in str(error) + repr(error) and EXTERNAL_ID not in str(error)


def test_an_unreachable_store_leaves_both_causes_named(own_keys: None) -> None:
    said = assume_role.check_own_credentials(
        store_session("http://127.0.0.1:9"),
        botocore.credentials.Credentials(OWN_KEY_ID, OWN_SECRET).get_frozen_credentials(),
    )
    assert said == assume_role.CredentialsCheck(None, "EndpointConnectionError")


def test_awss_access_denied_asks_nothing_more(
    own_keys: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = botocore.session.get_session().create_client(
        "sts", region_name="us-west-2", aws_access_key_id="k", aws_secret_access_key="s"
    )
    stubber = Stubber(client)
    stubber.add_client_error("assume_role", "AccessDenied", http_status_code=403)
    stubber.activate()
    monkeypatch.setattr(assume_role, "_deployment_client", lambda *_: client)

    def never(*_: object) -> None:
        raise AssertionError("AWS's STS needs no check of the deployment's credentials")

    monkeypatch.setattr(assume_role, "check_own_credentials", never)
    with pytest.raises(s3.RoleNotAssumed) as raised:
        CREDENTIALS.metadata(session())
    assert raised.value.kwargs["code"] == "RoleAccessDenied"
    stubber.assert_no_pending_responses()


# --- the delivering principal -----------------------------------------------------------------


@pytest.fixture
def no_role_arn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ROLE_ARN", raising=False)


@pytest.mark.parametrize(
    ("caller", "principal"),
    [
        # An assumed role's session (IRSA, an instance profile): its role, as GetRole says it.
        (
            "arn:aws:sts::111122223333:assumed-role/affise-delivery/botocore-session-1733",
            "arn:aws:iam::111122223333:role/affise-delivery",
        ),
        (
            "arn:aws:sts::111122223333:assumed-role/affise-delivery/i-0abc@example.com,x=y.z",
            "arn:aws:iam::111122223333:role/affise-delivery",
        ),
        (
            "arn:aws:sts::111122223333:assumed-role/affise-delivery/s",
            "arn:aws:iam::111122223333:role/team/exports/affise-delivery",
        ),
        (
            "arn:aws-cn:sts::111122223333:assumed-role/affise/s",
            "arn:aws-cn:iam::111122223333:role/affise",
        ),
        (
            "arn:aws-us-gov:sts::111122223333:assumed-role/affise/s",
            "arn:aws-us-gov:iam::111122223333:role/affise",
        ),
        # Ceph RGW's ARNs have no account id.
        ("arn:aws:sts:::assumed-role/affise/s", "arn:aws:iam:::role/affise"),
        # An IAM user, with or without a path, and other principals: as they are.
        ("arn:aws:iam::111122223333:user/deployer", "arn:aws:iam::111122223333:user/deployer"),
        (
            "arn:aws:iam::111122223333:user/division/deployer",
            "arn:aws:iam::111122223333:user/division/deployer",
        ),
        ("arn:aws:iam:::user/deployer", "arn:aws:iam:::user/deployer"),
        (
            "arn:aws:sts::111122223333:federated-user/deployer",
            "arn:aws:sts::111122223333:federated-user/deployer",
        ),
        ("arn:aws:iam::111122223333:root", "arn:aws:iam::111122223333:root"),
        # No session name: not an assumed role's session ARN, left as it is.
        (
            "arn:aws:sts::111122223333:assumed-role/affise-delivery",
            "arn:aws:sts::111122223333:assumed-role/affise-delivery",
        ),
    ],
)
def test_the_delivering_principal_is_the_callers_role_or_the_caller(
    monkeypatch: pytest.MonkeyPatch, no_role_arn: None, caller: str, principal: str
) -> None:
    role = principal if ":role/" in principal else None
    identity = CallerIdentity(caller, role)
    monkeypatch.setattr(assume_role.boto3.session, "Session", identity)
    assert assume_role.deployment_principal() == assume_role.Principal(principal)
    # No region configured: STS's global one (and IAM's); GetRole for a role only.
    asked = [("sts", "us-east-1")] + ([("iam", "us-east-1")] if role else [])
    assert identity.asked == asked
    identity.region_name = "eu-west-1"
    identity.asked.clear()
    assert assume_role.deployment_principal() == assume_role.Principal(principal)
    assert identity.asked == [(service, "eu-west-1") for service, _ in asked]


CALLER = "arn:aws:sts::111122223333:assumed-role/affise-delivery/s"
BARE = "arn:aws:iam::111122223333:role/affise-delivery"
WITH_PATH = "arn:aws:iam::111122223333:role/team/exports/affise-delivery"


@pytest.mark.parametrize(
    ("identity", "unread"),
    [
        # No iam:GetRole on its own role (the usual IRSA role's case).
        (CallerIdentity(CALLER, "AccessDenied"), "IAM GetRole answered AccessDenied (HTTP 403)"),
        (CallerIdentity(CALLER, unreachable=True), "IAM GetRole failed: EndpointConnectionError"),
        (
            CallerIdentity(CALLER, "arn:aws:iam::111122223333:role/team/other-role"),
            "IAM GetRole answered another role's ARN",
        ),
    ],
)
def test_a_roles_path_that_cannot_be_read_is_said(
    monkeypatch: pytest.MonkeyPatch, no_role_arn: None, identity: CallerIdentity, unread: str
) -> None:
    monkeypatch.setattr(assume_role.boto3.session, "Session", identity)
    principal = assume_role.deployment_principal()
    assert principal.arn == BARE
    assert principal.path_unread is not None and principal.path_unread.startswith(unread)


def test_irsas_role_arn_gives_the_path_without_get_role(monkeypatch: pytest.MonkeyPatch) -> None:
    identity = CallerIdentity(CALLER)  # no GetRole answer: it is not asked
    monkeypatch.setattr(assume_role.boto3.session, "Session", identity)
    monkeypatch.setenv("AWS_ROLE_ARN", WITH_PATH)
    assert assume_role.deployment_principal() == assume_role.Principal(WITH_PATH)
    assert [service for service, _ in identity.asked] == ["sts"]
    # AWS_ROLE_ARN naming another role (or account) is not the caller's: GetRole says.
    for other in (
        "arn:aws:iam::111122223333:role/team/exports/another-role",
        "arn:aws:iam::444455556666:role/team/exports/affise-delivery",
    ):
        monkeypatch.setenv("AWS_ROLE_ARN", other)
        identity = CallerIdentity(CALLER, WITH_PATH)
        monkeypatch.setattr(assume_role.boto3.session, "Session", identity)
        assert assume_role.deployment_principal() == assume_role.Principal(WITH_PATH)


def test_external_id_names_the_roles_whole_arn_or_says_it_could_not(
    monkeypatch: pytest.MonkeyPatch, no_role_arn: None, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AFFISE_EXTERNAL_ID_KEY", "test-deployment-external-id-key")
    args = ["external-id", "acme", "--file", "/nonexistent/integrations.yaml", "--json"]

    monkeypatch.setattr(assume_role.boto3.session, "Session", CallerIdentity(CALLER, WITH_PATH))
    assert cli.main(args) == 0
    said = capsys.readouterr()
    (statement,) = json.loads(said.out)["trust_policy"]["Statement"]
    assert statement["Principal"] == {"AWS": WITH_PATH}
    assert said.err == ""

    refused_here = CallerIdentity(CALLER, "AccessDenied")
    monkeypatch.setattr(assume_role.boto3.session, "Session", refused_here)
    assert cli.main(args) == 0
    said = capsys.readouterr()
    (statement,) = json.loads(said.out)["trust_policy"]["Statement"]
    assert statement["Principal"] == {"AWS": BARE}
    warning = " ".join(said.err.split())
    assert f"names the deployment's role as {BARE}, without a path" in warning
    assert "its path could not be read (IAM GetRole answered AccessDenied (HTTP 403)" in warning
    assert "AWS refuses a trust policy naming a role that has a path without it" in warning
    assert "run again with --principal and that whole ARN" in warning
