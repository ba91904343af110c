"""What a delivered window's materialization records, typed: `DeliveryRecord`.

The one place that knows the metadata labels a delivery shows in the UI and that reconciliation
and re-delivery read back: `to_metadata()` writes them, `from_metadata()` reads them (values as
Dagster stores them, or as written), including records written before a field existed. The
filters are read from their data entry; from the ids shown only in records written before it.
`latest_materializations` reads them back from the instance. Knows neither how a window is
read, encoded or uploaded, nor Dagster's execution, S3 or the config.
"""

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import TYPE_CHECKING, Any

import dagster as dg

if TYPE_CHECKING:  # imported where used: encoding/csv_gzip.py re-exports from here, without DuckDB
    from affise_s3_assets.source.fingerprint import Fingerprint

# How a window's bounds are shown, in UTC.
_SHOWN_TIME = "%Y-%m-%d %H:%M:%S"
# A filter that takes every row.
_ALL = "all"
# The filters as data, {"affiliates": [int, ...], "advertisers": [str, ...]}: what a record is
# read back from (the entries shown, "101, 102", lose an advertiser id with a comma or spaces).
# Records written before it was recorded are read from the entries shown.
_FILTERS = "filters"
# The object's details as its encoder and writer report them, in the order they are shown.
_OBJECT_LABELS = (
    "rows",
    "csv_bytes",
    "object_bytes",
    "multipart_parts",
    "s3_uri",
    "etag",
    "sha256",
    "verified",
    "verified_by",
    "journaled_uploads_aborted",
    "journaled_uploads_left",
    "leftover_uploads_aborted",
    "manifest_uri",
)


def window_metadata(start: datetime, end: datetime) -> dict[str, str]:
    """How a window is shown on a materialization or observation, in UTC."""
    return {"window_start": start.strftime(_SHOWN_TIME), "window_end": end.strftime(_SHOWN_TIME)}


def filters_metadata(affiliates: Sequence[int], advertisers: Sequence[str]) -> dict[str, str]:
    """How an integration's filters are shown: ids, or `all`."""
    return {
        "affiliates": ", ".join(map(str, affiliates)) or _ALL,
        "advertisers": ", ".join(advertisers) or _ALL,
    }


@dataclass(frozen=True)
class DeliveryRecord:
    """One object delivered for one window of one export, as its materialization records it.

    Read back, a field the record does not carry (written before it existed, or not written
    for this object: `csv_bytes` of a Parquet file, `manifest_uri` without a manifest) is None.
    """

    rows: int
    window_start: datetime | None = None
    window_end: datetime | None = None
    affiliates: tuple[int, ...] | None = None  # () : every affiliate
    advertisers: tuple[str, ...] | None = None  # () : every advertiser
    # The object, as its encoder and writer report it.
    csv_bytes: int | None = None
    object_bytes: int | None = None
    multipart_parts: int | None = None
    s3_uri: str | None = None
    etag: str | None = None
    sha256: str | None = None
    verified: str | None = None
    verified_by: str | None = None
    journaled_uploads_aborted: int | None = None
    journaled_uploads_left: str | None = None
    leftover_uploads_aborted: int | str | None = None
    manifest_uri: str | None = None
    # A re-delivery because the window's rows changed: why, and the rows delivered before.
    reason: str | None = None
    rows_before: int | None = None
    # What the source held for the window when it was read ("scheme:digest", `Fingerprint`).
    source_fingerprint: str | None = None
    delivered_after_close_s: float | None = None

    @classmethod
    def of_object(
        cls,
        window_start: datetime,
        window_end: datetime,
        affiliates: Sequence[int],
        advertisers: Sequence[str],
        reported: Mapping[str, Any],
    ) -> "DeliveryRecord":
        """A window's object as its encoder's summary and its writer's finish report it."""
        unknown = set(reported) - set(_OBJECT_LABELS)
        if unknown:  # a new detail is shown once it is a field here, not silently dropped
            raise ValueError(f"not a field of DeliveryRecord: {sorted(unknown)}")
        details = {name: reported[name] for name in _OBJECT_LABELS if name in reported}
        return cls(
            window_start=window_start,
            window_end=window_end,
            affiliates=tuple(affiliates),
            advertisers=tuple(advertisers),
            **details,
        )

    def to_metadata(self) -> dict[str, Any]:
        """The materialization's metadata, labels and values as the UI shows them, then the
        filters as data (what `from_metadata` reads them from)."""
        metadata: dict[str, Any] = {}
        if self.window_start is not None and self.window_end is not None:
            metadata.update(window_metadata(self.window_start, self.window_end))
        if self.affiliates is not None and self.advertisers is not None:
            metadata.update(filters_metadata(self.affiliates, self.advertisers))
        for name in (*_OBJECT_LABELS, "reason", "rows_before", "source_fingerprint"):
            value = getattr(self, name)
            if value is not None:
                metadata[name] = value
        if self.delivered_after_close_s is not None:
            metadata["delivered_after_close_s"] = self.delivered_after_close_s
        if self.affiliates is not None and self.advertisers is not None:
            # Last: the entries shown before it keep their order.
            metadata[_FILTERS] = dg.MetadataValue.json(
                {"affiliates": list(self.affiliates), "advertisers": list(self.advertisers)}
            )
        return metadata

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> "DeliveryRecord | None":
        """A materialization's record (metadata values as Dagster returns them, or plain);
        None when it records no delivered rows."""
        values = {name: getattr(value, "value", value) for name, value in metadata.items()}
        rows = values.get("rows")
        if not isinstance(rows, int):
            return None
        known = {f.name for f in fields(cls)} - {
            "rows",
            "window_start",
            "window_end",
            "affiliates",
            "advertisers",
        }
        affiliates, advertisers = _recorded_filters(values)
        return cls(
            rows=rows,
            window_start=_shown_time(values.get("window_start")),
            window_end=_shown_time(values.get("window_end")),
            affiliates=affiliates,
            advertisers=advertisers,
            **{name: values[name] for name in known if values.get(name) is not None},
        )

    def fingerprint(self) -> "Fingerprint":
        """What the source held for the window when delivered, or its rows alone for a
        window delivered before fingerprints were recorded."""
        from affise_s3_assets.source.fingerprint import Fingerprint

        text = self.source_fingerprint
        if isinstance(text, str) and ":" in text:
            return Fingerprint.parse(self.rows, text)
        return Fingerprint(self.rows, 0, "rows only")

    def has_filters(self, affiliates: Sequence[int], advertisers: Sequence[str]) -> bool:
        """Whether it was delivered with these filters, order and repeats aside."""
        if self.affiliates is None or self.advertisers is None:
            return False
        return _same_ids(self.affiliates, affiliates) and _same_ids(self.advertisers, advertisers)


