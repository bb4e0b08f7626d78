//! Attributes of listed objects remembered while the kernel's change events prove them
//! current: the decisions only (events in, what may be answered out); the events come from
//! [`super::fs_events`].
//!
//! A listing with attributes stats every entry (on a local file system, ~75% of the kernel
//! time of a READDIRPLUS). An object's attributes change only through a system call that
//! also reports a file-system event on it, and the owner reads every queued event before it
//! answers from here. So attributes stored for an object stay its attributes until an event
//! names it, provided none was missed between the `statx` and the store:
//!
//! - a known object is *claimed* (a [`Claim`] with a fresh token) before it is stat'ed; an
//!   event for it meanwhile drops the claim, so the store that follows is refused;
//! - an object first met in a listing (its identity comes from the same `statx`) can only be
//!   stored under an [`Epoch`] taken before the `statx`, and only when no event at all, for
//!   any object, was applied since (a busy file system just defers it to the next listing);
//! - an event naming the object drops what is stored; a lost event (queue overflow) drops
//!   everything; the store is bounded, least recently used first.
//!
//! Pure data: the caller does the system calls, reads the events and applies them here.

use std::num::NonZeroUsize;

use lru::LruCache;

use crate::vfs::types::{Attr, FileId};

/// What is known of one object.
#[derive(Clone, Copy, Debug)]
enum Slot {
    /// A listing is stat'ing it; the token is that listing's claim.
    Claimed(u64),
    /// Its attributes, current as long as no event named it since.
    Known(Attr),
}

/// The answer for an object a listing is about to stat.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Lookup {
    /// Its current attributes: no need to stat it.
    Known(Attr),
    /// Stat it and hand the result back with [`WatchedAttrs::store`] and this claim.
    Claimed(Claim),
}

/// A listing's claim on one object: its attributes may be stored only if no event named the
/// object since the claim.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Claim(u64);

/// How many events had been applied when a listing began: what it stats of objects it met
/// for the first time may be stored only if that number has not moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Epoch(u64);

/// Attributes of recently listed objects, by identity.
pub struct WatchedAttrs {
    slots: LruCache<FileId, Slot>,
    next_claim: u64,
    /// Events (and overflows) applied so far.
    applied: u64,
}

impl WatchedAttrs {
    /// Nothing known yet; at most `max` objects (claims included).
    pub fn new(max: usize) -> Self {
        Self { slots: LruCache::new(NonZeroUsize::new(max.max(1)).expect("non-zero")), next_claim: 0, applied: 0 }
    }

    /// Objects known or claimed.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True when nothing is known or claimed.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The current attributes of `id`, or a claim to stat it under.
    pub fn lookup(&mut self, id: &FileId) -> Lookup {
        if let Some(Slot::Known(a)) = self.slots.get(id) {
            return Lookup::Known(*a);
        }
        self.next_claim += 1;
        self.slots.put(*id, Slot::Claimed(self.next_claim));
        Lookup::Claimed(Claim(self.next_claim))
    }

    /// Stores `attr`, stat'ed after `claim` was taken on `id`, unless an event named `id`
    /// since (or another listing claimed it afterwards: its `statx` is the later one).
    pub fn store(&mut self, id: &FileId, claim: Claim, attr: Attr) {
        if let Some(slot) = self.slots.peek_mut(id) {
            if matches!(slot, Slot::Claimed(c) if *c == claim.0) {
                *slot = Slot::Known(attr);
            }
        }
    }

    /// Where the events stand now (see [`WatchedAttrs::store_first_seen`]).
    pub fn epoch(&self) -> Epoch {
        Epoch(self.applied)
    }

    /// Stores attributes of objects stat'ed after `epoch` was taken, when no event was applied
    /// since; an object already known or claimed is left as it is. (An event of a change made
    /// after the `statx` but not read yet is still queued: it drops the object before any
    /// later lookup.)
    pub fn store_first_seen(&mut self, epoch: Epoch, seen: impl IntoIterator<Item = (FileId, Attr)>) {
        if epoch.0 != self.applied {
            return;
        }
        for (id, attr) in seen {
            if !self.slots.contains(&id) {
                self.slots.put(id, Slot::Known(attr));
            }
        }
    }

    /// An event named `id` (a change of its attributes, or of its entries for a directory).
    pub fn changed(&mut self, id: &FileId) {
        self.applied += 1;
        self.slots.pop(id);
    }

