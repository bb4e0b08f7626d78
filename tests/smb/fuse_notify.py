#!/usr/bin/env python3
"""A change made through the node's FUSE mount reaches an SMB CHANGE_NOTIFY watcher.

Usage: fuse_notify.py HOST PORT SHARE MOUNTPOINT

The share is the volume root, mounted at MOUNTPOINT. A guest watches the root for name
changes; this script then renames and creates files *locally* through the mount (os.rename,
open) and expects the watcher to report them. Prints "ALL OK" at the end.
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
d = Open(t, "")
d.create(ImpersonationLevel.Impersonation, DirectoryAccessMask.FILE_LIST_DIRECTORY | DirectoryAccessMask.SYNCHRONIZE, 0,
         ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE | ShareAccess.FILE_SHARE_DELETE,
         CreateDisposition.FILE_OPEN, CreateOptions.FILE_DIRECTORY_FILE)

NAMES = CompletionFilter.FILE_NOTIFY_CHANGE_FILE_NAME | CompletionFilter.FILE_NOTIFY_CHANGE_DIR_NAME


def watch():
    w = FileSystemWatcher(d)
    w.start(NAMES, output_buffer_length=65536)
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


def until(want, act, timeout=10):
    seen = []
    w = watch()
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
        w = watch()
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
print("ALL OK")
