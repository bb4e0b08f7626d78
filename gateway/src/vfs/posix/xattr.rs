//! Extended attributes, case-insensitive lookups on GlusterFS and server-side copies for the
//! POSIX backend.
//!
//! - Attributes are read and written through `/proc/self/fd/N` of the object's `O_PATH`
//!   descriptor (`fgetxattr` refuses `O_PATH` descriptors), as the caller: the kernel checks
//!   the caller's permissions (reading a `user.` attribute needs read permission, writing
//!   one write permission). Symlinks have none (Linux refuses `user.` attributes on them).
//! - A value the file system cannot hold (`E2BIG`, `ENOSPC`, `ERANGE`: ext4 keeps all of a
//!   file's attributes in about one block) is [`VfsError::NoSpace`], never a truncated value.
//! - On a GlusterFS FUSE mount, `getxattr(dir, "glusterfs.get_real_filename:NAME")` makes
//!   every brick look the name up ignoring case on its own disk, so a case-insensitive miss
//!   costs one round trip instead of listing the directory to us.
//! - Copies use `copy_file_range` (reflinks on Btrfs/XFS, in-kernel copies elsewhere, the
//!   GlusterFS FUSE client's COPY_FILE_RANGE), falling back to read/write when the file
//!   system refuses.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use super::sys;
use super::PosixBackend;
use crate::vfs::access;
use crate::vfs::cred::Credentials;
use crate::vfs::error::{VfsError, VfsResult};
use crate::vfs::name::Name;
use crate::vfs::types::{FileId, FileType};

/// The prefix of GlusterFS's virtual attribute answering a case-insensitive lookup.
const GLUSTER_REAL_FILENAME: &str = "glusterfs.get_real_filename:";

/// Maps the errors of attribute calls: a missing attribute is `None`, a value too large for
/// the file system is `NoSpace`.
fn xattr_error(errno: i32) -> VfsError {
    match errno {
        libc::E2BIG | libc::ERANGE | libc::ENOSPC => VfsError::NoSpace,
        libc::ENODATA => VfsError::NotFound,
        e => VfsError::from_errno(e),
    }
}

fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO)
}

/// Which `getxattr` to call: `/proc/self/fd/N` is a magic link that must be followed to reach
/// the object; `/proc/self/fd/DIR/ENTRY` must not follow ENTRY when it is a symlink.
type GetFn = unsafe extern "C" fn(*const libc::c_char, *const libc::c_char, *mut libc::c_void, usize) -> isize;

