"""CHANGE_NOTIFY and server-side copy against nasgw, as Windows Explorer and `copy` use them.

Usage: notify_copy_check.py HOST PORT SHARE [--user USER PASSWORD] [--nfs NFS_URL_WITH_{name}_IN_THE_notify_FOLDER]
       [--local SHARE_FOLDER_ON_THIS_HOST]
                            [--other HOST2 PORT2]
- a watcher on one connection sees what another connection creates, renames, writes, deletes
  (names and actions), recursively with WATCH_TREE, NOTIFY_ENUM_DIR on overflow, cancel;
- with --nfs: a file created through NFS (nfs-cp into the share's `notify` folder) is seen, and
  an NFS WRITE is reported as a modification;
- with --local: names created, renamed, removed directly in the share's folder on this host are
  seen, and an SMB change is reported once (not again as its inotify echo);
- with --other: only the cross-node check runs: a file created through HOST2 (another node)
  reaches the watcher on HOST;
- without --other: FSCTL_SRV_COPYCHUNK_WRITE (smbclient.copyfile does REQUEST_RESUME_KEY then
  copychunks) copies 40 MiB with the data never read by the client, and the MS-SMB2 limits.
Prints one line per check and exits non-zero on the first failure.
"""
import os
import struct
import subprocess
import sys
import tempfile
import time
import uuid

import smbclient
import smbclient.shutil
from smbprotocol.change_notify import ChangeNotifyFlags, CompletionFilter, FileAction, FileSystemWatcher
from smbprotocol.connection import Connection
from smbprotocol.exceptions import SMBResponseException
from smbprotocol.ioctl import CtlCode, IOCTLFlags, SMB2IOCTLRequest, SMB2IOCTLResponse
from smbprotocol.open import (CreateDisposition, CreateOptions, DirectoryAccessMask, FilePipePrinterAccessMask,
                              ImpersonationLevel, Open, ShareAccess)
from smbprotocol.session import Session
from smbprotocol.tree import TreeConnect

args = sys.argv[1:]
host, port, share = args[0], int(args[1]), args[2]
user, password, nfs_url, other, local = None, None, None, None, None
i = 3
while i < len(args):
    if args[i] == "--user":
        user, password = args[i + 1], args[i + 2]
        i += 3
    elif args[i] == "--nfs":
        nfs_url = args[i + 1]
        i += 2
    elif args[i] == "--local":
        local = args[i + 1]
        i += 2
    elif args[i] == "--other":
        other = (args[i + 1], int(args[i + 2]))
        i += 3
    else:
        sys.exit(f"unknown argument {args[i]}")


def check(name, cond, detail=""):
    if not cond:
        print(f"FAIL {name} {detail}")
        sys.exit(1)
    print(f"ok   {name}")


def session(h, p):
    c = Connection(uuid.uuid4(), h, p, require_signing=user is not None)
    c.connect()
    if user is None:
        s = Session(c, "guest", "guest", require_encryption=False, auth_protocol="ntlm")
    else:
        s = Session(c, user, password, require_encryption=False, auth_protocol="ntlm")
    s.connect()
    t = TreeConnect(s, rf"\\{h}\{share}")
    t.connect(require_secure_negotiate=False)
    return c, s, t


def register(h, p):
    if user is None:
        smbclient.ClientConfig(require_secure_negotiate=False)
        smbclient.register_session(h, port=p, username="guest", password="guest", require_signing=False, auth_protocol="ntlm")
    else:
        smbclient.register_session(h, port=p, username=user, password=password, require_signing=True, auth_protocol="ntlm")


def open_dir(tree, path):
    d = Open(tree, path)
    d.create(ImpersonationLevel.Impersonation, DirectoryAccessMask.FILE_LIST_DIRECTORY | DirectoryAccessMask.SYNCHRONIZE,
             0, ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE | ShareAccess.FILE_SHARE_DELETE,
             CreateDisposition.FILE_OPEN_IF, CreateOptions.FILE_DIRECTORY_FILE)
    return d


NAMES = CompletionFilter.FILE_NOTIFY_CHANGE_FILE_NAME | CompletionFilter.FILE_NOTIFY_CHANGE_DIR_NAME


