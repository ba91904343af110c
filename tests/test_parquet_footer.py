"""The Parquet objects' footers (encoding/parquet_footer.py) and the joined files they make,
read back by three independent readers: pyarrow, DuckDB and polars."""

import io
from datetime import datetime
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from affise_s3_assets.encoding import parquet
from affise_s3_assets.encoding.parquet import ParquetEncoder
from affise_s3_assets.encoding.parquet_footer import (
    GROUP_ORDINAL,
    FooterError,
    field,
    footer_bytes,
    row_groups,
    split_file,
)
from affise_s3_assets.source.event_types import EVENT_COLUMNS


def _footer(data: bytes) -> bytes:
    length = int.from_bytes(data[-8:-4], "little")
    return data[-8 - length : -8]


def _clicks(rows: int) -> pl.DataFrame:
    """Clicks with every kind of column their files type (text, an instant, integers, a
    boolean), NULLs and empty strings among them."""
    columns = EVENT_COLUMNS["clicks"]
    frame = pl.DataFrame(
        {name: [f"{name}-{i * 7919 % 10_007}" for i in range(rows)] for name in columns}
    )
    return frame.with_columns(
        (pl.datetime(2026, 11, 25) + pl.duration(seconds=pl.int_range(rows))).alias("created_at"),
        (pl.int_range(rows) % 97).cast(pl.Int64).alias("affiliate_id"),
        pl.when(pl.int_range(rows) % 5 == 0).then(None).otherwise(7).alias("offer_id"),
        pl.when(pl.int_range(rows) % 3 == 0).then(None).otherwise(11).alias("landing_id"),
        pl.when(pl.int_range(rows) % 7 == 0)
        .then(None)
        .otherwise(pl.int_range(rows) % 2 == 0)
        .alias("uniq"),
        pl.when(pl.int_range(rows) % 4 == 0)
        .then(pl.lit(""))
        .when(pl.int_range(rows) % 4 == 1)
        .then(None)
        .otherwise(pl.col("sub1"))
        .alias("sub1"),
    ).select(columns)


def _encoded(frame: pl.DataFrame, batch: int) -> bytes:
    encoder = ParquetEncoder("clicks", EVENT_COLUMNS["clicks"])
    out = b""
    for offset in range(0, frame.height, batch):
        part = frame.slice(offset, batch)
        out += b"".join(encoder.add(part.height, part))
    return out + encoder.finish()


def test_footers_written_back_are_the_bytes_read() -> None:
    """Footers of pyarrow's and of polars' files (booleans, lists, nested structs, statistics,
    key-value metadata) go through the reader and writer byte for byte."""
    files = []
    table = pa.table(
        {"a": [1, None, 3], "s": ["x", None, ""], "b": [True, False, None], "f": [0.5, 1.5, None]}
    )
    for codec in ("zstd", "snappy", "none"):
        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression=codec, write_page_index=True)
        files.append(buffer.getvalue())
    for frame in (pl.from_arrow(table), _clicks(1_000)):
        buffer = io.BytesIO()
        frame.write_parquet(buffer, statistics="full")  # type: ignore[union-attr]
        files.append(buffer.getvalue())
    for data in files:
        _, footer = split_file(data)
        assert footer_bytes(footer) == _footer(data)


def test_a_joined_object_reads_the_same_with_pyarrow_duckdb_and_polars(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Row groups written apart and joined: each reader finds every row, in order, in row
    groups of exactly ROW_GROUP_ROWS rows at the places the footer says."""
    monkeypatch.setattr(parquet, "ROW_GROUP_ROWS", 1_000)
    frame = _clicks(4_321)
    data = _encoded(frame, 777)
    path = tmp_path / "joined.parquet"
    path.write_bytes(data)
    meta = pq.ParquetFile(path).metadata
    assert meta.num_rows == 4_321 and meta.num_row_groups == 5
    assert [meta.row_group(i).num_rows for i in range(5)] == [1_000] * 4 + [321]
    for i in range(5):
        column = meta.row_group(i).column(0)
        assert 4 <= column.data_page_offset < len(data) - len(_footer(data))
    # Each row group is numbered by its place in the object, not in the file it came from.
    groups = row_groups(split_file(data)[1])
    assert [field(group, GROUP_ORDINAL).value for group in groups] == list(range(5))  # type: ignore[union-attr]
    expected = parquet._typed(frame, parquet.parquet_schema(frame.columns))
    # pyarrow reads every row group at the offsets the footer gives, checking each page.
    assert pl.from_arrow(pq.read_table(path)).equals(expected)  # type: ignore[union-attr]
    assert pl.read_parquet(path).equals(expected)
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        read = con.sql(f"SELECT * FROM read_parquet('{path}')").pl()
    assert read.height == 4_321
    assert read["id"].to_list() == expected["id"].to_list()
    assert read["created_at"].to_list() == expected["created_at"].to_list()
    # The file says nothing of polars' in-memory types: readers take the Parquet types.
    assert meta.metadata is None


def test_an_object_of_no_rows_is_a_parquet_file_of_its_schema() -> None:
    data = ParquetEncoder("clicks", EVENT_COLUMNS["clicks"]).finish()
    table = pq.read_table(io.BytesIO(data))
    assert table.num_rows == 0 and table.column_names == list(EVENT_COLUMNS["clicks"])
    assert table.schema.field("created_at").type == pa.timestamp("us", tz="UTC")
    assert pq.ParquetFile(io.BytesIO(data)).metadata.num_row_groups == 0


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"PAR1", "not a Parquet file"),
        (b"PAR1" + b"\x00" * 4 + (9).to_bytes(4, "little") + b"PAR1", "longer than its file"),
        (b"PAR1" + b"\x15" + (1).to_bytes(4, "little") + b"PAR1", "ends early"),
    ],
)
def test_bytes_that_are_no_footer_are_refused_with_a_reason(data: bytes, words: str) -> None:
    with pytest.raises(FooterError, match=words):
        split_file(data)


def test_timestamps_with_a_zone_are_the_same_instants_in_utc() -> None:
    """A source storing instants with a zone gives the instants, in UTC."""
    frame = _clicks(10).with_columns(
        pl.col("created_at").dt.replace_time_zone("UTC").dt.convert_time_zone("Asia/Tokyo")
    )
    table = pq.read_table(io.BytesIO(_encoded(frame, 10)))
    assert table.column("created_at").to_pylist()[0] == datetime(
        2026, 11, 25, tzinfo=table.column("created_at").to_pylist()[0].tzinfo
    )
    assert str(table.schema.field("created_at").type.tz) == "UTC"
