use super::*;
use crate::locks::types::caching::{H, R, RWH, W};

fn k(n: u64) -> OpenKey {
    OpenKey { node: 0, seq: n }
}

fn req(n: u64, access: u32, share: u32) -> OpenRequest {
    OpenRequest {
        key: k(n),
        access,
        share,
        caching: CachingRequest::None,
        overwrite: false,
        is_dir: false,
        flags: flags::HANDLE,
    }
}

fn lease_id(n: u8) -> LeaseId {
    LeaseId { client: [n; 16], key: [n; 16] }
}

fn with_lease(mut r: OpenRequest, id: u8, state: u8) -> OpenRequest {
    r.caching = CachingRequest::Lease { id: lease_id(id), state, version: 2, epoch: 0, parent: None };
    r
}

/// Decides and applies an open; returns its verdict and the breaks it started.
fn open(f: &mut FileRecord, r: &OpenRequest) -> (OpenVerdict, Vec<BreakNotice>) {
    let mut breaks = Vec::new();
    let v = f.decide_open(r, true, &mut breaks);
    let notices = breaks.iter().filter_map(|(id, to)| f.begin_break(id, *to)).collect();
    let v = match v {
        OpenVerdict::Grant(g) => OpenVerdict::Grant(f.apply_open(r, g)),
        other => other,
    };
    (v, notices)
}

fn granted(v: &OpenVerdict) -> u8 {
    match v {
        OpenVerdict::Grant(g) => g.state,
        other => panic!("not granted: {other:?}"),
    }
}

const RD: u32 = access::READ_DATA;
const WR: u32 = access::WRITE_DATA;

#[test]
fn share_modes_are_enforced_both_ways() {
    let mut f = FileRecord::default();
    granted(&open(&mut f, &req(1, RD, share::READ)).0);
    assert_eq!(open(&mut f, &req(2, WR, share::READ | share::WRITE)).0, OpenVerdict::Refuse(Conflict::Sharing));
    granted(&open(&mut f, &req(3, RD, share::READ | share::WRITE)).0);
    // attribute-only opens never conflict
    granted(&open(&mut f, &req(4, 0x80, 0)).0);
    // a new open that shares nothing conflicts with existing readers
    assert_eq!(open(&mut f, &req(5, RD, 0)).0, OpenVerdict::Refuse(Conflict::Sharing));
    assert!(!f.close(k(1)).unwrap().last);
    f.close(k(3));
    assert!(f.close(k(4)).unwrap().last);
    assert!(f.is_empty());
}

#[test]
fn nfs_use_neither_checks_nor_trips_share_modes_but_never_pins() {
    let mut f = FileRecord::default();
    granted(&open(&mut f, &req(1, RD, 0)).0);
    let mut nfs = req(2, WR, share::ALL);
    nfs.flags = 0;
    granted(&open(&mut f, &nfs).0);
    // the SMB open denying everything still stands and new SMB opens are judged without NFS
    assert_eq!(f.may_also(None, access::DELETE), Err(Conflict::Sharing), "NFS remove refused by the deny-delete open");
    f.set_delete_on_close(k(1), true).unwrap();
    assert_eq!(
        f.close(k(1)),
        Some(CloseOutcome { last: true, delete: true, name: None }),
        "NFS use does not keep it alive"
    );
    assert_eq!(f.close(k(2)), Some(CloseOutcome { last: false, delete: false, name: None }));
}

#[test]
fn delete_on_close_fires_on_the_last_close_and_blocks_new_opens() {
    let mut f = FileRecord::default();
    granted(&open(&mut f, &req(1, access::DELETE, share::DELETE | share::READ)).0);
    granted(&open(&mut f, &req(2, RD, share::DELETE | share::READ)).0);
    f.set_delete_on_close(k(1), true).unwrap();
    // The create option only takes effect when that open closes.
    granted(&open(&mut f, &req(3, RD, 7)).0);
    assert_eq!(f.close(k(1)), Some(CloseOutcome { last: false, delete: false, name: None }));
    assert_eq!(open(&mut f, &req(4, RD, 7)).0, OpenVerdict::Refuse(Conflict::DeletePending));
    assert_eq!(f.close(k(3)), Some(CloseOutcome { last: false, delete: false, name: None }));
    assert_eq!(f.close(k(2)), Some(CloseOutcome { last: true, delete: true, name: None }));
    assert!(f.is_empty());
    // A disposition change is immediate and can be undone.
    granted(&open(&mut f, &req(5, access::DELETE, 7)).0);
    f.delete_pending = true;
    f.delete_pending = false;
    assert_eq!(f.close(k(5)), Some(CloseOutcome { last: true, delete: false, name: None }));
}

