//! The FUSE file system: each kernel request becomes one [`Namespace`] call as the calling
//! process, on the FUSE session's own threads (never a runtime worker of SMB, NFS or HA).
//!
//! Each FUSE thread runs its namespace calls in place on a single-threaded runtime of its
//! own, as an SMB connection's thread does (`vfs::in_place`): a slow backend call stalls that
//! one FUSE thread, nothing else. The kernel checks mode bits (`default_permissions`), and
//! every metadata call runs as the caller's uid, gid and groups (read from `/proc/PID/status`),
//! as an NFS call runs as its AUTH_UNIX credential. Reads and writes of an open file were
//! checked by the kernel at `open`; with passthrough they never reach nasgw.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use fuser::{
    AccessFlags, BackingId, Errno, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig,
    LockOwner, Notifier, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyLock, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use super::convert::{attr as fuse_attr, errno, groups_of_status, kind, set_attr};
use super::dir_stream::{self, DirStream, Start};
use super::inodes::{generation, Inodes};
use super::passthrough;
use super::sharing::{bounded, Invalidator, MountSharing};
use crate::cut_off::CutOff;
use crate::locks::{Conflict, LockService, OpenKey, Owner, RangeLock};
use crate::vfs::backend::HeldFile;
use crate::vfs::{
    access, Attr, CreateHow, Credentials, FileId, FileType, Namespace, SetAttr, SpecialFile, Stability, Timestamp,
    VfsError,
};

/// How long the kernel may trust a name or attributes without asking again. Changes made
/// through the mount itself update the kernel's view at once; changes made through SMB or NFS
/// on this node invalidate it before they are answered, and on another node when the cluster's
/// broadcast arrives (`sharing.rs`). This bounds what no event announces: a broadcast lost
/// (a node cut off, a mesh link that dropped), a write on another node to a file the mount
/// has not open, until that node flushes or closes it, and changes made beside nasgw (another
/// GlusterFS client, a program in a local volume's folder).
pub const TTL: Duration = Duration::from_secs(10);

thread_local! {
    /// This FUSE thread's runtime: namespace calls run in place on it.
    static RUNTIME: tokio::runtime::Runtime = {
        crate::vfs::in_place::run_calls_in_place();
        super::sharing::mark_fuse_thread();
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a FUSE thread's runtime")
    };
}

/// Runs a namespace call to completion on this FUSE thread.
fn run<F: std::future::Future>(f: F) -> F::Output {
    RUNTIME.with(|rt| rt.block_on(f))
}

/// The caller of a request: its uid, gid and supplementary groups (root's do not matter:
/// it passes every permission check, and a new file's group is its gid or the directory's).
fn caller(req: &Request) -> Credentials {
    let groups = match (req.uid(), req.pid()) {
        (0, _) | (_, 0) => Vec::new(),
        (_, pid) => status_of(pid).map(|s| groups_of_status(&s)).unwrap_or_default(),
    };
    Credentials { uid: req.uid(), gid: req.gid(), groups }
}

/// `/proc/PID/status` in one read (about 1.5 KiB; `fs::read_to_string` would probe its size
/// with a `statx` and several small reads).
fn status_of(pid: u32) -> std::io::Result<String> {
    use std::io::Read;
    let mut s = String::with_capacity(4096);
    File::open(format!("/proc/{pid}/status"))?.read_to_string(&mut s)?;
    Ok(s)
}

/// A backing file shared by every open of one inode (the kernel wants one per inode).
struct Backing {
    id: Arc<BackingId>,
    file: Arc<File>,
    opens: usize,
    /// The backend's [`crate::vfs::Backend::data_epoch`] `file` belongs to.
    epoch: u64,
}

/// One open of a file through the mount.
struct OpenFile {
    file: FileId,
    /// The open's own descriptor of the file on the volume (POSIX backends): reads and writes
    /// through nasgw use it, and it keeps a file removed while open readable, as on any
    /// local file system. `None` on backends without one (gfapi): the namespace is used.
    data: Option<Arc<File>>,
    /// Where `data` is `None` (gfapi): the backend's hold on the file, so that the file stays
    /// readable and writable through this open after its last name is removed (reads and
    /// writes go through the namespace while the file has a name).
    held: Option<Arc<dyn HeldFile>>,
    /// Reads and writes go straight to `data` in the kernel (passthrough).
    passthrough: bool,
    /// The backend's data epoch when the open was made (its `data` belongs to it).
    epoch: u64,
    /// Written through nasgw since the last flush.
    wrote: AtomicBool,
    /// Its size or times may have changed through nasgw (a write, a truncate, a utimes) since
    /// the last flush; without `data` (gfapi) nothing else can change them through this open,
    /// so a flush without it skips the stat that looks for a change to report.
    changed: AtomicBool,
    /// Its open in the cluster's file-sharing state (none without a lock service).
    key: Option<OpenKey>,
    /// Opened for writing.
    write: bool,
    /// The file's size and modification time when last seen by this open (at open, then at
    /// each flush): a flush that finds them changed reports the file modified.
    seen: Mutex<(u64, Timestamp)>,
}

/// The volume as the node's FUSE mount serves it.
pub struct VolumeFs {
    ns: Namespace,
    inodes: Arc<Mutex<Inodes>>,
    opens: Arc<Mutex<HashMap<u64, Arc<OpenFile>>>>,
    /// Open directories: what their listing read so far.
    dirs: Mutex<HashMap<u64, Arc<Mutex<DirStream>>>>,
    backings: Mutex<HashMap<FileId, Backing>>,
    next_fh: AtomicU64,
    /// Passthrough asked for by the config.
    want_passthrough: bool,
    /// Passthrough granted by the kernel at INIT (and still working).
    passthrough: Arc<AtomicBool>,
    /// The cluster's lock table, where the mount's fcntl and flock locks live.
    locks: Option<Arc<LockService>>,
    /// Owner ids of this mount: this value with the kernel's lock owner in the low 64 bits.
    owner_base: u128,
    /// (file, kernel lock owner) that took a lock through the mount: whose close unlocks.
    lockers: Arc<Mutex<HashSet<(FileId, u64)>>>,
    /// The mount in the file-sharing state: share modes, lease breaks, the kernel told of
    /// changes made elsewhere (none without a lock service).
    sharing: Option<Arc<MountSharing>>,
    /// The session's notifier, once it runs.
    notifier: Arc<OnceLock<Notifier>>,
    /// How long a call to the cluster's lock table may take before the caller gets EIO.
    limit: Duration,
    /// The daemon's runtime (none in tests without one): what must still happen after a
    /// caller got its answer (giving back a lock granted too late) runs there.
    rt: Option<tokio::runtime::Handle>,
    /// Whether this node is cut off from the cluster (none without a lock service).
    cut_off: Option<tokio::sync::watch::Receiver<Option<CutOff>>>,
    /// The data epoch whose descriptors were revoked in the current cut-off (`fence_writers`).
    fenced: Arc<Mutex<Option<u64>>>,
}

