"""Delivery through the customer's IAM role (issue 19, point 1), on the real S3 server: the
deployment's own principal assumes the role with the integration's derived ExternalId, and the
window is delivered with the role's temporary credentials. Ceph RGW 16 serves AssumeRole but
never checks an ExternalId, so a stand-in in front of it (tests/sts_standin.py) refuses a wrong
one as AWS does; everything else goes to RGW itself (its gateway serving STS, on the same
store as the one the other tests use).

On RGW a role's session writes as the user who assumed it, so the exports here say
`acl: bucket-owner-full-control` for the customer to read them back; on AWS the role's session
is a principal of the customer's own account and owns nothing the customer cannot read."""

import hashlib
import hmac
import json
import os
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
import dagster as dg
import pytest

from affise_s3_assets import assume_role, cli, s3
from affise_s3_assets.assume_role import CREDENTIALS, external_id, role_session
from affise_s3_assets.config.apply import apply_integrations
from affise_s3_assets.config.targets import build_export_targets
from affise_s3_assets.delivery.connection_check import check_connection
from tests.caller_identity import CallerIdentity
from tests.conftest import S3_SCRIPT, Account, S3Server
from tests.delivered import delivered_rows, fetch, source_rows
from tests.sts_standin import StandIn, sts_standin
from tests.window_rig import START

DEPLOYER = Account("TESTDEPLOYERKEYID01", "testdeployersecret/0123456789")
DEPLOYER_ARN = "arn:aws:iam:::user/deployer"
INTRUDER_ARN = "arn:aws:iam:::user/intruder"  # the server's account with no rights (conftest)
KEY = "test-deployment-external-id-key-0123456789"
OTHER_KEY = "another-deployment-external-id-key-98765"
ACCEPTED = "role {role} may not be assumed by the deployment with integration"


def compact(document: dict[str, Any]) -> str:
    # RGW 16's IAM API refuses policy documents with spaces in them.
    return json.dumps(document, separators=(",", ":"))


@pytest.fixture(scope="module")
def deployer(s3_server: S3Server) -> Account:
    """The deployment's own account on the server: the principal that assumes roles."""
    subprocess.run(
        ["bash", str(S3_SCRIPT), "adduser", "deployer", DEPLOYER.access_key, DEPLOYER.secret_key],
        env={**os.environ, "S3_DIR": str(s3_server.directory)},
        capture_output=True,
    )
    return DEPLOYER


def iam_client(s3_server: S3Server, account: Account | None = None) -> Any:
    """RGW's IAM API as `account` (the admin, who may create and read roles, unless said)."""
    account = account or s3_server.admin
    return boto3.client(
        "iam",
        endpoint_url=s3_server.endpoint_url,
        region_name="us-east-1",
        aws_access_key_id=account.access_key,
        aws_secret_access_key=account.secret_key,
    )


def create_role(
    s3_server: S3Server, name: str, bucket: str, trusted: str = DEPLOYER_ARN, path: str = "/"
) -> str:
    """A role in the customer's stead: `trusted` (the deployment unless said) may assume it
    (RGW checks no ExternalId; the stand-in does), and it may write the objects into `bucket`."""
    iam = iam_client(s3_server)
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"AWS": [trusted]},
                "Action": ["sts:AssumeRole"],
            }
        ],
    }
    arn = iam.create_role(RoleName=name, Path=path, AssumeRolePolicyDocument=compact(trust))
    allowed = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": ["s3:PutObject", "s3:AbortMultipartUpload"],
                "Resource": [f"arn:aws:s3:::{bucket}/*"],
            }
        ],
    }
    iam.put_role_policy(RoleName=name, PolicyName="delivery", PolicyDocument=compact(allowed))
    return str(arn["Role"]["Arn"])


@pytest.fixture
def deployment(
    monkeypatch: pytest.MonkeyPatch, deployer: Account, tmp_path: Path
) -> Iterator[Account]:
    """The deployment's standard AWS chain holds the deployer's keys and nothing else; its
    ExternalId secret is KEY. Role credentials and clients are forgotten before and after."""
    for name in (
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", deployer.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", deployer.secret_key)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AFFISE_EXTERNAL_ID_KEY", KEY)
    # The test S3 server speaks plain http: allowed here, refused unless said.
    monkeypatch.setenv("AFFISE_STS_ALLOW_HTTP", "1")
    CREDENTIALS.clear()
    s3._cached_role_client.cache_clear()
    yield deployer
    CREDENTIALS.clear()
    s3._cached_role_client.cache_clear()


