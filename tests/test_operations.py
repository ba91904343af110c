"""Unattended operation, proven on the real `dagster dev` (daemon, webserver, code server) and
the real S3 server, with no UI action: a power cut mid-run heals by itself after a restart,
an integration added to the file goes live without one, a broken block harms nobody, a broken
destination's windows turn Failed while its neighbours deliver, and once it is fixed every
missed window arrives by itself, once."""

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest

from affise_s3_assets.config.targets import window_job_name
from affise_s3_assets.demo.events import generate_demo_events
from affise_s3_assets.source.completeness import write_watermark
from affise_s3_assets.source.duckdb_file import connect_events_file
from tests.browser import run_browser_checks
from tests.conftest import ROOT, S3_SCRIPT, S3Server
from tests.delivered import keys_in
from tests.operations import (
    FMT,
    DagsterDev,
    assert_rows,
    block,
    gone,
    object_key,
    run_windows,
    statuses,
    wait_for,
    waiting_for_the_source,
)

# A long end-to-end test: one unit for pytest-xdist (scripts/test.sh), beside the engine tests.
pytestmark = pytest.mark.xdist_group("dagster_dev")
PORT = 3197
BETA = ("BETAOPSACCESSKEY0001", "beta-ops-secret-0001")
# Short enough for a run the power cut left STARTED to be failed within the test, long enough
# for any real run of it on a loaded 2-core machine. The demo's own value is 30 minutes.
MAX_RUNTIME_SECONDS = 90


def rgw_admin(s3: S3Server, *args: str) -> None:
    subprocess.run(
        ["radosgw-admin", "-c", str(s3.directory / "ceph.conf"), *args],
        check=True,
        capture_output=True,
    )


@pytest.fixture
def running(
    s3_server: S3Server, tmp_path: Path
) -> Iterator[tuple[DagsterDev, Path, Path, datetime]]:
    now = datetime.now(UTC).replace(tzinfo=None, second=0, microsecond=0)
    events = tmp_path / "events.duckdb"
    hour = now.replace(minute=0)
    generate_demo_events(events, hour - timedelta(hours=2), hour + timedelta(hours=2), 40_000, 3)
    # The conversions loader is behind: kappa's window that closes a little after dagster dev
    # is up waits for the source, long enough to be caught mid-run by the power cut.
    with connect_events_file(events, read_only=False) as con:
        con.execute(
            "UPDATE affise_watermarks SET complete_until = $1 WHERE event_type = 'conversions'",
            [now + timedelta(minutes=1)],
        )
    subprocess.run(
        ["bash", str(S3_SCRIPT), "adduser", "beta-ops", *BETA],
        env={**os.environ, "S3_DIR": str(s3_server.directory)},
        check=True,
        capture_output=True,
    )
    integrations = tmp_path / "integrations.yaml"
    start = now - timedelta(minutes=6)
    endpoint = s3_server.endpoint_url
    integrations.write_text(
        # No lateness: each window is scheduled the moment it closes, so the test waits less.
        "lateness:\n  clicks: 0\n  conversions: 0\n"
        + "integrations:\n"
        + block("alpha", start, "ops-alpha", endpoint, 1)
        + block("beta", start, "ops-beta", endpoint, 1)
        + block("kappa", start, "ops-kappa", endpoint, 1, "conversions")
    )
    s3_server.client().create_bucket(Bucket="ops-alpha")
    s3_server.client().create_bucket(Bucket="ops-kappa")
    s3_server.client().create_bucket(Bucket="ops-gamma")
    beta = s3_server.client(type(s3_server.customer)(*BETA))
    beta.create_bucket(Bucket="ops-beta")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DAGSTER_"))},
        "AFFISE_INTEGRATIONS": str(integrations),
        "AFFISE_EVENTS_DB": str(events),
        "AFFISE_STATE_DIR": str(tmp_path / "state"),
        "AFFISE_WEBSERVER_URL": f"http://127.0.0.1:{PORT}",
        "AFFISE_REDELIVERY_FIRST_WAIT_SECONDS": "15",
        # Kappa's run waits for its source until the power cut, however slow the start.
        "AFFISE_SOURCE_WAIT_SECONDS": "300",
        # Each integration's variables are named for it (the config's rule).
        **{
            f"{name}_AWS_{part}": value
            for name, account in (
                ("ALPHA", s3_server.customer),
                ("KAPPA", s3_server.customer),
                ("GAMMA", s3_server.customer),
                ("DELTA", s3_server.customer),
                ("BETA", type(s3_server.customer)(*BETA)),
            )
            for part, value in (
                ("ACCESS_KEY_ID", account.access_key),
                ("SECRET_ACCESS_KEY", account.secret_key),
            )
        },
    }
    dev = DagsterDev(
        tmp_path / "dagster_home",
        env,
        PORT,
        {
            "run_monitoring": {
                "max_runtime_seconds": MAX_RUNTIME_SECONDS,
                "poll_interval_seconds": 5,
            }
        },
    )
    try:
        dev.start()
        yield dev, integrations, events, start
    except BaseException:
        print(dev.tail())
        raise
    finally:
        dev.stop()
        rgw_admin(s3_server, "user", "enable", "--uid=beta-ops")


