#!/usr/bin/env bash
# Failover timeline benchmark: nasgw vs CTDB 4.17 on the same network namespaces.
# Three nodes + a client on a bridge (198.18.0.0/16), three public addresses, a shared directory
# holding the recovery lock. Scenarios per system:
#   kill:      link down + kill -9 of the node holding 198.18.1.2 (a host that dies)
#   partition: link down of the node holding 198.18.1.2, process alive
# Prints, for each, when a survivor holds the address, when the cut-off node dropped it, and
# whether two live namespaces ever held it at once (polled every ~10 ms).
# Usage (root): bench/failover/run.sh [nasgw|ctdb|both]   (NASGW_BIN overrides the binary)
set -euo pipefail
cd "$(dirname "$0")/../.."
WHICH=${1:-both}
NASGW_BIN=${NASGW_BIN:-$PWD/target/release/nasgw}
TAG=fb$$
D=$(mktemp -d /tmp/nasgw-failover.XXXXXX)
VIPS=(198.18.1.1 198.18.1.2 198.18.1.3)
NODES=(198.18.0.1 198.18.0.2 198.18.0.3)
PIDS=()

cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -9 "$p" 2>/dev/null || true; done
  for n in n1 n2 n3 c1 sw; do
    for p in $(ip netns pids $TAG-$n 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
    ip netns del $TAG-$n 2>/dev/null || true
  done
  [ -n "${KEEP:-}" ] && echo "kept $D" >&2 || rm -rf "$D"
}
trap cleanup EXIT

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }'; }
held() { ip -n $TAG-$1 -4 -o addr show dev eth0 | grep -c " $2/" || true; }

