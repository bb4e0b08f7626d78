//! The kernel's change events for a whole local file system (fanotify, a file-system mark
//! reporting file handles), read without blocking: what keeps [`super::watched_attrs`] true.
//!
//! Why fanotify with a file-system mark rather than inotify watches on listed directories:
//! - it sees events that reach only the changed inode, never its parent's watch: a hard link
//!   made or removed elsewhere (nlink and ctime change; `fsnotify_link_count`), a file
//!   replaced by a rename over it, and changes made through a descriptor whose dentry is
//!   disconnected (nasgw's own WRITE and SETATTR through `open_by_handle_at`);
//! - each event names its object by the same file handle `name_to_handle_at` gives, which is
//!   the identity the backend already uses: no watch per directory, no watch limit;
//! - a directory's own attributes are covered too (its entries' events name it).
//!
//! Events are queued synchronously inside the system call that makes the change, after the
//! change: every change completed before a request arrived is in the queue (or was read
//! already) when the request drains it. The mask: `FAN_MODIFY` (write, truncate, fallocate,
//! copy and clone ranges), `FAN_ATTRIB` (chmod, chown, times, xattrs and ACLs, link
//! count), `FAN_CLOSE_WRITE`, the directory-entry events (they name the directory) and
//! the self events, for directories too (`FAN_ONDIR`). Not followed:
//! - access times: `FAN_ACCESS` would fire on every read, nasgw's own included, so atime in
//!   remembered attributes can lag (as it does on `relatime` mounts and in NFS-Ganesha's
//!   60 s attribute cache);
//! - a write through a shared `mmap` changes mtime with no event (only a later close of a
//!   descriptor opened for writing is reported, `FAN_CLOSE_WRITE`);
//! - file flags set with `chattr` (`FS_IOC_SETFLAGS`): the ctime they move comes with no event
//!   (seen on Linux 6.18);
//! - space used (`st_blocks`) that a file system changes later on its own (XFS trimming
//!   speculative preallocation, Btrfs compressing at writeback).
//!
//! Needs `CAP_SYS_ADMIN` and a file system that reports file handles and a file-system id
//! (ext4, XFS, Btrfs; tmpfs since Linux 6.7); otherwise [`FsEvents::watch`] fails and the
//! backend stats every entry as before.

use std::ffi::CStr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use crate::vfs::error::{VfsError, VfsResult};

/// The events followed (see the module doc).
const MASK: u64 = libc::FAN_MODIFY
    | libc::FAN_ATTRIB
    | libc::FAN_CLOSE_WRITE
    | libc::FAN_CREATE
    | libc::FAN_DELETE
    | libc::FAN_MOVED_FROM
    | libc::FAN_MOVED_TO
    | libc::FAN_DELETE_SELF
    | libc::FAN_MOVE_SELF
    | libc::FAN_ONDIR;

/// One event as the kernel reports it.
#[derive(Debug, PartialEq, Eq)]
pub enum FsEvent<'a> {
    /// The object with this file handle (type, bytes) changed.
    Changed {
        /// `handle_type` of the object's file handle.
        handle_type: i32,
        /// The handle's bytes.
        bytes: &'a [u8],
    },
    /// Events were lost (the queue overflowed), or one came without a handle.
    Lost,
}

/// `fanotify_event_metadata`: u32 event_len, u8 vers, u8 reserved, u16 metadata_len,
/// u64 mask, i32 fd, i32 pid.
const METADATA_LEN: usize = 24;
/// Info record header (u8 type, u8 pad, u16 len) + `__kernel_fsid_t` + `file_handle`'s
/// u32 handle_bytes and i32 handle_type.
const FID_HEAD: usize = 4 + 8 + 8;

/// The events of one `read` of a fanotify descriptor in file-handle mode. Pure; a malformed
/// record ends the batch with [`FsEvent::Lost`].
pub fn parse(batch: &[u8]) -> impl Iterator<Item = FsEvent<'_>> {
    let mut rest = batch;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let ev = event(rest);
        let len = match (&ev, rest.get(..4)) {
            (Some(_), Some(l)) => u32::from_ne_bytes(l.try_into().expect("4 bytes")) as usize,
            _ => rest.len(),
        };
        rest = &rest[len.min(rest.len())..];
        Some(ev.unwrap_or(FsEvent::Lost))
    })
}

