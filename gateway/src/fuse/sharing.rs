//! The mount's part in the cluster's file-sharing state: a local program obeys SMB clients'
//! share modes and breaks their caching on any node, and the kernel's caches for the mount are
//! told when a file changes through SMB, NFS or another node.
//!
//! - Every open of a regular file through the mount is an open in [`LockService`] (share mode
//!   "everything", as a POSIX open denies nothing; flags [`flags::HANDLE`]): an SMB open that
//!   denies what the local open asks refuses it with **EACCES**, and a local open that another
//!   open's share mode cannot tolerate refuses *that* open. Like an SMB open it breaks other
//!   clients' write caching (waiting for their flush); opened for writing it also breaks every
//!   other read lease at once, and again at its last close (its writes went straight to the
//!   backing file, past nasgw), so an SMB client never serves stale data from its cache.
//! - A truncate asks the same as an NFS size change (opens that deny write refuse it; read
//!   caching broken); an unlink, rmdir or rename of a file waits for other clients' handle
//!   caching to go and is refused (EACCES) when an open denies delete.
//! - The mount's opens of a file share one **read lease** of the mount's own (client GUID
//!   [`MountSharing::client`]): any write, truncate or overwrite through SMB or NFS on any node
//!   breaks it, and the break invalidates the kernel's pages and attributes of the file
//!   (`notify_inval_inode`) before the write is answered, on whichever node it was made (the
//!   lease is a [`SYNC_BREAKS`] one: the writer waits for the mount's acknowledgement); while the file stays open the lease is taken again before the
//!   kernel next reads it or asks for its attributes (so it is held before anything is cached
//!   again). An open made
//!   while the lease was held, unbroken, keeps the kernel's page cache (`FOPEN_KEEP_CACHE`).
//! - Names created, removed or renamed through SMB, NFS or another node invalidate the kernel's
//!   cached entry and its directory's attributes (`notify_inval_entry`, from the namespace's
//!   change events); attributes changed through SMB, NFS or another node (SETATTR: mode, owner,
//!   times, size; a write here; a write elsewhere once flushed, synced or closed there)
//!   invalidate the kernel's attributes of the file (`notify_inval_inode` without pages, from
//!   the namespace's attribute changes), whether the mount has it open or only looked it up.
//!   A hard link, unlink or rename changes the file's link count and ctime, which every other
//!   name of it shows: the name change carries the file's identity (and a rename's replaced
//!   file's), and its attributes are invalidated the same way.
//!   Other nodes' changes arrive on the cluster's best-effort broadcast (milliseconds later); one
//!   that is lost is seen after the kernel's timeout ([`super::fs::TTL`]).
//!
//! The kernel is told by the thread that made the change, before the change is answered
//! ([`Invalidator`]), so a local `cat` that starts after an SMB WRITE was acknowledged reads
//! the new data. Changes made through the mount itself are not told (the kernel knows them).
//!
//! Bounds: every call here waits at most `[fuse] timeout_ms` ([`bounded`]; 45 s by default, the
//! lock service's own bound for an open that waits for a break) and then fails with **EIO** (a
//! node cut off from the cluster); what the cluster grants after that is given back.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use fuser::{Errno, INodeNo, Notifier};

use crate::locks::record::{BreakNotice, SYNC_BREAKS};
use crate::locks::OpenRequest;
use crate::locks::{access, caching, flags, share, CachingRequest, Conflict, Holders, LeaseId, LockService, OpenKey};
use crate::vfs::changes::Change;
use crate::vfs::FileId;

