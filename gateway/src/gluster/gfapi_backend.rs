//! The backend for `access = "gfapi"`: the namespace served straight from the bricks through
//! libgfapi's handle API.
//!
//! - A [`FileId`] is `G` + the file's GFID (the same bytes the FUSE backend mints): turning a
//!   client's handle into an object is `glfs_h_create_from_handle`, one call, no path, on any
//!   node. A GFID the volume no longer has is `Stale`.
//! - Each operation runs with the caller's credentials (`glfs_setfsuid`/`setfsgid`/`setfsgroups`,
//!   per thread in libgfapi) and puts root back before returning, as the trait asks. Data I/O goes
//!   through one cached descriptor per file, opened as root and checked against the mode bits
//!   here (the POSIX backend's rule, with the owner override knfsd applies).
//! - Each cached descriptor can carry a lock owner ([`GfapiBackend::lock`]): the bricks' locks
//!   translator then keeps each client's byte-range locks apart cluster-wide.

use std::mem::MaybeUninit;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lru::LruCache;

use super::attr_cache::{CachedAttr, Ticket as AttrTicket};
use super::coherence::Coherence;
use super::data_cache::{chunks_of, DataCache, Stamp, Ticket, CHUNK};
use super::fuse_backend::{gfid_file_id, volume_id, ROOT_GFID};
use super::gfapi::{self, DirEntryPlus, File, Object, Volume};
use super::name_cache::{Fetch, Grant, Known, Listed, NameCache};
use crate::vfs::backend::HeldFile;
use crate::vfs::open_files::OpenFiles;
use crate::vfs::posix::identity::Identity;
use crate::vfs::{
    access, Attr, Backend, CreateHow, Credentials, DirEntry, FileId, FileType, FsStat, Name, ReadDir, SetAttr, SetTime,
    SpecialFile, Stability, Timestamp, VfsError, VfsResult, VolumeId,
};

/// How long a call waits for the first connection to the volume before failing.
const CONNECT_WAIT: Duration = Duration::from_secs(10);

/// A read larger than this is split into pieces read at the same time: a GlusterFS read is one
/// request to one brick answered in one piece, so a single 8 MiB read (an SMB READ) waits for
/// the whole transfer, while pieces in flight together keep bricks and network busy.
const MIN_PIECE: usize = 1 << 20;
/// How long a WRITE may rely on the attributes the previous WRITE checked.
const WRITE_CHECK: Duration = Duration::from_secs(1);

/// At most this many pieces (threads) per read.
const MAX_PIECES: usize = 8;

/// At most this many objects (GFID handles with their cached attributes, ~500 bytes each) are
/// kept; least recently used first out. Large enough for the listings the name cache holds to
/// keep their entries' attributes.
const MAX_OBJECTS: usize = 65_536;

/// A listing read from the bricks to be remembered takes at least this many entries at a time:
/// a READDIRP answers a buffer of many entries, and each extension opens the directory again.
const MIN_EXTEND: usize = 1024;

/// A page served from a remembered listing may stat at most this many entries whose attributes
/// are no longer cached; with more, the page is read from the bricks (one READDIRP).
const MAX_RESTATS: usize = 16;

/// A read into a buffer that need not be initialised: returns how many of its first bytes it
/// filled, 0 at end of file ([`File::read_uninit`]).
type ReadAt<'a> = dyn Fn(&mut [MaybeUninit<u8>], u64) -> std::io::Result<usize> + Sync + 'a;

/// Fills `buf` from `offset` on with `read_at`; returns how much was read (less only at end of
/// file); that many first bytes of `buf` are initialised.
fn read_full(read_at: &ReadAt<'_>, buf: &mut [MaybeUninit<u8>], offset: u64) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let got = read_at(&mut buf[n..], offset + n as u64)?;
        if got == 0 {
            break;
        }
        n += got;
    }
    Ok(n)
}

/// Reads `buf.len()` bytes at `offset` with `read_at`, in pieces on parallel threads when it is
/// larger than [`MIN_PIECE`]; returns how many bytes form the file's data from `offset` on (short
/// only at end of file); that many first bytes of `buf` are initialised.
fn read_pieces(read_at: &ReadAt<'_>, buf: &mut [MaybeUninit<u8>], offset: u64) -> std::io::Result<usize> {
    if buf.len() <= MIN_PIECE {
        return read_full(read_at, buf, offset);
    }
    let piece = buf.len().div_ceil(MAX_PIECES).max(MIN_PIECE);
    let results: Vec<std::io::Result<usize>> = std::thread::scope(|s| {
        let pieces: Vec<_> = buf
            .chunks_mut(piece)
            .enumerate()
            .map(|(i, part)| s.spawn(move || read_full(read_at, part, offset + (i * piece) as u64)))
            .collect();
        pieces
            .into_iter()
            .map(|p| p.join().unwrap_or_else(|_| Err(std::io::Error::other("read thread panicked"))))
            .collect()
    });
    let mut total = 0;
    for r in results {
        let n = r?;
        total += n;
        if n < piece {
            break; // end of file inside this piece: later pieces hold nothing of it
        }
    }
    Ok(total)
}

/// Reads `want` bytes at `offset` into a new buffer (never zeroed first: the read fills it).
fn read_new(read_at: &ReadAt<'_>, want: usize, offset: u64) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(want);
    let n = read_pieces(read_at, &mut buf.spare_capacity_mut()[..want], offset)?;
    // SAFETY: read_pieces initialised the first `n` bytes.
    unsafe { buf.set_len(n) };
    Ok(buf)
}

/// Reads chunks `indexes` of a file (chunk `i` is `len_of(i)` bytes at `i * CHUNK`) with
/// `read_at`, at most [`MAX_PIECES`] at a time on parallel threads; each buffer is short only at
/// end of file.
fn read_chunks(
    read_at: &ReadAt<'_>,
    indexes: &[u64],
    len_of: &(dyn Fn(u64) -> usize + Sync),
) -> std::io::Result<Vec<Vec<u8>>> {
    if let [i] = indexes {
        return Ok(vec![read_new(read_at, len_of(*i), i * CHUNK)?]);
    }
    let mut out = Vec::with_capacity(indexes.len());
    for group in indexes.chunks(MAX_PIECES) {
        let results: Vec<std::io::Result<Vec<u8>>> = std::thread::scope(|s| {
            let reads: Vec<_> = group
                .iter()
                .map(|&i| {
                    let len = len_of(i);
                    s.spawn(move || read_new(read_at, len, i * CHUNK))
                })
                .collect();
            reads
                .into_iter()
                .map(|r| r.join().unwrap_or_else(|_| Err(std::io::Error::other("read thread panicked"))))
                .collect()
        });
        for r in results {
            out.push(r?);
        }
    }
    Ok(out)
}

/// Appends bytes `offset..offset + want` of a file to `out` from its chunks `first..` in order
/// (`chunks[k]` holds the bytes at `(first + k) * CHUNK`); a chunk shorter than the range needs
/// ends the data there (end of file). Returns how many bytes were appended.
fn gather(chunks: &[Arc<Vec<u8>>], first: u64, offset: u64, want: usize, out: &mut Vec<u8>) -> usize {
    let end = offset + want as u64;
    let before = out.len();
    out.reserve(want);
    for (k, c) in chunks.iter().enumerate() {
        let at = (first + k as u64) * CHUNK;
        let from = offset.saturating_sub(at).min(c.len() as u64) as usize;
        let need = (end.min(at + CHUNK) - at) as usize;
        let to = need.min(c.len());
        out.extend_from_slice(&c[from..to]);
        if to < need {
            break;
        }
    }
    out.len() - before
}

/// What a file's cached data is checked against.
fn stamp_of(a: &Attr) -> Stamp {
    let ns = |t: Timestamp| i128::from(t.secs) * 1_000_000_000 + i128::from(t.nanos);
    Stamp { size: a.size, mtime: ns(a.mtime), ctime: ns(a.ctime) }
}

/// Errors of extended attribute calls: a value too large for the bricks is `NoSpace`.
fn xattr_error(e: std::io::Error) -> VfsError {
    match e.raw_os_error() {
        Some(libc::E2BIG | libc::ERANGE | libc::ENOSPC) => VfsError::NoSpace,
        Some(libc::ENODATA) => VfsError::NotFound,
        _ => e.into(),
    }
}

/// What a new entry made through this node did to its directory's attributes on a volume that
/// stamps times on the client ([`Volume::stamps_times`]): the directory's mtime and ctime become
/// the entry's ctime, and a new directory's `..` links to it.
#[derive(Debug, Clone, Copy)]
struct DirStamp {
    /// The directory's attribute ticket, taken before the change began.
    ticket: AttrTicket,
    /// The new entry's ctime, as the call that made it returned it.
    ctime: (libc::time_t, i64),
    /// Whether the new entry is a directory.
    subdir: bool,
}

/// What a change this node makes in a directory takes before it begins: the directory's names
/// fetch and attribute ticket (see `changed_name`), and [`Coherence::changes`] for the new
/// entry's attributes.
#[derive(Debug, Clone, Copy)]
struct Begun {
    fetch: Fetch,
    dir_ticket: AttrTicket,
    mark: u64,
}

