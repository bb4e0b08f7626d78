//! Case-insensitive names, as Windows clients expect them: a name is found in any case and keeps
//! the case it was created with. The volume itself stays case-sensitive (NFS and local programs
//! see names as they are), so a lookup that misses exactly asks which entry of the directory
//! folds to the same form.
//!
//! Folding is Windows' (and Samba's) simple upper-case mapping, one character to one character:
//! `ß` stays `ß`, `ﬀ` stays `ﬀ`; names that are not UTF-8 never match another name.
//!
//! Finding the entry costs a listing of the directory. On a local volume [`FoldedIndexes`]
//! keeps, per directory, its names by folded form, current without listing again, so a folder
//! being filled (every CREATE of a new name asks) costs one listing, not one per file.
//!
//! **Why not the directory's change stamp.** A stamp (ctime, mtime) vouches for a listing only
//! once its time-stamp tick is over ([`crate::vfs::posix::listings`]), which a folder being
//! filled never is. Updating the names in place for nasgw's own create does not fix that:
//! another program's change made between the stat before and the stat after that create, or
//! later within the same tick, leaves the stamp exactly as nasgw saw it after its own change,
//! so the stamps can never tell that the names miss one.
//!
//! **The rule: the kernel tells.** On a local file system every change of a directory's
//! entries, by any process through any mount (nasgw itself, another namespace, a local
//! program), queues an inotify event before the system call that made it returns
//! ([`crate::vfs::local_folded`] does the calls). For a directory:
//!
//! 1. its watch is added before it is listed;
//! 2. every event of the watch since then is applied in order to what was listed: a name an
//!    event mentions is then present (created, moved in) or absent (deleted), whatever the
//!    listing said; a name no event mentions did not change while the directory was listed, so
//!    the listing has it right;
//! 3. a name moved out forgets the directory instead: an exchange (`RENAME_EXCHANGE`) reports
//!    its second name as moved out after moving it in, though both names stay, so "moved out"
//!    does not say the name is gone;
//! 4. before each answer every queued event is applied, so a change whose system call returned
//!    before the question was asked is in the answer (a change still under way may or may not
//!    be, as with any listing);
//! 5. a queue that overflowed forgets every directory, a watch that ended (the directory was
//!    removed, its file system unmounted) its own; they are listed again when next asked, and
//!    a listing begun before they were forgotten answers only its own search (each following
//!    has a generation), since changes made while nothing followed raised no event.
//!
//! nasgw's own creates, renames and removes need no special case: they come back as events like
//! anyone's. Never on a network file system (a change through another client raises no event
//! here); GlusterFS answers by itself ([`crate::vfs::backend::Backend::find_name_nocase`]).
//! Pure data: the caller does the calls and hands over the events.

use std::collections::HashMap;
use std::hash::Hash;

use lru::LruCache;

use super::types::FileId;

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
    /// Folded form -> the names that fold to it, in the order they were added (listing order,
    /// then creation order).
    by_folded: HashMap<String, Vec<Vec<u8>>>,
    /// Names held (for the memory bound).
    names: usize,
}

impl FoldedNames {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one directory entry's name; a name already there is not added twice, and names
    /// that are not UTF-8 are skipped (they never match).
    pub fn add(&mut self, name: &[u8]) {
        let Ok(s) = std::str::from_utf8(name) else { return };
        let same = self.by_folded.entry(fold(s)).or_default();
        if !same.iter().any(|n| n == name) {
            same.push(name.to_vec());
            self.names += 1;
        }
    }

    /// Removes one name (nothing when it is not there).
    pub fn remove(&mut self, name: &[u8]) {
        let Ok(s) = std::str::from_utf8(name) else { return };
        let key = fold(s);
        let Some(same) = self.by_folded.get_mut(&key) else { return };
        if let Some(i) = same.iter().position(|n| n == name) {
            same.remove(i);
            self.names -= 1;
            if same.is_empty() {
                self.by_folded.remove(&key);
            }
        }
    }

    /// The entry that folds like `name`, if any (the first added when several do).
    pub fn find(&self, name: &str) -> Option<&[u8]> {
        self.by_folded.get(&fold(name)).and_then(|v| v.first()).map(Vec::as_slice)
    }

    /// How many names are held.
    pub fn len(&self) -> usize {
        self.names
    }

    /// True when no name is held.
    pub fn is_empty(&self) -> bool {
        self.names == 0
    }
}

/// Most names remembered over all directories (about 100 bytes each).
pub const REMEMBERED_NAMES: usize = 262_144;

