#!/usr/bin/env python3
"""Syscalls per NFSv3 procedure from an `strace -f -tt -o` trace of one NFS server driven by
one client issuing one request at a time (bench/profile/strace-nfs.sh). Every syscall from one request's receipt to the next
request's receipt is charged to that request (its reply, wake-ups and polling included)."""
import collections
import re
import sys

PROCS = {0:'NULL',1:'GETATTR',2:'SETATTR',3:'LOOKUP',4:'ACCESS',6:'READ',7:'WRITE',8:'CREATE',9:'MKDIR',
         12:'REMOVE',16:'READDIR',17:'READDIRPLUS',18:'FSSTAT',19:'FSINFO',20:'PATHCONF',21:'COMMIT'}
def unescape(s):
    out = bytearray(); i = 0
    while i < len(s):
        c = s[i]
        if c == '\\':
            n = s[i+1]
            if n in '01234567':
                j = i+1
                while j < len(s) and j < i+4 and s[j] in '01234567': j += 1
                out.append(int(s[i+1:j], 8)); i = j; continue
            out.append({'n':10,'t':9,'v':11,'f':12,'r':13,'"':34,'\\':92}.get(n, ord(n))); i += 2; continue
        out.append(ord(c)); i += 1
    return bytes(out)
call = re.compile(r'^(\d+) +[\d:.]+ ([a-z_0-9]+)\((.*)')
resumed = re.compile(r'^\d+ +[\d:.]+ <\.\.\. ([a-z_0-9]+) resumed>(.*)')
recv = re.compile(r'^(?:recvfrom|read|recvmsg)\(\d+, "((?:[^"\\]|\\.)*)"')
def main(path):
    ops = collections.defaultdict(list); cur = None; c = None
    pending_mark = False
    for line in open(path, 'rb').read().decode('latin1').splitlines():
        m = call.match(line)
        rm = resumed.match(line)
        if rm:
            # The end of a call whose start was counted already: only its data matters.
            name, text = rm.group(1), rm.group(2)
            if name not in ('recvfrom', 'read') or not text.startswith('"'):
                continue
            r = re.match(r'"((?:[^"\\]|\\.)*)"', text)
        elif m:
            name = m.group(2)
            r = recv.match(name + '(' + m.group(3)) if name in ('recvfrom', 'read') else None
        else:
            continue
        if r:
            b = unescape(r.group(1))
            if len(b) == 4 and b[0] & 0x80:  # a record mark read on its own (Ganesha)
                pending_mark = True
            else:
                # An RPC call: xid, CALL (0), rpcvers, program 100003 (NFS), version, procedure.
                words = b[4:] if (len(b) >= 28 and b[0] & 0x80 and not pending_mark) else b
                pending_mark = False
                if len(words) >= 24 and int.from_bytes(words[4:8], 'big') == 0 \
                        and int.from_bytes(words[12:16], 'big') == 100003:
                    cur = PROCS.get(int.from_bytes(words[20:24], 'big'), '?')
                    c = collections.Counter()
                    ops[cur].append(c)
        if c is not None and m: c[name] += 1
    # An op's tail runs until the next request: the last one of a phase also carries the
    # server's idle time. Report the median op, and the mix of the ops up to the 90th percentile.
    for p, cs in sorted(ops.items(), key=lambda kv: -len(kv[1])):
        tots = sorted(sum(x.values()) for x in cs)
        med = tots[len(tots) // 2]; cut = tots[int(len(tots) * 0.9)]
        kept = [x for x in cs if sum(x.values()) <= cut]
        mix = collections.Counter()
        for x in kept: mix.update(x)
        top = ', '.join(f'{k} {v/len(kept):.1f}' for k, v in mix.most_common(9))
        print(f'{p:12s} n={len(cs):6d} median {med:5d} syscalls/op; mix (ops <= p90): {top}')
if __name__ == '__main__':
    main(sys.argv[1])
