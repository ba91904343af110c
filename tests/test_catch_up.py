"""The catch-up sensor's planners, driven directly: backlog as ranged runs, missed ticks, and
failed windows delivered again at a slow cadence until they are delivered."""

import copy
import dataclasses
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg

from affise_s3_assets.automation.catch_up import (
    REDELIVERY_FIRST_WAIT,
    REDELIVERY_TAG,
    CatchUpState,
    Covered,
    ExportProgress,
    ExportWindows,
    FailedRun,
    WindowSpan,
    plan_catch_up,
    plan_missed_windows,
    plan_redelivery,
)
from affise_s3_assets.config.targets import WindowGroup
from tests.conftest import ROOT
from tests.run_requests import groups_of, windows_of

SHIPPED = (ROOT / "integrations.yaml").read_text()


def one_clicks_export(
    frequency: int, start: str = "2026-11-26 00:00:00", name: str = "acme"
) -> list[WindowGroup]:
    return groups_of(
        f"""integrations:
  - name: {name}
    start: "{start}"
    clicks:
      frequency: {frequency}
      bucket: {name}-affise-raw
      region: us-west-2
      directory: d
      access_key: ${{{name.upper()}_AWS_ACCESS_KEY_ID}}
      secret_key: ${{{name.upper()}_AWS_SECRET_ACCESS_KEY}}
"""
    )


def requested(requests: list[dg.RunRequest], integration: str | None = None) -> list[str]:
    return sorted(
        key
        for request in requests
        if integration is None
        or any(k.path[1] == integration for k in request.asset_selection or [])
        for key in windows_of(request)
    )


def drain(groups, progress, now, materialized=None, budget=6):
    """Tick until nothing more is requested; every request of every tick."""
    every: list[dg.RunRequest] = []
    for _ in range(500):
        requests, progress = plan_catch_up(groups, progress, now, budget, materialized)
        if not requests:
            return every, progress
        every += requests
    raise AssertionError("the catch-up never finished")


def test_a_new_integrations_30_days_are_a_run_per_day_one_object_per_window() -> None:
    now = datetime(2026, 12, 26, 0, 5, tzinfo=UTC)
    requests, _ = drain(one_clicks_export(15), {}, now)
    assert len(requests) == 30
    windows = requested(requests)
    assert len(windows) == len(set(windows)) == 30 * 96
    assert windows[0] == "2026-11-26-00:00" and windows[-1] == "2026-12-25-23:45"
    assert all(len(windows_of(r)) <= 96 for r in requests)


def test_integrations_sharing_a_window_share_one_ranged_run() -> None:
    text = SHIPPED.replace("frequency: 5\n", "frequency: 15\n").replace(
        'start: "2026-11-26 12:00:00"', 'start: "2026-11-26 00:00:00"'
    )
    requests, progress = plan_catch_up(
        groups_of(text), {}, datetime(2026, 11, 26, 0, 40, tzinfo=UTC)
    )
    (clicks,) = [r for r in requests if r.job_name == "clicks_every_15min_job"]
    assert sorted(k.to_user_string() for k in clicks.asset_selection) == [
        "affise/acme/clicks",
        "affise/globex/clicks",
    ]
    assert windows_of(clicks) == ["2026-11-26-00:00", "2026-11-26-00:15"]  # 00:30 still open
    assert progress["affise/acme/clicks"].next is None
    again, _ = plan_catch_up(groups_of(text), progress, datetime(2026, 11, 26, 5, tzinfo=UTC))
    assert again == []  # later windows are the schedule's


def test_a_new_integration_is_not_starved_by_another_ones_long_history() -> None:
    now = datetime(2026, 12, 26, 0, 5, tzinfo=UTC)
    old = one_clicks_export(15, "2026-11-26 00:00:00", "old")
    _, progress = plan_catch_up(old, {}, now, budget=3)  # the old backlog is under way
    both = old + one_clicks_export(5, "2026-12-25 00:00:00", "newco")
    requests, _ = plan_catch_up(both, progress, now, budget=1)
    (first,) = requests
    assert [k.path[1] for k in first.asset_selection] == ["newco"]
    assert first.tags["dagster/priority"] == "0"  # ahead of queued backlog (-1)