def events(w, timeout=10):
    """Waits (polling) for watcher `w` to complete: [(action, name)], or None on timeout."""
    deadline = time.time() + timeout
    while not w.response_event.is_set():
        if time.time() > deadline:
            return None
        w.response_event.wait(0.05)
    r = w.result
    if r is None:  # cancelled
        return None
    return [(e["action"].get_value(), e["file_name"].get_value()) for e in r]


def watch(d, filt=NAMES, flags=0, size=65536):
    """Starts a watcher and waits until the server took the request (answered PENDING, or
    answered at once), so a change made next cannot overtake it on another connection."""
    w = FileSystemWatcher(d)
    w.start(filt, flags=flags, output_buffer_length=size)
    deadline = time.time() + 10
    while w._request.async_id is None and not w.response_event.is_set() and time.time() < deadline:
        time.sleep(0.005)
    return w


def until(d, want, filt=NAMES, flags=0, timeout=10):
    """Watches `d` until the events seen contain every (action, name) of `want`."""
    seen = []
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = events(watch(d, filt, flags), max(0.1, deadline - time.time()))
        if got is None:
            break
        seen += got
        if all(x in seen for x in want):
            return seen
    return seen


def unc(h, *parts):
    return "\\".join([rf"\\{h}\{share}"] + list(parts))


register(host, port)
kw = {"port": port}
top = "notify"
if other is None and smbclient.path.exists(unc(host, top), **kw):
    smbclient.shutil.rmtree(unc(host, top), **kw)
smbclient.makedirs(unc(host, top, "sub"), exist_ok=True, **kw)
conn, sess, tree = session(host, port)
d = open_dir(tree, top)

if other is not None:
    # Cross-node: a change made through the other node reaches this node's watcher. The
    # cluster's channel is up once the nodes see each other; poll by creating new files.
    register(other[0], other[1])
    okw = {"port": other[1]}
    deadline = time.time() + 60
    seen = []
    n = 0
    while time.time() < deadline:
        n += 1
        name = f"remote{n}.txt"
        w = watch(d)
        with smbclient.open_file(unc(other[0], top, name), mode="wb", **okw) as f:
            f.write(b"x")
        got = events(w, 2)
        if got:
            seen = got
            break
        w.cancel()
        events(w, 5)
    check("a file created through the other node is seen here", (FileAction.FILE_ACTION_ADDED, name) in seen, seen)
    w = watch(d)
    smbclient.rename(unc(other[0], top, name), unc(other[0], top, "moved.txt"), **okw)
    got = events(w) or []
    want = [(FileAction.FILE_ACTION_RENAMED_OLD_NAME, name), (FileAction.FILE_ACTION_RENAMED_NEW_NAME, "moved.txt")]
    if not all(x in got for x in want):
        got += until(d, want)
    check("a rename through the other node is seen here", all(x in got for x in want), got)
    print("ALL OK")
    sys.exit(0)

# Names: create, rename, delete through another connection.
w = watch(d)
with smbclient.open_file(unc(host, top, "a.txt"), mode="wb", **kw) as f:
    f.write(b"hello")
got = events(w)
check("create is reported ADDED a.txt", got is not None and got[0] == (FileAction.FILE_ACTION_ADDED, "a.txt"), got)

smbclient.rename(unc(host, top, "a.txt"), unc(host, top, "b.txt"), **kw)
got = until(d, [(FileAction.FILE_ACTION_RENAMED_OLD_NAME, "a.txt"), (FileAction.FILE_ACTION_RENAMED_NEW_NAME, "b.txt")])
check("rename is reported RENAMED_OLD a.txt, RENAMED_NEW b.txt",
      (FileAction.FILE_ACTION_RENAMED_OLD_NAME, "a.txt") in got and (FileAction.FILE_ACTION_RENAMED_NEW_NAME, "b.txt") in got, got)

smbclient.remove(unc(host, top, "b.txt"), **kw)
got = until(d, [(FileAction.FILE_ACTION_REMOVED, "b.txt")])
check("delete is reported REMOVED b.txt", (FileAction.FILE_ACTION_REMOVED, "b.txt") in got, got)

smbclient.mkdir(unc(host, top, "newdir"), **kw)
got = until(d, [(FileAction.FILE_ACTION_ADDED, "newdir")], filt=CompletionFilter.FILE_NOTIFY_CHANGE_DIR_NAME)
check("mkdir is reported to a DIR_NAME watcher", (FileAction.FILE_ACTION_ADDED, "newdir") in got, got)

