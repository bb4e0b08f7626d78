//! A safe layer over libgfapi (`gfapi-sys`): one connected volume, its objects (GFID handles) and
//! open files.
//!
//! Objects come from the handle API (`glfs_h_*`): an [`Object`] *is* a GFID, the identity the
//! volume gives a file on every node, so an NFS file handle built from it is valid wherever the
//! volume is mounted, and turning a handle back into an object needs no path lookup
//! ([`Volume::object_from_gfid`]).
//!
//! Every call blocks (libgfapi is synchronous): callers run them on blocking threads, never on an
//! async executor thread. Credentials are per thread in libgfapi, so [`Credentials::apply`] is
//! called right before the operations it covers, on the same thread.

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::mem::MaybeUninit;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use gfapi_sys::{
    glfs_fd_t, glfs_object_t, glfs_t, glfs_xreaddirp_stat_t, Gfapi, GFAPI_XREADDIRP_HANDLE, GFAPI_XREADDIRP_STAT,
};

/// `valid` bits of [`Volume::setattr`]: which fields of the `stat` to apply.
pub use gfapi_sys::{
    GFAPI_SET_ATTR_ATIME, GFAPI_SET_ATTR_GID, GFAPI_SET_ATTR_MODE, GFAPI_SET_ATTR_MTIME, GFAPI_SET_ATTR_SIZE,
    GFAPI_SET_ATTR_UID,
};

/// Length of a GFID (a UUID), the volume-wide identity of a file.
pub const GFID_LEN: usize = 16;

/// A GlusterFS file identity: the same bytes on every brick and every client.
pub type Gfid = [u8; GFID_LEN];

/// libgfapi, opened once per process on first use.
pub fn library() -> io::Result<&'static Gfapi> {
    static LIB: OnceLock<Result<Gfapi, String>> = OnceLock::new();
    LIB.get_or_init(|| Gfapi::load().map_err(|e| e.to_string())).as_ref().map_err(|e| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("access = \"gfapi\" needs libgfapi (Debian: apt install libgfapi0): {e}"),
        )
    })
}

fn cstr(s: impl AsRef<OsStr>) -> io::Result<CString> {
    CString::new(s.as_ref().as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in a name"))
}

/// `-1`/`NULL` from libgfapi: the reason is in errno.
fn last_err() -> io::Error {
    io::Error::last_os_error()
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(last_err())
    } else {
        Ok(())
    }
}

/// The caller a request runs as: NFS AUTH_SYS or the SMB session's mapped user.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Credentials {
    /// File-system user id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
}

impl Credentials {
    /// root, for nasgw's own housekeeping (health probe, recovery lock).
    pub fn root() -> Self {
        Self::default()
    }

    /// Makes libgfapi send these ids with every operation this thread issues next.
    pub fn apply(&self) -> io::Result<()> {
        let lib = library()?;
        // SAFETY: the setfs* calls only set thread-local values inside libgfapi; the group list
        // pointer is valid for `groups.len()` entries during the call.
        unsafe {
            check(lib.glfs_setfsuid(self.uid))?;
            check(lib.glfs_setfsgid(self.gid))?;
            check(lib.glfs_setfsgroups(self.groups.len(), self.groups.as_ptr()))?;
        }
        Ok(())
    }
}

/// A connected GlusterFS volume (`glfs_t`), finalised when the last clone, object and open file
/// are gone (each holds a reference, so nothing is used after `glfs_fini`). Shared between
/// threads: libgfapi is thread-safe per `glfs_t`.
#[derive(Clone)]
pub struct Volume {
    inner: Arc<Connection>,
}

struct Connection {
    lib: &'static Gfapi,
    fs: *mut glfs_t,
    name: String,
    /// Told the GFIDs of every cache-invalidation upcall ([`Volume::watch_invalidations`]).
    upcalls: OnceLock<Box<InvalidationSink>>,
    /// [`Volume::stamps_times`], read once.
    stamps_times: OnceLock<bool>,
}

/// What [`Volume::watch_invalidations`] calls: the GFIDs an upcall names (the file, and for a
/// change of names its parent directory and a rename's old parent).
pub type InvalidationSink = dyn Fn(&[Gfid]) + Send + Sync;

// SAFETY: a glfs_t is designed to be used from many threads at once (Samba and Ganesha do).
unsafe impl Send for Connection {}
// SAFETY: as above; no method mutates Rust-side state.
unsafe impl Sync for Connection {}

impl Drop for Connection {
    fn drop(&mut self) {
        if self.upcalls.get().is_some() {
            // SAFETY: fs is live; no callback may run once this returns.
            unsafe { self.lib.glfs_upcall_unregister(self.fs, gfapi_sys::GLFS_EVENT_INODE_INVALIDATE) };
        }
        // SAFETY: fs is live and finalised once, after every object and fd (they hold an Arc).
        unsafe { self.lib.glfs_fini(self.fs) };
    }
}

