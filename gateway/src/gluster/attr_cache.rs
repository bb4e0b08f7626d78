//! One file's cached attributes over libgfapi, and the rule that keeps them true (pure).
//!
//! nasgw keeps a file's attributes only while the volume has promised to say when they change:
//! the bricks' upcall translator (`features.cache-invalidation`) tells every client that used a
//! file within `features.cache-invalidation-timeout` of each change made by another client, and
//! `gluster/coherence.rs` proves that promise holds for this node's connection before it turns
//! the cache on (an *epoch*, 0 while off). The rule, for each file:
//!
//! - an entry is good only in the epoch it was filled in (a connection that lost its upcalls,
//!   or a rename through this node, starts a new epoch and so drops every entry at once), and
//!   only for [`LIFETIME`] (below the bricks' default 60 s timeout, after which they would stop
//!   telling this client: the proof checks that an access that old is still told);
//! - an invalidation (an upcall for the file, or a change this node made: the bricks never tell
//!   a client of its own changes) drops the entry and bumps the file's generation;
//! - a fill is a [`Ticket`] taken *before* asking the bricks, stored only if no invalidation came
//!   in between: attributes fetched while a change was being announced never outlive it;
//! - a change this node made whose effect on the attributes is known (a create in a directory
//!   on a volume that stamps times on the client: the directory's mtime and ctime become the
//!   new entry's ctime) is written into the entry instead ([`CachedAttr::follow`]), if nothing
//!   else happened to it since the change began. What is not known (a directory's size) may
//!   then lag, so such an entry is served only [`FOLLOWED_LIFETIME`] from the bricks' answer
//!   it came from, GlusterFS's own md-cache lifetime.

use std::time::{Duration, Instant};

/// How long attributes (and names and listings, `name_cache.rs`) stay cached without any news:
/// half the bricks' default `features.cache-invalidation-timeout` (60 s). The coherence proof
/// checks that the volume still tells a client that last used a file this long ago. (10 s made
/// a listing expire between two rounds of the bench on a loaded machine, where another
/// server's listing took 14 s.)
pub const LIFETIME: Duration = Duration::from_secs(30);

/// How long an entry that this node's own changes were written into ([`CachedAttr::follow`])
/// is served after the bricks' answer it came from: md-cache's default `md-cache-timeout`.
pub const FOLLOWED_LIFETIME: Duration = Duration::from_secs(1);

/// A fill permit: the file's generation when the fetch began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket(u64);

/// One file's cached attributes (`T`: the attributes, `libc::stat` in the backend).
#[derive(Debug, Clone)]
pub struct CachedAttr<T> {
    generation: u64,
    /// Epoch, when the bricks answered, the attributes, and whether this node's own changes
    /// were written into them since.
    entry: Option<(u64, Instant, T, bool)>,
}

impl<T> Default for CachedAttr<T> {
    fn default() -> Self {
        Self { generation: 0, entry: None }
    }
}

impl<T: Copy> CachedAttr<T> {
    /// The cached attributes, if filled in the current `epoch` (0 = cache off) less than
    /// [`LIFETIME`] before `now`.
    pub fn get(&self, epoch: u64, now: Instant) -> Option<T> {
        match self.entry {
            Some((e, at, v, followed)) if epoch != 0 && e == epoch => {
                let lifetime = if followed { FOLLOWED_LIFETIME } else { LIFETIME };
                (now.saturating_duration_since(at) < lifetime).then_some(v)
            }
            _ => None,
        }
    }

    /// Taken before fetching attributes from the bricks.
    pub fn ticket(&self) -> Ticket {
        Ticket(self.generation)
    }

    /// Stores attributes fetched under `ticket` at `at` (taken before the fetch), unless the file
    /// was invalidated since the ticket or the cache is off (`epoch` 0). Returns whether it was
    /// stored.
    pub fn fill(&mut self, ticket: Ticket, epoch: u64, at: Instant, value: T) -> bool {
        if epoch == 0 || ticket.0 != self.generation {
            return false;
        }
        self.entry = Some((epoch, at, value, false));
        true
    }

    /// This node made a change, begun under `ticket`, whose effect `change` writes into the
    /// attributes: done if they were good in `epoch` at `now` and nothing invalidated or
    /// followed them since the ticket (else they go). Either way fills begun before are
    /// refused. Returns whether the entry was kept.
    pub fn follow(&mut self, ticket: Ticket, epoch: u64, now: Instant, change: impl FnOnce(&mut T)) -> bool {
        let unchanged = ticket.0 == self.generation;
        let good = self.get(epoch, now).is_some();
        self.generation = self.generation.wrapping_add(1);
        match &mut self.entry {
            Some((_, _, v, followed)) if unchanged && good => {
                change(v);
                *followed = true;
                true
            }
            _ => {
                self.entry = None;
                false
            }
        }
    }

