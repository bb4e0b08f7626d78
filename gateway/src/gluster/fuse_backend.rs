//! The backend for `access = "fuse"`: the POSIX backend over nasgw's managed mount, with GFID
//! identities, reopened whenever the mount is made again.
//!
//! - Identities are GFIDs (`IdentityKind::Gfid`): the same bytes on every node and the same
//!   as the gfapi backend mints, so an NFS handle from any node works on any other.
//! - After the FUSE client died and was replaced, descriptors of the old mount answer ENOTCONN
//!   for ever: the POSIX backend is reopened on the new mount (its ids stay valid: they are
//!   GFIDs, not descriptors).
//! - While the volume is not mounted, calls wait a little for it and then fail with an I/O
//!   error; nothing ever reaches the read-only guard underneath.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::mount::{self, ManagedMount, MountState};
use crate::vfs::posix::identity::{Identity, IdentityKind};
use crate::vfs::posix::{PosixBackend, PosixOptions};
use crate::vfs::{
    Attr, Backend, CreateHow, Credentials, FileId, FileSlice, FsStat, Name, ReadData, ReadDir, SetAttr, SpecialFile,
    Stability, VfsError, VfsResult, VolumeId,
};

/// How long a call waits for the volume to be mounted (again) before failing.
const MOUNT_WAIT: Duration = Duration::from_secs(10);

/// The GFID of every GlusterFS volume's root directory.
pub const ROOT_GFID: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

/// The volume id both GlusterFS backends (and the POSIX backend) derive from the volume name, so
/// every node agrees whatever its access mode.
pub fn volume_id(name: &str) -> VolumeId {
    let digest = Sha256::digest(format!("nasgw-posix-volume:{name}").as_bytes());
    VolumeId(digest[..8].try_into().expect("8 bytes"))
}

/// The [`FileId`] of a GFID (`G` + 16 bytes), as both GlusterFS backends mint it.
pub fn gfid_file_id(gfid: &[u8; 16]) -> FileId {
    Identity::Gfid(*gfid).encode().expect("17 bytes fit a FileId")
}

/// The POSIX backend over the managed mount, following remounts.
pub struct FuseBackend {
    mount: Arc<ManagedMount>,
    name: String,
    /// The backend opened on the current mount, with the client PID it was opened for.
    current: Mutex<Option<(u32, Arc<PosixBackend>)>>,
    /// `[volume] open_files`.
    open_files: usize,
}

impl FuseBackend {
    /// A backend for volume `name` served from `mount` (opened lazily, once mounted), keeping
    /// at most `open_files` files open on the volume.
    pub fn new(mount: Arc<ManagedMount>, name: &str, open_files: usize) -> Self {
        Self { mount, name: name.to_string(), current: Mutex::new(None), open_files }
    }