# A write is reported as a modification (once, when the writer closes).
with smbclient.open_file(unc(host, top, "w.txt"), mode="wb", **kw) as f:
    f.write(b"1")
until(d, [(FileAction.FILE_ACTION_ADDED, "w.txt")])
# A handle keeps the filter of its first request (as on Windows): a new handle for a new filter.
dw = open_dir(tree, top)
w = watch(dw, CompletionFilter.FILE_NOTIFY_CHANGE_LAST_WRITE | CompletionFilter.FILE_NOTIFY_CHANGE_SIZE)
with smbclient.open_file(unc(host, top, "w.txt"), mode="ab", **kw) as f:
    f.write(b"more")
got = events(w)
check("a write is reported MODIFIED w.txt", got is not None and (FileAction.FILE_ACTION_MODIFIED, "w.txt") in got, got)
dw.close()

# Changes between two requests are kept for the next one.
with smbclient.open_file(unc(host, top, "between.txt"), mode="wb", **kw) as f:
    f.write(b"1")
got = events(watch(d))
check("a change made between requests is reported by the next", got is not None and (FileAction.FILE_ACTION_ADDED, "between.txt") in got, got)

# A non-recursive watcher does not see a subdirectory; WATCH_TREE does, with the path.
dt = open_dir(tree, top)
wt = watch(dt, flags=ChangeNotifyFlags.SMB2_WATCH_TREE)
w = watch(d)
with smbclient.open_file(unc(host, top, "sub", "deep.txt"), mode="wb", **kw) as f:
    f.write(b"1")
got = events(wt)
check("WATCH_TREE reports sub\\deep.txt", got is not None and (FileAction.FILE_ACTION_ADDED, "sub\\deep.txt") in got, got)
with smbclient.open_file(unc(host, top, "marker.txt"), mode="wb", **kw) as f:
    f.write(b"1")
got = events(w)
check("a plain watcher skips the subdirectory", got is not None and got[0] == (FileAction.FILE_ACTION_ADDED, "marker.txt"), got)
dt.close()

# More changes than the client's buffer holds: NOTIFY_ENUM_DIR (smbprotocol: an empty list).
w = watch(d, size=64)
w.cancel()
events(w, 5)
for n in range(20):
    with smbclient.open_file(unc(host, top, f"many{n:02}.txt"), mode="wb", **kw) as f:
        f.write(b"1")
got = events(watch(d, size=64))
check("overflow answers NOTIFY_ENUM_DIR", got == [], got)

# Cancel completes the request.
w = watch(d)
w.cancel()
events(w, 5)
check("cancel completes the pending request", w.cancelled)

if nfs_url is not None:
    w = watch(d)
    with tempfile.NamedTemporaryFile() as tmp:
        tmp.write(b"via nfs")
        tmp.flush()
        subprocess.run(["nfs-cp", tmp.name, nfs_url.replace("{name}", "nfs.txt")], check=True)
    got = events(w)
    check("a file created through NFS is reported ADDED nfs.txt", got is not None and (FileAction.FILE_ACTION_ADDED, "nfs.txt") in got, got)
    # NFS WRITE (no open, no close) reaches a watcher of sizes and write times (a handle of its
    # own: a handle's watch keeps the filter of its first request).
    d2 = open_dir(tree, top)
    w = watch(d2, CompletionFilter.FILE_NOTIFY_CHANGE_SIZE | CompletionFilter.FILE_NOTIFY_CHANGE_LAST_WRITE)
    with tempfile.NamedTemporaryFile() as tmp:
        tmp.write(b"written through nfs")
        tmp.flush()
        subprocess.run(["nfs-cp", tmp.name, nfs_url.replace("{name}", "nfs-write.txt")], check=True)
    got = events(w)
    check("an NFS write is reported MODIFIED nfs-write.txt",
          got is not None and (FileAction.FILE_ACTION_MODIFIED, "nfs-write.txt") in got, got)
    d2.close()

