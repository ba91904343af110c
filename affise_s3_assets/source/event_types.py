"""What each event type is, in one registry: its columns (the source DDL's order, schema.sql,
which is also the CSV header's), the table it is read from, the column its windows select and
order rows by, and the event type it is created with; and the SQL that reads one window.

Knows no connection, file or S3.
"""

from dataclasses import dataclass

import dagster as dg

from affise_s3_assets.config.schema import EventType


@dataclass(frozen=True)
class EventTypeFacts:
    """One event type as the source holds it."""

    # The source DDL's column order (schema.sql), which is also the CSV header's.
    columns: tuple[str, ...]
    # The table (a Parquet dataset's folder) it is read from.
    table: str
    # The column a window selects its rows by, and orders them by (`id` breaking ties, so the
    # same rows always serialize to the same bytes).
    window_column: str
    # An event type windowed by a later change names the one of its rows' creation: every
    # row is a change at its creation too, so it is complete no further than that one.
    created_with: EventType | None = None


_CLICK_COLUMNS = (
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
)
_CONVERSION_COLUMNS = (
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
)

EVENT_TYPE_FACTS: dict[EventType, EventTypeFacts] = {
    "clicks": EventTypeFacts(_CLICK_COLUMNS, "clicks", "created_at"),
    "conversions": EventTypeFacts(_CONVERSION_COLUMNS, "conversions", "created_at"),
    # Conversion status changes are the conversions table again, windowed by its latest
    # change: each window holds the conversions whose `updated_at` falls in it, as they are now.
    "conversion_updates": EventTypeFacts(
        _CONVERSION_COLUMNS, "conversions", "updated_at", created_with="conversions"
    ),
}

# The registry's facts one at a time, for the readers that need one of them.
EVENT_COLUMNS: dict[EventType, tuple[str, ...]] = {
    event_type: facts.columns for event_type, facts in EVENT_TYPE_FACTS.items()
}
EVENT_TABLE: dict[EventType, str] = {
    event_type: facts.table for event_type, facts in EVENT_TYPE_FACTS.items()
}
WINDOW_COLUMN: dict[EventType, str] = {
    event_type: facts.window_column for event_type, facts in EVENT_TYPE_FACTS.items()
}
CREATED_WITH: dict[EventType, EventType] = {
    event_type: facts.created_with
    for event_type, facts in EVENT_TYPE_FACTS.items()
    if facts.created_with is not None
}

# The columns schema.sql types other than as text: what every reader of typed values (the
# fingerprint's canonical hash, the Parquet schema) goes by. Every other column is text.
TYPED_COLUMNS: dict[str, str] = {
    "created_at": "instant",
    "updated_at": "instant",
    "click_time": "instant",
    "affiliate_id": "integer",
    "offer_id": "integer",
    "landing_id": "integer",
    "uniq": "boolean",
    "payouts": "decimal",
    "revenue": "decimal",
}


def row_order(event_type: EventType) -> tuple[str, str]:
    return WINDOW_COLUMN[event_type], "id"


# The raw tables, upstream of every export read from them (the UI's lineage).
SOURCE_TABLE_KEYS: dict[str, dg.AssetKey] = {
    table: dg.AssetKey(["events", table]) for table in dict.fromkeys(EVENT_TABLE.values())
}


EVENT_SOURCE_KEYS: dict[EventType, dg.AssetKey] = {
    event_type: SOURCE_TABLE_KEYS[table] for event_type, table in EVENT_TABLE.items()
}


def window_query(event_type: EventType, relation: str | None = None) -> str:
    """SQL selecting one `[start, end)` window by its window column (created_at; updated_at
    for conversion_updates), in the file's column order.

    Unordered on purpose: DuckDB scans in parallel without keeping insertion order, and the
    caller sorts each bounded slice (see `SourceRead.frames`). `relation` is the table
    (default: the event type's table) or a `read_parquet(...)` call.
    """
    columns = ", ".join(f'"{column}"' for column in EVENT_COLUMNS[event_type])
    at = WINDOW_COLUMN[event_type]
    table = relation or EVENT_TABLE[event_type]
    return f"SELECT {columns} FROM {table} WHERE {at} >= $1 AND {at} < $2"
