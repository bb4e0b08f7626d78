//! One file's sharing state and the rules that decide over it: opens with their access and share
//! modes, delete-on-close and delete-pending, byte-range locks (Windows and POSIX owners), and
//! leases and oplocks with their breaks. Pure data and pure decisions: no I/O, no clock, no
//! knowledge of nodes beyond the node number each holding carries. The cluster layer
//! ([`super::machine`]) decides which node applies these rules to a file; it is always exactly
//! one, so every decision here sees every holding of every client of the file.
//!
//! The lease and oplock rules follow MS-SMB2 3.3.5.9 and MS-FSA 2.1.5.17-18 as Samba 4.17's
//! `delay_for_oplock` applies them:
//! - an open breaks the **W** caching of other leases (their dirty data must reach the server
//!   first) and waits for those breaks; an open that would be a sharing violation instead breaks
//!   **H** caching (a client caching a handle it no longer uses closes it) and waits, and only
//!   fails if the conflict is still there after the breaks;
//! - an overwrite also breaks R and H to none;
//! - a write or a byte-range lock by one open breaks every other **R** lease to none, without
//!   waiting ([`FileRecord::contend`]);
//! - a rename or delete breaks the H caching of other leases and waits ([`FileRecord::handle_breaks`]);
//! - W is granted only to an open alone on the file; oplocks are leases of their own open
//!   (level II = R, exclusive = RW, batch = RWH) and break to R or none only.

use serde::{Deserialize, Serialize};

use super::types::{access, caching, end_of, lock_end, share, Conflict, LeaseId, OpenKey, Owner, RangeLock, ORPHAN};

/// Open flags.
pub mod flags {
    /// The open takes part in share-mode checks (SMB and local opens). NFS's stateless use of a
    /// file does not: NFS has no share modes, it only breaks leases and obeys byte-range locks.
    pub const SHARE_MODES: u8 = 1;
    /// The open keeps the file alive: a delete-pending file is removed at the close of the last
    /// such open. NFS's use does not (POSIX readers survive an unlink).
    pub const PINS: u8 = 2;
    /// Created with FILE_DELETE_ON_CLOSE: its close makes the file delete-pending.
    pub const DELETE_ON_CLOSE: u8 = 4;
    /// Its node let it go ([`super::FileRecord::set_durable`] with
    /// [`super::HAND_OVER_MS`]): its client came back through another node, which may reclaim
    /// it although its node is alive.
    pub const HANDED_OVER: u8 = 8;
    /// What an SMB or local open carries.
    pub const HANDLE: u8 = SHARE_MODES | PINS;
    /// What NFS's stateless use of a file carries: none of the above.
    pub const STATELESS: u8 = 0;
}

/// The `ms` of [`FileRecord::set_durable`] that hands a durable open over (sets
/// [`flags::HANDED_OVER`]) instead of setting its timeout; no timeout is that long.
pub const HAND_OVER_MS: u32 = u32::MAX;

/// One open of a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenRecord {
    /// Who.
    pub key: OpenKey,
    /// Granted access mask.
    pub access: u32,
    /// Share mode.
    pub share: u32,
    /// The lease (or the oplock's own lease) its caching goes through.
    pub lease: Option<LeaseId>,
    /// [`flags`].
    pub flags: u8,
    /// Milliseconds the open outlives its node (a persistent handle): if the node dies it
    /// stays, with its locks and lease, as an orphan for that long. 0: it dies with its node.
    #[serde(default)]
    pub durable_ms: u32,
    /// Its node is gone: it waits to be reclaimed ([`FileRecord::reclaim`]) or to expire.
    #[serde(default)]
    pub orphan: bool,
}

impl OpenRecord {
    fn is_stat(&self) -> bool {
        is_stat_access(self.access)
    }
}

/// A "stat open": only attribute and synchronize access (Samba's `is_oplock_stat_open`). It
/// neither conflicts nor breaks, and is granted no oplock.
pub fn is_stat_access(a: u32) -> bool {
    a & !access::STAT == 0
}

fn is_lease_stat_access(a: u32) -> bool {
    a & !(access::STAT | access::READ_CONTROL) == 0
}

/// A lease (or an oplock, kept as the lease its level amounts to).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Client GUID + lease key.
    pub id: LeaseId,
    /// The node whose client holds it (breaks are delivered there).
    pub node: u16,
    /// Current caching state ([`caching`] bits).
    pub state: u8,
    /// Lease epoch (v2); bumped by every state change the client is told about.
    pub epoch: u16,
    /// 0 for an oplock, else the lease version (1 or 2), or [`SYNC_BREAKS`].
    pub version: u8,
    /// A break the client was told about and has not acknowledged: it must answer with a
    /// state within `told`.
    pub told: Option<u8>,
    /// What the state must come down to (may be below `told` if a later event asked for more).
    pub required: u8,
    /// ParentLeaseKey (v2).
    pub parent: Option<[u8; 16]>,
}

impl Lease {
    fn is_oplock(&self) -> bool {
        self.version == 0
    }
    /// Its holder confirms every break, and the change that caused one waits for that.
    pub fn sync_breaks(&self) -> bool {
        self.version == SYNC_BREAKS
    }
    /// The client must acknowledge a break from `state`: it holds W or H (dirty data, cached
    /// handles); breaking away R alone is only a notification.
    fn ack_required(state: u8) -> bool {
        state & (caching::W | caching::H) != 0
    }
}

