"""A scriptable SMB client for the cluster coherence tests (tests/tests/cluster_*.rs).

Several SMB clients (each its own TCP connection, client GUID and guest session) driven by the
test through JSON lines: one request per line on stdin, one answer per line on stdout. Requests
with "bg": true run on their own thread (a blocking lock, a CREATE that waits for a lease break),
so the test can act meanwhile; every answer carries the request's "id", "t0" and "t", the
CLOCK_MONOTONIC seconds it started and finished (one clock for every measured latency).

Python smbprotocol does not handle unsolicited server messages (lease and oplock break
notifications come with MessageId 0xFFFFFFFFFFFFFFFF); each connection gets a sink registered
under that id which records them, so "breaks" can wait for them and "ack" can answer them.

Requests (every one has "id" and "op"):
  connect  c host port [guid share previous]  a new client c (guest, no signing; ClientGuid
           `guid` hex; SESSION_SETUP's PreviousSessionId `previous`, the "session" of an earlier
           answer) -> the tree's "ca" (continuously available) and "scaleout" capabilities, and
           the SessionId
  open     c h path [access share disposition options lease lease_key oplock
                     durable(persistent timeout v1 create_guid) replay]
           -> granted lease state / oplock level, or the NTSTATUS name; with "durable" a
              DH2Q (with "v1": a DHnQ) is sent and the answer has "file_id", "create_guid"
              (hex; the one given, or a new one) and "durable" (the response's flags and
              timeout, {} for a DHnQ, or null when not granted); "replay": true sends it with
              the replay flag (SMB2_FLAGS_REPLAY_OPERATION)
  reconnect c h path file_id [create_guid persistent lease_key]   a DH2C (without
           create_guid: a DHnC) reopening that FileId as h; with lease_key its RqLs v2
  close    h          read h off len       write h off data(hex)
  lock     h off len [excl=true wait=false]  unlock h off len
  delete   h          (SET_INFO FileDispositionInformation DeletePending=1)
  rename   h to [replace tag]   SET_INFO FileRenameInformation of h to `to`; with "tag" the
           request can be cancelled by "cancel" while it waits (run it with "bg")
  cancel   tag        sends CANCEL for the pending request "rename" registered as `tag`
  name     h          -> "name": the handle's name in its FileAllInformation (as the server knows it)
  breaks   c n timeout  -> the first n break notifications c received (waits up to timeout s)
  ack      c h state    -> answers the last lease break on c's handle h with `state` (R/RH/RW...)
  stat_compound c path [access share]   CREATE + QUERY_INFO (FileStandardInformation) + CLOSE as
           one related compound, as the Linux kernel client stats a path -> "create", "query",
           "close": each one's NTSTATUS name, and "size": the end of file the query answered
  ack_oplock h level
  loop     c what(openclose|lockunlock) n [path | h off len]   a benchmark loop, timed
  drop     c          closes c's TCP connection without logging off
"""
import binascii
import json
import struct
import sys
import threading
import time
import uuid

from smbprotocol.connection import Commands, Connection
from smbprotocol.create_contexts import (
    CreateContextName,
    SMB2CreateContextRequest,
    SMB2CreateDurableHandleReconnect,
    SMB2CreateDurableHandleReconnectV2,
    SMB2CreateDurableHandleRequest,
    SMB2CreateDurableHandleRequestV2,
    SMB2CreateDurableHandleResponse,
    SMB2CreateRequestLeaseV2,
)
from smbprotocol.exceptions import SMBResponseException
from smbprotocol.header import NtStatus, Smb2Flags
import smbprotocol.connection
from smbprotocol.open import (
    CreateDisposition,
    CreateOptions,
    FileAttributes,
    ImpersonationLevel,
    Open,
    RequestedOplockLevel,
)
import smbprotocol.session
from smbprotocol.session import Session
from smbprotocol.tree import TreeConnect
from smbprotocol.file_info import FileInformationClass, InfoType
from smbprotocol.open import LockFlags, SMB2LockElement, SMB2QueryInfoRequest, SMB2QueryInfoResponse, SMB2SetInfoRequest

