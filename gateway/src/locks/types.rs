//! The value types of the file-sharing state: who holds an open, a byte-range lock or a lease,
//! and the access, share and caching bits the rules look at. Plain data, the same on every node
//! (they travel between nodes in [`super::machine::Msg`]).

use serde::{Deserialize, Serialize};

/// Identity of one open (an SMB handle, an NFS client's use of a file, a local process's open
/// through the node's mount), unique in the cluster: the node that made it and a number that
/// node never reuses while it runs (its start time in the high bits, so a restarted node does not
/// reuse the keys of its previous run either).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OpenKey {
    /// The node serving the client that holds it.
    pub node: u16,
    /// Unique on that node.
    pub seq: u64,
}

/// The node number an orphan's lease and POSIX locks carry: what the holder of a durable open or
/// of POSIX locks had when its node died, kept for its reclaim (see [`super::record`]'s orphans).
/// No node has it: nothing is delivered to it and no node reports it as its own.
pub const ORPHAN: u16 = u16::MAX - 1;

/// Who owns a byte-range lock: an SMB open (Windows rules: locks stack, unlock exactly what was
/// locked, mandatory for every other reader and writer) or a POSIX lock owner (an NLM client's
/// owner, a local process: locks merge and split, advisory).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Owner {
    /// Windows semantics, owned by one open.
    Open(OpenKey),
    /// POSIX semantics: `id` names the owner (the same on every node, e.g. a hash of the NLM
    /// client name, svid and owner handle); `node` is the node it holds the lock through.
    Posix {
        /// Node the owner reached the cluster through.
        node: u16,
        /// The owner.
        id: u128,
    },
}

impl Owner {
    /// The node through which this owner holds its locks.
    pub fn node(&self) -> u16 {
        match self {
            Owner::Open(k) => k.node,
            Owner::Posix { node, .. } => *node,
        }
    }
}

/// Access bits the share-mode rules look at (the SMB access mask bits, MS-FSA 2.1.5.1.2).
pub mod access {
    /// Read data.
    pub const READ_DATA: u32 = 0x0000_0001;
    /// Write data.
    pub const WRITE_DATA: u32 = 0x0000_0002;
    /// Append data.
    pub const APPEND_DATA: u32 = 0x0000_0004;
    /// Execute.
    pub const EXECUTE: u32 = 0x0000_0020;
    /// Read attributes.
    pub const READ_ATTRIBUTES: u32 = 0x0000_0080;
    /// Write attributes.
    pub const WRITE_ATTRIBUTES: u32 = 0x0000_0100;
    /// Delete.
    pub const DELETE: u32 = 0x0001_0000;
    /// Read the security descriptor.
    pub const READ_CONTROL: u32 = 0x0002_0000;
    /// Synchronize.
    pub const SYNCHRONIZE: u32 = 0x0010_0000;
    /// Bits that take part in share-mode checks.
    pub const DATA: u32 = READ_DATA | WRITE_DATA | APPEND_DATA | EXECUTE | DELETE;
    /// An open with only these bits is a "stat open": it never conflicts and never breaks a
    /// lease or oplock (Samba's `is_oplock_stat_open`).
    pub const STAT: u32 = SYNCHRONIZE | READ_ATTRIBUTES | WRITE_ATTRIBUTES;
}

/// Share mode bits: what other opens this open tolerates.
pub mod share {
    /// Others may read.
    pub const READ: u32 = 1;
    /// Others may write.
    pub const WRITE: u32 = 2;
    /// Others may delete or rename.
    pub const DELETE: u32 = 4;
    /// Everything.
    pub const ALL: u32 = READ | WRITE | DELETE;
}

/// Caching bits of a lease (MS-SMB2 2.2.13.2.8): an oplock is kept as the lease state it
/// amounts to (level II = R, exclusive = RW, batch = RWH).
pub mod caching {
    /// Read caching.
    pub const R: u8 = 1;
    /// Handle caching.
    pub const H: u8 = 2;
    /// Write caching.
    pub const W: u8 = 4;
    /// All three.
    pub const RWH: u8 = R | W | H;
}

/// A lease's identity: the client GUID and the client's lease key (MS-SMB2 3.3.1.4). An oplock
/// gets a lease of its own whose id names its open ([`LeaseId::oplock`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LeaseId {
    /// ClientGuid of the connection that asked for it (all zeros for an oplock).
    pub client: [u8; 16],
    /// LeaseKey (for an oplock: its open's key).
    pub key: [u8; 16],
}

impl LeaseId {
    /// The lease standing for the oplock of open `k`.
    pub fn oplock(k: OpenKey) -> LeaseId {
        let mut key = [0u8; 16];
        key[..2].copy_from_slice(&k.node.to_le_bytes());
        key[8..].copy_from_slice(&k.seq.to_le_bytes());
        LeaseId { client: [0xff; 16], key }
    }
}

/// One byte-range lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeLock {
    /// Who holds it.
    pub owner: Owner,
    /// First byte.
    pub offset: u64,
    /// Length in bytes. Windows: 0 locks nothing but must still be unlocked exactly. POSIX: the
    /// caller turns "to end of file" into `u64::MAX - offset`.
    pub len: u64,
    /// Exclusive (write) or shared (read).
    pub exclusive: bool,
}

impl RangeLock {
    /// Windows (and Samba) overlap: half-open ranges, where a zero-length range still
    /// conflicts with a lock that strictly contains its offset.
    pub fn overlaps(&self, offset: u64, len: u64) -> bool {
        let (a0, a1) = (self.offset as u128, self.offset as u128 + self.len as u128);
        let (b0, b1) = (offset as u128, offset as u128 + len as u128);
        if self.len != 0 && a0 == b0 && a1 == b1 {
            return true;
        }
        !(a0 >= b1 || b0 >= a1)
    }

    fn end(&self) -> u128 {
        self.offset as u128 + self.len as u128
    }
}

/// Why the table refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum Conflict {
    /// Another open's share mode forbids this access (or this share mode forbids theirs).
    #[error("sharing violation")]
    Sharing,
    /// The file is pending deletion.
    #[error("delete pending")]
    DeletePending,
    /// A byte-range lock of another owner overlaps.
    #[error("lock not granted")]
    Locked,
    /// Unlock of a range this owner does not hold.
    #[error("range not locked")]
    NotLocked,
    /// The open or lease named is not known.
    #[error("no such open")]
    NoSuchOpen,
    /// A lease key already names a lease on another file (MS-SMB2 3.3.5.9.8).
    #[error("lease key in use on another file")]
    LeaseKeyInUse,
    /// A break acknowledgement that does not match a break in progress.
    #[error("no break in progress")]
    NoBreak,
    /// A break acknowledgement that keeps more than the break allowed.
    #[error("acknowledgement keeps more than the break allowed")]
    NotAccepted,
    /// No durable open of that key to reclaim (MS-SMB2: STATUS_OBJECT_NAME_NOT_FOUND).
    #[error("no such durable open")]
    NotFound,
    /// The cluster could not decide (node cut off, not yet in sync, timed out).
    #[error("the cluster state is unavailable")]
    Unavailable,
}

pub(super) fn end_of(offset: u64, len: u64) -> u128 {
    offset as u128 + len as u128
}

pub(super) fn lock_end(l: &RangeLock) -> u128 {
    l.end()
}
