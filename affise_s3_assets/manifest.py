"""What a window's manifest says: the small JSON object written once its data object is
complete, in the `_manifests/` sub-folder of the object's folder (delivery/writer.py,
`build_manifest_key`), so a customer can prove from the bucket alone that a file is whole.
Knows the manifest format (docs/manifest.schema.json), nothing of S3, DuckDB or Dagster.

The same rows give the same bytes: no wall-clock time, keys sorted, one fixed layout. What
changes a manifest is what changes the data (rows, bytes, checksum) and the producer's
version.
"""

import functools
import json
from dataclasses import dataclass
from datetime import datetime
from importlib import metadata
from typing import Any

# The manifest's own format. A new field that readers may ignore keeps it; removing or
# changing the meaning of one makes it 2.
MANIFEST_VERSION = 1
# The data file's layout (the columns and how values are written: docs/customer-contract.md,
# "What a customer receives"). A column added or a value written differently makes it 2.
DATA_SCHEMA_VERSION = 1


@functools.cache
def producer() -> str:
    """Read once per process: every manifest of a run names the same producer."""
    try:
        return f"affise-s3-assets {metadata.version('affise-s3-assets')}"
    except metadata.PackageNotFoundError:  # run from a source tree that is not installed
        return "affise-s3-assets (not installed)"


@dataclass(frozen=True)
class DeliveredObject:
    """What was delivered for one window: the facts its manifest states."""

    event_type: str
    window_start: datetime  # naive UTC
    window_end: datetime
    key: str
    rows: int
    bytes: int
    sha256: str
    columns: tuple[str, ...]  # the file's, in order: the export's `columns` or every column
    format: str = "csv"
    compression: str = "gzip"
    # Why this window was delivered again with other rows than before (e.g. "late_rows").
    redelivery_reason: str | None = None


# A naive-UTC moment as manifests and markers write it: 2026-11-25T10:15:00Z.
INSTANT_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def instant(moment: datetime) -> str:
    return moment.strftime(INSTANT_FORMAT)


def manifest_document(delivered: DeliveredObject) -> dict[str, Any]:
    return {
        "manifest_version": MANIFEST_VERSION,
        "producer": producer(),
        "event_type": delivered.event_type,
        "window": {
            "start": instant(delivered.window_start),
            "end": instant(delivered.window_end),
        },
        "object": {
            # The file's name in the folder holding the manifest's `_manifests/` folder: it
            # holds the same whichever bucket or prefix the files are copied to.
            "name": delivered.key.rsplit("/", 1)[-1],
            "bytes": delivered.bytes,
            "sha256": delivered.sha256,
            "format": delivered.format,
            "compression": delivered.compression,
        },
        "rows": delivered.rows,
        "columns": list(delivered.columns),
        "data_schema_version": DATA_SCHEMA_VERSION,
        # Only on a window delivered again because the source's rows for it changed.
        **(
            {"redelivery_reason": delivered.redelivery_reason}
            if delivered.redelivery_reason
            else {}
        ),
    }


def manifest_bytes(delivered: DeliveredObject) -> bytes:
    """The manifest as written: UTF-8 JSON, keys sorted, two-space indent, a final newline."""
    document = manifest_document(delivered)
    return (json.dumps(document, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode()