/// The lease "version" of a holder whose caches must be gone before a change is answered
/// (the node's own mount: the kernel's pages and attributes of the file): every break of it,
/// R alone included, needs its acknowledgement, and a write or truncate that breaks it
/// ([`Op::Contend`](super::machine::Op::Contend)) waits for that, on whichever node it holds it.
pub const SYNC_BREAKS: u8 = 0x80;

/// A break to tell a lease holder about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakNotice {
    /// Which lease.
    pub lease: LeaseId,
    /// The node holding it.
    pub node: u16,
    /// Its state before the break.
    pub from: u8,
    /// What it must come down to.
    pub to: u8,
    /// Lease epoch after the break (v2 NewEpoch).
    pub epoch: u16,
    /// Lease version (0 = oplock).
    pub version: u8,
    /// The client must acknowledge.
    pub ack_required: bool,
}

impl FileName {
    /// Entry `name` of the directory whose identity bytes are `parent`, renamed to by a client
    /// without a share (NFS, the node's own mount).
    pub fn new(parent: &[u8], name: &[u8]) -> FileName {
        FileName { parent: parent.to_vec(), name: name.to_vec(), root: Vec::new(), path: Vec::new(), renames: 0 }
    }
}

/// What an open asks for besides access and share mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CachingRequest {
    /// Nothing.
    None,
    /// An SMB2 oplock, as the lease state it amounts to.
    Oplock(u8),
    /// A lease.
    Lease {
        /// Client GUID + key.
        id: LeaseId,
        /// Requested state.
        state: u8,
        /// 1 or 2 ([`SYNC_BREAKS`] for the node's own mount).
        version: u8,
        /// The client's epoch (v2).
        epoch: u16,
        /// ParentLeaseKey (v2).
        parent: Option<[u8; 16]>,
    },
}

/// An open to decide.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenRequest {
    /// Its key.
    pub key: OpenKey,
    /// Access mask it is granted by permissions.
    pub access: u32,
    /// Share mode.
    pub share: u32,
    /// Oplock or lease wanted.
    pub caching: CachingRequest,
    /// The open overwrites or supersedes the file.
    pub overwrite: bool,
    /// A directory (no write caching).
    pub is_dir: bool,
    /// [`flags`].
    pub flags: u8,
}

/// What an open got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Granted {
    /// Caching state granted ([`caching`] bits; for an oplock, the state its level maps to).
    pub state: u8,
    /// Lease epoch to answer with.
    pub epoch: u16,
    /// Flags of the lease in the answer: a break is in progress on it.
    pub breaking: bool,
    /// The lease's version (1 or 2; 0 for an oplock or nothing): the answer's lease context
    /// has the lease's format whatever the format of this open's request (smbtorture
    /// `smb2.lease.v2_epoch2`/`v2_epoch3`: a v1 open of a v2 lease gets a v2 answer).
    #[serde(default)]
    pub version: u8,
}

/// The decision on an open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenVerdict {
    /// Granted now.
    Grant(Granted),
    /// Refused.
    Refuse(Conflict),
    /// Breaks were started that must end (acknowledged, or their opens closed) before the open
    /// can be decided: try again when the record changes.
    Wait,
}

/// What closing an open left behind.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CloseOutcome {
    /// It was the file's last open that pins it.
    pub last: bool,
    /// The file must now be deleted (delete-on-close was set by some open and this is the last).
    pub delete: bool,
    /// With `delete`: where the file is now, if a rename through any node said so (the closer's
    /// own idea of the name may be older: the rename may have come through another node).
    #[serde(default)]
    pub name: Option<Box<FileName>>,
}

/// Where a file is on the volume, as the last rename through nasgw (SMB, NFS or the node's
/// own mount, on any node) left it: what smbd keeps as a share-mode record's base name. An
/// open acts on this name (delete-on-close, a rename by handle) rather than on the name it was
/// opened by. The directory is named by identity, so renaming a directory above the file does
/// not make it stale.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileName {
    /// The directory's identity bytes ([`crate::vfs::FileId::as_bytes`]).
    pub parent: Vec<u8>,
    /// The entry's name in that directory.
    pub name: Vec<u8>,
    /// The identity bytes of the share root the rename came through (empty: not through SMB).
    pub root: Vec<u8>,
    /// The share-relative components of the new name through that share (what SMB clients of
    /// the same share are shown).
    pub path: Vec<String>,
    /// Renames recorded so far: of two copies (a record rebuilt from several nodes' holdings),
    /// the higher is the newer.
    pub renames: u64,
}

/// One file's state.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct FileRecord {
    /// Its opens.
    pub opens: Vec<OpenRecord>,
    /// Its byte-range locks.
    pub ranges: Vec<RangeLock>,
    /// Its leases and oplocks.
    pub leases: Vec<Lease>,
    /// No new opens; the last close deletes it.
    pub delete_pending: bool,
    /// Where the file is, once it was renamed through nasgw while held (see [`FileName`]).
    /// Kept only while the record is: it holds nothing by itself.
    #[serde(default)]
    pub name: Option<Box<FileName>>,
}

