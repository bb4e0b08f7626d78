//! [`Namespace`]: the async face of the layer that protocol handlers call. It validates names,
//! runs each backend call on a blocking thread (backends block and switch per-thread
//! identities), and adds path walking with symlinks confined to the root.

use std::sync::Arc;

use super::backend::Backend;
use super::changes::{what, Change, ChangeHub, Kind, Place};
use super::cred::Credentials;
use super::disk_pool;
use super::error::{VfsError, VfsResult};
use super::folding::{self, FoldedNames, Lookup};
use super::local_folded::LocalFoldedNames;
use super::name::Name;
use super::types::{
    Attr, CreateHow, FileId, FileSlice, FileType, FsStat, ReadData, ReadDir, SetAttr, SpecialFile, Stability, VolumeId,
};

/// The bytes of `f` read into memory (fewer if the file shrank since the slice was taken).
fn copy_slice(f: &FileSlice) -> VfsResult<Vec<u8>> {
    use std::os::fd::AsFd;
    let mut buf = Vec::with_capacity(f.len as usize);
    let n = super::posix::sys::pread_uninit(f.fd.as_fd(), &mut buf.spare_capacity_mut()[..f.len as usize], f.offset)?;
    // SAFETY: pread_uninit initialised the first `n` bytes of the spare capacity.
    unsafe { buf.set_len(n) };
    Ok(buf)
}

/// Most symlinks one [`Namespace::walk`] follows (Linux's `MAXSYMLINKS`).
pub const MAX_SYMLINKS: usize = 40;

/// The volume as both protocols see it. Cheap to clone (two `Arc`s).
#[derive(Clone)]
pub struct Namespace {
    backend: Arc<dyn Backend>,
    /// Metadata calls run in place (see [`quick`]).
    local: bool,
    /// Directories' names by folded form, for case-insensitive lookups (local volumes only).
    folded: Arc<LocalFoldedNames>,
    /// Change events: watchers and where changes go (see [`super::changes`]).
    changes: Arc<ChangeHub>,
}

/// Longest extended attribute value Linux stores (`XATTR_SIZE_MAX`); file systems may store
/// less (ext4: about a block for all of a file's attributes).
pub const XATTR_VALUE_MAX: usize = 65536;

/// Checks an extended attribute name: in the `user.` namespace, no NUL, at most 255 bytes.
fn xattr_name(name: &[u8]) -> VfsResult<()> {
    if !name.starts_with(b"user.") || name.len() <= 5 || name.len() > 255 || name.contains(&0) {
        return Err(VfsError::Invalid);
    }
    Ok(())
}

/// Runs a blocking backend call without stalling other tasks. On the multi-threaded runtime
/// the call runs in place (`block_in_place`: the runtime moves its other tasks to another
/// thread), which saves two thread hand-offs per request compared with `spawn_blocking`; the
/// hand-offs dominate small requests on a loaded machine.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> VfsResult<T> + Send + 'static) -> VfsResult<T> {
    run_blocking(f).await.unwrap_or(Err(VfsError::Io(libc::EIO)))
}

async fn run_blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    use tokio::runtime::{Handle, RuntimeFlavor};
    if super::in_place::calls_run_in_place() {
        return Some(f());
    }
    if Handle::current().runtime_flavor() == RuntimeFlavor::MultiThread {
        Some(tokio::task::block_in_place(f))
    } else {
        tokio::task::spawn_blocking(f).await.ok()
    }
}

/// Runs a call that waits for the disk (an `fsync`) on [`disk_pool::SYNCS`], so that neither a
/// runtime worker nor tokio's blocking pool waits with it; in place on a thread that runs
/// its calls in place.
async fn syncing(f: impl FnOnce() -> VfsResult<()> + Send + 'static) -> VfsResult<()> {
    if super::in_place::calls_run_in_place() {
        return f();
    }
    disk_pool::SYNCS.run(f).await.unwrap_or(Err(VfsError::Io(libc::EIO)))
}

/// Largest UNSTABLE write to a local file system that runs on the calling thread (see
/// [`Namespace::write_from`]); larger ones may wait for the kernel's dirty-page throttling.
const INLINE_WRITE_MAX: usize = 64 * 1024;

