"""The demo's events (events.py): a DuckDB file of clicks and conversions for `scripts/dev.sh`,
the tests and the benchmark. Not part of the built wheel (pyproject.toml excludes it): a
deployment reads its own events.

    python -m affise_s3_assets.demo --db data/events.duckdb --days 3
"""
