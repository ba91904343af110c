#!/bin/bash
# The test command: sets up, then runs the whole suite. The suite starts its own S3 server
# (scripts/s3-server.sh, on ports 7481/6790, and 7491/6780 for the second worker) and builds
# its own DuckDB files.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
# Two workers (pytest-xdist): the end-to-end tests, each in a group of its own, mostly wait for
# windows to close while the rest runs beside them.
exec .venv/bin/python -m pytest -n 2 --dist loadgroup "$@"