/// Runs a metadata call: in place on a local file system, where it takes microseconds and a
/// thread hand-off would cost more than the call; otherwise like [`blocking`].
async fn quick<T: Send + 'static>(local: bool, f: impl FnOnce() -> VfsResult<T> + Send + 'static) -> VfsResult<T> {
    if local {
        f()
    } else {
        blocking(f).await
    }
}

impl Namespace {
    /// Serves `backend`.
    pub fn new(backend: Arc<dyn Backend>) -> Self {
        let local = backend.is_local();
        Self { backend, local, folded: Arc::new(LocalFoldedNames::default()), changes: Arc::new(ChangeHub::default()) }
    }

    /// True when the volume is a local file system (see [`Backend::is_local`]).
    pub fn is_local(&self) -> bool {
        self.local
    }

    /// The backend, for callers that are already on a blocking thread.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// The volume's id (goes into protocol handles).
    pub fn volume_id(&self) -> VolumeId {
        self.backend.volume_id()
    }

    /// The root directory.
    pub fn root(&self) -> FileId {
        self.backend.root()
    }

    /// The change events of this namespace (watchers register here).
    pub fn changes(&self) -> &Arc<ChangeHub> {
        &self.changes
    }

    /// The path of directory `dir` from the volume root (`a/b`, empty for the root), when the
    /// backend can tell (see [`Backend::path_of`]).
    pub async fn path_of(&self, dir: FileId) -> VfsResult<Vec<u8>> {
        let b = self.backend.clone();
        quick(self.local, move || b.path_of(&dir)).await
    }

    async fn place(&self, dir: FileId, name: &[u8]) -> Place {
        let dir_path = if self.changes.wants_paths() { self.path_of(dir).await.ok() } else { None };
        Place { dir, dir_path, name: name.to_vec() }
    }

    /// Publishes that `dir/name` appeared or went; `file`: the file whose link count it
    /// changed (a link or an unlink), named while [`ChangeHub::wants_files`].
    async fn named(&self, kind: Kind, dir: FileId, name: &[u8], is_dir: bool, file: Option<FileId>) {
        if !self.changes.wanted() {
            return;
        }
        let what = if is_dir { what::DIR_NAME } else { what::FILE_NAME };
        let at = self.place(dir, name).await;
        let files = file.filter(|_| self.changes.wants_files()).into_iter().collect();
        self.changes.publish(&Change { kind, what, at, to: None, files });
    }

    /// Publishes that the file at `dir/name` changed (`bits`: [`super::changes::what`]): for
    /// protocols, which know under which name they changed a file's data or attributes.
    pub async fn modified(&self, dir: FileId, name: &[u8], bits: u32) {
        if !self.changes.wanted() || bits == 0 || name.is_empty() {
            return;
        }
        let at = self.place(dir, name).await;
        self.changes.publish(&Change { kind: Kind::Modified, what: bits, at, to: None, files: Vec::new() });
    }

    /// Publishes that file `id` changed (`bits`), for protocols that know a file only by its
    /// handle (NFS WRITE and SETATTR): only while someone watches, at most once per
    /// [`super::changes::MODIFIED_EVERY`] per file, under the name its path gives (a backend
    /// that cannot tell a file's path publishes nothing).
    pub async fn modified_by_id(&self, id: FileId, bits: u32) {
        if bits == 0 || !self.changes.watched() || !self.changes.throttle_modified(id, std::time::Instant::now()) {
            return;
        }
        self.modified_file(id, bits).await;
    }

    /// Publishes that file `id` changed (`bits`) under the name its path gives, while someone
    /// watches, unthrottled: for a close that wrote through a handle known only by its file
    /// (the node's own mount), reported once per close as smbd does.
    pub async fn modified_file(&self, id: FileId, bits: u32) {
        if bits == 0 || !self.changes.watched() {
            return;
        }
        let Ok(path) = self.path_of(id).await else { return };
        let (dir_path, name) = match path.iter().rposition(|&b| b == b'/') {
            Some(i) => (&path[..i], &path[i + 1..]),
            None => (&path[..0], &path[..]),
        };
        if name.is_empty() {
            return;
        }
        let dir = if dir_path.is_empty() {
            self.root()
        } else {
            match self.walk(&Credentials::root(), self.root(), dir_path, true).await {
                Ok((d, _)) => d,
                Err(_) => return,
            }
        };
        let at = Place { dir, dir_path: Some(dir_path.to_vec()), name: name.to_vec() };
        self.changes.publish(&Change { kind: Kind::Modified, what: bits, at, to: None, files: Vec::new() });
    }

