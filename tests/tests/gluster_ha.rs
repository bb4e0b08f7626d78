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

/// Who holds each address (VIP -> nodes), sampled continuously from `start` until `finish`.
/// Holders of every public address at one instant.
type Sample = (Instant, Vec<Vec<usize>>);

struct Timeline {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    samples: std::sync::Arc<std::sync::Mutex<Vec<Sample>>>,
    thread: std::thread::JoinHandle<()>,
}

impl Timeline {
    fn start(cluster: &GlusterCluster) -> Timeline {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let samples = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let namespaces: Vec<String> = (0..3).map(|i| cluster.topo().ns(&cluster.nodes[i].name).to_string()).collect();
        let (s, out) = (stop.clone(), samples.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                let held: Vec<Vec<String>> = namespaces.iter().map(|n| held_in(n)).collect();
                let h = VIPS.iter().map(|v| (0..3).filter(|i| held[*i].iter().any(|a| a == v)).collect()).collect();
                out.lock().unwrap().push((Instant::now(), h));
            }
        });
        Timeline { stop, samples, thread }
    }

    /// When, after `since`, a sample first matched `f`.
    fn first(&self, since: Instant, f: impl Fn(&[Vec<usize>]) -> bool) -> Option<Duration> {
        let samples = self.samples.lock().unwrap();
        samples.iter().filter(|(t, _)| *t >= since).find(|(_, h)| f(h)).map(|(t, _)| *t - since)
    }

    fn finish(self) -> usize {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap();
        let n = self.samples.lock().unwrap().len();
        n
    }
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

    // A FUSE node that does not lead loses its FUSE client: it is UNHEALTHY and releases its
    // addresses, the others serve them, and once nasgw has mounted again it is OK and gets an
    // address back (failback). The UNHEALTHY spell lasts well under a second, too short to catch
    // by polling `status` on a loaded machine: a timeline of who holds what is recorded instead.
    let victim = [0, 2].into_iter().find(|i| *i != leader).expect("a FUSE node that does not lead");
    let others: Vec<usize> = all.iter().copied().filter(|i| *i != victim).collect();
    let name = cluster.nodes[victim].name.clone();
    let sampler = Sampler::start((0..3).map(|i| cluster.topo().ns(&cluster.nodes[i].name).to_string()).collect());
    let timeline = Timeline::start(&cluster);
    let client = fuse_client_of(d(&daemons, victim).pid()).expect("the node's glusterfs client");
    let t1 = Instant::now();
    // SAFETY: kill(2) on the glusterfs process the nasgw under test started.
    unsafe { libc::kill(client as i32, libc::SIGKILL) };
    let gone = |h: &[Vec<usize>]| h.iter().all(|n| !n.contains(&victim));
    let released = loop {
        if let Some(t) = timeline.first(t1, gone) {
            break t;
        }
        assert!(t1.elapsed() < Duration::from_secs(15), "{name} kept its addresses\n{}", d(&daemons, victim).logs());
        std::thread::sleep(POLL);
    };
    let by_others = |h: &[Vec<usize>]| h.iter().all(|n| n.len() == 1 && others.contains(&n[0]));
    let back = wait_for("the node to serve an address again", Duration::from_secs(60), POLL, || {
        timeline.first(t1 + released, |h| h.iter().all(|n| n.len() == 1) && h.iter().any(|n| n == &[victim]))
    });
    let moved = timeline.first(t1 + released, by_others);
    let samples = timeline.finish();
    let (rounds, overlaps) = sampler.finish();
    eprintln!(
        "{name}'s FUSE client killed: {name} released its addresses at {released:?}, all served by the others \
         {moved:?} later, {name} serving again {back:?} after its release ({samples} timeline samples, {rounds} \
         address samples)"
    );
    assert!(overlaps.is_empty(), "an address on two nodes at once: {overlaps:?}\n{}", logs(&daemons));
    assert!(moved.is_some(), "the others never served every address while {name} was UNHEALTHY\n{}", logs(&daemons));
    let victim_log = d(&daemons, victim).logs();
    assert!(victim_log.contains("FUSE client died"), "{victim_log}");
    assert!(victim_log.contains("node unhealthy: releasing public addresses"), "{victim_log}");
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
