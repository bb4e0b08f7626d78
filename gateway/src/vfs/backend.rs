//! The backend trait: what a storage engine (a POSIX directory, a GlusterFS volume through
//! libgfapi) implements so both protocols can serve it.
//!
//! Calls are **blocking** and run on blocking threads chosen by [`crate::vfs::Namespace`]; a
//! backend may switch the calling thread's file-system identity for the duration of a call
//! (per-thread `setfsuid`/`setfsgid`/`setgroups`) and must restore it before returning.
//!
//! Objects are addressed by [`FileId`], the persistent identity the backend minted: there is no
//! server-side id table that a restart or another node would lack. A backend keeps whatever
//! caches it likes (open descriptors, GlusterFS object handles) keyed by id, but `resolve` of an
//! id must work on a fresh process on any node, and must fail with [`VfsError::Stale`] (never
//! succeed on another file) once the file is deleted.
//!
//! Every operation takes the caller's [`Credentials`]: permission checks are the caller's and
//! new files are owned by the caller (when the server runs as root).
//!
//! Names are pre-validated single components ([`Name`]). Symlinks are never followed by these
//! operations: `lookup` of a symlink returns the symlink itself.

use super::cred::Credentials;
use super::error::{VfsError, VfsResult};
use super::name::Name;
use super::types::{
    Attr, CreateHow, FileId, FileSlice, FsStat, ReadData, ReadDir, SetAttr, SpecialFile, Stability, VolumeId,
};

