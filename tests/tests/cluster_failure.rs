//! Node failure and the cluster-wide file-sharing state (issue 12, "Failure"): three nasgw nodes
//! in namespaces on one volume, SMB clients through different nodes.
//! 1. A holds an open (ShareAccess=0) and an exclusive byte-range lock through n3; n3 dies
//!    (link down + kill -9). B, through n2, gets the open and the lock within a bound (printed).
//! 2. n3 restarts and serves again once in sync; a client inside n3's own namespace (so the cut
//!    does not cut it off from its node) locks a range; n3's link goes down (a partition, n3
//!    lives on). B through n2 is granted the range once n3 has fenced itself; from then on the
//!    cut-off node lets its client write nothing, and B's bytes are what the volume holds.
//! 3. A durable open's RWH lease through n3 is breaking for B's open when n3 dies: B's open
//!    completes within about the takeover time, not the 35 s break timeout (printed).
//!    n3 then restarts under load (clients on n1 and n2 open, lock and close throughout);
//!    afterwards every file they used opens exclusively and locks its first TiB through every node.
//! 4. The leader (n1) dies with a lock held through it; B through n2 gets it (printed).

use std::time::{Duration, Instant};

use nasgw_tests::cluster::{SmbClient, SmbCluster, NODES};
use nasgw_tests::hex;
use nasgw_tests::wait_for;
use serde_json::json;

const SHARE_ALL: u32 = 7;
/// Generous bound for a dead node's state to be released: HA's dead interval is 1 s, the lock
/// service's license 0.8 s, plus a view change on a noisy shared machine.
const RELEASE_BOUND: Duration = Duration::from_secs(10);

