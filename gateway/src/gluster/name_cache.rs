//! Directory names and listings over libgfapi, and the rules that keep them true (pure).
//!
//! Each directory may have remembered: which file a name denotes (a *positive* entry), that a
//! name does not exist (a *negative* entry), and the directory's listing in the volume's own
//! order with its cookies, from the start up to where it was read (*complete* once READDIRP
//! reached the end). They are answered without the bricks only while the volume promises to
//! say when they change, the rule of `attr_cache.rs` extended to names:
//!
//! - the bricks tell a client of a create, unlink, rename, link, mkdir or rmdir in a directory
//!   (an upcall naming the directory, or the changed file with its parent and a rename's old
//!   parent) only if that client used the directory or the file within
//!   `features.cache-invalidation-timeout`. A READDIRP registers the directory and every entry
//!   it returns, a LOOKUP registers the file it finds, but a LOOKUP that finds nothing registers
//!   nothing: so a negative entry is kept only once the directory itself was registered after
//!   the directory's entries began ([`NameCache::registered`]: a listing page or a stat of it);
//! - everything a directory holds is good only in the epoch it was filled in (0 = cache off;
//!   `coherence.rs` proves upcalls reach the node, and a rename through this node starts a new
//!   epoch) and only for [`LIFETIME`] from its *first* fill: later fills joined it and were
//!   registered later, so nothing is served longer than [`LIFETIME`] after its registration;
//! - an invalidation of the directory (an upcall naming it, or a change this node could not
//!   follow) drops all it holds, and fills begun before are refused ([`Ticket`]: generations
//!   are drawn from one counter, so an entry forgotten and made again never takes an older
//!   ticket);
//! - a name this node itself made or removed in the directory (the bricks never tell a client
//!   of its own changes) is written into what it holds instead, as GlusterFS's md-cache does
//!   with a reply's parent attributes ([`NameCache::note_name`]): the names stay complete, so
//!   the next create's lookup of a new name needs no LOOKUP, while the listing's order (where
//!   the bricks put the entry is not known) goes, and fills begun before are refused. If an
//!   invalidation came since the change began, the directory is dropped instead;
//! - a directory this node just made is known empty and registered (the bricks register the
//!   client that made it), unless any invalidation came meanwhile ([`NameCache::note_made`]);
//! - a caller is answered from memory only if the bricks already let that same caller (uid,
//!   gid, groups) search (lookup) or read (list) the directory since its entries began: the
//!   bricks apply ACLs this module cannot see, and a change of the directory's mode, owner or
//!   ACL is an upcall for it, which drops the grants with the rest.
//!
//! What the bricks never tell: a rename *onto* an existing name by a client that this node
//! never saw use the renamed file (the upcall goes to the renamed file's users only). Such a
//! name answers the replaced file for at most [`LIFETIME`].
//!
//! Memory: at most [`MAX_ENTRIES`] names and listing entries over all directories; the least
//! recently used directories are forgotten first.

use std::collections::HashMap;
use std::time::Instant;

use lru::LruCache;

pub use super::attr_cache::LIFETIME;
use crate::vfs::{Credentials, FileId};

/// At most this many names plus listing entries are remembered over all directories (a name
/// from a listing counts twice: ~200 bytes each with a short name, so ~25 MB at most).
pub const MAX_ENTRIES: usize = 131_072;
/// At most this many callers' grants are kept per directory and kind (then the oldest goes).
const MAX_GRANTS: usize = 8;

/// A fill permit: the directory's generation when the fetch began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket(u64);

/// A question to the bricks about a directory: its [`Ticket`], the epoch it was asked in and
/// when it began; what it learnt is kept only if nothing changed the directory since.
#[derive(Debug, Clone, Copy)]
pub struct Fetch {
    /// Taken before asking.
    pub ticket: Ticket,
    /// The cache's epoch when asking (0: off, nothing is kept).
    pub epoch: u64,
    /// When the question was sent.
    pub at: Instant,
}

/// What a caller was allowed to do in a directory by the bricks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// Look names up (search permission).
    Search,
    /// List it (read permission).
    Read,
}

/// One entry of a remembered listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// The name.
    pub name: Vec<u8>,
    /// The resume cookie after this entry.
    pub cookie: u64,
    /// The file's inode number.
    pub fileid: u64,
    /// The file.
    pub id: FileId,
}