def test_catch_up_replans_when_start_changes_and_skips_delivered_windows() -> None:
    now = datetime(2026, 11, 26, 2, 0, tzinfo=UTC)
    _, progress = plan_catch_up(groups_of(SHIPPED), {}, now, budget=0)
    assert progress["affise/acme/clicks"].next == "2026-11-26-00:00"
    later = groups_of(SHIPPED.replace('"2026-11-26 00:00:00"', '"2026-11-26 01:00:00"'))
    requests, _ = plan_catch_up(
        later,
        progress,
        now,
        budget=100,
        materialized=lambda key: {"2026-11-26-01:15"} if key.path[1] == "acme" else set(),
    )
    acme = [k for k in requested(requests, "acme") if k.endswith(("00", "15", "30", "45"))]
    clicks = [k for r in requests if r.job_name == "clicks_every_15min_job" for k in windows_of(r)]
    assert clicks == ["2026-11-26-01:00", "2026-11-26-01:30", "2026-11-26-01:45"]
    assert "2026-11-26-01:15" not in acme  # already delivered


def test_catch_up_delivers_earlier_windows_when_start_moves_earlier() -> None:
    now = datetime(2026, 11, 26, 2, 0, tzinfo=UTC)
    _, progress = drain(groups_of(SHIPPED), {}, now)
    assert progress["affise/acme/clicks"].next is None  # caught up to 01:45
    delivered = {f"2026-11-26-{h:02d}:{m:02d}" for h in (0, 1) for m in (0, 15, 30, 45)}
    earlier = groups_of(SHIPPED.replace('"2026-11-26 00:00:00"', '"2026-11-25 23:00:00"'))
    requests, _ = drain(
        earlier,
        progress,
        now,
        materialized=lambda key: delivered if key.path[1] == "acme" else set(),
    )
    clicks = [k for r in requests if r.job_name == "clicks_every_15min_job" for k in windows_of(r)]
    assert clicks == [f"2026-11-25-23:{m:02d}" for m in (0, 15, 30, 45)]


def test_a_frequency_change_does_not_deliver_history_again_at_the_new_frequency() -> None:
    """Hourly files 00:00-03:00 are in the bucket: 15-minute files for 00:15, 00:30 ... would
    hold the same rows a second time."""
    now = datetime(2026, 11, 26, 3, 10, tzinfo=UTC)
    requests, progress = drain(one_clicks_export(60), {}, now)
    hourly = set(requested(requests))
    assert hourly == {"2026-11-26-00:00", "2026-11-26-01:00", "2026-11-26-02:00"}
    later = datetime(2026, 11, 26, 5, 10, tzinfo=UTC)
    hourly |= {"2026-11-26-03:00", "2026-11-26-04:00"}  # the schedule delivered these
    requests, progress = drain(one_clicks_export(15), progress, later, lambda key: hourly)
    assert requests == []
    # Moving the start an hour earlier as well delivers that hour only, at the new frequency.
    requests, _ = drain(
        one_clicks_export(15, "2026-11-25 23:00:00"), progress, later, lambda key: hourly
    )
    assert requested(requests) == [f"2026-11-25-23:{m:02d}" for m in (0, 15, 30, 45)]


def test_a_frequency_change_delivers_the_old_windows_that_never_were() -> None:
    """Caught up hourly at 02:05, then the daemon was down until 04:30: the 02:00 and 03:00
    files were never written, so the 15-minute frequency delivers 02:00 onwards."""
    _, progress = drain(one_clicks_export(60), {}, datetime(2026, 11, 26, 2, 5, tzinfo=UTC))
    delivered = {"2026-11-26-00:00", "2026-11-26-01:00"}
    requests, _ = drain(
        one_clicks_export(15),
        progress,
        datetime(2026, 11, 26, 4, 30, tzinfo=UTC),
        lambda key: delivered,
    )
    windows = requested(requests)
    assert windows[0] == "2026-11-26-02:00" and windows[-1] == "2026-11-26-04:15"
    assert len(windows) == 10


def test_a_frequency_change_mid_catch_up_finishes_what_was_not_delivered() -> None:
    now = datetime(2026, 11, 26, 3, 10, tzinfo=UTC)
    _, progress = plan_catch_up(one_clicks_export(15), {}, now, budget=1)
    delivered = {"2026-11-26-00:00", "2026-11-26-00:15"}  # its run stopped there
    requests, _ = drain(one_clicks_export(5), progress, now, lambda key: delivered)
    windows = requested(requests)
    assert windows[0] == "2026-11-26-00:30"  # 00:00-00:30 is delivered at 15 minutes
    # Up to the last 5-minute window closed at 03:10: 03:00-03:15 never closed at 15 minutes.
    assert windows[-1] == "2026-11-26-03:05"
    assert len(windows) == (190 - 30) // 5


