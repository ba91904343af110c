"""Completion markers: with `completion: day` (or `hour`), once every window of a UTC day (hour)
of an export is delivered, a small JSON object named `_SUCCESS` says so: present means
complete. It lists each window's key, rows, bytes and SHA-256 as its latest materialization
records them (docs/completion.schema.json), so a customer can verify the whole day from it.

Where a marker lies, per layout: never where a folder read of the data takes files (a `*`
glob at the data's depth, or a reader skipping `_`-names), so it never breaks one:

- dated: day `{directory}/YYYY/MM/DD/_manifests/_SUCCESS`,
  hour `{directory}/YYYY/MM/DD/_manifests/_SUCCESS_HH`;
- hive: day `{directory}/dt=YYYY-MM-DD/_SUCCESS` (that folder holds hour folders only),
  hour `{directory}/dt=YYYY-MM-DD/hour=HH/_manifests/_SUCCESS`.

The export step (step.py) tells `CompletionMarkers` of each window after its materialization is
logged; the planner (`marker_due`, `plan_marker`) is pure, its lookups injected. The same
records give the same bytes: no wall-clock time, keys sorted, one fixed layout. A re-delivered
window re-writes its period's marker (same key, its new record); a marker is never written
while one of its windows has no delivery recorded at its key. Windows before the export's first
window are not its own, so they are not waited for.
"""

import hashlib
import json
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import dagster as dg

from affise_s3_assets.config.targets import ExportTarget
from affise_s3_assets.config.windows import PARTITION_KEY_FORMAT
from affise_s3_assets.dagster_internal import store_values, stored_values
from affise_s3_assets.delivery.record import DeliveryRecord
from affise_s3_assets.delivery.writer import (
    META_FOLDER,
    build_data_folder,
    build_object_key,
    write_small_object,
)
from affise_s3_assets.manifest import INSTANT_FORMAT, instant, producer
from affise_s3_assets.s3 import S3Destination, object_uri, s3_client

# The marker's own format: a field readers may ignore can be added within a version.
COMPLETION_VERSION = 1
MARKER_NAME = "_SUCCESS"
UNITS = {"day": timedelta(days=1), "hour": timedelta(hours=1)}

# Partition keys to their latest delivery records, for one export (asset key).
RecordLookup = Callable[[dg.AssetKey, Sequence[str]], Mapping[str, DeliveryRecord]]


@dataclass(frozen=True)
class Period:
    """A UTC day or hour whose windows one marker covers."""

    unit: str  # "day" or "hour"
    start: datetime  # naive UTC

    @property
    def end(self) -> datetime:
        return self.start + UNITS[self.unit]


def period_of(window_start: datetime, unit: str) -> Period:
    """The day (hour) the window starting at `window_start` (naive UTC) belongs to."""
    if unit == "day":
        return Period(unit, window_start.replace(hour=0, minute=0, second=0, microsecond=0))
    if unit == "hour":
        return Period(unit, window_start.replace(minute=0, second=0, microsecond=0))
    raise ValueError(f"completion must be day or hour, got {unit!r}")


