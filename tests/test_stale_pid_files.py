"""The scripts that stop what they started by pid file (scripts/s3-server.sh, the test S3
server's; scripts/prod-local.sh, the production deployment's) stop their own processes and
never signal one they did not start: a pid file left by a killed daemon or a reboot names a
number that may since belong to any process, the test runner itself included."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.operations import gone, wait_for

ROOT = Path(__file__).resolve().parents[1]
VENV_PYTHON = str(ROOT / ".venv" / "bin" / "python")
SLEEP = "import time; time.sleep(600)"


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


def test_the_s3_server_stop_stops_its_daemons_and_leaves_a_stale_pid_files_process_alone(
    tmp_path: Path, bystander: subprocess.Popen[bytes]
) -> None:
    s3_dir = tmp_path / "s3"
    run = s3_dir / "run"
    run.mkdir(parents=True)
    # A daemon of this server carries its ceph.conf on its command line, as Ceph's do.
    daemon = subprocess.Popen([sys.executable, "-c", SLEEP, "-c", f"{s3_dir}/ceph.conf"])
    (run / "mon.a.pid").write_text(f"{daemon.pid}\n")
    for stale in ("osd.0", "client.rgw", "client.rgw.sts"):
        (run / f"{stale}.pid").write_text(f"{bystander.pid}\n")

    stopped = subprocess.run(
        ["bash", str(ROOT / "scripts/s3-server.sh"), "stop"],
        env={**os.environ, "S3_DIR": str(s3_dir)},
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stderr == ""
    assert daemon.wait(timeout=30) != 0  # stopped by a signal
    assert bystander.poll() is None
    assert not list(run.glob("*.pid"))


def prod_local(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(ROOT / "scripts/prod-local.sh"), *args],
        env={**os.environ, "AFFISE_PROD_HOME": str(home), "DAGSTER_PG_PORT": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_deployment_treats_a_pid_file_naming_another_process_as_stopped(
    tmp_path: Path, bystander: subprocess.Popen[bytes]
) -> None:
    home = tmp_path / "prod"
    (home / "run").mkdir(parents=True)
    # Someone else's session leader; this test's own process, a process of this checkout's
    # .venv (as pytest's workers are); and a session leader of this .venv that is not the
    # component (another instance's, say: it names another workspace).
    other = subprocess.Popen(
        [VENV_PYTHON, "-c", SLEEP, "-w", str(tmp_path / "elsewhere" / "workspace.yaml")],
        start_new_session=True,
    )
    try:
        pids = {"code-server": bystander.pid, "daemon": os.getpid(), "webserver": other.pid}
        for component, pid in pids.items():
            (home / "run" / f"{component}.pid").write_text(f"{pid}\n")

        status = prod_local(home, "status")
        for component in pids:
            assert f"{component}: stopped" in status.stdout
        for component in ("webserver", "daemon", "code-server"):
            stopped = prod_local(home, "stop", component)
            assert stopped.returncode == 0, stopped.stderr
            assert f"{component}: not running (stale pid file removed)" in stopped.stdout
        assert bystander.poll() is None and other.poll() is None
        assert not list((home / "run").glob("*.pid"))
    finally:
        other.kill()
        other.wait(timeout=30)


def test_the_deployment_stops_its_component_and_what_is_left_of_its_session(
    tmp_path: Path,
) -> None:
    home = tmp_path / "prod"
    (home / "run").mkdir(parents=True)
    workspace = home / "workspace.yaml"
    # A component as spawn starts it: a session leader of this .venv naming the instance's
    # workspace, with a child in its group (a run worker, say) that it prints the pid of.
    leader = subprocess.Popen(
        [
            VENV_PYTHON,
            "-c",
            "import subprocess, sys, time\n"
            f"child = subprocess.Popen([sys.executable, '-c', {SLEEP!r}])\n"
            "print(child.pid, flush=True)\n"
            "time.sleep(600)",
            "-w",
            str(workspace),
        ],
        start_new_session=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert leader.stdout is not None
        child = int(leader.stdout.readline())
        (home / "run" / "daemon.pid").write_text(f"{leader.pid}\n")
        assert "daemon: running" in prod_local(home, "status").stdout

        stopped = prod_local(home, "stop", "daemon")

        assert stopped.returncode == 0, stopped.stderr
        assert "daemon: stopped" in stopped.stdout
        assert leader.wait(timeout=30) != 0
        wait_for("the leader's child to be killed", lambda: gone(child), timeout=30, every=0.1)
        assert not (home / "run" / "daemon.pid").exists()
    finally:
        leader.kill()
        leader.wait(timeout=30)
