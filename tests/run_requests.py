"""Window groups from an integrations text, and the windows a run request delivers: what the
catch-up and shard tests build their plans from and read them back with."""

import re
from datetime import datetime, timedelta

import dagster as dg

from affise_s3_assets.config.apply import parse_integrations
from affise_s3_assets.config.targets import WindowGroup, build_export_targets, build_window_groups

FMT = "%Y-%m-%d-%H:%M"


def groups_of(text: str) -> list[WindowGroup]:
    groups = build_window_groups(build_export_targets(parse_integrations(text).integrations))
    return [group for group in groups if group.live]


def windows_of(request: dg.RunRequest) -> list[str]:
    """Every window a (ranged) request delivers."""
    if request.partition_key:
        return [request.partition_key]
    frequency = int(re.search(r"_every_(\d+)min_job", request.job_name or "").group(1))
    first = datetime.strptime(request.tags["dagster/asset_partition_range_start"], FMT)
    last = datetime.strptime(request.tags["dagster/asset_partition_range_end"], FMT)
    keys = []
    while first <= last:
        keys.append(first.strftime(FMT))
        first += timedelta(minutes=frequency)
    return keys
