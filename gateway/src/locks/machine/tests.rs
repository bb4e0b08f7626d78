use std::time::Duration;

use super::*;
use crate::locks::record::{flags, CachingRequest};
use crate::locks::sim::{sim_name, Rng, SimKey, World};
use crate::locks::types::{access, caching, share};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn open_req(w: &mut World, n: u16, acc: u32, sh: u32, caching: CachingRequest) -> OpenRequest {
    OpenRequest {
        key: w.key(n),
        access: acc,
        share: sh,
        caching,
        overwrite: false,
        is_dir: false,
        flags: flags::HANDLE,
    }
}

/// Runs until every node is licensed and ready.
fn settle(w: &mut World) {
    for _ in 0..400 {
        w.step(ms(10));
        if (0..w.nodes()).all(|n| !w.alive(n) || (w.licensed(n) && w.machine(n).is_ready())) {
            return;
        }
    }
    panic!("the cluster did not settle");
}

/// Runs until the dead node `gone` is out of every live node's view and they are ready.
fn settle_without(w: &mut World, gone: u16) {
    for _ in 0..600 {
        w.step(ms(10));
        let live: Vec<u16> = (0..w.nodes()).filter(|n| w.alive(*n)).collect();
        if live.iter().all(|n| {
            w.licensed(*n)
                && w.machine(*n).is_ready()
                && w.machine(*n).view().is_some_and(|v| !v.members.contains(&gone))
        }) {
            return;
        }
    }
    panic!("the cluster did not settle without node {gone}");
}

fn drain(w: &mut World) {
    for _ in 0..500 {
        w.step(ms(10));
        if w.pending() == 0 {
            return;
        }
    }
    panic!("{} requests never answered", w.pending());
}

#[test]
fn a_single_node_decides_alone() {
    let mut m: Machine<SimKey> = Machine::new(Config::single());
    m.handle(ms(0), Input::Ha(HaInput { leader: Some(0), ok: true }));
    let out = m.handle(ms(1), Input::Tick);
    assert!(out.contains(&Output::Licensed(true)), "{out:?}");
    assert!(m.is_ready());
    let f = SimKey([1]);
    let key = OpenKey { node: 0, seq: 1 };
    let req = OpenRequest {
        key,
        access: access::READ_DATA,
        share: 0,
        caching: CachingRequest::None,
        overwrite: false,
        is_dir: false,
        flags: flags::HANDLE,
    };
    let out = m.handle(ms(2), Input::Request { rid: 7, file: f.clone(), op: Op::Open(req.clone()) });
    assert!(out.iter().any(|o| matches!(o, Output::Reply { rid: 7, outcome: Ok(Answer::Opened(_)) })), "{out:?}");
    assert!(out.iter().all(|o| !matches!(o, Output::Send { .. })), "no messages on a single node");
    let again = OpenRequest { key: OpenKey { node: 0, seq: 2 }, ..req };
    let out = m.handle(ms(3), Input::Request { rid: 8, file: f.clone(), op: Op::Open(again) });
    assert!(out.contains(&Output::Reply { rid: 8, outcome: Err(Conflict::Sharing) }));
    assert!(m.local_record(&f).is_some());
}

#[test]
fn share_modes_hold_across_nodes_both_ways() {
    let mut w = World::new(3);
    settle(&mut w);
    for (a, b) in [(0u16, 1u16), (2, 0), (1, 2)] {
        let f = SimKey([10 + a as u8]);
        let ra = open_req(&mut w, a, access::READ_DATA, 0, CachingRequest::None);
        w.ask(a, f.clone(), Op::Open(ra));
        drain(&mut w);
        let rb = open_req(&mut w, b, access::READ_DATA, share::ALL, CachingRequest::None);
        let before = w.stats.refused;
        w.ask(b, f.clone(), Op::Open(rb));
        drain(&mut w);
        assert_eq!(w.stats.refused, before + 1, "node {b}'s open of a file node {a} holds exclusively is refused");
    }
}

