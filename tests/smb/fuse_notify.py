#!/usr/bin/env python3
"""A change made through the node's FUSE mount reaches an SMB CHANGE_NOTIFY watcher.

Usage: fuse_notify.py HOST PORT SHARE MOUNTPOINT

The share is the volume root, mounted at MOUNTPOINT. A guest watches the root for name
changes; this script then renames and creates files *locally* through the mount (os.rename,
open) and expects the watcher to report them; then it watches for writes and size changes and
writes a file locally (open, write, close: reported at the close, as smbd reports an SMB
client's writes). Prints "ALL OK" at the end.
"""

import os
import sys
import time
import uuid

from smbprotocol.change_notify import CompletionFilter, FileAction, FileSystemWatcher
from smbprotocol.connection import Connection
from smbprotocol.open import CreateDisposition, CreateOptions, DirectoryAccessMask, ImpersonationLevel, Open, ShareAccess
from smbprotocol.session import Session
from smbprotocol.tree import TreeConnect

host, port, share, mnt = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]

c = Connection(uuid.uuid4(), host, port, require_signing=False)
c.connect()
s = Session(c, "guest", "guest", require_encryption=False, auth_protocol="ntlm")
s.connect()
t = TreeConnect(s, rf"\\{host}\{share}")
t.connect(require_secure_negotiate=False)


def open_root():
    h = Open(t, "")
    h.create(ImpersonationLevel.Impersonation, DirectoryAccessMask.FILE_LIST_DIRECTORY | DirectoryAccessMask.SYNCHRONIZE,
             0, ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE | ShareAccess.FILE_SHARE_DELETE,
             CreateDisposition.FILE_OPEN, CreateOptions.FILE_DIRECTORY_FILE)
    return h


# A handle's first CHANGE_NOTIFY fixes its filter (as on Windows): one handle per filter.
d = open_root()

NAMES = CompletionFilter.FILE_NOTIFY_CHANGE_FILE_NAME | CompletionFilter.FILE_NOTIFY_CHANGE_DIR_NAME


WRITES = CompletionFilter.FILE_NOTIFY_CHANGE_LAST_WRITE | CompletionFilter.FILE_NOTIFY_CHANGE_SIZE


handles = {NAMES: d}


def watch(what=NAMES):
    if what not in handles:
        handles[what] = open_root()
    w = FileSystemWatcher(handles[what])
    w.start(what, output_buffer_length=65536)
    deadline = time.time() + 10
    while w._request.async_id is None and not w.response_event.is_set() and time.time() < deadline:
        time.sleep(0.005)
    return w


def events(w, timeout=10):
    deadline = time.time() + timeout
    while not w.response_event.is_set():
        if time.time() > deadline:
            return None
        w.response_event.wait(0.05)
    return [(e["action"].get_value(), e["file_name"].get_value()) for e in (w.result or [])]


def until(want, act, timeout=10, what=NAMES):
    seen = []
    w = watch(what)
    t0 = time.monotonic()
    act()
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = events(w, max(0.1, deadline - time.time()))
        if got is None:
            break
        seen += got
        if all(x in seen for x in want):
            return seen, time.monotonic() - t0
        w = watch(what)
    return seen, None


with open(os.path.join(mnt, "local-a.txt"), "w") as f:
    f.write("x")
seen, took = until([(FileAction.FILE_ACTION_RENAMED_OLD_NAME, "local-a.txt"), (FileAction.FILE_ACTION_RENAMED_NEW_NAME, "local-b.txt")],
                   lambda: os.rename(os.path.join(mnt, "local-a.txt"), os.path.join(mnt, "local-b.txt")))
if took is None:
    print(f"FAIL a local mv through the mount was not reported: {seen}")
    sys.exit(1)
print(f"ok   a local mv through the mount reached the SMB watcher in {took * 1000:.1f} ms")
seen, took = until([(FileAction.FILE_ACTION_ADDED, "local-dir")], lambda: os.mkdir(os.path.join(mnt, "local-dir")))
if took is None:
    print(f"FAIL a local mkdir through the mount was not reported: {seen}")
    sys.exit(1)
print(f"ok   a local mkdir through the mount reached the SMB watcher in {took * 1000:.1f} ms")


def local_write():
    with open(os.path.join(mnt, "local-b.txt"), "r+b") as f:
        f.seek(100)
        f.write(b"written through the mount")


seen, took = until([(FileAction.FILE_ACTION_MODIFIED, "local-b.txt")], local_write, what=WRITES)
if took is None:
    print(f"FAIL a local write through the mount was not reported: {seen}")
    sys.exit(1)
print(f"ok   a local write through the mount reached the SMB watcher in {took * 1000:.1f} ms (at its close)")
print("ALL OK")