impl std::fmt::Debug for Volume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Volume").field("name", &self.name()).finish()
    }
}

impl Volume {
    /// Connects to `volume` through the first reachable of `servers` (port 24007, TCP), logging
    /// libgfapi's messages to `log_file`. Blocks until the volume graph is up or fails (ENOENT
    /// for an unknown volume, ENOTCONN when no server answers).
    pub fn connect(volume: &str, servers: &[String], log_file: &Path) -> io::Result<Volume> {
        let lib = library()?;
        let name = cstr(volume)?;
        // SAFETY: glfs_new copies the name; NULL means failure.
        let fs = unsafe { lib.glfs_new(name.as_ptr()) };
        if fs.is_null() {
            return Err(last_err());
        }
        // From here the Volume owns `fs`: an early return finalises it.
        let vol = Volume {
            inner: Arc::new(Connection {
                lib,
                fs,
                name: volume.to_string(),
                upcalls: OnceLock::new(),
                stamps_times: OnceLock::new(),
            }),
        };
        let tcp = cstr("tcp")?;
        for s in servers {
            let host = cstr(s)?;
            // SAFETY: fs is live; strings are copied by libgfapi.
            check(unsafe { lib.glfs_set_volfile_server(fs, tcp.as_ptr(), host.as_ptr(), 24007) })?;
        }
        let log = cstr(log_file)?;
        // SAFETY: fs is live; the path is copied. Level 5 = GF_LOG_WARNING.
        check(unsafe { lib.glfs_set_logging(fs, log.as_ptr(), 5) })?;
        // libgfapi's md-cache answers from what it saw up to a second before (a size grown
        // through a FUSE mount on another node showed the old size), and on a volume without
        // upcalls nothing would tell it otherwise: its lifetime is zero, and nasgw caches
        // attributes itself only while upcalls are proved to arrive (`coherence.rs`). READDIRP
        // stays one call per page: only the cache's lifetime is zero.
        // SAFETY: fs is live; the strings are copied.
        check(unsafe {
            lib.glfs_set_xlator_option(fs, c"*-md-cache".as_ptr(), c"md-cache-timeout".as_ptr(), c"0".as_ptr())
        })?;
        // SAFETY: fs is live and configured.
        check(unsafe { lib.glfs_init(fs) })?;
        Ok(vol)
    }

