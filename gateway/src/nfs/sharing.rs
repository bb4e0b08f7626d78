//! How NFS takes part in the cluster's file-sharing state. NFSv3 has no opens, so NFS obeys what
//! SMB clients hold without holding anything they could trip over:
//! - before a READ or WRITE this node registers a **use** of the file (an open without share
//!   modes that pins nothing, closed after [`IDLE`] without I/O): like any open it breaks
//!   conflicting caching (an SMB client's write lease is flushed before NFS reads, every read
//!   lease is dropped before NFS writes), and it makes this node keep a copy of the file's
//!   record, so the byte-range lock check of every I/O is local;
//! - a WRITE (or READ) into a range another client holds a mandatory SMB lock on, a REMOVE or
//!   RENAME of a file whose SMB opens deny delete (after other clients' handle caching was
//!   broken), and a size change of a file whose opens deny write are refused with
//!   **NFS3ERR_JUKEBOX**: the client's kernel waits and retries (every few seconds, for as long
//!   as a hard mount lasts), as it does for Ganesha's delegation recalls, instead of handing an
//!   error to the application for what is a temporary conflict;
//! - a decision that takes longer than [`WAIT`] (a lease holder slow to answer its break) is also
//!   answered JUKEBOX; the break goes on, and the retry finds it done.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nfs3_types::nfs3::nfsstat3;
use tokio_util::sync::CancellationToken;

use crate::locks::{access, flags, CachingRequest, Conflict, LockService, OpenKey, OpenRequest};
use crate::vfs::FileId;

/// A use of a file without I/O for this long is closed.
pub const IDLE: Duration = Duration::from_secs(2);

/// How long an NFS call waits for the file-sharing state before it answers JUKEBOX.
pub const WAIT: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy)]
struct Use {
    key: OpenKey,
    access: u32,
    last: Instant,
}

/// NFS's uses of files on this node.
#[derive(Debug)]
pub struct NfsSharing {
    locks: Arc<LockService>,
    uses: Mutex<HashMap<FileId, Use>>,
}

fn jukebox(_: Conflict) -> nfsstat3 {
    nfsstat3::NFS3ERR_JUKEBOX
}

impl NfsSharing {
    /// NFS's view of `locks`.
    pub fn new(locks: Arc<LockService>) -> Arc<NfsSharing> {
        Arc::new(NfsSharing { locks, uses: Mutex::new(HashMap::new()) })
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<FileId, Use>> {
        self.uses.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Before a READ (`write == false`) or WRITE of `len` bytes at `offset`: the use with the
    /// access it needs, the byte-range lock check, and (writes) other clients' read caching broken.
    pub async fn io(self: &Arc<Self>, file: FileId, offset: u64, len: u64, write: bool) -> Result<(), nfsstat3> {
        let need = if write { access::WRITE_DATA } else { access::READ_DATA };
        self.ensure(file, need).await?;
        let ok = tokio::time::timeout(WAIT, self.locks.io_allowed(&file, None, offset, len, write))
            .await
            .map_err(|_| nfsstat3::NFS3ERR_JUKEBOX)?
            .map_err(jukebox)?;
        if !ok {
            return Err(nfsstat3::NFS3ERR_JUKEBOX);
        }
        if write {
            tokio::time::timeout(WAIT, self.locks.contend_if_needed(&file, None))
                .await
                .map_err(|_| nfsstat3::NFS3ERR_JUKEBOX)?
                .map_err(jukebox)?;
        }
        Ok(())
    }

    /// Before a REMOVE or RENAME of `file`: other clients' handle caching is broken (they may
    /// close), then share modes decide.
    pub async fn may_remove(&self, file: FileId) -> Result<(), nfsstat3> {
        let locks = self.locks.clone();
        let decided = tokio::spawn(async move { locks.may_also(&file, None, access::DELETE, true, None).await });
        match tokio::time::timeout(WAIT, decided).await {
            Ok(Ok(r)) => r.map_err(jukebox),
            _ => Err(nfsstat3::NFS3ERR_JUKEBOX),
        }
    }

    /// After a RENAME of `file` to `name` in directory `dir`: the cluster's record of it learns
    /// the new name, so SMB opens of it on any node act on that name. The rename is done
    /// whatever happens here; a record that cannot be told in time is told later (the lock
    /// service carries it out) and the delay is logged.
    pub async fn renamed(&self, file: FileId, dir: FileId, name: &[u8]) {
        let to = crate::locks::FileName::new(dir.as_bytes(), name);
        let locks = self.locks.clone();
        let told = tokio::spawn(async move { locks.renamed(&file, to).await });
        match tokio::time::timeout(WAIT, told).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "NFS: the cluster did not confirm a rename's new name"),
            _ => tracing::warn!("NFS: the cluster has not confirmed a rename's new name yet"),
        }
    }

    /// Before a size change of `file`: opens that deny write refuse it; other clients' read
    /// caching is broken.
    pub async fn may_resize(&self, file: FileId) -> Result<(), nfsstat3> {
        let r = tokio::time::timeout(WAIT, async {
            self.locks.may_also(&file, None, access::WRITE_DATA, false, None).await?;
            self.locks.contend_if_needed(&file, None).await
        })
        .await;
        r.map_err(|_| nfsstat3::NFS3ERR_JUKEBOX)?.map_err(jukebox)
    }

    /// Makes sure this node has a use of `file` with (at least) `need` access.
    async fn ensure(self: &Arc<Self>, file: FileId, need: u32) -> Result<(), nfsstat3> {
        let had = {
            let mut m = self.map();
            match m.get_mut(&file) {
                Some(u) if u.access & need == need => {
                    u.last = Instant::now();
                    return Ok(());
                }
                other => other.map_or(0, |u| u.access),
            }
        };
        let access = need | had;
        let key = self.locks.new_key();
        let req = OpenRequest {
            key,
            access,
            share: crate::locks::share::ALL,
            caching: CachingRequest::None,
            overwrite: false,
            is_dir: false,
            flags: flags::STATELESS,
        };
        // The open runs to its end in a task of its own and records what it got, so a call that
        // gives up waiting (JUKEBOX while a lease break finishes) never leaves a use unrecorded.
        let me = self.clone();
        let granted = tokio::spawn(async move {
            let r = me.locks.open(&file, req).await;
            if r.is_ok() {
                me.adopt(file, Use { key, access, last: Instant::now() });
            }
            r
        });
        match tokio::time::timeout(WAIT, granted).await {
            Ok(Ok(r)) => r.map(|_| ()).map_err(jukebox),
            _ => Err(nfsstat3::NFS3ERR_JUKEBOX),
        }
    }

    /// Records a granted use, closing the one it replaces.
    fn adopt(&self, file: FileId, u: Use) {
        let replaced = self.map().insert(file, u);
        if let Some(old) = replaced {
            if old.key != u.key {
                self.locks.close_detached(&file, old.key);
            }
        }
    }

    /// Closes uses idle for [`IDLE`]; every second until `stop`.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            let idle: Vec<(FileId, OpenKey)> = {
                let mut m = self.map();
                let gone: Vec<(FileId, OpenKey)> =
                    m.iter().filter(|(_, u)| u.last.elapsed() >= IDLE).map(|(f, u)| (*f, u.key)).collect();
                for (f, _) in &gone {
                    m.remove(f);
                }
                gone
            };
            for (f, k) in idle {
                let _ = self.locks.close(&f, k).await;
            }
        }
    }

    /// Uses held now (tests).
    pub fn uses(&self) -> usize {
        self.map().len()
    }
}
