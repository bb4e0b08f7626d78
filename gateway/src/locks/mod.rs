//! The file-sharing state of the whole cluster: which opens a file has (with their access and
//! share modes), delete-on-close and delete-pending, byte-range locks (SMB's mandatory Windows
//! locks and NLM's advisory POSIX ones), and leases and oplocks with their breaks. SMB, NFS (and
//! NLM and the node's own mount, as they land) all go through [`LockService`], so a client of any
//! protocol on any node sees every other client's state.
//!
//! Layers, each testable on its own:
//! - [`types`]: the values (open keys, lock owners, lease ids, access/share/caching bits);
//! - [`record`]: one file's state and the rules (share modes, Windows and POSIX locks, Samba's
//!   lease and oplock break rules): pure;
//! - [`machine`]: which node applies the rules to which file (a home per file, delegation to the
//!   only node using it, replicas, views rebuilt from every node's holdings, fencing): a pure
//!   state machine, exercised by `sim` (tests) under loss, partitions, crashes and restarts;
//! - [`interest`]: which nodes want the change events the others make (pure);
//! - [`mesh`]: authenticated TCP links between nodes; [`outbox`]: their sending side, written
//!   by the caller that produced a message;
//! - [`service`]: the async facade over the machine that the protocols call.
//!
//! Keys are persistent file identities ([`crate::vfs::FileId`]), never paths: a rename does not
//! lose a lock, and every node names a file the same way.

pub mod interest;
pub mod machine;
pub mod mesh;
pub mod outbox;
pub mod posix_view;
pub mod record;
pub mod service;
#[cfg(test)]
pub mod sim;
pub mod types;
pub mod volume;

pub use machine::OpenEntry;
pub use record::{
    flags, BreakNotice, CachingRequest, CloseOutcome, FileName, FileRecord, Granted, Lease, OpenRecord, OpenRequest,
};
pub use service::{Holders, LockService};
pub use types::{access, caching, share, Conflict, LeaseId, OpenKey, Owner, RangeLock, ORPHAN};
