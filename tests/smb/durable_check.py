#!/usr/bin/env python3
"""Durable v2 handles through smbprotocol (SMB 3.1.1, a signing user).

Opens a file durably (DH2Q + an RWH lease), writes, takes a byte-range lock, drops the TCP
connection without logging off, and while the open waits for its client: a second client's
attribute-only open (which breaks no lease) is refused the locked range. (Any open that must
break the lease closes a durable open whose client is away, as smbd and Windows do, checked
at the end; only persistent handles are kept against that.)
Then the first client reconnects with DH2C, gets the same open back (same persistent FileId,
its lease), finds its data and its lock (it writes into the locked range), goes on writing and
closes; the second client can lock the range after that. Also: a DH2C naming an open that never
existed is OBJECT_NAME_NOT_FOUND, a DH2C with the wrong CreateGuid too, and another user cannot
take the open back.

Usage: durable_check.py HOST PORT SHARE USER PASSWORD [OTHER_USER OTHER_PASSWORD]
Prints ALL OK at the end.
"""

import sys
import time
import uuid

from smbprotocol.connection import Connection
from smbprotocol.create_contexts import (
    CreateContextName,
    DurableHandleFlags,
    LeaseState,
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
    FilePipePrinterAccessMask,
    ImpersonationLevel,
    LockFlags,
    Open,
    RequestedOplockLevel,
    ShareAccess,
    SMB2LockElement,
)
from smbprotocol.session import Session
from smbprotocol.tree import TreeConnect

host, port, share, user, password = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
other = (sys.argv[6], sys.argv[7]) if len(sys.argv) > 7 else None
NAME = f"durable-{uuid.uuid4().hex[:8]}.dat"
NOT_FOUND = 0xC0000034
LOCK_NOT_GRANTED = 0xC0000055
ACCESS_DENIED = 0xC0000022


def connect(guid, u=user, p=password):
    conn = Connection(guid, host, port, require_signing=True)
    conn.connect()
    sess = Session(conn, u, p, require_encryption=False, auth_protocol="ntlm")
    sess.connect()
    tree = TreeConnect(sess, rf"\\{host}\{share}")
    tree.connect()
    return conn, tree


def ctx(name, data):
    c = SMB2CreateContextRequest()
    c["buffer_name"] = name
    c["buffer_data"] = data
    return c


def lease(key):
    l = SMB2CreateRequestLeaseV2()
    l["lease_key"] = key
    l["lease_state"] = LeaseState.SMB2_LEASE_READ_CACHING | LeaseState.SMB2_LEASE_HANDLE_CACHING | LeaseState.SMB2_LEASE_WRITE_CACHING
    l["parent_lease_key"] = b"\0" * 16
    l["epoch"] = b"\0\0"
    return ctx(CreateContextName.SMB2_CREATE_REQUEST_LEASE_V2, l)


def dh2q(guid, timeout=60000):
    d = SMB2CreateDurableHandleRequestV2()
    d["timeout"] = timeout
    d["create_guid"] = guid
    return ctx(CreateContextName.SMB2_CREATE_DURABLE_HANDLE_REQUEST_V2, d)


def dh2c(file_id, guid):
    d = SMB2CreateDurableHandleReconnectV2()
    d["file_id"] = file_id
    d["create_guid"] = guid
    return ctx(CreateContextName.SMB2_CREATE_DURABLE_HANDLE_RECONNECT_V2, d)


def create(tree, contexts, disposition=CreateDisposition.FILE_OPEN_IF, oplock=RequestedOplockLevel.SMB2_OPLOCK_LEVEL_LEASE):
    o = Open(tree, NAME)
    resp = o.create(
        ImpersonationLevel.Impersonation,
        FilePipePrinterAccessMask.GENERIC_READ | FilePipePrinterAccessMask.GENERIC_WRITE,
        FileAttributes.FILE_ATTRIBUTE_NORMAL,
        ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE,
        disposition,
        CreateOptions.FILE_NON_DIRECTORY_FILE,
        create_contexts=contexts,
        oplock_level=oplock,
    )
    return o, {type(c).__name__: c for c in (resp or [])}


def stat_open(tree):
    o = Open(tree, NAME)
    o.create(
        ImpersonationLevel.Impersonation,
        FilePipePrinterAccessMask.FILE_READ_ATTRIBUTES,
        FileAttributes.FILE_ATTRIBUTE_NORMAL,
        ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE | ShareAccess.FILE_SHARE_DELETE,
        CreateDisposition.FILE_OPEN,
        CreateOptions.FILE_NON_DIRECTORY_FILE,
    )
    return o


def lock_element(offset, length, flags):
    e = SMB2LockElement()
    e["offset"] = offset
    e["length"] = length
    e["flags"] = flags
    return e


def status_of(f):
    try:
        f()
        return 0
    except SMBResponseException as e:
        return e.status


def check(cond, what):
    if not cond:
        print(f"FAILED: {what}")
        sys.exit(1)
    print(f"ok: {what}")


