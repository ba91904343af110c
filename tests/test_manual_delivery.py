"""`affise-s3 deliver`, the runbook's command for windows by hand: run as docs/operations.md
writes it, the installed console script against the real S3 server, every window of the range
is its own object holding the source's rows, in runs of a day at most, for the exports named
only."""

import os
import re
import subprocess
import textwrap
from datetime import datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest

from affise_s3_assets.automation.runs import BY_HAND_TAG
from affise_s3_assets.config.apply import apply_integrations
from affise_s3_assets.config.targets import build_export_targets, build_window_groups
from affise_s3_assets.delivery.by_hand import ASSET_JOB, RefusedDelivery, plan_manual_runs
from tests.conftest import ROOT
from tests.delivered import delivered_rows, fetch, range_tags, source_rows
from tests.window_rig import WindowRig

FMT = "%Y-%m-%d-%H:%M"
# Hourly windows across a midnight: more than a day of them, so two runs.
FIRST, LAST = datetime(2026, 11, 24, 20), datetime(2026, 11, 25, 21)
HOURS = [FIRST + timedelta(hours=h) for h in range(26)]


def readme_command(home: Path, asset: str, first: str, last: str) -> str:
    """The runbook's command as docs/operations.md writes it, for this instance, asset and
    windows."""
    text = (ROOT / "docs" / "operations.md").read_text()
    block = text.split("CLI, one window or a range")[1].split("```bash")[1].split("```")[0]
    command = textwrap.dedent(block).strip()
    assert command == (
        "DAGSTER_HOME=$PWD/.dagster_home .venv/bin/affise-s3 deliver affise/acme/clicks \\\n"
        '  --from "$(date -u -d yesterday +%F)-10:00" --to "$(date -u -d yesterday +%F)-11:45"'
    )
    return (
        command.replace("$PWD/.dagster_home", str(home))
        .replace("affise/acme/clicks", asset)
        .replace('"$(date -u -d yesterday +%F)-10:00"', first)
        .replace('"$(date -u -d yesterday +%F)-11:45"', last)
    )


