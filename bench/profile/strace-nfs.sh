#!/bin/sh
# Syscalls per NFSv3 operation of nasgw and of NFS-Ganesha on the bench's NFS workloads:
# runs `bench --quick --only nfs` with both servers under `strace -f`, then counts each trace
# with nfs_syscalls.py (median syscalls per operation, and their mix). Counts, unlike times,
# do not depend on how busy the machine is (strace slows both servers: ignore the bench's
# figures of this run). As root, from the repository root:
#   bench/profile/strace-nfs.sh [BENCH] [NASGW]     (default target/release/{bench,nasgw})
set -eu
bench=${1:-target/release/bench}
nasgw=$(realpath "${2:-target/release/nasgw}")
out=$(mktemp -d /tmp/nasgw-strace-XXXXXX)
ganesha=$(command -v ganesha.nfsd)
mkdir -p "$out/bin"
printf '#!/bin/sh\nexec strace -f -tt -o %s/nasgw.trace %s "$@"\n' "$out" "$nasgw" > "$out/nasgw"
printf '#!/bin/sh\nexec strace -f -tt -o %s/ganesha.trace %s "$@"\n' "$out" "$ganesha" > "$out/bin/ganesha.nfsd"
chmod +x "$out/nasgw" "$out/bin/ganesha.nfsd"
PATH="$out/bin:$PATH" NASGW_BIN="$out/nasgw" "$bench" --quick --only nfs --out "$out" > "$out/bench.md" 2> "$out/bench.log"
here=$(dirname "$0")
echo "## nasgw ($nasgw)"; python3 "$here/nfs_syscalls.py" "$out/nasgw.trace"
echo "## NFS-Ganesha"; python3 "$here/nfs_syscalls.py" "$out/ganesha.trace"
echo "(traces in $out)"