def _same_ids(recorded: Sequence[object], configured: Sequence[object]) -> bool:
    # As shown, an id spelled "all" and no filter are one: so they compare.
    return ({str(i) for i in recorded} or {_ALL}) == ({str(i) for i in configured} or {_ALL})


def _shown_time(shown: object) -> datetime | None:
    if not isinstance(shown, str):
        return None
    try:
        return datetime.strptime(shown, _SHOWN_TIME)
    except ValueError:
        return None


def _recorded_filters(
    values: Mapping[str, object],
) -> tuple[tuple[int, ...] | None, tuple[str, ...] | None]:
    """The filters a record was delivered with: as data, or, for a record written before they
    were recorded so (or whose data is not of that shape), as shown."""
    data = values.get(_FILTERS)
    if isinstance(data, Mapping):
        affiliates, advertisers = data.get("affiliates"), data.get("advertisers")
        if (
            isinstance(affiliates, list | tuple)
            and all(isinstance(i, int) and not isinstance(i, bool) for i in affiliates)
            and isinstance(advertisers, list | tuple)
            and all(isinstance(i, str) for i in advertisers)
        ):
            return tuple(affiliates), tuple(advertisers)
    return _shown_affiliates(values.get("affiliates")), _shown_ids(values.get("advertisers"))


def _shown_ids(shown: object) -> tuple[str, ...] | None:
    """A filter as shown ("101, 102", or "all")."""
    if not isinstance(shown, str):
        return None
    ids = tuple(part.strip() for part in shown.split(","))
    return () if ids == (_ALL,) else ids


def _shown_affiliates(shown: object) -> tuple[int, ...] | None:
    ids = _shown_ids(shown)
    try:
        return None if ids is None else tuple(int(part) for part in ids)
    except ValueError:
        return None


# Partition keys asked for in one read of materializations, and records read per request.
PARTITIONS_PER_READ = 500
RECORDS_PAGE = 1000


def latest_materializations(
    instance: dg.DagsterInstance, asset_key: dg.AssetKey, partitions: Sequence[str]
) -> Iterator[tuple[str, dg.AssetMaterialization]]:
    """Each of `partitions` (keys) with its latest materialization of `asset_key`, where it
    has one: paged reads of PARTITIONS_PER_READ keys at a time."""
    for offset in range(0, len(partitions), PARTITIONS_PER_READ):
        keys = list(partitions[offset : offset + PARTITIONS_PER_READ])
        seen: set[str] = set()
        cursor = None
        while len(seen) < len(keys):
            result = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=asset_key, asset_partitions=keys),
                limit=RECORDS_PAGE,
                cursor=cursor,
            )
            for record in result.records:  # newest first: the first of a partition counts
                key = record.partition_key
                if key is not None and key not in seen:
                    seen.add(key)
                    yield key, record.asset_materialization
            if not result.has_more:
                break
            cursor = result.cursor


def latest_records(
    instance: dg.DagsterInstance, asset_key: dg.AssetKey, partitions: Sequence[str]
) -> dict[str, DeliveryRecord]:
    """Each of `partitions` (keys) with the record of its latest materialization of
    `asset_key`, where it has one recording delivered rows."""
    found: dict[str, DeliveryRecord] = {}
    for key, materialization in latest_materializations(instance, asset_key, partitions):
        record = DeliveryRecord.from_metadata(materialization.metadata)
        if record is not None:
            found[key] = record
    return found
