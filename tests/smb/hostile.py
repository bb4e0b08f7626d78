"""Hostile SMB clients against nasgw (issue 10): what an attacker on the wire or a greedy client
sends, built with smbprotocol's low-level API and raw sends.

Usage: hostile.py HOST PORT USER PASSWORD
Share `priv` refuses guests; USER signs; `priv` holds folder `big` with files f0000..f0699. Prints one line per check, exits non-zero on the first
failure, "ALL OK" at the end.
"""
import socket
import struct
import sys
import uuid

from smbprotocol.change_notify import CompletionFilter, SMB2ChangeNotifyRequest
from smbprotocol.connection import Connection, Dialects
from smbprotocol.ioctl import CtlCode, IOCTLFlags, SMB2IOCTLRequest, SMB2ValidateNegotiateInfoRequest
from smbprotocol.exceptions import SMBException, SMBResponseException
from smbprotocol.file_info import FileAttributes, FileInformationClass
from smbprotocol.open import (
    CreateDisposition,
    CreateOptions,
    DirectoryAccessMask,
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

def open_dir(tree, name):
    d = Open(tree, name)
    d.create(
        ImpersonationLevel.Impersonation,
        DirectoryAccessMask.FILE_LIST_DIRECTORY | DirectoryAccessMask.FILE_READ_ATTRIBUTES,
        FileAttributes.FILE_ATTRIBUTE_DIRECTORY,
        ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE | ShareAccess.FILE_SHARE_DELETE,
        CreateDisposition.FILE_OPEN_IF,
        CreateOptions.FILE_DIRECTORY_FILE,
    )
    return d


def status_of(conn, request, wait=False):
    try:
        return conn.receive(request, wait=wait, timeout=20)["status"].get_value()
    except SMBResponseException as e:
        return e.status


# 4. A directory is listed in windows, not held whole per handle: queries with a buffer of
#    a few entries see every name of `big` once (700 files, more than a window of 128).
conn, sess = connect()
tree = TreeConnect(sess, rf"\\{host}\priv")
tree.connect()
d = open_dir(tree, "big")
names = []
while True:
    try:
        got = d.query_directory("*", FileInformationClass.FILE_NAMES_INFORMATION, max_output=600)
    except SMBResponseException as e:
        check("a listing ends with STATUS_NO_MORE_FILES", e.status == 0x80000006, hex(e.status))
        break
    names += [e["file_name"].get_value().decode("utf-16-le") for e in got]
want = sorted([".", ".."] + [f"f{i:04}" for i in range(700)])
check("small queries list every entry once", sorted(names) == want, f"{len(names)} names, {len(set(names))} distinct")

# 5. Pending CHANGE_NOTIFYs are bounded per connection (each holds a task until it completes).
conn.echo(sid=sess.session_id, credit_request=600)
sent = []
for _ in range(520):
    r = SMB2ChangeNotifyRequest()
    r["output_buffer_length"] = 1024
    r["file_id"] = d.file_id
    r["completion_filter"] = CompletionFilter.FILE_NOTIFY_CHANGE_FILE_NAME
    sent.append(conn.send(r, sid=sess.session_id, tid=tree.tree_connect_id))
statuses = [status_of(conn, r) for r in sent]
pending, refused = statuses.count(0x00000103), statuses.count(0xC000009A)
check("CHANGE_NOTIFYs past 512 pending are refused", (pending, refused) == (512, 8), f"{pending} pending, {refused} refused")
# Drop the connection (a polite close would have the server complete the pending requests
# smbprotocol no longer waits for).
conn.transport.close()

# 6. VALIDATE_NEGOTIATE_INFO (SMB 3.0/3.0.2): the real negotiate is confirmed (smbprotocol
#    checks it in TreeConnect), one a man in the middle altered (dialects or security mode
#    downgraded) is refused.
conn = Connection(uuid.uuid4(), host, port, require_signing=True)
conn.connect(Dialects.SMB_3_0_2)
sess = Session(conn, user, password, require_encryption=False, auth_protocol="ntlm")
sess.connect()
tree = TreeConnect(sess, rf"\\{host}\priv")
tree.connect(require_secure_negotiate=True)
check("a true VALIDATE_NEGOTIATE_INFO is confirmed", conn.dialect == Dialects.SMB_3_0_2, hex(conn.dialect))
for what, dialects, mode in [
    ("dialects", [Dialects.SMB_2_0_2], conn.client_security_mode),
    ("security mode", conn.negotiated_dialects, 0),
]:
    val = SMB2ValidateNegotiateInfoRequest()
    val["capabilities"] = conn.client_capabilities
    val["guid"] = conn.client_guid
    val["security_mode"] = mode
    val["dialects"] = dialects
    ioctl = SMB2IOCTLRequest()
    ioctl["ctl_code"] = CtlCode.FSCTL_VALIDATE_NEGOTIATE_INFO
    ioctl["file_id"] = b"\xff" * 16
    ioctl["buffer"] = val
    ioctl["max_output_response"] = len(val)
    ioctl["flags"] = IOCTLFlags.SMB2_0_IOCTL_IS_FSCTL
    st = status_of(conn, conn.send(ioctl, sid=sess.session_id, tid=tree.tree_connect_id, force_signature=True), True)
    check(f"a VALIDATE_NEGOTIATE_INFO with altered {what} is refused", st == 0xC0000022, hex(st))
conn.disconnect()

print("ALL OK")
