//! Persistent handles across nodes (issue 14): three nasgw nodes in namespaces on one volume,
//! a continuously available share, a public address.
//!
//! Client A (Python smbprotocol) opens a file persistently through the public address, writes,
//! and locks a range; client B, through another node's own address, is refused a conflicting
//! open and the lock. The node holding the address dies (link down + kill -9). A connects to
//! the address again (now on a survivor) and reclaims the open with a DH2C naming only its
//! FileId and CreateGuid: the lock is still A's (B is refused the open and the lock before,
//! during and after), A's data is intact and A goes on writing. The stall (kill -> reclaimed
//! open) is printed.

use std::time::{Duration, Instant};

use nasgw_tests::cluster::{SmbClient, SmbCluster, SMB_PORT, VIP};
use nasgw_tests::wait_for;
use serde_json::json;

/// A second share on the same folder, continuously available.
const CA_SHARE: &str = r#"
[[smb.share]]
name = "ca"
path = "/"
writable = true
guest_ok = true
guest_only = true
force_user = "root"
continuously_available = true
"#;

const READ_WRITE: u32 = 0x0012_019F;
const READ_ONLY: u32 = 0x0012_0089;
const SHARE_READ: u32 = 1;
const SHARE_ALL: u32 = 7;
/// Generous: HA moves the address in ~1 s, the lock service drops the dead node from its view
/// in about as long; the shared 2-core machine can make both much slower.
const STALL_BOUND: Duration = Duration::from_secs(20);

#[test]
fn a_persistent_open_is_reclaimed_with_its_lock_on_the_node_that_takes_over_the_address() {
    let mut c = SmbCluster::start_with_public_address(CA_SHARE);
    let victim = c.holder(VIP).expect("the address is placed");
    let other = (victim + 1) % 3;
    let mut d = SmbClient::spawn(c.topo.ns("c1"));
    let guid = "5e1f0c2a9b8d4e7f8a6b5c4d3e2f1a0b";
    let r = d.ok(json!({"op": "connect", "c": "A", "host": VIP, "port": SMB_PORT, "share": "ca", "guid": guid}));
    assert_eq!((r.v["ca"].as_bool(), r.v["scaleout"].as_bool()), (Some(true), Some(true)), "{}", r.v);
    let r = d.ok(json!({"op": "connect", "c": "P", "host": VIP, "port": SMB_PORT}));
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

    d.connect_share("B", other, "ca");
    let refused = |d: &mut SmbClient, when: &str| {
        let r = d.call(
            json!({"op": "open", "c": "B", "h": "bw", "path": "persist.bin", "access": READ_WRITE, "share": SHARE_ALL}),
        );
        assert!(!r.ok, "{when}: B opened for writing past A's share mode: {}", r.v);
        let r = d.call(json!({"op": "lock", "h": "br", "off": 0, "len": 100}));
        assert!(!r.ok, "{when}: B got A's lock: {}", r.v);
    };
    d.ok(json!({"op": "open", "c": "B", "h": "br", "path": "persist.bin", "access": READ_ONLY, "share": SHARE_ALL}));
    refused(&mut d, "before");

    let t0 = Instant::now();
    c.kill(victim);
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

    refused(&mut d, "after the reclaim");
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

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
