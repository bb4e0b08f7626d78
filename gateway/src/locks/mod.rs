//! The one lock table of the namespace: which opens a file has (with their access and share
//! modes), whether it is pending deletion, and its byte-range locks. SMB enforces share modes
//! and byte-range locks through it, and NFS can consult the same table, so an SMB client and
//! an NFS client see each other's locks.
//!
//! Keys are persistent file identities (the namespace's `FileId`), never paths: a rename does
//! not lose a lock, and a later cluster-wide table can use the same keys on every node. The
//! table is a plain data structure behind a mutex with no I/O; waiting for a conflicting lock
//! uses [`LockTable::changes`], a notifier that fires when anything on the file is released.

pub mod machine;
pub mod mesh;
pub mod record;
pub mod service;
#[cfg(test)]
pub mod sim;
pub mod types;

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// Identity of one open (an SMB handle, a future NFS open/lock owner). Unique per node; a
/// cluster-wide table will pair it with the node number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OpenKey(pub u64);

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
    /// Delete.
    pub const DELETE: u32 = 0x0001_0000;
}

/// Share mode bits: what other opens this open tolerates.
pub mod share {
    /// Others may read.
    pub const READ: u32 = 1;
    /// Others may write.
    pub const WRITE: u32 = 2;
    /// Others may delete or rename.
    pub const DELETE: u32 = 4;
}

/// One open of a file as the table sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenRecord {
    /// Who.
    pub key: OpenKey,
    /// Granted access mask.
    pub access: u32,
    /// Share mode.
    pub share: u32,
}

/// One byte-range lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RangeLock {
    /// The open holding it.
    pub owner: OpenKey,
    /// First byte.
    pub offset: u64,
    /// Length in bytes (0 locks nothing but must still be unlocked exactly).
    pub len: u64,
    /// Exclusive (write) or shared (read).
    pub exclusive: bool,
}

impl RangeLock {
    /// Windows (and Samba) overlap: half-open ranges, where a zero-length range still
    /// conflicts with a lock that strictly contains its offset.
    fn overlaps(&self, offset: u64, len: u64) -> bool {
        let (a0, a1) = (self.offset as u128, self.offset as u128 + self.len as u128);
        let (b0, b1) = (offset as u128, offset as u128 + len as u128);
        if self.len != 0 && a0 == b0 && a1 == b1 {
            return true;
        }
        !(a0 >= b1 || b0 >= a1)
    }
}

/// Why the table refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
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
}

#[derive(Debug, Default)]
struct FileState {
    opens: Vec<OpenRecord>,
    /// Opens created with delete-on-close: the file becomes delete-pending when one closes.
    delete_on_close: Vec<OpenKey>,
    /// Set by a disposition change or a delete-on-close open's close: no new opens, and the
    /// last close deletes the file.
    delete_pending: bool,
    ranges: Vec<RangeLock>,
    changes: Arc<Notify>,
}

/// What closing an open left behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseOutcome {
    /// It was the file's last open.
    pub last: bool,
    /// The file must now be deleted (delete-on-close was set by some open and this is the last).
    pub delete: bool,
}

/// The namespace-level table of opens, share modes and byte-range locks, keyed by file identity.
#[derive(Debug)]
pub struct LockTable<K> {
    files: Mutex<HashMap<K, FileState>>,
}

impl<K> Default for LockTable<K> {
    fn default() -> Self {
        Self { files: Mutex::new(HashMap::new()) }
    }
}

const DATA_ACCESS: u32 =
    access::READ_DATA | access::WRITE_DATA | access::APPEND_DATA | access::EXECUTE | access::DELETE;

fn share_conflict(a: &OpenRecord, b_access: u32, b_share: u32) -> bool {
    let needs = |acc: u32, share_mode: u32| {
        (acc & (access::READ_DATA | access::EXECUTE) != 0 && share_mode & share::READ == 0)
            || (acc & (access::WRITE_DATA | access::APPEND_DATA) != 0 && share_mode & share::WRITE == 0)
            || (acc & access::DELETE != 0 && share_mode & share::DELETE == 0)
    };
    needs(b_access, a.share) || needs(a.access, b_share)
}

impl<K: Hash + Eq + Clone> LockTable<K> {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    fn with<R>(&self, f: impl FnOnce(&mut HashMap<K, FileState>) -> R) -> R {
        let mut g = self.files.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }

    /// Records an open of `file` if no other open's share mode conflicts with it.
    pub fn open(&self, file: &K, rec: OpenRecord) -> Result<(), Conflict> {
        self.with(|files| {
            let st = files.entry(file.clone()).or_default();
            if st.delete_pending {
                return Err(Conflict::DeletePending);
            }
            if rec.access & DATA_ACCESS != 0 {
                let clash = st
                    .opens
                    .iter()
                    .filter(|o| o.access & DATA_ACCESS != 0)
                    .any(|o| share_conflict(o, rec.access, rec.share));
                if clash {
                    if st.opens.is_empty() {
                        files.remove(file);
                    }
                    return Err(Conflict::Sharing);
                }
            }
            st.opens.push(rec);
            Ok(())
        })
    }

