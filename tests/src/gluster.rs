//! A real GlusterFS cluster in network namespaces, for every test and bench that needs a volume.
//!
//! `GlusterCluster::start` builds the namespaces (one per storage node, plus any client hosts),
//! starts one `glusterd` per node with **private state** (its own `/var/lib/glusterd`, `/run`
//! and log directory bind-mounted in a private mount namespace, as TESTING.md shows), probes the
//! peers, creates and starts a replica volume with a small `network.ping-timeout`, and hands back
//! the running cluster. Dropping it (or `teardown`) unmounts its FUSE mounts and stops every
//! process it started by PID, then deletes the namespaces.
//!
//! Reused by the gluster tests, the HA tests and `bench/`:
//! ```no_run
//! use nasgw_tests::gluster::{GlusterCluster, GlusterSpec};
//! let cluster = GlusterCluster::start(GlusterSpec { clients: vec![("c1".into(), "198.18.0.10".into())], ..Default::default() });
//! let mnt = cluster.mount("c1", &cluster.dir().join("mnt-c1"));
//! std::fs::write(mnt.join("hello"), b"hi").unwrap();
//! cluster.teardown();
//! ```

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::{wait_for, Topology};

/// Where distributions install geo-replication's `gsyncd` helper.
const GSYNCD_PATHS: &[&str] =
    &["/usr/lib/x86_64-linux-gnu/glusterfs/gsyncd", "/usr/libexec/glusterfs/gsyncd", "/usr/lib/glusterfs/gsyncd"];

/// What cluster to build. `Default` is the issue's shape: three nodes, replica 3, volume `smb`,
/// `network.ping-timeout` 5 s.
#[derive(Debug, Clone)]
pub struct GlusterSpec {
    /// Number of storage nodes (`n1`..`nN` at 198.18.0.1..).
    pub nodes: usize,
    /// Replica count; `nodes` must be a multiple of it (2x2 = 4 nodes, replica 2).
    pub replica: usize,
    /// The GlusterFS volume name.
    pub volume: String,
    /// `network.ping-timeout` in seconds (how long clients stall on a dead node).
    pub ping_timeout_s: u32,
    /// Extra volume options set before the volume starts (`key`, `value`).
    pub options: Vec<(String, String)>,
    /// Extra hosts (name, address) on the same bridge without glusterd: clients, nasgw-only nodes.
    pub clients: Vec<(String, String)>,
}

impl Default for GlusterSpec {
    fn default() -> Self {
        Self { nodes: 3, replica: 3, volume: "smb".into(), ping_timeout_s: 5, options: Vec::new(), clients: Vec::new() }
    }
}

/// One storage node: its namespace, address, private glusterd state and brick.
#[derive(Debug)]
pub struct GlusterNode {
    /// Host name in the topology (`n1`...).
    pub name: String,
    /// Its network namespace.
    pub ns: String,
    /// Its address (the volfile server and brick host).
    pub addr: String,
    /// Private state: `lib/` (over /var/lib/glusterd), `run/`, `log/`.
    pub dir: PathBuf,
    /// The brick directory on this node.
    pub brick: PathBuf,
    glusterd: Option<Child>,
}

impl GlusterNode {
    /// glusterd's PID (also the process whose mount namespace holds the private state).
    pub fn glusterd_pid(&self) -> u32 {
        self.glusterd.as_ref().expect("glusterd running").id()
    }
}

/// A FUSE mount of the volume made by the harness (a client, or the bench's raw-FUSE row).
#[derive(Debug)]
pub struct FuseMount {
    /// Where the volume is mounted (in the host mount namespace: visible to every test process).
    pub path: PathBuf,
    /// The namespace the client process runs in.
    pub ns: String,
    child: Child,
}