/// What [`NameCache::lookup`] knows of a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Known {
    /// The name denotes this file.
    Is(FileId),
    /// The name does not exist.
    Absent,
}

#[derive(Debug, Default)]
struct Filled {
    epoch: u64,
    at: Option<Instant>,
    registered: bool,
    names: HashMap<Vec<u8>, Option<FileId>>,
    listing: Vec<Listed>,
    by_cookie: HashMap<u64, usize>,
    /// The listing reached the end.
    complete: bool,
    /// `names` holds every name (a complete listing, or a directory this node made, and the
    /// names this node made or removed since).
    all_names: bool,
    search: Vec<Credentials>,
    read: Vec<Credentials>,
}

impl Filled {
    fn size(&self) -> usize {
        self.names.len() + self.listing.len()
    }

    fn valid(&self, epoch: u64, now: Instant) -> bool {
        epoch != 0 && self.epoch == epoch && self.at.is_some_and(|at| now.saturating_duration_since(at) < LIFETIME)
    }

    fn granted(&self, kind: Grant, cred: &Credentials) -> bool {
        let list = match kind {
            Grant::Search => &self.search,
            Grant::Read => &self.read,
        };
        list.iter().any(|c| c == cred)
    }

    fn push_grant(&mut self, kind: Grant, cred: &Credentials) {
        if self.granted(kind, cred) {
            return;
        }
        let list = match kind {
            Grant::Search => &mut self.search,
            Grant::Read => &mut self.read,
        };
        if list.len() >= MAX_GRANTS {
            list.remove(0);
        }
        list.push(cred.clone());
    }
}

#[derive(Debug)]
struct Dir {
    generation: u64,
    /// The generation of the last invalidation (or of the entry's making): a change of this
    /// node's begun before it cannot be written into what the directory holds.
    dropped: u64,
    filled: Filled,
}

/// The names and listings of every remembered directory.
pub struct NameCache {
    dirs: LruCache<FileId, Dir>,
    /// Names plus listing entries over all directories.
    total: usize,
    /// Where generations come from.
    next_generation: u64,
    limit: usize,
}

impl Default for NameCache {
    fn default() -> Self {
        Self::with_limit(MAX_ENTRIES)
    }
}

impl NameCache {
    /// A cache of at most `limit` names plus listing entries.
    pub fn with_limit(limit: usize) -> Self {
        NameCache { dirs: LruCache::unbounded(), total: 0, next_generation: 1, limit: limit.max(1) }
    }

