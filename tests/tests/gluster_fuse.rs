//! nasgw's managed FUSE mount on a real replica 3 GlusterFS volume, one cluster for every check:
//! nasgw mounts the volume itself on each node, a file written through node 1 is read
//! byte-identical through node 2 with the same GFID, a killed FUSE client makes the node
//! UNHEALTHY until nasgw has mounted again, a failed mount leaves nothing writable underneath,
//! and stop unmounts and reaps the client.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nasgw_tests::gluster::{fuse_client_of, GlusterCluster, GlusterSpec};
use nasgw_tests::{wait_for, Daemon};

fn config(servers: &[String], volume: &str) -> String {
    let list = servers.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", ");
    format!(
        "[volume]\nname = \"smb\"\nbackend = \"gluster\"\nservers = [{list}]\ngluster_volume = \"{volume}\"\n\
         access = \"fuse\"\nhealth_interval_ms = 200\nhealth_timeout_ms = 3000\n\
         [nfs]\nenabled = false\n[smb]\nenabled = false\n\
         [node]\ncontrol_socket = \"{{dir}}/ctl.sock\"\nstate_dir = \"{{dir}}/state\"\n"
    )
}

/// This node's state as `nasgw status --json` reports it.
fn state(d: &Daemon) -> String {
    let out = d.ctl(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["nodes"]
        .as_array()
        .and_then(|n| n.iter().find(|n| n["this_node"] == true))
        .map_or(String::new(), |n| n["state"].as_str().unwrap_or_default().to_string())
}

fn wait_state(d: &Daemon, want: &str, timeout: Duration) -> Duration {
    let t0 = Instant::now();
    wait_for(&format!("{} to be {want}", d.name), timeout, Duration::from_millis(50), || {
        (state(d) == want).then_some(())
    });
    t0.elapsed()
}

/// The mount point seen from inside the daemon's mount namespace.
fn inside(d: &Daemon, path: &Path) -> PathBuf {
    PathBuf::from(format!("/proc/{}/root{}", d.pid(), path.display()))
}

/// File-system types stacked on `path` in the daemon's mount namespace, bottom first.
fn stack(d: &Daemon, path: &Path) -> Vec<String> {
    let info = std::fs::read_to_string(format!("/proc/{}/mountinfo", d.pid())).unwrap_or_default();
    let want = path.to_string_lossy();
    info.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let sep = f.iter().position(|x| *x == "-")?;
            (f.get(4)? == &want).then(|| f[sep + 1].to_string())
        })
        .collect()
}

/// The glusterfs client process nasgw started (its child).
fn fuse_client(d: &Daemon) -> Option<u32> {
    fuse_client_of(d.pid())
}

fn gfid(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut buf = [0u8; 64];
    // SAFETY: valid strings and buffer.
    let n = unsafe { libc::getxattr(p.as_ptr(), c"glusterfs.gfid.string".as_ptr(), buf.as_mut_ptr().cast(), 64) };
    assert!(n > 0, "gfid of {}: {}", path.display(), std::io::Error::last_os_error());
    String::from_utf8_lossy(&buf[..n as usize]).into_owned()
}

const CHUNK: usize = 1 << 20;
const GIB_CHUNKS: usize = 1024;

/// Chunk `i` of the 1 GiB test pattern: one pseudo-random MiB with the chunk number stamped at
/// its start and end (so a misplaced or repeated chunk is caught). Cheap even in a debug build.
fn fill(buf: &mut [u8], i: usize) {
    static BASE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let base = BASE.get_or_init(|| {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        (0..CHUNK / 8)
            .flat_map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()
            })
            .collect()
    });
    buf.copy_from_slice(base);
    buf[..8].copy_from_slice(&(i as u64).to_le_bytes());
    buf[CHUNK - 8..].copy_from_slice(&(i as u64).to_le_bytes());
}