impl FuseMount {
    /// The glusterfs client process's PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// A running GlusterFS cluster; torn down on drop.
pub struct GlusterCluster {
    /// Nodes in order (`nodes[0]` is n1).
    pub nodes: Vec<GlusterNode>,
    /// The volume name.
    pub volume: String,
    mounts: Mutex<Vec<FuseMount>>,
    // Declared after the processes so it is dropped (namespaces deleted) after they are stopped.
    topo: Topology,
    dir: tempfile::TempDir,
}

impl GlusterCluster {
    /// Builds and starts the cluster described by `spec`; panics with glusterd's log on failure.
    pub fn start(spec: GlusterSpec) -> GlusterCluster {
        assert!(crate::is_root(), "GlusterFS cluster tests need root (the README's test command runs as root)");
        crate::require_tool("glusterd");
        assert!(spec.nodes >= 1 && spec.replica >= 1 && spec.nodes % spec.replica == 0, "bad spec {spec:?}");
        let t0 = Instant::now();
        let addrs: Vec<(String, String)> =
            (1..=spec.nodes).map(|i| (format!("n{i}"), format!("198.18.0.{i}"))).collect();
        let mut hosts: Vec<(&str, &str)> = addrs.iter().map(|(n, a)| (n.as_str(), a.as_str())).collect();
        hosts.extend(spec.clients.iter().map(|(n, a)| (n.as_str(), a.as_str())));
        let topo = Topology::new(&hosts);
        let dir = tempfile::Builder::new().prefix("nasgw-gluster-").tempdir().expect("temp dir");
        let mut cluster = GlusterCluster {
            nodes: Vec::new(),
            volume: spec.volume.clone(),
            mounts: Mutex::new(Vec::new()),
            topo,
            dir,
        };
        // Start every glusterd first (they come up in parallel), then wait for each.
        for (name, addr) in &addrs {
            let node = cluster.spawn_glusterd(name, addr);
            cluster.nodes.push(node);
        }
        for i in 0..cluster.nodes.len() {
            cluster.wait_glusterd(i);
        }
        let t_glusterd = t0.elapsed();
        for n in 1..cluster.nodes.len() {
            let addr = cluster.nodes[n].addr.clone();
            cluster.gluster_ok(0, &["peer", "probe", &addr]);
        }
        let want = cluster.nodes.len() - 1;
        wait_for("every peer connected", Duration::from_secs(30), Duration::from_millis(100), || {
            let out = cluster.gluster(0, &["peer", "status"]);
            let text = String::from_utf8_lossy(&out.stdout);
            (text.matches("Peer in Cluster (Connected)").count() == want).then_some(())
        });
        let t_peers = t0.elapsed();
        let mut create = vec!["volume".to_string(), "create".into(), spec.volume.clone()];
        if spec.replica > 1 {
            create.extend(["replica".to_string(), spec.replica.to_string()]);
        }
        create.extend(cluster.nodes.iter().map(|n| format!("{}:{}", n.addr, n.brick.display())));
        create.push("force".into());
        let create: Vec<&str> = create.iter().map(String::as_str).collect();
        // A peer that just joined may still be syncing: retry the create for a few seconds.
        wait_for("volume create", Duration::from_secs(20), Duration::from_millis(250), || {
            let out = cluster.gluster(0, &create);
            out.status.success().then_some(())
        });
        let ping = spec.ping_timeout_s.to_string();
        let mut options = vec![("network.ping-timeout".to_string(), ping)];
        options.extend(spec.options.iter().cloned());
        for (k, v) in &options {
            cluster.gluster_ok(0, &["volume", "set", &spec.volume, k, v]);
        }
        let t_created = t0.elapsed();
        cluster.gluster_ok(0, &["volume", "start", &spec.volume]);
        cluster.wait_bricks_online();
        eprintln!(
            "gluster cluster: {} nodes, replica {}, volume {} up in {:.1} s (glusterd {:.1} s, peers {:.1} s, created {:.1} s)",
            spec.nodes,
            spec.replica,
            spec.volume,
            t0.elapsed().as_secs_f64(),
            t_glusterd.as_secs_f64(),
            t_peers.as_secs_f64(),
            t_created.as_secs_f64(),
        );
        cluster
    }

    /// The cluster's private temp directory (node state, bricks; put mount points here).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The namespaces: run clients or nasgw daemons on the cluster's hosts.
    pub fn topo(&self) -> &Topology {
        &self.topo
    }

    /// Every node's address, in order: the `[volume] servers` list for node 1.
    pub fn servers(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.addr.clone()).collect()
    }

