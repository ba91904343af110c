"""The production engine, started and proven on this machine: scripts/prod-local.sh runs the
instance of deploy/dagster.yaml (Postgres storage, QueuedRunCoordinator with the cluster's tag
limits, run monitoring, run retries) with only its run launcher swapped for local processes,
and `dagster code-server start`, `dagster-daemon run` and `dagster-webserver` as separate
processes. The events are a Parquet dataset on the S3 server (`s3://`, read with the
deployment's own credentials). Against a real S3 server, with no UI action: every window
arrives once with the source's rows, an integration appended to the file goes live by
itself, a run worker killed with -9 has its windows delivered again, and restarting the
daemon, the code server and the webserver mid-way loses and duplicates nothing. Each run's
stdout/stderr (compute logs) lands in the deployment's own bucket on that server."""

import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest
import yaml

from affise_s3_assets.automation.runs import PARENT_RUN_ID_TAG
from affise_s3_assets.config.targets import window_job_name
from affise_s3_assets.demo.events import generate_demo_events
from affise_s3_assets.source.completeness import WATERMARK_FILE
from tests.conftest import ROOT, S3Server
from tests.datasets import write_dataset
from tests.delivered import keys_in
from tests.operations import (
    assert_rows,
    block,
    gone,
    object_key,
    run_windows,
    statuses,
    wait_for,
    waiting_for_the_source,
)
from tests.production import COMPONENTS, SCRIPT, ProdLocal, run_script, without_run_launcher

# A long end-to-end test: with the other engine test on one pytest-xdist worker
# (scripts/test.sh), so at most two engines share the machine.
pytestmark = pytest.mark.xdist_group("engines")
PG_PORT = int(os.environ.get("AFFISE_TEST_PG_PORT", "55433"))
# The webserver's port; the code server's is the next one.
PORT = int(os.environ.get("AFFISE_TEST_PROD_PORT", "3310"))
SUFFIX = f"{os.getpid()}"
# What the daemon logs when integrations_config_sensor asks the webserver for a reload.
RELOADING = "integrations_config_sensor skipped: {path} changed: reloading code location"
# compute_logs' prefix in deploy/dagster.yaml.
COMPUTE_LOGS_PREFIX = "dagster/compute-logs"


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass
class Engine:
    prod: ProdLocal
    integrations: Path
    # The events as a DuckDB file: what the dataset on S3 was written from, and what every
    # delivered object is compared with.
    events: Path
    lake: "Lake"
    start: datetime
    buckets: dict[str, str]
    password: str
    # The deployment's bucket for run logs (compute_logs), on the same server.
    compute_logs: str


@dataclass
class Lake:
    """The events dataset on the S3 server, in a bucket of the deployment's account (the
    server's admin), which no customer account can read; the test is its loader."""

    s3: S3Server
    bucket: str
    prefix: str

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def load(self, events: Path, root: Path) -> None:
        watermarks = write_dataset(events, root, ordered=True, row_group_size=5000)
        client = self.s3.client(self.s3.admin)
        client.create_bucket(Bucket=self.bucket)
        for file in sorted(root.rglob("*.parquet")):
            key = f"{self.prefix}/{file.relative_to(root)}"
            client.put_object(Bucket=self.bucket, Key=key, Body=file.read_bytes())
        for kind, until in watermarks.items():
            self.watermark(kind, until)

    def watermark(self, event_type: str, until: datetime) -> None:
        """Set, as a loader would, how far `event_type` is complete (backwards too: a
        loader that fell behind)."""
        client = self.s3.client(self.s3.admin)
        key = f"{self.prefix}/{WATERMARK_FILE}"
        try:
            marks = json.loads(client.get_object(Bucket=self.bucket, Key=key)["Body"].read())
        except client.exceptions.NoSuchKey:
            marks = {}
        marks[event_type] = f"{until:%Y-%m-%d %H:%M:%S}"
        client.put_object(Bucket=self.bucket, Key=key, Body=json.dumps(marks).encode())


