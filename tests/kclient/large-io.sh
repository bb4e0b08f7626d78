#!/bin/sh
# Guest side of tests/tests/nfs_kclient.rs (large files): the Linux NFSv3 client writes a large
# random file through nasgw with 1 MiB WRITEs and reads it back through fresh caches with 1 MiB
# READs (spliced from the server's page cache), with 4 KiB READs, and with O_DIRECT READs at
# odd offsets and sizes; then reads a file another client (the host) truncates and rewrites meanwhile.
#   KC_PORT   nasgw's NFS+MOUNT port   KC_MB  size of the large file in MiB (0: none)
#   KC_RACE_SECS  how long to read the racing file (0: not)   KC_RACE_BYTES  its size when whole
#   KC_RACE_ALLOW  wrong bytes the race check accepts: nothing, or zeros (a zero-copy server)
# Prints "CHECK name ok|FAILED", "SHA256 ..." of what it wrote and "MBPS ..." figures.
set -u
O=vers=3,proto=tcp,nolock,port=$KC_PORT,mountport=$KC_PORT
P=$KCLIENT_JOB/files/pattern
fail=0
check() { if [ "$2" = 0 ]; then echo "CHECK $1 ok"; else echo "CHECK $1 FAILED"; fail=1; fi; }
now() { cut -d' ' -f1 /proc/uptime; }
# mbps START BYTES: MB/s since START (uptime seconds)
mbps() { awk -v a="$1" -v b="$(now)" -v n="$2" 'BEGIN { printf "%.1f", n / 1e6 / (b - a) }'; }
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
mkdir -p /mnt/big /mnt/small
mount -t nfs -o $O,rsize=1048576,wsize=1048576 10.0.2.2:/smb /mnt/big; check mount_1m $?
mount -t nfs -o $O,rsize=4096,wsize=4096,nosharecache 10.0.2.2:/smb /mnt/small; check mount_4k $?
grep ' /mnt/' /proc/mounts
grep -q ' /mnt/big .*rsize=1048576,wsize=1048576' /proc/mounts; check rsize_1m $?
grep -q ' /mnt/small .*rsize=4096,' /proc/mounts; check rsize_4k $?

# The large file (when KC_MB > 0): random bytes, written with 1 MiB WRITEs and a COMMIT at the end.
if [ "$KC_MB" -gt 0 ]; then
N=$((KC_MB * 1048576))
dd if=/dev/urandom of=/tmp/src bs=1M count="$KC_MB" 2>/dev/null
echo "SHA256 $(sha256sum < /tmp/src | cut -d' ' -f1)"
T=$(now)
dd if=/tmp/src of=/mnt/big/big bs=1M conv=fsync 2>/dev/null; check write_1m $?
echo "MBPS write_1m $(mbps "$T" $N)"
drop
T=$(now)
cmp /tmp/src /mnt/big/big; check read_1m $?
echo "MBPS read_1m $(mbps "$T" $N)"
drop
# 4 KiB READs: the first 32 MiB (8192 calls) is plenty, and the VM pays for each call.
T=$(now)
a=$(dd if=/mnt/small/big bs=1M count=32 2>/dev/null | sha256sum)
echo "MBPS read_4k $(mbps "$T" $((32 * 1048576)))"
b=$(dd if=/tmp/src bs=1M count=32 2>/dev/null | sha256sum)
check read_4k $([ "$a" = "$b" ]; echo $?)
# O_DIRECT: each read is one READ of exactly that offset and size (1 MB at an odd offset needs
# one page more than a 1 MiB pipe holds), compared with the same bytes of the source.
for skip in 4095 1048577 $((N - 3000000)); do
	a=$(dd if=/mnt/big/big iflag=direct,skip_bytes skip=$skip bs=1000000 count=3 2>/dev/null | sha256sum)
	b=$(dd if=/tmp/src iflag=skip_bytes skip=$skip bs=1000000 count=3 2>/dev/null | sha256sum)
	check "direct_at_$skip" $([ "$a" = "$b" ]; echo $?)
done
# Past the end: nothing, no error.
n=$(dd if=/mnt/big/big iflag=direct,skip_bytes skip=$((N + 5)) bs=1M 2>/dev/null | wc -c)
check read_past_end $([ "$n" = 0 ]; echo $?)
rm /tmp/src
fi

# Reads racing another client's truncates (when KC_RACE_SECS > 0): the host truncates /race to
# odd sizes and writes the pattern back while this client reads it with O_DIRECT; "race-go"
# starts it, "race-done" ends it.
if [ "$KC_RACE_SECS" -gt 0 ]; then
: > /mnt/big/race-go
$P check /mnt/big/race "$KC_RACE_SECS" "$KC_RACE_BYTES" "$KC_RACE_ALLOW"; check race_reads $?
: > /mnt/big/race-done
fi
umount /mnt/small; check umount_4k $?
umount /mnt/big; check umount_1m $?
exit $fail
