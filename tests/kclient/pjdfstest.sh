#!/bin/sh
# Guest side of the pjdfstest comparison (tests/tests/nfs_pjdfstest.rs): pjdfstest (the Rust
# crate, a static binary in $KCLIENT_JOB/files) run as root through the Linux NFSv3 client on
# each server in turn, in this one VM.
#   KC_TARGETS   "NAME:NFS_PORT:MOUNT_PORT:EXPORT ..." (the host's 127.0.0.1 is 10.0.2.2)
#   KC_PATTERNS  pjdfstest name filters (empty: every case)
#   KC_CASE_TIMEOUT  seconds one server's run may take
# Prints "== TARGET NAME" then pjdfstest's own lines for each server; exit 0 when every run
# finished (failed cases are the host's business). Every opt-in feature a Linux NFS mount has
# is enabled (rename changes ctime, utimensat, UTIME_NOW, posix_fallocate), remounts for the
# EROFS cases are allowed, and the guest's tmpfs is the second file system for EXDEV.
set -u
P=$KCLIENT_JOB/files/pjdfstest
# pjdfstest switches to two dummy users and their groups.
echo 'nobody:x:65534:65534:nobody:/:/bin/false' >> /etc/passwd
echo 'tests:x:1000:1000:tests:/:/bin/false' >> /etc/passwd
echo 'nogroup:x:65534:' >> /etc/group
echo 'tests:x:1000:' >> /etc/group
cat > /tmp/pjd.toml <<'CONF'
[features]
posix_fallocate = {}
rename_ctime = {}
utimensat = {}
utime_now = {}
[settings]
naptime = 0.001
allow_remount = true
expected_failures = []
[dummy_auth]
entries = [["nobody", "nogroup"], ["tests", "tests"]]
CONF
export NO_COLOR=1
# A second file system for the EXDEV cases (the guest's /tmp is a tmpfs).
mkdir -p /tmp/secondary
rc=0
for t in $KC_TARGETS; do
	name=${t%%:*}; rest=${t#*:}
	port=${rest%%:*}; rest=${rest#*:}
	mport=${rest%%:*}; export=${rest#*:}
	M=/mnt/$name
	mkdir -p $M
	echo "== TARGET $name"
	if ! mount -t nfs -o vers=3,proto=tcp,nolock,port=$port,mountport=$mport 10.0.2.2:$export $M; then
		echo "== MOUNT FAILED $name"; rc=1; continue
	fi
	mkdir -p $M/pjd
	chmod 755 $M/pjd
	read t0 _ < /proc/uptime
	timeout ${KC_CASE_TIMEOUT:-600} $P -c /tmp/pjd.toml -p $M/pjd -s /tmp/secondary ${KC_PATTERNS:-} 2>&1 | grep -v '^  *[0-9]*: \|^Stack backtrace\|^Error: Some tests\|^$'
	read t1 _ < /proc/uptime
	echo "== DONE $name in $(awk -v a=$t0 -v b=$t1 'BEGIN { printf "%.1f", b - a }')s"
	umount -f $M || umount -l $M
done
exit $rc
