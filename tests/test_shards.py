"""A window group's exports spread over runs of at most `exports_per_run` each: every way a
window is requested (schedule, missed tick, catch-up, re-delivery, reconciliation) cuts its
exports into the same shards, and a shard's failure re-delivers its own exports only."""

from datetime import UTC, datetime

import dagster as dg
import pytest

from affise_s3_assets.automation.catch_up import (
    REDELIVERY_FIRST_WAIT,
    FailedRun,
    plan_catch_up,
    plan_missed_windows,
    plan_redelivery,
)
from affise_s3_assets.automation.reconciliation import Changed, redelivery_requests
from affise_s3_assets.automation.runs import MISSED_TAG, SHARD_TAG
from affise_s3_assets.automation.schedules import scheduled_run_requests
from affise_s3_assets.automation.shards import exports_per_run
from affise_s3_assets.config.targets import WindowGroup
from affise_s3_assets.source.fingerprint import Fingerprint
from tests.run_requests import groups_of, windows_of
from tests.window_rig import START, WINDOW, WindowRig

NAMES = ["a1", "a2", "a3", "a4", "a5"]


def five(frequency: int = 15) -> WindowGroup:
    blocks = "".join(
        f"""  - name: {name}
    start: "2026-11-26 00:00:00"
    clicks:
      frequency: {frequency}
      bucket: {name}-raw
      region: us-west-2
      directory: d
      access_key: ${{{name.upper()}_AWS_ACCESS_KEY_ID}}
      secret_key: ${{{name.upper()}_AWS_SECRET_ACCESS_KEY}}
"""
        for name in NAMES
    )
    (group,) = groups_of("integrations:\n" + blocks)
    return group


def selected(request: dg.RunRequest) -> list[str]:
    return [key.path[1] for key in request.asset_selection or []]


def assert_shards(requests: list[dg.RunRequest]) -> None:
    """Runs of at most 2 exports, together every export once, each tagged with its place."""
    assert [selected(r) for r in requests] == [["a1", "a2"], ["a3", "a4"], ["a5"]]
    assert [r.tags[SHARD_TAG] for r in requests] == ["1/3", "2/3", "3/3"]
    assert len({r.run_key for r in requests}) == 3
    assert len({tuple(windows_of(r)) for r in requests}) == 1


def test_the_schedule_requests_one_run_per_shard_for_the_window_that_closed() -> None:
    group = five()
    window = datetime(2026, 11, 26, 10)
    requests = scheduled_run_requests(group, window, size=2)
    assert_shards(requests)
    assert all(r.partition_key == "2026-11-26-10:00" for r in requests)
    # Within the size, one run of the whole job, as before.
    (whole,) = scheduled_run_requests(group, window, size=5)
    assert whole.asset_selection is None and SHARD_TAG not in whole.tags


def test_missed_ticks_catch_up_redelivery_and_reconciliation_cut_the_same_shards() -> None:
    group = five()
    now = datetime(2026, 11, 26, 11, 7, tzinfo=UTC)
    missed, _ = plan_missed_windows(
        [group],
        {group.job_name: "2026-11-26-10:00"},
        now,
        lambda job, key: False,
        exports_per_run=2,
    )
    assert_shards([r for r in missed if r.partition_key == "2026-11-26-10:15"])
    backlog, _ = plan_catch_up([group], {}, now, exports_per_run=2)
    assert_shards(backlog)
    keys = frozenset(t.asset_key for t in group.live)
    failed = FailedRun(group.job_name, keys, "2026-11-26-10:00", "2026-11-26-10:00")
    _, state = plan_redelivery([group], {}, [failed], now, lambda key: set(), exports_per_run=2)
    later = now + REDELIVERY_FIRST_WAIT
    again, _ = plan_redelivery([group], state, [], later, lambda key: set(), exports_per_run=2)
    assert_shards(again)
    before, after = Fingerprint(1, 1, "s"), Fingerprint(2, 2, "s")  # late rows
    changed = [Changed(t, "2026-11-26-10:00", before, after, 2) for t in group.live]
    assert_shards(redelivery_requests(group, changed, set(), now, exports_per_run=2))