#[test]
fn a_file_used_through_one_node_costs_one_round_trip_then_none() {
    let mut w = World::new(3);
    settle(&mut w);
    // A file whose home is another node.
    let f = (0..=255u8).map(|b| SimKey([b])).find(|k| home_of(k, &[0, 1, 2]) == Some(1)).unwrap();
    let m0 = w.stats.file_messages;
    let r = open_req(&mut w, 0, access::READ_DATA | access::WRITE_DATA, share::READ, CachingRequest::None);
    let key = r.key;
    w.ask(0, f.clone(), Op::Open(r));
    drain(&mut w);
    let first = w.stats.file_messages - m0;
    assert_eq!(first, 2, "first open: the request, then the answer carrying the delegation");
    assert!(w.machine(0).local_record(&f).is_some(), "delegated with the answer");
    let m1 = w.stats.file_messages;
    w.ask(0, f.clone(), Op::Lock(RangeLock { owner: Owner::Open(key), offset: 0, len: 10, exclusive: true }));
    w.ask(0, f.clone(), Op::Close(key));
    let r2 = open_req(&mut w, 0, access::READ_DATA, share::ALL, CachingRequest::None);
    w.ask(0, f.clone(), Op::Open(r2));
    drain(&mut w);
    assert_eq!(w.stats.file_messages, m1, "delegated: lock, close and open again cost no message");
    assert!(w.machine(0).local_record(&f).is_some(), "delegated: decided locally");
    // Another node's open takes the record back (recall) and both see each other.
    let r3 = open_req(&mut w, 2, access::READ_DATA, 0, CachingRequest::None);
    let before = w.stats.refused;
    w.ask(2, f.clone(), Op::Open(r3));
    drain(&mut w);
    assert_eq!(w.stats.refused, before + 1, "node 0 reads the file: node 2's open sharing nothing is refused");
}

/// Records kept after their files were closed (delegated, idle) cost the tick nothing: it looks
/// only at files with break timers or orphans running, which a break adds until its
/// acknowledgement.
#[test]
fn the_tick_looks_only_at_files_with_timers_running() {
    let mut w = World::new(3);
    settle(&mut w);
    for b in 0..60u8 {
        let r = open_req(&mut w, 0, access::READ_DATA | access::WRITE_DATA, share::ALL, CachingRequest::None);
        let key = r.key;
        w.ask(0, SimKey([b]), Op::Open(r));
        drain(&mut w);
        w.ask(0, SimKey([b]), Op::Close(key));
        drain(&mut w);
    }
    w.step(ms(50));
    assert!(w.machine(0).record_count().1 > 0, "node 0 keeps the delegated records: {:?}", w.machine(0).record_count());
    assert!((0..3).all(|n| w.machine(n).watched() == 0), "no file has a timer running");
    // A lease break starts a timer where the file is decided, until its acknowledgement.
    let f = SimKey([200]);
    let lease = LeaseId { client: [1; 16], key: [2; 16] };
    let caching = CachingRequest::Lease { id: lease, state: caching::RWH, version: 2, epoch: 0, parent: None };
    let a = open_req(&mut w, 0, access::READ_DATA | access::WRITE_DATA, share::ALL, caching);
    w.ask(0, f.clone(), Op::Open(a));
    drain(&mut w);
    let b = open_req(&mut w, 1, access::READ_DATA | access::WRITE_DATA, share::ALL, CachingRequest::None);
    w.ask(1, f.clone(), Op::Open(b));
    w.step(ms(5));
    let watching = (0..3).map(|n| w.machine(n).watched()).sum::<usize>();
    assert_eq!(watching, 1, "the break's timer is watched where the file is decided");
    drain(&mut w);
    w.step(ms(50));
    assert!((0..3).all(|n| w.machine(n).watched() == 0), "acknowledged: nothing to watch");
}

/// Change events go only to the nodes whose watchers want them; a node relies on that only
/// after every other member acknowledged its interest, and a new view asks again.
#[test]
fn change_events_go_only_to_nodes_that_want_them() {
    use crate::locks::interest::{NAMES, NONE};
    let mut w = World::new(3);
    settle(&mut w);
    let e0 = w.stats.events;
    w.notify(0, b"n1".to_vec());
    drain(&mut w);
    w.step(ms(20));
    assert_eq!(w.stats.events, e0, "nobody watches: no event sent");
    w.interest(1, NAMES, 1);
    assert_eq!(w.interest_acked.get(&1), None, "not acknowledged before the others heard");
    w.step(ms(20));
    assert_eq!(w.interest_acked.get(&1), Some(&1), "both others acknowledged");
    w.notify(0, b"n2".to_vec());
    w.notify(2, b"n3".to_vec());
    w.step(ms(20));
    assert_eq!(w.stats.events, e0 + 2, "node 1 gets node 0's and node 2's changes, nobody else");
    // A view change: node 2 restarts; until it hears, node 0 treats it as wanting everything,
    // and node 1 tells its interest again.
    w.crash(2);
    w.restart(2);
    settle(&mut w);
    w.step(ms(50));
    let e1 = w.stats.events;
    w.notify(0, b"n4".to_vec());
    w.step(ms(20));
    assert_eq!(w.stats.events, e1 + 1, "after the new view, only node 1 still wants changes");
    w.interest(1, NONE, 2);
    w.step(ms(20));
    let e2 = w.stats.events;
    w.notify(0, b"n5".to_vec());
    w.step(ms(20));
    assert_eq!(w.stats.events, e2, "node 1 stopped watching");
}

