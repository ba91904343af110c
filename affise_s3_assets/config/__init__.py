"""The integrations file: its rules (schema.py), reading its YAML (reading.py), applying it with
broken blocks left out and collisions refused (apply.py), `${VAR}` references resolved only at
delivery (secrets.py), and what it turns into: the exports and window groups (targets.py) and
each frequency's windows (windows.py).

Knows nothing of DuckDB, S3 requests or Dagster's runs.
"""


class ConfigError(ValueError):
    """integrations.yaml is unreadable or breaks a rule; the message says where and which."""
