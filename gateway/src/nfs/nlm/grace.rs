//! Grace periods, one per server address, and which addresses this node serves: pure decisions
//! with no clock (the caller passes `now`) and no I/O.
//!
//! Rules:
//! - An address enters its grace period when this node starts serving it (a takeover, or the
//!   start of the process) *and* the shared volume lists clients that held locks through it:
//!   they are told to reclaim (SM_NOTIFY) and may do so until the period ends. An address
//!   without such clients needs no grace (nobody has anything to reclaim).
//! - In grace, only reclaims are served (LOCK, SHARE with `reclaim`); new LOCK, TEST, SHARE and
//!   NM_LOCK get DENIED_GRACE_PERIOD, so nobody takes what a client is about to reclaim. Out of
//!   grace, a reclaim is refused the same way (the lock may have been given away since), as
//!   Linux's lockd does. UNLOCK, CANCEL and FREE_ALL are always served: they only release.
//! - Grace is per address: a takeover of one public address puts no other address of the
//!   node in grace.
//! - When a node stops serving an address, its grace there ends with it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

/// What a request does, as far as grace is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// LOCK, NM_LOCK, SHARE: takes something.
    Take {
        /// The client says it held this before the server restarted.
        reclaim: bool,
    },
    /// TEST: would reveal (and race with) what is being reclaimed.
    Test,
    /// UNLOCK, CANCEL, UNSHARE, FREE_ALL: only releases.
    Release,
}

/// Whether to serve a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Go ahead.
    Serve,
    /// Answer DENIED_GRACE_PERIOD.
    DeniedGrace,
}

/// The decision table.
pub fn admit(in_grace: bool, kind: Kind) -> Admit {
    match (in_grace, kind) {
        (_, Kind::Release) => Admit::Serve,
        (true, Kind::Take { reclaim: true }) => Admit::Serve,
        (true, _) => Admit::DeniedGrace,
        (false, Kind::Take { reclaim: true }) => Admit::DeniedGrace,
        (false, _) => Admit::Serve,
    }
}

/// Grace periods per server address.
#[derive(Debug, Clone)]
pub struct Grace {
    period: Duration,
    until: BTreeMap<IpAddr, Duration>,
}

impl Grace {
    /// Periods of `period`.
    pub fn new(period: Duration) -> Grace {
        Grace { period, until: BTreeMap::new() }
    }

    /// The length of a grace period.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// `addr` enters (or restarts) its grace period at `now`.
    pub fn begin(&mut self, addr: IpAddr, now: Duration) {
        self.until.insert(addr, now + self.period);
    }

    /// Ends `addr`'s grace period at once; true if it was in one.
    pub fn end(&mut self, addr: IpAddr) -> bool {
        self.until.remove(&addr).is_some()
    }

    /// Whether `addr` is in its grace period at `now`.
    pub fn in_grace(&self, addr: IpAddr, now: Duration) -> bool {
        self.until.get(&addr).is_some_and(|u| now < *u)
    }

    /// Time left of `addr`'s grace period.
    pub fn remaining(&self, addr: IpAddr, now: Duration) -> Option<Duration> {
        self.until.get(&addr).and_then(|u| u.checked_sub(now)).filter(|d| !d.is_zero())
    }

    /// Addresses whose grace period is over at `now` (each reported once).
    pub fn expire(&mut self, now: Duration) -> Vec<IpAddr> {
        let over: Vec<IpAddr> = self.until.iter().filter(|(_, u)| now >= **u).map(|(a, _)| *a).collect();
        for a in &over {
            self.until.remove(a);
        }
        over
    }

    /// Addresses in grace at `now`.
    pub fn active(&self, now: Duration) -> Vec<IpAddr> {
        self.until.iter().filter(|(_, u)| now < **u).map(|(a, _)| *a).collect()
    }
}