fn wl(o: u64, off: u64, len: u64, ex: bool) -> RangeLock {
    RangeLock { owner: Owner::Open(k(o)), offset: off, len, exclusive: ex }
}

fn pl(id: u128, off: u64, len: u64, ex: bool) -> RangeLock {
    RangeLock { owner: Owner::Posix { node: 0, id }, offset: off, len, exclusive: ex }
}

#[test]
fn byte_range_locks_conflict_like_windows() {
    let mut t = FileRecord::default();
    t.lock(wl(1, 0, 10, true)).unwrap();
    assert_eq!(t.lock(wl(2, 5, 10, false)), Err(Conflict::Locked));
    assert_eq!(t.lock(wl(1, 5, 1, true)), Err(Conflict::Locked), "own exclusive locks stack no further");
    t.lock(wl(1, 5, 1, false)).expect("a shared lock stacks on the owner's exclusive one");
    t.unlock(Owner::Open(k(1)), 5, 1).unwrap();
    assert_eq!(t.lock(wl(9, 5, 0, true)), Err(Conflict::Locked), "zero-length inside a lock conflicts");
    t.lock(wl(2, 10, 10, false)).unwrap();
    t.lock(wl(3, 10, 10, false)).unwrap();
    assert!(t.io_allowed(Some(k(1)), 0, 10, true));
    assert!(!t.io_allowed(Some(k(2)), 0, 1, false));
    assert!(!t.io_allowed(Some(k(2)), 12, 1, true), "shared locks block writers");
    assert!(t.io_allowed(Some(k(2)), 12, 1, false));
    assert!(!t.io_allowed(None, 0, 1, false), "a client without an open obeys exclusive locks");
    assert_eq!(t.unlock(Owner::Open(k(2)), 10, 9), Err(Conflict::NotLocked));
    t.unlock(Owner::Open(k(1)), 0, 10).unwrap();
    t.lock(wl(2, 5, 5, false)).unwrap();
    // zero-length and end-of-range locks
    t.lock(wl(4, u64::MAX, 1, true)).unwrap();
    t.lock(wl(5, 3, 0, true)).unwrap();
}

#[test]
fn posix_locks_split_merge_and_stay_advisory() {
    let mut t = FileRecord::default();
    let me = Owner::Posix { node: 0, id: 7 };
    t.lock(pl(7, 0, 100, true)).unwrap();
    t.lock(pl(7, 40, 20, false)).expect("the owner's own lock is replaced");
    assert_eq!(t.ranges.len(), 3, "split into exclusive 0-40, shared 40-60, exclusive 60-100: {:?}", t.ranges);
    assert_eq!(t.lock(pl(8, 45, 1, false)), Ok(()), "another reader may share the shared middle");
    assert_eq!(t.lock(pl(8, 10, 1, false)), Err(Conflict::Locked));
    assert!(t.io_allowed(None, 0, 100, true), "POSIX locks are advisory for I/O");
    t.unlock(me, 0, 40).unwrap();
    t.unlock(me, 60, 40).unwrap();
    t.lock(pl(7, 40, 20, true)).expect_err("owner 8 shares 45");
    t.unlock(Owner::Posix { node: 0, id: 8 }, 0, u64::MAX).unwrap();
    t.lock(pl(7, 40, 20, true)).unwrap();
    t.lock(pl(7, 60, 10, true)).unwrap();
    assert_eq!(t.ranges, vec![pl(7, 40, 30, true)], "adjacent same-type ranges merge");
    assert_eq!(t.lock(wl(1, 50, 1, false)), Err(Conflict::Locked), "SMB and POSIX locks see each other");
    assert_eq!(t.conflicting(&wl(1, 0, 100, false)), Some(pl(7, 40, 30, true)));
    assert!(t.unlock_all(me));
    assert!(t.ranges.is_empty());
}

