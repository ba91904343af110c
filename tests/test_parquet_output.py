"""`format: parquet`: the same windows and keys (`.parquet`), typed columns, deterministic
bytes on every path, read back from the real S3 server by DuckDB and pyarrow and compared
with the source."""

import hashlib
import io
import json
import re
from datetime import datetime
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from affise_s3_assets.config import ConfigError
from affise_s3_assets.config.apply import parse_integrations
from affise_s3_assets.encoding.parquet import ROW_GROUP_ROWS, ParquetEncoder
from affise_s3_assets.source.event_types import EVENT_COLUMNS
from tests.conftest import ROOT, S3Server
from tests.delivered import (
    deliver,
    export_asset,
    fetch,
    integration,
    keys_in,
    range_tags,
    readme_manifest_check,
)
from tests.json_schema import problems

PARQUET = "      format: parquet\n      manifest: true\n"


def source_table(events_db: Path, event_type: str, start: datetime, end: datetime) -> pa.Table:
    """The window's rows straight from the source, timestamps as UTC instants (updates: the
    conversions whose updated_at is in the window)."""
    table, at = (
        ("conversions", "updated_at")
        if event_type == "conversion_updates"
        else (event_type, "created_at")
    )
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"ATTACH '{events_db}' AS src (READ_ONLY)")
    types = dict(
        con.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_catalog = 'src' AND table_name = $1",
            [table],
        ).fetchall()
    )
    select = ", ".join(
        f"{c}::TIMESTAMPTZ AS {c}" if types[c] == "TIMESTAMP" else c
        for c in EVENT_COLUMNS[event_type]
    )
    return con.sql(
        f"SELECT {select} FROM src.{table} WHERE {at} >= $1 AND {at} < $2 ORDER BY {at}, id",
        params=[start, end],
    ).to_arrow_table()


