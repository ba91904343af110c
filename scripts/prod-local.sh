#!/bin/bash
# The cluster's Dagster engine (docs/scaling.md) on this machine, minus Kubernetes: Postgres
# from Debian's packages for run, event-log and schedule storage, the instance of
# deploy/dagster.yaml (QueuedRunCoordinator and its tag limits, run monitoring, run retries),
# and `dagster code-server start`, `dagster-daemon run` and `dagster-webserver` as separate
# processes, the workspace reaching the code server over gRPC as the chart's does.
#
#   bash scripts/prod-local.sh start                  # Postgres, code server, daemon, webserver
#   bash scripts/prod-local.sh run                    # the same in the foreground; Ctrl-C or
#                                                     # SIGTERM stops it all
#   bash scripts/prod-local.sh status                 # exit 0 only if all four are up
#   bash scripts/prod-local.sh stop [COMPONENT...]    # all by default, webserver first
#   bash scripts/prod-local.sh restart COMPONENT...   # postgres code-server daemon webserver
#   bash scripts/prod-local.sh start COMPONENT...
#   bash scripts/prod-local.sh config                 # writes the instance and workspace only
#
# $DAGSTER_HOME/dagster.yaml is deploy/dagster.yaml with only `run_launcher` replaced: each run
# is a local process started by the code server (DefaultRunLauncher) instead of a Kubernetes
# Job (tests/test_production.py fails on any other difference). Its Postgres fields come from
# the same variables as in the cluster: DAGSTER_PG_USERNAME, DAGSTER_PG_PASSWORD,
# DAGSTER_PG_HOST, DAGSTER_PG_PORT, DAGSTER_PG_DB. Its compute logs (each run's stdout/stderr)
# go to S3 as in the cluster: the bucket AFFISE_COMPUTE_LOGS_BUCKET, with the standard AWS
# chain of this shell (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or a profile, AWS_REGION;
# for an S3-compatible store AWS_ENDPOINT_URL_S3, or the AWS_ENDPOINT_URL that
# `eval "$(bash scripts/s3-server.sh start)"` exports). Customers' deliveries read no AWS_*
# variable (isolated_botocore_session in affise_s3_assets/s3.py).
#
# Settings (environment):
#   AFFISE_COMPUTE_LOGS_BUCKET    required to start: an existing bucket those credentials can
#                                 write, read and list (run logs under dagster/compute-logs/)
#   AFFISE_PROD_HOME              all state: dagster_home/, logs/, pids (default
#                                 .dagster_home/prod-local)
#   AFFISE_PROD_PG_DIR            Postgres cluster directory (default $AFFISE_PROD_HOME/postgres; as root,
#                                 /var/lib/postgresql/affise-prod-local-$DAGSTER_PG_PORT);
#                                 run as root, the `postgres` user must be able to reach it
#   DAGSTER_PG_PORT               Postgres port (default 55432), on 127.0.0.1
#   DAGSTER_PG_USERNAME, DAGSTER_PG_DB  default dagster, dagster
#   DAGSTER_PG_PASSWORD           default: generated once, kept in $AFFISE_PROD_HOME/pg-password
#   AFFISE_PROD_WEBSERVER_PORT    default 3100
#   AFFISE_PROD_CODE_SERVER_PORT  default 3130
#   AFFISE_PROD_START_TIMEOUT     seconds a component may take to come up (default 180)
#   AFFISE_PROD_STOP_TIMEOUT      seconds a component may take to stop; the code server waits
#                                 for its runs to finish (default 120), then all is killed
#   AFFISE_EVENTS_DB, AFFISE_INTEGRATIONS, AFFISE_STATE_DIR and each integration's
#   <NAME>_AWS_ACCESS_KEY_ID / <NAME>_AWS_SECRET_ACCESS_KEY are passed to the code server and
#   so to every run. AFFISE_WEBSERVER_URL defaults to this webserver.
set -euo pipefail
case ${1:-} in
  start | stop | restart | status | run | config) ;;
  *)
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    exit 2
    ;;
esac
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
BIN=$ROOT/.venv/bin

