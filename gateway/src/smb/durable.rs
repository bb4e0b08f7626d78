//! Durable handles (MS-SMB2 3.3.5.9.6-3.3.5.9.12): an open that survives the loss of its
//! connection for a while, so a client that reconnects gets the same handle back, with its
//! share mode, byte-range locks and lease, instead of reopening by name and finding them gone
//! (or taken by someone else).
//!
//! Three parts:
//! - the create contexts on the wire (`DHnQ`, `DH2Q`, `DHnC`, `DH2C` and the responses),
//!   decoded by the pure [`parse`];
//! - the rules as pure functions: [`grant`] (is a new open made durable, for how long) and
//!   [`check_reconnect`] (may this request take that open back);
//! - [`DurableTable`]: this node's durable opens by persistent FileId. While its connection
//!   lives, an open is in that connection's table and only its facts are here; when the
//!   connection is lost the open itself moves here ([`DurableTable::detach`]): it stays in the
//!   lock service exactly as it was (nothing is closed), a timer closes it when its timeout
//!   ends, and a lease or oplock break aimed at it closes it at once (its holder cannot answer;
//!   Samba does the same), so another client's conflicting open waits at most for that.
//!
//! A persistent FileId carries this node's number in its top 16 bits and a per-run counter
//! below (the run's start time in its high bits, as for lock keys), so it never names two opens.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::auth::Identity;
use super::cmd::open::{FileOpen, Open, OpenKind};
use super::wire::status::NtStatus;
use super::wire::{Reader, WireError, WireResult, Writer};
use super::SmbServer;
use crate::locks::{caching, LeaseId};
use crate::vfs::FileId;

/// The timeout a DH2Q asking for 0 gets, and the one of a v1 durable open (Samba's: 60 s).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest timeout granted (Samba caps at 300 s).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(300);

/// DH2Q/DH2C flag: a persistent handle.
pub const FLAG_PERSISTENT: u32 = 0x2;

/// What a CREATE asks for a new open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Ask {
    /// No durability.
    #[default]
    None,
    /// `DHnQ`: durable v1.
    V1,
    /// `DH2Q`: durable v2.
    V2 {
        /// Requested timeout in milliseconds (0: the server's default).
        timeout_ms: u32,
        /// The persistent flag.
        persistent: bool,
        /// The client's CreateGuid (replay detection).
        create_guid: [u8; 16],
    },
}

/// A reconnect request: the open named is to be taken back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reconnect {
    /// `DHnC`.
    V1 {
        /// FileId (persistent, volatile) of the open.
        fid: (u64, u64),
    },
    /// `DH2C`.
    V2 {
        /// FileId (persistent, volatile) of the open.
        fid: (u64, u64),
        /// Its CreateGuid.
        create_guid: [u8; 16],
        /// The persistent flag.
        persistent: bool,
    },
}

impl Reconnect {
    /// The persistent half of the FileId named.
    pub fn persistent_id(&self) -> u64 {
        match self {
            Reconnect::V1 { fid } | Reconnect::V2 { fid, .. } => fid.0,
        }
    }
}

/// The durable contexts of one CREATE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Contexts {
    /// A new durable open asked for.
    pub ask: Ask,
    /// A reconnect asked for.
    pub reconnect: Option<Reconnect>,
}

/// Walks the create contexts (at most 32) and returns `(name, data)` of each. Pure.
pub fn contexts(buf: &[u8]) -> WireResult<Vec<(&[u8], &[u8])>> {
    let mut out = Vec::new();
    let mut off = 0usize;
    if buf.is_empty() {
        return Ok(out);
    }
    for _ in 0..32 {
        let mut r = Reader::at(buf, off);
        let next = r.u32()? as usize;
        let name_off = r.u16()? as usize;
        let name_len = r.u16()? as usize;
        r.skip(2)?;
        let data_off = r.u16()? as usize;
        let data_len = r.u32()? as usize;
        let name = super::wire::slice_at(
            buf,
            off.checked_add(name_off).ok_or(WireError::Malformed("context offset"))?,
            name_len,
        )?;
        let data = if data_len == 0 {
            &[][..]
        } else {
            super::wire::slice_at(
                buf,
                off.checked_add(data_off).ok_or(WireError::Malformed("context offset"))?,
                data_len,
            )?
        };
        out.push((name, data));
        if next == 0 {
            return Ok(out);
        }
        off = off.checked_add(next).ok_or(WireError::Malformed("context offset"))?;
    }
    Err(WireError::Malformed("too many create contexts"))
}

