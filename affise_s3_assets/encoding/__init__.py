"""The file formats: rows in, an object's bytes out (gzipped CSV, csv_gzip.py; Parquet,
parquet.py). Deterministic: the same rows give the same bytes.

Knows neither DuckDB nor S3."""
