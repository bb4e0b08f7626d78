//! Directory listings remembered while their directory is unchanged: names, cookies, inode
//! numbers and the entries' identities, never attributes.
//!
//! A listing with attributes (NFS READDIRPLUS, SMB query directory) costs per entry a share
//! of `getdents64`, a `statx` and, with kernel handles, a `name_to_handle_at`. Which names a
//! directory holds, in which order at which cookies, and which file each name denotes, change
//! only through operations on the directory (create, unlink, rename, link), and each of those
//! sets the directory's ctime and mtime. So a listing read while a directory had the change
//! stamp S is still its listing while it has stamp S, provided no later change can carry S:
//!
//! - a stamp is recorded only once its ctime is [`SETTLE`] older than the clock (time stamps
//!   tick coarsely, so two changes within one tick may share one: the "racy git" rule), and
//!   only when the directory had it both before and after the entries were read;
//! - the owner uses this only on local file systems, whose time stamps come from this
//!   kernel's clock (not a network file system's server, nor other nodes of a cluster);
//! - each entry is still stat'ed for every listing with attributes, and its device and inode
//!   number must be the ones recorded with its identity; unless the file system's change
//!   events prove its remembered attributes current ([`super::watched_attrs`]), which no
//!   rename, link or unlink in the directory leaves unreported either.
//!
//! Pure data: the caller does the system calls and passes the stamps and the current time.

use std::collections::HashMap;
use std::ffi::CStr;
use std::sync::Arc;

use lru::LruCache;

use crate::vfs::types::{FileId, FileType, Timestamp};

/// How old a directory's ctime must be before a listing under it is recorded.
pub const SETTLE: Timestamp = Timestamp { secs: 1, nanos: 0 };

/// What a directory looked like: any change of its entries gives it another stamp.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct DirStamp {
    /// Inode number of the directory.
    pub ino: u64,
    /// Status change time.
    pub ctime: Timestamp,
    /// Modification time.
    pub mtime: Timestamp,
}

impl DirStamp {
    /// True when no change made from `now` on can carry this stamp's ctime.
    pub fn settled(&self, now: Timestamp) -> bool {
        let nanos = self.ctime.nanos + SETTLE.nanos;
        let carry = i64::from(nanos >= 1_000_000_000);
        let until =
            Timestamp { secs: self.ctime.secs.saturating_add(SETTLE.secs + carry), nanos: nanos % 1_000_000_000 };
        now >= until
    }
}

/// Which object an entry's name denoted when its identity was taken.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Seen {
    /// Device (major, minor) of the object.
    pub dev: (u32, u32),
    /// Its inode number.
    pub ino: u64,
    /// Its identity.
    pub id: FileId,
}

/// One remembered directory entry.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Listed {
    /// The name (NUL-terminated, ready for `*at` calls; shared, so a page is copied out of
    /// memory without copying names).
    pub name: Arc<CStr>,
    /// Position after this entry (its `getdents64` offset).
    pub cookie: u64,
    /// Inode number as the directory entry gives it.
    pub ino: u64,
    /// Its type as the directory entry gives it (`None`: the file system did not say).
    pub kind: Option<FileType>,
    /// What the name denoted, when its identity could be taken.
    pub seen: Option<Seen>,
}

struct Listing {
    stamp: DirStamp,
    /// Entries from the start of the directory, in the file system's order.
    entries: Vec<Listed>,
    /// True when `entries` reach the end of the directory.
    complete: bool,
    /// Cookie -> index of the entry after it (`usize::MAX`: the cookie is not unique).
    after: HashMap<u64, usize>,
}

/// A page of a remembered listing.
#[derive(Debug, PartialEq, Eq)]
pub struct Recalled {
    /// Its entries.
    pub entries: Vec<Listed>,
    /// True when they reach the end of the directory.
    pub eof: bool,
}

/// Remembered listings of recently listed directories, bounded in entries overall.
pub struct Listings {
    dirs: LruCache<FileId, Listing>,
    entries: usize,
    max_entries: usize,
}

impl Listings {
    /// Nothing remembered yet; at most `max_entries` entries over all directories.
    pub fn new(max_entries: usize) -> Self {
        Self { dirs: LruCache::unbounded(), entries: 0, max_entries }
    }