    /// Calls `sink` with the GFIDs of every cache-invalidation upcall the bricks send this
    /// connection (another client changed a file this one used; never for this connection's
    /// own changes). The bricks send them only when the volume has `features.cache-invalidation
    /// on`, and libgfapi passes them on only for files this process still holds an object of.
    /// Once per connection.
    pub fn watch_invalidations(&self, sink: Box<InvalidationSink>) -> io::Result<()> {
        if self.inner.upcalls.set(sink).is_err() {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, "upcalls are already watched"));
        }
        let data = Arc::as_ptr(&self.inner) as *mut libc::c_void;
        // SAFETY: fs is live; `data` points to the Connection, which outlives the registration
        // (unregistered in its Drop before glfs_fini).
        let rc = unsafe {
            self.lib().glfs_upcall_register(self.fs(), gfapi_sys::GLFS_EVENT_INODE_INVALIDATE, Some(upcall), data)
        };
        check(rc)
    }

    /// Whether the volume stamps times on the client (`features.ctime`, on by default: the
    /// `features/utime` translator in the graph this connection got), so that a create, mkdir,
    /// symlink or mknod gives its directory exactly the new entry's ctime as mtime and ctime.
    /// Read once per connection.
    pub fn stamps_times(&self) -> bool {
        *self.inner.stamps_times.get_or_init(|| {
            self.volfile().is_some_and(|v| v.lines().any(|l| l.split_whitespace().eq(["type", "features/utime"])))
        })
    }

    /// The volume file (graph) this connection runs, if libgfapi has one.
    fn volfile(&self) -> Option<String> {
        let mut buf = vec![0u8; 64 << 10];
        for _ in 0..4 {
            // SAFETY: fs is live; buf has buf.len() writable bytes.
            let n = unsafe { self.lib().glfs_get_volfile(self.fs(), buf.as_mut_ptr().cast(), buf.len()) };
            match n {
                0 => return None,
                n if n > 0 => {
                    buf.truncate(n as usize);
                    return Some(String::from_utf8_lossy(&buf).into_owned());
                }
                // Short by -n bytes.
                n => buf.resize(buf.len() + n.unsigned_abs(), 0),
            }
        }
        None
    }

    /// The volume's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    fn lib(&self) -> &'static Gfapi {
        self.inner.lib
    }

    fn fs(&self) -> *mut glfs_t {
        self.inner.fs
    }

    fn object(&self, ptr: *mut glfs_object_t) -> io::Result<Object> {
        if ptr.is_null() {
            Err(last_err())
        } else {
            Ok(Object { conn: self.inner.clone(), ptr })
        }
    }

    fn file(&self, fd: *mut glfs_fd_t, dir: bool) -> io::Result<File> {
        if fd.is_null() {
            Err(last_err())
        } else {
            Ok(File { conn: self.inner.clone(), fd, dir })
        }
    }

    /// The root directory and its attributes.
    pub fn root(&self) -> io::Result<(Object, libc::stat)> {
        let path = cstr("/")?;
        let mut st = MaybeUninit::<libc::stat>::zeroed();
        // SAFETY: NULL parent means "from the root"; st is written on success.
        let ptr =
            unsafe { self.lib().glfs_h_lookupat(self.fs(), std::ptr::null_mut(), path.as_ptr(), st.as_mut_ptr(), 0) };
        let obj = self.object(ptr)?;
        // SAFETY: a successful lookup filled st (zeroed before, so valid either way).
        Ok((obj, unsafe { st.assume_init() }))
    }

    /// Looks `name` up in directory `dir` (one component, symlinks not followed).
    pub fn lookup(&self, dir: &Object, name: &OsStr) -> io::Result<(Object, libc::stat)> {
        let name = cstr(name)?;
        let mut st = MaybeUninit::<libc::stat>::zeroed();
        // SAFETY: dir is a live object of this volume.
        let ptr = unsafe { self.lib().glfs_h_lookupat(self.fs(), dir.ptr, name.as_ptr(), st.as_mut_ptr(), 0) };
        let obj = self.object(ptr)?;
        // SAFETY: zeroed and filled on success.
        Ok((obj, unsafe { st.assume_init() }))
    }

    /// The object with this GFID, found without any path lookup (a handle from any node).
    pub fn object_from_gfid(&self, gfid: &Gfid) -> io::Result<(Object, libc::stat)> {
        let mut h = *gfid;
        let mut st = MaybeUninit::<libc::stat>::zeroed();
        // SAFETY: h is GFID_LEN bytes; st is written on success.
        let ptr = unsafe {
            self.lib().glfs_h_create_from_handle(self.fs(), h.as_mut_ptr(), GFID_LEN as i32, st.as_mut_ptr())
        };
        let obj = self.object(ptr)?;
        // SAFETY: zeroed and filled on success.
        Ok((obj, unsafe { st.assume_init() }))
    }

    /// Attributes of `obj`.
    pub fn stat(&self, obj: &Object) -> io::Result<libc::stat> {
        let mut st = MaybeUninit::<libc::stat>::zeroed();
        // SAFETY: live object; st written on success.
        check(unsafe { self.lib().glfs_h_stat(self.fs(), obj.ptr, st.as_mut_ptr()) })?;
        // SAFETY: as above.
        Ok(unsafe { st.assume_init() })
    }

    /// File-system totals (`df`), for NFS FSSTAT and SMB volume info.
    pub fn statfs(&self, obj: &Object) -> io::Result<libc::statvfs> {
        let mut st = MaybeUninit::<libc::statvfs>::zeroed();
        // SAFETY: live object; st written on success.
        check(unsafe { self.lib().glfs_h_statfs(self.fs(), obj.ptr, st.as_mut_ptr()) })?;
        // SAFETY: as above.
        Ok(unsafe { st.assume_init() })
    }

    /// Creates regular file `name` in `dir` (`flags` as open(2): O_EXCL for exclusive create).
    pub fn create(&self, dir: &Object, name: &OsStr, flags: i32, mode: u32) -> io::Result<(Object, libc::stat)> {
        let name = cstr(name)?;
        let mut st = MaybeUninit::<libc::stat>::zeroed();
        // SAFETY: live parent; name copied; st written on success.
        let ptr = unsafe { self.lib().glfs_h_creat(self.fs(), dir.ptr, name.as_ptr(), flags, mode, st.as_mut_ptr()) };
        let obj = self.object(ptr)?;
        // SAFETY: zeroed and filled on success.
        Ok((obj, unsafe { st.assume_init() }))
    }

    /// Creates regular file `name` in `dir` and opens it with `flags` in the same call (one
    /// request to the bricks instead of a create and an open).
    pub fn create_open(
        &self,
        dir: &Object,
        name: &OsStr,
        flags: i32,
        mode: u32,
    ) -> io::Result<(Object, libc::stat, File)> {
        let name = cstr(name)?;
        let mut st = MaybeUninit::<libc::stat>::zeroed();
        let mut fd: *mut glfs_fd_t = std::ptr::null_mut();
        // SAFETY: live parent; name copied; st and fd written on success.
        let ptr = unsafe {
            self.lib().glfs_h_creat_open(self.fs(), dir.ptr, name.as_ptr(), flags, mode, st.as_mut_ptr(), &mut fd)
        };
        let obj = self.object(ptr)?;
        let file = self.file(fd, false)?;
        // SAFETY: zeroed and filled on success.
        Ok((obj, unsafe { st.assume_init() }, file))
    }

    /// Creates directory `name` in `dir`.
    pub fn mkdir(&self, dir: &Object, name: &OsStr, mode: u32) -> io::Result<(Object, libc::stat)> {
        let name = cstr(name)?;
        let mut st = MaybeUninit::<libc::stat>::zeroed();
        // SAFETY: live parent; st written on success.
        let ptr = unsafe { self.lib().glfs_h_mkdir(self.fs(), dir.ptr, name.as_ptr(), mode, st.as_mut_ptr()) };
        let obj = self.object(ptr)?;
        // SAFETY: zeroed and filled on success.
        Ok((obj, unsafe { st.assume_init() }))
    }

    /// Creates symlink `name` in `dir` pointing at `target`.
    pub fn symlink(&self, dir: &Object, name: &OsStr, target: &OsStr) -> io::Result<(Object, libc::stat)> {
        let name = cstr(name)?;
        let target = cstr(target)?;
        let mut st = MaybeUninit::<libc::stat>::zeroed();
        // SAFETY: live parent; strings copied; st written on success.
        let ptr =
            unsafe { self.lib().glfs_h_symlink(self.fs(), dir.ptr, name.as_ptr(), target.as_ptr(), st.as_mut_ptr()) };
        let obj = self.object(ptr)?;
        // SAFETY: zeroed and filled on success.
        Ok((obj, unsafe { st.assume_init() }))
    }

    /// Creates special file `name` in `dir`: `mode` carries the `S_IFMT` type (fifo, socket,
    /// character or block device) and the permission bits, `dev` the device numbers.
    pub fn mknod(&self, dir: &Object, name: &OsStr, mode: u32, dev: libc::dev_t) -> io::Result<(Object, libc::stat)> {
        let name = cstr(name)?;
        let mut st = MaybeUninit::<libc::stat>::zeroed();
        // SAFETY: live parent; name copied; st written on success.
        let ptr = unsafe { self.lib().glfs_h_mknod(self.fs(), dir.ptr, name.as_ptr(), mode, dev, st.as_mut_ptr()) };
        let obj = self.object(ptr)?;
        // SAFETY: zeroed and filled on success.
        Ok((obj, unsafe { st.assume_init() }))
    }

    /// The target of symlink `obj`.
    pub fn readlink(&self, obj: &Object) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
        // SAFETY: live object; buf has the stated length.
        let n = unsafe { self.lib().glfs_h_readlink(self.fs(), obj.ptr, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(last_err());
        }
        buf.truncate(n as usize);
        Ok(buf)
    }

    /// Hard link `target` as `name` in `dir`.
    pub fn link(&self, target: &Object, dir: &Object, name: &OsStr) -> io::Result<()> {
        let name = cstr(name)?;
        // SAFETY: live objects; name copied.
        check(unsafe { self.lib().glfs_h_link(self.fs(), target.ptr, dir.ptr, name.as_ptr()) })
    }

    /// Removes `name` from `dir` (a file, or an empty directory).
    pub fn unlink(&self, dir: &Object, name: &OsStr) -> io::Result<()> {
        let name = cstr(name)?;
        // SAFETY: live parent; name copied.
        check(unsafe { self.lib().glfs_h_unlink(self.fs(), dir.ptr, name.as_ptr()) })
    }

    /// Renames `from_dir/from` to `to_dir/to` (replacing a compatible target, as rename(2)).
    pub fn rename(&self, from_dir: &Object, from: &OsStr, to_dir: &Object, to: &OsStr) -> io::Result<()> {
        let from = cstr(from)?;
        let to = cstr(to)?;
        // SAFETY: live objects; names copied.
        check(unsafe { self.lib().glfs_h_rename(self.fs(), from_dir.ptr, from.as_ptr(), to_dir.ptr, to.as_ptr()) })
    }

    /// Sets attributes: `valid` is a mask of `gfapi_sys::GFAPI_SET_ATTR_*` naming the fields of
    /// `st` to apply (mode, uid, gid, size, atime, mtime).
    pub fn setattr(&self, obj: &Object, st: &libc::stat, valid: u32) -> io::Result<()> {
        let mut st = *st;
        // SAFETY: live object; st is a valid stat read by libgfapi.
        check(unsafe { self.lib().glfs_h_setattrs(self.fs(), obj.ptr, &mut st, valid as i32) })
    }

    /// Extended attribute `name` of `obj` (`Ok(None)` when it has none); with a virtual name
    /// such as `glusterfs.get_real_filename:NAME` on a directory, what the bricks answer.
    pub fn get_xattr(&self, obj: &Object, name: &[u8]) -> io::Result<Option<Vec<u8>>> {
        let name = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        for _ in 0..4 {
            // SAFETY: live object; a null buffer with size 0 asks the size.
            let size =
                unsafe { self.lib().glfs_h_getxattrs(self.fs(), obj.ptr, name.as_ptr(), std::ptr::null_mut(), 0) };
            if size < 0 {
                let e = last_err();
                return if e.raw_os_error() == Some(libc::ENODATA) { Ok(None) } else { Err(e) };
            }
            let mut buf = vec![0u8; size as usize];
            // SAFETY: buf has buf.len() writable bytes.
            let got = unsafe {
                self.lib().glfs_h_getxattrs(self.fs(), obj.ptr, name.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
            };
            if got >= 0 {
                buf.truncate(got as usize);
                return Ok(Some(buf));
            }
            let e = last_err();
            match e.raw_os_error() {
                Some(libc::ERANGE) => continue,
                Some(libc::ENODATA) => return Ok(None),
                _ => return Err(e),
            }
        }
        Err(io::Error::from_raw_os_error(libc::ERANGE))
    }

    /// Names of `obj`'s extended attributes.
    pub fn list_xattrs(&self, obj: &Object) -> io::Result<Vec<Vec<u8>>> {
        for _ in 0..4 {
            // SAFETY: a null name lists; a null buffer with size 0 asks the size.
            let size =
                unsafe { self.lib().glfs_h_getxattrs(self.fs(), obj.ptr, std::ptr::null(), std::ptr::null_mut(), 0) };
            if size < 0 {
                return Err(last_err());
            }
            let mut buf = vec![0u8; size as usize];
            // SAFETY: buf has buf.len() writable bytes.
            let got = unsafe {
                self.lib().glfs_h_getxattrs(self.fs(), obj.ptr, std::ptr::null(), buf.as_mut_ptr().cast(), buf.len())
            };
            if got >= 0 {
                buf.truncate(got as usize);
                return Ok(buf.split(|&b| b == 0).filter(|n| !n.is_empty()).map(<[u8]>::to_vec).collect());
            }
            let e = last_err();
            if e.raw_os_error() != Some(libc::ERANGE) {
                return Err(e);
            }
        }
        Err(io::Error::from_raw_os_error(libc::ERANGE))
    }

    /// Sets extended attribute `name` of `obj`.
    pub fn set_xattr(&self, obj: &Object, name: &[u8], value: &[u8]) -> io::Result<()> {
        let name = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: live object; value readable for its length.
        check(unsafe {
            self.lib().glfs_h_setxattrs(self.fs(), obj.ptr, name.as_ptr(), value.as_ptr().cast(), value.len(), 0)
        })
    }

    /// Removes extended attribute `name` of `obj`.
    pub fn remove_xattr(&self, obj: &Object, name: &[u8]) -> io::Result<()> {
        let name = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: live object; name copied.
        check(unsafe { self.lib().glfs_h_removexattrs(self.fs(), obj.ptr, name.as_ptr()) })
    }

    /// Truncates (or extends) `obj` to `size` bytes.
    pub fn truncate(&self, obj: &Object, size: u64) -> io::Result<()> {
        // SAFETY: live object.
        check(unsafe { self.lib().glfs_h_truncate(self.fs(), obj.ptr, size as i64) })
    }

    /// Opens regular file `obj` (`flags` as open(2), without O_CREAT).
    pub fn open(&self, obj: &Object, flags: i32) -> io::Result<File> {
        // SAFETY: live object.
        let fd = unsafe { self.lib().glfs_h_open(self.fs(), obj.ptr, flags) };
        self.file(fd, false)
    }

    /// Opens directory `dir` for listing ([`File::next_entry`], [`File::seek_dir`]).
    pub fn open_dir(&self, dir: &Object) -> io::Result<File> {
        // SAFETY: live object.
        let fd = unsafe { self.lib().glfs_h_opendir(self.fs(), dir.ptr) };
        self.file(fd, true)
    }

    /// Reads a whole directory: every entry with its attributes, `.` and `..` left out.
    pub fn read_dir(&self, dir: &Object) -> io::Result<Vec<DirEntry>> {
        let d = self.open_dir(dir)?;
        let mut out = Vec::new();
        while let Some(e) = d.next_entry()? {
            if e.name != b"." && e.name != b".." {
                out.push(e);
            }
        }
        Ok(out)
    }
}

