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
from hypothesis import given, settings
from hypothesis import strategies as st

from affise_s3_assets.encoding import parquet, parquet_footer
from affise_s3_assets.encoding.parquet import ParquetEncoder
from affise_s3_assets.encoding.parquet_footer import (
    GROUP_ORDINAL,
    Field,
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
    groups of exactly ROW_GROUP_ROWS rows at the places the footer says, and the footer says
    nothing of the page indexes that were in the files the row groups were written in."""
    monkeypatch.setattr(parquet, "ROW_GROUP_ROWS", 1_000)
    frame = _clicks(4_321)
    data = _encoded(frame, 777)
    path = tmp_path / "joined.parquet"
    path.write_bytes(data)
    meta = pq.ParquetFile(path).metadata
    assert meta.num_rows == 4_321 and meta.num_row_groups == 5
    assert [meta.row_group(i).num_rows for i in range(5)] == [1_000] * 4 + [321]
    # The column chunks lie one after the other from the magic on, as the footer says (each
    # followed by a copy of its metadata, as polars writes it), and no page index is left
    # pointing into the files they were written in.
    end = 4
    for i in range(meta.num_row_groups):
        group = meta.row_group(i)
        for j in range(group.num_columns):
            chunk = group.column(j)
            dictionary = chunk.dictionary_page_offset
            start = min(chunk.data_page_offset, dictionary or chunk.data_page_offset)
            assert end <= start <= end + 256
            assert not chunk.has_offset_index and not chunk.has_column_index
            end = start + chunk.total_compressed_size
    assert end <= len(data) - len(_footer(data)) - 8 <= end + 256
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


_SCALARS = {
    parquet_footer._I16: st.integers(-(2**15), 2**15 - 1),
    parquet_footer._I32: st.integers(-(2**31), 2**31 - 1),
    parquet_footer._I64: st.integers(-(2**63), 2**63 - 1),
    parquet_footer._BINARY: st.binary(max_size=40),
    parquet_footer._BYTE: st.integers(0, 255),
}


def _structs() -> st.SearchStrategy[list[Field]]:
    """Thrift structs of every type a Parquet footer holds: ids in order with gaps past 15,
    bool fields, lists of fewer and of more than 14 items, structs in structs."""

    def struct_of(values: st.SearchStrategy[tuple[int, object]]) -> st.SearchStrategy:
        gaps = st.lists(st.integers(1, 40), max_size=6)
        return st.builds(
            lambda steps, items: [
                Field(sum(steps[: i + 1]), kind, value)
                for i, (kind, value) in enumerate(items[: len(steps)])
            ],
            gaps,
            st.lists(values, min_size=6, max_size=6),
        )

    scalar = st.one_of(
        st.sampled_from([(parquet_footer._TRUE, None), (parquet_footer._FALSE, None)]),
        *[value.map(lambda v, k=kind: (k, v)) for kind, value in _SCALARS.items()],
    )
    return st.recursive(
        struct_of(scalar),
        lambda inner: struct_of(
            st.one_of(
                scalar,
                inner.map(lambda fields: (parquet_footer._STRUCT, fields)),
                st.lists(inner, max_size=3).map(
                    lambda items: (parquet_footer._LIST, (parquet_footer._STRUCT, items))
                ),
                st.lists(_SCALARS[parquet_footer._I64], max_size=20).map(
                    lambda items: (parquet_footer._LIST, (parquet_footer._I64, items))
                ),
            )
        ),
        max_leaves=12,
    )


@settings(max_examples=300, deadline=None)
@given(_structs())
def test_any_struct_written_reads_back_as_it_was(fields: list[Field]) -> None:
    written = footer_bytes(fields)
    reader = parquet_footer._Reader(written)
    assert reader.struct() == fields and reader.at == len(written)


@pytest.mark.parametrize("size", [0, 14, 15, 16, 200])
def test_lists_on_both_sides_of_the_short_header_read_back(size: int) -> None:
    """A list header holds up to 14 items' count itself; from 15 on, the count follows it."""
    fields = [Field(1, parquet_footer._LIST, (parquet_footer._I32, list(range(-size, 0))))]
    written = footer_bytes(fields)
    assert parquet_footer._Reader(written).struct() == fields
