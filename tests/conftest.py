"""Shared fixtures: a real S3 server (Ceph RGW over HTTP) and a real DuckDB events file."""

import os
import re
import subprocess
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import dagster as dg
import pytest

from affise_s3_assets.config.secrets import credential_variables
from affise_s3_assets.demo.events import generate_demo_events

# Helpers with asserts of their own (some moved out of test modules): pytest rewrites them as
# it does a test module's, so a failure there still shows the values compared.
pytest.register_assert_rewrite("tests.delivered", "tests.operations")

ROOT = Path(__file__).resolve().parent.parent
S3_SCRIPT = ROOT / "scripts" / "s3-server.sh"

warnings.filterwarnings("ignore", category=dg.BetaWarning)
# The demo file's dates are read as written (integrations.yaml, `demo:`): the day a demo
# instance pinned (scripts/dev.sh) reaches no test, nor any process a test starts.
os.environ.pop("AFFISE_DEMO_DAY", None)

# The day the test events cover; windows are cut out of it.
EVENTS_START = datetime(2026, 11, 25)
EVENTS_END = datetime(2026, 11, 26)


@dataclass(frozen=True)
class Account:
    access_key: str
    secret_key: str


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str
    admin: Account
    customer: Account  # owns the test buckets
    intruder: Account  # a valid account with no rights on them
    directory: Path = Path("/nonexistent")  # its state (ceph.conf), for radosgw-admin

    def client(self, account: Account | None = None) -> Any:
        account = account or self.customer
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id=account.access_key,
            aws_secret_access_key=account.secret_key,
            config=botocore.config.Config(
                s3={"addressing_style": "path"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """Starts the project's own RGW (scripts/s3-server.sh) on ports of its own, for this session.

    Set AFFISE_TEST_S3_REUSE=1 to reuse a server already started with the same S3_DIR/ports.
    """
    # Each pytest-xdist worker (scripts/test.sh runs two) has a server of its own: gw0 on the
    # ports below, gw1 on the next ones up.
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    env = {
        **os.environ,
        "S3_DIR": os.environ.get("AFFISE_TEST_S3_DIR", "/tmp/affise-test-s3") + f"-{worker}"
        if worker
        else os.environ.get("AFFISE_TEST_S3_DIR", "/tmp/affise-test-s3"),
        "RGW_PORT": str(int(os.environ.get("AFFISE_TEST_RGW_PORT", "7481")) + 10 * worker),
        # Down, not up: the OSDs bind from 6800.
        "MON_PORT": str(int(os.environ.get("AFFISE_TEST_MON_PORT", "6790")) - 10 * worker),
        "S3_ACCESS_KEY": "TESTADMINACCESSKEY",
        "S3_SECRET_KEY": "testadminsecretkey123",
    }
    reuse = os.environ.get("AFFISE_TEST_S3_REUSE") == "1"
    if not reuse:
        started = subprocess.run(
            ["bash", str(S3_SCRIPT), "start"], env=env, capture_output=True, text=True
        )
        if started.returncode != 0:
            pytest.fail(
                "could not start the test S3 server (is Ceph RGW installed? "
                f"`bash {S3_SCRIPT.relative_to(ROOT)} install`):\n{started.stderr[-2000:]}"
            )
        exported = dict(re.findall(r"export (\w+)=(\S+)", started.stdout))
        endpoint = exported["AWS_ENDPOINT_URL"]
    else:
        endpoint = f"http://127.0.0.1:{env['RGW_PORT']}"
    customer = Account("TESTCUSTOMERKEYID01", "testcustomersecret/0123456789")
    intruder = Account("TESTINTRUDERKEYID01", "testintrudersecret/0123456789")
    for uid, account in (("customer", customer), ("intruder", intruder)):
        subprocess.run(
            ["bash", str(S3_SCRIPT), "adduser", uid, account.access_key, account.secret_key],
            env=env,
            check=not reuse,
            capture_output=True,
        )
    server = S3Server(
        endpoint,
        Account(env["S3_ACCESS_KEY"], env["S3_SECRET_KEY"]),
        customer,
        intruder,
        Path(env["S3_DIR"]),
    )
    try:
        yield server
    finally:
        if not reuse:
            subprocess.run(["bash", str(S3_SCRIPT), "stop"], env=env, capture_output=True)


_bucket_counter = iter(range(1_000_000))


@pytest.fixture
def bucket(s3_server: S3Server) -> str:
    """A fresh, empty bucket owned by the customer account."""
    name = f"affise-test-{os.getpid()}-{next(_bucket_counter)}"
    s3_server.client().create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def events_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real DuckDB file with one day of demo events (hostile strings, window-edge rows)."""
    path = tmp_path_factory.mktemp("events") / "events.duckdb"
    generate_demo_events(path, EVENTS_START, EVENTS_END, clicks_per_day=20_000, seed=11)
    return path


# The account a test's integrations deliver with; each integration's config names its own
# variables (config.credential_variables: <NAME>_AWS_ACCESS_KEY_ID, ...).
KEY_VARIABLES = ("TEST_ACCESS_KEY_ID", "TEST_SECRET_ACCESS_KEY")


# The integrations tests/delivered.integration() builds (the rig names its own).
TEST_INTEGRATIONS = ("acme", "good", "bad")


@pytest.fixture
def customer_env(monkeypatch: pytest.MonkeyPatch, s3_server: S3Server) -> dict[str, str]:
    """The customer's credentials in the environment variables the test configs reference:
    TEST_ACCESS_KEY_ID and TEST_SECRET_ACCESS_KEY (the rig's, copied to its integrations'
    own at each run), and each of TEST_INTEGRATIONS' own."""
    keys = (s3_server.customer.access_key, s3_server.customer.secret_key)
    values = dict(zip(KEY_VARIABLES, keys, strict=True))
    for name in TEST_INTEGRATIONS:
        values |= dict(zip(credential_variables(name), keys, strict=True))
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


@pytest.fixture
def rig(
    s3_server: S3Server,
    bucket: str,
    customer_env: dict[str, str],
    events_db: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Any]:
    """A WindowRig (tests/window_rig.py) on a fresh instance and bucket."""
    from tests.window_rig import WindowRig  # it imports this module: not at the top

    with dg.instance_for_test() as instance:
        yield WindowRig(s3_server, bucket, events_db, tmp_path, monkeypatch, instance)
