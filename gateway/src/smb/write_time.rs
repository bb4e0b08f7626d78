//! The delayed last-write-time update of Windows and Samba (smbd 4.17, smbtorture's
//! `smb2.timestamps.delayed-*`): a write does not move the LastWriteTime SMB clients see.
//! The first write through a handle schedules one update [`DELAY`] later; a flush, a
//! set-info of the end of file or of the basic information makes a pending update happen at
//! once; writes after the update leave the time alone until the handle closes, and the close
//! then sets it to the close's time. A time a client sets explicitly stays (no update at close).
//!
//! The volume's own mtime moves with every write (the kernel or GlusterFS sets it), so the
//! time SMB shows is kept here, per file, while handles that wrote are open on this node;
//! when the last of them closes, the shown time is written to the volume (one `setattr`), so
//! it is what every client sees afterwards. It costs a map lookup per query of a file's times
//! and one `getattr` at the first write of a handle. Node-local: NFS clients and other nodes
//! see the volume's mtime meanwhile (the newest write's time).
//!
//! [`WriteTimes`] is pure bookkeeping (times are passed in, as FILETIMEs), tested without a
//! volume; the SMB commands call it.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::locks::OpenKey;
use crate::vfs::FileId;

/// How long after a handle's first write the write time moves (as Windows and smbd: 2 s).
pub const DELAY: u64 = 2 * 10_000_000;

/// The shown write time of one file and the handles that wrote to it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    /// The LastWriteTime SMB clients see (FILETIME).
    shown: u64,
    /// When the pending update happens (FILETIME), if one is pending.
    due: Option<u64>,
    /// A client set the time explicitly: closes leave it.
    forced: bool,
    /// Handles that wrote, each with "wrote again after the update".
    holders: HashMap<OpenKey, bool>,
}

impl Entry {
    /// Carries out a pending update whose time has come.
    fn settle(&mut self, now: u64) {
        if let Some(due) = self.due {
            if due <= now {
                self.shown = due;
                self.due = None;
            }
        }
    }
}

/// The write times SMB shows for files written through this node's open handles.
#[derive(Debug, Default)]
pub struct WriteTimes {
    files: Mutex<HashMap<FileId, Entry>>,
}

impl WriteTimes {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<FileId, Entry>> {
        self.files.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether no file is tracked (a listing then skips the lookups).
    pub fn is_empty(&self) -> bool {
        self.map().is_empty()
    }

    /// Whether `file` is tracked already (a write through `handle` needs no base time then).
    pub fn tracks(&self, file: &FileId) -> bool {
        self.map().contains_key(file)
    }

    /// A write through `handle` happened at `now`; `base` is the file's write time before it
    /// (read when [`Self::tracks`] said no; ignored otherwise).
    pub fn wrote(&self, file: FileId, handle: OpenKey, base: u64, now: u64) {
        let mut m = self.map();
        let e =
            m.entry(file).or_insert_with(|| Entry { shown: base, due: None, forced: false, holders: HashMap::new() });
        e.settle(now);
        match e.holders.get_mut(&handle) {
            // Its first write: one update, DELAY later (unless one is pending already).
            None => {
                e.holders.insert(handle, false);
                if e.due.is_none() && !e.forced {
                    e.due = Some(now + DELAY);
                }
            }
            // Writes while its update is pending change nothing; after it, the close updates.
            Some(again) => {
                if e.due.is_none() {
                    *again = true;
                }
            }
        }
    }

    /// The write time to show for `file` at `now`, if it is tracked here.
    pub fn shown(&self, file: &FileId, now: u64) -> Option<u64> {
        let mut m = self.map();
        let e = m.get_mut(file)?;
        e.settle(now);
        Some(e.shown)
    }

    /// A flush or a set-info (end of file, basic information) at `now`: a pending update
    /// happens now.
    pub fn flush(&self, file: &FileId, now: u64) {
        if let Some(e) = self.map().get_mut(file) {
            e.settle(now);
            if e.due.take().is_some() {
                e.shown = now;
            }
        }
    }

    /// A client set the write time to `t` (through any handle): it stays.
    pub fn set_by_client(&self, file: &FileId, t: u64) {
        if let Some(e) = self.map().get_mut(file) {
            e.shown = t;
            e.due = None;
            e.forced = true;
        }
    }

