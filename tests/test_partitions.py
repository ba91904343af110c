"""Windows are exactly `frequency` minutes, aligned to UTC midnight."""

import itertools
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest
from dagster._utils.schedules import cron_string_iterator

from affise_s3_assets.config.schema import ALLOWED_FREQUENCIES
from affise_s3_assets.config.windows import (
    cron_for_frequency,
    first_window_start,
    window_partitions,
)


@pytest.mark.parametrize("frequency", ALLOWED_FREQUENCIES)
def test_every_window_of_two_days_is_exactly_frequency_minutes(frequency: int) -> None:
    partitions = window_partitions(datetime(2026, 11, 1), frequency)
    now = datetime(2026, 11, 3, tzinfo=UTC)
    keys = partitions.get_partition_keys(current_time=now)
    assert len(keys) == 2 * 1440 // frequency
    windows = partitions.time_windows_for_partition_keys(frozenset(keys))
    assert windows[0].start == datetime(2026, 11, 1, tzinfo=UTC)
    assert windows[-1].end == now
    for window, following in itertools.pairwise(windows):
        assert window.end - window.start == timedelta(minutes=frequency)
        assert following.start == window.end


def test_crons_and_key_format() -> None:
    assert cron_for_frequency(1) == "* * * * *"
    assert cron_for_frequency(15) == "*/15 * * * *"
    assert cron_for_frequency(60) == "0 * * * *"
    assert cron_for_frequency(180) == "0 */3 * * *"
    assert cron_for_frequency(1440) == "0 0 * * *"
    partitions = window_partitions(datetime(2026, 11, 25), 15)
    keys = partitions.get_partition_keys(current_time=datetime(2026, 11, 25, 10, 31, tzinfo=UTC))
    assert keys[-1] == "2026-11-25-10:15"  # the window still open (10:30-10:45) is not listed


def test_start_off_a_boundary_begins_with_the_window_that_contains_it() -> None:
    start = datetime(2026, 11, 25, 10, 7, 30)
    assert first_window_start(start, 15) == datetime(2026, 11, 25, 10, 0)
    assert first_window_start(start, 180) == datetime(2026, 11, 25, 9, 0)
    assert first_window_start(start, 1440) == datetime(2026, 11, 25, 0, 0)
    partitions = window_partitions(start, 15)
    now = datetime(2026, 11, 26, tzinfo=UTC)
    with dg.partition_loading_context(effective_dt=now):
        assert partitions.get_first_partition_key() == "2026-11-25-10:00"


@pytest.mark.parametrize("frequency", ALLOWED_FREQUENCIES)
@pytest.mark.parametrize("lateness", [0, 7, 61, 1439])
def test_a_schedule_ticks_exactly_its_lateness_after_every_window_end(
    frequency: int, lateness: int
) -> None:
    """Over two days, the cron's ticks are the window ends shifted by the lateness, no more,
    no fewer, whatever the lateness against the frequency."""
    midnight = datetime(2026, 11, 25, tzinfo=UTC)
    ticks = []
    for moment in cron_string_iterator(
        midnight.timestamp(), cron_for_frequency(frequency, lateness), "UTC"
    ):
        if moment >= midnight + timedelta(days=2):
            break
        ticks.append(moment)
    # Every minute that is a window end (a multiple of the frequency since midnight) plus
    # the lateness; windows cut every day alike, so this holds across midnight too.
    expected = [
        midnight + timedelta(minutes=minute)
        for minute in range(2 * 1440)
        if (minute - lateness) % frequency == 0
    ]
    assert ticks == expected
