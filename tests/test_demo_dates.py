"""The demo's dates: integrations.yaml's starts move to the day the demo's instance first ran
(its `demo:` block and AFFISE_DEMO_DAY, which scripts/dev.sh pins), so a fresh demo has the
same few hundred windows to deliver on any date; a file without `demo:` keeps its dates."""

from datetime import UTC, date, datetime, timedelta

import duckdb
import pytest

from affise_s3_assets.automation.catch_up import plan_catch_up
from affise_s3_assets.config.apply import AppliedConfig, apply_integrations
from affise_s3_assets.config.schema import DEMO_DAY_VARIABLE
from affise_s3_assets.config.targets import build_export_targets, build_window_groups
from affise_s3_assets.config.windows import PARTITION_KEY_FORMAT
from affise_s3_assets.definitions import build_definitions
from affise_s3_assets.demo import events as demo
from tests.conftest import ROOT

SHIPPED = ROOT / "integrations.yaml"
# What a fresh demo's catch-up delivers at most (objects: windows x integrations), and in how
# many runs, whenever on its first day it starts: the first minutes of the demo, whatever the
# date (scripts/dev.sh, README "Two commands").
MAX_BACKLOG_OBJECTS = 800
MAX_BACKLOG_RUNS = 10


def demo_config(monkeypatch: pytest.MonkeyPatch, day: str, now: datetime) -> AppliedConfig:
    """The shipped file applied as the demo's code server applies it on `day`, at `now`."""
    monkeypatch.setenv(DEMO_DAY_VARIABLE, day)
    return apply_integrations(SHIPPED.read_text(), str(SHIPPED), now=now)


def backlog(applied: AppliedConfig, now: datetime) -> tuple[int, int]:
    """(runs, objects) the catch-up sensor requests at `now` from a fresh instance, tick after
    tick until it has asked for everything."""
    groups = [
        group
        for group in build_window_groups(
            build_export_targets(applied.integrations), applied.lateness
        )
        if group.live
    ]
    frequency = {group.job_name: group.step for group in groups}
    progress: dict = {}
    runs = objects = 0
    for _ in range(100):
        requests, progress = plan_catch_up(groups, progress, now.replace(tzinfo=UTC))
        if not requests:
            return runs, objects
        for request in requests:
            first = request.tags.get("dagster/asset_partition_range_start", request.partition_key)
            last = request.tags.get("dagster/asset_partition_range_end", request.partition_key)
            span = datetime.strptime(last, PARTITION_KEY_FORMAT) - datetime.strptime(
                first, PARTITION_KEY_FORMAT
            )
            windows = span // frequency[request.job_name] + 1
            runs += 1
            objects += windows * len(request.asset_selection)
    raise AssertionError("the catch-up never finished")


@pytest.mark.parametrize("day", ["2031-03-14", "2040-02-29", "2099-12-31"])
def test_a_fresh_demos_backlog_is_bounded_on_any_date(
    monkeypatch: pytest.MonkeyPatch, day: str
) -> None:
    first_day = date.fromisoformat(day)
    midnight = datetime(first_day.year, first_day.month, first_day.day)
    # Its first start may be any moment of its first day: the last one has the most behind it.
    for now in (midnight, midnight + timedelta(hours=12), midnight + timedelta(seconds=86_399)):
        applied = demo_config(monkeypatch, day, now)
        assert applied.problems == ()
        starts = {i.name: i.start for i in applied.integrations}
        assert starts == {
            "acme": midnight - timedelta(days=1),
            "globex": midnight - timedelta(hours=12),
            "initech": midnight - timedelta(days=7),  # disabled: nothing delivers it
        }
        # What the demo deploys: every export it delivers starts at most two days back.
        graph = build_definitions(applied).resolve_asset_graph()
        live = {i.name for i in applied.integrations if i.enabled}
        for key in graph.get_all_asset_keys():
            if key.path[0] == "affise" and key.path[1] in live:
                assert graph.get(key).partitions_def.start.replace(tzinfo=None) >= (
                    midnight - timedelta(days=1)
                )
        runs, objects = backlog(applied, now)
        assert 0 < runs <= MAX_BACKLOG_RUNS
        # At least a day of acme's quarter hours, and never more than two days of everything.
        assert 96 <= objects <= MAX_BACKLOG_OBJECTS, (now, objects)