#[test]
fn state_held_through_a_dead_or_cut_off_node_is_released_and_fenced() {
    let mut c = SmbCluster::start("");
    let mut d = SmbClient::spawn(c.topo.ns("c1"));
    d.connect("B", 1);

    // 1. n3 dies holding an exclusive open and a lock.
    d.connect("A", 2);
    d.ok(json!({"op": "open", "c": "A", "h": "excl", "path": "excl", "share": 0}));
    d.ok(json!({"op": "open", "c": "A", "h": "held", "path": "held", "share": SHARE_ALL}));
    d.ok(json!({"op": "write", "h": "held", "off": 0, "data": hex(&[b'A'; 100])}));
    d.ok(json!({"op": "lock", "h": "held", "off": 0, "len": 100}));
    d.fails(json!({"op": "open", "c": "B", "h": "excl", "path": "excl"}), "STATUS_SHARING_VIOLATION");
    d.ok(json!({"op": "open", "c": "B", "h": "held", "path": "held", "share": SHARE_ALL}));
    let r = d.call(json!({"op": "lock", "h": "held", "off": 0, "len": 100}));
    assert!(!r.ok, "granted over n3's lock: {}", r.v);
    let t0 = Instant::now();
    c.kill(2);
    let (lock_at, open_at) = retry_until_granted(&mut d, t0, &c);
    println!(
        "n3 killed (kill -9 + link down): its lock granted through n2 after {:.3} s, its exclusive open after {:.3} s",
        lock_at.as_secs_f64(),
        open_at.as_secs_f64()
    );
    if lock_at.max(open_at) > Duration::from_secs(3) {
        println!("slow: the survivors' cluster events:\n{}", c.events());
    }
    assert!(lock_at < RELEASE_BOUND && open_at < RELEASE_BOUND, "{}", c.logs());
    d.ok(json!({"op": "write", "h": "held", "off": 0, "data": hex(b"BBBB")}));
    d.ok(json!({"op": "close", "h": "held"}));
    d.ok(json!({"op": "close", "h": "excl"}));

    // 2. n3 restarts (a fresh run) and serves again once in sync.
    c.topo.heal(NODES[2]);
    let t1 = Instant::now();
    let n3 = c.start_node(2);
    c.daemons[2] = Some(n3);
    c.wait_serving(&[2], Duration::from_secs(30));
    println!("n3 restarted: grants opens {:.3} s after start", t1.elapsed().as_secs_f64());
    // Its client lives in n3's own namespace: the partition leaves them connected.
    let mut local = SmbClient::spawn(c.topo.ns("n3"));
    local.connect("A", 2);
    local.ok(json!({"op": "open", "c": "A", "h": "f", "path": "fenced", "share": SHARE_ALL}));
    local.ok(json!({"op": "write", "h": "f", "off": 0, "data": hex(&[b'A'; 100])}));
    local.ok(json!({"op": "lock", "h": "f", "off": 0, "len": 100}));
    d.ok(json!({"op": "open", "c": "B", "h": "f", "path": "fenced", "share": SHARE_ALL}));
    d.fails(json!({"op": "write", "h": "f", "off": 0, "data": hex(b"BBBB")}), "STATUS_FILE_LOCK_CONFLICT");
    let t2 = Instant::now();
    c.topo.cut(NODES[2]);
    let granted = wait_for("the cut-off node's lock to be released", RELEASE_BOUND, Duration::from_millis(50), || {
        let r = d.call(json!({"op": "lock", "h": "f", "off": 0, "len": 100}));
        r.ok.then(|| t2.elapsed())
    });
    d.ok(json!({"op": "write", "h": "f", "off": 0, "data": hex(b"BBBB")}));
    // The cut-off node must not let its client write into the range B now holds.
    // (Both at once: a fenced node holds requests until its request timeout, 10 s.)
    let w = local.start(json!({"op": "write", "h": "f", "off": 0, "data": hex(b"AAAA")}));
    let l = local.start(json!({"op": "lock", "h": "f", "off": 200, "len": 10}));
    let answer = local.try_wait(w, Duration::from_secs(15));
    let lock_answer = local.try_wait(l, Duration::from_secs(5));
    let on_volume = std::fs::read(c.volume().join("fenced")).unwrap();
    println!(
        "n3 cut off: its lock granted through n2 after {:.3} s; then n3's own client: write {}, new lock {}",
        granted.as_secs_f64(),
        describe(&answer),
        describe(&lock_answer)
    );
    assert!(answer.as_ref().is_none_or(|r| !r.ok), "the cut-off node wrote into B's range");
    assert!(lock_answer.as_ref().is_none_or(|r| !r.ok), "the cut-off node granted a lock");
    assert_eq!(&on_volume[..4], b"BBBB", "the volume holds B's bytes");
    drop(local);
    d.ok(json!({"op": "close", "h": "f"}));
    c.topo.heal(NODES[2]);
    let back = c.wait_serving(&[2], Duration::from_secs(30));
    println!("n3 healed: grants opens again after {:.3} s", back.as_secs_f64());
    if back > Duration::from_secs(3) {
        println!("slow: the cluster events:\n{}", c.events());
    }

    // 3. A durable open's lease is breaking (RWH -> RH for B's open) when its node dies: the
    //    open stays for its client's reclaim, but nobody can answer the break any more, so B's
    //    open completes within about the takeover time, not after the 35 s break timeout.
    d.connect("O", 2);
    let r = d.ok(json!({"op": "open", "c": "O", "h": "o", "path": "orphan", "share": SHARE_ALL,
        "lease": "RWH", "durable": {"timeout": 60000}}));
    assert_eq!(r.s("lease"), "RHW", "{}", r.v);
    assert!(r.v["durable"].is_object(), "not made durable: {}", r.v);
    let w = d.start(json!({"op": "open", "c": "B", "h": "ob", "path": "orphan", "share": SHARE_ALL}));
    let b = d.call(json!({"op": "breaks", "c": "O", "n": 1, "timeout": 10}));
    assert_eq!(b.v["breaks"].as_array().map(Vec::len), Some(1), "the break reached O: {}", b.v);
    assert!(d.try_wait(w, Duration::from_millis(200)).is_none(), "B's open did not wait for the break");
    let t4 = Instant::now();
    c.kill(2);
    let r = d.wait(w, RELEASE_BOUND + Duration::from_secs(5));
    let took = t4.elapsed();
    println!(
        "n3 killed while its durable open's RWH lease was breaking: B's open through n2 completed {:.3} s later (break timeout 35 s)",
        took.as_secs_f64()
    );
    assert!(r.ok, "{}", r.v);
    assert!(took < RELEASE_BOUND, "{}", c.events());
    d.ok(json!({"op": "close", "h": "ob"}));

    // n3 restarts under load: clients on n1 and n2 keep opening files exclusively, locking and
    // closing them while it joins (the view changes and every node's holdings are rebuilt),
    // then a client on n3 joins in. Nothing leaks: afterwards every file opens exclusively and
    // locks its first TiB through every node.
    d.connect("P", 0);
    let round = |d: &mut SmbClient, clients: &[&str], i: usize| {
        for (k, cl) in clients.iter().enumerate() {
            let f = format!("load{}", (i + k) % 4);
            d.ok(json!({"op": "open", "c": cl, "h": "ld", "path": f, "share": 0}));
            d.ok(json!({"op": "lock", "h": "ld", "off": 0, "len": 10}));
            d.ok(json!({"op": "unlock", "h": "ld", "off": 0, "len": 10}));
            d.ok(json!({"op": "close", "h": "ld"}));
        }
    };
    c.topo.heal(NODES[2]);
    let t5 = Instant::now();
    let n3 = c.start_node(2);
    c.daemons[2] = Some(n3);
    let mut rounds = 0;
    for i in 0..20 {
        round(&mut d, &["P", "B"], i);
        rounds += 1;
    }
    c.wait_serving(&[2], Duration::from_secs(30));
    d.connect("Q", 2);
    for i in 0..8 {
        round(&mut d, &["P", "B", "Q"], i);
        rounds += 1;
    }
    for f in 0..4 {
        for cl in ["P", "B", "Q"] {
            d.ok(json!({"op": "open", "c": cl, "h": "chk", "path": format!("load{f}"), "share": 0}));
            d.ok(json!({"op": "lock", "h": "chk", "off": 0, "len": 1u64 << 40}));
            d.ok(json!({"op": "close", "h": "chk"}));
        }
    }
    println!(
        "n3 restarted under load: {rounds} rounds of exclusive open + lock + unlock + close through n1 and n2 (then n3 too) in {:.3} s, nothing left behind",
        t5.elapsed().as_secs_f64()
    );

    // 4. The leader dies holding a lock.
    d.connect("L", 0);
    d.ok(json!({"op": "open", "c": "L", "h": "l", "path": "leader", "share": SHARE_ALL}));
    d.ok(json!({"op": "lock", "h": "l", "off": 0, "len": 100}));
    d.ok(json!({"op": "open", "c": "B", "h": "held", "path": "leader", "share": SHARE_ALL}));
    assert!(!d.call(json!({"op": "lock", "h": "held", "off": 0, "len": 100})).ok);
    let t3 = Instant::now();
    c.kill(0);
    // A new leader must first take the recovery lock and wait out the old leader's licenses.
    let took = wait_for("the dead leader's lock to be released", 2 * RELEASE_BOUND, Duration::from_millis(50), || {
        d.call(json!({"op": "lock", "h": "held", "off": 0, "len": 100})).ok.then(|| t3.elapsed())
    });
    println!("n1 (the leader) killed: its lock granted through n2 after {:.3} s", took.as_secs_f64());
    if took > Duration::from_secs(3) {
        println!("slow: the survivors' cluster events:\n{}", c.events());
    }
    d.ok(json!({"op": "close", "h": "held"}));
    for d in c.daemons.iter().flatten() {
        assert!(!d.logs().contains("panicked"), "{}", d.logs());
    }
}

