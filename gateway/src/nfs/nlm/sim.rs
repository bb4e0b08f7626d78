//! Test-only: NLM's failover ordering on the real lock-table machines (the `locks` simulator:
//! three nodes, a simulated network and HA) with this module's real grace decisions. A client X
//! holds a lock through public address A1 of node 1; node 1 crashes; A1 moves to a survivor
//! (after HA's dead interval), which begins grace for A1 and tells X to reclaim; X reclaims
//! through A1, retrying while the table still holds the dead node's lock (as
//! `NlmService::take_reclaim` does). A second client Y asks for the same lock through A1 all
//! along, and (in the second test) a third client Z through A2 on another node.
//!
//! What must hold, checked after every step: the lock table never grants conflicting locks
//! (the `locks` invariant); Y never holds the lock (grace refuses it while X may reclaim, then
//! X holds it); X's reclaim is granted only after the dead node's lock left the table (the
//! ordering that keeps one lock from two clients), and X holds the lock in the end.
//!
//! With durable POSIX holdings (`LockService::set_posix_grace`, what the daemon sets to the
//! grace period), the dead node's lock stays in the table as an orphan of X until X's reclaim
//! adopts it, so Z, through an address that is not in grace, never gets it either. Without them (the third test), Z can take it in the gap.

use std::time::Duration;

use super::grace::{admit, Admit, Grace, Kind, Served};
use crate::locks::machine::Op;
use crate::locks::sim::{Rng, SimKey, World};
use crate::locks::{Owner, RangeLock, ORPHAN};

const F: SimKey = SimKey([7]);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The owners holding locks on F, over every live, licensed node's holdings and the orphans
/// kept by the nodes that decide for F.
fn holders(w: &World) -> Vec<Owner> {
    let mut v = Vec::new();
    for n in 0..w.nodes() {
        if !w.licensed(n) {
            continue;
        }
        if let Some(r) = w.machine(n).holdings().get(&F) {
            v.extend(r.ranges.iter().map(|l| l.owner));
        }
        if let Some(r) = w.machine(n).orphans_here().get(&F) {
            v.extend(r.ranges.iter().map(|l| l.owner));
        }
    }
    v.sort();
    v.dedup();
    v
}

fn lock(owner: Owner) -> Op {
    Op::Lock(RangeLock { owner, offset: 0, len: u64::MAX, exclusive: true })
}