@pytest.fixture
def standin(s3_server: S3Server) -> Iterator[StandIn]:
    # The server's second gateway, on the same store, serves STS (scripts/s3-server.sh).
    sts = (s3_server.directory / "sts-endpoint-url").read_text().strip()
    with sts_standin(sts) as running:
        yield running


@pytest.fixture
def role(s3_server: S3Server, bucket: str, standin: StandIn) -> str:
    """The customer's role for integration acme: its trust policy's condition (held by the
    stand-in) is acme's ExternalId under KEY."""
    arn = create_role(s3_server, f"affise-{bucket}", bucket)
    standin.expected[arn] = hmac.new(KEY.encode(), b"acme", hashlib.sha256).hexdigest()
    return arn


def role_block(bucket: str, arn: str, endpoint: str, extra: str = "") -> str:
    return f"""    clicks:
      frequency: 60
      bucket: {bucket}
      region: us-west-2
      directory: affise/clicks
      role_arn: {arn}
      endpoint_url: {endpoint}
      acl: bucket-owner-full-control
{extra}"""


def observation(rig: Any, name: str) -> dict[str, Any]:
    records = rig.instance.fetch_observations(dg.AssetKey(["affise", name, "clicks"]), limit=1)
    (record,) = records.records
    return {k: v.value for k, v in record.asset_observation.metadata.items()}


def failure_text(result: dg.ExecuteInProcessResult) -> str:
    (failure,) = result.get_step_failure_events()
    error = failure.step_failure_data.error
    return str(error.message)


def test_the_external_id_is_an_hmac_of_the_name_under_the_deployments_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AFFISE_EXTERNAL_ID_KEY", KEY)
    derived = external_id("acme")
    assert derived == hmac.new(KEY.encode(), b"acme", hashlib.sha256).hexdigest()
    assert len(derived) == 64 and derived != external_id("globex")
    session = role_session("acme", "arn:aws:iam:::role/r", "us-west-2", None)
    assert session.sts_endpoint == "https://sts.us-west-2.amazonaws.com"
    # An export written with AWS's own S3 endpoint assumes its role at AWS's STS, not S3.
    aws = role_session(
        "acme", "arn:aws:iam:::role/r", "us-west-2", "https://s3.us-west-2.amazonaws.com"
    )
    assert aws.sts_endpoint == "https://sts.us-west-2.amazonaws.com"
    assert derived not in repr(session)
    monkeypatch.delenv("AFFISE_EXTERNAL_ID_KEY")
    with pytest.raises(Exception, match="AFFISE_EXTERNAL_ID_KEY is not set") as raised:
        external_id("acme")
    assert KEY not in str(raised.value)


def test_a_window_is_delivered_through_the_customers_role(
    rig: Any, role: str, standin: StandIn, deployment: Account, events_db: Path
) -> None:
    rig.configure([("acme", "2026-11-24 00:00:00", role_block(rig.bucket, role, standin.url))])
    result = rig.run()
    assert result.success
    (key,) = rig.objects()
    assert key == "affise/clicks/2026/11/25/2026-11-25 10:00:00.csv.gz"
    expected = source_rows(events_db, "clicks", START, START + timedelta(hours=1))
    assert delivered_rows(fetch(rig.s3, rig.bucket, key)) == expected
    # One AssumeRole, with the ExternalId derived for acme and a session named for it.
    (call,) = standin.assume_calls
    assert call["ExternalId"] == hmac.new(KEY.encode(), b"acme", hashlib.sha256).hexdigest()
    assert call["RoleArn"] == role and call["RoleSessionName"] == "affise-acme"
    assert standin.refused == 0

    # Nothing secret anywhere the deployment shows or keeps.
    secrets = [deployment.secret_key, KEY, *standin.issued]
    assert len(standin.issued) == 3  # key id, secret, session token
    shown = [
        repr(event)
        for record in rig.instance.get_run_records()
        for event in rig.instance.all_logs(record.dagster_run.run_id)
    ]
    (target,) = build_export_targets(apply_integrations(rig.path.read_text()).integrations)
    shown += [repr(target), repr(target.destination)]
    for text in shown:
        for secret in secrets:
            assert secret not in text


def test_the_roles_credentials_are_assumed_once_for_many_windows_until_near_their_end(
    rig: Any, role: str, standin: StandIn, deployment: Account
) -> None:
    rig.configure([("acme", "2026-11-24 00:00:00", role_block(rig.bucket, role, standin.url))])
    assert rig.run().success
    assert rig.run(last="2026-11-25-12:00").success
    assert len(rig.objects()) == 3
    assert len(standin.assume_calls) == 1
    # Within REFRESH_BEFORE_EXPIRY_SECONDS of their end they are assumed again.
    session = role_session("acme", role, "us-west-2", standin.url)
    (held,) = CREDENTIALS._held.values()
    soon = datetime.now(UTC) + timedelta(seconds=assume_role.REFRESH_BEFORE_EXPIRY_SECONDS - 30)
    CREDENTIALS._held[session.cache_key] = type(held)(
        held.access_key, held.secret_key, held.token, soon
    )
    fresh = CREDENTIALS.metadata(session)
    assert len(standin.assume_calls) == 2
    assert fresh["expiry_time"] > soon.isoformat()