STATUS_NAMES = {v: k for k, v in vars(NtStatus).items() if k.startswith("STATUS_")}
STATUS_NAMES.setdefault(0xC0000054, "STATUS_FILE_LOCK_CONFLICT")
STATUS_NAMES.setdefault(0xC0000055, "STATUS_LOCK_NOT_GRANTED")
STATUS_NAMES.setdefault(0xC0000056, "STATUS_DELETE_PENDING")
STATUS_NAMES.setdefault(0xC0000098, "STATUS_FILE_INVALID")
STATUS_NAMES.setdefault(0xC0000128, "STATUS_FILE_CLOSED")

# smbprotocol sets no replay flag of its own: requests built while REPLAY is set carry it.
REPLAY = threading.local()
_PlainHeader = smbprotocol.connection.SMB2HeaderRequest


class _ReplayableHeader(_PlainHeader):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        if getattr(REPLAY, "on", False):
            self["flags"].set_flag(Smb2Flags.SMB2_FLAGS_REPLAY_OPERATIONS)


smbprotocol.connection.SMB2HeaderRequest = _ReplayableHeader

LEASE_BITS = {"R": 1, "H": 2, "W": 4}
OPLOCKS = {"none": 0x00, "ii": 0x01, "exclusive": 0x08, "batch": 0x09}
OPLOCK_NAMES = {v: k for k, v in OPLOCKS.items()}
OPLOCKS["lease"] = 0xFF


def lease_bits(s):
    return sum(LEASE_BITS[c] for c in s)


def lease_name(v):
    return "".join(c for c in "RHW" if v & LEASE_BITS[c]) or "none"


def status_name(code):
    return STATUS_NAMES.get(code, "0x%08x" % code)


class _Reserved:
    def get_value(self):
        return 0


class BreakSink:
    """Stands in smbprotocol's table of outstanding requests for MessageId 0xFFFF...: the
    receive thread hands every unsolicited message to `response`, which records it."""

    def __init__(self):
        self.session_id = None
        self.async_id = None
        self.message = {"reserved": _Reserved()}
        self.response_event_lock = threading.Lock()
        self.response_event = threading.Event()
        self.cond = threading.Condition()
        self.breaks = []

    @property
    def response(self):
        return None

    @response.setter
    def response(self, header):
        data = header["data"].get_value()
        now = time.monotonic()
        size = struct.unpack_from("<H", data, 0)[0] if len(data) >= 2 else 0
        if size == 44 and len(data) >= 32:
            epoch, flags = struct.unpack_from("<HI", data, 2)
            key = data[8:24]
            cur, new = struct.unpack_from("<II", data, 24)
            b = {"kind": "lease", "key": key.hex(), "from": lease_name(cur), "to": lease_name(new),
                 "epoch": epoch, "ack_required": bool(flags & 1), "t": now}
        elif size == 24 and len(data) >= 24:
            level = data[2]
            b = {"kind": "oplock", "to": OPLOCK_NAMES.get(level, str(level)), "file_id": data[8:24].hex(), "t": now}
        else:
            b = {"kind": "unknown", "data": data.hex(), "t": now}
        with self.cond:
            self.breaks.append(b)
            self.cond.notify_all()


class LeaseBreakAck:
    COMMAND = Commands.SMB2_OPLOCK_BREAK

    def __init__(self, key, state):
        self.key, self.state = key, state

    def pack(self):
        return struct.pack("<HHI", 36, 0, 0) + self.key + struct.pack("<IQ", self.state, 0)

    def __len__(self):
        return 36


class OplockBreakAck:
    COMMAND = Commands.SMB2_OPLOCK_BREAK

    def __init__(self, file_id, level):
        self.file_id, self.level = file_id, level

    def pack(self):
        return struct.pack("<HBBI", 24, self.level, 0, 0) + self.file_id

    def __len__(self):
        return 24


class _SetupWithPrevious(smbprotocol.session.SMB2SessionSetupRequest):
    """smbprotocol's SESSION_SETUP request, with the PreviousSessionId the next connect asks."""

    previous = 0

    def __init__(self):
        super().__init__()
        self["previous_session_id"] = _SetupWithPrevious.previous


smbprotocol.session.SMB2SessionSetupRequest = _SetupWithPrevious