impl Begun {
    /// What the new entry `made` did to the directory.
    fn stamp(&self, made: &libc::stat) -> DirStamp {
        DirStamp::new(self.dir_ticket, made)
    }
}

impl DirStamp {
    fn new(ticket: AttrTicket, made: &libc::stat) -> DirStamp {
        DirStamp {
            ticket,
            ctime: (made.st_ctime, made.st_ctime_nsec),
            subdir: made.st_mode & libc::S_IFMT == libc::S_IFDIR,
        }
    }

    fn apply(&self, dir: &mut libc::stat) {
        (dir.st_mtime, dir.st_mtime_nsec) = self.ctime;
        (dir.st_ctime, dir.st_ctime_nsec) = self.ctime;
        if self.subdir {
            dir.st_nlink += 1;
        }
    }
}

/// A file's attributes from libgfapi's `stat`, on the volume of file-system id `fsid`.
fn attr_of(st: &libc::stat, fsid: u64) -> Attr {
    let mode = st.st_mode;
    Attr {
        ftype: FileType::from_mode(mode),
        mode: mode & 0o7777,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        size: st.st_size as u64,
        used: st.st_blocks as u64 * 512,
        rdev: (libc::major(st.st_rdev), libc::minor(st.st_rdev)),
        fsid,
        fileid: st.st_ino,
        atime: ts(st.st_atime, st.st_atime_nsec),
        mtime: ts(st.st_mtime, st.st_mtime_nsec),
        ctime: ts(st.st_ctime, st.st_ctime_nsec),
        btime: None,
    }
}

/// Runs the calling thread's next libgfapi calls as a caller; root again when dropped.
struct AsCaller;

impl AsCaller {
    fn switch(cred: &Credentials) -> VfsResult<AsCaller> {
        gfapi::Credentials { uid: cred.uid, gid: cred.gid, groups: cred.groups.clone() }.apply()?;
        Ok(AsCaller)
    }
}

impl Drop for AsCaller {
    fn drop(&mut self) {
        let _ = gfapi::Credentials::root().apply();
    }
}

/// A cached object: its GFID handle and, for regular files, the I/O descriptor.
struct Node {
    obj: Object,
    io: Mutex<Option<Arc<File>>>,
    /// Set once a stat showed a directory: a GFID never changes type, so operations inside it
    /// need not stat it again (a changed directory's stat always reaches a brick, since
    /// libgfapi's metadata cache drops it on every create or remove inside). A directory
    /// deleted meanwhile makes the operation itself fail with ESTALE.
    is_dir: std::sync::OnceLock<()>,
    /// The attributes a WRITE last checked and when (see `write` in [`GfapiBackend`]'s
    /// `Backend` impl).
    checked: Mutex<Option<(Instant, Attr)>>,
    /// Attributes cached while the volume's upcalls are proved to reach this node
    /// (`attr_cache.rs`, `coherence.rs`).
    attr: Mutex<CachedAttr<libc::stat>>,
}

/// The cached objects, by id: shared with the upcall callback, which invalidates them.
type Nodes = Mutex<LruCache<FileId, Arc<Node>>>;

/// Directory names and listings (`name_cache.rs`): shared with the upcall callback too.
type Names = Mutex<NameCache>;

/// File data (`data_cache.rs`): shared with the upcall callback too.
type Data = Mutex<DataCache<FileId>>;

/// A read asking for less than this is not widened to whole chunks when they are missing (a
/// small random read would otherwise fetch a whole chunk); it is still served from chunks
/// held. Sequential readers ask far more (NFS 1 MiB, SMB up to 8 MiB).
const MIN_FILL_READ: u32 = 64 << 10;

/// What a [`GfapiBackend`] may keep.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Bytes of file data (`[volume] data_cache_mib`).
    pub data_bytes: u64,
    /// Descriptors open on the bricks (`[volume] open_files`).
    pub open_files: usize,
}

/// The namespace over a libgfapi connection.
pub struct GfapiBackend {
    slot: Arc<Mutex<Option<Volume>>>,
    name: String,
    fsid: u64,
    nodes: Arc<Nodes>,
    names: Arc<Names>,
    data: Arc<Data>,
    coherence: Arc<Coherence>,
    /// The objects holding a descriptor, within `[volume] open_files`.
    open_files: OpenFiles<FileId>,
}

fn ts(secs: i64, nanos: i64) -> Timestamp {
    Timestamp { secs, nanos: nanos.clamp(0, 999_999_999) as u32 }
}

fn gfid_of(id: &FileId) -> VfsResult<[u8; 16]> {
    match Identity::decode(id) {
        Some(Identity::Gfid(g)) => Ok(g),
        _ => Err(VfsError::BadHandle),
    }
}

/// ENOENT/ESTALE on an object that was found before: it is gone.
fn stale(e: std::io::Error) -> VfsError {
    match e.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ESTALE) => VfsError::Stale,
        _ => VfsError::from(e),
    }
}

impl GfapiBackend {
    /// A backend for volume `name` over the connection the health probe makes (`slot`),
    /// caching attributes, and file data within `limits`, while `coherence` says the volume's
    /// upcalls reach this node.
    pub fn new(slot: Arc<Mutex<Option<Volume>>>, name: &str, coherence: Arc<Coherence>, limits: Limits) -> Self {
        let nodes: Arc<Nodes> = Arc::new(Mutex::new(LruCache::new(NonZeroUsize::new(MAX_OBJECTS).expect("non-zero"))));
        let names: Arc<Names> = Arc::new(Mutex::new(NameCache::default()));
        let data: Arc<Data> = Arc::new(Mutex::new(DataCache::new(limits.data_bytes)));
        let (weak, weak_names, weak_data) = (Arc::downgrade(&nodes), Arc::downgrade(&names), Arc::downgrade(&data));
        coherence.set_sink(Arc::new(move |g: &gfapi::Gfid| {
            let id = gfid_file_id(g);
            // The file's data first: a read that finds its attributes gone and stats again
            // must not then find the old data.
            if let Some(data) = weak_data.upgrade() {
                data.lock().expect("lock").invalidate(id);
            }
            // An upcall names the changed file and, for a change of names, its directory and a
            // rename's old directory: each one's attributes go, and a directory's names too.
            if let Some(names) = weak_names.upgrade() {
                names.lock().expect("lock").invalidate(&id);
            }
            let Some(nodes) = weak.upgrade() else { return };
            let node = nodes.lock().expect("lock").peek(&id).cloned();
            if let Some(n) = node {
                n.attr.lock().expect("lock").invalidate();
            }
        }));
        Self {
            slot,
            name: name.to_string(),
            fsid: u64::from_le_bytes(volume_id(name).0),
            nodes,
            names,
            data,
            coherence,
            open_files: OpenFiles::new(limits.open_files),
        }
    }

    /// The data cache's counters.
    pub fn data_stats(&self) -> super::data_cache::DataStats {
        self.data.lock().expect("lock").stats()
    }

    /// Attributes of a cached object: from the cache while it is coherent, else from the bricks
    /// (then cached, unless an invalidation came meanwhile). A deleted object is `Stale`.
    fn cached_stat(&self, vol: &Volume, id: &FileId, node: &Node) -> VfsResult<libc::stat> {
        let epoch = self.coherence.epoch();
        let ticket = {
            let a = node.attr.lock().expect("lock");
            if let Some(st) = a.get(epoch, Instant::now()) {
                self.coherence.count(true);
                return Ok(st);
            }
            a.ticket()
        };
        let at = Instant::now();
        // A stat of a directory registers it with the bricks as `register_dir`'s does: the
        // kernel's GETATTR of a directory before each create in it (the create invalidated
        // it) then spares the next lookup's own stat.
        let names =
            (epoch != 0 && node.is_dir.get().is_some()).then(|| self.names.lock().expect("lock").begin(id, epoch, at));
        let st = self.live_stat(vol, id, node)?;
        if epoch != 0 {
            self.coherence.count(false);
            node.attr.lock().expect("lock").fill(ticket, epoch, at, st);
        }
        if let Some(fetch) = names {
            self.names.lock().expect("lock").note_registered(id, fetch);
        }
        Ok(st)
    }

    /// `id` changed through this node (the bricks tell only the other clients): its cached
    /// attributes go.
    fn invalidate(&self, id: &FileId) {
        self.coherence.note_change();
        self.data.lock().expect("lock").invalidate(*id);
        // A directory's names too (a create, remove or link in it; its mode for the grants).
        self.names.lock().expect("lock").invalidate(id);
        let node = self.nodes.lock().expect("lock").peek(id).cloned();
        if let Some(n) = node {
            n.attr.lock().expect("lock").invalidate();
        }
    }