def test_catch_up_keeps_removed_integrations_so_a_return_does_not_redeliver_history() -> None:
    both = groups_of(SHIPPED)
    now = datetime(2026, 11, 26, 13, 0, tzinfo=UTC)
    _, progress = drain(both, {}, now)
    assert progress["affise/globex/clicks"].next is None
    only_acme = groups_of(SHIPPED[: SHIPPED.index("  # Pays only for two affiliates")])
    _, progress = plan_catch_up(only_acme, progress, now)
    assert "affise/globex/clicks" in progress
    again, _ = plan_catch_up(both, progress, datetime(2026, 11, 26, 18, 0, tzinfo=UTC))
    assert again == []


def test_the_cursor_is_typed_versioned_and_reads_the_previous_format() -> None:
    state = CatchUpState(
        exports={
            "affise/acme/clicks": ExportProgress("2026-11-26-00:00/15", next="2026-11-26-00:15")
        }
    )
    assert CatchUpState.from_json(state.to_json()) == state
    old = (
        '{"affise/acme/clicks": {"next": null, "until": "2026-11-26-01:45", '
        '"windows": "2026-11-26-00:00/15"}, "__window_jobs__": {"clicks_every_15min_job": '
        '"2026-11-26-01:45"}}'
    )
    migrated = CatchUpState.from_json(old)
    assert migrated.exports["affise/acme/clicks"].until == "2026-11-26-01:45"
    assert migrated.window_jobs == {"clicks_every_15min_job": "2026-11-26-01:45"}
    requests, _ = plan_catch_up(
        one_clicks_export(15), migrated.exports, datetime(2026, 11, 26, 2, 1, tzinfo=UTC)
    )
    assert requests == []  # caught up before the upgrade: nothing is delivered again


def test_windows_whose_schedule_tick_never_came_get_a_run() -> None:
    """The scheduler, back after being down, evaluates only the latest missed tick: the sensor
    requests the windows in between, once, for the whole group."""
    groups = one_clicks_export(15) + one_clicks_export(5, "2026-11-26 12:00:00", "later")
    first_sight = datetime(2026, 11, 26, 10, 1, tzinfo=UTC)
    requests, checked = plan_missed_windows(groups, {}, first_sight, lambda *_: False)
    assert requests == []  # what closed before is the catch-up's
    assert checked == {
        "clicks_every_15min_job": "2026-11-26-09:45",
        "clicks_every_5min_job": "2026-11-26-09:55",
    }
    scheduled = {("clicks_every_15min_job", "2026-11-26-10:15")}
    back = datetime(2026, 11, 26, 11, 1, tzinfo=UTC)  # down from 10:05 to 11:00, one tick ran
    requests, checked = plan_missed_windows(
        groups, checked, back, lambda job, key: (job, key) in scheduled
    )
    assert [(r.job_name, r.partition_key) for r in requests] == [
        ("clicks_every_15min_job", "2026-11-26-10:00"),
        ("clicks_every_15min_job", "2026-11-26-10:30"),
    ]  # 10:45 closed at 11:00, within the schedule's grace
    assert all(r.tags["affise/scheduled"] == "1" for r in requests)  # a late tick then skips
    assert requests[0].asset_selection is None  # the whole group: every integration is due
    again, _ = plan_missed_windows(groups, checked, back, lambda *_: False)
    assert again == []
    # The 5-minute group: its only integration starts at 12:00, nothing is due before.
    later, _ = plan_missed_windows(
        groups, checked, datetime(2026, 11, 26, 12, 20, tzinfo=UTC), lambda *_: True
    )
    assert later == []


