//! Durable and persistent handles across nodes (issue 14): three nasgw nodes in namespaces on
//! one volume, a continuously available share, a public address.
//!
//! Client A (Python smbprotocol) opens a file persistently through the public address on the
//! continuously available share; client P, through the same address on the ordinary share,
//! opens one file with a durable v2 open (`DH2Q`, lease RH) and another with a durable v1 open
//! (`DHnQ`, batch oplock). Each writes and locks a range; client B, through another node's own
//! address, is refused a conflicting open and the lock. The node holding the address dies (link
//! down + kill -9). A and P connect to the address again (now on a survivor) and reclaim their
//! opens with a `DH2C` / `DHnC` naming only the FileId (and CreateGuid, lease key): the locks
//! are still theirs (B is refused the open and the lock before, during and after), the data is
//! intact and they go on writing. A durable v2 CREATE that P sends again with the replay flag
//! through the new node gets the open its CreateGuid made on the dead one. The locks are on
//! the volume too (an OFD F_GETLK from the
//! test sees them), leave it with the dead node, and are set there again by the reclaiming
//! node. A fourth durable open nobody reclaims has its record dropped by both survivors once
//! its 2 s timeout has run out. The stall (kill -> reclaimed open) is printed.
//!
//! The second test moves a durable open with its address while the node lives (`nasgw
//! disable`: the node hands it over), then to a node restarted after the open was made (it
//! asked the others for their records), and ends a client's previous session
//! (PreviousSessionId) on one node.

use std::time::{Duration, Instant};

use nasgw_tests::cluster::{SmbClient, SmbCluster, CA_SHARE, NODES, SMB_PORT, VIP};
use nasgw_tests::hex;
use nasgw_tests::wait_for;
use serde_json::json;

const READ_WRITE: u32 = 0x0012_019F;
const READ_ONLY: u32 = 0x0012_0089;
const SHARE_READ: u32 = 1;
const SHARE_ALL: u32 = 7;
/// Generous: HA moves the address in ~1 s, the lock service drops the dead node from its view
/// in about as long; the shared 2-core machine can make both much slower.
const STALL_BOUND: Duration = Duration::from_secs(20);

