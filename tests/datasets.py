"""The demo events of a DuckDB file written as a Hive-partitioned Parquet dataset
(`<table>/date=YYYY-MM-DD/*.parquet`), as a loader writes one."""

from pathlib import Path

import duckdb


def write_dataset(
    events_db: Path, root: Path, ordered: bool = False, row_group_size: int | None = None
) -> dict[str, object]:
    """Both tables under `root`, by day of created_at: in time order and in row groups of
    `row_group_size` when given (what lets a window's read skip the others). Returns the
    file's watermarks ({event type: complete until})."""
    root.mkdir(parents=True, exist_ok=True)
    order = " ORDER BY created_at" if ordered else ""
    groups = f", ROW_GROUP_SIZE {row_group_size}" if row_group_size else ""
    with duckdb.connect(str(events_db), read_only=True) as con:
        for table in ("clicks", "conversions"):
            con.execute(
                f"COPY (SELECT *, strftime(created_at, '%Y-%m-%d') AS date FROM {table}{order}) "
                f"TO '{root / table}' (FORMAT parquet, PARTITION_BY (date){groups})"
            )
        marks = con.execute("SELECT event_type, complete_until FROM affise_watermarks")
        return dict(marks.fetchall())
