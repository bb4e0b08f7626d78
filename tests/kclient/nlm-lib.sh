# Shared by the NLM guest scripts (copied in with `kclient run -f`, then sourced): network,
# rpcbind + rpc.statd, the recipe mount, the marker mount, and small helpers.
# Env: KC_SERVER (address to mount), KC_ADDR (ours), KC_NAME (host name).
ip addr flush dev eth0
ip addr add "$KC_ADDR/16" dev eth0
ip link set eth0 up
hostname "$KC_NAME"
mkdir -p /run/rpcbind /var/lib/nfs/sm /var/lib/nfs/sm.bak
rpcbind -w && rpc.statd || { echo "CHECK statd FAIL"; exit 1; }
mkdir -p /mnt/n /mnt/sig
now() { cut -d' ' -f1 /proc/uptime; }
ms_since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%d", (b - a) * 1000 }'; }
check() { if [ "$2" = ok ]; then echo "CHECK $1 ok"; else echo "CHECK $1 FAIL: $3"; fi; }
# await MARKER [tenths]: wait for the host's marker file
await() {
	n=0
	until [ -e "/mnt/sig/$1" ]; do
		sleep 0.1; n=$((n+1))
		[ $n -lt "${2:-1800}" ] || { echo "CHECK await-$1 FAIL: timed out"; return 1; }
	done
}
signal() { : > "/mnt/sig/$1"; }
# hold OUT ARGS...: a lock holder (`$L hold ARGS`) in the background, printing into OUT, which
# starts empty: `saw OUT WORD` must never read what an earlier holder printed there before this
# one's shell has truncated it
hold() { out=$1; shift; rm -f "$out"; $L hold "$@" > "$out" 2>&1 & }
# saw FILE WORD [tenths]: wait until a lock holder printed WORD (a whole word: "locked" is
# not seen in "unlocked", which a holder that used the same file before printed)
saw() {
	n=0
	until grep -qw "$2" "$1" 2>/dev/null; do
		sleep 0.1; n=$((n+1))
		[ $n -lt "${3:-600}" ] || return 1
	done
}
T=$(now)
# The seed recipe's mount, exactly: no vers, no port options, no nolock.
mount -o mountproto=tcp,async -t nfs "$KC_SERVER:smb" /mnt/n || { echo "CHECK mount FAIL"; exit 1; }
echo "recipe mount took $(ms_since "$T") ms: $(grep ' /mnt/n ' /proc/mounts)"
mount -o vers=3,nolock,noac,lookupcache=none -t nfs "$KC_SERVER:smb" /mnt/sig || { echo "CHECK sigmount FAIL"; exit 1; }
L=$KCLIENT_JOB/files/nlmlock
