//! NFS and SMB end to end on a real replica 3 GlusterFS volume: nasgw on node 1 over its managed
//! FUSE mount, nasgw on node 2 over libgfapi, one shared NFS handle key. A file written over NFS through
//! node 1 is read byte-identical over NFS through node 2 (and the other way), a file put over SMB
//! through node 2 is read byte-identical over SMB and NFS through node 1 (twice: the second time
//! from node 1's page cache, sent with sendfile), an NFS handle taken
//! through node 1 works unchanged through node 2 (GFID identities, same on both backends), a
//! libnfs client reads through either node, node 1's handles keep working after its FUSE
//! client was killed and nasgw mounted the volume again, and a brick killed during a 1 GiB SMB
//! upload through the gfapi node costs the client nothing. Fifos, sockets and device nodes made
//! over NFS MKNOD through either node are seen with their types through the other.
//!
//! Each nasgw listens on 127.0.0.1:2049 inside its node's namespace; the test client reaches it
//! by moving its (single) thread into that namespace before connecting.

mod nfs_common;

use std::time::{Duration, Instant};

use nasgw_tests::gluster::{fuse_client_of, GlusterCluster, GlusterSpec};
use nasgw_tests::{wait_for, Daemon};
use nfs3_types::nfs3::{nfsstat3, stable_how, Nfs3Option};
use nfs_common::*;

fn config(servers: &[String], access: &str) -> String {
    let list = servers.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", ");
    format!(
        "[volume]\nname = \"smb\"\nbackend = \"gluster\"\nservers = [{list}]\naccess = \"{access}\"\n\
         health_interval_ms = 200\nhealth_timeout_ms = 3000\n\
         [nfs]\nlisten = \"127.0.0.1:2049\"\nroot_squash = false\n[smb]\nlisten = \"127.0.0.1:445\"\n\
         [[smb.share]]\nname = \"pub\"\nwritable = true\nguest_ok = true\nguest_only = true\nforce_user = \"root\"\n\
         [node]\ncontrol_socket = \"{{dir}}/ctl.sock\"\nstate_dir = \"{{dir}}/state\"\n"
    )
}

use nasgw_tests::netns::enter;

fn wait_ok(d: &Daemon) {
    d.wait_ok(Duration::from_secs(40));
}

async fn read_all(c: &mut Conn, fh: &nfs3_types::nfs3::nfs_fh3) -> Vec<u8> {
    let mut got = Vec::new();
    loop {
        let (data, eof) = read(c, fh, got.len() as u64, 1 << 20).await.unwrap();
        got.extend_from_slice(&data);
        if eof || data.is_empty() {
            return got;
        }
    }
}

async fn write_all(c: &mut Conn, fh: &nfs3_types::nfs3::nfs_fh3, data: &[u8]) {
    for (i, chunk) in data.chunks(512 * 1024).enumerate() {
        let w = write(c, fh, (i * 512 * 1024) as u64, chunk, stable_how::FILE_SYNC).await.unwrap();
        assert_eq!(w.count as usize, chunk.len());
    }
}