/// The GFID of `obj`, a live object owned by an upcall (NULL: none).
///
/// # Safety
/// `obj` is NULL or a live `glfs_object`.
unsafe fn upcall_gfid(lib: &Gfapi, obj: *mut glfs_object_t) -> Option<Gfid> {
    if obj.is_null() {
        return None;
    }
    let mut h = [0u8; GFID_LEN];
    // SAFETY: live object (the caller's promise); h has GFID_LEN bytes.
    let n = unsafe { lib.glfs_h_extract_handle(obj, h.as_mut_ptr(), GFID_LEN as i32) };
    (n >= 0).then_some(h)
}

/// libgfapi's upcall callback: hands the GFIDs to the connection's sink, frees the upcall.
unsafe extern "C" fn upcall(up: *mut gfapi_sys::glfs_upcall_t, data: *mut libc::c_void) {
    if up.is_null() || data.is_null() {
        return;
    }
    // SAFETY: data is the Connection registered in watch_invalidations, alive until it
    // unregisters.
    let conn = unsafe { &*(data as *const Connection) };
    let lib = conn.lib;
    let mut gfids = Vec::with_capacity(3);
    // SAFETY: up is the live upcall libgfapi hands over; its event and objects live until the
    // glfs_free below.
    unsafe {
        if lib.glfs_upcall_get_reason(up) == gfapi_sys::glfs_upcall_reason_GLFS_UPCALL_INODE_INVALIDATE {
            let ev = lib.glfs_upcall_get_event(up) as *mut gfapi_sys::glfs_upcall_inode_t;
            if !ev.is_null() {
                gfids.extend(upcall_gfid(lib, lib.glfs_upcall_inode_get_object(ev)));
                gfids.extend(upcall_gfid(lib, lib.glfs_upcall_inode_get_pobject(ev)));
                gfids.extend(upcall_gfid(lib, lib.glfs_upcall_inode_get_oldpobject(ev)));
            }
        }
        lib.glfs_free(up.cast());
    }
    if let Some(sink) = conn.upcalls.get() {
        // A panic must not unwind into C.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sink(&gfids)));
    }
}