/// One run; with `durable`, POSIX locks outlive their node for the grace period. Returns (when
/// the dead node's lock left the table, when X's reclaim was granted, whether Z ever held the
/// lock).
fn run(seed: u64, with_z: bool, durable: bool) -> (Duration, Duration, bool) {
    let mut rng = Rng::new(seed);
    let mut w = World::new(3);
    let (a1, a2): (std::net::IpAddr, std::net::IpAddr) = ("198.18.1.2".parse().unwrap(), "198.18.1.3".parse().unwrap());
    let grace_period = ms(4000);
    if durable {
        w.set_posix_grace(grace_period);
    }
    // Each node's NLM front end: which public addresses it serves, and its grace periods.
    let mut served: Vec<Served> = (0..3).map(|_| Served::new([a1, a2])).collect();
    let mut grace: Vec<Grace> = (0..3).map(|_| Grace::new(grace_period)).collect();
    served[1].update([a1]);
    served[2].update([a2]);
    // The cluster settles.
    while w.now < ms(3000) {
        w.step(ms(50));
    }
    let (x, y, z) = (1u128, 2u128, 3u128);
    // X locks through A1 (node 1).
    for _ in 0..40 {
        if holders(&w) == [Owner::Posix { node: 1, id: x }] {
            break;
        }
        w.ask(1, F, lock(Owner::Posix { node: 1, id: x }));
        w.step(ms(50));
    }
    assert_eq!(holders(&w), [Owner::Posix { node: 1, id: x }], "seed {seed}: X holds the lock");

    let crash_at = w.now + ms(rng.below(300));
    let takeover_at = crash_at + ms(1000 + rng.below(200));
    let notify_delay = ms(20 + rng.below(300));
    let mut crashed = false;
    let mut new_owner: Option<u16> = None;
    let mut notified_at: Option<Duration> = None;
    let (mut dead_lock_gone, mut reclaimed) = (None, None);
    let mut z_held = false;
    let end = takeover_at + grace_period + ms(3000);
    while w.now < end {
        if !crashed && w.now >= crash_at {
            w.crash(1);
            crashed = true;
        }
        if new_owner.is_none() && w.now >= takeover_at {
            // HA gives A1 to the lowest live node; its NLM serves it from now on.
            let n = 0u16;
            let change = served[n as usize].update([a1]);
            assert_eq!(change.gained, vec![a1]);
            // The monitor list names X: grace begins, X is told.
            grace[n as usize].begin(a1, w.now);
            new_owner = Some(n);
            notified_at = Some(w.now + notify_delay);
        }
        let hs = holders(&w);
        let dead_held =
            hs.contains(&Owner::Posix { node: 1, id: x }) || hs.contains(&Owner::Posix { node: ORPHAN, id: x });
        if crashed && dead_lock_gone.is_none() && !dead_held {
            dead_lock_gone = Some(w.now);
        }
        if let Some(n) = new_owner {
            let in_grace = grace[n as usize].in_grace(a1, w.now);
            // X, once told, reclaims through A1 until it holds the lock.
            if notified_at.is_some_and(|t| w.now >= t) && reclaimed.is_none() {
                if hs.contains(&Owner::Posix { node: n, id: x }) {
                    reclaimed = Some(w.now);
                } else if admit(in_grace, Kind::Take { reclaim: true }) == Admit::Serve {
                    w.ask(n, F, lock(Owner::Posix { node: n, id: x }));
                }
            }
            // Y asks through A1 all along: grace keeps it out of the table while it lasts.
            if admit(in_grace, Kind::Take { reclaim: false }) == Admit::Serve {
                w.ask(n, F, lock(Owner::Posix { node: n, id: y }));
            }
        }
        // Z asks through A2 (node 2, never in grace).
        if with_z && crashed && served[2].serves(a2) && !grace[2].in_grace(a2, w.now) {
            w.ask(2, F, lock(Owner::Posix { node: 2, id: z }));
        }
        w.step(ms(20 + rng.below(40)));
        let hs = holders(&w);
        assert!(
            !hs.iter().any(|o| matches!(o, Owner::Posix { id, .. } if *id == y)),
            "seed {seed}: Y got the lock at {:?} (holders {hs:?})",
            w.now
        );
        z_held |= hs.iter().any(|o| matches!(o, Owner::Posix { id, .. } if *id == z));
        for g in &mut grace {
            g.expire(w.now);
        }
    }
    let gone = dead_lock_gone.unwrap_or_else(|| panic!("seed {seed}: the dead node's lock never left the table"));
    if with_z && z_held {
        return (gone, reclaimed.unwrap_or(end), true);
    }
    let got = reclaimed.unwrap_or_else(|| panic!("seed {seed}: X never got its lock back (holders {:?})", holders(&w)));
    assert!(
        got >= gone,
        "seed {seed}: the reclaim was granted at {got:?}, before the dead node's lock went at {gone:?}"
    );
    assert_eq!(holders(&w), [Owner::Posix { node: 0, id: x }], "seed {seed}: X holds the lock at the end");
    (gone, got, false)
}

#[test]
fn a_reclaim_follows_the_dead_nodes_locks_and_grace_keeps_others_out() {
    let mut worst = Duration::ZERO;
    for seed in 0..40 {
        let (gone, got, _) = run(seed, false, false);
        worst = worst.max(got - gone);
    }
    println!("longest wait of a reclaim after the dead node's lock went: {worst:?}");
}

/// With durable POSIX holdings, a client of another address (not in grace) asking all along
/// never gets the lock: the dead node's lock stays an orphan of X until X reclaims it.
#[test]
fn no_client_of_another_address_takes_a_lock_before_its_reclaim() {
    for seed in 0..40 {
        let (_, _, z_held) = run(seed, true, true);
        assert!(!z_held, "seed {seed}: a client of another address took the lock before its reclaim");
    }
}

/// Without durable POSIX holdings (`set_posix_grace` zero), the gap exists: the dead node's
/// lock leaves the table before X reclaims, and Z, through an address not in grace, takes it
/// in some runs. This is why the daemon sets the posix grace to the grace period.
#[test]
fn without_durable_holdings_another_address_can_take_the_lock_in_the_gap() {
    let taken = (0..40).filter(|seed| run(*seed, true, false).2).count();
    println!("Z took the lock before X's reclaim in {taken} of 40 runs");
    assert!(taken > 0, "the gap never showed: this test no longer shows why durable holdings are needed");
}
