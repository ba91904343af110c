"""The Parquet format: polars frames in, deterministic Parquet chunks out, a row group at a
time. Knows neither DuckDB nor S3 (which columns are typed, and how, is
source/event_types.py's TYPED_COLUMNS); the CSV format is encoding/csv_gzip.py's.

Columns are typed as the source declares them (schema.sql): timestamps as UTC instants with
microseconds, decimals as DECIMAL(18,4), integers, booleans and text as themselves. Row groups
hold exactly ROW_GROUP_ROWS rows (the last one fewer), whatever the batches they came in, so
the same rows give the same bytes on any path; one row group is held in memory per object.
"""

import functools
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import polars as pl

from affise_s3_assets.config.schema import EventType
from affise_s3_assets.source.event_types import TYPED_COLUMNS

# pyarrow (~26 MB of a process's RSS) is imported once an encoder is made: the definitions
# and a CSV export never load it (tests/test_definitions.py).
if TYPE_CHECKING:
    import pyarrow as pa

ROW_GROUP_ROWS = 65_536
COMPRESSION = "zstd"
COMPRESSION_LEVEL = 3


@functools.cache
def _arrow_types() -> "dict[str, pa.DataType]":
    """The source DDL's typed columns (source.TYPED_COLUMNS) as Arrow types; the rest is text."""
    import pyarrow as pa

    return {
        "instant": pa.timestamp("us", tz="UTC"),
        "integer": pa.int32(),
        "boolean": pa.bool_(),
        "decimal": pa.decimal128(18, 4),
    }


def parquet_schema(columns: Sequence[str]) -> "pa.Schema":
    """The file's schema: every column nullable, typed as in the source, text otherwise."""
    import pyarrow as pa

    types = _arrow_types()
    return pa.schema(
        [pa.field(name, types.get(TYPED_COLUMNS.get(name, ""), pa.string())) for name in columns]
    )


def _typed(frame: pl.DataFrame, schema: "pa.Schema") -> "pa.Table":
    """The frame as the file's types: naive timestamps are UTC (the source's convention)."""
    import pyarrow as pa

    instant = _arrow_types()["instant"]
    columns = []
    for field in schema:
        series = frame[field.name]
        if field.type == instant:
            dtype = series.dtype
            zoned = isinstance(dtype, pl.Datetime) and dtype.time_zone is not None
            series = (
                series.dt.convert_time_zone("UTC")
                if zoned
                else series.cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
            )
            series = series.dt.cast_time_unit("us")
        columns.append(series.to_arrow().cast(field.type))
    return pa.Table.from_arrays(columns, schema=schema)


class _Drain:
    """A write-only file for ParquetWriter whose written bytes are taken as they come."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self.closed = False
        self.written = 0

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self._chunks.append(chunk)
        self.written += len(chunk)
        return len(chunk)

    def flush(self) -> None:
        pass

    def tell(self) -> int:
        return self.written

    def close(self) -> None:
        self.closed = True

    def take(self) -> bytes:
        data, self._chunks = b"".join(self._chunks), []
        return data


class ParquetEncoder:
    """One object's Parquet bytes, fed frame by frame (in the window's order)."""

    file_format = "parquet"
    compression = COMPRESSION

    def __init__(self, event_type: EventType, columns: Sequence[str]) -> None:
        import pyarrow.parquet as pq

        self.event_type = event_type
        self.schema = parquet_schema(columns)
        self._drain = _Drain()
        self._writer = pq.ParquetWriter(
            self._drain,
            self.schema,
            compression=COMPRESSION,
            compression_level=COMPRESSION_LEVEL,
            # No pandas or Arrow extras that could vary: the schema is the file's own.
            store_schema=False,
        )
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self.rows = 0

    def add(self, rows: int, frame: pl.DataFrame) -> Iterator[bytes]:
        """Take `frame`'s rows; yields the bytes of every row group completed."""
        if not rows:
            return
        self.rows += rows
        self._pending.append(_typed(frame, self.schema))
        self._pending_rows += rows
        while self._pending_rows >= ROW_GROUP_ROWS:
            pending = _concat(self._pending)
            self._write_group(pending.slice(0, ROW_GROUP_ROWS))
            rest = pending.slice(ROW_GROUP_ROWS)
            self._pending, self._pending_rows = ([rest] if rest.num_rows else []), rest.num_rows
            yield self._drain.take()

    def _write_group(self, table: "pa.Table") -> None:
        # One chunk per column: pyarrow cuts pages at chunk boundaries, which follow the
        # batches the rows came in; combined, the bytes follow the rows alone.
        self._writer.write_table(table.combine_chunks(), row_group_size=ROW_GROUP_ROWS)

    def finish(self) -> bytes:
        if self._pending_rows:
            self._write_group(_concat(self._pending))
            self._pending, self._pending_rows = [], 0
        self._writer.close()
        return self._drain.take()

    def summary(self) -> dict[str, Any]:
        return {"rows": self.rows}


def _concat(tables: "list[pa.Table]") -> "pa.Table":
    import pyarrow as pa

    return pa.concat_tables(tables)
