//! The POSIX backend: serves a directory (a local file system, or a GlusterFS FUSE mount).
//!
//! - Objects are reached through `O_PATH` descriptors kept in a bounded cache keyed by
//!   [`FileId`]; a regular file gets one I/O descriptor, opened once, so READ/WRITE never
//!   reopen per request.
//! - Every name is resolved with `openat(dir_fd, name, O_PATH | O_NOFOLLOW)`: one validated
//!   component at a time, symlinks never followed, so nothing reaches outside the root.
//! - When the server runs as root, each metadata operation runs under the caller's identity
//!   (per-thread `setfsuid`/`setfsgid`/`setgroups`, like NFS-Ganesha): the kernel checks the
//!   caller's permissions and new files belong to the caller. Reads and writes go through the
//!   shared cached descriptor, so they are checked here against the mode bits (with the owner
//!   override knfsd applies). Unprivileged, everything runs as the server's user.
//! - Identities: see [`identity`].

pub mod fs_events;
pub mod gfid;
pub mod identity;
mod listing;
pub mod listings;
pub mod sys;
pub mod watched_attrs;
mod xattr;

use std::collections::VecDeque;
use std::ffi::CStr;
use std::fs::File;
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lru::LruCache;
use sha2::{Digest, Sha256};

use self::identity::{Identity, IdentityKind};
use self::listings::Listings;
use self::sys::{ThreadIdentity, UtimeArg};
use super::access;
use super::backend::{conflict_of, flock_of, Backend, OwnerLocks};
use super::cred::Credentials;
use super::disk_pool::retire;
use super::error::{VfsError, VfsResult};
use super::name::Name;
use super::open_files::OpenFiles;
use super::types::{
    Attr, CreateHow, FileId, FileSlice, FileType, FsStat, ReadData, ReadDir, SetAttr, SetTime, SpecialFile, Stability,
    Timestamp, VolumeId,
};

/// How a [`PosixBackend`] is set up.
#[derive(Clone, Debug)]
pub struct PosixOptions {
    /// The volume's name: the volume id derives from it, so every node serving the same volume
    /// agrees.
    pub volume_name: String,
    /// Identity scheme; `None` picks kernel handles when the server may use them (root, not a
    /// FUSE mount), else inode numbers.
    pub identity: Option<IdentityKind>,
    /// Most objects kept open at once.
    pub cache_entries: usize,
    /// On a network mount (not a `LOCAL_FS`), most data descriptors kept open at once: each
    /// is an open file on the servers (see [`crate::vfs::open_files`]).
    pub open_files: usize,
}

impl PosixOptions {
    /// Defaults for volume `name`.
    pub fn new(name: &str) -> Self {
        Self {
            volume_name: name.to_string(),
            identity: None,
            cache_entries: 8192,
            open_files: crate::vfs::open_files::DEFAULT_OPEN_FILES,
        }
    }
}

/// An object the backend holds open.
struct Node {
    /// `O_PATH | O_NOFOLLOW` descriptor: anchor for `*at` calls and attribute reads.
    path_fd: OwnedFd,
    ftype: FileType,
    /// Descriptor for data I/O of a regular file, opened on first use (shared with replies
    /// that send from it); on a network mount closed again beyond `[volume] open_files`.
    io: Mutex<Option<Arc<File>>>,
    /// When a WRITE last asked the file system for fresh attributes (see `write` in
    /// [`PosixBackend`]'s `Backend` impl).
    checked: Mutex<Option<Instant>>,
}

impl Node {
    fn new(path_fd: OwnedFd, ftype: FileType) -> Node {
        Node { path_fd, ftype, io: Mutex::new(None), checked: Mutex::new(None) }
    }

    /// The data descriptor, if one is open.
    fn io(&self) -> Option<Arc<File>> {
        lock(&self.io).clone()
    }
}

/// How long a WRITE may rely on the attributes the kernel already has (a network mount's).
const WRITE_CHECK: Duration = Duration::from_secs(1);

const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;

/// Local file systems (ext2/3/4, XFS, Btrfs, tmpfs): metadata is answered from this kernel's
/// caches, and time stamps come from its clock, which [`listings`] relies on.
const LOCAL_FS: [i64; 4] = [0xEF53, 0x5846_5342, 0x9123_683E, 0x0102_1994];

/// Most descriptors one sweep for removed files stats on a network mount: each is a round
/// trip to its client and often to the servers (a full cache of 8192 open files was 800 a
/// second at one sweep every 10 s); a whole cache is covered in a few minutes.
const SWEEP_SLICE: usize = 1024;

/// Most GFIDs remembered by inode number (24 bytes each, beside the cache's own).
const KNOWN_GFIDS: usize = 131_072;

/// Most directory entries remembered (about 100 bytes each).
const LISTED_ENTRIES: usize = 131_072;

/// A directory served as a volume.
pub struct PosixBackend {
    root: Arc<Node>,
    /// The root opened for reading: `open_by_handle_at` refuses an `O_PATH` mount descriptor.
    mount_fd: OwnedFd,
    root_id: FileId,
    root_dev: (u32, u32),
    volume_id: VolumeId,
    fsid: u64,
    kind: IdentityKind,
    /// Server runs as root: operations switch to the caller's identity.
    privileged: bool,
    /// The root is on a local file system (see [`LOCAL_FS`]).
    local: bool,
    umask: u32,
    nodes: Mutex<LruCache<FileId, Arc<Node>>>,
    /// On a network mount, the nodes holding a data descriptor, within `open_files`.
    open_files: Option<OpenFiles<FileId>>,
    /// Inode identities: inode number -> path (relative to the root) where it was last seen.
    hints: Mutex<LruCache<u64, Vec<u8>>>,
    /// Listings of recently listed directories, while those are unchanged: only with kernel
    /// handles on a local file system (see [`listings`]).
    listings: Option<Mutex<Listings>>,
    /// Attributes of listed objects while the file system's change events prove them current:
    /// only where listings are remembered and the kernel reports those events (see
    /// [`fs_events`]).
    listed_attrs: Option<listing::ListedAttrs>,
    /// Inode identities a tree scan just failed to find: answered `Stale` without another scan
    /// for [`STALE_MEMORY`], so a client retrying a deleted file's handle cannot make the server
    /// walk the whole volume on every request.
    recently_stale: Mutex<LruCache<FileId, Instant>>,
    /// Where the next sweep for removed files starts on a network mount (see
    /// [`Backend::release_removed`]).
    sweep_at: Mutex<usize>,
    /// GFIDs already read (GFID identities only), by the inode number the GlusterFS client
    /// derives from each (see [`PosixBackend::gfid_of`]).
    gfids: Mutex<LruCache<u64, gfid::Gfid>>,
    /// Held by the one tree scan that may run at a time: handles of deleted files (MACed, so
    /// only ones this volume gave out) can keep one thread scanning, never every thread.
    scanning: Mutex<()>,
}

