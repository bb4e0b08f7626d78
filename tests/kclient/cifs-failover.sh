#!/bin/sh
# Guest side of tests/tests/kclient_failover.rs: the Linux kernel's SMB client copies a large
# file onto a public address of a three-node cluster while the host kills the node holding the
# address; the copy must complete and read back intact.
#   KC_ADDR   this client's address (198.18.0.20)
#   KC_VIP    the public address to mount
#   KC_SHARE  the share (`ca`: continuously available)
#   KC_OPTS   extra mount options (`persistenthandles`, or empty for cifs.ko's default durable handles)
#   KC_MB     size of the copy in MiB
#   KC_NAME   the file's name on the share
#   KC_MODE   `stream`: `cp` while the host kills the node (a kill mid-send); `open`: half the
#             file through one open, the kill while that open is idle (the guest says so on
#             TCP to KC_SIGNAL_ADDR:KC_SIGNAL_PORT; the host kills the node, then creates
#             NAME.go on the volume), the rest through the same open
#   KC_DEBUG_FUNCS  more cifs.ko functions whose debug messages go to the kernel log (optional)
# Prints SOURCE/READBACK checksums, COPY (seconds), STALL (stream: the longest time between
# two acknowledged writes, from the client's own byte counter; open: the longest time between
# two answered stats of the share while the host kills the node), the cifs reconnect counters and
# the kernel's cifs log lines (KLOG). Network files are read with dd (never busybox cat: see
# kclient's README).
set -u
now() { cut -d' ' -f1 /proc/uptime; }
fail() {
	echo "FAIL: $*"
	dmesg | grep -iE 'cifs|smb' | tail -40 | sed 's/^/KLOG /'
	exit 1
}

ip addr flush dev eth0
ip addr add "$KC_ADDR/16" dev eth0
ip link set eth0 up

# The kernel log is to show the handles reopened, not every write: cifs.ko's FYI messages are
# pr_debug, so with cifsFYI on, dynamic debug picks which functions may print.
mount -t debugfs none /sys/kernel/debug 2>/dev/null
echo 1 > /proc/fs/cifs/cifsFYI
for f in cifs_reopen_file cifs_reopen_persistent_handles smb2_reconnect cifs_reconnect smb21_set_oplock_level \
	reconnect_dfs_server __cifs_reconnect smb2_reconnect_server cifs_tree_connect ${KC_DEBUG_FUNCS:-}; do
	echo "func $f +p" > /sys/kernel/debug/dynamic_debug/control 2>/dev/null
done

t=$(now)
dd if=/dev/urandom of=/tmp/data bs=1M count="$KC_MB" status=none || fail "local source"
SRC=$(sha256sum /tmp/data | cut -d' ' -f1)
echo "SOURCE $SRC ($KC_MB MiB written locally in $(awk "BEGIN{print $(now) - $t}") s)"

mkdir -p /mnt/c
OPTS=guest,vers=3.1.1
[ -n "$KC_OPTS" ] && OPTS="$OPTS,$KC_OPTS"
mount -t cifs "//$KC_VIP/$KC_SHARE" /mnt/c -o "$OPTS" || fail "mount -t cifs //$KC_VIP/$KC_SHARE -o $OPTS"
echo "MOUNT $(grep ' /mnt/c ' /proc/mounts)"

if [ "$KC_MODE" = open ]; then
	# An open file across the kill: the first half written through one open and flushed, the
	# host kills the node, the second half goes through the same open file description (its
	# handle reopened on the new node), then it is closed.
	half=$((KC_MB / 2))
	t=$(now)
	exec 3> "/mnt/c/$KC_NAME" || fail "open"
	dd if=/tmp/data bs=1M count=$half conv=fsync status=none >&3 || fail "first half"
	# Tell the host, outside SMB (a marker file on the share could reach the volume before its
	# reply reaches us, and the kill would then cut that request): the open is idle now.
	echo half | nc -w 5 "$KC_SIGNAL_ADDR" "$KC_SIGNAL_PORT" || fail "signal the host"
	# Ask the share every 0.1 s until the host says go: the longest time between two answers
	# (the file is there, or "No such file") is what an application saw; any other answer is
	# an error an application would have seen.
	last=$(now) gap=0 at=0 errs=0
	while :; do
		r=$(stat -c %s "/mnt/c/$KC_NAME.go" 2>&1)
		ok=$?
		n=$(now)
		case "$ok:$r" in
			0:*|*"No such file"*)
				if awk "BEGIN { exit !($n - $last > $gap) }"; then gap=$(awk "BEGIN { print $n - $last }"); at=$last; fi
				last=$n
				[ $ok -eq 0 ] && break ;;
			*) errs=$((errs + 1)); echo "POLLERR $r" ;;
		esac
		sleep 0.1
	done
	echo "POLL errors $errs"
	dd if=/tmp/data bs=1M skip=$half conv=fsync status=none >&3 || fail "second half through the same open"
	exec 3>&- || fail "close"
	t1=$(now)
	echo "COPY $(awk "BEGIN{print $t1 - $t}") s"
	printf 'STALL %.2f s (from %.2f s uptime)\n' "$gap" "$at"
else
	# The client's own count of acknowledged written bytes, sampled every 0.1 s during the copy.
	written() { awk '/Bytes written:/ { s += $NF } END { print s + 0 }' /proc/fs/cifs/Stats; }
	: > /tmp/samples
	(
		while [ ! -e /tmp/copied ]; do
			echo "$(now) $(written)" >> /tmp/samples
			sleep 0.1
		done
	) &
	sampler=$!

	t=$(now)
	cp /tmp/data "/mnt/c/$KC_NAME"
	rc=$?
	t1=$(now)
	: > /tmp/copied
	wait $sampler
	[ $rc -eq 0 ] || fail "cp onto the share exited $rc"
	echo "COPY $(awk "BEGIN{print $t1 - $t}") s"
	# The longest time between two increases of the acknowledged-bytes counter while data flowed.
	awk '{ if (prev != "" && $2 != prev) { if (last != "" && $1 - last > gap) { gap = $1 - last; at = last } last = $1 }
		prev = $2 } END { printf "STALL %.2f s (from %.2f s uptime)\n", gap, at }' /tmp/samples
fi
grep -E 'reconnects' /proc/fs/cifs/Stats | sed 's/^/STATS /'

# Read back from the server, not from the page cache.
sync
echo 3 > /proc/sys/vm/drop_caches
BACK=$(timeout 600 dd if="/mnt/c/$KC_NAME" bs=1M status=none | sha256sum | cut -d' ' -f1)
echo "READBACK $BACK"
echo 0 > /proc/fs/cifs/cifsFYI
umount /mnt/c || fail "umount"
dmesg | grep -iE 'cifs|smb' | sed 's/^/KLOG /'
[ "$BACK" = "$SRC" ] || fail "checksum read back differs"
echo "GUEST DONE"