#[tokio::test(flavor = "current_thread")]
async fn nfs_and_smb_through_fuse_and_gfapi_nodes_see_one_volume_with_handles_valid_everywhere() {
    let cluster = GlusterCluster::start(GlusterSpec::default());
    // These two nodes run without `[cluster]` (HA over GlusterFS is gluster_ha's subject), so they
    // share the NFS handle key the other supported way: the same 32-byte key in each node's
    // state directory (a cluster derives it from its secret instead).
    let key: Vec<u8> = (0..32u8).map(|i| i.wrapping_mul(37) ^ 0x5a).collect();
    for d in ["d1", "d2"] {
        std::fs::create_dir_all(cluster.dir().join(d).join("state")).unwrap();
        std::fs::write(cluster.dir().join(d).join("state/nfs-handle.key"), &key).unwrap();
    }
    let topo = cluster.topo();
    let n1 =
        Daemon::start("n1", &cluster.dir().join("d1"), &config(&cluster.servers_for(0), "fuse"), Some(topo.ns("n1")));
    let n2 =
        Daemon::start("n2", &cluster.dir().join("d2"), &config(&cluster.servers_for(1), "gfapi"), Some(topo.ns("n2")));
    wait_ok(&n1);
    wait_ok(&n2);

    let data: Vec<u8> = (0..4_000_000u32).map(|i| (i.wrapping_mul(2246822519) >> 9) as u8).collect();
    // Through node 1 (FUSE): mkdir, create, write stably.
    enter(topo.ns("n1"));
    let mut c1 = mount(2049, 0, 0).await;
    let root1 = c1.root_nfs_fh3();
    let dir = mkdir(&mut c1, &root1, "shared").await.unwrap();
    let f = create(&mut c1, &dir, "from-n1.bin", 0o644).await.unwrap();
    let t = Instant::now();
    write_all(&mut c1, &f, &data).await;
    eprintln!("4 MB FILE_SYNC through node 1 (FUSE) in {:?}", t.elapsed());

    // Through node 2 (gfapi): the same bytes by name, and by node 1's handles unchanged.
    enter(topo.ns("n2"));
    let mut c2 = mount(2049, 0, 0).await;
    let root2 = c2.root_nfs_fh3();
    assert_eq!(root1, root2, "the root handle is the same on both nodes");
    let (dir2, _) = lookup(&mut c2, &root2, b"shared").await.unwrap();
    let (f2, attr2) = lookup(&mut c2, &dir2, b"from-n1.bin").await.unwrap();
    assert_eq!(f2, f, "same file, same handle on a FUSE node and a gfapi node");
    assert_eq!(dir2, dir);
    assert_eq!(attr2.size, data.len() as u64);
    assert_eq!(read_all(&mut c2, &f).await, data, "node 1's handle read through node 2");
    let (names, _) = list(&mut c2, &dir, true, 4096).await;
    assert_eq!(names, vec![b"from-n1.bin".to_vec()]);

    // The other way: written through node 2, read through node 1 by node 2's handle.
    let g = create(&mut c2, &dir, "from-n2.txt", 0o600).await.unwrap();
    let w = write(&mut c2, &g, 0, b"written through the gfapi node", stable_how::FILE_SYNC).await.unwrap();
    assert_eq!(w.committed, stable_how::FILE_SYNC);
    assert!(matches!(&w.file_wcc.after, Nfs3Option::Some(a) if a.size == 30), "a synced write has its attributes");
    enter(topo.ns("n1"));
    assert_eq!(read_all(&mut c1, &g).await, b"written through the gfapi node");
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            topo.ns("n2"),
            "nfs-cat",
            "nfs://127.0.0.1/smb/shared/from-n1.bin?version=3&nfsport=2049&mountport=2049",
        ])
        .output()
        .unwrap();
    ok(&out, "nfs-cat through node 2");
    assert!(out.stdout == data, "libnfs read through node 2 differs");

    // Special files: a fifo and a socket made through each node (FUSE: mknod on the mount;
    // gfapi: glfs_h_mknod), a device through the gfapi node, each seen with its type (and
    // numbers) through the other node by name and by the maker's handle; READ of a fifo
    // answers INVAL through either node instead of blocking.
    use nfs3_types::nfs3::ftype3;
    for (maker, seer) in [("n1", "n2"), ("n2", "n1")] {
        let (cm, cs) = if maker == "n1" { (&mut c1, &mut c2) } else { (&mut c2, &mut c1) };
        enter(topo.ns(maker));
        let mut made = Vec::new();
        for (n, what, t) in [
            (format!("fifo-{maker}"), fifo(0o640), ftype3::NF3FIFO),
            (format!("sock-{maker}"), socket(0o755), ftype3::NF3SOCK),
            (format!("null-{maker}"), char_device(0o600, 1, 3), ftype3::NF3CHR),
        ] {
            let (h, a) = mknod(cm, &dir, &n, what).await.unwrap_or_else(|e| panic!("MKNOD {n} through {maker}: {e}"));
            assert_eq!(a.type_, t, "{n}");
            made.push((n, h, a));
        }
        assert_eq!(read(cm, &made[0].1, 0, 100).await.unwrap_err(), nfsstat3::NFS3ERR_INVAL);
        enter(topo.ns(seer));
        for (n, h, a) in &made {
            let (h2, a2) = lookup(cs, &dir, n.as_bytes()).await.unwrap();
            assert_eq!(&h2, h, "{n}: the same handle through {seer}");
            assert_eq!(
                (a2.type_, a2.mode, a2.rdev.specdata1, a2.rdev.specdata2),
                (a.type_, a.mode, a.rdev.specdata1, a.rdev.specdata2),
                "{n} through {seer}"
            );
            assert_eq!(getattr(cs, h).await.unwrap().type_, a.type_);
        }
        assert_eq!((made[2].2.rdev.specdata1, made[2].2.rdev.specdata2), (1, 3));
        assert_eq!(read(cs, &made[0].1, 0, 100).await.unwrap_err(), nfsstat3::NFS3ERR_INVAL);
        for (n, _, _) in &made {
            remove(cs, &dir, n).await.unwrap();
        }
    }

    // SMB: a file put through node 2 (gfapi) is read byte-identical through node 1 (FUSE), and
    // over NFS by name.
    let src = cluster.dir().join("smb-src.bin");
    let smb_data: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(3266489917) >> 17) as u8).collect();
    std::fs::write(&src, &smb_data).unwrap();
    let smb = |ns: &str, cmd: &str| {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", ns, "smbclient", "//127.0.0.1/pub", "-p", "445", "-N", "-m", "SMB3", "-c", cmd])
            .output()
            .unwrap();
        ok(&out, &format!("smbclient {cmd}"));
    };
    smb(topo.ns("n2"), &format!("cd shared; put {} from-smb.bin", src.display()));
    let back = cluster.dir().join("smb-back.bin");
    smb(topo.ns("n1"), &format!("cd shared; get from-smb.bin {}", back.display()));
    assert!(std::fs::read(&back).unwrap() == smb_data, "SMB through node 1 differs from what node 2 took");
    let (s1, _) = lookup(&mut c1, &dir, b"from-smb.bin").await.unwrap();
    assert!(read_all(&mut c1, &s1).await == smb_data, "NFS through node 1 differs from the SMB upload");
    // Again: now the pages are in node 1's mount cache and go out with sendfile.
    assert!(read_all(&mut c1, &s1).await == smb_data, "a cached NFS read through node 1 differs");

    // Close-to-open across nodes: the moment smbclient has closed a file it put through one
    // node, the other node and a plain FUSE client of the volume read all of it. (Writes the
    // volume's client acknowledged early, GlusterFS's write-behind, must be flushed by the
    // CLOSE; its last 1 MiB WRITE was missing before.)
    let raw = cluster.mount("n3", &cluster.dir().join("raw"));
    let big: Vec<u8> = (0..5_300_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    std::fs::write(&src, &big).unwrap();
    for round in 0..3 {
        for (writer, reader) in [("n1", 2), ("n2", 1)] {
            let name = format!("closed-{writer}-{round}.bin");
            smb(topo.ns(writer), &format!("cd shared; put {} {name}", src.display()));
            let on_raw = std::fs::metadata(raw.join("shared").join(&name)).map(|m| m.len()).unwrap_or(0);
            assert_eq!(on_raw, big.len() as u64, "{name}: size on a FUSE client right after the CLOSE");
            let (conn, node) = if reader == 1 { (&mut c1, "n1") } else { (&mut c2, "n2") };
            enter(topo.ns(node));
            let (h, _) = lookup(conn, &dir, name.as_bytes()).await.unwrap();
            assert!(read_all(conn, &h).await == big, "{name} read through {node} right after the CLOSE");
        }
    }

    // NFS throughput through each node, same volume, same client code (printed, not asserted).
    let mb = 64usize;
    let block = vec![0x6bu8; 1 << 20];
    for (node, conn) in [("n1 (FUSE)", &mut c1), ("n2 (gfapi)", &mut c2)] {
        enter(topo.ns(&node[..2]));
        let name = format!("tp-{}", &node[..2]);
        let h = create(conn, &dir, &name, 0o644).await.unwrap();
        let t = Instant::now();
        for i in 0..mb {
            for (j, part) in block.chunks(256 * 1024).enumerate() {
                let off = (i << 20) + j * 256 * 1024;
                write(conn, &h, off as u64, part, stable_how::UNSTABLE).await.unwrap();
            }
        }
        commit(conn, &h).await.unwrap();
        let w = mb as f64 / t.elapsed().as_secs_f64();
        let t = Instant::now();
        let n = read_all(conn, &h).await.len();
        let r = mb as f64 / t.elapsed().as_secs_f64();
        assert_eq!(n, mb << 20);
        eprintln!(
            "NFS through {node}: write+commit {w:.0} MB/s, read {r:.0} MB/s ({mb} MiB, 256 KiB writes, 1 MiB reads)"
        );
    }

    // An UNSTABLE write through either node is answered without waiting for the bricks (no
    // attributes after it: a stat would wait for write-behind's flush); COMMIT makes it stable
    // and its attributes show it.
    for (node, conn) in [("n1", &mut c1), ("n2", &mut c2)] {
        enter(topo.ns(node));
        let h = create(conn, &dir, &format!("unstable-{node}"), 0o644).await.unwrap();
        let w = write(conn, &h, 5, b"not yet stable", stable_how::UNSTABLE).await.unwrap();
        assert_eq!((w.count, w.committed), (14, stable_how::UNSTABLE));
        assert!(matches!(w.file_wcc.after, Nfs3Option::None), "{node}: no stat after an UNSTABLE write");
        commit(conn, &h).await.unwrap();
        assert_eq!(getattr(conn, &h).await.unwrap().size, 19, "{node}");
        assert_eq!(read_all(conn, &h).await, b"\0\0\0\0\0not yet stable");
    }

    // Deleted through node 1: node 2 answers STALE for the handle, never other data, also to
    // a COMMIT of the file it wrote (which syncs its cached descriptor first).
    enter(topo.ns("n1"));
    remove(&mut c1, &dir, "from-n2.txt").await.unwrap();
    enter(topo.ns("n2"));
    assert_eq!(getattr(&mut c2, &g).await.unwrap_err(), nfsstat3::NFS3ERR_STALE);
    assert_eq!(commit(&mut c2, &g).await.unwrap_err(), nfsstat3::NFS3ERR_STALE);

    // A file being written through one node and deleted through the other: WRITEs rely on
    // the attributes the writing node checked up to 1 s before (a stat would wait for
    // write-behind's flush), so they answer STALE within that second (plus, on FUSE, the
    // mount's attribute timeout), never for ever.
    for (writer, deleter) in [("n1", "n2"), ("n2", "n1")] {
        let name = format!("deleted-while-written-{writer}");
        enter(topo.ns(writer));
        let mut cw = mount(2049, 0, 0).await;
        let h = create(&mut cw, &dir, &name, 0o644).await.unwrap();
        write(&mut cw, &h, 0, b"first", stable_how::UNSTABLE).await.unwrap();
        enter(topo.ns(deleter));
        let mut cd = mount(2049, 0, 0).await;
        remove(&mut cd, &dir, &name).await.unwrap();
        enter(topo.ns(writer));
        let t = Instant::now();
        loop {
            match write(&mut cw, &h, 5, b"more", stable_how::UNSTABLE).await {
                Err(nfsstat3::NFS3ERR_STALE) => break,
                Ok(_) => assert!(t.elapsed() < Duration::from_secs(5), "{writer}: WRITEs to a deleted file succeed"),
                Err(e) => panic!("{writer}: WRITE to a deleted file: {e:?}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        eprintln!("{writer} answered STALE to WRITEs {:?} after {deleter} deleted the file", t.elapsed());
    }

    // Node 1's FUSE client killed: nasgw remounts; the old handles work again on node 1.
    let client = fuse_client_of(n1.pid()).expect("node 1's FUSE client");
    // SAFETY: kill(2) on the glusterfs process node 1's nasgw started.
    unsafe { libc::kill(client as i32, libc::SIGKILL) };
    let t = Instant::now();
    // UNHEALTHY lasts only while nasgw mounts again (often under 0.3 s): too short to catch by
    // polling `status`, so its log says when it noticed.
    wait_for("node 1 to notice its FUSE client died", Duration::from_secs(10), Duration::from_millis(20), || {
        n1.logs().contains("to=remounting").then_some(())
    });
    wait_ok(&n1);
    eprintln!("node 1 remounted and healthy {:?} after its FUSE client was killed", t.elapsed());
    enter(topo.ns("n1"));
    let mut c1 = mount(2049, 0, 0).await;
    assert_eq!(read_all(&mut c1, &f).await, data, "node 1's handle after the remount");
    drop((c1, c2));

    // A brick killed during a 1 GiB SMB upload through the gfapi node: smbclient sees no error;
    // once the brick is back and self-heal has run, every brick holds the exact bytes.
    let big = cluster.dir().join("big-src.bin");
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&big).unwrap());
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let block: Vec<u8> = (0..(1 << 17))
            .flat_map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()
            })
            .collect();
        for i in 0..1024u64 {
            f.write_all(&i.to_le_bytes()).unwrap(); // each MiB numbered: a misplaced one shows
            f.write_all(&block[8..]).unwrap();
        }
    }
    let upload = {
        let (ns, src) = (topo.ns("n2").to_string(), big.clone());
        std::thread::spawn(move || {
            let put = format!("put {} big.bin", src.display());
            std::process::Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &ns,
                    "smbclient",
                    "//127.0.0.1/pub",
                    "-p",
                    "445",
                    "-N",
                    "-m",
                    "SMB3",
                    "-c",
                    &put,
                ])
                .output()
                .unwrap()
        })
    };
    let on_brick = cluster.nodes[2].brick.join("big.bin");
    wait_for("200 MiB uploaded", Duration::from_secs(120), Duration::from_millis(20), || {
        (std::fs::metadata(&on_brick).map_or(0, |m| m.len()) >= 200 << 20).then_some(())
    });
    let killed = cluster.kill_brick(2);
    eprintln!("brick on n3 (pid {killed}) killed during a 1 GiB SMB upload through the gfapi node");
    let out = upload.join().unwrap();
    ok(&out, "smbclient put with a brick down");
    cluster.restart_bricks();
    let healed = cluster.wait_healed(Duration::from_secs(240));
    eprintln!("self-heal finished {:.1} s after the brick returned", healed.as_secs_f64());
    for n in &cluster.nodes {
        let same = std::process::Command::new("cmp").arg(&big).arg(n.brick.join("big.bin")).status().unwrap();
        assert!(same.success(), "{}'s brick differs from what was uploaded", n.name);
    }

    // Removed through node 1 while node 2 (gfapi) holds it open for an NFS reader (its SMB
    // CLOSE closed the upload's descriptor): the bricks keep it (in `.glusterfs/unlink`) only
    // until node 2 lets go of it.
    enter(topo.ns("n2"));
    let mut c2 = mount(2049, 0, 0).await;
    let root2 = c2.root_nfs_fh3();
    let (h, _) = lookup(&mut c2, &root2, b"big.bin").await.unwrap();
    assert_eq!(read(&mut c2, &h, 0, 4096).await.unwrap().0.len(), 4096);
    smb(topo.ns("n1"), "del big.bin");
    let unlinked = |n: &nasgw_tests::gluster::GlusterNode| {
        std::fs::read_dir(n.brick.join(".glusterfs/unlink")).map_or(0, |d| d.count())
    };
    assert!(cluster.nodes.iter().any(|n| unlinked(n) > 0), "node 2's open descriptor pins the removed file");
    let t = Instant::now();
    wait_for("node 2 to let go of the removed file", Duration::from_secs(60), Duration::from_millis(200), || {
        cluster.nodes.iter().all(|n| unlinked(n) == 0).then_some(())
    });
    eprintln!("the removed 1 GiB file's space was freed on every brick {:?} after the delete", t.elapsed());
    assert!(n1.stop().success());
    assert!(n2.stop().success());
}
