//! Failover groups (issue 14's stall, issue 17's failover time by cluster size).
//!
//! - The stall: an application (`bench/failover_writer.py`, Python smbprotocol) writes one file
//!   through a public address, one 64 KiB write + FLUSH at a time, while the node holding the
//!   address dies (link down, then SIGKILL). Rows: the longest gap between two acknowledged
//!   writes, the application errors (what a redirector cannot hide: a handle that could not be
//!   reclaimed, an error status), and when a survivor served the address. nasgw serves a
//!   continuously available share (the writer gets a persistent handle) and the seed's plain
//!   share (a durable handle with a lease); Samba + CTDB serves the recipe's share (a durable
//!   handle with a lease, what Samba 4.17 grants), on the same three namespaces, with one CTDB
//!   public address.
//! - Failover time by cluster size: 3, 5 and 7 nasgw nodes in namespaces (local backend: moving
//!   an address involves HA only, not the volume), one public address per node; the node
//!   holding the measured address is killed, and the figure is the time until a TCP connection
//!   to that address's SMB port succeeds from the client namespace (the new holder answers).
//!   Two rows: the holder is an ordinary node, and the holder is the cluster's leader.
//!
//! Every round builds its cluster afresh (a killed node leaves the cluster changed).

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use nasgw_tests::cluster::{SmbCluster, ADDRS, CA_SHARE, NODES, SMB_PORT, VIP};
use nasgw_tests::{Daemon, Topology};
use serde_json::Value;

use crate::ctdb::{self, Host, SambaCtdb};
use crate::fixture::Sizes;
use crate::table::{Group, Unit};

/// Columns of the stall table.
const STALL_COLUMNS: [&str; 3] =
    ["nasgw (CA share, persistent handle)", "nasgw (plain share, durable handle)", "Samba+CTDB (durable handle)"];
/// CTDB's public address (nasgw's is [`VIP`]; the two systems run one after the other).
const CTDB_VIP: &str = "198.18.0.101";
/// Cluster sizes of the failover-time table.
const SIZES: [usize; 3] = [3, 5, 7];
/// How long a survivor may take to serve the address before the round fails.
const MOVE_TIMEOUT: Duration = Duration::from_secs(90);

/// Runs both failover tables.
pub fn run(work: &Path, sizes: Sizes) -> Vec<Group> {
    vec![stall(work, sizes), by_cluster_size(work, sizes)]
}

/// One round of the stall table, for one system.
struct Stall {
    gap: f64,
    errors: u64,
    moved: f64,
}

fn stall(work: &Path, sizes: Sizes) -> Group {
    let mut g = Group::new(
        "Failover: one client writing through a public address while its node dies, 3 nodes: nasgw vs Samba 4.17 + CTDB 4.17",
        &STALL_COLUMNS,
        &[(0, 2), (1, 2)],
    );
    g.cpu_table = false;
    g.notes.push(
        "The application (`bench/failover_writer.py`, Python smbprotocol, in a client namespace) writes one file \
         through the public address, each 64 KiB WRITE followed by a FLUSH; a write is acknowledged when its FLUSH \
         returns. The node holding the address is killed (link down, then SIGKILL). When its connection dies the \
         writer does what a redirector does: connects to the address again and reopens its handle (DH2C), then \
         repeats the write. An *application error* is what a redirector cannot hide: the handle could not be \
         reclaimed (the open file is gone), or a request failed. nasgw: a continuously available share, a \
         persistent handle with a lease, and the seed's plain share, a durable v2 handle with a lease; Samba + CTDB: the recipe's guest share, a durable v2 handle with a lease \
         (Samba 4.17 grants no persistent handles), CTDB keepalives tuned for fast failover (KeepaliveInterval=1, \
         KeepaliveLimit=3). Figures: median (min-max) over rounds, each round on a fresh cluster."
            .into(),
    );
    let gap = g.add_row("longest gap between two acknowledged writes", Unit::Seconds);
    let errors = g.add_row("application errors", Unit::Count);
    let moved = g.add_row("address served by a survivor after the kill", Unit::Seconds);
    for r in 0..sizes.rounds {
        let order = if r % 2 == 0 { [0, 1, 2] } else { [2, 1, 0] };
        for i in order {
            let outcome = match i {
                0 => nasgw_stall("ca"),
                1 => nasgw_stall("pub"),
                _ => ctdb_stall(&work.join(format!("failover-ctdb-{r}"))),
            };
            let outcome = outcome.map_err(|e| format!("{e:#}"));
            match &outcome {
                Ok(s) => eprintln!(
                    "bench: failover stall [{}] round {}: longest gap {:.3} s, {} application errors, address moved after {:.3} s",
                    STALL_COLUMNS[i],
                    r + 1,
                    s.gap,
                    s.errors,
                    s.moved
                ),
                Err(e) => eprintln!("bench: failover stall [{}] round {}: FAILED: {e}", STALL_COLUMNS[i], r + 1),
            }
            g.rows[gap].cells[i].record(outcome.as_ref().map(|s| s.gap).map_err(Clone::clone));
            g.rows[errors].cells[i].record(outcome.as_ref().map(|s| s.errors as f64).map_err(Clone::clone));
            g.rows[moved].cells[i].record(outcome.map(|s| s.moved));
        }
    }
    g
}