/// The first event of `buf`; `None` when it is malformed.
fn event(buf: &[u8]) -> Option<FsEvent<'_>> {
    let u16_at = |b: &[u8], i: usize| Some(u16::from_ne_bytes(b.get(i..i + 2)?.try_into().ok()?));
    let u32_at = |b: &[u8], i: usize| Some(u32::from_ne_bytes(b.get(i..i + 4)?.try_into().ok()?));
    let event_len = u32_at(buf, 0)? as usize;
    let meta_len = usize::from(u16_at(buf, 6)?);
    if event_len < METADATA_LEN || meta_len < METADATA_LEN || meta_len > event_len || buf.len() < event_len {
        return None;
    }
    if *buf.get(4)? != libc::FANOTIFY_METADATA_VERSION {
        return None;
    }
    let mask = u64::from_ne_bytes(buf.get(8..16)?.try_into().ok()?);
    if mask & libc::FAN_Q_OVERFLOW != 0 {
        return Some(FsEvent::Lost);
    }
    let mut info = &buf[meta_len..event_len];
    while info.len() >= 4 {
        let (kind, len) = (info[0], usize::from(u16_at(info, 2)?));
        let record = info.get(..len).filter(|_| len >= 4)?;
        if kind == libc::FAN_EVENT_INFO_TYPE_FID && len >= FID_HEAD {
            let handle_bytes = u32_at(record, 12)? as usize;
            let handle_type = i32::from_ne_bytes(record.get(16..20)?.try_into().ok()?);
            let bytes = record.get(FID_HEAD..FID_HEAD.checked_add(handle_bytes)?)?;
            return Some(FsEvent::Changed { handle_type, bytes });
        }
        info = &info[len..];
    }
    Some(FsEvent::Lost)
}

/// A fanotify group marking one whole file system, read without blocking, and this process's
/// mount table: a file system mounted or unmounted inside the volume changes what a name
/// denotes with no event on the marked one (`/proc/self/mountinfo` polls `POLLPRI` after a
/// change of the table, made inside the `mount` or `umount` call).
pub struct FsEvents {
    fd: OwnedFd,
    mounts: OwnedFd,
}

impl FsEvents {
    /// Follows every change on the file system holding `dir` (an open directory, not
    /// `O_PATH`).
    pub fn watch(dir: BorrowedFd<'_>) -> VfsResult<Self> {
        let flags = libc::FAN_CLASS_NOTIF | libc::FAN_CLOEXEC | libc::FAN_NONBLOCK | libc::FAN_REPORT_FID;
        // SAFETY: plain system call with flag arguments.
        let raw = unsafe { libc::fanotify_init(flags, (libc::O_RDONLY | libc::O_LARGEFILE) as libc::c_uint) };
        if raw < 0 {
            return Err(VfsError::last_os());
        }
        // SAFETY: `raw` is a new descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let no_path: Option<&CStr> = None;
        // SAFETY: valid descriptors; a null path marks `dir`'s own file system.
        let r = unsafe {
            libc::fanotify_mark(
                fd.as_raw_fd(),
                libc::FAN_MARK_ADD | libc::FAN_MARK_FILESYSTEM,
                MASK,
                dir.as_raw_fd(),
                no_path.map_or(std::ptr::null(), CStr::as_ptr),
            )
        };
        if r < 0 {
            return Err(VfsError::last_os());
        }
        let cwd = unsafe { BorrowedFd::borrow_raw(libc::AT_FDCWD) };
        let mounts = super::sys::openat(cwd, c"/proc/self/mountinfo", libc::O_RDONLY, 0)?;
        Ok(Self { fd, mounts })
    }

    /// True when the mount table changed since the last call.
    fn mounts_changed(&self) -> bool {
        let mut p = libc::pollfd { fd: self.mounts.as_raw_fd(), events: libc::POLLPRI, revents: 0 };
        // SAFETY: one valid pollfd, no waiting.
        let n = unsafe { libc::poll(&mut p, 1, 0) };
        n != 0 && (n < 0 || p.revents & (libc::POLLPRI | libc::POLLERR) != 0)
    }