/// How often a waiting lock (F_SETLKW) retries besides every change of the file's record.
const LOCK_RETRY: Duration = Duration::from_millis(500);

/// How often a waiting lock checks that its caller still waits.
const WAITER_CHECK: Duration = Duration::from_millis(50);

impl VolumeFs {
    /// Serves `ns`; `passthrough`: try kernel passthrough for regular files.
    pub fn new(
        ns: Namespace,
        root_fileid: u64,
        passthrough: bool,
        locks: Option<Arc<LockService>>,
        limit: Duration,
    ) -> (Self, Arc<AtomicBool>) {
        // Unique to this node and this start: a lock owner of a previous run never matches.
        let node = locks.as_ref().map_or(0, |l| l.node());
        let nonce: u64 = rand::random();
        let owner_base =
            (u128::from(0x4655_5345u32) << 96) | (u128::from(node) << 80) | (u128::from(nonce >> 16) << 64);
        let granted = Arc::new(AtomicBool::new(false));
        let opens = Arc::new(Mutex::new(HashMap::new()));
        let inodes = Arc::new(Mutex::new(Inodes::new(ns.root(), root_fileid)));
        let notifier = Arc::new(OnceLock::new());
        let inval = Invalidator::new(notifier.clone());
        // Names changed by SMB, NFS or another node: the kernel forgets its cached entry.
        let known = inodes.clone();
        ns.changes().listen(super::sharing::listener(inval.clone(), move |dir| {
            known.lock().unwrap_or_else(|p| p.into_inner()).ino_of(dir)
        }));
        // Attributes changed by SMB, NFS or another node (a link, unlink or rename: the file's
        // link count and ctime): the kernel forgets its copy.
        let known = inodes.clone();
        ns.changes().listen_attributes(super::sharing::attribute_listener(inval.clone(), move |file| {
            known.lock().unwrap_or_else(|p| p.into_inner()).ino_of(file)
        }));
        let rt = tokio::runtime::Handle::try_current().ok();
        let sharing = match (&locks, &rt) {
            (Some(l), Some(rt)) => Some(MountSharing::new(l.clone(), inval, rt.clone(), limit)),
            _ => None,
        };
        let cut_off = locks.as_ref().map(|l| l.cut_off());
        let fenced = Arc::new(Mutex::new(None));
        if let (Some(rx), Some(rt)) = (&cut_off, &rt) {
            rt.spawn(fence_on_cut_off(
                rx.clone(),
                Fencer { ns: ns.clone(), opens: opens.clone(), fenced: fenced.clone() },
            ));
        }
        let fs = Self {
            inodes,
            ns,
            opens,
            dirs: Mutex::new(HashMap::new()),
            backings: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            want_passthrough: passthrough,
            passthrough: granted.clone(),
            locks,
            owner_base,
            lockers: Arc::new(Mutex::new(HashSet::new())),
            sharing,
            notifier,
            limit,
            rt,
            cut_off,
            fenced,
        };
        (fs, granted)
    }

    /// Where the session's notifier goes once the session runs.
    pub fn notifier_cell(&self) -> Arc<OnceLock<Notifier>> {
        self.notifier.clone()
    }

    /// Opens `id` (node `ino`) in the file-sharing state for `open(2)` flags `oflags`.
    fn share_open(&self, id: FileId, ino: u64, oflags: i32) -> Result<Option<super::sharing::Opened>, Errno> {
        match &self.sharing {
            Some(s) => run(s.open(id, ino, oflags)).map(Some),
            None => Ok(None),
        }
    }

    /// Before an unlink, rmdir or rename of `dir/name` (when it exists): share modes and
    /// handle-caching breaks.
    fn may_remove(&self, cred: &Credentials, dir: FileId, name: &[u8]) -> Result<Option<FileId>, Errno> {
        let Some(s) = &self.sharing else { return Ok(None) };
        match run(self.ns.lookup(cred, dir, name)) {
            Ok((id, _)) => run(s.may_remove(id)).map(|()| Some(id)),
            // The operation itself says what is wrong.
            Err(_) => Ok(None),
        }
    }

    fn id(&self, ino: INodeNo) -> Result<FileId, Errno> {
        self.inodes.lock().expect("inodes lock").get(ino.0).ok_or(Errno::ESTALE)
    }

    /// Hands `id` to the kernel as an entry (one lookup counted).
    fn entry(&self, reply: ReplyEntry, id: FileId, a: &Attr) {
        match self.inodes.lock().expect("inodes lock").remember(id, a.fileid) {
            Some(ino) => reply.entry(&TTL, &fuse_attr(a, ino), Generation(generation(&id))),
            None => {
                tracing::warn!(file = ?id, fileid = a.fileid, "a file has the root's inode number; not shown");
                reply.error(Errno::EIO)
            }
        }
    }

