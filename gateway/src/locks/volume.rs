//! Byte-range locks mirrored onto the volume, so every other client of it sees them: a GlusterFS
//! FUSE or gfapi client elsewhere, a local process on the node (`fcntl` on the local directory or
//! the node's mount). Used by NLM (an owner per NLM lock owner) and SMB (an owner per open, its
//! Windows locks as their POSIX coverage: `smb/volume_locks.rs`). Each owner gets its own
//! descriptor per file (an open file description on
//! a POSIX backend, whose OFD locks GlusterFS's FUSE client forwards to the bricks; a gfapi
//! descriptor tagged with the owner's 16-byte id as lock owner), and its locks are set there
//! after the cluster's lock table granted them.
//!
//! The cluster's table decides between nasgw's own clients (NFS and SMB, every node); the
//! volume adds the clients nasgw does not serve. A lock the table granted but the volume
//! refuses (another volume client holds it) is given back and refused. Any other failure of the
//! volume (a backend without locks, a file opened read-only) leaves the lock in the table only,
//! logged once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::vfs::backend::OwnerLocks;
use crate::vfs::{FileId, Namespace, VfsError};

/// The mirror.
pub struct VolumeLocks {
    ns: Namespace,
    handles: Mutex<HashMap<(FileId, u128), Arc<dyn OwnerLocks>>>,
    unsupported: AtomicBool,
    warned: AtomicBool,
}

/// Another client of the volume holds a conflicting lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldElsewhere;

fn kind(exclusive: bool) -> i32 {
    if exclusive {
        libc::F_WRLCK
    } else {
        libc::F_RDLCK
    }
}

impl VolumeLocks {
    /// Mirrors onto `ns`'s volume.
    pub fn new(ns: Namespace) -> VolumeLocks {
        VolumeLocks {
            ns,
            handles: Mutex::new(HashMap::new()),
            unsupported: AtomicBool::new(false),
            warned: AtomicBool::new(false),
        }
    }

