"""SMB 3 encryption with Python smbprotocol's low-level API, one connection per dialect and
cipher: SMB 3.0.2 (AES-128-CCM) and SMB 3.1.1 with each of AES-128-GCM, AES-128-CCM,
AES-256-GCM and AES-256-CCM offered alone. Each writes and reads back a file through an
encrypted session and checks that every message the server sent after the session was set up
was a TRANSFORM (0xFD 'SMB'), never plaintext. Then, on a share that requires encryption, a
request sent unencrypted is refused with ACCESS_DENIED; an oplock break for an encrypting
session's open arrives as a TRANSFORM; and a tampered encrypted message closes the connection.

Usage: smbprotocol_encrypt.py HOST PORT SHARE USER PASSWORD REQUIRED_SHARE
Prints one line per check and "ALL OK"; exits non-zero on the first failure.
"""
import os
import sys
import threading
import time
import uuid

from smbprotocol import transport
from smbprotocol.connection import Ciphers, Connection, Dialects, SMB2TransformHeader
from smbprotocol.exceptions import SMBConnectionClosed, SMBResponseException
from smbprotocol.open import (
    CreateDisposition,
    CreateOptions,
    FileAttributes,
    FilePipePrinterAccessMask,
    ImpersonationLevel,
    Open,
    RequestedOplockLevel,
    ShareAccess,
)
from smbprotocol.session import Session
from smbprotocol.tree import TreeConnect

host, port, share, user, password, required_share = sys.argv[1:7]
port = int(port)

# Every message the server sends, by its first four bytes.
seen = []
_recv = transport.Tcp.recv


# Small messages each transport received, whole (to find an oplock break).
small = {}


def recv(self, timeout):
    b = _recv(self, timeout)
    if b:
        seen.append(bytes(b[:4]))
        if len(b) < 1024:
            small.setdefault(id(self), []).append(bytes(b))
    return b


transport.Tcp.recv = recv

# When set, the next TRANSFORM message sent has one ciphertext bit flipped.
tamper = [False]
_send = transport.Tcp.send


def send(self, msg):
    raw = msg if isinstance(msg, (bytes, bytearray)) else msg.pack()
    if tamper[0] and raw[:4] == b"\xfdSMB":
        tamper[0] = False
        flipped = bytearray(raw)
        flipped[-1] ^= 1
        msg = bytes(flipped)
    return _send(self, msg)


transport.Tcp.send = send


def check(name, cond):
    if not cond:
        print(f"FAIL {name}")
        sys.exit(1)
    print(f"ok   {name}")


def open_file(tree, name, disposition, oplock=RequestedOplockLevel.SMB2_OPLOCK_LEVEL_NONE):
    f = Open(tree, name)
    f.create(
        ImpersonationLevel.Impersonation,
        FilePipePrinterAccessMask.GENERIC_READ | FilePipePrinterAccessMask.GENERIC_WRITE | FilePipePrinterAccessMask.DELETE,
        FileAttributes.FILE_ATTRIBUTE_NORMAL,
        ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE | ShareAccess.FILE_SHARE_DELETE,
        disposition,
        CreateOptions.FILE_NON_DIRECTORY_FILE,
        oplock_level=oplock,
    )
    return f


def session(dialect, cipher):
    conn = Connection(uuid.uuid4(), host, port, require_signing=False)
    conn.connect(dialect, preferred_encryption_algos=[cipher] if cipher else None)
    sess = Session(conn, user, password, require_encryption=True, auth_protocol="ntlm")
    sess.connect()
    return conn, sess