/// Decodes the durable contexts of a CREATE's context list; `v2` is whether the dialect is
/// 3.0 or later (earlier dialects ignore `DH2Q`/`DH2C`, as smbd does). The combinations
/// MS-SMB2 3.3.5.9 forbids, and a context of the wrong size, are INVALID_PARAMETER. Pure.
pub fn parse(buf: &[u8], v2: bool) -> Result<Contexts, NtStatus> {
    let all = contexts(buf).map_err(|_| NtStatus::INVALID_PARAMETER)?;
    let find = |n: &[u8]| all.iter().find(|(name, _)| *name == n).map(|(_, d)| *d);
    let (dhnq, dhnc) = (find(b"DHnQ"), find(b"DHnC"));
    let (dh2q, dh2c) = if v2 { (find(b"DH2Q"), find(b"DH2C")) } else { (None, None) };
    if dh2q.is_some() && (dhnq.is_some() || dhnc.is_some()) {
        return Err(NtStatus::INVALID_PARAMETER);
    }
    if dh2c.is_some() && (dhnq.is_some() || dhnc.is_some() || dh2q.is_some()) {
        return Err(NtStatus::INVALID_PARAMETER);
    }
    let bad = |_| NtStatus::INVALID_PARAMETER;
    let fid = |d: &[u8]| -> WireResult<(u64, u64)> {
        let mut r = Reader::new(d);
        Ok((r.u64()?, r.u64()?))
    };
    let reconnect = if let Some(d) = dh2c {
        if d.len() != 36 {
            return Err(NtStatus::INVALID_PARAMETER);
        }
        let mut r = Reader::at(d, 16);
        let create_guid = r.array::<16>().map_err(bad)?;
        let flags = r.u32().map_err(bad)?;
        Some(Reconnect::V2 { fid: fid(d).map_err(bad)?, create_guid, persistent: flags & FLAG_PERSISTENT != 0 })
    } else if let Some(d) = dhnc {
        if d.len() != 16 {
            return Err(NtStatus::INVALID_PARAMETER);
        }
        Some(Reconnect::V1 { fid: fid(d).map_err(bad)? })
    } else {
        None
    };
    let ask = if reconnect.is_some() {
        // A reconnect ignores a DHnQ beside its DHnC (MS-SMB2 3.3.5.9.7).
        Ask::None
    } else if let Some(d) = dh2q {
        if d.len() != 32 {
            return Err(NtStatus::INVALID_PARAMETER);
        }
        let mut r = Reader::new(d);
        let timeout_ms = r.u32().map_err(bad)?;
        let flags = r.u32().map_err(bad)?;
        r.skip(8).map_err(bad)?;
        let create_guid = r.array::<16>().map_err(bad)?;
        Ask::V2 { timeout_ms, persistent: flags & FLAG_PERSISTENT != 0, create_guid }
    } else if let Some(d) = dhnq {
        if d.len() != 16 {
            return Err(NtStatus::INVALID_PARAMETER);
        }
        Ask::V1
    } else {
        Ask::None
    };
    Ok(Contexts { ask, reconnect })
}

/// What makes an open durable: kept with it, checked by a reconnect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Durability {
    /// 1 (`DHnQ`) or 2 (`DH2Q`).
    pub version: u8,
    /// How long it outlives its connection.
    pub timeout: Duration,
    /// A persistent handle (continuously available share).
    pub persistent: bool,
    /// The CreateGuid of a v2 open.
    pub create_guid: Option<[u8; 16]>,
    /// The ClientGuid of the connection that opened it.
    pub client_guid: [u8; 16],
    /// Who opened it: only the same user may take it back.
    pub user: Identity,
    /// The lease key it caches through (`None` for an oplock).
    pub lease_key: Option<[u8; 16]>,
    /// The version of that lease (1 or 2).
    pub lease_version: u8,
    /// The CreateAction the open was answered with (a replayed CREATE gets it again).
    pub action: u32,
}

/// Whether a new open is made durable (MS-SMB2 3.3.5.9.6, 3.3.5.9.10; smbd's rules): a v1 or
/// non-persistent v2 open only with a batch oplock or a lease with handle caching, never for
/// a directory; a persistent one only on a continuously available share (`ca`), whatever its
/// caching. Returns the timeout and whether it is persistent. Pure.
pub fn grant(ask: Ask, caching_state: u8, is_dir: bool, ca: bool) -> Option<(Duration, bool)> {
    let handle_cached = caching_state & caching::H != 0;
    match ask {
        Ask::None => None,
        _ if is_dir => None,
        Ask::V1 => handle_cached.then_some((DEFAULT_TIMEOUT, false)),
        Ask::V2 { timeout_ms, persistent, .. } => {
            let persistent = persistent && ca;
            if !handle_cached && !persistent {
                return None;
            }
            let t = match timeout_ms {
                0 => DEFAULT_TIMEOUT,
                ms => Duration::from_millis(u64::from(ms)).min(MAX_TIMEOUT),
            };
            Some((t, persistent))
        }
    }
}

