//! A three-node nasgw cluster serving SMB and NFS, for the cluster-wide file-sharing state
//! tests (`tests/tests/cluster_*.rs`): nodes n1, n2, n3 (198.18.0.1-3, pnn 0-2) and a client
//! host c1 (198.18.0.10) on one bridge; every node serves the same volume (a shared directory,
//! the local backend) over SMB on port 445 and NFS on 2049 of its own address.
//!
//! Clients are [`SmbClient`]s: `tests/smb/cluster_client.py` (Python smbprotocol) driven over
//! JSON lines, run in any host's namespace, each holding several SMB connections to any nodes,
//! so "client A through node 1, client B through node 2" is two connections of one driver.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::{is_root, require_tool, wait_for, workspace_root, Daemon, Topology};

/// Node names, in `[cluster] nodes` order (pnn 0, 1, 2).
pub const NODES: [&str; 3] = ["n1", "n2", "n3"];
/// Their addresses (clients reach node `i` at `ADDRS[i]`).
pub const ADDRS: [&str; 3] = ["198.18.0.1", "198.18.0.2", "198.18.0.3"];
/// The client host c1's address.
pub const CLIENT_ADDR: &str = "198.18.0.10";
/// SMB port on every node.
pub const SMB_PORT: u16 = 445;
/// NFS (and MOUNT) port on every node.
pub const NFS_PORT: u16 = 2049;
/// A share named `ca` beside the seed's `pub`, on the same folder, continuously available
/// (persistent handles): pass it to [`SmbCluster::start_with_public_address`].
pub const CA_SHARE: &str = r#"
[[smb.share]]
name = "ca"
path = "/"
writable = true
guest_ok = true
guest_only = true
force_user = "root"
continuously_available = true
"#;

/// The public address of a cluster started with [`SmbCluster::start_with_public_address`].
pub const VIP: &str = "198.18.0.100";

/// The guest share the cluster tests (and the cluster bench) serve: the whole volume as `pub`,
/// written as root.
pub const PUB_SHARE: &str = r#"[[smb.share]]
name = "pub"
path = "/"
writable = true
guest_ok = true
guest_only = true
force_user = "root"
"#;

/// A node's control socket and state in its own directory (`{dir}`, which `Daemon` fills in).
pub const NODE_DIRS: &str = r#"[node]
control_socket = "{dir}/ctl.sock"
state_dir = "{dir}/state"
"#;

/// Three nodes on one shared volume and a client host.
pub struct SmbCluster {
    /// The namespaces.
    pub topo: Topology,
    /// Holds the volume and every node's directory.
    pub root: tempfile::TempDir,
    /// The daemons; `None` once killed or stopped.
    pub daemons: Vec<Option<Daemon>>,
    config: String,
}

impl SmbCluster {
    /// Starts the three nodes and waits until an SMB open through every node succeeds (the
    /// node is in the cluster's view and licensed to decide opens). `extra` is appended to every
    /// node's config.
    pub fn start(extra: &str) -> SmbCluster {
        Self::start_with("", extra)
    }

    /// As [`SmbCluster::start`], with one public address ([`VIP`]) that HA places on a node.
    pub fn start_with_public_address(extra: &str) -> SmbCluster {
        let c = Self::start_with(
            &format!("public_addresses = [{{ address = \"{VIP}/16\", interface = \"eth0\" }}]\n"),
            extra,
        );
        wait_for("the public address to be placed", Duration::from_secs(30), Duration::from_millis(100), || {
            c.holder(VIP)
        });
        c
    }

    /// The running node that has `addr` on its interface now.
    pub fn holder(&self, addr: &str) -> Option<usize> {
        let needle = format!(" {addr}/");
        (0..3).filter(|&i| self.daemons.get(i).is_some_and(Option::is_some)).find(|&i| {
            let out = self.topo.exec(NODES[i], "ip", &["-o", "addr", "show", "dev", "eth0"]);
            String::from_utf8_lossy(&out.stdout).contains(&needle)
        })
    }

    /// As [`SmbCluster::start`], with `cluster` added to the `[cluster]` section.
    pub fn start_with(cluster: &str, extra: &str) -> SmbCluster {
        Self::start_configured("", cluster, extra)
    }