    /// `handle` closes at `now`: if it wrote and the time was not set by a client, a pending
    /// update or a write after the update moves the time to `now`. Returns the time to store
    /// on the volume when it was the last handle that wrote (the file is not tracked after),
    /// `None` otherwise (and for a handle that never wrote: calling this twice is harmless).
    /// The last writer closing with its update still pending stores nothing: the volume's
    /// time is its last write's, milliseconds before the close (a file written and closed at
    /// once, the common copy, costs no `setattr`).
    pub fn closed(&self, file: &FileId, handle: OpenKey, now: u64) -> Option<u64> {
        let mut m = self.map();
        let e = m.get_mut(file)?;
        let again = e.holders.remove(&handle)?;
        e.settle(now);
        let pending = e.due.is_some();
        if !e.forced && (again || pending) {
            e.shown = now;
            e.due = None;
        }
        if e.holders.is_empty() {
            let e = m.remove(file)?;
            return (e.forced || !pending).then_some(e.shown);
        }
        None
    }
}

/// Puts the write time SMB shows for `file` into `a` (its attributes on the volume).
pub fn show(server: &crate::smb::SmbServer, file: FileId, a: &mut crate::vfs::Attr) {
    if let Some(t) = server.write_times.shown(&file, crate::smb::filetime_now()) {
        a.mtime = crate::smb::fs::from_filetime(t);
    }
}

/// Handle `f` closes: its write-time update (see [`WriteTimes::closed`]) and, when it was the
/// last handle that wrote, the shown time stored on the volume. Harmless when called twice.
pub async fn closed(server: &crate::smb::SmbServer, f: &crate::smb::cmd::open::FileOpen) {
    if f.state.stream.is_some() {
        return;
    }
    let Some(t) = server.write_times.closed(&f.id, f.key, crate::smb::filetime_now()) else {
        return;
    };
    let set = crate::vfs::SetAttr {
        mtime: crate::vfs::SetTime::Client(crate::smb::fs::from_filetime(t)),
        ..Default::default()
    };
    if let Err(e) = server.ns.setattr(&f.cred, f.id, set).await {
        tracing::debug!(error = %e, "SMB: cannot store the write time of a closed handle");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 10_000_000;

    fn file() -> FileId {
        FileId::new(&[1, 7]).unwrap()
    }

    fn h(seq: u64) -> OpenKey {
        OpenKey { node: 1, seq }
    }

    #[test]
    fn a_write_shows_after_two_seconds_and_a_second_write_not_until_close() {
        let w = WriteTimes::default();
        w.wrote(file(), h(1), 100 * S, 101 * S);
        assert_eq!(w.shown(&file(), 101 * S), Some(100 * S), "not at once");
        assert_eq!(w.shown(&file(), 104 * S), Some(103 * S), "two seconds after the write");
        w.wrote(file(), h(1), 0, 104 * S);
        assert_eq!(w.shown(&file(), 107 * S), Some(103 * S), "the second write moves nothing");
        assert_eq!(w.closed(&file(), h(1), 109 * S), Some(109 * S), "the close does");
        assert_eq!(w.shown(&file(), 110 * S), None);
    }

    #[test]
    fn one_write_then_close_keeps_the_updated_time() {
        let w = WriteTimes::default();
        w.wrote(file(), h(1), 100 * S, 101 * S);
        assert_eq!(w.shown(&file(), 104 * S), Some(103 * S));
        assert_eq!(w.closed(&file(), h(1), 105 * S), Some(103 * S));
    }

    #[test]
    fn flush_makes_the_pending_update_happen_and_close_keeps_it() {
        let w = WriteTimes::default();
        w.wrote(file(), h(1), 100 * S, 101 * S);
        w.flush(&file(), 101 * S + 5);
        assert_eq!(w.shown(&file(), 105 * S), Some(101 * S + 5));
        assert_eq!(w.closed(&file(), h(1), 106 * S), Some(101 * S + 5));
    }

    #[test]
    fn a_close_before_the_update_leaves_the_volumes_time() {
        let w = WriteTimes::default();
        w.wrote(file(), h(1), 100 * S, 101 * S);
        assert_eq!(w.closed(&file(), h(1), 101 * S + 9), None, "the volume's time is the last write's");
        assert!(!w.tracks(&file()));
    }

    #[test]
    fn a_time_set_by_a_client_survives_the_writers_close() {
        let w = WriteTimes::default();
        w.wrote(file(), h(1), 100 * S, 101 * S);
        w.flush(&file(), 102 * S);
        w.set_by_client(&file(), 500 * S);
        assert_eq!(w.closed(&file(), h(2), 103 * S), None, "h2 never wrote");
        assert_eq!(w.closed(&file(), h(1), 104 * S), Some(500 * S));
    }

    #[test]
    fn the_file_is_tracked_until_its_last_writer_closes() {
        let w = WriteTimes::default();
        w.wrote(file(), h(1), 100 * S, 101 * S);
        assert!(w.tracks(&file()));
        w.wrote(file(), h(2), 0, 101 * S + 1);
        assert_eq!(w.closed(&file(), h(1), 102 * S), None);
        assert_eq!(w.closed(&file(), h(1), 102 * S), None, "twice is harmless");
        assert_eq!(w.shown(&file(), 102 * S), Some(102 * S));
        assert!(w.closed(&file(), h(2), 103 * S).is_some());
        assert!(!w.tracks(&file()));
    }
}
