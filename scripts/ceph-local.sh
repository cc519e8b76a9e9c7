#!/usr/bin/env bash
# A throwaway Ceph cluster on this machine for vdiskfs' rados work and its tests: 1 monitor and 3 BlueStore
# OSDs on 127.0.0.1, every file (config, keyrings, data, sparse OSD block files, logs, PIDs) under DIR.
# Installs nothing: `scripts/setup.sh --ceph` does (ceph-mon ceph-osd ceph-common librados-dev).
#
#   scripts/ceph-local.sh start DIR          start the cluster, wait until pool `vdiskfs` takes writes, and
#                                            print the path of DIR/ceph.conf as the last line
#   scripts/ceph-local.sh stop DIR           stop exactly the daemons it started (recorded PIDs); nothing
#                                            of it stays listening
#   scripts/ceph-local.sh kill-osd DIR N     SIGKILL OSD N (0..2), as a crash
#   scripts/ceph-local.sh start-osd DIR N    start OSD N again (it rejoins)
#   scripts/ceph-local.sh status DIR         `ceph -s` of the cluster
#
# Env: CEPH_LOCAL_POOL (vdiskfs), CEPH_LOCAL_OSD_SIZE (6G, sparse), CEPH_LOCAL_PORT (monitor v2 port 3300,
# v1 = port + 3489 as Ceph's 3300/6789), CEPH_LOCAL_TIMEOUT (120 s for the cluster to come up).
# Authentication is off (auth none) and everything binds to 127.0.0.1: for tests only.
set -euo pipefail

usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
die() { echo "ceph-local: $*" >&2; exit 1; }

cmd=${1:-}; dir=${2:-}
[[ -n "$cmd" && -n "$dir" ]] || usage
POOL=${CEPH_LOCAL_POOL:-vdiskfs}
OSD_SIZE=${CEPH_LOCAL_OSD_SIZE:-6G}
PORT=${CEPH_LOCAL_PORT:-3300}
V1PORT=$((PORT + 3489))
TIMEOUT=${CEPH_LOCAL_TIMEOUT:-120}

for tool in ceph-mon ceph-osd ceph monmaptool ceph-authtool; do
  [[ "$cmd" == stop || "$cmd" == kill-osd ]] && break
  command -v "$tool" >/dev/null 2>&1 || die "$tool not found: run scripts/setup.sh --ceph (installs ceph-mon ceph-osd ceph-common librados-dev)"
done

mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
conf="$dir/ceph.conf"
ceph_() { ceph -c "$conf" --connect-timeout 10 "$@"; }

# Start a daemon in the foreground mode (-f) in the background, record its PID under DIR/pids/NAME.
spawn() {
  local name=$1; shift
  mkdir -p "$dir/pids" "$dir/log"
  setsid "$@" -f >>"$dir/log/$name.out" 2>&1 < /dev/null &
  echo $! >"$dir/pids/$name"
}

alive() { local f="$dir/pids/$1"; [[ -f "$f" ]] && kill -0 "$(cat "$f")" 2>/dev/null; }

stop_one() {
  local name=$1 f="$dir/pids/$1" pid
  [[ -f "$f" ]] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
    for _ in $(seq 25); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  fi
  rm -f "$f"
}

write_conf() {
  local fsid=$1
  cat >"$conf" <<EOF
[global]
fsid = $fsid
mon_host = [v2:127.0.0.1:$PORT,v1:127.0.0.1:$V1PORT]
public_addr = 127.0.0.1
ms_bind_ipv6 = false
auth_cluster_required = none
auth_service_required = none
auth_client_required = none
ms_mon_client_mode = crc
ms_client_mode = crc
run_dir = $dir/run
admin_socket = $dir/run/\$cluster-\$name.asok
log_file = $dir/log/\$cluster-\$name.log
pid_file = $dir/run/\$cluster-\$name.pid
keyring = $dir/keyring
osd_pool_default_size = 3
osd_pool_default_min_size = 2
osd_pool_default_pg_num = 8
osd_crush_chooseleaf_type = 0
mon_allow_pool_delete = true
mon_warn_on_pool_no_redundancy = false
mon_data_avail_warn = 1
[mon]
mon_data = $dir/mon/\$cluster-\$id
[osd]
osd_data = $dir/osd/\$cluster-\$id
osd_objectstore = bluestore
bluestore_block_create = true
bluestore_block_size = $(numfmt --from=iec "$OSD_SIZE")
bluestore_fsck_on_mkfs = false
osd_memory_target = 1073741824
osd_op_num_shards = 2
osd_op_num_threads_per_shard = 1
EOF
}

