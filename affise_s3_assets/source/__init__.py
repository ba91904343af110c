"""The events: what each event type is (columns, table, window column: event_types.py, one
registry), what the delivery needs of a source (protocol.py, `EventSource`) and one backend a
kind of source: a DuckDB file (duckdb_file.py), a Parquet dataset (parquet_source.py, its
store parquet_dataset.py), both read through one DuckDB connection a range (window_read.py),
and the Dagster resource that picks one (events.py); how far the source is complete
(completeness.py), and the fingerprint of what it held. The source's contract is schema.sql.

Knows nothing of S3 destinations, encodings or Dagster's runs."""

from pathlib import Path
from typing import Any

# What a loader of the events calls (docs/design.md, "Source completeness"), named here so its
# path does not follow the modules' layout; imported on first use (DuckDB, for the file's).
LOADER_API = {
    "write_watermark": "affise_s3_assets.source.completeness",
    "write_dataset_watermark": "affise_s3_assets.source.completeness",
    "connect_events_file": "affise_s3_assets.source.duckdb_file",
}


def is_remote(location: str | Path) -> bool:
    """Whether the events are an `s3://` dataset rather than a local file or folder."""
    return str(location).startswith("s3://")


def __getattr__(name: str) -> Any:
    if name in LOADER_API:
        import importlib

        return getattr(importlib.import_module(LOADER_API[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
