"""A real `dagster dev` (daemon, webserver, code server) for the operations tests: started in
its own process group, asked things through the webserver's GraphQL, stopped for sure. And what
those tests (and the production ones) write and check: integration blocks, object keys,
partition statuses, delivered rows, the runs waiting for their source and the windows a run
planned."""

import contextlib
import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import dagster as dg
import yaml
from dagster._core.instance.ref import InstanceRef

from affise_s3_assets.automation.runs import PARTITION_TAG
from affise_s3_assets.config.windows import window_partitions
from tests.conftest import ROOT, S3Server
from tests.delivered import delivered_rows, source_rows

T = TypeVar("T")
LOCATION = "affise_s3_assets"
FMT = "%Y-%m-%d-%H:%M"  # a window partition's key


def wait_for(what: str, check: Callable[[], T | None], timeout: float, every: float = 2.0) -> T:
    """Poll `check` until it returns something truthy; fail naming `what` at the deadline."""
    began = time.monotonic()
    deadline = began + timeout
    while True:
        found = check()
        if found:
            # Where a long test spends its time, in its output.
            print(f"waited {time.monotonic() - began:.0f} s for {what}")
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def gone(pid: int) -> bool:
    """No such process, or only its zombie (its parent has not collected it yet). A process
    that vanishes while its stat is being read (ESRCH) is gone too."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def _reset_signals() -> None:
    # Started from a non-interactive shell, SIGINT may be ignored, and `dagster dev` would
    # then never stop on it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


class DagsterDev:
    """`dagster dev` on the instance settings of `scripts/dev.sh`, with `settings` (top-level
    sections of dagster.yaml) merged over them."""

    def __init__(
        self,
        home: Path,
        env: dict[str, str],
        port: int,
        settings: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self.home, self.env, self.port = home, env, port
        self.settings = settings or {}
        self.url = f"http://127.0.0.1:{port}"
        self.location = LOCATION
        self.log = home / "dagster-dev.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        config = yaml.safe_load((ROOT / "scripts/dagster.dev.yaml").read_text())
        for section, values in self.settings.items():
            config[section] = {**config.get(section, {}), **values}
        (self.home / "dagster.yaml").write_text(yaml.safe_dump(config))
        # Appended: a restart keeps what the earlier session logged.
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    str(ROOT / ".venv/bin/dagster"),
                    "dev",
                    "-w",
                    "workspace.yaml",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                ],
                cwd=ROOT,
                env={**self.env, "DAGSTER_HOME": str(self.home)},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_reset_signals,
            )
        wait_for("the code location to load", self.loaded, timeout=180)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        group = os.getpgid(self.process.pid)
        os.killpg(group, signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=60)
        # Code servers and run workers that outlived their parent.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
        self.process.wait(timeout=30)

    def crash(self) -> None:
        """Every process at once, with SIGKILL, as a power cut or the OOM killer leaves it:
        nothing gets to report anything."""
        assert self.process is not None
        os.killpg(os.getpgid(self.process.pid), signal.SIGKILL)
        self.process.wait(timeout=30)

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        request = urllib.request.Request(
            self.url + "/graphql", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())
        if answer.get("errors"):
            raise AssertionError(f"GraphQL errors: {answer['errors']}")
        return answer["data"]

    def loaded(self) -> bool:
        try:
            data = self.graphql(
                "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus "
                "locationOrLoadError { __typename } } } } }"
            )
        except OSError:
            return False
        entries = data["workspaceOrError"]["locationEntries"]
        return any(
            e["name"] == self.location
            and e["loadStatus"] == "LOADED"
            and e["locationOrLoadError"]["__typename"] == "RepositoryLocation"
            for e in entries
        )

    def last_tick_message(self, sensor: str) -> str:
        data = self.graphql(
            """query($selector: SensorSelector!) { sensorOrError(sensorSelector: $selector) {
                 ... on Sensor { sensorState { ticks(limit: 1) { status skipReason } } } } }""",
            {
                "selector": {
                    "repositoryLocationName": self.location,
                    "repositoryName": "__repository__",
                    "sensorName": sensor,
                }
            },
        )
        ticks = data["sensorOrError"]["sensorState"]["ticks"]
        return (ticks[0]["skipReason"] or "") if ticks else ""

    def backfill(self, asset_key: str, partitions: list[str]) -> str:
        """Launch a backfill of `partitions` of one asset, as the UI's Materialize does."""
        data = self.graphql(
            """mutation($params: LaunchBackfillParams!) {
                 launchPartitionBackfill(backfillParams: $params) {
                   __typename ... on LaunchBackfillSuccess { backfillId }
                   ... on PythonError { message } } }""",
            {
                "params": {
                    "assetSelection": [{"path": asset_key.split("/")}],
                    "partitionNames": partitions,
                }
            },
        )
        answer = data["launchPartitionBackfill"]
        assert answer["__typename"] == "LaunchBackfillSuccess", answer
        return answer["backfillId"]

    def backfill_status(self, backfill_id: str) -> str:
        data = self.graphql(
            "query($id: String!) { partitionBackfillOrError(backfillId: $id) { "
            "... on PartitionBackfill { status } } }",
            {"id": backfill_id},
        )
        return data["partitionBackfillOrError"]["status"]

    def instance(self) -> dg.DagsterInstance:
        """The instance `dagster dev` runs on, opened here. Its settings find the event log's
        files through $DAGSTER_HOME, as `dagster dev`'s processes have it: set while the
        storages are built (they read it once), then as it was."""
        previous = os.environ.get("DAGSTER_HOME")
        os.environ["DAGSTER_HOME"] = str(self.home)
        try:
            instance = dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(self.home)))
            instance.event_log_storage  # noqa: B018 (built now, while the variable is set)
            return instance
        finally:
            if previous is None:
                del os.environ["DAGSTER_HOME"]
            else:
                os.environ["DAGSTER_HOME"] = previous

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def block(
    name: str,
    start: datetime,
    bucket: str,
    endpoint: str,
    frequency: int,
    event_type: str = "clicks",
) -> str:
    return f"""  - name: {name}
    start: "{start:%Y-%m-%d %H:%M:%S}"
    {event_type}:
      frequency: {frequency}
      bucket: {bucket}
      region: us-east-1
      directory: {name}/{event_type}
      access_key: ${{{name.upper()}_AWS_ACCESS_KEY_ID}}
      secret_key: ${{{name.upper()}_AWS_SECRET_ACCESS_KEY}}
      endpoint_url: {endpoint}
"""


