"""The upload sweep sensor: every few minutes, aborts the multipart uploads a killed run left
open in the live exports' buckets (journaled in the instance before their first part), with
s3:AbortMultipartUpload alone. The next delivery of a key aborts its own leftovers anyway;
the sweep is for keys nobody writes again soon (an export whose windows all landed otherwise).

Knows the journal and Dagster's sensors; the aborting itself is delivery/writer.py's.
"""

from collections.abc import Sequence

import dagster as dg

from affise_s3_assets.config.targets import WindowGroup
from affise_s3_assets.delivery.writer import sweep_abandoned_uploads
from affise_s3_assets.s3 import JournalCleanUp

SWEEP_SENSOR_NAME = "upload_sweep_sensor"
SWEEP_EVERY_SECONDS = 600
# Well within a sensor tick's time: what it does not reach waits for the next sweep.
SWEEP_BUDGET_SECONDS = 20.0


def sweep_summary(outcomes: dict[str, JournalCleanUp | str]) -> str:
    """One line per export that held uploads: what became of them (never a secret)."""
    if not outcomes:
        return "No journaled upload was left open by a finished run."
    lines = []
    for name, outcome in sorted(outcomes.items()):
        if isinstance(outcome, str):
            lines.append(f"{name}: {outcome}")
            continue
        said = f"{outcome.aborted} aborted, {outcome.gone} already gone, {outcome.held} held"
        if outcome.failed:
            said += f", {len(outcome.failed)} refused ({', '.join(sorted(set(outcome.failed)))})"
        lines.append(f"{name}: {said}")
    return "\n".join(lines)


def build_upload_sweep_sensor(groups: Sequence[WindowGroup]) -> dg.SensorDefinition:
    destinations = [target.destination for group in groups for target in group.live]

    @dg.sensor(
        name=SWEEP_SENSOR_NAME,
        minimum_interval_seconds=SWEEP_EVERY_SECONDS,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Aborts the multipart uploads killed runs left open in the exports' "
        "buckets (journaled before their first part), with s3:AbortMultipartUpload alone.",
    )
    def upload_sweep_sensor(context: dg.SensorEvaluationContext) -> dg.SkipReason:
        outcomes = sweep_abandoned_uploads(
            context.instance, destinations, time_budget=SWEEP_BUDGET_SECONDS
        )
        summary = sweep_summary(outcomes)
        if outcomes:
            context.log.info(summary)
        return dg.SkipReason(summary)

    return upload_sweep_sensor
