"""The sensor that brings new integrations live: it delivers their windows from `start` on.

Schedules only request the window that has just closed. An integration added with a `start`
in the past (or a whole deployment started on an empty instance) would otherwise leave every
earlier window undelivered, so the first time this sensor sees an export asset it records
the windows closed so far and requests the undelivered ones, a bounded number per tick.
"""

import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import dagster as dg

# Not re-exported at the top level, but it is what define_asset_job returns.
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

CATCH_UP_RUNS_PER_TICK = 20
# Lower than scheduled runs: the newest window of every integration goes first.
CATCH_UP_RUN_PRIORITY = "-1"


def plan_catch_up(
    assets: Sequence[tuple[dg.AssetsDefinition, str]],
    cursor: dict[str, dict[str, str | None]],
    materialized: Callable[[dg.AssetKey], set[str]],
    now: datetime,
    budget: int = CATCH_UP_RUNS_PER_TICK,
) -> tuple[list[dg.RunRequest], dict[str, dict[str, str | None]]]:
    """Run requests for this tick and the next cursor; pure, so tests can drive it directly.

    The cursor maps each export asset to its next window to check and the last window that
    was already closed when the asset first appeared (later ones are the schedule's).
    """
    with dg.partition_loading_context(effective_dt=now):
        return _plan_catch_up(assets, cursor, materialized, budget)


def _plan_catch_up(
    assets: Sequence[tuple[dg.AssetsDefinition, str]],
    cursor: dict[str, dict[str, str | None]],
    materialized: Callable[[dg.AssetKey], set[str]],
    budget: int,
) -> tuple[list[dg.RunRequest], dict[str, dict[str, str | None]]]:
    requests: list[dg.RunRequest] = []
    next_cursor: dict[str, dict[str, str | None]] = {}
    for asset, job_name in assets:
        name = asset.key.to_user_string()
        partitions = asset.partitions_def
        assert isinstance(partitions, dg.TimeWindowPartitionsDefinition)
        state = cursor.get(name)
        if state is None:
            state = {
                "next": partitions.get_first_partition_key(),
                "until": partitions.get_last_partition_key(),
            }
        pending = state["next"]
        done: set[str] | None = None
        while pending is not None and state["until"] is not None and pending <= state["until"]:
            if len(requests) >= budget:
                break
            if done is None:
                done = materialized(asset.key)
            if pending not in done:
                requests.append(
                    dg.RunRequest(
                        run_key=f"{name}|{pending}",
                        job_name=job_name,
                        partition_key=pending,
                        tags={"dagster/priority": CATCH_UP_RUN_PRIORITY, "affise/catch_up": "1"},
                    )
                )
            pending = partitions.get_next_partition_key(pending)
        if pending is not None and state["until"] is not None and pending > state["until"]:
            pending = None
        next_cursor[name] = {"next": pending, "until": state["until"]}
    return requests, next_cursor


def build_new_integrations_sensor(
    jobs: Sequence[tuple[dg.AssetsDefinition, UnresolvedAssetJobDefinition]],
) -> dg.SensorDefinition:
    """`jobs` pairs each export asset with the job that materializes one of its windows."""
    assets = [(asset, job.name) for asset, job in jobs]

    @dg.sensor(
        name="new_integrations_sensor",
        jobs=[job for _, job in jobs],
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            "Delivers every window of a newly configured integration from its start up to the "
            f"moment it appeared, at most {CATCH_UP_RUNS_PER_TICK} runs per tick, oldest first."
        ),
    )
    def new_integrations_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        cursor = json.loads(context.cursor) if context.cursor else {}
        requests, next_cursor = plan_catch_up(
            assets,
            cursor,
            lambda key: set(context.instance.get_materialized_partitions(key)),
            datetime.now(UTC),
        )
        return dg.SensorResult(run_requests=requests, cursor=json.dumps(next_cursor))

    return new_integrations_sensor