names = {
    Ciphers.AES_128_CCM: "AES-128-CCM",
    Ciphers.AES_128_GCM: "AES-128-GCM",
    Ciphers.AES_256_CCM: "AES-256-CCM",
    Ciphers.AES_256_GCM: "AES-256-GCM",
}
runs = [(Dialects.SMB_3_0_2, Ciphers.AES_128_CCM)] + [
    (Dialects.SMB_3_1_1, c)
    for c in (Ciphers.AES_128_GCM, Ciphers.AES_128_CCM, Ciphers.AES_256_GCM, Ciphers.AES_256_CCM)
]
for dialect, cipher in runs:
    what = f"{dialect:#x} {names[cipher]}"
    conn, sess = session(dialect, cipher if dialect == Dialects.SMB_3_1_1 else None)
    check(f"{what}: negotiated", conn.dialect == dialect and conn.supports_encryption)
    if dialect == Dialects.SMB_3_1_1:
        check(f"{what}: the server chose the offered cipher", conn.cipher_id == cipher)
    check(f"{what}: the session encrypts", sess.encrypt_data)
    mark = len(seen)
    tree = TreeConnect(sess, rf"\\{host}\{share}")
    tree.connect()
    name = f"enc-{dialect:x}-{cipher}.bin"
    data = os.urandom(2 * 1024 * 1024 + 5)
    f = open_file(tree, name, CreateDisposition.FILE_OVERWRITE_IF)
    at = 0
    while at < len(data):
        n = min(len(data) - at, conn.max_write_size)
        f.write(data[at : at + n], at)
        at += n
    f.close()
    f = open_file(tree, name, CreateDisposition.FILE_OPEN)
    back = b""
    while len(back) < len(data):
        back += f.read(len(back), min(len(data) - len(back), conn.max_read_size))
    check(f"{what}: 2 MiB written and read back", back == data)
    # Two READs in one encrypted compound: the reply chain (data of both) is sealed as one.
    reads = [f.read(at, 300 * 1024 + 7, send=False) for at in (0, 1024 * 1024 + 3)]
    sent = conn.send_compound([r[0] for r in reads], sess.session_id, tree.tree_connect_id)
    got = [recv_fn(req) for (_, recv_fn), req in zip(reads, sent)]
    want = [data[:300 * 1024 + 7], data[1024 * 1024 + 3 : 1324 * 1024 + 10]]
    check(f"{what}: two READs in one compound", got == want)
    f.close(get_attributes=True)
    f = Open(tree, name)
    f.create(
        ImpersonationLevel.Impersonation,
        FilePipePrinterAccessMask.DELETE,
        FileAttributes.FILE_ATTRIBUTE_NORMAL,
        ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_DELETE,
        CreateDisposition.FILE_OPEN,
        CreateOptions.FILE_NON_DIRECTORY_FILE | CreateOptions.FILE_DELETE_ON_CLOSE,
    )
    f.close()
    tree.disconnect()
    after = seen[mark:]
    plain = [s for s in after if s != b"\xfdSMB"]
    check(f"{what}: all {len(after)} replies encrypted ({len(plain)} plaintext)", after and not plain)
    sess.disconnect()
    conn.disconnect()

# A share that requires encryption refuses a request that comes unencrypted.
conn, sess = session(Dialects.SMB_3_1_1, None)
tree = TreeConnect(sess, rf"\\{host}\{required_share}")
tree.connect()
check("the required share asks for encryption", tree.encrypt_data)
f = open_file(tree, "enc-required.bin", CreateDisposition.FILE_OVERWRITE_IF)
f.write(b"sealed", 0)
f.close()
check("encrypted requests on the required share work", True)
sess.encrypt_data = False
tree.encrypt_data = False
sess.signing_required = True
try:
    open_file(tree, "enc-required.bin", CreateDisposition.FILE_OPEN)
    check("an unencrypted request on the required share is refused", False)
except SMBResponseException as e:
    check(f"an unencrypted request on the required share is refused ({e.status:#x})", e.status == 0xC0000022)
sess.encrypt_data = True
tree.encrypt_data = True
f = open_file(tree, "enc-required.bin", CreateDisposition.FILE_OPEN)
check("the session still works encrypted after the refusal", f.read(0, 6) == b"sealed")
f.close()
conn.disconnect()

# An oplock break for an encrypting session's open goes out encrypted: A holds a batch oplock,
# B's open of the file breaks it; A's connection is then dropped, which lets B's open finish.
conn_a, sess_a = session(Dialects.SMB_3_1_1, None)
tree_a = TreeConnect(sess_a, rf"\\{host}\{share}")
tree_a.connect()
fa = open_file(tree_a, "enc-oplock.bin", CreateDisposition.FILE_OVERWRITE_IF, RequestedOplockLevel.SMB2_OPLOCK_LEVEL_BATCH)
check("A holds a batch oplock", fa.oplock_level == RequestedOplockLevel.SMB2_OPLOCK_LEVEL_BATCH)
a_msgs = small.setdefault(id(conn_a.transport), [])
before = len(a_msgs)
conn_b, sess_b = session(Dialects.SMB_3_1_1, None)
tree_b = TreeConnect(sess_b, rf"\\{host}\{share}")
tree_b.connect()
b_result = []
tb = threading.Thread(target=lambda: b_result.append(open_file(tree_b, "enc-oplock.bin", CreateDisposition.FILE_OPEN)))
tb.start()
brk = None
deadline = time.monotonic() + 20
while brk is None and time.monotonic() < deadline:
    for m in a_msgs[before:]:
        check("the break reached A as a TRANSFORM", m[:4] == b"\xfdSMB")
        th = SMB2TransformHeader()
        th.unpack(m)
        plain = conn_a._decrypt(th)
        if plain[12:14] == b"\x12\x00":
            brk = plain
    time.sleep(0.05)
check("A got an encrypted oplock break", brk is not None)
conn_a.transport.close()
tb.join(20)
check("B's open finished once A was gone", len(b_result) == 1)
b_result[0].close()
conn_b.disconnect()

# A message that does not decrypt closes the connection.
conn, sess = session(Dialects.SMB_3_1_1, None)
tree = TreeConnect(sess, rf"\\{host}\{share}")
tree.connect()
tamper[0] = True
try:
    open_file(tree, "enc-tampered.bin", CreateDisposition.FILE_OVERWRITE_IF)
    check("a tampered encrypted message closes the connection", False)
except SMBConnectionClosed:
    check("a tampered encrypted message closes the connection", True)
print("ALL OK")
