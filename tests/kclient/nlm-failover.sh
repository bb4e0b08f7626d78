#!/bin/sh
# Guest side of tests/tests/nlm_failover.rs: the Linux NFSv3 client mounts a public address of
# a three-node cluster (the seed recipe's options), holds a write lock while the node serving
# that address is killed, reclaims it on the new owner when told (SM_NOTIFY), and sees SMB
# clients' locks on other nodes. Env: see nlm-lib.sh. Prints CHECK lines.
. "$KCLIENT_JOB/files/nlm-lib.sh"
F=/mnt/n/db
echo data > $F

# Hold a whole-file write lock across the failover.
hold /tmp/a fcntl $F w 0 0 nowait /tmp/r1
saw /tmp/a locked && check first-lock ok || check first-lock FAIL "$(cat /tmp/a)"
signal held
await host-checked 3000
touch /tmp/r1
saw /tmp/a unlocked 1200 && check unlock-after-failover ok || check unlock-after-failover FAIL "$(cat /tmp/a)"
rm -f /tmp/r1
signal released

# An SMB client holds a lock (through another node): refused here, granted once it is released.
await smb-holds
$L hold fcntl $F w 0 0 nowait /tmp/r9 > /tmp/d 2>&1
grep -q "denied 11" /tmp/d && check smb-lock-seen ok || check smb-lock-seen FAIL "$(cat /tmp/d)"
signal smb-seen
await smb-released
hold /tmp/a fcntl $F w 0 100 nowait /tmp/r1
saw /tmp/a locked 100 && check after-smb ok || check after-smb FAIL "$(cat /tmp/a)"
signal held3
await host-checked3
touch /tmp/r1; saw /tmp/a unlocked
umount /mnt/n
umount /mnt/sig
echo "GUEST DONE"
