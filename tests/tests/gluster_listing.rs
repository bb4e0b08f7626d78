//! Listings through nasgw's gfapi backend on a real replica 3 volume. READDIRPLUS comes from
//! `glfs_xreaddirplus_r` (each entry's attributes and object from the one READDIRP, no lookup
//! per entry: the bricks' own FOP counters, `gluster volume profile`, show far fewer LOOKUPs
//! than entries during a listing): the names, types, sizes, modes, owners and file ids it gives match what a plain
//! FUSE client of the volume sees, over several pages; every handle it gives is the one LOOKUP
//! gives and answers GETATTR alike. A size change, a new file and a removal made through the
//! plain FUSE client (another client of the volume, on another node) are seen by the very next
//! GETATTR and READDIRPLUS through nasgw, without waiting. The volume has no upcalls
//! (`features.cache-invalidation` off), so nasgw caches no attributes and logs that it does not
//! (`gluster_cache.rs` has the volume with upcalls).
//!
//! nasgw listens on 127.0.0.1:2049 inside node 2's namespace; the test client reaches it by
//! moving its (single) thread into that namespace before connecting.

mod nfs_common;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use nasgw_tests::gluster::{GlusterCluster, GlusterSpec};
use nasgw_tests::netns::enter;
use nasgw_tests::{wait_for, Daemon};
use nfs3_types::nfs3::{cookieverf3, fattr3, ftype3, nfs_fh3, Nfs3Option, Nfs3Result, READDIRPLUS3args};
use nfs_common::*;

/// Entries in the listed directory: several READDIRPLUS pages of 8 KiB.
const FILES: usize = 300;

fn config(servers: &[String]) -> String {
    let list = servers.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", ");
    format!(
        "[volume]\nname = \"smb\"\nbackend = \"gluster\"\nservers = [{list}]\naccess = \"gfapi\"\n\
         [nfs]\nlisten = \"127.0.0.1:2049\"\nroot_squash = false\n\
         [node]\ncontrol_socket = \"{{dir}}/ctl.sock\"\nstate_dir = \"{{dir}}/state\"\n"
    )
}

fn this_node_state(d: &Daemon) -> String {
    let out = d.ctl(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["nodes"]
        .as_array()
        .and_then(|n| n.iter().find(|n| n["this_node"] == true))
        .map_or(String::new(), |n| n["state"].as_str().unwrap_or_default().to_string())
}

/// One READDIRPLUS entry: name, attributes, handle.
type Entry = (Vec<u8>, fattr3, nfs_fh3);

/// Lists `dir` completely with READDIRPLUS in pages of `count` bytes; every entry must carry
/// attributes and a handle. Returns the entries and the number of calls.
async fn list_plus(c: &mut Conn, dir: &nfs_fh3, count: u32) -> (Vec<Entry>, usize) {
    let mut out = Vec::new();
    let (mut cookie, mut verf, mut calls) = (0u64, cookieverf3([0; 8]), 0);
    loop {
        calls += 1;
        let args = READDIRPLUS3args { dir: dir.clone(), cookie, cookieverf: verf, dircount: count, maxcount: count };
        match c.readdirplus(&args).await.expect("rpc") {
            Nfs3Result::Ok(ok) => {
                verf = ok.cookieverf;
                for e in ok.reply.entries.0 {
                    let name = e.name.0.to_vec();
                    let Nfs3Option::Some(attr) = e.name_attributes else { panic!("no attributes for {name:?}") };
                    let Nfs3Option::Some(fh) = e.name_handle else { panic!("no handle for {name:?}") };
                    cookie = e.cookie;
                    out.push((name, attr, fh));
                }
                if ok.reply.eof {
                    return (out, calls);
                }
            }
            Nfs3Result::Err((s, _)) => panic!("READDIRPLUS failed: {s}"),
        }
    }
}

fn ftype_of(m: &std::fs::Metadata) -> ftype3 {
    let t = m.file_type();
    if t.is_dir() {
        ftype3::NF3DIR
    } else if t.is_symlink() {
        ftype3::NF3LNK
    } else {
        ftype3::NF3REG
    }
}

/// `attr` (from nasgw) says what `m` (from the FUSE client) says.
fn assert_same(name: &[u8], attr: &fattr3, m: &std::fs::Metadata) {
    let n = String::from_utf8_lossy(name);
    assert_eq!(attr.type_, ftype_of(m), "{n}: type");
    assert_eq!(attr.size, m.size(), "{n}: size");
    assert_eq!(attr.mode, m.mode() & 0o7777, "{n}: mode");
    assert_eq!((attr.uid, attr.gid), (m.uid(), m.gid()), "{n}: owner");
    assert_eq!(attr.nlink, m.nlink() as u32, "{n}: links");
    assert_eq!(attr.fileid, m.ino(), "{n}: file id");
    assert_eq!(attr.mtime.seconds as i64, m.mtime(), "{n}: mtime");
}

/// LOOKUPs the bricks answered since the last call (`gluster volume profile ... info
/// incremental`: one "Interval" section per brick, the count is the column before `LOOKUP`).
fn brick_lookups(cluster: &GlusterCluster) -> u64 {
    let text = cluster.gluster_ok(0, &["volume", "profile", "smb", "info", "incremental"]);
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.last() == Some(&"LOOKUP")).then(|| f[f.len() - 2].parse::<u64>().ok()).flatten()
        })
        .sum()
}

