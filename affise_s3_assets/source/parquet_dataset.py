"""Where a Hive-partitioned Parquet events dataset lives: a local folder or an `s3://` prefix
(`<table>/date=YYYY-MM-DD/*.parquet`, `_watermarks.json` at the root).

An `s3://` dataset is read through pyarrow's S3 filesystem, with the deployment's own
credentials: the standard AWS chain (environment, web identity, instance profile), plus
AFFISE_EVENTS_S3_ENDPOINT / AFFISE_EVENTS_S3_REGION for an S3-compatible store. Never an
integration's: those are resolved only by the delivery (s3.py). Nothing here downloads a
DuckDB extension or lists more than the folders a window names.

A window's objects are staged, not streamed: each object's footer is read, and only the row
groups whose statistics can hold the window are fetched, at their own offsets, into a local
sparse copy of the object that DuckDB's own Parquet reader then reads as it reads a local
dataset (the same bytes out, the same row-group skipping). Reading the objects through an
Arrow dataset instead re-fetched a row group for every slice of it (3.4x the local time for a
one-day window); benchmarks/run_benchmarks.py prints both datasets side by side.

Knows files and object keys; nothing of windows, DuckDB queries or delivery.
"""

import functools
import hashlib
import json
import os
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from affise_s3_assets.source import is_remote


class DatasetUnreadable(OSError):
    """The dataset's store cannot be read (bucket gone, access denied, endpoint down): its
    windows fail with this reason and are tried again; never taken for "no events"."""


def events_s3_filesystem() -> pafs.S3FileSystem:
    """The deployment's S3 filesystem for the events (read at run time, never at import):
    one per process and setting, so credentials are resolved once, not at every poll."""
    # Environment credentials changed (rotated) give a new one: the chain reads them once.
    chain = hashlib.sha256(
        "|".join(os.environ.get(name, "") for name in CHAIN_VARIABLES).encode()
    ).hexdigest()
    return _filesystem(
        os.environ.get("AFFISE_EVENTS_S3_ENDPOINT"),
        os.environ.get("AFFISE_EVENTS_S3_REGION"),
        chain,
    )


# The standard chain's environment variables, whose values a filesystem is built with.
CHAIN_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")


@functools.lru_cache(maxsize=4)
def _filesystem(endpoint: str | None, region: str | None, chain: str) -> pafs.S3FileSystem:
    options: dict[str, object] = {
        # Connect fails fast and is retried by the caller's next poll; a read may be slow.
        "connect_timeout": 5,
        "request_timeout": 60,
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=5),
    }
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
        # A session of its own: boto3's default one keeps the first credentials it resolved
        # for the process, where the chain's environment may have been rotated since.
        client = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint
            if endpoint is None or "://" in endpoint
            else f"https://{endpoint}",
            region_name=os.environ.get("AFFISE_EVENTS_S3_REGION") or None,
        )
        key = "/".join(part for part in (prefix, name) if part)
        client.put_object(Bucket=bucket, Key=key, Body=text.encode("utf-8"))

    def _footer(self, source: pa.NativeFile) -> tuple[bytes, pq.FileMetaData]:
        """An object's tail holding its footer (one read, two for a large footer), parsed."""
        size = source.size()
        tail = source.read_at(min(size, FOOTER_GUESS), size - min(size, FOOTER_GUESS))
        footer = int.from_bytes(tail[-8:-4], "little") + 8
        if footer > len(tail):
            tail = source.read_at(footer, size - footer)
        return tail, pq.read_metadata(pa.BufferReader(b"PAR1" + tail[-footer:]))

    def stage(
        self, files: list[str], column: str, start: datetime, end: datetime, into: Path
    ) -> list[str]:
        """Local sparse copies of `files` holding their footers and every row group whose
        `column` statistics can hold a value in [start, end) (naive UTC) or that has none:
        the only row groups a DuckDB query filtering `column` to that range reads. Bytes
        never fetched read as zeros, which no Parquet page decodes from: a read of them fails
        loudly, never as rows."""
        assert self.fs is not None
        staged = []
        low, high = _micros(start), _micros(end)

        def wanted(first: int | None, last: int | None) -> bool:
            return _overlaps(first, last, low, high)

        try:
            for number, path in enumerate(files):
                local = into / f"{number:05d}.parquet"
                with self.fs.open_input_file(path) as source, open(local, "wb") as copy:
                    size = source.size()
                    tail, meta = self._footer(source)
                    copy.truncate(size)
                    os.pwrite(copy.fileno(), tail, size - len(tail))
                    for first, last in _ranges(meta, column, wanted):
                        # A bounded piece at a time: a day's row groups are one range.
                        for at in range(first, last, COPY_BYTES):
                            piece = source.read_at(min(COPY_BYTES, last - at), at)
                            os.pwrite(copy.fileno(), piece, at)
                staged.append(str(local))
        except OSError as exc:
            raise DatasetUnreadable(f"events dataset {self.uri}: {exc}") from exc
        return staged

    def latest(self, files: list[str], column: str, horizon: datetime) -> datetime | None:
        """The latest `column` value at or before `horizon` in `files`: from the footers'
        statistics where a row group is wholly at or before it, from the column's own values
        (that column only) where one straddles it or has no statistics."""
        assert self.fs is not None
        limit = _micros(horizon)
        best: int | None = None
        try:
            for path in files:
                with self.fs.open_input_file(path) as source:
                    _, meta = self._footer(source)
                    index = meta.schema.names.index(column)
                    unsure = []
                    for number in range(meta.num_row_groups):
                        low, high = _bounds(meta, number, index)
                        if low is not None and high is not None and high <= limit:
                            best = high if best is None else max(best, high)
                        elif low is None or high is None or low <= limit:
                            unsure.append(number)
                    if unsure:
                        values = pq.ParquetFile(source).read_row_groups(unsure, columns=[column])
                        found = _latest_value(values.column(column), limit)
                        if found is not None:
                            best = found if best is None else max(best, found)
        except OSError as exc:
            raise DatasetUnreadable(f"events dataset {self.uri}: {exc}") from exc
        return None if best is None else EPOCH + timedelta(microseconds=best)