#[test]
fn a_lease_break_crosses_nodes_and_the_second_open_waits_for_the_ack() {
    let mut w = World::new(3);
    settle(&mut w);
    let f = SimKey([77]);
    let lease = LeaseId { client: [1; 16], key: [1; 16] };
    let a = open_req(
        &mut w,
        0,
        access::READ_DATA | access::WRITE_DATA,
        share::ALL,
        CachingRequest::Lease { id: lease, state: caching::RWH, version: 2, epoch: 0, parent: None },
    );
    w.ask(0, f.clone(), Op::Open(a));
    drain(&mut w);
    let held = w.machine(0).holdings();
    assert_eq!(held[&f].leases[0].state, caching::RWH);
    let b = open_req(&mut w, 2, access::READ_DATA, share::ALL, CachingRequest::None);
    let breaks0 = w.stats.breaks;
    w.ask(2, f.clone(), Op::Open(b));
    drain(&mut w);
    assert!(w.stats.breaks > breaks0, "node 0's client was told to break");
    let held = w.machine(0).holdings();
    assert_eq!(held[&f].leases[0].state & caching::W, 0, "W given up (acknowledged or timed out)");
    assert_eq!(w.machine(2).holdings()[&f].opens.len(), 1, "the second open went through after the break");
}

#[test]
fn a_dead_nodes_locks_are_released_and_a_cut_off_node_stops() {
    let mut w = World::new(3);
    settle(&mut w);
    let f = SimKey([5]);
    let owner = Owner::Posix { node: 1, id: 9 };
    w.ask(1, f.clone(), Op::Lock(RangeLock { owner, offset: 0, len: 100, exclusive: true }));
    drain(&mut w);
    let other = Owner::Posix { node: 2, id: 10 };
    let refused = w.stats.refused;
    w.ask(2, f.clone(), Op::Lock(RangeLock { owner: other, offset: 50, len: 10, exclusive: true }));
    drain(&mut w);
    assert_eq!(w.stats.refused, refused + 1);
    // Cut node 1 off: it must stop (lose its license) before the others grant its range.
    w.isolate(1);
    let t0 = w.now;
    let mut stopped = None;
    let mut granted_at = None;
    for _ in 0..400 {
        w.step(ms(10));
        if stopped.is_none() && !w.licensed(1) {
            stopped = Some(w.now - t0);
        }
        if granted_at.is_none() && w.licensed(2) && w.machine(2).is_ready() {
            let g = w.stats.granted;
            w.ask(2, f.clone(), Op::Lock(RangeLock { owner: other, offset: 50, len: 10, exclusive: true }));
            for _ in 0..20 {
                w.step(ms(5));
            }
            if w.stats.granted > g {
                granted_at = Some(w.now - t0);
                break;
            }
        }
    }
    let (stopped, granted_at) = (stopped.expect("node 1 stopped"), granted_at.expect("node 2 got the lock"));
    println!("cut-off node stopped after {stopped:?}; its lock was granted elsewhere after {granted_at:?}");
    assert!(stopped < granted_at, "fenced before reuse");
    assert!(granted_at < ms(3000), "released within the takeover time and a margin");
}

/// A leader that loses leadership for a moment (its recovery-lock check timed out) and gets it
/// back with the same members issues a view of its own again and is licensed again (found on
/// real nodes: it stayed unlicensed forever, holding every request on its files).
#[test]
fn a_leader_that_regains_leadership_is_licensed_again() {
    let mut w = World::new(3);
    settle(&mut w);
    let leader = w.machine(0).view().map(|v| v.leader).unwrap();
    w.flap_leadership(leader);
    settle(&mut w);
    assert!(w.licensed(leader));
    let f = (0..=255u8).map(|b| SimKey([b])).find(|k| home_of(k, &[0, 1, 2]) == Some(leader)).unwrap();
    let other = (leader + 1) % 3;
    let r = open_req(&mut w, other, access::READ_DATA, share::ALL, CachingRequest::None);
    let g = w.stats.granted;
    w.ask(other, f, Op::Open(r));
    drain(&mut w);
    assert_eq!(w.stats.granted, g + 1, "a request on the leader's file is answered");
}