/// Most directories followed at once (each holds an inotify watch, a little kernel memory).
pub const FOLLOWED_DIRS: usize = 4096;

/// What the kernel said about a followed directory (`W`: its watch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameEvent<W> {
    /// A name appeared in the directory (created, linked, moved in).
    Added(W, Vec<u8>),
    /// A name was removed from the directory (unlinked).
    Removed(W, Vec<u8>),
    /// A name was moved out of the directory: it may still be there (the second name of an
    /// exchange is reported moved out too).
    MovedOut(W),
    /// The watch ended: the directory was removed or its file system unmounted.
    Ended(W),
    /// Events were lost: nothing followed can be trusted.
    Overflow,
}

/// A followed directory's names, or the changes seen since its watch began while it is being
/// listed.
#[derive(Debug)]
enum Known {
    /// Listed: its names now.
    Names(FoldedNames),
    /// Being listed: (appeared, name) in the order the events came.
    Listing(Vec<(bool, Vec<u8>)>),
}

#[derive(Debug)]
struct Followed<W> {
    watch: W,
    /// Which following of the directory this is (a directory forgotten and followed again
    /// gets a new one, so a listing begun under the old watch is not taken for the new).
    generation: u64,
    known: Known,
}

impl<W> Followed<W> {
    /// Names (or changes) held, for the memory bound.
    fn size(&self) -> usize {
        match &self.known {
            Known::Names(n) => n.len(),
            Known::Listing(c) => c.len(),
        }
    }
}

/// What [`FoldedIndexes::find`] knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The directory's names are known: the entry that folds like the name, if any.
    Known(Option<Vec<u8>>),
    /// Followed (this generation), but not listed yet (or by another search right now): list
    /// it, then [`FoldedIndexes::listed`].
    Listing(u64),
    /// Not followed: add a watch, [`FoldedIndexes::follow`], list, [`FoldedIndexes::listed`].
    Unfollowed,
}

/// The followed directories' names by folded form, kept current by the kernel's events (see
/// the module doc for the rule). `W` is a watch (an inotify watch descriptor).
pub struct FoldedIndexes<W> {
    dirs: LruCache<FileId, Followed<W>>,
    by_watch: HashMap<W, FileId>,
    /// Names and pending changes held over all directories.
    held: usize,
    limit: usize,
    max_dirs: usize,
    generations: u64,
}

impl<W: Clone + Eq + Hash> Default for FoldedIndexes<W> {
    fn default() -> Self {
        Self::with_limits(REMEMBERED_NAMES, FOLLOWED_DIRS)
    }
}

impl<W: Clone + Eq + Hash> FoldedIndexes<W> {
    /// Holds at most `names` names (and pending changes) and `dirs` directories in total.
    pub fn with_limits(names: usize, dirs: usize) -> Self {
        Self {
            dirs: LruCache::unbounded(),
            by_watch: HashMap::new(),
            held: 0,
            limit: names,
            max_dirs: dirs.max(1),
            generations: 0,
        }
    }

    /// What is known of the entry of `dir` that folds like `name`. Apply the queued events
    /// first ([`FoldedIndexes::apply`]).
    pub fn find(&mut self, dir: &FileId, name: &str) -> Lookup {
        match self.dirs.get(dir) {
            Some(Followed { known: Known::Names(n), .. }) => Lookup::Known(n.find(name).map(<[u8]>::to_vec)),
            Some(f) => Lookup::Listing(f.generation),
            None => Lookup::Unfollowed,
        }
    }

    /// The generation of `dir`'s following, when it is followed (listed or being listed).
    pub fn follows(&self, dir: &FileId) -> Option<u64> {
        self.dirs.peek(dir).map(|f| f.generation)
    }

    /// True when `watch` already follows a directory (a second directory id of the same
    /// directory gets the same watch from the kernel: it is not followed twice).
    pub fn is_watching(&self, watch: &W) -> bool {
        self.by_watch.contains_key(watch)
    }

    /// `watch` was just added for `dir`, which is not followed and is about to be listed:
    /// events of `watch` are kept from now on. Returns the generation of this following (for
    /// [`FoldedIndexes::listed`]) and the watches of directories forgotten to make room (the
    /// caller removes them).
    pub fn follow(&mut self, dir: FileId, watch: W) -> (u64, Vec<W>) {
        let mut gone = self.forget(&dir).into_iter().collect::<Vec<_>>();
        while self.dirs.len() >= self.max_dirs {
            match self.pop_lru() {
                Some(w) => gone.push(w),
                None => break,
            }
        }
        self.generations += 1;
        let generation = self.generations;
        self.by_watch.insert(watch.clone(), dir);
        self.dirs.put(dir, Followed { watch, generation, known: Known::Listing(Vec::new()) });
        (generation, gone)
    }