def test_missed_windows_leave_the_newest_tick_to_the_scheduler_and_forget_gone_jobs() -> None:
    fifteen, hourly = one_clicks_export(15), one_clicks_export(60)
    never = lambda *_: False  # noqa: E731
    _, checked = plan_missed_windows(fifteen, {}, datetime(2026, 11, 26, 10, 1, tzinfo=UTC), never)
    # Down 10:05-11:20: the scheduler itself evaluates its latest missed tick (11:15, window
    # 11:00), so the sensor requests up to 10:45 only, although 11:00 closed 20 minutes ago.
    requests, checked = plan_missed_windows(
        fifteen, checked, datetime(2026, 11, 26, 11, 20, tzinfo=UTC), never
    )
    assert requested(requests) == [f"2026-11-26-10:{m:02d}" for m in (0, 15, 30, 45)]
    _, checked = plan_missed_windows(hourly, checked, datetime(2026, 11, 27, tzinfo=UTC), never)
    assert "clicks_every_15min_job" not in checked
    back = datetime(2026, 11, 29, 12, 1, tzinfo=UTC)
    requests, checked = plan_missed_windows(fifteen, checked, back, never)
    assert requests == [] and checked == {"clicks_every_15min_job": "2026-11-29-11:45"}


def test_missed_windows_after_an_upgrade_start_from_the_newest_scheduled_run() -> None:
    requests, checked = plan_missed_windows(
        one_clicks_export(15),
        None,
        datetime(2026, 11, 26, 11, 1, tzinfo=UTC),
        lambda *_: False,
        lambda job: "2026-11-26-09:30",
    )
    assert requests == [] and checked == {"clicks_every_15min_job": "2026-11-26-09:30"}
    requests, _ = plan_missed_windows(
        one_clicks_export(15), checked, datetime(2026, 11, 26, 11, 1, tzinfo=UTC), lambda *_: False
    )
    assert requested(requests) == [
        "2026-11-26-09:45",
        "2026-11-26-10:00",
        "2026-11-26-10:15",
        "2026-11-26-10:30",
    ]


def test_failed_windows_are_tried_again_at_a_slow_cadence_until_delivered() -> None:
    groups = one_clicks_export(15) + one_clicks_export(60, name="other")
    acme = dg.AssetKey(["affise", "acme", "clicks"])
    failed = FailedRun(
        "clicks_every_15min_job", frozenset({acme}), "2026-11-26-10:00", "2026-11-26-10:30"
    )
    t0 = datetime(2026, 11, 26, 11, 0, tzinfo=UTC)
    delivered: set[str] = {"2026-11-26-10:15"}  # the only one that made it

    def materialized(key: dg.AssetKey) -> set[str]:
        return delivered if key == acme else set()

    # Not hammered: nothing at once, one ranged run of what failed after the first wait.
    requests, state = plan_redelivery(groups, {}, [failed], t0, materialized)
    assert requests == []
    assert state["affise/acme/clicks"].spans == [
        WindowSpan(datetime(2026, 11, 26, 10, 0), datetime(2026, 11, 26, 10, 0)),
        WindowSpan(datetime(2026, 11, 26, 10, 30), datetime(2026, 11, 26, 10, 30)),
    ]
    requests, state = plan_redelivery(groups, state, [], t0 + REDELIVERY_FIRST_WAIT, materialized)
    assert requested(requests) == ["2026-11-26-10:00", "2026-11-26-10:30"]
    assert all(r.tags[REDELIVERY_TAG] == "1" for r in requests)
    assert all(
        [k.to_user_string() for k in r.asset_selection] == ["affise/acme/clicks"] for r in requests
    )
    # That attempt failed too: the next one waits twice as long.
    t1 = t0 + REDELIVERY_FIRST_WAIT
    again, state = plan_redelivery(groups, state, [], t1 + REDELIVERY_FIRST_WAIT, materialized)
    assert again == []
    again, state = plan_redelivery(groups, state, [], t1 + 2 * REDELIVERY_FIRST_WAIT, materialized)
    assert requested(again) == ["2026-11-26-10:00", "2026-11-26-10:30"]
    # The destination works again: once delivered, the export is healed and forgotten.
    delivered |= {"2026-11-26-10:00", "2026-11-26-10:30"}
    done, state = plan_redelivery(groups, state, [], t1 + timedelta(hours=2), materialized)
    assert done == [] and state == {}


def held_back_by_source(key: dg.AssetKey, first: str, last: str) -> FailedRun:
    """A failed run of the 15-minute clicks job whose every failure was SourceIncomplete."""
    return FailedRun("clicks_every_15min_job", frozenset({key}), first, last, True)