def settings(tmp_path: Path) -> dict[str, str]:
    """What the script reads, none of it inherited from the shell running the tests."""
    return {
        **{
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("AWS_", "DAGSTER_", "AFFISE_")) and "_AWS_" not in k
        },
        "DAGSTER_PG_PORT": str(PG_PORT),
        "AFFISE_PROD_WEBSERVER_PORT": str(PORT),
        "AFFISE_PROD_CODE_SERVER_PORT": str(PORT + 1),
        "AFFISE_STATE_DIR": str(tmp_path / "state"),
    }


def test_the_local_instance_is_the_deployment_file_but_its_run_launcher(tmp_path: Path) -> None:
    env = {**settings(tmp_path), "AFFISE_PROD_HOME": str(tmp_path / "prod")}
    written = Path(run_script(env, "config").strip())
    local = yaml.safe_load(written.read_text())
    deployed = yaml.safe_load((ROOT / "deploy" / "dagster.yaml").read_text())
    assert without_run_launcher(local) == without_run_launcher(deployed)
    assert local["run_launcher"] == {
        "module": "dagster._core.launcher",
        "class": "DefaultRunLauncher",
    }
    # No secret was written: the password is generated into a file of the owner's alone.
    password = tmp_path / "prod" / "pg-password"
    assert password.stat().st_mode & 0o077 == 0
    assert password.read_text().strip() not in written.read_text()
    # Every process but Postgres loads the instance, whose compute_logs bucket comes from
    # AFFISE_COMPUTE_LOGS_BUCKET: without it, `start` says so and starts nothing.
    refused = subprocess.run(
        ["bash", str(SCRIPT), "start"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert refused.returncode != 0
    assert "AFFISE_COMPUTE_LOGS_BUCKET is not set" in refused.stderr
    assert not list((tmp_path / "prod" / "run").glob("*.pid"))


@pytest.fixture
def engine(
    s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Engine]:
    now = datetime.now(UTC).replace(tzinfo=None, second=0, microsecond=0)
    events = tmp_path / "events.duckdb"
    hour = now.replace(minute=0)
    generate_demo_events(events, hour - timedelta(hours=2), hour + timedelta(hours=2), 40_000, 5)
    lake = Lake(s3_server, f"prod-lake-{SUFFIX}", "events/v1")
    lake.load(events, tmp_path / "dataset")
    start = now - timedelta(minutes=4)
    buckets = {name: f"prod-{name}-{SUFFIX}" for name in ("alpha", "kappa", "gamma")}
    # Gamma's customer creates its bucket only once its windows have failed (step 5).
    for name in ("alpha", "kappa"):
        s3_server.client().create_bucket(Bucket=buckets[name])
    # Run logs go to the deployment's own account, as the events are read with it.
    compute_logs = f"prod-compute-logs-{SUFFIX}"
    s3_server.client(s3_server.admin).create_bucket(Bucket=compute_logs)
    integrations = tmp_path / "integrations.yaml"
    endpoint = s3_server.endpoint_url
    integrations.write_text(
        # No lateness: each window is scheduled the moment it closes, so the test waits less.
        "lateness:\n  clicks: 0\n  conversions: 0\n"
        + "integrations:\n"
        + block("alpha", start, buckets["alpha"], endpoint, 1)
        + block("kappa", start, buckets["kappa"], endpoint, 1, "conversions")
    )
    # Postgres runs as the `postgres` user: its directory must be reachable by it, which
    # pytest's own temporary directories are not.
    pg_parent = Path(tempfile.mkdtemp(prefix="affise-prod-pg-"))
    pg_parent.chmod(0o755)
    password = secrets.token_urlsafe(24)
    pg = {
        "DAGSTER_PG_USERNAME": "dagster",
        "DAGSTER_PG_PASSWORD": password,
        "DAGSTER_PG_HOST": "127.0.0.1",
        "DAGSTER_PG_PORT": str(PG_PORT),
        "DAGSTER_PG_DB": "dagster",
    }
    # This process reads the same instance (deploy/dagster.yaml's env references).
    for name, value in {**pg, "AFFISE_COMPUTE_LOGS_BUCKET": compute_logs}.items():
        monkeypatch.setenv(name, value)
    env = {
        **settings(tmp_path),
        **pg,
        "AFFISE_PROD_PG_DIR": str(pg_parent / "pg"),
        "AFFISE_PROD_STOP_TIMEOUT": "120",
        "AFFISE_INTEGRATIONS": str(integrations),
        "AFFISE_EVENTS_DB": lake.uri,
        # The deployment's own credentials (the standard AWS chain) read the events; each
        # integration's are its own, below.
        "AWS_ACCESS_KEY_ID": s3_server.admin.access_key,
        "AWS_SECRET_ACCESS_KEY": s3_server.admin.secret_key,
        "AWS_EC2_METADATA_DISABLED": "true",
        "AFFISE_EVENTS_S3_ENDPOINT": s3_server.endpoint_url,
        "AFFISE_EVENTS_S3_REGION": "us-east-1",
        # Compute logs through the same chain: boto3 takes the endpoint of an S3-compatible
        # store from AWS_ENDPOINT_URL_S3 (deliveries ignore it: affise_s3_assets/s3.py).
        "AFFISE_COMPUTE_LOGS_BUCKET": compute_logs,
        "AWS_ENDPOINT_URL_S3": s3_server.endpoint_url,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AFFISE_REDELIVERY_FIRST_WAIT_SECONDS": "15",
        # Kappa's runs wait for their source until the loader catches up, however slow.
        "AFFISE_SOURCE_WAIT_SECONDS": "300",
        **{
            f"{name}_AWS_{part}": value
            for name in ("ALPHA", "KAPPA", "GAMMA")
            for part, value in (
                ("ACCESS_KEY_ID", s3_server.customer.access_key),
                ("SECRET_ACCESS_KEY", s3_server.customer.secret_key),
            )
        },
        # And 10,000 more integrations' credentials, as a large deployment's environment holds
        # them: the script keeps them all from the daemon and the webserver (as `env -u NAME`
        # arguments they outgrew the kernel's limit on a command line, E2BIG).
        **{
            f"SPARE_{i:05d}_AWS_{part}": f"spare-{part.lower().replace('_', '-')}-{i:05d}"
            for i in range(10_000)
            for part in ("ACCESS_KEY_ID", "SECRET_ACCESS_KEY")
        },
    }
    prod = ProdLocal(tmp_path / "prod", env, PORT)
    try:
        prod.start()
        yield Engine(prod, integrations, events, lake, start, buckets, password, compute_logs)
    except BaseException:
        print(prod.tail())
        raise
    finally:
        prod.stop()
        shutil.rmtree(pg_parent, ignore_errors=True)


def closed(first: datetime, until: datetime) -> list[datetime]:
    """The 1-minute windows from `first` that closed by `until`."""
    windows, window = [], first
    while window + timedelta(minutes=1) <= until:
        windows.append(window)
        window += timedelta(minutes=1)
    return windows


EXPORTS = (("alpha", "clicks"), ("kappa", "conversions"), ("gamma", "clicks"))


def test_the_production_engine_delivers_heals_and_survives_restarts(
    engine: Engine, s3_server: S3Server
) -> None:
    prod, start, buckets = engine.prod, engine.start, engine.buckets
    instance = prod.instance()
    # The instance running is deploy/dagster.yaml itself but for its run launcher.
    deployed = yaml.safe_load((ROOT / "deploy" / "dagster.yaml").read_text())
    assert without_run_launcher(prod.instance_config()) == without_run_launcher(deployed)
    assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
    assert type(instance.run_storage).__name__ == "KeptConnectionsRunStorage"
    assert instance.run_monitoring_enabled and instance.run_retries_enabled
    # The code server is started as the chart starts it; only it holds customer credentials.
    helm = yaml.safe_load((ROOT / "deploy" / "helm-values.yaml").read_text())
    (deployment,) = helm["dagster-user-deployments"]["deployments"]
    assert " ".join(deployment["codeServerArgs"]) in " ".join(prod.argv("code-server"))
    assert "ALPHA_AWS_SECRET_ACCESS_KEY" in prod.environ("code-server")
    for component in ("daemon", "webserver"):
        assert not [k for k in prod.environ(component) if k.endswith("_AWS_SECRET_ACCESS_KEY")]

    # 1. The code server down while a window closes: it stops once the history's first runs,
    # just launched, have finished; the daemon's schedule tick then cannot reach the code, and
    # catch_up_sensor requests the window it missed.
    wait_for("the first runs", lambda: instance.get_runs(limit=1), timeout=120, every=1)
    prod.script("stop", "code-server")
    started = dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])
    assert not instance.get_runs(started), "the code server left runs without their worker"
    boundary = utcnow().replace(second=0, microsecond=0) + timedelta(minutes=1)
    wait_for("a window to close while the code server is down", lambda: utcnow() >= boundary, 70)
    prod.script("start", "code-server")
    # The conversions loader falls behind: kappa's next runs wait for the source, long enough
    # for one's worker to be killed mid-run (step 3).
    engine.lake.watermark("conversions", utcnow().replace(second=0, microsecond=0))

    # 2. A new integration, appended to the file while the webserver is down: the config
    # sensor's reload through it fails, and goes through once it is back; no click.
    prod.script("stop", "webserver")
    asked = RELOADING.format(path=engine.integrations)
    before = prod.daemon_log().count(asked)
    gamma_start = utcnow().replace(second=0, microsecond=0) - timedelta(minutes=10)
    with engine.integrations.open("a") as file:
        file.write(block("gamma", gamma_start, buckets["gamma"], s3_server.endpoint_url, 1))
    wait_for(
        "the config sensor to ask the stopped webserver for a reload",
        lambda: prod.daemon_log().count(asked) > before,
        timeout=60,
        every=1,
    )
    prod.script("start", "webserver")

    # 3. A run worker killed with -9 while kappa's run waits for its source: the code server
    # fails the run, run retries launch it again, and its windows arrive once the source has.
    killed, worker = wait_for(
        "a kappa run waiting for the source",
        lambda: waiting_for_the_source(instance, window_job_name("conversions", 1)),
        timeout=240,
        every=1,
    )
    os.kill(worker, signal.SIGKILL)
    wait_for("the killed run worker to be gone", lambda: gone(worker), timeout=30, every=0.5)

    def failed() -> bool:
        run = instance.get_run_by_id(killed)
        return run is not None and run.status == dg.DagsterRunStatus.FAILURE

    wait_for("the killed run to be failed", failed, timeout=60, every=1)
    killed_run = instance.get_run_by_id(killed)
    assert killed_run is not None
    killed_windows = run_windows(killed_run, 1)
    assert any("signal 9" in entry.message for entry in instance.all_logs(killed))
    wait_for(
        "run retries to launch the killed run again",
        lambda: instance.get_runs(dg.RunsFilter(tags={PARENT_RUN_ID_TAG: killed})),
        timeout=60,
        every=1,
    )
    engine.lake.watermark("conversions", utcnow() + timedelta(hours=1))

    # 4. The daemon restarted while the retry and the next windows' runs are in flight.
    prod.restart("daemon")

    # 5. Gamma's bucket does not exist yet: its windows turn Failed (NoSuchBucket, a
    # permanent error), and heal by themselves once the customer creates it.
    def gamma_statuses() -> list[str]:
        keys = [w.strftime("%Y-%m-%d-%H:%M") for w in closed(gamma_start, utcnow())]
        return statuses(instance, "gamma", gamma_start, keys)

    wait_for("gamma's windows to turn Failed", lambda: "FAILED" in gamma_statuses(), 180)
    assert "MATERIALIZED" not in gamma_statuses()
    (failure,) = instance.fetch_observations(dg.AssetKey(["affise", "gamma", "clicks"]), 1).records
    assert failure.asset_observation.metadata["error_code"].value == "NoSuchBucket"
    s3_server.client().create_bucket(Bucket=buckets["gamma"])
    wait_for("gamma's first object", lambda: keys_in(s3_server, buckets["gamma"]), timeout=180)

    # Every window closed by now arrives, once, with the source's rows, restarts or not.
    until = utcnow()
    firsts = {"alpha": start, "kappa": start, "gamma": gamma_start}
    expected = {
        name: {object_key(name, w, event_type) for w in closed(firsts[name], until)}
        for name, event_type in EXPORTS
    }
    wait_for(
        "every closed window in every bucket",
        lambda: all(
            keys <= set(keys_in(s3_server, buckets[name])) for name, keys in expected.items()
        ),
        timeout=300,
        every=3,
    )
    now = utcnow()
    for name, event_type in EXPORTS:
        found = keys_in(s3_server, buckets[name])
        # One object per window, and none for a window not closed or before the start.
        windows = closed(firsts[name], now)
        assert set(found) <= {object_key(name, w, event_type) for w in windows}
        for window in windows:
            if object_key(name, window, event_type) in found:
                assert_rows(
                    s3_server, buckets[name], engine.events, name, window, 1, None, event_type
                )
        # Dagster agrees: every window closed by `until` is materialized, none failed (gamma's
        # failed ones healed).
        keys = [w.strftime("%Y-%m-%d-%H:%M") for w in closed(firsts[name], until)]
        assert set(statuses(instance, name, firsts[name], keys, event_type)) == {"MATERIALIZED"}

    # 1, continued: the killed run's windows were delivered by another run.
    for window in killed_windows:
        (record,) = instance.fetch_materializations(
            dg.AssetRecordsFilter(
                asset_key=dg.AssetKey(["affise", "kappa", "conversions"]),
                asset_partitions=[window.strftime("%Y-%m-%d-%H:%M")],
            ),
            limit=1,
        ).records
        assert record.run_id != killed

    # Each run's stdout/stderr is in the deployment's bucket (compute_logs): a succeeded run's
    # stderr holds its step's own log lines, Dagster's console logger's (it writes to stderr).
    admin = s3_server.client(s3_server.admin)
    (run,) = instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.SUCCESS]), limit=1)

    def stderr_keys() -> list[str]:
        prefix = f"{COMPUTE_LOGS_PREFIX}/storage/{run.run_id}/compute_logs/"
        listed = admin.list_objects_v2(Bucket=engine.compute_logs, Prefix=prefix)
        return [item["Key"] for item in listed.get("Contents", []) if item["Key"].endswith(".err")]

    (key,) = wait_for("the run's stderr in the compute-log bucket", stderr_keys, 60, every=1)
    stderr = admin.get_object(Bucket=engine.compute_logs, Key=key)["Body"].read().decode()
    steps = {entry.step_key for entry in instance.all_logs(run.run_id) if entry.step_key}
    assert steps
    assert f" - {run.run_id} - " in stderr, stderr[-2000:]
    for step in steps:
        assert f" - {step} - STEP_SUCCESS - " in stderr, stderr[-2000:]
    # No secret in any run's log object: neither a customer's nor the deployment's own.
    secret_values = [v for k, v in prod.env.items() if k.endswith("AWS_SECRET_ACCESS_KEY")]
    assert s3_server.customer.secret_key in secret_values
    objects = [
        item["Key"]
        for page in admin.get_paginator("list_objects_v2").paginate(
            Bucket=engine.compute_logs, Prefix=f"{COMPUTE_LOGS_PREFIX}/"
        )
        for item in page.get("Contents", [])
    ]
    assert key in objects
    for name in objects:
        text = admin.get_object(Bucket=engine.compute_logs, Key=name)["Body"].read()
        text = text.decode(errors="replace")
        for secret in (*secret_values, engine.password):
            assert secret not in text, name

    # Each process is still the one last started, and no secret reached a log.
    assert run_script(prod.env, "status").count(": running") == 1 + len(COMPONENTS)
    for name, text in prod.logs().items():
        assert engine.password not in text, name
        assert s3_server.customer.secret_key not in text, name
