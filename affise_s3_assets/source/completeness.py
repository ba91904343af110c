"""How far the source is complete: the watermarks a loader of the events writes (a table of a
DuckDB file, a file at a Parquet dataset's root), how an event type windowed by a later change
is complete no further than the one it is created with, what a window waits for, and the error
of a window the source is not complete for.

Knows how a watermark is stored; reading a source's own progress is each source's
(duckdb_file.py, parquet_source.py).
"""

import contextlib
import fcntl
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb

from affise_s3_assets.config.schema import EventType
from affise_s3_assets.source import is_remote
from affise_s3_assets.source.event_types import CREATED_WITH, WINDOW_COLUMN

# The completeness contract with the loader of the events (schema.sql): a DuckDB file holds
# this table, a Parquet dataset this file at its root ({"clicks": "2026-11-25 10:15:00", ...}).
WATERMARK_TABLE = "affise_watermarks"


WATERMARK_FILE = "_watermarks.json"


@dataclass(frozen=True)
class SourceProgress:
    """How far the source is complete for one event type: every event with its window column
    (created_at; updated_at for conversion_updates) before `complete_until` (naive UTC) is in
    it. None: nothing can be known complete."""

    event_type: EventType
    complete_until: datetime | None
    how: str  # "watermark", "latest event", or why there is nothing

    def covers(self, window_end: datetime) -> bool:
        return self.complete_until is not None and naive_utc(window_end) <= self.complete_until

    def describe(self) -> str:
        if self.complete_until is None:
            return f"the source has no {self.event_type} to go by ({self.how})"
        return (
            f"the source is complete for {self.event_type} up to "
            f"{self.complete_until:%Y-%m-%d %H:%M:%S} ({self.how})"
        )


# A source's own progress for one event type: its watermark's, or else (with `latest`) its
# latest event's, or why there is none; without `latest`, None when there is no watermark.
OwnProgress = Callable[[EventType, bool], SourceProgress | None]


def progress_with_creation(event_type: EventType, own: OwnProgress) -> SourceProgress:
    """How far a source whose own progress is `own` is complete: its watermark, or else its
    latest event (a source holding events at or after a window's end has moved past it).
    Every conversion is a change at its creation too: conversion_updates are complete no
    further than the conversions are."""

    def latest(kind: EventType) -> SourceProgress:
        found = own(kind, True)
        assert found is not None, "with `latest`, a source always says how far it is"
        return found

    if WINDOW_COLUMN[event_type] == "created_at":
        return latest(event_type)
    created = CREATED_WITH[event_type]
    base = latest(created)
    # Without a watermark of its own, its latest change is never before the latest
    # creation (updated_at >= created_at, same rows): the conversions' progress is it,
    # and scanning every change for it would only cost a full scan.
    mine = own(event_type, False)
    if base.complete_until is None:
        return SourceProgress(event_type, None, base.how)
    if mine is None:
        return SourceProgress(event_type, base.complete_until, f"{created}' {base.how}")
    if mine.complete_until is None or mine.complete_until <= base.complete_until:
        return mine
    return SourceProgress(
        event_type, base.complete_until, f"{created}' {base.how}, before its own {mine.how}"
    )


# Without a watermark, events stamped later than this past the clock are not taken for
# progress: one row from a client with a wrong clock (2099) would otherwise mark every window
# complete, and a stalled ingestion would ship empty files.
FUTURE_EVENT_SKEW = timedelta(minutes=5)


def future_horizon() -> datetime:
    """The latest event time a source may hold now: later ones are a wrong clock's."""
    return datetime.now(UTC).replace(tzinfo=None) + FUTURE_EVENT_SKEW


class SourceIncomplete(Exception):
    """A window the source is not complete for: not delivered, tried again later."""


def write_watermark(con: duckdb.DuckDBPyConnection, event_type: EventType, until: datetime) -> None:
    """For the loader of a DuckDB events file: every `event_type` event before `until` is in.
    A watermark only moves forward."""
    con.execute(
        f"INSERT INTO {WATERMARK_TABLE} VALUES ($1, $2) ON CONFLICT (event_type) DO UPDATE SET "
        "complete_until = greatest(complete_until, excluded.complete_until)",
        [event_type, naive_utc(until)],
    )


def write_dataset_watermark(dataset: str | Path, event_type: EventType, until: datetime) -> None:
    """For the loader of a Parquet dataset (a folder, or s3://bucket/prefix): every
    `event_type` event before `until` is in. Replaced whole (a temporary file renamed; one PUT
    on S3); a watermark only moves forward."""
    moment = naive_utc(until)

    def advanced(text: str | None) -> str:
        current = json.loads(text) if text else {}
        # None yet, or one the exporter cannot read (so it counts for nothing): replaced.
        mark = moment
        with contextlib.suppress(KeyError, TypeError, ValueError):
            mark = max(mark, datetime.strptime(current[event_type], "%Y-%m-%d %H:%M:%S"))
        current[event_type] = f"{mark:%Y-%m-%d %H:%M:%S}"
        return json.dumps(current, sort_keys=True, indent=2) + "\n"

    if is_remote(dataset):
        from affise_s3_assets.source.parquet_dataset import ParquetDataset

        # S3 has no lock: the loaders of one s3:// dataset write its watermarks one at a time.
        store = ParquetDataset.open(dataset)
        store.write_text(WATERMARK_FILE, advanced(store.read_text(WATERMARK_FILE)))
        return
    root = Path(dataset)
    marks = root / WATERMARK_FILE
    # Loaders of clicks and conversions may write at once: one at a time, or one could roll
    # the other's watermark back.
    with open(root / f"{WATERMARK_FILE}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        text = marks.read_text(encoding="utf-8") if marks.exists() else None
        scratch = marks.with_name(f"{WATERMARK_FILE}.{os.getpid()}.tmp")
        scratch.write_text(advanced(text), encoding="utf-8")
        scratch.replace(marks)


def naive_utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        return moment
    return moment.astimezone(UTC).replace(tzinfo=None)
