#!/usr/bin/env python3
"""An SMB client holding byte-range locks for the NLM cross-protocol tests (smbprotocol, guest).

    smb_lock.py HOST PORT SHARE PATH

opens PATH on the share, then reads commands from stdin, one per line, answering each on stdout:
    lock OFFSET LENGTH    -> "granted" or "denied STATUS" (an exclusive lock, fail immediately)
    unlock OFFSET LENGTH  -> "unlocked" or "error STATUS"
    quit
"""

import ntpath
import sys

import smbclient
from smbprotocol.exceptions import SMBOSError, SMBResponseException
from smbprotocol.open import LockFlags, SMB2LockElement

host, port, share, path = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
smbclient.ClientConfig(require_secure_negotiate=False)
smbclient.register_session(host, port=port, username="guest", password="guest", require_signing=False, auth_protocol="ntlm")
name = ntpath.join("\\\\" + host, share, path)


def element(offset, length, flags):
    e = SMB2LockElement()
    e["offset"] = offset
    e["length"] = length
    e["flags"] = flags
    return e


with smbclient.open_file(name, mode="r+b", share_access="rwd", port=port) as f:
    raw = f.raw.fd
    print("ready", flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words or words[0] == "quit":
            break
        off, length = int(words[1]), int(words[2])
        try:
            if words[0] == "lock":
                flags = LockFlags.SMB2_LOCKFLAG_EXCLUSIVE_LOCK | LockFlags.SMB2_LOCKFLAG_FAIL_IMMEDIATELY
                raw.lock([element(off, length, flags)])
                print("granted", flush=True)
            else:
                raw.lock([element(off, length, LockFlags.SMB2_LOCKFLAG_UNLOCK)])
                print("unlocked", flush=True)
        except (SMBOSError, SMBResponseException) as e:
            status = getattr(e, "ntstatus", None) or getattr(e, "status", None)
            print(("denied" if words[0] == "lock" else "error") + " " + str(status), flush=True)
