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
    FooterError,
    Struct,
    chunks_end,
    joined_footer,
    moved,
    only_row_group,
    rows_of,
    schema_only,
    split_file,
)
from affise_s3_assets.source.event_types import TYPED_COLUMNS

# Rows per row group: what an object holds in memory while it is written, against the file's
# size and readers' per-group cost (docs/design.md, "Tuning choices").
ROW_GROUP_ROWS = 16_384
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


# Text a boolean column may hold in a source, as pyarrow's cast reads it.
_BOOLEAN_TEXT = {"true": True, "false": False, "1": True, "0": False}


def _typed(frame: pl.DataFrame, schema: pl.Schema) -> pl.DataFrame:
    """The frame as the file's types: naive timestamps are UTC (the source's convention). A
    value the file's type cannot hold exactly (a fraction in an integer column, a fifth
    decimal place, text that is no boolean) is an error naming the column, never rounded."""
    columns = []
    for name, dtype in schema.items():
        column, current = pl.col(name), frame.schema[name]
        if dtype == _INSTANT:
            zoned = isinstance(current, pl.Datetime) and current.time_zone is not None
            column = (
                column.dt.convert_time_zone("UTC")
                if zoned
                else column.cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
            ).dt.cast_time_unit("us")
        elif dtype == pl.Boolean and current == pl.String:
            text = frame[name].str.to_lowercase()
            _refuse(frame[name], text.is_not_null() & ~text.is_in(list(_BOOLEAN_TEXT)), dtype)
            column = column.str.to_lowercase().replace_strict(_BOOLEAN_TEXT, return_dtype=dtype)
        else:
            column = column.cast(dtype)
        columns.append(column)
    typed = frame.select(columns)
    for name, dtype in schema.items():
        current = frame.schema[name]
        if dtype.is_numeric() and _may_round(current, dtype):
            _refuse(frame[name], ~typed[name].cast(current).eq_missing(frame[name]), dtype)
    return typed


def _may_round(current: pl.DataType, target: pl.DataType) -> bool:
    """Whether polars' cast of `current` to `target` (numeric) may round rather than fail."""
    if current.is_float():
        return True
    if isinstance(current, pl.Decimal):
        return not isinstance(target, pl.Decimal) or (current.scale or 0) > (target.scale or 0)
    return False


def _refuse(values: pl.Series, wrong: pl.Series, dtype: pl.DataType) -> None:
    if wrong.any():
        raise ValueError(
            f"column {values.name!r} holds {values.dtype} values that {dtype} cannot hold "
            f"exactly, e.g. {values.filter(wrong)[0]!r}"
        )


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
        self._groups: list[bytes] = []  # each row group's footer entry, at its place
        self._footer_rows = 0  # the rows the row groups say they hold
        self._head: Struct | None = None  # the first row group's file's footer, schema only
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
            # The group as one chunk per column (a copy when it spans batches, which then go
            # before polars writes it), only the rows after it kept, and the group let go
            # before its bytes are handed on (the consumer may wait on an upload).
            group = pending.slice(0, ROW_GROUP_ROWS).rechunk()
            rest = pending.slice(ROW_GROUP_ROWS)
            del pending
            self._pending, self._pending_rows = ([rest] if rest.height else []), rest.height
            data = self._group(group)
            del group
            yield data

    def _write(self, frame: pl.DataFrame) -> tuple[int, int, Struct]:
        """`frame` written as a Parquet file of its own into this thread's scratch file: its
        descriptor, where its footer starts, and its footer."""
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
        footer_size = int.from_bytes(os.pread(fd, 4, size - 8), "little")
        footer_start = size - 8 - footer_size
        if footer_start < len(MAGIC):
            raise FooterError("a Parquet footer longer than its file")
        _, footer = split_file(MAGIC + os.pread(fd, footer_size + 8, footer_start))
        return fd, footer_start, footer

    def _group(self, frame: pl.DataFrame) -> bytes:
        """The row group's column chunks, where they lie in the object (its magic first);
        the page index that follows them in their own file is left out."""
        fd, footer_start, footer = self._write(frame)
        group = only_row_group(footer)
        end = chunks_end(group, footer_start)
        chunks = os.pread(fd, end - len(MAGIC), len(MAGIC))
        first = self._head is None
        if first:
            self._head = schema_only(footer)
        self._footer_rows += rows_of(group)
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
            self._head = schema_only(self._write(self.schema.to_frame())[2])
            data = MAGIC
        if self._footer_rows != self.rows:
            raise FooterError(f"row groups of {self._footer_rows} rows for {self.rows} rows")
        return data + joined_footer(self._head, self._groups, self._footer_rows)

    def summary(self) -> dict[str, Any]:
        return {"rows": self.rows}