def test_windows_the_source_held_back_are_tried_as_soon_as_it_catches_up() -> None:
    """No back-off for a source that is behind: nothing is requested while it stays behind,
    however long; the windows it has passed are requested the tick it passes them."""
    groups = one_clicks_export(15)
    acme = dg.AssetKey(["affise", "acme", "clicks"])
    failed = held_back_by_source(acme, "2026-11-26-10:00", "2026-11-26-10:30")
    t0 = datetime(2026, 11, 26, 11, 0, tzinfo=UTC)
    source = {"clicks": datetime(2026, 11, 26, 10, 0)}

    def plan(state, runs, now):
        return plan_redelivery(groups, state, runs, now, lambda _: set(), complete_until=source.get)

    requests, state = plan({}, [failed], t0)
    assert requests == [] and state["affise/acme/clicks"].waits_for_source
    requests, state = plan(state, [], t0 + timedelta(hours=3))
    assert requests == []  # still behind: nothing, not even after the back-off
    source["clicks"] = datetime(2026, 11, 26, 10, 30)  # two windows in, at once
    requests, state = plan(state, [], t0 + timedelta(hours=3, seconds=30))
    assert requested(requests) == ["2026-11-26-10:00", "2026-11-26-10:15"]
    # The run requested as complete still found the source behind (it reads another one):
    # the back-off takes over rather than a run every tick.
    again = replace(failed, last="2026-11-26-10:15")
    _, retried = plan(copy.deepcopy(state), [again], t0 + timedelta(hours=3, minutes=5))
    assert not retried["affise/acme/clicks"].waits_for_source
    # The source moved on since it was asked: still the source's, tried again at once.
    source["clicks"] = datetime(2026, 11, 26, 10, 45)
    _, moved = plan(copy.deepcopy(state), [again], t0 + timedelta(hours=3, minutes=5))
    assert moved["affise/acme/clicks"].waits_for_source
    # A destination failure among them brings the back-off back.
    other = FailedRun(
        "clicks_every_15min_job", frozenset({acme}), "2026-11-26-10:30", "2026-11-26-10:30"
    )
    _, state = plan(moved, [other], t0 + timedelta(hours=4))
    assert not state["affise/acme/clicks"].waits_for_source


def test_windows_waiting_for_a_source_the_sensor_cannot_read_fall_back_to_the_back_off() -> None:
    groups = one_clicks_export(15)
    acme = dg.AssetKey(["affise", "acme", "clicks"])
    failed = held_back_by_source(acme, "2026-11-26-10:00", "2026-11-26-10:00")
    t0 = datetime(2026, 11, 26, 11, 0, tzinfo=UTC)
    unreadable: dict[str, Any] = {"complete_until": lambda _: None}
    _, state = plan_redelivery(groups, {}, [failed], t0, lambda _: set(), **unreadable)
    later = t0 + REDELIVERY_FIRST_WAIT
    requests, _ = plan_redelivery(groups, state, [], later, lambda _: set(), **unreadable)
    assert requested(requests) == ["2026-11-26-10:00"]


def test_exports_waiting_for_the_same_windows_are_tried_in_one_run() -> None:
    text = SHIPPED.replace("frequency: 5\n", "frequency: 15\n")
    groups = groups_of(text)
    keys = frozenset(
        {dg.AssetKey(["affise", "acme", "clicks"]), dg.AssetKey(["affise", "globex", "clicks"])}
    )
    failed = FailedRun("clicks_every_15min_job", keys, "2026-11-26-13:00", "2026-11-26-13:00")
    now = datetime(2026, 11, 26, 14, 0, tzinfo=UTC)
    _, state = plan_redelivery(groups, {}, [failed], now, lambda key: set())
    (request,) = plan_redelivery(groups, state, [], now + timedelta(hours=1), lambda key: set())[0]
    assert request.partition_key == "2026-11-26-13:00"
    assert sorted(k.to_user_string() for k in request.asset_selection) == sorted(
        k.to_user_string() for k in keys
    )