def test_a_failed_shard_redelivers_its_own_exports_only() -> None:
    group = five()
    now = datetime(2026, 11, 26, 11, 7, tzinfo=UTC)
    second = scheduled_run_requests(group, datetime(2026, 11, 26, 10), size=2)[1]
    failed = FailedRun(
        group.job_name,
        frozenset(second.asset_selection or []),
        "2026-11-26-10:00",
        "2026-11-26-10:00",
    )
    _, state = plan_redelivery([group], {}, [failed], now, lambda key: set(), exports_per_run=2)
    later = now + REDELIVERY_FIRST_WAIT
    requests, _ = plan_redelivery([group], state, [], later, lambda key: set(), exports_per_run=2)
    assert [selected(r) for r in requests] == [["a3", "a4"]]


@pytest.mark.parametrize(("value", "expected"), [("3", 3), ("0", 5000), ("x", 5000), ("", 5000)])
def test_the_deployment_sets_the_shard_size(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: int
) -> None:
    monkeypatch.setenv("AFFISE_EXPORTS_PER_RUN", value)
    assert exports_per_run() == expected


def test_shards_run_side_by_side_and_a_broken_one_harms_no_other(rig: WindowRig, s3_server) -> None:
    """Both shards of one window, run as the schedule requests them, on the real S3 server:
    the healthy shard's exports are delivered and materialized by their run alone, and only
    the broken shard's export is Failed."""
    rig.configure(
        [
            ("s1", "2026-11-24 00:00:00", rig.clicks("s1")),
            ("s2", "2026-11-24 00:00:00", rig.clicks("s2")),
            ("s3", "2026-11-24 00:00:00", rig.clicks("s3", bucket="affise-no-such-bucket")),
        ]
    )
    (group,) = rig.groups()
    requests = scheduled_run_requests(group, START, size=2)
    assert [selected(r) for r in requests] == [["s1", "s2"], ["s3"]]
    results = [rig.run(only=selected(request)) for request in requests]
    assert [r.success for r in results] == [True, False]
    key = f"{START:%Y/%m/%d/%Y-%m-%d %H:%M:%S}.csv.gz"
    assert rig.objects() == [f"s1/{key}", f"s2/{key}"]
    assert [rig.status(name, [WINDOW]) for name in ("s1", "s2", "s3")] == [
        ["MATERIALIZED"],
        ["MATERIALIZED"],
        ["FAILED"],
    ]
    # Each run materialized its own exports only.
    for result, names in zip(results, ({"s1", "s2"}, set()), strict=True):
        assert {e.asset_key.path[1] for e in result.all_events if e.is_step_materialization} == (
            names
        )


def test_a_tick_that_created_only_some_shards_gets_the_rest_as_a_missed_window() -> None:
    """The scheduler creates a tick's runs one by one: one that fails after its first shard
    leaves the others' exports without the window, which the catch-up sensor then requests,
    and only those."""
    group = five()
    now = datetime(2026, 11, 26, 11, 7, tzinfo=UTC)
    created = scheduled_run_requests(group, datetime(2026, 11, 26, 10, 15), size=2)[0]
    done = frozenset(created.asset_selection or [])

    def scheduled(job: str, key: str) -> bool | frozenset[dg.AssetKey]:
        return done if key == "2026-11-26-10:15" else True

    missed, _ = plan_missed_windows(
        [group], {group.job_name: "2026-11-26-10:00"}, now, scheduled, exports_per_run=2
    )
    assert [(r.partition_key, selected(r)) for r in missed] == [
        ("2026-11-26-10:15", ["a3", "a4"]),
        ("2026-11-26-10:15", ["a5"]),
    ]
    assert all(r.tags[MISSED_TAG] == "1" for r in missed)
