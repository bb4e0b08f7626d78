//! What an open file handle carries for the Windows semantics on top of the namespace: the
//! alternate data stream it opened, a write time the client fixed (MS-FSA's "user set" times,
//! frozen and thawed with -1/-2).
//!
//! Kept apart from [`crate::smb::cmd::open::FileOpen`]'s share-mode and lock fields so the
//! two evolve separately; every handle starts with [`FileState::default`].

use crate::vfs::Timestamp;

/// Per-handle state of the Windows file semantics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileState {
    /// The handle opened an alternate data stream of the file (`file:name`): its I/O goes to
    /// the stream, and the open's `id` is the stream's lock key, not the file's identity.
    pub stream: Option<crate::smb::streams::StreamOpen>,
    /// The last-write time this handle's client set (a time, or -1 to freeze the current one):
    /// writes through this handle must not move it (MS-FSA 2.1.5.14.2 UserSetModificationTime),
    /// so it is put back after each of them; -2 thaws it.
    pub sticky_write_time: Option<Timestamp>,
    /// Likewise for the last-access time.
    pub sticky_access_time: Option<Timestamp>,
    /// The AllocationSize (`AlSi` context, rounded up to 4 KiB) of the CREATE that made or
    /// overwrote the file: this handle's CREATE answers (a durable reconnect's included) report
    /// at least that much allocated, as smbd's `initial_allocation_size`.
    pub initial_allocation: u64,
    /// Lock-sequence buckets of a handle that is not durable, on a connection that offered
    /// multichannel (a durable open's live in [`crate::smb::durable::DurableTable`]): a LOCK
    /// may then be replayed on another channel (MS-SMB2 3.3.5.14, as smbd checks it).
    pub lock_sequences: crate::smb::durable_replay::LockSequences,
}