/// The first `n` files whose home and backup are not `avoid`.
fn files_away_from(avoid: u16, members: &[u16], n: usize) -> Vec<SimKey> {
    (0..=255u8)
        .map(|b| SimKey([b]))
        .filter(|k| {
            let home = home_of(k, members).unwrap();
            let rest: Vec<u16> = members.iter().copied().filter(|m| *m != home).collect();
            home != avoid && home_of(k, &rest) != Some(avoid)
        })
        .take(n)
        .collect()
}

/// A file whose home and backup are not `avoid`.
fn file_away_from(avoid: u16, members: &[u16]) -> SimKey {
    files_away_from(avoid, members, 1).remove(0)
}

fn outcome_count(w: &World) -> (u64, u64) {
    (w.stats.granted, w.stats.refused)
}

/// A durable open outlives its node: nobody else gets the file meanwhile, its client reclaims
/// it (with its lock) through another node, and an unreclaimed one expires.
#[test]
fn a_durable_open_outlives_its_node_and_is_reclaimed_elsewhere() {
    for home_side in [false, true] {
        let mut w = World::new(3);
        settle(&mut w);
        // The durable open's node is the file's home in one run, neither home nor backup in the other.
        let f = if home_side {
            (0..=255u8).map(|b| SimKey([b])).find(|k| home_of(k, &[0, 1, 2]) == Some(1)).unwrap()
        } else {
            file_away_from(1, &[0, 1, 2])
        };
        let a = open_req(&mut w, 1, access::READ_DATA | access::WRITE_DATA, share::READ, CachingRequest::None);
        let key = a.key;
        w.ask(1, f.clone(), Op::Open(a));
        w.ask(1, f.clone(), Op::Lock(RangeLock { owner: Owner::Open(key), offset: 0, len: 10, exclusive: true }));
        w.ask(1, f.clone(), Op::SetDurable { key, ms: 5000 });
        drain(&mut w);
        assert_eq!(outcome_count(&w).1, 0);
        w.crash(1);
        settle_without(&mut w, 1);
        let (_, refused) = outcome_count(&w);
        let b = open_req(&mut w, 2, access::READ_DATA | access::WRITE_DATA, share::ALL, CachingRequest::None);
        w.ask(2, f.clone(), Op::Open(b));
        drain(&mut w);
        assert_eq!(outcome_count(&w).1, refused + 1, "home_side={home_side}: the orphan's share mode still holds");
        // Its client comes back through node 0.
        let new = w.key(0);
        w.ask(0, f.clone(), Op::Reclaim { old: key, new });
        drain(&mut w);
        let held = w.machine(0).holdings();
        let r = held.get(&f).expect("node 0 holds the reclaimed open");
        assert!(r.opens.iter().any(|o| o.key == new && !o.orphan), "{r:?}");
        assert!(r.ranges.iter().any(|l| l.owner == Owner::Open(new)), "its lock followed: {r:?}");
        // A second reclaim of the same old open finds nothing.
        let (_, refused) = outcome_count(&w);
        let other = w.key(2);
        w.ask(2, f.clone(), Op::Reclaim { old: key, new: other });
        drain(&mut w);
        assert_eq!(outcome_count(&w).1, refused + 1);
    }
    // Never reclaimed: it expires and the file is free again.
    let mut w = World::new(3);
    settle(&mut w);
    let f = file_away_from(1, &[0, 1, 2]);
    let a = open_req(&mut w, 1, access::READ_DATA | access::WRITE_DATA, 0, CachingRequest::None);
    let key = a.key;
    w.ask(1, f.clone(), Op::Open(a));
    w.ask(1, f.clone(), Op::SetDurable { key, ms: 1000 });
    drain(&mut w);
    w.crash(1);
    settle_without(&mut w, 1);
    let t0 = w.now;
    let mut free_after = None;
    for _ in 0..100 {
        let (granted, _) = outcome_count(&w);
        let b = open_req(&mut w, 2, access::READ_DATA, share::ALL, CachingRequest::None);
        let k = b.key;
        w.ask(2, f.clone(), Op::Open(b));
        drain(&mut w);
        if outcome_count(&w).0 > granted {
            free_after = Some(w.now - t0);
            w.ask(2, f.clone(), Op::Close(k));
            break;
        }
        w.step(ms(50));
    }
    let free_after = free_after.expect("the orphan expired");
    assert!(free_after >= ms(900) && free_after < ms(3000), "expired after {free_after:?}");
}

