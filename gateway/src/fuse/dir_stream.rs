//! An open directory of the mount: entries read from the namespace in large batches, handed
//! to the kernel a page at a time.
//!
//! The kernel asks for a listing one page (4 KiB, ~100 short names) per READDIR, each from
//! the position after the last entry it got. Asking the namespace for each page separately
//! opens, seeks and reads the backing directory again every ~100 entries (on GlusterFS-FUSE
//! an OPENDIR and a READDIR to the bricks each time). Here one namespace call fills a batch of
//! [`BATCH`] entries, without attributes (the kernel only needs each entry's type, which the
//! directory entry itself gives), and later pages come from it.
//!
//! What a stream serves is what the directory held when its batch was read: POSIX lets a
//! directory stream omit or include entries added or removed after `opendir` (or the last
//! `rewinddir`); a READDIR from position 0 (`rewinddir`) always reads the directory again.
//!
//! Pure data: the caller reads the namespace.

use fuser::FileType;

/// Entries one namespace call reads for an open directory.
pub const BATCH: usize = 16384;

/// One directory entry as the kernel gets it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The name.
    pub name: Vec<u8>,
    /// Position after this entry.
    pub cookie: u64,
    /// Its inode number.
    pub ino: u64,
    /// Its type.
    pub kind: FileType,
}

/// The entries of one open directory read so far.
#[derive(Debug, Default)]
pub struct DirStream {
    /// The position the batch starts after (0: the start of the directory).
    from: u64,
    entries: Vec<Entry>,
    /// The batch reaches the end of the directory.
    eof: bool,
    /// Entries of the batch handed to the kernel so far (the next page starts here when
    /// it asks from the last one's cookie, even if a cookie repeats).
    served: usize,
    /// A batch was read.
    filled: bool,
}

/// Where a page from a position starts.
#[derive(Debug, PartialEq, Eq)]
pub enum Start {
    /// At this index of the batch (`len` with `eof`: the end of the directory).
    At(usize),
    /// The batch does not cover the position: read a new one from it.
    Read,
}

impl DirStream {
    /// Where a page from `offset` starts.
    pub fn start(&self, offset: u64) -> Start {
        if offset == 0 || !self.filled {
            // Position 0 is `rewinddir` (or the first page): read the directory again.
            return Start::Read;
        }
        let at = if offset == self.from {
            Some(0)
        } else if self.served > 0 && self.entries.get(self.served - 1).is_some_and(|e| e.cookie == offset) {
            Some(self.served)
        } else {
            self.entries.iter().position(|e| e.cookie == offset).map(|i| i + 1)
        };
        match at {
            Some(i) if i < self.entries.len() || self.eof => Start::At(i),
            _ => Start::Read,
        }
    }

    /// Keeps a batch read from `from`.
    pub fn fill(&mut self, from: u64, entries: Vec<Entry>, eof: bool) {
        *self = DirStream { from, entries, eof, served: 0, filled: true };
    }

    /// The batch's entries from index `i`.
    pub fn entries_from(&self, i: usize) -> &[Entry] {
        self.entries.get(i..).unwrap_or(&[])
    }

    /// Notes that the kernel got the batch's entries up to (not including) index `end`.
    pub fn served_to(&mut self, end: usize) {
        self.served = end.min(self.entries.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(cookies: &[u64]) -> Vec<Entry> {
        cookies
            .iter()
            .map(|&c| Entry { name: format!("n{c}").into_bytes(), cookie: c, ino: c, kind: FileType::RegularFile })
            .collect()
    }

    #[test]
    fn pages_come_from_the_batch_until_it_runs_out() {
        let mut s = DirStream::default();
        assert_eq!(s.start(0), Start::Read, "nothing read yet");
        s.fill(0, entries(&[10, 20, 30, 40]), false);
        // The kernel took two entries, then asks from the second's cookie.
        s.served_to(2);
        assert_eq!(s.start(20), Start::At(2));
        assert_eq!(s.entries_from(2).len(), 2);
        s.served_to(4);
        // The batch ends before the directory does: read on from its last cookie.
        assert_eq!(s.start(40), Start::Read);
        s.fill(40, entries(&[50, 60]), true);
        assert_eq!(s.start(40), Start::At(0));
        s.served_to(2);
        // The end of the directory: an empty page.
        assert_eq!(s.start(60), Start::At(2));
        assert!(s.entries_from(2).is_empty());
    }

    #[test]
    fn rewind_and_unknown_positions_read_again() {
        let mut s = DirStream::default();
        s.fill(0, entries(&[10, 20]), true);
        assert_eq!(s.start(0), Start::Read, "rewinddir sees the directory as it is now");
        assert_eq!(s.start(999), Start::Read, "a position (seekdir) the batch does not hold");
        assert_eq!(s.start(10), Start::At(1), "a position inside the batch");
    }

    #[test]
    fn a_repeated_cookie_continues_after_the_entries_served() {
        let mut s = DirStream::default();
        // Hash-ordered directories may give two entries one cookie.
        s.fill(0, entries(&[10, 20, 20, 30]), true);
        s.served_to(3);
        assert_eq!(s.start(20), Start::At(3), "not back at the first entry with cookie 20");
    }
}