#[test]
fn a_lone_open_gets_rwh_and_a_second_open_breaks_w_and_waits() {
    let mut f = FileRecord::default();
    let a = with_lease(req(1, RD | WR, share::ALL), 1, RWH);
    assert_eq!(granted(&open(&mut f, &a).0), RWH);
    let b = with_lease(req(2, RD, share::ALL), 2, RWH);
    let (v, breaks) = open(&mut f, &b);
    assert_eq!(v, OpenVerdict::Wait);
    assert_eq!(breaks.len(), 1);
    assert_eq!((breaks[0].from, breaks[0].to, breaks[0].ack_required), (RWH, R | H, true));
    assert_eq!(breaks[0].epoch, 2, "v2 epoch: 1 at grant, 2 at the break");
    // While the break is outstanding the second open keeps waiting.
    let mut more = Vec::new();
    assert_eq!(f.decide_open(&b, false, &mut more), OpenVerdict::Wait);
    assert_eq!(f.ack_break(&lease_id(1), R | W), Err(Conflict::NotAccepted), "W was to go");
    assert_eq!(f.ack_break(&lease_id(1), R | H), Ok(None));
    more.clear();
    let v = f.decide_open(&b, false, &mut more);
    assert!(more.is_empty());
    assert_eq!(
        v,
        OpenVerdict::Grant(Granted { state: R | H, epoch: 0, breaking: false, version: 2 }),
        "W only for a lone open"
    );
}

#[test]
fn a_sharing_violation_breaks_h_then_fails_only_if_the_conflict_stays() {
    let mut f = FileRecord::default();
    let a = with_lease(req(1, RD, share::READ), 1, R | H);
    assert_eq!(granted(&open(&mut f, &a).0), R | H);
    let b = req(2, WR, share::ALL);
    let (v, breaks) = open(&mut f, &b);
    assert_eq!(v, OpenVerdict::Wait);
    assert_eq!((breaks[0].from, breaks[0].to), (R | H, R));
    // The holder gives up H and closes its cached handle: the open goes through.
    f.ack_break(&lease_id(1), R).unwrap();
    f.close(k(1));
    let mut more = Vec::new();
    assert!(matches!(f.decide_open(&b, false, &mut more), OpenVerdict::Grant(_)));
    // Without H to break, a sharing violation fails at once.
    let mut g = FileRecord::default();
    granted(&open(&mut g, &req(1, RD, share::READ)).0);
    assert_eq!(open(&mut g, &b).0, OpenVerdict::Refuse(Conflict::Sharing));
}

#[test]
fn overwrite_breaks_read_caching_too() {
    let mut f = FileRecord::default();
    granted(&open(&mut f, &with_lease(req(1, RD, share::ALL), 1, R | H)).0);
    let mut b = req(2, WR, share::ALL);
    b.overwrite = true;
    let (v, breaks) = open(&mut f, &b);
    // R|H held, no W: nothing the overwrite must wait for, but R and H go to none.
    assert!(matches!(v, OpenVerdict::Grant(_)), "{v:?}");
    assert_eq!((breaks[0].to, breaks[0].ack_required), (0, true));
}

#[test]
fn stat_opens_neither_break_nor_conflict() {
    let mut f = FileRecord::default();
    granted(&open(&mut f, &with_lease(req(1, RD | WR, 0), 1, RWH)).0);
    let (v, breaks) = open(&mut f, &req(2, access::READ_ATTRIBUTES | access::SYNCHRONIZE, 0));
    assert!(matches!(v, OpenVerdict::Grant(_)));
    assert!(breaks.is_empty());
}

