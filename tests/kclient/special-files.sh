#!/bin/sh
# Guest side of tests/tests/nfs_kclient.rs: special files through the Linux NFSv3 client.
#   KC_PORT      the non-squashing nasgw's NFS+MOUNT port   KC_SQUASH_PORT  the root-squashing one
# Prints "CHECK name ok" per check and exits 0 only if every one passed.
set -u
O=vers=3,proto=tcp,nolock
fail=0
check() { if [ "$2" = 0 ]; then echo "CHECK $1 ok"; else echo "CHECK $1 FAILED"; fail=1; fi; }
U=$KCLIENT_JOB/files/uds
mkdir -p /mnt/a /mnt/s
mount -t nfs -o $O,port=$KC_PORT,mountport=$KC_PORT 10.0.2.2:/smb /mnt/a; check mount $?
D=/mnt/a/k
mkdir $D

# A fifo: a writer and a reader on the mount meet through it (the data never reaches the
# server: a fifo's data stays in the client's kernel).
mkfifo -m 0640 $D/fifo; check mkfifo $?
( echo "through the fifo" > $D/fifo ) &
WP=$!
got=$(timeout 20 cat $D/fifo); check fifo_data $([ "$got" = "through the fifo" ]; echo $?)
kill $WP 2>/dev/null; wait $WP

# A Unix socket bound on the mount, a client connecting through its name.
$U listen $D/sock > /tmp/listen.out 2>&1 &
LP=$!
for i in $(seq 100); do [ -S $D/sock ] && break; sleep 0.1; done
check socket_bound $([ -S $D/sock ]; echo $?)
got=$(timeout 20 $U talk $D/sock ping); check socket_talk $([ "$got" = "pong ping" ]; echo $?)
kill $LP 2>/dev/null; wait $LP; cat /tmp/listen.out   # (it has exited after one client)

# Device nodes as (non-squashed) root.
mknod -m 0600 $D/null c 1 3; check mknod_c $?
mknod -m 0660 $D/blk b 7 200; check mknod_b $?
ls -ln $D
t=$(stat -c '%F %t:%T %a' $D/null); echo "null: $t"
check chr_type $([ "$t" = "character special file 1:3 600" ]; echo $?)
t=$(stat -c '%F %t:%T %a' $D/blk); echo "blk: $t"
check blk_type $([ "$t" = "block special file 7:c8 660" ]; echo $?)
t=$(stat -c '%F %a' $D/fifo); check fifo_type $([ "$t" = "fifo 640" ]; echo $?)
t=$(stat -c '%F' $D/sock); check sock_type $([ "$t" = "socket" ]; echo $?)
ls -l $D | grep -q '^prw-r-----.* fifo$'; check ls_fifo $?
ls -l $D | grep -q '^s.* sock$'; check ls_sock $?
ls -l $D | grep -q '^crw-------.* 1, *3 .*null$'; check ls_chr $?
# The device node is the client's: writing to "null" reaches the guest's own /dev/null driver.
echo discard > $D/null; check chr_opens_locally $?
# Rename, hard link and removal of special files.
mv $D/fifo $D/fifo2 && ln $D/fifo2 $D/fifo3 && [ "$(stat -c %h $D/fifo2)" = 2 ]; check rename_link $?
rm $D/fifo2 $D/fifo3 $D/sock $D/blk; check remove $?
# Left for the host to check on disk: a fifo and a character device made through NFS.
mkfifo -m 0604 $D/kept-fifo && mv $D/null $D/kept-null; check keep $?
umount /mnt/a

# A squashed root may make fifos and sockets but not devices.
mount -t nfs -o $O,port=$KC_SQUASH_PORT,mountport=$KC_SQUASH_PORT 10.0.2.2:/smb /mnt/s; check mount_squashed $?
S=/mnt/s/open
err=$(mknod $S/dev c 1 3 2>&1); rc=$?
echo "squashed mknod c: rc=$rc $err"
check squashed_mknod_eperm $([ $rc != 0 ] && echo "$err" | grep -q 'Operation not permitted'; echo $?)
mkfifo $S/fifo; check squashed_mkfifo $?
t=$(stat -c '%u %F' $S/fifo); check squashed_owner $([ "$t" = "65534 fifo" ]; echo $?)
umount /mnt/s
exit $fail
