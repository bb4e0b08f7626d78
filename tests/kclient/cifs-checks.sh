#!/bin/sh
# The Linux kernel's SMB client against a server on the host, run inside a kclient VM
# (`kclient run tests/kclient/cifs-checks.sh`; the guest sees the host's 127.0.0.1 as 10.0.2.2).
# What a user does with a mount.cifs mount, for every combination asked for:
#   KC_SMB_PORT   server port
#   KC_SHARE      the guest's share (default pub)   KC_USER_SHARE   the user's (default KC_SHARE)
#   KC_COMBOS     WHO,DIALECT,CACHE[,OPTION...] words, e.g. "guest,2.0,strict user,3.1.1,none,seal"
#                 (WHO is guest or user; default "guest,3.1.1,strict")
#   KC_USER, KC_PASS   the user's name and password (for WHO=user)
#   KC_BIG_MB     size of the large file (default 4)   KC_SMALL   how many small files (default 40)
# Leaves kc-touched on the last combination's share (mtime set by `touch -d` to 981173106) for
# the host to check.
# Prints "PASS <combination>" per combination and "ALL PASSED" at the end; exit 0 only then.
# Network files are read with dd, never with busybox cat or cp: those splice (sendfile) from
# the file, and kernel 6.1's splice from a cifs file opened without an oplock or lease returns
# zero-filled pages and wedges the guest (see the kclient README; nasgw grants no oplocks yet).
set -e
PORT=${KC_SMB_PORT:-445} SHARE=${KC_SHARE:-pub} M=/mnt/c
BIG=${KC_BIG_MB:-4} SMALL=${KC_SMALL:-40}
fail() {
	echo "FAIL${WHAT:+ ($WHAT)}: $*" >&2
	dmesg | grep -i cifs | tail -20 >&2
	exit 1
}
check() { # check WHAT EXPECTED ACTUAL
	[ "$2" = "$3" ] || fail "$1: expected '$2', got '$3'"
}
sum() { dd if="$1" bs=1M status=none | sha256sum | cut -d' ' -f1; }
# names and contents of every file in a directory
dirsum() { (cd "$1" && ls && for f in *; do dd if="$f" bs=64k status=none; done) | sha256sum | cut -d' ' -f1; }

dd if=/dev/urandom of=/tmp/big bs=1M count="$BIG" status=none
BIGSUM=$(sum /tmp/big)
mkdir -p /tmp/small
i=0
while [ $i -lt "$SMALL" ]; do
	head -c $((i * 37 + 1)) /dev/urandom > /tmp/small/f$i
	i=$((i + 1))
done
SMALLSUM=$(dirsum /tmp/small)
mkfifo /tmp/p1 /tmp/p2

