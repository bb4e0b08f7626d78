#!/bin/sh
# Guest side of tests/tests/nlm_kclient.rs: the Linux NFSv3 client (kernel lockd, rpc.statd)
# mounts the server with the seed recipe's exact options and takes fcntl and flock locks.
# It talks with the host test through marker files on a second mount of the same export
# (no attribute or lookup caching there, so each side sees the other's markers at once).
# Env: see nlm-lib.sh. Prints CHECK lines.
. "$KCLIENT_JOB/files/nlm-lib.sh"
F=/mnt/n/locked.db
echo data > $F

# 1. fcntl from two processes: one holds, the other waits and gets it on release.
hold /tmp/a fcntl $F w 0 0 nowait /tmp/r1
saw /tmp/a locked && check fcntl-first ok || check fcntl-first FAIL "$(cat /tmp/a)"
hold /tmp/b fcntl $F w 0 0 wait /tmp/r2
sleep 1
grep -qw locked /tmp/b && check fcntl-waits FAIL "granted while held" || check fcntl-waits ok
T=$(now); touch /tmp/r1
if saw /tmp/b locked 600; then
	W=$(ms_since "$T"); echo "fcntl: the waiter got the lock $W ms after the release"
	[ "$W" -lt 5000 ] && check fcntl-handoff ok || check fcntl-handoff FAIL "$W ms (a client re-poll, not a callback)"
else check fcntl-handoff FAIL "never granted"; fi
touch /tmp/r2; saw /tmp/b unlocked; rm -f /tmp/r1 /tmp/r2

# 2. flock (the client turns it into a whole-file lock on the server) from two processes.
hold /tmp/a flock $F w 0 0 nowait /tmp/r1
saw /tmp/a locked && check flock-first ok || check flock-first FAIL "$(cat /tmp/a)"
$L hold flock $F w 0 0 nowait /tmp/r9 > /tmp/c 2>&1
grep -q "denied 11" /tmp/c && check flock-nowait-denied ok || check flock-nowait-denied FAIL "$(cat /tmp/c)"
hold /tmp/b flock $F w 0 0 wait /tmp/r2
sleep 1
T=$(now); touch /tmp/r1
if saw /tmp/b locked 600; then
	W=$(ms_since "$T"); echo "flock: the waiter got the lock $W ms after the release"
	[ "$W" -lt 5000 ] && check flock-handoff ok || check flock-handoff FAIL "$W ms"
else check flock-handoff FAIL "never granted"; fi
touch /tmp/r2; saw /tmp/b unlocked; rm -f /tmp/r1 /tmp/r2

# 3. Byte ranges: disjoint ranges coexist, overlapping ones conflict.
hold /tmp/a fcntl $F w 0 10 nowait /tmp/r1
saw /tmp/a locked
hold /tmp/c fcntl $F w 10 10 nowait /tmp/r3
saw /tmp/c locked 100 && check ranges-disjoint ok || check ranges-disjoint FAIL "$(cat /tmp/c)"
$L hold fcntl $F r 5 1 nowait /tmp/r9 > /tmp/d 2>&1
grep -q "denied 11" /tmp/d && check ranges-overlap-denied ok || check ranges-overlap-denied FAIL "$(cat /tmp/d)"
touch /tmp/r1 /tmp/r3; saw /tmp/a unlocked; saw /tmp/c unlocked; rm -f /tmp/r1 /tmp/r3

# 4. Another client (the host's NLM client) sees this client's lock, and the reverse.
hold /tmp/a fcntl $F w 0 0 nowait /tmp/r1
saw /tmp/a locked
signal held
await host-checked
touch /tmp/r1; saw /tmp/a unlocked; rm -f /tmp/r1
signal released
await host-holds
$L hold fcntl $F w 0 0 nowait /tmp/r9 > /tmp/d 2>&1
grep -q "denied 11" /tmp/d && check host-lock-seen ok || check host-lock-seen FAIL "$(cat /tmp/d)"
hold /tmp/b fcntl $F w 0 0 wait /tmp/r2
sleep 1
T=$(now)
signal waiting
if saw /tmp/b locked 600; then
	W=$(ms_since "$T"); echo "waited $W ms for the host client's lock"
	[ "$W" -lt 10000 ] && check host-handoff ok || check host-handoff FAIL "$W ms"
else check host-handoff FAIL "never granted"; fi
touch /tmp/r2; saw /tmp/b unlocked; rm -f /tmp/r2

# 5. The server restarts while this client holds a lock: told by SM_NOTIFY, the client
#    reclaims it (the host checks nobody else gets it meanwhile).
hold /tmp/a fcntl $F w 0 0 nowait /tmp/r1
saw /tmp/a locked
signal held2
await host-checked2 3000
touch /tmp/r1; saw /tmp/a unlocked 1200 && check unlock-after-restart ok || check unlock-after-restart FAIL "$(cat /tmp/a)"
signal released2
dmesg | grep -i -E "lockd|statd" | tail -5
umount /mnt/n
umount /mnt/sig
echo "GUEST DONE"