class Client:
    def __init__(self, host, port, guid=None, share="pub", previous=0):
        self.conn = Connection(guid or uuid.uuid4(), host, port, require_signing=False)
        self.conn.connect(timeout=10)
        self.sink = BreakSink()
        self.conn.outstanding_requests[0xFFFFFFFFFFFFFFFF] = self.sink
        self.session = Session(self.conn, "guest", "guest", require_encryption=False, auth_protocol="ntlm")
        _SetupWithPrevious.previous = previous
        try:
            self.session.connect()
        finally:
            _SetupWithPrevious.previous = 0
        self.tree = TreeConnect(self.session, rf"\\{host}\{share}")
        self.tree.connect(require_secure_negotiate=False)


clients = {}
handles = {}  # h -> (client name, Open, lease key)
out_lock = threading.Lock()


def reply(req, **kw):
    kw["id"] = req.get("id")
    kw["t"] = time.monotonic()
    with out_lock:
        sys.stdout.write(json.dumps(kw) + "\n")
        sys.stdout.flush()


def op_connect(r):
    guid = uuid.UUID(hex=r["guid"]) if r.get("guid") else None
    c = Client(r["host"], int(r["port"]), guid, r.get("share", "pub"), int(r.get("previous", 0)))
    clients[r["c"]] = c
    return {"ca": bool(c.tree.is_ca_share), "scaleout": bool(getattr(c.tree, "is_scaleout_share", False)),
            "session": c.session.session_id}


def op_open(r):
    c = clients[r["c"]]
    o = Open(c.tree, r["path"])
    contexts = []
    oplock = OPLOCKS[r.get("oplock", "none")]
    key = None
    if r.get("lease"):
        key = bytes.fromhex(r["lease_key"]) if r.get("lease_key") else uuid.uuid4().bytes
        lease = SMB2CreateRequestLeaseV2()
        lease["lease_key"] = key
        lease["lease_state"] = lease_bits(r["lease"])
        lease["parent_lease_key"] = b"\x00" * 16
        lease["epoch"] = b"\x00\x00"
        ctx = SMB2CreateContextRequest()
        ctx["buffer_name"] = CreateContextName.SMB2_CREATE_REQUEST_LEASE_V2
        ctx["buffer_data"] = lease
        contexts.append(ctx)
        oplock = 0xFF
    create_guid = None
    v1 = r.get("durable") is not None and r["durable"].get("v1")
    if v1:
        ctx = SMB2CreateContextRequest()
        ctx["buffer_name"] = CreateContextName.SMB2_CREATE_DURABLE_HANDLE_REQUEST
        ctx["buffer_data"] = SMB2CreateDurableHandleRequest()
        contexts.append(ctx)
    elif r.get("durable") is not None:
        given = r["durable"].get("create_guid")
        create_guid = uuid.UUID(hex=given) if given else uuid.uuid4()
        dh = SMB2CreateDurableHandleRequestV2()
        dh["timeout"] = int(r["durable"].get("timeout", 0))
        dh["flags"] = 0x2 if r["durable"].get("persistent") else 0
        dh["create_guid"] = create_guid
        ctx = SMB2CreateContextRequest()
        ctx["buffer_name"] = CreateContextName.SMB2_CREATE_DURABLE_HANDLE_REQUEST_V2
        ctx["buffer_data"] = dh
        contexts.append(ctx)
    REPLAY.on = bool(r.get("replay"))
    try:
        resp = o.create(
            ImpersonationLevel.Impersonation,
            int(r.get("access", 0x0012019F)),  # generic read + write
            FileAttributes.FILE_ATTRIBUTE_NORMAL,
            int(r.get("share", 7)),
            int(r.get("disposition", CreateDisposition.FILE_OPEN_IF)),
            int(r.get("options", CreateOptions.FILE_NON_DIRECTORY_FILE)),
            create_contexts=contexts or None,
            oplock_level=oplock,
        )
    finally:
        REPLAY.on = False
    handles[r["h"]] = (r["c"], o, key)
    out = {"oplock": OPLOCK_NAMES.get(o.oplock_level, "lease" if o.oplock_level == 0xFF else str(o.oplock_level))}
    for ctx in resp or []:
        if hasattr(ctx, "fields") and "lease_state" in ctx.fields:
            out["lease"] = lease_name(ctx["lease_state"].get_value())
        if hasattr(ctx, "fields") and "timeout" in ctx.fields and "flags" in ctx.fields:
            out["durable"] = {"timeout": ctx["timeout"].get_value(), "flags": int(ctx["flags"].get_value())}
        if v1 and isinstance(ctx, SMB2CreateDurableHandleResponse):
            out["durable"] = {}
    if key is not None:
        out["lease_key"] = key.hex()
    if create_guid is not None or v1:
        out.setdefault("durable", None)
        out["file_id"] = o.file_id.hex()
    if create_guid is not None:
        out["create_guid"] = create_guid.hex
    return out


