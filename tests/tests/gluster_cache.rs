//! nasgw's attribute, name and listing caches over libgfapi on a real replica 3 volume with
//! `features.cache-invalidation on`: once the node has proved that the bricks' upcalls reach it
//! (log: "attribute cache on"), repeated GETATTRs of an unchanged file, repeated LOOKUPs of a
//! name (found or not) and repeated READDIRPLUS listings (one page or several) are answered
//! without the bricks (their own FOP counters, `gluster volume profile`, stay near zero), while
//! a create, a size change, a rename and an unlink made through a plain FUSE client on another
//! node, and a write through another nasgw node, are seen by nasgw's GETATTR, LOOKUP and
//! READDIRPLUS as soon as the bricks' upcall arrives (polled; the delay from the change to nasgw
//! seeing it is printed; the bound asserted is generous). A write through the node itself is
//! seen at once. (Volumes without upcalls: `gluster_listing.rs` checks the cache stays off and
//! says so.) File data is cached on the same terms: a warm re-read costs no brick READ, and an
//! overwrite through FUSE or another nasgw node, a truncate, and the node's own writes are seen
//! by its next READs.
//!
//! nasgw listens on 127.0.0.1:2049 inside nodes 2 and 3's namespaces; the test client reaches
//! each by moving its (single) thread into the namespace before connecting.

mod nfs_common;

use std::io::Write as _;
use std::time::{Duration, Instant};

use nasgw_tests::gluster::{GlusterCluster, GlusterSpec};
use nasgw_tests::netns::enter;
use nasgw_tests::{wait_for, Daemon};
use nfs3_types::nfs3::{fattr3, nfs_fh3, nfsstat3, stable_how};
use nfs_common::*;

/// Repeated GETATTRs of one unchanged file.
const REPEATS: u64 = 200;
/// Files in the directory listed in several pages.
const MANY: usize = 150;
/// Repeated listings of an unchanged directory.
const LISTINGS: u64 = 20;
/// How long a change may take to reach nasgw (measured: milliseconds; the machine is shared).
const SEEN_WITHIN: Duration = Duration::from_secs(3);

fn config(servers: &[String]) -> String {
    let list = servers.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", ");
    format!(
        "[volume]\nname = \"smb\"\nbackend = \"gluster\"\nservers = [{list}]\naccess = \"gfapi\"\n\
         [nfs]\nlisten = \"127.0.0.1:2049\"\nroot_squash = false\n\
         [node]\ncontrol_socket = \"{{dir}}/ctl.sock\"\nstate_dir = \"{{dir}}/state\"\n"
    )
}

/// FOPs named `fop` the bricks answered since the last `info incremental` (one "Interval"
/// section per brick; the count is the column before the FOP's name).
fn brick_fops(cluster: &GlusterCluster, fop: &str) -> u64 {
    brick_fop_counts(cluster).get(fop).copied().unwrap_or(0)
}

/// Every FOP the bricks answered since the last `info incremental`, by name.
fn brick_fop_counts(cluster: &GlusterCluster) -> std::collections::BTreeMap<String, u64> {
    let text = cluster.gluster_ok(0, &["volume", "profile", "smb", "info", "incremental"]);
    let mut counts = std::collections::BTreeMap::new();
    for l in text.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() >= 2 && f[f.len() - 1].chars().all(|c| c.is_ascii_uppercase()) {
            if let Ok(n) = f[f.len() - 2].parse::<u64>() {
                *counts.entry(f[f.len() - 1].to_string()).or_insert(0) += n;
            }
        }
    }
    counts
}

/// Polls `$probe` (an async expression) until `$ok` holds for its value; prints how long the
/// change took to be seen through nasgw (panics after [`SEEN_WITHIN`]).
macro_rules! until {
    ($what:expr, $probe:expr, $ok:expr) => {{
        let t = Instant::now();
        let mut calls = 0u32;
        loop {
            calls += 1;
            let got = $probe;
            if $ok(&got) {
                eprintln!("{}: seen by call number {calls} through nasgw, {:?} after the change", $what, t.elapsed());
                break;
            }
            assert!(t.elapsed() < SEEN_WITHIN, "{}: nasgw still answers {got:?} after {SEEN_WITHIN:?}", $what);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }};
}

/// The size LOOKUP gives for `name` in `dir`, or its error.
async fn looked_up(c: &mut Conn, dir: &nfs_fh3, name: &str) -> Result<u64, nfsstat3> {
    lookup(c, dir, name.as_bytes()).await.map(|(_, a)| a.size)
}

/// Names and sizes READDIRPLUS gives for `dir`, sorted.
async fn listed(c: &mut Conn, dir: &nfs_fh3) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> =
        listing(c, dir).await.into_iter().map(|(n, a, _)| (String::from_utf8_lossy(&n).into_owned(), a.size)).collect();
    v.sort();
    v
}