/// The response context data for a granted durable open: `DHnQ` (8 reserved bytes) or
/// `DH2Q` (timeout in ms, flags).
pub fn response(d: &Durability) -> (&'static [u8], Vec<u8>) {
    let mut w = Writer::with_capacity(8);
    if d.version == 1 {
        w.zeros(8);
        (b"DHnQ", w.buf)
    } else {
        let flags = if d.persistent { FLAG_PERSISTENT } else { 0 };
        w.u32(d.timeout.as_millis() as u32).u32(flags);
        (b"DH2Q", w.buf)
    }
}

/// What a reconnecting CREATE presents, for [`check_reconnect`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presented<'a> {
    /// The reconnect context.
    pub reconnect: Reconnect,
    /// ClientGuid of the new connection.
    pub client_guid: [u8; 16],
    /// The session's user.
    pub user: &'a Identity,
    /// The `RqLs` context's lease key and version, if any.
    pub lease: Option<([u8; 16], u8)>,
    /// The name asked for is the open's file (share-relative, compared as the share does).
    pub same_name: bool,
    /// The tree is on the open's share.
    pub same_share: bool,
}

/// May `p` take back the durable open `d` (MS-SMB2 3.3.5.9.7 and 3.3.5.9.12, as smbd 4.17
/// answers: the ClientGuid only matters for an open with a lease)? An open that does not match is OBJECT_NAME_NOT_FOUND, as if it did not exist;
/// a lease of another version INVALID_PARAMETER; another user ACCESS_DENIED. Pure.
pub fn check_reconnect(d: &Durability, p: &Presented<'_>) -> Result<(), NtStatus> {
    // A DHnC may take back a v2 open too (smbd); a DH2C needs the open's CreateGuid (a v1
    // open's is all zeros, as in smbd).
    if let Reconnect::V2 { create_guid, .. } = p.reconnect {
        if d.create_guid.unwrap_or([0; 16]) != create_guid {
            return Err(NtStatus::OBJECT_NAME_NOT_FOUND);
        }
    }
    if !p.same_share {
        return Err(NtStatus::OBJECT_NAME_NOT_FOUND);
    }
    // A lease belongs to its client GUID; an oplock's open may come back from another one
    // (smbd 4.17, and smbtorture's reopen tests rely on it).
    if d.lease_key.is_some() && p.client_guid != d.client_guid {
        return Err(NtStatus::OBJECT_NAME_NOT_FOUND);
    }
    match (d.lease_key, p.lease) {
        (Some(k), Some((key, v))) => {
            if key != k {
                return Err(NtStatus::OBJECT_NAME_NOT_FOUND);
            }
            if v != d.lease_version {
                return Err(NtStatus::INVALID_PARAMETER);
            }
            if !p.same_name {
                return Err(NtStatus::INVALID_PARAMETER);
            }
        }
        (Some(_), None) | (None, Some(_)) => return Err(NtStatus::OBJECT_NAME_NOT_FOUND),
        (None, None) => {}
    }
    if p.user != &d.user {
        return Err(NtStatus::ACCESS_DENIED);
    }
    Ok(())
}

/// Where a durable open is now.
enum Place {
    /// In the table of the connection whose unsolicited-message queue is `link`, at `volatile`.
    Attached { link: mpsc::UnboundedSender<Vec<u8>>, volatile: u64 },
    /// Its connection is gone: the open waits here until `expiry` fires or it is taken back.
    Detached { open: Box<Open>, expiry: CancellationToken },
}

struct Entry {
    facts: Durability,
    place: Place,
    /// Its LOCK replay buckets (they follow the open across reconnects).
    lock_sequences: super::durable_replay::LockSequences,
}

/// This node's durable opens by persistent FileId (see the module doc).
pub struct DurableTable {
    node: u16,
    next: AtomicU64,
    entries: Mutex<HashMap<u64, Entry>>,
    /// Fires when an open is detached (a reconnect racing its old connection's end waits).
    detached: tokio::sync::Notify,
    /// The runtime timers and detached closes run on (the daemon's: a connection's own
    /// runtime ends with its thread).
    runtime: Option<tokio::runtime::Handle>,
}

