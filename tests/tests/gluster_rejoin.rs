//! A storage node's power cut and return, as an appliance node lives it, on a real replica 3
//! GlusterFS volume in namespaces: node 2's link goes silent and its glusterd, brick, self-heal
//! daemon, nasgw and nasgw's FUSE client all die at once while nasgw is writing; node 1 writes
//! on; then node 2 powers on again: glusterd starts on its old state (and starts the brick), and
//! nasgw starts at once, as systemd starts it once glusterd has forked.
//!
//! A client that has just mounted answers ENOTCONN until it has connected to enough bricks, and
//! here the node's own brick is not even up yet. nasgw used to count that as a failed mount,
//! kill the client and start over (on the appliance under emulation the rebooted node never came
//! back healthy). Now node 2 mounts once, turns OK, stays OK, and its brick heals.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nasgw_tests::gluster::{GlusterCluster, GlusterSpec};
use nasgw_tests::Daemon;

/// The appliance's failover options (image/appliance/src/provision/mod.rs), ping-timeout 5.
const OPTIONS: [(&str, &str); 5] = [
    ("server.keepalive-time", "1"),
    ("server.keepalive-interval", "1"),
    ("server.keepalive-count", "2"),
    ("server.tcp-user-timeout", "3"),
    ("cluster.quorum-type", "auto"),
];

fn config(cluster: &GlusterCluster, i: usize) -> String {
    // The health timeout above the ping-timeout (5 s): the survivors' volume stalls that long
    // when node 2 goes silent, which is not their fault.
    format!(
        "{}[nfs]\nenabled = false\n[smb]\nenabled = false\n\
         [node]\ncontrol_socket = \"{{dir}}/ctl.sock\"\nstate_dir = \"{{dir}}/state\"\n",
        cluster.nasgw_volume_toml(i, "fuse").replace("health_timeout_ms = 3000", "health_timeout_ms = 8000")
    )
}

/// Waits until `d` is OK; how long that took.
fn wait_ok(d: &Daemon, timeout: Duration) -> Duration {
    let t0 = Instant::now();
    d.wait_ok(timeout);
    t0.elapsed()
}

/// The managed mount seen from outside the daemon's private mount namespace.
fn mount_of(d: &Daemon, dir: &Path) -> PathBuf {
    PathBuf::from(format!("/proc/{}/root{}", d.pid(), dir.join("state/mnt").display()))
}

#[test]
fn a_node_back_from_a_power_cut_mounts_once_and_stays_healthy() {
    let options = OPTIONS.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let mut cluster = GlusterCluster::start(GlusterSpec { options, ..Default::default() });
    let root = cluster.dir().to_path_buf();
    let (d1, d2) = (root.join("d1"), root.join("d2"));
    let n1 = Daemon::start("n1", &d1, &config(&cluster, 0), Some(cluster.topo().ns("n1")));
    let n2 = Daemon::start("n2", &d2, &config(&cluster, 1), Some(cluster.topo().ns("n2")));
    wait_ok(&n1, Duration::from_secs(60));
    wait_ok(&n2, Duration::from_secs(60));
    let m1 = mount_of(&n1, &d1);
    std::fs::create_dir(m1.join("during")).unwrap();

    // Node 2 writes when the power goes: the survivors' bricks are left with its half-done
    // writes and its locks.
    let m2 = mount_of(&n2, &d2);
    let writer = std::thread::spawn(move || {
        let buf = vec![7u8; 64 << 10];
        for i in 0.. {
            if std::fs::write(m2.join(format!("before-{}", i % 50)), &buf).is_err() {
                return i;
            }
        }
        unreachable!()
    });
    std::thread::sleep(Duration::from_millis(500));
    cluster.power_cut(1);
    let _ = n2.kill();
    let written = writer.join().unwrap();
    eprintln!("node 2 powered off after {written} writes of 64 KiB");

    // The survivors go on (after the ping-timeout) and write what node 2 must heal.
    let t_cut = Instant::now();
    for i in 0..20 {
        std::fs::write(m1.join(format!("during/f{i}")), vec![i as u8; 256 << 10]).unwrap();
    }
    eprintln!("node 1 wrote 20 files {:.1} s after the cut", t_cut.elapsed().as_secs_f64());

    // Power on: glusterd, and nasgw at once (systemd starts it once glusterd has forked, before
    // glusterd answers or has started the brick).
    cluster.power_on(1);
    let n2 = Daemon::start("n2", &d2, &config(&cluster, 1), Some(cluster.topo().ns("n2")));
    let t_on = Instant::now();
    cluster.wait_glusterd(1);
    let glusterd = t_on.elapsed();
    let ok = wait_ok(&n2, Duration::from_secs(90)) + glusterd;
    eprintln!(
        "node 2 back: glusterd answered {:.1} s and nasgw was OK {:.1} s after nasgw's control socket answered",
        glusterd.as_secs_f64(),
        ok.as_secs_f64()
    );
    let logs = n2.logs();
    assert_eq!(logs.matches("volume mounted").count(), 1, "node 2 mounted more than once:\n{logs}");
    assert!(!logs.contains("mount failed"), "node 2's mount was given up and made again:\n{logs}");

    // It stays OK while its brick heals (the health probe writes every 200 ms).
    let t_stable = Instant::now();
    while t_stable.elapsed() < Duration::from_secs(15) {
        let s = n2.this_node_state();
        assert_eq!(
            s,
            "OK",
            "node 2 turned {s} {:.1} s after it was OK:\n{}",
            t_stable.elapsed().as_secs_f64(),
            n2.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let healed = cluster.wait_healed(Duration::from_secs(120));
    eprintln!("self-heal done {:.1} s after node 2 was OK and stable", healed.as_secs_f64());
    for i in 0..20 {
        let brick = cluster.nodes[1].brick.join(format!("during/f{i}"));
        assert_eq!(std::fs::read(&brick).unwrap(), vec![i as u8; 256 << 10], "{}", brick.display());
    }
    let m2 = mount_of(&n2, &d2);
    assert_eq!(std::fs::read(m2.join("during/f19")).unwrap(), vec![19u8; 256 << 10]);
    assert_eq!(n1.this_node_state(), "OK");
    assert!(n2.stop().success());
    assert!(n1.stop().success());
}