    /// Attributes of a live file; `Stale` when it was deleted.
    pub async fn getattr(&self, id: FileId) -> VfsResult<Attr> {
        let b = self.backend.clone();
        quick(self.local, move || b.getattr(&id)).await
    }

    /// Changes attributes as `cred`. Caches of the file's attributes here and on the other
    /// nodes are told (see [`ChangeHub::attributes_changed`]).
    pub async fn setattr(&self, cred: &Credentials, id: FileId, set: SetAttr) -> VfsResult<Attr> {
        let (b, cred) = (self.backend.clone(), cred.clone());
        let r = quick(self.local, move || b.setattr(&cred, &id, &set)).await;
        if r.is_ok() {
            self.changes.attributes_changed(&id, true);
        }
        r
    }

    /// Looks up one name in `dir`. `.` is `dir` itself and `..` its parent (the root's parent
    /// is the root, as on any Unix file system); any other name must be a valid component.
    pub async fn lookup(&self, cred: &Credentials, dir: FileId, name: &[u8]) -> VfsResult<(FileId, Attr)> {
        let (b, cred) = (self.backend.clone(), cred.clone());
        match name {
            b"." => {
                let attr = self.getattr(dir).await?;
                if attr.ftype != FileType::Directory {
                    return Err(VfsError::NotDir);
                }
                Ok((dir, attr))
            }
            b".." => quick(self.local, move || b.parent(&cred, &dir)).await,
            _ => {
                let name = Name::new(name)?;
                quick(self.local, move || b.lookup(&cred, &dir, &name)).await
            }
        }
    }

    /// Resolves a `/`-separated path relative to `start`, following symlinks only while the
    /// walk stays beneath the root: `..` above the root and absolute symlink targets fail with
    /// [`VfsError::Escape`]. The last component's symlink is followed only if `follow_last`.
    /// For SMB paths (converted to `/`) and anything else that resolves paths server-side.
    pub async fn walk(
        &self,
        cred: &Credentials,
        start: FileId,
        path: &[u8],
        follow_last: bool,
    ) -> VfsResult<(FileId, Attr)> {
        self.walk_beneath(cred, self.root(), start, path, follow_last).await
    }