fn assert_same_as_pattern(path: &Path) {
    use std::io::Read;
    let mut f = std::fs::File::open(path).unwrap();
    assert_eq!(f.metadata().unwrap().len(), (CHUNK * GIB_CHUNKS) as u64, "{}", path.display());
    let (mut want, mut got) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
    for i in 0..GIB_CHUNKS {
        fill(&mut want, i);
        f.read_exact(&mut got).unwrap();
        assert!(want == got, "{}: chunk {i} differs", path.display());
    }
}

#[test]
fn managed_fuse_mount_serves_remounts_and_unmounts() {
    let cluster = GlusterCluster::start(GlusterSpec::default());
    let root = cluster.dir().to_path_buf();
    let topo = cluster.topo();
    let n1 = Daemon::start("n1", &root.join("d1"), &config(&cluster.servers_for(0), "smb"), Some(topo.ns("n1")));
    let n2 = Daemon::start("n2", &root.join("d2"), &config(&cluster.servers_for(1), "smb"), Some(topo.ns("n2")));
    let t = wait_state(&n1, "OK", Duration::from_secs(30));
    wait_state(&n2, "OK", Duration::from_secs(30));
    eprintln!("n1 healthy {:.1} s after its control socket answered", t.as_secs_f64());
    let mnt = root.join("d1/state/mnt");
    assert_eq!(stack(&n1, &mnt), ["tmpfs", "fuse.glusterfs"], "guard under the volume");
    // The mount is private to nasgw's mount namespace.
    assert!(std::fs::read_dir(&mnt).unwrap().next().is_none());

    // Written through node 1's mount, read byte-identical through node 2's, same GFID.
    let m1 = inside(&n1, &mnt);
    let m2 = inside(&n2, &root.join("d2/state/mnt"));
    let data: Vec<u8> = (0..5_000_000u32).map(|i| (i.wrapping_mul(2654435761) >> 11) as u8).collect();
    std::fs::create_dir(m1.join("dir")).unwrap();
    std::fs::write(m1.join("dir/f.bin"), &data).unwrap();
    assert_eq!(std::fs::read(m2.join("dir/f.bin")).unwrap(), data);
    let g = gfid(&m1.join("dir/f.bin"));
    assert_eq!(g, gfid(&m2.join("dir/f.bin")));
    assert_eq!(g.len(), 36, "{g}");
    // The aux-gfid mount opens the file by identity alone, on the other node.
    assert_eq!(std::fs::read(m2.join(format!(".gfid/{g}"))).unwrap(), data);

    // Kill node 1's FUSE client: nasgw sees it, reports UNHEALTHY, mounts again, back to OK.
    let old = fuse_client(&n1).expect("nasgw's glusterfs client");
    // SAFETY: kill(2) on the glusterfs process the nasgw under test started.
    unsafe { libc::kill(old as i32, libc::SIGKILL) };
    let t0 = Instant::now();
    // UNHEALTHY lasts only while nasgw mounts again (often under 0.3 s): too short to catch by
    // polling `status`, so its log says when it noticed.
    wait_for("n1 to notice its FUSE client died", Duration::from_secs(10), Duration::from_millis(20), || {
        n1.logs().contains("to=remounting").then_some(())
    });
    let unhealthy = t0.elapsed();
    wait_state(&n1, "OK", Duration::from_secs(30));
    let back = t0.elapsed();
    eprintln!("FUSE client killed: noticed (remounting) after {unhealthy:?}, remounted and OK after {back:?}");
    let new = fuse_client(&n1).expect("a new client");
    assert_ne!(old, new);
    assert_eq!(stack(&n1, &mnt), ["tmpfs", "fuse.glusterfs"], "no dead mount left stacked");
    assert_eq!(std::fs::read(m1.join("dir/f.bin")).unwrap(), data);
    assert!(n1.logs().contains("FUSE client died"), "{}", n1.logs());

    // Under systemd nasgw shares the node's mount namespace, so a nasgw killed together with
    // its FUSE client (a watchdog abort) leaves a dead mount: the next start clears it and
    // serves (it used to fail on EEXIST at every restart, for ever).
    let d4 = root.join("d4");
    let m4 = d4.join("state/mnt");
    let cfg4 = config(&cluster.servers_for(0), "smb");
    let n4 = Daemon::start_sharing_mounts("n4", &d4, &cfg4, topo.ns("n1"));
    wait_state(&n4, "OK", Duration::from_secs(30));
    let client = fuse_client(&n4).expect("n4's glusterfs client");
    assert!(!n4.kill().success());
    // SAFETY: kill(2) on the glusterfs process the killed nasgw had started.
    unsafe { libc::kill(client as i32, libc::SIGKILL) };
    wait_for("the FUSE client to die", Duration::from_secs(10), Duration::from_millis(20), || {
        (!Path::new(&format!("/proc/{client}")).exists()).then_some(())
    });
    let dead = std::fs::metadata(&m4).unwrap_err();
    assert_eq!(dead.raw_os_error(), Some(libc::ENOTCONN), "a dead mount is left: {dead}");
    let n4 = Daemon::start_sharing_mounts("n4", &d4, &cfg4, topo.ns("n1"));
    let t = wait_state(&n4, "OK", Duration::from_secs(30));
    eprintln!("restart over a dead FUSE mount: OK after {:.1} s", t.as_secs_f64());
    assert_eq!(std::fs::read(m4.join("dir/f.bin")).unwrap(), data);
    assert!(n4.stop().success());
    assert!(std::fs::read_dir(&m4).unwrap().next().is_none(), "stop unmounted everything");

    // A mount that cannot happen (no such volume): UNHEALTHY, and the directory underneath
    // refuses writes instead of silently taking them.
    let n3 = Daemon::start("n3", &root.join("d3"), &config(&cluster.servers_for(2), "nosuch"), Some(topo.ns("n3")));
    wait_for("two failed mount attempts", Duration::from_secs(30), Duration::from_millis(50), || {
        (n3.logs().matches("mount failed").count() >= 2).then_some(())
    });
    assert_eq!(state(&n3), "UNHEALTHY");
    let m3 = root.join("d3/state/mnt");
    assert_eq!(stack(&n3, &m3), ["tmpfs"]);
    let err = std::fs::write(inside(&n3, &m3).join("lost.txt"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    assert!(n3.stop().success());
    assert!(std::fs::read_dir(&m3).unwrap().next().is_none(), "nothing written underneath");

    // Kill a brick during a 1 GiB write through node 2's managed mount: the writer sees no
    // error; after the brick returns and self-heal runs, every brick holds the exact bytes.
    let big = m2.join("big.bin");
    let writer = {
        let big = big.clone();
        std::thread::spawn(move || -> std::io::Result<f64> {
            use std::io::Write;
            let t = Instant::now();
            let mut f = std::fs::File::create(&big)?;
            let mut buf = vec![0u8; CHUNK];
            for i in 0..GIB_CHUNKS {
                fill(&mut buf, i);
                f.write_all(&buf)?;
            }
            f.sync_all()?;
            Ok(t.elapsed().as_secs_f64())
        })
    };
    wait_for("200 MiB written", Duration::from_secs(120), Duration::from_millis(20), || {
        (std::fs::metadata(&big).map_or(0, |m| m.len()) >= 200 << 20).then_some(())
    });
    let killed = cluster.kill_brick(2);
    eprintln!("brick on n3 (pid {killed}) killed during the write");
    let secs = writer.join().unwrap().expect("the writer sees no error while a brick is down");
    eprintln!("1 GiB written through nasgw's FUSE mount with a brick down: {:.0} MB/s", 1024.0 / secs);
    cluster.restart_bricks();
    let healed = cluster.wait_healed(Duration::from_secs(180));
    eprintln!("self-heal finished {:.1} s after the brick returned", healed.as_secs_f64());
    for n in &cluster.nodes {
        assert_same_as_pattern(&n.brick.join("big.bin"));
    }
    assert_same_as_pattern(&m1.join("big.bin"));

    // Stop unmounts and reaps the client.
    let client = fuse_client(&n1).unwrap();
    assert!(n1.stop().success());
    assert!(!Path::new(&format!("/proc/{client}")).exists(), "client {client} reaped on stop");
    assert!(n2.stop().success());
}