#[test]
fn persistent_and_durable_opens_are_reclaimed_with_their_locks_on_the_node_that_takes_over_the_address() {
    let mut c = SmbCluster::start_with_public_address(CA_SHARE);
    let victim = c.holder(VIP).expect("the address is placed");
    let other = (victim + 1) % 3;
    let mut d = SmbClient::spawn(c.topo.ns("c1"));
    let guid = "5e1f0c2a9b8d4e7f8a6b5c4d3e2f1a0b";
    let r = d.ok(json!({"op": "connect", "c": "A", "host": VIP, "port": SMB_PORT, "share": "ca", "guid": guid}));
    assert_eq!((r.v["ca"].as_bool(), r.v["scaleout"].as_bool()), (Some(true), Some(true)), "{}", r.v);
    let pguid = "7a1e0c2a9b8d4e7f8a6b5c4d3e2f1a0c";
    let r = d.ok(json!({"op": "connect", "c": "P", "host": VIP, "port": SMB_PORT, "guid": pguid}));
    assert_eq!(r.v["ca"].as_bool(), Some(false), "the plain share is not continuously available: {}", r.v);
    // Not persistent on a share that is not continuously available (and no durability at all
    // without a handle lease or batch oplock).
    let r = d.ok(json!({"op": "open", "c": "P", "h": "p", "path": "plain", "durable": {"persistent": true}}));
    assert!(r.v["durable"].is_null(), "{}", r.v);
    d.ok(json!({"op": "close", "h": "p"}));

    let r = d.ok(json!({"op": "open", "c": "A", "h": "a", "path": "persist.bin", "access": READ_WRITE,
        "share": SHARE_READ, "durable": {"persistent": true, "timeout": 60000}}));
    assert_eq!(r.v["durable"]["flags"].as_u64(), Some(2), "a persistent handle is granted: {}", r.v);
    let (file_id, create_guid) = (r.s("file_id").to_string(), r.s("create_guid").to_string());
    d.ok(json!({"op": "write", "h": "a", "off": 0, "data": hex(&[b'A'; 4096])}));
    d.ok(json!({"op": "lock", "h": "a", "off": 0, "len": 100}));

    // Durable (not persistent) opens on the ordinary share: v2 with a handle lease, v1 with a
    // batch oplock.
    let r = d.ok(json!({"op": "open", "c": "P", "h": "dv2", "path": "durable-v2.bin", "access": READ_WRITE,
        "share": SHARE_READ, "lease": "RH", "durable": {"timeout": 60000}}));
    assert_eq!((r.v["durable"]["flags"].as_u64(), r.s("lease")), (Some(0), "RH"), "a durable v2 open: {}", r.v);
    let (v2_id, v2_guid, v2_lease) =
        (r.s("file_id").to_string(), r.s("create_guid").to_string(), r.s("lease_key").to_string());
    let r = d.ok(json!({"op": "open", "c": "P", "h": "dv1", "path": "durable-v1.bin", "access": READ_WRITE,
        "share": SHARE_READ, "oplock": "batch", "durable": {"v1": true}}));
    assert!(r.v["durable"].is_object() && r.s("oplock") == "batch", "a durable v1 open: {}", r.v);
    let v1_id = r.s("file_id").to_string();
    for (h, b) in [("dv2", b'D'), ("dv1", b'E')] {
        d.ok(json!({"op": "write", "h": h, "off": 0, "data": hex(&[b; 4096])}));
        d.ok(json!({"op": "lock", "h": h, "off": 0, "len": 100}));
    }
    // A durable v2 open whose CREATE P will send again (replay flag) through another node.
    let replay_guid = "9c1e0c2a9b8d4e7f8a6b5c4d3e2f1a0e";
    let r = d.ok(json!({"op": "open", "c": "P", "h": "rp", "path": "replayed.bin", "access": READ_WRITE,
        "share": SHARE_READ, "lease": "RH", "durable": {"timeout": 60000, "create_guid": replay_guid}}));
    let (rp_id, rp_lease) = (r.s("file_id").to_string(), r.s("lease_key").to_string());
    // One that nobody reclaims: when its timeout has run out after its node died, every node
    // drops its record.
    let r = d.ok(json!({"op": "open", "c": "P", "h": "st", "path": "stale.bin", "access": READ_WRITE,
        "share": SHARE_READ, "lease": "RH", "durable": {"timeout": 2000}}));
    assert_eq!(r.v["durable"]["timeout"].as_u64(), Some(2000), "{}", r.v);
    let stale = persistent_of(r.s("file_id"));

    d.connect_share("B", other, "ca");
    // B's read-only handles on the three files (the durable ones' caching is broken down to
    // read first: P answers the breaks as a client would).
    d.ok(json!({"op": "open", "c": "B", "h": "br", "path": "persist.bin", "access": READ_ONLY, "share": SHARE_ALL}));
    d.ok(json!({"op": "open", "c": "B", "h": "br-dv2", "path": "durable-v2.bin", "access": READ_ONLY, "share": SHARE_ALL}));
    let id = d.start(json!({"op": "open", "c": "B", "h": "bw-dv2", "path": "durable-v2.bin", "access": READ_WRITE,
        "share": SHARE_ALL, "bg": true}));
    let r = d.ok(json!({"op": "breaks", "c": "P", "n": 1, "timeout": 20}));
    assert_eq!(r.v["breaks"][0]["to"].as_str(), Some("R"), "B's write open breaks P's handle caching: {}", r.v);
    d.ok(json!({"op": "ack", "c": "P", "h": "dv2", "state": "R"}));
    let r = d.wait(id, Duration::from_secs(30));
    assert_eq!(r.status, "STATUS_SHARING_VIOLATION", "{}", r.v);
    let id = d.start(json!({"op": "open", "c": "B", "h": "br-dv1", "path": "durable-v1.bin", "access": READ_ONLY,
        "share": SHARE_ALL, "bg": true}));
    let r = d.ok(json!({"op": "breaks", "c": "P", "n": 2, "timeout": 20}));
    assert_eq!(r.v["breaks"][1]["to"].as_str(), Some("ii"), "B's open breaks P's batch oplock: {}", r.v);
    d.ok(json!({"op": "ack_oplock", "h": "dv1", "level": "ii"}));
    assert!(d.wait(id, Duration::from_secs(30)).ok);
    let refused = |d: &mut SmbClient, when: &str| {
        for (path, h) in [("persist.bin", "br"), ("durable-v2.bin", "br-dv2"), ("durable-v1.bin", "br-dv1")] {
            let r = d.call(
                json!({"op": "open", "c": "B", "h": "bw", "path": path, "access": READ_WRITE, "share": SHARE_ALL}),
            );
            assert!(!r.ok, "{when}: B opened {path} for writing past its share mode: {}", r.v);
            let r = d.call(json!({"op": "lock", "h": h, "off": 0, "len": 100}));
            assert!(!r.ok, "{when}: B got the lock on {path}: {}", r.v);
        }
    };
    refused(&mut d, "before");
    let volume = c.volume();
    let on_volume = |name: &str| volume_locked(&volume.join(name), 0, 100);
    for name in ["persist.bin", "durable-v2.bin", "durable-v1.bin"] {
        assert!(on_volume(name), "{name}: the lock is on the volume too");
    }

    let t0 = Instant::now();
    c.kill(victim);
    for name in ["persist.bin", "durable-v2.bin", "durable-v1.bin"] {
        assert!(!on_volume(name), "{name}: the dead node's locks left the volume with it");
    }
    refused(&mut d, "right after the kill");
    // A's client sees its connection die and comes back through the same address.
    let reclaimed_at = wait_for("A to reclaim its persistent open", STALL_BOUND * 2, Duration::from_millis(50), || {
        if !d.call(json!({"op": "connect", "c": "A2", "host": VIP, "port": SMB_PORT, "share": "ca", "guid": guid})).ok {
            return None;
        }
        let r = d.call(json!({"op": "reconnect", "c": "A2", "h": "a2", "path": "persist.bin",
            "file_id": file_id, "create_guid": create_guid, "persistent": true}));
        if !r.ok {
            println!("reconnect at {:.3} s: {}", t0.elapsed().as_secs_f64(), r.v);
        }
        r.ok.then(|| t0.elapsed())
    });
    let now_at = c.holder(VIP);
    println!(
        "persistent open: node {victim} killed (kill -9 + link down); the address moved to node {now_at:?}; \
         the open reclaimed there {:.3} s after the kill",
        reclaimed_at.as_secs_f64()
    );
    if reclaimed_at > Duration::from_secs(5) {
        println!("slow: the survivors' cluster events:\n{}", c.events());
    }
    assert!(reclaimed_at < STALL_BOUND, "{}", c.logs());
    assert_ne!(now_at, Some(victim));
    assert!(on_volume("persist.bin"), "the reclaiming node set A's lock on the volume again");

    // The durable opens come back the same way (their node is out of the view by now).
    let t = Instant::now();
    d.ok(json!({"op": "connect", "c": "P2", "host": VIP, "port": SMB_PORT, "guid": pguid}));
    let r = d.ok(json!({"op": "reconnect", "c": "P2", "h": "p2v2", "path": "durable-v2.bin",
        "file_id": v2_id, "create_guid": v2_guid, "lease_key": v2_lease, "lease": "RH"}));
    // The same persistent FileId (the volatile half is the new node's).
    assert_eq!(r.s("file_id")[..16], v2_id[..16], "{}", r.v);
    let r = d.ok(json!({"op": "reconnect", "c": "P2", "h": "p2v1", "path": "durable-v1.bin", "file_id": v1_id,
        "oplock": "batch"}));
    assert_eq!(r.s("file_id")[..16], v1_id[..16], "{}", r.v);
    println!("durable v2 and v1 opens reclaimed on node {now_at:?} in {:.3} s", t.elapsed().as_secs_f64());
    for name in ["durable-v2.bin", "durable-v1.bin"] {
        assert!(on_volume(name), "{name}: the reclaiming node set P's lock on the volume again");
    }
    // The CREATE replayed through the new node finds the open its CreateGuid made on the dead
    // one (matched cluster-wide), not a second open; without the replay flag it would be a
    // duplicate.
    let r = d.ok(json!({"op": "open", "c": "P2", "h": "rp2", "path": "replayed.bin", "access": READ_WRITE,
        "share": SHARE_READ, "lease": "RH", "lease_key": rp_lease,
        "durable": {"timeout": 60000, "create_guid": replay_guid}, "replay": true}));
    assert_eq!(r.s("file_id")[..16], rp_id[..16], "the replayed CREATE got the original open: {}", r.v);
    d.ok(json!({"op": "close", "h": "rp2"}));
    refused(&mut d, "after the reclaim");
    for (h, bh, b) in [("p2v2", "br-dv2", b'D'), ("p2v1", "br-dv1", b'E')] {
        let r = d.ok(json!({"op": "read", "h": h, "off": 0, "len": 4096}));
        assert_eq!(r.s("data"), hex(&[b; 4096]), "{h}: the data is intact");
        d.ok(json!({"op": "write", "h": h, "off": 0, "data": hex(b"xxxx")}));
        d.ok(json!({"op": "unlock", "h": h, "off": 0, "len": 100}));
        d.ok(json!({"op": "lock", "h": bh, "off": 0, "len": 100}));
        d.ok(json!({"op": "unlock", "h": bh, "off": 0, "len": 100}));
        d.ok(json!({"op": "close", "h": h}));
        d.ok(json!({"op": "close", "h": bh}));
    }
    for (name, b) in [("durable-v2.bin", b'D'), ("durable-v1.bin", b'E')] {
        let mut want = b"xxxx".to_vec();
        want.extend_from_slice(&[b; 4092]);
        assert!(std::fs::read(c.volume().join(name)).unwrap() == want, "the volume holds P's bytes in {name}");
    }
    // The unclaimed open's record: gone from both survivors once its timeout ended.
    let dropped = format!("persistent={stale}");
    let t = Instant::now();
    wait_for("every survivor to drop the expired open's record", STALL_BOUND * 3, Duration::from_millis(200), || {
        c.daemons
            .iter()
            .flatten()
            .all(|n| n.logs().lines().any(|l| l.contains("record dropped") && l.split(' ').any(|w| w == dropped)))
            .then_some(())
    });
    println!(
        "the expired durable open's record dropped on both survivors {:.1} s after the kill ({:.1} s after the check began)",
        t0.elapsed().as_secs_f64(),
        t.elapsed().as_secs_f64()
    );
    let r = d.ok(json!({"op": "read", "h": "a2", "off": 0, "len": 4096}));
    assert_eq!(r.s("data"), hex(&[b'A'; 4096]), "A's data is intact");
    // A's lock is A's: it writes inside it, and on past it.
    d.ok(json!({"op": "write", "h": "a2", "off": 0, "data": hex(b"aaaa")}));
    d.ok(json!({"op": "write", "h": "a2", "off": 4096, "data": hex(&[b'C'; 100])}));
    d.ok(json!({"op": "unlock", "h": "a2", "off": 0, "len": 100}));
    d.ok(json!({"op": "lock", "h": "br", "off": 0, "len": 100}));
    d.ok(json!({"op": "unlock", "h": "br", "off": 0, "len": 100}));
    d.ok(json!({"op": "close", "h": "a2"}));
    // Closed: the share mode is gone too.
    d.ok(json!({"op": "open", "c": "B", "h": "bw", "path": "persist.bin", "access": READ_WRITE, "share": SHARE_ALL}));
    d.ok(json!({"op": "close", "h": "bw"}));
    d.ok(json!({"op": "close", "h": "br"}));
    let mut want = b"aaaa".to_vec();
    want.extend_from_slice(&[b'A'; 4092]);
    want.extend_from_slice(&[b'C'; 100]);
    assert!(std::fs::read(c.volume().join("persist.bin")).unwrap() == want, "the volume holds A's bytes");
    // A reconnect naming an open that does not exist is refused (MS-SMB2 3.3.5.9.12).
    let r = d.call(json!({"op": "reconnect", "c": "A2", "h": "x", "path": "persist.bin",
        "file_id": file_id, "create_guid": create_guid, "persistent": true}));
    assert_eq!(r.status, "STATUS_OBJECT_NAME_NOT_FOUND", "{}", r.v);
    for d in c.daemons.iter().flatten() {
        assert!(!d.logs().contains("panicked"), "{}", d.logs());
    }
}