    fn attr_reply(&self, reply: ReplyAttr, ino: INodeNo, r: Result<Attr, VfsError>) {
        match r {
            Ok(a) => reply.attr(&TTL, &fuse_attr(&a, ino.0)),
            Err(e) => reply.error(errno(e)),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn new_fh(
        &self,
        file: FileId,
        data: Option<Arc<File>>,
        held: Option<Arc<dyn HeldFile>>,
        passthrough: bool,
        key: Option<OpenKey>,
        write: bool,
        a: &Attr,
    ) -> FileHandle {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let seen = Mutex::new((a.size, a.mtime));
        let epoch = self.ns.backend().data_epoch();
        let open = OpenFile {
            file,
            data,
            held,
            passthrough,
            epoch,
            wrote: AtomicBool::new(false),
            changed: AtomicBool::new(false),
            key,
            write,
            seen,
        };
        self.opens.lock().expect("opens lock").insert(fh, Arc::new(open));
        if passthrough && write && self.is_cut_off() {
            // Granted just before the cut and answered after it: this one is fenced too.
            self.fencer().fence("a passthrough open for writing answered after the cut");
        }
        FileHandle(fh)
    }

    /// The open `fh`, else an open of `file` that still holds it: what is left of a file
    /// removed while open (the kernel asks for its attributes by inode, without the handle).
    fn holder(&self, fh: Option<FileHandle>, file: &FileId) -> Option<Arc<OpenFile>> {
        let holds = |o: &OpenFile| o.data.is_some() || o.held.is_some();
        fh.and_then(|fh| self.open_of(fh))
            .filter(|o| holds(o))
            .or_else(|| self.opens.lock().expect("opens lock").values().find(|o| o.file == *file && holds(o)).cloned())
    }

    /// An open served through nasgw: its own descriptor where the backend has one, else the
    /// backend's hold on the file.
    fn through_nasgw(&self, id: &FileId, write: bool) -> (Option<Arc<File>>, Option<Arc<dyn HeldFile>>) {
        let backend = self.ns.backend();
        match backend.open_data(id, write) {
            Ok(fd) => (Some(Arc::new(File::from(fd))), None),
            Err(_) => (None, backend.hold(id).ok()),
        }
    }

    fn open_of(&self, fh: FileHandle) -> Option<Arc<OpenFile>> {
        self.opens.lock().expect("opens lock").get(&fh.0).cloned()
    }

    /// The inode's backing file for passthrough, opened on its first open (read-write when
    /// the file system allows, so every open of the inode can share it). `None`: serve the
    /// open through nasgw.
    fn backing(
        &self,
        file: FileId,
        open_backing: impl FnOnce(&File) -> std::io::Result<BackingId>,
    ) -> Option<(Arc<BackingId>, Arc<File>)> {
        if !self.passthrough.load(Ordering::Relaxed) {
            return None;
        }
        let mut b = self.backings.lock().expect("backings lock");
        let epoch = self.ns.backend().data_epoch();
        if let Some(x) = b.get_mut(&file) {
            if x.epoch != epoch {
                // Callers refuse such opens first (`stale_backing`); never a dead descriptor.
                return None;
            }
            x.opens += 1;
            return Some((x.id.clone(), x.file.clone()));
        }
        // The backend's cached descriptor, not a new one: on GlusterFS-FUSE a new descriptor
        // costs an OPEN and, when it is closed, a FLUSH and a RELEASE on the bricks.
        let f = self.ns.backend().shared_data(&file).ok()?;
        match open_backing(&f) {
            Ok(id) => {
                let id = Arc::new(id);
                b.insert(file, Backing { id: id.clone(), file: f.clone(), opens: 1, epoch });
                Some((id, f))
            }
            Err(e) => {
                // EPERM without CAP_SYS_ADMIN, EOPNOTSUPP where the kernel lacks it: stop trying.
                tracing::warn!(error = %e, "FUSE passthrough refused by the kernel; serving reads and writes through nasgw");
                self.passthrough.store(false, Ordering::Relaxed);
                None
            }
        }
    }

    /// Whether the kernel's reopen of the backing file as the opener will succeed
    /// (`passthrough.rs`): always on a local file system; on others (GlusterFS's FUSE client)
    /// where the file's mode bits grant `cred` (`None`: read from the request when needed)
    /// the open's access.
    fn reopen_ok(&self, req: &Request, cred: Option<&Credentials>, a: &Attr, oflags: i32) -> bool {
        if !self.passthrough.load(Ordering::Relaxed) || self.ns.backend().is_local() || req.uid() == 0 {
            return true;
        }
        match cred {
            Some(c) => passthrough::reopen_allowed(a, c, oflags),
            // The owner's bits decide for the owner, whatever its groups: no /proc read.
            None if req.uid() == a.uid => {
                let owner = Credentials { uid: a.uid, gid: req.gid(), groups: Vec::new() };
                passthrough::reopen_allowed(a, &owner, oflags)
            }
            None => passthrough::reopen_allowed(a, &caller(req), oflags),
        }
    }

    /// Whether the inode's backing file belongs to an earlier data epoch (a GlusterFS client
    /// since replaced, or killed to fence a cut-off node: it fails every call) while older
    /// opens still use it. The kernel takes only passthrough opens of an inode that has a
    /// backing file, and only with that same backing file, which would fail every read and
    /// write: such an open is refused (EIO) until the program holding the old ones closes them.
    fn stale_backing(&self, file: &FileId) -> bool {
        let b = self.backings.lock().expect("backings lock");
        b.get(file).is_some_and(|x| x.epoch != self.ns.backend().data_epoch())
    }

    /// Whether this node is cut off from the cluster now.
    fn is_cut_off(&self) -> bool {
        self.cut_off.as_ref().is_some_and(|c| c.borrow().is_some())
    }

    fn fencer(&self) -> Fencer {
        Fencer { ns: self.ns.clone(), opens: self.opens.clone(), fenced: self.fenced.clone() }
    }

    fn release_backing(&self, file: &FileId) {
        let mut b = self.backings.lock().expect("backings lock");
        if let Some(x) = b.get_mut(file) {
            x.opens -= 1;
            if x.opens == 0 {
                b.remove(file);
            }
        }
    }

    /// Releases every lock `lock_owner` took on `file` (a close): one call to the lock table,
    /// made only when it took one through this mount.
    fn drop_locks(&self, file: FileId, lock_owner: LockOwner) {
        let took = self.lockers.lock().expect("lockers lock").remove(&(file, lock_owner.0));
        if let (true, Some(l)) = (took, &self.locks) {
            // Not answered in time: still carried out when the cluster can.
            let _ = run(bounded(self.limit, l.unlock_all(&file, self.owner(lock_owner))));
        }
    }

    fn owner(&self, lock_owner: LockOwner) -> Owner {
        let node = self.locks.as_ref().map_or(0, |l| l.node());
        Owner::Posix { node, id: self.owner_base | u128::from(lock_owner.0) }
    }

    /// At a close of `open` (opened for writing): when the file's size or modification time
    /// changed since the open last looked, its change is reported as an SMB client's close
    /// reports it: CHANGE_NOTIFY watchers on every node hear that it was modified, and other
    /// nodes' mounts forget its attributes. (Passthrough writes never reach nasgw: this is
    /// when it learns of them, as smbd reports a handle's writes at its close.)
    fn report_written(&self, open: &OpenFile) {
        let Ok(a) = run(self.ns.getattr(open.file)) else { return };
        let now = (a.size, a.mtime);
        let before = std::mem::replace(&mut *open.seen.lock().expect("seen lock"), now);
        if before == now {
            return;
        }
        let mut bits = crate::vfs::changes::what::LAST_WRITE;
        if before.0 != now.0 {
            bits |= crate::vfs::changes::what::SIZE;
        }
        self.ns.changes().attributes_changed(&open.file, true);
        run(self.ns.modified_file(open.file, bits));
    }

    /// A batch of `dir`'s entries from position `offset`, as `cred`: without attributes
    /// where the directory entries tell the types (the kernel needs nothing else), else with.
    fn read_batch(
        &self,
        cred: &Credentials,
        dir: FileId,
        offset: u64,
    ) -> Result<(Vec<dir_stream::Entry>, bool), VfsError> {
        let mut page = run(self.ns.readdir(cred, dir, offset, dir_stream::BATCH, false))?;
        if page.entries.iter().any(|e| e.kind.is_none() && e.plus.is_none()) {
            page = run(self.ns.readdir(cred, dir, offset, dir_stream::BATCH, true))?;
        }
        let entries = page
            .entries
            .into_iter()
            .filter_map(|e| {
                // An entry gone before its type was read is left out, as a later listing would.
                let t = e.kind.or_else(|| e.plus.as_ref().map(|(_, a)| a.ftype))?;
                Some(dir_stream::Entry { name: e.name, cookie: e.cookie, ino: e.fileid, kind: kind(t) })
            })
            .collect();
        Ok((entries, page.eof))
    }

    fn name<'a>(&self, name: &'a OsStr) -> &'a [u8] {
        name.as_bytes()
    }
}