@pytest.mark.parametrize("wrong", ["another integration's", "the deployment's secret changed"])
def test_a_wrong_external_id_is_refused_permanently_and_nothing_is_delivered(
    rig: Any,
    role: str,
    standin: StandIn,
    deployment: Account,
    monkeypatch: pytest.MonkeyPatch,
    wrong: str,
) -> None:
    name = "acme"
    if wrong == "another integration's":
        name = "globex"  # a block naming acme's role: it presents globex's ExternalId
    else:
        monkeypatch.setenv("AFFISE_EXTERNAL_ID_KEY", OTHER_KEY)
    rig.configure([(name, "2026-11-24 00:00:00", role_block(rig.bucket, role, standin.url))])
    result = rig.run()
    assert not result.success
    assert standin.refused == 1
    message = failure_text(result)
    assert ACCEPTED.format(role=role) in message
    assert f"`affise-s3 external-id {name}` prints what the role needs" in message
    seen = observation(rig, name)
    assert (seen["error_code"], seen["permanent"]) == ("RoleAccessDenied", True)
    assert rig.objects() == []
    for secret in (KEY, OTHER_KEY, deployment.secret_key):
        assert secret not in message + json.dumps(seen, default=str)


def test_a_role_that_does_not_exist_is_a_permanent_error(
    rig: Any, standin: StandIn, deployment: Account
) -> None:
    missing = f"arn:aws:iam:::role/affise-{rig.bucket}-missing"
    rig.configure([("acme", "2026-11-24 00:00:00", role_block(rig.bucket, missing, standin.url))])
    result = rig.run()
    assert not result.success
    assert f"role {missing} does not exist: the customer creates it" in failure_text(result)
    seen = observation(rig, "acme")
    assert (seen["error_code"], seen["permanent"]) == ("RoleNotFound", True)
    assert rig.objects() == []


def test_a_trust_policy_naming_another_principal_is_refused_by_rgw_permanently(
    rig: Any, s3_server: S3Server, deployment: Account
) -> None:
    """No stand-in: RGW's own STS gateway refuses a role whose trust policy names another
    principal than the deployment (a 403 in an S3-style body, which botocore reports as
    "Unknown"), and the delivery stops, permanently, in words an account manager acts on. The
    same role trusting the deployment is assumed there."""
    sts = (s3_server.directory / "sts-endpoint-url").read_text().strip()
    other = create_role(s3_server, f"affise-{rig.bucket}-other", rig.bucket, INTRUDER_ARN)
    ours = create_role(s3_server, f"affise-{rig.bucket}-ours", rig.bucket)
    raw = boto3.client(
        "sts",
        endpoint_url=sts,
        region_name="us-east-1",
        aws_access_key_id=deployment.access_key,
        aws_secret_access_key=deployment.secret_key,
    )
    with pytest.raises(botocore.exceptions.ClientError) as answered:
        raw.assume_role(RoleArn=other, RoleSessionName="affise-acme")
    # RGW's S3-style error body: botocore finds no Error element in it (its message says
    # "Unknown") and leaves the body's Code at the top of the response.
    response = answered.value.response
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert "Error" not in response and response.get("Code") == "AccessDenied"
    assert "(Unknown)" in str(answered.value)
    assert CREDENTIALS.metadata(role_session("acme", ours, "us-west-2", sts))["token"]

    message = refused_for_the_trust_policy(rig, other, sts)
    # RGW answers keys it does not know with AccessDenied too: asked, it accepts the deployment's.
    assert f"({sts} accepts the deployment's own credentials)" in message
    assert "`affise-s3 external-id acme` prints what the role needs" in message
    seen = observation(rig, "acme")
    assert (seen["error_code"], seen["permanent"]) == ("RoleAccessDenied", True)
    assert rig.objects() == []
    (held,) = CREDENTIALS._held.values()  # the trusted role's alone
    for secret in (KEY, deployment.secret_key, held.secret_key, held.token):
        assert secret not in message + json.dumps(seen, default=str)