if local is not None:
    # A program on the node changes names directly in the watched folder (inotify).
    ldir = os.path.join(local, top)
    ADDED, REMOVED = FileAction.FILE_ACTION_ADDED, FileAction.FILE_ACTION_REMOVED
    OLD, NEW = FileAction.FILE_ACTION_RENAMED_OLD_NAME, FileAction.FILE_ACTION_RENAMED_NEW_NAME
    for what, change, want in [
        ("created", lambda: open(os.path.join(ldir, "local.txt"), "wb").close(), [(ADDED, "local.txt")]),
        ("renamed", lambda: os.rename(os.path.join(ldir, "local.txt"), os.path.join(ldir, "local2.txt")),
         [(OLD, "local.txt"), (NEW, "local2.txt")]),
        ("removed", lambda: os.remove(os.path.join(ldir, "local2.txt")), [(REMOVED, "local2.txt")]),
    ]:
        w = watch(d)
        t0 = time.time()
        change()
        got = events(w) or []
        if not all(x in got for x in want):
            got += until(d, want)
        check(f"a file {what} directly on the volume is reported {want} ({(time.time() - t0) * 1000:.0f} ms)",
              all(x in got for x in want), got)
    # nasgw's own change raises an inotify event too: reported once, not twice.
    w = watch(d)
    with smbclient.open_file(unc(host, top, "once.txt"), mode="wb", **kw) as f:
        f.write(b"x")
    got = events(w) or []
    w = watch(d)
    more = events(w, 1.5)
    if more is None:
        w.cancel()
        events(w, 5)
        more = []
    n = [e for e in got + more if e == (ADDED, "once.txt")]
    check("a file created through SMB is reported once (its inotify echo is dropped)", len(n) == 1, got + more)
    # The connection whose watch started the node's inotify reader ends: another connection's
    # watch still hears local changes (the reader runs on the daemon's runtime, not on the
    # first watcher's connection, whose runtime ends with it or when it goes dormant).
    d.close()
    conn.disconnect(True)
    conn, sess, tree = session(host, port)
    d = open_dir(tree, top)
    w = watch(d)
    open(os.path.join(ldir, "after.txt"), "wb").close()
    got = events(w) or []
    if (ADDED, "after.txt") not in got:
        got += until(d, [(ADDED, "after.txt")])
    check("after the first watcher's connection ended, a local create is still reported",
          (ADDED, "after.txt") in got, got)
d.close()

# macOS: the AAPL create context on the first CREATE, then Finder's metadata streams.
from smbprotocol.create_contexts import SMB2CreateContextRequest  # noqa: E402

aapl = SMB2CreateContextRequest()
aapl["buffer_name"] = b"AAPL"
# SERVER_QUERY; server caps | volume caps | model; client caps (READ_DIR_ATTR | COPYFILE | UNIX)
aapl["buffer_data"] = struct.pack("<IIQQ", 1, 0, 7, 7)
o = Open(tree, top)
ctxs = o.create(ImpersonationLevel.Impersonation, DirectoryAccessMask.FILE_LIST_DIRECTORY, 0,
                ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE, CreateDisposition.FILE_OPEN,
                CreateOptions.FILE_DIRECTORY_FILE, create_contexts=[aapl])
o.close()
reply = [c for c in (ctxs or []) if isinstance(c, bytes) and c[:4] == struct.pack("<I", 1)]
check("AAPL is answered", len(reply) == 1, ctxs)
r = reply[0]
cmd, _, bitmap, server_caps, volume_caps, _, mlen = struct.unpack("<IIQQQII", r[:40])
model = r[40:40 + mlen].decode("utf-16-le")
check(f"AAPL: all three answered, Unix based, case-insensitive, model {model!r}",
      bitmap == 7 and server_caps & 4 and server_caps & 1 == 0 and volume_caps == 0 and model == "nasgw", r)
afp = unc(host, top, "mac.txt")
with smbclient.open_file(afp, mode="wb", **kw) as f:
    f.write(b"data fork")
info = b"AFP\x00" + struct.pack(">I", 0x00010000) + b"\x00" * 4 + struct.pack(">I", 0) + b"TEXTttxt" + b"\x00" * 40
info = info[:60]
with smbclient.open_file(afp + ":AFP_AfpInfo", mode="wb", **kw) as f:
    f.write(info)
rsrc = os.urandom(3000)
with smbclient.open_file(afp + ":AFP_Resource", mode="wb", **kw) as f:
    f.write(rsrc)
with smbclient.open_file(afp + ":AFP_AfpInfo", mode="rb", **kw) as f:
    check("AFP_AfpInfo (60 bytes, type TEXT creator ttxt) reads back", f.read() == info)
with smbclient.open_file(afp + ":AFP_Resource", mode="rb", **kw) as f:
    check("AFP_Resource reads back", f.read() == rsrc)