/// A storage engine the namespace layer serves.
pub trait Backend: Send + Sync + 'static {
    /// The volume's id: the same on every node serving it, different for another volume.
    fn volume_id(&self) -> VolumeId;

    /// The root directory's identity.
    fn root(&self) -> FileId;

    /// True when the volume is a local file system: metadata calls answer in microseconds
    /// (from the kernel's caches almost always), so callers may run them in place instead of
    /// handing the thread's other work off first. False for anything reached over a network.
    fn is_local(&self) -> bool {
        false
    }

    /// Checks that `id` still names a live file and returns its attributes: what a protocol
    /// calls when a client presents a handle. Deleted file: [`VfsError::Stale`].
    ///
    /// [`VfsError::Stale`]: super::VfsError::Stale
    fn getattr(&self, id: &FileId) -> VfsResult<Attr>;

    /// Changes attributes as `cred` (owner/root rules of `chmod`, `chown`, `truncate`,
    /// `utimensat`), returning the new attributes.
    fn setattr(&self, cred: &Credentials, id: &FileId, set: &SetAttr) -> VfsResult<Attr>;

    /// Finds `name` in directory `dir` (needs search permission), without following a symlink.
    fn lookup(&self, cred: &Credentials, dir: &FileId, name: &Name) -> VfsResult<(FileId, Attr)>;

    /// The parent of directory `dir` (`..`); the root is its own parent.
    fn parent(&self, cred: &Credentials, dir: &FileId) -> VfsResult<(FileId, Attr)>;

    /// Reads up to `count` bytes at `offset`: the data, whether it reached end of file, and the
    /// file's attributes after the read.
    fn read(&self, cred: &Credentials, id: &FileId, offset: u64, count: u32) -> VfsResult<(Vec<u8>, bool, Attr)>;

    /// Like [`Backend::read`] but appends the data to `out`, so a protocol can read straight
    /// into its reply buffer; returns (bytes appended, eof, attributes).
    fn read_append(
        &self,
        cred: &Credentials,
        id: &FileId,
        offset: u64,
        count: u32,
        out: &mut Vec<u8>,
    ) -> VfsResult<(u32, bool, Attr)> {
        let (data, eof, attr) = self.read(cred, id, offset, count)?;
        out.extend_from_slice(&data);
        Ok((data.len() as u32, eof, attr))
    }

    /// Like [`Backend::read`] but the data may stay in the file ([`ReadData::File`]) for the
    /// caller to send without copying it through user space; returns (data, eof, attributes).
    fn read_slice(
        &self,
        cred: &Credentials,
        id: &FileId,
        offset: u64,
        count: u32,
    ) -> VfsResult<(ReadData, bool, Attr)> {
        let (data, eof, attr) = self.read(cred, id, offset, count)?;
        Ok((ReadData::Bytes(data), eof, attr))
    }

    /// Like [`Backend::read_slice`] but never waits for the disk: the data left in the file
    /// when all of it is in the page cache, `Ok(None)` otherwise (or when the backend cannot
    /// tell). Lets a caller on a local file system skip handing the thread off for cached reads.
    fn read_cached(
        &self,
        _cred: &Credentials,
        _id: &FileId,
        _offset: u64,
        _count: u32,
    ) -> VfsResult<Option<(FileSlice, bool, Attr)>> {
        Ok(None)
    }

    /// Writes `data` at `offset` with at least the given stability; returns bytes written,
    /// the stability actually reached (>= asked), and the attributes after the write when the
    /// backend has them without waiting (`None` otherwise: an SMB WRITE reply has none, an
    /// NFS WRITE's post-operation attributes are optional). On a network file system a stat
    /// right after an UNSTABLE write waits until the data has reached the servers (GlusterFS's
    /// write-behind must flush first), which would make every such write synchronous.
    fn write(
        &self,
        cred: &Credentials,
        id: &FileId,
        offset: u64,
        data: &[u8],
        stable: Stability,
    ) -> VfsResult<(u32, Stability, Option<Attr>)>;

    /// Creates a regular file `name` in `dir`, owned by the caller, per `how`.
    fn create(
        &self,
        cred: &Credentials,
        dir: &FileId,
        name: &Name,
        mode: u32,
        how: CreateHow,
    ) -> VfsResult<(FileId, Attr)>;

    /// Creates directory `name` in `dir`, owned by the caller.
    fn mkdir(&self, cred: &Credentials, dir: &FileId, name: &Name, mode: u32) -> VfsResult<(FileId, Attr)>;

    /// Creates symlink `name` in `dir` whose target is `target` (stored verbatim).
    fn symlink(&self, cred: &Credentials, dir: &FileId, name: &Name, target: &[u8]) -> VfsResult<(FileId, Attr)>;

    /// Makes special file `name` in `dir` (a fifo, a socket's name, a device node) with
    /// permission bits `mode`, owned by the caller. Callers have already refused devices to
    /// anyone but root; a backend that cannot make special files keeps this default.
    fn mknod(
        &self,
        _cred: &Credentials,
        _dir: &FileId,
        _name: &Name,
        _kind: SpecialFile,
        _mode: u32,
    ) -> VfsResult<(FileId, Attr)> {
        Err(VfsError::NotSupported)
    }

    /// Reads a symlink's target.
    fn readlink(&self, cred: &Credentials, id: &FileId) -> VfsResult<Vec<u8>>;

    /// Removes non-directory `name` from `dir`.
    fn remove(&self, cred: &Credentials, dir: &FileId, name: &Name) -> VfsResult<()>;

    /// Removes empty directory `name` from `dir`.
    fn rmdir(&self, cred: &Credentials, dir: &FileId, name: &Name) -> VfsResult<()>;

    /// Renames `from_dir/from` to `to_dir/to`, replacing a compatible target atomically.
    fn rename(&self, cred: &Credentials, from_dir: &FileId, from: &Name, to_dir: &FileId, to: &Name) -> VfsResult<()>;

    /// Makes a hard link `dir/name` to file `id`.
    fn link(&self, cred: &Credentials, id: &FileId, dir: &FileId, name: &Name) -> VfsResult<Attr>;

    /// Lists `dir` from `cookie` (0 = start; else an entry's `cookie` from an earlier page), at
    /// most `max_entries` entries, with identity and attributes when `plus`. Cookies stay valid
    /// while the directory changes, across restarts and on every node (`.`/`..` are not listed).
    fn readdir(
        &self,
        cred: &Credentials,
        dir: &FileId,
        cookie: u64,
        max_entries: usize,
        plus: bool,
    ) -> VfsResult<ReadDir>;

    /// A value that changes when this backend's cookies of `dir` stop being valid (the NFS
    /// cookie verifier); constant for backends whose cookies never expire.
    fn cookie_verifier(&self, dir: &FileId) -> u64;

    /// Makes the file's data and metadata stable (NFS COMMIT, SMB FLUSH).
    fn fsync(&self, id: &FileId) -> VfsResult<()>;

    /// Makes the data written to `id` through this server visible to every other client of
    /// the volume, without asking for stable storage: what a `close` does, for an SMB CLOSE
    /// after writes (a client that closed a file expects another node to read all of it). A
    /// network file system's client may still hold acknowledged writes (GlusterFS's
    /// write-behind) until then; a local file system's page cache is shared, so the default
    /// does nothing.
    fn flush(&self, _id: &FileId) -> VfsResult<()> {
        Ok(())
    }

    /// The name of the entry of `dir` that matches `name` ignoring case, when the volume can
    /// answer without listing the directory to the caller (GlusterFS: every brick answers the
    /// virtual attribute `glusterfs.get_real_filename:NAME` from its own disk). `Ok(None)`: no
    /// such entry. `Err(NotSupported)` (the default): the namespace lists the directory itself
    /// (see [`crate::vfs::folding`]).
    fn find_name_nocase(&self, _cred: &Credentials, _dir: &FileId, _name: &Name) -> VfsResult<Option<Vec<u8>>> {
        Err(VfsError::NotSupported)
    }

    /// Extended attribute `name` (always in the `user.` namespace) of `id`, read as `cred`;
    /// `Ok(None)` when the file has none of that name.
    fn get_xattr(&self, _cred: &Credentials, _id: &FileId, _name: &[u8]) -> VfsResult<Option<Vec<u8>>> {
        Err(VfsError::NotSupported)
    }

    /// Extended attribute `name` of the entry `entry` of directory `dir`, without resolving the
    /// entry first (a listing reads one attribute per entry). A symlink has none.
    fn get_xattr_at(&self, cred: &Credentials, dir: &FileId, entry: &Name, name: &[u8]) -> VfsResult<Option<Vec<u8>>> {
        let (id, attr) = self.lookup(cred, dir, entry)?;
        if attr.ftype == super::types::FileType::Symlink {
            return Ok(None);
        }
        self.get_xattr(cred, &id, name)
    }

    /// Sets extended attribute `name` of `id` to `value` as `cred`. A value larger than the
    /// file system stores for one attribute fails with [`VfsError::NoSpace`].
    fn set_xattr(&self, _cred: &Credentials, _id: &FileId, _name: &[u8], _value: &[u8]) -> VfsResult<()> {
        Err(VfsError::NotSupported)
    }

    /// Removes extended attribute `name` of `id`; [`VfsError::NotFound`] when it has none.
    fn remove_xattr(&self, _cred: &Credentials, _id: &FileId, _name: &[u8]) -> VfsResult<()> {
        Err(VfsError::NotSupported)
    }

    /// Names of the `user.` extended attributes of `id`.
    fn list_xattrs(&self, _cred: &Credentials, _id: &FileId) -> VfsResult<Vec<Vec<u8>>> {
        Err(VfsError::NotSupported)
    }

    /// Names of the `user.` extended attributes of the entry `entry` of `dir`, whose identity
    /// a listing gave as `id` (a listing reads them per entry, for SMB's EaSize): by `id` unless
    /// the backend reaches an entry more cheaply by its name. A symlink has none.
    fn list_xattrs_at(&self, cred: &Credentials, dir: &FileId, entry: &Name, id: &FileId) -> VfsResult<Vec<Vec<u8>>> {
        let _ = (dir, entry);
        self.list_xattrs(cred, id)
    }

    /// Copies `len` bytes of `src` at `src_offset` to `dst` at `dst_offset` inside the volume
    /// (no data through the caller where the file system can: `copy_file_range`), as `cred`
    /// (read access to `src`, write access to `dst`); returns the bytes copied, fewer only at
    /// the end of `src`. The default reads and writes in 1 MiB pieces.
    fn copy_range(
        &self,
        cred: &Credentials,
        src: &FileId,
        src_offset: u64,
        dst: &FileId,
        dst_offset: u64,
        len: u64,
    ) -> VfsResult<u64> {
        let mut done = 0u64;
        while done < len {
            let want = (len - done).min(1 << 20) as u32;
            let (data, eof, _) = self.read(cred, src, src_offset + done, want)?;
            if data.is_empty() {
                break;
            }
            self.write(cred, dst, dst_offset + done, &data, Stability::Unstable)?;
            done += data.len() as u64;
            if eof {
                break;
            }
        }
        Ok(done)
    }

    /// The path of directory `dir` from the volume root (`a/b`, empty for the root), so that
    /// recursive change watches can place events; [`VfsError::NotSupported`] where the backend
    /// cannot tell.
    fn path_of(&self, _dir: &FileId) -> VfsResult<Vec<u8>> {
        Err(VfsError::NotSupported)
    }

    /// File-system statistics of the volume.
    fn statfs(&self, id: &FileId) -> VfsResult<FsStat>;

    /// Flushes everything cached to stable storage and drops cached descriptors: called on
    /// shutdown and before a node gives up its addresses.
    fn sync_all(&self) -> VfsResult<()>;

    /// A descriptor of regular file `id` through which `owner` (a lock owner's bytes, at most
    /// 255) takes POSIX byte-range locks on the volume itself, so that every other client of
    /// the volume sees them: what NLM and SMB locks are mirrored to (see `locks::volume`). A backend
    /// that cannot keeps this default, and NLM locks then live in the lock table only.
    fn owner_locks(&self, _id: &FileId, _owner: &[u8]) -> VfsResult<Box<dyn OwnerLocks>> {
        Err(VfsError::NotSupported)
    }

    /// A descriptor of regular file `id` of its own, open for reading (and writing when
    /// `write`), for a local program's open through the node's FUSE mount to read and write
    /// directly (FUSE passthrough). The caller checked the opener's permission already.
    /// [`VfsError::NotSupported`] (the default) where the volume has no such file (gfapi).
    fn open_data(&self, _id: &FileId, _write: bool) -> VfsResult<std::os::fd::OwnedFd> {
        Err(VfsError::NotSupported)
    }

    /// The backend's own cached I/O descriptor of regular file `id` (read-write where the
    /// server may write it), shared rather than a new open: the node's FUSE mount registers it
    /// as the file's passthrough backing file. The caller never closes it through a duplicate
    /// it does not need: on a network file system's mount (GlusterFS-FUSE) every open and every
    /// close is a round trip to the servers. The caller checked the opener's permission.
    /// Defaults to a new descriptor from [`Backend::open_data`].
    fn shared_data(&self, id: &FileId) -> VfsResult<std::sync::Arc<std::fs::File>> {
        let fd = self.open_data(id, true).or_else(|_| self.open_data(id, false))?;
        Ok(std::sync::Arc::new(std::fs::File::from(fd)))
    }

    /// Which generation of data descriptors [`Backend::open_data`] and [`Backend::shared_data`]
    /// hand out now: it changes when earlier ones stopped working (GlusterFS-FUSE: the client
    /// was replaced, its mount's descriptors answer ENOTCONN for ever). Default: always 0.
    fn data_epoch(&self) -> u64 {
        0
    }

    /// Makes every data descriptor handed out so far fail from now on, including the kernel's
    /// passthrough files opened on them, which reach the volume without nasgw: a node cut off
    /// from the cluster calls it (`reason`, for the log) so no local program's write lands after
    /// other nodes may have given its files away. New descriptors (a new
    /// [`Backend::data_epoch`]) work again. False where the backend cannot (a local directory:
    /// nothing revokes a descriptor of a local file), the default.
    fn revoke_data(&self, _reason: &str) -> bool {
        false
    }

    /// An `O_PATH` descriptor of directory `dir` of its own, for following the directory's
    /// changes on a local volume (inotify; see [`crate::vfs::local_folded`]).
    /// [`VfsError::NotSupported`] (the default) where the volume has no such directory (gfapi).
    fn open_dir_path(&self, _dir: &FileId) -> VfsResult<std::os::fd::OwnedFd> {
        Err(VfsError::NotSupported)
    }

    /// Holds regular file `id` open for one open through the node's FUSE mount, on backends
    /// without descriptors of their own ([`Backend::open_data`]; gfapi): while the result
    /// lives, the file stays on the volume after its last name is removed, and it answers for
    /// the file then, as a local file system keeps an unlinked open file. The caller checked
    /// the opener's permission already. [`VfsError::NotSupported`] (the default) elsewhere.
    fn hold(&self, _id: &FileId) -> VfsResult<std::sync::Arc<dyn HeldFile>> {
        Err(VfsError::NotSupported)
    }

    /// Names in `dir` were changed elsewhere (another node's change broadcast): whatever the
    /// backend remembers of the directory's names goes. Default: it remembers none.
    fn forget_names(&self, _dir: &FileId) {}

    /// Drops cached descriptors of files whose last name is gone (removed by another node, or
    /// behind the server's back): a descriptor keeps a removed file's space allocated, so
    /// without this a quiet server would hold deleted data until its cache evicts it. Called
    /// periodically; returns how many were dropped.
    fn release_removed(&self) -> usize {
        0
    }
}