    /// The file changed (or may have): drop the entry; fills begun before now are refused.
    pub fn invalidate(&mut self) {
        self.generation = self.generation.wrapping_add(1);
        self.entry = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fill_is_served_in_its_epoch_and_lifetime_only() {
        let t0 = Instant::now();
        let mut c = CachedAttr::<u32>::default();
        assert_eq!(c.get(1, t0), None);
        let t = c.ticket();
        assert!(c.fill(t, 1, t0, 7));
        assert_eq!(c.get(1, t0 + Duration::from_secs(1)), Some(7));
        assert_eq!(c.get(2, t0), None, "another epoch");
        assert_eq!(c.get(0, t0), None, "cache off");
        assert_eq!(c.get(1, t0 + LIFETIME), None, "expired");
    }

    #[test]
    fn nothing_is_stored_while_the_cache_is_off() {
        let mut c = CachedAttr::<u32>::default();
        let t = c.ticket();
        assert!(!c.fill(t, 0, Instant::now(), 1));
        assert_eq!(c.get(0, Instant::now()), None);
    }

    #[test]
    fn an_invalidation_during_a_fetch_wins() {
        let now = Instant::now();
        let mut c = CachedAttr::<u32>::default();
        let t = c.ticket();
        c.invalidate(); // the upcall arrives while the stat is in flight
        assert!(!c.fill(t, 1, now, 1), "the old attributes are not stored");
        assert_eq!(c.get(1, now), None);
        let t = c.ticket();
        assert!(c.fill(t, 1, now, 2));
        assert_eq!(c.get(1, now), Some(2));
        c.invalidate();
        assert_eq!(c.get(1, now), None);
    }

    #[test]
    fn this_nodes_own_change_is_followed_for_a_second_if_nothing_else_happened() {
        let t0 = Instant::now();
        let mut c = CachedAttr::<u32>::default();
        let t = c.ticket();
        assert!(c.fill(t, 1, t0, 7));
        // A create begun, a stat begun during it, the create done.
        let change = c.ticket();
        let stat = c.ticket();
        assert!(c.follow(change, 1, t0, |v| *v += 1));
        assert!(!c.fill(stat, 1, t0, 7), "a stat begun before the change was written is refused");
        assert_eq!(c.get(1, t0 + Duration::from_millis(900)), Some(8));
        assert_eq!(c.get(1, t0 + FOLLOWED_LIFETIME), None, "what was written in lags the bricks: 1 s");
        // Two changes at once: which came last is not known, the entry goes.
        let t = c.ticket();
        assert!(c.fill(t, 1, t0, 7));
        let (a, b) = (c.ticket(), c.ticket());
        assert!(c.follow(a, 1, t0, |v| *v += 1));
        assert!(!c.follow(b, 1, t0, |v| *v += 1));
        assert_eq!(c.get(1, t0), None);
        // An upcall during the change.
        let t = c.ticket();
        assert!(c.fill(t, 1, t0, 7));
        let change = c.ticket();
        c.invalidate();
        assert!(!c.follow(change, 1, t0, |v| *v += 1));
        assert_eq!(c.get(1, t0), None);
        // Nothing cached, or another epoch: nothing to follow.
        let change = c.ticket();
        assert!(!c.follow(change, 1, t0, |v| *v += 1));
        let t = c.ticket();
        assert!(c.fill(t, 1, t0, 7));
        let change = c.ticket();
        assert!(!c.follow(change, 2, t0, |v| *v += 1));
    }

    #[test]
    fn tickets_interleave_like_the_backend_threads() {
        // Random interleavings of fetch-begin, fetch-end, invalidate: a stored value is never
        // one whose fetch began before the last invalidation.
        let now = Instant::now();
        let mut seed = 0x2545F4914F6CDD1Du64;
        for _ in 0..2000 {
            let mut c = CachedAttr::<u64>::default();
            let mut version = 0u64; // the file's true version
            let mut inflight: Vec<(Ticket, u64)> = Vec::new();
            for _ in 0..20 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                match seed % 4 {
                    0 => inflight.push((c.ticket(), version)),
                    1 => {
                        if let Some((t, v)) = inflight.pop() {
                            c.fill(t, 1, now, v);
                        }
                    }
                    2 => {
                        version += 1;
                        c.invalidate();
                    }
                    _ => {
                        // This node's own change, whose effect is known: begun, then maybe a
                        // fetch ends and another change lands, then it is written in.
                        let change = c.ticket();
                        if seed & 0x100 != 0 {
                            if let Some((t, v)) = inflight.pop() {
                                c.fill(t, 1, now, v);
                            }
                        }
                        if seed & 0x200 != 0 {
                            version += 1;
                            c.invalidate();
                        }
                        version += 1;
                        c.follow(change, 1, now, |v| *v += 1);
                    }
                }
                if let Some(v) = c.get(1, now) {
                    assert_eq!(v, version, "a stale value is served");
                }
            }
        }
    }
}
