#!/bin/sh
# The Linux kernel's NFS and CIFS clients against the appliance cluster of tests/tests/image_cluster.rs,
# run in a kclient VM whose eth0 is a tap on the cluster's bridge. Both mounts use one public
# address; the host kills the node holding it between phases and reboots it after.
#   KC_ADDR        this client's address with its prefix (198.18.0.20/24)
#   KC_VIP         the public address to mount
#   KC_PHASE_URL   an HTTP URL on the host's side of the bridge answering the phase the test is in
#   KC_MB          size of each file written (MiB, default 4)
# Prints "PHASE<n> OK ..." when a phase passed (the host waits for these lines), and exits 0
# after phase 3. Network files are read with dd (see cifs-checks.sh: never busybox cat/cp).
set -e
MB=${KC_MB:-4}
fail() {
	echo "FAIL: $*" >&2
	dmesg | grep -iE 'cifs|nfs|smb' | tail -20 >&2
	exit 1
}
now() { cut -d' ' -f1 /proc/uptime; }
phase() { # waits until the host is in phase $1
	until [ "$(wget -qO- "$KC_PHASE_URL" 2>/dev/null)" = "$1" ]; do sleep 1; done
}
sum() { timeout 600 dd if="$1" bs=1M status=none | sha256sum | cut -d' ' -f1; }

ip addr flush dev eth0
ip addr add "$KC_ADDR" dev eth0
dd if=/dev/urandom of=/tmp/data bs=1M count="$MB" status=none
DATA=$(sum /tmp/data)

# Writes a file through each mount, reads both back through both (one volume, two protocols).
round() { # $1 = tag
	timeout 600 dd if=/tmp/data of="/mnt/n/nfs-$1" bs=1M conv=fsync status=none || fail "NFS write $1"
	timeout 600 dd if=/tmp/data of="/mnt/c/cifs-$1" bs=1M conv=fsync status=none || fail "CIFS write $1"
	for f in "/mnt/n/nfs-$1" "/mnt/c/cifs-$1" "/mnt/c/nfs-$1" "/mnt/n/cifs-$1"; do
		[ "$(sum "$f")" = "$DATA" ] || fail "read back $f"
	done
}
# Reads every file written so far through both mounts.
reread() { # tags...
	for t in "$@"; do
		for f in "/mnt/n/nfs-$t" "/mnt/n/cifs-$t" "/mnt/c/nfs-$t" "/mnt/c/cifs-$t"; do
			[ "$(sum "$f")" = "$DATA" ] || fail "read again $f"
		done
	done
}

mkdir -p /mnt/n /mnt/c
# One port serves NFS and MOUNT (no portmapper round trip needed).
mount -t nfs -o vers=3,proto=tcp,port=2049,mountport=2049,mountproto=tcp,nolock,hard "$KC_VIP:/smb" /mnt/n ||
	fail "mount -t nfs $KC_VIP:/smb"
mount -t cifs "//$KC_VIP/pub" /mnt/c -o guest,vers=3.1.1,hard || fail "mount -t cifs //$KC_VIP/pub"
t=$(now)
round 1
echo "PHASE1 OK: NFS and CIFS mounts of $KC_VIP, $MB MiB written and read back through each ($(awk "BEGIN{print $(now) - $t}") s)"

phase 2 # the node holding $KC_VIP was killed: the address moved
t=$(now)
round 2
reread 1
echo "PHASE2 OK: the same mounts kept working after the failover ($(awk "BEGIN{print $(now) - $t}") s for a round)"

phase 3 # the killed node is back in the cluster
reread 1 2
round 3
echo "PHASE3 OK: every file read again, another round written after the node rejoined"
umount /mnt/c
umount /mnt/n
