"""What the delivery needs of a source of events, whatever kind it is: how far it is complete
for an event type, and one range of an event type read through one connection (its
fingerprints and its rows, `SourceRead`). One backend a kind: a DuckDB file (duckdb_file.py), a
Parquet dataset (parquet_source.py); `EventsDatabase` (events.py) is one too, handing each call
to the backend its location is.

Knows no kind of source, connection, file or S3.
"""

from contextlib import AbstractContextManager
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from affise_s3_assets.config.schema import EventType

if TYPE_CHECKING:
    from affise_s3_assets.source.completeness import SourceProgress
    from affise_s3_assets.source.window_read import SourceRead


class EventSource(Protocol):
    """A source of events (tables `clicks` and `conversions`, schema.sql)."""

    def progress(self, event_type: EventType) -> "SourceProgress":
        """How far the source is complete for `event_type`: its watermark, or else its latest
        event; never further than the event type it is created with
        (`completeness.progress_with_creation`)."""
        ...

    def read(
        self, event_type: EventType, start: datetime, end: datetime
    ) -> AbstractContextManager["SourceRead"]:
        """One connection for the range [start, end) (naive UTC, or aware), open while the
        context lasts: its fingerprints and its rows, read from one state of the source."""
        ...