# The footer's usual size at most: one read of an object's end holds it (else a second read).
FOOTER_GUESS = 64 * 1024
# Staged a piece at a time: memory stays this, whatever the window's row groups.
COPY_BYTES = 8 * 1024 * 1024
EPOCH = datetime(1970, 1, 1)
# Microseconds per unit of a Parquet timestamp: values are compared as whole microseconds.
_UNITS = {"milliseconds": (1000, 1), "microseconds": (1, 1), "nanoseconds": (1, 1000)}


def _micros(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(microseconds=1)


def _bounds(meta: pq.FileMetaData, number: int, index: int) -> tuple[int | None, int | None]:
    """A row group's min and max of a timestamp column in microseconds since the epoch (UTC
    or naive alike), floored; None where its statistics do not say."""
    statistics = meta.row_group(number).column(index).statistics
    if statistics is None or not statistics.has_min_max or statistics.physical_type != "INT64":
        return None, None
    kind = json.loads(meta.schema.column(index).logical_type.to_json())
    times, per = _UNITS.get(kind.get("timeUnit", ""), (0, 0))
    if kind.get("Type") != "Timestamp" or not times:
        return None, None
    low, high = statistics.min_raw, statistics.max_raw
    return low * times // per, high * times // per


def _overlaps(low: int | None, high: int | None, start: int, end: int) -> bool:
    """Whether a row group whose floored bounds are these may hold a value in [start, end):
    a floored max below start means every value is; a floored min at or past end too."""
    if low is None or high is None:
        return True
    return not (high < start or low >= end)


def _latest_value(values: pa.ChunkedArray, limit: int) -> int | None:
    """The greatest value at or before `limit` (microseconds), floored to microseconds."""
    import pyarrow.compute as pc  # only a dataset without a watermark needs it

    micros = pc.cast(pc.cast(values, pa.timestamp("us", tz=values.type.tz)), pa.int64())
    kept = pc.filter(micros, pc.less_equal(micros, limit))
    found = pc.max(kept).as_py() if len(kept) else None
    return found


def _chunk_start(chunk: pq.ColumnChunkMetaData) -> int:
    # Some writers say a dictionary page is at offset 0: its data pages are where it starts.
    if chunk.has_dictionary_page and chunk.dictionary_page_offset:
        return chunk.dictionary_page_offset
    return chunk.data_page_offset


def _ranges(
    meta: pq.FileMetaData, column: str, keep: Callable[[int | None, int | None], bool]
) -> list[tuple[int, int]]:
    """Byte ranges of the row groups whose `column` bounds (`_bounds`) `keep` takes, merged."""
    index = meta.schema.names.index(column)
    ranges: list[tuple[int, int]] = []
    for number in range(meta.num_row_groups):
        if not keep(*_bounds(meta, number, index)):
            continue
        group = meta.row_group(number)
        chunks = [group.column(i) for i in range(group.num_columns)]
        first = min(_chunk_start(chunk) for chunk in chunks)
        last = max(_chunk_start(chunk) + chunk.total_compressed_size for chunk in chunks)
        if ranges and first <= ranges[-1][1]:
            ranges[-1] = (ranges[-1][0], max(ranges[-1][1], last))
        else:
            ranges.append((first, last))
    return ranges
