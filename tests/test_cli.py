"""`affise-s3 validate`, as an account manager runs it: the installed console script."""

import contextlib
import os
import socket
import subprocess
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import botocore.exceptions
import pytest

from affise_s3_assets.automation.live_config import write_last_good
from affise_s3_assets.config.apply import apply_integrations, parse_integrations
from affise_s3_assets.config.targets import build_export_targets
from affise_s3_assets.delivery.connection_check import explain
from tests.conftest import ROOT, Account, S3Server
from tests.delivered import grant_only_delivery, keys_in
from tests.stalling_endpoint import stalling_endpoint

CLI = ROOT / ".venv" / "bin" / "affise-s3"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CLI), *args], capture_output=True, text=True, cwd=ROOT)


def export(
    bucket: str, directory: str, frequency: int = 15, secret: str | None = None, name: str = "acme"
) -> str:
    variable = name.upper()
    return f"""
      frequency: {frequency}
      bucket: {bucket}
      region: us-west-2
      directory: "{directory}"
      access_key: ${{{variable}_AWS_ACCESS_KEY_ID}}
      secret_key: {secret or "${" + variable + "_AWS_SECRET_ACCESS_KEY}"}"""


LITERAL_SECRET = "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY"


def test_validate_lists_every_problem_one_per_line_and_never_a_secret(tmp_path: Path) -> None:
    path = tmp_path / "integrations.yaml"
    path.write_text(
        f"""integrations:
  - name: acme
    start: "2026-11-01 00:00:00"
    clicks:{export("acme-raw", "affise", 7)}
  - name: globex
    start: "2026-11-01 00:00:00"
    clicks:{export("shared-raw", "x", name="globex")}
    conversions:{export("shared-raw", "x", name="globex")}
  - name: initech
    start: "2026-11-01 00:00:00"
    clicks:{export("raw--ol-s3", "i", secret=LITERAL_SECRET, name="initech")}
  - name: hooli
    start: "2026-11-01 00:00:00"
    clicks:{export("hooli-raw", "h", name="hooli")}
"""
    )
    done = run("validate", str(path))
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert lines[0].startswith("integration 'acme': clicks.frequency: 7 minutes does not cut")
    assert any(
        line.startswith("integration 'globex': clicks.directory:") and "both are refused" in line
        for line in lines
    )
    assert "integration 'initech': clicks.bucket: 'raw--ol-s3' is not an AWS S3 bucket name" in (
        done.stdout
    )
    assert "integration 'initech': clicks.secret_key: must be an ${ENV_VAR} reference" in (
        done.stdout
    )
    assert "hooli" not in done.stdout
    assert "wJalrXUtnFEMI" not in done.stdout + done.stderr
    assert "4 problem(s)" in done.stderr


def test_validate_names_both_lines_of_a_duplicate_key(tmp_path: Path) -> None:
    path = tmp_path / "integrations.yaml"
    path.write_text(
        f"""integrations:
  - name: acme
    start: "2026-11-01 00:00:00"
    clicks:{export("acme-raw", "affise")}
      affiliates: [101]
      affiliates: []
"""
    )
    done = run("validate", str(path))
    assert done.returncode == 1
    assert "key 'affiliates' appears twice in one block (lines 11 and 12)" in done.stdout


def test_validate_passes_the_shipped_file() -> None:
    shipped = ROOT / "integrations.yaml"
    done = run("validate", str(shipped))
    assert done.returncode == 0, done.stdout + done.stderr
    integrations = parse_integrations(shipped.read_text()).integrations
    exports = sum(len(i.exports()) for i in integrations)
    assert (
        done.stdout.strip() == f"{shipped}: ok, {len(integrations)} integrations, {exports} exports"
    )