    /// `listed`: the names of `dir` read after its following `generation` began, and before
    /// the events applied last. Applies the changes seen meanwhile and keeps the result.
    /// Returns the watches of directories forgotten to bound memory (the caller removes them);
    /// when `dir` is no longer followed under `generation` (forgotten meanwhile, perhaps
    /// followed again) or was listed by another search first, nothing changes.
    pub fn listed(&mut self, dir: &FileId, generation: u64, mut listed: FoldedNames) -> Vec<W> {
        let Some(f) = self.dirs.peek_mut(dir).filter(|f| f.generation == generation) else { return Vec::new() };
        let Known::Listing(changes) = &mut f.known else { return Vec::new() };
        for (appeared, name) in changes.drain(..) {
            if appeared {
                listed.add(&name);
            } else {
                listed.remove(&name);
            }
        }
        let held = listed.len();
        f.known = Known::Names(listed);
        self.held += held;
        self.bound()
    }

    /// Applies the kernel's events, in the order they came. Returns the watches of
    /// directories forgotten (overflow, memory bound) that the caller removes.
    pub fn apply(&mut self, events: impl IntoIterator<Item = NameEvent<W>>) -> Vec<W> {
        let mut gone = Vec::new();
        for e in events {
            let (watch, appeared, name) = match e {
                NameEvent::Added(w, n) => (w, true, n),
                NameEvent::Removed(w, n) => (w, false, n),
                NameEvent::MovedOut(w) => {
                    if let Some(dir) = self.by_watch.get(&w).copied() {
                        gone.extend(self.forget(&dir));
                    }
                    continue;
                }
                NameEvent::Ended(w) => {
                    if let Some(dir) = self.by_watch.get(&w).copied() {
                        // The kernel dropped the watch already.
                        self.forget(&dir);
                    }
                    continue;
                }
                NameEvent::Overflow => {
                    while let Some(w) = self.pop_lru() {
                        gone.push(w);
                    }
                    continue;
                }
            };
            let Some(dir) = self.by_watch.get(&watch) else { continue };
            let Some(f) = self.dirs.peek_mut(dir) else { continue };
            let before = f.size();
            match &mut f.known {
                Known::Names(n) if appeared => n.add(&name),
                Known::Names(n) => n.remove(&name),
                Known::Listing(c) => c.push((appeared, name)),
            }
            self.held = self.held + f.size() - before;
        }
        gone.extend(self.bound());
        gone
    }

    /// Stops following `dir`; returns its watch (for the caller to remove).
    pub fn forget(&mut self, dir: &FileId) -> Option<W> {
        let f = self.dirs.pop(dir)?;
        self.held -= f.size();
        self.by_watch.remove(&f.watch);
        Some(f.watch)
    }

    /// Directories followed.
    pub fn len(&self) -> usize {
        self.dirs.len()
    }

    /// True when no directory is followed.
    pub fn is_empty(&self) -> bool {
        self.dirs.is_empty()
    }

    fn pop_lru(&mut self) -> Option<W> {
        let dir = *self.dirs.peek_lru()?.0;
        self.forget(&dir)
    }

    /// Forgets directories, least recently asked first, until the names held fit the limit.
    fn bound(&mut self) -> Vec<W> {
        let mut gone = Vec::new();
        while self.held > self.limit {
            match self.pop_lru() {
                Some(w) => gone.push(w),
                None => break,
            }
        }
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        n.add(b"report.txt");
        n.add(&[0xff, b'a']);
        assert_eq!(n.find("REPORT.txt"), Some(&b"Report.TXT"[..]));
        assert_eq!(n.find("other"), None);
        assert_eq!(n.len(), 2, "a name is held once, a non-UTF-8 one never");
        n.remove(b"Report.TXT");
        assert_eq!(n.find("REPORT.txt"), Some(&b"report.txt"[..]), "the other case is still there");
        n.remove(b"report.txt");
        n.remove(b"report.txt");
        assert_eq!(n.find("REPORT.txt"), None);
        assert!(n.is_empty());
    }

    fn dir(n: u8) -> FileId {
        FileId::new(&[n]).unwrap()
    }

    fn names(list: &[&str]) -> FoldedNames {
        let mut n = FoldedNames::new();
        for s in list {
            n.add(s.as_bytes());
        }
        n
    }