def period_window_starts(period: Period, first_window: datetime, frequency: int) -> list[datetime]:
    """The starts of the export's windows in `period`: those starting in it, from the export's
    first window on (earlier ones are not its own). Windows are cut from UTC midnight."""
    step = timedelta(minutes=frequency)
    midnight = period.start.replace(hour=0, minute=0)
    boundaries = -(-(period.start - midnight) // step)  # the first at or after its start
    moment = max(midnight + boundaries * step, first_window)
    starts = []
    while moment < period.end:
        starts.append(moment)
        moment += step
    return starts


def partition_key(window_start: datetime) -> str:
    return window_start.strftime(PARTITION_KEY_FORMAT)


def marker_key(directory: str, period: Period, layout: str = "dated") -> str:
    """Where the period's marker lies (see the module's docstring)."""
    folder = build_data_folder(directory, period.start, layout)
    if layout == "hive":
        if period.unit == "day":
            return f"{folder.rsplit('/', 1)[0]}/{MARKER_NAME}"  # dt=YYYY-MM-DD/_SUCCESS
        return f"{folder}/{META_FOLDER}/{MARKER_NAME}"
    suffix = f"_{period.start:%H}" if period.unit == "hour" else ""
    return f"{folder}/{META_FOLDER}/{MARKER_NAME}{suffix}"


@dataclass(frozen=True)
class Marker:
    """A period's marker, ready to be written."""

    key: str
    body: bytes
    period: Period
    windows: int
    rows: int


def plan_marker(
    target: ExportTarget, period: Period, records: Mapping[str, DeliveryRecord]
) -> Marker | None:
    """The period's marker from each of its windows' latest records (by partition key); None
    while one of them has none, or has one of another object than the window's key now (the
    export's layout, name or format changed since: it is delivered again first)."""
    if target.completion is None or period.unit != target.completion:
        return None
    step = timedelta(minutes=target.frequency)
    windows: list[dict[str, Any]] = []
    for start in period_window_starts(period, target.first_window, target.frequency):
        record = records.get(partition_key(start))
        key = build_object_key(
            target.destination.directory,
            start,
            target.file_format,
            target.layout,
            target.file_name,
        )
        if (
            record is None
            or record.sha256 is None
            or record.object_bytes is None
            or record.s3_uri != object_uri(target.destination, key)
        ):
            return None
        windows.append(
            {
                "start": instant(start),
                "end": instant(start + step),
                "key": key,
                "rows": record.rows,
                "bytes": record.object_bytes,
                "sha256": record.sha256,
            }
        )
    if not windows:
        return None
    rows = sum(window["rows"] for window in windows)
    document = {
        "completion_version": COMPLETION_VERSION,
        "producer": producer(),
        "export": {"integration": target.integration, "event_type": target.event_type},
        "format": target.file_format,
        "period": {
            "unit": period.unit,
            "start": instant(period.start),
            "end": instant(period.end),
        },
        "windows": windows,
        "rows": rows,
        "bytes": sum(window["bytes"] for window in windows),
    }
    body = (json.dumps(document, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode()
    key = marker_key(target.destination.directory, period, target.layout)
    return Marker(key, body, period, len(windows), rows)


def marker_due(
    target: ExportTarget,
    window_start: datetime,
    pending: Collection[datetime],
    lookup: RecordLookup,
) -> Marker | None:
    """After the materialization of the window starting at `window_start` is logged: the marker
    of its period, when every window of it is now delivered. `pending` holds the starts of this
    export's windows the run has yet to deliver: while one of the period's is among them, the
    period is not complete and nothing is asked of `lookup`."""
    if target.completion is None:
        return None
    period = period_of(window_start, target.completion)
    starts = period_window_starts(period, target.first_window, target.frequency)
    if any(start in pending for start in starts):
        return None
    return plan_marker(
        target, period, lookup(target.asset_key, [partition_key(start) for start in starts])
    )


def write_marker(destination: S3Destination, marker: Marker) -> str:
    """One verified PUT of the marker at its key; returns its URI."""
    return write_small_object(s3_client(destination), destination, marker.key, marker.body)


class CompletionMarkers:
    """One run's markers: told of each window delivered (after its materialization is logged),
    writes the marker of every period that window completes."""

    def __init__(
        self,
        targets: Sequence[ExportTarget],
        window_starts: Sequence[datetime],
        lookup: RecordLookup,
        write: Callable[[S3Destination, Marker], str] = write_marker,
    ) -> None:
        # Per export with markers, the windows this run is to deliver and has not yet.
        self._pending = {
            target.asset_key: {start for start in window_starts if target.covers(start)}
            for target in targets
            if target.completion is not None
        }
        self._lookup, self._write = lookup, write

    def due(self, target: ExportTarget, window_start: datetime) -> Marker | None:
        """Once this window's materialization is logged: the marker of its period, if the
        window completes it (`marker_due`)."""
        pending = self._pending.get(target.asset_key)
        if pending is None:
            return None
        pending.discard(window_start)
        return marker_due(target, window_start, pending, self._lookup)

    def write(self, target: ExportTarget, marker: Marker) -> str:
        """Write the marker at its key; returns its URI, raises what writing it raised."""
        return self._write(target.destination, marker)


# Per export, the markers written (period start -> SHA-256 of the body) and owed (""), in the
# instance's key-value store: the marker sensor (automation/markers.py) writes an owed one,
# or one whose period's records changed since, until it is written.
MARKERS_STATE_PREFIX = "affise/markers/"
MARKERS_KEPT = 400  # periods remembered per export: over two weeks of hours


def markers_state_key(asset_key: dg.AssetKey) -> str:
    return MARKERS_STATE_PREFIX + asset_key.to_user_string()


def marker_digest(marker: Marker) -> str:
    return hashlib.sha256(marker.body).hexdigest()


def read_markers_state(instance: dg.DagsterInstance, asset_key: dg.AssetKey) -> dict[str, str]:
    key = markers_state_key(asset_key)
    text = stored_values(instance, [key]).get(key)
    try:
        state = json.loads(text) if text else {}
    except ValueError:
        return {}
    return state if isinstance(state, dict) else {}


def owed_periods(state: Mapping[str, str], unit: str) -> list[Period]:
    """The periods whose marker `state` (read_markers_state) holds as owed."""
    return [
        period_of(datetime.strptime(start, INSTANT_FORMAT), unit)
        for start, digest in state.items()
        if not digest
    ]


def marker_written(state: Mapping[str, str], marker: Marker) -> bool:
    """Whether `state` says this very marker (its period and bytes) was written."""
    return state.get(instant(marker.period.start)) == marker_digest(marker)


def note_marker(
    instance: dg.DagsterInstance, asset_key: dg.AssetKey, period: Period, digest: str
) -> None:
    """Remember the marker of `period` as written (its digest) or owed (""); best effort."""
    state = read_markers_state(instance, asset_key)
    state[instant(period.start)] = digest
    kept = dict(sorted(state.items())[-MARKERS_KEPT:])
    store_values(instance, {markers_state_key(asset_key): json.dumps(kept, sort_keys=True)})
