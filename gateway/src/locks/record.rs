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

use super::types::{access, caching, end_of, lock_end, share, Conflict, LeaseId, OpenKey, Owner, RangeLock};

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
    /// What an SMB or local open carries.
    pub const HANDLE: u8 = SHARE_MODES | PINS;
    /// What NFS's stateless use of a file carries: none of the above.
    pub const STATELESS: u8 = 0;
}

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
}

impl OpenRecord {
    fn is_stat(&self) -> bool {
        is_stat_access(self.access)
    }
}

fn is_stat_access(a: u32) -> bool {
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
    /// 0 for an oplock, else the lease version (1 or 2).
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
    /// The client must acknowledge a break from `state`: it holds W or H (dirty data, cached
    /// handles); breaking away R alone is only a notification.
    fn ack_required(state: u8) -> bool {
        state & (caching::W | caching::H) != 0
    }
}

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
        /// 1 or 2.
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CloseOutcome {
    /// It was the file's last open that pins it.
    pub last: bool,
    /// The file must now be deleted (delete-on-close was set by some open and this is the last).
    pub delete: bool,
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

    /// Nodes holding anything here.
    pub fn nodes(&self) -> Vec<u16> {
        let mut v: Vec<u16> = self
            .opens
            .iter()
            .map(|o| o.key.node)
            .chain(self.ranges.iter().map(|r| r.owner.node()))
            .chain(self.leases.iter().map(|l| l.node))
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// What `node` holds, and the file-wide flag (for rebuilding a record after a membership change).
    pub fn holdings_of(&self, node: u16) -> FileRecord {
        let has_opens = self.opens.iter().any(|o| o.key.node == node);
        FileRecord {
            opens: self.opens.iter().filter(|o| o.key.node == node).cloned().collect(),
            ranges: self.ranges.iter().filter(|r| r.owner.node() == node).copied().collect(),
            leases: self.leases.iter().filter(|l| l.node == node).cloned().collect(),
            delete_pending: self.delete_pending && has_opens,
        }
    }

    /// Adds `other`'s holdings (they never overlap: each belongs to its own node).
    pub fn merge(&mut self, other: FileRecord) {
        self.opens.extend(other.opens);
        self.ranges.extend(other.ranges);
        self.leases.extend(other.leases);
        self.delete_pending |= other.delete_pending;
    }

    /// Drops everything `node` held (its node died or left).
    pub fn drop_node(&mut self, node: u16) {
        self.opens.retain(|o| o.key.node != node);
        self.ranges.retain(|r| r.owner.node() != node);
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
            CachingRequest::Lease { id, state, .. } => {
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
                    return OpenVerdict::Grant(Granted { state: s, epoch, breaking: l.told.is_some() });
                }
                OpenVerdict::Grant(Granted { state: granted, epoch: 0, breaking: false })
            }
            CachingRequest::Oplock(_) => {
                if got_handle_lease {
                    granted = 0;
                }
                OpenVerdict::Grant(Granted { state: oplock_level_state(granted), epoch: 0, breaking: false })
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
                        Granted { state: l.state, epoch: l.epoch, breaking: l.told.is_some() }
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
                        Granted { state: g.state, epoch: e, breaking: false }
                    }
                };
                self.opens.push(OpenRecord {
                    key: req.key,
                    access: req.access,
                    share: req.share,
                    lease: Some(id),
                    flags: req.flags,
                });
                return answer;
            }
        };
        self.opens.push(OpenRecord { key: req.key, access: req.access, share: req.share, lease, flags: req.flags });
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
        Some(Self::notify(l))
    }

    fn notify(l: &mut Lease) -> BreakNotice {
        let from = l.state;
        let ack_required = Lease::ack_required(from);
        if l.version >= 2 {
            l.epoch = l.epoch.wrapping_add(1);
        }
        let n = BreakNotice {
            lease: l.id,
            node: l.node,
            from,
            to: l.required,
            epoch: l.epoch,
            version: l.version,
            ack_required,
        };
        if ack_required {
            l.told = Some(l.required);
        } else {
            // Nothing cached that needs flushing or closing: the break takes effect at once.
            l.state = l.required;
        }
        n
    }

    /// The client acknowledged a break with `state`: it must be within what it was told. Returns
    /// a further break notice when more must go than the client was told.
    pub fn ack_break(&mut self, id: &LeaseId, state: u8) -> Result<Option<BreakNotice>, Conflict> {
        let l = self.leases.iter_mut().find(|l| l.id == *id).ok_or(Conflict::NoSuchOpen)?;
        let told = l.told.ok_or(Conflict::NoBreak)?;
        if state & !told != 0 {
            return Err(Conflict::NotAccepted);
        }
        l.state = state;
        l.told = None;
        if l.state & !l.required != 0 {
            return Ok(Some(Self::notify(l)));
        }
        l.required = l.state;
        Ok(None)
    }

    /// A break was not acknowledged in time: the lease is taken down to what it had to give up
    /// (MS-SMB2 3.3.6.5; Samba's lease timeout).
    pub fn force_break(&mut self, id: &LeaseId) -> bool {
        match self.leases.iter_mut().find(|l| l.id == *id) {
            Some(l) if l.told.is_some() => {
                l.state &= l.required;
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
        self.leases
            .iter()
            .filter(|l| Some(&l.id) != by && l.state & caching::R != 0 && l.state & caching::W == 0)
            .map(|l| (l.id, 0))
            .collect()
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
        let i = self.opens.iter().position(|o| o.key == key)?;
        let o = self.opens.remove(i);
        self.ranges.retain(|r| r.owner != Owner::Open(key));
        if let Some(id) = o.lease {
            if !self.opens.iter().any(|x| x.lease == Some(id)) {
                self.leases.retain(|l| l.id != id);
            }
        }
        if o.flags & flags::DELETE_ON_CLOSE != 0 {
            self.delete_pending = true;
        }
        let last = o.flags & flags::PINS != 0 && !self.opens.iter().any(|x| x.flags & flags::PINS != 0);
        let delete = last && self.delete_pending;
        if last {
            self.delete_pending = false;
        }
        Some(CloseOutcome { last, delete })
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