/// A lease whose holder cannot be reached does not make a conflicting open wait out the break
/// timeout (10 s here): a durable open's lease (an orphan once its node is gone) is broken at
/// once and the open stays for its reclaim; a plain open's lease goes with its node. The
/// conflicting open is answered within the takeover time, whether it was asked after the node
/// was gone or while its break was in flight to the dying node.
#[test]
fn a_lease_whose_holder_is_gone_is_broken_at_once() {
    for (durable, in_flight) in [(true, false), (true, true), (false, true)] {
        let mut w = World::new(3);
        w.set_break_timeout(Duration::from_secs(10));
        settle(&mut w);
        let f = file_away_from(1, &[0, 1, 2]);
        let lease = LeaseId { client: [3; 16], key: [4; 16] };
        let rw = access::READ_DATA | access::WRITE_DATA;
        let want = CachingRequest::Lease { id: lease, state: caching::RWH, version: 2, epoch: 0, parent: None };
        let a = open_req(&mut w, 1, rw, share::ALL, want);
        let key = a.key;
        w.ask(1, f.clone(), Op::Open(a));
        if durable {
            w.ask(1, f.clone(), Op::SetDurable { key, ms: 60_000 });
        }
        drain(&mut w);
        let (granted, _) = outcome_count(&w);
        let b = open_req(&mut w, 2, rw, share::ALL, CachingRequest::None);
        let t0 = w.now;
        if in_flight {
            // The break goes out to node 1, which dies before its client can answer.
            w.ask(2, f.clone(), Op::Open(b.clone()));
            w.crash(1);
        } else {
            w.crash(1);
            settle_without(&mut w, 1);
            w.ask(2, f.clone(), Op::Open(b.clone()));
        }
        while outcome_count(&w).0 == granted && w.now - t0 < Duration::from_secs(20) {
            w.step(ms(10));
        }
        let took = w.now - t0;
        println!("durable={durable} in_flight={in_flight}: the second open answered after {took:?}");
        assert_eq!(outcome_count(&w).0, granted + 1, "the second open was granted");
        assert!(took < Duration::from_secs(4), "answered after {took:?}, not after the 10 s break timeout");
        let r = w.machine(2).holdings()[&f].clone();
        assert!(r.opens.iter().any(|o| o.key == b.key), "{r:?}");
        drain(&mut w);
        // The orphan stays for its reclaim, without write caching; a plain open is gone.
        let home = home_of(&f, &[0, 2]).unwrap();
        let rec = w.machine(home).decided()[&f].clone();
        let orphan = rec.opens.iter().find(|o| o.key == key);
        assert_eq!(orphan.is_some(), durable, "{rec:?}");
        if durable {
            let l = rec.lease(&lease).expect("the orphan keeps its lease");
            assert_eq!(l.state & caching::W, 0, "{l:?}");
            assert!(l.told.is_none(), "{l:?}");
        }
    }
}

/// A durable open of a live node is refused to a reclaim through another node until its node
/// hands it over (its client moved with the address); then it moves with its lock, and an
/// ordinary open cannot be handed over.
#[test]
fn a_live_node_hands_a_durable_open_over() {
    let mut w = World::new(3);
    settle(&mut w);
    let f = file_away_from(1, &[0, 1, 2]);
    let a = open_req(&mut w, 1, access::READ_DATA | access::WRITE_DATA, share::READ, CachingRequest::None);
    let key = a.key;
    w.ask(1, f.clone(), Op::Open(a));
    w.ask(1, f.clone(), Op::Lock(RangeLock { owner: Owner::Open(key), offset: 0, len: 10, exclusive: true }));
    w.ask(1, f.clone(), Op::SetDurable { key, ms: 5000 });
    drain(&mut w);
    let (_, refused) = outcome_count(&w);
    let new = w.key(0);
    w.ask(0, f.clone(), Op::Reclaim { old: key, new });
    drain(&mut w);
    assert_eq!(outcome_count(&w).1, refused + 1, "a live open is not taken from its node");
    w.ask(1, f.clone(), Op::SetDurable { key, ms: crate::locks::record::HAND_OVER_MS });
    drain(&mut w);
    // Still conflicting until reclaimed.
    let (_, refused) = outcome_count(&w);
    let b = open_req(&mut w, 2, access::READ_DATA | access::WRITE_DATA, share::ALL, CachingRequest::None);
    w.ask(2, f.clone(), Op::Open(b));
    drain(&mut w);
    assert_eq!(outcome_count(&w).1, refused + 1, "a handed-over open keeps its share mode");
    w.ask(0, f.clone(), Op::Reclaim { old: key, new });
    drain(&mut w);
    let held = w.machine(0).holdings();
    let r = held.get(&f).expect("node 0 holds the reclaimed open");
    assert!(r.opens.iter().any(|o| o.key == new && o.flags & flags::HANDED_OVER == 0), "{r:?}");
    assert!(r.ranges.iter().any(|l| l.owner == Owner::Open(new)), "its lock followed: {r:?}");
    // An ordinary open is not handed over.
    let (_, refused) = outcome_count(&w);
    let c = open_req(&mut w, 2, access::READ_DATA, share::ALL, CachingRequest::None);
    let ck = c.key;
    w.ask(2, f.clone(), Op::Open(c));
    w.ask(2, f.clone(), Op::SetDurable { key: ck, ms: crate::locks::record::HAND_OVER_MS });
    drain(&mut w);
    assert_eq!(outcome_count(&w).1, refused + 1);
}