/// One directory entry from [`Volume::read_dir`].
#[derive(Clone)]
pub struct DirEntry {
    /// The name, as bytes (GlusterFS names are byte strings).
    pub name: Vec<u8>,
    /// Attributes, from the same READDIRP (no extra round trip).
    pub stat: libc::stat,
    /// The entry's directory offset cookie.
    pub cookie: i64,
}

/// One directory entry from [`File::next_entry_plus`].
pub struct DirEntryPlus {
    /// The name, as bytes.
    pub name: Vec<u8>,
    /// The entry's directory offset cookie.
    pub cookie: i64,
    /// Attributes from the READDIRP, when the volume gave them.
    pub stat: Option<libc::stat>,
    /// The entry's object, when the listing linked its inode (never for `.` and `..`).
    pub object: Option<Object>,
}

/// Frees a `glfs_xreaddirp_stat` (and the object inside it) with `glfs_free`.
struct XstatGuard<'a> {
    conn: &'a Connection,
    ptr: *mut glfs_xreaddirp_stat_t,
}

impl Drop for XstatGuard<'_> {
    fn drop(&mut self) {
        if !self.ptr.is_null() {
            // SAFETY: allocated by glfs_xreaddirplus_r for this call, freed once.
            unsafe { self.conn.lib.glfs_free(self.ptr.cast()) };
        }
    }
}