    /// `name` in `dir` (object `d`) now denotes `file` (or nothing) by this node's own call
    /// for `cred`, begun with `fetch`: what `dir` remembers is brought up to date instead of
    /// dropped (`name_cache.rs`). Its attributes changed: with `stamp` (a new entry's) on a
    /// volume that stamps times on the client they are followed (`attr_cache.rs`), else they go.
    fn changed_name(
        &self,
        vol: &Volume,
        (dir, d): (&FileId, &Node),
        fetch: Fetch,
        (name, file): (&Name, Option<FileId>),
        cred: &Credentials,
        stamp: Option<DirStamp>,
    ) {
        self.coherence.note_change();
        self.names.lock().expect("lock").note_name(dir, fetch, name.as_bytes(), file, cred);
        {
            let mut a = d.attr.lock().expect("lock");
            match stamp.filter(|_| vol.stamps_times()) {
                Some(s) => {
                    a.follow(s.ticket, fetch.epoch, Instant::now(), |st| s.apply(st));
                }
                None => a.invalidate(),
            }
        }
        // The cached object of `dir` may have been replaced meanwhile: that one just goes.
        let node = self.nodes.lock().expect("lock").peek(dir).cloned();
        if let Some(n) = node.filter(|n| !std::ptr::eq(Arc::as_ptr(n), d)) {
            n.attr.lock().expect("lock").invalidate();
        }
    }

    /// Ends a mkdir, symlink or mknod of `name` in `dir` for `cred`, begun with `fetch`: the new
    /// entry and what it did to `dir` are written into the caches, or, if it failed, `dir`'s go
    /// (a failure may still have changed it, or shown a name memory said was absent).
    fn made(
        &self,
        vol: &Volume,
        (dir, d): (&FileId, &Node),
        fetch: Fetch,
        (name, cred): (&Name, &Credentials),
        result: VfsResult<((FileId, Attr), DirStamp)>,
    ) -> VfsResult<(FileId, Attr)> {
        match result {
            Ok((found, stamp)) => {
                self.changed_name(vol, (dir, d), fetch, (name, Some(found.0)), cred, Some(stamp));
                Ok(found)
            }
            Err(e) => {
                self.invalidate(dir);
                Err(e)
            }
        }
    }

    /// A fetch about `dir`'s names, begun before a change this node makes in it.
    fn begin_change(&self, dir: &FileId) -> Fetch {
        let epoch = self.coherence.epoch();
        self.names.lock().expect("lock").begin(dir, epoch, Instant::now())
    }

    /// What a create, mkdir, symlink or mknod in `dir` (object `d`) takes before it begins.
    fn begin_making(&self, dir: &FileId, d: &Node) -> Begun {
        let fetch = self.begin_change(dir);
        let dir_ticket = d.attr.lock().expect("lock").ticket();
        Begun { fetch, dir_ticket, mark: self.coherence.changes() }
    }

    /// Removes `name` (a file, or a directory for rmdir) from `dir` (object `d`) as `cred`, and
    /// writes that into `dir`'s names, or drops them if the unlink failed.
    fn unlink_name(&self, vol: &Volume, (dir, d): (&FileId, &Node), name: &Name, cred: &Credentials) -> VfsResult<()> {
        let fetch = self.begin_change(dir);
        let removed = {
            let _as = AsCaller::switch(cred)?;
            vol.unlink(&d.obj, std::ffi::OsStr::from_bytes(name.as_bytes()))
        };
        if let Err(e) = removed {
            self.invalidate(dir);
            return Err(e.into());
        }
        self.changed_name(vol, (dir, d), fetch, (name, None), cred, None);
        Ok(())
    }

    fn vol(&self) -> VfsResult<Volume> {
        let start = Instant::now();
        loop {
            if let Some(v) = self.slot.lock().expect("lock").clone() {
                return Ok(v);
            }
            if start.elapsed() > CONNECT_WAIT {
                return Err(VfsError::Io(libc::ENOTCONN));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn attr(&self, st: &libc::stat) -> Attr {
        attr_of(st, self.fsid)
    }

    /// The cached object of `id`, or the object made from its GFID (no lookup by path).
    fn node(&self, vol: &Volume, id: &FileId) -> VfsResult<Arc<Node>> {
        if let Some(n) = self.nodes.lock().expect("lock").get(id) {
            return Ok(n.clone());
        }
        let g = gfid_of(id)?;
        let (obj, _) = vol.object_from_gfid(&g).map_err(stale)?;
        Ok(self.insert(*id, obj))
    }

    fn insert(&self, id: FileId, obj: Object) -> Arc<Node> {
        let mut nodes = self.nodes.lock().expect("lock");
        if let Some(n) = nodes.get(&id) {
            return n.clone();
        }
        let n = Arc::new(Node {
            obj,
            io: Mutex::new(None),
            is_dir: std::sync::OnceLock::new(),
            checked: Mutex::new(None),
            attr: Mutex::new(CachedAttr::default()),
        });
        nodes.put(id, n.clone());
        n
    }

    fn evict(&self, id: &FileId) {
        self.nodes.lock().expect("lock").pop(id);
    }

    /// Live attributes; a deleted object is `Stale` and leaves the cache.
    fn live_stat(&self, vol: &Volume, id: &FileId, node: &Node) -> VfsResult<libc::stat> {
        match vol.stat(&node.obj) {
            Ok(st) if st.st_nlink > 0 || gfid_of(id)? == ROOT_GFID => Ok(st),
            Ok(_) => {
                self.evict(id);
                Err(VfsError::Stale)
            }
            Err(e) => {
                self.evict(id);
                Err(stale(e))
            }
        }
    }

    fn dir_node(&self, vol: &Volume, id: &FileId) -> VfsResult<Arc<Node>> {
        let n = self.node(vol, id)?;
        if n.is_dir.get().is_some() {
            return Ok(n);
        }
        let st = self.live_stat(vol, id, &n)?;
        if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
            return Err(VfsError::NotDir);
        }
        let _ = n.is_dir.set(());
        Ok(n)
    }

    /// `obj` found as `dir/name`: its id, cached, with attributes. `mark` is
    /// [`Coherence::changes`] from before the call that found it: the attributes are cached
    /// too if nothing was invalidated since.
    fn found(&self, obj: Object, st: &libc::stat, mark: u64) -> VfsResult<(FileId, Attr)> {
        self.found_node(obj, st, mark).map(|(id, _, attr)| (id, attr))
    }

    /// [`Self::found`], with the file's cached object.
    fn found_node(&self, obj: Object, st: &libc::stat, mark: u64) -> VfsResult<(FileId, Arc<Node>, Attr)> {
        let at = Instant::now();
        let id = gfid_file_id(&obj.gfid()?);
        let node = self.insert(id, obj);
        let epoch = self.coherence.epoch();
        if epoch != 0 && st.st_nlink > 0 {
            let mut a = node.attr.lock().expect("lock");
            if self.coherence.changes() == mark {
                let t = a.ticket();
                a.fill(t, epoch, at, *st);
            }
        }
        Ok((id, node, self.attr(st)))
    }

    fn lookup_obj(&self, vol: &Volume, cred: &Credentials, dir: &Node, name: &[u8]) -> VfsResult<(Object, libc::stat)> {
        let _as = AsCaller::switch(cred)?;
        Ok(vol.lookup(&dir.obj, std::ffi::OsStr::from_bytes(name))?)
    }

    /// The I/O descriptor of regular file `id`, opened as root on first use.
    fn io(&self, vol: &Volume, id: &FileId, node: &Node) -> VfsResult<Arc<File>> {
        if let Some(f) = node.io.lock().expect("lock").clone() {
            self.open_files.used(id);
            return Ok(f);
        }
        let f = match vol.open(&node.obj, libc::O_RDWR) {
            Ok(f) => f,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EROFS)) => {
                vol.open(&node.obj, libc::O_RDONLY)?
            }
            Err(e) => return Err(e.into()),
        };
        Ok(self.keep_io(id, node, f))
    }

    /// Makes `f` the I/O descriptor of `node` (file `id`), unless another thread set one
    /// first, and closes the least recently used one beyond `[volume] open_files`: each is an
    /// open file on the bricks (see [`crate::vfs::open_files`]).
    fn keep_io(&self, id: &FileId, node: &Node, f: File) -> Arc<File> {
        let file = node.io.lock().expect("lock").get_or_insert_with(|| Arc::new(f)).clone();
        self.open_files.keep(*id, |old| {
            let gone = self.nodes.lock().expect("lock").peek(&old).cloned();
            gone.and_then(|n| n.io.lock().expect("lock").take())
        });
        file
    }

    fn regular(&self, vol: &Volume, id: &FileId) -> VfsResult<(Arc<Node>, Attr)> {
        let node = self.node(vol, id)?;
        let st = self.cached_stat(vol, id, &node)?;
        match FileType::from_mode(st.st_mode) {
            FileType::Regular => Ok((node, self.attr(&st))),
            FileType::Directory => Err(VfsError::IsDir),
            _ => Err(VfsError::Invalid),
        }
    }