def closed_windows(start: datetime, frequency: int) -> list[datetime]:
    now = datetime.now(UTC).replace(tzinfo=None)
    windows, window = [], start
    while window + timedelta(minutes=frequency) <= now:
        windows.append(window)
        window += timedelta(minutes=frequency)
    return windows


def test_config_changes_go_live_and_failed_windows_heal_without_anyone(
    running: tuple[DagsterDev, Path, Path, datetime],
    s3_server: S3Server,
    tmp_path: Path,
) -> None:
    dev, integrations, events, start = running
    beta_account = type(s3_server.customer)(*BETA)
    instance = dev.instance()

    # 0. A power cut while kappa's run waits for its source: every process killed at once,
    # nothing reported. The run is left STARTED, as a killed run worker leaves it.
    killed, worker = wait_for(
        "a kappa run waiting for the source",
        lambda: waiting_for_the_source(instance, window_job_name("conversions", 1)),
        timeout=300,
        every=1,
    )
    dev.crash()
    wait_for("the killed run worker to be gone", lambda: gone(worker), timeout=30)
    killed_run = instance.get_run_by_id(killed)
    assert killed_run is not None and killed_run.status == dg.DagsterRunStatus.STARTED
    killed_windows = run_windows(killed_run, 1)
    # The loader catches up meanwhile; the machine comes back.
    with connect_events_file(events, read_only=False) as con:
        write_watermark(con, "conversions", datetime.now(UTC) + timedelta(hours=1))
    cut = time.monotonic()
    dev.start()
    print(f"power cut -> code location loaded again: {time.monotonic() - cut:.0f} s")

    # The backlog since the start arrives by itself, one object per window.
    first_windows = closed_windows(start, 1)[:5]
    wait_for(
        "alpha's and beta's first windows",
        lambda: (
            set(map(lambda w: object_key("alpha", w), first_windows))
            <= set(keys_in(s3_server, "ops-alpha"))
        ),
        # A backlog run the power cut killed is failed only at the maximum runtime.
        timeout=300,
    )
    assert_rows(s3_server, "ops-alpha", events, "alpha", first_windows[0], 1)

    # 1. A new integration, appended to the file: no restart, no click.
    gamma_start = (datetime.now(UTC).replace(tzinfo=None) - timedelta(minutes=40)).replace(
        second=0, microsecond=0
    )
    gamma_start -= timedelta(minutes=gamma_start.minute % 5)
    saved = time.monotonic()
    with integrations.open("a") as file:
        file.write(block("gamma", gamma_start, "ops-gamma", s3_server.endpoint_url, 5))
    wait_for("gamma's first object", lambda: keys_in(s3_server, "ops-gamma"), timeout=240)
    print(f"file saved -> gamma's first object: {time.monotonic() - saved:.0f} s")
    assert_rows(s3_server, "ops-gamma", events, "gamma", gamma_start, 5)

    # An operator's backfill from the UI runs as ranged runs (BackfillPolicy), one object per
    # window, overwriting the same keys: nothing duplicated.
    eight = [(gamma_start + timedelta(minutes=5 * i)).strftime(FMT) for i in range(8)]
    wait_for(
        "gamma's catch-up",
        lambda: len(keys_in(s3_server, "ops-gamma")) >= len(eight),
        timeout=180,
    )
    before = keys_in(s3_server, "ops-gamma")
    backfill = dev.backfill("affise/gamma/clicks", eight)
    status = wait_for(
        "the backfill to finish",
        lambda: (
            (found := dev.backfill_status(backfill)) not in ("REQUESTED", "CANCELING") and found
        ),
        timeout=240,
        every=3,
    )
    assert status == "COMPLETED_SUCCESS", status
    runs = instance.get_runs(dg.RunsFilter(tags={"dagster/backfill": backfill}))
    assert len(runs) == 1
    assert runs[0].tags["dagster/asset_partition_range_start"] == eight[0]
    assert runs[0].tags["dagster/asset_partition_range_end"] == eight[-1]
    assert keys_in(s3_server, "ops-gamma")[: len(before)] == before

    # 2. A broken block: refused with its reason in the UI, everyone else keeps delivering.
    with integrations.open("a") as file:
        file.write(block("delta", gamma_start, "ops-delta", s3_server.endpoint_url, 7))
    message = wait_for(
        "the config sensor to report delta",
        lambda: (
            (m := dev.last_tick_message("integrations_config_sensor"))
            and "integration 'delta': clicks.frequency: 7 minutes" in m
            and "Running 4 integrations" in m
            and m
        ),
        timeout=120,
    )
    assert "alpha, beta, kappa, gamma" in message
    assert dev.loaded()

    # 3. Beta's destination breaks: its windows turn Failed, alpha's keep arriving.
    rgw_admin(s3_server, "user", "suspend", "--uid=beta-ops")
    broken_at = datetime.now(UTC).replace(tzinfo=None)

    def failed_windows() -> list[str] | None:
        keys = [
            w.strftime(FMT)
            for w in closed_windows(start, 1)
            if w >= broken_at - timedelta(minutes=1)
        ]
        beta = statuses(instance, "beta", start, keys)
        alpha = statuses(instance, "alpha", start, keys)
        failed = [
            k
            for k, b, a in zip(keys, beta, alpha, strict=True)
            if b == "FAILED" and a == "MATERIALIZED"
        ]
        return failed if len(failed) >= 2 else None

    # Generous: runs the power cut left STARTED hold run slots until run monitoring fails
    # them, so the first windows after the break may queue.
    failed = wait_for("two of beta's windows to fail", failed_windows, timeout=480, every=5)
    # What the data team sees, in a real browser, while beta is red.
    run_browser_checks(
        dev,
        tmp_path / "screenshots",
        failed_asset="affise/beta/clicks",
        healthy_asset="affise/alpha/clicks",
    )

    # 4. Fixed: every window it missed arrives by itself, exactly once, rows equal to the source.
    rgw_admin(s3_server, "user", "enable", "--uid=beta-ops")
    fixed_at = datetime.now(UTC).replace(tzinfo=None)
    due = [w for w in closed_windows(start, 1) if w + timedelta(minutes=1) <= fixed_at]

    def healed() -> bool:
        keys = [w.strftime(FMT) for w in due]
        return all(s == "MATERIALIZED" for s in statuses(instance, "beta", start, keys))

    wait_for("beta's missed windows to be delivered", healed, timeout=420, every=5)
    beta_keys = keys_in_account(s3_server, beta_account, "ops-beta")
    expected = {object_key("beta", w) for w in due}
    assert expected <= set(beta_keys)
    assert len(beta_keys) == len(set(beta_keys))
    # Nothing outside the windows since its start: one object per window, never two.
    assert all(key.startswith("beta/clicks/") for key in beta_keys)
    for key in failed:
        window = datetime.strptime(key, FMT)
        assert_rows(s3_server, "ops-beta", events, "beta", window, 1, account=beta_account)
    # 0, continued: run monitoring failed the run the power cut left STARTED, and the catch-up
    # sensor re-delivered its windows like any failed run's, each exactly as the source holds.
    kappa_keys = [w.strftime(FMT) for w in killed_windows]

    def recovered() -> bool:
        run = instance.get_run_by_id(killed)
        return (
            run is not None
            and run.status == dg.DagsterRunStatus.FAILURE
            and statuses(instance, "kappa", start, kappa_keys, "conversions")
            == ["MATERIALIZED"] * len(kappa_keys)
        )

    wait_for("the killed run's windows to be re-delivered", recovered, timeout=300, every=5)
    assert any("maximum runtime" in entry.message for entry in instance.all_logs(killed))
    for key, window in zip(kappa_keys, killed_windows, strict=True):
        (record,) = instance.fetch_materializations(
            dg.AssetRecordsFilter(
                asset_key=dg.AssetKey(["affise", "kappa", "conversions"]),
                asset_partitions=[key],
            ),
            limit=1,
        ).records
        assert record.run_id != killed
        assert_rows(s3_server, "ops-kappa", events, "kappa", window, 1, event_type="conversions")
    log = dev.log.read_text(errors="replace")
    assert "BetaWarning" not in log
    assert s3_server.customer.secret_key not in log and BETA[1] not in log
    # `AFFISE_SCREENSHOTS_DIR=docs/screenshots` refreshes the pictures the README shows.
    keep = os.environ.get("AFFISE_SCREENSHOTS_DIR")
    if keep:
        shutil.copytree(tmp_path / "screenshots", ROOT / keep, dirs_exist_ok=True)


def keys_in_account(s3: S3Server, account, bucket: str) -> list[str]:
    listing = s3.client(account).list_objects_v2(Bucket=bucket)
    return sorted(item["Key"] for item in listing.get("Contents", []))
