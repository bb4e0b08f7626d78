//! The node's own mount in a three-node cluster (issue 19, items 4 and 5), nodes in network
//! namespaces sharing the test's mount namespace (`SmbCluster` with `[fuse]`): a local open for
//! writing on node 1 breaks an RWH lease an SMB client holds through node 2 and returns only
//! after the acknowledgement; SMB writes through node 2 are read at once through node 1's mount
//! (passthrough off: the kernel's page cache is in play); on a node cut off from the cluster,
//! local opens and locks fail with EIO within `[fuse] timeout_ms`.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use nasgw_tests::cluster::{SmbClient, SmbCluster, ADDRS, NFS_PORT, SMB_PORT};
use nasgw_tests::posix_lock::{fcntl, flock};
use nasgw_tests::{hex, Unmount};
use serde_json::json;

const SHARE_ALL: u32 = 7;

/// The kernel's view of `f` through a descriptor opened earlier and through a fresh open.
fn seen(held: &File, f: &Path, len: usize) -> (Vec<u8>, Vec<u8>) {
    let mut a = vec![0u8; len];
    let n = held.read_at(&mut a, 0).unwrap();
    a.truncate(n);
    (a, std::fs::read(f).unwrap())
}

/// Whether `path` is a FUSE mount of nasgw's (not the bare directory under it).
fn is_nasgw_mount(path: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let p = path.to_str().unwrap();
    mounts.lines().any(|l| l.split(' ').nth(4) == Some(p) && l.contains(" - fuse") && l.contains(" nasgw:"))
}

#[test]
fn a_local_write_breaks_a_lease_held_through_another_node_and_smb_writes_reach_the_mount() {
    // Every node mounts at its own `{dir}/mnt`; the test uses node 1's.
    let mut cluster = SmbCluster::start("[fuse]\nmountpoint = \"{dir}/mnt\"\npassthrough = false\n");
    let _unmount: Vec<Unmount> = (0..3).map(|i| Unmount(cluster.dir(i).join("mnt"))).collect();
    let mnt = cluster.dir(0).join("mnt");
    assert!(
        is_nasgw_mount(&mnt),
        "node 1's mount {} is not in the test's mount namespace:\n{}\n{}",
        mnt.display(),
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("fuse"))
            .collect::<Vec<_>>()
            .join("\n"),
        cluster.logs()
    );
    let f = mnt.join("x.txt");
    std::fs::write(&f, b"0000000000").unwrap();
    assert!(cluster.volume().join("x.txt").exists(), "the file written through the mount is not on the volume");
    let mut c = SmbClient::spawn(cluster.topo.ns("c1"));
    c.ok(json!({"op": "connect", "c": "b", "host": ADDRS[1], "port": SMB_PORT}));

    // A client of node 2 holds an RWH lease; a local open for writing on node 1 breaks it and
    // returns only after the acknowledgement.
    let r = c.ok(json!({"op": "open", "c": "b", "h": "lb", "path": "x.txt", "lease": "RWH", "share": SHARE_ALL}));
    assert_eq!(r.s("lease"), "RHW", "{}", r.v);
    c.ok(json!({"op": "write", "h": "lb", "off": 0, "data": hex(b"remote")}));
    let path = f.clone();
    let t0 = Instant::now();
    let opener = std::thread::spawn(move || {
        let r = OpenOptions::new().read(true).write(true).open(&path);
        (Instant::now(), r)
    });
    let b = c.ok(json!({"op": "breaks", "c": "b", "n": 1, "timeout": 10}));
    let brk = b.v["breaks"][0].clone();
    assert_eq!((brk["kind"].as_str(), brk["from"].as_str()), (Some("lease"), Some("RHW")), "{}", b.v);
    let to = brk["to"].as_str().unwrap_or("?").to_string();
    assert!(!to.contains('W'), "{}", b.v);
    println!("the lease held through node 2 was broken {:?} after the local open on node 1 began", t0.elapsed());
    std::thread::sleep(Duration::from_millis(200)); // the open cannot finish before the ack
    assert!(!opener.is_finished(), "the local open on node 1 returned before node 2's client acknowledged the break");
    let acked = Instant::now();
    c.ok(json!({"op": "ack", "h": "lb", "state": to}));
    let (opened, r) = opener.join().unwrap();
    let w = r.expect("the local open after the acknowledgement");
    println!("the local open on node 1 completed {:?} after the acknowledgement through node 2", opened - acked);
    // Its writes bypass nasgw: the client's read caching goes too (acknowledged, as a client
    // does; an unacknowledged break would hold up every later open of the file).
    let b = c.ok(json!({"op": "breaks", "c": "b", "n": 2, "timeout": 10}));
    let second = b.v["breaks"][1]["to"].as_str().unwrap_or("?").to_string();
    assert!(!second.contains('R'), "the read caching of node 2's client was not broken: {}", b.v);
    let second = if second == "none" { String::new() } else { second };
    c.ok(json!({"op": "ack", "h": "lb", "state": second}));
    let mut got = [0u8; 6];
    w.read_exact_at(&mut got, 0).unwrap();
    assert_eq!(&got, b"remote", "the write the client cached under its lease is not what node 1 reads");
    drop(w);

    // SMB writes through node 2 are read at once on node 1's mount, through a descriptor opened
    // before them and through a fresh open.
    let held = File::open(&f).unwrap();
    assert_eq!(seen(&held, &f, 64).0, b"remote0000");
    for i in 0..10u8 {
        let data = [b'k' + i; 4];
        c.ok(json!({"op": "write", "h": "lb", "off": 0, "data": hex(&data)}));
        let (a, b) = seen(&held, &f, 64);
        assert_eq!(&a[..4], &data, "write {i} through node 2: node 1's open descriptor read stale data");
        assert_eq!(&b[..4], &data, "write {i} through node 2: a fresh open on node 1 read stale data");
    }
    c.ok(json!({"op": "close", "h": "lb"}));
    drop(held);
    // The client runs in a mount namespace of its own (`ip netns exec`) holding a copy of the
    // mounts; gone, it holds none of node 1's connection.
    drop(c);
    stop_all(&mut cluster);
}