    fn apply_setattr(&self, vol: &Volume, node: &Node, set: &SetAttr) -> VfsResult<()> {
        if let Some(size) = set.size {
            vol.truncate(&node.obj, size)?;
        }
        // SAFETY: stat is plain data.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        let mut valid = 0;
        if let Some(m) = set.mode {
            st.st_mode = m & 0o7777;
            valid |= gfapi::GFAPI_SET_ATTR_MODE;
        }
        if let Some(u) = set.uid {
            st.st_uid = u;
            valid |= gfapi::GFAPI_SET_ATTR_UID;
        }
        if let Some(g) = set.gid {
            st.st_gid = g;
            valid |= gfapi::GFAPI_SET_ATTR_GID;
        }
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let pick = |t: SetTime| match t {
            SetTime::DontChange => None,
            SetTime::ServerNow => Some((now.as_secs() as i64, i64::from(now.subsec_nanos()))),
            SetTime::Client(t) => Some((t.secs, i64::from(t.nanos))),
        };
        if let Some((s, n)) = pick(set.atime) {
            st.st_atime = s;
            st.st_atime_nsec = n;
            valid |= gfapi::GFAPI_SET_ATTR_ATIME;
        }
        if let Some((s, n)) = pick(set.mtime) {
            st.st_mtime = s;
            st.st_mtime_nsec = n;
            valid |= gfapi::GFAPI_SET_ATTR_MTIME;
        }
        if valid != 0 {
            vol.setattr(&node.obj, &st, valid)?;
        }
        Ok(())
    }

    /// A file a remembered name or listing denotes, with its attributes (cached, or one stat).
    fn known_child(&self, vol: &Volume, id: &FileId) -> VfsResult<(FileId, Attr)> {
        let node = self.node(vol, id)?;
        Ok((*id, self.attr(&self.cached_stat(vol, id, &node)?)))
    }

    /// Makes sure the bricks will tell this node of names created in `dir` (a LOOKUP that
    /// finds nothing registers nothing): a stat of the directory, once per remembered entries.
    fn register_dir(&self, vol: &Volume, dir: &FileId, d: &Node, epoch: u64) {
        if self.names.lock().expect("lock").registered(dir, epoch, Instant::now()) {
            return;
        }
        let fetch = self.names.lock().expect("lock").begin(dir, epoch, Instant::now());
        let attr_ticket = d.attr.lock().expect("lock").ticket();
        if let Ok(st) = self.live_stat(vol, dir, d) {
            d.attr.lock().expect("lock").fill(attr_ticket, epoch, fetch.at, st);
            self.names.lock().expect("lock").note_registered(dir, fetch);
        }
    }

    /// A page of `dir` from its remembered listing, when memory holds it all and the caller
    /// may list the directory; entries whose attributes are no longer cached are stat'ed (at
    /// most [`MAX_RESTATS`]).
    fn remembered_page(
        &self,
        vol: &Volume,
        cred: &Credentials,
        (dir, cookie): (&FileId, u64),
        max_entries: usize,
        plus: bool,
        epoch: u64,
    ) -> VfsResult<Option<ReadDir>> {
        let now = Instant::now();
        let Some((listed, eof)) = self.names.lock().expect("lock").page(dir, cookie, max_entries, cred, epoch, now)
        else {
            return Ok(None);
        };
        let mut entries = Vec::with_capacity(listed.len());
        if !plus {
            entries.extend(listed.into_iter().map(|l| DirEntry {
                name: l.name,
                cookie: l.cookie,
                fileid: l.fileid,
                kind: None,
                plus: None,
            }));
            return Ok(Some(ReadDir { entries, eof, dir_attr: None }));
        }
        let mut attrs: Vec<Option<libc::stat>> = {
            let mut nodes = self.nodes.lock().expect("lock");
            listed.iter().map(|l| nodes.get(&l.id).and_then(|n| n.attr.lock().expect("lock").get(epoch, now))).collect()
        };
        if attrs.iter().filter(|a| a.is_none()).count() > MAX_RESTATS {
            return Ok(None);
        }
        for (l, a) in listed.iter().zip(attrs.iter_mut()) {
            if a.is_none() {
                match self.node(vol, &l.id).and_then(|n| self.cached_stat(vol, &l.id, &n)) {
                    Ok(st) => *a = Some(st),
                    Err(_) => {
                        // Gone, though nothing said so: the listing is not trusted any more.
                        self.names.lock().expect("lock").invalidate(dir);
                        return Ok(None);
                    }
                }
            }
        }
        self.coherence.count(true);
        for (l, a) in listed.into_iter().zip(attrs) {
            let attr = self.attr(&a.expect("filled above"));
            entries.push(DirEntry {
                name: l.name,
                cookie: l.cookie,
                fileid: attr.fileid,
                kind: None,
                plus: Some((l.id, attr)),
            });
        }
        Ok(Some(ReadDir { entries, eof, dir_attr: None }))
    }

    /// Reads `dir` from the bricks on from `tail` (the remembered listing's last cookie, 0 for
    /// the start), at least `max_entries` (and [`MIN_EXTEND`]) entries or to the end, and
    /// remembers them.
    fn extend_listing(
        &self,
        vol: &Volume,
        cred: &Credentials,
        (dir, d): (&FileId, &Node),
        tail: u64,
        max_entries: usize,
        epoch: u64,
    ) -> VfsResult<()> {
        let fetch = self.names.lock().expect("lock").begin(dir, epoch, Instant::now());
        let mark = self.coherence.changes();
        let listing = open_listing(vol, cred, d, tail)?;
        let mut got = Vec::new();
        let eof = loop {
            if got.len() >= max_entries.max(MIN_EXTEND) {
                break false;
            }
            let next = {
                let _as = AsCaller::switch(cred)?;
                listing.next_entry_plus()?
            };
            let Some(e) = next else { break true };
            if e.name == b"." || e.name == b".." {
                continue;
            }
            let (id, attr) = match (e.object, e.stat) {
                (Some(obj), Some(st)) => self.found(obj, &st, mark)?,
                // The volume gave no object or attributes for this one: nothing is remembered.
                _ => return Ok(()),
            };
            got.push(Listed { name: e.name, cookie: e.cookie as u64, fileid: attr.fileid, id });
        };
        let mut names = self.names.lock().expect("lock");
        names.grant(dir, fetch, Grant::Read, cred);
        names.fill_listing(dir, fetch, tail, got, eof);
        Ok(())
    }

    /// A page of `dir` read from the bricks, nothing remembered but the entries' attributes.
    fn readdir_live(
        &self,
        vol: &Volume,
        cred: &Credentials,
        d: &Node,
        cookie: u64,
        max_entries: usize,
        plus: bool,
    ) -> VfsResult<ReadDir> {
        let listing = open_listing(vol, cred, d, cookie)?;
        let mut entries = Vec::new();
        loop {
            let mark = self.coherence.changes();
            // One READDIRP gives every entry's attributes and (plus) its object: no lookup per
            // entry, and the attributes are the bricks' own at listing time.
            let next = {
                let _as = AsCaller::switch(cred)?;
                if plus {
                    listing.next_entry_plus()?
                } else {
                    listing.next_entry()?.map(|e| DirEntryPlus {
                        name: e.name,
                        cookie: e.cookie,
                        stat: Some(e.stat),
                        object: None,
                    })
                }
            };
            let Some(e) = next else { return Ok(ReadDir { entries, eof: true, dir_attr: None }) };
            if e.name == b"." || e.name == b".." {
                continue;
            }
            if entries.len() >= max_entries {
                return Ok(ReadDir { entries, eof: false, dir_attr: None });
            }
            let found = match (plus, e.object, e.stat) {
                (false, _, _) => None,
                (true, Some(obj), Some(st)) => Some(self.found(obj, &st, mark)?),
                // The volume gave no object or attributes for this one: look it up.
                (true, _, _) => match self.lookup_obj(vol, cred, d, &e.name) {
                    Ok((obj, st)) => Some(self.found(obj, &st, mark)?),
                    Err(_) => continue, // removed meanwhile
                },
            };
            let fileid = match (&found, e.stat) {
                (Some((_, attr)), _) => attr.fileid,
                (None, Some(st)) => st.st_ino,
                (None, None) => 0,
            };
            // READDIRP's attributes tell the type even without `plus` (a zero mode: not given).
            let kind = e.stat.filter(|st| st.st_mode != 0).map(|st| FileType::from_mode(st.st_mode));
            entries.push(DirEntry { name: e.name, cookie: e.cookie as u64, fileid, kind, plus: found });
        }
    }

