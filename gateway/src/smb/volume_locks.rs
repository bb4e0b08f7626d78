//! SMB byte-range locks mirrored onto the volume, so that clients nasgw does not serve (a
//! GlusterFS FUSE mount on an application server, a local process on a node) respect them, as
//! Samba does with `posix locking = yes`. The cluster's file-sharing state decides between
//! nasgw's own clients first; then each open's locks are set on the volume as one POSIX owner
//! (the open's key) through [`VolumeLocks`], as their coverage (`locks::posix_view`). A lock the
//! volume refuses (another client of it holds the range) is given back and refused. The bricks
//! drop a dead node's volume locks with its connection to them.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use crate::locks::posix_view::{plan, WinLock};
use crate::locks::volume::{HeldElsewhere, VolumeLocks};
use crate::locks::{FileRecord, OpenKey};
use crate::vfs::{FileId, Namespace};

/// The volume owner of an open's locks: its key, tagged so it never equals an NLM owner id.
pub fn owner_of(key: OpenKey) -> u128 {
    (0x534d_4232u128 << 96) | (u128::from(key.node) << 64) | u128::from(key.seq)
}

type Held = Arc<tokio::sync::Mutex<Vec<WinLock>>>;

/// This node's SMB opens' locks on the volume.
pub struct SmbVolumeLocks {
    volume: VolumeLocks,
    held: Mutex<HashMap<(FileId, OpenKey), Held>>,
}

impl SmbVolumeLocks {
    /// Mirrors onto `ns`'s volume.
    pub fn new(ns: Namespace) -> SmbVolumeLocks {
        SmbVolumeLocks { volume: VolumeLocks::new(ns), held: Mutex::new(HashMap::new()) }
    }

    fn entry(&self, file: FileId, key: OpenKey) -> Held {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).entry((file, key)).or_default().clone()
    }

    async fn apply(&self, file: FileId, key: OpenKey, old: &[WinLock], new: &[WinLock]) -> Result<(), HeldElsewhere> {
        let owner = owner_of(key);
        for s in plan(old, new) {
            match s.set {
                Some(exclusive) => self.volume.lock(file, owner, exclusive, s.start, s.len).await?,
                None => self.volume.unlock(file, owner, s.start, s.len).await,
            }
        }
        Ok(())
    }

    /// Adds `lock` (granted by the cluster) to open `key`'s locks on the volume; `Err` when
    /// another client of the volume holds a conflicting lock (nothing changed then).
    pub async fn lock(&self, file: FileId, key: OpenKey, lock: WinLock) -> Result<(), HeldElsewhere> {
        if lock.len == 0 {
            return Ok(());
        }
        let held = self.entry(file, key);
        let mut locks = held.lock().await;
        let mut next = locks.clone();
        next.push(lock);
        if let Err(e) = self.apply(file, key, &locks, &next).await {
            // Back to what it held: takes first, so this only converts or unlocks.
            let _ = self.apply(file, key, &next, &locks).await;
            return Err(e);
        }
        *locks = next;
        Ok(())
    }

    /// Removes one lock `offset`/`len` of open `key` (the cluster released it).
    pub async fn unlock(&self, file: FileId, key: OpenKey, offset: u64, len: u64) {
        let held = self.entry(file, key);
        let mut locks = held.lock().await;
        let Some(i) = locks.iter().position(|l| l.offset == offset && l.len == len) else { return };
        let mut next = locks.clone();
        next.remove(i);
        let _ = self.apply(file, key, &locks, &next).await;
        *locks = next;
    }

    /// This node fell out of sync with the cluster (cut off, or for the moment it takes over
    /// leadership): the others release its clients' locks and may grant the ranges, so nothing
    /// of them may stay on the volume to refuse those clients. What each open held is kept, for
    /// [`SmbVolumeLocks::restore`].
    pub fn release_all(&self) {
        self.volume.release_all();
    }

    /// This node is in sync again: the locks of the opens that the cluster's table still holds
    /// for this node (`holdings`) are set on the volume again, so other clients of the volume
    /// see them again; those of opens it no longer holds (the node was evicted: its
    /// connections and their opens are closing) are forgotten. Returns how many opens had
    /// locks set again and how many of those the volume refused (another client of it took a
    /// range meanwhile: the cluster's table still protects the range from nasgw's clients).
    pub async fn restore(&self, holdings: &BTreeMap<FileId, FileRecord>) -> (usize, usize) {
        let entries: Vec<((FileId, OpenKey), Held)> = {
            let mut m = self.held.lock().unwrap_or_else(|p| p.into_inner());
            m.retain(|(f, k), _| holdings.get(f).is_some_and(|r| r.open_of(*k).is_some()));
            m.iter().map(|(k, v)| (*k, v.clone())).collect()
        };
        let (mut set, mut refused) = (0, 0);
        for ((file, key), held) in entries {
            let locks = held.lock().await;
            if locks.is_empty() {
                continue;
            }
            set += 1;
            if self.apply(file, key, &[], &locks).await.is_err() {
                refused += 1;
            }
        }
        (set, refused)
    }

    /// Open `key` closed: whatever it held on the volume goes with its descriptor.
    pub fn close(&self, file: FileId, key: OpenKey) {
        if self.held.lock().unwrap_or_else(|p| p.into_inner()).remove(&(file, key)).is_some() {
            self.volume.release(file, owner_of(key));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::locks::volume::tests::posix_file;
    use crate::locks::{OpenRecord, ORPHAN};

    /// Out of sync, an open's locks leave the volume; in sync again, those of opens the
    /// cluster still holds for this node come back, those of opens it no longer holds do not.
    #[tokio::test]
    async fn locks_leave_the_volume_out_of_sync_and_come_back_in_sync() {
        let (_dir, ns, id) = posix_file().await;
        let (kept, gone) = (OpenKey { node: 1, seq: 1 }, OpenKey { node: 1, seq: 2 });
        let m = SmbVolumeLocks::new(ns.clone());
        m.lock(id, kept, WinLock { offset: 0, len: 10, exclusive: true }).await.unwrap();
        m.lock(id, gone, WinLock { offset: 100, len: 10, exclusive: true }).await.unwrap();
        // Another client of the volume (an owner of its own) sees both.
        let outside = VolumeLocks::new(ns);
        let seen = async |off: u64| outside.test(id, ORPHAN as u128, true, off, 1).await.is_some();
        assert!(seen(5).await && seen(105).await);
        m.release_all();
        assert!(!seen(5).await && !seen(105).await, "given back out of sync");
        let open = |key| OpenRecord {
            key,
            access: 3,
            share: 7,
            lease: None,
            flags: crate::locks::flags::HANDLE,
            durable_ms: 0,
            orphan: false,
        };
        let held = BTreeMap::from([(id, FileRecord { opens: vec![open(kept)], ..Default::default() })]);
        assert_eq!(m.restore(&held).await, (1, 0));
        assert!(seen(5).await, "the held open's lock is on the volume again");
        assert!(!seen(105).await, "an open the cluster no longer holds gets nothing back");
        m.close(id, kept);
        assert!(!seen(5).await, "released with its open");
    }
}
