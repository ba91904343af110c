"""The events: what each event type is (columns, table, window column), one window read out
of a DuckDB file or a Parquet dataset (events.py, parquet_dataset.py), how far the source is
complete, and the fingerprint of what it held. The source's contract is schema.sql.

Knows nothing of S3 destinations, encodings or Dagster's runs."""

from pathlib import Path
from typing import Any

# What a loader of the events calls (docs/design.md, "Source completeness"), named here so its
# path does not follow the modules' layout; imported on first use (DuckDB, for the file's).
LOADER_API = {
    "write_watermark": "affise_s3_assets.source.completeness",
    "write_dataset_watermark": "affise_s3_assets.source.completeness",
    "connect_events_file": "affise_s3_assets.source.events",
}


def is_remote(location: str | Path) -> bool:
    """Whether the events are an `s3://` dataset rather than a local file or folder."""
    return str(location).startswith("s3://")


def __getattr__(name: str) -> Any:
    if name in LOADER_API:
        import importlib

        return getattr(importlib.import_module(LOADER_API[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