    /// As [`SmbCluster::start_with`], with `smb` added to the `[smb]` section
    /// (`multichannel = true\n`).
    pub fn start_configured(smb: &str, cluster: &str, extra: &str) -> SmbCluster {
        assert!(is_root(), "network namespace tests need root (the README's test command runs as root)");
        require_tool("python3");
        let topo = Topology::new(&[("n1", ADDRS[0]), ("n2", ADDRS[1]), ("n3", ADDRS[2]), ("c1", CLIENT_ADDR)]);
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("vol")).unwrap();
        std::fs::write(root.path().join("key"), "nasgw-coherence-test-secret-0123456789\n").unwrap();
        let config = format!(
            r#"[volume]
name = "smb"
backend = "local"
path = "{{dir}}/vol"
[nfs]
listen = "0.0.0.0:{NFS_PORT}"
root_squash = false
[smb]
listen = "0.0.0.0:{SMB_PORT}"
{smb}{PUB_SHARE}[cluster]
nodes = ["{}", "{}", "{}"]
recovery_lock = "/lock/lockfile"
secret_file = "{key}"
{cluster}{NODE_DIRS}{extra}"#,
            ADDRS[0],
            ADDRS[1],
            ADDRS[2],
            key = root.path().join("key").display(),
        );
        let mut c = SmbCluster { topo, root, daemons: Vec::new(), config };
        for i in 0..3 {
            let d = c.start_node(i);
            c.daemons.push(Some(d));
        }
        c.wait_serving(&[0, 1, 2], Duration::from_secs(30));
        c
    }

    /// The shared volume.
    pub fn volume(&self) -> PathBuf {
        self.root.path().join("vol")
    }

    /// Node `i`'s private directory.
    pub fn dir(&self, i: usize) -> PathBuf {
        self.root.path().join(NODES[i])
    }

    /// Starts (or restarts) node `i` on its directory.
    pub fn start_node(&self, i: usize) -> Daemon {
        let dir = self.dir(i);
        std::fs::create_dir_all(&dir).unwrap();
        // Where a `[fuse] mountpoint = "{dir}/mnt"` in the extra config mounts (a dead mount a
        // kill left there answers ENOTCONN, which the restart replaces).
        let _ = std::fs::create_dir(dir.join("mnt"));
        let link = dir.join("vol");
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(self.volume(), &link).unwrap();
        }
        if self.config.contains("[fuse]") {
            // The node's own mount must be the test's too (`ip netns exec` would give the
            // daemon a mount namespace of its own, and the test would see the bare directory).
            return Daemon::start_sharing_mounts(NODES[i], &dir, &self.config, self.topo.ns(NODES[i]));
        }
        Daemon::start(NODES[i], &dir, &self.config, Some(self.topo.ns(NODES[i])))
    }

    /// Node `i`'s daemon.
    pub fn daemon(&self, i: usize) -> &Daemon {
        self.daemons[i].as_ref().expect("node running")
    }

    /// A host dies: its link goes down first (a dead host sends nothing, not even FINs), then
    /// its daemon gets SIGKILL.
    pub fn kill(&mut self, i: usize) {
        self.topo.cut(NODES[i]);
        self.daemons[i].take().expect("node running").kill();
    }

    /// Waits until an SMB create+close of a probe file through each of `nodes` succeeds (from
    /// c1); returns how long it took.
    pub fn wait_serving(&self, nodes: &[usize], timeout: Duration) -> Duration {
        let start = Instant::now();
        let mut probe = SmbClient::spawn(self.topo.ns("c1"));
        for &i in nodes {
            let c = format!("probe{i}");
            wait_for(&format!("{} to serve SMB", NODES[i]), timeout, Duration::from_millis(100), || {
                probe.call(json!({"op": "connect", "c": c, "host": ADDRS[i], "port": SMB_PORT})).ok.then_some(())
            });
            let h = format!("probe{i}");
            wait_for(&format!("{} to grant an open", NODES[i]), timeout, Duration::from_millis(100), || {
                let r = probe.call(json!({"op": "open", "c": c, "h": h, "path": format!("probe-{i}")}));
                if !r.ok && r.v["status"] == "EXCEPTION" {
                    // The node reset the probe's connection (it was fencing itself or
                    // rejoining when the probe connected): a client connects again.
                    probe.call(json!({"op": "connect", "c": c, "host": ADDRS[i], "port": SMB_PORT}));
                }
                r.ok.then_some(())
            });
            probe.ok(json!({"op": "close", "h": h}));
        }
        start.elapsed()
    }

    /// The cluster events (leader, node states, sync with the file-sharing state) in every
    /// running node's log: a timeline to print next to a slow figure.
    pub fn events(&self) -> String {
        let mut out = String::new();
        for d in self.daemons.iter().flatten() {
            for line in d.logs().lines() {
                if ["cluster event", "in sync", "lock operation"].iter().any(|k| line.contains(k)) {
                    out.push_str(&format!("{}: {line}\n", d.name));
                }
            }
        }
        out
    }

    /// Every running node's logs, for failure messages.
    pub fn logs(&self) -> String {
        self.daemons.iter().flatten().map(Daemon::logs).collect::<Vec<_>>().join("\n")
    }
}

/// One answer of the client driver.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The request succeeded.
    pub ok: bool,
    /// Its NTSTATUS name when it failed (`STATUS_SHARING_VIOLATION`), or `EXCEPTION`.
    pub status: String,
    /// CLOCK_MONOTONIC seconds when it finished (the driver's clock, one for all requests).
    pub t: f64,
    /// CLOCK_MONOTONIC seconds when the driver started it.
    pub t0: f64,
    /// The whole answer.
    pub v: Value,
}