PROD_HOME=${AFFISE_PROD_HOME:-$ROOT/.dagster_home/prod-local}
mkdir -p "$PROD_HOME"
PROD_HOME=$(cd "$PROD_HOME" && pwd)
# As root, Postgres runs as the `postgres` user, which must reach its directory: a checkout
# under a private home (/root is 700) cannot hold it, so it goes where Debian keeps clusters.
if [ "$(id -u)" = 0 ] && [ -z "${AFFISE_PROD_PG_DIR:-}" ]; then
  PG_DIR=/var/lib/postgresql/affise-prod-local-${DAGSTER_PG_PORT:-55432}
else
  PG_DIR=${AFFISE_PROD_PG_DIR:-$PROD_HOME/postgres}
fi
LOGS=$PROD_HOME/logs
PIDS=$PROD_HOME/run
mkdir -p "$LOGS" "$PIDS"
WORKSPACE=$PROD_HOME/workspace.yaml
WEBSERVER_PORT=${AFFISE_PROD_WEBSERVER_PORT:-3100}
CODE_SERVER_PORT=${AFFISE_PROD_CODE_SERVER_PORT:-3130}
START_TIMEOUT=${AFFISE_PROD_START_TIMEOUT:-180}
STOP_TIMEOUT=${AFFISE_PROD_STOP_TIMEOUT:-120}
# The chart names the location after the user deployment (deploy/helm-values.yaml).
LOCATION=affise-s3-assets
MODULE=affise_s3_assets.definitions

export DAGSTER_HOME=$PROD_HOME/dagster_home
export DAGSTER_PG_USERNAME=${DAGSTER_PG_USERNAME:-dagster}
# The instance reaches the Postgres this script runs.
export DAGSTER_PG_HOST=127.0.0.1
export DAGSTER_PG_PORT=${DAGSTER_PG_PORT:-55432}
export DAGSTER_PG_DB=${DAGSTER_PG_DB:-dagster}
if [ -z "${DAGSTER_PG_PASSWORD:-}" ]; then
  if [ ! -s "$PROD_HOME/pg-password" ]; then
    (umask 077 && "$BIN/python" -c 'import secrets; print(secrets.token_urlsafe(24))' \
      >"$PROD_HOME/pg-password")
  fi
  DAGSTER_PG_PASSWORD=$(cat "$PROD_HOME/pg-password")
