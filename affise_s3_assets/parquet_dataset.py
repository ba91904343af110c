"""Where a Hive-partitioned Parquet events dataset lives: a local folder or an `s3://` prefix
(`<table>/date=YYYY-MM-DD/*.parquet`, `_watermarks.json` at the root).

An `s3://` dataset is read in place through pyarrow's S3 filesystem, with the deployment's own
credentials: the standard AWS chain (environment, web identity, instance profile), plus
AFFISE_EVENTS_S3_ENDPOINT / AFFISE_EVENTS_S3_REGION for an S3-compatible store. Never an
integration's: those are resolved only by the delivery (s3.py). Nothing here downloads a
DuckDB extension or lists more than the folders a window names.

Knows files and object keys; nothing of windows, DuckDB queries or delivery.
"""

import os
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.dataset as pads
import pyarrow.fs as pafs


class DatasetUnreadable(OSError):
    """The dataset's store cannot be read (bucket gone, access denied, endpoint down): its
    windows fail with this reason and are tried again; never taken for "no events"."""


def is_remote(location: str | Path) -> bool:
    return str(location).startswith("s3://")


def events_s3_filesystem() -> pafs.S3FileSystem:
    """The deployment's S3 filesystem for the events (read at run time, never at import)."""
    endpoint = os.environ.get("AFFISE_EVENTS_S3_ENDPOINT")
    options: dict[str, object] = {
        # Connect fails fast and is retried by the caller's next poll; a read may be slow.
        "connect_timeout": 5,
        "request_timeout": 60,
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=5),
    }
    region = os.environ.get("AFFISE_EVENTS_S3_REGION")
    if region:
        options["region"] = region
    if endpoint:
        parsed = urllib.parse.urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        options["endpoint_override"] = parsed.netloc
        options["scheme"] = parsed.scheme
        # An S3-compatible store is addressed by path, as the delivery addresses one.
        options["force_virtual_addressing"] = False
        options.setdefault("region", "us-east-1")
    return pafs.S3FileSystem(**options)


@dataclass(frozen=True)
class ParquetDataset:
    """One dataset's root: `base` on `fs` (a local path, or `bucket/prefix` on S3)."""

    uri: str  # as configured: a folder, or s3://bucket/prefix
    base: str
    fs: pafs.FileSystem | None = field(default=None, compare=False)  # None: local disk

    @classmethod
    def local(cls, path: str | Path) -> "ParquetDataset":
        return cls(str(path), str(path))

    @classmethod
    def open(cls, location: str | Path) -> "ParquetDataset":
        if not is_remote(location):
            return cls.local(location)
        base = str(location).removeprefix("s3://").strip("/")
        return cls(str(location), base, events_s3_filesystem())

    @property
    def remote(self) -> bool:
        return self.fs is not None

    def _path(self, *parts: str) -> str:
        return "/".join([self.base, *parts])

    def _list(self, folder: str) -> list[pafs.FileInfo]:
        assert self.fs is not None
        try:
            return self.fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
        except OSError as exc:
            raise DatasetUnreadable(f"events dataset {self.uri}: {exc}") from exc

    def exists(self) -> bool:
        """Whether the dataset's root is there (a bucket gone, or a prefix holding nothing,
        is not a dataset with no events: its windows wait or fail)."""
        if self.fs is None:
            return Path(self.base).exists()
        try:
            return self.fs.get_file_info(self.base).type != pafs.FileType.NotFound
        except OSError as exc:
            raise DatasetUnreadable(f"events dataset {self.uri}: {exc}") from exc

    def day_folders(self, table: str) -> list[tuple[str, str]]:
        """(YYYY-MM-DD, folder) of every `date=` folder of `table`, sorted by day."""
        if self.fs is None:
            folders = Path(self.base, table).glob("date=*")
            named = [(folder.name, str(folder)) for folder in folders]
        else:
            named = [
                (info.base_name, info.path)
                for info in self._list(self._path(table))
                if info.type == pafs.FileType.Directory
            ]
        return sorted(
            (name.removeprefix("date="), path) for name, path in named if name.startswith("date=")
        )

    def files(self, table: str, day: str) -> list[str]:
        """The Parquet files of one day's folder, sorted (none: no events that day)."""
        if self.fs is None:
            return [str(f) for f in sorted(Path(self.base, table, f"date={day}").glob("*.parquet"))]
        return sorted(
            info.path
            for info in self._list(self._path(table, f"date={day}"))
            if info.type == pafs.FileType.File and info.path.endswith(".parquet")
        )

    def read_text(self, name: str) -> str | None:
        """A small file at the root, None when it is absent."""
        if self.fs is None:
            path = Path(self.base, name)
            return path.read_text(encoding="utf-8") if path.exists() else None
        try:
            with self.fs.open_input_stream(self._path(name)) as stream:
                return stream.read().decode("utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise DatasetUnreadable(f"events dataset {self.uri}: {exc}") from exc

    def write_text(self, name: str, text: str) -> None:
        """Replace a small file at the root: one PUT, so readers see the old or the new.
        (boto3, not pyarrow: pyarrow's stream uploads in chunked parts, which S3-compatible
        stores such as Ceph RGW refuse without a Content-Length.)"""
        assert self.fs is not None, "a local dataset's files are written by the caller"
        import boto3  # only a loader writing a watermark needs it

        bucket, _, prefix = self.base.partition("/")
        endpoint = os.environ.get("AFFISE_EVENTS_S3_ENDPOINT")
        client = boto3.client(
            "s3",
            endpoint_url=endpoint
            if endpoint is None or "://" in endpoint
            else f"https://{endpoint}",
            region_name=os.environ.get("AFFISE_EVENTS_S3_REGION") or None,
        )
        key = "/".join(part for part in (prefix, name) if part)
        client.put_object(Bucket=bucket, Key=key, Body=text.encode("utf-8"))

    def arrow_dataset(self, files: list[str]) -> pads.Dataset:
        """The files as one Arrow dataset DuckDB scans with its filters pushed down: row
        groups are skipped by their statistics, and each file's footer is read once."""
        assert self.fs is not None
        parquet = pads.ParquetFileFormat(
            default_fragment_scan_options=pads.ParquetFragmentScanOptions(pre_buffer=True)
        )
        try:
            dataset = pads.dataset(files, filesystem=self.fs, format=parquet)
            for fragment in dataset.get_fragments():
                fragment.ensure_complete_metadata()
        except OSError as exc:
            raise DatasetUnreadable(f"events dataset {self.uri}: {exc}") from exc
        return dataset