def test_validate_judges_as_the_deployment_does_with_its_state_dir(tmp_path: Path) -> None:
    """A 1-minute export started 2 years ago is past the bound on windows before now: refused
    as a newcomer, accepted when the deployment's last applied config already delivers it."""
    path = tmp_path / "integrations.yaml"
    old_start = (datetime.now(UTC) - timedelta(days=730)).strftime("%Y-%m-%d 00:00:00")
    path.write_text(
        f"""integrations:
  - name: acme
    start: "{old_start}"
    clicks:{export("acme-raw", "affise", 1)}
"""
    )
    fresh = run("validate", str(path))
    assert fresh.returncode == 1 and "windows of 1 min (clicks) before now" in fresh.stdout
    state = tmp_path / "state"
    applied = apply_integrations(path.read_text(), str(path), now=datetime(2026, 1, 1))
    write_last_good(state, applied)
    delivering = run("validate", str(path), "--state-dir", str(state))
    assert delivering.returncode == 0, delivering.stdout


def probe_file(tmp_path: Path, endpoint: str, bucket: str, region: str = "us-east-1") -> Path:
    path = tmp_path / "integrations.yaml"
    path.write_text(
        f"""integrations:
  - name: acme
    start: "2026-11-01 00:00:00"
    clicks:
      bucket: {bucket}
      region: {region}
      directory: affise/clicks
      access_key: ${{ACME_AWS_ACCESS_KEY_ID}}
      secret_key: ${{ACME_AWS_SECRET_ACCESS_KEY}}
      endpoint_url: {endpoint}
"""
    )
    return path


def check(path: Path, *options: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("ACME_AWS_", "AWS_"))}
    return subprocess.run(
        [str(CLI), "check-connection", "acme", "--file", str(path), *options],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=environment | env,
    )