fi
export DAGSTER_PG_PASSWORD
# The allocators: polars' with one arena and no thread caches, glibc's with at most two arenas
# (docs/design.md, "Tuning choices"); every process started from here (code server, daemon,
# run workers) inherits them.
export _RJEM_MALLOC_CONF=${_RJEM_MALLOC_CONF:-narenas:1,tcache:false}
export MALLOC_ARENA_MAX=${MALLOC_ARENA_MAX:-2}
export AFFISE_EVENTS_DB=${AFFISE_EVENTS_DB:-$ROOT/data/events.duckdb}
export AFFISE_INTEGRATIONS=${AFFISE_INTEGRATIONS:-$ROOT/integrations.yaml}
export AFFISE_STATE_DIR=${AFFISE_STATE_DIR:-$PROD_HOME/affise-state}
export AFFISE_WEBSERVER_URL=${AFFISE_WEBSERVER_URL:-http://127.0.0.1:$WEBSERVER_PORT}
export AFFISE_CODE_LOCATION=$LOCATION

PG_BIN=$(find /usr/lib/postgresql -path '*/bin/pg_ctl' 2>/dev/null | sort -V | tail -n 1 || true)
PG_BIN=${PG_BIN%/pg_ctl}
COMPONENTS=(postgres code-server daemon webserver)

die() { echo "prod-local: $*" >&2; exit 1; }

# Every process but Postgres loads the instance, and so resolves compute_logs' bucket from
# this variable: checked before any of them (all by default) is started or stopped.
need_compute_logs_bucket() {
  [ $# -gt 0 ] || set -- "${COMPONENTS[@]}"
  local name
  for name in "$@"; do
    if [ "$name" != postgres ] && [ -z "${AFFISE_COMPUTE_LOGS_BUCKET:-}" ]; then
      die "AFFISE_COMPUTE_LOGS_BUCKET is not set: the S3 bucket for run logs (compute_logs in deploy/dagster.yaml), reached with the standard AWS chain (AWS_ENDPOINT_URL_S3 for an S3-compatible store)"
    fi
  done
}

log_tail() { [ -f "$1" ] && tail -n 30 "$1" >&2 || true; }

# Postgres refuses to run as root: as root, its commands run as the `postgres` user.
as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

pg_running() { [ -n "$PG_BIN" ] && as_pg "$PG_BIN/pg_ctl" -D "$PG_DIR/data" status >/dev/null 2>&1; }

# The password reaches Postgres tools through the environment, never on a command line.
pg_client() { PGPASSWORD=$DAGSTER_PG_PASSWORD "$@"; }

start_postgres() {
  [ -n "$PG_BIN" ] || die "no Postgres server in /usr/lib/postgresql: bash scripts/setup.sh"
  if [ ! -f "$PG_DIR/data/PG_VERSION" ]; then
    mkdir -p "$PG_DIR"
    chmod 700 "$PG_DIR"
    [ "$(id -u)" != 0 ] || chown postgres: "$PG_DIR"
    as_pg test -w "$PG_DIR" ||
      die "the postgres user cannot write $PG_DIR: set AFFISE_PROD_PG_DIR to a directory it can reach"
    local pwfile=$PG_DIR/initdb-password
    (umask 077 && printf '%s\n' "$DAGSTER_PG_PASSWORD" >"$pwfile")
    [ "$(id -u)" != 0 ] || chown postgres: "$pwfile"
    if ! as_pg "$PG_BIN/initdb" -D "$PG_DIR/data" -U "$DAGSTER_PG_USERNAME" --pwfile="$pwfile" \
      --auth=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 >"$PG_DIR/initdb.log" 2>&1; then
      rm -f "$pwfile"
      log_tail "$PG_DIR/initdb.log"
      die "initdb failed"
    fi
    rm -f "$pwfile"
    as_pg tee -a "$PG_DIR/data/postgresql.conf" >/dev/null <<CONF
# scripts/prod-local.sh: loopback TCP only; no Unix socket (its path would be limited to
# 107 bytes, which a deep checkout exceeds): every client connects to 127.0.0.1.
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
CONF
  fi
  if ! pg_running; then
    as_pg "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/postgres.log" -o "-p $DAGSTER_PG_PORT" \
      -w -t "$START_TIMEOUT" start >/dev/null || { log_tail "$PG_DIR/postgres.log"; die "Postgres did not start"; }
  fi
  local psql=(pg_client "$PG_BIN/psql" -h 127.0.0.1 -p "$DAGSTER_PG_PORT" -U "$DAGSTER_PG_USERNAME")
  if [ -z "$("${psql[@]}" -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$DAGSTER_PG_DB'")" ]; then
    pg_client "$PG_BIN/createdb" -h 127.0.0.1 -p "$DAGSTER_PG_PORT" -U "$DAGSTER_PG_USERNAME" \
      "$DAGSTER_PG_DB"
  fi
  echo "postgres: 127.0.0.1:$DAGSTER_PG_PORT, database $DAGSTER_PG_DB"
}

stop_postgres() {
  if pg_running; then as_pg "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m fast -w stop >/dev/null; fi
}

# $DAGSTER_HOME/dagster.yaml: deploy/dagster.yaml with run_launcher replaced, written each
# start so that it never lags behind the deployment's file. The workspace reaches the code
# server over gRPC, as the chart's does.
write_instance() {
  mkdir -p "$DAGSTER_HOME"
  "$BIN/python" - "$ROOT/deploy/dagster.yaml" "$DAGSTER_HOME/dagster.yaml" <<'PY'
import os
import sys

import yaml

source, target = sys.argv[1:]
with open(source) as file:
    config = yaml.safe_load(file)
config["run_launcher"] = {"module": "dagster._core.launcher", "class": "DefaultRunLauncher"}
header = (
    "# Written by scripts/prod-local.sh from deploy/dagster.yaml: the same instance, except\n"
    "# run_launcher (each run a local process of the code server, not a Kubernetes Job).\n"
)
with open(target + ".tmp", "w") as file:
    file.write(header + yaml.safe_dump(config, sort_keys=False))
os.replace(target + ".tmp", target)
PY
  cat >"$WORKSPACE" <<YAML
load_from:
  - grpc_server:
      host: 127.0.0.1
      port: $CODE_SERVER_PORT
      location_name: $LOCATION
YAML
}

# A pid file can outlive its process (a reboot, a kill -9), and its number may since belong to
# any process, another instance's or a test runner of this checkout included: a component
# counts as running, and is signalled, only while that pid leads a session (spawn starts each
# in one) whose command line names this instance (its workspace file, or its code server's
# port).
component_mark() {
  case $1 in
    code-server) echo " -p $CODE_SERVER_PORT " ;;
    *) echo " $WORKSPACE " ;;
  esac
}
cmdline() { tr '\0' ' ' 2>/dev/null <"/proc/$1/cmdline" || true; }
ours() {
  local name=$1 pid=$2 stat fields
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  stat=$(cat 2>/dev/null "/proc/$pid/stat") || return 1
  read -r -a fields <<<"${stat##*)}"   # state ppid pgrp session ...
  [ "${fields[3]:-}" = "$pid" ] || return 1
  [[ " $(cmdline "$pid")" == *"$BIN/"*"$(component_mark "$name")"* ]]
}
running() { local f=$PIDS/$1.pid; [ -f "$f" ] && ours "$1" "$(cat "$f")"; }
# The pids of process group $1's members (from /proc: procps may not be installed).
group_members() {
  local stat fields
  for stat in /proc/[0-9]*/stat; do
    stat=$(cat 2>/dev/null "$stat") || continue
    read -r -a fields <<<"${stat##*)}"
    if [ "${fields[2]:-}" = "$1" ]; then echo "${stat%% *}"; fi
  done
}