    /// Bytes `offset..offset + want` of the file (all inside it by `stamp`) appended to `out`
    /// from its cached chunks, the missing ones read from the bricks and kept (under `ticket`,
    /// taken before `stamp` was), unless they are missing and `fill` is false: then `None`.
    #[allow(clippy::too_many_arguments)]
    fn read_through(
        &self,
        vol: &Volume,
        (id, node): (&FileId, &Node),
        (ticket, epoch, stamp): (Ticket, u64, Stamp),
        offset: u64,
        want: usize,
        fill: bool,
        out: &mut Vec<u8>,
    ) -> VfsResult<Option<usize>> {
        let range = chunks_of(offset, want as u64);
        let mut held: Vec<Option<Arc<Vec<u8>>>> = {
            let mut d = self.data.lock().expect("lock");
            range.clone().map(|i| d.get(*id, i, epoch, stamp)).collect()
        };
        let missing: Vec<u64> = range.clone().zip(&held).filter(|(_, c)| c.is_none()).map(|(i, _)| i).collect();
        if !missing.is_empty() {
            if !fill {
                return Ok(None);
            }
            let f = self.io(vol, id, node)?;
            let len_of = |i: u64| CHUNK.min(stamp.size.saturating_sub(i * CHUNK)) as usize;
            let read = read_chunks(&|b, at| f.read_uninit(b, at), &missing, &len_of)?;
            let mut d = self.data.lock().expect("lock");
            for (i, buf) in missing.into_iter().zip(read) {
                let buf = Arc::new(buf);
                // A short chunk (the file shrank meanwhile) is refused by the cache.
                d.fill(*id, ticket, epoch, stamp, i, buf.clone());
                held[(i - range.start) as usize] = Some(buf);
            }
        }
        let chunks: Vec<Arc<Vec<u8>>> = held.into_iter().map(|c| c.expect("held or read")).collect();
        Ok(Some(gather(&chunks, range.start, offset, want, out)))
    }

    /// A POSIX byte-range lock call on `id` for lock owner `owner` (`F_SETLK`, `F_SETLKW`,
    /// `F_GETLK`), enforced by the bricks for every node: the base of the cluster-wide lock
    /// table and of the recovery lock over gfapi. Each owner gets its own descriptor.
    pub fn lock(&self, id: &FileId, owner: &[u8], cmd: i32, lock: &mut libc::flock) -> VfsResult<Arc<File>> {
        let vol = self.vol()?;
        let (node, _) = self.regular(&vol, id)?;
        let f = Arc::new(vol.open(&node.obj, libc::O_RDWR)?);
        f.set_lock_owner(owner)?;
        f.posix_lock(cmd, lock)?;
        Ok(f)
    }
}

use std::os::unix::ffi::OsStrExt;

impl Backend for GfapiBackend {
    fn hold(&self, id: &FileId) -> VfsResult<Arc<dyn HeldFile>> {
        let vol = self.vol()?;
        // The file's cached I/O descriptor (one per file, shared with SMB and NFS): held here,
        // it outlives the cache's entry, which a remove drops.
        let node = self.node(&vol, id)?;
        let file = self.io(&vol, id, &node)?;
        Ok(Arc::new(GfapiHeld { file, fsid: self.fsid }))
    }

    fn owner_locks(&self, id: &FileId, owner: &[u8]) -> VfsResult<Box<dyn crate::vfs::backend::OwnerLocks>> {
        let vol = self.vol()?;
        let (node, _) = self.regular(&vol, id)?;
        let f = vol.open(&node.obj, libc::O_RDWR)?;
        // The bricks know a lock's owner by (client, lock owner): each NLM owner is its own.
        f.set_lock_owner(owner)?;
        Ok(Box::new(GfapiOwnerLocks(f)))
    }

    fn volume_id(&self) -> VolumeId {
        volume_id(&self.name)
    }

    fn root(&self) -> FileId {
        gfid_file_id(&ROOT_GFID)
    }

    fn getattr(&self, id: &FileId) -> VfsResult<Attr> {
        let vol = self.vol()?;
        let node = self.node(&vol, id)?;
        Ok(self.attr(&self.cached_stat(&vol, id, &node)?))
    }

    fn setattr(&self, cred: &Credentials, id: &FileId, set: &SetAttr) -> VfsResult<Attr> {
        let vol = self.vol()?;
        let node = self.node(&vol, id)?;
        self.cached_stat(&vol, id, &node)?;
        let done = {
            let _as = AsCaller::switch(cred)?;
            // A chmod or chown through this node counts for the next WRITE at once.
            *node.checked.lock().expect("lock") = None;
            self.apply_setattr(&vol, &node, set)
        };
        // Even a failed setattr may have changed something (a truncate before a refused chmod).
        self.invalidate(id);
        done?;
        Ok(self.attr(&self.cached_stat(&vol, id, &node)?))
    }

    fn lookup(&self, cred: &Credentials, dir: &FileId, name: &Name) -> VfsResult<(FileId, Attr)> {
        let vol = self.vol()?;
        let d = self.dir_node(&vol, dir)?;
        let epoch = self.coherence.epoch();
        if epoch == 0 {
            let mark = self.coherence.changes();
            let (obj, st) = self.lookup_obj(&vol, cred, &d, name.as_bytes())?;
            return self.found(obj, &st, mark);
        }
        let known = self.names.lock().expect("lock").lookup(dir, name.as_bytes(), cred, epoch, Instant::now());
        match known {
            Some(Known::Absent) => return Err(VfsError::NotFound),
            Some(Known::Is(id)) => match self.known_child(&vol, &id) {
                Ok(found) => return Ok(found),
                // Gone, though nothing said so: ask the bricks.
                Err(_) => self.names.lock().expect("lock").invalidate(dir),
            },
            None => {}
        }
        self.register_dir(&vol, dir, &d, epoch);
        let fetch = self.names.lock().expect("lock").begin(dir, epoch, Instant::now());
        let mark = self.coherence.changes();
        let looked = self.lookup_obj(&vol, cred, &d, name.as_bytes());
        let found = match looked {
            Ok((obj, st)) => Some(self.found(obj, &st, mark)?),
            Err(VfsError::NotFound) => None,
            Err(e) => return Err(e),
        };
        // The bricks let this caller search the directory (a refusal is EACCES, not ENOENT).
        let mut names = self.names.lock().expect("lock");
        names.grant(dir, fetch, Grant::Search, cred);
        names.fill_name(dir, fetch, name.as_bytes(), found.map(|(id, _)| id));
        found.ok_or(VfsError::NotFound)
    }

    fn parent(&self, cred: &Credentials, dir: &FileId) -> VfsResult<(FileId, Attr)> {
        let vol = self.vol()?;
        let d = self.dir_node(&vol, dir)?;
        if gfid_of(dir)? == ROOT_GFID {
            return Ok((*dir, self.attr(&vol.stat(&d.obj)?)));
        }
        let mark = self.coherence.changes();
        let (obj, st) = self.lookup_obj(&vol, cred, &d, b"..")?;
        self.found(obj, &st, mark)
    }

    fn read(&self, cred: &Credentials, id: &FileId, offset: u64, count: u32) -> VfsResult<(Vec<u8>, bool, Attr)> {
        let mut buf = Vec::new();
        let (_, eof, attr) = self.read_append(cred, id, offset, count, &mut buf)?;
        Ok((buf, eof, attr))
    }

    /// Reads up to `count` bytes at `offset` of `id` for `cred` and appends them to `out`:
    /// from the data cache while it is coherent and holds them, else from the bricks (whole
    /// chunks then kept, see `MIN_FILL_READ`). Returns (bytes appended, eof, attributes).
    fn read_append(
        &self,
        cred: &Credentials,
        id: &FileId,
        offset: u64,
        count: u32,
        out: &mut Vec<u8>,
    ) -> VfsResult<(u32, bool, Attr)> {
        let vol = self.vol()?;
        // Taken before the attributes are: whatever changes the file from here on (an upcall, a
        // write through this node) keeps this read's data out of the cache.
        let (ticket, cached) = {
            let d = self.data.lock().expect("lock");
            (d.ticket(), d.enabled())
        };
        let (node, attr) = self.regular(&vol, id)?;
        if cred.uid != attr.uid && access::granted(&attr, cred, access::READ) == 0 {
            return Err(VfsError::Access);
        }
        let want = (count as u64).min(attr.size.saturating_sub(offset)) as usize;
        let epoch = self.coherence.epoch();
        if cached && epoch != 0 && want > 0 {
            let fill = count >= MIN_FILL_READ;
            if let Some(n) =
                self.read_through(&vol, (id, &node), (ticket, epoch, stamp_of(&attr)), offset, want, fill, out)?
            {
                return Ok((n as u32, offset + n as u64 >= attr.size, attr));
            }
        }
        let f = self.io(&vol, id, &node)?;
        let start = out.len();
        out.reserve(want);
        let n = read_pieces(&|b, at| f.read_uninit(b, at), &mut out.spare_capacity_mut()[..want], offset)?;
        // SAFETY: read_pieces initialised the first `n` bytes after the old length.
        unsafe { out.set_len(start + n) };
        Ok((n as u32, offset + n as u64 >= attr.size, attr))
    }