    /// [`Namespace::walk`] confined to `top` instead of the volume root: `..` above `top`, an
    /// absolute symlink, or a relative one that climbs above `top` fails with
    /// [`VfsError::Escape`]. An SMB share is confined to its own folder this way, so a symlink
    /// made through NFS (`pub/esc -> ../priv`) cannot reach another share. `start` must be
    /// `top` or beneath it; an absolute `path` starts at `top`.
    pub async fn walk_beneath(
        &self,
        cred: &Credentials,
        top: FileId,
        start: FileId,
        path: &[u8],
        follow_last: bool,
    ) -> VfsResult<(FileId, Attr)> {
        let root = top;
        let mut cur = start;
        let mut cur_attr = self.getattr(start).await?;
        // Remaining components, next one last (a stack).
        let mut todo: Vec<Vec<u8>> = split(path);
        todo.reverse();
        let mut links = 0;
        if path.first() == Some(&b'/') {
            cur = root;
            cur_attr = self.getattr(root).await?;
        }
        while let Some(comp) = todo.pop() {
            if comp == b"." {
                continue;
            }
            if cur_attr.ftype != FileType::Directory {
                return Err(VfsError::NotDir);
            }
            if comp == b".." {
                if cur == root {
                    return Err(VfsError::Escape);
                }
                (cur, cur_attr) = self.lookup(cred, cur, b"..").await?;
                continue;
            }
            let (id, attr) = self.lookup(cred, cur, &comp).await?;
            let last = todo.is_empty();
            if attr.ftype == FileType::Symlink && (!last || follow_last) {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(VfsError::Loop);
                }
                let target = self.readlink(cred, id).await?;
                if target.first() == Some(&b'/') {
                    return Err(VfsError::Escape);
                }
                let mut comps = split(&target);
                comps.reverse();
                todo.extend(comps);
                continue;
            }
            (cur, cur_attr) = (id, attr);
        }
        Ok((cur, cur_attr))
    }

    /// Reads up to `count` bytes: (data, eof, attributes).
    pub async fn read(
        &self,
        cred: &Credentials,
        id: FileId,
        offset: u64,
        count: u32,
    ) -> VfsResult<(Vec<u8>, bool, Attr)> {
        let (b, cred) = (self.backend.clone(), cred.clone());
        blocking(move || b.read(&cred, &id, offset, count)).await
    }

    /// Reads up to `count` bytes appended to `out` (a reply buffer): (out, bytes, eof, attributes).
    pub async fn read_append(
        &self,
        cred: &Credentials,
        id: FileId,
        offset: u64,
        count: u32,
        mut out: Vec<u8>,
    ) -> (Vec<u8>, VfsResult<(u32, bool, Attr)>) {
        let (b, cred) = (self.backend.clone(), cred.clone());
        run_blocking(move || {
            let r = b.read_append(&cred, &id, offset, count, &mut out);
            (out, r)
        })
        .await
        .unwrap_or_else(|| (Vec::new(), Err(VfsError::Io(libc::EIO))))
    }

    /// Reads up to `count` bytes, possibly leaving them in the file to be spliced to the socket: (data, eof,
    /// attributes).
    pub async fn read_slice(
        &self,
        cred: &Credentials,
        id: FileId,
        offset: u64,
        count: u32,
    ) -> VfsResult<(ReadData, bool, Attr)> {
        if self.local {
            // Cached data is answered in place; only a read that may wait for the disk is
            // handed off.
            if let Some((f, eof, attr)) = self.backend.read_cached(cred, &id, offset, count)? {
                return Ok((ReadData::File(f), eof, attr));
            }
        }
        let (b, cred) = (self.backend.clone(), cred.clone());
        blocking(move || b.read_slice(&cred, &id, offset, count)).await
    }

    /// Like [`Namespace::read_slice`] but the data is always copied into memory
    /// ([`ReadData::Bytes`]): what a later change to the file does to its pages (a truncate
    /// zeroes them in place) cannot reach a reply that is still being sent.
    pub async fn read_copied(
        &self,
        cred: &Credentials,
        id: FileId,
        offset: u64,
        count: u32,
    ) -> VfsResult<(ReadData, bool, Attr)> {
        if self.local {
            // Cached data is copied in place, as `read_slice` sends it in place.
            if let Some((f, eof, attr)) = self.backend.read_cached(cred, &id, offset, count)? {
                let data = copy_slice(&f)?;
                // Shorter than the slice: the file shrank meanwhile; the client asks again.
                let eof = eof && data.len() == f.len as usize;
                return Ok((ReadData::Bytes(data), eof, attr));
            }
        }
        let (b, cred) = (self.backend.clone(), cred.clone());
        let (data, eof, attr) = blocking(move || b.read(&cred, &id, offset, count)).await?;
        Ok((ReadData::Bytes(data), eof, attr))
    }

    /// Writes `data` with at least `stable` stability: (bytes written, stability, attributes
    /// after the write when the backend has them without waiting; see
    /// [`Backend::write`]).
    pub async fn write(
        &self,
        cred: &Credentials,
        id: FileId,
        offset: u64,
        data: Vec<u8>,
        stable: Stability,
    ) -> VfsResult<(u32, Stability, Option<Attr>)> {
        let (b, cred) = (self.backend.clone(), cred.clone());
        let r = blocking(move || b.write(&cred, &id, offset, &data, stable)).await;
        self.written(&id, &r);
        r
    }

    /// After a write: this node's caches of the file's size and times forget them (other
    /// nodes hear of it at the flush, sync or close that follows).
    fn written<T>(&self, id: &FileId, r: &VfsResult<T>) {
        if r.is_ok() {
            self.changes.attributes_changed(id, false);
        }
    }

    /// [`Namespace::write`] of borrowed data (a protocol's receive buffer): not copied when
    /// the call can run on this thread (in place or on a multi-threaded runtime).
    pub async fn write_from(
        &self,
        cred: &Credentials,
        id: FileId,
        offset: u64,
        data: &[u8],
        stable: Stability,
    ) -> VfsResult<(u32, Stability, Option<Attr>)> {
        use tokio::runtime::{Handle, RuntimeFlavor};
        let b = &self.backend;
        // A small UNSTABLE write to a local file system only copies into the page cache
        // (microseconds): a thread hand-off would cost more than the call.
        let small = self.local && stable == Stability::Unstable && data.len() <= INLINE_WRITE_MAX;
        let r = if small || super::in_place::calls_run_in_place() {
            b.write(cred, &id, offset, data, stable)
        } else if Handle::current().runtime_flavor() == RuntimeFlavor::MultiThread {
            tokio::task::block_in_place(|| b.write(cred, &id, offset, data, stable))
        } else {
            return self.write(cred, id, offset, data.to_vec(), stable).await;
        };
        self.written(&id, &r);
        r
    }

    /// Creates a regular file `dir/name`.
    pub async fn create(
        &self,
        cred: &Credentials,
        dir: FileId,
        name: &[u8],
        mode: u32,
        how: CreateHow,
    ) -> VfsResult<(FileId, Attr)> {
        let raw = name.to_vec();
        let (b, cred, name) = (self.backend.clone(), cred.clone(), Name::new(name)?);
        let r = quick(self.local, move || b.create(&cred, &dir, &name, mode, how)).await;
        if r.is_ok() {
            self.named(Kind::Added, dir, &raw, false, None).await;
        }
        r
    }

    /// Creates directory `dir/name`.
    pub async fn mkdir(&self, cred: &Credentials, dir: FileId, name: &[u8], mode: u32) -> VfsResult<(FileId, Attr)> {
        let raw = name.to_vec();
        let (b, cred, name) = (self.backend.clone(), cred.clone(), Name::new(name)?);
        let r = quick(self.local, move || b.mkdir(&cred, &dir, &name, mode)).await;
        if r.is_ok() {
            self.named(Kind::Added, dir, &raw, true, None).await;
        }
        r
    }

    /// Creates symlink `dir/name` -> `target` (stored verbatim, never followed by the server
    /// except by [`Namespace::walk`]).
    pub async fn symlink(
        &self,
        cred: &Credentials,
        dir: FileId,
        name: &[u8],
        target: &[u8],
    ) -> VfsResult<(FileId, Attr)> {
        let raw = name.to_vec();
        let (b, cred, name, target) = (self.backend.clone(), cred.clone(), Name::new(name)?, target.to_vec());
        let r = quick(self.local, move || b.symlink(&cred, &dir, &name, &target)).await;
        if r.is_ok() {
            self.named(Kind::Added, dir, &raw, false, None).await;
        }
        r
    }

    /// Makes special file `dir/name` (fifo, socket, device) with permission bits `mode`.
    /// Device nodes are for root only: anyone else (a squashed root included) gets
    /// [`VfsError::Perm`], as `mknod(2)` answers without `CAP_MKNOD`; the backend is not asked.
    pub async fn mknod(
        &self,
        cred: &Credentials,
        dir: FileId,
        name: &[u8],
        kind: SpecialFile,
        mode: u32,
    ) -> VfsResult<(FileId, Attr)> {
        let raw = name.to_vec();
        let name = Name::new(name)?;
        if kind.is_device() && !cred.is_root() {
            return Err(VfsError::Perm);
        }
        let (b, cred) = (self.backend.clone(), cred.clone());
        let r = quick(self.local, move || b.mknod(&cred, &dir, &name, kind, mode & 0o7777)).await;
        if r.is_ok() {
            self.named(Kind::Added, dir, &raw, false, None).await;
        }
        r
    }

    /// Reads a symlink's target.
    pub async fn readlink(&self, cred: &Credentials, id: FileId) -> VfsResult<Vec<u8>> {
        let (b, cred) = (self.backend.clone(), cred.clone());
        quick(self.local, move || b.readlink(&cred, &id)).await
    }

    /// Removes non-directory `dir/name`; `file` is the file the caller found there (every
    /// protocol looks it up first for its sharing checks): its other names' link count and
    /// ctime change, and caches of its attributes are told (none when `None`).
    pub async fn remove(&self, cred: &Credentials, dir: FileId, name: &[u8], file: Option<FileId>) -> VfsResult<()> {
        let raw = name.to_vec();
        let (b, cred, name) = (self.backend.clone(), cred.clone(), Name::new(name)?);
        let r = quick(self.local, move || b.remove(&cred, &dir, &name)).await;
        if r.is_ok() {
            self.named(Kind::Removed, dir, &raw, false, file).await;
        }
        r
    }

    /// Removes empty directory `dir/name`.
    pub async fn rmdir(&self, cred: &Credentials, dir: FileId, name: &[u8]) -> VfsResult<()> {
        let raw = name.to_vec();
        let (b, cred, name) = (self.backend.clone(), cred.clone(), Name::new(name)?);
        let r = quick(self.local, move || b.rmdir(&cred, &dir, &name)).await;
        if r.is_ok() {
            self.named(Kind::Removed, dir, &raw, true, None).await;
        }
        r
    }

    /// Renames `from_dir/from` to `to_dir/to`; `replaced` is the file the caller found at
    /// `to_dir/to`, which loses a link. Caches of its attributes and of the renamed file's
    /// (whose ctime changes) are told.
    pub async fn rename(
        &self,
        cred: &Credentials,
        from_dir: FileId,
        from: &[u8],
        to_dir: FileId,
        to: &[u8],
        replaced: Option<FileId>,
    ) -> VfsResult<()> {
        let (raw_from, raw_to) = (from.to_vec(), to.to_vec());
        let (b, c, from, to) = (self.backend.clone(), cred.clone(), Name::new(from)?, Name::new(to)?);
        quick(self.local, move || b.rename(&c, &from_dir, &from, &to_dir, &to)).await?;
        if self.changes.wanted() {
            let moved = self.lookup(cred, to_dir, &raw_to).await.ok();
            let is_dir = moved.is_some_and(|(_, a)| a.ftype == FileType::Directory);
            let what = if is_dir { what::DIR_NAME } else { what::FILE_NAME };
            let at = self.place(from_dir, &raw_from).await;
            let to = Some(self.place(to_dir, &raw_to).await);
            // The renamed file's ctime changed (every name of it shows that).
            let mut files: Vec<FileId> = Vec::new();
            if self.changes.wants_files() {
                files.extend(moved.map(|(id, _)| id));
                files.extend(replaced.filter(|r| !files.contains(r)));
            }
            self.changes.publish(&Change { kind: Kind::Renamed, what, at, to, files });
        }
        Ok(())
    }

    /// Hard-links file `id` as `dir/name`; returns the file's attributes.
    pub async fn link(&self, cred: &Credentials, id: FileId, dir: FileId, name: &[u8]) -> VfsResult<Attr> {
        let raw = name.to_vec();
        let (b, cred, name) = (self.backend.clone(), cred.clone(), Name::new(name)?);
        let r = quick(self.local, move || b.link(&cred, &id, &dir, &name)).await;
        if r.is_ok() {
            // Every other name of the file shows its new link count and ctime.
            self.named(Kind::Added, dir, &raw, false, Some(id)).await;
        }
        r
    }

    /// One page of a listing from `cookie` (0 = start).
    pub async fn readdir(
        &self,
        cred: &Credentials,
        dir: FileId,
        cookie: u64,
        max_entries: usize,
        plus: bool,
    ) -> VfsResult<ReadDir> {
        let (b, cred) = (self.backend.clone(), cred.clone());
        quick(self.local, move || b.readdir(&cred, &dir, cookie, max_entries, plus)).await
    }

    /// The cookie verifier of `dir` (see [`Backend::cookie_verifier`]).
    pub fn cookie_verifier(&self, dir: &FileId) -> u64 {
        self.backend.cookie_verifier(dir)
    }

    /// Makes a file stable (COMMIT, FLUSH), on a thread of the sync pool.
    /// Other nodes' caches of the file's size and times forget them (what was written through
    /// this node is now what they read).
    pub async fn fsync(&self, id: FileId) -> VfsResult<()> {
        let b = self.backend.clone();
        let r = syncing(move || b.fsync(&id)).await;
        self.synced(&id, &r);
        r
    }

    /// After a flush or sync of written data: every node's caches of the file's attributes
    /// forget them.
    fn synced(&self, id: &FileId, r: &VfsResult<()>) {
        if r.is_ok() {
            self.changes.attributes_changed(id, true);
        }
    }

    /// Makes data written through this server visible to the volume's other clients (the
    /// close of a file that was written; see [`Backend::flush`]).
    /// Every node's caches of the file's attributes forget them.
    pub async fn flush(&self, id: FileId) -> VfsResult<()> {
        let b = self.backend.clone();
        let r = blocking(move || b.flush(&id)).await;
        self.synced(&id, &r);
        r
    }

    /// File-system statistics.
    pub async fn statfs(&self, id: FileId) -> VfsResult<FsStat> {
        let b = self.backend.clone();
        quick(self.local, move || b.statfs(&id)).await
    }

    /// Finds `name` in `dir` as Windows does: the exact name first, else the entry whose name
    /// folds like it ([`crate::vfs::folding`]). Returns the entry's own name with it.
    pub async fn lookup_nocase(
        &self,
        cred: &Credentials,
        dir: FileId,
        name: &str,
    ) -> VfsResult<(Vec<u8>, FileId, Attr)> {
        match self.lookup(cred, dir, name.as_bytes()).await {
            Ok((id, a)) => return Ok((name.as_bytes().to_vec(), id, a)),
            Err(VfsError::NotFound) => {}
            Err(e) => return Err(e),
        }
        match self.find_nocase(cred, dir, name).await? {
            Some(real) if real != name.as_bytes() => {
                let (id, a) = self.lookup(cred, dir, &real).await?;
                Ok((real, id, a))
            }
            _ => Err(VfsError::NotFound),
        }
    }

    /// The name of the entry of `dir` whose name folds like `name` (the first listed or made
    /// when several do), if any. Asks the backend when it can answer by itself; on a local
    /// volume answers from the directory's folded names, listed once and kept current by the
    /// kernel's change events ([`crate::vfs::folding`]); else lists the directory.
    pub async fn find_nocase(&self, cred: &Credentials, dir: FileId, name: &str) -> VfsResult<Option<Vec<u8>>> {
        let checked = Name::new(name.as_bytes())?;
        let (b, c) = (self.backend.clone(), cred.clone());
        match quick(self.local, move || b.find_name_nocase(&c, &dir, &checked)).await {
            Err(VfsError::NotSupported) => {}
            other => return other,
        }
        if self.local {
            let followed = match self.folded.find(&dir, name) {
                Lookup::Known(found) => return Ok(found),
                Lookup::Listing(generation) => Some(generation),
                Lookup::Unfollowed => match self.backend.open_dir_path(&dir) {
                    Ok(fd) => self.folded.follow(dir, fd),
                    Err(_) => None,
                },
            };
            if let Some(generation) = followed {
                // Listed after the watch began (see the rule in `folding`).
                self.folded.count_listing();
                let mut names = FoldedNames::new();
                let mut cookie = 0;
                loop {
                    let page = self.readdir(cred, dir, cookie, 4096, false).await?;
                    for e in &page.entries {
                        names.add(&e.name);
                        cookie = e.cookie;
                    }
                    if page.eof || page.entries.is_empty() {
                        break;
                    }
                }
                return Ok(self.folded.listed(&dir, generation, names, name));
            }
        }
        // Nothing read now will be remembered: compare each entry as it comes, building
        // nothing, and stop at the first match (the first in listing order).
        self.folded.count_listing();
        let folded = folding::fold(name);
        let mut cookie = 0;
        loop {
            let page = self.readdir(cred, dir, cookie, 4096, false).await?;
            if let Some(e) = page.entries.iter().find(|e| folding::folds_to(&e.name, &folded)) {
                return Ok(Some(e.name.clone()));
            }
            match page.entries.last() {
                Some(last) if !page.eof => cookie = last.cookie,
                _ => return Ok(None),
            }
        }
    }

    /// How many directories' folded names are followed (tests, diagnostics).
    pub fn remembered_folded_dirs(&self) -> usize {
        self.folded.followed()
    }

    /// How many listings case-insensitive searches made so far (tests, diagnostics).
    pub fn nocase_listings(&self) -> u64 {
        self.folded.listings()
    }

    /// Extended attribute `name` (`user.` namespace) of `id`; `None` when it has none.
    pub async fn get_xattr(&self, cred: &Credentials, id: FileId, name: &[u8]) -> VfsResult<Option<Vec<u8>>> {
        xattr_name(name)?;
        let (b, cred, name) = (self.backend.clone(), cred.clone(), name.to_vec());
        quick(self.local, move || b.get_xattr(&cred, &id, &name)).await
    }

    /// Extended attribute `name` of the entry `entry` of `dir` (one per entry of a listing).
    pub async fn get_xattr_at(
        &self,
        cred: &Credentials,
        dir: FileId,
        entry: &[u8],
        name: &[u8],
    ) -> VfsResult<Option<Vec<u8>>> {
        xattr_name(name)?;
        let (b, cred, entry, name) = (self.backend.clone(), cred.clone(), Name::new(entry)?, name.to_vec());
        quick(self.local, move || b.get_xattr_at(&cred, &dir, &entry, &name)).await
    }

    /// Sets extended attribute `name` of `id`; a value larger than an attribute can hold fails
    /// with [`VfsError::NoSpace`].
    pub async fn set_xattr(&self, cred: &Credentials, id: FileId, name: &[u8], value: &[u8]) -> VfsResult<()> {
        xattr_name(name)?;
        if value.len() > XATTR_VALUE_MAX {
            return Err(VfsError::NoSpace);
        }
        let (b, cred, name, value) = (self.backend.clone(), cred.clone(), name.to_vec(), value.to_vec());
        quick(self.local, move || b.set_xattr(&cred, &id, &name, &value)).await
    }

    /// Removes extended attribute `name` of `id` ([`VfsError::NotFound`] when it has none).
    pub async fn remove_xattr(&self, cred: &Credentials, id: FileId, name: &[u8]) -> VfsResult<()> {
        xattr_name(name)?;
        let (b, cred, name) = (self.backend.clone(), cred.clone(), name.to_vec());
        quick(self.local, move || b.remove_xattr(&cred, &id, &name)).await
    }

    /// Names of the `user.` extended attributes of the entry `entry` of `dir` (identity `id`,
    /// from the listing): one per entry of a listing (see [`Backend::list_xattrs_at`]).
    pub async fn list_xattrs_at(
        &self,
        cred: &Credentials,
        dir: FileId,
        entry: &[u8],
        id: FileId,
    ) -> VfsResult<Vec<Vec<u8>>> {
        let (b, cred, entry) = (self.backend.clone(), cred.clone(), Name::new(entry)?);
        quick(self.local, move || b.list_xattrs_at(&cred, &dir, &entry, &id)).await
    }

    /// Names of the `user.` extended attributes of `id`.
    pub async fn list_xattrs(&self, cred: &Credentials, id: FileId) -> VfsResult<Vec<Vec<u8>>> {
        let (b, cred) = (self.backend.clone(), cred.clone());
        quick(self.local, move || b.list_xattrs(&cred, &id)).await
    }

    /// Copies a byte range between two files inside the volume (see [`Backend::copy_range`]).
    pub async fn copy_range(
        &self,
        cred: &Credentials,
        src: FileId,
        src_offset: u64,
        dst: FileId,
        dst_offset: u64,
        len: u64,
    ) -> VfsResult<u64> {
        let (b, cred) = (self.backend.clone(), cred.clone());
        let r = blocking(move || b.copy_range(&cred, &src, src_offset, &dst, dst_offset, len)).await;
        self.written(&dst, &r);
        r
    }

    /// Drops cached descriptors of removed files (see [`Backend::release_removed`]).
    pub async fn release_removed(&self) -> usize {
        let b = self.backend.clone();
        tokio::task::spawn_blocking(move || b.release_removed()).await.unwrap_or(0)
    }

    /// Flushes everything to stable storage (shutdown).
    pub async fn sync_all(&self) -> VfsResult<()> {
        let b = self.backend.clone();
        blocking(move || b.sync_all()).await
    }
}

fn split(path: &[u8]) -> Vec<Vec<u8>> {
    path.split(|&b| b == b'/').filter(|c| !c.is_empty()).map(<[u8]>::to_vec).collect()
}
