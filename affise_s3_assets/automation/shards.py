"""How a window's exports are spread over runs: a run delivers at most `exports_per_run()`
exports, so a group with more is delivered by several runs of one window, requested together
(the run queue starts them side by side; on the cluster, one pod each). Each run reads the
window once for its own exports and is planned, failed and re-delivered on its own: a run
that fails names only its exports' windows, which alone are tried again.

Shards are the request's exports in the order of their asset keys, cut into equal runs of at
most the size: the same exports give the same runs. Knows Dagster's run requests; nothing of
S3, DuckDB or the catch-up's state.
"""

import os
from collections.abc import Sequence

import dagster as dg

from affise_s3_assets.automation.runs import SHARD_TAG

# Per run at most. What a run costs before its first export grows with the whole group, not
# with its shard: the daemon creates a window's runs one after another, each by subsetting the
# group's job (2-5 s of the code server's CPU at 10,000 integrations, 25-30 s a run on a busy
# deployment), and each run worker loads every integration's definitions. On the production
# deployment (benchmarks/run_benchmarks.py --only deployment, 2 cores), 10,000 integrations'
# 15-minute window took 190 s from its close to its last object as 2 runs of 5,000 and 238 s
# as 4 runs of 2,500; as 20 runs of 500, their creation alone took 9 minutes.
DEFAULT_EXPORTS_PER_RUN = 5000


def exports_per_run() -> int:
    """DEFAULT_EXPORTS_PER_RUN, or $AFFISE_EXPORTS_PER_RUN (a positive integer), read at each
    tick: the deployment sets it to what its run workers take."""
    configured = os.environ.get("AFFISE_EXPORTS_PER_RUN", "")
    return (
        int(configured) if configured.isdigit() and int(configured) > 0 else DEFAULT_EXPORTS_PER_RUN
    )


def sharded(
    request: dg.RunRequest, exports: Sequence[dg.AssetKey], size: int
) -> list[dg.RunRequest]:
    """`request`, which delivers `exports` (its selection, or its whole job's when it has
    none), as runs of at most `size` exports each: itself when it fits in one."""
    if len(exports) <= size:
        return [request]
    ordered = sorted(exports, key=lambda key: key.to_user_string())
    runs = [ordered[i : i + size] for i in range(0, len(ordered), size)]
    return [
        dg.RunRequest(
            run_key=f"{request.run_key}|shard {n}/{len(runs)}",
            job_name=request.job_name,
            partition_key=request.partition_key,
            asset_selection=keys,
            asset_check_keys=[],  # the exports alone (automation/freshness.py)
            tags={**request.tags, SHARD_TAG: f"{n}/{len(runs)}"},
        )
        for n, keys in enumerate(runs, start=1)
    ]