/// Stops every node (SIGTERM), with their logs if one does not stop cleanly.
fn stop_all(cluster: &mut SmbCluster) {
    for i in 0..3 {
        if let Some(d) = cluster.daemons[i].take() {
            let name = d.name.clone();
            let dir = d.dir.clone();
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| d.stop()));
            let log = || std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
            match r {
                Ok(s) => assert!(s.success(), "{name} exited with {s}:\n{}", log()),
                Err(_) => panic!("{name} did not stop:\n{}", log()),
            }
        }
    }
}

#[test]
fn a_node_cut_off_from_the_cluster_fails_local_opens_and_locks_with_eio_within_the_bound() {
    const BOUND: Duration = Duration::from_secs(3);
    let mut cluster =
        SmbCluster::start(&format!("[fuse]\nmountpoint = \"{{dir}}/mnt\"\ntimeout_ms = {}\n", BOUND.as_millis()));
    let _unmount: Vec<Unmount> = (0..3).map(|i| Unmount(cluster.dir(i).join("mnt"))).collect();
    let mnt = cluster.dir(0).join("mnt");
    assert!(is_nasgw_mount(&mnt), "node 1's mount is not in the test's mount namespace");
    let f = mnt.join("cut.txt");
    std::fs::write(&f, b"before the cut").unwrap();
    let held = OpenOptions::new().read(true).write(true).open(&f).unwrap();

    cluster.topo.cut("n1");
    // Within its license the node still decides; then it knows it is out.
    nasgw_tests::wait_for("node 1 to know it is cut off", Duration::from_secs(20), Duration::from_millis(20), || {
        cluster.daemon(0).logs().contains("this node is not in sync with the cluster").then_some(())
    });
    let t = Instant::now();
    let r = OpenOptions::new().read(true).open(&f);
    let took = t.elapsed();
    println!("a local open on the cut-off node failed after {took:?}: {r:?}");
    assert_eq!(r.map(drop).map_err(|e| e.raw_os_error()), Err(Some(libc::EIO)));
    assert!(took < BOUND + Duration::from_secs(4), "{took:?}");
    let t = Instant::now();
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    fl.l_len = 10;
    // SAFETY: fcntl F_SETLK on an open descriptor with a valid flock.
    let r = unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&held), libc::F_SETLK, &fl) };
    let err = std::io::Error::last_os_error().raw_os_error();
    let took = t.elapsed();
    println!("a local lock on the cut-off node failed after {took:?}");
    assert_eq!((r, err), (-1, Some(libc::EIO)));
    assert!(took < BOUND + Duration::from_secs(4), "{took:?}");
    drop(held);
    // The cut-off node goes as a cut-off host would (its dead mount is detached at the end).
    cluster.daemons[0].take().expect("node 1").kill();
    stop_all(&mut cluster);
}