    /// Names plus listing entries remembered now.
    pub fn len(&self) -> usize {
        self.total
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    fn generation(&mut self) -> u64 {
        self.next_generation += 1;
        self.next_generation
    }

    /// The directory's usable state, or `None` (and its stale content dropped).
    fn usable(&mut self, dir: &FileId, epoch: u64, now: Instant) -> Option<&Filled> {
        let stale = match self.dirs.get(dir) {
            None => return None,
            Some(d) => !d.filled.valid(epoch, now),
        };
        if stale {
            self.clear(dir);
            return None;
        }
        self.dirs.peek(dir).map(|d| &d.filled)
    }

    fn clear(&mut self, dir: &FileId) {
        if let Some(d) = self.dirs.peek_mut(dir) {
            self.total -= d.filled.size();
            d.filled = Filled::default();
        }
    }

    /// What is known of `name` in `dir` for `cred` at `now` in `epoch`: a positive or negative
    /// entry, or the absence of the name from a complete listing. `None`: ask the bricks.
    pub fn lookup(&mut self, dir: &FileId, name: &[u8], cred: &Credentials, epoch: u64, now: Instant) -> Option<Known> {
        let f = self.usable(dir, epoch, now)?;
        if !f.granted(Grant::Search, cred) {
            return None;
        }
        match f.names.get(name) {
            Some(Some(id)) => Some(Known::Is(*id)),
            Some(None) => Some(Known::Absent),
            // `.` and `..` are never in the names (nor in a listing).
            None if f.all_names && name != b"." && name != b".." => Some(Known::Absent),
            None => None,
        }
    }

    /// The entries after `cookie` (0: from the start), at most `max`, and whether they reach the
    /// end, for `cred`; `None` when memory does not hold all of them.
    pub fn page(
        &mut self,
        dir: &FileId,
        cookie: u64,
        max: usize,
        cred: &Credentials,
        epoch: u64,
        now: Instant,
    ) -> Option<(Vec<Listed>, bool)> {
        let f = self.usable(dir, epoch, now)?;
        if !f.granted(Grant::Read, cred) {
            return None;
        }
        let start = if cookie == 0 { 0 } else { f.by_cookie.get(&cookie)? + 1 };
        let end = start.saturating_add(max).min(f.listing.len());
        if end - start < max && !f.complete {
            return None;
        }
        let eof = f.complete && end == f.listing.len();
        Some((f.listing[start..end].to_vec(), eof))
    }

    /// Where a listing of `dir` that must reach the entry after `cookie` can go on reading:
    /// `Some(tail)` (0: the start) when `cookie` is the start or a remembered entry of an
    /// incomplete listing, so the bricks' entries from `tail` on extend it.
    pub fn resume_at(&mut self, dir: &FileId, cookie: u64, epoch: u64, now: Instant) -> Option<u64> {
        match self.usable(dir, epoch, now) {
            None => (cookie == 0).then_some(0),
            Some(f) if f.complete => None,
            Some(f) => {
                if cookie != 0 && !f.by_cookie.contains_key(&cookie) {
                    return None;
                }
                Some(f.listing.last().map_or(0, |l| l.cookie))
            }
        }
    }

    /// Taken before asking the bricks anything about `dir`.
    pub fn ticket(&mut self, dir: &FileId) -> Ticket {
        if let Some(d) = self.dirs.get(dir) {
            return Ticket(d.generation);
        }
        let generation = self.generation();
        self.dirs.put(*dir, Dir { generation, dropped: generation, filled: Filled::default() });
        self.shrink();
        Ticket(generation)
    }

    /// A fetch about `dir` beginning now (`at`) in `epoch`.
    pub fn begin(&mut self, dir: &FileId, epoch: u64, at: Instant) -> Fetch {
        Fetch { ticket: self.ticket(dir), epoch, at }
    }

    /// The directory's state to fill under `ticket` in `epoch` at `at` (the time the fetch
    /// began), or `None` if it was invalidated or forgotten since, or the cache is off.
    fn fillable(&mut self, dir: &FileId, fetch: Fetch) -> Option<&mut Filled> {
        let Fetch { ticket, epoch, at } = fetch;
        if epoch == 0 {
            return None;
        }
        let d = self.dirs.get_mut(dir)?;
        if d.generation != ticket.0 {
            return None;
        }
        if !d.filled.valid(epoch, at) || d.filled.epoch != epoch {
            self.total -= d.filled.size();
            d.filled = Filled { epoch, at: Some(at), ..Filled::default() };
        }
        Some(&mut d.filled)
    }

    /// The bricks let `cred` do `kind` in `dir` (by `fetch`).
    pub fn grant(&mut self, dir: &FileId, fetch: Fetch, kind: Grant, cred: &Credentials) {
        if let Some(f) = self.fillable(dir, fetch) {
            f.push_grant(kind, cred);
        }
    }

    /// `dir` itself was registered with the bricks (a stat or a listing page of it) by a fetch
    /// `fetch`: negative entries may be kept from now on.
    pub fn note_registered(&mut self, dir: &FileId, fetch: Fetch) {
        if let Some(f) = self.fillable(dir, fetch) {
            f.registered = true;
        }
    }

    /// Whether `dir` was registered since its entries began (see the module doc).
    pub fn registered(&mut self, dir: &FileId, epoch: u64, now: Instant) -> bool {
        self.usable(dir, epoch, now).is_some_and(|f| f.registered)
    }

    /// Remembers what a lookup of `name` by `fetch`, found: `Some(file)` or
    /// `None` (it does not exist; kept only once the directory is registered). Returns whether
    /// it was kept.
    pub fn fill_name(&mut self, dir: &FileId, fetch: Fetch, name: &[u8], found: Option<FileId>) -> bool {
        let Some(f) = self.fillable(dir, fetch) else { return false };
        if found.is_none() && !f.registered {
            return false;
        }
        if f.names.insert(name.to_vec(), found).is_none() {
            self.total += 1;
        }
        self.shrink();
        true
    }

    /// Appends entries the bricks listed after `after` (the listing's tail, 0 for the start)
    /// by `fetch`; `eof` when they reach the end. Refused (false) when the
    /// listing's tail moved meanwhile.
    pub fn fill_listing(&mut self, dir: &FileId, fetch: Fetch, after: u64, entries: Vec<Listed>, eof: bool) -> bool {
        let Some(f) = self.fillable(dir, fetch) else { return false };
        if f.complete || f.listing.last().map_or(0, |l| l.cookie) != after {
            return false;
        }
        let mut added = 0;
        let mut ok = true;
        for e in entries {
            if f.by_cookie.contains_key(&e.cookie) || e.cookie == 0 {
                // Cookies must name one place each; a listing that repeats one is not kept.
                ok = false;
                break;
            }
            if f.names.insert(e.name.clone(), Some(e.id)).is_none() {
                added += 1;
            }
            f.by_cookie.insert(e.cookie, f.listing.len());
            f.listing.push(e);
            added += 1;
        }
        if ok {
            f.complete = eof;
            f.all_names |= eof;
            // A listing page registers the directory with the bricks.
            f.registered = true;
        }
        self.total += added;
        if !ok {
            self.clear(dir);
            return false;
        }
        self.shrink();
        true
    }

    /// `dir` changed (or may have): everything it holds goes, and fills begun before are
    /// refused.
    pub fn invalidate(&mut self, dir: &FileId) {
        let generation = self.generation();
        if let Some(d) = self.dirs.peek_mut(dir) {
            self.total -= d.filled.size();
            *d = Dir { generation, dropped: generation, filled: Filled::default() };
        }
    }

    /// This node made `name` in `dir` denote `file` (`Some`: a create, mkdir, symlink, mknod
    /// or link) or removed it (`None`), for `cred`, by a call begun with `fetch`. The bricks
    /// never tell a client of its own changes, so the change is written into what `dir` holds
    /// (see the module doc); the listing goes, fills begun before are refused, and `cred`,
    /// whom the bricks let change the directory, may search it. If an invalidation came since
    /// `fetch` began, or what `dir` holds is stale, it all goes.
    pub fn note_name(&mut self, dir: &FileId, fetch: Fetch, name: &[u8], file: Option<FileId>, cred: &Credentials) {
        let generation = self.generation();
        let Some(d) = self.dirs.peek_mut(dir) else { return };
        let followed = fetch.epoch != 0 && d.dropped <= fetch.ticket.0 && d.filled.valid(fetch.epoch, fetch.at);
        if !followed {
            self.total -= d.filled.size();
            *d = Dir { generation, dropped: generation, filled: Filled::default() };
            return;
        }
        d.generation = generation;
        let f = &mut d.filled;
        let before = f.size();
        f.listing.clear();
        f.by_cookie.clear();
        f.complete = false;
        match file {
            Some(id) => {
                f.names.insert(name.to_vec(), Some(id));
                f.push_grant(Grant::Search, cred);
            }
            // A negative entry needs the directory registered (the module doc).
            None if f.registered => {
                f.names.insert(name.to_vec(), None);
            }
            None => {
                f.names.remove(name);
            }
        }
        self.total = self.total - before + f.size();
        self.shrink();
    }

    /// `dir` was just made by this node, empty; `fetch` was begun right after, and `mark_held`
    /// says that no invalidation of any file came since before the call that made it (an
    /// upcall about it before `fetch` began would have been lost). The bricks registered this
    /// node with the new directory, so it holds no names, all of them known, from `fetch.at`.
    pub fn note_made(&mut self, dir: &FileId, fetch: Fetch, mark_held: bool) {
        if !mark_held {
            return;
        }
        if let Some(f) = self.fillable(dir, fetch) {
            if f.names.is_empty() && f.listing.is_empty() {
                f.registered = true;
                f.all_names = true;
            }
        }
    }

    /// Forgets least recently used directories until the bound holds.
    fn shrink(&mut self) {
        while self.total > self.limit || self.dirs.len() > self.limit {
            match self.dirs.pop_lru() {
                Some((_, d)) => self.total -= d.filled.size(),
                None => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn id(n: u8) -> FileId {
        crate::gluster::fuse_backend::gfid_file_id(&[n; 16])
    }

    fn cred(uid: u32) -> Credentials {
        Credentials { uid, gid: uid, groups: vec![] }
    }

    fn listed(n: u8) -> Listed {
        Listed { name: vec![b'a' + n], cookie: 100 + u64::from(n), fileid: u64::from(n), id: id(n) }
    }

    #[test]
    fn names_are_served_to_granted_callers_in_their_epoch_and_lifetime() {
        let (d, t0, me) = (id(1), Instant::now(), cred(1000));
        let mut c = NameCache::default();
        let t = c.ticket(&d);
        assert!(c.fill_name(&d, Fetch { ticket: t, epoch: 1, at: t0 }, b"x", Some(id(2))));
        assert_eq!(c.lookup(&d, b"x", &me, 1, t0), None, "no caller was granted a search yet");
        c.grant(&d, Fetch { ticket: t, epoch: 1, at: t0 }, Grant::Search, &me);
        assert_eq!(c.lookup(&d, b"x", &me, 1, t0), Some(Known::Is(id(2))));
        assert_eq!(c.lookup(&d, b"x", &cred(1001), 1, t0), None, "another caller asks the bricks");
        assert_eq!(c.lookup(&d, b"y", &me, 1, t0), None, "unknown name");
        assert_eq!(c.lookup(&d, b"x", &me, 2, t0), None, "another epoch");
        assert_eq!(c.lookup(&d, b"x", &me, 0, t0), None, "cache off");
        assert_eq!(c.lookup(&d, b"x", &me, 1, t0 + LIFETIME), None, "expired");
        assert!(c.is_empty(), "an expired directory holds nothing");
    }

    #[test]
    fn negative_entries_need_the_directory_registered_first() {
        let (d, t0, me) = (id(1), Instant::now(), cred(0));
        let mut c = NameCache::default();
        let t = c.ticket(&d);
        assert!(
            !c.fill_name(&d, Fetch { ticket: t, epoch: 1, at: t0 }, b"nope", None),
            "a failed LOOKUP registers nothing"
        );
        c.note_registered(&d, Fetch { ticket: t, epoch: 1, at: t0 });
        assert!(c.registered(&d, 1, t0));
        assert!(c.fill_name(&d, Fetch { ticket: t, epoch: 1, at: t0 }, b"nope", None));
        c.grant(&d, Fetch { ticket: t, epoch: 1, at: t0 }, Grant::Search, &me);
        assert_eq!(c.lookup(&d, b"nope", &me, 1, t0), Some(Known::Absent));
        // Another client creates the name: the upcall names the directory.
        c.invalidate(&d);
        assert_eq!(c.lookup(&d, b"nope", &me, 1, t0), None);
        assert!(!c.registered(&d, 1, t0));
    }

    #[test]
    fn an_invalidation_during_a_fetch_wins_even_if_the_directory_was_forgotten() {
        let (d, t0) = (id(1), Instant::now());
        let mut c = NameCache::with_limit(2);
        let t = c.ticket(&d);
        c.invalidate(&d); // the upcall arrives while the LOOKUP is in flight
        assert!(!c.fill_name(&d, Fetch { ticket: t, epoch: 1, at: t0 }, b"x", Some(id(2))));
        // Forgotten (evicted) and made again: the old ticket is still refused.
        let t = c.ticket(&d);
        for n in 10..20 {
            let o = id(n);
            let to = c.ticket(&o);
            c.fill_name(&o, Fetch { ticket: to, epoch: 1, at: t0 }, b"x", Some(id(2)));
        }
        assert!(c.len() <= 2);
        let _ = c.ticket(&d);
        assert!(
            !c.fill_name(&d, Fetch { ticket: t, epoch: 1, at: t0 }, b"x", Some(id(2))),
            "a ticket from before the eviction"
        );
    }

    #[test]
    fn a_listing_fills_in_pages_and_serves_pages_and_names() {
        let (d, t0, me) = (id(1), Instant::now(), cred(5));
        let mut c = NameCache::default();
        assert_eq!(c.resume_at(&d, 0, 1, t0), Some(0));
        let t = c.ticket(&d);
        assert!(c.fill_listing(&d, Fetch { ticket: t, epoch: 1, at: t0 }, 0, (0..3).map(listed).collect(), false));
        assert!(
            !c.fill_listing(&d, Fetch { ticket: t, epoch: 1, at: t0 }, 0, vec![listed(9)], false),
            "the tail moved"
        );
        c.grant(&d, Fetch { ticket: t, epoch: 1, at: t0 }, Grant::Read, &me);
        c.grant(&d, Fetch { ticket: t, epoch: 1, at: t0 }, Grant::Search, &me);
        assert_eq!(c.page(&d, 0, 2, &me, 1, t0), Some((vec![listed(0), listed(1)], false)));
        assert_eq!(c.page(&d, 101, 2, &me, 1, t0), None, "not all in memory and not complete");
        assert_eq!(c.resume_at(&d, 101, 1, t0), Some(102), "read on from the tail");
        assert_eq!(c.resume_at(&d, 999, 1, t0), None, "a cookie memory does not know");
        assert_eq!(c.lookup(&d, b"z", &me, 1, t0), None, "incomplete: absence unknown");
        assert!(c.fill_listing(&d, Fetch { ticket: t, epoch: 1, at: t0 }, 102, (3..5).map(listed).collect(), true));
        assert_eq!(c.page(&d, 101, 10, &me, 1, t0), Some(((2..5).map(listed).collect(), true)));
        assert_eq!(c.page(&d, 104, 10, &me, 1, t0), Some((vec![], true)));
        assert_eq!(c.resume_at(&d, 0, 1, t0), None, "complete");
        assert_eq!(c.lookup(&d, b"c", &me, 1, t0), Some(Known::Is(id(2))));
        assert_eq!(c.lookup(&d, b"z", &me, 1, t0), Some(Known::Absent), "not in a complete listing");
        assert_eq!(c.page(&d, 0, 10, &cred(6), 1, t0), None, "not granted a read");
        assert_eq!(c.len(), 10);
        c.invalidate(&d);
        assert_eq!(c.len(), 0);
        assert_eq!(c.page(&d, 0, 10, &me, 1, t0), None);
    }

    #[test]
    fn this_nodes_own_changes_keep_the_names_complete() {
        let (d, t0, me) = (id(1), Instant::now(), cred(5));
        let f = |t| Fetch { ticket: t, epoch: 1, at: t0 };
        let mut c = NameCache::default();
        let t = c.ticket(&d);
        assert!(c.fill_listing(&d, f(t), 0, (0..3).map(listed).collect(), true));
        c.grant(&d, f(t), Grant::Read, &me);
        // A create through this node, begun before a lookup's fetch ends.
        let create = c.begin(&d, 1, t0);
        let lookup = c.ticket(&d);
        c.note_name(&d, create, b"new", Some(id(9)), &me);
        assert!(!c.fill_name(&d, f(lookup), b"new", None), "a fill begun before the change is refused");
        assert_eq!(c.lookup(&d, b"new", &me, 1, t0), Some(Known::Is(id(9))), "the creator may search");
        assert_eq!(c.lookup(&d, b"a", &me, 1, t0), Some(Known::Is(id(0))));
        assert_eq!(c.lookup(&d, b"zz", &me, 1, t0), Some(Known::Absent), "the names are still complete");
        assert_eq!(c.lookup(&d, b"..", &me, 1, t0), None, "never said absent");
        assert_eq!(c.page(&d, 0, 10, &me, 1, t0), None, "the listing's order is not known");
        assert_eq!(c.resume_at(&d, 0, 1, t0), Some(0));
        // A remove through this node: the directory is registered (a listing), so the name
        // is known absent.
        let remove = c.begin(&d, 1, t0);
        c.note_name(&d, remove, b"a", None, &me);
        assert_eq!(c.lookup(&d, b"a", &me, 1, t0), Some(Known::Absent));
        assert_eq!(c.len(), 4, "names only: b, c, new and the absent a");
        // An upcall between the change's start and its end: all of it goes.
        let late = c.begin(&d, 1, t0);
        c.invalidate(&d);
        c.note_name(&d, late, b"later", Some(id(10)), &me);
        assert_eq!(c.lookup(&d, b"b", &me, 1, t0), None);
        assert_eq!(c.lookup(&d, b"later", &me, 1, t0), None);
        assert!(c.is_empty());
    }

    #[test]
    fn a_directory_this_node_made_is_known_empty_unless_anything_changed_meanwhile() {
        let (d, t0, me) = (id(1), Instant::now(), cred(5));
        let mut c = NameCache::default();
        let made = c.begin(&d, 1, t0);
        c.note_made(&d, made, true);
        assert!(c.registered(&d, 1, t0));
        assert_eq!(c.lookup(&d, b"x", &me, 1, t0), None, "no caller was granted a search yet");
        let t = c.ticket(&d);
        c.grant(&d, Fetch { ticket: t, epoch: 1, at: t0 }, Grant::Search, &me);
        assert_eq!(c.lookup(&d, b"x", &me, 1, t0), Some(Known::Absent));
        assert_eq!(c.lookup(&d, b".", &me, 1, t0), None);
        let other = id(2);
        let made = c.begin(&other, 1, t0);
        c.note_made(&other, made, false);
        assert!(!c.registered(&other, 1, t0), "an invalidation came: nothing is known");
        let made = c.begin(&other, 0, t0);
        c.note_made(&other, made, true);
        assert!(!c.registered(&other, 0, t0), "cache off");
    }

    #[test]
    fn the_lifetime_counts_from_the_first_fill() {
        let (d, t0, me) = (id(1), Instant::now(), cred(5));
        let mut c = NameCache::default();
        let t = c.ticket(&d);
        c.grant(&d, Fetch { ticket: t, epoch: 1, at: t0 }, Grant::Search, &me);
        let later = t0 + LIFETIME - Duration::from_secs(1);
        assert!(c.fill_name(&d, Fetch { ticket: t, epoch: 1, at: later }, b"x", Some(id(2))));
        assert_eq!(c.lookup(&d, b"x", &me, 1, later), Some(Known::Is(id(2))));
        assert_eq!(c.lookup(&d, b"x", &me, 1, t0 + LIFETIME), None, "the directory's first fill expired");
    }

    #[test]
    fn memory_stays_bounded() {
        let t0 = Instant::now();
        let mut c = NameCache::with_limit(100);
        for n in 0..50u8 {
            let d = id(n);
            let t = c.ticket(&d);
            let page: Vec<Listed> =
                (0..10u8).map(|i| Listed { name: vec![i], cookie: 1 + u64::from(i), fileid: 0, id: id(i) }).collect();
            c.fill_listing(&d, Fetch { ticket: t, epoch: 1, at: t0 }, 0, page, true);
            assert!(c.len() <= 100, "{} entries", c.len());
        }
        assert!(c.len() > 50, "recent directories are kept");
    }

    #[test]
    fn random_interleavings_never_serve_a_name_filled_before_its_last_change() {
        // Fetch-begin, fetch-end, change (invalidate) and this node's own change on two
        // directories, random order: a name served always has the latest version.
        let t0 = Instant::now();
        let me = cred(0);
        let mut seed = 0x9E3779B97F4A7C15u64;
        for _ in 0..500 {
            let mut c = NameCache::with_limit(4);
            let dirs = [id(1), id(2)];
            let mut version = [0u8; 2];
            let mut inflight: Vec<(usize, Ticket, u8)> = Vec::new();
            for _ in 0..40 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let k = (seed >> 8) as usize % 2;
                match seed % 4 {
                    0 => inflight.push((k, c.ticket(&dirs[k]), version[k])),
                    3 => {
                        // A change through this node, begun now, acknowledged at once or
                        // after a later step's fills and invalidations.
                        let change = c.begin(&dirs[k], 1, t0);
                        if let Some((j, t, v)) = inflight.pop() {
                            c.grant(&dirs[j], Fetch { ticket: t, epoch: 1, at: t0 }, Grant::Search, &me);
                            c.fill_name(&dirs[j], Fetch { ticket: t, epoch: 1, at: t0 }, b"n", Some(id(100 + v)));
                        }
                        if seed & 0x100 != 0 {
                            c.invalidate(&dirs[k]);
                        }
                        version[k] = version[k].wrapping_add(1) % 100;
                        c.note_name(&dirs[k], change, b"n", Some(id(100 + version[k])), &me);
                    }
                    1 => {
                        if let Some((k, t, v)) = inflight.pop() {
                            c.grant(&dirs[k], Fetch { ticket: t, epoch: 1, at: t0 }, Grant::Search, &me);
                            c.fill_name(&dirs[k], Fetch { ticket: t, epoch: 1, at: t0 }, b"n", Some(id(100 + v)));
                        }
                    }
                    _ => {
                        version[k] = version[k].wrapping_add(1) % 100;
                        c.invalidate(&dirs[k]);
                    }
                }
                for k in 0..2 {
                    if let Some(Known::Is(got)) = c.lookup(&dirs[k], b"n", &me, 1, t0) {
                        assert_eq!(got, id(100 + version[k]), "a stale name is served");
                    }
                }
            }
        }
    }
}
