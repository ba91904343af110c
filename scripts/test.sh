#!/bin/bash
# The test command: sets up, then runs the whole suite. The suite starts its own S3 server
# (scripts/s3-server.sh, on ports 7481/6790) and builds its own DuckDB files.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
exec .venv/bin/python -m pytest "$@"
