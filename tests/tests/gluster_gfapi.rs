//! nasgw's libgfapi layer against a real replica 3 volume (one cluster for every check): GFID
//! handles equal to what a FUSE mount on another node sees, objects reopened from a GFID alone,
//! per-operation credentials, per-client lock owners whose locks conflict cluster-wide (also
//! with an fcntl lock through a FUSE mount: the recovery lock works on both backends), and the
//! gfapi health probe of a nasgw daemon going UNHEALTHY on quorum loss and back.

use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::time::{Duration, Instant};

use nasgw::gluster::gfapi::{Credentials, Volume, GFAPI_SET_ATTR_MODE};
use nasgw_tests::gluster::{GlusterCluster, GlusterSpec};
use nasgw_tests::{wait_for, Daemon};

/// Moves this test thread (and the threads libgfapi starts from it) into namespace `ns`.
fn enter_netns(ns: &str) {
    let f = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
    // SAFETY: setns on a valid namespace fd; affects only the calling thread.
    assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "{}", std::io::Error::last_os_error());
}

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

fn gfid_string(g: &[u8; 16]) -> String {
    let h: String = g.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

fn fuse_gfid(path: &std::path::Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut buf = [0u8; 64];
    // SAFETY: valid strings and buffer.
    let n = unsafe { libc::getxattr(p.as_ptr(), c"glusterfs.gfid.string".as_ptr(), buf.as_mut_ptr().cast(), 64) };
    assert!(n > 0, "{}", std::io::Error::last_os_error());
    String::from_utf8_lossy(&buf[..n as usize]).into_owned()
}

fn wrlock(start: i64, len: i64) -> libc::flock {
    // SAFETY: flock is plain data.
    let mut l: libc::flock = unsafe { std::mem::zeroed() };
    l.l_type = libc::F_WRLCK as i16;
    l.l_whence = libc::SEEK_SET as i16;
    l.l_start = start;
    l.l_len = len;
    l
}

fn node_state(d: &Daemon) -> String {
    let out = d.ctl(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["nodes"][0]["state"].as_str().unwrap_or_default().to_string()
}

#[test]
fn gfapi_handles_credentials_locks_and_health() {
    let cluster =
        GlusterCluster::start(GlusterSpec { clients: vec![("c1".into(), "198.18.0.10".into())], ..Default::default() });
    let fuse = cluster.mount("n1", &cluster.dir().join("fuse-n1"));
    enter_netns(cluster.topo().ns("n2"));
    let t0 = Instant::now();
    let vol = Volume::connect("smb", &cluster.servers_for(1), &cluster.dir().join("gfapi.log")).expect("glfs_init");
    eprintln!("glfs_init took {:.2} s", t0.elapsed().as_secs_f64());
    assert_eq!(
        Volume::connect("nosuch", &cluster.servers_for(1), &cluster.dir().join("gfapi2.log"))
            .unwrap_err()
            .raw_os_error(),
        Some(libc::ENOENT),
        "an unknown volume is ENOENT"
    );
    Credentials::root().apply().unwrap();
    let (root, st) = vol.root().unwrap();
    assert_eq!(st.st_mode & libc::S_IFMT, libc::S_IFDIR);
    assert_eq!(gfid_string(&root.gfid().unwrap()), "00000000-0000-0000-0000-000000000001");

    // Written through the FUSE mount on node 1, read through gfapi on node 2: same bytes, same GFID.
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(40503) >> 7) as u8).collect();
    std::fs::create_dir(fuse.join("d")).unwrap();
    std::fs::write(fuse.join("d/from-fuse.bin"), &data).unwrap();
    let (d, _) = vol.lookup(&root, os("d")).unwrap();
    let (f, st) = vol.lookup(&d, os("from-fuse.bin")).unwrap();
    assert_eq!(st.st_size as usize, data.len());
    let g = f.gfid().unwrap();
    assert_eq!(gfid_string(&g), fuse_gfid(&fuse.join("d/from-fuse.bin")));
    let fd = vol.open(&f, libc::O_RDONLY).unwrap();
    let mut back = vec![0u8; data.len() + 10];
    let mut off = 0;
    loop {
        let n = fd.read_at(&mut back[off..], off as u64).unwrap();
        if n == 0 {
            break;
        }
        off += n;
    }
    assert_eq!(&back[..off], &data[..]);
    drop(fd);

    // An object from its GFID alone (what an NFS handle from another node carries).
    let (again, st2) = vol.object_from_gfid(&g).unwrap();
    assert_eq!(again.gfid().unwrap(), g);
    assert_eq!(st2.st_ino, st.st_ino);
    let missing = [7u8; 16];
    assert!(vol.object_from_gfid(&missing).is_err());

    // Written through gfapi, visible through FUSE; directory listing with attributes.
    let (h, _) = vol.create(&d, os("from-gfapi.txt"), libc::O_RDWR | libc::O_EXCL, 0o644).unwrap();
    let w = vol.open(&h, libc::O_RDWR).unwrap();
    w.write_all_at(b"hello from gfapi", 0).unwrap();
    w.fsync().unwrap();
    drop(w);
    assert_eq!(std::fs::read(fuse.join("d/from-gfapi.txt")).unwrap(), b"hello from gfapi");
    assert_eq!(
        vol.create(&d, os("from-gfapi.txt"), libc::O_RDWR | libc::O_EXCL, 0o644).err().and_then(|e| e.raw_os_error()),
        Some(libc::EEXIST)
    );
    let mut names: Vec<String> =
        vol.read_dir(&d).unwrap().iter().map(|e| String::from_utf8_lossy(&e.name).into_owned()).collect();
    names.sort();
    assert_eq!(names, ["from-fuse.bin", "from-gfapi.txt"]);
    vol.rename(&d, os("from-gfapi.txt"), &root, os("moved.txt")).unwrap();
    // The other node's FUSE mount sees it once its kernel entry cache (1 s) expires.
    assert_eq!(vol.lookup(&d, os("from-gfapi.txt")).err().and_then(|e| e.raw_os_error()), Some(libc::ENOENT));
    let t = Instant::now();
    wait_for("rename seen by a FUSE listing", Duration::from_secs(5), Duration::from_millis(50), || {
        let listed: Vec<_> = std::fs::read_dir(fuse.join("d")).ok()?.flatten().map(|e| e.file_name()).collect();
        (listed == [OsStr::new("from-fuse.bin")]).then_some(())
    });
    assert_eq!(std::fs::read(fuse.join("moved.txt")).unwrap(), b"hello from gfapi");
    eprintln!("rename seen through FUSE after {:?}", t.elapsed());
    assert_eq!(
        vol.lookup(&root, os("moved.txt")).unwrap().0.gfid().unwrap(),
        h.gfid().unwrap(),
        "rename keeps the GFID"
    );

    // Created and opened in one call.
    let (co, cst, cf) = vol.create_open(&d, os("created-open"), libc::O_RDWR | libc::O_EXCL, 0o640).unwrap();
    assert_eq!(cst.st_mode & libc::S_IFMT, libc::S_IFREG);
    assert_eq!(cst.st_ino, vol.stat(&co).unwrap().st_ino);
    cf.write_all_at(&[7u8; 5000], 100).unwrap();
    cf.fsync().unwrap();
    drop((cf, co));
    assert_eq!(std::fs::metadata(fuse.join("d/created-open")).unwrap().len(), 5100);
    std::fs::remove_file(fuse.join("d/created-open")).unwrap();

    // A directory removed elsewhere: operations inside it through a held object fail (a lookup
    // with ENOENT, a create with ESTALE), so the gfapi backend need not stat a directory it
    // knows before working inside it.
    let (gone, _) = vol.mkdir(&root, os("gone"), 0o755).unwrap();
    std::fs::remove_dir(fuse.join("gone")).unwrap();
    let inside = [
        vol.lookup(&gone, os("x")).err().and_then(|e| e.raw_os_error()),
        vol.create(&gone, os("y"), libc::O_RDWR | libc::O_EXCL, 0o644).err().and_then(|e| e.raw_os_error()),
    ];
    eprintln!("inside a removed directory: lookup {:?}, create {:?}", inside[0], inside[1]);
    assert!(inside.iter().all(|e| matches!(e, Some(libc::ESTALE) | Some(libc::ENOENT))), "{inside:?}");
    drop(gone);

    // Credentials per operation: a file created as uid 1000 is owned by 1000; uid 1000 may not
    // write into root's 0755 directory.
    let (open, _) = vol.mkdir(&root, os("open"), 0o777).unwrap();
    vol.setattr(
        &open,
        &{
            let mut s = st;
            s.st_mode = 0o777;
            s
        },
        GFAPI_SET_ATTR_MODE,
    )
    .unwrap();
    let user = Credentials { uid: 1000, gid: 1000, groups: vec![1000] };
    user.apply().unwrap();
    vol.create(&open, os("mine"), libc::O_RDWR, 0o600).unwrap();
    let denied = vol.create(&d, os("nope"), libc::O_RDWR, 0o600).err().and_then(|e| e.raw_os_error());
    Credentials::root().apply().unwrap();
    assert_eq!(denied, Some(libc::EACCES));
    let meta = std::fs::metadata(fuse.join("open/mine")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (1000, 1000));

    // Lock owners: two clients' locks conflict on every brick; the same owner may relock.
    let (lk, _) = vol.create(&root, os("lockfile"), libc::O_RDWR, 0o644).unwrap();
    let a = vol.open(&lk, libc::O_RDWR).unwrap();
    let b = vol.open(&lk, libc::O_RDWR).unwrap();
    a.set_lock_owner(b"client-a").unwrap();
    b.set_lock_owner(b"client-b").unwrap();
    a.posix_lock(libc::F_SETLK, &mut wrlock(0, 0)).unwrap();
    a.posix_lock(libc::F_SETLK, &mut wrlock(0, 0)).unwrap();
    let e = b.posix_lock(libc::F_SETLK, &mut wrlock(0, 0)).unwrap_err();
    assert!(matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EACCES)), "{e}");
    // The recovery lock across backends: held through gfapi on node 2, refused to an fcntl
    // through the FUSE mount on node 1 ...
    let ff = std::fs::OpenOptions::new().read(true).write(true).open(fuse.join("lockfile")).unwrap();
    // SAFETY: fcntl on an open fd with a valid flock.
    let rc = unsafe { libc::fcntl(ff.as_raw_fd(), libc::F_SETLK, &wrlock(0, 0)) };
    assert_eq!(rc, -1, "FUSE fcntl lock must conflict with the gfapi lock");
    drop(a);
    // ... and the other way round once released.
    // SAFETY: as above.
    let rc = unsafe { libc::fcntl(ff.as_raw_fd(), libc::F_SETLK, &wrlock(0, 0)) };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    let e = b.posix_lock(libc::F_SETLK, &mut wrlock(0, 0)).unwrap_err();
    assert!(matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EACCES)), "{e}");
    drop(ff);
    wait_for("FUSE lock released", Duration::from_secs(10), Duration::from_millis(50), || {
        b.posix_lock(libc::F_SETLK, &mut wrlock(0, 0)).ok()
    });
    drop(b);

    // Throughput, same volume, same size: FUSE (node 1) vs gfapi (node 2). Printed, not asserted.
    let mb = 64usize;
    let chunk = vec![0x5au8; 1 << 20];
    let t = Instant::now();
    {
        use std::io::Write;
        let mut f = std::fs::File::create(fuse.join("big-fuse")).unwrap();
        for _ in 0..mb {
            f.write_all(&chunk).unwrap();
        }
        f.sync_all().unwrap();
    }
    let fuse_w = mb as f64 / t.elapsed().as_secs_f64();
    let (bg, _) = vol.create(&root, os("big-gfapi"), libc::O_RDWR, 0o644).unwrap();
    let bf = vol.open(&bg, libc::O_RDWR).unwrap();
    let t = Instant::now();
    for i in 0..mb {
        bf.write_all_at(&chunk, (i << 20) as u64).unwrap();
    }
    bf.fsync().unwrap();
    let gfapi_w = mb as f64 / t.elapsed().as_secs_f64();
    let mut buf = vec![0u8; 1 << 20];
    let t = Instant::now();
    for i in 0..mb {
        assert_eq!(bf.read_at(&mut buf, (i << 20) as u64).unwrap(), 1 << 20);
    }
    let gfapi_r = mb as f64 / t.elapsed().as_secs_f64();
    drop(bf);
    let t = Instant::now();
    let n = std::fs::read(fuse.join("big-gfapi")).unwrap().len();
    let fuse_r = mb as f64 / t.elapsed().as_secs_f64();
    assert_eq!(n, mb << 20);
    eprintln!("throughput {mb} MiB, replica 3: FUSE write {fuse_w:.0} MB/s, gfapi write {gfapi_w:.0} MB/s, FUSE read {fuse_r:.0} MB/s, gfapi read {gfapi_r:.0} MB/s");
    drop((root, d, f, again, h, open, lk, bg));
    drop(vol);

    // A nasgw daemon over gfapi on node 3: OK; two bricks killed (quorum lost): UNHEALTHY;
    // bricks back: OK.
    let servers = cluster.servers_for(2).iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", ");
    let cfg = format!(
        "[volume]\nname = \"smb\"\nbackend = \"gluster\"\nservers = [{servers}]\naccess = \"gfapi\"\n\
         health_interval_ms = 200\nhealth_timeout_ms = 3000\n[nfs]\nenabled = false\n[smb]\nenabled = false\n\
         [node]\ncontrol_socket = \"{{dir}}/ctl.sock\"\nstate_dir = \"{{dir}}/state\"\n"
    );
    let n3 = Daemon::start("n3", &cluster.dir().join("d3"), &cfg, Some(cluster.topo().ns("n3")));
    wait_for("gfapi node OK", Duration::from_secs(30), Duration::from_millis(50), || {
        (node_state(&n3) == "OK").then_some(())
    });
    cluster.kill_brick(0);
    cluster.kill_brick(1);
    let t = Instant::now();
    wait_for("quorum loss seen", Duration::from_secs(30), Duration::from_millis(50), || {
        (node_state(&n3) == "UNHEALTHY").then_some(())
    });
    eprintln!("two bricks killed: UNHEALTHY after {:?}", t.elapsed());
    let logs = n3.logs();
    let why = logs.lines().rfind(|l| l.contains("volume health changed")).unwrap_or_default().to_string();
    eprintln!("reported as: {why}");
    assert!(why.contains("quorum lost"), "two of three bricks down is quorum loss:\n{logs}");
    cluster.restart_bricks();
    let t = Instant::now();
    wait_for("healthy again", Duration::from_secs(60), Duration::from_millis(100), || {
        (node_state(&n3) == "OK").then_some(())
    });
    eprintln!("bricks back: OK after {:?}", t.elapsed());
    assert!(n3.logs().contains("volume health changed"), "{}", n3.logs());
    assert!(n3.stop().success());
}
