"""The loader: reads one window of raw events out of DuckDB. Knows DuckDB, nothing of S3."""

import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import duckdb
import polars as pl
from pydantic import Field

from affise_s3_assets.config import EventType

DEFAULT_EVENTS_DB = Path(__file__).resolve().parent.parent / "data" / "events.duckdb"

# Column order of the source DDL (schema.sql), which is also the CSV header order.
EVENT_COLUMNS: dict[EventType, tuple[str, ...]] = {
    "clicks": (
        "id",
        "created_at",
        "affiliate_id",
        "advertiser_id",
        "offer_id",
        "landing_id",
        "ip",
        "country",
        "city",
        "device_type",
        "device",
        "os",
        "os_version",
        "browser",
        "ua",
        "referrer",
        "connection_type",
        "isp",
        "uniq",
        *(f"sub{i}" for i in range(1, 9)),
    ),
    "conversions": (
        "id",
        "created_at",
        "updated_at",
        "click_id",
        "action_id",
        "click_time",
        "affiliate_id",
        "advertiser_id",
        "offer_id",
        "goal",
        "status",
        "payouts",
        "revenue",
        "currency",
        "country",
        "city",
        "ip",
        "os",
        "device",
        "browser",
        "ua",
        "referrer",
        *(f"sub{i}" for i in range(1, 9)),
    ),
}

EVENT_SOURCE_KEYS: dict[EventType, dg.AssetKey] = {
    event_type: dg.AssetKey(["events", event_type]) for event_type in EVENT_COLUMNS
}


def window_query(event_type: EventType) -> str:
    """SQL selecting one `[start, end)` window by created_at, in the file's column and row order."""
    columns = ", ".join(f'"{column}"' for column in EVENT_COLUMNS[event_type])
    # `id` breaks created_at ties so the same rows always serialize to the same bytes.
    return (
        f"SELECT {columns} FROM {event_type} "
        "WHERE created_at >= $1 AND created_at < $2 ORDER BY created_at, id"
    )


def naive_utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        return moment
    return moment.astimezone(UTC).replace(tzinfo=None)


class EventsDatabase(dg.ConfigurableResource):
    """The DuckDB events database (tables `clicks` and `conversions`, see schema.sql)."""

    path: str | None = Field(
        default=None,
        description="DuckDB file; unset means $AFFISE_EVENTS_DB, then data/events.duckdb",
    )
    batch_rows: int = Field(default=100_000, description="rows per batch handed to the writer")

    def database_path(self) -> Path:
        # Read at run time, not at import, so definitions load the same everywhere.
        return Path(self.path or os.environ.get("AFFISE_EVENTS_DB") or DEFAULT_EVENTS_DB)

    def window_frames(
        self, event_type: EventType, start: datetime, end: datetime
    ) -> Iterator[pl.DataFrame]:
        """Yield the window's rows in order, a bounded batch at a time.

        Windows compare full precision: an event at 10:14:59.999999 belongs to the 10:00-10:15
        window even though the file shows it as 10:14:59.
        """
        # The columns are naive UTC TIMESTAMPs; binding an aware datetime would make DuckDB
        # compare through the session time zone.
        bounds = [naive_utc(start), naive_utc(end)]
        path = self.database_path()
        if not path.exists():
            raise FileNotFoundError(f"events database {path} does not exist")
        with duckdb.connect(str(path), read_only=True) as con:
            reader = con.sql(window_query(event_type), params=bounds).to_arrow_reader(
                self.batch_rows
            )
            for batch in reader:
                frame = pl.from_arrow(batch)
                assert isinstance(frame, pl.DataFrame)
                yield frame