/// Runs `f` on a thread inside network namespace `ns` (the NLM client's sockets live there).
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        nasgw_tests::netns::enter(&ns);
        f()
    })
    .join()
    .expect("namespace thread")
}

/// Waits in F_SETLKW for `range` on a thread of its own; joined, how long after `released` it
/// was granted.
fn wait_in_setlkw(f: &Path, start: i64, len: i64) -> std::thread::JoinHandle<(Result<(), i32>, Instant, File)> {
    let g = OpenOptions::new().read(true).write(true).open(f).unwrap();
    std::thread::spawn(move || {
        let r = fcntl(&g, libc::F_SETLKW, &mut flock(libc::F_WRLCK, start, len));
        (r, Instant::now(), g)
    })
}

#[test]
fn local_fcntl_locks_meet_nlm_locks_on_this_and_another_node_and_smb_locks_through_another_node() {
    use nasgw_tests::nlm::{file_handle, stat, NlmClient};
    use std::net::SocketAddr;
    let mut cluster = SmbCluster::start("[fuse]\nmountpoint = \"{dir}/mnt\"\n");
    let _unmount: Vec<Unmount> = (0..3).map(|i| Unmount(cluster.dir(i).join("mnt"))).collect();
    let mnt = cluster.dir(0).join("mnt");
    assert!(is_nasgw_mount(&mnt), "node 1's mount is not in the test's mount namespace");
    let f = mnt.join("locks.txt");
    std::fs::write(&f, [b'x'; 100]).unwrap();
    let local = OpenOptions::new().read(true).write(true).open(&f).unwrap();
    let c1 = cluster.topo.ns("c1").to_string();
    // NLM owners of the client host through node 1 (the mount's own node) and node 2.
    let nlm = |node: usize, svid: i32| {
        let server: SocketAddr = format!("{}:{NFS_PORT}", ADDRS[node]).parse().unwrap();
        (NlmClient::new(server, "c1-host", svid), server)
    };
    let (g, dn) = (Some(stat::GRANTED), Some(stat::DENIED));
    for node in [0, 1] {
        let where_ = if node == 0 { "node 1 (the mount's)" } else { "node 2" };
        let (owner, server) = nlm(node, 7 + node as i32);
        let fh = in_ns(&c1, move || file_handle(server, "smb", "locks.txt"));

        // A local lock refuses the NLM lock and its TEST.
        fcntl(&local, libc::F_SETLK, &mut flock(libc::F_WRLCK, 0, 10)).expect("local lock");
        let (o, h) = (owner.clone(), fh.clone());
        let r = in_ns(&c1, move || {
            (o.lock(&h, true, 5, 1, false), o.test(&h, false, 0, 10), o.lock(&h, true, 50, 10, false))
        });
        assert_eq!(r, (dn, dn, g), "NLM through {where_} against a local fcntl lock (lock, test, lock outside)");
        fcntl(&local, libc::F_SETLK, &mut flock(libc::F_UNLCK, 0, 0)).unwrap();

        // An NLM lock refuses a local lock; F_GETLK names it; a local F_SETLKW waits for the
        // NLM unlock.
        let (o, h) = (owner.clone(), fh.clone());
        assert_eq!(in_ns(&c1, move || o.lock(&h, true, 0, 10, false)), g, "NLM lock through {where_}");
        assert_eq!(
            fcntl(&local, libc::F_SETLK, &mut flock(libc::F_RDLCK, 5, 1)),
            Err(libc::EAGAIN),
            "local lock under an NLM lock through {where_}"
        );
        let mut probe = flock(libc::F_WRLCK, 0, 100);
        fcntl(&local, libc::F_GETLK, &mut probe).unwrap();
        assert_eq!((i32::from(probe.l_type), probe.l_start), (libc::F_WRLCK, 0), "F_GETLK names the NLM lock");
        fcntl(&local, libc::F_SETLK, &mut flock(libc::F_WRLCK, 20, 10)).expect("a local lock beside the NLM lock");
        let waiter = wait_in_setlkw(&f, 0, 10);
        std::thread::sleep(Duration::from_millis(100));
        assert!(!waiter.is_finished(), "F_SETLKW returned while NLM through {where_} held the range");
        let (o, h) = (owner.clone(), fh.clone());
        let unlocked = Instant::now();
        assert_eq!(in_ns(&c1, move || o.unlock(&h, 0, 10)), g);
        let (r, at, g2) = waiter.join().unwrap();
        assert_eq!(r, Ok(()), "F_SETLKW after the NLM unlock through {where_}");
        println!("a local F_SETLKW was granted {:?} after the NLM unlock through {where_}", at - unlocked);
        drop(g2); // its close drops its lock
        let (o, h) = (owner.clone(), fh.clone());
        assert_eq!(
            in_ns(&c1, move || (o.unlock(&h, 50, 10), o.lock(&h, true, 0, 10, false), o.unlock(&h, 0, 10))),
            (g, g, g)
        );
        fcntl(&local, libc::F_SETLK, &mut flock(libc::F_UNLCK, 0, 0)).unwrap();
    }

    // SMB byte-range locks through node 2, both ways.
    let mut c = SmbClient::spawn(cluster.topo.ns("c1"));
    c.ok(json!({"op": "connect", "c": "b", "host": ADDRS[1], "port": SMB_PORT}));
    c.ok(json!({"op": "open", "c": "b", "h": "l", "path": "locks.txt", "share": SHARE_ALL}));
    fcntl(&local, libc::F_SETLK, &mut flock(libc::F_WRLCK, 0, 10)).expect("local lock");
    let r = c.call(json!({"op": "lock", "h": "l", "off": 5, "len": 1}));
    assert!(
        !r.ok && (r.status == "STATUS_LOCK_NOT_GRANTED" || r.status == "STATUS_FILE_LOCK_CONFLICT"),
        "an SMB lock through node 2 inside a local fcntl lock: {}",
        r.v
    );
    c.ok(json!({"op": "lock", "h": "l", "off": 50, "len": 10}));
    fcntl(&local, libc::F_SETLK, &mut flock(libc::F_UNLCK, 0, 0)).unwrap();
    c.ok(json!({"op": "lock", "h": "l", "off": 0, "len": 10}));
    assert_eq!(
        fcntl(&local, libc::F_SETLK, &mut flock(libc::F_WRLCK, 0, 10)),
        Err(libc::EAGAIN),
        "local lock under an SMB lock through node 2"
    );
    // Byte-range locks are advisory to local programs (as smbd's are with `posix locking`): a
    // program that does not lock reads and writes the range; one that locks waits.
    local.write_all_at(b"LOCAL", 0).expect("a local write into an SMB-locked range (advisory)");
    let r = c.ok(json!({"op": "read", "h": "l", "off": 0, "len": 5}));
    assert_eq!(r.s("data"), hex(b"LOCAL"), "the SMB lock holder reads what the local program wrote");
    let waiter = wait_in_setlkw(&f, 0, 10);
    std::thread::sleep(Duration::from_millis(100));
    assert!(!waiter.is_finished(), "F_SETLKW returned while an SMB client of node 2 held the range");
    let unlocked = Instant::now();
    c.ok(json!({"op": "unlock", "h": "l", "off": 0, "len": 10}));
    let (r, at, g2) = waiter.join().unwrap();
    assert_eq!(r, Ok(()), "F_SETLKW after the SMB unlock through node 2");
    println!("a local F_SETLKW was granted {:?} after the SMB unlock through node 2", at - unlocked);
    drop(g2);
    c.ok(json!({"op": "close", "h": "l"}));
    drop(local);
    drop(c);
    stop_all(&mut cluster);
}