def check_as(
    account: Account, s3_server: S3Server, bucket: str, tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    """check-connection of the probe integration, with `account`'s keys in its variables."""
    return check(
        probe_file(tmp_path, s3_server.endpoint_url, bucket),
        ACME_AWS_ACCESS_KEY_ID=account.access_key,
        ACME_AWS_SECRET_ACCESS_KEY=account.secret_key,
    )


def test_check_connection_writes_a_probe_outside_the_date_folders_and_removes_it(
    s3_server: S3Server, bucket: str, tmp_path: Path
) -> None:
    done = check_as(s3_server.customer, s3_server, bucket, tmp_path)
    assert done.returncode == 0, done.stdout
    assert done.stdout.strip() == (
        f"integration 'acme' clicks: ok: wrote a probe object under s3://{bucket}/affise/clicks/"
        " and removed it"
    )
    assert keys_in(s3_server, bucket) == []


def test_check_connection_passes_under_the_least_privilege_policy_and_leaves_the_probe(
    s3_server: S3Server, bucket: str, tmp_path: Path
) -> None:
    grant_only_delivery(s3_server, bucket)
    done = check_as(s3_server.intruder, s3_server, bucket, tmp_path)
    assert done.returncode == 0, done.stdout
    assert "and left it (no s3:DeleteObject; delete s3://" in done.stdout
    (probe,) = keys_in(s3_server, bucket)
    assert probe.startswith("affise/clicks/_affise_connection_check/")


def test_check_connection_checks_an_export_the_deployment_keeps_delivering(
    s3_server: S3Server, bucket: str, tmp_path: Path
) -> None:
    """An export whose start time has pushed past the bound on windows before now is still
    delivered under the deployment's last applied config: with its state directory, it can
    still be checked."""
    path = probe_file(tmp_path, s3_server.endpoint_url, bucket)
    old_start = (datetime.now(UTC) - timedelta(days=730)).strftime("%Y-%m-%d 00:00:00")
    path.write_text(
        path.read_text()
        .replace('"2026-11-01 00:00:00"', f'"{old_start}"')
        .replace("    clicks:\n", "    clicks:\n      frequency: 1\n")
    )
    keys = {
        "ACME_AWS_ACCESS_KEY_ID": s3_server.customer.access_key,
        "ACME_AWS_SECRET_ACCESS_KEY": s3_server.customer.secret_key,
    }
    fresh = check(path, **keys)
    assert fresh.returncode == 1 and "no export to check" in fresh.stdout, fresh.stdout
    state = tmp_path / "state"
    write_last_good(
        state, apply_integrations(path.read_text(), str(path), now=datetime(2026, 1, 1))
    )
    delivering = check(path, "--state-dir", str(state), **keys)
    assert delivering.returncode == 0, delivering.stdout
    assert "ok: wrote a probe object" in delivering.stdout
    # A file that cannot be applied is not checked by what the deployment kept instead.
    path.write_text(path.read_text() + "  - name: [\n")
    broken = check(path, "--state-dir", str(state), **keys)
    assert broken.returncode == 1 and "not valid YAML" in broken.stdout, broken.stdout
    assert "probe" not in broken.stdout


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("unset variable", "credentials: "),
        ("no such bucket", "does not exist on http://"),
        ("access denied", "access denied: these credentials may not s3:PutObject on arn:aws:s3:::"),
        ("wrong secret", "the secret key does not match the access key id"),
        ("unknown key id", "the access key id is unknown to the store"),
        ("unreachable", "is unreachable"),
        ("not answering", "accepts connections but does not answer"),
    ],
)
def test_check_connection_says_what_is_wrong_in_words_to_act_on(
    s3_server: S3Server, bucket: str, tmp_path: Path, case: str, expected: str
) -> None:
    customer, intruder = s3_server.customer, s3_server.intruder
    env = {
        "ACME_AWS_ACCESS_KEY_ID": customer.access_key,
        "ACME_AWS_SECRET_ACCESS_KEY": customer.secret_key,
    }
    endpoint, target = s3_server.endpoint_url, bucket
    with contextlib.ExitStack() as stack:
        if case == "unset variable":
            env.pop("ACME_AWS_SECRET_ACCESS_KEY")
            expected += "secret_key: environment variable ACME_AWS_SECRET_ACCESS_KEY is not set"
        elif case == "no such bucket":
            target = bucket + "-missing"
        elif case == "access denied":
            env = {
                "ACME_AWS_ACCESS_KEY_ID": intruder.access_key,
                "ACME_AWS_SECRET_ACCESS_KEY": intruder.secret_key,
            }
        elif case == "wrong secret":
            env["ACME_AWS_SECRET_ACCESS_KEY"] = "not-the-secret-0123456789"
        elif case == "unknown key id":
            env["ACME_AWS_ACCESS_KEY_ID"] = "UNKNOWNKEYID00000000"
        elif case == "unreachable":
            with socket.socket() as free:
                free.bind(("127.0.0.1", 0))
                endpoint = f"http://127.0.0.1:{free.getsockname()[1]}"
        elif case == "not answering":
            endpoint = stack.enter_context(stalling_endpoint())
            env["AFFISE_REQUEST_DEADLINE_SECONDS"] = "2"
        done = check(probe_file(tmp_path, endpoint, target), **env)
    assert done.returncode == 1
    assert done.stdout.startswith("integration 'acme' clicks: ")
    assert expected in done.stdout, done.stdout
    for secret in (customer.secret_key, intruder.secret_key, "not-the-secret-0123456789"):
        assert secret not in done.stdout + done.stderr


def test_a_wrong_region_names_the_region_the_bucket_is_in() -> None:
    """AWS answers a request signed for the wrong region with the bucket's own region (Ceph
    RGW accepts any region, so this is AWS's documented answer, built here)."""
    error = botocore.exceptions.ClientError(
        {
            "Error": {"Code": "AuthorizationHeaderMalformed", "Region": "eu-central-1"},
            "ResponseMetadata": {"HTTPStatusCode": 400, "HTTPHeaders": {}},
        },
        "PutObject",
    )
    (target,) = build_export_targets(
        parse_integrations(
            probe_file(Path(tempfile.mkdtemp()), "https://s3.example.com", "acme-raw").read_text()
        ).integrations
    )
    assert explain(error, target.destination) == (
        "wrong region: the bucket is in eu-central-1, the integration says us-east-1 "
        "(AuthorizationHeaderMalformed)"
    )