def refused_for_the_trust_policy(rig: Any, role: str, sts: str) -> str:
    """Deliver acme through `role`: the run fails, and its message says the role's trust
    policy refused (what else it says is the caller's to check)."""
    rig.configure([("acme", "2026-11-24 00:00:00", role_block(rig.bucket, role, sts))])
    result = rig.run()
    assert not result.success
    message = failure_text(result)
    assert ACCEPTED.format(role=role) in message
    assert "its trust policy does not name the delivering principal" in message
    return message


@pytest.mark.parametrize("keys", ["a wrong secret", "a key id the store does not know"])
def test_deployment_keys_rgw_refuses_are_named_as_a_cause_beside_the_trust_policy(
    rig: Any,
    s3_server: S3Server,
    deployment: Account,
    monkeypatch: pytest.MonkeyPatch,
    keys: str,
) -> None:
    """RGW's STS answers an AssumeRole signed with a key it does not know, or a wrong secret,
    with AccessDenied, as it answers a trust policy refusing (AWS's says InvalidClientTokenId
    or SignatureDoesNotMatch); RGW 16 answers S3 ListBuckets with the same keys AccessDenied
    too, which a store with IAM-style policies also answers a user it knows without the right
    to list buckets. So the delivery stops, permanently, naming both causes: the role's trust
    policy, and the deployment's own credentials, with ListBuckets refused. The role trusts the
    deployer: its right keys would be accepted."""
    sts = (s3_server.directory / "sts-endpoint-url").read_text().strip()
    ours = create_role(s3_server, f"affise-{rig.bucket}-ours", rig.bucket)
    if keys == "a wrong secret":
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-deployers-secret/0123456789")
    else:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "TESTUNKNOWNKEYID001")
    # A session of its own: boto3's default one would keep these keys for the process.
    raw = boto3.session.Session().client("sts", endpoint_url=sts, region_name="us-east-1")
    with pytest.raises(botocore.exceptions.ClientError) as answered:
        raw.assume_role(RoleArn=ours, RoleSessionName="affise-acme")
    response = answered.value.response
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert response.get("Code") == "AccessDenied"

    message = refused_for_the_trust_policy(rig, ours, sts)
    assert (
        f"or {sts} does not accept the deployment's own credentials: S3 ListBuckets with them "
        "was refused too (AccessDenied (HTTP 403)), an answer a store gives both to keys it "
        "does not know (as Ceph RGW does) and to a user without the right to list buckets"
    ) in message
    assert "an operator checks the deployment's credentials against that store" in message
    assert "every user" not in message
    seen = observation(rig, "acme")
    assert (seen["error_code"], seen["permanent"]) == ("RoleAccessDenied", True)
    assert rig.objects() == [] and CREDENTIALS._held == {}
    for secret in (KEY, deployment.secret_key, "not-the-deployers-secret/0123456789"):
        assert secret not in message + json.dumps(seen, default=str)