for COMBO in ${KC_COMBOS:-guest,3.1.1,strict}; do
	IFS=, read -r WHO V C EXTRA <<-EOF
	$COMBO
	EOF
	case $WHO in
	guest) CRED=guest SHARE=${KC_SHARE:-pub} ;;
	user) CRED="username=$KC_USER,password=$KC_PASS" SHARE=${KC_USER_SHARE:-${KC_SHARE:-pub}} ;;
	*) fail "unknown WHO in $COMBO" ;;
	esac
	WHAT="$WHO vers=$V cache=$C${EXTRA:+ $EXTRA}"
	O="port=$PORT,$CRED,vers=$V,cache=$C${EXTRA:+,$EXTRA}"
	mount -t cifs "//10.0.2.2/$SHARE" $M -o "$O" || fail "mount $WHAT"
	D=$M/kc-$V-$C
	rm -rf "$D"
	mkdir "$D" || fail "mkdir"
	# Large and small files, read back after a remount (nothing from the client's cache).
	dd if=/tmp/big of="$D/big" bs=1M conv=fsync status=none || fail "write big"
	cp -r /tmp/small "$D/small" || fail "cp -r small files"
	umount $M
	mount -t cifs "//10.0.2.2/$SHARE" $M -o "$O" || fail "remount $WHAT"
	check "big file's sha256" "$BIGSUM" "$(sum "$D/big")"
	check "small files" "$SMALLSUM" "$(dirsum "$D/small")"
	# ls -l and stat
	ls -l "$D" > /tmp/ls || fail "ls -l"
	grep -q " big$" /tmp/ls || fail "ls -l does not show big: $(cat /tmp/ls)"
	grep -q "^d.* small$" /tmp/ls || fail "ls -l does not show the small directory: $(cat /tmp/ls)"
	check "stat size" $((BIG * 1048576)) "$(stat -c %s "$D/big")"
	check "stat type" "directory" "$(stat -c %F "$D/small")"
	# mv (rename within and across directories)
	mv "$D/big" "$D/big2" || fail "mv"
	mv "$D/big2" "$D/small/big3" || fail "mv to another directory"
	[ ! -e "$D/big" ] && [ ! -e "$D/big2" ] && [ -f "$D/small/big3" ] || fail "mv left names behind"
	mv "$D/small/big3" "$D/big"
	# touch -d: the time reaches the server and comes back after a remount
	touch -d "2001-02-03 04:05:06" "$D/big" || fail "touch -d"
	check "mtime after touch -d" 981173106 "$(stat -c %Y "$D/big")"
	# truncate: shrink, then grow (the new part reads as zeros)
	truncate -s 1000 "$D/big" || fail "truncate"
	check "size after truncate" 1000 "$(stat -c %s "$D/big")"
	truncate -s 5000 "$D/big" || fail "truncate up"
	check "grown part" "$(head -c 4000 /dev/zero | sha256sum | cut -d' ' -f1)" \
		"$(dd if="$D/big" bs=1000 skip=1 status=none | sha256sum | cut -d' ' -f1)"
	# a file opened by two processes at once: each writes through its own descriptor and
	# reads what the other wrote (the fifos order the steps)
	echo first > "$D/two"
	(
		exec 3<>"$D/two"
		dd bs=6 count=1 status=none <&3 > /tmp/a-read   # "first\n"; offset 6
		echo opened > /tmp/p1
		read -r _ < /tmp/p2                             # B wrote BB at 6
		dd bs=2 count=1 status=none <&3 >> /tmp/a-read  # "BB"; offset 8
		printf second | dd conv=notrunc status=none >&3 # at 8
		exec 3>&-
	) &
	A=$!
	exec 4<>"$D/two"
	read -r _ < /tmp/p1
	printf BB | dd bs=1 seek=6 conv=notrunc status=none >&4  # offset 8
	echo wrote > /tmp/p2
	wait $A || fail "second process"
	check "what B reads of A's write" second "$(dd bs=6 count=1 status=none <&4)"
	exec 4>&-
	check "what A read" "first
BB" "$(cat /tmp/a-read)"
	check "two writers" "$(printf 'first\nBBsecond' | sha256sum)" "$(dd if="$D/two" bs=64 status=none | sha256sum)"
	# df: the share's size
	df -k $M > /tmp/df || fail "df"
	TOTAL=$(awk 'NR == 2 { print $2 }' /tmp/df)
	[ "${TOTAL:-0}" -gt 0 ] || fail "df shows no size: $(cat /tmp/df)"
	# rm -r
	rm -r "$D" || fail "rm -r"
	[ ! -e "$D" ] || fail "rm -r left the directory"
	umount $M
	echo "PASS $WHAT"
done
# Left for the host to check on the volume itself: name, contents and the touched time.
mount -t cifs "//10.0.2.2/$SHARE" $M -o "port=$PORT,$CRED" || fail "last mount"
echo "written by the kernel client" > $M/kc-touched
touch -d "2001-02-03 04:05:06" $M/kc-touched
umount $M
echo "ALL PASSED"
