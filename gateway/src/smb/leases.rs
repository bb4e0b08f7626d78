//! Oplocks and leases on the wire, and where their breaks go.
//!
//! The rules (who gets what, what breaks what) live in [`crate::locks::record`] and are decided
//! cluster-wide by the lock service; this module only translates: the CREATE's requested oplock
//! level and `RqLs` context (MS-SMB2 2.2.13.2.8/2.2.13.2.10) into a [`CachingRequest`], the
//! granted state into the response's oplock level and `RqLs` context (2.2.14.2.10/2.2.14.2.11),
//! and a [`BreakNotice`] into an oplock or lease break notification (2.2.23.1/2.2.23.2) sent on
//! the connection of the client that holds it ([`Breaks`]).

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::mpsc;

use crate::locks::{caching, BreakNotice, CachingRequest, Holders, LeaseId, OpenKey};
use crate::smb::wire::header::{command, Header, FLAG_SERVER_TO_REDIR, HEADER_LEN};
use crate::smb::wire::{Reader, WireResult, Writer};
use crate::vfs::FileId;

/// RequestedOplockLevel / OplockLevel values (MS-SMB2 2.2.13).
pub mod level {
    /// No oplock.
    pub const NONE: u8 = 0;
    /// Level II (shared read caching).
    pub const II: u8 = 1;
    /// Exclusive.
    pub const EXCLUSIVE: u8 = 8;
    /// Batch.
    pub const BATCH: u8 = 9;
    /// A lease (the RqLs context says which).
    pub const LEASE: u8 = 0xFF;
}

/// SMB2_LEASE_FLAG_BREAK_IN_PROGRESS.
pub const FLAG_BREAK_IN_PROGRESS: u32 = 0x2;
/// SMB2_LEASE_FLAG_PARENT_LEASE_KEY_SET (v2).
pub const FLAG_PARENT_LEASE_KEY_SET: u32 = 0x4;
/// SMB2_NOTIFY_BREAK_LEASE_FLAG_ACK_REQUIRED.
pub const NOTIFY_ACK_REQUIRED: u32 = 0x1;

/// The lease state an oplock level asks for.
pub fn oplock_state(level: u8) -> u8 {
    match level {
        level::II => caching::R,
        level::EXCLUSIVE => caching::R | caching::W,
        level::BATCH => caching::RWH,
        _ => 0,
    }
}

/// The oplock level a granted state amounts to.
pub fn state_level(state: u8) -> u8 {
    if state == caching::RWH {
        level::BATCH
    } else if state & caching::W != 0 {
        level::EXCLUSIVE
    } else if state & caching::R != 0 {
        level::II
    } else {
        level::NONE
    }
}

/// A decoded `RqLs` request context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseRequest {
    /// LeaseKey.
    pub key: [u8; 16],
    /// Requested LeaseState.
    pub state: u8,
    /// 1 (32-byte context) or 2 (52-byte context).
    pub version: u8,
    /// ParentLeaseKey, when the flag says it is set (v2).
    pub parent: Option<[u8; 16]>,
    /// The client's epoch (v2).
    pub epoch: u16,
}

/// Decodes an `RqLs` context's data (v1: 32 bytes, v2: 52 bytes). Pure.
pub fn parse_lease(data: &[u8]) -> WireResult<LeaseRequest> {
    let mut r = Reader::at(data, 0);
    let key: [u8; 16] = r.bytes(16)?.try_into().expect("16 bytes");
    let state = (r.u32()? & u32::from(caching::RWH)) as u8;
    let flags = r.u32()?;
    r.skip(8)?;
    if data.len() < 52 {
        return Ok(LeaseRequest { key, state, version: 1, parent: None, epoch: 0 });
    }
    let parent: [u8; 16] = r.bytes(16)?.try_into().expect("16 bytes");
    let epoch = r.u16()?;
    let parent = (flags & FLAG_PARENT_LEASE_KEY_SET != 0).then_some(parent);
    Ok(LeaseRequest { key, state, version: 2, parent, epoch })
}

/// The `RqLs` response context's data for a granted lease, in the request's format.
pub fn lease_response(req: &LeaseRequest, state: u8, epoch: u16, breaking: bool) -> Vec<u8> {
    lease_response_as(req, req.version, state, epoch, breaking)
}

