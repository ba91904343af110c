"""What is delivered where: each export of the applied config as a typed target, and the window
groups (event type, frequency) that deliver them. Knows the config models, nothing of Dagster's
execution, DuckDB or S3 calls.

Every integration sharing an event type and frequency is delivered by one window group: one
asset step that reads each window once for all of them, one job, one schedule. Dagster runs a
job over one partitions definition only (assets with different ones are refused), so a group's
windows start at its earliest integration's first window; each target knows its own start.
"""

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import dagster as dg

from affise_s3_assets.config.schema import EventType, IntegrationConfig, Lateness
from affise_s3_assets.config.windows import first_window_start, window_partitions
from affise_s3_assets.s3 import S3Destination

# A catch-up or backfill run delivers at most a day of windows: one read of the range, one
# object and one materialization per window. A new integration's 30 days are ~30 runs.
RUN_SPAN = timedelta(days=1)


@dataclass(frozen=True)
class ExportTarget:
    """One integration's export of one event type."""

    asset_key: dg.AssetKey
    event_type: EventType
    destination: S3Destination
    frequency: int
    first_window: datetime
    enabled: bool
    affiliates: tuple[int, ...]
    advertisers: tuple[str, ...]
    compression_level: int
    manifest: bool = False  # a manifest beside each object
    file_format: str = "csv"  # csv (gzipped) or parquet
    completion: str | None = None  # "day" or "hour": a marker once all its windows are in
    layout: str = "dated"  # dated (YYYY/MM/DD/) or hive (dt=YYYY-MM-DD/hour=HH/)
    file_name: str = "datetime"  # datetime ("2026-11-25 10:15:00") or compact (20261125T101500Z)
    columns: tuple[str, ...] = ()  # the file's columns in order; () every column

    @property
    def integration(self) -> str:
        return self.destination.integration

    @property
    def filter_key(self) -> tuple[tuple[int, ...], tuple[str, ...]]:
        return self.affiliates, self.advertisers

    @property
    def encoding_key(self) -> tuple[tuple[int, ...], tuple[str, ...], str, tuple[str, ...]]:
        """Targets alike in this (filters, format, columns) encode each batch once, for all
        of them."""
        return self.affiliates, self.advertisers, self.file_format, self.columns

    def covers(self, window: datetime) -> bool:
        """Whether the window starting at `window` (naive UTC) is one of this export's: its
        first window or a later one."""
        return self.first_window <= window

    @property
    def folder(self) -> str:
        directory = self.destination.directory
        return f"s3://{self.destination.bucket}/{directory + '/' if directory else ''}"


def export_asset_key(integration: str, event_type: EventType) -> dg.AssetKey:
    return dg.AssetKey(["affise", integration, event_type])


def window_job_name(event_type: EventType, frequency: int) -> str:
    return f"{event_type}_every_{frequency}min_job"


@dataclass(frozen=True)
class WindowGroup:
    """Every export of one event type at one frequency: delivered together, window by window."""

    event_type: EventType
    frequency: int
    targets: tuple[ExportTarget, ...]
    # How long after a window's end its scheduled delivery waits (the event type's lateness).
    lateness: timedelta = timedelta(0)

    @property
    def job_name(self) -> str:
        return window_job_name(self.event_type, self.frequency)

    @property
    def step_name(self) -> str:
        return f"deliver_{self.event_type}_every_{self.frequency}min"

    @property
    def schedule_name(self) -> str:
        return f"{self.event_type}_every_{self.frequency}min_schedule"

    @property
    def step(self) -> timedelta:
        return timedelta(minutes=self.frequency)

    def newest_ticked_window(self, moment: datetime) -> datetime:
        """The start of the newest window whose tick (its end plus the lateness) is at or
        before `moment`: what the schedule delivers then, and the last the catch-up may."""
        return first_window_start(moment - self.lateness, self.frequency) - self.step

    @property
    def windows_per_run(self) -> int:
        return max(1, RUN_SPAN // self.step)

    # Derived once: the sensor asks `live` and `due` for every window it examines.
    @functools.cached_property
    def first_window(self) -> datetime:
        return min(target.first_window for target in self.targets)

    @functools.cached_property
    def live(self) -> tuple[ExportTarget, ...]:
        """The targets schedules and the catch-up deliver; disabled ones only by hand."""
        return tuple(target for target in self.targets if target.enabled)

    @functools.cached_property
    def _partitions_def(self) -> dg.TimeWindowPartitionsDefinition:
        return window_partitions(self.first_window, self.frequency)

    def partitions_def(self) -> dg.TimeWindowPartitionsDefinition:
        return self._partitions_def

    def due(self, window_start: datetime) -> list[ExportTarget]:
        """The live targets that deliver the window starting at `window_start` (naive UTC)."""
        return [target for target in self.live if target.covers(window_start)]


def build_export_targets(integrations: Sequence[IntegrationConfig]) -> list[ExportTarget]:
    """Every export of every integration, disabled ones included (they keep their assets)."""
    return [
        ExportTarget(
            asset_key=export_asset_key(integration.name, event_type),
            event_type=event_type,
            destination=S3Destination(
                integration=integration.name,
                event_type=event_type,
                bucket=export.bucket,
                region=export.region,
                directory=export.directory,
                access_key=export.access_key,
                secret_key=export.secret_key,
                endpoint_url=export.endpoint_url,
                acl=export.acl,
                verify_etag=export.verify_etag,
                role_arn=export.role_arn,
                sse=export.sse,
                kms_key_id=export.kms_key_id,
            ),
            frequency=export.frequency,
            first_window=first_window_start(integration.start, export.frequency),
            enabled=integration.enabled,
            affiliates=export.affiliates,
            advertisers=export.advertisers,
            compression_level=export.compression_level,
            manifest=export.manifest,
            file_format=export.format,
            completion=export.completion,
            layout=export.layout,
            file_name=export.file_name,
            columns=export.columns,
        )
        for integration in integrations
        for event_type, export in integration.exports()
    ]


def build_window_groups(
    targets: Sequence[ExportTarget], lateness: Lateness | None = None
) -> list[WindowGroup]:
    """Targets grouped by (event type, frequency), in a stable order; each group waits its
    event type's `lateness` (none when not given) after a window's end."""
    groups: dict[tuple[EventType, int], list[ExportTarget]] = {}
    for target in targets:
        groups.setdefault((target.event_type, target.frequency), []).append(target)
    return [
        WindowGroup(
            event_type,
            frequency,
            tuple(members),
            lateness.of(event_type) if lateness is not None else timedelta(0),
        )
        for (event_type, frequency), members in sorted(groups.items())
    ]