    /// Events were lost: nothing known can be trusted, no claim may be honoured.
    pub fn lost_events(&mut self) {
        self.applied += 1;
        self.slots.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vfs::types::FileType;

    fn id(n: u8) -> FileId {
        FileId::new(&[b'K', n]).unwrap()
    }

    fn attr(size: u64) -> Attr {
        Attr { size, ..Attr::with_owner(FileType::Regular, 0o644, 1, 1) }
    }

    fn claim(w: &mut WatchedAttrs, i: &FileId) -> Claim {
        match w.lookup(i) {
            Lookup::Claimed(c) => c,
            Lookup::Known(a) => panic!("known already: {a:?}"),
        }
    }

    #[test]
    fn a_claimed_object_is_known_until_an_event_names_it() {
        let mut w = WatchedAttrs::new(10);
        let c = claim(&mut w, &id(1));
        w.store(&id(1), c, attr(5));
        assert_eq!(w.lookup(&id(1)), Lookup::Known(attr(5)));
        w.changed(&id(2));
        assert_eq!(w.lookup(&id(1)), Lookup::Known(attr(5)), "another object's event");
        w.changed(&id(1));
        assert!(matches!(w.lookup(&id(1)), Lookup::Claimed(_)));
    }

    #[test]
    fn an_event_between_claim_and_store_refuses_the_store() {
        let mut w = WatchedAttrs::new(10);
        let c = claim(&mut w, &id(1));
        w.changed(&id(1));
        w.store(&id(1), c, attr(5));
        assert!(matches!(w.lookup(&id(1)), Lookup::Claimed(_)));
    }

    #[test]
    fn only_the_latest_claim_may_store() {
        // Listing A claims and stats (old size); a change; its event drops A's claim; listing
        // B claims and stats (new size); A's late store must not win.
        let mut w = WatchedAttrs::new(10);
        let a = claim(&mut w, &id(1));
        w.changed(&id(1));
        let b = claim(&mut w, &id(1));
        w.store(&id(1), a, attr(1));
        assert!(matches!(w.lookup(&id(1)), Lookup::Claimed(_)), "A's store was refused");
        let b2 = claim(&mut w, &id(1));
        w.store(&id(1), b, attr(2));
        w.store(&id(1), b2, attr(2));
        assert_eq!(w.lookup(&id(1)), Lookup::Known(attr(2)));
    }

    #[test]
    fn lost_events_forget_everything_and_every_claim() {
        let mut w = WatchedAttrs::new(10);
        let c1 = claim(&mut w, &id(1));
        w.store(&id(1), c1, attr(1));
        let c2 = claim(&mut w, &id(2));
        let e = w.epoch();
        w.lost_events();
        assert!(w.is_empty());
        w.store(&id(2), c2, attr(2));
        w.store_first_seen(e, [(id(3), attr(3))]);
        assert!(w.is_empty());
    }

    #[test]
    fn first_seen_objects_are_stored_only_if_no_event_came_since_the_epoch() {
        let mut w = WatchedAttrs::new(10);
        let e = w.epoch();
        w.store_first_seen(e, [(id(1), attr(1))]);
        assert_eq!(w.lookup(&id(1)), Lookup::Known(attr(1)));
        let e = w.epoch();
        w.changed(&id(9));
        w.store_first_seen(e, [(id(2), attr(2))]);
        assert!(matches!(w.lookup(&id(2)), Lookup::Claimed(_)));
        // A claim taken meanwhile belongs to a later statx: it is not overwritten.
        let e = w.epoch();
        let c = claim(&mut w, &id(3));
        w.store_first_seen(e, [(id(3), attr(30))]);
        w.store(&id(3), c, attr(31));
        assert_eq!(w.lookup(&id(3)), Lookup::Known(attr(31)));
    }

    #[test]
    fn bounded_least_recently_used_first() {
        let mut w = WatchedAttrs::new(2);
        for i in 1..=2 {
            let c = claim(&mut w, &id(i));
            w.store(&id(i), c, attr(u64::from(i)));
        }
        assert_eq!(w.lookup(&id(1)), Lookup::Known(attr(1)));
        let c = claim(&mut w, &id(3));
        w.store(&id(3), c, attr(3));
        assert_eq!(w.len(), 2);
        assert!(matches!(w.lookup(&id(2)), Lookup::Claimed(_)), "2 was the least recently used");
    }
}
