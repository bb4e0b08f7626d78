//! HA over a real replica 3 GlusterFS volume: three nasgw nodes (n1 and n3 over their managed
//! FUSE mounts, n2 over libgfapi) keep the recovery lock *on the volume* (an fcntl lock through
//! the mount, a gfapi lock: both enforced by the bricks, so they exclude each other and any
//! other client) and take their health from the GlusterFS backend. A node whose FUSE client dies
//! is UNHEALTHY and its public addresses move until nasgw has mounted again; a dead leader's lock
//! is freed by the bricks and a survivor leads and serves every address. Prints the timeline.

mod ha_support;

use std::path::Path;
use std::time::{Duration, Instant};

use ha_support::{connect_echo, held_in, Sampler, ECHO_PORT, VIPS};
use nasgw_tests::gluster::{fuse_client_of, GlusterCluster, GlusterSpec};
use nasgw_tests::{wait_for, Daemon};

const ACCESS: [&str; 3] = ["fuse", "gfapi", "fuse"];
const POLL: Duration = Duration::from_millis(20);

fn config(cluster: &GlusterCluster, i: usize, key: &Path) -> String {
    let servers = cluster.servers_for(i).iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", ");
    let nodes = cluster.servers().iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", ");
    let vips = VIPS.iter().map(|v| format!("{{ address = \"{v}/16\", interface = \"eth0\" }}")).collect::<Vec<_>>();
    // health_timeout_ms above the volume's network.ping-timeout (5 s): a brick that vanishes
    // stalls every client of the volume that long, and that must not count as this node's fault.
    format!(
        "[volume]\nname = \"smb\"\nbackend = \"gluster\"\nservers = [{servers}]\naccess = \"{access}\"\n\
         health_interval_ms = 200\nhealth_timeout_ms = 8000\n\
         [nfs]\nlisten = \"0.0.0.0:12049\"\n[smb]\nlisten = \"0.0.0.0:4445\"\n\
         [cluster]\nnodes = [{nodes}]\nrecovery_lock = \"/lock/lockfile\"\nsecret_file = \"{key}\"\n\
         test_echo_port = {ECHO_PORT}\npublic_addresses = [{vips}]\n\
         [node]\ncontrol_socket = \"{{dir}}/ctl.sock\"\nstate_dir = \"{{dir}}/state\"\n",
        access = ACCESS[i],
        key = key.display(),
        vips = vips.join(", "),
    )
}

fn d(daemons: &[Option<Daemon>], i: usize) -> &Daemon {
    daemons[i].as_ref().expect("running")
}

fn status(d: &Daemon) -> serde_json::Value {
    serde_json::from_slice(&d.ctl(&["status", "--json"]).stdout).unwrap_or_default()
}

/// Node `j`'s state as `d` sees it.
fn state_seen(d: &Daemon, j: usize) -> String {
    status(d)["nodes"][j]["state"].as_str().unwrap_or_default().to_string()
}

/// VIP -> live nodes holding it.
fn holders(cluster: &GlusterCluster, live: &[usize]) -> Vec<Vec<usize>> {
    let held: Vec<(usize, Vec<String>)> =
        live.iter().map(|i| (*i, held_in(cluster.topo().ns(&cluster.nodes[*i].name)))).collect();
    VIPS.iter().map(|v| held.iter().filter(|(_, h)| h.iter().any(|a| a == v)).map(|(i, _)| *i).collect()).collect()
}

fn wait_served(cluster: &GlusterCluster, by: &[usize], timeout: Duration, what: &str) -> Duration {
    let t0 = Instant::now();
    wait_for(what, timeout, POLL, || holders(cluster, by).iter().all(|h| h.len() == 1).then_some(()));
    t0.elapsed()
}

/// Can another client of the volume take the recovery lock? (python's lockf is an fcntl lock.)
fn lock_free_for_others(lock: &Path) -> bool {
    let out = std::process::Command::new("python3")
        .args(["-c", "import fcntl,sys; f=open(sys.argv[1],'r+'); fcntl.lockf(f, fcntl.LOCK_EX|fcntl.LOCK_NB)"])
        .arg(lock)
        .output()
        .expect("python3 runs");
    out.status.success()
}

