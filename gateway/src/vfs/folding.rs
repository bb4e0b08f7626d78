//! Case-insensitive names, as Windows clients expect them: a name is found in any case and keeps
//! the case it was created with. The volume itself stays case-sensitive (NFS and local programs
//! see names as they are), so a lookup that misses exactly asks which entry of the directory
//! folds to the same form.
//!
//! Folding is Windows' (and Samba's) simple upper-case mapping, one character to one character:
//! `ß` stays `ß`, `ﬀ` stays `ﬀ`; names that are not UTF-8 never match another name.
//!
//! Finding the entry costs a listing of the directory. [`FoldedIndexes`] remembers, per
//! directory, its names by folded form under the directory's change stamp, by the rule the
//! remembered listings follow ([`crate::vfs::posix::listings`]): only on a local file system
//! (its time stamps come from this kernel's clock), only for a stamp old enough that no later
//! change can carry it, and only when the directory had that stamp before and after it was
//! read. A directory that changed is listed again. Pure data: the namespace does the calls.

use std::collections::HashMap;

use lru::LruCache;

use super::posix::listings::DirStamp;
use super::types::{FileId, Timestamp};

/// Windows' folded (upper-case) form of `name`: each character mapped to its upper case when
/// that is a single character.
pub fn fold(name: &str) -> String {
    name.chars().map(fold_char).collect()
}

/// True when `name` folds to `folded` (a [`fold`]ed name), without building its folded form:
/// what a search that will not be remembered needs for each entry. Pure.
pub fn folds_to(name: &[u8], folded: &str) -> bool {
    match std::str::from_utf8(name) {
        Ok(s) => s.chars().map(fold_char).eq(folded.chars()),
        Err(_) => false,
    }
}

/// One character's folded form (see [`fold`]).
fn fold_char(c: char) -> char {
    let mut up = c.to_uppercase();
    match (up.next(), up.next()) {
        (Some(u), None) => u,
        _ => c,
    }
}

/// A directory's names by folded form.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FoldedNames {
    /// Folded form -> the first name (in listing order) that folds to it.
    by_folded: HashMap<String, Vec<u8>>,
    /// Total names read (for the memory bound).
    names: usize,
}

impl FoldedNames {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one directory entry's name (non-UTF-8 names are skipped: they never match).
    pub fn add(&mut self, name: &[u8]) {
        self.names += 1;
        if let Ok(s) = std::str::from_utf8(name) {
            self.by_folded.entry(fold(s)).or_insert_with(|| name.to_vec());
        }
    }

    /// The entry that folds like `name`, if any.
    pub fn find(&self, name: &str) -> Option<&[u8]> {
        self.by_folded.get(&fold(name)).map(Vec::as_slice)
    }

    /// How many names were added.
    pub fn len(&self) -> usize {
        self.names
    }

    /// True when no name was added.
    pub fn is_empty(&self) -> bool {
        self.names == 0
    }
}

/// Most names remembered over all directories (about 100 bytes each).
pub const REMEMBERED_NAMES: usize = 262_144;

/// Folded names of recently searched directories, each valid while its directory keeps the
/// stamp it was read under.
pub struct FoldedIndexes {
    dirs: LruCache<FileId, (DirStamp, std::sync::Arc<FoldedNames>)>,
    names: usize,
    limit: usize,
}

impl Default for FoldedIndexes {
    fn default() -> Self {
        Self::with_limit(REMEMBERED_NAMES)
    }
}

impl FoldedIndexes {
    /// Remembers at most `limit` names in total.
    pub fn with_limit(limit: usize) -> Self {
        Self { dirs: LruCache::unbounded(), names: 0, limit }
    }

    /// The names of `dir` if they were read under `stamp` (the directory's stamp now).
    pub fn get(&mut self, dir: &FileId, stamp: DirStamp) -> Option<std::sync::Arc<FoldedNames>> {
        match self.dirs.get(dir) {
            Some((s, names)) if *s == stamp => Some(names.clone()),
            Some(_) => {
                self.forget(dir);
                None
            }
            None => None,
        }
    }