impl Filesystem for VolumeFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.add_capabilities(InitFlags::FUSE_PARALLEL_DIROPS);
        if self.locks.is_some() {
            // fcntl and flock locks come to nasgw, into the cluster's lock table.
            let _ = config.add_capabilities(InitFlags::FUSE_POSIX_LOCKS | InitFlags::FUSE_FLOCK_LOCKS);
        }
        if self.want_passthrough {
            match config.add_capabilities(InitFlags::FUSE_PASSTHROUGH) {
                Ok(()) => {
                    let _ = config.set_max_stack_depth(1);
                    self.passthrough.store(true, Ordering::Relaxed);
                }
                Err(_) => tracing::info!("this kernel has no FUSE passthrough; reads and writes go through nasgw"),
            }
        }
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let cred = caller(req);
        let dir = match self.id(parent) {
            Ok(d) => d,
            Err(e) => return reply.error(e),
        };
        match run(self.ns.lookup(&cred, dir, self.name(name))) {
            Ok((id, a)) => self.entry(reply, id, &a),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.inodes.lock().expect("inodes lock").forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let id = match self.id(ino) {
            Ok(id) => id,
            Err(e) => return reply.error(e),
        };
        if let Some(s) = &self.sharing {
            run(s.ensure_cached(id));
        }
        match run(self.ns.getattr(id)) {
            // A file removed while open (`fstat` of its descriptor): its own descriptor.
            Err(VfsError::Stale | VfsError::NotFound) => match self.holder(fh, &id) {
                Some(o) => match (&o.data, &o.held) {
                    (Some(f), _) => match f.metadata() {
                        Ok(m) => reply.attr(&TTL, &super::convert::attr_of_metadata(&m, ino.0)),
                        Err(e) => reply.error(io_errno(&e)),
                    },
                    (None, Some(h)) => self.attr_reply(reply, ino, h.getattr()),
                    (None, None) => reply.error(Errno::ENOENT),
                },
                None => reply.error(Errno::ENOENT),
            },
            r => self.attr_reply(reply, ino, r),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let id = match self.id(ino) {
            Ok(id) => id,
            Err(e) => return reply.error(e),
        };
        let set = set_attr(mode, uid, gid, size, atime, mtime);
        if size.is_some() || mtime.is_some() {
            // What each open's close reports as a modification (see `flush`).
            for o in self.opens.lock().expect("opens lock").values().filter(|o| o.file == id) {
                o.changed.store(true, Ordering::Relaxed);
            }
        }
        if let (Some(_), Some(s)) = (size, &self.sharing) {
            if let Err(e) = run(s.may_resize(id)) {
                return reply.error(e);
            }
        }
        // `ftruncate` of a descriptor open for writing: the kernel checked the descriptor,
        // so the file's mode (which may forbid the caller now) does not matter.
        let cred = if fh.is_some() && set == (SetAttr { size, ..SetAttr::default() }) {
            Credentials::root()
        } else {
            caller(req)
        };
        match run(self.ns.setattr(&cred, id, set)) {
            // `ftruncate` of a file removed while open: through its descriptor.
            Err(VfsError::Stale | VfsError::NotFound) if set == (SetAttr { size, ..SetAttr::default() }) => {
                let Some(o) = self.holder(fh, &id) else { return reply.error(Errno::ENOENT) };
                let size = size.unwrap_or(0);
                match (&o.data, &o.held) {
                    (Some(f), _) => match f.set_len(size).and_then(|()| f.metadata()) {
                        Ok(m) => reply.attr(&TTL, &super::convert::attr_of_metadata(&m, ino.0)),
                        Err(e) => reply.error(io_errno(&e)),
                    },
                    (None, Some(h)) => self.attr_reply(reply, ino, h.set_len(size).and_then(|()| h.getattr())),
                    (None, None) => reply.error(Errno::ENOENT),
                }
            }
            r => self.attr_reply(reply, ino, r),
        }
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        let cred = caller(req);
        match self.id(ino).map(|id| run(self.ns.readlink(&cred, id))) {
            Ok(Ok(t)) => reply.data(&t),
            Ok(Err(e)) => reply.error(errno(e)),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, rdev: u32, reply: ReplyEntry) {
        let cred = caller(req);
        let dir = match self.id(parent) {
            Ok(d) => d,
            Err(e) => return reply.error(e),
        };
        let perm = mode & !umask & 0o7777;
        let dev = libc::dev_t::from(rdev);
        let (major, minor) = (libc::major(dev), libc::minor(dev));
        let r = match mode & libc::S_IFMT {
            libc::S_IFREG | 0 => {
                run(self.ns.create(&cred, dir, self.name(name), perm, CreateHow::Guarded(SetAttr::default())))
            }
            libc::S_IFIFO => run(self.ns.mknod(&cred, dir, self.name(name), SpecialFile::Fifo, perm)),
            libc::S_IFSOCK => run(self.ns.mknod(&cred, dir, self.name(name), SpecialFile::Socket, perm)),
            libc::S_IFCHR => {
                run(self.ns.mknod(&cred, dir, self.name(name), SpecialFile::CharDevice(major, minor), perm))
            }
            libc::S_IFBLK => {
                run(self.ns.mknod(&cred, dir, self.name(name), SpecialFile::BlockDevice(major, minor), perm))
            }
            _ => Err(VfsError::Invalid),
        };
        match r {
            Ok((id, a)) => self.entry(reply, id, &a),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let cred = caller(req);
        let dir = match self.id(parent) {
            Ok(d) => d,
            Err(e) => return reply.error(e),
        };
        match run(self.ns.mkdir(&cred, dir, self.name(name), mode & !umask & 0o7777)) {
            Ok((id, a)) => self.entry(reply, id, &a),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let cred = caller(req);
        let file = match self.id(parent).and_then(|dir| self.may_remove(&cred, dir, self.name(name))) {
            Ok(f) => f,
            Err(e) => return reply.error(e),
        };
        match self.id(parent).map(|dir| run(self.ns.remove(&cred, dir, self.name(name), file))) {
            Ok(Ok(())) => reply.ok(),
            Ok(Err(e)) => reply.error(errno(e)),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let cred = caller(req);
        if let Err(e) = self.id(parent).and_then(|dir| self.may_remove(&cred, dir, self.name(name))) {
            return reply.error(e);
        }
        match self.id(parent).map(|dir| run(self.ns.rmdir(&cred, dir, self.name(name)))) {
            Ok(Ok(())) => reply.ok(),
            Ok(Err(e)) => reply.error(errno(e)),
            Err(e) => reply.error(e),
        }
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &std::path::Path, reply: ReplyEntry) {
        let cred = caller(req);
        let dir = match self.id(parent) {
            Ok(d) => d,
            Err(e) => return reply.error(e),
        };
        match run(self.ns.symlink(&cred, dir, self.name(link_name), target.as_os_str().as_bytes())) {
            Ok((id, a)) => self.entry(reply, id, &a),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let cred = caller(req);
        let (from, to) = match (self.id(parent), self.id(newparent)) {
            (Ok(f), Ok(t)) => (f, t),
            (Err(e), _) | (_, Err(e)) => return reply.error(e),
        };
        let mut flags = flags.bits();
        if flags & libc::RENAME_NOREPLACE != 0 {
            // No atomic no-replace rename in the namespace: refuse when the target exists
            // (a race with another client can still replace it, as over NFSv3).
            match run(self.ns.lookup(&cred, to, self.name(newname))) {
                Ok(_) => return reply.error(Errno::EEXIST),
                Err(VfsError::NotFound) => flags &= !libc::RENAME_NOREPLACE,
                Err(e) => return reply.error(errno(e)),
            }
        }
        if flags != 0 {
            return reply.error(Errno::EINVAL);
        }
        // The file renamed and the one it replaces: neither may be denied delete.
        let renamed = match self.may_remove(&cred, from, self.name(name)) {
            Ok(r) => r,
            Err(e) => return reply.error(e),
        };
        let replaced = match self.may_remove(&cred, to, self.name(newname)) {
            Ok(r) => r,
            Err(e) => return reply.error(e),
        };
        match run(self.ns.rename(&cred, from, self.name(name), to, self.name(newname), replaced)) {
            Ok(()) => {
                // SMB opens of the file on any node act on its new name from now on.
                if let (Some(s), Some(file)) = (&self.sharing, renamed) {
                    run(s.renamed(file, to, self.name(newname)));
                }
                reply.ok()
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn link(&self, req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        let cred = caller(req);
        let (id, dir) = match (self.id(ino), self.id(newparent)) {
            (Ok(i), Ok(d)) => (i, d),
            (Err(e), _) | (_, Err(e)) => return reply.error(e),
        };
        match run(self.ns.link(&cred, id, dir, self.name(newname))) {
            Ok(a) => self.entry(reply, id, &a),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let id = match self.id(ino) {
            Ok(id) => id,
            Err(e) => return reply.error(e),
        };
        let a = match run(self.ns.getattr(id)) {
            Ok(a) => a,
            Err(e) => return reply.error(errno(e)),
        };
        if a.ftype != FileType::Regular {
            // The kernel never opens a directory here; special files are not served.
            return reply.error(Errno::from_i32(libc::ENXIO));
        }
        if self.stale_backing(&id) {
            return reply.error(Errno::EIO);
        }
        let write = flags.0 & libc::O_ACCMODE != libc::O_RDONLY;
        let shared = match self.share_open(id, ino.0, flags.0) {
            Ok(s) => s,
            Err(e) => return reply.error(e),
        };
        let key = shared.map(|s| s.key);
        // An open refused passthrough (by the reopen's permission check) is direct I/O: the
        // kernel refuses (EIO) an open using the page cache while the inode has passthrough
        // opens, and one refused passthrough while it has such opens.
        let pass = self.reopen_ok(req, None, &a, flags.0);
        let backing = if pass { self.backing(id, |f| reply.open_backing(f)) } else { None };
        match backing {
            Some((b, f)) => {
                reply.opened_passthrough(self.new_fh(id, Some(f), None, true, key, write, &a), FopenFlags::empty(), &b)
            }
            None => {
                let (data, held) = self.through_nasgw(&id, write);
                // The page cache stays only while the mount's read lease held since it was filled.
                let keep = if !pass {
                    FopenFlags::FOPEN_DIRECT_IO
                } else if shared.is_some_and(|s| s.keep_cache) {
                    FopenFlags::FOPEN_KEEP_CACHE
                } else {
                    FopenFlags::empty()
                };
                reply.opened(self.new_fh(id, data, held, false, key, write, &a), keep)
            }
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some(open) = self.open_of(fh) else { return reply.error(Errno::EBADF) };
        if let Some(s) = &self.sharing {
            // The kernel caches what this returns: hold the lease that tells it of changes.
            run(s.ensure_cached(open.file));
        }
        if let Some(f) = &open.data {
            let mut buf = vec![0u8; size as usize];
            let mut n = 0;
            while n < buf.len() {
                match f.read_at(&mut buf[n..], offset + n as u64) {
                    Ok(0) => break,
                    Ok(k) => n += k,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return reply.error(Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))),
                }
            }
            return reply.data(&buf[..n]);
        }
        // The kernel checked the descriptor's access mode at open.
        match run(self.ns.read(&Credentials::root(), open.file, offset, size)) {
            Ok((data, _, _)) => reply.data(&data),
            // Removed while open: through the backend's hold on it.
            Err(VfsError::Stale | VfsError::NotFound) if open.held.is_some() => {
                match open.held.as_ref().map(|h| h.read(offset, size)) {
                    Some(Ok(data)) => reply.data(&data),
                    Some(Err(e)) => reply.error(errno(e)),
                    None => reply.error(Errno::ENOENT),
                }
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let Some(open) = self.open_of(fh) else { return reply.error(Errno::EBADF) };
        if self.is_cut_off() {
            // Other nodes may have given the file to their clients: nothing more of this node's.
            return reply.error(Errno::EIO);
        }
        let stable = if flags.0 & libc::O_SYNC == libc::O_SYNC {
            Stability::FileSync
        } else if flags.0 & libc::O_DSYNC != 0 {
            Stability::DataSync
        } else {
            Stability::Unstable
        };
        open.wrote.store(true, Ordering::Relaxed);
        open.changed.store(true, Ordering::Relaxed);
        if let Some(f) = &open.data {
            let r = f.write_all_at(data, offset).and_then(|()| match stable {
                Stability::FileSync => f.sync_all(),
                Stability::DataSync => f.sync_data(),
                Stability::Unstable => Ok(()),
            });
            return match r {
                Ok(()) => reply.written(data.len() as u32),
                Err(e) => reply.error(Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))),
            };
        }
        match run(self.ns.write_from(&Credentials::root(), open.file, offset, data, stable)) {
            Ok((n, _, _)) => reply.written(n),
            // Removed while open: through the backend's hold on it.
            Err(VfsError::Stale | VfsError::NotFound) if open.held.is_some() => {
                let h = open.held.as_ref().expect("held");
                let r = h.write(offset, data).and_then(|()| match stable {
                    Stability::Unstable => Ok(()),
                    _ => h.sync(),
                });
                match r {
                    Ok(()) => reply.written(data.len() as u32),
                    Err(e) => reply.error(errno(e)),
                }
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, lock_owner: LockOwner, reply: ReplyEmpty) {
        // Every close of a descriptor drops the closing process's POSIX locks on the file (the
        // kernel keeps none itself with FUSE_POSIX_LOCKS: it sends FLUSH with the owner).
        if let Ok(file) = self.id(_ino) {
            self.drop_locks(file, lock_owner);
        }
        let Some(open) = self.open_of(fh) else { return reply.ok() };
        // What a close promises other nodes: the volume client's write-behind is flushed.
        if let Some(f) = &open.data {
            // Closing a duplicate is a close to the volume's client (GlusterFS's FUSE client
            // then flushes write-behind) without giving up the descriptor.
            if let Err(e) = f.try_clone() {
                return reply.error(Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO)));
            }
        } else if open.wrote.swap(false, Ordering::Relaxed) {
            match run(self.ns.flush(open.file)) {
                // Removed while open: nobody else can open it to see the writes.
                Ok(()) | Err(VfsError::Stale | VfsError::NotFound) if open.held.is_some() => {}
                Ok(()) => {}
                Err(e) => return reply.error(errno(e)),
            }
        }
        // Writes through `data` bypass nasgw (passthrough): look every time.
        if open.write && (open.data.is_some() || open.changed.swap(false, Ordering::Relaxed)) {
            self.report_written(&open);
        }
        reply.ok()
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let open = self.opens.lock().expect("opens lock").remove(&fh.0);
        if let (Some(o), Some(owner)) = (&open, lock_owner) {
            // flock locks belong to the open file; POSIX ones were dropped at close already.
            self.drop_locks(o.file, owner);
        }
        if let (Some(o), Some(s)) = (&open, &self.sharing) {
            if let Some(key) = o.key {
                run(s.close(o.file, key, o.write));
            }
        }
        if let Some(o) = open.filter(|o| o.passthrough) {
            self.release_backing(&o.file);
        }
        reply.ok()
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        match self.id(ino).map(|id| run(self.ns.fsync(id))) {
            Ok(Ok(())) => reply.ok(),
            // Removed while open: through the open's descriptor or the backend's hold on it.
            Ok(Err(VfsError::Stale | VfsError::NotFound)) => match self.open_of(fh) {
                Some(o) => match (&o.data, &o.held) {
                    (Some(f), _) => match f.sync_all() {
                        Ok(()) => reply.ok(),
                        Err(e) => reply.error(io_errno(&e)),
                    },
                    (None, Some(h)) => match h.sync() {
                        Ok(()) => reply.ok(),
                        Err(e) => reply.error(errno(e)),
                    },
                    (None, None) => reply.error(Errno::ENOENT),
                },
                None => reply.error(Errno::ENOENT),
            },
            Ok(Err(e)) => reply.error(errno(e)),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.dirs.lock().expect("dirs lock").insert(fh, Arc::default());
        reply.opened(FileHandle(fh), FopenFlags::empty());
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        self.dirs.lock().expect("dirs lock").remove(&fh.0);
        reply.ok();
    }

    fn readdir(&self, req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let dir = match self.id(ino) {
            Ok(d) => d,
            Err(e) => return reply.error(e),
        };
        // (A handle the mount did not hand out gets a stream of its own for this page.)
        let stream = self.dirs.lock().expect("dirs lock").get(&fh.0).cloned().unwrap_or_default();
        let mut stream = stream.lock().expect("dir stream lock");
        let start = match stream.start(offset) {
            Start::At(i) => i,
            Start::Read => match self.read_batch(&caller(req), dir, offset) {
                Ok((entries, eof)) => {
                    stream.fill(offset, entries, eof);
                    0
                }
                Err(e) => return reply.error(errno(e)),
            },
        };
        // `.` and `..` are not listed by the namespace; programs do not need them from here
        // (the kernel resolves both itself).
        let mut end = start;
        for e in stream.entries_from(start) {
            if reply.add(INodeNo(e.ino), e.cookie, e.kind, OsStr::from_bytes(&e.name)) {
                break;
            }
            end += 1;
        }
        stream.served_to(end);
        reply.ok()
    }

    fn fsyncdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        match self.id(ino).map(|id| run(self.ns.fsync(id))) {
            Ok(Ok(())) => reply.ok(),
            Ok(Err(e)) => reply.error(errno(e)),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match run(self.ns.statfs(self.ns.root())) {
            Ok(s) => {
                let bs = u64::from(s.block_size.max(512));
                reply.statfs(
                    s.total_bytes / bs,
                    s.free_bytes / bs,
                    s.avail_bytes / bs,
                    s.total_files,
                    s.free_files,
                    bs as u32,
                    s.name_max,
                    bs as u32,
                )
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let cred = caller(req);
        let name = name.as_bytes();
        if !name.starts_with(b"user.") {
            return reply.error(Errno::from_i32(libc::EOPNOTSUPP));
        }
        let id = match self.id(ino) {
            Ok(id) => id,
            Err(e) => return reply.error(e),
        };
        if flags & (libc::XATTR_CREATE | libc::XATTR_REPLACE) != 0 {
            let exists = match run(self.ns.get_xattr(&cred, id, name)) {
                Ok(v) => v.is_some(),
                Err(e) => return reply.error(errno(e)),
            };
            if exists && flags & libc::XATTR_CREATE != 0 {
                return reply.error(Errno::EEXIST);
            }
            if !exists && flags & libc::XATTR_REPLACE != 0 {
                return reply.error(Errno::from_i32(libc::ENODATA));
            }
        }
        match run(self.ns.set_xattr(&cred, id, name, value)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let name = name.as_bytes();
        // Only the `user.` namespace is the volume's (DOS attributes and streams live there);
        // `security.*` (asked on every write for capabilities) and the rest have nothing.
        if !name.starts_with(b"user.") {
            return reply.error(Errno::from_i32(libc::ENODATA));
        }
        let cred = caller(req);
        let id = match self.id(ino) {
            Ok(id) => id,
            Err(e) => return reply.error(e),
        };
        match run(self.ns.get_xattr(&cred, id, name)) {
            Ok(Some(v)) => xattr_reply(reply, size, &v),
            Ok(None) => reply.error(Errno::from_i32(libc::ENODATA)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let cred = caller(req);
        let id = match self.id(ino) {
            Ok(id) => id,
            Err(e) => return reply.error(e),
        };
        match run(self.ns.list_xattrs(&cred, id)) {
            Ok(names) => {
                let mut out = Vec::new();
                for n in names {
                    out.extend_from_slice(&n);
                    out.push(0);
                }
                xattr_reply(reply, size, &out)
            }
            Err(VfsError::NotSupported) => xattr_reply(reply, size, &[]),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name.as_bytes();
        if !name.starts_with(b"user.") {
            return reply.error(Errno::from_i32(libc::ENODATA));
        }
        let cred = caller(req);
        match self.id(ino).map(|id| run(self.ns.remove_xattr(&cred, id, name))) {
            Ok(Ok(())) => reply.ok(),
            Ok(Err(VfsError::NotFound)) => reply.error(Errno::from_i32(libc::ENODATA)),
            Ok(Err(e)) => reply.error(errno(e)),
            Err(e) => reply.error(e),
        }
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let cred = caller(req);
        let a = match self.id(ino).map(|id| run(self.ns.getattr(id))) {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => return reply.error(errno(e)),
            Err(e) => return reply.error(e),
        };
        let m = mask.bits();
        let mut want = 0;
        if m & libc::R_OK != 0 {
            want |= access::READ;
        }
        if m & libc::W_OK != 0 {
            want |= access::MODIFY;
        }
        if m & libc::X_OK != 0 {
            want |= if a.ftype == FileType::Directory { access::LOOKUP } else { access::EXECUTE };
        }
        if want == 0 || access::granted(&a, &cred, want) == want {
            reply.ok()
        } else {
            reply.error(Errno::EACCES)
        }
    }

    fn getlk(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        reply: ReplyLock,
    ) {
        let (Some(l), Ok(file)) = (&self.locks, self.id(ino)) else { return reply.error(Errno::EIO) };
        let probe = RangeLock {
            owner: self.owner(lock_owner),
            offset: start,
            len: lock_len(start, end),
            exclusive: typ == libc::F_WRLCK,
        };
        match run(bounded(self.limit, l.record(&file))) {
            Ok(r) => match r.conflicting(&probe) {
                Some(c) => {
                    let end = if c.len == 0 || c.offset.saturating_add(c.len) >= i64::MAX as u64 {
                        i64::MAX as u64
                    } else {
                        c.offset + c.len - 1
                    };
                    // The holder may be an SMB client or another node: no local pid to name.
                    reply.locked(c.offset, end, if c.exclusive { libc::F_WRLCK } else { libc::F_RDLCK }, 0)
                }
                None => reply.locked(start, end, libc::F_UNLCK, pid),
            },
            Err(e) => reply.error(lock_errno(e)),
        }
    }

    fn setlk(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        _pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        let (Some(l), Ok(file)) = (self.locks.clone(), self.id(ino)) else { return reply.error(Errno::EIO) };
        let owner = self.owner(lock_owner);
        let len = lock_len(start, end);
        if typ == libc::F_UNLCK {
            return match run(bounded(self.limit, l.unlock(&file, owner, start, len))) {
                Ok(()) | Err(Conflict::NotLocked) => reply.ok(),
                Err(e) => reply.error(lock_errno(e)),
            };
        }
        let lock = RangeLock { owner, offset: start, len, exclusive: typ == libc::F_WRLCK };
        self.lockers.lock().expect("lockers lock").insert((file, lock_owner.0));
        let (limit, rt) = (self.limit, self.rt.clone());
        match run(lock_bounded(&l, &file, lock, limit, rt.as_ref())) {
            Ok(()) => return reply.ok(),
            Err(Conflict::Locked) if sleep => {}
            Err(e) => return reply.error(lock_errno(e)),
        }
        // F_SETLKW: wait on a thread of its own (the FUSE threads keep serving), retrying on
        // every change of the file's record and every LOCK_RETRY. The wait ends (EINTR) when
        // the waiting thread gave up (killed or signalled: `fuser` drops the kernel's
        // INTERRUPT, so its /proc status is watched) or the open it came through is released,
        // so a killed waiter never gets a lock afterwards.
        let opens = self.opens.clone();
        let pid = req.pid();
        let spawned = std::thread::Builder::new().name("nasgw-fuse-lockw".into()).spawn(move || {
            run(async move {
                let gone = || {
                    !opens.lock().expect("opens lock").contains_key(&fh.0)
                        || (pid != 0
                            && std::fs::read_to_string(format!("/proc/{pid}/status"))
                                .map_or(true, |s| super::convert::gave_up_waiting(&s)))
                };
                loop {
                    let changed = l.changes(&file);
                    let wake = changed.notified();
                    tokio::pin!(wake);
                    wake.as_mut().enable();
                    match lock_bounded(&l, &file, lock, limit, rt.as_ref()).await {
                        Ok(()) => {
                            if !gone() {
                                return reply.ok();
                            }
                            let _ = bounded(limit, l.unlock(&file, owner, start, len)).await;
                            return reply.error(Errno::EINTR);
                        }
                        Err(Conflict::Locked) => {}
                        Err(e) => return reply.error(lock_errno(e)),
                    }
                    let until = tokio::time::Instant::now() + LOCK_RETRY;
                    loop {
                        if gone() {
                            return reply.error(Errno::EINTR);
                        }
                        let left = until.saturating_duration_since(tokio::time::Instant::now());
                        if left.is_zero() || tokio::time::timeout(left.min(WAITER_CHECK), wake.as_mut()).await.is_ok() {
                            break;
                        }
                    }
                }
            })
        });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start a lock waiter");
        }
    }

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        // No file of the volume answers an ioctl (programs ask `isatty` of every file they
        // open: TCGETS), as on a local file system: ENOTTY, quietly.
        reply.error(Errno::from_i32(libc::ENOTTY));
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let cred = caller(req);
        let dir = match self.id(parent) {
            Ok(d) => d,
            Err(e) => return reply.error(e),
        };
        let how = if flags & libc::O_EXCL != 0 {
            CreateHow::Guarded(SetAttr::default())
        } else {
            let size = (flags & libc::O_TRUNC != 0).then_some(0);
            CreateHow::Unchecked(SetAttr { size, ..SetAttr::default() })
        };
        let (id, a) = match run(self.ns.create(&cred, dir, self.name(name), mode & !umask & 0o7777, how)) {
            Ok(x) => x,
            Err(e) => return reply.error(errno(e)),
        };
        let ino = match self.inodes.lock().expect("inodes lock").remember(id, a.fileid) {
            Some(ino) => ino,
            None => return reply.error(Errno::EIO),
        };
        if self.stale_backing(&id) {
            // An existing file (not excluded) whose old opens hold a dead backing file.
            self.inodes.lock().expect("inodes lock").forget(ino, 1);
            return reply.error(Errno::EIO);
        }
        let fa = fuse_attr(&a, ino);
        let g = Generation(generation(&id));
        let write = flags & libc::O_ACCMODE != libc::O_RDONLY;
        let key = match self.share_open(id, ino, flags) {
            Ok(s) => s.map(|s| s.key),
            Err(e) => {
                // The kernel was handed the entry: give its lookup back.
                self.inodes.lock().expect("inodes lock").forget(ino, 1);
                return reply.error(e);
            }
        };
        // The creator of a file whose mode refuses it (`open(O_CREAT | O_RDWR, 0)`) may use
        // it, but the kernel's reopen of a backing file on GlusterFS would be refused.
        let pass = self.reopen_ok(req, Some(&cred), &a, flags);
        let backing = if pass { self.backing(id, |f| reply.open_backing(f)) } else { None };
        match backing {
            Some((b, f)) => reply.created_passthrough(
                &TTL,
                &fa,
                g,
                self.new_fh(id, Some(f), None, true, key, write, &a),
                FopenFlags::empty(),
                &b,
            ),
            None => {
                let (data, held) = self.through_nasgw(&id, write);
                let direct = if pass { FopenFlags::empty() } else { FopenFlags::FOPEN_DIRECT_IO };
                reply.created(&TTL, &fa, g, self.new_fh(id, data, held, false, key, write, &a), direct)
            }
        }
    }
}

/// What fences the mount's passthrough writers when the node is cut off from the cluster.
///
/// A passthrough open's reads and writes go from the kernel straight to the backend's file,
/// never through nasgw, so refusing requests cannot stop them: the backend revokes its data
/// descriptors instead ([`crate::vfs::Backend::revoke_data`]; GlusterFS-FUSE: its client is
/// killed, which aborts the connection every backing file is on). Only when it matters: some
/// open for writing uses a backing file of the current data epoch (readers are left alone,
/// and so is a mount nobody writes through), once per data epoch.
#[derive(Clone)]
struct Fencer {
    ns: Namespace,
    opens: Arc<Mutex<HashMap<u64, Arc<OpenFile>>>>,
    fenced: Arc<Mutex<Option<u64>>>,
}

impl Fencer {
    /// Revokes the backend's data descriptors if passthrough writers use them (blocks until
    /// the backend has done so).
    fn fence(&self, why: &str) {
        let backend = self.ns.backend();
        let epoch = backend.data_epoch();
        let mut fenced = self.fenced.lock().expect("fenced lock");
        if *fenced == Some(epoch) {
            return;
        }
        let writers = self
            .opens
            .lock()
            .expect("opens lock")
            .values()
            .filter(|o| o.passthrough && o.write && o.epoch == epoch)
            .count();
        if writers == 0 {
            tracing::info!(reason = %why, "cut off from the cluster; no local program writes through passthrough");
            return;
        }
        *fenced = Some(epoch);
        if backend.revoke_data(&format!("{why}; {writers} local descriptor(s) open for writing through passthrough")) {
            return;
        }
        tracing::error!(
            reason = %why,
            writers,
            "cut off from the cluster, but this backend cannot revoke passthrough descriptors: local programs may still write"
        );
    }
}

/// Fences the mount's passthrough writers each time the node is cut off (`crate::cut_off`).
async fn fence_on_cut_off(mut cut_off: tokio::sync::watch::Receiver<Option<CutOff>>, fencer: Fencer) {
    loop {
        let cut = *cut_off.borrow_and_update();
        match cut {
            Some(why) => {
                let f = fencer.clone();
                // The backend waits for its client to exit: off the runtime's workers.
                let _ = tokio::task::spawn_blocking(move || f.fence(&why.to_string())).await;
            }
            // A new cut-off fences whatever is written through by then.
            None => *fencer.fenced.lock().expect("fenced lock") = None,
        }
        if cut_off.changed().await.is_err() {
            return;
        }
    }
}

/// A FUSE lock range (`end` inclusive, `OFFSET_MAX` for "to the end") as the lock table's
/// length (POSIX "to the end": `u64::MAX - start`).
fn lock_len(start: u64, end: u64) -> u64 {
    if end >= i64::MAX as u64 {
        u64::MAX - start
    } else {
        end.saturating_sub(start) + 1
    }
}

/// The errno of a lock-table refusal: another owner's lock (EAGAIN), the cluster not
/// answering (EIO, after the lock service's own bound).
/// Takes `lock` within `limit`; a grant that comes after that is given back (on `rt`: the
/// caller's answer, EIO, is already on its way). (An unanswered upgrade of a range the owner
/// held gives that range back too: the node is cut off, and its locks go anyway.)
async fn lock_bounded(
    l: &Arc<LockService>,
    file: &FileId,
    lock: RangeLock,
    limit: Duration,
    rt: Option<&tokio::runtime::Handle>,
) -> Result<(), Conflict> {
    match tokio::time::timeout(limit, l.lock_range(file, lock)).await {
        Ok(r) => r,
        Err(_) => {
            if let Some(rt) = rt {
                let (l, file) = (l.clone(), *file);
                rt.spawn(async move {
                    let _ = l.unlock(&file, lock.owner, lock.offset, lock.len).await;
                });
            }
            Err(Conflict::Unavailable)
        }
    }
}

/// The errno of a failed system call on a descriptor.
fn io_errno(e: &std::io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

fn lock_errno(c: Conflict) -> Errno {
    match c {
        Conflict::Locked | Conflict::Sharing => Errno::EAGAIN,
        _ => Errno::EIO,
    }
}

/// Answers a getxattr/listxattr: the size when asked for it (`size` 0), `ERANGE` when the
/// caller's buffer is too small, else the bytes.
fn xattr_reply(reply: ReplyXattr, size: u32, v: &[u8]) {
    if size == 0 {
        reply.size(v.len() as u32)
    } else if (size as usize) < v.len() {
        reply.error(Errno::from_i32(libc::ERANGE))
    } else {
        reply.data(v)
    }
}