start() {
  if alive mon.a; then
    echo "ceph-local: a cluster from $dir is running already" >&2
    echo "$conf"
    return 0
  fi
  mkdir -p "$dir/run" "$dir/log" "$dir/mon" "$dir/osd" "$dir/pids"
  if [[ ! -f "$dir/fsid" ]]; then
    # First start: make the monitor and the OSDs.
    local fsid
    fsid=$(cat /proc/sys/kernel/random/uuid)
    echo "$fsid" >"$dir/fsid"
    write_conf "$fsid"
    ceph-authtool --create-keyring "$dir/keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
    ceph-authtool "$dir/keyring" --gen-key -n client.admin --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' >/dev/null
    monmaptool --create --addv a "[v2:127.0.0.1:$PORT,v1:127.0.0.1:$V1PORT]" --fsid "$fsid" "$dir/monmap" >/dev/null
    ceph-mon -c "$conf" --mkfs -i a --monmap "$dir/monmap" --keyring "$dir/keyring" >>"$dir/log/mkfs.out" 2>&1 \
      || die "ceph-mon --mkfs failed (see $dir/log/mkfs.out)"
    spawn mon.a ceph-mon -c "$conf" -i a
    wait_for "monitor quorum" ceph_ quorum_status
    for n in 0 1 2; do
      local uuid id
      uuid=$(cat /proc/sys/kernel/random/uuid)
      id=$(ceph_ osd new "$uuid")
      [[ "$id" == "$n" ]] || die "expected OSD id $n, the monitor gave $id"
      mkdir -p "$dir/osd/ceph-$n"
      ceph-osd -c "$conf" -i "$n" --mkfs --osd-uuid "$uuid" >>"$dir/log/mkfs.out" 2>&1 \
        || die "ceph-osd --mkfs of OSD $n failed (see $dir/log/mkfs.out)"
    done
  else
    spawn mon.a ceph-mon -c "$conf" -i a
    wait_for "monitor quorum" ceph_ quorum_status
  fi
  for n in 0 1 2; do spawn "osd.$n" ceph-osd -c "$conf" -i "$n"; done
  wait_for "3 OSDs up" osds_up 3
  if ! ceph_ osd pool ls | grep -qx "$POOL"; then
    ceph_ osd pool create "$POOL" 32 32 >/dev/null 2>&1
    ceph_ osd pool application enable "$POOL" rados >/dev/null 2>&1
  fi
  wait_for "pool $POOL takes writes" probe_write
  echo "$conf"
}

osds_up() { [[ "$(ceph_ osd stat -f json 2>/dev/null | sed -n 's/.*"num_up_osds":\([0-9]*\).*/\1/p')" -ge "$1" ]]; }
probe_write() { echo probe | timeout 20 rados -c "$conf" -p "$POOL" put ceph-local-probe - >/dev/null 2>&1 && rados -c "$conf" -p "$POOL" rm ceph-local-probe >/dev/null 2>&1; }

# The last error lines the daemons printed, on lines of their own (e.g. a monitor that refuses to run on a
# nearly full filesystem says so only there), or nothing.
last_errors() {
  local e
  e=$(grep -h -i 'error' "$dir"/log/*.out 2>/dev/null | tail -n 3) || true
  [[ -n "$e" ]] && printf '\n%s' "$e"
  return 0
}

wait_for() {
  local what=$1; shift
  local end=$((SECONDS + TIMEOUT))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < end)) || die "timed out after ${TIMEOUT}s waiting for $what (logs in $dir/log)$(last_errors)"
    sleep 1
  done
}

stop() {
  for n in 2 1 0; do stop_one "osd.$n"; done
  stop_one mon.a
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  kill-osd)
    n=${3:?osd number}; f="$dir/pids/osd.$n"
    [[ -f "$f" ]] || die "OSD $n is not running"
    kill -KILL "$(cat "$f")" 2>/dev/null || true
    rm -f "$f" ;;
  start-osd)
    n=${3:?osd number}
    alive "osd.$n" && die "OSD $n is running"
    spawn "osd.$n" ceph-osd -c "$conf" -i "$n" ;;
  status) ceph_ -s ;;
  *) usage ;;
esac