with smbclient.open_file(afp, mode="rb", **kw) as f:
    check("the data fork is untouched", f.read() == b"data fork")

# Server-side copy: smbclient.copyfile asks for a resume key and sends COPYCHUNK_WRITEs.
src, dst = unc(host, top, "big.bin"), unc(host, top, "big-copy.bin")
data = os.urandom(40 * 1024 * 1024 + 4097)
with smbclient.open_file(src, mode="wb", **kw) as f:
    f.write(data)
t0 = time.time()
smbclient.copyfile(src, dst, **kw)
took = time.time() - t0
with smbclient.open_file(dst, mode="rb", **kw) as f:
    check(f"server-side copy of 40 MiB is exact ({took:.2f} s)", f.read() == data)


def ioctl(tree, fid, code, inp, max_out=1024):
    req = SMB2IOCTLRequest()
    req["ctl_code"] = code
    req["file_id"] = fid
    req["max_output_response"] = max_out
    req["flags"] = IOCTLFlags.SMB2_0_IOCTL_IS_FSCTL
    req["buffer"] = inp
    r = tree.session.connection.send(req, sid=tree.session.session_id, tid=tree.tree_connect_id)
    try:
        resp = tree.session.connection.receive(r)
        return 0, resp
    except SMBResponseException as e:
        return e.status, None


def open_file(tree, path, access):
    o = Open(tree, path)
    o.create(ImpersonationLevel.Impersonation, access, 0,
             ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE | ShareAccess.FILE_SHARE_DELETE,
             CreateDisposition.FILE_OPEN_IF, 0)
    return o


A = FilePipePrinterAccessMask
s_open = open_file(tree, top + "\\big.bin", A.FILE_READ_DATA)
status, resp = ioctl(tree, s_open.file_id, CtlCode.FSCTL_SRV_REQUEST_RESUME_KEY, b"", 32)
check("REQUEST_RESUME_KEY answers a key", status == 0, hex(status))
ir = SMB2IOCTLResponse()
ir.unpack(resp["data"].get_value())
key = ir["buffer"].get_value()[:24]
d_open = open_file(tree, top + "\\limits.bin", A.FILE_READ_DATA | A.FILE_WRITE_DATA)
WRITE = 0x001480F2


def chunks(key, cs):
    b = key + struct.pack("<II", len(cs), 0)
    for s, t, n in cs:
        b += struct.pack("<QQII", s, t, n, 0)
    return b


status, _ = ioctl(tree, d_open.file_id, WRITE, chunks(key, [(0, 0, 2 * 1024 * 1024)]))
check("a chunk over 1 MiB is refused INVALID_PARAMETER", status == 0xC000000D, hex(status))
status, _ = ioctl(tree, d_open.file_id, WRITE, chunks(key, [(0, 0, 1)] * 257))
check("more than 256 chunks are refused", status == 0xC000000D, hex(status))
status, _ = ioctl(tree, d_open.file_id, WRITE, chunks(b"\x01" * 24, [(0, 0, 10)]))
check("an unknown key is OBJECT_NAME_NOT_FOUND", status == 0xC0000034, hex(status))
status, _ = ioctl(tree, d_open.file_id, WRITE, chunks(key, [(len(data) - 5, 0, 10)]))
check("a range past the source's end is INVALID_VIEW_SIZE", status == 0xC000001F, hex(status))
status, resp = ioctl(tree, d_open.file_id, WRITE, chunks(key, [(0, 100, 10), (10, 0, 100)]))
ir = SMB2IOCTLResponse()
ir.unpack(resp["data"].get_value())
written = struct.unpack("<III", ir["buffer"].get_value()[:12])
check("two chunks: 2 chunks, 110 bytes written", written == (2, 0, 110), written)
ro = open_file(tree, top + "\\limits.bin", A.FILE_READ_DATA)
status, _ = ioctl(tree, ro.file_id, WRITE, chunks(key, [(0, 0, 10)]))
check("a target without write access is ACCESS_DENIED", status == 0xC0000022, hex(status))
for o in (s_open, d_open, ro):
    o.close()
with smbclient.open_file(unc(host, top, "limits.bin"), mode="rb", **kw) as f:
    got = f.read()
check("the copied ranges landed", got[:100] == data[10:110] and got[100:110] == data[:10], len(got))
print("ALL OK")
