"""The factory: validated integration config in, one export asset per (integration, event type)."""

import warnings
from collections.abc import Sequence

import dagster as dg

from affise_s3_assets.config import EventExportConfig, EventType, IntegrationConfig
from affise_s3_assets.csv_export import GzipCsvBody, filter_events, filters_metadata
from affise_s3_assets.fanout import ExportTarget
from affise_s3_assets.io_manager import Delivery, S3Destination
from affise_s3_assets.partitions import first_window_start, window_metadata, window_partitions
from affise_s3_assets.source import EVENT_COLUMNS, EVENT_SOURCE_KEYS, EventsDatabase

IO_MANAGER_KEY = "date_folder_s3_io_manager"

# Raw event tables, owned upstream of this project; declared so the UI shows the lineage.
event_sources = [
    dg.AssetSpec(
        key,
        group_name="events",
        description=f"Raw {event_type} of the affiliate network (DuckDB table `{event_type}`).",
        kinds={"duckdb"},
    )
    for event_type, key in EVENT_SOURCE_KEYS.items()
]


def export_asset_key(integration: str, event_type: EventType) -> dg.AssetKey:
    return dg.AssetKey(["affise", integration, event_type])


def build_export_asset(
    integration: IntegrationConfig, event_type: EventType, export: EventExportConfig
) -> dg.AssetsDefinition:
    """The asset delivering one integration's `event_type`, one partition per window."""
    # backfill_policy is beta in Dagster 1.13; its warning would repeat for every asset at
    # every code-location load and bury real warnings.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)
        return _define_export_asset(integration, event_type, export)


def export_destination(
    integration: IntegrationConfig, event_type: EventType, export: EventExportConfig
) -> S3Destination:
    return S3Destination(
        integration=integration.name,
        event_type=event_type,
        bucket=export.bucket,
        region=export.region,
        directory=export.directory,
        access_key=export.access_key,
        secret_key=export.secret_key,
        endpoint_url=export.endpoint_url,
    )


def _define_export_asset(
    integration: IntegrationConfig, event_type: EventType, export: EventExportConfig
) -> dg.AssetsDefinition:
    destination = export_destination(integration, event_type, export)
    folder = f"s3://{export.bucket}/{export.directory + '/' if export.directory else ''}"
    filters = filters_metadata(export.affiliates, export.advertisers)

    @dg.asset(
        key=export_asset_key(integration.name, event_type),
        group_name=integration.name,
        deps=[EVENT_SOURCE_KEYS[event_type]],
        partitions_def=window_partitions(integration.start, export.frequency),
        io_manager_key=IO_MANAGER_KEY,
        # A range backfill must still produce one object per window.
        backfill_policy=dg.BackfillPolicy.multi_run(1),
        description=(
            f"Raw {event_type} of integration `{integration.name}`, one gzipped CSV every "
            f"{export.frequency} minutes under `{folder}YYYY/MM/DD/`."
        ),
        # Shown in the UI for every operator: never the credentials or their references.
        metadata={
            "destination": folder,
            "region": export.region,
            "endpoint_url": export.endpoint_url or "AWS",
            "frequency_minutes": export.frequency,
            "compression_level": export.compression_level,
            "enabled": integration.enabled,
            **{f"filter_{name}": value for name, value in filters.items()},
        },
        kinds={"s3", "csv"},
        tags={"integration": integration.name, "event_type": event_type},
    )
    def export_window(context: dg.AssetExecutionContext, events: EventsDatabase) -> dg.Output:
        window = context.partition_time_window
        frames = events.window_frames(event_type, window.start, window.end)
        body = GzipCsvBody(
            filter_events(frames, export.affiliates, export.advertisers),
            EVENT_COLUMNS[event_type],
            export.compression_level,
        )
        return dg.Output(
            Delivery(destination=destination, chunks=body, summary=body.summary),
            metadata={
                **window_metadata(window.start, window.end),
                **filters,
            },
        )

    return export_window


def build_export_targets(integrations: Sequence[IntegrationConfig]) -> list[ExportTarget]:
    """What the window jobs deliver: every export of every enabled integration."""
    return [
        ExportTarget(
            asset_key=export_asset_key(integration.name, event_type),
            event_type=event_type,
            destination=export_destination(integration, event_type, export),
            frequency=export.frequency,
            first_window=first_window_start(integration.start, export.frequency),
            affiliates=export.affiliates,
            advertisers=export.advertisers,
            compression_level=export.compression_level,
        )
        for integration in integrations
        if integration.enabled
        for event_type, export in integration.exports()
    ]


def build_export_assets(integrations: tuple[IntegrationConfig, ...]) -> list[dg.AssetsDefinition]:
    return [
        build_export_asset(integration, event_type, export)
        for integration in integrations
        for event_type, export in integration.exports()
    ]