/// nasgw: three nodes, the writer through [`VIP`] on `share` (`ca`: continuously available;
/// `pub`: the seed's share, where the writer gets a durable handle).
fn nasgw_stall(share: &str) -> Result<Stall> {
    let mut c = std::panic::catch_unwind(|| SmbCluster::start_with_public_address(CA_SHARE))
        .map_err(|_| anyhow!("the 3-node cluster did not start (see the panic above)"))?;
    let client = c.topo.ns("c1").to_string();
    let held = |ns: &str| holds(ns, VIP);
    let nss: Vec<String> = NODES.iter().map(|n| c.topo.ns(n).to_string()).collect();
    let result = measure_stall(&client, VIP, SMB_PORT, share, &nss, &held, &mut |victim| c.kill(victim));
    if result.is_err() {
        eprintln!("bench: nasgw nodes' logs:\n{}", tail(&c.logs(), 40));
    }
    result
}

/// Samba + CTDB: three fresh namespaces (the same names and addresses), one public address.
fn ctdb_stall(dir: &Path) -> Result<Stall> {
    let topo = Topology::new(&[("n1", ADDRS[0]), ("n2", ADDRS[1]), ("n3", ADDRS[2]), ("c1", "198.18.0.10")]);
    let share = dir.join("share");
    std::fs::create_dir_all(&share)?;
    let hosts: Vec<Host<'_>> = (0..3).map(|i| Host { ns: topo.ns(NODES[i]), addr: ADDRS[i] }).collect();
    let mut samba = SambaCtdb::start_with_public_address(&hosts, &share, &share, dir, &format!("{CTDB_VIP}/16"))?;
    let nss: Vec<String> = NODES.iter().map(|n| topo.ns(n).to_string()).collect();
    let start = Instant::now();
    while !nss.iter().any(|ns| holds(ns, CTDB_VIP)) {
        if start.elapsed() > Duration::from_secs(60) {
            bail!("CTDB never placed {CTDB_VIP}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let held = |ns: &str| holds(ns, CTDB_VIP);
    measure_stall(topo.ns("c1"), CTDB_VIP, ctdb::SMB_PORT, "pub", &nss, &held, &mut |victim| {
        topo.cut(NODES[victim]);
        samba.kill_node(victim);
    })
}

/// Starts the writer through `vip`, kills the node holding it, and reads the writer's account.
fn measure_stall(
    client_ns: &str,
    vip: &str,
    port: u16,
    share: &str,
    node_ns: &[String],
    held: &dyn Fn(&str) -> bool,
    kill: &mut dyn FnMut(usize),
) -> Result<Stall> {
    let mut w = Writer::spawn(client_ns, vip, port, share)?;
    w.expect("started", Duration::from_secs(60))?;
    // Steady state first: the writer has been acknowledged for a while.
    std::thread::sleep(Duration::from_secs(1));
    let victim = (0..node_ns.len()).find(|&i| held(&node_ns[i])).context("nobody holds the address")?;
    let t0 = Instant::now();
    kill(victim);
    let moved = loop {
        if let Some(_n) = (0..node_ns.len()).filter(|&i| i != victim).find(|&i| held(&node_ns[i])) {
            break t0.elapsed();
        }
        if t0.elapsed() > MOVE_TIMEOUT {
            bail!("no survivor served {vip} within {MOVE_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    // Until the writer is acknowledged again (or gives up), then a little more.
    w.expect("resumed", MOVE_TIMEOUT + Duration::from_secs(60)).ok();
    std::thread::sleep(Duration::from_secs(1));
    let stats = w.stop()?;
    let gap = stats["gap_s"].as_f64().context("no gap in the writer's account")?;
    let errors = stats["errors"].as_u64().context("no error count in the writer's account")?;
    if stats["writes"].as_u64().unwrap_or(0) == 0 {
        bail!("the writer was never acknowledged: {stats}");
    }
    eprintln!("bench: writer's account: {stats}");
    Ok(Stall { gap, errors, moved: moved.as_secs_f64() })
}

/// `bench/failover_writer.py` in a namespace; its JSON lines on a channel.
struct Writer {
    child: Child,
    stdin: Option<ChildStdin>,
    rx: mpsc::Receiver<Value>,
    /// Its final account, once printed.
    account: Option<Value>,
}

impl Writer {
    fn spawn(ns: &str, vip: &str, port: u16, share: &str) -> Result<Writer> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("failover_writer.py");
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, "python3", "-u"])
            .arg(&script)
            .args([vip, &port.to_string(), share, "failover.bin"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("start the failover writer")?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("writer stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                match serde_json::from_str::<Value>(&line) {
                    Ok(v) => {
                        if tx.send(v).is_err() {
                            return;
                        }
                    }
                    Err(_) => eprintln!("failover writer: {line}"),
                }
            }
        });
        Ok(Writer { child, stdin, rx, account: None })
    }

    /// Waits for a line with `key` set.
    fn expect(&mut self, key: &str, timeout: Duration) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline
                .checked_duration_since(Instant::now())
                .with_context(|| format!("no `{key}` from the writer"))?;
            let v = self.rx.recv_timeout(left).map_err(|_| anyhow!("no `{key}` from the writer (it ended?)"))?;
            if !v[key].is_null() {
                if key == "writes" {
                    self.account = None;
                }
                return Ok(v);
            }
            if !v["writes"].is_null() {
                self.account = Some(v.clone());
                bail!("the writer ended early: {v}");
            }
        }
    }

    /// Tells the writer to stop; its final account.
    fn stop(&mut self) -> Result<Value> {
        if let Some(mut s) = self.stdin.take() {
            let _ = writeln!(s, "stop");
        }
        if let Some(v) = self.account.take() {
            return Ok(v);
        }
        self.expect("writes", Duration::from_secs(60))
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Is `addr` on `ns`'s eth0?
fn holds(ns: &str, addr: &str) -> bool {
    let out = Command::new("ip").args(["-n", ns, "-o", "addr", "show", "dev", "eth0"]).output();
    out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&format!(" {addr}/")))
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The failover-time table: 3, 5 and 7 nodes.
fn by_cluster_size(work: &Path, sizes: Sizes) -> Group {
    let columns: Vec<String> = SIZES.iter().map(|n| format!("{n} nodes")).collect();
    let cols: Vec<&str> = columns.iter().map(String::as_str).collect();
    let mut g = Group::new("Failover time by cluster size: nasgw, 3, 5 and 7 nodes", &cols, &[(1, 0), (2, 0)]);
    g.cpu_table = false;
    g.notes.push(
        "N nasgw nodes in network namespaces on one shared directory (local backend: moving an address involves \
         only HA, not the volume), one public address per node. The node holding the measured address is killed \
         (link down, then SIGKILL); the figure is the time until a TCP connection to that address's SMB port \
         from the client namespace succeeds (a survivor has taken the address and answers), polled every 10 ms. \
         \"ordinary node\": the holder is not the leader; \"leader\": it is (an election comes first). A flat \
         row (ratios near 1.00x) is the target. Each round on a fresh cluster."
            .into(),
    );
    let ordinary = g.add_row("address answers again (ordinary node killed)", Unit::Seconds);
    let leader = g.add_row("address answers again (leader killed)", Unit::Seconds);
    for r in 0..sizes.rounds {
        for (col, &n) in SIZES.iter().enumerate() {
            for (row, kill_leader) in [(ordinary, false), (leader, true)] {
                let dir = work.join(format!("failover-{n}-{r}-{kill_leader}"));
                let outcome = failover_time(n, kill_leader, &dir).map_err(|e| format!("{e:#}"));
                match &outcome {
                    Ok(t) => eprintln!(
                        "bench: failover time [{n} nodes, {}] round {}: {t:.3} s",
                        if kill_leader { "leader" } else { "ordinary node" },
                        r + 1
                    ),
                    Err(e) => eprintln!("bench: failover time [{n} nodes] round {}: FAILED: {e}", r + 1),
                }
                g.rows[row].cells[col].record(outcome);
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
    }
    g
}

/// Public address of node `i` (pnn `i`) in the failover-time clusters.
fn public_address(i: usize) -> String {
    format!("198.18.1.{}", i + 1)
}

/// One round: `n` nodes; kills the holder of an address (the leader's, or another node's);
/// seconds until the address answers on a survivor.
fn failover_time(n: usize, kill_leader: bool, dir: &Path) -> Result<f64> {
    let names: Vec<String> = (1..=n).map(|i| format!("n{i}")).collect();
    let addrs: Vec<String> = (1..=n).map(|i| format!("198.18.0.{i}")).collect();
    let mut hosts: Vec<(&str, &str)> = names.iter().map(String::as_str).zip(addrs.iter().map(String::as_str)).collect();
    hosts.push(("c1", "198.18.0.200"));
    let topo = Topology::new(&hosts);
    std::fs::create_dir_all(dir.join("vol"))?;
    let key = dir.join("key");
    nasgw_tests::process::write_private(&key, "nasgw-bench-failover-secret-0123456789\n");
    let nodes: String = addrs.iter().map(|a| format!("\"{a}\"")).collect::<Vec<_>>().join(", ");
    let public: String =
        (0..n).map(|i| format!("  {{ address = \"{}/16\", interface = \"eth0\" }},\n", public_address(i))).collect();
    let config = format!(
        r#"[volume]
name = "smb"
backend = "local"
path = "{vol}"
[smb]
listen = "0.0.0.0:{SMB_PORT}"
[[smb.share]]
name = "pub"
path = "/"
writable = true
guest_ok = true
guest_only = true
[cluster]
nodes = [{nodes}]
recovery_lock = "/lock/lockfile"
secret_file = "{key}"
public_addresses = [
{public}]
[node]
control_socket = "{{dir}}/ctl.sock"
state_dir = "{{dir}}/state"
"#,
        vol = dir.join("vol").display(),
        key = key.display(),
    );
    let started = std::panic::catch_unwind(|| {
        (0..n)
            .map(|i| Some(Daemon::start(&names[i], &dir.join(&names[i]), &config, Some(topo.ns(&names[i])))))
            .collect::<Vec<_>>()
    });
    let mut daemons = started.map_err(|_| anyhow!("the {n}-node cluster did not start (see the panic above)"))?;
    let held_by = |addr: &str| -> Vec<usize> { (0..n).filter(|&i| holds(topo.ns(&names[i]), addr)).collect() };
    // Every address on exactly one node.
    let start = Instant::now();
    while !(0..n).all(|i| held_by(&public_address(i)).len() == 1) {
        if start.elapsed() > Duration::from_secs(60) {
            bail!("the {n}-node cluster did not place its addresses");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let leader = leader_of(daemons[0].as_ref().expect("running")).context("no leader in `nasgw status`")?;
    let (addr, victim) = (0..n)
        .map(public_address)
        .map(|a| {
            let h = held_by(&a)[0];
            (a, h)
        })
        .find(|(_, h)| (*h == leader) == kill_leader)
        .context("no address held by the wanted node")?;
    let target: SocketAddr = format!("{addr}:{SMB_PORT}").parse()?;
    let client = topo.ns("c1").to_string();
    // The client polls from its namespace; connects to the address must fail while nobody
    // serves it (the victim's link is down) and succeed once a survivor does.
    let (tx, rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<Instant>();
    let poller = std::thread::spawn(move || {
        nasgw_tests::netns::enter(&client);
        let Ok(t0) = go_rx.recv() else { return };
        while t0.elapsed() < MOVE_TIMEOUT {
            if TcpStream::connect_timeout(&target, Duration::from_millis(100)).is_ok() {
                let _ = tx.send(t0.elapsed());
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    let t0 = Instant::now();
    topo.cut(&names[victim]);
    if let Some(d) = daemons[victim].take() {
        d.kill();
    }
    let _ = go_tx.send(t0);
    let answered = rx.recv_timeout(MOVE_TIMEOUT + Duration::from_secs(5));
    let _ = poller.join();
    let answered = answered.map_err(|_| anyhow!("{addr} did not answer within {MOVE_TIMEOUT:?} after the kill"))?;
    let survivors = held_by(&addr).into_iter().filter(|&i| i != victim).count();
    if survivors != 1 {
        bail!("{addr} answered but is held by {survivors} survivors");
    }
    for d in daemons.into_iter().flatten() {
        d.stop();
    }
    Ok(answered.as_secs_f64())
}

/// The leader's pnn, from `nasgw status --json` of a running node.
fn leader_of(d: &Daemon) -> Option<usize> {
    let out = d.ctl(&["status", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    v["leader"].as_u64().map(|l| l as usize)
}
