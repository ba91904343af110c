"""The completion markers nobody else writes: one the export step could not write (the
customer's store refused it, timed out), one whose period's records changed after it was
written (two runs of one day finishing together), one of a period completed by a run that
died before writing it. Each tick, for every live export with `completion`, the periods of the
windows materialized since the last tick, and the periods whose marker is owed, are planned
again from their latest records (delivery/completion.py); a marker whose body differs from
the one last written is written. The customer's bucket is never read (the least-privilege
policy grants no read): what was written is remembered in the instance.

Knows the window groups, Dagster's records and the markers; how a window is delivered is the
export step's.
"""

import json
from collections.abc import Sequence
from datetime import UTC, datetime

import dagster as dg

from affise_s3_assets.config.targets import ExportTarget, WindowGroup
from affise_s3_assets.config.windows import PARTITION_KEY_FORMAT
from affise_s3_assets.delivery.completion import (
    Period,
    marker_digest,
    marker_written,
    note_marker,
    owed_periods,
    period_of,
    period_window_starts,
    plan_marker,
    read_markers_state,
    write_marker,
)
from affise_s3_assets.delivery.record import latest_records
from affise_s3_assets.s3 import error_code

SENSOR_NAME = "completion_marker_sensor"
TICK_SECONDS = 60
# Materializations read per export and tick at most (a backlog's day is 1,440 at 1 minute).
RECORDS_PER_TICK = 2000


def _since(
    instance: dg.DagsterInstance, asset_key: dg.AssetKey, after: int | None
) -> tuple[list[str], int]:
    """Partition keys materialized after storage id `after` (None: from now on), and the
    newest storage id seen."""
    if after is None:
        newest = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=asset_key), limit=1
        ).records
        return [], newest[0].storage_id if newest else 0
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset_key, after_storage_id=after),
        limit=RECORDS_PER_TICK,
        ascending=True,
    ).records
    keys = [record.partition_key for record in records if record.partition_key]
    return keys, records[-1].storage_id if records else after


def _periods(
    target: ExportTarget, keys: Sequence[str], owed: Sequence[Period], now: datetime
) -> list[Period]:
    """The periods to plan: those of the windows materialized since, and the owed ones; none
    that is not over yet (its last window cannot have closed: the step writes its marker)."""
    assert target.completion is not None
    starts = {datetime.strptime(key, PARTITION_KEY_FORMAT) for key in keys}
    periods = {period_of(start, target.completion) for start in starts} | set(owed)
    return sorted((p for p in periods if p.end <= now), key=lambda period: period.start)


def build_marker_sensor(groups: Sequence[WindowGroup]) -> dg.SensorDefinition:
    """Writes the markers owed or gone stale of the live exports with `completion`."""
    targets = [t for group in groups for t in group.live if t.completion is not None]

    @dg.sensor(
        name=SENSOR_NAME,
        minimum_interval_seconds=TICK_SECONDS,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Writes the completion markers the export step could not, or whose "
        "windows were delivered again since.",
    )
    def completion_marker_sensor(context: dg.SensorEvaluationContext) -> dg.SkipReason:
        instance = context.instance
        now = datetime.now(UTC).replace(tzinfo=None)
        cursor: dict[str, int] = json.loads(context.cursor) if context.cursor else {}
        written, problems = 0, []
        for target in targets:
            name = target.asset_key.to_user_string()
            keys, cursor[name] = _since(instance, target.asset_key, cursor.get(name))
            state = read_markers_state(instance, target.asset_key)
            owed = owed_periods(state, target.completion)
            for period in _periods(target, keys, owed, now):
                starts = period_window_starts(period, target.first_window, target.frequency)
                records = latest_records(
                    instance,
                    target.asset_key,
                    [start.strftime(PARTITION_KEY_FORMAT) for start in starts],
                )
                marker = plan_marker(target, period, records)
                if marker is None:
                    continue  # not complete: the step writes it with its last window
                if marker_written(state, marker):
                    continue
                try:
                    write_marker(target.destination, marker)
                except Exception as exc:
                    note_marker(instance, target.asset_key, period, "")
                    problems.append(
                        f"{target.integration} {target.event_type}: {marker.key}: {error_code(exc)}"
                    )
                    continue
                note_marker(instance, target.asset_key, period, marker_digest(marker))
                written += 1
        context.update_cursor(json.dumps(cursor, sort_keys=True))
        said = f"{written} markers written"
        if problems:
            said += f"; not yet written: {'; '.join(problems[:20])}"
        return dg.SkipReason(said)

    return completion_marker_sensor