def op_reconnect(r):
    c = clients[r["c"]]
    o = Open(c.tree, r["path"])
    ctx = SMB2CreateContextRequest()
    if r.get("create_guid"):
        dh = SMB2CreateDurableHandleReconnectV2()
        dh["file_id"] = bytes.fromhex(r["file_id"])
        dh["create_guid"] = uuid.UUID(hex=r["create_guid"])
        dh["flags"] = 0x2 if r.get("persistent") else 0
        ctx["buffer_name"] = CreateContextName.SMB2_CREATE_DURABLE_HANDLE_RECONNECT_V2
    else:
        dh = SMB2CreateDurableHandleReconnect()
        dh["data"] = bytes.fromhex(r["file_id"])
        ctx["buffer_name"] = CreateContextName.SMB2_CREATE_DURABLE_HANDLE_RECONNECT
    ctx["buffer_data"] = dh
    contexts = [ctx]
    key = None
    oplock = 0
    if r.get("lease_key"):
        key = bytes.fromhex(r["lease_key"])
        lease = SMB2CreateRequestLeaseV2()
        lease["lease_key"] = key
        lease["lease_state"] = lease_bits(r.get("lease", "RWH"))
        lease["parent_lease_key"] = b"\x00" * 16
        lease["epoch"] = b"\x00\x00"
        lctx = SMB2CreateContextRequest()
        lctx["buffer_name"] = CreateContextName.SMB2_CREATE_REQUEST_LEASE_V2
        lctx["buffer_data"] = lease
        contexts.append(lctx)
        oplock = 0xFF
    elif r.get("oplock"):
        oplock = OPLOCKS[r["oplock"]]
    resp = o.create(
        ImpersonationLevel.Impersonation,
        0x0012019F,
        FileAttributes.FILE_ATTRIBUTE_NORMAL,
        7,
        CreateDisposition.FILE_OPEN,
        CreateOptions.FILE_NON_DIRECTORY_FILE,
        create_contexts=contexts,
        oplock_level=oplock,
    )
    handles[r["h"]] = (r["c"], o, key)
    out = {"file_id": o.file_id.hex(),
           "oplock": OPLOCK_NAMES.get(o.oplock_level, "lease" if o.oplock_level == 0xFF else str(o.oplock_level))}
    for c2 in resp or []:
        if hasattr(c2, "fields") and "lease_state" in c2.fields:
            out["lease"] = lease_name(c2["lease_state"].get_value())
    return out


def op_stat_compound(r):
    c = clients[r["c"]]
    o = Open(c.tree, r["path"])
    create, _ = o.create(
        ImpersonationLevel.Impersonation,
        int(r.get("access", 0x0012019F)),
        FileAttributes.FILE_ATTRIBUTE_NORMAL,
        int(r.get("share", 7)),
        CreateDisposition.FILE_OPEN,
        CreateOptions.FILE_NON_DIRECTORY_FILE,
        send=False,
    )
    query = SMB2QueryInfoRequest()
    query["info_type"] = InfoType.SMB2_0_INFO_FILE
    query["file_info_class"] = FileInformationClass.FILE_STANDARD_INFORMATION
    query["output_buffer_length"] = 1024
    query["file_id"] = o.file_id  # all ones: the FileId the CREATE returns
    close, _ = o.close(send=False)
    sent = c.conn.send_compound([create, query, close], c.session.session_id, c.tree.tree_connect_id, related=True)
    out = {}
    for name, req in zip(("create", "query", "close"), sent):
        try:
            resp = c.conn.receive(req)
            out[name] = "STATUS_SUCCESS"
            if name == "query":
                q = SMB2QueryInfoResponse()
                q.unpack(resp["data"].get_value())
                out["size"] = struct.unpack_from("<Q", q["buffer"].get_value(), 8)[0]
        except SMBResponseException as e:
            out[name] = status_name(e.status)
    return out