def object_key(name: str, window: datetime, event_type: str = "clicks") -> str:
    return f"{name}/{event_type}/{window:%Y/%m/%d}/{window:%Y-%m-%d %H:%M:%S}.csv.gz"


def statuses(
    instance: dg.DagsterInstance,
    name: str,
    start: datetime,
    keys: list[str],
    event_type: str = "clicks",
) -> list[str]:
    found = instance.get_status_by_partition(
        dg.AssetKey(["affise", name, event_type]), keys, window_partitions(start, 1)
    )
    found = found or {}
    return [found[key].value if found.get(key) else "MISSING" for key in keys]


def assert_rows(
    s3: S3Server,
    bucket: str,
    events: Path,
    name: str,
    window: datetime,
    minutes: int,
    account=None,
    event_type: str = "clicks",
) -> None:
    data = (
        (s3.client(account) if account else s3.client())
        .get_object(Bucket=bucket, Key=object_key(name, window, event_type))["Body"]
        .read()
    )
    header, rows = delivered_rows(data)
    expected_header, expected = source_rows(
        events, event_type, window, window + timedelta(minutes=minutes)
    )
    assert header == expected_header
    assert rows == expected
    # A minute of demo clicks is never empty; one of conversions may be.
    assert rows or event_type == "conversions"


def waiting_for_the_source(instance: dg.DagsterInstance, job_name: str) -> tuple[str, int] | None:
    """A STARTED run of `job_name` waiting for its source, and its worker's pid."""
    for run in instance.get_runs(
        dg.RunsFilter(job_name=job_name, statuses=[dg.DagsterRunStatus.STARTED])
    ):
        messages = [entry.message for entry in instance.all_logs(run.run_id)]
        pids = [
            m for message in messages if (m := re.search(r"process for run \(pid: (\d+)", message))
        ]
        if pids and any("waiting for the source" in message for message in messages):
            return run.run_id, int(pids[0].group(1))
    return None


def run_windows(run: dg.DagsterRun, minutes: int) -> list[datetime]:
    """The windows a run of a window job planned: its partition, or its range."""
    if PARTITION_TAG in run.tags:
        return [datetime.strptime(run.tags[PARTITION_TAG], FMT)]
    first = datetime.strptime(run.tags["dagster/asset_partition_range_start"], FMT)
    last = datetime.strptime(run.tags["dagster/asset_partition_range_end"], FMT)
    count = (last - first) // timedelta(minutes=minutes) + 1
    return [first + timedelta(minutes=minutes * i) for i in range(count)]
