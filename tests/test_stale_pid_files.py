"""The scripts that stop what they started by pid file (scripts/s3-server.sh, the test S3
server's; scripts/prod-local.sh, the production deployment's) never signal a process they did
not start: a pid file left by a killed daemon or a reboot names a number that may since belong
to any process, the test runner itself included."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def bystander() -> Iterator[subprocess.Popen[bytes]]:
    """A process of someone else's, leading a session of its own (so a `kill -- -PID` of the
    group would reach it as well)."""
    process = subprocess.Popen(["sleep", "600"], start_new_session=True)
    try:
        yield process
    finally:
        process.kill()
        process.wait(timeout=30)


def test_the_s3_server_stop_leaves_a_stale_pid_files_process_alone(
    tmp_path: Path, bystander: subprocess.Popen[bytes]
) -> None:
    run = tmp_path / "s3" / "run"
    run.mkdir(parents=True)
    for daemon in ("mon.a", "osd.0", "client.rgw", "client.rgw.sts"):
        (run / f"{daemon}.pid").write_text(f"{bystander.pid}\n")

    stopped = subprocess.run(
        ["bash", str(ROOT / "scripts/s3-server.sh"), "stop"],
        env={**os.environ, "S3_DIR": str(tmp_path / "s3")},
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert stopped.returncode == 0, stopped.stderr
    assert bystander.poll() is None
    assert not list(run.glob("*.pid"))


def test_the_deployment_treats_a_stale_pid_file_as_stopped(
    tmp_path: Path, bystander: subprocess.Popen[bytes]
) -> None:
    home = tmp_path / "prod"
    (home / "run").mkdir(parents=True)
    for component in ("code-server", "daemon", "webserver"):
        (home / "run" / f"{component}.pid").write_text(f"{bystander.pid}\n")
    env = {**os.environ, "AFFISE_PROD_HOME": str(home), "DAGSTER_PG_PORT": "1"}

    status = subprocess.run(
        ["bash", str(ROOT / "scripts/prod-local.sh"), "status"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode != 0
    for component in ("code-server", "daemon", "webserver"):
        assert f"{component}: stopped" in status.stdout

    for component in ("webserver", "daemon", "code-server"):
        stopped = subprocess.run(
            ["bash", str(ROOT / "scripts/prod-local.sh"), "stop", component],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert stopped.returncode == 0, stopped.stderr
        assert f"{component}: not running (stale pid file removed)" in stopped.stdout
    assert bystander.poll() is None
    assert not list((home / "run").glob("*.pid"))
