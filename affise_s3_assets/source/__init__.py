"""The events: what each event type is (columns, table, window column), one window read out
of a DuckDB file or a Parquet dataset (events.py, parquet_dataset.py), how far the source is
complete, and the fingerprint of what it held. The source's contract is schema.sql.

Knows nothing of S3 destinations, encodings or Dagster's runs."""

from pathlib import Path


def is_remote(location: str | Path) -> bool:
    """Whether the events are an `s3://` dataset rather than a local file or folder."""
    return str(location).startswith("s3://")
