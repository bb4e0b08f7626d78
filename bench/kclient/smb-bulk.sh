#!/bin/sh
# Guest side of the bench's kernel-client rows (bench/src/smb_kernel.rs), run by kclient in one
# VM for every server. The host decides what runs when: the guest asks its gate (busybox wget
# to http://10.0.2.2:$KC_GATE/...) for the next step, does it, and reports the figure, so the
# host brackets each step with the servers' CPU meters.
#   KC_GATE  the gate's port on the host's loopback      KC_MB  MiB written and read per step
# Steps: "write PORT NAME" (mount //10.0.2.2/pub as guest, SMB 3.1.1, dd the source to NAME
# with conv=fsync), "read PORT NAME" (a fresh mount, so the client's cache is cold: dd NAME to
# /dev/null), "end". Reports: done/BYTES/SECONDS (dd's own figures) or fail/REASON.
set -u
G=http://10.0.2.2:$KC_GATE
M=/mnt/c
ask() { wget -q -O - "$G/$1"; }
word() { tr -c 'A-Za-z0-9.=-' _ | head -c 160; }

dd if=/dev/urandom of=/tmp/src bs=1M count="$KC_MB" status=none || { ask fail/no-source; exit 1; }
SUM=$(sha256sum < /tmp/src | cut -d' ' -f1)
STEP=$(ask "source/$SUM") || { echo "the gate does not answer" >&2; exit 1; }
while :; do
	set -- $STEP
	case "${1:-}" in
	end) exit 0 ;;
	write | read) ;;
	*) echo "unknown step: $STEP" >&2; exit 1 ;;
	esac
	op=$1 port=$2 name=$3
	if ! mount -t cifs //10.0.2.2/pub $M -o "port=$port,guest,vers=3.1.1" 2> /tmp/err; then
		STEP=$(ask "fail/mount-$(word < /tmp/err)") || exit 1
		continue
	fi
	if [ "$op" = write ]; then
		dd if=/tmp/src of="$M/$name" bs=1M conv=fsync > /tmp/dd 2>&1
	else
		dd if="$M/$name" of=/dev/null bs=1M > /tmp/dd 2>&1
	fi
	rc=$?
	umount $M
	# GNU dd: "268435456 bytes (268 MB, 256 MiB) copied, 12.3 s, 21.8 MB/s"
	fig=$(awk '/ copied, / { for (i = 1; i <= NF; i++) if ($i == "copied,") print $1 "/" $(i + 1) }' /tmp/dd)
	if [ $rc -ne 0 ] || [ -z "$fig" ]; then
		STEP=$(ask "fail/dd-$(word < /tmp/dd)") || exit 1
	else
		STEP=$(ask "done/$fig") || exit 1
	fi
done
