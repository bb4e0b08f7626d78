//! Which nodes want the change events (CHANGE_NOTIFY, the node mount's cache invalidations) the
//! others make: pure bookkeeping for the lock machine's event broadcast.
//!
//! Sending every create, remove and close-after-write to every node costs each of them a message
//! (and the sender a path lookup) even when nobody watches, which is nearly always. So each node
//! tells the others how much it wants ([`Level`]), and a change goes only to the nodes that want
//! it. Nothing may be missed because of that, so:
//! - a member the node has not heard from in the current view counts as wanting everything (a
//!   new view starts with everybody unknown; each member then tells every other its level);
//! - a node whose level rises waits, before it relies on it (the first CHANGE_NOTIFY of a watch
//!   is answered only then), until every other member of the view acknowledged it. Messages of
//!   one view travel in order on each link and are read only by members of that view, so from
//!   that acknowledgement on every member sends it what it asked for.
//!
//! A lower level needs no acknowledgement: at worst a few changes are sent that nobody reads.

use std::collections::{BTreeMap, BTreeSet};

pub use crate::vfs::changes::level::{NAMES, NONE, PATHS};

/// How much of the other nodes' changes a node wants ([`crate::vfs::changes::level`]).
pub type Level = u8;

/// One node's view of who wants what, in the current view.
#[derive(Debug, Default)]
pub struct EventInterest {
    /// This node's level and the number of its latest change.
    mine: (Level, u64),
    /// What the other members told in this view (absent: not told yet).
    told: BTreeMap<u16, Level>,
    /// The members that acknowledged `mine` in this view.
    acked_by: BTreeSet<u16>,
    /// The latest number every member acknowledged (reported once).
    acked: u64,
    /// The highest level among the others, as last reported.
    reported: Option<Level>,
}

/// What the machine does after a change of the bookkeeping.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Effects {
    /// Send this node's level (and its number) to these members.
    pub tell: Vec<u16>,
    /// Every member now knows this node's level up to this number.
    pub acked: Option<u64>,
    /// The highest level among the other members changed to this.
    pub remote: Option<Level>,
}

impl EventInterest {
    /// This node's level and its number.
    pub fn mine(&self) -> (Level, u64) {
        self.mine
    }

    /// Whether `peer` gets this node's changes.
    pub fn wants(&self, peer: u16) -> bool {
        self.told.get(&peer).is_none_or(|l| *l > NONE)
    }

    /// This node's own level changed (number `seq`); `others`: the other members of the view.
    pub fn set_mine(&mut self, level: Level, seq: u64, others: &[u16]) -> Effects {
        self.mine = (level, seq);
        self.acked_by.clear();
        let mut e = Effects { tell: others.to_vec(), ..Effects::default() };
        e.acked = self.check_acked(others);
        e
    }

    /// A new view with these other members: nobody has told anything yet.
    pub fn new_view(&mut self, others: &[u16]) -> Effects {
        self.told.clear();
        self.acked_by.clear();
        Effects { tell: others.to_vec(), acked: self.check_acked(others), remote: self.check_remote(others) }
    }

    /// This node left the views (or has none): nobody to send to, nothing to wait for.
    pub fn no_view(&mut self) -> Effects {
        self.told.clear();
        self.acked_by.clear();
        Effects { tell: Vec::new(), acked: self.check_acked(&[]), remote: self.check_remote(&[]) }
    }

    /// Member `from` told its level.
    pub fn told(&mut self, from: u16, level: Level, others: &[u16]) -> Effects {
        self.told.insert(from, level);
        Effects { remote: self.check_remote(others), ..Effects::default() }
    }

    /// Member `from` acknowledged this node's level number `seq`.
    pub fn ack(&mut self, from: u16, seq: u64, others: &[u16]) -> Effects {
        if seq == self.mine.1 {
            self.acked_by.insert(from);
        }
        Effects { acked: self.check_acked(others), ..Effects::default() }
    }

    fn check_acked(&mut self, others: &[u16]) -> Option<u64> {
        let all = others.iter().all(|o| self.acked_by.contains(o));
        (all && self.mine.1 > self.acked).then(|| {
            self.acked = self.mine.1;
            self.acked
        })
    }

    fn check_remote(&mut self, others: &[u16]) -> Option<Level> {
        let top = others.iter().map(|o| self.told.get(o).copied().unwrap_or(PATHS)).max().unwrap_or(NONE);
        (self.reported != Some(top)).then(|| {
            self.reported = Some(top);
            top
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_members_want_everything_until_they_tell() {
        let mut i = EventInterest::default();
        let e = i.new_view(&[1, 2]);
        assert_eq!(e.tell, vec![1, 2]);
        assert_eq!(e.remote, Some(PATHS));
        assert!(i.wants(1) && i.wants(2));
        assert_eq!(i.told(1, NONE, &[1, 2]).remote, None, "node 2 still unknown");
        assert!(!i.wants(1));
        assert_eq!(i.told(2, NAMES, &[1, 2]).remote, Some(NAMES));
        assert!(i.wants(2));
        assert_eq!(i.told(2, NONE, &[1, 2]).remote, Some(NONE));
        // A new view forgets what was told.
        assert_eq!(i.new_view(&[1]).remote, Some(PATHS));
        assert!(i.wants(1));
    }

    #[test]
    fn a_rise_is_acknowledged_only_by_every_member_of_the_view() {
        let mut i = EventInterest::default();
        i.new_view(&[1, 2]);
        let e = i.set_mine(NAMES, 1, &[1, 2]);
        assert_eq!((e.tell, e.acked), (vec![1, 2], None));
        assert_eq!(i.ack(1, 1, &[1, 2]).acked, None);
        assert_eq!(i.ack(2, 0, &[1, 2]).acked, None, "an older number does not count");
        assert_eq!(i.ack(2, 1, &[1, 2]).acked, Some(1));
        // A view change before the acknowledgements: the new view's members must acknowledge.
        i.set_mine(PATHS, 2, &[1, 2]);
        i.ack(1, 2, &[1, 2]);
        let e = i.new_view(&[1, 2]);
        assert_eq!((e.tell, e.acked), (vec![1, 2], None));
        i.ack(1, 2, &[1, 2]);
        assert_eq!(i.ack(2, 2, &[1, 2]).acked, Some(2));
        // Alone: at once.
        assert_eq!(i.set_mine(NAMES, 3, &[]).acked, Some(3));
        assert_eq!(i.no_view().remote, Some(NONE));
    }
}
