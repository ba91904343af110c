#!/bin/bash
# A real S3 server on loopback for the demo and the tests: Debian's Ceph RADOS Gateway (16.2)
# on a throw-away one-mon / one-memstore-OSD cluster, all bound to 127.0.0.1, objects in RAM,
# all state under $S3_DIR. Real signatures, real permission errors, starts in about 2 s.
#   bash scripts/s3-server.sh install            # apt packages (root or sudo)
#   eval "$(bash scripts/s3-server.sh start)"    # starts, prints export lines (endpoint, keys)
#   bash scripts/s3-server.sh adduser UID ACCESS SECRET   # one more account (own buckets)
#   bash scripts/s3-server.sh stop               # stops the 4 daemons by pid file
# A second gateway on RGW_PORT+5 (RGW_STS_PORT) serves the same store with STS (AssumeRole)
# and IAM roles, for deliveries through a customer's role; the first keeps STS off.
# Two servers can run side by side with different S3_DIR, RGW_PORT and MON_PORT
# (the demo uses the defaults; the tests use their own).
set -euo pipefail
S3_DIR=${S3_DIR:-/tmp/affise-s3}
RGW_PORT=${RGW_PORT:-7480}
RGW_STS_PORT=${RGW_STS_PORT:-$((RGW_PORT + 5))}   # the STS-serving gateway (see ceph.conf)
MON_PORT=${MON_PORT:-6789}
S3_ACCESS_KEY=${S3_ACCESS_KEY:-EXPORTERACCESSKEY}
S3_SECRET_KEY=${S3_SECRET_KEY:-exportersecretkey123}
S3_REGION=${S3_REGION:-}            # e.g. eu-west-1: zonegroup api_name (LocationConstraint checks)
C="-c $S3_DIR/ceph.conf"

retry() { local i; for i in $(seq 1 50); do "$@" 2>>"$S3_DIR/log/retry.log" && return 0; sleep 0.2; done; "$@"; }

do_install() {
  export DEBIAN_FRONTEND=noninteractive
  command -v radosgw >/dev/null && command -v ceph-osd >/dev/null && command -v ceph-mon >/dev/null && return 0
  local SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends radosgw ceph-mon ceph-osd curl >/dev/null
}

# A pid file can outlive its daemon (a killed OSD leaves its own; a reboot or a crashed run
# leaves them all), and its number may since belong to any process, the caller's own test
# runner included: only a process started with this server's ceph.conf is ever signalled.
ours() {
  [[ $1 =~ ^[0-9]+$ ]] || return 1
  [[ " $(tr '\0' ' ' 2>/dev/null <"/proc/$1/cmdline" || true)" == *" $S3_DIR/ceph.conf "* ]]
}

do_stop() {
  local n f p i
  for n in client.rgw.sts client.rgw osd.0 mon.a; do
    f=$S3_DIR/run/$n.pid; [ -f "$f" ] || continue; p=$(cat "$f")
    if ours "$p"; then
      kill "$p" 2>/dev/null || true
      for i in $(seq 1 50); do ours "$p" || break; sleep 0.1; done
      if ours "$p"; then kill -9 "$p" 2>/dev/null || true; fi
    fi
    ours "$p" || rm -f "$f"   # gone (or never ours): its pid file goes too
  done
}

