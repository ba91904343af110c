"""The Parquet format: polars frames in, deterministic Parquet chunks out, a row group at a
time. Knows neither DuckDB nor S3 (which columns are typed, and how, is
source/event_types.py's TYPED_COLUMNS); the CSV format is encoding/csv_gzip.py's.

Columns are typed as the source declares them (schema.sql): timestamps as UTC instants with
microseconds, decimals as DECIMAL(18,4), integers, booleans and text as themselves. Row groups
hold exactly ROW_GROUP_ROWS rows (the last one fewer), whatever the batches they came in, so
the same rows give the same bytes on any path. Each row group is written by polars as a file
of its own, whose column chunks are handed on as they are and whose footer's row group joins
the object's footer (parquet_footer.py): one row group is held in memory per object, and
writing needs no pyarrow (docs/design.md, "Tuning choices").
"""

import io
import os
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import polars as pl

from affise_s3_assets.config.schema import EventType
from affise_s3_assets.encoding.csv_gzip import memory_file
from affise_s3_assets.encoding.parquet_footer import (
    MAGIC,
    Struct,
    joined_footer,
    moved,
    row_groups,
    split_file,
)
from affise_s3_assets.source.event_types import TYPED_COLUMNS

ROW_GROUP_ROWS = 32_768
COMPRESSION = "zstd"
COMPRESSION_LEVEL = 3

_INSTANT = pl.Datetime("us", "UTC")
_TYPES: dict[str, pl.DataType] = {
    "instant": _INSTANT,
    "integer": pl.Int32(),
    "boolean": pl.Boolean(),
    "decimal": pl.Decimal(18, 4),
}


def parquet_schema(columns: Sequence[str]) -> pl.Schema:
    """The file's schema: every column nullable, typed as in the source, text otherwise."""
    return pl.Schema(
        {name: _TYPES.get(TYPED_COLUMNS.get(name, ""), pl.String()) for name in columns}
    )


def _typed(frame: pl.DataFrame, schema: pl.Schema) -> pl.DataFrame:
    """The frame as the file's types: naive timestamps are UTC (the source's convention)."""
    columns = []
    for name, dtype in schema.items():
        column = pl.col(name)
        if dtype == _INSTANT:
            current = frame.schema[name]
            zoned = isinstance(current, pl.Datetime) and current.time_zone is not None
            column = (
                column.dt.convert_time_zone("UTC")
                if zoned
                else column.cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
            ).dt.cast_time_unit("us")
        else:
            column = column.cast(dtype)
        columns.append(column)
    return frame.select(columns)


_THREAD = threading.local()


def _scratch() -> io.FileIO:
    """This thread's in-memory file that row groups are written to, one at a time: polars
    writes to its descriptor off the GIL, and its pages are kept from one row group to the
    next, where a BytesIO grows its memory anew for each."""
    scratch = getattr(_THREAD, "scratch", None)
    if scratch is None:
        scratch = _THREAD.scratch = memory_file("affise-parquet")
    return scratch


class ParquetEncoder:
    """One object's Parquet bytes, fed frame by frame (in the window's order)."""

    file_format = "parquet"
    compression = COMPRESSION

    def __init__(self, event_type: EventType, columns: Sequence[str]) -> None:
        self.event_type = event_type
        self.schema = parquet_schema(columns)
        self._pending: list[pl.DataFrame] = []
        self._pending_rows = 0
        self._groups: list[Struct] = []
        self._head: Struct | None = None  # the first row group's file's footer
        self._size = len(MAGIC)  # the object's bytes so far, the magic included
        self.rows = 0

    def add(self, rows: int, frame: pl.DataFrame) -> Iterator[bytes]:
        """Take `frame`'s rows; yields the bytes of every row group completed."""
        if not rows:
            return
        self.rows += rows
        self._pending.append(_typed(frame, self.schema))
        self._pending_rows += rows
        while self._pending_rows >= ROW_GROUP_ROWS:
            pending = pl.concat(self._pending, rechunk=False)
            yield self._group(pending.slice(0, ROW_GROUP_ROWS))
            rest = pending.slice(ROW_GROUP_ROWS)
            self._pending, self._pending_rows = ([rest] if rest.height else []), rest.height

    def _write(self, frame: pl.DataFrame) -> tuple[bytes, Struct]:
        """`frame` as a Parquet file of its own: its column chunks and its footer."""
        # One chunk per column: polars cuts pages at chunk boundaries, which follow the
        # batches the rows came in; joined, the bytes follow the rows alone.
        target = _scratch()
        fd = target.fileno()
        os.lseek(fd, 0, os.SEEK_SET)
        frame.rechunk().write_parquet(
            target,
            compression=COMPRESSION,
            compression_level=COMPRESSION_LEVEL,
            statistics=True,
            row_group_size=ROW_GROUP_ROWS,
        )
        size = os.lseek(fd, 0, os.SEEK_CUR)
        tail = os.pread(fd, 8, size - 8)
        footer_size = int.from_bytes(tail[:4], "little")
        footer = os.pread(fd, footer_size + 8, size - 8 - footer_size)
        head = os.pread(fd, len(MAGIC), 0)
        _, meta = split_file(head + footer)
        return os.pread(fd, size - 8 - footer_size - len(MAGIC), len(MAGIC)), meta

    def _group(self, frame: pl.DataFrame) -> bytes:
        """The row group's column chunks, where they lie in the object (its magic first)."""
        chunks, footer = self._write(frame)
        first = self._head is None
        if first:
            self._head = footer
        (group,) = row_groups(footer)
        # Its positions were counted from its own file's magic; it follows what came before.
        self._groups.append(moved(group, self._size - len(MAGIC), len(self._groups)))
        self._size += len(chunks)
        return (MAGIC if first else b"") + chunks

    def finish(self) -> bytes:
        data = b""
        if self._pending_rows:
            data = self._group(pl.concat(self._pending, rechunk=False))
            self._pending, self._pending_rows = [], 0
        if self._head is None:
            # No rows: the schema, from the footer of an empty file, and no row group.
            self._head = self._write(self.schema.to_frame())[1]
            data = MAGIC
        return data + joined_footer(self._head, self._groups, self.rows)

    def summary(self) -> dict[str, Any]:
        return {"rows": self.rows}