#[test]
fn public_addresses_follow_healthy_gluster_nodes_with_the_recovery_lock_on_the_volume() {
    let cluster = GlusterCluster::start(GlusterSpec {
        clients: vec![("c1".into(), "198.18.0.10".into())],
        // Bricks notice a client that vanished without a word (a dead node) within ~3 s and
        // drop its locks, so a dead leader's recovery lock frees quickly.
        options: [
            ("server.keepalive-time", "1"),
            ("server.keepalive-interval", "1"),
            ("server.keepalive-count", "2"),
            ("server.tcp-user-timeout", "3"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
        ..Default::default()
    });
    let root = cluster.dir().to_path_buf();
    let key = root.join("cluster.key");
    std::fs::write(&key, "nasgw-gluster-ha-test-secret-0123456789\n").unwrap();
    let t0 = Instant::now();
    let mut daemons: Vec<Option<Daemon>> = (0..3)
        .map(|i| {
            let name = cluster.nodes[i].name.clone();
            let ns = cluster.topo().ns(&name).to_string();
            Some(Daemon::start(&name, &root.join(format!("d{i}")), &config(&cluster, i, &key), Some(&ns)))
        })
        .collect();
    let all = [0, 1, 2];
    let logs = |daemons: &[Option<Daemon>]| daemons.iter().flatten().map(Daemon::logs).collect::<Vec<_>>().join("\n");
    wait_for("every public address on exactly one node", Duration::from_secs(60), POLL, || {
        holders(&cluster, &all).iter().all(|h| h.len() == 1).then_some(())
    });
    eprintln!("3 nodes (fuse, gfapi, fuse) serve every address {:.1} s after start", t0.elapsed().as_secs_f64());
    let leader = status(d(&daemons, 0))["leader"].as_u64().expect("a leader") as usize;

    // The recovery lock is a real lock on the volume: a client of its own cannot take it.
    let mnt = cluster.mount("c1", &root.join("mnt-c1"));
    let lock = mnt.join("lock/lockfile");
    assert!(lock.exists(), "the leader created {}", lock.display());
    assert!(!lock_free_for_others(&lock), "the leader ({}) holds the lock on the bricks", ACCESS[leader]);

    // n1's FUSE client dies: n1 is UNHEALTHY and holds nothing; its addresses are served by n2
    // and n3; once nasgw has mounted again it is OK and gets an address back (failback).
    let sampler = Sampler::start((0..3).map(|i| cluster.topo().ns(&cluster.nodes[i].name).to_string()).collect());
    let client = fuse_client_of(d(&daemons, 0).pid()).expect("n1's glusterfs client");
    let t1 = Instant::now();
    // SAFETY: kill(2) on the glusterfs process the nasgw under test started.
    unsafe { libc::kill(client as i32, libc::SIGKILL) };
    wait_for("n1 to be UNHEALTHY and hold nothing", Duration::from_secs(15), POLL, || {
        (state_seen(d(&daemons, 1), 0) == "UNHEALTHY" && holders(&cluster, &[0]).iter().all(Vec::is_empty))
            .then_some(())
    });
    let unhealthy = t1.elapsed();
    let moved = wait_served(&cluster, &[1, 2], Duration::from_secs(30), "n2 and n3 to serve every address");
    let moved = unhealthy + moved;
    wait_for("n1 to be OK again", Duration::from_secs(60), POLL, || {
        (state_seen(d(&daemons, 1), 0) == "OK").then_some(())
    });
    let ok = t1.elapsed();
    wait_for("n1 to serve an address again", Duration::from_secs(30), POLL, || {
        let h = holders(&cluster, &all);
        (h.iter().all(|h| h.len() == 1) && h.iter().any(|h| h == &[0])).then_some(())
    });
    let back = t1.elapsed();
    let (rounds, overlaps) = sampler.finish();
    eprintln!(
        "n1's FUSE client killed: UNHEALTHY and released at {:.2} s, its addresses on n2/n3 at {:.2} s, \
         n1 OK at {:.2} s, serving again at {:.2} s ({rounds} address samples)",
        unhealthy.as_secs_f64(),
        moved.as_secs_f64(),
        ok.as_secs_f64(),
        back.as_secs_f64()
    );
    assert!(overlaps.is_empty(), "an address on two nodes at once: {overlaps:?}\n{}", logs(&daemons));
    assert!(d(&daemons, 0).logs().contains("FUSE client died"), "{}", d(&daemons, 0).logs());
    assert!(!lock_free_for_others(&lock), "a node holds the lock again");

    // The leader dies (link down first, so nothing it sends reaches anyone; then every process
    // of the node: nasgw, its glusterfs client, glusterd, the brick). The bricks drop its lock,
    // a survivor takes it and serves every address.
    let leader = status(d(&daemons, 0))["leader"].as_u64().expect("a leader") as usize;
    let survivors: Vec<usize> = all.iter().copied().filter(|i| *i != leader).collect();
    let victim = cluster.nodes[leader].name.clone();
    let vip = VIPS[holders(&cluster, &all).iter().position(|h| h == &[leader]).expect("the leader holds an address")];
    let conn = connect_echo(cluster.topo().ns("c1"), vip);
    for i in &survivors {
        wait_for("the connection to be replicated", Duration::from_secs(10), POLL, || {
            let v: serde_json::Value = serde_json::from_slice(&d(&daemons, *i).ctl(&["ip", "--json"]).stdout).ok()?;
            let a = v["addresses"].as_array()?.iter().find(|a| a["address"] == vip)?.clone();
            (a["connections"].as_u64()? >= 1).then_some(())
        });
    }
    let sampler =
        Sampler::start(survivors.iter().map(|i| cluster.topo().ns(&cluster.nodes[*i].name).to_string()).collect());
    let t2 = Instant::now();
    cluster.topo().cut(&victim);
    let pids = std::process::Command::new("ip").args(["netns", "pids", cluster.topo().ns(&victim)]).output().unwrap();
    for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
        // SAFETY: kill(2) on processes of a namespace this test created.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    daemons[leader].take().expect("leader running").kill();
    let new_leader = wait_for("a new leader", Duration::from_secs(60), POLL, || {
        let l = status(d(&daemons, survivors[0]))["leader"].as_u64()? as usize;
        (l != leader).then_some(l)
    });
    let led = t2.elapsed();
    wait_served(&cluster, &survivors, Duration::from_secs(30), "the survivors to serve every address");
    let served = t2.elapsed();
    let (rounds, overlaps) = sampler.finish();
    let mut conn = conn;
    conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let reset = std::io::Read::read(&mut conn, &mut [0u8; 8]).map_err(|e| e.kind());
    let again = connect_echo(cluster.topo().ns("c1"), vip);
    drop(again);
    eprintln!(
        "leader {victim} ({}) killed with its link down: {} ({}) leads at {:.2} s, every address served at {:.2} s; \
         the client on {vip} got {reset:?} and reconnected ({rounds} address samples)",
        ACCESS[leader],
        cluster.nodes[new_leader].name,
        ACCESS[new_leader],
        led.as_secs_f64(),
        served.as_secs_f64()
    );
    assert!(overlaps.is_empty(), "an address on two nodes at once: {overlaps:?}\n{}", logs(&daemons));
    assert_eq!(reset, Err(std::io::ErrorKind::ConnectionReset), "the old connection is reset (tickle ACK)");
    assert!(served < Duration::from_secs(30), "failover took {served:?}\n{}", logs(&daemons));
    assert!(!lock_free_for_others(&lock), "the new leader holds the lock on the bricks");
    for i in survivors {
        assert!(daemons[i].take().unwrap().stop().success());
    }
}
