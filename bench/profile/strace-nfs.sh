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
# A server under strace, started and stopped by the bench like the server itself: strace
# only detaches on SIGTERM, so the wrapper hands that signal to the traced server and waits
# for both; a SIGKILL of the wrapper (how the harness stops Ganesha) reaches strace, then the
# server, as their parent-death signal. stdin stays the caller's (`nasgw passwd` reads it).
wrap() {
    cat <<WRAP
#!/bin/sh
# Only the daemon is traced (nasgw is also run for \`passwd\` and \`status\`).
case " \$* " in *" serve "*|*" -F "*) ;; *) exec $2 "\$@" ;; esac
exec 3<&0
setpriv --pdeathsig KILL strace -f -tt -o $out/$1.trace setpriv --pdeathsig KILL $2 "\$@" <&3 &
s=\$!
trap 'kill -TERM \$(pgrep -P \$s) 2>/dev/null' TERM INT
wait \$s
wait \$s
WRAP
}
wrap nasgw "$nasgw" > "$out/nasgw"
wrap ganesha "$ganesha" > "$out/bin/ganesha.nfsd"
chmod +x "$out/nasgw" "$out/bin/ganesha.nfsd"
PATH="$out/bin:$PATH" NASGW_BIN="$out/nasgw" "$bench" --quick --only nfs --out "$out" > "$out/bench.md" 2> "$out/bench.log" \
    || { tail -5 "$out/bench.log"; exit 1; }
here=$(dirname "$0")
echo "## nasgw ($nasgw)"; python3 "$here/nfs_syscalls.py" "$out/nasgw.trace"
echo "## NFS-Ganesha"; python3 "$here/nfs_syscalls.py" "$out/ganesha.trace"
echo "(traces in $out)"