#[test]
fn same_lease_key_shares_and_upgrades_the_lease() {
    let mut f = FileRecord::default();
    let a = with_lease(req(1, RD, share::ALL), 1, R);
    assert_eq!(open(&mut f, &a).0, OpenVerdict::Grant(Granted { state: R, epoch: 1, breaking: false, version: 2 }));
    let a2 = with_lease(req(2, RD, share::ALL), 1, R | H);
    assert_eq!(
        open(&mut f, &a2).0,
        OpenVerdict::Grant(Granted { state: R | H, epoch: 2, breaking: false, version: 2 })
    );
    // a downgrade request keeps the lease as it is
    let a3 = with_lease(req(3, RD, share::ALL), 1, R);
    assert_eq!(granted(&open(&mut f, &a3).0), R | H);
    f.close(k(1));
    f.close(k(2));
    assert_eq!(f.leases.len(), 1, "still used by open 3");
    f.close(k(3));
    assert!(f.leases.is_empty());
}

/// One client's lease used through two nodes (one ClientGuid connected to both): a lease
/// on node 1 (its first open), the client's other open on node 2.
fn a_lease_on_two_nodes(f: &mut FileRecord) -> (OpenRequest, OpenRequest) {
    let mut a = with_lease(req(1, RD | WR, share::ALL), 1, RWH);
    a.key.node = 1;
    let mut b = with_lease(req(2, RD | WR, share::ALL), 1, RWH);
    b.key.node = 2;
    assert_eq!(granted(&open(f, &a).0), RWH);
    assert_eq!(granted(&open(f, &b).0), RWH, "one lease: no break");
    (a, b)
}

/// Another client's open that must break lease 1's W: where does the break go?
fn break_from_another_client(f: &mut FileRecord) -> BreakNotice {
    let mut c = with_lease(req(3, RD, share::ALL), 2, RWH);
    c.key.node = 0;
    let (v, breaks) = open(f, &c);
    assert_eq!(v, OpenVerdict::Wait);
    assert_eq!(breaks.len(), 1);
    breaks[0]
}

/// The client closes its open on the lease's node: the lease's breaks go to node 2, where it
/// still has it open (they went to node 1, whose client no longer held it, and were lost: the
/// breaker waited out the break timeout while the holder kept caching). The holdings follow.
#[test]
fn a_lease_used_through_two_nodes_breaks_where_it_is_still_open() {
    let mut f = FileRecord::default();
    let (a, _) = a_lease_on_two_nodes(&mut f);
    f.close(a.key);
    assert!(f.holdings_of(1).leases.is_empty());
    assert_eq!(f.holdings_of(2).leases.len(), 1);
    let n = break_from_another_client(&mut f);
    assert_eq!((n.node, n.from, n.to, n.ack_required), (2, RWH, R | H, true));
}

/// The lease's node dies: the lease stays, held on node 2, where its client still has it open.
#[test]
fn a_dead_nodes_share_of_a_lease_leaves_it_to_the_other_node() {
    let mut f = FileRecord::default();
    a_lease_on_two_nodes(&mut f);
    f.drop_node(1);
    assert_eq!(f.lease(&lease_id(1)).map(|l| l.node), Some(2));
    assert_eq!(break_from_another_client(&mut f).node, 2);
    // Unshared, a dead node's lease goes with it.
    f.drop_node(2);
    assert!(f.leases.is_empty());
}

#[test]
fn oplocks_map_to_levels_and_break_to_level_ii() {
    let mut f = FileRecord::default();
    let mut a = req(1, RD | WR, share::ALL);
    a.caching = CachingRequest::Oplock(RWH);
    assert_eq!(granted(&open(&mut f, &a).0), RWH, "batch");
    let mut b = req(2, RD, share::ALL);
    b.caching = CachingRequest::Oplock(RWH);
    let (v, breaks) = open(&mut f, &b);
    assert_eq!(v, OpenVerdict::Wait);
    assert_eq!((breaks[0].to, breaks[0].version), (R, 0), "oplocks break to level II");
    f.ack_break(&LeaseId::oplock(k(1)), R).unwrap();
    let mut more = Vec::new();
    assert_eq!(
        f.decide_open(&b, false, &mut more),
        OpenVerdict::Grant(Granted { state: R, epoch: 0, breaking: false, version: 0 })
    );
}