/// A regular file a backend holds open for an open through the node's FUSE mount
/// ([`Backend::hold`]): what still reaches the file once its last name is gone.
pub trait HeldFile: Send + Sync {
    /// The file's attributes (link count 0 once its last name is gone).
    fn getattr(&self) -> VfsResult<Attr>;

    /// Up to `count` bytes at `offset` (fewer at the end of the file).
    fn read(&self, offset: u64, count: u32) -> VfsResult<Vec<u8>>;

    /// Writes all of `data` at `offset`.
    fn write(&self, offset: u64, data: &[u8]) -> VfsResult<()>;

    /// Sets the file's size.
    fn set_len(&self, size: u64) -> VfsResult<()>;

    /// Makes the file's written data stable.
    fn sync(&self) -> VfsResult<()>;
}

/// One lock owner's locks on one file of the volume ([`Backend::owner_locks`]). Dropping it
/// releases every lock taken through it.
pub trait OwnerLocks: Send + Sync {
    /// Sets (`kind` = `F_RDLCK`, `F_WRLCK`) or clears (`F_UNLCK`) this owner's lock on
    /// `start..start + len` (`len` 0: to the end of the file) without waiting. Another owner's
    /// conflicting lock: `Err(VfsError::Io(EAGAIN))`.
    fn set(&self, kind: i32, start: u64, len: u64) -> VfsResult<()>;