    fn added(w: u32, n: &str) -> NameEvent<u32> {
        NameEvent::Added(w, n.as_bytes().to_vec())
    }

    fn removed(w: u32, n: &str) -> NameEvent<u32> {
        NameEvent::Removed(w, n.as_bytes().to_vec())
    }

    fn known(n: &str) -> Lookup {
        Lookup::Known(Some(n.as_bytes().to_vec()))
    }

    #[test]
    fn a_followed_directory_is_answered_from_its_names_and_its_events() {
        let mut idx = FoldedIndexes::default();
        assert_eq!(idx.find(&dir(1), "a"), Lookup::Unfollowed);
        let (g, gone) = idx.follow(dir(1), 7);
        assert!(gone.is_empty());
        assert_eq!(idx.find(&dir(1), "a"), Lookup::Listing(g), "not listed yet: no answer");
        idx.listed(&dir(1), g, names(&["Report.TXT"]));
        assert_eq!(idx.find(&dir(1), "report.txt"), known("Report.TXT"));
        // A folder being filled: each create comes back as an event, no listing.
        for i in 0..1000 {
            idx.apply([added(7, &format!("File{i}"))]);
            assert_eq!(idx.find(&dir(1), &format!("FILE{i}")), known(&format!("File{i}")));
        }
        assert_eq!(idx.find(&dir(1), "file1000"), Lookup::Known(None));
        idx.apply([removed(7, "File3"), removed(7, "File4"), added(7, "file4")]);
        assert_eq!(idx.find(&dir(1), "FILE3"), Lookup::Known(None));
        assert_eq!(idx.find(&dir(1), "FILE4"), known("file4"));
        idx.apply([added(8, "Stray")]);
        assert_eq!(idx.find(&dir(1), "stray"), Lookup::Known(None), "another watch's event");
    }

    /// The race the stamps cannot see: a change by someone else right after one of ours
    /// (same time-stamp tick) is an event like ours, so it is never hidden.
    #[test]
    fn a_change_by_someone_else_right_after_ours_is_seen() {
        let mut idx = FoldedIndexes::default();
        let (g, _) = idx.follow(dir(1), 7);
        idx.listed(&dir(1), g, names(&[]));
        idx.apply([added(7, "ours.txt"), added(7, "Theirs.txt")]);
        assert_eq!(idx.find(&dir(1), "THEIRS.TXT"), known("Theirs.txt"));
        idx.apply([removed(7, "ours.txt"), added(7, "OURS.TXT")]);
        assert_eq!(idx.find(&dir(1), "ours.txt"), known("OURS.TXT"), "removed and made again in another case");
    }

    /// Changes while the directory is being listed: the listing may or may not show them; the
    /// events, applied after it in order, decide.
    #[test]
    fn changes_during_the_listing_win_over_what_it_read() {
        // Every combination of (the listing saw the name, what happened to it meanwhile).
        let cases: [(bool, &[bool], bool); 8] = [
            (false, &[], false),
            (true, &[], true),
            (false, &[true], true),
            (true, &[true], true),
            (true, &[false], false),
            (false, &[false], false),
            (true, &[true, false], false),
            (false, &[false, true], true),
        ];
        for (seen, events, want) in cases {
            let mut idx = FoldedIndexes::default();
            let (g, _) = idx.follow(dir(1), 7);
            idx.apply(events.iter().map(|&a| if a { added(7, "X") } else { removed(7, "X") }));
            idx.listed(&dir(1), g, names(if seen { &["X", "y"] } else { &["y"] }));
            let got = idx.find(&dir(1), "x");
            assert_eq!(got, if want { known("X") } else { Lookup::Known(None) }, "{seen} {events:?}");
            assert_eq!(idx.find(&dir(1), "Y"), known("y"));
        }
    }

    /// `RENAME_EXCHANGE` of `a` and `b` reports: a moved out, b moved in, b moved out, a moved
    /// in; both names stay. Moved out cannot be trusted to mean gone.
    #[test]
    fn a_name_moved_out_forgets_the_directory() {
        let mut idx = FoldedIndexes::default();
        let (g, _) = idx.follow(dir(1), 7);
        idx.listed(&dir(1), g, names(&["a", "b"]));
        let gone = idx.apply([NameEvent::MovedOut(7), added(7, "b"), NameEvent::MovedOut(7), added(7, "a")]);
        assert_eq!(gone, [7]);
        assert_eq!(idx.find(&dir(1), "B"), Lookup::Unfollowed, "listed again when next asked");
        // While the directory is being listed, too.
        let (g, _) = idx.follow(dir(1), 8);
        assert_eq!(idx.apply([NameEvent::MovedOut(8)]), [8]);
        idx.listed(&dir(1), g, names(&["a"]));
        assert_eq!(idx.find(&dir(1), "A"), Lookup::Unfollowed);
    }