client_guid = uuid.uuid4()
create_guid = uuid.uuid4()
lease_key = uuid.uuid4().bytes
conn, tree = connect(client_guid)
o, resp = create(tree, [lease(lease_key), dh2q(create_guid)], CreateDisposition.FILE_OVERWRITE_IF)
check("SMB2CreateDurableHandleResponseV2" in resp, f"DH2Q granted with an RWH lease ({sorted(resp)})")
check(resp["SMB2CreateDurableHandleResponseV2"]["timeout"].get_value() == 60000, "timeout 60 s granted")
file_id = o.file_id
o.write(b"before the drop|", 0)
excl = LockFlags.SMB2_LOCKFLAG_EXCLUSIVE_LOCK | LockFlags.SMB2_LOCKFLAG_FAIL_IMMEDIATELY
o.lock([lock_element(100, 10, excl)])

# Drop the TCP connection: no CLOSE, no LOGOFF.
conn.disconnect(close=False)

# A second client meanwhile: the open is still there with its lock.
conn2, tree2 = connect(uuid.uuid4())
o2 = stat_open(tree2)
st = status_of(lambda: o2.lock([lock_element(100, 10, excl)]))
check(st == LOCK_NOT_GRANTED, f"second client refused the lock while the first reconnects ({st:#x})")
# A DH2C of an open that never existed, and one with the wrong CreateGuid.
bogus = (0x1234).to_bytes(8, "little") * 2
st = status_of(lambda: create(tree2, [dh2c(bogus, uuid.uuid4())]))
check(st == NOT_FOUND, f"DH2C of an unknown open is OBJECT_NAME_NOT_FOUND ({st:#x})")
if other:
    conn3, tree3 = connect(client_guid, *other)
    st = status_of(lambda: create(tree3, [lease(lease_key), dh2c(file_id, create_guid)]))
    check(st == ACCESS_DENIED, f"another user cannot take the open back ({st:#x})")
    conn3.disconnect()

# Reconnect as the same client and take the open back.
t0 = time.monotonic()
conn, tree = connect(client_guid)
st = status_of(lambda: create(tree, [lease(lease_key), dh2c(file_id, uuid.uuid4())]))
check(st == NOT_FOUND, f"DH2C with another CreateGuid is OBJECT_NAME_NOT_FOUND ({st:#x})")
o, resp = create(tree, [lease(lease_key), dh2c(file_id, create_guid)])
print(f"reconnected in {time.monotonic() - t0:.3f} s")
check(o.file_id[:8] == file_id[:8], "the same persistent FileId")
check("SMB2CreateResponseLeaseV2" in resp, "the lease is still held")
data = o.read(0, 16)
check(data == b"before the drop|", f"data intact ({data!r})")
o.write(b"mine", 100)  # inside the range the open still holds locked
o.write(b"after the reconnect", 16)
st = status_of(lambda: o2.lock([lock_element(100, 10, excl)]))
check(st == LOCK_NOT_GRANTED, f"the lock is still held after the reconnect ({st:#x})")
o.close()
st = status_of(lambda: o2.lock([lock_element(100, 10, excl)]))
check(st == 0, f"the lock is free once the durable open is closed ({st:#x})")
o2.close()
o2, _ = create(tree2, [], oplock=RequestedOplockLevel.SMB2_OPLOCK_LEVEL_NONE)
data = o2.read(0, 35)
check(data == b"before the drop|after the reconnect", f"every write landed once ({data!r})")
o2.close()

# A durable open nobody reconnects to is closed when its timeout ends: its lock goes with it.
o, resp = create(tree, [lease(uuid.uuid4().bytes), dh2q(uuid.uuid4(), 1500)])
check(resp["SMB2CreateDurableHandleResponseV2"]["timeout"].get_value() == 1500, "timeout 1.5 s granted")
o.lock([lock_element(0, 1, excl)])
conn.disconnect(close=False)
dropped = time.monotonic()
o2 = stat_open(tree2)
while status_of(lambda: o2.lock([lock_element(0, 1, excl)])) == LOCK_NOT_GRANTED:
    if time.monotonic() - dropped > 30:
        check(False, "the expired durable open released its lock within 30 s")
    time.sleep(0.05)
took = time.monotonic() - dropped
print(f"released {took:.2f} s after the drop (timeout 1.5 s)")
check(took >= 1.2, "not released before its timeout")
o2.close()

# A conflicting open while the client is away breaks the lease: the durable open goes (smbd).
conn, tree = connect(client_guid)
create_guid = uuid.uuid4()
o, _ = create(tree, [lease(lease_key), dh2q(create_guid)])
file_id = o.file_id
conn.disconnect(close=False)
o2, _ = create(tree2, [], oplock=RequestedOplockLevel.SMB2_OPLOCK_LEVEL_NONE)
o2.close()
conn, tree = connect(client_guid)
st = status_of(lambda: create(tree, [lease(lease_key), dh2c(file_id, create_guid)]))
check(st == NOT_FOUND, f"a durable open whose lease another client broke is gone ({st:#x})")
conn.disconnect()
conn2.disconnect()
print("ALL OK")