/// With a POSIX grace (NLM), a dead node's POSIX locks stay for their owner: another owner is
/// refused, the same owner adopts them through another node, and the end of grace drops the rest.
#[test]
fn posix_locks_outlive_their_node_for_the_grace() {
    let mut w = World::new(3);
    w.set_posix_grace(ms(60_000));
    settle(&mut w);
    let away = files_away_from(1, &[0, 1, 2], 3);
    let (f, g, h) = (away[0].clone(), away[1].clone(), away[2].clone());
    for file in [&f, &g, &h] {
        let l = RangeLock { owner: Owner::Posix { node: 1, id: 7 }, offset: 0, len: 100, exclusive: true };
        w.ask(1, file.clone(), Op::Lock(l));
    }
    drain(&mut w);
    w.crash(1);
    settle_without(&mut w, 1);
    let (_, refused) = outcome_count(&w);
    let other = RangeLock { owner: Owner::Posix { node: 2, id: 8 }, offset: 10, len: 1, exclusive: true };
    w.ask(2, f.clone(), Op::Lock(other));
    drain(&mut w);
    assert_eq!(outcome_count(&w).1, refused + 1, "the orphaned lock still holds");
    // The owner reclaims through node 0.
    let mine = RangeLock { owner: Owner::Posix { node: 0, id: 7 }, offset: 0, len: 100, exclusive: true };
    w.ask(0, f.clone(), Op::Lock(mine));
    drain(&mut w);
    let held = w.machine(0).holdings();
    assert_eq!(held[&f].ranges, vec![mine], "adopted, merged with the reclaim");
    // The owner's unlock through another node reaches its orphan on `h` at once.
    let (granted, _) = outcome_count(&w);
    w.ask(2, h.clone(), Op::Unlock { owner: Owner::Posix { node: 2, id: 7 }, offset: 0, len: 100 });
    w.ask(2, h.clone(), Op::Lock(other));
    drain(&mut w);
    assert_eq!(outcome_count(&w).0, granted + 2, "unlocked through node 2, then free for another owner");
    // Grace ends: the unreclaimed lock on `g` goes.
    let (granted, _) = outcome_count(&w);
    w.end_grace_on(0);
    for _ in 0..20 {
        w.step(ms(10));
    }
    w.ask(2, g.clone(), Op::Lock(other));
    drain(&mut w);
    assert_eq!(outcome_count(&w).0, granted + 1, "orphan dropped at the end of grace");
}