impl Reply {
    /// A string field of the answer (`lease`, `oplock`, `data`).
    pub fn s(&self, field: &str) -> &str {
        self.v[field].as_str().unwrap_or_default()
    }
}

/// A `tests/smb/cluster_client.py` process in one namespace: many SMB clients, driven by
/// JSON-line requests; answers are matched to requests by id.
pub struct SmbClient {
    child: Child,
    stdin: ChildStdin,
    rx: mpsc::Receiver<Value>,
    early: HashMap<u64, Value>,
    next: u64,
}

/// How long a synchronous request may take before the test fails.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

impl SmbClient {
    /// Starts the driver inside network namespace `ns`.
    pub fn spawn(ns: &str) -> SmbClient {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, "python3", "-u"]);
        Self::spawn_with(cmd)
    }

    /// Starts the driver in this process's own network namespace (a node on loopback).
    pub fn spawn_local() -> SmbClient {
        let mut cmd = Command::new("python3");
        cmd.arg("-u");
        Self::spawn_with(cmd)
    }

    fn spawn_with(mut cmd: Command) -> SmbClient {
        let script = workspace_root().join("tests/smb/cluster_client.py");
        let mut child = cmd
            .arg(&script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run the SMB client driver");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                match serde_json::from_str::<Value>(&line) {
                    Ok(v) => {
                        if tx.send(v).is_err() {
                            return;
                        }
                    }
                    Err(_) => eprintln!("cluster_client: {line}"),
                }
            }
        });
        let ready = rx.recv_timeout(Duration::from_secs(30)).expect("the SMB client driver starts");
        assert_eq!(ready["id"], "ready", "{ready}");
        SmbClient { child, stdin, rx, early: HashMap::new(), next: 1 }
    }

    /// Sends `req` (an object with `op` and its arguments) without waiting; returns its id for
    /// [`SmbClient::wait`]. The driver runs it on its own thread.
    pub fn start(&mut self, mut req: Value) -> u64 {
        let id = self.next;
        self.next += 1;
        req["id"] = json!(id);
        req["bg"] = json!(true);
        writeln!(self.stdin, "{req}").expect("write to the SMB client driver");
        id
    }

    /// Waits for the answer to request `id`.
    pub fn wait(&mut self, id: u64, timeout: Duration) -> Reply {
        self.try_wait(id, timeout).unwrap_or_else(|| panic!("no answer to request {id} within {timeout:?}"))
    }

    /// The answer to request `id` if it comes within `timeout`.
    pub fn try_wait(&mut self, id: u64, timeout: Duration) -> Option<Reply> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = self.early.remove(&id) {
                return Some(reply(v));
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.rx.recv_timeout(left) {
                Ok(v) if v["id"].as_u64() == Some(id) => return Some(reply(v)),
                Ok(v) => {
                    if let Some(other) = v["id"].as_u64() {
                        self.early.insert(other, v);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => return None,
                Err(mpsc::RecvTimeoutError::Disconnected) => panic!("the SMB client driver exited"),
            }
        }
    }

    /// Sends `req` and waits for its answer.
    pub fn call(&mut self, mut req: Value) -> Reply {
        let id = self.next;
        self.next += 1;
        req["id"] = json!(id);
        writeln!(self.stdin, "{req}").expect("write to the SMB client driver");
        self.wait(id, CALL_TIMEOUT)
    }

    /// Sends `req` and asserts it succeeded.
    pub fn ok(&mut self, req: Value) -> Reply {
        let r = self.call(req.clone());
        assert!(r.ok, "{req} failed: {}", r.v);
        r
    }

    /// Sends `req` and asserts it failed with `status`.
    pub fn fails(&mut self, req: Value, status: &str) -> Reply {
        let r = self.call(req.clone());
        assert!(!r.ok && r.status == status, "{req}: expected {status}, got {}", r.v);
        r
    }

    /// A new SMB client `c` connected to node `node` (guest session, tree `pub`).
    pub fn connect(&mut self, c: &str, node: usize) {
        self.ok(json!({"op": "connect", "c": c, "host": ADDRS[node], "port": SMB_PORT}));
    }

    /// A new SMB client `c` connected to node `node`'s share `share` (guest session).
    pub fn connect_share(&mut self, c: &str, node: usize, share: &str) {
        self.ok(json!({"op": "connect", "c": c, "host": ADDRS[node], "port": SMB_PORT, "share": share}));
    }
}

fn reply(v: Value) -> Reply {
    Reply {
        ok: v["ok"].as_bool().unwrap_or(false),
        status: v["status"].as_str().unwrap_or_default().to_string(),
        t: v["t"].as_f64().unwrap_or_default(),
        t0: v["t0"].as_f64().unwrap_or_default(),
        v,
    }
}

impl Drop for SmbClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