def test_failed_windows_wait_while_paused_or_busy_and_are_dropped_on_a_replan() -> None:
    groups = one_clicks_export(15)
    acme = dg.AssetKey(["affise", "acme", "clicks"])
    failed = FailedRun(
        "clicks_every_15min_job", frozenset({acme}), "2026-11-26-10:00", "2026-11-26-10:00"
    )
    t0 = datetime(2026, 11, 26, 11, 0, tzinfo=UTC)
    later = t0 + timedelta(hours=1)
    _, state = plan_redelivery(groups, {}, [failed], t0, lambda key: set())
    paused, kept = plan_redelivery(
        groups, state, [], later, lambda key: set(), on_hold={"clicks_every_15min_job"}
    )
    ten = datetime(2026, 11, 26, 10, 0)
    assert paused == [] and kept["affise/acme/clicks"].spans == [WindowSpan(ten, ten)]
    busy, _ = plan_redelivery(
        groups, kept, [], later, lambda key: set(), busy={"affise/acme/clicks"}
    )
    assert busy == []
    # Removed from the file: the entry waits untouched for its return.
    _, away = plan_redelivery(
        one_clicks_export(15, name="other"), kept, [], later, lambda key: set()
    )
    assert away["affise/acme/clicks"] == kept["affise/acme/clicks"]
    # Its frequency changed: 10:00 at 15 minutes is no partition of the hourly export.
    hourly = one_clicks_export(60)
    requests, replanned = plan_redelivery(hourly, kept, [], later, lambda key: set())
    assert requests == [] and replanned == {}
    # A failed run of the old frequency's job is not this export's windows any more.
    requests, state = plan_redelivery(hourly, {}, [failed], later, lambda key: set())
    assert requests == [] and state == {}


def test_redelivery_keeps_to_its_budget_longest_waiting_first(monkeypatch) -> None:
    groups = one_clicks_export(15)
    acme = dg.AssetKey(["affise", "acme", "clicks"])
    runs = [
        FailedRun(
            "clicks_every_15min_job",
            frozenset({acme}),
            f"2026-11-2{day}-10:00",
            f"2026-11-2{day}-10:00",
        )
        for day in (6, 7, 8)
    ]
    t0 = datetime(2026, 11, 29, 11, 0, tzinfo=UTC)
    _, state = plan_redelivery(groups, {}, runs, t0, lambda key: set())
    requests, _ = plan_redelivery(
        groups, state, [], t0 + timedelta(hours=1), lambda key: set(), budget=1
    )
    (request,) = requests
    assert windows_of(request) == ["2026-11-26-10:00"]
    none, _ = plan_redelivery(
        groups, state, [], t0 + timedelta(hours=1), lambda key: set(), budget=0
    )
    assert none == []
    # A bad setting never fails a tick: the default wait.
    from affise_s3_assets.automation.catch_up import redelivery_first_wait

    for value in ("2m", "0", "-5"):
        monkeypatch.setenv("AFFISE_REDELIVERY_FIRST_WAIT_SECONDS", value)
        assert redelivery_first_wait() == REDELIVERY_FIRST_WAIT
    monkeypatch.setenv("AFFISE_REDELIVERY_FIRST_WAIT_SECONDS", "15")
    assert redelivery_first_wait() == timedelta(seconds=15)


def test_windows_within_their_lateness_are_the_schedules_not_the_catch_ups() -> None:
    """With a lateness of 10 minutes, at 12:05 the 11:00 window (closed at 12:00) still waits
    for late events, and its tick is at 12:10: neither the backlog nor the missed-tick check
    requests it; after downtime, the windows whose ticks passed are requested."""
    (group,) = one_clicks_export(60)
    late = dataclasses.replace(group, lateness=timedelta(minutes=10))
    now = datetime(2026, 11, 26, 12, 5, tzinfo=UTC)
    assert requested(drain([group], {}, now)[0])[-1] == "2026-11-26-11:00"
    assert requested(drain([late], {}, now)[0])[-1] == "2026-11-26-10:00"
    never = lambda *_: False  # noqa: E731
    _, checked = plan_missed_windows([late], {}, now, never)
    assert checked == {"clicks_every_60min_job": "2026-11-26-10:00"}
    # Down until 14:20: the 11:00 and 12:00 ticks (12:10, 13:10) never came; 13:00's (14:10)
    # is the newest, which the scheduler evaluates itself.
    back = datetime(2026, 11, 26, 14, 20, tzinfo=UTC)
    requests, _ = plan_missed_windows([late], checked, back, never)
    assert requested(requests) == ["2026-11-26-11:00", "2026-11-26-12:00"]


