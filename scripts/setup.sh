#!/bin/bash
# Installs everything this project needs on a fresh machine: uv, the locked Python environment
# (.venv, from uv.lock, with the `deploy` extra through the dev group), the Ceph RGW packages
# behind the local S3 server, Debian's Postgres server (scripts/prod-local.sh) and, for the
# browser tests, Debian's Chromium and playwright-core. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v uv >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check uv
fi
# The machine's own CPython; never a downloaded interpreter. Bytecode is compiled at install:
# where PYTHONDONTWRITEBYTECODE is set, every process (each Dagster run, the code server)
# would otherwise recompile Dagster's sources on import: 3.1 s instead of 1.2 s per import.
UV_PYTHON_DOWNLOADS=never uv sync --frozen --quiet --compile-bytecode
bash scripts/s3-server.sh install
# Postgres for scripts/prod-local.sh (the cluster's engine on this machine) and its test:
# Debian's server packages; the script runs its own cluster on a port of its own.
if ! compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" >/dev/null; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
fi
# The browser tests: Debian's Chromium, driven by playwright-core from the npm lock file (no
# browser download). Only the tests need them; the demo does not.
if [ "${AFFISE_SETUP_BROWSER:-1}" = 1 ]; then
  if ! command -v chromium >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
  fi
  [ -d tests/browser/node_modules/playwright-core ] || npm ci --prefix tests/browser --no-audit --no-fund --silent
fi
