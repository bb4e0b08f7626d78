//! Directory listings of the POSIX backend: one page of entries from a cookie, with each
//! entry's identity and fresh attributes when asked (`plus`).
//!
//! Entries come from `getdents64`, or from memory when the directory is unchanged since they
//! were read (see [`super::listings`]); either way each entry of a `plus` page is stat'ed.

use std::os::fd::{AsFd, BorrowedFd};

use super::identity::IdentityKind;
use super::listings::{DirStamp, Listed, Seen};
use super::{sys, PosixBackend};
use crate::vfs::cred::Credentials;
use crate::vfs::error::{VfsError, VfsResult};
use crate::vfs::types::{Attr, DirEntry, FileId, FileType, ReadDir, Timestamp};

/// Bytes of `getdents64` buffer for about `entries` entries with short names: 32 bytes per
/// record (names up to 12 bytes), at least room for the longest possible record, at most 64 KiB.
/// Every entry the kernel returns costs it work (on ext4, hashing and sorting), and the next
/// page starts over from its cookie anyway, so it is asked for little more than is wanted.
fn getdents_buffer(entries: usize) -> usize {
    entries.saturating_mul(32).clamp(1024, 64 * 1024)
}

fn stamp_of(stx: &libc::statx) -> DirStamp {
    let ts = |t: libc::statx_timestamp| Timestamp { secs: t.tv_sec, nanos: t.tv_nsec };
    DirStamp { ino: stx.stx_ino, ctime: ts(stx.stx_ctime), mtime: ts(stx.stx_mtime) }
}

fn seen_of(stx: &libc::statx, id: FileId) -> Seen {
    Seen { dev: (stx.stx_dev_major, stx.stx_dev_minor), ino: stx.stx_ino, id }
}

/// Entries read from the directory itself.
fn read_entries(dfd: BorrowedFd<'_>, max_entries: usize) -> VfsResult<(Vec<Listed>, bool)> {
    let mut buf = Vec::new();
    let mut entries = Vec::new();
    loop {
        buf.resize(getdents_buffer(max_entries.saturating_sub(entries.len()) + 2), 0);
        let n = sys::getdents(dfd, &mut buf)?;
        if n == 0 {
            return Ok((entries, true));
        }
        for e in sys::dirents(&buf[..n]).filter(|e| !e.is_dot()) {
            if entries.len() >= max_entries {
                return Ok((entries, false));
            }
            entries.push(Listed {
                name: e.name.into(),
                cookie: e.off,
                ino: e.ino,
                kind: FileType::from_dtype(e.dtype),
                seen: None,
            });
        }
    }
}

impl PosixBackend {
    /// [`crate::vfs::Backend::readdir`]: lists `dir` from `cookie` as the caller.
    pub(super) fn list(
        &self,
        cred: &Credentials,
        dir: &FileId,
        cookie: u64,
        max_entries: usize,
        plus: bool,
    ) -> VfsResult<ReadDir> {
        let d = self.dir_node(dir)?;
        let before = sys::fstatx(d.path_fd.as_fd())?;
        let stamp = stamp_of(&before);
        let memory = self.listings.as_ref();
        let recalled = memory.and_then(|m| m.lock().expect("listings lock").page(dir, &stamp, cookie, max_entries));
        let _as = self.as_caller(cred)?;
        // Opened even for a remembered page: that is where the caller's read permission on
        // the directory is checked.
        let dfd = sys::openat(d.path_fd.as_fd(), c".", libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
        let from_memory = recalled.is_some();
        let (mut listed, eof) = match recalled {
            Some(r) => (r.entries, r.eof),
            None => {
                if cookie != 0 {
                    sys::seek_dir(dfd.as_fd(), cookie).map_err(|_| VfsError::BadCookie)?;
                }
                read_entries(dfd.as_fd(), max_entries)?
            }
        };
        let dir_ino = (self.kind == IdentityKind::Inode).then_some(before.stx_ino);
        let mut entries = Vec::with_capacity(listed.len());
        // Entries whose identity came from memory: rechecked should the directory change.
        let mut recalled_ids = Vec::new();
        for l in &mut listed {
            let plus = if plus {
                let cname = &*l.name;
                let Ok(stx) = sys::statx(dfd.as_fd(), cname) else { continue };
                let id = match l.seen {
                    Some(s) if s == seen_of(&stx, s.id) => {
                        recalled_ids.push(entries.len());
                        s.id
                    }
                    _ => {
                        let id = self.identity_of(dfd.as_fd(), cname, &stx).ok();
                        l.seen = id.map(|id| seen_of(&stx, id));
                        let Some(id) = id else { continue };
                        id
                    }
                };
                if let Some(dino) = dir_ino {
                    self.hint_child(dino, stx.stx_ino, l.name.to_bytes());
                }
                Some((id, self.attr(&stx)))
            } else {
                None
            };
            entries.push(DirEntry {
                name: l.name.to_bytes().to_vec(),
                cookie: l.cookie,
                fileid: l.ino,
                kind: l.kind,
                plus,
            });
        }
        let after = sys::fstatx(d.path_fd.as_fd())?;
        if stamp_of(&after) == stamp {
            if let (Some(m), false, true) = (memory, from_memory, plus) {
                m.lock().expect("listings lock").record(*dir, stamp, sys::now(), cookie, listed, eof);
            }
        } else {
            // The directory changed while it was read: an identity from memory may belong to a
            // file that no longer has that name. Ask the kernel again, or leave the entry bare.
            for i in recalled_ids {
                let e = &mut entries[i];
                e.plus = self.fresh_plus(dfd.as_fd(), &e.name);
            }
        }
        Ok(ReadDir { entries, eof, dir_attr: Some(self.attr(&after)) })
    }

    /// Identity and attributes of `name` in `dir`, asked of the kernel now.
    fn fresh_plus(&self, dir: BorrowedFd<'_>, name: &[u8]) -> Option<(FileId, Attr)> {
        let n = sys::cstring(name).ok()?;
        let stx = sys::statx(dir, &n).ok()?;
        let id = self.identity_of(dir, &n, &stx).ok()?;
        Some((id, self.attr(&stx)))
    }
}
