"""The failover bench's application (bench/src/failover.rs): one file written continuously
through a public address, one 64 KiB write at a time, each followed by a FLUSH; a write counts
as acknowledged when its FLUSH returns.

It opens the file as Windows' redirector does on a share that offers them: a lease (RWH) and a
durable v2 handle (DH2Q), persistent when the tree is continuously available. When the
connection dies it does what a redirector does: connects to the same address again (same
ClientGuid) and reopens the handle with a DH2C, then repeats the write that had not been
acknowledged. Only what a redirector cannot hide is an *application error*: the handle could
not be reclaimed (the application's open file is gone; it reopens the file by name to go on
being measured), or a request failed with an error status.

Usage: failover_writer.py HOST PORT SHARE PATH
Prints `{"started": true}` once writing, `{"resumed": true}` at the first acknowledged write
after each reconnect, then runs until a line `stop` on stdin, then prints one
JSON line: writes acknowledged, the longest gap between two acknowledged writes (and when it
began, CLOCK_MONOTONIC), reconnects, reclaimed handles, application errors (with reasons).
"""
import json
import sys
import threading
import time
import uuid

from smbprotocol.connection import Connection
from smbprotocol.create_contexts import (
    CreateContextName,
    SMB2CreateContextRequest,
    SMB2CreateDurableHandleReconnectV2,
    SMB2CreateDurableHandleRequestV2,
    SMB2CreateRequestLeaseV2,
)
from smbprotocol.exceptions import SMBResponseException
from smbprotocol.open import (
    CreateDisposition,
    CreateOptions,
    FileAttributes,
    ImpersonationLevel,
    Open,
    RequestedOplockLevel,
)
from smbprotocol.session import Session
from smbprotocol.tree import TreeConnect

CHUNK = 64 * 1024
# A file of this size is written over and over (the offset wraps), so a long run stays small.
WRAP = 64 * 1024 * 1024
REQUEST_TIMEOUT = 30
RECONNECT_FOR = 120
LEASE_RWH = 0x7

host, port, share, path = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
client_guid = uuid.uuid4()
lease_key = uuid.uuid4().bytes
stop = threading.Event()


def stdin_watch():
    for line in sys.stdin:
        if line.strip() == "stop":
            break
    stop.set()


class Link:
    """One connection, session and tree (guest, unsigned)."""

    def __init__(self):
        self.conn = Connection(client_guid, host, port, require_signing=False)
        self.conn.connect(timeout=5)
        self.session = Session(self.conn, "guest", "guest", require_encryption=False, auth_protocol="ntlm")
        self.session.connect()
        self.tree = TreeConnect(self.session, rf"\\{host}\{share}")
        self.tree.connect(require_secure_negotiate=False)

    def close(self):
        try:
            self.conn.disconnect(close=False)
        except Exception:
            pass


def lease_ctx():
    lease = SMB2CreateRequestLeaseV2()
    lease["lease_key"] = lease_key
    lease["lease_state"] = LEASE_RWH
    lease["parent_lease_key"] = b"\x00" * 16
    lease["epoch"] = b"\x00\x00"
    ctx = SMB2CreateContextRequest()
    ctx["buffer_name"] = CreateContextName.SMB2_CREATE_REQUEST_LEASE_V2
    ctx["buffer_data"] = lease
    return ctx


def create(link, disposition, contexts):
    o = Open(link.tree, path)
    o.create(
        ImpersonationLevel.Impersonation,
        0x0012019F,
        FileAttributes.FILE_ATTRIBUTE_NORMAL,
        1,  # share read
        disposition,
        CreateOptions.FILE_NON_DIRECTORY_FILE,
        create_contexts=contexts,
        oplock_level=RequestedOplockLevel.SMB2_OPLOCK_LEVEL_LEASE,
    )
    return o