fn share_conflict(a_access: u32, a_share: u32, b_access: u32, b_share: u32) -> bool {
    let needs = |acc: u32, share_mode: u32| {
        (acc & (access::READ_DATA | access::EXECUTE) != 0 && share_mode & share::READ == 0)
            || (acc & (access::WRITE_DATA | access::APPEND_DATA) != 0 && share_mode & share::WRITE == 0)
            || (acc & access::DELETE != 0 && share_mode & share::DELETE == 0)
    };
    needs(b_access, a_share) || needs(a_access, b_share)
}

impl FileRecord {
    /// Nothing held: the record can be forgotten.
    pub fn is_empty(&self) -> bool {
        self.opens.is_empty() && self.ranges.is_empty() && self.leases.is_empty() && !self.delete_pending
    }

    /// The node holding a lock, `ORPHAN` for one of an orphan (its open's node is gone).
    fn lock_node(&self, r: &RangeLock) -> u16 {
        match r.owner {
            Owner::Open(k) if self.opens.iter().any(|o| o.key == k && o.orphan) => ORPHAN,
            o => o.node(),
        }
    }

    /// Nodes holding anything here (orphans belong to none).
    pub fn nodes(&self) -> Vec<u16> {
        let mut v: Vec<u16> = self
            .opens
            .iter()
            .filter(|o| !o.orphan)
            .map(|o| o.key.node)
            .chain(self.ranges.iter().map(|r| self.lock_node(r)))
            .chain(self.leases.iter().map(|l| l.node))
            .filter(|n| *n != ORPHAN)
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// What `node` holds, and the file-wide flag (for rebuilding a record after a membership change).
    pub fn holdings_of(&self, node: u16) -> FileRecord {
        let has_opens = self.opens.iter().any(|o| o.key.node == node && !o.orphan);
        FileRecord {
            opens: self.opens.iter().filter(|o| o.key.node == node && !o.orphan).cloned().collect(),
            ranges: self.ranges.iter().filter(|r| self.lock_node(r) == node).copied().collect(),
            leases: self.leases.iter().filter(|l| l.node == node).cloned().collect(),
            delete_pending: self.delete_pending && has_opens,
            name: self.name.clone(),
        }
    }

    /// Whether it has orphans (opens or POSIX locks whose node is gone).
    pub fn has_orphans(&self) -> bool {
        self.opens.iter().any(|o| o.orphan) || self.has_posix_orphans()
    }

    /// Whether it has orphaned POSIX locks.
    pub fn has_posix_orphans(&self) -> bool {
        self.ranges.iter().any(|r| matches!(r.owner, Owner::Posix { node: ORPHAN, .. }))
    }

    /// Whether the record holds what must survive its holder's node: a durable open, an orphan,
    /// or (with `posix_durable`) POSIX locks. Such a record is never delegated and always has a
    /// second copy on another node, so one node's death never loses it.
    pub fn needs_backup(&self, posix_durable: bool) -> bool {
        self.opens.iter().any(|o| o.durable_ms > 0 || o.orphan)
            || self.ranges.iter().any(|r| match r.owner {
                Owner::Posix { node, .. } => posix_durable || node == ORPHAN,
                Owner::Open(_) => false,
            })
    }

    /// What stays of this record when the view has only `members`: the orphans it has, plus the
    /// durable opens (with their locks and lease) and, with `posix_durable`, the POSIX locks of
    /// the nodes that are gone, now orphans.
    pub fn orphans(&self, members: &[u16], posix_durable: bool) -> FileRecord {
        let gone = |n: u16| n != ORPHAN && !members.contains(&n);
        let opens: Vec<OpenRecord> = self
            .opens
            .iter()
            .filter(|o| o.orphan || (o.durable_ms > 0 && gone(o.key.node)))
            .map(|o| OpenRecord { orphan: true, ..o.clone() })
            .collect();
        let of_orphan = |k: OpenKey| opens.iter().any(|o| o.key == k);
        let ranges: Vec<RangeLock> = self
            .ranges
            .iter()
            .filter_map(|r| match r.owner {
                Owner::Open(k) if of_orphan(k) => Some(*r),
                Owner::Posix { node, id } if node == ORPHAN || (posix_durable && gone(node)) => {
                    Some(RangeLock { owner: Owner::Posix { node: ORPHAN, id }, ..*r })
                }
                _ => None,
            })
            .collect();
        let leases: Vec<Lease> = self
            .leases
            .iter()
            .filter(|l| opens.iter().any(|o| o.lease == Some(l.id)))
            .map(|l| match l.told {
                // A break its client can no longer answer ends now, as far as it had to go.
                Some(_) => {
                    let state = l.state & l.required;
                    Lease { node: ORPHAN, state, required: state, told: None, ..l.clone() }
                }
                None => Lease { node: ORPHAN, ..l.clone() },
            })
            .collect();
        let pins = opens.iter().any(|o| o.flags & flags::PINS != 0);
        FileRecord { opens, ranges, leases, delete_pending: self.delete_pending && pins, name: self.name.clone() }
    }

    /// Makes orphan (or this node's own disconnected) open `old` the open `new`, held through
    /// `new.node`: its locks and lease follow. Idempotent: if `new` is already there, it is the
    /// answer again. A live open of another node is refused (its client still has it) unless
    /// that node handed it over ([`flags::HANDED_OVER`]).
    pub fn reclaim(
        &mut self,
        old: OpenKey,
        new: OpenKey,
    ) -> Result<(OpenRecord, Option<Lease>, Vec<RangeLock>), Conflict> {
        if let Some(o) = self.open_of(new) {
            let o = o.clone();
            let lease = o.lease.and_then(|id| self.lease(&id).cloned());
            let locks = self.ranges.iter().filter(|r| r.owner == Owner::Open(new)).copied().collect();
            return Ok((o, lease, locks));
        }
        let o = self.opens.iter_mut().find(|o| o.key == old).ok_or(Conflict::NotFound)?;
        if !o.orphan && old.node != new.node && o.flags & flags::HANDED_OVER == 0 {
            return Err(Conflict::Sharing);
        }
        o.key = new;
        o.orphan = false;
        o.flags &= !flags::HANDED_OVER;
        let o = o.clone();
        for r in self.ranges.iter_mut().filter(|r| r.owner == Owner::Open(old)) {
            r.owner = Owner::Open(new);
        }
        let mut lease = None;
        if let Some(l) = o.lease.and_then(|id| self.leases.iter_mut().find(|l| l.id == id)) {
            l.node = new.node;
            lease = Some(l.clone());
        }
        let locks = self.ranges.iter().filter(|r| r.owner == Owner::Open(new)).copied().collect();
        Ok((o, lease, locks))
    }

    /// Sets how long open `key` outlives its node (0: not at all); [`HAND_OVER_MS`] instead
    /// lets another node reclaim it while its node lives (a durable open only).
    pub fn set_durable(&mut self, key: OpenKey, ms: u32) -> Result<(), Conflict> {
        let o = self.opens.iter_mut().find(|o| o.key == key).ok_or(Conflict::NoSuchOpen)?;
        if ms == HAND_OVER_MS {
            if o.durable_ms == 0 {
                return Err(Conflict::NotFound);
            }
            o.flags |= flags::HANDED_OVER;
        } else {
            o.durable_ms = ms;
        }
        Ok(())
    }

    /// POSIX owner `id`'s orphaned locks become `node`'s (its NLM reclaim through any node).
    pub fn adopt_posix(&mut self, node: u16, id: u128) {
        let mut any = false;
        for r in self.ranges.iter_mut() {
            if r.owner == (Owner::Posix { node: ORPHAN, id }) {
                r.owner = Owner::Posix { node, id };
                any = true;
            }
        }
        if any {
            self.posix_merge(Owner::Posix { node, id });
        }
    }

    /// Drops orphan opens `keys` (their time ran out), with their locks and unused leases, and
    /// with `posix` every orphaned POSIX lock (the grace for reclaiming them ended).
    pub fn expire(&mut self, keys: &[OpenKey], posix: bool) {
        for k in keys {
            if self.open_of(*k).is_some_and(|o| o.orphan) {
                self.forget_open(*k);
            }
        }
        if posix {
            self.ranges.retain(|r| !matches!(r.owner, Owner::Posix { node: ORPHAN, .. }));
        }
    }

    /// Takes open `key` out with its locks, and its lease if no other open uses it.
    fn remove_open(&mut self, key: OpenKey) -> Option<OpenRecord> {
        let i = self.opens.iter().position(|o| o.key == key)?;
        let o = self.opens.remove(i);
        self.ranges.retain(|r| r.owner != Owner::Open(key));
        if let Some(id) = o.lease {
            if !self.opens.iter().any(|x| x.lease == Some(id)) {
                self.leases.retain(|l| l.id != id);
            } else {
                self.rehome_lease(id);
            }
        }
        Some(o)
    }

    /// Keeps lease `id`'s breaks going to a node one of its opens is on: one client (one
    /// ClientGuid) can use a lease through two nodes, and when its opens on the lease's node
    /// are gone, the breaks must reach the other (they were sent to a node whose client no
    /// longer held it, and lost: the breaker waited out the break timeout while the holder
    /// kept caching).
    fn rehome_lease(&mut self, id: LeaseId) {
        let users: Vec<u16> =
            self.opens.iter().filter(|o| o.lease == Some(id) && !o.orphan).map(|o| o.key.node).collect();
        if let Some(l) = self.leases.iter_mut().find(|l| l.id == id) {
            if let Some(&latest) = users.last().filter(|_| !users.contains(&l.node)) {
                l.node = latest;
            }
        }
    }

    /// Removes open `key`, its locks, and its lease if no other open uses it, with none of a
    /// close's effects (delete-on-close).
    fn forget_open(&mut self, key: OpenKey) {
        if self.remove_open(key).is_none() {
            return;
        }
        if !self.opens.iter().any(|o| o.flags & flags::PINS != 0) {
            self.delete_pending = false;
        }
    }

    /// Adds `other`'s holdings (they never overlap: each belongs to its own node).
    pub fn merge(&mut self, other: FileRecord) {
        self.opens.extend(other.opens);
        self.ranges.extend(other.ranges);
        self.leases.extend(other.leases);
        self.delete_pending |= other.delete_pending;
        if other.name.as_ref().map(|n| n.renames) > self.name.as_ref().map(|n| n.renames) {
            self.name = other.name;
        }
    }

    /// The file was renamed on the volume to `to` (its `renames` is ignored: counted here).
    pub fn renamed(&mut self, to: FileName) {
        let renames = self.name.as_ref().map_or(0, |n| n.renames) + 1;
        self.name = Some(Box::new(FileName { renames, ..to }));
    }

    /// Drops everything `node` held (its node died or left).
    pub fn drop_node(&mut self, node: u16) {
        self.opens.retain(|o| o.key.node != node);
        self.ranges.retain(|r| r.owner.node() != node);
        // A lease its client also uses through another node stays, held there.
        let shared: Vec<LeaseId> = self
            .leases
            .iter()
            .filter(|l| l.node == node && self.opens.iter().any(|o| o.lease == Some(l.id) && !o.orphan))
            .map(|l| l.id)
            .collect();
        for id in shared {
            self.rehome_lease(id);
        }
        self.leases.retain(|l| l.node != node);
        if !self.opens.iter().any(|o| o.flags & flags::PINS != 0) {
            self.delete_pending = false;
        }
    }

    /// The open `key`.
    pub fn open_of(&self, key: OpenKey) -> Option<&OpenRecord> {
        self.opens.iter().find(|o| o.key == key)
    }

    /// The lease `id`.
    pub fn lease(&self, id: &LeaseId) -> Option<&Lease> {
        self.leases.iter().find(|l| l.id == *id)
    }

    fn has_windows_locks(&self) -> bool {
        self.ranges.iter().any(|r| matches!(r.owner, Owner::Open(_)))
    }

    /// Decides an open (first attempt, or again after breaks it waited for). Breaks to start are
    /// appended to `breaks`; they must be started ([`FileRecord::begin_break`]) whatever the verdict.
    pub fn decide_open(&self, req: &OpenRequest, first_attempt: bool, breaks: &mut Vec<(LeaseId, u8)>) -> OpenVerdict {
        if self.delete_pending {
            return OpenVerdict::Refuse(Conflict::DeletePending);
        }
        let stat = is_stat_access(req.access);
        let sharing_violation = !stat
            && req.flags & flags::SHARE_MODES != 0
            && req.access & access::DATA != 0
            && self
                .opens
                .iter()
                .filter(|o| o.flags & flags::SHARE_MODES != 0 && o.access & access::DATA != 0)
                .any(|o| share_conflict(o.access, o.share, req.access, req.share));
        let own_lease = match req.caching {
            CachingRequest::Lease { id, .. } => Some(id),
            _ => None,
        };
        let same_lease = |l: &LeaseId| own_lease.as_ref() == Some(l);
        let requested = match req.caching {
            CachingRequest::None => 0,
            CachingRequest::Oplock(s) => s,
            CachingRequest::Lease { state, .. } => state,
        };
        let mut got_handle_lease = false;
        let mut got_oplock = false;
        let mut disallow_write = false;
        let mut delay = false;
        for o in &self.opens {
            if o.lease.as_ref().is_some_and(same_lease) {
                continue;
            }
            if o.lease.is_some() || !o.is_stat() {
                disallow_write = true;
            }
        }
        if !stat {
            let delay_mask = if sharing_violation { caching::H } else { caching::W };
            for l in &self.leases {
                if same_lease(&l.id) {
                    continue;
                }
                got_handle_lease |= l.state & caching::H != 0;
                got_oplock |= l.is_oplock() && l.state != 0;
                if !l.is_oplock() && is_lease_stat_access(req.access) {
                    continue;
                }
                let mut to = l.state & !delay_mask;
                let overwrite_breaks = req.overwrite && delay_mask & caching::H == 0;
                if overwrite_breaks {
                    to &= !(caching::H | caching::R);
                }
                if l.state & !to == 0 {
                    if l.told.is_some() {
                        delay = true;
                    }
                    continue;
                }
                if l.is_oplock() {
                    to &= caching::R;
                }
                if l.state & delay_mask != 0 || (l.told.is_some() && !first_attempt) {
                    delay = true;
                }
                breaks.push((l.id, to));
            }
        } else {
            for l in self.leases.iter().filter(|l| !same_lease(&l.id)) {
                got_handle_lease |= l.state & caching::H != 0;
                got_oplock |= l.is_oplock() && l.state != 0;
            }
        }
        if delay {
            return OpenVerdict::Wait;
        }
        if sharing_violation {
            return OpenVerdict::Refuse(Conflict::Sharing);
        }
        let mut granted = requested;
        if req.is_dir {
            granted &= !caching::W;
        }
        if let CachingRequest::Lease { .. } = req.caching {
            if granted & (caching::R | caching::W) == 0 || granted == caching::W || granted == caching::W | caching::H {
                granted = 0;
            }
        }
        if !req.overwrite && self.has_windows_locks() {
            granted &= !(caching::R | caching::H);
        }
        if disallow_write {
            granted &= !caching::W;
        }
        match req.caching {
            CachingRequest::Lease { id, state, version, .. } => {
                if got_oplock {
                    granted &= !caching::H;
                }
                if let Some(l) = self.lease(&id) {
                    // An open through an existing lease: upgrade only to a strict superset that
                    // nothing prevents, never while it is breaking (Samba's try_lease_upgrade).
                    let upgrade =
                        l.state & state == l.state && granted != l.state && granted == state && l.told.is_none();
                    let s = if upgrade { granted } else { l.state };
                    let epoch = if upgrade { l.epoch.wrapping_add(1) } else { l.epoch };
                    return OpenVerdict::Grant(Granted {
                        state: s,
                        epoch,
                        breaking: l.told.is_some(),
                        version: l.version,
                    });
                }
                OpenVerdict::Grant(Granted { state: granted, epoch: 0, breaking: false, version })
            }
            CachingRequest::Oplock(_) => {
                if got_handle_lease {
                    granted = 0;
                }
                OpenVerdict::Grant(Granted {
                    state: oplock_level_state(granted),
                    epoch: 0,
                    breaking: false,
                    version: 0,
                })
            }
            CachingRequest::None => OpenVerdict::Grant(Granted::default()),
        }
    }

    /// Records an open [`FileRecord::decide_open`] granted; returns what to answer with.
    pub fn apply_open(&mut self, req: &OpenRequest, g: Granted) -> Granted {
        let lease = match req.caching {
            CachingRequest::None => None,
            CachingRequest::Oplock(_) if g.state == 0 => None,
            CachingRequest::Oplock(_) => {
                let id = LeaseId::oplock(req.key);
                self.leases.push(Lease {
                    id,
                    node: req.key.node,
                    state: g.state,
                    epoch: 0,
                    version: 0,
                    told: None,
                    required: g.state,
                    parent: None,
                });
                Some(id)
            }
            CachingRequest::Lease { id, version, epoch, parent, .. } => {
                let answer = match self.leases.iter_mut().find(|l| l.id == id) {
                    Some(l) => {
                        if g.state != l.state && l.told.is_none() {
                            l.state = g.state;
                            l.required = g.state;
                            l.epoch = g.epoch;
                        }
                        Granted { state: l.state, epoch: l.epoch, breaking: l.told.is_some(), version: l.version }
                    }
                    None => {
                        // A new lease starts at the client's epoch, bumped when it caches anything.
                        let e = if g.state != 0 && version >= 2 { epoch.wrapping_add(1) } else { epoch };
                        self.leases.push(Lease {
                            id,
                            node: req.key.node,
                            state: g.state,
                            epoch: e,
                            version,
                            told: None,
                            required: g.state,
                            parent,
                        });
                        Granted { state: g.state, epoch: e, breaking: false, version }
                    }
                };
                self.opens.push(OpenRecord {
                    key: req.key,
                    access: req.access,
                    share: req.share,
                    lease: Some(id),
                    flags: req.flags,
                    durable_ms: 0,
                    orphan: false,
                });
                return answer;
            }
        };
        self.opens.push(OpenRecord {
            key: req.key,
            access: req.access,
            share: req.share,
            lease,
            flags: req.flags,
            durable_ms: 0,
            orphan: false,
        });
        g
    }

    /// Starts (or tightens) a break of lease `id` down to `to`. Returns the notice to send to
    /// its client, if one must be sent now (none while an earlier break awaits its answer: the
    /// rest follows the acknowledgement).
    pub fn begin_break(&mut self, id: &LeaseId, to: u8) -> Option<BreakNotice> {
        let l = self.leases.iter_mut().find(|l| l.id == *id)?;
        let to = to & l.state & l.required;
        if to == l.required && (l.told.is_some() || to == l.state) {
            return None;
        }
        l.required = to;
        if l.told.is_some() {
            return None;
        }
        // A new break: a v2 lease's epoch goes up (MS-SMB2 3.3.4.7).
        if l.version >= 2 {
            l.epoch = l.epoch.wrapping_add(1);
        }
        let to = l.required;
        Some(Self::notify(l, to))
    }

    /// Tells the holder to come down to `to` (at least `l.required`). An orphan's lease (its
    /// node is gone, its durable open waits for a reclaim) has no client to answer: it comes
    /// down at once, so nobody waits out the break timeout for it.
    fn notify(l: &mut Lease, to: u8) -> BreakNotice {
        let from = l.state;
        let ack_required = (Lease::ack_required(from) || l.sync_breaks()) && l.node != ORPHAN;
        let n = BreakNotice { lease: l.id, node: l.node, from, to, epoch: l.epoch, version: l.version, ack_required };
        if ack_required {
            l.told = Some(to);
        } else {
            // Nothing cached that needs flushing or closing: the break takes effect at once.
            l.state = to;
            if to == l.required {
                l.required = l.state;
            }
        }
        n
    }

    /// The client acknowledged a break with `state`: it must be within what it was told. Returns
    /// a further break notice when more must go than the client was told. That further break
    /// goes in steps, as Windows and Samba do (smbtorture `smb2.lease.breaking3`): a lease
    /// still holding more than R is first taken to R (keeping R if it must go too), then R
    /// goes without an acknowledgement; these follow-ups are part of the same break and keep
    /// its epoch.
    pub fn ack_break(&mut self, id: &LeaseId, state: u8) -> Result<Option<BreakNotice>, Conflict> {
        let l = self.leases.iter_mut().find(|l| l.id == *id).ok_or(Conflict::NoSuchOpen)?;
        let told = l.told.ok_or(Conflict::NoBreak)?;
        if state & !told != 0 {
            return Err(Conflict::NotAccepted);
        }
        l.state = state;
        l.told = None;
        if l.state & !l.required != 0 {
            let mut to = l.required;
            if !l.is_oplock() && l.state & !caching::R != 0 {
                to |= l.state & caching::R;
            }
            return Ok(Some(Self::notify(l, to)));
        }
        l.required = l.state;
        Ok(None)
    }

    /// A break was not acknowledged in time (MS-SMB2 3.3.6.5): a lease loses all its caching,
    /// as Samba's lease timeout does (smbtorture `smb2.lease.timeout` then finds it at none);
    /// an oplock is taken down to what it had to give up.
    pub fn force_break(&mut self, id: &LeaseId) -> bool {
        match self.leases.iter_mut().find(|l| l.id == *id) {
            Some(l) if l.told.is_some() => {
                if l.is_oplock() {
                    l.state &= l.required;
                } else {
                    l.state = 0;
                }
                l.required = l.state;
                l.told = None;
                true
            }
            _ => false,
        }
    }

    /// Leases with a break awaiting acknowledgement.
    pub fn breaking(&self) -> impl Iterator<Item = &Lease> {
        self.leases.iter().filter(|l| l.told.is_some())
    }

    /// A write, truncate or byte-range lock through `by` (an open's lease, if any): every other
    /// lease holding R is broken to none, without waiting (MS-FSA 2.1.5.17's level II breaks;
    /// Samba's contend_level2_oplocks). Returns the breaks to start.
    pub fn contend(&self, by: Option<&LeaseId>) -> Vec<(LeaseId, u8)> {
        // A lease is not broken by its own client's writes; a level II oplock is, even by its
        // own open's (MS-SMB2 3.3.4.7, smbtorture smb2.oplock.batch1: "self break to none").
        self.leases
            .iter()
            .filter(|l| (Some(&l.id) != by || l.is_oplock()) && l.state & caching::R != 0 && l.state & caching::W == 0)
            .map(|l| (l.id, 0))
            .collect()
    }

    /// A break of a [`SYNC_BREAKS`] lease awaits its acknowledgement: a write or truncate that
    /// broke it waits.
    pub fn sync_breaking(&self) -> bool {
        self.leases.iter().any(|l| l.sync_breaks() && l.told.is_some())
    }

    /// A rename or delete of the file through `by`: other leases' H caching must go first, and
    /// the operation waits for those breaks. Returns the breaks and whether to wait.
    pub fn handle_breaks(&self, by: Option<&LeaseId>) -> (Vec<(LeaseId, u8)>, bool) {
        let mut wait = false;
        let mut v = Vec::new();
        for l in self.leases.iter().filter(|l| Some(&l.id) != by) {
            if l.state & caching::H != 0 {
                // An oplock can only go to level II or none.
                let to = if l.is_oplock() { l.state & caching::R & !caching::W } else { l.state & !caching::H };
                v.push((l.id, to));
                wait = true;
            } else if l.told.is_some_and(|t| t & caching::H != 0) {
                wait = true;
            }
        }
        (v, wait)
    }

    /// Forgets open `key`, its byte-range locks and (if no other open uses it) its lease; says
    /// whether it was the last open that pins the file and whether the file must now be deleted.
    pub fn close(&mut self, key: OpenKey) -> Option<CloseOutcome> {
        let o = self.remove_open(key)?;
        if o.flags & flags::DELETE_ON_CLOSE != 0 {
            self.delete_pending = true;
        }
        let last = o.flags & flags::PINS != 0 && !self.opens.iter().any(|x| x.flags & flags::PINS != 0);
        let delete = last && self.delete_pending;
        if last {
            self.delete_pending = false;
        }
        let name = if delete { self.name.clone() } else { None };
        Some(CloseOutcome { last, delete, name })
    }

    /// Whether the file has an open besides `except` (that pins it).
    pub fn has_other_opens(&self, except: OpenKey) -> bool {
        self.opens.iter().any(|o| o.key != except && o.flags & flags::PINS != 0)
    }

    /// Checks that `key` (or, with `None`, a client without an open: NFS, a local process) may
    /// also do what `extra_access` stands for (rename, delete, truncate): only other opens'
    /// share modes can forbid it.
    pub fn may_also(&self, key: Option<OpenKey>, extra_access: u32) -> Result<(), Conflict> {
        let clash = self
            .opens
            .iter()
            .filter(|o| Some(o.key) != key && o.flags & flags::SHARE_MODES != 0 && o.access & access::DATA != 0)
            .any(|o| share_conflict(o.access, o.share, extra_access, share::ALL));
        if clash {
            Err(Conflict::Sharing)
        } else {
            Ok(())
        }
    }

    /// Whether renaming an entry of this directory must fail: another open of it holds DELETE
    /// access, or reads/writes it without sharing delete.
    pub fn blocks_child_rename(&self) -> bool {
        self.opens
            .iter()
            .filter(|o| o.flags & flags::SHARE_MODES != 0)
            .any(|o| o.access & access::DELETE != 0 || (o.access & access::DATA != 0 && o.share & share::DELETE == 0))
    }

    /// Marks open `key` delete-on-close (or clears it).
    pub fn set_delete_on_close(&mut self, key: OpenKey, on: bool) -> Result<(), Conflict> {
        let o = self.opens.iter_mut().find(|o| o.key == key).ok_or(Conflict::NoSuchOpen)?;
        if on {
            o.flags |= flags::DELETE_ON_CLOSE;
        } else {
            o.flags &= !flags::DELETE_ON_CLOSE;
        }
        Ok(())
    }

    /// Takes a byte-range lock, or says why not. A POSIX owner's lock replaces what it held on
    /// the range (it may split or merge); a Windows one stacks.
    pub fn lock(&mut self, lock: RangeLock) -> Result<(), Conflict> {
        let posix = matches!(lock.owner, Owner::Posix { .. });
        let clash = self.ranges.iter().any(|r| {
            if !r.overlaps(lock.offset, lock.len) {
                return false;
            }
            if r.owner == lock.owner {
                // Windows: an exclusive lock does not stack on any of the owner's own locks; a
                // shared one may. POSIX: the owner's own locks are replaced, never a conflict.
                !posix && lock.exclusive
            } else {
                lock.exclusive || r.exclusive
            }
        });
        if clash {
            return Err(Conflict::Locked);
        }
        if posix {
            self.posix_clear(lock.owner, lock.offset, lock.len);
            self.ranges.push(lock);
            self.posix_merge(lock.owner);
        } else {
            self.ranges.push(lock);
        }
        Ok(())
    }

    /// Releases a lock: exactly the range a Windows owner locked at `offset`/`len`, or whatever
    /// a POSIX owner holds within the range (never an error: POSIX unlock of nothing succeeds).
    pub fn unlock(&mut self, owner: Owner, offset: u64, len: u64) -> Result<(), Conflict> {
        if matches!(owner, Owner::Posix { .. }) {
            self.posix_clear(owner, offset, len);
            return Ok(());
        }
        let i = self
            .ranges
            .iter()
            .position(|r| r.owner == owner && r.offset == offset && r.len == len)
            .ok_or(Conflict::NotLocked)?;
        self.ranges.remove(i);
        Ok(())
    }

    /// Removes every lock of POSIX owner `owner` everywhere (its client rebooted, its process exited).
    pub fn unlock_all(&mut self, owner: Owner) -> bool {
        let before = self.ranges.len();
        self.ranges.retain(|r| r.owner != owner);
        before != self.ranges.len()
    }

    /// The first lock of another owner that conflicts with `lock` (for NLM TEST / F_GETLK).
    pub fn conflicting(&self, lock: &RangeLock) -> Option<RangeLock> {
        self.ranges
            .iter()
            .find(|r| r.owner != lock.owner && r.overlaps(lock.offset, lock.len) && (lock.exclusive || r.exclusive))
            .copied()
    }

    fn posix_clear(&mut self, owner: Owner, offset: u64, len: u64) {
        let (s, e) = (offset as u128, end_of(offset, len));
        let mut keep = Vec::with_capacity(self.ranges.len() + 1);
        for r in self.ranges.drain(..) {
            let (rs, re) = (r.offset as u128, lock_end(&r));
            if r.owner != owner || re <= s || rs >= e {
                keep.push(r);
                continue;
            }
            if rs < s {
                keep.push(RangeLock { len: (s - rs) as u64, ..r });
            }
            if re > e {
                keep.push(RangeLock { offset: e as u64, len: (re - e) as u64, ..r });
            }
        }
        self.ranges = keep;
    }

    fn posix_merge(&mut self, owner: Owner) {
        let (mut mine, others): (Vec<RangeLock>, Vec<RangeLock>) =
            self.ranges.drain(..).partition(|r| r.owner == owner);
        mine.sort_by_key(|r| r.offset);
        let mut merged: Vec<RangeLock> = Vec::with_capacity(mine.len());
        for r in mine {
            match merged.last_mut() {
                Some(m) if m.exclusive == r.exclusive && lock_end(m) >= r.offset as u128 => {
                    let end = lock_end(m).max(lock_end(&r));
                    m.len = (end - m.offset as u128).min(u64::MAX as u128) as u64;
                }
                _ => merged.push(r),
            }
        }
        self.ranges = others;
        self.ranges.extend(merged);
    }

    /// Whether `who` (an open; `None` for a client without one, such as NFS) may read
    /// (`write == false`) or write the range. Only Windows locks are mandatory: another open's
    /// exclusive lock blocks everyone, a shared one blocks writers; POSIX locks are advisory.
    pub fn io_allowed(&self, who: Option<OpenKey>, offset: u64, len: u64, write: bool) -> bool {
        if len == 0 {
            return true;
        }
        !self.ranges.iter().any(|r| {
            let Owner::Open(k) = r.owner else { return false };
            r.overlaps(offset, len) && if Some(k) == who { write && !r.exclusive } else { r.exclusive || write }
        })
    }
}

/// The lease state an oplock level amounts to, from the state the rules allow: batch (RWH),
/// exclusive (RW), level II (R) or none.
fn oplock_level_state(s: u8) -> u8 {
    use caching::*;
    if s == RWH {
        RWH
    } else if s & (R | W) == R | W {
        R | W
    } else if s & R != 0 {
        R
    } else {
        0
    }
}

#[cfg(test)]
mod tests;