/// The `RqLs` response context's data for a granted lease, in the format of lease `version`
/// (the lease's own, set by the open that made it: a v1 request on a v2 lease is answered in
/// v2, with the epoch, as Windows and Samba do; 0: the request's).
pub fn lease_response_as(req: &LeaseRequest, version: u8, state: u8, epoch: u16, breaking: bool) -> Vec<u8> {
    let version = if version == 0 { req.version } else { version };
    let mut w = Writer::with_capacity(52);
    let mut flags = if breaking { FLAG_BREAK_IN_PROGRESS } else { 0 };
    w.bytes(&req.key).u32(u32::from(state));
    if version >= 2 {
        if req.parent.is_some() {
            flags |= FLAG_PARENT_LEASE_KEY_SET;
        }
        w.u32(flags).u64(0).bytes(&req.parent.unwrap_or([0; 16])).u16(epoch).u16(0);
    } else {
        w.u32(flags).u64(0);
    }
    w.buf
}

/// What a CREATE asks for, as the lock service takes it. Leases need SMB 2.1 or later (v2: 3.x).
pub fn caching_request(oplock: u8, lease: Option<LeaseRequest>, client: [u8; 16], dialect: u16) -> CachingRequest {
    match (oplock, lease) {
        (level::LEASE, Some(l)) if dialect >= crate::smb::signing::dialect::SMB210 => CachingRequest::Lease {
            id: LeaseId { client, key: l.key },
            state: l.state,
            version: if dialect >= crate::smb::signing::dialect::SMB300 { l.version } else { 1 },
            epoch: l.epoch,
            parent: l.parent,
        },
        (level::LEASE, _) => CachingRequest::None,
        (o, _) => match oplock_state(o) {
            0 => CachingRequest::None,
            s => CachingRequest::Oplock(s),
        },
    }
}

/// Encodes an unsolicited break notification (MessageId all ones, SessionId 0, unsigned).
pub fn break_message(notice: &BreakNotice, fid: Option<(u64, u64)>) -> Vec<u8> {
    let h = Header {
        command: command::OPLOCK_BREAK,
        flags: FLAG_SERVER_TO_REDIR,
        message_id: u64::MAX,
        ..Default::default()
    };
    let mut w = Writer::with_capacity(HEADER_LEN + 44);
    h.emit(&mut w);
    match fid {
        // An oplock break: the level it must go to, and the open.
        Some((p, v)) => {
            w.u16(24).u8(state_level(notice.to)).u8(0).u32(0).u64(p).u64(v);
        }
        None => {
            let flags = if notice.ack_required { NOTIFY_ACK_REQUIRED } else { 0 };
            let epoch = if notice.version >= 2 { notice.epoch } else { 0 };
            w.u16(44).u16(epoch).u32(flags).bytes(&notice.lease.key);
            w.u32(u32::from(notice.from)).u32(u32::from(notice.to)).u32(0).u32(0).u32(0);
        }
    }
    w.buf
}

/// A connection's queue of unsolicited messages.
type Notices = mpsc::UnboundedSender<Vec<u8>>;

/// Where a lease's or oplock's breaks go.
#[derive(Debug, Clone)]
struct Holder {
    /// The file the lease is on.
    file: FileId,
    /// For an oplock: the open's FileId (persistent, volatile).
    oplock_fid: Option<(u64, u64)>,
    /// The opens using it on this node (their key, when the caller named it) and the queue of
    /// unsolicited messages of the connection each was made on, oldest first. A break goes to
    /// the connection of the latest open still using the lease: a client with two connections
    /// (one client GUID) that closed the lease's open on one hears the break on the other
    /// (smbtorture `smb2.lease.v2_complex1`).
    uses: Vec<(Option<OpenKey>, mpsc::UnboundedSender<Vec<u8>>)>,
}

/// This node's leases and oplocks by id: the lock service tells it to break one, it finds the
/// client's connection. Also answers which file a lease key is on (a key names one file: an
/// open of another file with it is refused, MS-SMB2 3.3.5.9.8).
#[derive(Default)]
pub struct Breaks {
    holders: Mutex<HashMap<LeaseId, Holder>>,
    /// The connections of each client GUID that took a lease here, oldest first: a lease break
    /// goes to the client's oldest connection still up, as Samba sends it (smbtorture
    /// `smb2.lease.v2_complex1` expects every break of a two-connection client on its first).
    clients: Mutex<HashMap<[u8; 16], Vec<Notices>>>,
    evict: Mutex<Option<Box<dyn Fn() + Send + Sync>>>,
}