# A state as the release before typed windows and spans wrote it (version 2).
STATE_BEFORE_TYPED_WINDOWS = (
    '{"version":2,"after_loss":true,"exports":{"affise/acme/clicks":{"windows":'
    '"2026-11-26-00:00/15","next":"2026-11-26-00:15","until":"2026-11-26-09:45","covered":'
    '[["2026-11-26-00:00","2026-11-26-02:00"]],"skip_materialized":true,"started":true},'
    '"affise/globex/clicks":{"windows":"2026-11-25-00:00/60","covered":[["2026-11-25-00:00",'
    '"2026-11-25-01:00"]]}},"window_jobs":{"clicks_every_15min_job":"2026-11-26-09:45"},'
    '"ended_runs_after":{"RUN_FAILURE":12,"RUN_CANCELED":0},"redelivery":{"affise/acme/clicks":'
    '{"spans":[["2026-11-26-10:00","2026-11-26-10:00"],["2026-11-26-10:30","2026-11-26-10:45"]],'
    '"attempts":2,"next_attempt":"2026-11-26T11:08:00","windows":"2026-11-26-00:00/15",'
    '"waits_for_source":true,"asked_until":"2026-11-26-10:30"},"affise/initech/clicks":{"spans":'
    '[["2026-11-26-10:00","2026-11-26-10:00"]],"attempts":0,"next_attempt":"2026-11-26T11:02:00",'
    '"windows":""}}}'
)


def test_a_state_written_before_typed_windows_reads_typed_and_writes_back_the_same() -> None:
    state = CatchUpState.from_json(STATE_BEFORE_TYPED_WINDOWS)
    acme = state.exports["affise/acme/clicks"]
    assert acme.windows == ExportWindows(datetime(2026, 11, 26), 15)
    assert acme.covered == [Covered(datetime(2026, 11, 26), datetime(2026, 11, 26, 2))]
    assert (acme.next, acme.until, acme.skip_materialized, acme.started) == (
        "2026-11-26-00:15",
        "2026-11-26-09:45",
        True,
        True,
    )
    globex = state.exports["affise/globex/clicks"]
    assert globex.windows == ExportWindows(datetime(2026, 11, 25), 60) and globex.next is None
    assert state.redelivery["affise/acme/clicks"].windows == acme.windows
    assert state.redelivery["affise/initech/clicks"].windows is None
    assert state.after_loss and state.ended_runs_after == {"RUN_FAILURE": 12, "RUN_CANCELED": 0}
    assert state.to_json() == STATE_BEFORE_TYPED_WINDOWS
    # Planned against the export it was written for, it is that export's progress still.
    _, progress = plan_catch_up(
        one_clicks_export(15), state.exports, datetime(2026, 11, 26, 10, 1, tzinfo=UTC)
    )
    assert progress["affise/acme/clicks"].windows == acme.windows


def test_failed_spans_written_as_lists_of_keys_read_typed_and_write_back_the_same() -> None:
    """Spans were kept as [first key, last key] lists: they read as `WindowSpan`s, are planned
    as such, and a state not changed since is written back as it was read."""
    state = CatchUpState.from_json(STATE_BEFORE_TYPED_WINDOWS)
    acme = state.redelivery["affise/acme/clicks"]
    assert acme.spans == [
        WindowSpan(datetime(2026, 11, 26, 10, 0), datetime(2026, 11, 26, 10, 0)),
        WindowSpan(datetime(2026, 11, 26, 10, 30), datetime(2026, 11, 26, 10, 45)),
    ]
    assert state.redelivery["affise/initech/clicks"].spans == [
        WindowSpan(datetime(2026, 11, 26, 10, 0), datetime(2026, 11, 26, 10, 0))
    ]
    assert [span.stored() for span in acme.spans] == [
        ["2026-11-26-10:00", "2026-11-26-10:00"],
        ["2026-11-26-10:30", "2026-11-26-10:45"],
    ]
    assert CatchUpState.from_json(state.to_json()) == state
    assert state.to_json() == STATE_BEFORE_TYPED_WINDOWS
    # Planned from the stored spans: the windows they hold are the ones tried again (its
    # source is complete past them: requested at once, 10:30 to 10:45 in one ranged run).
    requests, planned = plan_redelivery(
        one_clicks_export(15),
        {"affise/acme/clicks": copy.deepcopy(acme)},
        [],
        datetime(2026, 11, 26, 11, 0, tzinfo=UTC),
        lambda key: set(),
        complete_until=lambda _: datetime(2026, 11, 26, 11, 0),
    )
    assert sorted(w for r in requests for w in windows_of(r)) == [
        "2026-11-26-10:00",
        "2026-11-26-10:30",
        "2026-11-26-10:45",
    ]
    assert planned["affise/acme/clicks"].spans == acme.spans