    /// The POSIX backend of the live mount, opening it when the mount is new.
    fn backend(&self) -> VfsResult<Arc<PosixBackend>> {
        let start = Instant::now();
        loop {
            if let MountState::Mounted { pid } = self.mount.state() {
                let mut cur = self.current.lock().expect("lock");
                if let Some((p, b)) = cur.as_ref() {
                    if *p == pid {
                        return Ok(b.clone());
                    }
                }
                if mount::top_mount_is_glusterfs(self.mount.path()) {
                    let mut opts = PosixOptions::new(&self.name);
                    opts.identity = Some(IdentityKind::Gfid);
                    opts.open_files = self.open_files;
                    let b = Arc::new(PosixBackend::open(self.mount.path(), opts)?);
                    *cur = Some((pid, b.clone()));
                    return Ok(b);
                }
            }
            if start.elapsed() > MOUNT_WAIT {
                return Err(VfsError::Io(libc::ENOTCONN));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Backend for FuseBackend {
    fn volume_id(&self) -> VolumeId {
        volume_id(&self.name)
    }

    fn root(&self) -> FileId {
        gfid_file_id(&ROOT_GFID)
    }

    fn path_of(&self, dir: &FileId) -> VfsResult<Vec<u8>> {
        self.backend()?.path_of(dir)
    }

    fn getattr(&self, id: &FileId) -> VfsResult<Attr> {
        self.backend()?.getattr(id)
    }

    fn setattr(&self, cred: &Credentials, id: &FileId, set: &SetAttr) -> VfsResult<Attr> {
        self.backend()?.setattr(cred, id, set)
    }

    fn lookup(&self, cred: &Credentials, dir: &FileId, name: &Name) -> VfsResult<(FileId, Attr)> {
        self.backend()?.lookup(cred, dir, name)
    }

    fn parent(&self, cred: &Credentials, dir: &FileId) -> VfsResult<(FileId, Attr)> {
        self.backend()?.parent(cred, dir)
    }

    fn read(&self, cred: &Credentials, id: &FileId, offset: u64, count: u32) -> VfsResult<(Vec<u8>, bool, Attr)> {
        self.backend()?.read(cred, id, offset, count)
    }

    // The POSIX backend's own read paths, not the trait's defaults built on `read`: data the
    // mount's page cache holds is sent from it with `sendfile`, the rest read into the reply
    // without zeroing or copying. Both read the same pages a plain `pread` on the mount would.
    fn read_append(
        &self,
        cred: &Credentials,
        id: &FileId,
        offset: u64,
        count: u32,
        out: &mut Vec<u8>,
    ) -> VfsResult<(u32, bool, Attr)> {
        self.backend()?.read_append(cred, id, offset, count, out)
    }

    fn read_slice(
        &self,
        cred: &Credentials,
        id: &FileId,
        offset: u64,
        count: u32,
    ) -> VfsResult<(ReadData, bool, Attr)> {
        self.backend()?.read_slice(cred, id, offset, count)
    }

    fn read_cached(
        &self,
        cred: &Credentials,
        id: &FileId,
        offset: u64,
        count: u32,
    ) -> VfsResult<Option<(FileSlice, bool, Attr)>> {
        self.backend()?.read_cached(cred, id, offset, count)
    }

    fn write(
        &self,
        cred: &Credentials,
        id: &FileId,
        offset: u64,
        data: &[u8],
        stable: Stability,
    ) -> VfsResult<(u32, Stability, Option<Attr>)> {
        self.backend()?.write(cred, id, offset, data, stable)
    }

    fn create(
        &self,
        cred: &Credentials,
        dir: &FileId,
        name: &Name,
        mode: u32,
        how: CreateHow,
    ) -> VfsResult<(FileId, Attr)> {
        self.backend()?.create(cred, dir, name, mode, how)
    }

    fn mkdir(&self, cred: &Credentials, dir: &FileId, name: &Name, mode: u32) -> VfsResult<(FileId, Attr)> {
        self.backend()?.mkdir(cred, dir, name, mode)
    }

    fn symlink(&self, cred: &Credentials, dir: &FileId, name: &Name, target: &[u8]) -> VfsResult<(FileId, Attr)> {
        self.backend()?.symlink(cred, dir, name, target)
    }

    fn mknod(
        &self,
        cred: &Credentials,
        dir: &FileId,
        name: &Name,
        kind: SpecialFile,
        mode: u32,
    ) -> VfsResult<(FileId, Attr)> {
        self.backend()?.mknod(cred, dir, name, kind, mode)
    }

    fn readlink(&self, cred: &Credentials, id: &FileId) -> VfsResult<Vec<u8>> {
        self.backend()?.readlink(cred, id)
    }

    fn remove(&self, cred: &Credentials, dir: &FileId, name: &Name) -> VfsResult<()> {
        self.backend()?.remove(cred, dir, name)
    }

    fn rmdir(&self, cred: &Credentials, dir: &FileId, name: &Name) -> VfsResult<()> {
        self.backend()?.rmdir(cred, dir, name)
    }

    fn rename(&self, cred: &Credentials, from_dir: &FileId, from: &Name, to_dir: &FileId, to: &Name) -> VfsResult<()> {
        self.backend()?.rename(cred, from_dir, from, to_dir, to)
    }

    fn link(&self, cred: &Credentials, id: &FileId, dir: &FileId, name: &Name) -> VfsResult<Attr> {
        self.backend()?.link(cred, id, dir, name)
    }

    fn readdir(
        &self,
        cred: &Credentials,
        dir: &FileId,
        cookie: u64,
        max_entries: usize,
        plus: bool,
    ) -> VfsResult<ReadDir> {
        self.backend()?.readdir(cred, dir, cookie, max_entries, plus)
    }

    fn cookie_verifier(&self, _dir: &FileId) -> u64 {
        u64::from_le_bytes(volume_id(&self.name).0)
    }

    fn fsync(&self, id: &FileId) -> VfsResult<()> {
        self.backend()?.fsync(id)
    }

    fn flush(&self, id: &FileId) -> VfsResult<()> {
        self.backend()?.flush(id)
    }

    fn find_name_nocase(&self, cred: &Credentials, dir: &FileId, name: &Name) -> VfsResult<Option<Vec<u8>>> {
        self.backend()?.find_name_nocase(cred, dir, name)
    }

    fn get_xattr(&self, cred: &Credentials, id: &FileId, name: &[u8]) -> VfsResult<Option<Vec<u8>>> {
        self.backend()?.get_xattr(cred, id, name)
    }

    fn get_xattr_at(&self, cred: &Credentials, dir: &FileId, entry: &Name, name: &[u8]) -> VfsResult<Option<Vec<u8>>> {
        self.backend()?.get_xattr_at(cred, dir, entry, name)
    }

    fn set_xattr(&self, cred: &Credentials, id: &FileId, name: &[u8], value: &[u8]) -> VfsResult<()> {
        self.backend()?.set_xattr(cred, id, name, value)
    }

    fn remove_xattr(&self, cred: &Credentials, id: &FileId, name: &[u8]) -> VfsResult<()> {
        self.backend()?.remove_xattr(cred, id, name)
    }

    fn list_xattrs(&self, cred: &Credentials, id: &FileId) -> VfsResult<Vec<Vec<u8>>> {
        self.backend()?.list_xattrs(cred, id)
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
        self.backend()?.copy_range(cred, src, src_offset, dst, dst_offset, len)
    }

    fn open_data(&self, id: &FileId, write: bool) -> VfsResult<std::os::fd::OwnedFd> {
        self.backend()?.open_data(id, write)
    }

    fn shared_data(&self, id: &FileId) -> VfsResult<Arc<std::fs::File>> {
        self.backend()?.shared_data(id)
    }

    fn statfs(&self, id: &FileId) -> VfsResult<FsStat> {
        self.backend()?.statfs(id)
    }

    fn data_epoch(&self) -> u64 {
        self.mount.mount_count()
    }

    fn revoke_data(&self, reason: &str) -> bool {
        self.mount.abort(reason)
    }

    fn release_removed(&self) -> usize {
        // The backend of the current mount only: never wait for a mount to sweep a cache.
        let cur = self.current.lock().expect("lock").as_ref().map(|(_, b)| b.clone());
        cur.map_or(0, |b| b.release_removed())
    }

    fn owner_locks(&self, id: &FileId, owner: &[u8]) -> VfsResult<Box<dyn crate::vfs::backend::OwnerLocks>> {
        self.backend()?.owner_locks(id, owner)
    }

    fn sync_all(&self) -> VfsResult<()> {
        // Nothing to flush when the volume is not mounted (and never wait for it on shutdown).
        let cur = self.current.lock().expect("lock").take();
        match cur {
            Some((_, b)) if matches!(self.mount.state(), MountState::Mounted { .. }) => b.sync_all(),
            _ => Ok(()),
        }
    }
}