impl std::fmt::Debug for DurableTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DurableTable").field("node", &self.node).finish()
    }
}

/// What [`DurableTable::take`] hands back.
pub struct Taken {
    /// The open, to be stored in the reconnecting connection's table.
    pub open: Box<Open>,
    /// Its durability.
    pub facts: Durability,
    /// Its LOCK replay buckets (for [`DurableTable::attach_with`]).
    pub lock_sequences: super::durable_replay::LockSequences,
}

impl DurableTable {
    /// An empty table for node `node`, its timers on the current runtime (if any).
    pub fn new(node: u16) -> Self {
        let start = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
        Self {
            node,
            next: AtomicU64::new((start & 0xffff_ffff) << 16),
            entries: Mutex::new(HashMap::new()),
            detached: tokio::sync::Notify::new(),
            runtime: tokio::runtime::Handle::try_current().ok(),
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A fresh persistent FileId: this node's number in the top 16 bits.
    pub fn new_persistent_id(&self) -> u64 {
        let n = self.next.fetch_add(1, Ordering::Relaxed) & 0x0000_ffff_ffff_ffff;
        (u64::from(self.node) << 48) | n
    }

    /// Records that the open `persistent`, at `volatile` on the connection whose queue is
    /// `link`, is durable.
    pub fn attach(&self, persistent: u64, facts: Durability, link: mpsc::UnboundedSender<Vec<u8>>, volatile: u64) {
        self.attach_with(persistent, facts, link, volatile, Default::default());
    }

    /// [`DurableTable::attach`] for an open taken back, with the LOCK replay buckets it had.
    pub fn attach_with(
        &self,
        persistent: u64,
        facts: Durability,
        link: mpsc::UnboundedSender<Vec<u8>>,
        volatile: u64,
        lock_sequences: super::durable_replay::LockSequences,
    ) {
        self.map().insert(persistent, Entry { facts, place: Place::Attached { link, volatile }, lock_sequences });
    }

    /// Forgets open `persistent` (closed by its client, or by logoff or tree disconnect);
    /// returns its durability if it was durable.
    pub fn forget(&self, persistent: u64) -> Option<Durability> {
        self.map().remove(&persistent).map(|e| e.facts)
    }

    /// Before a LOCK on open `persistent` with lock sequence `seq`: `Some(true)` for a replay
    /// of one that succeeded, `None` when the open is not durable (no replay detection).
    pub fn lock_replayed(&self, persistent: u64, seq: (usize, u8)) -> Option<bool> {
        self.map().get_mut(&persistent).map(|e| e.lock_sequences.replayed(seq))
    }

    /// The LOCK with lock sequence `seq` on open `persistent` succeeded.
    pub fn lock_succeeded(&self, persistent: u64, seq: (usize, u8)) {
        if let Some(e) = self.map().get_mut(&persistent) {
            e.lock_sequences.succeeded(seq);
        }
    }

    /// Whether open `persistent` is durable.
    pub fn is_durable(&self, persistent: u64) -> bool {
        self.map().contains_key(&persistent)
    }

    /// Durable opens (attached and detached), for status and tests.
    pub fn count(&self) -> (usize, usize) {
        let m = self.map();
        let detached = m.values().filter(|e| matches!(e.place, Place::Detached { .. })).count();
        (m.len() - detached, detached)
    }

    /// The facts of open `persistent` and whether it is detached.
    pub fn facts(&self, persistent: u64) -> Option<(Durability, bool)> {
        self.map().get(&persistent).map(|e| (e.facts.clone(), matches!(e.place, Place::Detached { .. })))
    }

    /// The open with CreateGuid `guid` from client `client`: its persistent id, whether it is
    /// detached, and (attached) the volatile id and whether it is on the connection `link`.
    pub fn by_create_guid(
        &self,
        client: [u8; 16],
        guid: [u8; 16],
        link: &mpsc::UnboundedSender<Vec<u8>>,
    ) -> Option<(u64, Option<u64>)> {
        let m = self.map();
        m.iter().find(|(_, e)| e.facts.client_guid == client && e.facts.create_guid == Some(guid)).map(
            |(p, e)| match &e.place {
                Place::Attached { link: l, volatile } if l.same_channel(link) => (*p, Some(*volatile)),
                Place::Attached { .. } => (*p, None),
                Place::Detached { .. } => (*p, None),
            },
        )
    }

    /// The connection of `open` is lost: keep the open (nothing is released in the lock
    /// service) for its timeout. Returns the open back when it is not durable.
    pub fn detach(&self, server: &Arc<SmbServer>, open: Open, ghost: &mpsc::UnboundedSender<Vec<u8>>) -> Option<Open> {
        let mut m = self.map();
        let Some(e) = m.get_mut(&open.persistent) else { return Some(open) };
        let OpenKind::File(f) = &open.kind else { return Some(open) };
        // Not kept (smbd's rules): an open whose close deletes the file (the delete happens
        // now), and one whose lease or oplock is being broken (the break sent to the lost
        // connection will never be acknowledged; the other client goes ahead).
        let (delete, breaking) = server
            .locks
            .local(&f.id, |r| {
                let delete = r.delete_pending
                    || r.open_of(f.key).is_some_and(|o| o.flags & crate::locks::flags::DELETE_ON_CLOSE != 0);
                let breaking = f.lease.is_some_and(|l| r.lease(&l).is_some_and(|x| x.told.is_some()));
                (delete, breaking)
            })
            .unwrap_or((false, false));
        if delete || breaking {
            m.remove(&open.persistent);
            return Some(open);
        }
        if let Some(l) = &f.lease {
            server.breaks.redirect(l, ghost.clone(), None);
        }
        let expiry = CancellationToken::new();
        let (persistent, timeout) = (open.persistent, e.facts.timeout);
        tracing::info!(
            file = %crate::logging::untrusted(f.name()),
            timeout_s = timeout.as_secs(),
            "SMB: connection lost; its durable open is kept for a reconnect"
        );
        e.place = Place::Detached { open: Box::new(open), expiry: expiry.clone() };
        drop(m);
        self.detached.notify_waiters();
        let server = server.clone();
        let run = async move {
            tokio::select! {
                _ = expiry.cancelled() => {}
                _ = tokio::time::sleep(timeout) => {
                    server.durable.close_detached(&server, persistent, "its timeout ended").await;
                }
            }
        };
        self.spawn(run);
        None
    }

    /// Runs `f` on the daemon's runtime (a connection's own runtime ends with its thread).
    pub fn spawn(&self, f: impl std::future::Future<Output = ()> + Send + 'static) {
        match &self.runtime {
            Some(rt) => {
                rt.spawn(f);
            }
            None => {
                tokio::spawn(f);
            }
        }
    }

    /// Closes the detached open `persistent` (timeout, or a break it cannot answer).
    pub async fn close_detached(&self, server: &Arc<SmbServer>, persistent: u64, why: &str) {
        let open = {
            let mut m = self.map();
            match m.get(&persistent) {
                Some(Entry { place: Place::Detached { .. }, .. }) => match m.remove(&persistent) {
                    Some(Entry { place: Place::Detached { open, expiry }, .. }) => {
                        expiry.cancel();
                        if server.clustered {
                            server.cluster_opens.drop_mine(&server.locks, persistent, true);
                        }
                        open
                    }
                    _ => return,
                },
                _ => return,
            }
        };
        if let OpenKind::File(f) = &open.kind {
            tracing::info!(file = %crate::logging::untrusted(f.name()), why, "SMB: durable open closed");
        }
        super::cmd::close::release(server, *open).await.ok();
    }

    /// The file and lock-service key of open `persistent` if it is detached (its connection
    /// lost): what this node can hand over to another ([`crate::locks::LockService::hand_over`]).
    pub fn detached_key(&self, persistent: u64) -> Option<(FileId, crate::locks::OpenKey)> {
        match self.map().get(&persistent) {
            Some(Entry { place: Place::Detached { open, .. }, .. }) => match &open.kind {
                OpenKind::File(f) => Some((f.id, f.key)),
                _ => None,
            },
            _ => None,
        }
    }

    /// Whether open `persistent` is attached to a connection of this node.
    pub fn is_attached(&self, persistent: u64) -> bool {
        matches!(self.map().get(&persistent), Some(Entry { place: Place::Attached { .. }, .. }))
    }

    /// Detached open `persistent` was reclaimed through another node (it holds it under a new
    /// key now): forgets it here without closing it in the lock service, and lets go of what
    /// this node kept for it (its lease's break route, its locks on the volume).
    pub fn forget_moved(&self, server: &SmbServer, persistent: u64) {
        let open = {
            let mut m = self.map();
            if !matches!(m.get(&persistent), Some(Entry { place: Place::Detached { .. }, .. })) {
                return;
            }
            match m.remove(&persistent) {
                Some(Entry { place: Place::Detached { open, expiry }, .. }) => {
                    expiry.cancel();
                    open
                }
                _ => return,
            }
        };
        if let OpenKind::File(f) = &open.kind {
            if let Some(l) = &f.lease {
                server.breaks.release(l);
            }
            server.volume_locks.close(f.id, f.key);
            server.track_path(f.key, None);
            tracing::info!(file = %crate::logging::untrusted(f.name()), "SMB: durable open now held through another node");
        }
    }

    /// Waits up to `limit` while open `persistent` is still attached to a connection other
    /// than `link`: a client that lost its connection often reconnects before this node has
    /// seen the old one end (the FIN or RST is still being read), and the old connection
    /// detaches the open a moment later.
    pub async fn settle(&self, persistent: u64, link: &mpsc::UnboundedSender<Vec<u8>>, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.detached.notified();
            let attached_elsewhere = matches!(
                self.map().get(&persistent),
                Some(Entry { place: Place::Attached { link: l, .. }, .. }) if !l.same_channel(link)
            );
            if !attached_elsewhere || tokio::time::Instant::now() >= deadline {
                return;
            }
            // Re-checked at least every 50 ms, so a missed wake-up costs no more than that.
            let _ = tokio::time::timeout_at(
                deadline.min(tokio::time::Instant::now() + Duration::from_millis(50)),
                notified,
            )
            .await;
        }
    }

    /// Takes the detached open `persistent` back for a reconnect, if `check` accepts it; it
    /// stays detached otherwise. NOT_FOUND-like refusals come from `check`.
    pub fn take(
        &self,
        persistent: u64,
        check: impl FnOnce(&Durability, &FileOpen) -> Result<(), NtStatus>,
    ) -> Result<Taken, NtStatus> {
        let mut m = self.map();
        let e = m.get(&persistent).ok_or(NtStatus::OBJECT_NAME_NOT_FOUND)?;
        let Place::Detached { open, .. } = &e.place else { return Err(NtStatus::OBJECT_NAME_NOT_FOUND) };
        let OpenKind::File(f) = &open.kind else { return Err(NtStatus::OBJECT_NAME_NOT_FOUND) };
        check(&e.facts, f)?;
        let Some(Entry { facts, place: Place::Detached { open, expiry }, lock_sequences }) = m.remove(&persistent)
        else {
            return Err(NtStatus::OBJECT_NAME_NOT_FOUND);
        };
        expiry.cancel();
        Ok(Taken { open, facts, lock_sequences })
    }

    /// Every detached open whose lease key is `key` (or, for an oplock, whose persistent id
    /// is `oplock_fid`): its persistent id, file and lease.
    fn detached_matching(&self, key: Option<[u8; 16]>, oplock_fid: Option<u64>) -> Vec<(u64, FileId, Option<LeaseId>)> {
        self.map()
            .iter()
            .filter_map(|(p, e)| match &e.place {
                Place::Detached { open, .. }
                    if oplock_fid == Some(*p) || (key.is_some() && e.facts.lease_key == key) =>
                {
                    match &open.kind {
                        OpenKind::File(f) => Some((*p, f.id, f.lease)),
                        _ => None,
                    }
                }
                _ => None,
            })
            .collect()
    }

    /// A queue standing in for a lost connection in [`super::leases::Breaks`]: the client of
    /// a detached open cannot acknowledge a break, so any break aimed at it closes the opens
    /// it names and the conflicting open goes ahead (what smbd 4.17 and current Windows do:
    /// smbtorture's `durable-open.lease` and `.oplock` check it). Only a persistent handle
    /// keeps its caching against other clients while its own client reconnects.
    pub fn ghost(&self, server: &Arc<SmbServer>) -> mpsc::UnboundedSender<Vec<u8>> {
        let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let server = server.clone();
        self.spawn(async move {
            while let Some(m) = rx.recv().await {
                let (key, fid) = break_target(&m);
                for (p, _, _) in server.durable.detached_matching(key, fid) {
                    server.durable.close_detached(&server, p, "a conflicting open broke its lease or oplock").await;
                }
            }
        });
        tx
    }
}

/// The lease key or oplock persistent FileId a break notification is about. Pure.
pub fn break_target(msg: &[u8]) -> (Option<[u8; 16]>, Option<u64>) {
    let body = super::wire::header::HEADER_LEN;
    let mut r = Reader::at(msg, body);
    match r.u16() {
        Ok(24) => {
            let mut r = Reader::at(msg, body + 8);
            (None, r.u64().ok())
        }
        Ok(44) => {
            let mut r = Reader::at(msg, body + 8);
            (r.array::<16>().ok(), None)
        }
        _ => (None, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One create context in the list format.
    fn ctx(name: &[u8], data: &[u8]) -> Vec<u8> {
        let mut w = Writer::new();
        w.u32(0).u16(16).u16(name.len() as u16).u16(0).u16(24).u32(data.len() as u32).bytes(name).zeros(4).bytes(data);
        w.buf
    }

    fn chain(items: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, c) in items.iter().enumerate() {
            let start = out.len();
            out.extend_from_slice(c);
            if i + 1 < items.len() {
                while out.len() % 8 != 0 {
                    out.push(0);
                }
                let next = (out.len() - start) as u32;
                out[start..start + 4].copy_from_slice(&next.to_le_bytes());
            }
        }
        out
    }

    fn dh2q(timeout: u32, flags: u32, guid: u8) -> Vec<u8> {
        let mut w = Writer::new();
        w.u32(timeout).u32(flags).u64(0).bytes(&[guid; 16]);
        ctx(b"DH2Q", &w.buf)
    }

    fn dh2c(p: u64, guid: u8) -> Vec<u8> {
        let mut w = Writer::new();
        w.u64(p).u64(9).bytes(&[guid; 16]).u32(0);
        ctx(b"DH2C", &w.buf)
    }

    #[test]
    fn contexts_decode_and_forbidden_combinations_are_refused() {
        let dhnq = ctx(b"DHnQ", &[0; 16]);
        let mut fid = Vec::new();
        fid.extend_from_slice(&5u64.to_le_bytes());
        fid.extend_from_slice(&6u64.to_le_bytes());
        let dhnc = ctx(b"DHnC", &fid);
        let mxac = ctx(b"MxAc", &[]);
        assert_eq!(parse(&[], true), Ok(Contexts::default()));
        assert_eq!(parse(&chain(&[mxac.clone(), dhnq.clone()]), true).unwrap().ask, Ask::V1);
        assert_eq!(
            parse(&dh2q(30_000, FLAG_PERSISTENT, 7), true).unwrap().ask,
            Ask::V2 { timeout_ms: 30_000, persistent: true, create_guid: [7; 16] }
        );
        assert_eq!(parse(&dh2q(0, 0, 7), false).unwrap().ask, Ask::None, "DH2Q is ignored before SMB 3.0");
        let c = parse(&chain(&[dhnq.clone(), dhnc.clone()]), true).unwrap();
        assert_eq!((c.ask, c.reconnect), (Ask::None, Some(Reconnect::V1 { fid: (5, 6) })));
        assert_eq!(
            parse(&dh2c(5, 3), true).unwrap().reconnect,
            Some(Reconnect::V2 { fid: (5, 9), create_guid: [3; 16], persistent: false })
        );
        let bad = Err(NtStatus::INVALID_PARAMETER);
        // (contexts) -> refused
        let table = [
            chain(&[dhnq.clone(), dh2q(0, 0, 1)]),
            chain(&[dhnc.clone(), dh2q(0, 0, 1)]),
            chain(&[dh2c(1, 1), dhnq.clone()]),
            chain(&[dh2c(1, 1), dh2q(0, 0, 1)]),
            chain(&[dh2c(1, 1), dhnc.clone()]),
            ctx(b"DHnQ", &[0; 15]),
            ctx(b"DH2Q", &[0; 31]),
            ctx(b"DHnC", &[0; 17]),
            ctx(b"DH2C", &[0; 35]),
            vec![1, 2, 3],
        ];
        for t in table {
            assert_eq!(parse(&t, true).map(|_| ()), bad, "{t:?}");
        }
    }

    #[test]
    fn durability_needs_handle_caching_unless_persistent_on_a_ca_share() {
        let v2 = |ms, p| Ask::V2 { timeout_ms: ms, persistent: p, create_guid: [1; 16] };
        let rh = caching::R | caching::H;
        let d = DEFAULT_TIMEOUT;
        // (ask, caching granted, directory, CA share) -> (timeout, persistent)
        let table = [
            (Ask::None, caching::RWH, false, false, None),
            (Ask::V1, caching::RWH, false, false, Some((d, false))),
            (Ask::V1, rh, false, false, Some((d, false))),
            (Ask::V1, caching::R | caching::W, false, false, None),
            (Ask::V1, 0, false, false, None),
            (Ask::V1, caching::RWH, true, false, None),
            (v2(0, false), rh, false, false, Some((d, false))),
            (v2(0, false), caching::R, false, false, None),
            (v2(1000, false), caching::RWH, false, false, Some((Duration::from_secs(1), false))),
            (v2(u32::MAX, false), caching::RWH, false, false, Some((MAX_TIMEOUT, false))),
            (v2(0, true), 0, false, false, None),
            (v2(0, true), caching::RWH, false, false, Some((d, false))),
            (v2(0, true), 0, false, true, Some((d, true))),
            (v2(0, true), 0, true, true, None),
        ];
        for (ask, state, dir, ca, want) in table {
            assert_eq!(grant(ask, state, dir, ca), want, "{ask:?} {state} dir={dir} ca={ca}");
        }
    }

    #[test]
    fn reconnects_are_checked_like_smbd() {
        let alice = Identity::User("alice".into());
        let bob = Identity::User("bob".into());
        let d = Durability {
            version: 2,
            timeout: DEFAULT_TIMEOUT,
            persistent: false,
            create_guid: Some([4; 16]),
            client_guid: [1; 16],
            user: alice.clone(),
            lease_key: Some([9; 16]),
            lease_version: 2,
            action: 2,
        };
        let v2 = Reconnect::V2 { fid: (1, 1), create_guid: [4; 16], persistent: false };
        let ok = Presented {
            reconnect: v2,
            client_guid: [1; 16],
            user: &alice,
            lease: Some(([9; 16], 2)),
            same_name: true,
            same_share: true,
        };
        assert_eq!(check_reconnect(&d, &ok), Ok(()));
        let nf = Err(NtStatus::OBJECT_NAME_NOT_FOUND);
        let table: Vec<(Presented<'_>, Result<(), NtStatus>)> = vec![
            (Presented { reconnect: Reconnect::V1 { fid: (1, 1) }, ..ok.clone() }, Ok(())),
            (
                Presented {
                    reconnect: Reconnect::V2 { fid: (1, 1), create_guid: [5; 16], persistent: false },
                    ..ok.clone()
                },
                nf,
            ),
            (Presented { client_guid: [2; 16], ..ok.clone() }, nf),
            (Presented { lease: None, ..ok.clone() }, nf),
            (Presented { lease: Some(([8; 16], 2)), ..ok.clone() }, nf),
            (Presented { lease: Some(([9; 16], 1)), ..ok.clone() }, Err(NtStatus::INVALID_PARAMETER)),
            (Presented { same_name: false, ..ok.clone() }, Err(NtStatus::INVALID_PARAMETER)),
            (Presented { same_share: false, ..ok.clone() }, nf),
            (Presented { user: &bob, ..ok.clone() }, Err(NtStatus::ACCESS_DENIED)),
        ];
        for (p, want) in table {
            assert_eq!(check_reconnect(&d, &p), want, "{p:?}");
        }
        // An open with a batch oplock: any client GUID, no lease.
        let v2_oplock = Durability { lease_key: None, lease_version: 0, ..d.clone() };
        let p = Presented { client_guid: [7; 16], lease: None, ..ok.clone() };
        assert_eq!(check_reconnect(&v2_oplock, &p), Ok(()));
        let v1 = Durability { version: 1, create_guid: None, lease_key: None, lease_version: 0, ..d };
        let p = Presented { reconnect: Reconnect::V1 { fid: (1, 1) }, client_guid: [7; 16], lease: None, ..ok };
        assert_eq!(check_reconnect(&v1, &p), Ok(()));
        assert_eq!(check_reconnect(&v1, &Presented { lease: Some(([9; 16], 1)), ..p.clone() }), nf);
        let zero = Reconnect::V2 { fid: (1, 1), create_guid: [0; 16], persistent: false };
        assert_eq!(check_reconnect(&v1, &Presented { reconnect: zero, ..p.clone() }), Ok(()));
        assert_eq!(check_reconnect(&v2_oplock, &Presented { reconnect: zero, ..p }), nf);
    }

    #[test]
    fn break_notifications_name_their_target() {
        use crate::locks::{BreakNotice, LeaseId};
        let n = BreakNotice {
            lease: LeaseId { client: [1; 16], key: [5; 16] },
            node: 0,
            from: caching::RWH,
            to: caching::R,
            epoch: 1,
            version: 2,
            ack_required: true,
        };
        assert_eq!(break_target(&super::super::leases::break_message(&n, None)), (Some([5; 16]), None));
    }

    #[test]
    fn persistent_ids_carry_the_node_and_never_repeat() {
        let t = DurableTable::new(3);
        let a = t.new_persistent_id();
        let b = t.new_persistent_id();
        assert_ne!(a, b);
        assert_eq!((a >> 48, b >> 48), (3, 3));
    }
}