#[test]
fn writes_and_locks_break_other_read_leases_to_none_without_waiting() {
    let mut f = FileRecord::default();
    granted(&open(&mut f, &with_lease(req(1, RD, share::ALL), 1, R)).0);
    granted(&open(&mut f, &with_lease(req(2, RD | WR, share::ALL), 2, R)).0);
    let v = f.contend(Some(&lease_id(2)));
    assert_eq!(v, vec![(lease_id(1), 0)]);
    let n = f.begin_break(&lease_id(1), 0).unwrap();
    assert!(!n.ack_required, "R alone: a notification");
    assert_eq!(f.lease(&lease_id(1)).unwrap().state, 0);
    assert!(f.contend(Some(&lease_id(2))).is_empty());
}

#[test]
fn a_write_breaks_its_own_level_ii_oplock_but_not_its_own_lease() {
    let mut f = FileRecord::default();
    let mut a = req(1, RD | WR, share::ALL);
    a.caching = CachingRequest::Oplock(R);
    granted(&open(&mut f, &a).0);
    let own = LeaseId::oplock(a.key);
    assert_eq!(f.lease(&own).unwrap().state, R, "level II");
    assert_eq!(f.contend(Some(&own)), vec![(own, 0)], "self break to none");
    let mut g = FileRecord::default();
    granted(&open(&mut g, &with_lease(req(2, RD | WR, share::ALL), 2, R)).0);
    assert!(g.contend(Some(&lease_id(2))).is_empty());
}

#[test]
fn renames_and_deletes_wait_for_handle_caching_to_go() {
    let mut f = FileRecord::default();
    granted(&open(&mut f, &with_lease(req(1, RD, share::ALL), 1, R | H)).0);
    let (breaks, wait) = f.handle_breaks(None);
    assert!(wait);
    assert_eq!(breaks, vec![(lease_id(1), R)]);
    f.begin_break(&lease_id(1), R).unwrap();
    assert!(f.handle_breaks(None).1, "still waiting for the acknowledgement");
    f.ack_break(&lease_id(1), R).unwrap();
    assert_eq!(f.handle_breaks(None), (vec![], false));
}

#[test]
fn a_tightened_break_follows_the_acknowledgement() {
    let mut f = FileRecord::default();
    granted(&open(&mut f, &with_lease(req(1, RD | WR, share::ALL), 1, RWH)).0);
    let n = f.begin_break(&lease_id(1), R | H).unwrap();
    assert_eq!(n.to, R | H);
    assert!(f.begin_break(&lease_id(1), R).is_none(), "no second notice while the first is unanswered");
    let next = f.ack_break(&lease_id(1), R | H).unwrap().expect("H must go too");
    assert_eq!((next.from, next.to), (R | H, R));
    assert_eq!(f.ack_break(&lease_id(1), R), Ok(None));
    assert_eq!(f.lease(&lease_id(1)).unwrap().state, R);
}

#[test]
fn an_unanswered_break_is_forced() {
    let mut f = FileRecord::default();
    granted(&open(&mut f, &with_lease(req(1, RD | WR, share::ALL), 1, RWH)).0);
    f.begin_break(&lease_id(1), R).unwrap();
    assert!(f.force_break(&lease_id(1)));
    assert_eq!(f.lease(&lease_id(1)).unwrap().state, 0, "a timed-out lease keeps nothing (smbd)");
    assert!(!f.force_break(&lease_id(1)));
}

#[test]
fn holdings_split_by_node_and_merge_back() {
    let mut f = FileRecord::default();
    let mut a = req(1, RD, share::ALL);
    a.key.node = 1;
    let mut b = req(2, RD, share::ALL);
    b.key.node = 2;
    granted(&open(&mut f, &a).0);
    granted(&open(&mut f, &b).0);
    f.lock(RangeLock { owner: Owner::Open(b.key), offset: 0, len: 5, exclusive: true }).unwrap();
    f.delete_pending = true;
    assert_eq!(f.nodes(), vec![1, 2]);
    let mut g = f.holdings_of(1);
    g.merge(f.holdings_of(2));
    assert_eq!(g.opens.len(), 2);
    assert_eq!(g.ranges.len(), 1);
    assert!(g.delete_pending);
    g.drop_node(2);
    assert_eq!(g.nodes(), vec![1]);
}