    /// Entries remembered over all directories.
    pub fn len(&self) -> usize {
        self.entries
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Up to `max` entries of `dir` after `cookie` (0: from the start), when `dir` was listed
    /// under exactly `stamp` (its stamp now) and what is remembered covers the whole page:
    /// `max` entries, or every entry to the end of the directory. A directory remembered under
    /// another stamp is forgotten.
    pub fn page(&mut self, dir: &FileId, stamp: &DirStamp, cookie: u64, max: usize) -> Option<Recalled> {
        let l = self.dirs.get(dir)?;
        if l.stamp != *stamp {
            self.forget(dir);
            return None;
        }
        let start = match cookie {
            0 => 0,
            c => *l.after.get(&c).filter(|&&i| i != usize::MAX)?,
        };
        let end = start.saturating_add(max);
        if end > l.entries.len() && !l.complete {
            return None;
        }
        let end = end.min(l.entries.len());
        Some(Recalled { entries: l.entries[start..end].to_vec(), eof: l.complete && end == l.entries.len() })
    }

    /// Remembers a page of `dir` read from `cookie` (`eof`: it reached the end) while the
    /// directory had `stamp` before and after. Ignored unless the stamp is settled at `now` and
    /// the page continues what is remembered: from the start, or from its last cookie.
    pub fn record(&mut self, dir: FileId, stamp: DirStamp, now: Timestamp, cookie: u64, page: Vec<Listed>, eof: bool) {
        if !stamp.settled(now) {
            return;
        }
        if self.dirs.peek(&dir).is_some_and(|l| l.stamp != stamp) {
            self.forget(&dir);
        }
        if self.dirs.peek(&dir).is_none() {
            if cookie != 0 {
                return;
            }
            self.dirs.put(dir, Listing { stamp, entries: Vec::new(), complete: false, after: HashMap::new() });
        }
        let l = self.dirs.get(&dir).expect("present");
        if l.complete || l.entries.last().map_or(0, |e| e.cookie) != cookie {
            return;
        }
        let added = page.len();
        while self.entries + added > self.max_entries {
            // Make room from other directories, least recently listed first.
            match self.dirs.peek_lru() {
                Some((lru, _)) if *lru != dir => {
                    let lru = *lru;
                    self.forget(&lru);
                }
                _ => return,
            }
        }
        let l = self.dirs.get_mut(&dir).expect("present");
        for e in page {
            let next = l.entries.len() + 1;
            l.after.entry(e.cookie).and_modify(|i| *i = usize::MAX).or_insert(next);
            l.entries.push(e);
        }
        l.complete = eof;
        self.entries += added;
    }

    fn forget(&mut self, dir: &FileId) {
        if let Some(l) = self.dirs.pop(dir) {
            self.entries -= l.entries.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64, nanos: u32) -> Timestamp {
        Timestamp { secs, nanos }
    }

    fn stamp(c: i64) -> DirStamp {
        DirStamp { ino: 5, ctime: t(c, 100), mtime: t(c, 100) }
    }

    fn listed(i: u64) -> Listed {
        let id = FileId::new(&i.to_le_bytes()).unwrap();
        Listed {
            name: std::ffi::CString::new(format!("n{i}")).unwrap().into(),
            cookie: 10 * i,
            ino: i,
            kind: Some(FileType::Regular),
            seen: Some(Seen { dev: (8, 1), ino: i, id }),
        }
    }

    fn run(from: u64, to: u64) -> Vec<Listed> {
        (from..to).map(listed).collect()
    }

    const NOW: Timestamp = Timestamp { secs: 5000, nanos: 0 };

    #[test]
    fn settled_only_a_full_settle_period_after_the_ctime() {
        let s = stamp(1000);
        assert!(!s.settled(t(1000, 100)));
        assert!(!s.settled(t(1001, 99)));
        assert!(s.settled(t(1001, 100)));
        assert!(!s.settled(t(999, 0)), "a ctime in the future is never settled");
        let late = DirStamp { ino: 1, ctime: t(10, 999_999_999), mtime: t(0, 0) };
        assert!(!late.settled(t(11, 999_999_998)));
        assert!(late.settled(t(11, 999_999_999)));
    }

    #[test]
    fn pages_recorded_in_order_are_served_back_by_cookie() {
        let dir = FileId::new(b"dir").unwrap();
        let mut l = Listings::new(100);
        l.record(dir, stamp(1000), NOW, 0, run(1, 4), false);
        l.record(dir, stamp(1000), NOW, 30, run(4, 6), true);
        assert_eq!(l.len(), 5);
        assert_eq!(l.page(&dir, &stamp(1000), 0, 2), Some(Recalled { entries: run(1, 3), eof: false }));
        assert_eq!(l.page(&dir, &stamp(1000), 20, 10), Some(Recalled { entries: run(3, 6), eof: true }));
        assert_eq!(l.page(&dir, &stamp(1000), 50, 10), Some(Recalled { entries: vec![], eof: true }));
        assert_eq!(l.page(&dir, &stamp(1000), 0, 5), Some(Recalled { entries: run(1, 6), eof: true }));
        assert_eq!(l.page(&dir, &stamp(1000), 25, 1), None, "an unknown cookie");
    }

    #[test]
    fn an_incomplete_listing_serves_only_whole_pages() {
        let dir = FileId::new(b"dir").unwrap();
        let mut l = Listings::new(100);
        l.record(dir, stamp(1000), NOW, 0, run(1, 4), false);
        assert_eq!(l.page(&dir, &stamp(1000), 10, 2), Some(Recalled { entries: run(2, 4), eof: false }));
        assert_eq!(l.page(&dir, &stamp(1000), 10, 3), None);
        // A page that does not continue the listing is not recorded.
        l.record(dir, stamp(1000), NOW, 10, run(2, 9), true);
        assert_eq!(l.page(&dir, &stamp(1000), 10, 3), None);
        assert_eq!(l.len(), 3);
        // Nor a first page from the middle of a directory.
        let other = FileId::new(b"other").unwrap();
        l.record(other, stamp(1000), NOW, 30, run(4, 6), true);
        assert_eq!(l.page(&other, &stamp(1000), 30, 1), None);
    }

    #[test]
    fn any_change_of_the_directory_forgets_its_listing() {
        let dir = FileId::new(b"dir").unwrap();
        let mut l = Listings::new(100);
        l.record(dir, stamp(1000), NOW, 0, run(1, 4), true);
        let changed = DirStamp { mtime: t(1000, 101), ..stamp(1000) };
        assert_eq!(l.page(&dir, &changed, 0, 10), None);
        assert_eq!(l.page(&dir, &stamp(1000), 0, 10), None);
        assert!(l.is_empty());
        // Recording under a new stamp replaces the old listing.
        l.record(dir, stamp(1000), NOW, 0, run(1, 4), true);
        l.record(dir, stamp(2000), NOW, 0, run(7, 8), true);
        assert_eq!(l.len(), 1);
        assert_eq!(l.page(&dir, &stamp(2000), 0, 10), Some(Recalled { entries: run(7, 8), eof: true }));
    }

    #[test]
    fn nothing_is_recorded_for_a_directory_changed_just_now() {
        let dir = FileId::new(b"dir").unwrap();
        let mut l = Listings::new(100);
        l.record(dir, stamp(1000), t(1000, 500), 0, run(1, 4), true);
        assert_eq!(l.page(&dir, &stamp(1000), 0, 10), None);
        assert!(l.is_empty());
    }

    #[test]
    fn an_ambiguous_cookie_is_never_resumed_from() {
        let dir = FileId::new(b"dir").unwrap();
        let mut l = Listings::new(100);
        let mut page = run(1, 4);
        page[1].cookie = page[0].cookie;
        l.record(dir, stamp(1000), NOW, 0, page.clone(), true);
        assert_eq!(l.page(&dir, &stamp(1000), 10, 1), None);
        assert_eq!(l.page(&dir, &stamp(1000), 30, 1), Some(Recalled { entries: vec![], eof: true }));
        assert_eq!(l.page(&dir, &stamp(1000), 0, 3).unwrap().entries, page);
    }

    #[test]
    fn bounded_by_forgetting_the_least_recently_listed_directories() {
        let (d1, d2, d3) = (FileId::new(b"d1").unwrap(), FileId::new(b"d2").unwrap(), FileId::new(b"d3").unwrap());
        let mut l = Listings::new(5);
        l.record(d1, stamp(1), NOW, 0, run(1, 3), true);
        l.record(d2, stamp(1), NOW, 0, run(3, 5), true);
        assert!(l.page(&d1, &stamp(1), 0, 1).is_some());
        // d2 is now the least recently used: it makes room for d3.
        l.record(d3, stamp(1), NOW, 0, run(5, 7), false);
        assert_eq!(l.len(), 4);
        assert!(l.page(&d2, &stamp(1), 0, 1).is_none());
        assert!(l.page(&d1, &stamp(1), 0, 1).is_some());
        // A page that cannot fit even alone is not recorded.
        l.record(d3, stamp(1), NOW, 60, run(7, 20), true);
        assert!(l.len() <= 5);
        assert!(l.page(&d3, &stamp(1), 60, 1).is_none());
    }
}