    #[test]
    fn a_second_listing_does_not_replace_the_first() {
        let mut idx = FoldedIndexes::default();
        let (g, _) = idx.follow(dir(1), 7);
        idx.listed(&dir(1), g, names(&["a"]));
        idx.apply([added(7, "b")]);
        idx.listed(&dir(1), g, names(&["a"]));
        assert_eq!(idx.find(&dir(1), "B"), known("b"));
        assert!(idx.listed(&dir(2), g, names(&["z"])).is_empty(), "not followed: ignored");
        assert_eq!(idx.find(&dir(2), "z"), Lookup::Unfollowed);
    }

    /// A listing begun under a watch that was dropped (memory bound, overflow) and replaced
    /// missed the changes made between the two watches: it must not fill the new following.
    #[test]
    fn a_listing_from_an_older_following_is_not_taken() {
        let mut idx = FoldedIndexes::default();
        let (old, _) = idx.follow(dir(1), 7);
        assert_eq!(idx.apply([NameEvent::Overflow]), [7]);
        // Made while nothing followed the directory: no event anywhere.
        let (new, _) = idx.follow(dir(1), 8);
        assert_ne!(old, new);
        idx.listed(&dir(1), old, names(&[]));
        assert_eq!(idx.find(&dir(1), "lost"), Lookup::Listing(new), "the old listing is not an answer");
        idx.listed(&dir(1), new, names(&["Lost"]));
        assert_eq!(idx.find(&dir(1), "lost"), known("Lost"));
    }

    #[test]
    fn lost_events_and_ended_watches_forget() {
        let mut idx = FoldedIndexes::default();
        for (d, w) in [(1, 7), (2, 8), (3, 9)] {
            let (g, _) = idx.follow(dir(d), w);
            idx.listed(&dir(d), g, names(&["n"]));
        }
        assert!(idx.is_watching(&8));
        assert!(idx.apply([NameEvent::Ended(8)]).is_empty(), "an ended watch needs no removal");
        assert!(!idx.is_watching(&8));
        assert_eq!(idx.find(&dir(2), "N"), Lookup::Unfollowed);
        idx.apply([added(8, "late")]);
        let mut gone = idx.apply([added(7, "m"), NameEvent::Overflow, added(9, "o")]);
        gone.sort();
        assert_eq!(gone, [7, 9]);
        assert!(idx.is_empty());
        assert_eq!(idx.find(&dir(1), "N"), Lookup::Unfollowed);
        // Following again after an overflow starts from a new listing.
        let (g, _) = idx.follow(dir(1), 10);
        idx.listed(&dir(1), g, names(&["n", "m"]));
        assert_eq!(idx.find(&dir(1), "M"), known("m"));
    }

    #[test]
    fn memory_is_bounded() {
        let mut idx = FoldedIndexes::with_limits(5, 3);
        for d in 0..4u8 {
            let (g, gone) = idx.follow(dir(d), u32::from(d));
            assert_eq!(gone, if d == 3 { vec![0] } else { vec![] }, "at most three directories");
            idx.listed(&dir(d), g, names(&["a"]));
        }
        assert_eq!(idx.len(), 3);
        assert_eq!(idx.find(&dir(1), "A"), known("a"));
        // Growing past the names limit forgets the least recently asked directories.
        let gone = idx.apply([added(3, "b"), added(3, "c"), added(3, "d")]);
        assert_eq!(gone, [2]);
        assert_eq!(idx.find(&dir(3), "D"), known("d"));
        let gone = idx.apply((0..5).map(|i| added(3, &format!("n{i}"))));
        assert_eq!(gone, [1, 3], "a directory larger than the limit is not followed");
        assert!(idx.is_empty());
        // A listing too large is dropped as well, and so are changes piling up meanwhile.
        let (g, _) = idx.follow(dir(5), 5);
        assert_eq!(idx.listed(&dir(5), g, names(&["1", "2", "3", "4", "5", "6"])), [5]);
        idx.follow(dir(6), 6);
        assert_eq!(idx.apply((0..6).map(|i| added(6, &format!("n{i}")))), [6]);
        assert!(idx.is_empty());
    }
}