    /// The first lock of another owner that a `kind` lock on the range would conflict with:
    /// (exclusive, start, len).
    fn test(&self, kind: i32, start: u64, len: u64) -> VfsResult<Option<(bool, u64, u64)>>;
}

/// A `struct flock` for `kind` over `start..start + len` (`len` 0: to the end); `None` when the
/// range starts beyond what `off_t` can express. A range reaching past it runs to the end.
pub fn flock_of(kind: i32, start: u64, len: u64) -> Option<libc::flock> {
    let s = i64::try_from(start).ok()?;
    let l = if len == 0 || start.checked_add(len).is_none_or(|e| e > i64::MAX as u64) { 0 } else { len as i64 };
    // SAFETY: a zeroed flock is a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as _;
    fl.l_whence = libc::SEEK_SET as _;
    fl.l_start = s;
    fl.l_len = l;
    Some(fl)
}

/// What a `F_GETLK` answered: `None` when nothing conflicts.
pub fn conflict_of(fl: &libc::flock) -> Option<(bool, u64, u64)> {
    if i32::from(fl.l_type) == libc::F_UNLCK {
        return None;
    }
    Some((i32::from(fl.l_type) == libc::F_WRLCK, fl.l_start.max(0) as u64, fl.l_len.max(0) as u64))
}
