"""What a window run carries: the tags the schedules, sensors and the export step set and read,
the run statuses that count as in flight, and the windows a run delivers (its span).

The one vocabulary the schedules, the catch-up and reconciliation sensors and the export step
share, so none of them imports another for it. Knows Dagster's run tags and statuses only:
nothing of how runs are planned, the config, the source's contents or S3.
"""

from collections.abc import Mapping

import dagster as dg

from affise_s3_assets.dagster_internal import partition_range_tags
from affise_s3_assets.source.completeness import SourceIncomplete

# On a run a schedule (or the catch-up sensor, for a missed tick) created.
SCHEDULED_TAG = "affise/scheduled"
# On a run the catch-up sensor requested for a window whose schedule tick never came.
MISSED_TAG = "affise/missed_tick"
# On every run the catch-up sensor (or reconciliation) requested.
CATCH_UP_TAG = "affise/catch_up"
# On each of the runs one request is cut into (automation/shards.py): "2/5", the second of five.
SHARD_TAG = "affise/shard"
# On every run `affise-s3 deliver` launches (delivery/by_hand.py): the run list tells them from
# the sensors' runs.
BY_HAND_TAG = "affise/by_hand"
# On a run delivering windows again: failed ones, or ones whose rows changed.
REDELIVERY_TAG = "affise/redelivery"
# Why a window is delivered again with other rows than before (automation/reconciliation.py): its
# materializations and manifests say so.
REASON_TAG = "affise/redelivery_reason"
LATE_ROWS = "late_rows"  # the source holds more rows for the window than were delivered
CHANGED_ROWS = "changed_rows"  # as many or fewer rows, but not the same
# Set by a window run whose every failure was the source not being complete.
SOURCE_ONLY_TAG = "affise/source_incomplete_only"
SOURCE_INCOMPLETE_CODE = SourceIncomplete.__name__
# Dagster's tags: the window (partition key) a run of one window delivers, and, on a
# re-execution of another run, that run's id.
PARTITION_TAG = "dagster/partition"
PARENT_RUN_ID_TAG = "dagster/parent_run_id"
# Dagster's tags of a ranged run (dagster_internal.py): the first and last window it delivers.
RANGE_START_TAG, RANGE_END_TAG = partition_range_tags("first", "last")

# Runs queued or running.
IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def run_window_span(tags: Mapping[str, str]) -> tuple[str, str] | None:
    """The first and last window (partition keys) a window run delivers, from its tags: one
    partition, or a range; None for a run of no window."""
    first = tags.get(RANGE_START_TAG) or tags.get(PARTITION_TAG)
    last = tags.get(RANGE_END_TAG) or first
    return (first, last) if first and last else None