    /// Records `names`, read between the stamps `before` and `after` of `dir`, if that may be
    /// trusted later: the directory did not change meanwhile and its stamp is settled at `now`.
    /// Returns whether it was recorded.
    pub fn record(
        &mut self,
        dir: FileId,
        before: DirStamp,
        after: DirStamp,
        now: Timestamp,
        names: std::sync::Arc<FoldedNames>,
    ) -> bool {
        self.forget(&dir);
        if before != after || !after.settled(now) || names.len() > self.limit {
            return false;
        }
        self.names += names.len();
        self.dirs.put(dir, (after, names));
        while self.names > self.limit {
            match self.dirs.pop_lru() {
                Some((_, (_, n))) => self.names -= n.len(),
                None => break,
            }
        }
        true
    }

    /// Drops what is remembered of `dir`.
    pub fn forget(&mut self, dir: &FileId) {
        if let Some((_, n)) = self.dirs.pop(dir) {
            self.names -= n.len();
        }
    }

    /// How many directories are remembered.
    pub fn len(&self) -> usize {
        self.dirs.len()
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.dirs.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn ts(secs: i64) -> Timestamp {
        Timestamp { secs, nanos: 0 }
    }

    fn stamp(secs: i64) -> DirStamp {
        DirStamp { ino: 7, ctime: ts(secs), mtime: ts(secs) }
    }

    #[test]
    fn folds_to_agrees_with_fold() {
        let names: [&[u8]; 8] =
            [b"readme.TXT", b"README.txt", b"Stra\xc3\x9fe", b"STRASSE", b"a", b"", b"\xff\xfe", b"\xef\xac\x80x"];
        for a in names {
            for b in names {
                let Ok(b) = std::str::from_utf8(b) else { continue };
                let want = std::str::from_utf8(a).is_ok_and(|a| fold(a) == fold(b));
                assert_eq!(folds_to(a, &fold(b)), want, "{a:?} vs {b:?}");
            }
        }
    }

    #[test]
    fn folding_is_one_character_to_one() {
        assert_eq!(fold("Report.TXT"), fold("report.txt"));
        assert_eq!(fold("Ärger"), fold("äRGER"));
        assert_eq!(fold("straße"), "STRAßE", "ß has no one-character upper case");
        assert_ne!(fold("straße"), fold("STRASSE"));
        assert_eq!(fold("ǆ"), "Ǆ");
    }

    #[test]
    fn names_keep_their_case_and_the_first_wins() {
        let mut n = FoldedNames::new();
        n.add(b"Report.TXT");
        n.add(b"report.txt");
        n.add(&[0xff, b'a']);
        assert_eq!(n.find("REPORT.txt"), Some(&b"Report.TXT"[..]));
        assert_eq!(n.find("other"), None);
        assert_eq!(n.len(), 3);
    }

    #[test]
    fn only_settled_unchanged_stamps_are_remembered() {
        let dir = FileId::new(b"d").unwrap();
        let names = Arc::new(FoldedNames::new());
        let mut idx = FoldedIndexes::default();
        assert!(!idx.record(dir, stamp(10), stamp(11), ts(20), names.clone()), "changed while read");
        assert!(!idx.record(dir, stamp(10), stamp(10), ts(10), names.clone()), "not settled");
        assert!(idx.record(dir, stamp(10), stamp(10), ts(12), names.clone()));
        assert!(idx.get(&dir, stamp(10)).is_some());
        assert!(idx.get(&dir, stamp(13)).is_none(), "the directory changed");
        assert!(idx.get(&dir, stamp(10)).is_none(), "and was forgotten");
    }

    #[test]
    fn memory_is_bounded() {
        let mut idx = FoldedIndexes::with_limit(5);
        let mut three = FoldedNames::new();
        for n in ["a", "b", "c"] {
            three.add(n.as_bytes());
        }
        let three = Arc::new(three);
        for i in 0..4u8 {
            assert!(idx.record(FileId::new(&[i]).unwrap(), stamp(1), stamp(1), ts(5), three.clone()));
        }
        assert_eq!(idx.len(), 1, "older directories forgotten first");
        assert!(idx.get(&FileId::new(&[3]).unwrap(), stamp(1)).is_some());
        let mut big = FoldedNames::new();
        for i in 0..6 {
            big.add(format!("n{i}").as_bytes());
        }
        assert!(!idx.record(FileId::new(b"x").unwrap(), stamp(1), stamp(1), ts(5), Arc::new(big)));
    }
}