fn size_in(entries: &[Entry], name: &str) -> Option<u64> {
    entries.iter().find(|(n, _, _)| n == name.as_bytes()).map(|(_, a, _)| a.size)
}

#[tokio::test(flavor = "current_thread")]
async fn gfapi_readdirplus_matches_a_fuse_client_and_sees_its_changes_at_once() {
    let cluster = GlusterCluster::start(GlusterSpec::default());
    // The other client of the volume: a plain FUSE mount on node 1.
    let fuse = cluster.mount("n1", &cluster.dir().join("fuse-n1"));
    let dir = fuse.join("listing");
    std::fs::create_dir(&dir).unwrap();
    for i in 0..FILES {
        std::fs::write(dir.join(format!("f{i:04}")), vec![b'x'; i * 7]).unwrap();
    }
    std::fs::create_dir(dir.join("sub")).unwrap();
    std::os::unix::fs::symlink("f0001", dir.join("link")).unwrap();
    std::fs::set_permissions(dir.join("f0002"), std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(dir.join("f0003"), Some(1234), Some(4321)).unwrap();

    // The bricks count their FOPs from here on.
    cluster.gluster_ok(0, &["volume", "profile", "smb", "start"]);
    let topo = cluster.topo();
    let n2 = Daemon::start("n2", &cluster.dir().join("d2"), &config(&cluster.servers_for(1)), Some(topo.ns("n2")));
    wait_for("nasgw on node 2 healthy", Duration::from_secs(40), Duration::from_millis(50), || {
        (this_node_state(&n2) == "OK").then_some(())
    });
    enter(topo.ns("n2"));
    let mut c = mount(2049, 0, 0).await;
    let root = c.root_nfs_fh3();
    let (d, _) = lookup(&mut c, &root, b"listing").await.unwrap();

    // The whole listing, in pages, against the FUSE client's view.
    brick_lookups(&cluster);
    let t = Instant::now();
    let (entries, calls) = list_plus(&mut c, &d, 8192).await;
    let took = t.elapsed();
    let lookups = brick_lookups(&cluster);
    eprintln!(
        "READDIRPLUS of {} entries in {calls} calls: {took:?}; LOOKUPs on the bricks meanwhile: {lookups}",
        entries.len()
    );
    assert!(calls > 2, "the listing spans several pages ({calls} calls)");
    // One lookup per entry would be FILES or more (each replica answers its own); the health
    // probe and the directory's own lookups are a handful.
    assert!(lookups < FILES as u64 / 4, "{lookups} brick LOOKUPs while listing {FILES} entries: one per entry?");
    let on_fuse: BTreeMap<Vec<u8>, std::fs::Metadata> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name().into_encoded_bytes(), std::fs::symlink_metadata(e.path()).unwrap())
        })
        .collect();
    let names: Vec<&Vec<u8>> = entries.iter().map(|(n, _, _)| n).collect();
    assert_eq!(names.len(), FILES + 2, "every entry once");
    assert_eq!(
        names.iter().copied().cloned().collect::<std::collections::BTreeSet<_>>().len(),
        names.len(),
        "no repeats"
    );
    assert_eq!(on_fuse.keys().collect::<Vec<_>>(), {
        let mut n = names.clone();
        n.sort();
        n
    });
    for (name, attr, _) in &entries {
        assert_same(name, attr, &on_fuse[name]);
    }
    // READDIR gives the same names in the same order.
    let (plain, _) = list(&mut c, &d, false, 8192).await;
    assert_eq!(plain.iter().collect::<Vec<_>>(), names);
    // The handles READDIRPLUS gave are LOOKUP's and answer GETATTR with the same attributes.
    // (Each LOOKUP through nasgw reaches the bricks: the counter above can see lookups.)
    brick_lookups(&cluster);
    let mut looked_up = 0;
    for (name, attr, fh) in
        entries.iter().step_by(15).chain(entries.iter().filter(|(n, _, _)| n == b"sub" || n == b"link"))
    {
        let (by_lookup, _) = lookup(&mut c, &d, name).await.unwrap();
        looked_up += 1;
        assert_eq!(&by_lookup, fh, "{}: READDIRPLUS and LOOKUP give one handle", String::from_utf8_lossy(name));
        let got = getattr(&mut c, fh).await.unwrap();
        assert_same(name, &got, &on_fuse[name]);
        assert_eq!(got.fileid, attr.fileid);
    }
    let lookups = brick_lookups(&cluster);
    eprintln!("{looked_up} NFS LOOKUPs through nasgw: {lookups} brick LOOKUPs");
    assert!(lookups >= looked_up, "{looked_up} NFS LOOKUPs made only {lookups} brick LOOKUPs");

    // Changes through the FUSE client on node 1, seen by the very next call through nasgw.
    let fh10 = entries.iter().find(|(n, _, _)| n == b"f0010").map(|(_, _, fh)| fh.clone()).unwrap();
    assert_eq!(getattr(&mut c, &fh10).await.unwrap().size, 70);
    let mut f = std::fs::OpenOptions::new().append(true).open(dir.join("f0010")).unwrap();
    f.write_all(&[b'y'; 5000]).unwrap();
    drop(f); // close: the FUSE client's flush sends the write to the bricks
    assert_eq!(getattr(&mut c, &fh10).await.unwrap().size, 5070, "GETATTR right after a FUSE client grew the file");
    let (entries, _) = list_plus(&mut c, &d, 8192).await;
    assert_eq!(size_in(&entries, "f0010"), Some(5070), "READDIRPLUS right after a FUSE client grew the file");

    std::fs::OpenOptions::new().write(true).open(dir.join("f0010")).unwrap().set_len(3).unwrap();
    let (entries, _) = list_plus(&mut c, &d, 8192).await;
    assert_eq!(size_in(&entries, "f0010"), Some(3), "READDIRPLUS right after a FUSE client truncated the file");
    assert_eq!(getattr(&mut c, &fh10).await.unwrap().size, 3, "GETATTR right after a FUSE client truncated the file");

    std::fs::write(dir.join("new-on-fuse"), b"12345").unwrap();
    std::fs::remove_file(dir.join("f0020")).unwrap();
    let (entries, _) = list_plus(&mut c, &d, 8192).await;
    assert_eq!(size_in(&entries, "new-on-fuse"), Some(5), "a file made through the FUSE client is listed at once");
    assert_eq!(size_in(&entries, "f0020"), None, "a file removed through the FUSE client is gone at once");
    assert_eq!(entries.len(), FILES + 2);

    // This volume leaves features.cache-invalidation off (the default): the bricks send no
    // upcalls, so nasgw caches no attributes (every GETATTR above reached the bricks) and
    // its log says why.
    wait_for("node 2 says its attribute cache is off", Duration::from_secs(120), Duration::from_millis(200), || {
        n2.logs().contains("attribute cache off").then_some(())
    });
    drop(n2);
}