    /// The `servers` list as node `i` would write it: its own address first, then the others.
    pub fn servers_for(&self, i: usize) -> Vec<String> {
        let mut s = vec![self.nodes[i].addr.clone()];
        s.extend(self.nodes.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, n)| n.addr.clone()));
        s
    }

    /// The `[volume]` table of a nasgw on node `i` serving this volume over `access`
    /// (`"fuse"` or `"gfapi"`), with quick health probes; paste it into a daemon's config.
    pub fn nasgw_volume_toml(&self, i: usize, access: &str) -> String {
        let list = self.servers_for(i).iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", ");
        format!(
            "[volume]\nname = \"{v}\"\nbackend = \"gluster\"\nservers = [{list}]\naccess = \"{access}\"\n\
             health_interval_ms = 200\nhealth_timeout_ms = 3000\n",
            v = self.volume
        )
    }

    fn spawn_glusterd(&self, name: &str, addr: &str) -> GlusterNode {
        let d = self.dir.path().join(name);
        for sub in ["lib", "run/gluster", "log"] {
            std::fs::create_dir_all(d.join(sub)).expect("glusterd dirs");
        }
        // Copy the package's groups (volume option sets); no hooks (they assume a real host).
        copy_dir(Path::new("/var/lib/glusterd/groups"), &d.join("lib/groups"));
        let brick = d.join("brick");
        // glusterd's start-up asks geo-replication's Python helper for its version and config
        // several times: 6-15 s on a loaded 2-core machine. The tests use no geo-replication, so
        // a stub answers the presence check at once (inside this glusterd's mount namespace only).
        let stub = d.join("gsyncd-stub");
        std::fs::write(&stub, "#!/bin/sh\n[ \"$1\" = --version ] && echo \"gsyncd.py 10.3\"\nexit 0\n").expect("stub");
        std::fs::set_permissions(&stub, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
        let gsyncd = GSYNCD_PATHS.iter().find(|p| Path::new(p).is_file());
        let stub_mount = gsyncd.map(|g| format!("mount --bind {} {g} && ", stub.display())).unwrap_or_default();
        let script = format!(
            "mount --bind {d}/lib /var/lib/glusterd && mount --bind {d}/run /run && \
             mount --bind {d}/log /var/log/glusterfs && {stub_mount}\
             exec glusterd -N --pid-file=/run/glusterd.pid --log-file=/var/log/glusterfs/glusterd.log",
            d = d.display()
        );
        let ns = self.topo.ns(name).to_string();
        let child = Command::new("ip")
            .args(["netns", "exec", &ns, "unshare", "-m", "--propagation", "private", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(File::create(d.join("glusterd.stdout")).expect("log"))
            .stderr(File::create(d.join("glusterd.stderr")).expect("log"))
            .spawn()
            .expect("spawn glusterd");
        GlusterNode { name: name.into(), ns, addr: addr.into(), dir: d, brick, glusterd: Some(child) }
    }

    /// Waits until node `i`'s glusterd answers the CLI (panics with its log if it exits).
    pub fn wait_glusterd(&mut self, i: usize) {
        let start = Instant::now();
        loop {
            let node = &mut self.nodes[i];
            if let Some(status) = node.glusterd.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("glusterd on {} exited ({status}):\n{}", node.name, node_log(node));
            }
            if self.gluster(i, &["pool", "list"]).status.success() {
                return;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "glusterd on {} never answered", self.nodes[i].name);
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs the gluster CLI on node `i` (inside its glusterd's mount and network namespaces).
    pub fn gluster(&self, i: usize, args: &[&str]) -> Output {
        let pid = self.nodes[i].glusterd_pid().to_string();
        Command::new("nsenter")
            .args(["-t", &pid, "-m", "-n", "gluster", "--mode=script"])
            .args(args)
            .output()
            .expect("run gluster CLI")
    }

    /// Runs the gluster CLI on node `i`, panicking with its output (and glusterd's log) on failure.
    pub fn gluster_ok(&self, i: usize, args: &[&str]) -> String {
        let out = self.gluster(i, args);
        assert!(
            out.status.success(),
            "gluster {args:?} on {} failed:\n{}{}\n{}",
            self.nodes[i].name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            node_log(&self.nodes[i])
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// PIDs of the brick processes (`glusterfsd`), per node index; `None` when a brick is offline.
    pub fn brick_pids(&self) -> Vec<Option<u32>> {
        let xml = self.gluster(0, &["volume", "status", &self.volume, "--xml"]);
        let xml = String::from_utf8_lossy(&xml.stdout);
        self.nodes
            .iter()
            .map(|n| {
                let path = format!("<path>{}</path>", n.brick.display());
                let at = xml.find(&path)?;
                let rest = &xml[at..];
                let end = rest.find("</node>").unwrap_or(rest.len());
                let node = &rest[..end];
                let status = tag(node, "status")?;
                let pid: u32 = tag(node, "pid")?.parse().ok()?;
                (status == "1" && pid > 0).then_some(pid)
            })
            .collect()
    }

    /// Waits until every brick is online (after start or a `start force`).
    pub fn wait_bricks_online(&self) {
        wait_for("every brick online", Duration::from_secs(30), Duration::from_millis(100), || {
            self.brick_pids().iter().all(Option::is_some).then_some(())
        });
    }

    /// Kills node `i`'s brick process (SIGKILL) and waits until it is really gone (a killed brick
    /// is a zombie for a moment; `start force` in that window does nothing). Returns its PID.
    pub fn kill_brick(&self, i: usize) -> u32 {
        let pid = self.brick_pids()[i].expect("brick online");
        // SAFETY: kill(2) on a brick process this cluster's glusterd started.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        wait_for("killed brick to vanish", Duration::from_secs(10), Duration::from_millis(20), || {
            (!Path::new(&format!("/proc/{pid}")).exists()).then_some(())
        });
        pid
    }

    /// Restarts offline bricks (`volume start VOL force`) and waits for them.
    pub fn restart_bricks(&self) {
        self.gluster_ok(0, &["volume", "start", &self.volume, "force"]);
        self.wait_bricks_online();
    }

    /// A power cut of node `i`: its link goes down (the others hear nothing more, not even a
    /// reset), then every process in its namespace dies at once: glusterd, its brick and
    /// self-heal daemon, and any nasgw or FUSE client the test started there.
    pub fn power_cut(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        self.topo.cut(&node.name);
        if let Ok(out) = Command::new("ip").args(["netns", "pids", &node.ns]).output() {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
                // SAFETY: kill(2) on a process inside a namespace this cluster created.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        if let Some(mut c) = node.glusterd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Powers node `i` on again after [`GlusterCluster::power_cut`]: `/run` starts empty (its
    /// stale PID files gone, as after a boot), the link comes up, and glusterd starts on its old
    /// state, which starts the node's brick and self-heal daemon. Returns at once, as systemd
    /// goes on once glusterd has forked: [`GlusterCluster::wait_glusterd`] waits for it.
    pub fn power_on(&mut self, i: usize) {
        let (name, addr, run) = {
            let n = &self.nodes[i];
            (n.name.clone(), n.addr.clone(), n.dir.join("run"))
        };
        let _ = std::fs::remove_dir_all(&run);
        std::fs::create_dir_all(run.join("gluster")).expect("glusterd run dir");
        self.topo.heal(&name);
        let node = self.spawn_glusterd(&name, &addr);
        self.nodes[i] = node;
    }

    /// Stops node `i`'s glusterd alone, as `systemctl stop glusterd` does (`KillMode=process`):
    /// its brick and self-heal daemon run on.
    pub fn stop_glusterd(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].glusterd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts node `i`'s glusterd on whatever state its directory holds now (after
    /// [`GlusterCluster::stop_glusterd`], or on a wiped one: a blank node). Returns at once:
    /// [`GlusterCluster::wait_glusterd`] waits for it.
    pub fn start_glusterd(&mut self, i: usize) {
        assert!(self.nodes[i].glusterd.is_none(), "glusterd on {} still runs", self.nodes[i].name);
        let (name, addr) = (self.nodes[i].name.clone(), self.nodes[i].addr.clone());
        let node = self.spawn_glusterd(&name, &addr);
        self.nodes[i] = node;
    }

    /// Whether node `i`'s glusterd process runs (the harness started it and did not stop it).
    pub fn glusterd_running(&self, i: usize) -> bool {
        self.nodes[i].glusterd.is_some()
    }

    /// Waits until self-heal has nothing left to heal on any brick; returns how long it took.
    pub fn wait_healed(&self, timeout: Duration) -> Duration {
        let t0 = Instant::now();
        wait_for("self-heal to finish", timeout, Duration::from_millis(500), || {
            let out = self.gluster(0, &["volume", "heal", &self.volume, "info"]);
            let text = String::from_utf8_lossy(&out.stdout);
            let counts: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("Number of entries: ")).collect();
            (out.status.success() && counts.len() == self.nodes.len() && counts.iter().all(|c| c.trim() == "0"))
                .then_some(())
        });
        t0.elapsed()
    }

    /// Mounts the volume with the GlusterFS FUSE client running in host `host`'s network namespace
    /// (a storage node or a client), volfile servers in order starting with that host's own when
    /// it is a node. The mount is visible to every process of the test; it is verified (a failed
    /// mount panics, it never leaves an empty directory looking like the volume).
    pub fn mount(&self, host: &str, path: &Path) -> PathBuf {
        std::fs::create_dir_all(path).expect("mount point");
        let ns = self.topo.ns(host).to_string();
        let servers = match self.nodes.iter().position(|n| n.name == host) {
            Some(i) => self.servers_for(i),
            None => self.servers(),
        };
        let log = self.dir.path().join(format!("fuse-{host}-{}.log", self.mounts.lock().unwrap().len()));
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{ns}")).args(["glusterfs", "-N", "--process-name", "fuse"]);
        for s in &servers {
            cmd.arg(format!("--volfile-server={s}"));
        }
        cmd.arg(format!("--volfile-id={}", self.volume))
            .arg(format!("--log-file={}", log.display()))
            .arg("--aux-gfid-mount")
            .arg(path);
        let mut child =
            cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("glusterfs");
        let start = Instant::now();
        while !is_glusterfs_mount(path) {
            if let Some(status) = child.try_wait().ok().flatten() {
                panic!("glusterfs mount of {} failed ({status}):\n{}", path.display(), tail(&log));
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "mount {} never appeared:\n{}",
                path.display(),
                tail(&log)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // The volume answers (not only the kernel's mount table).
        wait_for("the FUSE mount to answer", Duration::from_secs(30), Duration::from_millis(50), || {
            std::fs::metadata(path).ok()
        });
        self.mounts.lock().unwrap().push(FuseMount { path: path.to_path_buf(), ns, child });
        path.to_path_buf()
    }

    /// Unmounts a mount made by `mount` and reaps its client process.
    pub fn unmount(&self, path: &Path) {
        let mut mounts = self.mounts.lock().unwrap();
        if let Some(i) = mounts.iter().position(|m| m.path == path) {
            let m = mounts.remove(i);
            stop_mount(m);
        }
    }

    /// The glusterfs client PID of a mount made by `mount`.
    pub fn mount_pid(&self, path: &Path) -> Option<u32> {
        self.mounts.lock().unwrap().iter().find(|m| m.path == path).map(FuseMount::pid)
    }

    /// Stops everything now (the same as dropping the cluster).
    pub fn teardown(self) {}
}

impl Drop for GlusterCluster {
    fn drop(&mut self) {
        for m in self.mounts.get_mut().map(std::mem::take).unwrap_or_default() {
            stop_mount(m);
        }
        // Stop the volume's processes: bricks and self-heal daemons first (their PIDs are in the
        // namespaces), then glusterd; the Topology drop kills anything left and deletes them.
        for n in &self.nodes {
            if let Ok(out) = Command::new("ip").args(["netns", "pids", &n.ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace().filter_map(|p| p.parse::<i32>().ok())
                {
                    // SAFETY: kill(2) on a process inside a namespace this cluster created.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        for n in &mut self.nodes {
            if let Some(mut c) = n.glusterd.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

fn stop_mount(mut m: FuseMount) {
    let _ = Command::new("umount").arg("-l").arg(&m.path).status();
    let _ = m.child.kill();
    let _ = m.child.wait();
}

/// Is `path` currently a GlusterFS FUSE mount in this process's mount namespace?
pub fn is_glusterfs_mount(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else { return false };
    let want = path.to_string_lossy();
    info.lines().any(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        let sep = f.iter().position(|x| *x == "-");
        f.get(4).is_some_and(|m| *m == want) && sep.and_then(|s| f.get(s + 1)).is_some_and(|t| *t == "fuse.glusterfs")
    })
}

/// The glusterfs FUSE client a nasgw daemon (`parent`) started as its child, if it runs.
pub fn fuse_client_of(parent: u32) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (comm, rest) = stat.split_once(") ")?;
        let ppid: u32 = rest.split(' ').nth(1)?.parse().ok()?;
        (comm.ends_with("(glusterfs") && ppid == parent).then_some(pid)
    })
}

fn tag<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    let open = format!("<{name}>");
    let start = text.find(&open)? + open.len();
    let end = text[start..].find(&format!("</{name}>"))?;
    Some(&text[start..start + end])
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("copy dir");
    if let Ok(entries) = std::fs::read_dir(from) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_file()) {
                let _ = std::fs::copy(e.path(), to.join(e.file_name()));
            }
        }
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

fn node_log(node: &GlusterNode) -> String {
    format!(
        "--- glusterd log of {} ---\n{}\n{}",
        node.name,
        tail(&node.dir.join("log/glusterd.log")),
        std::fs::read_to_string(node.dir.join("glusterd.stderr")).unwrap_or_default()
    )
}