    fn write(
        &self,
        cred: &Credentials,
        id: &FileId,
        offset: u64,
        data: &[u8],
        stable: Stability,
    ) -> VfsResult<(u32, Stability, Option<Attr>)> {
        let vol = self.vol()?;
        // Owner and mode for the permission check, and whether the file still exists: a stat
        // right after the previous WRITE waits until write-behind has sent that write to the
        // bricks and then costs a STAT, which would make a stream of UNSTABLE writes
        // synchronous. So a file checked less than WRITE_CHECK ago is not stat'ed again: a
        // chmod or delete through another node reaches WRITEs at most that late (the data of a
        // WRITE to a file deleted meanwhile goes with the file).
        let node = self.node(&vol, id)?;
        let known = *node.checked.lock().expect("lock");
        let attr = match known {
            Some((at, attr)) if at.elapsed() < WRITE_CHECK => attr,
            _ => {
                let (_, attr) = self.regular(&vol, id)?;
                *node.checked.lock().expect("lock") = Some((Instant::now(), attr));
                attr
            }
        };
        if cred.uid != attr.uid && access::granted(&attr, cred, access::MODIFY) == 0 {
            return Err(VfsError::Access);
        }
        offset.checked_add(data.len() as u64).filter(|&end| end <= i64::MAX as u64).ok_or(VfsError::TooBig)?;
        let f = self.io(&vol, id, &node)?;
        let written = f.write_all_at(data, offset);
        // Size and times changed (or may have, if the write failed half way).
        self.invalidate(id);
        written?;
        if let Some(mode) = access::mode_after_write(attr.mode, cred) {
            self.apply_setattr(&vol, &node, &SetAttr { mode: Some(mode), ..Default::default() })?;
            *node.checked.lock().expect("lock") = None;
            self.invalidate(id);
        }
        // After an UNSTABLE write the data may still be in libgfapi's write-behind: a stat
        // would wait until it reached every brick. After a sync, the stat is answered from the
        // attributes the sync brought back.
        let after = if stable == Stability::Unstable {
            None
        } else {
            f.fsync()?;
            Some(self.attr(&vol.stat(&node.obj)?))
        };
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
        let vol = self.vol()?;
        let d = self.dir_node(&vol, dir)?;
        let mode = mode & 0o7777;
        let os = std::ffi::OsStr::from_bytes(name.as_bytes());
        let begun = self.begin_making(dir, &d);
        // Created and opened in one request: the descriptor becomes the file's cached I/O
        // descriptor (libgfapi checks permissions at open only, as the POSIX backend's root fd).
        let made = {
            let _as = AsCaller::switch(cred)?;
            match vol.create_open(&d.obj, os, libc::O_RDWR | libc::O_EXCL, mode) {
                Ok((obj, mut st, file)) => {
                    let stamp = begun.stamp(&st);
                    let umasked = st.st_mode & 0o7777 != mode;
                    if umasked {
                        // libgfapi applied a umask: the protocol asked for exactly `mode`.
                        st.st_mode = (st.st_mode & !0o7777) | mode;
                        if let Err(e) = vol.setattr(&obj, &st, gfapi::GFAPI_SET_ATTR_MODE) {
                            self.invalidate(dir);
                            return Err(e.into());
                        }
                    }
                    Some((obj, st, file, umasked, stamp))
                }
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => None,
                Err(e) => {
                    self.invalidate(dir);
                    return Err(e.into());
                }
            }
        };
        let created = made.is_some();
        let (id, attr) = match made {
            Some((obj, st, file, umasked, stamp)) => {
                // The bricks registered this node with the new file: its attributes are
                // cached as any lookup's (but not after the chmod, which changed its ctime).
                let (id, node, attr) = match self.found_node(obj, &st, begun.mark) {
                    Ok(f) => f,
                    Err(e) => {
                        self.invalidate(dir);
                        return Err(e);
                    }
                };
                if umasked {
                    node.attr.lock().expect("lock").invalidate();
                }
                self.changed_name(&vol, (dir, &d), begun.fetch, (name, Some(id)), cred, Some(stamp));
                self.keep_io(&id, &node, file);
                (id, attr)
            }
            None => {
                // The name exists, though memory may have said it did not (the upcall for
                // another client's create still on its way): what the bricks said is kept.
                let looked = self.lookup_obj(&vol, cred, &d, name.as_bytes());
                let (id, attr) = match looked.and_then(|(obj, st)| self.found(obj, &st, begun.mark)) {
                    Ok(f) => f,
                    Err(e) => {
                        self.invalidate(dir);
                        return Err(e);
                    }
                };
                self.names.lock().expect("lock").fill_name(dir, begun.fetch, name.as_bytes(), Some(id));
                (id, attr)
            }
        };
        match how {
            CreateHow::Guarded(_) if !created => Err(VfsError::Exists),
            CreateHow::Unchecked(_) | CreateHow::Guarded(_) if attr.ftype != FileType::Regular => Err(VfsError::Exists),
            CreateHow::Unchecked(set) | CreateHow::Guarded(set) => {
                // A file this call made is empty already: truncating it again (an
                // `open(O_CREAT | O_TRUNC)`) would cost the bricks a TRUNCATE and two STATs.
                let set = if created && set.size == Some(0) { SetAttr { size: None, ..set } } else { set };
                if set.is_empty() {
                    Ok((id, attr))
                } else {
                    self.setattr(cred, &id, &set).map(|a| (id, a))
                }
            }
            CreateHow::Exclusive(v) => {
                let at = Timestamp { secs: i64::from(u32::from_be_bytes(v[0..4].try_into().expect("4"))), nanos: 0 };
                let mt = Timestamp { secs: i64::from(u32::from_be_bytes(v[4..8].try_into().expect("4"))), nanos: 0 };
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
        let vol = self.vol()?;
        let d = self.dir_node(&vol, dir)?;
        let mode = mode & 0o7777;
        let begun = self.begin_making(dir, &d);
        let made = {
            let _as = AsCaller::switch(cred)?;
            vol.mkdir(&d.obj, std::ffi::OsStr::from_bytes(name.as_bytes()), mode)
        };
        let (obj, mut st) = match made {
            Ok(m) => m,
            Err(e) => {
                self.invalidate(dir);
                return Err(e.into());
            }
        };
        // The new directory is empty and this node registered with it, unless anything was
        // invalidated since the call began (an upcall about it would have been lost).
        if let Ok(g) = obj.gfid() {
            let new = gfid_file_id(&g);
            let mut names = self.names.lock().expect("lock");
            let made = names.begin(&new, begun.fetch.epoch, Instant::now());
            names.note_made(&new, made, self.coherence.changes() == begun.mark);
        }
        let stamp = begun.stamp(&st);
        let fixed = if st.st_mode & 0o7777 != mode {
            let mut s = st;
            s.st_mode = mode;
            vol.setattr(&obj, &s, gfapi::GFAPI_SET_ATTR_MODE).and_then(|()| vol.stat(&obj)).map(|s| st = s)
        } else {
            Ok(())
        };
        let found = fixed.map_err(VfsError::from).and_then(|()| Ok((self.found(obj, &st, begun.mark)?, stamp)));
        self.made(&vol, (dir, &d), begun.fetch, (name, cred), found)
    }

    fn symlink(&self, cred: &Credentials, dir: &FileId, name: &Name, target: &[u8]) -> VfsResult<(FileId, Attr)> {
        if target.is_empty() || target.contains(&0) {
            return Err(VfsError::Invalid);
        }
        let vol = self.vol()?;
        let d = self.dir_node(&vol, dir)?;
        let begun = self.begin_making(dir, &d);
        let made = {
            let _as = AsCaller::switch(cred)?;
            vol.symlink(&d.obj, std::ffi::OsStr::from_bytes(name.as_bytes()), std::ffi::OsStr::from_bytes(target))
        };
        let found = made
            .map_err(VfsError::from)
            .and_then(|(obj, st)| Ok((self.found(obj, &st, begun.mark)?, begun.stamp(&st))));
        self.made(&vol, (dir, &d), begun.fetch, (name, cred), found)
    }

    fn mknod(
        &self,
        cred: &Credentials,
        dir: &FileId,
        name: &Name,
        kind: SpecialFile,
        mode: u32,
    ) -> VfsResult<(FileId, Attr)> {
        // The bricks make the node as root whoever asks: a device is refused here to anyone
        // else, whatever the caller above checked (mknod(2) needs CAP_MKNOD for one).
        if kind.is_device() && !cred.is_root() {
            return Err(VfsError::Perm);
        }
        let vol = self.vol()?;
        let d = self.dir_node(&vol, dir)?;
        let mode = mode & 0o7777;
        let begun = self.begin_making(dir, &d);
        let made = {
            let _as = AsCaller::switch(cred)?;
            vol.mknod(&d.obj, std::ffi::OsStr::from_bytes(name.as_bytes()), kind.mode_type() | mode, kind.dev())
        };
        let found = made.map_err(VfsError::from).and_then(|(obj, mut st)| {
            let stamp = begun.stamp(&st);
            if st.st_mode & 0o7777 != mode {
                // libgfapi applied a umask: the protocol asked for exactly `mode`.
                let mut s = st;
                s.st_mode = mode;
                vol.setattr(&obj, &s, gfapi::GFAPI_SET_ATTR_MODE)?;
                st = vol.stat(&obj)?;
            }
            Ok((self.found(obj, &st, begun.mark)?, stamp))
        });
        self.made(&vol, (dir, &d), begun.fetch, (name, cred), found)
    }

    fn readlink(&self, _cred: &Credentials, id: &FileId) -> VfsResult<Vec<u8>> {
        let vol = self.vol()?;
        let node = self.node(&vol, id)?;
        let st = self.cached_stat(&vol, id, &node)?;
        if FileType::from_mode(st.st_mode) != FileType::Symlink {
            return Err(VfsError::Invalid);
        }
        Ok(vol.readlink(&node.obj)?)
    }

    fn remove(&self, cred: &Credentials, dir: &FileId, name: &Name) -> VfsResult<()> {
        let vol = self.vol()?;
        let d = self.dir_node(&vol, dir)?;
        let (obj, st) = self.lookup_obj(&vol, cred, &d, name.as_bytes())?;
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            return Err(VfsError::IsDir);
        }
        let victim = obj.gfid().ok().map(|g| gfid_file_id(&g));
        self.unlink_name(&vol, (dir, &d), name, cred)?;
        if let Some(v) = victim {
            self.invalidate(&v); // its link count changed
            if st.st_nlink <= 1 {
                self.evict(&v);
            }
        }
        Ok(())
    }

    fn rmdir(&self, cred: &Credentials, dir: &FileId, name: &Name) -> VfsResult<()> {
        let vol = self.vol()?;
        let d = self.dir_node(&vol, dir)?;
        let (obj, st) = self.lookup_obj(&vol, cred, &d, name.as_bytes())?;
        if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
            return Err(VfsError::NotDir);
        }
        let victim = obj.gfid().ok().map(|g| gfid_file_id(&g));
        self.unlink_name(&vol, (dir, &d), name, cred)?;
        if let Some(v) = victim {
            self.evict(&v);
        }
        Ok(())
    }

