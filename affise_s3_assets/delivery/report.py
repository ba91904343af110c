"""How a run's failures are reported: one summary per failed window for the step's Failure, an
observation on each failed export's page (what failed and what to do), and the windows a
stopped destination was not tried for. What an S3 failure means is s3.py's
(`delivery_failure`); nothing here is a secret.
"""

from collections.abc import Mapping

import dagster as dg

from affise_s3_assets.config.targets import ExportTarget
from affise_s3_assets.delivery.engine import Outcome, Window
from affise_s3_assets.delivery.record import window_metadata


def failure_summary(
    failures: list[Outcome],
    delivered: int,
    windows: list[Window],
) -> str:
    by_target: dict[str, list[Outcome]] = {}
    for item in failures:
        by_target.setdefault(item.target.integration, []).append(item)
    lines = [
        f"{len(failures)} objects failed, {delivered} delivered, over {len(windows)} windows "
        f"({windows[0].key} to {windows[-1].key}). Failed and undelivered windows show as "
        "Failed on each asset; the catch-up sensor delivers them again once the destination "
        "works and the source is complete."
    ]
    for name, items in sorted(by_target.items()):
        first = items[0]
        stopped = " (its later windows in this run were not attempted)"
        lines.append(f"- {first.failure}{stopped if items[-1].stops_destination else ''}")
        if len(items) > 1:
            lines.append(f"  and {len(items) - 1} more windows of {name!r}")
    return "\n".join(lines)


def failure_observation(
    context: dg.AssetExecutionContext, window: Window, item: Outcome
) -> dg.AssetObservation:
    """A window not delivered, on its asset's page next to the window: the partition shows
    as Failed once the step fails, and this says why."""
    return dg.AssetObservation(
        asset_key=item.target.asset_key,
        partition=window.key,
        metadata={
            **window_metadata(window.start, window.end),
            "delivery_failed": item.failure or "",
            "error_code": item.code,
            "permanent": item.permanent,
            "run_id": context.run.run_id,
        },
    )


def not_attempted(
    target: ExportTarget, stopped_by: Mapping[dg.AssetKey, tuple[Window, Outcome]]
) -> Outcome:
    """A window this run did not try: why, in the words of the failure that stopped it."""
    stopper = stopped_by.get(target.asset_key)
    if stopper is None:
        return Outcome(target, "not attempted in this run (see the run's failure)", "NotAttempted")
    window, item = stopper
    return Outcome(
        target,
        f"not attempted in this run, stopped by window {window.key}'s failure: {item.failure}",
        item.code or "NotAttempted",
        item.permanent,
    )