/// Whether a lock over `off..off + len` of `path` is held on the volume by anyone (an OFD
/// F_GETLK from this process, which holds none: the nasgw nodes' locks show).
fn volume_locked(path: &std::path::Path, off: u64, len: u64) -> bool {
    use std::os::fd::AsRawFd;
    let f = std::fs::OpenOptions::new().read(true).write(true).open(path).expect("open the file on the volume");
    // SAFETY: a plain C struct, all zeroes is a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    fl.l_start = off as i64;
    fl.l_len = len as i64;
    // SAFETY: F_OFD_GETLK reads and writes the flock we pass, on a descriptor we own.
    let r = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) };
    assert_eq!(r, 0, "F_OFD_GETLK: {}", std::io::Error::last_os_error());
    fl.l_type != libc::F_UNLCK as i16
}

/// The persistent half of a FileId as the client prints it (32 hex digits, little-endian).
fn persistent_of(file_id: &str) -> u64 {
    (0..8).map(|i| u64::from_str_radix(&file_id[2 * i..2 * i + 2], 16).unwrap() << (8 * i)).sum()
}

/// The address moves while its node lives (`nasgw disable`): the client's durable open is
/// handed over to the node it reconnects to, with its lock. Then a node restarts (it missed
/// every announcement) and, once the address has moved to it, takes the open back too.
#[test]
fn a_durable_open_follows_its_address_on_disable_and_reaches_a_node_that_joined_later() {
    let mut c = SmbCluster::start_with_public_address("");
    let first = c.holder(VIP).expect("the address is placed");
    let mut d = SmbClient::spawn(c.topo.ns("c1"));
    let guid = "0b1e0c2a9b8d4e7f8a6b5c4d3e2f1a0d";
    d.ok(json!({"op": "connect", "c": "P", "host": VIP, "port": SMB_PORT, "guid": guid}));
    let r = d.ok(json!({"op": "open", "c": "P", "h": "p", "path": "follow.bin", "access": READ_WRITE,
        "share": SHARE_READ, "lease": "RH", "durable": {"timeout": 60000}}));
    assert_eq!(r.v["durable"]["flags"].as_u64(), Some(0), "a durable v2 open: {}", r.v);
    let (id, cg, key) = (r.s("file_id").to_string(), r.s("create_guid").to_string(), r.s("lease_key").to_string());
    d.ok(json!({"op": "write", "h": "p", "off": 0, "data": hex(&[b'F'; 4096])}));
    d.ok(json!({"op": "lock", "h": "p", "off": 0, "len": 100}));
    // B works through the disabled node's own address (it stays in the cluster).
    d.connect("B", first);
    d.ok(json!({"op": "open", "c": "B", "h": "br", "path": "follow.bin", "access": READ_ONLY, "share": SHARE_ALL}));
    let refused = |d: &mut SmbClient, when: &str| {
        let r = d.call(json!({"op": "lock", "h": "br", "off": 0, "len": 100}));
        assert!(!r.ok, "{when}: B got P's lock: {}", r.v);
    };
    refused(&mut d, "before");

    // Graceful: the holder is disabled, the address moves, the node lives on.
    let out = c.daemon(first).ctl(&["disable"]);
    assert!(out.status.success(), "{out:?}");
    let t0 = Instant::now();
    let second = wait_for("the address to move off the disabled node", STALL_BOUND, Duration::from_millis(50), || {
        c.holder(VIP).filter(|&h| h != first)
    });
    let reclaimed = |d: &mut SmbClient, c: &str, h: &str| {
        wait_for("P to reclaim its durable open", STALL_BOUND, Duration::from_millis(100), || {
            if !d.call(json!({"op": "connect", "c": c, "host": VIP, "port": SMB_PORT, "guid": guid})).ok {
                return None;
            }
            let r = d.call(json!({"op": "reconnect", "c": c, "h": h, "path": "follow.bin", "file_id": id,
                "create_guid": cg, "lease_key": key, "lease": "RH"}));
            if !r.ok {
                println!("reconnect: {}", r.v);
            }
            r.ok.then_some(())
        })
    };
    reclaimed(&mut d, "P2", "p2");
    println!(
        "disable: node {first} disabled; the address moved to node {second}; the durable open was handed over \
         and reclaimed there {:.3} s after the disable",
        t0.elapsed().as_secs_f64()
    );
    assert!(c.daemon(first).logs().contains("handed over"), "{}", c.logs());
    refused(&mut d, "after the hand-over");
    d.ok(json!({"op": "write", "h": "p2", "off": 4096, "data": hex(&[b'G'; 100])}));

    // The third node restarts: it missed the announcements, and asks when it joins.
    let third = 3 - first - second;
    c.kill(third);
    c.topo.heal(NODES[third]);
    c.daemons[third] = Some(c.start_node(third));
    c.wait_serving(&[third], STALL_BOUND * 2);
    // The address's holder dies: the disabled node takes no address, so it goes to the third.
    let t0 = Instant::now();
    c.kill(second);
    let at = wait_for("the address to move to the restarted node", STALL_BOUND * 2, Duration::from_millis(50), || {
        c.holder(VIP)
    });
    assert_eq!(at, third);
    reclaimed(&mut d, "P3", "p3");
    println!(
        "joined later: node {third} restarted, node {second} killed; the durable open was reclaimed on node {third} \
         {:.3} s after the kill",
        t0.elapsed().as_secs_f64()
    );
    refused(&mut d, "after the reclaim on the restarted node");
    let r = d.ok(json!({"op": "read", "h": "p3", "off": 0, "len": 4196}));
    let mut want = vec![b'F'; 4096];
    want.extend_from_slice(&[b'G'; 100]);
    assert_eq!(r.s("data"), hex(&want), "the data is intact");
    d.ok(json!({"op": "unlock", "h": "p3", "off": 0, "len": 100}));
    d.ok(json!({"op": "lock", "h": "br", "off": 0, "len": 100}));
    d.ok(json!({"op": "close", "h": "p3"}));
    d.ok(json!({"op": "close", "h": "br"}));

    // PreviousSessionId: a client whose connection is stuck sets up a new session naming its
    // old one; the old session's plain open closes at once, its durable open waits for it.
    let qguid = "0b1e0c2a9b8d4e7f8a6b5c4d3e2f1a0e";
    let r = d.ok(json!({"op": "connect", "c": "Q", "host": VIP, "port": SMB_PORT, "guid": qguid}));
    let old_session = r.v["session"].as_u64().expect("a SessionId");
    d.ok(json!({"op": "open", "c": "Q", "h": "q-plain", "path": "prev-plain.bin", "access": READ_WRITE,
        "share": SHARE_READ}));
    let r = d.ok(json!({"op": "open", "c": "Q", "h": "q-dur", "path": "prev-durable.bin", "access": READ_WRITE,
        "share": SHARE_READ, "lease": "RH", "durable": {"timeout": 60000}}));
    let (qid, qcg, qkey) = (r.s("file_id").to_string(), r.s("create_guid").to_string(), r.s("lease_key").to_string());
    let bw =
        json!({"op": "open", "c": "B", "h": "bw", "path": "prev-plain.bin", "access": READ_WRITE, "share": SHARE_ALL});
    assert_eq!(d.call(bw.clone()).status, "STATUS_SHARING_VIOLATION");
    let t = Instant::now();
    d.ok(json!({"op": "connect", "c": "Q2", "host": VIP, "port": SMB_PORT, "guid": qguid, "previous": old_session}));
    wait_for("the previous session's plain open to close", STALL_BOUND, Duration::from_millis(50), || {
        d.call(bw.clone()).ok.then_some(())
    });
    println!(
        "PreviousSessionId: the old session's plain open closed {:.3} s after the new session",
        t.elapsed().as_secs_f64()
    );
    d.ok(json!({"op": "close", "h": "bw"}));
    d.ok(json!({"op": "reconnect", "c": "Q2", "h": "q2-dur", "path": "prev-durable.bin", "file_id": qid,
        "create_guid": qcg, "lease_key": qkey, "lease": "RH"}));
    d.ok(json!({"op": "close", "h": "q2-dur"}));
    for d in c.daemons.iter().flatten() {
        assert!(!d.logs().contains("panicked"), "{}", d.logs());
    }
}