# Starts a component in a session (and process group) of its own, its output appended to its
# log. SIGINT is reset to its default first: a background command inherits it ignored (so does
# everything started from a shell that ignores it, e.g. under nohup), and Dagster maps SIGTERM
# to SIGINT's handler, so `stop` would otherwise be ignored.
spawn() {
  local name=$1
  shift
  if running "$name"; then
    echo "$name: already running (pid $(cat "$PIDS/$name.pid"))"
    return 0
  fi
  setsid env --default-signal=INT,QUIT "$@" >>"$LOGS/$name.log" 2>&1 </dev/null &
  echo $! >"$PIDS/$name.pid"
}

# The daemon and the webserver get no customer credentials: only runs (the code server's
# children) deliver. The variables are unset in the subshell that starts them: as `env -u NAME`
# arguments they outgrew the kernel's limit on a command line (E2BIG) at 10,000 integrations.
CREDENTIALS=()
while read -r name; do CREDENTIALS+=("$name"); done < <(compgen -e | grep -E '_AWS_(ACCESS_KEY_ID|SECRET_ACCESS_KEY)$' || true)
spawn_without_credentials() {
  (
    if ((${#CREDENTIALS[@]})); then unset "${CREDENTIALS[@]}"; fi
    spawn "$@"
  )
}

wait_up() {
  local name=$1 what=$2
  shift 2
  local deadline=$((SECONDS + START_TIMEOUT))
  until "$@"; do
    # Just started, it may not have reached its own command line yet: alive is enough here.
    if ! kill -0 "$(cat "$PIDS/$name.pid")" 2>/dev/null; then log_tail "$LOGS/$name.log"; die "$name exited while starting"; fi
    if ((SECONDS > deadline)); then log_tail "$LOGS/$name.log"; die "$name: no $what after ${START_TIMEOUT}s"; fi
    sleep 0.5
  done
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
webserver_answers() { curl -sf -o /dev/null "http://127.0.0.1:$WEBSERVER_PORT/server_info"; }

start_one() {
  need_compute_logs_bucket "$1"
  case $1 in
    postgres) start_postgres ;;
    code-server)
      # The port opens once the code is loaded.
      spawn code-server "$BIN/dagster" code-server start -h 127.0.0.1 -p "$CODE_SERVER_PORT" \
        --module-name "$MODULE" --location-name "$LOCATION"
      wait_up code-server "gRPC port $CODE_SERVER_PORT" port_open "$CODE_SERVER_PORT"
      echo "code-server: 127.0.0.1:$CODE_SERVER_PORT (location $LOCATION)"
      ;;
    daemon)
      spawn_without_credentials daemon "$BIN/dagster-daemon" run -w "$WORKSPACE"
      echo "daemon: pid $(cat "$PIDS/daemon.pid")"
      ;;
    webserver)
      spawn_without_credentials webserver "$BIN/dagster-webserver" -w "$WORKSPACE" \
        -h 127.0.0.1 -p "$WEBSERVER_PORT"
      wait_up webserver "answer on port $WEBSERVER_PORT" webserver_answers
      echo "webserver: http://127.0.0.1:$WEBSERVER_PORT"
      ;;
    *) die "unknown component '$1' (${COMPONENTS[*]})" ;;
  esac
}

