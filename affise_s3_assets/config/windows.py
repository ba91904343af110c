"""Windows: how a frequency becomes a cron and a time-partitions definition."""

from datetime import datetime, timedelta

import dagster as dg

from affise_s3_assets.config.schema import ALLOWED_FREQUENCIES

# Dagster's own sub-daily key format, e.g. 2026-11-25-10:15.
PARTITION_KEY_FORMAT = "%Y-%m-%d-%H:%M"


def cron_for_frequency(frequency: int, after_minutes: int = 0) -> str:
    """A cron that ticks at every window boundary of `frequency` minutes from UTC midnight,
    or `after_minutes` after each (a window's scheduled delivery waits for its lateness)."""
    if frequency not in ALLOWED_FREQUENCIES:
        raise ValueError(f"frequency {frequency} is not one of {ALLOWED_FREQUENCIES}")
    if after_minutes:
        if frequency <= 60:
            minutes = sorted({(m + after_minutes) % 60 for m in range(0, 60, frequency)})
            return f"{','.join(map(str, minutes))} * * * *"
        hours = sorted({(h + after_minutes // 60) % 24 for h in range(0, 24, frequency // 60)})
        return f"{after_minutes % 60} {','.join(map(str, hours))} * * *"
    if frequency == 1:
        return "* * * * *"
    if frequency < 60:
        return f"*/{frequency} * * * *"
    if frequency == 60:
        return "0 * * * *"
    if frequency < 1440:
        return f"0 */{frequency // 60} * * *"
    return "0 0 * * *"


def first_window_start(start: datetime, frequency: int) -> datetime:
    """The start of the window that contains `start`.

    A `start` off a boundary still delivers its whole window: a file that covers only part of
    its window would be indistinguishable from a complete one to the customer.
    """
    midnight = start.replace(hour=0, minute=0, second=0, microsecond=0)
    whole_windows = (start - midnight) // timedelta(minutes=frequency)
    return midnight + whole_windows * timedelta(minutes=frequency)


def window_partitions(start: datetime, frequency: int) -> dg.TimeWindowPartitionsDefinition:
    """UTC windows of exactly `frequency` minutes, the first one containing `start`."""
    return dg.TimeWindowPartitionsDefinition(
        start=first_window_start(start, frequency),
        cron_schedule=cron_for_frequency(frequency),
        fmt=PARTITION_KEY_FORMAT,
        timezone="UTC",
    )
