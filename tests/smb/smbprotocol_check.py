"""Exercises nasgw's SMB server with Python smbprotocol's `smbclient` module.

Usage: smbprotocol_check.py HOST PORT SHARE [USER PASSWORD [encrypt]]
Without USER the session is a guest one (no signing, no secure negotiate, as Samba needs too);
with `encrypt` the user's session is encrypted (SMB 3 TRANSFORM) instead of signed.
Prints one line per check and exits non-zero on the first failure.
"""
import datetime
import hashlib
import ntpath
import os
import sys

import smbclient
import smbclient.shutil
from smbprotocol.exceptions import SMBOSError, SMBResponseException

host, port, share = sys.argv[1], int(sys.argv[2]), sys.argv[3]
user = sys.argv[4] if len(sys.argv) > 4 else None
password = sys.argv[5] if len(sys.argv) > 5 else None
encrypt = len(sys.argv) > 6 and sys.argv[6] == "encrypt"

if user is None:
    smbclient.ClientConfig(require_secure_negotiate=False)
    smbclient.register_session(host, port=port, username="guest", password="guest", require_signing=False, auth_protocol="ntlm")
else:
    smbclient.register_session(
        host, port=port, username=user, password=password, require_signing=True, auth_protocol="ntlm", encrypt=encrypt
    )

root = rf"\\{host}\{share}"
base = root + r"\pytest"
kw = {"port": port}


def check(name, cond):
    if not cond:
        print(f"FAIL {name}")
        sys.exit(1)
    print(f"ok   {name}")


if smbclient.path.exists(base, **kw):
    smbclient.shutil.rmtree(base, **kw)
smbclient.makedirs(base + r"\a\b", **kw)
check("makedirs", smbclient.path.isdir(base + r"\a\b", **kw))

p = base + r"\f.bin"
data = os.urandom(3 * 1024 * 1024 + 17)
with smbclient.open_file(p, mode="wb", **kw) as f:
    f.write(data)
with smbclient.open_file(p, mode="rb", **kw) as f:
    check("wb then rb", f.read() == data)
with smbclient.open_file(p, mode="ab", **kw) as f:
    f.write(b"tail")
with smbclient.open_file(p, mode="rb", **kw) as f:
    check("ab appends", f.read() == data + b"tail")
with smbclient.open_file(p, mode="r+b", **kw) as f:
    f.seek(5)
    f.write(b"XY")
    f.seek(0)
    check("r+b", f.read(8) == data[:5] + b"XY" + data[7:8])
with smbclient.open_file(p, mode="w+b", **kw) as f:
    f.write(b"hello world")
    f.seek(0)
    check("w+b truncates and reads back", f.read() == b"hello world")
with smbclient.open_file(base + r"\t.txt", mode="w", **kw) as f:
    f.write("text\n")
with smbclient.open_file(base + r"\t.txt", mode="r", **kw) as f:
    check("text mode", f.read() == "text\n")
try:
    with smbclient.open_file(base + r"\t.txt", mode="xb", **kw) as f:
        pass
    check("xb refuses an existing file", False)
except (SMBOSError, OSError, FileExistsError):
    check("xb refuses an existing file", True)

st = smbclient.stat(p, **kw)
check("stat size", st.st_size == 11)

smbclient.truncate(p, 4, **kw)
check("truncate", smbclient.stat(p, **kw).st_size == 4)

smbclient.rename(p, base + r"\a\g.bin", **kw)
check("rename", smbclient.path.exists(base + r"\a\g.bin", **kw) and not smbclient.path.exists(p, **kw))

smbclient.shutil.copyfile(base + r"\t.txt", base + r"\a\b\copy.txt", **kw)
with smbclient.open_file(base + r"\a\b\copy.txt", mode="rb", **kw) as f:
    check("copyfile", f.read() == b"text\n")

names = sorted(ntpath.basename(d) + "/" + ",".join(sorted(fs)) for d, _, fs in smbclient.walk(base, **kw))
check("walk", names == ["a/g.bin", "b/copy.txt", "pytest/t.txt"])
check("listdir", sorted(smbclient.listdir(base, **kw)) == ["a", "t.txt"])
check("scandir is_dir", {e.name: e.is_dir() for e in smbclient.scandir(base, **kw)} == {"a": True, "t.txt": False})

# Byte-range locks through the raw open (smbprotocol's Open.lock).
from smbprotocol.open import SMB2LockElement, LockFlags  # noqa: E402

with smbclient.open_file(base + r"\t.txt", mode="r+b", share_access="rw", **kw) as f1, smbclient.open_file(
    base + r"\t.txt", mode="r+b", share_access="rw", **kw
) as f2:
    raw1, raw2 = f1.raw.fd, f2.raw.fd
    e = SMB2LockElement()
    e["offset"] = 0
    e["length"] = 4
    e["flags"] = LockFlags.SMB2_LOCKFLAG_EXCLUSIVE_LOCK | LockFlags.SMB2_LOCKFLAG_FAIL_IMMEDIATELY
    raw1.lock([e])
    try:
        raw2.lock([e])
        check("a conflicting lock is refused", False)
    except (SMBOSError, SMBResponseException):
        check("a conflicting lock is refused", True)
    try:
        raw2.write(b"zz", 0)
        check("writes inside another's exclusive lock are refused", False)
    except (SMBOSError, SMBResponseException):
        check("writes inside another's exclusive lock are refused", True)
    u = SMB2LockElement()
    u["offset"] = 0
    u["length"] = 4
    u["flags"] = LockFlags.SMB2_LOCKFLAG_UNLOCK
    raw1.lock([u])
    raw2.lock([e])
    check("the lock is granted after unlock", True)

# EaSize in listings (scandir asks FileIdFullDirectoryInformation), as smbd reports it: the size
# of the file's EAs as one FILE_FULL_EA_INFORMATION list (8 + name + NUL + value), 0 without.
with smbclient.open_file(base + r"\ea.txt", mode="wb", **kw) as f:
    f.write(b"x")
with smbclient.open_file(base + r"\plain.txt", mode="wb", **kw) as f:
    f.write(b"x")
smbclient.setxattr(base + r"\ea.txt", b"Colour", b"blue", **kw)
sizes = {e.name: e.smb_info.ea_size for e in smbclient.scandir(base, **kw)}
check("a listing reports a file's EaSize", sizes.get("ea.txt") == 8 + len("Colour") + 1 + len("blue"))
check("a listing reports EaSize 0 for a file without EAs", sizes.get("plain.txt") == 0)

# A file written through an open handle: its listing shows the write time its information
# shows (the write time SMB shows moves later than the volume's: smbtorture timestamps.delayed-*).
wt = base + r"\wt.txt"
with smbclient.open_file(wt, mode="wb", **kw) as f:
    f.write(b"a")
with smbclient.open_file(wt, mode="r+b", **kw) as f:
    f.write(b"b")
    f.flush()
    dt = {e.name: e.smb_info.last_write_time for e in smbclient.scandir(base, **kw)}["wt.txt"]
    epoch = datetime.datetime(1970, 1, 1, tzinfo=dt.tzinfo)
    listed = (dt - epoch) // datetime.timedelta(microseconds=1)  # smbprotocol keeps microseconds
    info = smbclient.stat(wt, **kw).st_mtime_ns // 1000
    check(f"a listing shows the write time the file's information shows ({listed} == {info})", listed == info)

smbclient.shutil.rmtree(base, **kw)
check("rmtree", not smbclient.path.exists(base, **kw))
print("ALL OK")
