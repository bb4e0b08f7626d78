"""Case-insensitive names on nasgw's SMB server with Python smbprotocol, while the folder is
being filled: every file made through SMB is found in another case, and a name made, renamed or
removed directly in the backing folder (behind nasgw's back) counts at once.

Usage: case_names.py HOST PORT SHARE BACKING_DIR [FILES]
BACKING_DIR is the share's folder on the server's local volume. Guest session.
Prints one line per check and exits non-zero on the first failure.
"""
import errno
import os
import sys

import smbclient
from smbprotocol.exceptions import SMBOSError

host, port, share, backing = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
files = int(sys.argv[5]) if len(sys.argv) > 5 else 600
EVERY = 50

smbclient.ClientConfig(require_secure_negotiate=False)
smbclient.register_session(host, port=port, username="guest", password="guest", require_signing=False, auth_protocol="ntlm")
kw = {"port": port}
base = rf"\\{host}\{share}\casefill"
local = os.path.join(backing, "casefill")


def check(name, cond):
    if not cond:
        print(f"FAIL {name}")
        sys.exit(1)


def read(name):
    with smbclient.open_file(base + "\\" + name, mode="rb", **kw) as f:
        return f.read()


def create_new(name, data):
    with smbclient.open_file(base + "\\" + name, mode="xb", **kw) as f:
        f.write(data)


def fails(errno_want, fn, *args):
    try:
        fn(*args)
    except SMBOSError as e:
        return e.errno == errno_want
    return False


smbclient.mkdir(base, **kw)
check("the share's folder is the backing folder", os.path.isdir(local))
behind = []
for i in range(files):
    name = f"File{i:04}.Txt"
    create_new(name, name.encode())
    if i % EVERY == 0:
        # A local program adds a name right after one of nasgw's own creates.
        lname = f"Behind{i:04}.Txt"
        with open(os.path.join(local, lname), "wb") as f:
            f.write(lname.encode())
        behind.append(lname)
        check(f"{lname} opened as {lname.upper()} at once", read(lname.upper()) == lname.encode())
        check(f"a new {lname.lower()} collides with {lname}", fails(errno.EEXIST, create_new, lname.lower(), b"x"))
        check(f"a new {name.upper()} collides with {name}", fails(errno.EEXIST, create_new, name.upper(), b"x"))
print(f"ok   {files} files made through SMB, {len(behind)} behind nasgw's back, each found in another case at once")

for i in range(files):
    name = f"File{i:04}.Txt"
    variant = name.lower() if i % 2 else name.upper()
    check(f"{name} opened as {variant}", read(variant) == name.encode())
for lname in behind:
    check(f"{lname} opened as {lname.lower()}", read(lname.lower()) == lname.encode())
names = set(os.listdir(local))
want = {f"File{i:04}.Txt" for i in range(files)} | set(behind)
check(f"the folder holds exactly the names made ({len(names)} of {len(want)})", names == want)
print("ok   every name opened in another case; no case-variant duplicates on disk")

# Removed and renamed behind nasgw's back: the next open knows.
os.remove(os.path.join(local, "File0007.Txt"))
check("a removed name is missing in any case", fails(errno.ENOENT, read, "FILE0007.TXT"))
create_new("file0007.txt", b"new")
check("and may be made again in another case", "file0007.txt" in os.listdir(local))
os.rename(os.path.join(local, "File0008.Txt"), os.path.join(local, "Renamed.Txt"))
check("a renamed name is found under its new name", read("RENAMED.TXT") == b"File0008.Txt")
check("and not under its old one", fails(errno.ENOENT, read, "file0008.txt"))
print("ok   names removed and renamed behind nasgw's back")

smbclient.rename(base + r"\File0009.Txt", base + r"\FILE0009.TXT", **kw)
check("renamed through SMB to another case", read("file0009.txt") == b"File0009.Txt")
check("the old case is gone from the disk", "FILE0009.TXT" in os.listdir(local) and "File0009.Txt" not in os.listdir(local))
smbclient.remove(base + r"\file0010.TXT", **kw)
check("removed through SMB by another case", "File0010.Txt" not in os.listdir(local))
check("and missing in any case", fails(errno.ENOENT, read, "FILE0010.TXT"))
print("ok   names renamed and removed through SMB")
print("ALL OK")