topology() {
  ip netns add $TAG-sw; ip -n $TAG-sw link add br0 type bridge; ip -n $TAG-sw link set br0 up
  local i=0
  for h in n1:198.18.0.1 n2:198.18.0.2 n3:198.18.0.3 c1:198.18.0.10; do
    local n=${h%%:*} a=${h##*:}
    ip netns add $TAG-$n
    ip link add v$TAG$n netns $TAG-sw type veth peer name eth0 netns $TAG-$n
    ip -n $TAG-sw link set v$TAG$n master br0 up
    ip -n $TAG-$n addr add $a/16 dev eth0; ip -n $TAG-$n link set eth0 up; ip -n $TAG-$n link set lo up
    i=$((i+1))
  done
}
cut() { ip -n $TAG-sw link set v$TAG$1 down; }
heal() { ip -n $TAG-sw link set v$TAG$1 up; }

# Which node (n1..n3) holds $1 now; empty if none.
owner() { for n in n1 n2 n3; do [ "$(held $n "$1")" -gt 0 ] && { echo $n; return; }; done; true; }
wait_all_served() {
  local t0; t0=$(now)
  while :; do
    local ok=1
    for v in "${VIPS[@]}"; do
      local c=0; for n in n1 n2 n3; do c=$((c + $(held $n $v))); done
      [ $c -eq 1 ] || ok=0
    done
    [ $ok -eq 1 ] && return 0
    awk -v a="$t0" -v b="$(now)" -v lim="${WAIT_LIMIT:-120}" 'BEGIN { exit !(b - a > lim) }' && { echo "timeout waiting for convergence" >&2; return 1; }
    sleep 0.05
  done
}

# Waits until node $1 holds at least one public address (failback after restart or heal).
wait_rejoined() {
  local t0; t0=$(now)
  while :; do
    local c=0; for v in "${VIPS[@]}"; do c=$((c + $(held $1 $v))); done
    [ $c -gt 0 ] && return 0
    awk -v a="$t0" -v b="$(now)" -v lim="${WAIT_LIMIT:-120}" 'BEGIN { exit !(b - a > lim) }' && { echo "timeout waiting for $1 to rejoin" >&2; return 1; }
    sleep 0.02
  done
}

# Runs one scenario ($1 = kill|partition) with stop command $2 (called with the node name).
scenario() {
  local kind=$1 kill_cmd=$2 vip=198.18.1.2 victim; victim=$(owner $vip); VICTIM=$victim
  local others=(); for n in n1 n2 n3; do [ $n != $victim ] && others+=($n); done
  local t0 dropped="" taken="" overlap=0
  t0=$(now)
  cut $victim
  [ "$kind" = kill ] && $kill_cmd $victim
  while :; do
    local e; e=$(since "$t0")
    local on_victim; on_victim=$(held $victim $vip)
    local on_others=0; for n in "${others[@]}"; do on_others=$((on_others + $(held $n $vip))); done
    [ -z "$dropped" ] && [ "$kind" = partition ] && [ "$on_victim" -eq 0 ] && dropped=$e
    [ "$kind" = partition ] && [ "$on_victim" -gt 0 ] && [ "$on_others" -gt 0 ] && overlap=1
    [ -z "$taken" ] && [ "$on_others" -gt 0 ] && taken=$e
    if [ -n "$taken" ] && { [ "$kind" = kill ] || [ -n "$dropped" ]; }; then break; fi
    awk -v e="$e" 'BEGIN { exit !(e > 60) }' && break
    sleep 0.01
  done
  printf '%-6s %-9s  served elsewhere after %6s s   cut-off node dropped it after %6s s   two owners at once: %s\n' \
    "$SYSTEM" "$kind" "${taken:-never(>60)}" "${dropped:-$([ $kind = kill ] && echo n/a || echo 'never(>60)')}" \
    "$([ $overlap = 1 ] && echo YES || echo no)"
  echo "$SYSTEM $kind ${taken:-none} ${dropped:-none} $overlap" >> "$D/results"
}

# ---------------------------------------------------------------- nasgw
nasgw_start() {
  local n=$1 dir=$D/nasgw/$1
  mkdir -p "$dir"
  cat > "$dir/nasgw.toml" <<CONF
[volume]
name = "smb"
backend = "local"
path = "$D/nasgw/vol"
[nfs]
listen = "0.0.0.0:12049"
[smb]
listen = "0.0.0.0:4445"
[cluster]
nodes = ["198.18.0.1", "198.18.0.2", "198.18.0.3"]
recovery_lock = "/lock/lockfile"
secret_file = "$D/nasgw/key"
public_addresses = [
  { address = "198.18.1.1/16", interface = "eth0" },
  { address = "198.18.1.2/16", interface = "eth0" },
  { address = "198.18.1.3/16", interface = "eth0" },
]
[node]
control_socket = "$dir/ctl.sock"
state_dir = "$dir/state"
CONF
  ip netns exec $TAG-$n "$NASGW_BIN" --config "$dir/nasgw.toml" serve > "$dir/log" 2>&1 &
  echo $! > "$dir/pid"; PIDS+=($!)
}
nasgw_kill() { kill -9 "$(cat $D/nasgw/$1/pid)"; }
nasgw_stop_all() {
  for n in n1 n2 n3; do kill -9 "$(cat $D/nasgw/$n/pid)" 2>/dev/null || true; done
  for n in n1 n2 n3; do for v in "${VIPS[@]}"; do ip -n $TAG-$n addr del $v/16 dev eth0 2>/dev/null || true; done; done
}
run_nasgw() {
  [ -x "$NASGW_BIN" ] || { echo "build nasgw first: cargo build --release -p nasgw" >&2; exit 1; }
  SYSTEM=nasgw
  mkdir -p $D/nasgw/vol; echo "failover-bench-cluster-secret-0123456789" > $D/nasgw/key
  for n in n1 n2 n3; do nasgw_start $n; done
  wait_all_served
  scenario kill nasgw_kill
  heal $VICTIM
  local t0; t0=$(now); nasgw_start $VICTIM; wait_rejoined $VICTIM
  echo "nasgw  restart   the restarted node serves an address again after $(since "$t0") s"
  wait_all_served
  scenario partition true
  for n in n1 n2 n3; do heal $n; done
  t0=$(now); wait_rejoined $VICTIM; wait_all_served
  echo "nasgw  heal      the healed node serves an address again after $(since "$t0") s"
  nasgw_stop_all
}

# ---------------------------------------------------------------- CTDB 4.17
ctdb_start() {
  local n=$1 dir=$D/ctdb/$1
  mkdir -p "$dir/etc" "$dir/run" "$dir/lib/volatile" "$dir/lib/persistent" "$dir/lib/state"
  if [ ! -f "$dir/etc/ctdb.conf.done" ]; then
    cp -a /etc/ctdb/. "$dir/etc/"
    find "$dir/etc/events" -type l -delete 2>/dev/null || true
    mkdir -p "$dir/etc/events/legacy"
    ln -sf /usr/share/ctdb/events/legacy/10.interface.script "$dir/etc/events/legacy/10.interface.script"
    printf '%s\n' "${NODES[@]}" > "$dir/etc/nodes"
    for v in "${VIPS[@]}"; do echo "$v/16 eth0"; done > "$dir/etc/public_addresses"
    cat > "$dir/etc/ctdb.conf" <<CONF
[logging]
    location = file:$dir/log.ctdb
    log level = NOTICE
[cluster]
    recovery lock = $D/ctdb/shared/reclock
[database]
    volatile database directory = $dir/lib/volatile
    persistent database directory = $dir/lib/persistent
    state database directory = $dir/lib/state
[legacy]
    realtime scheduling = false
CONF
    # Tuned for fast failure detection (defaults: 5 s x 5 = ~29 s for a cut-off node).
    printf 'KeepaliveInterval=1\nKeepaliveLimit=3\n' > "$dir/etc/ctdb.tunables"
    touch "$dir/etc/ctdb.conf.done"
  fi
  ip netns exec $TAG-$n unshare -m --propagation private bash -c "
    mount --bind $dir/etc /etc/ctdb; mount --bind $dir/run /run; mkdir -p /run/ctdb
    exec ctdbd --interactive" > "$dir/stdout" 2>&1 &
  echo $! > "$dir/pid"; PIDS+=($!)
}
ctdb_kill() {
  # ctdbd and its helpers (eventd, lock helper) all die, like a crashed host.
  for p in $(ip netns pids $TAG-$1); do kill -9 "$p" 2>/dev/null || true; done
}
run_ctdb() {
  command -v ctdbd >/dev/null || { echo "ctdbd is not installed (apt-get install ctdb)" >&2; exit 1; }
  SYSTEM=ctdb
  mkdir -p $D/ctdb/shared
  for n in n1 n2 n3; do ctdb_start $n; done
  wait_all_served
  scenario kill ctdb_kill
  heal $VICTIM
  # A dead host comes back without the addresses it had.
  for v in "${VIPS[@]}"; do ip -n $TAG-$VICTIM addr del $v/16 dev eth0 2>/dev/null || true; done
  local t0; t0=$(now); ctdb_start $VICTIM; wait_rejoined $VICTIM
  echo "ctdb   restart   the restarted node serves an address again after $(since "$t0") s"
  wait_all_served
  scenario partition true
  for n in n1 n2 n3; do heal $n; done
  t0=$(now); wait_rejoined $VICTIM; wait_all_served
  echo "ctdb   heal      the healed node serves an address again after $(since "$t0") s"
  for n in n1 n2 n3; do ctdb_kill $n; done
}

topology
case $WHICH in
  nasgw) run_nasgw ;;
  ctdb) run_ctdb ;;
  both) run_nasgw; run_ctdb ;;
  *) echo "usage: $0 [nasgw|ctdb|both]" >&2; exit 2 ;;
esac
echo
echo "side by side (seconds until the address is served by a survivor / dropped by the cut-off node):"
awk '{ k[$2]=1; v[$1" "$2]=$3; d[$1" "$2]=$4; o[$1" "$2]=$5 }
     END { printf "%-10s %-22s %-22s\n", "scenario", "nasgw served/dropped", "ctdb served/dropped";
           for (s in k) printf "%-10s %-22s %-22s\n", s, v["nasgw "s]"/"d["nasgw "s]" ovl="o["nasgw "s], v["ctdb "s]"/"d["ctdb "s]" ovl="o["ctdb "s] }' "$D/results"