/// Random operations with random faults; the invariant is checked after every step by the
/// simulator. Then the network heals: every request is answered and the cluster settles.
#[test]
fn random_faults_never_break_the_invariant() {
    let seeds: u64 = std::env::var("NASGW_SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(40);
    let first: u64 = std::env::var("NASGW_SIM_FIRST").ok().and_then(|s| s.parse().ok()).unwrap_or(0);
    for seed in first..first + seeds {
        let mut rng = Rng::new(seed + 1);
        let n = 3 + (seed % 3) as u16;
        let mut w = World::new(n);
        if seed % 2 == 1 {
            w.set_posix_grace(ms(1500));
        }
        settle(&mut w);
        for step in 0..600 {
            for _ in 0..rng.below(4) {
                w.random_op(&mut rng, 4);
            }
            match rng.below(1000) {
                0..=4 => {
                    let a = rng.below(u64::from(n)) as u16;
                    let b = rng.below(u64::from(n)) as u16;
                    if a != b {
                        w.link_down(a, b);
                    }
                }
                5..=7 => w.isolate(rng.below(u64::from(n)) as u16),
                8..=14 => w.heal(),
                15..=16 => {
                    let v = rng.below(u64::from(n)) as u16;
                    if w.alive(v) {
                        w.crash(v);
                    }
                }
                21..=22 => {
                    // HA's recovery-lock check times out for a moment on the leader.
                    if let Some(l) =
                        (0..n).find(|v| w.alive(*v) && w.machine(*v).view().is_some_and(|x| x.leader == *v))
                    {
                        w.flap_leadership(l);
                    }
                }
                17..=20 => {
                    for v in 0..n {
                        if !w.alive(v) {
                            w.restart(v);
                        }
                    }
                }
                _ => {}
            }
            w.step(ms(1 + rng.below(40)));
            let _ = step;
        }
        for v in 0..n {
            if !w.alive(v) {
                w.restart(v);
            }
        }
        w.heal();
        for _ in 0..1500 {
            w.step(ms(10));
            if w.pending() == 0 && w.quiet() && (0..n).all(|v| w.licensed(v) && w.machine(v).is_ready()) {
                break;
            }
        }
        assert_eq!(w.pending(), 0, "seed {seed}: requests left unanswered after healing");
        assert!((0..n).all(|v| w.licensed(v)), "seed {seed}: a node never came back");
        w.check_opens_match();
        println!("seed {seed}: {n} nodes, {:?}", w.stats);
    }
}

/// The daemon takes clients' requests from its first second, before the nodes have formed a
/// view: what a client was granted and then closed in that time must leave nothing behind (an
/// open kept for nobody refuses everyone else).
#[test]
fn requests_before_the_first_view_leave_no_phantom_opens() {
    let seeds: u64 = std::env::var("NASGW_SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(40);
    for seed in 0..seeds {
        let mut rng = Rng::new(seed + 7001);
        let n = 2 + (seed % 2) as u16;
        let mut w = World::new(n);
        for _ in 0..200 {
            for _ in 0..rng.below(3) {
                w.random_op(&mut rng, 3);
            }
            w.step(ms(1 + rng.below(20)));
        }
        for _ in 0..1500 {
            w.step(ms(10));
            if w.pending() == 0 && w.quiet() && (0..n).all(|v| w.licensed(v) && w.machine(v).is_ready()) {
                break;
            }
        }
        assert_eq!(w.pending(), 0, "seed {seed}: requests left unanswered");
        w.check_opens_match();
        println!("seed {seed}: {n} nodes, {:?}", w.stats);
    }
}

#[test]
fn a_write_waits_until_a_sync_breaks_lease_acknowledged_its_break() {
    use crate::locks::record::SYNC_BREAKS;
    let mut m: Machine<SimKey> = Machine::new(Config::single());
    m.handle(ms(0), Input::Ha(HaInput { leader: Some(0), ok: true }));
    m.handle(ms(1), Input::Tick);
    let f = SimKey([3]);
    let lease = LeaseId { client: [9; 16], key: [9; 16] };
    let req = OpenRequest {
        key: OpenKey { node: 0, seq: 1 },
        access: access::READ_DATA,
        share: share::ALL,
        caching: CachingRequest::Lease { id: lease, state: caching::R, version: SYNC_BREAKS, epoch: 0, parent: None },
        overwrite: false,
        is_dir: false,
        flags: flags::HANDLE,
    };
    let out = m.handle(ms(2), Input::Request { rid: 1, file: f.clone(), op: Op::Open(req) });
    assert!(out.iter().any(|o| matches!(o, Output::Reply { rid: 1, outcome: Ok(Answer::Opened(_)) })), "{out:?}");
    // A write: the R lease's break needs an acknowledgement, and the write waits for it.
    let out = m.handle(ms(3), Input::Request { rid: 2, file: f.clone(), op: Op::Contend { by: None } });
    let told =
        out.iter().any(|o| matches!(o, Output::Break { notice, .. } if notice.lease == lease && notice.ack_required));
    assert!(told, "the lease's break asks for an acknowledgement: {out:?}");
    assert!(!out.iter().any(|o| matches!(o, Output::Reply { rid: 2, .. })), "answered before the ack: {out:?}");
    let out = m.handle(ms(4), Input::Request { rid: 3, file: f.clone(), op: Op::AckBreak { lease, state: 0 } });
    assert!(out.iter().any(|o| matches!(o, Output::Reply { rid: 2, outcome: Ok(Answer::Done) })), "{out:?}");
    // An ordinary R lease's break is a notification: the write does not wait.
    let plain = LeaseId { client: [8; 16], key: [8; 16] };
    let req = OpenRequest {
        key: OpenKey { node: 0, seq: 2 },
        access: access::READ_DATA,
        share: share::ALL,
        caching: CachingRequest::Lease { id: plain, state: caching::R, version: 2, epoch: 0, parent: None },
        overwrite: false,
        is_dir: false,
        flags: flags::HANDLE,
    };
    m.handle(ms(5), Input::Request { rid: 4, file: f.clone(), op: Op::Open(req) });
    let out = m.handle(ms(6), Input::Request { rid: 5, file: f, op: Op::Contend { by: None } });
    assert!(out.iter().any(|o| matches!(o, Output::Reply { rid: 5, outcome: Ok(Answer::Done) })), "{out:?}");
}

/// Issue 12's rename gap: a file renamed through one node while a client of another node has it
/// open. The other node's copy of the record names the file anew before the rename is
/// answered, and the last close there, with delete-on-close, is told to delete the file by its
/// new name; also when the file's home died in between and the record was rebuilt from what the
/// holders reported.
#[test]
fn a_rename_through_one_node_names_the_file_for_every_holder() {
    for home_dies in [false, true] {
        let mut w = World::new(3);
        settle(&mut w);
        // The home is node 2: neither the renamer (1) nor the deleter (0).
        let f = (0..=255u8).map(|b| SimKey([b])).find(|k| home_of(k, &[0, 1, 2]) == Some(2)).unwrap();
        let a = open_req(&mut w, 0, access::READ_DATA | access::DELETE, share::ALL, CachingRequest::None);
        let ka = a.key;
        w.ask(0, f.clone(), Op::Open(a));
        let b = open_req(&mut w, 1, access::READ_DATA | access::DELETE, share::ALL, CachingRequest::None);
        let kb = b.key;
        w.ask(1, f.clone(), Op::Open(b));
        drain(&mut w);
        w.ask(1, f.clone(), Op::MayAlso { key: Some(kb), access: access::DELETE, handle_breaks: true, lease: None });
        let to = sim_name(&f, 42);
        w.ask(1, f.clone(), Op::Renamed(Box::new(to.clone())));
        // At the moment the renamer hears the answer, node 0 already knows the new name.
        let mut answered = false;
        for _ in 0..2000 {
            w.step(ms(1));
            if w.pending() == 0 {
                answered = true;
                break;
            }
        }
        assert!(answered, "the rename was never answered");
        let seen = w.machine(0).local_record(&f).and_then(|r| r.name.clone());
        assert_eq!(seen.map(|n| n.name), Some(to.name.clone()), "node 0 has the new name by the answer");
        if home_dies {
            w.crash(2);
            settle_without(&mut w, 2);
            let seen = w.machine(0).local_record(&f).and_then(|r| r.name.clone());
            assert_eq!(seen.map(|n| n.name), Some(to.name.clone()), "the rebuilt record keeps the name");
        }
        w.ask(1, f.clone(), Op::Close(kb));
        drain(&mut w);
        w.ask(0, f.clone(), Op::SetDeleteOnClose { key: ka, on: true });
        w.ask(0, f.clone(), Op::Close(ka));
        drain(&mut w);
        let (n, file, out) = w.closes.last().cloned().expect("closes answered");
        assert_eq!((n, file), (0, f.clone()), "home_dies={home_dies}");
        assert!(out.delete && out.last, "home_dies={home_dies}: {out:?}");
        assert_eq!(out.name.map(|n| n.name), Some(to.name.clone()), "home_dies={home_dies}: deleted by its new name");
        w.check_opens_match();
    }
}

/// Two renames in a row through two different nodes: the later one wins on every holder, and a
/// copy rebuilt from holders that saw different renames keeps the later (more renames counted).
#[test]
fn the_latest_rename_wins_on_every_holder() {
    let mut w = World::new(3);
    settle(&mut w);
    let f = file_away_from(0, &[0, 1, 2]);
    let mut keys = Vec::new();
    for n in 0..3u16 {
        let r = open_req(&mut w, n, access::READ_DATA, share::ALL, CachingRequest::None);
        keys.push(r.key);
        w.ask(n, f.clone(), Op::Open(r));
    }
    drain(&mut w);
    w.ask(1, f.clone(), Op::Renamed(Box::new(sim_name(&f, 1))));
    drain(&mut w);
    w.ask(0, f.clone(), Op::Renamed(Box::new(sim_name(&f, 2))));
    drain(&mut w);
    for n in 0..3u16 {
        let r = w.machine(n).holdings().remove(&f).expect("held");
        let name = r.name.expect("named");
        assert_eq!((name.name, name.renames), (sim_name(&f, 2).name, 2), "node {n}");
    }
    let named = |g: u64| Some(Box::new(FileName { renames: g, ..sim_name(&f, g) }));
    let mut older = FileRecord { name: named(1), ..Default::default() };
    older.merge(FileRecord { name: named(2), ..Default::default() });
    assert_eq!(older.name.map(|n| n.name), Some(sim_name(&f, 2).name));
    w.check_opens_match();
}