    /// Whether `file` has any open besides `except`.
    pub fn has_other_opens(&self, file: &K, except: OpenKey) -> bool {
        self.with(|files| files.get(file).is_some_and(|st| st.opens.iter().any(|o| o.key != except)))
    }

    /// Checks that `key` may take `extra_access` too (rename/delete by an open): conflicts only
    /// with other opens' share modes.
    pub fn may_also(&self, file: &K, key: OpenKey, extra_access: u32) -> Result<(), Conflict> {
        self.with(|files| {
            let Some(st) = files.get(file) else { return Ok(()) };
            let clash = st
                .opens
                .iter()
                .filter(|o| o.key != key && o.access & DATA_ACCESS != 0)
                .any(|o| share_conflict(o, extra_access, share::READ | share::WRITE | share::DELETE));
            if clash {
                Err(Conflict::Sharing)
            } else {
                Ok(())
            }
        })
    }

    /// Marks `key`'s open as delete-on-close (the CREATE option): when it closes, the file
    /// becomes delete-pending.
    pub fn set_delete_on_close(&self, file: &K, key: OpenKey, on: bool) {
        self.with(|files| {
            if let Some(st) = files.get_mut(file) {
                st.delete_on_close.retain(|k| *k != key);
                if on {
                    st.delete_on_close.push(key);
                }
            }
        })
    }

    /// Sets or clears the file's delete-pending state (a disposition change).
    pub fn set_delete_pending(&self, file: &K, on: bool) {
        self.with(|files| {
            if let Some(st) = files.get_mut(file) {
                st.delete_pending = on;
            }
        })
    }

    /// True when `file` is pending deletion.
    pub fn delete_pending(&self, file: &K) -> bool {
        self.with(|files| files.get(file).is_some_and(|st| st.delete_pending))
    }

    /// Whether renaming an entry of directory `dir` must fail: another open of the directory
    /// holds DELETE access, or reads/writes it without sharing delete.
    pub fn blocks_child_rename(&self, dir: &K) -> bool {
        self.with(|files| {
            files.get(dir).is_some_and(|st| {
                st.opens.iter().any(|o| {
                    o.access & access::DELETE != 0 || (o.access & DATA_ACCESS != 0 && o.share & share::DELETE == 0)
                })
            })
        })
    }

    /// Forgets `key`'s open of `file` and its byte-range locks, waking waiting lockers; says
    /// whether it was the last open and whether the file must now be deleted.
    pub fn close(&self, file: &K, key: OpenKey) -> CloseOutcome {
        self.with(|files| {
            let Some(st) = files.get_mut(file) else { return CloseOutcome { last: true, delete: false } };
            st.opens.retain(|o| o.key != key);
            st.ranges.retain(|r| r.owner != key);
            if st.delete_on_close.contains(&key) {
                st.delete_on_close.retain(|k| *k != key);
                st.delete_pending = true;
            }
            let last = st.opens.is_empty();
            let delete = last && st.delete_pending;
            st.changes.notify_waiters();
            if last {
                files.remove(file);
            }
            CloseOutcome { last, delete }
        })
    }

    /// Takes a byte-range lock, or says which conflict prevents it.
    pub fn lock(&self, file: &K, lock: RangeLock) -> Result<(), Conflict> {
        self.with(|files| {
            let st = files.entry(file.clone()).or_default();
            // An exclusive lock conflicts with every overlapping lock; a shared one only with
            // other owners' exclusive locks (it may stack on the owner's own).
            let clash = st.ranges.iter().any(|r| {
                r.overlaps(lock.offset, lock.len) && (lock.exclusive || (r.exclusive && r.owner != lock.owner))
            });
            if clash {
                return Err(Conflict::Locked);
            }
            st.ranges.push(lock);
            Ok(())
        })
    }

    /// Releases exactly the range `key` locked at `offset`/`len`.
    pub fn unlock(&self, file: &K, key: OpenKey, offset: u64, len: u64) -> Result<(), Conflict> {
        self.with(|files| {
            let st = files.get_mut(file).ok_or(Conflict::NotLocked)?;
            let i = st
                .ranges
                .iter()
                .position(|r| r.owner == key && r.offset == offset && r.len == len)
                .ok_or(Conflict::NotLocked)?;
            st.ranges.remove(i);
            st.changes.notify_waiters();
            Ok(())
        })
    }

    /// Whether `key` may read (`write == false`) or write the range without hitting another
    /// owner's lock: shared locks block writers, exclusive locks block everyone else.
    pub fn io_allowed(&self, file: &K, key: OpenKey, offset: u64, len: u64, write: bool) -> bool {
        if len == 0 {
            return true;
        }
        self.with(|files| {
            let Some(st) = files.get(file) else { return true };
            !st.ranges.iter().any(|r| {
                r.overlaps(offset, len) && if r.owner == key { write && !r.exclusive } else { r.exclusive || write }
            })
        })
    }