def test_the_delivering_principal_is_its_roles_arn_with_the_path_rgws_iam_says(
    s3_server: S3Server, deployer: Account, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GetRole on RGW's IAM API gives the role's ARN with its path; a caller without the right
    to read roles (RGW's `roles` capability, iam:GetRole on AWS) gets the ARN without it, and
    `path_unread` says why. RGW 16 has no GetCallerIdentity (405): a stub answers it."""
    name = f"affise-{bucket}-deployment"
    arn = create_role(s3_server, name, bucket, path="/team/exports/")
    assert arn == f"arn:aws:iam:::role/team/exports/{name}"
    monkeypatch.delenv("AWS_ROLE_ARN", raising=False)
    caller = f"arn:aws:sts:::assumed-role/{name}/affise-session"
    reader = CallerIdentity(caller, iam=iam_client(s3_server))
    monkeypatch.setattr(assume_role.boto3.session, "Session", reader)
    assert assume_role.deployment_principal() == assume_role.Principal(arn)
    no_right = CallerIdentity(caller, iam=iam_client(s3_server, deployer))
    monkeypatch.setattr(assume_role.boto3.session, "Session", no_right)
    principal = assume_role.deployment_principal()
    assert principal.arn == f"arn:aws:iam:::role/{name}"
    assert principal.path_unread == "IAM GetRole answered AccessDenied (HTTP 403)"


def test_a_deployment_without_credentials_or_secret_says_so(
    rig: Any, role: str, standin: StandIn, deployment: Account, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    rig.configure([("acme", "2026-11-24 00:00:00", role_block(rig.bucket, role, standin.url))])
    result = rig.run()
    assert "the deployment has no AWS credentials of its own" in failure_text(result)
    assert observation(rig, "acme")["permanent"] is True
    monkeypatch.delenv("AFFISE_EXTERNAL_ID_KEY")
    result = rig.run()
    assert "AFFISE_EXTERNAL_ID_KEY is not set" in failure_text(result)
    assert standin.assume_calls == [] and rig.objects() == []


def test_a_role_is_never_assumed_over_plain_http_unless_allowed(
    rig: Any, role: str, standin: StandIn, deployment: Account, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AFFISE_STS_ALLOW_HTTP")
    rig.configure([("acme", "2026-11-24 00:00:00", role_block(rig.bucket, role, standin.url))])
    result = rig.run()
    assert "will not assume role" in failure_text(result)
    assert "over plain http" in failure_text(result)
    assert observation(rig, "acme")["permanent"] is True
    assert standin.assume_calls == [] and rig.objects() == []


def test_check_connection_goes_through_the_role_and_says_what_is_wrong(
    rig: Any,
    role: str,
    standin: StandIn,
    deployment: Account,
    capsys: pytest.CaptureFixture[str],
) -> None:
    rig.configure([("acme", "2026-11-24 00:00:00", role_block(rig.bucket, role, standin.url))])
    assert cli.main(["check-connection", "acme", "--file", str(rig.path)]) == 0
    assert "ok: wrote a probe object" in capsys.readouterr().out
    assert len(standin.assume_calls) == 1
    rig.configure([("globex", "2026-11-24 00:00:00", role_block(rig.bucket, role, standin.url))])
    assert cli.main(["check-connection", "globex", "--file", str(rig.path)]) == 1
    said = capsys.readouterr().out
    assert "cannot assume the customer's role: " + ACCEPTED.format(role=role) in said
    (target,) = build_export_targets(apply_integrations(rig.path.read_text()).integrations)
    assert not check_connection(target.destination).ok
    assert cli.main(["validate", str(rig.path)]) == 0


def test_external_id_prints_the_id_and_the_policies_the_customer_creates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AFFISE_EXTERNAL_ID_KEY", KEY)
    path = tmp_path / "integrations.yaml"
    path.write_text(
        'integrations:\n  - name: acme\n    start: "2026-11-24 00:00:00"\n    clicks:\n'
        "      bucket: acme-raw\n      region: us-west-2\n      directory: affise/clicks\n"
        "      role_arn: arn:aws:iam::123456789012:role/affise\n"
        "      sse: aws:kms\n      kms_key_id: alias/acme-exports\n"
    )
    assert not apply_integrations(path.read_text()).problems
    principal = "arn:aws:iam::111122223333:role/affise-delivery"
    derived = hmac.new(KEY.encode(), b"acme", hashlib.sha256).hexdigest()
    args = ["external-id", "acme", "--principal", principal, "--file", str(path)]
    assert cli.main(args) == 0
    text = capsys.readouterr().out
    assert f"ExternalId of integration 'acme': {derived}" in text
    trust = json.loads(text.split("(Trust relationships):\n", 1)[1].split("\n\n", 1)[0])
    (statement,) = trust["Statement"]
    assert statement["Principal"] == {"AWS": principal}
    assert statement["Action"] == "sts:AssumeRole"
    assert statement["Condition"] == {"StringEquals": {"sts:ExternalId": derived}}
    assert KEY not in text

    assert cli.main([*args, "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["trust_policy"] == trust and document["external_id"] == derived
    s3_statement, kms_statement = document["permissions_policy"]["Statement"]
    assert s3_statement["Action"] == ["s3:PutObject", "s3:AbortMultipartUpload"]
    assert s3_statement["Resource"] == ["arn:aws:s3:::acme-raw/affise/clicks/*"]
    assert kms_statement["Action"] == ["kms:GenerateDataKey", "kms:Decrypt"]
    assert kms_statement["Condition"] == {
        "ForAnyValue:StringEquals": {"kms:ResourceAliases": ["alias/acme-exports"]}
    }

    monkeypatch.delenv("AFFISE_EXTERNAL_ID_KEY")
    assert cli.main(args) == 1
    assert "AFFISE_EXTERNAL_ID_KEY is not set" in capsys.readouterr().err


def test_the_integration_clients_still_read_no_ambient_aws_environment(
    role: str, standin: StandIn, deployment: Account, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The deployment's chain is read for AssumeRole only: the role's S3 client, like a keyed
    one, goes to its block's endpoint whatever AWS_ENDPOINT_URL says."""
    destination = s3.S3Destination(
        "acme", "clicks", "b", "us-west-2", "d", endpoint_url=standin.url, role_arn=role
    )
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ap-south-1")
    client = s3.s3_client(destination)
    assert client.meta.endpoint_url == standin.url
    assert client.meta.region_name == "us-west-2"
