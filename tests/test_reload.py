"""The config sensor's reload, asked of a real `dagster-webserver`: a location that reloads
and loads is reported as reloaded; one whose load then fails is a failure, in the log and in
the sensor's next tick (which asks again), never "reloaded".

The location that cannot load raises at import, as a broken deployment's code would."""

import json
import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from affise_s3_assets.automation import live_config
from affise_s3_assets.automation.live_config import (
    ReloadFailed,
    build_config_sensor,
    request_reload,
)
from tests.conftest import ROOT
from tests.operations import wait_for

# Its tests share one webserver on a fixed port: one unit for pytest-xdist (scripts/test.sh).
pytestmark = pytest.mark.xdist_group("test_reload")
PORT = 3187
SHIPPED = ROOT / "integrations.yaml"


@pytest.fixture(scope="module")
def webserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A webserver serving one location that loads and one whose code raises at load."""
    folder = tmp_path_factory.mktemp("webserver")
    (folder / "good_defs.py").write_text("import dagster as dg\n\ndefs = dg.Definitions()\n")
    (folder / "broken_defs.py").write_text("raise RuntimeError('definitions cannot load')\n")
    (folder / "workspace.yaml").write_text(
        "load_from:\n"
        + "".join(
            f"  - python_file:\n      relative_path: {name}_defs.py\n"
            f"      location_name: {name}\n      working_directory: {folder}\n"
            for name in ("good", "broken")
        )
    )
    home = folder / "home"
    home.mkdir()
    log = (folder / "webserver.log").open("wb")
    process = subprocess.Popen(
        [
            str(ROOT / ".venv/bin/dagster-webserver"),
            *("-w", str(folder / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(PORT)),
        ],
        env={**os.environ, "DAGSTER_HOME": str(home)},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{PORT}"
    try:
        wait_for("the webserver", lambda: request_reload(url, "good")[0], timeout=120)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
        log.close()


def test_a_reload_that_loads_is_reported_reloaded(webserver: str) -> None:
    assert request_reload(webserver, "good") == (True, "reloaded code location 'good'")


def test_a_reload_whose_location_fails_to_load_is_a_failure(webserver: str) -> None:
    ok, message = request_reload(webserver, "broken")
    assert not ok
    assert "reload of code location 'broken' failed (PythonError)" in message
    assert "Error occurred during the loading of Dagster definitions" in message
    assert "broken_defs.py" in message
    ok, message = request_reload(webserver, "nowhere")
    assert not ok and "RepositoryLocationNotFound" in message
    ok, message = request_reload("http://127.0.0.1:9", "good")
    assert not ok and message.startswith("reload request to http://127.0.0.1:9 failed")


def test_the_config_sensor_fails_its_tick_while_the_reload_fails(
    webserver: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    integrations = tmp_path / "integrations.yaml"
    integrations.write_text(SHIPPED.read_text())
    monkeypatch.setenv("AFFISE_INTEGRATIONS", str(integrations))
    monkeypatch.setenv("AFFISE_WEBSERVER_URL", webserver)
    monkeypatch.setattr(live_config, "_last_reload", None)
    applied = live_config.apply_file(integrations)
    sensor = build_config_sensor(applied, "broken")
    # The file changes: a filter is edited.
    integrations.write_text(SHIPPED.read_text().replace("[101, 102]", "[103]", 1))

    with dg.instance_for_test() as instance:

        def tick() -> dg.SkipReason:
            context = dg.build_sensor_context(instance=instance)
            return sensor.evaluate_tick(context).skip_message

        with caplog.at_level(logging.INFO, logger="affise_s3_assets"):
            assert "reloading code location 'broken'" in tick()
            outcome = wait_for("the reload's answer", lambda: live_config._last_reload, timeout=60)
        assert not outcome.ok
        assert any(
            r.levelno == logging.ERROR and "'broken' failed (PythonError)" in r.getMessage()
            for r in caplog.records
        )
        assert not any("reloaded" in r.getMessage() for r in caplog.records)
        with pytest.raises(ReloadFailed, match=r"'broken' failed .*asked again"):
            tick()


def test_a_reload_nobody_heard_fail_is_a_failure_once_its_time_is_up(
    webserver: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The process that asked may not live to hear the answer (`dagster code-server start`
    replaces it): a location still running the old file once a reload's time is up failed
    its reload, whichever process looks next; within that time, nobody asks again."""
    integrations = tmp_path / "integrations.yaml"
    integrations.write_text(SHIPPED.read_text())
    monkeypatch.setenv("AFFISE_INTEGRATIONS", str(integrations))
    monkeypatch.setenv("AFFISE_WEBSERVER_URL", webserver)
    monkeypatch.setattr(live_config, "_last_reload", None)
    sensor = build_config_sensor(live_config.apply_file(integrations), "good")
    integrations.write_text(SHIPPED.read_text().replace("[101, 102]", "[103]", 1))
    changed = live_config.apply_file(integrations)
    key = f"{live_config.RELOAD_ASKED_KEY}/good"
    with dg.instance_for_test() as instance:
        asked = time.time() - 30
        instance.run_storage.set_cursor_values({key: json.dumps([changed.file_sha256, asked])})
        waiting = sensor.evaluate_tick(dg.build_sensor_context(instance=instance)).skip_message
        assert "reloading code location 'good' (asked at" in waiting
        # Asked by a process long gone, and the location still runs the old file.
        late = time.time() - live_config.RELOAD_GRACE_SECONDS - 1
        instance.run_storage.set_cursor_values({key: json.dumps([changed.file_sha256, late])})
        with pytest.raises(ReloadFailed, match=r"has not taken effect.*asked again"):
            sensor.evaluate_tick(dg.build_sensor_context(instance=instance))
        sha, when = json.loads(instance.run_storage.get_cursor_values({key})[key])
        assert sha == changed.file_sha256 and when > late