    /// Reads every queued event and hands each to `apply`; returns when the queue is empty.
    /// A read error, or a change of the mount table, counts as lost events.
    pub fn drain(&self, mut apply: impl FnMut(FsEvent<'_>)) {
        if self.mounts_changed() {
            apply(FsEvent::Lost);
        }
        let mut buf = [0u8; 16 * 1024];
        loop {
            // SAFETY: `buf` is writable for its length.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n > 0 {
                parse(&buf[..n as usize]).for_each(&mut apply);
                continue;
            }
            match std::io::Error::last_os_error().raw_os_error() {
                _ if n == 0 => return,
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) => return,
                _ => {
                    apply(FsEvent::Lost);
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One event as the kernel lays it out, with a FID record for `handle` unless `None`.
    fn record(mask: u64, handle: Option<(i32, &[u8])>) -> Vec<u8> {
        let mut info = Vec::new();
        if let Some((t, h)) = handle {
            let len = (FID_HEAD + h.len()).next_multiple_of(4);
            info.extend_from_slice(&[libc::FAN_EVENT_INFO_TYPE_FID, 0]);
            info.extend_from_slice(&(len as u16).to_ne_bytes());
            info.extend_from_slice(&[7; 8]); // fsid
            info.extend_from_slice(&(h.len() as u32).to_ne_bytes());
            info.extend_from_slice(&t.to_ne_bytes());
            info.extend_from_slice(h);
            info.resize(len, 0);
        }
        let mut b = Vec::new();
        b.extend_from_slice(&((METADATA_LEN + info.len()) as u32).to_ne_bytes());
        b.extend_from_slice(&[libc::FANOTIFY_METADATA_VERSION, 0]);
        b.extend_from_slice(&(METADATA_LEN as u16).to_ne_bytes());
        b.extend_from_slice(&mask.to_ne_bytes());
        b.extend_from_slice(&(-1i32).to_ne_bytes());
        b.extend_from_slice(&42i32.to_ne_bytes());
        b.extend_from_slice(&info);
        b
    }

    #[test]
    fn events_name_their_object_by_file_handle() {
        let mut batch = record(libc::FAN_MODIFY, Some((1, &[1, 2, 3, 4, 5, 6, 7, 8])));
        batch.extend(record(libc::FAN_ATTRIB, Some((0x81, &[9; 13]))));
        batch.extend(record(libc::FAN_Q_OVERFLOW, None));
        let got: Vec<_> = parse(&batch).collect();
        assert_eq!(
            got,
            vec![
                FsEvent::Changed { handle_type: 1, bytes: &[1, 2, 3, 4, 5, 6, 7, 8] },
                FsEvent::Changed { handle_type: 0x81, bytes: &[9; 13] },
                FsEvent::Lost,
            ]
        );
    }

    #[test]
    fn malformed_batches_end_in_lost_events_and_never_panic() {
        let good = record(libc::FAN_MODIFY, Some((1, &[1; 8])));
        assert_eq!(parse(&record(libc::FAN_CREATE, None)).collect::<Vec<_>>(), vec![FsEvent::Lost]);
        for cut in 1..good.len() {
            let got: Vec<_> = parse(&good[..cut]).collect();
            assert_eq!(got, vec![FsEvent::Lost], "cut at {cut}");
        }
        let mut bad_handle = good.clone();
        bad_handle[METADATA_LEN + 12] = 200; // handle_bytes beyond the record
        assert_eq!(parse(&bad_handle).collect::<Vec<_>>(), vec![FsEvent::Lost]);
        let mut zero_info = good.clone();
        zero_info[METADATA_LEN + 2] = 0; // info record of length 0
        zero_info[METADATA_LEN + 3] = 0;
        assert_eq!(parse(&zero_info).collect::<Vec<_>>(), vec![FsEvent::Lost]);
        // Random bytes: whatever comes out, parsing ends.
        let mut x: u32 = 12345;
        for _ in 0..2000 {
            let junk: Vec<u8> = (0..64)
                .map(|_| {
                    x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    (x >> 16) as u8
                })
                .collect();
            assert!(parse(&junk).count() <= junk.len());
        }
    }
}