def op_close(r):
    _, o, _ = handles.pop(r["h"])
    o.close()
    return {}


def op_read(r):
    _, o, _ = handles[r["h"]]
    return {"data": o.read(int(r["off"]), int(r["len"])).hex()}


def op_write(r):
    _, o, _ = handles[r["h"]]
    return {"count": o.write(bytes.fromhex(r["data"]), int(r["off"]))}


def op_lock(r):
    _, o, _ = handles[r["h"]]
    e = SMB2LockElement()
    e["offset"] = int(r["off"])
    e["length"] = int(r["len"])
    flags = LockFlags.SMB2_LOCKFLAG_EXCLUSIVE_LOCK if r.get("excl", True) else LockFlags.SMB2_LOCKFLAG_SHARED_LOCK
    if not r.get("wait", False):
        flags |= LockFlags.SMB2_LOCKFLAG_FAIL_IMMEDIATELY
    e["flags"] = flags
    o.lock([e])
    return {}


def op_unlock(r):
    _, o, _ = handles[r["h"]]
    e = SMB2LockElement()
    e["offset"] = int(r["off"])
    e["length"] = int(r["len"])
    e["flags"] = LockFlags.SMB2_LOCKFLAG_UNLOCK
    o.lock([e])
    return {}


def op_delete(r):
    return set_info(r, FileInformationClass.FILE_DISPOSITION_INFORMATION, b"\x01")


def set_info(r, info_class, buf, tag=None):
    cname, o, _ = handles[r["h"]]
    c = clients[cname]
    req = SMB2SetInfoRequest()
    req["info_type"] = InfoType.SMB2_0_INFO_FILE
    req["file_info_class"] = info_class
    req["file_id"] = o.file_id
    req["buffer"] = buf
    sent = c.conn.send(req, sid=c.session.session_id, tid=c.tree.tree_connect_id)
    if tag:
        pending[tag] = sent  # for op_cancel
    try:
        c.conn.receive(sent)
    finally:
        pending.pop(tag, None)
    return {}


def op_setbasic(r):
    """FileBasicInformation: FILETIME values (0 = unchanged) and DOS attributes (0 = unchanged;
    READONLY = 1, NORMAL = 0x80)."""
    buf = struct.pack("<QQQQII", int(r.get("created", 0)), int(r.get("accessed", 0)), int(r.get("written", 0)),
                      int(r.get("changed", 0)), int(r.get("attributes", 0)), 0)
    return set_info(r, 4, buf)


def op_eof(r):
    """FileEndOfFileInformation: the file's new size."""
    return set_info(r, 20, struct.pack("<Q", int(r["size"])))


pending = {}  # tag -> smbprotocol Request still waiting for its final answer


def rename_buffer(to, replace):
    name = to.encode("utf-16-le")
    # FILE_RENAME_INFORMATION (SMB2 form): ReplaceIfExists, 7 reserved, RootDirectory (8), length, name.
    return struct.pack("<B7xQI", 1 if replace else 0, 0, len(name)) + name


def op_rename(r):
    buf = rename_buffer(r["to"], r.get("replace", False))
    return set_info(r, FileInformationClass.FILE_RENAME_INFORMATION, buf, tag=r.get("tag"))


def op_cancel(r):
    # The request is registered, and its interim answer (STATUS_PENDING, with the AsyncId
    # CANCEL names) in, within moments of the break it caused.
    deadline = time.monotonic() + 10
    while (r["tag"] not in pending or pending[r["tag"]].async_id is None) and time.monotonic() < deadline:
        time.sleep(0.01)
    req = pending[r["tag"]]
    req.cancel()
    return {"async": req.async_id is not None}