/// How long a failed inode-identity scan is remembered.
const STALE_MEMORY: Duration = Duration::from_secs(30);

impl PosixBackend {
    /// Opens `root` (an existing directory) as a volume.
    pub fn open(root: &Path, opts: PosixOptions) -> VfsResult<Self> {
        let croot = sys::cstring(root.as_os_str().as_encoded_bytes())?;
        let cwd = unsafe { BorrowedFd::borrow_raw(libc::AT_FDCWD) };
        let root_fd = sys::openat(cwd, &croot, libc::O_PATH | libc::O_DIRECTORY, 0)?;
        let stx = sys::fstatx(root_fd.as_fd())?;
        let mount_fd = sys::openat(root_fd.as_fd(), c".", libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
        let privileged = sys::euid() == 0;
        let fs_type = sys::fstatfs(root_fd.as_fd())?.f_type;
        let is_fuse = fs_type == FUSE_SUPER_MAGIC;
        let kind = match opts.identity {
            Some(k) => k,
            None if privileged && !is_fuse && kernel_handles_work(mount_fd.as_fd()) => IdentityKind::Kernel,
            None => IdentityKind::Inode,
        };
        let digest = Sha256::digest(format!("nasgw-posix-volume:{}", opts.volume_name).as_bytes());
        let volume_id = VolumeId(digest[..8].try_into().expect("8 bytes"));
        // At most the descriptor budget's share for files (the open-files limit raised first).
        let nofile = crate::descriptors::process().budget().limit;
        let cap = opts.cache_entries.min(crate::descriptors::budget::files_share(nofile)).max(16);
        let mut me = Self {
            root: Arc::new(Node::new(root_fd, FileType::Directory)),
            mount_fd,
            root_id: FileId::new(b"?").expect("non-empty"),
            root_dev: (stx.stx_dev_major, stx.stx_dev_minor),
            volume_id,
            fsid: u64::from_le_bytes(volume_id.0),
            kind,
            privileged,
            local: LOCAL_FS.contains(&fs_type),
            umask: sys::current_umask(),
            nodes: Mutex::new(LruCache::new(NonZeroUsize::new(cap).expect("non-zero"))),
            open_files: (!LOCAL_FS.contains(&fs_type)).then(|| OpenFiles::new(opts.open_files.min(cap))),
            hints: Mutex::new(LruCache::new(NonZeroUsize::new(65536).expect("non-zero"))),
            recently_stale: Mutex::new(LruCache::new(NonZeroUsize::new(4096).expect("non-zero"))),
            scanning: Mutex::new(()),
            sweep_at: Mutex::new(0),
            gfids: Mutex::new(LruCache::new(NonZeroUsize::new(KNOWN_GFIDS).expect("non-zero"))),
            listings: (kind == IdentityKind::Kernel && LOCAL_FS.contains(&fs_type))
                .then(|| Mutex::new(Listings::new(LISTED_ENTRIES))),
            listed_attrs: None,
        };
        if me.listings.is_some() {
            me.listed_attrs = match fs_events::FsEvents::watch(me.mount_fd.as_fd()) {
                Ok(events) => Some(listing::ListedAttrs::new(events, LISTED_ENTRIES)),
                Err(e) => {
                    tracing::info!(error = %e, "no file-system events: listings stat every entry");
                    None
                }
            };
        }
        me.root_id = me.identity_of(me.root.path_fd.as_fd(), c"", &stx)?;
        me.hint(stx.stx_ino, Vec::new());
        let watched = me.listed_attrs.is_some();
        tracing::info!(root = %root.display(), identity = ?kind, privileged, cache = cap, watched, "POSIX backend opened");
        Ok(me)
    }

    /// The identity scheme in use.
    pub fn identity_kind(&self) -> IdentityKind {
        self.kind
    }

    /// The identity of `dir/name` (`name` empty: `dir` itself) whose `statx` is `stx`.
    fn identity_of(&self, dir: BorrowedFd<'_>, name: &CStr, stx: &libc::statx) -> VfsResult<FileId> {
        let id = match self.kind {
            IdentityKind::Kernel => {
                let (handle_type, bytes) = sys::name_to_handle(dir, name)?;
                Identity::Kernel { handle_type, bytes }
            }
            IdentityKind::Inode => Identity::Inode { ino: stx.stx_ino, btime: sys::btime(stx).unwrap_or_default() },
            IdentityKind::Gfid => Identity::Gfid(self.gfid_of(dir, name, stx)?),
        };
        id.encode().ok_or(VfsError::Io(libc::EOVERFLOW))
    }

    /// The GFID of `dir/name` whose `statx` is `stx`. GlusterFS's FUSE client derives a file's
    /// inode number from its GFID ([`gfid::ino_of`]), so a GFID read once is known again by
    /// the inode number alone: a lookup of a file seen before costs no `getxattr` (a round trip
    /// to the GlusterFS client) beside its `openat` and `statx`. Only GFIDs whose inode number
    /// is the derived one are remembered (not on an `enable-ino32` mount). Two files sharing
    /// their GFID's last 64 bits (62 of them random) would be taken for one another, as smbd
    /// and the kernel's NFS server take a GlusterFS mount's files by inode number.
    fn gfid_of(&self, dir: BorrowedFd<'_>, name: &CStr, stx: &libc::statx) -> VfsResult<gfid::Gfid> {
        if let Some(g) = lock(&self.gfids).get(&stx.stx_ino) {
            return Ok(*g);
        }
        let g = gfid::gfid_of(dir, name)?;
        self.know_gfid(g, stx.stx_ino);
        Ok(g)
    }

    /// Remembers GFID `g` of a file whose inode number is `ino` (see [`PosixBackend::gfid_of`]).
    fn know_gfid(&self, g: gfid::Gfid, ino: u64) {
        if gfid::ino_of(&g) == ino {
            lock(&self.gfids).put(ino, g);
        }
    }

    fn hint(&self, ino: u64, path: Vec<u8>) {
        if self.kind == IdentityKind::Inode {
            self.hints.lock().expect("hints lock").put(ino, path);
        }
    }

    fn hint_child(&self, dir_ino: u64, ino: u64, name: &[u8]) {
        if self.kind != IdentityKind::Inode {
            return;
        }
        let mut hints = self.hints.lock().expect("hints lock");
        if let Some(dir) = hints.get(&dir_ino) {
            let mut p = dir.clone();
            if !p.is_empty() {
                p.push(b'/');
            }
            p.extend_from_slice(name);
            hints.put(ino, p);
        }
    }

    fn attr(&self, stx: &libc::statx) -> Attr {
        sys::attr_from(stx, self.fsid)
    }

    /// The cached object for `id`, resolving it (as the server) on a miss.
    fn node(&self, id: &FileId) -> VfsResult<Arc<Node>> {
        if *id == self.root_id {
            return Ok(self.root.clone());
        }
        if let Some(n) = self.nodes.lock().expect("nodes lock").get(id) {
            return Ok(n.clone());
        }
        let fd = self.resolve(id)?;
        let stx = sys::fstatx(fd.as_fd())?;
        if let Some(Identity::Gfid(g)) = Identity::decode(id) {
            self.know_gfid(g, stx.stx_ino);
        }
        let node = Arc::new(Node::new(fd, FileType::from_mode(u32::from(stx.stx_mode))));
        Ok(self.insert(*id, node))
    }

    fn insert(&self, id: FileId, node: Arc<Node>) -> Arc<Node> {
        let evicted = {
            let mut nodes = self.nodes.lock().expect("nodes lock");
            if let Some(existing) = nodes.get(&id) {
                return existing.clone();
            }
            nodes.push(id, node.clone())
        };
        if let Some((_, old)) = evicted {
            retire(old);
        }
        node
    }

    fn evict(&self, id: &FileId) {
        let node = self.nodes.lock().expect("nodes lock").pop(id);
        if let Some(node) = node {
            retire(node);
        }
    }

    /// Evicts a file whose name was just removed. Our descriptor may be its last reference,
    /// and closing it is where the file system frees the file (on ext4 mounted with `discard`,
    /// a synchronous discard to the disk): that close waits until the protocol has answered
    /// when the calling thread allows it (see [`super::in_place::drop_after_reply`]).
    fn evict_removed(&self, id: &FileId) {
        let node = self.nodes.lock().expect("nodes lock").pop(id);
        if let Some(node) = node {
            super::in_place::drop_after_reply(node);
        }
    }

    /// Opens the object an identity names, or fails with `Stale`/`BadHandle`.
    fn resolve(&self, id: &FileId) -> VfsResult<OwnedFd> {
        let ident = Identity::decode(id).ok_or(VfsError::BadHandle)?;
        match (self.kind, ident) {
            (IdentityKind::Kernel, Identity::Kernel { handle_type, bytes }) => {
                let fd = sys::open_by_handle(self.mount_fd.as_fd(), handle_type, &bytes, libc::O_PATH).map_err(
                    |e| match e {
                        // The kernel's handle decoding answers ENOMEM, not ESTALE, when it cannot
                        // reconnect the dentry of a directory that was removed (seen on ext4).
                        VfsError::NotFound | VfsError::Stale | VfsError::Io(libc::ENOMEM) => VfsError::Stale,
                        VfsError::Invalid => VfsError::BadHandle,
                        e => e,
                    },
                )?;
                let stx = sys::fstatx(fd.as_fd())?;
                if (stx.stx_dev_major, stx.stx_dev_minor) != self.root_dev {
                    return Err(VfsError::BadHandle);
                }
                if stx.stx_nlink == 0 {
                    return Err(VfsError::Stale);
                }
                Ok(fd)
            }
            (IdentityKind::Inode, Identity::Inode { ino, btime }) => {
                let recently_stale = || {
                    self.recently_stale
                        .lock()
                        .expect("stale lock")
                        .get(id)
                        .is_some_and(|at| at.elapsed() < STALE_MEMORY)
                };
                if recently_stale() {
                    return Err(VfsError::Stale);
                }
                let r = self.resolve_inode(ino, btime, recently_stale);
                if matches!(r, Err(VfsError::Stale)) {
                    self.recently_stale.lock().expect("stale lock").put(*id, Instant::now());
                }
                r
            }
            (IdentityKind::Gfid, Identity::Gfid(g)) => {
                gfid::open(self.root.path_fd.as_fd(), &g, |p| self.open_rel(p, libc::O_PATH | libc::O_NOFOLLOW))
            }
            _ => Err(VfsError::Stale),
        }
    }

    fn matches(&self, stx: &libc::statx, ino: u64, btime: Timestamp) -> bool {
        stx.stx_ino == ino
            && sys::btime(stx).unwrap_or_default() == btime
            && (stx.stx_dev_major, stx.stx_dev_minor) == self.root_dev
            && stx.stx_nlink > 0
    }

    /// Inode identity: the last path seen for it, else a scan of the tree for the inode number.
    /// Scans run one at a time; `stale_now` tells whether the scan another thread just finished
    /// found this identity gone (no need to walk the tree again).
    fn resolve_inode(&self, ino: u64, btime: Timestamp, stale_now: impl Fn() -> bool) -> VfsResult<OwnedFd> {
        let by_hint = || {
            let hint = self.hints.lock().expect("hints lock").get(&ino).cloned()?;
            let fd = self.open_rel(&hint, libc::O_PATH | libc::O_NOFOLLOW).ok()?;
            sys::fstatx(fd.as_fd()).is_ok_and(|s| self.matches(&s, ino, btime)).then_some(fd)
        };
        if let Some(fd) = by_hint() {
            return Ok(fd);
        }
        let _one_scan = self.scanning.lock().unwrap_or_else(|e| e.into_inner());
        if stale_now() {
            return Err(VfsError::Stale);
        }
        if let Some(fd) = by_hint() {
            return Ok(fd);
        }
        self.scan_for(ino, btime)
    }

    /// Opens a root-relative path beneath the root without crossing symlinks.
    fn open_rel(&self, path: &[u8], flags: libc::c_int) -> VfsResult<OwnedFd> {
        let p = if path.is_empty() { c".".to_owned() } else { sys::cstring(path)? };
        sys::open_beneath(self.root.path_fd.as_fd(), &p, flags)
    }

    /// Breadth-first search of the tree for an inode number (the unprivileged fallback after
    /// a restart or for a file renamed since it was seen). Records hints for directories.
    fn scan_for(&self, ino: u64, btime: Timestamp) -> VfsResult<OwnedFd> {
        let mut queue: VecDeque<Vec<u8>> = VecDeque::from([Vec::new()]);
        let mut buf = vec![0u8; 64 * 1024];
        while let Some(dir_path) = queue.pop_front() {
            let Ok(dir) = self.open_rel(&dir_path, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW) else {
                continue;
            };
            while let Some(n) = sys::getdents(dir.as_fd(), &mut buf).ok().filter(|&n| n > 0) {
                for e in sys::dirents(&buf[..n]) {
                    if e.is_dot() {
                        continue;
                    }
                    let mut child = dir_path.clone();
                    if !child.is_empty() {
                        child.push(b'/');
                    }
                    child.extend_from_slice(e.name.to_bytes());
                    if e.ino == ino {
                        if let Ok(fd) = sys::openat(dir.as_fd(), e.name, libc::O_PATH | libc::O_NOFOLLOW, 0) {
                            if sys::fstatx(fd.as_fd()).is_ok_and(|s| self.matches(&s, ino, btime)) {
                                self.hint(ino, child);
                                return Ok(fd);
                            }
                        }
                    }
                    let is_dir = match e.dtype {
                        libc::DT_DIR => true,
                        libc::DT_UNKNOWN => sys::statx(dir.as_fd(), e.name)
                            .is_ok_and(|s| u32::from(s.stx_mode) & libc::S_IFMT == libc::S_IFDIR),
                        _ => false,
                    };
                    if is_dir {
                        self.hint(e.ino, child.clone());
                        queue.push_back(child);
                    }
                }
            }
        }
        Err(VfsError::Stale)
    }

    /// Live attributes of a node: `Stale` (and evicted) once its last link is gone.
    fn live_stat(&self, id: &FileId, node: &Node) -> VfsResult<libc::statx> {
        let stx = sys::fstatx(node.path_fd.as_fd())?;
        if stx.stx_nlink == 0 && *id != self.root_id {
            self.evict(id);
            return Err(VfsError::Stale);
        }
        Ok(stx)
    }

    fn dir_node(&self, id: &FileId) -> VfsResult<Arc<Node>> {
        let n = self.node(id)?;
        if n.ftype != FileType::Directory {
            return Err(VfsError::NotDir);
        }
        Ok(n)
    }

    fn as_caller(&self, cred: &Credentials) -> VfsResult<ThreadIdentity> {
        ThreadIdentity::switch(self.privileged, cred.uid, cred.gid, &cred.groups)
    }

    /// The I/O descriptor of a regular file, opened (as the server) on first use.
    /// The node of a regular file that is still there (a directory is `IsDir`, anything else
    /// `Invalid`): what a data descriptor may be opened on.
    fn live_regular(&self, id: &FileId) -> VfsResult<Arc<Node>> {
        let node = self.node(id)?;
        match node.ftype {
            FileType::Regular => {}
            FileType::Directory => return Err(VfsError::IsDir),
            _ => return Err(VfsError::Invalid),
        }
        self.live_stat(id, &node)?;
        Ok(node)
    }

    fn io_fd(&self, id: &FileId, node: &Node) -> VfsResult<Arc<File>> {
        if let Some(fd) = node.io() {
            if let Some(open) = &self.open_files {
                open.used(id);
            }
            return Ok(fd);
        }
        let fd = match sys::reopen(node.path_fd.as_fd(), libc::O_RDWR) {
            Ok(fd) => fd,
            Err(VfsError::Access | VfsError::Perm | VfsError::ReadOnly) => {
                sys::reopen(node.path_fd.as_fd(), libc::O_RDONLY)?
            }
            Err(e) => return Err(e),
        };
        Ok(self.keep_io(id, node, fd))
    }

    /// Makes `fd` the I/O descriptor of `node` (file `id`), unless another thread set one
    /// first; on a network mount closes the least recently used one beyond `open_files`.
    fn keep_io(&self, id: &FileId, node: &Node, fd: OwnedFd) -> Arc<File> {
        let file = lock(&node.io).get_or_insert_with(|| Arc::new(File::from(fd))).clone();
        if let Some(open) = &self.open_files {
            open.keep(*id, |old| lock(&self.nodes).peek(&old).cloned().and_then(|n| lock(&n.io).take()));
        }
        file
    }

    /// The I/O descriptor and live attributes of a regular file the caller may read.
    fn readable(&self, cred: &Credentials, id: &FileId) -> VfsResult<(Arc<File>, Attr)> {
        let node = self.node(id)?;
        match node.ftype {
            FileType::Regular => {}
            FileType::Directory => return Err(VfsError::IsDir),
            _ => return Err(VfsError::Invalid),
        }
        let stx = self.live_stat(id, &node)?;
        let attr = self.attr(&stx);
        if self.privileged && cred.uid != attr.uid && access::granted(&attr, cred, access::READ) == 0 {
            return Err(VfsError::Access);
        }
        Ok((self.io_fd(id, &node)?, attr))
    }

    /// Looks up `dir/name` as the caller and caches it.
    fn lookup_in(
        &self,
        cred: &Credentials,
        dir: &Node,
        dir_ino: Option<u64>,
        name: &CStr,
    ) -> VfsResult<(FileId, Attr)> {
        let fd = {
            let _as = self.as_caller(cred)?;
            sys::openat(dir.path_fd.as_fd(), name, libc::O_PATH | libc::O_NOFOLLOW, 0)?
        };
        let stx = sys::fstatx(fd.as_fd())?;
        let id = self.identity_of(fd.as_fd(), c"", &stx)?;
        if let Some(d) = dir_ino {
            self.hint_child(d, stx.stx_ino, name.to_bytes());
        }
        let attr = self.attr(&stx);
        self.insert(id, Arc::new(Node::new(fd, attr.ftype)));
        Ok((id, attr))
    }

    /// Caches a regular file this server just created, from `fd`, the read-write descriptor
    /// the create returned (it becomes the file's I/O descriptor), instead of looking its name
    /// up again: no second identity switch, open and stat. The handle names the inode created
    /// even if its name was renamed or replaced meanwhile.
    fn adopt_created(&self, dir: &Node, name: &CStr, fd: OwnedFd) -> VfsResult<(FileId, Attr)> {
        let stx = sys::fstatx(fd.as_fd())?;
        let id = self.identity_of(fd.as_fd(), c"", &stx)?;
        if let Some(d) = self.dir_ino(dir) {
            self.hint_child(d, stx.stx_ino, name.to_bytes());
        }
        let attr = self.attr(&stx);
        let path_fd = sys::reopen(fd.as_fd(), libc::O_PATH)?;
        let node = self.insert(id, Arc::new(Node::new(path_fd, FileType::Regular)));
        self.keep_io(&id, &node, fd);
        Ok((id, attr))
    }

    fn dir_ino(&self, dir: &Node) -> Option<u64> {
        if self.kind == IdentityKind::Inode {
            sys::fstatx(dir.path_fd.as_fd()).ok().map(|s| s.stx_ino)
        } else {
            None
        }
    }

    /// Identity of `dir/name` without opening it (for cache eviction before it disappears).
    fn id_at(&self, dir: &Node, name: &CStr) -> Option<FileId> {
        let stx = sys::statx(dir.path_fd.as_fd(), name).ok()?;
        self.identity_of(dir.path_fd.as_fd(), name, &stx).ok()
    }

    /// Applies a umask-free mode to a just-created object if the process umask masked bits.
    fn fix_mode(&self, dir: &Node, name: &CStr, mode: u32) -> VfsResult<()> {
        if mode & self.umask != 0 {
            let fd = sys::openat(dir.path_fd.as_fd(), name, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
            sys::chmod_fd(fd.as_fd(), mode)?;
        }
        Ok(())
    }

    fn apply_setattr(&self, node: &Node, set: &SetAttr) -> VfsResult<()> {
        let fd = node.path_fd.as_fd();
        if let Some(size) = set.size {
            match node.ftype {
                FileType::Regular => sys::truncate_fd(fd, size)?,
                FileType::Directory => return Err(VfsError::IsDir),
                _ => return Err(VfsError::Invalid),
            }
        }
        if set.uid.is_some() || set.gid.is_some() {
            sys::chown_fd(fd, set.uid.unwrap_or(u32::MAX), set.gid.unwrap_or(u32::MAX))?;
        }
        if let Some(mode) = set.mode {
            if node.ftype != FileType::Symlink {
                sys::chmod_fd(fd, mode)?;
            }
        }
        if set.atime != SetTime::DontChange || set.mtime != SetTime::DontChange {
            let arg = |t: SetTime| match t {
                SetTime::DontChange => UtimeArg::Omit,
                SetTime::ServerNow => UtimeArg::Now,
                SetTime::Client(t) => UtimeArg::At(t),
            };
            // Through the descriptor's /proc path even for a symlink: the magic link lands on
            // the symlink itself (never its target), so a client's `utimensat(..,
            // AT_SYMLINK_NOFOLLOW)` (an NFS SETATTR of the link's handle) sets the link's times.
            sys::utimens_fd(fd, arg(set.atime), arg(set.mtime))?;
        }
        Ok(())
    }
}

/// The `slice` items of `all` from position `*at` on (wrapping around), and `*at` moved past
/// them: successive calls cover every item in turn, whatever the length. A pure function.
fn sweep_slice<T>(mut all: Vec<T>, at: &mut usize, slice: usize) -> Vec<T> {
    if all.len() <= slice {
        *at = 0;
        return all;
    }
    let start = *at % all.len();
    all.rotate_left(start);
    all.truncate(slice);
    *at = start + slice;
    all
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// True when this process can open the root by its kernel handle (root, a file system with
/// export support, a handle that fits a [`FileId`]).
fn kernel_handles_work(root: BorrowedFd<'_>) -> bool {
    match sys::name_to_handle(root, c"") {
        Ok((t, bytes)) if bytes.len() <= identity::MAX_KERNEL_HANDLE => {
            sys::open_by_handle(root, t, &bytes, libc::O_PATH).is_ok()
        }
        _ => false,
    }
}

/// Times that carry an NFSv3 exclusive-create verifier (as knfsd stores it).
fn verifier_times(v: [u8; 8]) -> (Timestamp, Timestamp) {
    let a = u32::from_be_bytes(v[0..4].try_into().expect("4 bytes"));
    let m = u32::from_be_bytes(v[4..8].try_into().expect("4 bytes"));
    (Timestamp { secs: i64::from(a), nanos: 0 }, Timestamp { secs: i64::from(m), nanos: 0 })
}

impl Backend for PosixBackend {
    fn volume_id(&self) -> VolumeId {
        self.volume_id
    }

    fn root(&self) -> FileId {
        self.root_id
    }

    fn is_local(&self) -> bool {
        self.local
    }

    fn getattr(&self, id: &FileId) -> VfsResult<Attr> {
        let node = self.node(id)?;
        Ok(self.attr(&self.live_stat(id, &node)?))
    }

    fn setattr(&self, cred: &Credentials, id: &FileId, set: &SetAttr) -> VfsResult<Attr> {
        let node = self.node(id)?;
        self.live_stat(id, &node)?;
        {
            let _as = self.as_caller(cred)?;
            self.apply_setattr(&node, set)?;
        }
        Ok(self.attr(&sys::fstatx(node.path_fd.as_fd())?))
    }

    fn lookup(&self, cred: &Credentials, dir: &FileId, name: &Name) -> VfsResult<(FileId, Attr)> {
        let d = self.dir_node(dir)?;
        self.lookup_in(cred, &d, self.dir_ino(&d), &name.to_cstring())
    }

    fn parent(&self, cred: &Credentials, dir: &FileId) -> VfsResult<(FileId, Attr)> {
        let d = self.dir_node(dir)?;
        if *dir == self.root_id {
            return Ok((self.root_id, self.attr(&sys::fstatx(d.path_fd.as_fd())?)));
        }
        let fd = {
            let _as = self.as_caller(cred)?;
            sys::openat(d.path_fd.as_fd(), c"..", libc::O_PATH | libc::O_DIRECTORY, 0)?
        };
        let stx = sys::fstatx(fd.as_fd())?;
        let id = self.identity_of(fd.as_fd(), c"", &stx)?;
        let attr = self.attr(&stx);
        self.insert(id, Arc::new(Node::new(fd, FileType::Directory)));
        Ok((id, attr))
    }

    fn read(&self, cred: &Credentials, id: &FileId, offset: u64, count: u32) -> VfsResult<(Vec<u8>, bool, Attr)> {
        let mut buf = Vec::new();
        let (_, eof, attr) = self.read_append(cred, id, offset, count, &mut buf)?;
        Ok((buf, eof, attr))
    }

    fn read_append(
        &self,
        cred: &Credentials,
        id: &FileId,
        offset: u64,
        count: u32,
        out: &mut Vec<u8>,
    ) -> VfsResult<(u32, bool, Attr)> {
        let (fd, attr) = self.readable(cred, id)?;
        let want = (count as u64).min(attr.size.saturating_sub(offset)) as usize;
        let start = out.len();
        out.reserve(want);
        let n = sys::pread_uninit(fd.as_fd(), &mut out.spare_capacity_mut()[..want], offset)?;
        // SAFETY: pread_uninit initialised the first `n` spare bytes.
        unsafe { out.set_len(start + n) };
        let eof = offset + n as u64 >= attr.size;
        Ok((n as u32, eof, attr))
    }

    fn read_slice(
        &self,
        cred: &Credentials,
        id: &FileId,
        offset: u64,
        count: u32,
    ) -> VfsResult<(ReadData, bool, Attr)> {
        if let Some((slice, eof, attr)) = self.read_cached(cred, id, offset, count)? {
            return Ok((ReadData::File(slice), eof, attr));
        }
        let mut buf = Vec::new();
        let (_, eof, attr) = self.read_append(cred, id, offset, count, &mut buf)?;
        Ok((ReadData::Bytes(buf), eof, attr))
    }

    fn read_cached(
        &self,
        cred: &Credentials,
        id: &FileId,
        offset: u64,
        count: u32,
    ) -> VfsResult<Option<(FileSlice, bool, Attr)>> {
        let (fd, attr) = self.readable(cred, id)?;
        let len = (count as u64).min(attr.size.saturating_sub(offset)) as u32;
        if !sys::all_cached(fd.as_fd(), offset, u64::from(len)) {
            return Ok(None);
        }
        let eof = offset + len as u64 >= attr.size;
        Ok(Some((FileSlice { fd, offset, len }, eof, attr)))
    }

    fn write(
        &self,
        cred: &Credentials,
        id: &FileId,
        offset: u64,
        data: &[u8],
        stable: Stability,
    ) -> VfsResult<(u32, Stability, Option<Attr>)> {
        let node = self.node(id)?;
        match node.ftype {
            FileType::Regular => {}
            FileType::Directory => return Err(VfsError::IsDir),
            _ => return Err(VfsError::Invalid),
        }
        // Owner, mode and link count: through a network file system's mount a fresh stat after
        // an earlier write waits until that write reached the servers (GlusterFS: write-behind
        // flushes, then one FSTAT per WRITE), which would make a stream of UNSTABLE writes
        // synchronous. So a file checked less than WRITE_CHECK ago uses what the kernel already
        // knows: a change made through another node (a chmod, a delete) is seen by WRITEs at
        // most that late. A local file system answers either way at once.
        let fresh = !self.local && lock(&node.checked).is_some_and(|t| t.elapsed() < WRITE_CHECK);
        let stx = if fresh {
            let stx = sys::fstatx_cached(node.path_fd.as_fd())?;
            if stx.stx_nlink == 0 {
                self.evict(id);
                return Err(VfsError::Stale);
            }
            stx
        } else {
            let stx = self.live_stat(id, &node)?;
            *lock(&node.checked) = Some(Instant::now());
            stx
        };
        let attr = self.attr(&stx);
        if self.privileged && cred.uid != attr.uid && access::granted(&attr, cred, access::MODIFY) == 0 {
            return Err(VfsError::Access);
        }
        let fd = self.io_fd(id, &node)?;
        offset.checked_add(data.len() as u64).filter(|&end| end <= i64::MAX as u64).ok_or(VfsError::TooBig)?;
        sys::pwrite_all(fd.as_fd(), data, offset).map_err(|e| match e {
            // The server itself could only open the file read-only (unprivileged server).
            VfsError::Io(libc::EBADF) => VfsError::Access,
            e => e,
        })?;
        if let Some(mode) = access::mode_after_write(attr.mode, cred) {
            sys::chmod_fd(node.path_fd.as_fd(), mode)?;
            *lock(&node.checked) = None;
        }
        match stable {
            Stability::Unstable => {}
            Stability::DataSync => sys::sync(fd.as_fd(), true)?,
            Stability::FileSync => sys::sync(fd.as_fd(), false)?,
        }
        // A stat after an UNSTABLE write through a network file system's mount (GlusterFS
        // FUSE) waits until the written data reached the servers; a local one costs nothing.
        let after =
            if self.local || stable != Stability::Unstable { Some(self.attr(&sys::fstatx(fd.as_fd())?)) } else { None };
        Ok((data.len() as u32, stable, after))
    }

    fn create(
        &self,
        cred: &Credentials,
        dir: &FileId,
        name: &Name,
        mode: u32,
        how: CreateHow,
    ) -> VfsResult<(FileId, Attr)> {
        let d = self.dir_node(dir)?;
        let cname = name.to_cstring();
        let mode = mode & 0o7777;
        // Created and opened in one call (on a GlusterFS mount one CREATE instead of a MKNOD and
        // an OPEN on every brick); the descriptor becomes the file's I/O descriptor.
        let made = {
            let _as = self.as_caller(cred)?;
            match sys::openat(d.path_fd.as_fd(), &cname, libc::O_CREAT | libc::O_EXCL | libc::O_RDWR, mode) {
                Ok(fd) => {
                    self.fix_mode(&d, &cname, mode)?;
                    Some(fd)
                }
                Err(VfsError::Exists) => None,
                Err(e) => return Err(e),
            }
        };
        let created = made.is_some();
        let (id, attr) = match made {
            Some(fd) => self.adopt_created(&d, &cname, fd)?,
            None => self.lookup_in(cred, &d, self.dir_ino(&d), &cname)?,
        };
        match how {
            CreateHow::Guarded(_) if !created => Err(VfsError::Exists),
            CreateHow::Unchecked(_) | CreateHow::Guarded(_) if attr.ftype != FileType::Regular => Err(VfsError::Exists),
            CreateHow::Unchecked(set) | CreateHow::Guarded(set) => {
                // A file this call made is empty already: truncating it again would cost a
                // SETATTR (on GlusterFS a round trip to the bricks) and change nothing.
                let set = if created && set.size == Some(0) { SetAttr { size: None, ..set } } else { set };
                if set.is_empty() {
                    Ok((id, attr))
                } else {
                    self.setattr(cred, &id, &set).map(|a| (id, a))
                }
            }
            CreateHow::Exclusive(v) => {
                let (at, mt) = verifier_times(v);
                if created {
                    let set = SetAttr { atime: SetTime::Client(at), mtime: SetTime::Client(mt), ..SetAttr::default() };
                    self.setattr(cred, &id, &set).map(|a| (id, a))
                } else if attr.ftype == FileType::Regular && attr.atime == at && attr.mtime == mt {
                    Ok((id, attr))
                } else {
                    Err(VfsError::Exists)
                }
            }
        }
    }

    fn mkdir(&self, cred: &Credentials, dir: &FileId, name: &Name, mode: u32) -> VfsResult<(FileId, Attr)> {
        let d = self.dir_node(dir)?;
        let cname = name.to_cstring();
        {
            let _as = self.as_caller(cred)?;
            sys::mkdirat(d.path_fd.as_fd(), &cname, mode & 0o7777)?;
            self.fix_mode(&d, &cname, mode & 0o7777)?;
        }
        self.lookup_in(cred, &d, self.dir_ino(&d), &cname)
    }

    fn symlink(&self, cred: &Credentials, dir: &FileId, name: &Name, target: &[u8]) -> VfsResult<(FileId, Attr)> {
        let d = self.dir_node(dir)?;
        let cname = name.to_cstring();
        if target.is_empty() {
            return Err(VfsError::Invalid);
        }
        let ctarget = sys::cstring(target)?;
        {
            let _as = self.as_caller(cred)?;
            sys::symlinkat(&ctarget, d.path_fd.as_fd(), &cname)?;
        }
        self.lookup_in(cred, &d, self.dir_ino(&d), &cname)
    }

    fn mknod(
        &self,
        cred: &Credentials,
        dir: &FileId,
        name: &Name,
        kind: SpecialFile,
        mode: u32,
    ) -> VfsResult<(FileId, Attr)> {
        let d = self.dir_node(dir)?;
        let cname = name.to_cstring();
        let mode = mode & 0o7777;
        {
            // As the caller: the kernel checks write permission on the directory and, for a
            // device, CAP_MKNOD (which a thread running as another fsuid does not have). The
            // new object is never opened: only reached through O_PATH descriptors.
            let _as = self.as_caller(cred)?;
            sys::mknodat(d.path_fd.as_fd(), &cname, kind.mode_type() | mode, kind.dev())?;
            self.fix_mode(&d, &cname, mode)?;
        }
        self.lookup_in(cred, &d, self.dir_ino(&d), &cname)
    }

    fn readlink(&self, _cred: &Credentials, id: &FileId) -> VfsResult<Vec<u8>> {
        let node = self.node(id)?;
        if node.ftype != FileType::Symlink {
            return Err(VfsError::Invalid);
        }
        self.live_stat(id, &node)?;
        sys::readlink(node.path_fd.as_fd())
    }

    fn remove(&self, cred: &Credentials, dir: &FileId, name: &Name) -> VfsResult<()> {
        let d = self.dir_node(dir)?;
        let cname = name.to_cstring();
        let victim = self.id_at(&d, &cname);
        {
            let _as = self.as_caller(cred)?;
            sys::unlinkat(d.path_fd.as_fd(), &cname, 0)?;
        }
        if let Some(v) = victim {
            self.evict_removed(&v);
        }
        Ok(())
    }

    fn rmdir(&self, cred: &Credentials, dir: &FileId, name: &Name) -> VfsResult<()> {
        let d = self.dir_node(dir)?;
        let cname = name.to_cstring();
        let victim = self.id_at(&d, &cname);
        {
            let _as = self.as_caller(cred)?;
            sys::unlinkat(d.path_fd.as_fd(), &cname, libc::AT_REMOVEDIR)?;
        }
        if let Some(v) = victim {
            self.evict_removed(&v);
        }
        Ok(())
    }

    fn rename(&self, cred: &Credentials, from_dir: &FileId, from: &Name, to_dir: &FileId, to: &Name) -> VfsResult<()> {
        let fd = self.dir_node(from_dir)?;
        let td = self.dir_node(to_dir)?;
        let (cfrom, cto) = (from.to_cstring(), to.to_cstring());
        let victim = self.id_at(&td, &cto);
        {
            let _as = self.as_caller(cred)?;
            sys::renameat(fd.path_fd.as_fd(), &cfrom, td.path_fd.as_fd(), &cto)?;
        }
        if let Some(v) = victim {
            self.evict_removed(&v);
        }
        if self.kind == IdentityKind::Inode {
            if let Ok(stx) = sys::statx(td.path_fd.as_fd(), &cto) {
                if let Some(dino) = self.dir_ino(&td) {
                    self.hint_child(dino, stx.stx_ino, to.as_bytes());
                }
            }
        }
        Ok(())
    }

    fn link(&self, cred: &Credentials, id: &FileId, dir: &FileId, name: &Name) -> VfsResult<Attr> {
        let node = self.node(id)?;
        let d = self.dir_node(dir)?;
        self.live_stat(id, &node)?;
        if node.ftype == FileType::Directory {
            return Err(VfsError::IsDir);
        }
        {
            let _as = self.as_caller(cred)?;
            sys::link_fd(node.path_fd.as_fd(), d.path_fd.as_fd(), &name.to_cstring())?;
        }
        Ok(self.attr(&sys::fstatx(node.path_fd.as_fd())?))
    }

    fn readdir(
        &self,
        cred: &Credentials,
        dir: &FileId,
        cookie: u64,
        max_entries: usize,
        plus: bool,
    ) -> VfsResult<ReadDir> {
        self.list(cred, dir, cookie, max_entries, plus)
    }

    fn cookie_verifier(&self, _dir: &FileId) -> u64 {
        // Cookies are the file system's own directory offsets: valid while the directory
        // changes and on every node, so the verifier only names the volume.
        self.fsid
    }

    fn fsync(&self, id: &FileId) -> VfsResult<()> {
        let node = self.node(id)?;
        match node.ftype {
            FileType::Regular => sys::sync(self.io_fd(id, &node)?.as_fd(), false),
            FileType::Directory => {
                let fd = sys::openat(node.path_fd.as_fd(), c".", libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
                sys::sync(fd.as_fd(), false)
            }
            _ => Ok(()),
        }
    }

    fn flush(&self, id: &FileId) -> VfsResult<()> {
        if self.local {
            return Ok(());
        }
        // Through a network file system's mount (the managed GlusterFS mount) writes may still
        // sit in its client's write-behind. Closing a duplicate of the I/O descriptor makes the
        // kernel send that open file's FLUSH (as any close does), which waits for them; the
        // descriptor itself stays cached for the next open.
        // A node no longer cached had its descriptors closed (and so flushed) when it left.
        let Some(node) = self.nodes.lock().expect("nodes lock").peek(id).cloned() else { return Ok(()) };
        match node.io() {
            Some(fd) => sys::flush(fd.as_fd()),
            None => Ok(()),
        }
    }

    fn find_name_nocase(&self, cred: &Credentials, dir: &FileId, name: &Name) -> VfsResult<Option<Vec<u8>>> {
        self.gluster_find_nocase(cred, dir, name)
    }

    fn get_xattr(&self, cred: &Credentials, id: &FileId, name: &[u8]) -> VfsResult<Option<Vec<u8>>> {
        self.xattr_get(cred, id, name)
    }

    fn get_xattr_at(&self, cred: &Credentials, dir: &FileId, entry: &Name, name: &[u8]) -> VfsResult<Option<Vec<u8>>> {
        self.xattr_get_at(cred, dir, entry, name)
    }

    fn set_xattr(&self, cred: &Credentials, id: &FileId, name: &[u8], value: &[u8]) -> VfsResult<()> {
        self.xattr_set(cred, id, name, value)
    }

    fn remove_xattr(&self, cred: &Credentials, id: &FileId, name: &[u8]) -> VfsResult<()> {
        self.xattr_remove(cred, id, name)
    }

    fn list_xattrs(&self, cred: &Credentials, id: &FileId) -> VfsResult<Vec<Vec<u8>>> {
        self.xattr_list(cred, id)
    }

    fn list_xattrs_at(&self, cred: &Credentials, dir: &FileId, entry: &Name, _id: &FileId) -> VfsResult<Vec<Vec<u8>>> {
        self.xattr_list_at(cred, dir, entry)
    }

    fn copy_range(
        &self,
        cred: &Credentials,
        src: &FileId,
        src_offset: u64,
        dst: &FileId,
        dst_offset: u64,
        len: u64,
    ) -> VfsResult<u64> {
        self.copy(cred, src, src_offset, dst, dst_offset, len)
    }

    fn path_of(&self, dir: &FileId) -> VfsResult<Vec<u8>> {
        // The kernel knows where an open descriptor's object is now: `/proc/self/fd/N`.
        let link = |fd: BorrowedFd<'_>| {
            std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
                .map(|p| p.into_os_string().into_encoded_bytes())
                .map_err(|e| VfsError::Io(e.raw_os_error().unwrap_or(libc::EIO)))
        };
        let root = link(self.root.path_fd.as_fd())?;
        let at = link(self.node(dir)?.path_fd.as_fd())?;
        if at.ends_with(b" (deleted)") {
            return Err(VfsError::Stale);
        }
        let rest = at.strip_prefix(root.as_slice()).ok_or(VfsError::NotSupported)?;
        if rest.is_empty() {
            return Ok(Vec::new());
        }
        rest.strip_prefix(b"/").map(<[u8]>::to_vec).ok_or(VfsError::NotSupported)
    }

    fn open_dir_path(&self, dir: &FileId) -> VfsResult<OwnedFd> {
        self.dir_node(dir)?.path_fd.try_clone().map_err(|e| VfsError::Io(e.raw_os_error().unwrap_or(libc::EIO)))
    }

    fn open_data(&self, id: &FileId, write: bool) -> VfsResult<OwnedFd> {
        let node = self.live_regular(id)?;
        sys::reopen(node.path_fd.as_fd(), if write { libc::O_RDWR } else { libc::O_RDONLY })
    }

    fn shared_data(&self, id: &FileId) -> VfsResult<Arc<File>> {
        let node = self.live_regular(id)?;
        self.io_fd(id, &node)
    }

    fn statfs(&self, _id: &FileId) -> VfsResult<FsStat> {
        let st = sys::fstatfs(self.root.path_fd.as_fd())?;
        let bs = st.f_bsize as u64;
        Ok(FsStat {
            total_bytes: st.f_blocks * bs,
            free_bytes: st.f_bfree * bs,
            avail_bytes: st.f_bavail * bs,
            total_files: st.f_files,
            free_files: st.f_ffree,
            avail_files: st.f_ffree,
            block_size: st.f_bsize as u32,
            name_max: st.f_namelen as u32,
        })
    }

    fn release_removed(&self) -> usize {
        // Stat outside the lock: the cache keeps serving meanwhile. On a local file system any
        // descriptor keeps a removed file's blocks; on a network mount (GlusterFS's FUSE
        // client) only an open one does (the bricks keep a file open there), while an `O_PATH`
        // one holds nothing on the servers and each stat of it would be a round trip to the
        // client (and often the bricks): with a full cache, thousands every sweep.
        let mut nodes: Vec<(FileId, Arc<Node>)> = self
            .nodes
            .lock()
            .expect("nodes lock")
            .iter()
            .filter(|(id, n)| **id != self.root_id && (self.local || lock(&n.io).is_some()))
            .map(|(id, n)| (*id, n.clone()))
            .collect();
        if !self.local {
            // A slice per sweep, the next one at the next: the bricks see a bounded rate.
            let mut at = lock(&self.sweep_at);
            nodes = sweep_slice(nodes, &mut at, SWEEP_SLICE);
        }
        let removed: Vec<FileId> = nodes
            .into_iter()
            .filter(|(_, n)| match sys::fstatx(n.path_fd.as_fd()) {
                Ok(st) => st.stx_nlink == 0,
                // A network mount may answer a removed file's stat with an error instead.
                Err(e) => matches!(e, VfsError::Stale | VfsError::NotFound),
            })
            .map(|(id, _)| id)
            .collect();
        // Closed after the lock is released (see [`retire`]); this thread waits for it.
        let released: Vec<Arc<Node>> = {
            let mut cache = self.nodes.lock().expect("nodes lock");
            removed.iter().filter_map(|id| cache.pop(id)).collect()
        };
        let n = released.len();
        drop(released);
        n
    }

    fn sync_all(&self) -> VfsResult<()> {
        let nodes: Vec<Arc<Node>> = {
            let mut cache = self.nodes.lock().expect("nodes lock");
            let all = cache.iter().map(|(_, n)| n.clone()).collect();
            cache.clear();
            all
        };
        let mut first_err = None;
        for n in nodes {
            if let Some(fd) = n.io() {
                if let Err(e) = sys::sync(fd.as_fd(), false) {
                    first_err.get_or_insert(e);
                }
            }
        }
        sys::syncfs(self.mount_fd.as_fd())?;
        first_err.map_or(Ok(()), Err)
    }

    fn owner_locks(&self, id: &FileId, _owner: &[u8]) -> VfsResult<Box<dyn OwnerLocks>> {
        let node = self.node(id)?;
        if node.ftype != FileType::Regular {
            return Err(VfsError::Invalid);
        }
        // Open file description locks: each descriptor is an owner of its own, in this process
        // and on a FUSE mount (GlusterFS forwards them to the bricks as locks of that owner).
        let fd = match sys::reopen(node.path_fd.as_fd(), libc::O_RDWR) {
            Ok(fd) => fd,
            Err(VfsError::Access | VfsError::Perm | VfsError::ReadOnly) => {
                sys::reopen(node.path_fd.as_fd(), libc::O_RDONLY)?
            }
            Err(e) => return Err(e),
        };
        Ok(Box::new(OfdLocks(fd)))
    }
}

/// Open file description locks on one descriptor.
struct OfdLocks(OwnedFd);

impl OfdLocks {
    fn fcntl(&self, cmd: i32, fl: &mut libc::flock) -> VfsResult<()> {
        use std::os::fd::AsRawFd;
        // SAFETY: a valid descriptor and a valid flock.
        if unsafe { libc::fcntl(self.0.as_raw_fd(), cmd, fl as *mut libc::flock) } < 0 {
            return Err(VfsError::last_os());
        }
        Ok(())
    }
}

impl OwnerLocks for OfdLocks {
    fn set(&self, kind: i32, start: u64, len: u64) -> VfsResult<()> {
        match flock_of(kind, start, len) {
            Some(mut fl) => self.fcntl(libc::F_OFD_SETLK, &mut fl),
            None => Ok(()),
        }
    }

    fn test(&self, kind: i32, start: u64, len: u64) -> VfsResult<Option<(bool, u64, u64)>> {
        let Some(mut fl) = flock_of(kind, start, len) else { return Ok(None) };
        self.fcntl(libc::F_OFD_GETLK, &mut fl)?;
        Ok(conflict_of(&fl))
    }
}

#[cfg(test)]
mod tests;