do_start() {
  do_stop 2>/dev/null || true
  rm -rf "$S3_DIR"; mkdir -p "$S3_DIR"/{mon.a,osd.0,rgw,rgw-sts,log,run}
  local FSID; FSID=$(cat /proc/sys/kernel/random/uuid)
  cat > "$S3_DIR/ceph.conf" <<CONF
[global]
fsid = $FSID
mon host = v1:127.0.0.1:$MON_PORT
mon initial members = a
public network = 127.0.0.0/8
auth cluster required = none
auth service required = none
auth client required = none
ms bind ipv6 = false
run dir = $S3_DIR/run
admin socket = $S3_DIR/run/\$name.asok
log file = $S3_DIR/log/\$name.log
pid file = $S3_DIR/run/\$name.pid
keyring = $S3_DIR/keyring
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 1
osd pool default pgp num = 1
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon warn on pool no redundancy = false
mon warn on insecure global id reclaim allowed = false
mon warn on msgr2 not enabled = false
mon data avail warn = 1
mon data avail crit = 0
mon max pg per osd = 1000
# without these two, every pool RGW creates costs ~1 s of paxos delay (13 s start instead of 2 s)
paxos propose interval = 0.05
paxos min wait = 0.01
[mon.a]
mon data = $S3_DIR/mon.a
[osd]
osd data = $S3_DIR/osd.\$id
osd objectstore = memstore
# objects live in the OSD's RAM, capped here
memstore device bytes = ${MEMSTORE_BYTES:-2147483648}
osd op num shards = 2
osd op num threads per shard = 1
# we place the OSD in CRUSH ourselves (the OSD's own start-up mon commands raced: 'wrong fsid')
osd crush update on start = false
osd class update on start = false
[client]
rgw dns name = localhost
rgw thread pool size = 32
rgw rados pool pg num min = 1
# SSE-KMS with static test keys (RGW's "testing" backend: never for production), over HTTP
rgw crypt s3 kms backend = testing
rgw crypt s3 kms encryption keys = ${RGW_KMS_KEYS:-affise-test-key=MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY= affise-other-key=ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=}
rgw crypt require ssl = false
[client.rgw]
rgw data = $S3_DIR/rgw
rgw frontends = beast endpoint=127.0.0.1:$RGW_PORT
# A second gateway on the same zone (same users, buckets and IAM roles) serving STS
# (AssumeRole) as well: with STS on, RGW 16 answers a wrong secret or an unknown key id with
# AccessDenied instead of SignatureDoesNotMatch / InvalidAccessKeyId, so the main one keeps
# it off. Its session tokens are sealed with this 16-character key.
[client.rgw.sts]
rgw data = $S3_DIR/rgw-sts
rgw frontends = beast endpoint=127.0.0.1:$RGW_STS_PORT
rgw s3 auth use sts = true
rgw sts key = ${RGW_STS_KEY:-affisetestststky}
CONF
  ceph-authtool --create-keyring "$S3_DIR/keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
  monmaptool --create --fsid "$FSID" --add a "v1:127.0.0.1:$MON_PORT" "$S3_DIR/monmap" >/dev/null
  ceph-mon $C --mkfs -i a --monmap "$S3_DIR/monmap" --keyring "$S3_DIR/keyring"
  ceph-mon $C -i a                                   # daemonizes, writes run/mon.a.pid
  retry ceph $C --connect-timeout 5 mon stat >/dev/null
  local OSD_UUID OSD_ID; OSD_UUID=$(cat /proc/sys/kernel/random/uuid)
  OSD_ID=$(retry ceph $C osd new "$OSD_UUID")
  ceph-osd $C -i "$OSD_ID" --mkfs --osd-uuid "$OSD_UUID" >/dev/null 2>&1
  retry ceph $C osd crush add-bucket localhost host >/dev/null
  retry ceph $C osd crush move localhost root=default >/dev/null
  retry ceph $C osd crush add "osd.$OSD_ID" 1.0 host=localhost >/dev/null
  ceph-osd $C -i "$OSD_ID" 2>>"$S3_DIR/log/osd-start.err"
  local i; for i in $(seq 1 150); do ceph $C osd stat 2>/dev/null | grep -q ' 1 up' && break; sleep 0.2; done
  if [ -n "$S3_REGION" ]; then
    retry radosgw-admin $C user list >/dev/null      # creates the default zone/zonegroup
    retry radosgw-admin $C zonegroup modify --rgw-zonegroup=default --api-name="$S3_REGION" >/dev/null
  fi
  radosgw $C -n client.rgw
  radosgw $C -n client.rgw.sts
  local port; for port in "$RGW_PORT" "$RGW_STS_PORT"; do
    for i in $(seq 1 300); do curl -fs -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.2; done
    curl -fs -o /dev/null "http://127.0.0.1:$port/" || { echo "radosgw on $port did not come up; see $S3_DIR/log" >&2; exit 1; }
  done
  echo "http://127.0.0.1:$RGW_STS_PORT" > "$S3_DIR/sts-endpoint-url"   # for the tests
  retry radosgw-admin $C user create --uid=tester --display-name=tester \
      --access-key="$S3_ACCESS_KEY" --secret-key="$S3_SECRET_KEY" >/dev/null
  # The admin account may create IAM roles (RGW's IAM API: CreateRole, PutRolePolicy).
  retry radosgw-admin $C caps add --uid=tester --caps="roles=*" >/dev/null
  cat <<OUT
export AWS_ENDPOINT_URL=http://127.0.0.1:$RGW_PORT
export AWS_ACCESS_KEY_ID=$S3_ACCESS_KEY
export AWS_SECRET_ACCESS_KEY=$S3_SECRET_KEY
export AWS_DEFAULT_REGION=${S3_REGION:-us-east-1}
OUT
}

case "${1:-}" in
  install) do_install ;;
  start) do_start ;;
  stop) do_stop ;;
  adduser) retry radosgw-admin $C user create --uid="$2" --display-name="$2" --access-key="$3" --secret-key="$4" >/dev/null ;;
  # The server's own counters (JSON; "rgw": requests, GETs, bytes sent...), for benchmarks.
  perf) ceph --admin-daemon "$S3_DIR/run/client.rgw.asok" perf dump ;;
  *) echo "usage: $0 install|start|stop|adduser UID ACCESS SECRET|perf" >&2; exit 2 ;;
esac