/// The public addresses this node serves, as HA assigns them.
#[derive(Debug, Clone, Default)]
pub struct Served {
    public: BTreeSet<IpAddr>,
    owned: BTreeSet<IpAddr>,
}

/// What changed since the last look.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Change {
    /// Addresses this node now serves that it did not (takeovers).
    pub gained: Vec<IpAddr>,
    /// Addresses it no longer serves (releases).
    pub lost: Vec<IpAddr>,
}

impl Served {
    /// The cluster's public addresses (any other address, a node's own or a single server's,
    /// is always this node's).
    pub fn new(public: impl IntoIterator<Item = IpAddr>) -> Served {
        Served { public: public.into_iter().map(|a| a.to_canonical()).collect(), owned: BTreeSet::new() }
    }

    /// HA says this node now holds `owned`.
    pub fn update(&mut self, owned: impl IntoIterator<Item = IpAddr>) -> Change {
        let now: BTreeSet<IpAddr> =
            owned.into_iter().map(|a| a.to_canonical()).filter(|a| self.public.contains(a)).collect();
        let gained = now.difference(&self.owned).copied().collect();
        let lost = self.owned.difference(&now).copied().collect();
        self.owned = now;
        Change { gained, lost }
    }

    /// Whether `addr` is one of the cluster's public addresses.
    pub fn is_public(&self, addr: IpAddr) -> bool {
        self.public.contains(&addr.to_canonical())
    }

    /// Whether this node serves locks on `addr` now.
    pub fn serves(&self, addr: IpAddr) -> bool {
        let a = addr.to_canonical();
        !self.public.contains(&a) || self.owned.contains(&a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_decision_table() {
        use Admit::*;
        use Kind::*;
        let table = [
            // in grace, kind, decision
            (true, Take { reclaim: true }, Serve),
            (true, Take { reclaim: false }, DeniedGrace),
            (true, Test, DeniedGrace),
            (true, Release, Serve),
            (false, Take { reclaim: true }, DeniedGrace),
            (false, Take { reclaim: false }, Serve),
            (false, Test, Serve),
            (false, Release, Serve),
        ];
        for (g, k, want) in table {
            assert_eq!(admit(g, k), want, "in grace {g}, {k:?}");
        }
    }

    #[test]
    fn grace_is_per_address_and_ends_on_time() {
        let s = Duration::from_secs;
        let (a, b) = (ip("198.18.1.1"), ip("198.18.1.2"));
        let mut g = Grace::new(s(90));
        g.begin(a, s(10));
        assert!(g.in_grace(a, s(10)) && g.in_grace(a, s(99)));
        assert!(!g.in_grace(b, s(50)), "another address is not in grace");
        assert_eq!(g.remaining(a, s(40)), Some(s(60)));
        assert_eq!(g.active(s(50)), vec![a]);
        assert!(g.expire(s(99)).is_empty());
        assert!(!g.in_grace(a, s(100)));
        assert_eq!(g.expire(s(100)), vec![a]);
        assert!(g.expire(s(101)).is_empty(), "reported once");
        g.begin(b, s(0));
        assert!(g.end(b) && !g.in_grace(b, s(1)) && !g.end(b));
    }

    #[test]
    fn served_addresses_follow_ha() {
        let (a, b, own) = (ip("198.18.1.1"), ip("198.18.1.2"), ip("198.18.0.1"));
        let mut s = Served::new([a, b]);
        assert!(s.serves(own), "a node's own address is always its own");
        assert!(!s.serves(a));
        assert_eq!(s.update([a, own]), Change { gained: vec![a], lost: vec![] });
        assert!(s.serves(a) && !s.serves(b));
        assert_eq!(s.update([a]), Change::default());
        assert_eq!(s.update([b]), Change { gained: vec![b], lost: vec![a] });
        assert!(s.is_public(ip("::ffff:198.18.1.2")) && s.serves(ip("::ffff:198.18.1.2")));
    }
}