    /// A notifier that fires when a lock or open of `file` is released: waiting lockers
    /// subscribe (`notified()`) before retrying, so no wake-up is lost.
    pub fn changes(&self, file: &K) -> Arc<Notify> {
        self.with(|files| files.entry(file.clone()).or_default().changes.clone())
    }

    /// Drops an empty entry created by [`LockTable::changes`] or a refused lock.
    pub fn tidy(&self, file: &K) {
        self.with(|files| {
            if files.get(file).is_some_and(|st| st.opens.is_empty() && st.ranges.is_empty()) {
                files.remove(file);
            }
        })
    }

    /// Number of files with state (for tests and status).
    pub fn len(&self) -> usize {
        self.with(|files| files.len())
    }

    /// No file has state.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(k: u64, access: u32, share: u32) -> OpenRecord {
        OpenRecord { key: OpenKey(k), access, share }
    }

    #[test]
    fn share_modes_are_enforced_both_ways() {
        let t = LockTable::<u32>::new();
        t.open(&1, rec(1, access::READ_DATA, share::READ)).unwrap();
        assert_eq!(t.open(&1, rec(2, access::WRITE_DATA, share::READ | share::WRITE)), Err(Conflict::Sharing));
        t.open(&1, rec(3, access::READ_DATA, share::READ | share::WRITE)).unwrap();
        // attribute-only opens never conflict
        t.open(&1, rec(4, 0x80, 0)).unwrap();
        // a new open that shares nothing conflicts with existing readers
        assert_eq!(t.open(&1, rec(5, access::READ_DATA, 0)), Err(Conflict::Sharing));
        assert!(!t.close(&1, OpenKey(1)).last);
        t.close(&1, OpenKey(3));
        assert!(t.close(&1, OpenKey(4)).last);
        assert!(t.is_empty());
    }

    #[test]
    fn delete_on_close_fires_on_the_last_close_and_blocks_new_opens() {
        let t = LockTable::<u32>::new();
        t.open(&7, rec(1, access::DELETE, share::DELETE | share::READ)).unwrap();
        t.open(&7, rec(2, access::READ_DATA, share::DELETE | share::READ)).unwrap();
        t.set_delete_on_close(&7, OpenKey(1), true);
        // The create option only takes effect when that open closes.
        t.open(&7, rec(3, access::READ_DATA, 7)).unwrap();
        assert_eq!(t.close(&7, OpenKey(1)), CloseOutcome { last: false, delete: false });
        assert_eq!(t.open(&7, rec(4, access::READ_DATA, 7)), Err(Conflict::DeletePending));
        assert_eq!(t.close(&7, OpenKey(3)), CloseOutcome { last: false, delete: false });
        assert_eq!(t.close(&7, OpenKey(2)), CloseOutcome { last: true, delete: true });
        // A disposition change is immediate and can be undone.
        t.open(&8, rec(1, access::DELETE, 7)).unwrap();
        t.set_delete_pending(&8, true);
        assert!(t.delete_pending(&8));
        t.set_delete_pending(&8, false);
        assert_eq!(t.close(&8, OpenKey(1)), CloseOutcome { last: true, delete: false });
    }

    #[test]
    fn byte_range_locks_conflict_like_windows() {
        let t = LockTable::<u32>::new();
        let l = |o, off, len, ex| RangeLock { owner: OpenKey(o), offset: off, len, exclusive: ex };
        t.lock(&1, l(1, 0, 10, true)).unwrap();
        assert_eq!(t.lock(&1, l(2, 5, 10, false)), Err(Conflict::Locked));
        assert_eq!(t.lock(&1, l(1, 5, 1, true)), Err(Conflict::Locked), "own exclusive locks stack no further");
        t.lock(&1, l(1, 5, 1, false)).expect("a shared lock stacks on the owner's exclusive one");
        t.unlock(&1, OpenKey(1), 5, 1).unwrap();
        assert_eq!(t.lock(&1, l(9, 5, 0, true)), Err(Conflict::Locked), "zero-length inside a lock conflicts");
        t.lock(&1, l(2, 10, 10, false)).unwrap();
        t.lock(&1, l(3, 10, 10, false)).unwrap();
        assert!(t.io_allowed(&1, OpenKey(1), 0, 10, true));
        assert!(!t.io_allowed(&1, OpenKey(2), 0, 1, false));
        assert!(!t.io_allowed(&1, OpenKey(2), 12, 1, true), "shared locks block writers");
        assert!(t.io_allowed(&1, OpenKey(2), 12, 1, false));
        assert_eq!(t.unlock(&1, OpenKey(2), 10, 9), Err(Conflict::NotLocked));
        t.unlock(&1, OpenKey(1), 0, 10).unwrap();
        t.lock(&1, l(2, 5, 5, false)).unwrap();
        // zero-length and end-of-range locks
        t.lock(&1, l(4, u64::MAX, 1, true)).unwrap();
        t.lock(&1, l(5, 3, 0, true)).unwrap();
    }
}