    async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        if self.ns.is_local() {
            f()
        } else {
            tokio::task::spawn_blocking(f).await.expect("volume lock call panicked")
        }
    }

    fn note_failure(&self, what: &str, e: VfsError) {
        if e == VfsError::NotSupported {
            self.unsupported.store(true, Ordering::Relaxed);
            tracing::info!("this volume takes no byte-range locks; NLM and SMB locks live in nasgw's lock table only");
        } else if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(error = %e, "cannot {what} on the volume; the lock is kept in nasgw's table only (logged once)");
        }
    }

    async fn handle(&self, file: FileId, owner: u128, create: bool) -> Option<Arc<dyn OwnerLocks>> {
        if self.unsupported.load(Ordering::Relaxed) {
            return None;
        }
        if let Some(h) = self.handles.lock().expect("volume locks").get(&(file, owner)) {
            return Some(h.clone());
        }
        if !create {
            return None;
        }
        let b = self.ns.backend().clone();
        match self.run(move || b.owner_locks(&file, &owner.to_be_bytes())).await {
            Ok(h) => {
                let h: Arc<dyn OwnerLocks> = Arc::from(h);
                Some(self.handles.lock().expect("volume locks").entry((file, owner)).or_insert(h).clone())
            }
            Err(e) => {
                self.note_failure("open a file for locking", e);
                None
            }
        }
    }

    /// Sets `owner`'s lock on the volume; `Err` only when another client of the volume holds a
    /// conflicting one.
    pub async fn lock(
        &self,
        file: FileId,
        owner: u128,
        exclusive: bool,
        offset: u64,
        len: u64,
    ) -> Result<(), HeldElsewhere> {
        let Some(h) = self.handle(file, owner, true).await else { return Ok(()) };
        let k = kind(exclusive);
        match self.run(move || h.set(k, offset, len)).await {
            Ok(()) => Ok(()),
            Err(VfsError::Io(libc::EAGAIN) | VfsError::Access) => Err(HeldElsewhere),
            Err(e) => {
                self.note_failure("lock", e);
                Ok(())
            }
        }
    }

    /// Clears `owner`'s lock on the range.
    pub async fn unlock(&self, file: FileId, owner: u128, offset: u64, len: u64) {
        let Some(h) = self.handle(file, owner, false).await else { return };
        if let Err(e) = self.run(move || h.set(libc::F_UNLCK, offset, len)).await {
            self.note_failure("unlock", e);
        }
    }

    /// A conflicting lock of another volume client: (exclusive, offset, len).
    pub async fn test(
        &self,
        file: FileId,
        owner: u128,
        exclusive: bool,
        offset: u64,
        len: u64,
    ) -> Option<(bool, u64, u64)> {
        let h = self.handle(file, owner, true).await?;
        let k = kind(exclusive);
        let r = self.run(move || h.test(k, offset, len)).await;
        let held = self.handles.lock().expect("volume locks").contains_key(&(file, owner));
        match r {
            Ok(c) => c,
            Err(e) => {
                if held {
                    self.note_failure("test a lock", e);
                }
                None
            }
        }
    }

    /// `owner` holds nothing on `file` any more: its descriptor (and whatever it still held
    /// there) goes.
    pub fn release(&self, file: FileId, owner: u128) {
        let h = self.handles.lock().expect("volume locks").remove(&(file, owner));
        if let Some(h) = h {
            if self.ns.is_local() {
                drop(h);
            } else {
                // Closing a network file system's descriptor waits for its servers.
                tokio::task::spawn_blocking(move || drop(h));
            }
        }
    }

    /// Every owner's descriptors go, with whatever they held on the volume: this node is out of
    /// sync with the cluster, whose other nodes may now grant those ranges to their clients.
    pub fn release_all(&self) {
        let all: Vec<_> = self.handles.lock().expect("volume locks").drain().map(|(_, h)| h).collect();
        if self.ns.is_local() {
            drop(all);
        } else if !all.is_empty() {
            // Closing a network file system's descriptor waits for its servers.
            tokio::task::spawn_blocking(move || drop(all));
        }
    }

    /// Descriptors held (for tests).
    pub fn open_count(&self) -> usize {
        self.handles.lock().expect("volume locks").len()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::os::fd::AsRawFd;

    use super::*;
    use crate::vfs::posix::{PosixBackend, PosixOptions};
    use crate::vfs::{CreateHow, Credentials, SetAttr};

    /// A namespace over a fresh directory holding one file `f`, for the volume-lock tests here
    /// and in `smb/volume_locks.rs`.
    pub(crate) async fn posix_file() -> (tempfile::TempDir, Namespace, FileId) {
        let dir = tempfile::tempdir().unwrap();
        let ns = Namespace::new(Arc::new(PosixBackend::open(dir.path(), PosixOptions::new("t")).unwrap()));
        let (id, _) = ns
            .create(&Credentials::root(), ns.root(), b"f", 0o644, CreateHow::Unchecked(SetAttr::default()))
            .await
            .unwrap();
        (dir, ns, id)
    }

    /// What a local process sees with F_GETLK on the file.
    fn outside_view(path: &std::path::Path, exclusive: bool) -> Option<i16> {
        let f = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
        let mut fl = crate::vfs::backend::flock_of(kind(exclusive), 0, 0).unwrap();
        // SAFETY: valid descriptor and flock.
        assert_eq!(unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETLK, &mut fl) }, 0);
        (i32::from(fl.l_type) != libc::F_UNLCK).then_some(fl.l_type)
    }

    #[tokio::test]
    async fn locks_are_seen_by_local_processes_and_refused_when_they_hold_one() {
        let (dir, ns, id) = posix_file().await;
        let path = dir.path().join("f");
        let v = VolumeLocks::new(ns);
        v.lock(id, 1, true, 0, 10).await.unwrap();
        assert_eq!(outside_view(&path, false), Some(libc::F_WRLCK as i16), "a local process sees the NLM lock");
        // Another NLM owner is another volume owner: the volume refuses it too.
        assert_eq!(v.lock(id, 2, false, 5, 1).await, Err(HeldElsewhere));
        assert_eq!(v.test(id, 2, false, 5, 1).await, Some((true, 0, 10)));
        assert_eq!(v.test(id, 1, true, 0, 100).await, None, "its own locks never conflict");
        v.unlock(id, 1, 0, 10).await;
        assert_eq!(outside_view(&path, true), None);
        v.lock(id, 2, false, 5, 1).await.unwrap();
        v.release(id, 2);
        assert_eq!(outside_view(&path, true), None, "releasing the owner drops its locks");
        // A process holding a lock keeps NLM owners out.
        let f = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
        let mut fl = crate::vfs::backend::flock_of(libc::F_WRLCK, 100, 1).unwrap();
        // SAFETY: valid descriptor and flock.
        assert_eq!(unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_SETLK, &mut fl) }, 0);
        assert_eq!(v.lock(id, 3, false, 0, 0).await, Err(HeldElsewhere));
        drop(f);
        v.lock(id, 3, false, 0, 0).await.unwrap();
        assert_eq!(v.open_count(), 2);
    }
}