    fn rename(&self, cred: &Credentials, from_dir: &FileId, from: &Name, to_dir: &FileId, to: &Name) -> VfsResult<()> {
        let vol = self.vol()?;
        let fd = self.dir_node(&vol, from_dir)?;
        let td = self.dir_node(&vol, to_dir)?;
        let victim = self.lookup_obj(&vol, cred, &td, to.as_bytes()).ok().and_then(|(o, _)| o.gfid().ok());
        let renamed = {
            let _as = AsCaller::switch(cred)?;
            vol.rename(
                &fd.obj,
                std::ffi::OsStr::from_bytes(from.as_bytes()),
                &td.obj,
                std::ffi::OsStr::from_bytes(to.as_bytes()),
            )
        };
        // Both directories, the replaced file and the moved object (whose ctime and, for a
        // directory, `..` changed; its id is not known here) changed: every entry goes.
        self.coherence.drop_all();
        renamed?;
        if let Some(v) = victim {
            self.evict(&gfid_file_id(&v));
        }
        Ok(())
    }

    fn link(&self, cred: &Credentials, id: &FileId, dir: &FileId, name: &Name) -> VfsResult<Attr> {
        let vol = self.vol()?;
        let node = self.node(&vol, id)?;
        let st = self.cached_stat(&vol, id, &node)?;
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            return Err(VfsError::IsDir);
        }
        let d = self.dir_node(&vol, dir)?;
        let fetch = self.begin_change(dir);
        let linked = {
            let _as = AsCaller::switch(cred)?;
            vol.link(&node.obj, &d.obj, std::ffi::OsStr::from_bytes(name.as_bytes()))
        };
        match linked {
            Ok(()) => self.changed_name(&vol, (dir, &d), fetch, (name, Some(*id)), cred, None),
            Err(e) => {
                self.invalidate(dir);
                return Err(e.into());
            }
        }
        self.invalidate(id);
        Ok(self.attr(&self.cached_stat(&vol, id, &node)?))
    }

    fn readdir(
        &self,
        cred: &Credentials,
        dir: &FileId,
        cookie: u64,
        max_entries: usize,
        plus: bool,
    ) -> VfsResult<ReadDir> {
        let vol = self.vol()?;
        let d = self.dir_node(&vol, dir)?;
        let epoch = self.coherence.epoch();
        if epoch != 0 {
            if let Some(page) = self.remembered_page(&vol, cred, (dir, cookie), max_entries, plus, epoch)? {
                return Ok(page);
            }
            // A listing read from its start (or on from where memory ends) is remembered as it
            // goes, then served from memory.
            let resume = self.names.lock().expect("lock").resume_at(dir, cookie, epoch, Instant::now());
            if let Some(tail) = resume {
                self.extend_listing(&vol, cred, (dir, &d), tail, max_entries, epoch)?;
                if let Some(page) = self.remembered_page(&vol, cred, (dir, cookie), max_entries, plus, epoch)? {
                    return Ok(page);
                }
            }
        }
        self.readdir_live(&vol, cred, &d, cookie, max_entries, plus)
    }

    fn forget_names(&self, dir: &FileId) {
        self.names.lock().expect("lock").invalidate(dir);
    }

    fn cookie_verifier(&self, _dir: &FileId) -> u64 {
        // GlusterFS directory offsets are stable cookies on every node.
        self.fsid
    }

    fn flush(&self, id: &FileId) -> VfsResult<()> {
        // Writes libgfapi's write-behind acknowledged may not have reached the bricks yet; a
        // close (its flush) waits for them. The cached descriptor is closed when nothing else
        // uses it (the next I/O opens another); otherwise an fsync waits for them instead.
        let Some(node) = self.nodes.lock().expect("lock").peek(id).cloned() else { return Ok(()) };
        let Some(f) = node.io.lock().expect("lock").take() else { return Ok(()) };
        match Arc::try_unwrap(f) {
            Ok(f) => {
                self.open_files.closed(id);
                f.close().map_err(stale)
            }
            Err(shared) => {
                node.io.lock().expect("lock").get_or_insert_with(|| shared.clone());
                shared.fsync().map_err(stale)
            }
        }
    }

    fn fsync(&self, id: &FileId) -> VfsResult<()> {
        let vol = self.vol()?;
        let node = self.node(&vol, id)?;
        // A file written through this node: sync its descriptor first. A stat before the sync
        // would wait for write-behind's flush and cost a brick round trip of its own; after it,
        // the stat (for STALE) is answered from the attributes the sync returned.
        let written = node.io.lock().expect("lock").clone();
        if let Some(f) = written {
            f.fsync().map_err(stale)?;
            self.live_stat(&vol, id, &node)?;
            return Ok(());
        }
        let st = self.live_stat(&vol, id, &node)?;
        if FileType::from_mode(st.st_mode) == FileType::Regular {
            self.io(&vol, id, &node)?.fsync()?;
        }
        Ok(())
    }

    fn find_name_nocase(&self, cred: &Credentials, dir: &FileId, name: &Name) -> VfsResult<Option<Vec<u8>>> {
        // Every brick looks the name up ignoring case on its own disk (what Samba's
        // vfs_glusterfs asks): one round trip instead of listing the directory.
        let vol = self.vol()?;
        let d = self.dir_node(&vol, dir)?;
        let mut key = b"glusterfs.get_real_filename:".to_vec();
        key.extend_from_slice(name.as_bytes());
        let _as = AsCaller::switch(cred)?;
        match vol.get_xattr(&d.obj, &key) {
            Ok(Some(mut real)) => {
                while real.last() == Some(&0) {
                    real.pop();
                }
                Ok(Some(real).filter(|r| !r.is_empty()))
            }
            Ok(None) => Ok(None),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENODATA)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn get_xattr(&self, cred: &Credentials, id: &FileId, name: &[u8]) -> VfsResult<Option<Vec<u8>>> {
        let vol = self.vol()?;
        let node = self.node(&vol, id)?;
        let _as = AsCaller::switch(cred)?;
        vol.get_xattr(&node.obj, name).map_err(xattr_error)
    }

    fn set_xattr(&self, cred: &Credentials, id: &FileId, name: &[u8], value: &[u8]) -> VfsResult<()> {
        let vol = self.vol()?;
        let node = self.node(&vol, id)?;
        let done = {
            let _as = AsCaller::switch(cred)?;
            vol.set_xattr(&node.obj, name, value).map_err(xattr_error)
        };
        self.invalidate(id); // ctime
        done
    }

    fn remove_xattr(&self, cred: &Credentials, id: &FileId, name: &[u8]) -> VfsResult<()> {
        let vol = self.vol()?;
        let node = self.node(&vol, id)?;
        let done = {
            let _as = AsCaller::switch(cred)?;
            vol.remove_xattr(&node.obj, name).map_err(xattr_error)
        };
        self.invalidate(id); // ctime
        done
    }

    fn list_xattrs(&self, cred: &Credentials, id: &FileId) -> VfsResult<Vec<Vec<u8>>> {
        let vol = self.vol()?;
        let node = self.node(&vol, id)?;
        let _as = AsCaller::switch(cred)?;
        let names = vol.list_xattrs(&node.obj).map_err(xattr_error)?;
        Ok(names.into_iter().filter(|n| n.starts_with(b"user.") && n.len() > 5).collect())
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
        let vol = self.vol()?;
        let (snode, sattr) = self.regular(&vol, src)?;
        if cred.uid != sattr.uid && access::granted(&sattr, cred, access::READ) == 0 {
            return Err(VfsError::Access);
        }
        let (dnode, dattr) = self.regular(&vol, dst)?;
        if cred.uid != dattr.uid && access::granted(&dattr, cred, access::MODIFY) == 0 {
            return Err(VfsError::Access);
        }
        dst_offset.checked_add(len).filter(|&end| end <= i64::MAX as u64).ok_or(VfsError::TooBig)?;
        *dnode.checked.lock().expect("lock") = None;
        // However the copy ends, the destination's attributes changed.
        let _changed = InvalidateOnDrop(self, dst);
        let (sf, df) = (self.io(&vol, src, &snode)?, self.io(&vol, dst, &dnode)?);
        let len = len.min(sattr.size.saturating_sub(src_offset));
        let mut done = 0u64;
        while done < len {
            let chunk = (len - done).min(1 << 30) as usize;
            match sf.copy_range_to(src_offset + done, &df, dst_offset + done, chunk) {
                Ok(0) => break,
                Ok(n) => done += n as u64,
                // Volumes without the copy_file_range fop: through this client.
                Err(e)
                    if done == 0
                        && matches!(
                            e.raw_os_error(),
                            Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) | Some(libc::EXDEV) | Some(libc::EINVAL)
                        ) =>
                {
                    while done < len {
                        let want = (len - done).min(1 << 20) as usize;
                        let buf = read_new(&|b, at| sf.read_uninit(b, at), want, src_offset + done)?;
                        if buf.is_empty() {
                            break;
                        }
                        df.write_all_at(&buf, dst_offset + done)?;
                        done += buf.len() as u64;
                    }
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(done)
    }

    fn statfs(&self, id: &FileId) -> VfsResult<FsStat> {
        let vol = self.vol()?;
        let node = self.node(&vol, id)?;
        let st = vol.statfs(&node.obj)?;
        let bs = st.f_bsize;
        Ok(FsStat {
            total_bytes: st.f_blocks * bs,
            free_bytes: st.f_bfree * bs,
            avail_bytes: st.f_bavail * bs,
            total_files: st.f_files,
            free_files: st.f_ffree,
            avail_files: st.f_favail,
            block_size: bs as u32,
            name_max: st.f_namemax as u32,
        })
    }

    fn release_removed(&self) -> usize {
        // Only objects with an open descriptor hold a removed file on the bricks (an fd keeps
        // it in the brick's unlink directory); a bare handle does not, and each stat is a
        // request to a brick, so those are left alone.
        let Ok(vol) = self.vol() else { return 0 };
        let open: Vec<(FileId, Arc<Node>)> = self
            .nodes
            .lock()
            .expect("lock")
            .iter()
            .filter(|(_, n)| n.io.lock().expect("lock").is_some())
            .map(|(id, n)| (*id, n.clone()))
            .collect();
        let removed: Vec<FileId> = open
            .into_iter()
            .filter(|(_, n)| match vol.stat(&n.obj) {
                Ok(st) => st.st_nlink == 0,
                Err(e) => matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ESTALE)),
            })
            .map(|(id, _)| id)
            .collect();
        for id in &removed {
            self.evict(id);
        }
        removed.len()
    }

    fn sync_all(&self) -> VfsResult<()> {
        let nodes: Vec<Arc<Node>> = {
            let mut cache = self.nodes.lock().expect("lock");
            let all = cache.iter().map(|(_, n)| n.clone()).collect();
            cache.clear();
            all
        };
        let mut first_err = None;
        for n in nodes {
            let io = n.io.lock().expect("lock").take();
            if let Some(f) = io {
                if let Err(e) = f.fsync() {
                    first_err.get_or_insert(VfsError::from(e));
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// A file held open for an open through the node's FUSE mount ([`Backend::hold`]): a glfs_fd
/// keeps the file in the brick's unlink directory after its last name is removed.
struct GfapiHeld {
    file: Arc<File>,
    fsid: u64,
}

impl HeldFile for GfapiHeld {
    fn getattr(&self) -> VfsResult<Attr> {
        Ok(attr_of(&self.file.stat()?, self.fsid))
    }

    fn read(&self, offset: u64, count: u32) -> VfsResult<Vec<u8>> {
        Ok(read_new(&|b, at| self.file.read_uninit(b, at), count as usize, offset)?)
    }

    fn write(&self, offset: u64, data: &[u8]) -> VfsResult<()> {
        Ok(self.file.write_all_at(data, offset)?)
    }

    fn set_len(&self, size: u64) -> VfsResult<()> {
        Ok(self.file.set_len(size)?)
    }

    fn sync(&self) -> VfsResult<()> {
        Ok(self.file.fsync()?)
    }
}

/// Invalidates a file's cached attributes when dropped (a change that may end on any path).
struct InvalidateOnDrop<'a>(&'a GfapiBackend, &'a FileId);

impl Drop for InvalidateOnDrop<'_> {
    fn drop(&mut self) {
        self.0.invalidate(self.1);
    }
}

/// One lock owner's descriptor of a file (`glfs_fd_set_lkowner`), its locks held by the bricks.
struct GfapiOwnerLocks(File);

impl crate::vfs::backend::OwnerLocks for GfapiOwnerLocks {
    fn set(&self, kind: i32, start: u64, len: u64) -> VfsResult<()> {
        match crate::vfs::backend::flock_of(kind, start, len) {
            Some(mut fl) => Ok(self.0.posix_lock(libc::F_SETLK, &mut fl)?),
            None => Ok(()),
        }
    }

    fn test(&self, kind: i32, start: u64, len: u64) -> VfsResult<Option<(bool, u64, u64)>> {
        let Some(mut fl) = crate::vfs::backend::flock_of(kind, start, len) else { return Ok(None) };
        self.0.posix_lock(libc::F_GETLK, &mut fl)?;
        Ok(crate::vfs::backend::conflict_of(&fl))
    }
}

/// `dir` opened for listing as the caller (the bricks check its permission), positioned at
/// `cookie` (0: the start). A directory removed since it was last seen has a stale handle.
fn open_listing(vol: &Volume, cred: &Credentials, dir: &Node, cookie: u64) -> VfsResult<File> {
    let listing = {
        let _as = AsCaller::switch(cred)?;
        vol.open_dir(&dir.obj).map_err(stale)?
    };
    if cookie != 0 {
        listing.seek_dir(cookie as i64);
    }
    Ok(listing)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file of `len` bytes whose reads return at most 100 KiB each, as a brick may.
    fn source(len: usize) -> impl Fn(&mut [MaybeUninit<u8>], u64) -> std::io::Result<usize> + Sync {
        move |buf: &mut [MaybeUninit<u8>], at: u64| {
            let at = at as usize;
            let n = buf.len().min(len.saturating_sub(at)).min(100 << 10);
            for (i, b) in buf[..n].iter_mut().enumerate() {
                b.write(((at + i) % 251) as u8);
            }
            Ok(n)
        }
    }

    #[test]
    fn pieces_read_exactly_the_file_up_to_its_end() {
        let len = 5 * 1024 * 1024 + 12345;
        for (offset, count) in
            [(0, 8 << 20), (0, 1 << 20), (3 << 20, 8 << 20), (len - 10, 1 << 20), (len, 1 << 20), (7, 300 << 10)]
        {
            let buf = read_new(&source(len), count, offset as u64).unwrap();
            assert_eq!(buf.len(), count.min(len.saturating_sub(offset)), "offset {offset} count {count}");
            assert!(buf.iter().enumerate().all(|(i, b)| *b == ((offset + i) % 251) as u8), "offset {offset}");
        }
        let failing = |_: &mut [MaybeUninit<u8>], at: u64| {
            if at >= 1 << 20 {
                Err(std::io::Error::other("brick gone"))
            } else {
                Ok(0)
            }
        };
        assert!(read_new(&failing, 8 << 20, 1 << 20).is_err(), "an error in any piece fails the read");
    }

    #[test]
    fn chunks_gather_into_exactly_the_range_asked() {
        let len = 3 * CHUNK as usize + 500;
        let byte = |at: usize| (at % 251) as u8;
        let chunk = |i: usize| Arc::new((i * CHUNK as usize..len.min((i + 1) * CHUNK as usize)).map(byte).collect());
        let all: Vec<Arc<Vec<u8>>> = (0..4).map(chunk).collect();
        for (offset, want) in
            [(0, len), (10, 100), (CHUNK as usize - 3, 7), (CHUNK as usize + 9, 2 * CHUNK as usize), (len - 1, 1)]
        {
            let range = chunks_of(offset as u64, want as u64);
            let mut out = b"head".to_vec();
            let n = gather(&all[range.start as usize..range.end as usize], range.start, offset as u64, want, &mut out);
            assert_eq!(n, want, "offset {offset} want {want}");
            assert!(out[4..].iter().enumerate().all(|(i, b)| *b == byte(offset + i)), "offset {offset}");
        }
        // A chunk read short (the file shrank meanwhile): the data ends there.
        let short = vec![all[0].clone(), Arc::new(vec![7; 10]), all[2].clone()];
        let mut out = Vec::new();
        assert_eq!(gather(&short, 0, 5, 3 * CHUNK as usize, &mut out), CHUNK as usize - 5 + 10);
    }
}