/// A GFID handle on a file or directory (`glfs_object`); closed on drop.
pub struct Object {
    conn: Arc<Connection>,
    ptr: *mut glfs_object_t,
}

// SAFETY: a glfs_object is an immutable reference to an inode, usable from any thread.
unsafe impl Send for Object {}
// SAFETY: as above.
unsafe impl Sync for Object {}

impl Object {
    /// The GFID: the file's identity on every node of the cluster.
    pub fn gfid(&self) -> io::Result<Gfid> {
        let mut h = [0u8; GFID_LEN];
        // SAFETY: live object; h has GFID_LEN bytes.
        let n = unsafe { self.conn.lib.glfs_h_extract_handle(self.ptr, h.as_mut_ptr(), GFID_LEN as i32) };
        if n < 0 {
            return Err(last_err());
        }
        Ok(h)
    }
}

impl Drop for Object {
    fn drop(&mut self) {
        // SAFETY: ptr came from a glfs_h_* call and is closed exactly once.
        unsafe { self.conn.lib.glfs_h_close(self.ptr) };
    }
}

/// An open file or directory (`glfs_fd`); closed on drop.
pub struct File {
    conn: Arc<Connection>,
    fd: *mut glfs_fd_t,
    dir: bool,
}

// SAFETY: a glfs_fd may be used from any thread (one call at a time per offset is the caller's
// business, as with pread/pwrite).
unsafe impl Send for File {}
// SAFETY: pread/pwrite on one fd from several threads are safe in libgfapi.
unsafe impl Sync for File {}

