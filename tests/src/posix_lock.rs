//! fcntl byte-range locks for tests that lock through a mount (FUSE or GlusterFS's own).

use std::fs::File;
use std::os::fd::AsRawFd;

/// A `struct flock` of `kind` (`F_RDLCK`, `F_WRLCK`, `F_UNLCK`) over `len` bytes from `start`
/// (0 = to the end of the file).
pub fn flock(kind: i32, start: i64, len: i64) -> libc::flock {
    // SAFETY: a zeroed flock is valid.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as _;
    fl.l_whence = libc::SEEK_SET as _;
    fl.l_start = start;
    fl.l_len = len;
    fl
}

/// `fcntl(f, cmd, fl)`: Ok, or the errno it failed with.
pub fn fcntl(f: &File, cmd: i32, fl: &mut libc::flock) -> Result<(), i32> {
    // SAFETY: a valid descriptor and flock.
    match unsafe { libc::fcntl(f.as_raw_fd(), cmd, fl as *mut libc::flock) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0)),
    }
}
