"""WindowRig: one integrations file, one Dagster instance and one bucket on the real S3 server,
for tests that run window jobs in process (the `rig` fixture, tests/conftest.py)."""

import os
from datetime import datetime
from pathlib import Path

import dagster as dg
import pytest

from affise_s3_assets.config.apply import apply_integrations
from affise_s3_assets.config.secrets import credential_variables
from affise_s3_assets.config.targets import build_export_targets, build_window_groups
from affise_s3_assets.definitions import build_definitions
from tests.conftest import KEY_VARIABLES, S3Server
from tests.delivered import keys_in, range_tags

WINDOW = "2026-11-25-10:00"
START = datetime(2026, 11, 25, 10)


class WindowRig:
    """One integrations file, one Dagster instance, one bucket on the real S3 server."""

    def __init__(
        self,
        s3: S3Server,
        bucket: str,
        events_db: Path,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        instance: dg.DagsterInstance,
    ) -> None:
        self.s3, self.bucket, self.events_db = s3, bucket, events_db
        self.tmp_path, self.monkeypatch, self.instance = tmp_path, monkeypatch, instance
        self.path = tmp_path / "integrations.yaml"
        self.names: list[str] = []

    def clicks(self, directory: str, extra: str = "", bucket: str | None = None) -> str:
        return f"""    clicks:
      frequency: 60
      bucket: {bucket or self.bucket}
      region: us-west-2
      directory: {directory}
      access_key: ${{{KEY_VARIABLES[0]}}}
      secret_key: ${{{KEY_VARIABLES[1]}}}
      endpoint_url: {self.s3.endpoint_url}
{extra}"""

    def configure(self, entries: list[tuple[str, str, str]]) -> None:
        """(name, start, clicks block) per integration. Each integration's key variables are
        its own (config.credential_variables), holding the account in TEST_ACCESS_KEY_ID and
        TEST_SECRET_ACCESS_KEY now and at each `run`."""
        self.names = [name for name, _, _ in entries]
        text = "integrations:\n"
        for name, start, block in entries:
            for generic, own in zip(KEY_VARIABLES, credential_variables(name), strict=True):
                block = block.replace("${" + generic + "}", "${" + own + "}")
            text += f'  - name: {name}\n    start: "{start}"\n{block}'
        self.path.write_text(text)
        self.share_keys()

    def share_keys(self) -> None:
        """The account now in TEST_ACCESS_KEY_ID / TEST_SECRET_ACCESS_KEY, in each configured
        integration's own variables."""
        for name in self.names:
            for generic, own in zip(KEY_VARIABLES, credential_variables(name), strict=True):
                value = os.environ.get(generic)
                if value is None:
                    self.monkeypatch.delenv(own, raising=False)
                else:
                    self.monkeypatch.setenv(own, value)

    def run(
        self,
        only: list[str] | None = None,
        events_db: Path | None = None,
        last: str | None = None,
    ) -> dg.ExecuteInProcessResult:
        """Run the group's job for WINDOW (through `last`, as one ranged run), for the named
        integrations or, like the schedule, for every one due."""
        self.monkeypatch.setenv("AFFISE_EVENTS_DB", str(events_db or self.events_db))
        self.share_keys()
        job = build_definitions(self.path).resolve_job_def("clicks_every_60min_job")
        if only:
            keys = [dg.AssetKey(["affise", name, "clicks"]) for name in only]
        else:
            (group,) = self.groups()
            keys = [target.asset_key for target in group.due(START)]
        return job.execute_in_process(
            partition_key=None if last else WINDOW,
            tags=range_tags(WINDOW, last) if last else None,
            asset_selection=keys,
            instance=self.instance,
            raise_on_error=False,
        )

    def good_and_broken(self, missing: str) -> str:
        """Two integrations of one group: `good` delivers, `broken` targets `missing`."""
        self.configure(
            [
                ("good", "2026-11-24 00:00:00", self.clicks("good")),
                ("broken", "2026-11-24 00:00:00", self.clicks("broken", bucket=missing)),
            ]
        )
        return missing

    def groups(self):
        applied = apply_integrations(self.path.read_text())
        return build_window_groups(build_export_targets(applied.integrations))

    def status(self, name: str, partitions: list[str]) -> list[str]:
        (group,) = self.groups()
        key = dg.AssetKey(["affise", name, "clicks"])
        found = self.instance.get_status_by_partition(key, partitions, group.partitions_def())
        return [found[p].value if found and p in found else "MISSING" for p in partitions]

    def materialized(self, name: str) -> set[str]:
        key = dg.AssetKey(["affise", name, "clicks"])
        return set(self.instance.get_materialized_partitions(key))

    def objects(self, bucket: str | None = None) -> list[str]:
        return keys_in(self.s3, bucket or self.bucket)