/// A power cut (the appliance's replaced node): n3 vanishes without a FIN or a RST and comes
/// back with a fresh kernel at the same address. n1 and n2 dial their lock-mesh links to n3
/// (the lower-numbered node dials), so they must find out that their old connections lead
/// nowhere; until they do, n3 is never in sync with the file-sharing state and grants nothing.
#[test]
fn a_node_back_from_a_power_cut_is_dialed_again_and_serves() {
    let mut c = SmbCluster::start("");
    let mut d = SmbClient::spawn(c.topo.ns("c1"));
    d.connect("A", 2);
    d.connect("B", 1);
    d.ok(json!({"op": "open", "c": "A", "h": "a", "path": "excl", "share": 0}));
    d.fails(json!({"op": "open", "c": "B", "h": "b", "path": "excl"}), "STATUS_SHARING_VIOLATION");
    let t0 = Instant::now();
    c.kill(2);
    // The survivors have dropped n3 once its exclusive open is released.
    let released = wait_for("n3's open to be released", RELEASE_BOUND, Duration::from_millis(50), || {
        d.call(json!({"op": "open", "c": "B", "h": "b", "path": "excl"})).ok.then(|| t0.elapsed())
    });
    d.ok(json!({"op": "close", "h": "b"}));
    c.topo.power_cycle(NODES[2]);
    let t1 = Instant::now();
    let n3 = c.start_node(2);
    c.daemons[2] = Some(n3);
    c.wait_serving(&[2], Duration::from_secs(30));
    println!(
        "n3 lost power: its open released after {:.3} s; back with a fresh kernel, it grants opens {:.3} s after its start",
        released.as_secs_f64(),
        t1.elapsed().as_secs_f64()
    );
    d.connect("A", 2);
    d.ok(json!({"op": "open", "c": "A", "h": "a", "path": "excl", "share": 0}));
    d.fails(json!({"op": "open", "c": "B", "h": "b", "path": "excl"}), "STATUS_SHARING_VIOLATION");
    d.ok(json!({"op": "close", "h": "a"}));
}

/// B retries the lock on "held" and the exclusive open of "excl" until both are granted;
/// returns when each was.
fn retry_until_granted(d: &mut SmbClient, t0: Instant, c: &SmbCluster) -> (Duration, Duration) {
    let (mut lock_at, mut open_at) = (None, None);
    while lock_at.is_none() || open_at.is_none() {
        assert!(t0.elapsed() < RELEASE_BOUND * 2, "n3's state was never released:\n{}", c.logs());
        if lock_at.is_none() && d.call(json!({"op": "lock", "h": "held", "off": 0, "len": 100})).ok {
            lock_at = Some(t0.elapsed());
        }
        if open_at.is_none() && d.call(json!({"op": "open", "c": "B", "h": "excl", "path": "excl", "share": 0})).ok {
            open_at = Some(t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    (lock_at.unwrap(), open_at.unwrap())
}

fn describe(r: &Option<nasgw_tests::cluster::Reply>) -> String {
    match r {
        None => "no answer yet".to_string(),
        Some(r) if r.ok => "SUCCEEDED".to_string(),
        Some(r) => r.status.clone(),
    }
}
