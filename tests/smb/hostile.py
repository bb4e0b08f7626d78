"""Hostile SMB clients against nasgw (issue 10): what an attacker on the wire or a greedy client
sends, built with smbprotocol's low-level API and raw sends.

Usage: hostile.py HOST PORT USER PASSWORD
Share `priv` refuses guests; USER signs. Prints one line per check, exits non-zero on the first
failure, "ALL OK" at the end.
"""
import socket
import struct
import sys
import uuid

from smbprotocol.connection import Connection
from smbprotocol.exceptions import SMBException, SMBResponseException
from smbprotocol.open import (
    CreateDisposition,
    CreateOptions,
    FilePipePrinterAccessMask,
    ImpersonationLevel,
    Open,
    ShareAccess,
)
from smbprotocol.session import Session, SMB2SessionSetupRequest
from smbprotocol.tree import TreeConnect

host, port, user, password = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]


def check(name, cond, detail=""):
    if not cond:
        print(f"FAIL {name} {detail}")
        sys.exit(1)
    print(f"ok   {name} {detail}")


def connect(signing=True):
    conn = Connection(uuid.uuid4(), host, port, require_signing=signing)
    conn.connect()
    sess = Session(conn, user, password, require_encryption=False, auth_protocol="ntlm")
    sess.connect()
    return conn, sess


def open_file(tree, name, disposition=CreateDisposition.FILE_OVERWRITE_IF):
    f = Open(tree, name)
    f.create(
        ImpersonationLevel.Impersonation,
        FilePipePrinterAccessMask.GENERIC_READ | FilePipePrinterAccessMask.GENERIC_WRITE,
        0,
        ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE,
        disposition,
        CreateOptions.FILE_NON_DIRECTORY_FILE,
    )
    return f


def server_closed(conn, timeout=5.0):
    """The server closed the connection: a receive sees EOF or a reset, or smbprotocol's
    receiver thread already saw that and closed the socket (EBADF)."""
    sock = conn.transport._sock
    try:
        sock.settimeout(timeout)
        return sock.recv(1) == b""
    except socket.timeout:
        return False
    except OSError:
        return True


def read_back(name):
    conn, sess = connect()
    tree = TreeConnect(sess, rf"\\{host}\priv")
    tree.connect()
    f = open_file(tree, name, CreateDisposition.FILE_OPEN)
    data = f.read(0, 64)
    f.close()
    conn.disconnect()
    return data


# 1. A captured signed WRITE sent again must not be applied again (MS-SMB2 3.3.1.1).
conn, sess = connect()
tree = TreeConnect(sess, rf"\\{host}\priv")
tree.connect()
f = open_file(tree, "replay.txt")
sent = []
real_send = conn.transport.send
conn.transport.send = lambda data: (sent.append(data), real_send(data))[1]
f.write(b"AAAA", 0)
captured = sent[-1]
f.write(b"BBBB", 0)
conn.transport.send = real_send
real_send(captured)
check("replayed signed WRITE closes the connection", server_closed(conn))
check("replayed signed WRITE was not applied", read_back("replay.txt") == b"BBBB", repr(read_back("replay.txt")))

# 2. An unsigned re-authentication of a signed session is refused (it would drop signing and
#    swap the identity under the session's trees).
conn, sess = connect()
tree = TreeConnect(sess, rf"\\{host}\priv")
tree.connect()
req = SMB2SessionSetupRequest()
req["security_mode"] = 1
# An NTLMSSP NEGOTIATE, as the first leg of an anonymous logon.
req["buffer"] = b"NTLMSSP\x00" + struct.pack("<I", 1) + struct.pack("<I", 0x60008215) + b"\x00" * 16
signing = sess.signing_required
sess.signing_required = False
request = conn._send([req], session_id=sess.session_id)[0]
sess.signing_required = signing
try:
    conn.receive(request)
    status = 0
except SMBResponseException as e:
    status = e.status
check("unsigned re-authentication of a signed session is refused", status == 0xC0000022, hex(status))
# The session still works, signed, as the user.
f = open_file(tree, "still-mine.txt")
f.write(b"ok", 0)
f.close()
check("the session keeps working after the refused re-authentication", read_back("still-mine.txt") == b"ok")
conn.disconnect()

# 3. Sessions in setup are bounded per connection (each holds an NTLM exchange).
conn = Connection(uuid.uuid4(), host, port, require_signing=False)
conn.connect()
statuses = []
for _ in range(12):
    req = SMB2SessionSetupRequest()
    req["security_mode"] = 1
    req["buffer"] = b"NTLMSSP\x00" + struct.pack("<I", 1) + struct.pack("<I", 0x60008215) + b"\x00" * 16
    request = conn._send([req], session_id=0)[0]
    try:
        conn.receive(request)
        statuses.append(0)
    except SMBResponseException as e:
        statuses.append(e.status)
more = statuses.count(0xC0000016)
refused = statuses.count(0xC000009A)
check("first legs beyond the per-connection limit are refused", more == 4 and refused == 8, str([hex(s) for s in statuses]))
conn.disconnect()

print("ALL OK")