def test_without_a_demo_day_the_starts_are_the_dates_written(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(DEMO_DAY_VARIABLE, raising=False)
    applied = apply_integrations(SHIPPED.read_text(), now=datetime(2026, 12, 1))
    assert applied.problems == ()
    assert {i.name: f"{i.start}" for i in applied.integrations} == {
        "acme": "2026-11-26 00:00:00",
        "globex": "2026-11-26 12:00:00",
        "initech": "2026-11-20 00:00:00",
    }


def test_a_file_without_a_demo_block_never_moves(monkeypatch: pytest.MonkeyPatch) -> None:
    """A deployment's partitions are keyed by its starts: AFFISE_DEMO_DAY, set by mistake,
    moves nothing in a file that does not ask for it."""
    monkeypatch.setenv(DEMO_DAY_VARIABLE, "2031-03-14")
    text = SHIPPED.read_text().replace('demo:\n  day: "2026-11-27"\n', "")
    assert "\ndemo:" not in text
    applied = apply_integrations(text, now=datetime(2026, 12, 1))
    assert applied.problems == ()
    assert [f"{i.start}" for i in applied.integrations] == [
        "2026-11-26 00:00:00",
        "2026-11-26 12:00:00",
        "2026-11-20 00:00:00",
    ]


@pytest.mark.parametrize(
    ("block", "day", "problem"),
    [
        ('demo:\n  day: "2026-11-27 00:00"\n', "2031-03-14", "demo: day: must be a day"),
        ("demo: 2026-11-27\n", "2031-03-14", "demo: must be a mapping"),
        ('demo:\n  days: "2026-11-27"\n', "2031-03-14", "demo: days: is not a field (day)"),
        ('demo:\n  day: "2026-11-27"\n', "next monday", "AFFISE_DEMO_DAY: 'next monday' is not"),
    ],
)
def test_a_broken_demo_block_or_day_moves_nothing_and_says_why(
    monkeypatch: pytest.MonkeyPatch, block: str, day: str, problem: str
) -> None:
    monkeypatch.setenv(DEMO_DAY_VARIABLE, day)
    text = SHIPPED.read_text().replace('demo:\n  day: "2026-11-27"\n', block)
    applied = apply_integrations(text, now=datetime(2026, 12, 1))
    assert any(said.startswith(problem) for said in applied.problems), applied.problems
    assert all(said.endswith("the starts are used as written") for said in applied.problems)
    assert applied.integrations[0].start == datetime(2026, 11, 26)


def test_the_demo_data_covers_every_moved_start(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """scripts/dev.sh's data step reads the file as the code server does: every window from
    each moved start holds events, and the source is complete past now."""
    monkeypatch.setenv(DEMO_DAY_VARIABLE, "2031-03-14")
    db = tmp_path / "events.duckdb"
    demo.main(
        [
            "--db",
            str(db),
            "--days",
            "3",
            "--clicks-per-day",
            "2000",
            "--from-integrations",
            str(SHIPPED),
            "--end",
            "2031-03-14 13:20:00",
        ]
    )
    with duckdb.connect(str(db), read_only=True) as con:
        first, last = con.execute("SELECT min(created_at), max(created_at) FROM clicks").fetchone()
    # initech's start, a week back, is the earliest: disabled, it keeps its assets.
    assert datetime(2031, 3, 7) <= first < datetime(2031, 3, 7, 1)
    assert last > datetime(2031, 3, 14, 13, 20)


def test_a_command_from_another_shell_moves_the_starts_as_the_instance_pinned_them(
    monkeypatch: pytest.MonkeyPatch, tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`affise-s3` run beside `scripts/dev.sh` has no AFFISE_DEMO_DAY of its own: it reads the
    day the instance of DAGSTER_HOME keeps, so a window before the code server's start is
    refused as the code server would, not delivered by the dates as written."""
    from affise_s3_assets.cli import main

    # Empty is unset to the command; and what the command sets is undone with it.
    monkeypatch.setenv(DEMO_DAY_VARIABLE, "")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    today = datetime.now(UTC).date()
    (tmp_path / "demo-day").write_text(f"{today:%Y-%m-%d}\n")
    written = apply_integrations((ROOT / "integrations.yaml").read_text(), "integrations.yaml")
    (acme,) = [i for i in written.integrations if i.name == "acme"]
    # A window the dates as written cover, days before the start the instance moved them to.
    window = f"{acme.start:%Y-%m-%d}-10:00"
    code = main(
        [
            "deliver",
            "affise/acme/clicks",
            "--from",
            window,
            "--file",
            str(ROOT / "integrations.yaml"),
        ]
    )
    assert code == 1
    assert "before affise/acme/clicks's first window" in capsys.readouterr().err
