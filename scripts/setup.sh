#!/bin/bash
# Installs everything this project needs on a fresh machine: uv, the locked Python environment
# (.venv, from uv.lock) and the Ceph RGW packages behind the local S3 server. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v uv >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check uv
fi
# The machine's own CPython; never a downloaded interpreter.
UV_PYTHON_DOWNLOADS=never uv sync --frozen --quiet
bash scripts/s3-server.sh install