# SIGTERM, then whatever is left of the component's process group is killed. The code server
# stops once its runs have finished (up to AFFISE_PROD_STOP_TIMEOUT).
stop_one() {
  local name=$1
  if [ "$name" = postgres ]; then stop_postgres; return 0; fi
  case $name in code-server | daemon | webserver) ;; *) die "unknown component '$name' (${COMPONENTS[*]})" ;; esac
  local f=$PIDS/$name.pid
  [ -f "$f" ] || return 0
  local pid deadline left outcome="stopped" sweep=1
  pid=$(cat "$f")
  # A live pid that is not the component's was reused, which the kernel does only once the
  # component's group is empty: nothing of it is left to stop.
  if ! ours "$name" "$pid" && kill -0 "$pid" 2>/dev/null; then sweep=0; fi
  if ours "$name" "$pid"; then
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + STOP_TIMEOUT))
    while ours "$name" "$pid" && ((SECONDS <= deadline)); do sleep 0.2; done
    if ours "$name" "$pid"; then
      echo "$name: still running after ${STOP_TIMEOUT}s, killed" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
  else
    outcome="not running (stale pid file removed)"
  fi
  # What is left of the component's session (spawn made it a session leader: group = pid),
  # run workers and gRPC children included, also when the leader itself died earlier: each
  # member of that group that is a process of this checkout's .venv.
  if ((sweep)); then
    for left in $(group_members "$pid"); do
      if [[ " $(cmdline "$left")" == *"$BIN/"* ]]; then kill -KILL "$left" 2>/dev/null || true; fi
    done
  fi
  rm -f "$f"
  echo "$name: $outcome"
}

start_all() {
  need_compute_logs_bucket
  start_postgres
  write_instance
  # The schema before any process opens the storage: concurrent creation would race.
  "$BIN/dagster" instance migrate >>"$LOGS/migrate.log" 2>&1 || { log_tail "$LOGS/migrate.log"; die "dagster instance migrate failed"; }
  start_one code-server
  # The daemon and the webserver import Dagster at once.
  start_one daemon
  start_one webserver
}

stop_all() {
  local name
  for name in webserver daemon code-server postgres; do stop_one "$name"; done
}

status() {
  local up=0
  if pg_running; then echo "postgres: running on 127.0.0.1:$DAGSTER_PG_PORT"; else echo "postgres: stopped"; up=1; fi
  local name
  for name in code-server daemon webserver; do
    if running "$name"; then echo "$name: running (pid $(cat "$PIDS/$name.pid"))"; else echo "$name: stopped"; up=1; fi
  done
  echo "DAGSTER_HOME=$DAGSTER_HOME  logs: $LOGS  webserver: http://127.0.0.1:$WEBSERVER_PORT"
  return $up
}

command=$1
shift
case $command in
  start)
    if [ $# -eq 0 ]; then start_all; else
      write_instance
      for name in "$@"; do start_one "$name"; done
    fi
    ;;
  stop)
    if [ $# -eq 0 ]; then stop_all; else for name in "$@"; do stop_one "$name"; done; fi
    ;;
  restart)
    [ $# -gt 0 ] || die "restart which component? (${COMPONENTS[*]})"
    need_compute_logs_bucket "$@"
    write_instance
    for name in "$@"; do
      stop_one "$name"
      start_one "$name"
    done
    ;;
  status) status ;;
  config)
    write_instance
    echo "$DAGSTER_HOME/dagster.yaml"
    ;;
  run)
    follow=""
    trap '[ -z "$follow" ] || kill "$follow" 2>/dev/null; stop_all' EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM HUP
    start_all
    echo "Dagster UI: http://127.0.0.1:$WEBSERVER_PORT  (Ctrl-C stops everything)"
    # In the background: bash runs a trap only once the command it waits for returns, and
    # `wait` returns on a signal where a foreground tail would not.
    tail -n 0 -F "$LOGS/code-server.log" "$LOGS/daemon.log" "$LOGS/webserver.log" &
    follow=$!
    wait "$follow"
    ;;
esac