/// `getxattr(path, name)` (or `lgetxattr`) into a buffer sized by asking first; `None` when
/// absent.
fn get(call: GetFn, path: &CString, name: &CString) -> VfsResult<Option<Vec<u8>>> {
    for _ in 0..4 {
        // SAFETY: path and name are NUL-terminated; a null buffer with size 0 asks the size.
        let size = unsafe { call(path.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) };
        if size < 0 {
            return match xattr_error(last_errno()) {
                VfsError::NotFound => Ok(None),
                e => Err(e),
            };
        }
        let mut buf = vec![0u8; size as usize];
        // SAFETY: buf has buf.len() writable bytes.
        let got = unsafe { call(path.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if got >= 0 {
            buf.truncate(got as usize);
            return Ok(Some(buf));
        }
        match last_errno() {
            // It grew between the two calls: ask again.
            libc::ERANGE => continue,
            e => {
                return match xattr_error(e) {
                    VfsError::NotFound => Ok(None),
                    e => Err(e),
                }
            }
        }
    }
    Err(VfsError::Io(libc::ERANGE))
}

/// The `user.` names of a `listxattr` buffer (NUL-separated).
fn user_names(buf: &[u8]) -> Vec<Vec<u8>> {
    buf.split(|&b| b == 0).filter(|n| n.starts_with(b"user.") && n.len() > 5).map(<[u8]>::to_vec).collect()
}

fn cname(name: &[u8]) -> VfsResult<CString> {
    CString::new(name).map_err(|_| VfsError::Invalid)
}

/// `/proc/self/fd/DIR/ENTRY`: the entry `entry` of the directory behind `dir`.
fn entry_path(dir: BorrowedFd<'_>, entry: &Name) -> VfsResult<CString> {
    let mut p = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    p.extend_from_slice(entry.as_bytes());
    cname(&p)
}

impl PosixBackend {
    /// The `/proc/self/fd` path of `id`'s object, refusing symlinks (no `user.` attributes).
    fn xattr_target(&self, id: &FileId) -> VfsResult<(std::sync::Arc<super::Node>, CString)> {
        let node = self.node(id)?;
        self.live_stat(id, &node)?;
        if node.ftype == FileType::Symlink {
            return Err(VfsError::NotSupported);
        }
        let path = sys::proc_path(node.path_fd.as_fd());
        Ok((node, path))
    }

    pub(super) fn xattr_get(&self, cred: &Credentials, id: &FileId, name: &[u8]) -> VfsResult<Option<Vec<u8>>> {
        let (_node, path) = self.xattr_target(id)?;
        let name = cname(name)?;
        let _as = self.as_caller(cred)?;
        get(libc::getxattr, &path, &name)
    }

    pub(super) fn xattr_get_at(
        &self,
        cred: &Credentials,
        dir: &FileId,
        entry: &Name,
        name: &[u8],
    ) -> VfsResult<Option<Vec<u8>>> {
        let d = self.dir_node(dir)?;
        let path = entry_path(d.path_fd.as_fd(), entry)?;
        let name = cname(name)?;
        let _as = self.as_caller(cred)?;
        match get(libc::lgetxattr, &path, &name) {
            // A symlink: Linux keeps no user attributes on it.
            Err(VfsError::Perm | VfsError::NotSupported) => Ok(None),
            r => r,
        }
    }

    pub(super) fn xattr_set(&self, cred: &Credentials, id: &FileId, name: &[u8], value: &[u8]) -> VfsResult<()> {
        let (_node, path) = self.xattr_target(id)?;
        let name = cname(name)?;
        let _as = self.as_caller(cred)?;
        // SAFETY: NUL-terminated path and name; value is value.len() readable bytes.
        let rc = unsafe { libc::setxattr(path.as_ptr(), name.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
        if rc < 0 {
            return Err(xattr_error(last_errno()));
        }
        Ok(())
    }

    pub(super) fn xattr_remove(&self, cred: &Credentials, id: &FileId, name: &[u8]) -> VfsResult<()> {
        let (_node, path) = self.xattr_target(id)?;
        let name = cname(name)?;
        let _as = self.as_caller(cred)?;
        // SAFETY: NUL-terminated path and name.
        if unsafe { libc::removexattr(path.as_ptr(), name.as_ptr()) } < 0 {
            return Err(xattr_error(last_errno()));
        }
        Ok(())
    }

    /// `llistxattr` of `dir/entry` by its path under the directory's descriptor (no lookup of
    /// the entry; one call when the names fit in 256 bytes, as most lists do).
    pub(super) fn xattr_list_at(&self, cred: &Credentials, dir: &FileId, entry: &Name) -> VfsResult<Vec<Vec<u8>>> {
        let d = self.dir_node(dir)?;
        let path = entry_path(d.path_fd.as_fd(), entry)?;
        let _as = self.as_caller(cred)?;
        let mut buf = vec![0u8; 256];
        for _ in 0..4 {
            // SAFETY: path is NUL-terminated; buf has buf.len() writable bytes.
            let got = unsafe { libc::llistxattr(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
            if got >= 0 {
                buf.truncate(got as usize);
                return Ok(user_names(&buf));
            }
            match last_errno() {
                libc::ERANGE => {
                    // SAFETY: a null buffer with size 0 asks the size.
                    let size = unsafe { libc::llistxattr(path.as_ptr(), std::ptr::null_mut(), 0) };
                    if size < 0 {
                        return Err(xattr_error(last_errno()));
                    }
                    buf = vec![0u8; size as usize];
                }
                // A symlink: Linux keeps no user attributes on it.
                libc::EPERM | libc::ENOTSUP => return Ok(Vec::new()),
                e => return Err(xattr_error(e)),
            }
        }
        Err(VfsError::Io(libc::ERANGE))
    }

    pub(super) fn xattr_list(&self, cred: &Credentials, id: &FileId) -> VfsResult<Vec<Vec<u8>>> {
        let (_node, path) = match self.xattr_target(id) {
            Err(VfsError::NotSupported) => return Ok(Vec::new()),
            r => r?,
        };
        let _as = self.as_caller(cred)?;
        for _ in 0..4 {
            // SAFETY: a null buffer with size 0 asks the size.
            let size = unsafe { libc::listxattr(path.as_ptr(), std::ptr::null_mut(), 0) };
            if size < 0 {
                return Err(xattr_error(last_errno()));
            }
            let mut buf = vec![0u8; size as usize];
            // SAFETY: buf has buf.len() writable bytes.
            let got = unsafe { libc::listxattr(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
            if got < 0 {
                if last_errno() == libc::ERANGE {
                    continue;
                }
                return Err(xattr_error(last_errno()));
            }
            buf.truncate(got as usize);
            return Ok(user_names(&buf));
        }
        Err(VfsError::Io(libc::ERANGE))
    }

    /// GlusterFS's case-insensitive lookup (see the module doc); `NotSupported` elsewhere.
    pub(super) fn gluster_find_nocase(
        &self,
        cred: &Credentials,
        dir: &FileId,
        name: &Name,
    ) -> VfsResult<Option<Vec<u8>>> {
        if self.local || self.kind != super::identity::IdentityKind::Gfid {
            return Err(VfsError::NotSupported);
        }
        let d = self.dir_node(dir)?;
        let path = sys::proc_path(d.path_fd.as_fd());
        let mut key = GLUSTER_REAL_FILENAME.as_bytes().to_vec();
        key.extend_from_slice(name.as_bytes());
        let key = cname(&key)?;
        let _as = self.as_caller(cred)?;
        match get(libc::getxattr, &path, &key) {
            Ok(Some(mut real)) => {
                // Some versions count the terminating NUL.
                while real.last() == Some(&0) {
                    real.pop();
                }
                Ok(Some(real).filter(|r| !r.is_empty()))
            }
            Ok(None) | Err(VfsError::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub(super) fn copy(
        &self,
        cred: &Credentials,
        src: &FileId,
        src_offset: u64,
        dst: &FileId,
        dst_offset: u64,
        len: u64,
    ) -> VfsResult<u64> {
        let (sfd, sattr) = self.readable(cred, src)?;
        let dnode = self.node(dst)?;
        if dnode.ftype != FileType::Regular {
            return Err(if dnode.ftype == FileType::Directory { VfsError::IsDir } else { VfsError::Invalid });
        }
        let dattr = self.attr(&self.live_stat(dst, &dnode)?);
        if self.privileged && cred.uid != dattr.uid && access::granted(&dattr, cred, access::MODIFY) == 0 {
            return Err(VfsError::Access);
        }
        let dfd = self.io_fd(dst, &dnode)?;
        dst_offset.checked_add(len).filter(|&end| end <= i64::MAX as u64).ok_or(VfsError::TooBig)?;
        let len = len.min(sattr.size.saturating_sub(src_offset));
        let mut done = 0u64;
        while done < len {
            let mut off_in = (src_offset + done) as i64;
            let mut off_out = (dst_offset + done) as i64;
            let chunk = (len - done).min(1 << 30) as usize;
            // SAFETY: both descriptors are open; the offsets are valid pointers.
            let n =
                unsafe { libc::copy_file_range(sfd.as_raw_fd(), &mut off_in, dfd.as_raw_fd(), &mut off_out, chunk, 0) };
            if n < 0 {
                match last_errno() {
                    libc::EINTR => continue,
                    // Not possible between these files here: copy through memory.
                    libc::EXDEV | libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL if done == 0 => {
                        return self.copy_through_memory(sfd.as_fd(), src_offset, dfd.as_fd(), dst_offset, len);
                    }
                    e => return Err(VfsError::from_errno(e)),
                }
            }
            if n == 0 {
                break;
            }
            done += n as u64;
        }
        Ok(done)
    }

    fn copy_through_memory(
        &self,
        src: BorrowedFd<'_>,
        src_offset: u64,
        dst: BorrowedFd<'_>,
        dst_offset: u64,
        len: u64,
    ) -> VfsResult<u64> {
        let mut buf = Vec::with_capacity(1 << 20);
        let mut done = 0u64;
        while done < len {
            let want = (len - done).min(1 << 20) as usize;
            buf.clear();
            let n = sys::pread_uninit(src, &mut buf.spare_capacity_mut()[..want], src_offset + done)?;
            if n == 0 {
                break;
            }
            // SAFETY: pread_uninit initialised the first n bytes.
            unsafe { buf.set_len(n) };
            sys::pwrite_all(dst, &buf, dst_offset + done)?;
            done += n as u64;
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::vfs::posix::{PosixBackend, PosixOptions};
    use crate::vfs::{Backend, CreateHow, Credentials, Namespace, SetAttr, Stability, VfsError};

    fn ns(dir: &std::path::Path) -> Namespace {
        Namespace::new(Arc::new(PosixBackend::open(dir, PosixOptions::new("smb")).unwrap()))
    }

    #[tokio::test]
    async fn attributes_are_stored_read_listed_and_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let ns = ns(tmp.path());
        let (me, root) = (Credentials::root(), ns.root());
        let (f, _) = ns.create(&me, root, b"f", 0o644, CreateHow::Guarded(SetAttr::default())).await.unwrap();
        assert_eq!(ns.get_xattr(&me, f, b"user.DOSATTRIB").await.unwrap(), None);
        ns.set_xattr(&me, f, b"user.DOSATTRIB", b"\0v").await.unwrap();
        ns.set_xattr(&me, f, b"user.DosStream.s:$DATA", b"data\0").await.unwrap();
        assert_eq!(ns.get_xattr(&me, f, b"user.DOSATTRIB").await.unwrap().as_deref(), Some(&b"\0v"[..]));
        assert_eq!(ns.get_xattr_at(&me, root, b"f", b"user.DOSATTRIB").await.unwrap().as_deref(), Some(&b"\0v"[..]));
        let mut names = ns.list_xattrs(&me, f).await.unwrap();
        names.sort();
        assert_eq!(names, vec![b"user.DOSATTRIB".to_vec(), b"user.DosStream.s:$DATA".to_vec()]);
        // What another program sees on the file itself.
        let v = xattr_of(&tmp.path().join("f"), "user.DosStream.s:$DATA");
        assert_eq!(v.as_deref(), Some(&b"data\0"[..]));
        ns.remove_xattr(&me, f, b"user.DOSATTRIB").await.unwrap();
        assert_eq!(ns.remove_xattr(&me, f, b"user.DOSATTRIB").await, Err(VfsError::NotFound));
        assert_eq!(ns.get_xattr(&me, f, b"trusted.x").await, Err(VfsError::Invalid), "user namespace only");
        std::os::unix::fs::symlink("f", tmp.path().join("l")).unwrap();
        assert_eq!(ns.get_xattr_at(&me, root, b"l", b"user.DOSATTRIB").await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_value_too_large_for_the_file_system_is_disk_full() {
        let tmp = tempfile::tempdir().unwrap();
        let ns = ns(tmp.path());
        let (me, root) = (Credentials::root(), ns.root());
        let (f, _) = ns.create(&me, root, b"f", 0o644, CreateHow::Guarded(SetAttr::default())).await.unwrap();
        let huge = vec![7u8; 70_000];
        assert_eq!(ns.set_xattr(&me, f, b"user.big", &huge).await, Err(VfsError::NoSpace));
        // ext4 keeps every attribute of a file in about one block: 60 KiB does not fit there,
        // and must not be stored cut short either.
        let r = ns.set_xattr(&me, f, b"user.big", &huge[..60_000]).await;
        match r {
            Ok(()) => assert_eq!(ns.get_xattr(&me, f, b"user.big").await.unwrap().unwrap().len(), 60_000),
            Err(e) => assert_eq!(e, VfsError::NoSpace),
        }
    }

    #[tokio::test]
    async fn ranges_are_copied_inside_the_volume() {
        let tmp = tempfile::tempdir().unwrap();
        let b = PosixBackend::open(tmp.path(), PosixOptions::new("smb")).unwrap();
        let (me, root) = (Credentials::root(), b.root());
        let n = |s: &str| crate::vfs::Name::new(s.as_bytes()).unwrap();
        let (src, _) = b.create(&me, &root, &n("src"), 0o644, CreateHow::Guarded(SetAttr::default())).unwrap();
        let (dst, _) = b.create(&me, &root, &n("dst"), 0o644, CreateHow::Guarded(SetAttr::default())).unwrap();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        b.write(&me, &src, 0, &data, Stability::Unstable).unwrap();
        assert_eq!(b.copy_range(&me, &src, 1000, &dst, 10, 2_000_000).unwrap(), 2_000_000);
        let got = std::fs::read(tmp.path().join("dst")).unwrap();
        assert_eq!(got.len(), 2_000_010);
        assert_eq!(&got[10..], &data[1000..2_001_000]);
        assert_eq!(b.copy_range(&me, &src, 2_999_990, &dst, 0, 100).unwrap(), 10, "stops at the end of the source");
    }

    fn xattr_of(path: &std::path::Path, name: &str) -> Option<Vec<u8>> {
        let p = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        let n = std::ffi::CString::new(name).unwrap();
        let mut buf = vec![0u8; 65536];
        // SAFETY: NUL-terminated strings; buf is writable for its length.
        let r = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        (r >= 0).then(|| {
            buf.truncate(r as usize);
            buf
        })
    }
}
