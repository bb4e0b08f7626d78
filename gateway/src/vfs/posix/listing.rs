//! Directory listings of the POSIX backend: one page of entries from a cookie, with each
//! entry's identity and fresh attributes when asked (`plus`).
//!
//! Entries come from `getdents64`, or from memory when the directory is unchanged since they
//! were read (see [`super::listings`]). Each entry of a `plus` page is stat'ed, unless the
//! file system's change events prove its remembered attributes current (see
//! [`super::watched_attrs`]): then one `statx` of the directory per page stands for the search
//! permission each entry's `statx` would have checked.

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::{Mutex, MutexGuard};

use super::fs_events::{FsEvent, FsEvents};
use super::identity::{Identity, IdentityKind};
use super::listings::{DirStamp, Listed, Seen};
use super::watched_attrs::{Claim, Epoch, Lookup, WatchedAttrs};
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

/// Remembered attributes of listed objects and the events that keep them current.
pub(super) struct ListedAttrs {
    events: FsEvents,
    attrs: Mutex<WatchedAttrs>,
}

impl ListedAttrs {
    /// At most `max` objects remembered, kept current by `events`.
    pub(super) fn new(events: FsEvents, max: usize) -> Self {
        Self { events, attrs: Mutex::new(WatchedAttrs::new(max)) }
    }

    /// How many objects are remembered or claimed.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.attrs.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// The remembered attributes, with every event queued so far applied.
    fn current(&self) -> MutexGuard<'_, WatchedAttrs> {
        let mut attrs = self.attrs.lock().unwrap_or_else(|e| e.into_inner());
        self.events.drain(|ev| match ev {
            FsEvent::Changed { handle_type, bytes } => {
                // A handle too long to be an identity names nothing remembered.
                if let Some(id) = Identity::kernel_id(handle_type, bytes) {
                    attrs.changed(&id);
                }
            }
            FsEvent::Lost => attrs.lost_events(),
        });
        attrs
    }

    /// Stores what a listing stat'ed: claimed objects, and first-seen ones under `epoch`.
    fn store(&self, claimed: Vec<(FileId, Claim, Attr)>, first_seen: Vec<(FileId, Attr)>, epoch: Epoch) {
        let mut attrs = self.attrs.lock().unwrap_or_else(|e| e.into_inner());
        for (id, claim, attr) in claimed {
            attrs.store(&id, claim, attr);
        }
        attrs.store_first_seen(epoch, first_seen);
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
        // Remembered attributes, where the caller may search the directory (what each entry's
        // `statx` checks): for each entry whose identity is known, its attributes or a claim.
        let watched = self.listed_attrs.as_ref().filter(|_| plus && sys::statx(dfd.as_fd(), c".").is_ok());
        let mut lookups = Vec::new();
        let mut epoch = None;
        if let Some(w) = watched {
            let mut attrs = w.current();
            epoch = Some(attrs.epoch());
            lookups = listed.iter().map(|l| l.seen.map(|s| attrs.lookup(&s.id))).collect();
        }
        let (mut claimed, mut first_seen) = (Vec::new(), Vec::new());
        let mut entries = Vec::with_capacity(listed.len());
        // Entries whose identity came from memory: rechecked should the directory change.
        let mut recalled_ids = Vec::new();
        for (i, l) in listed.iter_mut().enumerate() {
            let lookup = lookups.get(i).copied().flatten();
            let plus = if let (Some(Lookup::Known(attr)), Some(s)) = (lookup, l.seen) {
                recalled_ids.push(entries.len());
                Some((s.id, attr))
            } else if plus {
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
                let attr = self.attr(&stx);
                // Only objects on the marked file system: another one mounted inside the volume
                // reports its changes to no mark of ours.
                let on_volume = (stx.stx_dev_major, stx.stx_dev_minor) == self.root_dev;
                match lookup {
                    _ if !on_volume => {}
                    Some(Lookup::Claimed(c)) if l.seen.is_some_and(|s| s.id == id) => claimed.push((id, c, attr)),
                    _ if watched.is_some() => first_seen.push((id, attr)),
                    _ => {}
                }
                Some((id, attr))
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
            if let (Some(w), Some(epoch)) = (watched, epoch) {
                w.store(claimed, first_seen, epoch);
            }
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