/// Names and sizes in `dir` as the FUSE client sees them, sorted.
fn fuse_listed(dir: &std::path::Path) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name().to_string_lossy().into_owned(), e.metadata().unwrap().len())
        })
        .collect();
    v.sort();
    v
}

/// Calls `getattr` until `ok` holds for its answer; returns how many calls and how long it took
/// (panics after [`SEEN_WITHIN`]).
async fn until_seen(
    what: &str,
    c: &mut Conn,
    fh: &nfs_fh3,
    ok: impl Fn(&Result<fattr3, nfsstat3>) -> bool,
) -> (u32, Duration) {
    let t = Instant::now();
    let mut calls = 0;
    loop {
        calls += 1;
        let got = getattr(c, fh).await;
        if ok(&got) {
            let took = t.elapsed();
            eprintln!("{what}: seen by GETATTR number {calls} through nasgw, {took:?} after the change");
            return (calls, took);
        }
        assert!(t.elapsed() < SEEN_WITHIN, "{what}: nasgw still answers {got:?} after {SEEN_WITHIN:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// One READDIRPLUS entry: name, attributes, handle.
type Entry = (Vec<u8>, fattr3, nfs_fh3);

fn size_in(entries: &[Entry], name: &str) -> Option<u64> {
    entries.iter().find(|(n, _, _)| n == name.as_bytes()).map(|(_, a, _)| a.size)
}

/// Every entry of `dir` with its attributes and handle, by READDIRPLUS.
async fn listing(c: &mut Conn, dir: &nfs_fh3) -> Vec<Entry> {
    readdirplus_all(c, dir, 8192, 8192).await
}

/// Bytes of the file whose data node 2 caches: five 1 MiB chunks, the last one short.
const DATA_LEN: usize = (4 << 20) + 4321;
/// Whole re-reads of it that must not reach the bricks.
const WARM_PASSES: u64 = 10;
/// Bytes per NFS READ (one chunk of nasgw's data cache).
const READ_SIZE: u32 = 1 << 20;

/// The whole file by READs of [`READ_SIZE`], or the first error.
async fn read_all(c: &mut Conn, fh: &nfs_fh3) -> Result<Vec<u8>, nfsstat3> {
    let mut out = Vec::new();
    loop {
        let (data, eof) = read(c, fh, out.len() as u64, READ_SIZE).await?;
        let got = data.len();
        out.extend_from_slice(&data);
        if eof || got == 0 {
            return Ok(out);
        }
    }
}

/// SETATTR of the size.
async fn truncate(c: &mut Conn, fh: &nfs_fh3, size: u64) {
    use nfs3_types::nfs3::{sattr3, Nfs3Option, Nfs3Result, SETATTR3args};
    let attrs = sattr3 { size: Nfs3Option::Some(size), ..Default::default() };
    let args = SETATTR3args { object: fh.clone(), new_attributes: attrs, guard: Nfs3Option::None };
    if let Nfs3Result::Err((s, _)) = c.setattr(&args).await.expect("rpc") {
        panic!("SETATTR size {size}: {s}");
    }
}

/// How a read differs from what the file holds, briefly (megabytes of bytes are unreadable);
/// `None` when it does not.
fn differs(got: &Result<Vec<u8>, nfsstat3>, want: &[u8]) -> Option<String> {
    match got {
        Err(s) => Some(format!("error {s}")),
        Ok(g) if g.as_slice() == want => None,
        Ok(g) => Some(format!(
            "{} bytes (want {}), first difference at byte {:?}",
            g.len(),
            want.len(),
            g.iter().zip(want).position(|(a, b)| a != b)
        )),
    }
}

/// Panics unless `got` is `want`.
fn check(what: &str, got: Result<Vec<u8>, nfsstat3>, want: &[u8]) {
    if let Some(d) = differs(&got, want) {
        panic!("{what}: {d}");
    }
}

/// Reads the whole file through `c` until it is `want`; prints how long the change took to be
/// seen (panics after [`SEEN_WITHIN`]).
async fn until_read(what: &str, c: &mut Conn, fh: &nfs_fh3, want: &[u8]) {
    let t = Instant::now();
    let mut reads = 0u32;
    loop {
        reads += 1;
        let got = read_all(c, fh).await;
        let Some(d) = differs(&got, want) else {
            eprintln!(
                "{what}: seen by whole-file read number {reads} through nasgw, {:?} after the change",
                t.elapsed()
            );
            return;
        };
        assert!(t.elapsed() < SEEN_WITHIN, "{what}: nasgw still answers {d} after {SEEN_WITHIN:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// File data through node 2 (`data_cache.rs`): a warm re-read costs no brick READ, while a
/// same-size overwrite through the FUSE client and through node 3, and a truncate through the
/// FUSE client, are seen by node 2's next READs as soon as the upcall arrives (polled, the delay
/// printed), and a write and a truncate through node 2 itself by the very next READ.
async fn data_is_cached_and_dropped(cluster: &GlusterCluster, fuse: &std::path::Path, c: &mut Conn, c3: &mut Conn) {
    use std::os::unix::fs::FileExt as _;
    let path = fuse.join("data");
    let mut content: Vec<u8> = (0..DATA_LEN).map(|i| (i % 251) as u8).collect();
    std::fs::write(&path, &content).unwrap();
    let root = c.root_nfs_fh3();
    let (fh, _) = lookup(c, &root, b"data").await.unwrap();

    // The first read comes from the bricks (which proves the counter counts), the next ones
    // from memory. The health probes of two nodes add a READ every few seconds.
    brick_fop_counts(cluster);
    check("first read through node 2", read_all(c, &fh).await, &content);
    let cold = brick_fops(cluster, "READ");
    let t = Instant::now();
    for _ in 0..WARM_PASSES {
        check("warm read through node 2", read_all(c, &fh).await, &content);
    }
    let took = t.elapsed();
    let warm = brick_fops(cluster, "READ");
    let nfs_reads = WARM_PASSES * DATA_LEN.div_ceil(READ_SIZE as usize) as u64;
    eprintln!(
        "data cache: first read of {DATA_LEN} bytes {cold} brick READs; {WARM_PASSES} re-reads ({nfs_reads} NFS \
         READs, {took:?}) {warm} brick READs"
    );
    assert!(cold > 0, "no brick READ counted for a first read");
    assert!(warm < nfs_reads / 10, "{warm} brick READs for {nfs_reads} NFS READs of an unchanged file");

    // A same-size overwrite through the FUSE client on node 1: only the times change.
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(&[b'F'; 1000], (3 << 20) / 2).unwrap();
    drop(f); // the FUSE client's flush sends the write to the bricks
    content[(3 << 20) / 2..(3 << 20) / 2 + 1000].fill(b'F');
    until_read("data overwritten through FUSE", c, &fh, &content).await;

    // A same-size overwrite through node 3.
    let root3 = c3.root_nfs_fh3();
    let (fh3, _) = lookup(c3, &root3, b"data").await.unwrap();
    check("read through node 2", read_all(c, &fh).await, &content);
    write(c3, &fh3, 3 << 20, &[b'3'; 2000], stable_how::FILE_SYNC).await.unwrap();
    content[3 << 20..(3 << 20) + 2000].fill(b'3');
    until_read("data overwritten through node 3", c, &fh, &content).await;

    // A truncate through the FUSE client.
    check("read through node 2", read_all(c, &fh).await, &content);
    content.truncate(DATA_LEN - (1 << 20));
    std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(content.len() as u64).unwrap();
    until_read("data truncated through FUSE", c, &fh, &content).await;

    // A write and a truncate through node 2 itself: the bricks do not tell it of its own
    // changes; it drops the data before it answers, so the very next READ sees them.
    check("read through node 2", read_all(c, &fh).await, &content);
    write(c, &fh, 100, b"own write", stable_how::UNSTABLE).await.unwrap();
    content[100..109].copy_from_slice(b"own write");
    check("READ right after a WRITE through node 2", read_all(c, &fh).await, &content);
    content.truncate((1 << 20) + 10);
    truncate(c, &fh, content.len() as u64).await;
    check("READ right after a truncate through node 2", read_all(c, &fh).await, &content);
    content.resize(3 << 20, 0);
    truncate(c, &fh, content.len() as u64).await;
    check("READ right after an extension through node 2", read_all(c, &fh).await, &content);
    check("the FUSE client's view", Ok(std::fs::read(&path).unwrap()), &content);
}

#[tokio::test(flavor = "current_thread")]
async fn cached_attributes_are_dropped_on_upcalls_and_served_while_unchanged() {
    let spec =
        GlusterSpec { options: vec![("features.cache-invalidation".into(), "on".into())], ..GlusterSpec::default() };
    let cluster = GlusterCluster::start(spec);
    // The other client of the volume: a plain FUSE mount on node 1.
    let fuse = cluster.mount("n1", &cluster.dir().join("fuse-n1"));
    let dir = fuse.join("cache");
    std::fs::create_dir(&dir).unwrap();
    for (n, len) in [("a", 100), ("b", 200), ("c", 300), ("d", 400)] {
        std::fs::write(dir.join(n), vec![b'x'; len]).unwrap();
    }
    // A directory listed in several READDIRPLUS pages.
    let many = fuse.join("many");
    std::fs::create_dir(&many).unwrap();
    for i in 0..MANY {
        std::fs::write(many.join(format!("file-{i:03}")), vec![b'm'; i]).unwrap();
    }

    let topo = cluster.topo();
    let n2 = Daemon::start("n2", &cluster.dir().join("d2"), &config(&cluster.servers_for(1)), Some(topo.ns("n2")));
    let n3 = Daemon::start("n3", &cluster.dir().join("d3"), &config(&cluster.servers_for(2)), Some(topo.ns("n3")));
    let t = Instant::now();
    wait_for("node 2 proves upcalls reach it", Duration::from_secs(90), Duration::from_millis(200), || {
        n2.logs().contains("attribute cache on").then_some(())
    });
    eprintln!("attribute cache on {:?} after nasgw started", t.elapsed());
    n2.wait_ok(Duration::from_secs(30));
    n3.wait_ok(Duration::from_secs(30));
    enter(topo.ns("n3"));
    let mut c3 = mount(2049, 0, 0).await;
    enter(topo.ns("n2"));
    let mut c = mount(2049, 0, 0).await;
    let root = c.root_nfs_fh3();
    let (d, _) = lookup(&mut c, &root, b"cache").await.unwrap();
    let (fa, a) = lookup(&mut c, &d, b"a").await.unwrap();
    assert_eq!(a.size, 100);

    // Repeated GETATTRs of an unchanged file: from the cache, not the bricks.
    cluster.gluster_ok(0, &["volume", "profile", "smb", "start"]);
    brick_fops(&cluster, "STAT");
    for _ in 0..REPEATS {
        assert_eq!(getattr(&mut c, &fa).await.unwrap().size, 100);
    }
    let (stats, lookups) = (brick_fops(&cluster, "STAT"), brick_fops(&cluster, "LOOKUP"));
    eprintln!("{REPEATS} GETATTRs of an unchanged file through nasgw: {stats} brick STATs, {lookups} LOOKUPs");
    // Without the cache each GETATTR is a STAT on a brick; the health probes of two nodes add
    // a few per second.
    assert!(stats + lookups < REPEATS / 4, "{stats} STATs and {lookups} LOOKUPs for {REPEATS} GETATTRs");

    // Repeated listings and LOOKUPs of unchanged directories: from memory. The first listing
    // of each directory reads the bricks and is remembered as it goes.
    let (dm, _) = lookup(&mut c, &root, b"many").await.unwrap();
    brick_fop_counts(&cluster);
    let t = Instant::now();
    let first = listed(&mut c, &dm).await;
    let first_took = t.elapsed();
    let fops = brick_fop_counts(&cluster);
    eprintln!("brick FOPs during the first listing: {fops:?}");
    // The counters work, and a directory nasgw has not listed yet is read from the bricks.
    assert!(fops.get("READDIRP").copied().unwrap_or(0) > 0, "no READDIRP counted for a first listing: {fops:?}");
    assert_eq!(first, fuse_listed(&many), "READDIRPLUS of {MANY} entries against the FUSE client's view");
    assert_eq!(listed(&mut c, &d).await.len(), 4);
    assert_eq!(looked_up(&mut c, &d, "new").await, Err(nfsstat3::NFS3ERR_NOENT));
    brick_fop_counts(&cluster);
    let t = Instant::now();
    for _ in 0..LISTINGS {
        assert_eq!(listed(&mut c, &dm).await, first);
        assert_eq!(listed(&mut c, &d).await.len(), 4);
    }
    let listings_took = t.elapsed();
    let t = Instant::now();
    for _ in 0..REPEATS {
        assert_eq!(looked_up(&mut c, &d, "a").await, Ok(100));
        assert_eq!(looked_up(&mut c, &d, "new").await, Err(nfsstat3::NFS3ERR_NOENT));
    }
    let lookups_took = t.elapsed();
    let fops = brick_fop_counts(&cluster);
    eprintln!(
        "first listing of {MANY} entries {first_took:?}; {LISTINGS} x 2 listings {listings_took:?}; \
         {REPEATS} x 2 LOOKUPs (found and not) {lookups_took:?}; brick FOPs meanwhile: {fops:?}"
    );
    let fop = |n: &str| fops.get(n).copied().unwrap_or(0);
    // Without the caches every listing opens the directory and reads it (several pages); a
    // remembered listing is read again only once its lifetime (10 s) is over.
    assert!(fop("READDIRP") + fop("OPENDIR") < LISTINGS, "{fops:?} for {} listings", LISTINGS * 2);
    // The health probes of two nodes add a few LOOKUPs and STATs per second.
    assert!(fop("LOOKUP") + fop("STAT") < REPEATS / 4, "{fops:?} for {} LOOKUPs", REPEATS * 2);

    // A name created through the FUSE client: the negative entry nasgw kept goes, the listing
    // too (the upcall names the directory).
    std::fs::write(dir.join("new"), b"hello").unwrap();
    until!("new created through FUSE (LOOKUP)", looked_up(&mut c, &d, "new").await, |r: &Result<u64, _>| *r == Ok(5));
    until!("new created through FUSE (READDIRPLUS)", listed(&mut c, &d).await, |v: &Vec<(String, u64)>| v
        .contains(&("new".to_string(), 5)));
    std::fs::write(many.join("file-new"), b"x").unwrap();
    until!("file-new created through FUSE (paged READDIRPLUS)", listed(&mut c, &dm).await, |v: &Vec<(String, u64)>| v
        .len()
        == MANY + 1);
    assert_eq!(listed(&mut c, &dm).await, fuse_listed(&many));

    // A size change through the FUSE client on node 1.
    let mut f = std::fs::OpenOptions::new().append(true).open(dir.join("a")).unwrap();
    f.write_all(&[b'y'; 5000]).unwrap();
    drop(f); // close: the FUSE client's flush sends the write to the bricks
    until_seen("a grown through FUSE", &mut c, &fa, |r| r.as_ref().is_ok_and(|a| a.size == 5100)).await;
    assert_eq!(size_in(&listing(&mut c, &d).await, "a"), Some(5100), "READDIRPLUS after a FUSE client grew a");
    assert_eq!(looked_up(&mut c, &d, "a").await, Ok(5100), "LOOKUP after a FUSE client grew a");

    // A file known to nasgw only from a listing (attributes cached from READDIRPLUS, never
    // looked up or stat'ed by name): the bricks registered nasgw for it during the READDIRP.
    let entries = listing(&mut c, &d).await;
    assert_eq!(size_in(&entries, "d"), Some(400));
    let fd = entries.iter().find(|(n, _, _)| n == b"d").map(|(_, _, fh)| fh.clone()).unwrap();
    brick_fops(&cluster, "STAT");
    assert_eq!(getattr(&mut c, &fd).await.unwrap().size, 400);
    eprintln!("GETATTR of a file listed just before: {} brick STATs", brick_fops(&cluster, "STAT"));
    std::fs::OpenOptions::new().write(true).open(dir.join("d")).unwrap().set_len(7).unwrap();
    until_seen("d truncated through FUSE", &mut c, &fd, |r| r.as_ref().is_ok_and(|a| a.size == 7)).await;

    // A rename through FUSE: the old name is gone and the new one listed at once; the handle
    // (same GFID) still answers.
    let (fb, _) = lookup(&mut c, &d, b"b").await.unwrap();
    getattr(&mut c, &fb).await.unwrap();
    assert_eq!(looked_up(&mut c, &d, "b2").await, Err(nfsstat3::NFS3ERR_NOENT));
    std::fs::rename(dir.join("b"), dir.join("b2")).unwrap();
    until!("b renamed through FUSE (old name)", looked_up(&mut c, &d, "b").await, |r: &Result<u64, _>| *r
        == Err(nfsstat3::NFS3ERR_NOENT));
    assert_eq!(looked_up(&mut c, &d, "b2").await, Ok(200), "new name after a FUSE rename");
    until!("b renamed through FUSE (READDIRPLUS)", listing(&mut c, &d).await, |e: &Vec<Entry>| (
        size_in(e, "b"),
        size_in(e, "b2")
    ) == (None, Some(200)));
    assert_eq!(getattr(&mut c, &fb).await.unwrap().size, 200);

    // An unlink through FUSE: the handle goes stale.
    let (fc, _) = lookup(&mut c, &d, b"c").await.unwrap();
    assert_eq!(getattr(&mut c, &fc).await.unwrap().size, 300);
    std::fs::remove_file(dir.join("c")).unwrap();
    until_seen("c removed through FUSE", &mut c, &fc, |r| r.as_ref().err() == Some(&nfsstat3::NFS3ERR_STALE)).await;
    until!("c removed through FUSE (LOOKUP)", looked_up(&mut c, &d, "c").await, |r: &Result<u64, _>| *r
        == Err(nfsstat3::NFS3ERR_NOENT));
    until!("c removed through FUSE (READDIRPLUS)", listing(&mut c, &d).await, |e: &Vec<Entry>| size_in(e, "c")
        .is_none());

    // A write through another nasgw node.
    let root3 = c3.root_nfs_fh3();
    let (d3, _) = lookup(&mut c3, &root3, b"cache").await.unwrap();
    let (fa3, _) = lookup(&mut c3, &d3, b"a").await.unwrap();
    assert_eq!(getattr(&mut c, &fa).await.unwrap().size, 5100);
    write(&mut c3, &fa3, 5100, &[b'z'; 900], stable_how::FILE_SYNC).await.unwrap();
    until_seen("a grown through node 3", &mut c, &fa, |r| r.as_ref().is_ok_and(|a| a.size == 6000)).await;

    // A write through this node: the bricks do not tell it of its own changes; it drops the
    // entry itself, so the very next GETATTR sees it.
    assert_eq!(getattr(&mut c, &fa).await.unwrap().size, 6000);
    write(&mut c, &fa, 6000, &[b'w'; 1000], stable_how::UNSTABLE).await.unwrap();
    assert_eq!(getattr(&mut c, &fa).await.unwrap().size, 7000, "GETATTR right after a WRITE through this node");
    assert_eq!(std::fs::metadata(dir.join("a")).unwrap().len(), 7000);

    names_made_through_the_node_are_kept(&cluster, &fuse, &mut c, &mut c3).await;
    data_is_cached_and_dropped(&cluster, &fuse, &mut c, &mut c3).await;
    drop((n2, n3));
}

/// Files made in one directory through node 2.
const MADE: u64 = 40;

/// A directory made and filled through node 2 (`c`), as `mkdir` and `touch` do (each create
/// after a LOOKUP of its new name): the bricks never tell a client of its own changes, so the
/// node writes them into what it remembers, and the LOOKUPs of new names, then of the made
/// ones, need no brick LOOKUP. A name made through the FUSE client or node 3 (`c3`) is still
/// seen once the upcall arrives, and a remove through node 2 at once.
async fn names_made_through_the_node_are_kept(
    cluster: &GlusterCluster,
    fuse: &std::path::Path,
    c: &mut Conn,
    c3: &mut Conn,
) {
    let root = c.root_nfs_fh3();
    brick_fop_counts(cluster);
    let made = mkdir(c, &root, "made").await.unwrap();
    for i in 0..MADE {
        let name = format!("f{i:03}");
        assert_eq!(looked_up(c, &made, &name).await, Err(nfsstat3::NFS3ERR_NOENT), "{name} before its create");
        create(c, &made, &name, 0o644).await.unwrap();
    }
    let fops = brick_fop_counts(cluster);
    eprintln!("brick FOPs for a MKDIR and {MADE} x (LOOKUP of a new name, CREATE) through node 2: {fops:?}");
    let fop = |n: &str| fops.get(n).copied().unwrap_or(0);
    assert!(fop("CREATE") >= MADE, "the creates reached the bricks: {fops:?}");
    // A LOOKUP through nasgw is one on each of the 3 bricks. Forgetting the directory at each
    // create costs one per new name (3 x MADE); the first one (no caller was granted a search
    // yet) and the health probes add a few.
    assert!(fop("LOOKUP") < MADE, "{} brick LOOKUPs for {MADE} new names: {fops:?}", fop("LOOKUP"));
    // Each CREATE's reply carries the directory's attributes after it: on a volume that stamps
    // times on the client (`features.ctime`, the default) node 2 works them out from the new
    // file's, for a second after a stat (one STAT per create without it).
    assert!(fop("STAT") < MADE / 2, "{} brick STATs for {MADE} creates: {fops:?}", fop("STAT"));
    // ... and they are the bricks' own: node 3 stats the directory afresh.
    let root3 = c3.root_nfs_fh3();
    let (made3, fresh) = lookup(c3, &root3, b"made").await.unwrap();
    let worked_out = getattr(c, &made).await.unwrap();
    let times = |a: &fattr3| (a.nlink, a.mtime, a.ctime, a.mode);
    assert_eq!(times(&worked_out), times(&fresh), "the directory's attributes on node 2 and as the bricks have them");
    // A directory made in it through node 2 adds a link (its `..`).
    mkdir(c, &made, "sub").await.unwrap();
    let worked_out = getattr(c, &made).await.unwrap();
    assert_eq!(worked_out.nlink, fresh.nlink + 1);
    until!("sub made through node 2 (node 3's GETATTR)", getattr(c3, &made3).await, |r: &Result<fattr3, _>| r
        .as_ref()
        .is_ok_and(|a| a.nlink == fresh.nlink + 1));
    assert_eq!(times(&worked_out), times(&getattr(c3, &made3).await.unwrap()), "after a MKDIR in it");
    rmdir(c, &made, "sub").await.unwrap();
    for i in 0..MADE {
        assert_eq!(looked_up(c, &made, &format!("f{i:03}")).await, Ok(0));
    }
    let fops = brick_fop_counts(cluster);
    eprintln!("brick FOPs for {MADE} LOOKUPs of the made names: {fops:?}");
    let fop = |n: &str| fops.get(n).copied().unwrap_or(0);
    assert!(fop("LOOKUP") + fop("STAT") < MADE, "{fops:?} for {MADE} LOOKUPs of made names");
    // What the node remembers is the bricks' view.
    let mut names: Vec<String> = (0..MADE).map(|i| format!("f{i:03}")).collect();
    let mut on_fuse: Vec<String> = fuse_listed(&fuse.join("made")).into_iter().map(|(n, _)| n).collect();
    on_fuse.sort();
    assert_eq!(on_fuse, names, "the FUSE client's listing");
    let mut on_nfs: Vec<String> = listed(c, &made).await.into_iter().map(|(n, _)| n).collect();
    on_nfs.sort();
    assert_eq!(on_nfs, names, "node 2's listing after its own creates");

    // A remove through node 2: gone at once, for LOOKUP and listing.
    remove(c, &made, "f000").await.unwrap();
    assert_eq!(looked_up(c, &made, "f000").await, Err(nfsstat3::NFS3ERR_NOENT));
    names.remove(0);
    let mut on_nfs: Vec<String> = listed(c, &made).await.into_iter().map(|(n, _)| n).collect();
    on_nfs.sort();
    assert_eq!(on_nfs, names, "node 2's listing after its own remove");
    // Names made by others: the FUSE client, then node 3.
    assert_eq!(looked_up(c, &made, "by-fuse").await, Err(nfsstat3::NFS3ERR_NOENT));
    std::fs::write(fuse.join("made").join("by-fuse"), b"abc").unwrap();
    until!("by-fuse created through FUSE (LOOKUP)", looked_up(c, &made, "by-fuse").await, |r: &Result<u64, _>| *r
        == Ok(3));
    assert_eq!(looked_up(c, &made, "by-n3").await, Err(nfsstat3::NFS3ERR_NOENT));
    create(c3, &made3, "by-n3", 0o644).await.unwrap();
    until!("by-n3 created through node 3 (LOOKUP)", looked_up(c, &made, "by-n3").await, |r: &Result<u64, _>| *r
        == Ok(0));
    until!("by-n3 created through node 3 (READDIRPLUS)", listed(c, &made).await, |v: &Vec<(String, u64)>| v.len()
        == names.len() + 2);
}
