#!/bin/bash
# The main command: sets up, writes demo events, starts a local S3 server with the demo
# customers' accounts and buckets, and runs `dagster dev` with schedules and sensor running.
set -euo pipefail
cd "$(dirname "$0")/.."
AFFISE_SETUP_BROWSER=0 bash scripts/setup.sh

# The allocators: polars' with one arena and no thread caches, glibc's with at most two arenas
# (docs/design.md, "Tuning choices"); every process started from here (code server, daemon,
# run workers) inherits them.
export _RJEM_MALLOC_CONF=${_RJEM_MALLOC_CONF:-narenas:1,tcache:false}
export MALLOC_ARENA_MAX=${MALLOC_ARENA_MAX:-2}
export AFFISE_EVENTS_DB=${AFFISE_EVENTS_DB:-$PWD/data/events.duckdb}
export AFFISE_INTEGRATIONS=${AFFISE_INTEGRATIONS:-$PWD/integrations.yaml}
# A persistent instance, so run history and sensor cursors survive a restart of this script.
export DAGSTER_HOME=${DAGSTER_HOME:-$PWD/.dagster_home}
mkdir -p "$DAGSTER_HOME"
# The demo's dates move to the day this instance first ran (integrations.yaml, `demo:`), so a
# fresh demo has the same backlog on any date. Kept with the instance: its partitions never
# move while its history lasts; a new DAGSTER_HOME starts from its own first day.
[ -s "$DAGSTER_HOME/demo-day" ] || date -u +%F >"$DAGSTER_HOME/demo-day"
export AFFISE_DEMO_DAY=${AFFISE_DEMO_DAY:-$(cat "$DAGSTER_HOME/demo-day")}
.venv/bin/python -m affise_s3_assets.demo --db "$AFFISE_EVENTS_DB" --days 3 \
  --from-integrations "$AFFISE_INTEGRATIONS"

# Demo-only credentials of the two demo customers on the local server (not AWS keys).
export ACME_AWS_ACCESS_KEY_ID=ACMEDEMOACCESSKEY01 ACME_AWS_SECRET_ACCESS_KEY=acme-demo-secret-0001
export GLOBEX_AWS_ACCESS_KEY_ID=GLOBEXDEMOACCESSKEY1 GLOBEX_AWS_SECRET_ACCESS_KEY=globex-demo-secret-01
export S3_DIR=${S3_DIR:-/tmp/affise-s3} RGW_PORT=7480 MON_PORT=${MON_PORT:-6789}
bash scripts/s3-server.sh start >/dev/null
trap 'bash scripts/s3-server.sh stop' EXIT
bash scripts/s3-server.sh adduser acme "$ACME_AWS_ACCESS_KEY_ID" "$ACME_AWS_SECRET_ACCESS_KEY"
bash scripts/s3-server.sh adduser globex "$GLOBEX_AWS_ACCESS_KEY_ID" "$GLOBEX_AWS_SECRET_ACCESS_KEY"
.venv/bin/python - <<'PY'
import os
import boto3

for who, bucket in (("ACME", "acme-affise-raw"), ("GLOBEX", "globex-events")):
    boto3.client(
        "s3",
        endpoint_url="http://127.0.0.1:7480",
        region_name="us-east-1",
        aws_access_key_id=os.environ[f"{who}_AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=os.environ[f"{who}_AWS_SECRET_ACCESS_KEY"],
    ).create_bucket(Bucket=bucket)
    print(f"bucket {bucket} ready on http://127.0.0.1:7480")
PY

# The demo instance's settings are the project's: copied each time, so an instance made by an
# older checkout gets today's (run monitoring, retention, run limits). A DAGSTER_HOME of your
# own keeps its dagster.yaml once it has one.
if [ "$DAGSTER_HOME" = "$PWD/.dagster_home" ] || [ ! -f "$DAGSTER_HOME/dagster.yaml" ]; then
  cp scripts/dagster.dev.yaml "$DAGSTER_HOME/dagster.yaml"
fi
# integrations_config_sensor reloads the code location through the webserver when the file
# changes: saved edits go live with no restart and no click.
export AFFISE_WEBSERVER_URL=${AFFISE_WEBSERVER_URL:-http://127.0.0.1:${DAGSTER_PORT:-3000}}
export AFFISE_STATE_DIR=${AFFISE_STATE_DIR:-$DAGSTER_HOME/affise-state}
echo "Dagster UI: http://127.0.0.1:${DAGSTER_PORT:-3000}  (Ctrl-C stops Dagster and the S3 server)"
.venv/bin/dagster dev -w workspace.yaml -h 127.0.0.1 -p "${DAGSTER_PORT:-3000}"