impl std::fmt::Debug for Breaks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breaks").field("holders", &self.map().len()).finish()
    }
}

impl Breaks {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<LeaseId, Holder>> {
        self.holders.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The file lease `id` is on, if this node knows it.
    pub fn file_of(&self, id: &LeaseId) -> Option<FileId> {
        self.map().get(id).map(|h| h.file)
    }

    /// An open of `file` got lease `id` (or, with `oplock_fid`, an oplock) from a client whose
    /// connection queues unsolicited messages on `to`.
    pub fn hold(&self, id: LeaseId, file: FileId, oplock_fid: Option<(u64, u64)>, to: mpsc::UnboundedSender<Vec<u8>>) {
        self.hold_open(id, file, oplock_fid, to, None);
    }

    /// [`Breaks::hold`] for open `key`, which [`Breaks::release_open`] then lets go.
    pub fn hold_open(
        &self,
        id: LeaseId,
        file: FileId,
        oplock_fid: Option<(u64, u64)>,
        to: mpsc::UnboundedSender<Vec<u8>>,
        key: Option<OpenKey>,
    ) {
        if oplock_fid.is_none() {
            let mut c = self.clients.lock().unwrap_or_else(|p| p.into_inner());
            let conns = c.entry(id.client).or_default();
            conns.retain(|t| !t.is_closed());
            if !conns.iter().any(|t| t.same_channel(&to)) {
                conns.push(to.clone());
            }
        }
        let mut m = self.map();
        let h = m.entry(id).or_insert(Holder { file, oplock_fid, uses: Vec::new() });
        h.uses.push((key, to));
    }

    /// Where lease `id`'s breaks go: its client's oldest connection still up that this node
    /// knows, else the connection of its latest open.
    fn lease_channel(&self, id: &LeaseId, h: &Holder) -> Option<mpsc::UnboundedSender<Vec<u8>>> {
        if h.oplock_fid.is_none() {
            let mut c = self.clients.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(conns) = c.get_mut(&id.client) {
                conns.retain(|t| !t.is_closed());
                let first = conns.first().cloned();
                if conns.is_empty() {
                    c.remove(&id.client);
                }
                if first.is_some() {
                    return first;
                }
            }
        }
        h.uses.last().map(|u| u.1.clone())
    }

    /// The opens using lease `id` moved to another connection (a durable open reconnected,
    /// or its connection was lost and `to` stands for it): breaks go to `to` now; with
    /// `oplock_fid`, an oplock's break names that FileId.
    pub fn redirect(&self, id: &LeaseId, to: mpsc::UnboundedSender<Vec<u8>>, oplock_fid: Option<(u64, u64)>) {
        if let Some(h) = self.map().get_mut(id) {
            for u in h.uses.iter_mut() {
                u.1 = to.clone();
            }
            if oplock_fid.is_some() && h.oplock_fid.is_some() {
                h.oplock_fid = oplock_fid;
            }
        }
    }

    /// An open using lease `id` closed (one held without naming its key, else the latest).
    pub fn release(&self, id: &LeaseId) {
        self.release_open(id, None);
    }

    /// Open `key` (held with [`Breaks::hold_open`]) no longer uses lease `id`.
    pub fn release_open(&self, id: &LeaseId, key: Option<OpenKey>) {
        let mut m = self.map();
        if let Some(h) = m.get_mut(id) {
            let i = h.uses.iter().rposition(|u| u.0 == key).or_else(|| h.uses.len().checked_sub(1));
            if let Some(i) = i {
                h.uses.remove(i);
            }
            if h.uses.is_empty() {
                m.remove(id);
            }
        }
    }

    /// What to run when this node is evicted from the cluster's view.
    pub fn on_evict(&self, f: Box<dyn Fn() + Send + Sync>) {
        *self.evict.lock().unwrap_or_else(|p| p.into_inner()) = Some(f);
    }