def open_durable(link):
    """A fresh open with a lease and a DH2Q (persistent on a CA tree); returns (open, create guid)."""
    guid = uuid.uuid4()
    dh = SMB2CreateDurableHandleRequestV2()
    dh["timeout"] = 60000
    dh["flags"] = 0x2 if link.tree.is_ca_share else 0
    dh["create_guid"] = guid
    ctx = SMB2CreateContextRequest()
    ctx["buffer_name"] = CreateContextName.SMB2_CREATE_DURABLE_HANDLE_REQUEST_V2
    ctx["buffer_data"] = dh
    return create(link, CreateDisposition.FILE_OPEN_IF, [lease_ctx(), ctx]), guid


def reclaim(link, o, guid):
    dh = SMB2CreateDurableHandleReconnectV2()
    dh["file_id"] = o.file_id
    dh["create_guid"] = guid
    dh["flags"] = 0x2 if link.tree.is_ca_share else 0
    ctx = SMB2CreateContextRequest()
    ctx["buffer_name"] = CreateContextName.SMB2_CREATE_DURABLE_HANDLE_RECONNECT_V2
    ctx["buffer_data"] = dh
    return create(link, CreateDisposition.FILE_OPEN, [lease_ctx(), ctx])


def acknowledged_write(link, o, data, off):
    """WRITE then FLUSH, each bounded by REQUEST_TIMEOUT."""
    sid, tid = link.session.session_id, link.tree.tree_connect_id
    msg, answer = o.write(data, off, send=False)
    req = link.conn.send(msg, sid, tid)
    link.conn.receive(req, timeout=REQUEST_TIMEOUT)
    answer(req)
    msg, answer = o.flush(send=False)
    req = link.conn.send(msg, sid, tid)
    link.conn.receive(req, timeout=REQUEST_TIMEOUT)
    answer(req)


def main():
    threading.Thread(target=stdin_watch, daemon=True).start()
    data = bytes(range(256)) * (CHUNK // 256)
    link = Link()
    o, guid = open_durable(link)
    stats = {"writes": 0, "gap_s": 0.0, "gap_at": None, "reconnects": 0, "reclaimed": 0, "errors": 0, "why": []}
    print(json.dumps({"started": True, "ca": bool(link.tree.is_ca_share)}), flush=True)
    off, last, failed = 0, None, False
    while not stop.is_set():
        try:
            acknowledged_write(link, o, data, off)
        except SMBResponseException as e:
            # The server answered with an error: the application sees it.
            stats["errors"] += 1
            stats["why"].append(f"write: {e.status:#x}")
            time.sleep(0.05)
            continue
        except Exception as e:
            # The connection is gone: reconnect, reclaim, repeat the write.
            link.close()
            deadline = time.monotonic() + RECONNECT_FOR
            while True:
                try:
                    link = Link()
                    break
                except Exception:
                    if time.monotonic() > deadline or stop.is_set():
                        stats["errors"] += 1
                        stats["why"].append(f"no connection for {RECONNECT_FOR} s after {type(e).__name__}")
                        print(json.dumps(stats), flush=True)
                        return
                    time.sleep(0.05)
            stats["reconnects"] += 1
            failed = True
            try:
                o = reclaim(link, o, guid)
                stats["reclaimed"] += 1
            except SMBResponseException as r:
                # The open is gone: the application's handle is invalid. It opens the file again.
                stats["errors"] += 1
                stats["why"].append(f"reclaim refused: {r.status:#x}")
                o, guid = open_durable(link)
            continue
        now = time.monotonic()
        if last is not None and now - last > stats["gap_s"]:
            stats["gap_s"], stats["gap_at"] = now - last, last
        last = now
        stats["writes"] += 1
        if failed:
            failed = False
            print(json.dumps({"resumed": True, "writes": None}), flush=True)
        off = (off + CHUNK) % WRAP
    # A stall still going on when told to stop counts too.
    if last is not None and time.monotonic() - last > stats["gap_s"]:
        stats["gap_s"], stats["gap_at"] = time.monotonic() - last, last
    link.close()
    print(json.dumps(stats), flush=True)


main()
