"""The integrations file: its rules (schema.py), reading it (schema.py's `load_integrations`),
applying it with broken blocks left out (schema.py's `apply_integrations`), and what it turns
into: the exports and window groups (targets.py) and each frequency's windows (windows.py).

Knows nothing of DuckDB, S3 requests or Dagster's runs."""
