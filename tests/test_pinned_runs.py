"""A run delivers exactly the integrations and settings of the definitions it was launched
from, proven on the real `dagster dev` and the real S3 server: with the code location not
reloaded (no AFFISE_WEBSERVER_URL, so the config sensor cannot reload it), an integration
appended to the file and another's filter changed are not delivered by the next scheduled
window; after a reload, they are. With runs of one export each, the window's exports are
delivered by runs of their own, side by side."""

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest

from affise_s3_assets.automation.runs import PARTITION_TAG, SHARD_TAG
from affise_s3_assets.config.targets import window_job_name
from affise_s3_assets.demo.events import generate_demo_events
from tests.conftest import S3Server
from tests.delivered import delivered_rows, fetch, keys_in, source_rows
from tests.operations import LOCATION, DagsterDev, wait_for

# A long end-to-end test: with the other engine test on one pytest-xdist worker
# (scripts/test.sh), so at most two engines share the machine.
pytestmark = pytest.mark.xdist_group("engines")
PORT = 3198


def block(name: str, start: datetime, endpoint: str, affiliates: list[int]) -> str:
    return f"""  - name: {name}
    start: "{start:%Y-%m-%d %H:%M:%S}"
    clicks:
      frequency: 1
      bucket: pin-{name}
      region: us-east-1
      directory: {name}
      access_key: ${{{name.upper()}_AWS_ACCESS_KEY_ID}}
      secret_key: ${{{name.upper()}_AWS_SECRET_ACCESS_KEY}}
      endpoint_url: {endpoint}
      affiliates: {affiliates}
"""


def key(name: str, window: datetime) -> str:
    return f"{name}/{window:%Y/%m/%d}/{window:%Y-%m-%d %H:%M:%S}.csv.gz"


def next_window(after: datetime) -> datetime:
    """The first 1-minute window that starts at or after `after`: it closes later, so the
    schedule's run for it is launched after `after`."""
    floor = after.replace(second=0, microsecond=0)
    return floor if floor == after else floor + timedelta(minutes=1)


def now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


@pytest.fixture
def dev(s3_server: S3Server, tmp_path: Path) -> Iterator[tuple[DagsterDev, Path, Path]]:
    start = now().replace(second=0, microsecond=0) - timedelta(minutes=2)
    events = tmp_path / "events.duckdb"
    hour = start.replace(minute=0)
    generate_demo_events(events, hour - timedelta(hours=1), hour + timedelta(hours=3), 200_000, 5)
    for name in ("acme", "globex"):
        s3_server.client().create_bucket(Bucket=f"pin-{name}")
    integrations = tmp_path / "integrations.yaml"
    integrations.write_text(
        "lateness:\n  clicks: 0\n  conversions: 0\nintegrations:\n"
        + block("acme", start, s3_server.endpoint_url, [101, 102])
    )
    account = s3_server.customer
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DAGSTER_"))},
        "AFFISE_INTEGRATIONS": str(integrations),
        "AFFISE_EVENTS_DB": str(events),
        "AFFISE_STATE_DIR": str(tmp_path / "state"),
        # Shards of one export: two integrations' window is two runs (automation/shards.py).
        "AFFISE_EXPORTS_PER_RUN": "1",
        **{
            f"{name}_AWS_{part}": value
            for name in ("ACME", "GLOBEX")
            for part, value in (
                ("ACCESS_KEY_ID", account.access_key),
                ("SECRET_ACCESS_KEY", account.secret_key),
            )
        },
    }
    env.pop("AFFISE_WEBSERVER_URL", None)
    running = DagsterDev(tmp_path / "dagster_home", env, PORT)
    try:
        running.start()
        yield running, integrations, events
    except BaseException:
        print(running.tail())
        raise
    finally:
        running.stop()


def test_runs_deliver_the_config_they_were_launched_with_until_the_location_reloads(
    dev: tuple[DagsterDev, Path, Path], s3_server: S3Server
) -> None:
    running, integrations, events = dev
    instance = running.instance()
    # Saved while the location still runs the old file: acme's filter changed, globex added.
    text = integrations.read_text()
    integrations.write_text(
        text.replace("[101, 102]", "[103]")
        + block("globex", datetime.fromisoformat(text.split('"')[1]), s3_server.endpoint_url, [])
    )
    window = next_window(now())
    wait_for(
        "acme's first window closed after the save",
        lambda: key("acme", window) in keys_in(s3_server, "pin-acme"),
        timeout=240,
    )
    header, rows = delivered_rows(fetch(s3_server, "pin-acme", key("acme", window)))
    assert (header, rows) == source_rows(
        events, "clicks", window, window + timedelta(minutes=1), affiliates=[101, 102]
    )
    assert rows, "a minute of these clicks is never empty"
    # It was the schedule's run, launched after the save, that delivered it.
    run = delivering_run(instance, "acme", window)
    assert run.job_name == window_job_name("clicks", 1) and SHARD_TAG not in run.tags
    assert "globex" not in running.last_tick_message("integrations_config_sensor")
    assert keys_in(s3_server, "pin-globex") == []

    # The operator reloads the location: the new file is what runs from then on.
    answer = running.graphql(
        "mutation($name: String!) { reloadRepositoryLocation(repositoryLocationName: $name) "
        "{ __typename } }",
        {"name": LOCATION},
    )
    assert answer["reloadRepositoryLocation"]["__typename"] == "WorkspaceLocationEntry"
    wait_for("the location to load again", running.loaded, timeout=120)
    later = next_window(now())
    wait_for(
        "acme's and globex's window closed after the reload",
        lambda: (
            key("acme", later) in keys_in(s3_server, "pin-acme")
            and key("globex", later) in keys_in(s3_server, "pin-globex")
        ),
        timeout=240,
    )
    assert delivered_rows(fetch(s3_server, "pin-acme", key("acme", later))) == source_rows(
        events, "clicks", later, later + timedelta(minutes=1), affiliates=[103]
    )
    assert delivered_rows(fetch(s3_server, "pin-globex", key("globex", later))) == source_rows(
        events, "clicks", later, later + timedelta(minutes=1)
    )
    # One run per export now: two runs of the same window, each delivering its own.
    acme_run, globex_run = (delivering_run(instance, name, later) for name in ("acme", "globex"))
    assert acme_run.run_id != globex_run.run_id
    assert (acme_run.tags[SHARD_TAG], globex_run.tags[SHARD_TAG]) == ("1/2", "2/2")
    assert acme_run.tags[PARTITION_TAG] == globex_run.tags[PARTITION_TAG]


def delivering_run(instance: dg.DagsterInstance, name: str, window: datetime) -> dg.DagsterRun:
    (record,) = instance.fetch_materializations(
        dg.AssetRecordsFilter(
            asset_key=dg.AssetKey(["affise", name, "clicks"]),
            asset_partitions=[window.strftime("%Y-%m-%d-%H:%M")],
        ),
        limit=1,
    ).records
    run = instance.get_run_by_id(record.run_id)
    assert run is not None
    return run
