//! Thin, safe wrappers over the Linux system calls the POSIX backend needs (`*at` calls on
//! descriptors, `statx`, `openat2`, file handles, `getdents64`, per-thread credentials). Each
//! returns [`VfsResult`]; nothing here knows about identities or caches.

use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use crate::vfs::error::{VfsError, VfsResult};
use crate::vfs::types::{Attr, FileType, Timestamp};

/// Turns a `-1` return into the thread's errno.
fn check(ret: libc::c_int) -> VfsResult<libc::c_int> {
    if ret < 0 {
        Err(VfsError::last_os())
    } else {
        Ok(ret)
    }
}

fn check_long(ret: libc::c_long) -> VfsResult<libc::c_long> {
    if ret < 0 {
        Err(VfsError::last_os())
    } else {
        Ok(ret)
    }
}

/// Runs `f` again while it fails with `EINTR`.
fn retry<T>(mut f: impl FnMut() -> VfsResult<T>) -> VfsResult<T> {
    loop {
        match f() {
            Err(VfsError::Io(libc::EINTR)) => continue,
            r => return r,
        }
    }
}

const EMPTY: &CStr = c"";

/// `openat(dir, name, flags, mode)`; always adds `O_CLOEXEC`.
pub fn openat(dir: BorrowedFd<'_>, name: &CStr, flags: libc::c_int, mode: u32) -> VfsResult<OwnedFd> {
    let fd = retry(|| check(unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags | libc::O_CLOEXEC, mode) }))?;
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS`: opens a
/// relative path that may not leave `dir` nor cross any symlink.
pub fn open_beneath(dir: BorrowedFd<'_>, path: &CStr, flags: libc::c_int) -> VfsResult<OwnedFd> {
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    let fd = retry(|| {
        check_long(unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.as_raw_fd(),
                path.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        })
    })?;
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `/proc/self/fd/N`: reopens or changes the object behind an `O_PATH` descriptor with the
/// permission checks of the calling thread's file-system identity.
pub fn proc_path(fd: BorrowedFd<'_>) -> CString {
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("no NUL")
}

/// Reopens an `O_PATH` descriptor for I/O.
pub fn reopen(fd: BorrowedFd<'_>, flags: libc::c_int) -> VfsResult<OwnedFd> {
    let path = proc_path(fd);
    let raw = retry(|| check(unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC) }))?;
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Raw `statx` result of the object `name` in `dir` (`name` empty: `dir` itself), never
/// following a symlink.
pub fn statx(dir: BorrowedFd<'_>, name: &CStr) -> VfsResult<libc::statx> {
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    let flags = libc::AT_SYMLINK_NOFOLLOW | if name.is_empty() { libc::AT_EMPTY_PATH } else { 0 };
    let mask = libc::STATX_BASIC_STATS | libc::STATX_BTIME;
    retry(|| check(unsafe { libc::statx(dir.as_raw_fd(), name.as_ptr(), flags, mask, &mut stx) }))?;
    Ok(stx)
}

/// `statx` of the descriptor itself.
pub fn fstatx(fd: BorrowedFd<'_>) -> VfsResult<libc::statx> {
    statx(fd, EMPTY)
}

/// `statx` of the descriptor itself as the kernel last knew it (`AT_STATX_DONT_SYNC`): on a
/// network file system's mount (FUSE) no request to the file server; on a local file system the
/// same as [`fstatx`].
pub fn fstatx_cached(fd: BorrowedFd<'_>) -> VfsResult<libc::statx> {
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    let flags = libc::AT_SYMLINK_NOFOLLOW | libc::AT_EMPTY_PATH | libc::AT_STATX_DONT_SYNC;
    let mask = libc::STATX_BASIC_STATS | libc::STATX_BTIME;
    retry(|| check(unsafe { libc::statx(fd.as_raw_fd(), EMPTY.as_ptr(), flags, mask, &mut stx) }))?;
    Ok(stx)
}

/// What closing `fd` would do to its open file (a network file system's FLUSH, with the
/// errors of writes it had acknowledged early), keeping `fd` open: closes a duplicate.
pub fn flush(fd: BorrowedFd<'_>) -> VfsResult<()> {
    let dup = fd.try_clone_to_owned()?;
    // SAFETY: `dup` is ours; into_raw_fd hands it to close(2), which takes it even on error.
    check(unsafe { libc::close(std::os::fd::IntoRawFd::into_raw_fd(dup)) })?;
    Ok(())
}

fn ts(t: libc::statx_timestamp) -> Timestamp {
    Timestamp { secs: t.tv_sec, nanos: t.tv_nsec }
}

/// Birth time from a `statx`, when the file system reports one.
pub fn btime(stx: &libc::statx) -> Option<Timestamp> {
    (stx.stx_mask & libc::STATX_BTIME != 0).then(|| ts(stx.stx_btime))
}

/// Converts a `statx` to the layer's [`Attr`].
pub fn attr_from(stx: &libc::statx, fsid: u64) -> Attr {
    let mode = u32::from(stx.stx_mode);
    Attr {
        ftype: FileType::from_mode(mode),
        mode: mode & 0o7777,
        nlink: stx.stx_nlink,
        uid: stx.stx_uid,
        gid: stx.stx_gid,
        size: stx.stx_size,
        used: stx.stx_blocks * 512,
        rdev: (stx.stx_rdev_major, stx.stx_rdev_minor),
        fsid,
        fileid: stx.stx_ino,
        atime: ts(stx.stx_atime),
        mtime: ts(stx.stx_mtime),
        ctime: ts(stx.stx_ctime),
        btime: btime(stx),
    }
}

/// Largest kernel file handle we ask for.
pub const MAX_HANDLE: usize = 128;

#[repr(C)]
struct HandleBuf {
    handle_bytes: u32,
    handle_type: i32,
    f_handle: [u8; MAX_HANDLE],
}

/// `name_to_handle_at(dir, name)` (`name` empty: `dir` itself), never following a symlink: the
/// kernel's persistent handle of the object as (type, bytes). Needs no privilege.
pub fn name_to_handle(dir: BorrowedFd<'_>, name: &CStr) -> VfsResult<(i32, Vec<u8>)> {
    let mut buf = HandleBuf { handle_bytes: MAX_HANDLE as u32, handle_type: 0, f_handle: [0; MAX_HANDLE] };
    let mut mount_id: libc::c_int = 0;
    check_long(unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut buf as *mut HandleBuf,
            &mut mount_id as *mut libc::c_int,
            if name.is_empty() { libc::AT_EMPTY_PATH } else { 0 },
        )
    })?;
    let n = (buf.handle_bytes as usize).min(MAX_HANDLE);
    Ok((buf.handle_type, buf.f_handle[..n].to_vec()))
}

/// `open_by_handle_at(mount_fd, handle, flags)`: needs `CAP_DAC_READ_SEARCH`.
pub fn open_by_handle(
    mount_fd: BorrowedFd<'_>,
    handle_type: i32,
    bytes: &[u8],
    flags: libc::c_int,
) -> VfsResult<OwnedFd> {
    if bytes.len() > MAX_HANDLE {
        return Err(VfsError::BadHandle);
    }
    let mut buf = HandleBuf { handle_bytes: bytes.len() as u32, handle_type, f_handle: [0; MAX_HANDLE] };
    buf.f_handle[..bytes.len()].copy_from_slice(bytes);
    let fd = retry(|| {
        check_long(unsafe {
            libc::syscall(
                libc::SYS_open_by_handle_at,
                mount_fd.as_raw_fd(),
                &mut buf as *mut HandleBuf,
                flags | libc::O_CLOEXEC,
            )
        })
    })?;
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// One raw entry of `getdents64`, borrowed from the buffer it was read into.
pub struct RawDirent<'a> {
    /// Inode number.
    pub ino: u64,
    /// Position after this entry (the directory cookie).
    pub off: u64,
    /// `d_type` (`DT_DIR`, ...; `DT_UNKNOWN` when the file system does not say).
    pub dtype: u8,
    /// Name, NUL-terminated in the buffer (so it goes to `*at` calls without a copy).
    pub name: &'a CStr,
}

impl RawDirent<'_> {
    /// True for `.` and `..`.
    pub fn is_dot(&self) -> bool {
        matches!(self.name.to_bytes(), b"." | b"..")
    }
}

/// Reads the next batch of entries from an open directory into `buf`; returns how many bytes
/// it filled (0 at end). Parse them with [`dirents`].
pub fn getdents(dir: BorrowedFd<'_>, buf: &mut [u8]) -> VfsResult<usize> {
    let n = retry(|| {
        check_long(unsafe { libc::syscall(libc::SYS_getdents64, dir.as_raw_fd(), buf.as_mut_ptr(), buf.len()) })
    })?;
    Ok(n as usize)
}

/// The entries of a `getdents64` batch (`linux_dirent64`: u64 ino, i64 off, u16 reclen, u8
/// type, NUL-terminated name). Pure; stops at the first malformed record.
pub fn dirents(batch: &[u8]) -> impl Iterator<Item = RawDirent<'_>> {
    let mut pos = 0;
    std::iter::from_fn(move || {
        let rec = batch.get(pos..)?;
        if rec.len() < 20 {
            return None;
        }
        let reclen = u16::from_ne_bytes([rec[16], rec[17]]) as usize;
        let name = CStr::from_bytes_until_nul(rec.get(19..reclen)?).ok()?;
        pos += reclen;
        Some(RawDirent {
            ino: u64::from_ne_bytes(rec[0..8].try_into().expect("8 bytes")),
            off: i64::from_ne_bytes(rec[8..16].try_into().expect("8 bytes")) as u64,
            dtype: rec[18],
            name,
        })
    })
}

/// `lseek(fd, off, SEEK_SET)` on a directory: resumes a listing at a cookie.
pub fn seek_dir(dir: BorrowedFd<'_>, off: u64) -> VfsResult<()> {
    let r = unsafe { libc::lseek(dir.as_raw_fd(), off as libc::off_t, libc::SEEK_SET) };
    if r < 0 {
        return Err(VfsError::last_os());
    }
    Ok(())
}

/// `pread` into uninitialised memory until it is full or end of file; returns the number of
/// leading bytes of `buf` now initialised.
pub fn pread_uninit(fd: BorrowedFd<'_>, buf: &mut [std::mem::MaybeUninit<u8>], mut offset: u64) -> VfsResult<usize> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        let n = retry(|| {
            let r = unsafe { libc::pread(fd.as_raw_fd(), rest.as_mut_ptr().cast(), rest.len(), offset as libc::off_t) };
            if r < 0 {
                Err(VfsError::last_os())
            } else {
                Ok(r as usize)
            }
        })?;
        if n == 0 {
            break;
        }
        done += n;
        offset += n as u64;
    }
    Ok(done)
}

/// `cachestat(2)` (Linux 6.5; the same number on every architecture).
const SYS_CACHESTAT: libc::c_long = 451;

#[repr(C)]
struct CachestatRange {
    off: u64,
    len: u64,
}

#[repr(C)]
#[derive(Default)]
struct Cachestat {
    nr_cache: u64,
    nr_dirty: u64,
    nr_writeback: u64,
    nr_evicted: u64,
    nr_recently_evicted: u64,
}

/// True when every page of the `len` bytes at `offset` of `fd` is in the page cache, so reading
/// them cannot wait for the disk; false when some are not or the kernel cannot tell.
pub fn all_cached(fd: BorrowedFd<'_>, offset: u64, len: u64) -> bool {
    if len == 0 {
        return true;
    }
    let page = 4096;
    let pages = (offset + len - 1) / page - offset / page + 1;
    let range = CachestatRange { off: offset, len };
    let mut st = Cachestat::default();
    let r = unsafe {
        libc::syscall(SYS_CACHESTAT, fd.as_raw_fd(), &range as *const CachestatRange, &mut st as *mut Cachestat, 0)
    };
    r == 0 && st.nr_cache >= pages
}

/// `pwrite` of the whole buffer (or an error).
pub fn pwrite_all(fd: BorrowedFd<'_>, mut data: &[u8], mut offset: u64) -> VfsResult<()> {
    while !data.is_empty() {
        let n = retry(|| {
            let r = unsafe { libc::pwrite(fd.as_raw_fd(), data.as_ptr().cast(), data.len(), offset as libc::off_t) };
            if r < 0 {
                Err(VfsError::last_os())
            } else {
                Ok(r as usize)
            }
        })?;
        if n == 0 {
            return Err(VfsError::NoSpace);
        }
        data = &data[n..];
        offset += n as u64;
    }
    Ok(())
}

/// `fsync` (all metadata) or `fdatasync`.
pub fn sync(fd: BorrowedFd<'_>, data_only: bool) -> VfsResult<()> {
    let r = unsafe {
        if data_only {
            libc::fdatasync(fd.as_raw_fd())
        } else {
            libc::fsync(fd.as_raw_fd())
        }
    };
    retry(|| check(r)).map(|_| ())
}

/// The calling thread's current errno-free `fstatfs`.
pub fn fstatfs(fd: BorrowedFd<'_>) -> VfsResult<libc::statfs> {
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    check(unsafe { libc::fstatfs(fd.as_raw_fd(), &mut st) })?;
    Ok(st)
}

/// Switches the calling **thread's** file-system identity (raw syscalls: glibc's wrappers
/// would apply `setgroups` to every thread). Dropping the guard returns the thread to root.
pub struct ThreadIdentity {
    active: bool,
}

impl ThreadIdentity {
    /// Becomes `uid`/`gid`/`groups` for file-system checks on this thread. Needs root; a
    /// no-op guard when `active` is false (unprivileged server).
    pub fn switch(active: bool, uid: u32, gid: u32, groups: &[u32]) -> VfsResult<Self> {
        if !active || (uid == 0 && gid == 0 && groups.is_empty()) {
            return Ok(Self { active: false });
        }
        let guard = Self { active: true };
        let groups = &groups[..groups.len().min(65536)];
        set_thread_groups(groups)?;
        unsafe {
            libc::syscall(libc::SYS_setfsgid, gid);
            libc::syscall(libc::SYS_setfsuid, uid);
        }
        // setfs*id return the previous value and never fail visibly: verify instead, once per
        // identity and thread. Whether the kernel accepts an id depends only on the id (valid
        // and mapped in our user namespace) and on our capabilities, neither of which changes
        // while the server runs, so a pair that took effect once always does; skipping the
        // check afterwards saves two of the six syscalls every switch costs.
        if VERIFIED_IDS.get() != Some((uid, gid)) {
            let took = unsafe {
                libc::syscall(libc::SYS_setfsuid, u32::MAX) as u32 == uid
                    && libc::syscall(libc::SYS_setfsgid, u32::MAX) as u32 == gid
            };
            if !took {
                return Err(VfsError::Perm);
            }
            VERIFIED_IDS.set(Some((uid, gid)));
        }
        Ok(guard)
    }
}

thread_local! {
    /// The (fsuid, fsgid) pair this thread last saw take effect (see [`ThreadIdentity::switch`]).
    static VERIFIED_IDS: std::cell::Cell<Option<(u32, u32)>> = const { std::cell::Cell::new(None) };
}

impl Drop for ThreadIdentity {
    fn drop(&mut self) {
        if self.active {
            unsafe {
                libc::syscall(libc::SYS_setfsuid, 0);
                libc::syscall(libc::SYS_setfsgid, 0);
            }
            let _ = set_thread_groups(&[]);
        }
    }
}

thread_local! {
    /// The supplementary groups [`set_thread_groups`] last gave this thread (`None`: as the
    /// thread started, or unknown after a failure).
    static THREAD_GROUPS: std::cell::RefCell<Option<Vec<libc::gid_t>>> = const { std::cell::RefCell::new(None) };
}

/// Sets the calling thread's supplementary groups (raw syscall: this thread only), skipping
/// the call when the thread already has exactly these: `setgroups` allocates and replaces the
/// thread's credentials, the dearest part of running a call as its caller.
fn set_thread_groups(groups: &[libc::gid_t]) -> VfsResult<()> {
    THREAD_GROUPS.with(|current| {
        let mut current = current.borrow_mut();
        if current.as_deref() == Some(groups) {
            return Ok(());
        }
        *current = None;
        check_long(unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) })?;
        *current = Some(groups.to_vec());
        Ok(())
    })
}

/// The process umask (read without changing it for longer than two calls).
pub fn current_umask() -> u32 {
    unsafe {
        let old = libc::umask(0o022);
        libc::umask(old);
        old
    }
}

/// Unix time now.
pub fn now() -> Timestamp {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    Timestamp { secs: d.as_secs() as i64, nanos: d.subsec_nanos() }
}

/// Effective uid of the process.
pub fn euid() -> u32 {
    unsafe { libc::geteuid() }
}

/// Converts a slice of bytes to a C string, refusing interior NULs.
pub fn cstring(bytes: &[u8]) -> VfsResult<CString> {
    CString::new(bytes.to_vec()).map_err(|_| VfsError::BadName)
}

/// `unlinkat`.
pub fn unlinkat(dir: BorrowedFd<'_>, name: &CStr, flags: libc::c_int) -> VfsResult<()> {
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) }).map(|_| ())
}

/// `mkdirat`.
pub fn mkdirat(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> VfsResult<()> {
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) }).map(|_| ())
}

/// `mknodat` (`mode` carries the `S_IFMT` type bits).
pub fn mknodat(dir: BorrowedFd<'_>, name: &CStr, mode: u32, dev: libc::dev_t) -> VfsResult<()> {
    check(unsafe { libc::mknodat(dir.as_raw_fd(), name.as_ptr(), mode, dev) }).map(|_| ())
}

/// `symlinkat`.
pub fn symlinkat(target: &CStr, dir: BorrowedFd<'_>, name: &CStr) -> VfsResult<()> {
    check(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) }).map(|_| ())
}

/// `readlinkat(fd, "")` of an `O_PATH` descriptor of a symlink.
pub fn readlink(fd: BorrowedFd<'_>) -> VfsResult<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    let n = unsafe { libc::readlinkat(fd.as_raw_fd(), EMPTY.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(VfsError::last_os());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

/// `renameat`.
pub fn renameat(from_dir: BorrowedFd<'_>, from: &CStr, to_dir: BorrowedFd<'_>, to: &CStr) -> VfsResult<()> {
    check(unsafe { libc::renameat(from_dir.as_raw_fd(), from.as_ptr(), to_dir.as_raw_fd(), to.as_ptr()) }).map(|_| ())
}

/// Hard link to the object behind `fd` through its `/proc/self/fd` path (no privilege needed,
/// unlike `AT_EMPTY_PATH`).
pub fn link_fd(fd: BorrowedFd<'_>, dir: BorrowedFd<'_>, name: &CStr) -> VfsResult<()> {
    let path = proc_path(fd);
    check(unsafe {
        libc::linkat(libc::AT_FDCWD, path.as_ptr(), dir.as_raw_fd(), name.as_ptr(), libc::AT_SYMLINK_FOLLOW)
    })
    .map(|_| ())
}

/// `chmod` of the object behind `fd` (permission checks as the thread's identity).
pub fn chmod_fd(fd: BorrowedFd<'_>, mode: u32) -> VfsResult<()> {
    let path = proc_path(fd);
    check(unsafe { libc::chmod(path.as_ptr(), mode & 0o7777) }).map(|_| ())
}

/// `lchown` of the object behind `fd` (`u32::MAX` leaves a field alone).
pub fn chown_fd(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> VfsResult<()> {
    check(unsafe { libc::fchownat(fd.as_raw_fd(), EMPTY.as_ptr(), uid, gid, libc::AT_EMPTY_PATH) }).map(|_| ())
}

/// `truncate` of the object behind `fd` (write permission checked as the thread's identity).
pub fn truncate_fd(fd: BorrowedFd<'_>, size: u64) -> VfsResult<()> {
    let path = proc_path(fd);
    check(unsafe { libc::truncate(path.as_ptr(), size as libc::off_t) }).map(|_| ())
}

/// Time argument of `utimensat`.
pub enum UtimeArg {
    /// `UTIME_OMIT`.
    Omit,
    /// `UTIME_NOW`.
    Now,
    /// An explicit time.
    At(Timestamp),
}

/// `utimensat` of the object behind `fd`.
pub fn utimens_fd(fd: BorrowedFd<'_>, atime: UtimeArg, mtime: UtimeArg) -> VfsResult<()> {
    fn spec(a: UtimeArg) -> libc::timespec {
        match a {
            UtimeArg::Omit => libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_OMIT },
            UtimeArg::Now => libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_NOW },
            UtimeArg::At(t) => libc::timespec { tv_sec: t.secs as libc::time_t, tv_nsec: t.nanos as libc::c_long },
        }
    }
    let times = [spec(atime), spec(mtime)];
    let path = proc_path(fd);
    check(unsafe { libc::utimensat(libc::AT_FDCWD, path.as_ptr(), times.as_ptr(), 0) }).map(|_| ())
}

/// `syncfs` of the file system behind `fd`.
pub fn syncfs(fd: BorrowedFd<'_>) -> VfsResult<()> {
    check(unsafe { libc::syncfs(fd.as_raw_fd()) }).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(ino: u64, off: u64, dtype: u8, name: &[u8]) -> Vec<u8> {
        let reclen = (19 + name.len() + 1).div_ceil(8) * 8;
        let mut r = Vec::new();
        r.extend_from_slice(&ino.to_ne_bytes());
        r.extend_from_slice(&off.to_ne_bytes());
        r.extend_from_slice(&(reclen as u16).to_ne_bytes());
        r.push(dtype);
        r.extend_from_slice(name);
        r.resize(reclen, 0);
        r
    }

    /// The calling thread's (fsuid, fsgid, supplementary groups).
    fn thread_ids() -> (u32, u32, Vec<libc::gid_t>) {
        let mut groups = vec![0; 256];
        let n = unsafe { libc::syscall(libc::SYS_getgroups, groups.len(), groups.as_mut_ptr()) };
        groups.truncate(usize::try_from(n).unwrap());
        unsafe {
            (
                libc::syscall(libc::SYS_setfsuid, u32::MAX) as u32,
                libc::syscall(libc::SYS_setfsgid, u32::MAX) as u32,
                groups,
            )
        }
    }

    #[test]
    fn thread_identity_switches_and_restores_groups_too() {
        if euid() != 0 {
            eprintln!("not root: identity switching not tested");
            return;
        }
        // A thread of its own: identities are per thread.
        std::thread::spawn(|| {
            for groups in [vec![], vec![42, 43], vec![42, 43], vec![], vec![7]] {
                {
                    let _as = ThreadIdentity::switch(true, 1234, 5678, &groups).unwrap();
                    assert_eq!(thread_ids(), (1234, 5678, groups.clone()));
                }
                assert_eq!(thread_ids(), (0, 0, vec![]), "root again, without the caller's groups");
            }
        })
        .join()
        .unwrap();
    }

    #[test]
    fn an_identity_the_kernel_refuses_is_an_error_even_after_good_ones() {
        if euid() != 0 {
            eprintln!("not root: identity switching not tested");
            return;
        }
        std::thread::spawn(|| {
            // (u32::MAX is no valid id: setfsuid(-1) only reads the current one.)
            for (uid, gid, ok) in
                [(1234, 5678, true), (1234, 5678, true), (u32::MAX, 5678, false), (1234, u32::MAX, false)]
            {
                let r = ThreadIdentity::switch(true, uid, gid, &[]);
                assert_eq!(r.is_ok(), ok, "uid {uid} gid {gid}");
                if ok {
                    assert_eq!(thread_ids().0, uid);
                }
                drop(r);
                assert_eq!(thread_ids(), (0, 0, vec![]), "root again");
            }
        })
        .join()
        .unwrap();
    }

    #[test]
    fn dirents_parse_records_and_stop_at_garbage() {
        let mut batch = record(7, 1, libc::DT_DIR, b".");
        batch.extend(record(9, 2, libc::DT_REG, b"a-longer-name.txt"));
        let got: Vec<_> =
            dirents(&batch).map(|e| (e.ino, e.off, e.dtype, e.name.to_bytes().to_vec(), e.is_dot())).collect();
        assert_eq!(
            got,
            [(7, 1, libc::DT_DIR, b".".to_vec(), true), (9, 2, libc::DT_REG, b"a-longer-name.txt".to_vec(), false)]
        );
        // A record claiming more bytes than the batch holds, a zero length, no NUL: nothing.
        let mut bad = record(1, 1, 0, b"x");
        bad[16] = 200;
        assert_eq!(dirents(&bad).count(), 0);
        let mut zero = record(1, 1, 0, b"x");
        zero[16] = 0;
        zero[17] = 0;
        assert_eq!(dirents(&zero).count(), 0);
        let mut no_nul = record(1, 1, 0, b"abcd");
        let len = no_nul.len();
        no_nul[19..len].fill(b'a');
        assert_eq!(dirents(&no_nul).count(), 0);
        assert_eq!(dirents(&[]).count(), 0);
    }
}
