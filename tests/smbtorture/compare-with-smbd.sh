#!/bin/bash
# Runs the smbtorture suites against Samba's smbd on the seed's guest share configuration and
# prints the subtests it passes (suite.subtest), for pass-smbd-4.17.txt.
# Usage: compare-with-smbd.sh PORT [SUITE...]   (smbd is started and stopped by this script, by PID;
# without suites: the ones smb_torture.rs runs)
# With TORTURE_USER_PASSWORD=P set, smbtorture logs on as the user root with password P (added to
# smbd's own passdb) on a share without `guest only`, as smb_torture.rs's user run does.
set -euo pipefail
PORT=${1:-14446}
T=$(mktemp -d)
mkdir -p $T/{priv,lock,state,cache,pid,ncalrpc,share,res}
cat > $T/smb.conf <<CONF
[global]
smb ports = $PORT
interfaces = 127.0.0.1
bind interfaces only = yes
private dir = $T/priv
lock directory = $T/lock
state directory = $T/state
cache directory = $T/cache
pid directory = $T/pid
ncalrpc dir = $T/ncalrpc
map to guest = Bad User
disable netbios = yes
load printers = no
[pub]
path = $T/share
browseable = yes
writable = yes
guest ok = yes
force user = root
CONF
if [ -n "${TORTURE_USER_PASSWORD:-}" ]; then
  CRED="root%$TORTURE_USER_PASSWORD"
  printf '%s\n%s\n' "$TORTURE_USER_PASSWORD" "$TORTURE_USER_PASSWORD" | smbpasswd -c $T/smb.conf -s -a root > /dev/null
else
  CRED=%
  sed -i 's/^force user = root$/guest only = yes\nforce user = root/' $T/smb.conf
fi
# setsid: with --no-process-group, smbd answers SIGTERM by signalling its whole process group.
setsid smbd -F --no-process-group --debug-stdout -s $T/smb.conf > $T/smbd.log 2>&1 &
SMBD=$!
trap 'kill $SMBD 2>/dev/null; rm -rf $T' EXIT
for i in $(seq 100); do (echo > /dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
shift || true
SUITES=("$@")
[ ${#SUITES[@]} -gt 0 ] || SUITES=(smb2.connect smb2.credits smb2.read smb2.rw smb2.dir smb2.getinfo smb2.setinfo smb2.lock smb2.rename smb2.create smb2.delete-on-close-perms smb2.sharemode)
for s in "${SUITES[@]}"; do
  timeout 300 smbtorture //127.0.0.1/pub -U$CRED -p $PORT --format=subunit $s > $T/res/$s.out 2>&1 &
done
wait $(jobs -p | grep -v "^$SMBD$") 2>/dev/null || true
for f in $T/res/*.out; do s=$(basename $f .out); sed -nE "s/^success: ([^[]*[^[ ]).*/$s.\1/p" $f; done | sort -u