thread_local! {
    /// Set on the FUSE session's threads: what they change, the kernel already knows.
    static ON_FUSE_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Marks the calling thread as one serving the mount's requests.
pub fn mark_fuse_thread() {
    ON_FUSE_THREAD.with(|c| c.set(true));
}

fn on_fuse_thread() -> bool {
    ON_FUSE_THREAD.with(std::cell::Cell::get)
}

/// Tells the kernel what to forget, once the session's notifier exists (nothing the kernel
/// caches exists before). Called on the thread that made the change (SMB's, NFS's, the
/// mesh's), before that change is answered, never on a FUSE thread: the kernel may be waiting
/// there for a request on the same directory, and the notification would wait for it.
#[derive(Clone)]
pub struct Invalidator {
    notifier: Arc<OnceLock<Notifier>>,
}

impl Invalidator {
    /// An invalidator sending through `notifier` once it is set.
    pub fn new(notifier: Arc<OnceLock<Notifier>>) -> Invalidator {
        Invalidator { notifier }
    }

    /// The kernel forgets node `ino`'s pages and attributes.
    pub fn inode(&self, ino: u64) {
        if on_fuse_thread() {
            // (Not expected: the mount's own requests never break its lease.)
            let me = self.clone();
            let _ = std::thread::Builder::new().name("nasgw-fuse-inval".into()).spawn(move || me.inode(ino));
            return;
        }
        if let Some(n) = self.notifier.get() {
            // ENOENT: the kernel no longer knows it, nothing to forget.
            let _ = n.inval_inode(INodeNo(ino), 0, -1);
        }
    }

    /// The kernel forgets node `ino`'s attributes (its pages stay: a change of their data
    /// breaks the mount's read lease, which drops them).
    pub fn attributes(&self, ino: u64) {
        if let Some(n) = self.notifier.get() {
            // A negative offset: attributes only (no page is touched, nothing waits).
            let _ = n.inval_inode(INodeNo(ino), -1, 0);
        }
    }

    /// The kernel forgets `name` in directory node `dir`.
    pub fn entry(&self, dir: u64, name: &[u8]) {
        if let Some(n) = self.notifier.get() {
            let _ = n.inval_entry(INodeNo(dir), OsStr::from_bytes(name));
        }
    }
}

/// The places a change names (a rename names two).
pub fn places_of(c: &Change) -> impl Iterator<Item = (&FileId, &[u8])> {
    std::iter::once(&c.at).chain(c.to.as_ref()).map(|p| (&p.dir, p.name.as_slice()))
}

/// The access an `open(2)` with `flags` asks of the file-sharing state, and whether it
/// overwrites (O_TRUNC). A pure function.
pub fn open_access(flags: i32) -> (u32, bool) {
    let a = match flags & libc::O_ACCMODE {
        libc::O_RDONLY => access::READ_DATA,
        libc::O_WRONLY => access::WRITE_DATA,
        _ => access::READ_DATA | access::WRITE_DATA,
    };
    let a = if flags & libc::O_APPEND != 0 { a | access::APPEND_DATA } else { a };
    let overwrite = flags & libc::O_TRUNC != 0 && a & (access::WRITE_DATA | access::APPEND_DATA) != 0;
    (a, overwrite)
}

/// The errno a local program gets for a refusal of the file-sharing state: another client's
/// share mode (EACCES), a file pending deletion (ENOENT: it is gone for new opens), a
/// byte-range lock (EAGAIN), the cluster not answering within its bound (EIO).
pub fn errno_of(c: Conflict) -> Errno {
    match c {
        Conflict::Sharing => Errno::EACCES,
        Conflict::DeletePending => Errno::ENOENT,
        Conflict::Locked => Errno::EAGAIN,
        _ => Errno::EIO,
    }
}

/// `call`, or [`Conflict::Unavailable`] (EIO) when the cluster has not answered it within
/// `limit`. The caller gives back what may still be granted after that.
pub async fn bounded<T>(
    limit: Duration,
    call: impl std::future::Future<Output = Result<T, Conflict>>,
) -> Result<T, Conflict> {
    tokio::time::timeout(limit, call).await.unwrap_or(Err(Conflict::Unavailable))
}

/// The mount's state of one file it has open.
#[derive(Debug)]
struct Cached {
    /// The kernel's node id of it.
    ino: u64,
    /// Opens of it through the mount.
    opens: usize,
    /// The open that took the read lease again after a break (closed with the last open).
    refresh: Option<OpenKey>,
    /// The read lease is held and was not broken since the kernel last cached the file.
    valid: bool,
    /// Breaks seen (an answer that raced a break does not count as held).
    breaks: u64,
}

/// An open through the mount, as the file-sharing state knows it.
#[derive(Debug, Clone, Copy)]
pub struct Opened {
    /// Its open in the lock service.
    pub key: OpenKey,
    /// The kernel may keep its cached pages of the file (the read lease was held throughout).
    pub keep_cache: bool,
}

/// The node's mount in the cluster's file-sharing state.
pub struct MountSharing {
    locks: Arc<LockService>,
    client: [u8; 16],
    files: Mutex<HashMap<FileId, Cached>>,
    inval: Invalidator,
    rt: tokio::runtime::Handle,
    limit: Duration,
}

impl MountSharing {
    /// The mount's part in `locks`; breaks of its leases reach it from now on; tasks (lease
    /// refreshes, break acknowledgements) run on `rt`; calls the cluster does not answer within
    /// `limit` fail with EIO.
    pub fn new(
        locks: Arc<LockService>,
        inval: Invalidator,
        rt: tokio::runtime::Handle,
        limit: Duration,
    ) -> Arc<MountSharing> {
        // A GUID no SMB client sends: "nasgw-fuse", this node, this start.
        let mut client = [0u8; 16];
        client[..10].copy_from_slice(b"nasgw-fuse");
        client[10..12].copy_from_slice(&locks.node().to_le_bytes());
        client[12..].copy_from_slice(&rand::random::<u32>().to_le_bytes());
        let me = Arc::new(MountSharing { locks, client, files: Mutex::new(HashMap::new()), inval, rt, limit });
        me.locks.add_lease_holder(client, me.clone());
        me
    }

    /// The client GUID of the mount's leases.
    pub fn client(&self) -> [u8; 16] {
        self.client
    }

    /// The mount's lease of `file` (one per file, shared by its opens).
    pub fn lease_of(&self, file: &FileId) -> LeaseId {
        let mut key = [0u8; 16];
        key[..8].copy_from_slice(&fnv(file.as_bytes(), 0xcbf2_9ce4_8422_2325).to_le_bytes());
        key[8..].copy_from_slice(&fnv(file.as_bytes(), 0x8422_2325_cbf2_9ce4).to_le_bytes());
        LeaseId { client: self.client, key }
    }

    fn files(&self) -> std::sync::MutexGuard<'_, HashMap<FileId, Cached>> {
        self.files.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lease_request(&self, file: &FileId) -> CachingRequest {
        // SYNC_BREAKS: a write anywhere in the cluster waits until the kernel forgot the file.
        CachingRequest::Lease {
            id: self.lease_of(file),
            state: caching::R,
            version: SYNC_BREAKS,
            epoch: 0,
            parent: None,
        }
    }

    /// Opens `file` (node `ino`) for `open(2)` flags `oflags`: share modes checked, other
    /// clients' caching broken, the mount's read lease taken.
    pub async fn open(&self, file: FileId, ino: u64, oflags: i32) -> Result<Opened, Errno> {
        let (access, overwrite) = open_access(oflags);
        let (was_valid, breaks) = {
            let mut m = self.files();
            let c = m.entry(file).or_insert(Cached { ino, opens: 0, refresh: None, valid: false, breaks: 0 });
            c.opens += 1;
            c.ino = ino;
            (c.valid, c.breaks)
        };
        let key = self.locks.new_key();
        let req = OpenRequest {
            key,
            access,
            share: share::ALL,
            caching: self.lease_request(&file),
            overwrite,
            is_dir: false,
            flags: flags::HANDLE,
        };
        let granted = match bounded(self.limit, self.locks.open(&file, req)).await {
            Ok(g) => g,
            Err(c) => {
                // Granted later, it is given back then.
                self.locks.close_detached(&file, key);
                self.forget_open(&file);
                return Err(errno_of(c));
            }
        };
        if access & (access::WRITE_DATA | access::APPEND_DATA) != 0 {
            // Its writes bypass nasgw: no other client may keep reading from its cache.
            if let Err(c) = bounded(self.limit, self.locks.contend(&file, Some(self.lease_of(&file)))).await {
                self.locks.close_detached(&file, key);
                self.forget_open(&file);
                return Err(errno_of(c));
            }
        }
        let mut m = self.files();
        let Some(c) = m.get_mut(&file) else { return Ok(Opened { key, keep_cache: false }) };
        let held = granted.state & caching::R != 0 && c.breaks == breaks;
        c.valid = held;
        Ok(Opened { key, keep_cache: was_valid && held })
    }

    /// Counts one open of `file` less; the last one takes the lease refresh with it.
    fn forget_open(&self, file: &FileId) -> Option<OpenKey> {
        let mut m = self.files();
        let c = m.get_mut(file)?;
        c.opens = c.opens.saturating_sub(1);
        if c.opens > 0 {
            return None;
        }
        m.remove(file).and_then(|c| c.refresh)
    }

    /// Closes open `key` of `file`; `wrote`: it was open for writing (other clients' read
    /// caching, taken while it wrote past nasgw, is broken again).
    pub async fn close(&self, file: FileId, key: OpenKey, wrote: bool) {
        // A close the cluster does not answer in time is still carried out when it can.
        if wrote {
            let _ = bounded(self.limit, self.locks.contend(&file, Some(self.lease_of(&file)))).await;
        }
        let _ = bounded(self.limit, self.locks.close(&file, key)).await;
        if let Some(refresh) = self.forget_open(&file) {
            let _ = bounded(self.limit, self.locks.close(&file, refresh)).await;
        }
    }

    /// Before a truncate of `file`: opens that deny write refuse it (EACCES); other clients'
    /// read caching is broken.
    pub async fn may_resize(&self, file: FileId) -> Result<(), Errno> {
        bounded(self.limit, self.locks.may_also(&file, None, access::WRITE_DATA, false, None))
            .await
            .map_err(errno_of)?;
        bounded(self.limit, self.locks.contend(&file, Some(self.lease_of(&file)))).await.map_err(errno_of)
    }

    /// Before an unlink, rmdir or rename of `file`: other clients' handle caching goes first
    /// (they may close), then opens that deny delete refuse it (EACCES).
    pub async fn may_remove(&self, file: FileId) -> Result<(), Errno> {
        let ask = self.locks.may_also(&file, None, access::DELETE, true, Some(self.lease_of(&file)));
        bounded(self.limit, ask).await.map_err(errno_of)
    }

    /// After a rename of `file` to `name` in directory `dir`: the cluster's record of it learns
    /// the new name, so SMB opens of it on any node act on that name (logged if the cluster
    /// does not confirm it within the mount's bound; the lock service still carries it out).
    pub async fn renamed(&self, file: FileId, dir: FileId, name: &[u8]) {
        let to = crate::locks::FileName::new(dir.as_bytes(), name);
        if let Err(e) = bounded(self.limit, self.locks.renamed(&file, to)).await {
            tracing::warn!(error = %e, "local mount: the cluster did not confirm a rename's new name");
        }
    }

    /// Before the kernel caches what it asks for (a READ, attributes) of a file the mount has
    /// open: takes the read lease again if a break took it, so the next change is told too.
    pub async fn ensure_cached(&self, file: FileId) {
        if self.files().get(&file).is_some_and(|c| !c.valid) {
            self.refresh(file).await;
        }
    }

    /// Takes the read lease of `file` again after a break, while the mount has it open.
    async fn refresh(&self, file: FileId) {
        let breaks = match self.files().get(&file) {
            Some(c) => c.breaks,
            None => return,
        };
        let key = self.locks.new_key();
        let req = OpenRequest {
            key,
            access: access::READ_DATA,
            share: share::ALL,
            caching: self.lease_request(&file),
            overwrite: false,
            is_dir: false,
            flags: flags::STATELESS,
        };
        let g = match bounded(self.limit, self.locks.open(&file, req)).await {
            Ok(g) => g,
            Err(_) => {
                self.locks.close_detached(&file, key);
                return;
            }
        };
        let stale = {
            let mut m = self.files();
            match m.get_mut(&file) {
                Some(c) => {
                    if c.breaks == breaks && g.state & caching::R != 0 {
                        c.valid = true;
                    }
                    c.refresh.replace(key)
                }
                None => Some(key),
            }
        };
        if let Some(k) = stale {
            let _ = self.locks.close(&file, k).await;
        }
    }
}

impl Holders for MountSharing {
    fn deliver_break(&self, file: FileId, notice: BreakNotice) {
        // The lease is taken again when the kernel next reads or asks for attributes
        // (`ensure_cached`): before it caches anything again.
        let ino = self.files().get_mut(&file).map(|c| {
            c.valid = false;
            c.breaks += 1;
            c.ino
        });
        if let Some(ino) = ino {
            self.inval.inode(ino);
        }
        if notice.ack_required {
            let locks = self.locks.clone();
            self.rt.spawn(async move {
                let _ = locks.ack_break(&file, notice.lease, notice.to).await;
            });
        }
    }

    fn evicted(&self) {
        let mut m = self.files();
        for c in m.values_mut() {
            c.valid = false;
            c.breaks += 1;
            self.inval.inode(c.ino);
        }
    }
}

/// Listens to the namespace's change events: every name changed elsewhere is forgotten by the
/// kernel, and so are the attributes of its directory (times, link count; the kernel touches
/// them only when it holds the name) (`known` maps a file to its node id, if the kernel knows
/// it).
pub fn listener(
    inval: Invalidator,
    known: impl Fn(&FileId) -> Option<u64> + Send + Sync + 'static,
) -> crate::vfs::changes::Listener {
    Box::new(move |c: &Change| {
        if on_fuse_thread() {
            // Made through the mount: the kernel updated its own view.
            return;
        }
        for (dir, name) in places_of(c) {
            if let Some(ino) = known(dir) {
                inval.entry(ino, name);
                inval.attributes(ino);
            }
        }
    })
}

/// Listens to the namespace's attribute changes (SETATTR, writes, what other nodes flushed,
/// and the files a link, unlink or rename named): the kernel forgets the file's cached
/// attributes, if it knows the file, before the change is answered when it was made on this
/// node. Whether the file is open through the
/// mount or only looked up does not matter: the kernel caches attributes per inode either way.
pub fn attribute_listener(
    inval: Invalidator,
    known: impl Fn(&FileId) -> Option<u64> + Send + Sync + 'static,
) -> crate::vfs::changes::AttrListener {
    Box::new(move |file: &FileId| {
        if on_fuse_thread() {
            // Made through the mount: the kernel has the new attributes from the reply.
            return;
        }
        if let Some(ino) = known(file) {
            inval.attributes(ino);
        }
    })
}

fn fnv(b: &[u8], seed: u64) -> u64 {
    let mut h = seed;
    for x in b {
        h ^= u64::from(*x);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_flags_become_the_access_the_sharing_rules_check() {
        use access::{APPEND_DATA as A, READ_DATA as R, WRITE_DATA as W};
        let table = [
            (libc::O_RDONLY, R, false),
            (libc::O_WRONLY, W, false),
            (libc::O_RDWR, R | W, false),
            (libc::O_WRONLY | libc::O_TRUNC, W, true),
            (libc::O_RDWR | libc::O_APPEND, R | W | A, false),
            // O_TRUNC without write access truncates nothing.
            (libc::O_RDONLY | libc::O_TRUNC, R, false),
        ];
        for (flags, access, overwrite) in table {
            assert_eq!(open_access(flags), (access, overwrite), "flags {flags:#o}");
        }
    }

    #[test]
    fn refusals_become_the_errno_local_programs_expect() {
        assert_eq!(errno_of(Conflict::Sharing), Errno::EACCES);
        assert_eq!(errno_of(Conflict::DeletePending), Errno::ENOENT);
        assert_eq!(errno_of(Conflict::Locked), Errno::EAGAIN);
        assert_eq!(errno_of(Conflict::Unavailable), Errno::EIO);
    }
}
