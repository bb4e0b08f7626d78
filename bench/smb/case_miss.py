"""The bench's case-insensitive lookup client (bench/src/smb_server_side.rs).

Usage: case_miss.py HOST PORT SHARE DIR PROBE N

One guest session (smbprotocol, no signing). First it checks the server is case-insensitive:
an open of PROBE (an entry of DIR in another case) must succeed. Then it times N CREATEs
(FILE_OPEN) of names that exist in DIR in no case at all (`DIR/MISS-000042` while every entry
is a lowercase `f000042`), each of which must fail with OBJECT_NAME_NOT_FOUND: what a client
checking whether a name is free does, and what makes a case-insensitive server look at the
whole directory. Prints one JSON line: {"n": N, "elapsed": seconds of the N CREATEs}.
Exits 1 with a reason on stderr when the server is case-sensitive or a miss is answered
otherwise.
"""
import json
import sys
import time
import uuid

from smbprotocol.connection import Connection
from smbprotocol.exceptions import SMBResponseException
from smbprotocol.header import NtStatus
from smbprotocol.open import CreateDisposition, CreateOptions, FileAttributes, ImpersonationLevel, Open
from smbprotocol.session import Session
from smbprotocol.tree import TreeConnect

FILE_READ_ATTRIBUTES = 0x80


def open_close(tree, path):
    o = Open(tree, path)
    o.create(ImpersonationLevel.Impersonation, FILE_READ_ATTRIBUTES, FileAttributes.FILE_ATTRIBUTE_NORMAL, 7,
             CreateDisposition.FILE_OPEN, CreateOptions.FILE_NON_DIRECTORY_FILE)
    o.close()


def main():
    host, port, share, folder, probe, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], int(sys.argv[6])
    conn = Connection(uuid.uuid4(), host, port, require_signing=False)
    conn.connect(timeout=10)
    session = Session(conn, "guest", "guest", require_encryption=False, auth_protocol="ntlm")
    session.connect()
    tree = TreeConnect(session, rf"\\{host}\{share}")
    tree.connect(require_secure_negotiate=False)
    try:
        open_close(tree, rf"{folder}\{probe}")
    except SMBResponseException as e:
        sys.exit(f"the server is not case-insensitive: opening {probe} answered 0x{e.status:08x}")
    start = time.monotonic()
    for i in range(n):
        try:
            open_close(tree, rf"{folder}\MISS-{i:06d}")
        except SMBResponseException as e:
            if e.status != NtStatus.STATUS_OBJECT_NAME_NOT_FOUND:
                sys.exit(f"a miss answered 0x{e.status:08x}, not OBJECT_NAME_NOT_FOUND")
            continue
        sys.exit(f"MISS-{i:06d} was found")
    elapsed = time.monotonic() - start
    print(json.dumps({"n": n, "elapsed": elapsed}))
    conn.disconnect(True)


if __name__ == "__main__":
    main()