@pytest.mark.parametrize("event_type", ["clicks", "conversions", "conversion_updates"])
def test_a_parquet_window_holds_the_sources_rows_typed(
    s3_server: S3Server, bucket: str, customer_env: dict, events_db: Path, event_type: str
) -> None:
    acme = integration(s3_server, bucket, event_type, extra=PARQUET)
    result = deliver(export_asset(acme), "2026-11-25-10:00", events_db)
    ((_, materialization),) = result.all_materializations()
    data_key, manifest_key = keys_in(s3_server, bucket)
    assert data_key == "affise/raw/2026/11/25/2026-11-25 10:00:00.parquet"
    data = fetch(s3_server, bucket, data_key)
    window = (datetime(2026, 11, 25, 10), datetime(2026, 11, 25, 11))
    expected = source_table(events_db, event_type, *window)
    assert expected.num_rows > 0

    # pyarrow: the documented types, every value equal to the source's.
    table = pq.read_table(io.BytesIO(data))
    assert table.column_names == list(EVENT_COLUMNS[event_type])
    assert table.schema.field("created_at").type == pa.timestamp("us", tz="UTC")
    if event_type != "clicks":
        assert table.schema.field("payouts").type == pa.decimal128(18, 4)
        assert table.schema.field("click_time").type == pa.timestamp("us", tz="UTC")
    else:
        assert table.schema.field("uniq").type == pa.bool_()
    assert table.schema.field("affiliate_id").type == pa.int32()
    assert table.equals(expected.cast(table.schema))
    assert pq.ParquetFile(io.BytesIO(data)).metadata.row_group(0).column(0).compression == "ZSTD"

    # DuckDB reads the same rows back.
    path = Path(f"/tmp/affise-parquet-{event_type}-{bucket}.parquet")
    path.write_bytes(data)
    try:
        con = duckdb.connect()
        con.execute("SET TimeZone = 'UTC'")
        read_back = con.execute(f"SELECT * FROM read_parquet('{path}')").fetchall()
        assert read_back == [tuple(row.values()) for row in expected.to_pylist()]
    finally:
        path.unlink()

    manifest = json.loads(fetch(s3_server, bucket, manifest_key))
    schema = json.loads((ROOT / "docs" / "manifest.schema.json").read_text())
    assert problems(manifest, schema) == []
    assert manifest["object"]["format"] == "parquet"
    assert manifest["object"]["compression"] == "zstd"
    assert manifest["object"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert manifest["rows"] == expected.num_rows == materialization.metadata["rows"].value
    # The customer contract's check (docs/customer-contract.md) reads Parquet days too.
    check = readme_manifest_check(bucket, "affise/raw/2026/11/25/")
    exec(check, {"CLIENT": s3_server.client()})


def test_parquet_bytes_depend_on_the_rows_alone_not_on_the_run(
    s3_server: S3Server, bucket: str, customer_env: dict, events_db: Path, monkeypatch
) -> None:
    """A window delivered on its own and inside a day's range gives the same bytes, with row
    groups of exactly ROW_GROUP_ROWS rows whatever the batches (shrunk here to see several)."""
    monkeypatch.setattr("affise_s3_assets.encoding.parquet.ROW_GROUP_ROWS", 97)
    acme = integration(s3_server, bucket, "clicks", extra="      format: parquet\n")
    asset = export_asset(acme)
    key = "affise/raw/2026/11/25/2026-11-25 10:00:00.parquet"
    deliver(asset, "2026-11-25-10:00", events_db)
    alone = fetch(s3_server, bucket, key)
    deliver(asset, None, events_db, tags=range_tags("2026-11-25-00:00", "2026-11-25-23:00"))
    assert fetch(s3_server, bucket, key) == alone
    groups = pq.ParquetFile(io.BytesIO(alone)).metadata
    sizes = [groups.row_group(i).num_rows for i in range(groups.num_row_groups)]
    assert len(sizes) > 2 and set(sizes[:-1]) == {97} and 0 < sizes[-1] <= 97
    assert ROW_GROUP_ROWS == 16_384  # the real size is the module's own


def test_parquet_refuses_a_gzip_level() -> None:
    text = """
integrations:
  - name: acme
    start: "2026-11-24 00:00:00"
    clicks:
      bucket: b-parquet
      region: us-west-2
      access_key: ${ACME_AWS_ACCESS_KEY_ID}
      secret_key: ${ACME_AWS_SECRET_ACCESS_KEY}
      format: parquet
      compression_level: 6
"""
    with pytest.raises(ConfigError, match="integration 'acme': clicks: compression_level"):
        parse_integrations(text)


def test_parquet_bytes_do_not_depend_on_how_the_rows_were_batched() -> None:
    """150,000 rows (ten row groups) fed whole, in 25,000s and in 1,000s: the same bytes
    (polars cuts pages at chunk boundaries, so the encoder must not pass its batches on)."""
    rows = 150_000
    frame = pl.DataFrame(
        # Varied text: dictionary pages then fill unevenly, which is where batches showed.
        {
            name: [f"{name}-{i * 7919 % 100_003}" for i in range(rows)]
            for name in EVENT_COLUMNS["conversions"]
        }
    ).with_columns(
        pl.datetime(2026, 11, 25, 10).alias("created_at"),
        pl.lit(None, pl.Datetime("us")).alias("updated_at"),
        pl.lit(None, pl.Datetime("us")).alias("click_time"),
        (pl.int_range(rows) % 50).cast(pl.Int32).alias("affiliate_id"),
        pl.int_range(rows).cast(pl.Int32).alias("offer_id"),
        pl.lit("1.2345").cast(pl.Decimal(18, 4)).alias("payouts"),
        pl.lit(None, pl.Decimal(18, 4)).alias("revenue"),
    )

    def encoded(batch: int) -> bytes:
        encoder = ParquetEncoder("conversions", EVENT_COLUMNS["conversions"])
        out = b""
        for offset in range(0, rows, batch):
            part = frame.slice(offset, batch)
            out += b"".join(encoder.add(part.height, part))
        return out + encoder.finish()

    whole = encoded(rows)
    assert encoded(25_000) == whole and encoded(1_000) == whole
    assert pq.ParquetFile(io.BytesIO(whole)).metadata.num_row_groups == -(-rows // ROW_GROUP_ROWS)


@pytest.mark.parametrize(
    ("column", "values", "words"),
    [
        ("affiliate_id", pl.Series([7.0, 1.5]), "Float64 values that Int32 cannot hold exactly"),
        ("payouts", pl.Series([0.5, 0.12345]), "e.g. 0.12345"),
        (
            "payouts",
            pl.Series(["1.2345", "1.23456"]).cast(pl.Decimal(38, 10)),
            "Decimal(precision=18, scale=4) cannot hold exactly",
        ),
        ("uniq", pl.Series(["true", "maybe"]), "e.g. 'maybe'"),
    ],
)
def test_a_value_the_file_cannot_hold_exactly_is_refused_never_rounded(
    column: str, values: pl.Series, words: str
) -> None:
    """A source (a Parquet dataset keeps its own types) holding a value the file's type cannot
    hold: the object fails naming the column and the value, rather than rounding it."""
    columns = ("created_at", "affiliate_id", "uniq", "payouts")
    frame = pl.DataFrame(
        {
            "created_at": [datetime(2026, 11, 25, 10)] * 2,
            "affiliate_id": [7, 8],
            "uniq": ["TRUE", "0"],
            "payouts": pl.Series(["1.5", None]).cast(pl.Decimal(18, 4)),
        }
    )
    encoder = ParquetEncoder("conversions", columns)
    # The same types, every value exact: text booleans as pyarrow reads them.
    whole = b"".join(encoder.add(2, frame)) + encoder.finish()
    assert pq.read_table(io.BytesIO(whole)).column("uniq").to_pylist() == [True, False]
    wrong = frame.with_columns(values.alias(column))
    with pytest.raises(ValueError, match=f"column '{column}'.*{re.escape(words)}"):
        list(ParquetEncoder("conversions", columns).add(2, wrong))