/// smbtorture `smb2.lease.breaking3`: an overwrite asks for more while RWH -> RH awaits its
/// acknowledgement; nothing more is sent until then, after it the lease is taken down in
/// steps (RH -> R, acknowledged, then R -> none without one), all with the break's epoch.
#[test]
fn a_break_tightened_while_pending_goes_on_in_steps_after_the_ack() {
    let mut f = FileRecord::default();
    let a = with_lease(req(1, RD | WR, share::ALL), 1, RWH);
    assert_eq!(granted(&open(&mut f, &a).0), RWH);
    let b = req(2, RD, share::ALL);
    let (v, n) = open(&mut f, &b);
    assert_eq!(v, OpenVerdict::Wait);
    assert_eq!((n[0].from, n[0].to, n[0].epoch), (RWH, R | H, 2));
    let mut c = req(3, RD | WR, share::ALL);
    c.overwrite = true;
    let (v, n) = open(&mut f, &c);
    assert_eq!(v, OpenVerdict::Wait);
    assert!(n.is_empty(), "no second break while the first awaits its ack: {n:?}");
    let next = f.ack_break(&lease_id(1), R | H).unwrap().expect("a further break");
    assert_eq!((next.from, next.to, next.ack_required, next.epoch), (R | H, R, true, 2));
    let last = f.ack_break(&lease_id(1), R).unwrap().expect("the last step");
    assert_eq!((last.from, last.to, last.ack_required, last.epoch), (R, 0, false, 2));
    assert_eq!(f.lease(&lease_id(1)).unwrap().state, 0);
    let mut more = Vec::new();
    assert!(matches!(f.decide_open(&b, false, &mut more), OpenVerdict::Grant(_)));
    assert!(matches!(f.decide_open(&c, false, &mut more), OpenVerdict::Grant(_)));
}

/// MS-SMB2 3.3.6.5 as Samba does it (smbtorture `smb2.lease.timeout`): a lease whose break
/// times out has no caching left; an oplock keeps what its break allowed.
#[test]
fn a_timed_out_break_leaves_a_lease_nothing() {
    let mut f = FileRecord::default();
    let a = with_lease(req(1, RD | WR, share::ALL), 1, RWH);
    open(&mut f, &a);
    open(&mut f, &req(2, RD, share::ALL));
    assert!(f.force_break(&lease_id(1)));
    let l = f.lease(&lease_id(1)).unwrap();
    assert_eq!((l.state, l.told), (0, None));
    assert_eq!(f.ack_break(&lease_id(1), R | H), Err(Conflict::NoBreak), "a late ack");
}

/// A durable open's lease whose node is gone (an orphan) has no client to answer a break: it
/// comes down at once, and a break in flight when its node went ends as far as it had to go.
#[test]
fn an_orphans_lease_breaks_at_once() {
    let mut f = FileRecord::default();
    let mut a = with_lease(req(1, RD | WR, share::ALL), 1, RWH);
    a.key = OpenKey { node: 3, seq: 1 };
    open(&mut f, &a);
    f.set_durable(a.key, 60_000).unwrap();
    let mut orphaned = f.orphans(&[1, 2], false);
    let (v, n) = open(&mut orphaned, &req(2, RD | WR, share::ALL));
    assert_eq!(v, OpenVerdict::Wait, "decided again by the caller once the break took effect");
    assert_eq!((n[0].to, n[0].ack_required), (R | H, false));
    assert_eq!(orphaned.lease(&lease_id(1)).unwrap().state, R | H);
    assert!(orphaned.breaking().next().is_none());
    let mut more = Vec::new();
    assert!(matches!(orphaned.decide_open(&req(2, RD | WR, share::ALL), false, &mut more), OpenVerdict::Grant(_)));
    // A break already told to the client when its node went.
    open(&mut f, &req(4, RD, share::ALL));
    assert!(f.breaking().next().is_some());
    let orphaned = f.orphans(&[1, 2], false);
    let l = orphaned.lease(&lease_id(1)).unwrap();
    assert_eq!((l.state, l.told, l.node), (R | H, None, ORPHAN));
}