def run_shell(command: str, rig: WindowRig) -> subprocess.CompletedProcess[str]:
    rig.share_keys()  # each integration's own ${VAR}s, in this shell's environment
    env = {
        **os.environ,
        "AFFISE_INTEGRATIONS": str(rig.path),
        "AFFISE_EVENTS_DB": str(rig.events_db),
    }
    return subprocess.run(
        ["bash", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )


def object_key(directory: str, start: datetime) -> str:
    return f"{directory}/{start:%Y/%m/%d}/{start:%Y-%m-%d %H:%M:%S}.csv.gz"


def test_the_runbooks_command_delivers_a_range_as_the_source_holds_it(
    rig: WindowRig, tmp_path: Path
) -> None:
    rig.configure(
        [
            ("acme", "2026-11-24 00:00:00", rig.clicks("acme")),
            ("other", "2026-11-24 00:00:00", rig.clicks("other")),
            ("paused", "2026-11-24 00:00:00", "    enabled: false\n" + rig.clicks("paused")),
        ]
    )
    home = tmp_path / "dagster_home"
    home.mkdir()
    done = run_shell(
        readme_command(home, "affise/acme/clicks", FIRST.strftime(FMT), LAST.strftime(FMT)), rig
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    lines = [line.split(" run ") for line in done.stdout.splitlines()]
    assert [(said, run.split()[-1]) for said, run in lines] == [
        ("affise/acme/clicks: 2026-11-24-20:00 .. 2026-11-25-19:00 (24 windows):", "delivered"),
        ("affise/acme/clicks: 2026-11-25-20:00 .. 2026-11-25-21:00 (2 windows):", "delivered"),
    ]

    # One object per window, only for the export named, each holding the source's rows.
    assert rig.objects() == [object_key("acme", start) for start in HOURS]
    with_rows = 0
    for start in HOURS:
        header, rows = delivered_rows(fetch(rig.s3, rig.bucket, object_key("acme", start)))
        expected_header, expected = source_rows(
            rig.events_db, "clicks", start, start + timedelta(hours=1)
        )
        assert (header, rows) == (expected_header, expected)
        with_rows += bool(rows)
    assert with_rows == 22  # the test events cover 2026-11-25 only: its 22 hours here

    # Recorded on the instance of DAGSTER_HOME as runs of the window job, tagged as by hand.
    job, success = "clicks_every_60min_job", dg.DagsterRunStatus.SUCCESS
    with dg.DagsterInstance.from_config(str(home)) as instance:
        acme = dg.AssetKey(["affise", "acme", "clicks"])
        assert set(instance.get_materialized_partitions(acme)) == {
            start.strftime(FMT) for start in HOURS
        }
        other = dg.AssetKey(["affise", "other", "clicks"])
        assert instance.get_materialized_partitions(other) == set()
        ranges = [
            (
                run.job_name,
                run.status,
                run.asset_selection,
                run.tags[BY_HAND_TAG],
                run.tags["dagster/asset_partition_range_start"],
                run.tags["dagster/asset_partition_range_end"],
            )
            for run in instance.get_runs()
        ]
        assert sorted(ranges, key=str) == [
            (job, success, {acme}, "1", "2026-11-24-20:00", "2026-11-25-19:00"),
            (job, success, {acme}, "1", "2026-11-25-20:00", "2026-11-25-21:00"),
        ]

    # A disabled export, which its group's job does not select: one window, by the asset job.
    window = datetime(2026, 11, 25, 10)
    done = run_shell(
        readme_command(home, "affise/paused/clicks", window.strftime(FMT), window.strftime(FMT)),
        rig,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    _, rows = delivered_rows(fetch(rig.s3, rig.bucket, object_key("paused", window)))
    assert rows == source_rows(rig.events_db, "clicks", window, window + timedelta(hours=1))[1]
    with dg.DagsterInstance.from_config(str(home)) as instance:
        (paused,) = [run for run in instance.get_runs() if "paused" in str(run.asset_selection)]
        assert paused.job_name == ASSET_JOB and paused.status == dg.DagsterRunStatus.SUCCESS

    # A window before the export's start: refused, nothing run, nothing written.
    before = rig.objects()
    done = run_shell(
        readme_command(home, "affise/acme/clicks", "2026-11-23-10:00", "2026-11-24-01:00"), rig
    )
    assert done.returncode == 1
    assert "nothing delivered: --from 2026-11-23-10:00: before affise/acme/clicks's first" in (
        done.stderr
    )
    assert rig.objects() == before
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert len(instance.get_runs()) == 3


SHIPPED = (ROOT / "integrations.yaml").read_text()


def shipped_groups():
    applied = apply_integrations(SHIPPED, now=datetime(2026, 12, 1))
    return build_window_groups(build_export_targets(applied.integrations), applied.lateness)


def test_a_range_is_cut_into_runs_of_a_day_per_window_group() -> None:
    runs = plan_manual_runs(
        shipped_groups(),
        ["affise/acme/clicks", "affise/globex/clicks"],
        "2026-11-26-12:00",
        "2026-11-28-11:00",
        now=datetime(2026, 12, 1),
    )
    assert [(run.job_name, run.windows, str(run).split(":")[0]) for run in runs] == [
        ("clicks_every_15min_job", 96, "affise/acme/clicks"),
        ("clicks_every_15min_job", 93, "affise/acme/clicks"),
        ("clicks_every_5min_job", 288, "affise/globex/clicks"),
        ("clicks_every_5min_job", 277, "affise/globex/clicks"),
    ]
    assert runs[1].tags == {**range_tags("2026-11-27-12:00", "2026-11-28-11:00"), BY_HAND_TAG: "1"}
    # Consecutive and complete: each run starts a window after the last one ended.
    assert [(run.first.strftime(FMT), run.last.strftime(FMT)) for run in runs] == [
        ("2026-11-26-12:00", "2026-11-27-11:45"),
        ("2026-11-27-12:00", "2026-11-28-11:00"),
        ("2026-11-26-12:00", "2026-11-27-11:55"),
        ("2026-11-27-12:00", "2026-11-28-11:00"),
    ]


@pytest.mark.parametrize(
    ("assets", "first", "last", "reason"),
    [
        (["affise/hooli/clicks"], "2026-11-26-10:00", None, "not an export"),
        (["affise/acme/clicks"], "2026-11-26-10:05", None, "not the start of one of"),
        (["affise/acme/clicks"], "2026-11-25-23:45", None, "before affise/acme/clicks's first"),
        (["affise/acme/clicks"], "2026-11-30-23:45", None, "has not closed yet"),
        (["affise/acme/clicks"], "2026-11-26 10:00", None, "YYYY-MM-DD-hh:mm"),
        (["affise/acme/clicks"], "2026-11-26-10:00", "2026-11-26-09:00", "is before --from"),
        # One range for exports of two frequencies must be windows of both.
        (["affise/acme/clicks", "affise/acme/conversions"], "2026-11-26-10:15", None, "60-minute"),
    ],
)
def test_what_cannot_be_delivered_is_refused_with_the_reason(
    assets: list[str], first: str, last: str | None, reason: str
) -> None:
    with pytest.raises(RefusedDelivery, match=re.escape(reason)):
        plan_manual_runs(shipped_groups(), assets, first, last, now=datetime(2026, 11, 30, 23, 59))