def op_name(r):
    cname, o, _ = handles[r["h"]]
    c = clients[cname]
    req = SMB2QueryInfoRequest()
    req["info_type"] = InfoType.SMB2_0_INFO_FILE
    # FileAllInformation: its FileNameInformation part starts at byte 96.
    req["file_info_class"] = FileInformationClass.FILE_ALL_INFORMATION
    req["output_buffer_length"] = 4096
    req["file_id"] = o.file_id
    sent = c.conn.send(req, sid=c.session.session_id, tid=c.tree.tree_connect_id)
    resp = SMB2QueryInfoResponse()
    resp.unpack(c.conn.receive(sent)["data"].get_value())
    buf = resp["buffer"].get_value()
    n = struct.unpack_from("<I", buf, 96)[0]
    return {"name": buf[100:100 + n].decode("utf-16-le")}


def op_breaks(r):
    c = clients[r["c"]]
    n, deadline = int(r.get("n", 1)), time.monotonic() + float(r.get("timeout", 10))
    with c.sink.cond:
        while len(c.sink.breaks) < n and time.monotonic() < deadline:
            c.sink.cond.wait(timeout=max(0.0, deadline - time.monotonic()))
        return {"breaks": list(c.sink.breaks[:n])}


def op_ack(r):
    cname, _, key = handles[r["h"]]
    c = clients[cname]
    sent = c.conn.send(LeaseBreakAck(key, lease_bits(r["state"])), sid=c.session.session_id, tid=c.tree.tree_connect_id)
    resp = c.conn.receive(sent)
    data = resp["data"].get_value()
    return {"lease": lease_name(struct.unpack_from("<I", data, 24)[0]) if len(data) >= 28 else None}


def op_ack_oplock(r):
    cname, o, _ = handles[r["h"]]
    c = clients[cname]
    sent = c.conn.send(OplockBreakAck(o.file_id, OPLOCKS[r["level"]]), sid=c.session.session_id,
                       tid=c.tree.tree_connect_id)
    resp = c.conn.receive(sent)
    data = resp["data"].get_value()
    return {"oplock": OPLOCK_NAMES.get(data[2], str(data[2])) if len(data) >= 3 else None}


def op_loop(r):
    """n x (open+close) of `path`, or n x (blocking lock + unlock) of off/len on handle h;
    for the benchmark's cluster rows. Returns the elapsed seconds."""
    n = int(r["n"])
    start = time.monotonic()
    if r["what"] == "openclose":
        c = clients[r["c"]]
        for _ in range(n):
            o = Open(c.tree, r["path"])
            o.create(ImpersonationLevel.Impersonation, 0x0012019F, FileAttributes.FILE_ATTRIBUTE_NORMAL, 7,
                     CreateDisposition.FILE_OPEN_IF, CreateOptions.FILE_NON_DIRECTORY_FILE)
            o.close()
    else:
        _, o, _ = handles[r["h"]]
        for _ in range(n):
            e = SMB2LockElement()
            e["offset"], e["length"] = int(r["off"]), int(r["len"])
            e["flags"] = LockFlags.SMB2_LOCKFLAG_EXCLUSIVE_LOCK
            o.lock([e])
            u = SMB2LockElement()
            u["offset"], u["length"] = int(r["off"]), int(r["len"])
            u["flags"] = LockFlags.SMB2_LOCKFLAG_UNLOCK
            o.lock([u])
    return {"n": n, "start": start, "elapsed": time.monotonic() - start}


def op_drop(r):
    c = clients.pop(r["c"])
    c.conn.transport.close() if hasattr(c.conn.transport, "close") else None
    return {}


OPS = {k[3:]: v for k, v in globals().items() if k.startswith("op_")}


def run(req):
    t0 = time.monotonic()
    try:
        reply(req, ok=True, t0=t0, **(OPS[req["op"]](req) or {}))
    except SMBResponseException as e:
        reply(req, ok=False, t0=t0, status=status_name(e.status))
    except Exception as e:  # noqa: BLE001 - every failure goes back to the test, typed
        reply(req, ok=False, t0=t0, status="EXCEPTION", error=f"{type(e).__name__}: {e}")


def main():
    reply({"id": "ready"}, ok=True)
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        req = json.loads(line)
        if req.get("bg"):
            threading.Thread(target=run, args=(req,), daemon=True).start()
        else:
            run(req)


if __name__ == "__main__":
    main()