impl File {
    /// Reads up to `buf.len()` bytes at `offset`; 0 at end of file.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.pread(buf.as_mut_ptr(), buf.len(), offset)
    }

    /// Like [`File::read_at`] into a buffer that need not be initialised (so nobody zeroes it
    /// first): returns how many of its first bytes were read, and are now initialised.
    pub fn read_uninit(&self, buf: &mut [MaybeUninit<u8>], offset: u64) -> io::Result<usize> {
        self.pread(buf.as_mut_ptr().cast(), buf.len(), offset)
    }

    /// `glfs_pread` into `len` bytes at `buf` (no attributes wanted).
    fn pread(&self, buf: *mut u8, len: usize, offset: u64) -> io::Result<usize> {
        // SAFETY: fd open; the callers pass a buffer valid for writes of `len` bytes (libgfapi
        // only writes into it); stats not wanted (NULL).
        let n = unsafe { self.conn.lib.glfs_pread(self.fd, buf.cast(), len, offset as i64, 0, std::ptr::null_mut()) };
        if n < 0 {
            return Err(last_err());
        }
        Ok(n as usize)
    }

    /// Writes `buf` at `offset`; returns how much was written.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
        // SAFETY: fd open; buf valid for its length.
        let n = unsafe {
            self.conn.lib.glfs_pwrite(
                self.fd,
                buf.as_ptr().cast(),
                buf.len(),
                offset as i64,
                0,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(last_err());
        }
        Ok(n as usize)
    }

    /// Copies up to `len` bytes from this file at `offset` to `dst` at `dst_offset` inside the
    /// volume (`glfs_copy_file_range`: the bricks copy, no data through this client); returns
    /// how many were copied (0 at end of file).
    pub fn copy_range_to(&self, offset: u64, dst: &File, dst_offset: u64, len: usize) -> io::Result<usize> {
        let mut off_in = offset as i64;
        let mut off_out = dst_offset as i64;
        // SAFETY: both fds open; offsets are valid pointers; stats not wanted (NULL).
        let n = unsafe {
            self.conn.lib.glfs_copy_file_range(
                self.fd,
                &mut off_in,
                dst.fd,
                &mut off_out,
                len,
                0,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(last_err());
        }
        Ok(n as usize)
    }

    /// Writes all of `buf` at `offset`.
    pub fn write_all_at(&self, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            let n = self.write_at(buf, offset)?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            buf = &buf[n..];
            offset += n as u64;
        }
        Ok(())
    }

    /// The open file's attributes (`glfs_fstat`): still answered after its last name is gone
    /// (link count 0), as long as this descriptor holds it.
    pub fn stat(&self) -> io::Result<libc::stat> {
        let mut st = MaybeUninit::<libc::stat>::zeroed();
        // SAFETY: fd open; st is a valid buffer libgfapi fills on success.
        check(unsafe { self.conn.lib.glfs_fstat(self.fd, st.as_mut_ptr()) })?;
        // SAFETY: zeroed and filled by a successful glfs_fstat.
        Ok(unsafe { st.assume_init() })
    }

    /// Sets the open file's size (`glfs_ftruncate`).
    pub fn set_len(&self, size: u64) -> io::Result<()> {
        let len = i64::try_from(size).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
        // SAFETY: fd open; stats not wanted (NULL).
        check(unsafe { self.conn.lib.glfs_ftruncate(self.fd, len, std::ptr::null_mut(), std::ptr::null_mut()) })
    }

    /// Makes written data stable on the bricks (NFS COMMIT, SMB FLUSH).
    pub fn fsync(&self) -> io::Result<()> {
        // SAFETY: fd open; stats not wanted.
        check(unsafe { self.conn.lib.glfs_fsync(self.fd, std::ptr::null_mut(), std::ptr::null_mut()) })
    }

    /// The next entry of a directory opened with [`Volume::open_dir`] (with attributes, from
    /// READDIRP); `None` at the end. `.` and `..` are included.
    pub fn next_entry(&self) -> io::Result<Option<DirEntry>> {
        let mut st = MaybeUninit::<libc::stat>::zeroed();
        let mut ent = MaybeUninit::<libc::dirent>::zeroed();
        let mut res: *mut libc::dirent = std::ptr::null_mut();
        // SAFETY: fd is an open directory; st/ent are valid buffers; res receives ent or NULL.
        let rc = unsafe { self.conn.lib.glfs_readdirplus_r(self.fd, st.as_mut_ptr(), ent.as_mut_ptr(), &mut res) };
        if rc != 0 {
            // An error number, or -1 with errno set.
            return Err(if rc > 0 { io::Error::from_raw_os_error(rc) } else { last_err() });
        }
        if res.is_null() {
            return Ok(None);
        }
        // SAFETY: res == ent, filled by libgfapi (both were zeroed, so valid either way).
        let (ent, st) = unsafe { (ent.assume_init(), st.assume_init()) };
        // SAFETY: d_name is a NUL-terminated array inside ent.
        let name = unsafe { CStr::from_ptr(ent.d_name.as_ptr()) }.to_bytes().to_vec();
        Ok(Some(DirEntry { name, stat: st, cookie: ent.d_off }))
    }

    /// The next entry with its attributes and its object handle, both from the same READDIRP
    /// (`glfs_xreaddirplus_r`: the listing links each entry's inode, so no lookup per entry is
    /// needed); `None` at the end. `.` and `..` are included, without an object. `stat` or
    /// `object` is `None` when the volume did not provide it for this entry (write-behind
    /// withholds both for a file with writes pending): the caller looks that one up.
    pub fn next_entry_plus(&self) -> io::Result<Option<DirEntryPlus>> {
        let lib = &self.conn.lib;
        let mut ent = MaybeUninit::<libc::dirent>::zeroed();
        let mut res: *mut libc::dirent = std::ptr::null_mut();
        let mut xstat: *mut glfs_xreaddirp_stat_t = std::ptr::null_mut();
        let wanted = GFAPI_XREADDIRP_STAT | GFAPI_XREADDIRP_HANDLE;
        // SAFETY: fd is an open directory; ent is a valid dirent buffer; res receives ent or
        // NULL; xstat receives an allocation this function frees below.
        let rc = unsafe { lib.glfs_xreaddirplus_r(self.fd, wanted, &mut xstat, ent.as_mut_ptr(), &mut res) };
        if rc < 0 {
            return Err(last_err());
        }
        // Freed on every path from here (libgfapi frees it itself at the end of the listing
        // and leaves the pointer NULL).
        let _free = XstatGuard { conn: &self.conn, ptr: xstat };
        if res.is_null() {
            return Ok(None);
        }
        let handled = rc as u32;
        // SAFETY: res == ent, filled by libgfapi (zeroed first, so valid either way).
        let ent = unsafe { ent.assume_init() };
        // SAFETY: d_name is a NUL-terminated array inside ent.
        let name = unsafe { CStr::from_ptr(ent.d_name.as_ptr()) }.to_bytes().to_vec();
        let mut stat = None;
        let mut object = None;
        if !xstat.is_null() {
            if handled & GFAPI_XREADDIRP_STAT != 0 {
                // SAFETY: xstat is live until the guard frees it; the stat is copied out.
                let st = unsafe { lib.glfs_xreaddirplus_get_stat(xstat) };
                if !st.is_null() {
                    // SAFETY: non-null, points to a struct stat inside xstat.
                    let st = unsafe { *st };
                    // A translator that cannot vouch for an entry's attributes (write-behind
                    // with writes pending on it) zeroes them.
                    stat = Some(st).filter(|s| s.st_ino != 0);
                }
            }
            if handled & GFAPI_XREADDIRP_HANDLE != 0 {
                // SAFETY: xstat is live; the object it holds is freed with it, so it is copied.
                let held = unsafe { lib.glfs_xreaddirplus_get_object(xstat) };
                if !held.is_null() {
                    // SAFETY: held is a live object; the copy takes its own inode reference.
                    let copy = unsafe { lib.glfs_object_copy(held) };
                    if !copy.is_null() {
                        object = Some(Object { conn: self.conn.clone(), ptr: copy });
                    }
                }
            }
        }
        Ok(Some(DirEntryPlus { name, cookie: ent.d_off, stat, object }))
    }

    /// Continues a listing after the entry whose cookie is `cookie` (GlusterFS offsets are
    /// stable cookies, valid on every node).
    pub fn seek_dir(&self, cookie: i64) {
        // SAFETY: fd is an open directory.
        unsafe { self.conn.lib.glfs_seekdir(self.fd, cookie) };
    }

    /// Tags this fd's locks with `owner` (at most 255 bytes): each client's locks are then its
    /// own on every brick, whatever node or connection they came through.
    pub fn set_lock_owner(&self, owner: &[u8]) -> io::Result<()> {
        let mut o = owner.to_vec();
        // SAFETY: fd open; o valid for its length, copied by libgfapi.
        check(unsafe { self.conn.lib.glfs_fd_set_lkowner(self.fd, o.as_mut_ptr().cast(), o.len() as i32) })
    }

    /// A POSIX byte-range lock call (`F_SETLK`, `F_SETLKW`, `F_GETLK`) on this fd, enforced by
    /// the bricks' locks translator: cluster-wide.
    pub fn posix_lock(&self, cmd: i32, lock: &mut libc::flock) -> io::Result<()> {
        // SAFETY: fd open; lock is a valid flock.
        check(unsafe { self.conn.lib.glfs_posix_lock(self.fd, cmd, lock) })
    }
}

impl File {
    /// Closes a file, with the error of its flush: the errors of writes libgfapi's
    /// write-behind acknowledged early, which the flush waits for.
    pub fn close(mut self) -> io::Result<()> {
        check(self.close_once())
    }

    /// Closes the descriptor unless already closed (then 0): a directory with closedir, which
    /// also frees its cached entries.
    fn close_once(&mut self) -> libc::c_int {
        let fd = std::mem::replace(&mut self.fd, std::ptr::null_mut());
        if fd.is_null() {
            return 0;
        }
        // SAFETY: fd was open and is closed exactly once (self.fd is null from now on).
        unsafe {
            if self.dir {
                self.conn.lib.glfs_closedir(fd)
            } else {
                self.conn.lib.glfs_close(fd)
            }
        }
    }
}

impl Drop for File {
    fn drop(&mut self) {
        self.close_once();
    }
}