    /// The oplock lease of open `key`, for an acknowledgement by FileId.
    pub fn oplock_of(key: OpenKey) -> LeaseId {
        LeaseId::oplock(key)
    }
}

/// Whether `id` is an oplock's own lease ([`LeaseId::oplock`]) rather than a client's lease.
/// An open reclaimed on another node keeps its oplock's lease under a new open key, so the
/// key alone does not tell.
pub fn is_oplock(id: &LeaseId) -> bool {
    id.client == LeaseId::oplock(OpenKey { node: 0, seq: 0 }).client
}

impl Holders for Breaks {
    fn deliver_break(&self, _file: FileId, notice: BreakNotice) {
        let m = self.map();
        match m.get(&notice.lease) {
            Some(h) => {
                if let Some(to) = self.lease_channel(&notice.lease, h) {
                    let _ = to.send(break_message(&notice, h.oplock_fid));
                }
            }
            None => tracing::debug!(lease = ?notice.lease, "SMB: break for a lease no connection holds"),
        }
    }

    fn evicted(&self) {
        if let Some(f) = self.evict.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            f();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_contexts_round_trip_v1_and_v2() {
        let mut v1 = Vec::new();
        v1.extend_from_slice(&[7; 16]);
        v1.extend_from_slice(&7u32.to_le_bytes());
        v1.extend_from_slice(&0u32.to_le_bytes());
        v1.extend_from_slice(&0u64.to_le_bytes());
        let r = parse_lease(&v1).unwrap();
        assert_eq!((r.key, r.state, r.version, r.parent), ([7; 16], caching::RWH, 1, None));
        assert_eq!(lease_response(&r, caching::R | caching::H, 0, false).len(), 32);
        let mut v2 = v1.clone();
        v2[20..24].copy_from_slice(&FLAG_PARENT_LEASE_KEY_SET.to_le_bytes());
        v2.extend_from_slice(&[9; 16]);
        v2.extend_from_slice(&3u16.to_le_bytes());
        v2.extend_from_slice(&0u16.to_le_bytes());
        let r = parse_lease(&v2).unwrap();
        assert_eq!((r.version, r.parent, r.epoch), (2, Some([9; 16]), 3));
        let out = lease_response(&r, caching::R, 4, true);
        assert_eq!(out.len(), 52);
        assert_eq!(
            u32::from_le_bytes(out[20..24].try_into().unwrap()),
            FLAG_BREAK_IN_PROGRESS | FLAG_PARENT_LEASE_KEY_SET
        );
        assert_eq!(u16::from_le_bytes(out[48..50].try_into().unwrap()), 4);
        assert!(parse_lease(&[0; 20]).is_err());
    }

    #[test]
    fn oplock_levels_map_both_ways() {
        for l in [level::NONE, level::II, level::EXCLUSIVE, level::BATCH] {
            assert_eq!(state_level(oplock_state(l)), l);
        }
        assert_eq!(caching_request(level::BATCH, None, [0; 16], 0x0202), CachingRequest::Oplock(caching::RWH));
        let l = LeaseRequest { key: [1; 16], state: caching::RWH, version: 2, parent: None, epoch: 0 };
        assert_eq!(caching_request(level::LEASE, Some(l), [2; 16], 0x0202), CachingRequest::None, "no leases on 2.0.2");
        assert!(matches!(
            caching_request(level::LEASE, Some(l), [2; 16], 0x0210),
            CachingRequest::Lease { version: 1, .. }
        ));
        assert!(matches!(
            caching_request(level::LEASE, Some(l), [2; 16], 0x0311),
            CachingRequest::Lease { version: 2, .. }
        ));
    }

    #[test]
    fn break_notifications_are_well_formed() {
        let n = BreakNotice {
            lease: LeaseId { client: [1; 16], key: [5; 16] },
            node: 0,
            from: caching::RWH,
            to: caching::R | caching::H,
            epoch: 3,
            version: 2,
            ack_required: true,
        };
        let m = break_message(&n, None);
        let h = Header::parse(&m).unwrap();
        assert_eq!((h.command, h.message_id, h.session_id), (command::OPLOCK_BREAK, u64::MAX, 0));
        assert_eq!(m.len(), HEADER_LEN + 44);
        assert_eq!(u16::from_le_bytes([m[HEADER_LEN], m[HEADER_LEN + 1]]), 44);
        let o = break_message(&BreakNotice { version: 0, to: caching::R, ..n }, Some((4, 4)));
        assert_eq!(o.len(), HEADER_LEN + 24);
        assert_eq!(o[HEADER_LEN + 2], level::II);
    }
}
