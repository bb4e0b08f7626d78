//! The cluster group's anchor: Samba 4.17 (`clustering = yes`) on CTDB 4.17, one `ctdbd` and
//! one `smbd` per node, in the same network namespaces and on the same shared directory as
//! the nasgw nodes, the way the seed's recipe runs them (minus public addresses: clients
//! reach each node on its own address, as they reach the nasgw nodes).
//!
//! Both systems run side by side in each node's namespace, so the anchor moves off the ports
//! nasgw holds there: CTDB talks on [`CTDB_PORT`] (it reads its port from `/etc/services`,
//! so each `ctdbd` gets a private mount namespace binding its own copy over it, beside its own
//! `/etc/ctdb` and `/run`), smbd serves [`SMB_PORT`] on the node's address only.
//!
//! Start-up polls `ctdb status` until every node is OK and recovery is over, then each smbd
//! until it accepts connections; stopping sends SIGTERM to each daemon's process group, waits,
//! and kills what is left. Mounts live only in the daemons' private mount namespaces, so
//! nothing outlives them. CTDB runs its defaults except `RerecoveryTimeout=1` (start-up waits
//! that long plus 3 s after the first recovery; the default 10 makes every run ~9 s longer and
//! changes nothing once the cluster is up) and without event scripts (nothing to manage: no
//! public addresses, smbd started by the bench).

use std::fs::{self, File};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

/// The SMB port every node's smbd serves on its own address (nasgw holds 445 there).
pub const SMB_PORT: u16 = 4450;
/// The port the `ctdbd`s talk on (nasgw's cluster port is CTDB's default, 4379).
pub const CTDB_PORT: u16 = 4380;
/// How long the cluster may take to become healthy (~14 s on an idle machine).
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a daemon gets to exit after SIGTERM before its process group is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// One node of the anchor cluster: a network namespace and the node's address in it.
#[derive(Clone, Copy, Debug)]
pub struct Host<'a> {
    /// The network namespace (`/run/netns/NAME`).
    pub ns: &'a str,
    /// The node's address there.
    pub addr: &'a str,
}

/// A running Samba + CTDB cluster; stopped on drop.
pub struct SambaCtdb {
    nodes: Vec<Node>,
}

struct Node {
    dir: PathBuf,
    ctdbd: Option<Child>,
    smbd: Option<Child>,
}

impl SambaCtdb {
    /// Every node's `ctdbd` and `smbd` process (each execs in place of the `ip netns exec` that
    /// started it), for the bench's CPU accounting.
    pub fn pids(&self) -> Vec<(&'static str, u32)> {
        self.nodes
            .iter()
            .flat_map(|n| [("ctdbd", &n.ctdbd), ("smbd", &n.smbd)])
            .filter_map(|(what, c)| Some((what, c.as_ref()?.id())))
            .collect()
    }

    /// Starts `ctdbd` on every host, waits until `ctdb status` shows them all OK, then starts
    /// an smbd per host serving `share` as the seed's guest share `[pub]` and waits until each
    /// accepts connections. Every file the daemons write lives under `dir`, except the cluster
    /// lock, which is on `shared` (the directory every node sees, as the recipe puts it on the
    /// volume). On failure everything started is stopped and the error says why.
    pub fn start(hosts: &[Host<'_>], share: &Path, shared: &Path, dir: &Path) -> Result<SambaCtdb> {
        Self::start_with(hosts, share, shared, dir, None)
    }

    /// [`SambaCtdb::start`] with one public address (`198.18.0.101/16`, on every node's
    /// `eth0`) that CTDB places on a node and moves when that node dies, as the recipe runs
    /// it: smbd listens on every address, registers its clients' connections with its ctdbd
    /// (which sends tickle ACKs after a takeover), and CTDB's keepalives are tuned for fast
    /// failover (`KeepaliveInterval=1`, `KeepaliveLimit=3`: a silent node is dropped after
    /// ~4 s instead of the default ~29 s), as `bench/failover/run.sh` runs it. The packaged
    /// `10.interface` event script adds and removes the address.
    pub fn start_with_public_address(
        hosts: &[Host<'_>],
        share: &Path,
        shared: &Path,
        dir: &Path,
        public: &str,
    ) -> Result<SambaCtdb> {
        Self::start_with(hosts, share, shared, dir, Some(public))
    }

    fn start_with(
        hosts: &[Host<'_>],
        share: &Path,
        shared: &Path,
        dir: &Path,
        public: Option<&str>,
    ) -> Result<SambaCtdb> {
        for tool in ["ctdbd", "ctdb", "smbd"] {
            if !on_path(tool) {
                bail!("{tool} is not installed (scripts/install-deps installs samba and ctdb)");
            }
        }
        fs::create_dir_all(dir)?;
        let services = dir.join("services");
        fs::write(&services, services_file(&fs::read_to_string("/etc/services").unwrap_or_default()))?;
        let nodes_file: String = hosts.iter().map(|h| format!("{}\n", h.addr)).collect();
        let reclock = shared.join(".ctdb-reclock");
        let mut cluster = SambaCtdb { nodes: Vec::new() };
        for (i, h) in hosts.iter().enumerate() {
            let node_dir = dir.join(format!("node{i}"));
            let ctdbd = spawn_ctdbd(h, &node_dir, &nodes_file, &reclock, &services, public)
                .with_context(|| format!("start ctdbd on {}", h.addr))?;
            cluster.nodes.push(Node { dir: node_dir, ctdbd: Some(ctdbd), smbd: None });
        }
        let started = Instant::now();
        cluster.wait_healthy(hosts.len())?;
        eprintln!("bench: CTDB healthy on {} nodes after {:.1} s", hosts.len(), started.elapsed().as_secs_f64());
        for (i, h) in hosts.iter().enumerate() {
            let node_dir = cluster.nodes[i].dir.clone();
            let smbd = spawn_smbd(h, &node_dir, share, public.is_none())
                .with_context(|| format!("start smbd on {}", h.addr))?;
            cluster.nodes[i].smbd = Some(smbd);
        }
        for (i, h) in hosts.iter().enumerate() {
            cluster.wait_smbd(i, h)?;
        }
        Ok(cluster)
    }

    /// A node dies: SIGKILL to its smbd (with the children serving connections) and its
    /// ctdbd. The caller takes its link down first, as a dead host sends nothing.
    pub fn kill_node(&mut self, i: usize) {
        for c in [self.nodes[i].smbd.take(), self.nodes[i].ctdbd.take()].into_iter().flatten() {
            let mut c = c;
            // SAFETY: kill(2) on the process group this bench created for the daemon.
            unsafe { libc::kill(-(c.id() as i32), libc::SIGKILL) };
            let _ = c.wait();
        }
    }

    /// Polls `ctdb status` on the first node until it shows `n` nodes OK and recovery over.
    fn wait_healthy(&mut self, n: usize) -> Result<()> {
        let start = Instant::now();
        loop {
            for node in &mut self.nodes {
                if let Some(s) = node.ctdbd.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                    bail!("ctdbd exited during start-up ({s}): {}", log_tail(&node.dir.join("ctdbd.log")));
                }
            }
            let out = Command::new("ctdb")
                .arg("status")
                .env("CTDB_SOCKET", socket(&self.nodes[0].dir))
                .stdin(Stdio::null())
                .output()?;
            let last = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            if out.status.success() && all_ok(&last, n) {
                return Ok(());
            }
            if start.elapsed() > START_TIMEOUT {
                bail!("CTDB not healthy after {START_TIMEOUT:?}: {}", last.trim());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Polls until node `i`'s smbd accepts a TCP connection on its address (from a thread
    /// that enters the node's namespace).
    fn wait_smbd(&mut self, i: usize, h: &Host<'_>) -> Result<()> {
        let addr: SocketAddr = format!("{}:{SMB_PORT}", h.addr).parse()?;
        let ns = h.ns.to_string();
        let start = Instant::now();
        loop {
            let node = &mut self.nodes[i];
            if let Some(s) = node.smbd.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("smbd on {} exited during start-up ({s}): {}", h.addr, log_tail(&node.dir.join("smbd.log")));
            }
            let ns = ns.clone();
            let up = std::thread::spawn(move || {
                nasgw_tests::netns::enter(&ns);
                TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            })
            .join()
            .unwrap_or(false);
            if up {
                return Ok(());
            }
            if start.elapsed() > START_TIMEOUT {
                bail!("smbd on {} does not accept connections after {START_TIMEOUT:?}", h.addr);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for SambaCtdb {
    /// smbd first (it is a client of its ctdbd), then the ctdbds.
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(c) = node.smbd.take() {
                stop(c, "smbd");
            }
        }
        for node in &mut self.nodes {
            if let Some(c) = node.ctdbd.take() {
                stop(c, "ctdbd");
            }
        }
    }
}

/// Does `ctdb status` output show `n` nodes, every one OK, and recovery mode NORMAL?
/// (A node line reads `pnn:1 198.18.0.2       OK`, or `UNHEALTHY`, `DISCONNECTED|...`.)
pub fn all_ok(status: &str, n: usize) -> bool {
    let nodes: Vec<&str> = status.lines().map(str::trim_start).filter(|l| l.starts_with("pnn:")).collect();
    nodes.len() == n
        && nodes.iter().all(|l| l.split_whitespace().nth(2) == Some("OK"))
        && status.lines().any(|l| l.trim_start().starts_with("Recovery mode:NORMAL"))
}

/// The system's `/etc/services` with the `ctdb` entries moved to [`CTDB_PORT`].
pub fn services_file(system: &str) -> String {
    let mut out: String =
        system.lines().filter(|l| l.split_whitespace().next() != Some("ctdb")).map(|l| format!("{l}\n")).collect();
    out.push_str(&format!("ctdb {CTDB_PORT}/tcp\nctdb {CTDB_PORT}/udp\n"));
    out
}

fn socket(node_dir: &Path) -> PathBuf {
    node_dir.join("run/ctdb/ctdbd.socket")
}

/// Writes node `h`'s `/etc/ctdb` under `dir` and starts `ctdbd --interactive` in its own
/// process group, in the node's namespace and a private mount namespace.
fn spawn_ctdbd(
    h: &Host<'_>,
    dir: &Path,
    nodes: &str,
    reclock: &Path,
    services: &Path,
    public: Option<&str>,
) -> Result<Child> {
    let etc = dir.join("etc");
    fs::create_dir_all(etc.join("events/legacy"))?;
    let mut tunables = "RerecoveryTimeout=1\n".to_string();
    if let Some(addr) = public {
        // The packaged event scripts' helpers (`functions`...), with only 10.interface enabled:
        // it adds and removes the address (ctdbd sends the gratuitous ARPs and tickle ACKs).
        let st = Command::new("cp").arg("-a").arg("/etc/ctdb/.").arg(&etc).status()?;
        if !st.success() {
            bail!("cp -a /etc/ctdb/. {}: {st}", etc.display());
        }
        for e in fs::read_dir(etc.join("events/legacy"))? {
            fs::remove_file(e?.path())?;
        }
        std::os::unix::fs::symlink(
            "/usr/share/ctdb/events/legacy/10.interface.script",
            etc.join("events/legacy/10.interface.script"),
        )?;
        fs::write(etc.join("public_addresses"), format!("{addr} eth0\n"))?;
        tunables.push_str("KeepaliveInterval=1\nKeepaliveLimit=3\n");
    }
    for sub in ["run/ctdb", "lib/volatile", "lib/persistent", "lib/state"] {
        fs::create_dir_all(dir.join(sub))?;
    }
    fs::write(etc.join("nodes"), nodes)?;
    let lib = dir.join("lib");
    fs::write(
        etc.join("ctdb.conf"),
        format!(
            "[logging]\n    log level = NOTICE\n[cluster]\n    recovery lock = {}\n[database]\n    \
             volatile database directory = {}/volatile\n    persistent database directory = {}/persistent\n    \
             state database directory = {}/state\n[legacy]\n    realtime scheduling = false\n",
            reclock.display(),
            lib.display(),
            lib.display(),
            lib.display()
        ),
    )?;
    fs::write(etc.join("ctdb.tunables"), tunables)?;
    let log = File::create(dir.join("ctdbd.log"))?;
    let child = Command::new("ip")
        .args(["netns", "exec", h.ns, "unshare", "-m", "--propagation", "private", "sh", "-c"])
        .arg(
            "mount --bind \"$1\" /etc/ctdb && mount --bind \"$2\" /run && mount --bind \"$3\" /etc/services \
             && exec ctdbd --interactive",
        )
        .arg("sh")
        .args([&etc, &dir.join("run"), &services.to_path_buf()])
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    Ok(child)
}

/// Writes node `h`'s clustered smb.conf under `dir/smb` and starts `smbd -F` in its own
/// process group in the node's namespace.
/// `bind_only`: listen on the node's own address only (else on every address, public ones
/// included).
fn spawn_smbd(h: &Host<'_>, dir: &Path, share: &Path, bind_only: bool) -> Result<Child> {
    let smb = dir.join("smb");
    let mut global = format!(
        "[global]\nclustering = yes\nctdbd socket = {}\nnetbios name = NASGWBENCH\nsmb ports = {SMB_PORT}\n\
         interfaces = {}\nbind interfaces only = {}\n",
        socket(dir).display(),
        h.addr,
        if bind_only { "yes" } else { "no" }
    );
    for (key, sub) in [
        ("private dir", "private"),
        ("lock directory", "lock"),
        ("state directory", "state"),
        ("cache directory", "cache"),
        ("pid directory", "pid"),
        ("ncalrpc dir", "ncalrpc"),
    ] {
        let p = smb.join(sub);
        fs::create_dir_all(&p)?;
        global.push_str(&format!("{key} = {}\n", p.display()));
    }
    global.push_str(
        "map to guest = Bad User\ndisable netbios = yes\nload printers = no\nprinting = bsd\n\
         printcap name = /dev/null\nlog level = 0\n",
    );
    let conf = smb.join("smb.conf");
    fs::write(
        &conf,
        format!(
            "{global}\n[pub]\npath = {}\nbrowseable = yes\nwritable = yes\nguest ok = yes\nguest only = yes\n\
             force user = root\n",
            share.display()
        ),
    )?;
    let log = File::create(dir.join("smbd.log"))?;
    let child = Command::new("ip")
        .args(["netns", "exec", h.ns, "smbd", "-F", "--no-process-group", "--debug-stdout", "-s"])
        .arg(&conf)
        // smbd signals its whole process group when it stops: give it its own.
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    Ok(child)
}

/// SIGTERM to `child`'s process group, a wait for the child, then SIGKILL to whatever is left
/// of the group (helpers a daemon forked), polled until the group is empty.
fn stop(mut child: Child, what: &str) {
    let pgid = child.id() as i32;
    // SAFETY: kill(2) on the process group this bench created for the daemon.
    unsafe { libc::kill(-pgid, libc::SIGTERM) };
    let deadline = Instant::now() + STOP_TIMEOUT;
    while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    loop {
        // SAFETY: as above; signal 0 only asks whether the group still has members.
        let alive = unsafe { libc::kill(-pgid, 0) } == 0;
        if !alive {
            break;
        }
        // SAFETY: as above.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = child.try_wait();
        if Instant::now() > deadline {
            eprintln!("bench: {what} (process group {pgid}) did not go away");
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.wait();
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
                .any(|d| d.join(tool).is_file())
        })
        .unwrap_or(false)
}

fn log_tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(5)..].join(" / ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEALTHY: &str = "Number of nodes:3\npnn:0 198.18.0.1       OK (THIS NODE)\npnn:1 198.18.0.2       OK\n\
                           pnn:2 198.18.0.3       OK\nGeneration:886184012\nSize:3\nRecovery mode:NORMAL (0)\nLeader:0\n";

    #[test]
    fn healthy_only_when_every_node_is_ok_and_recovery_is_over() {
        assert!(all_ok(HEALTHY, 3));
        assert!(!all_ok(HEALTHY, 4), "a node missing from the list");
        assert!(!all_ok(&HEALTHY.replace("0.2       OK", "0.2       UNHEALTHY"), 3));
        assert!(!all_ok(&HEALTHY.replace("0.3       OK", "0.3       DISCONNECTED|UNHEALTHY|INACTIVE"), 3));
        assert!(!all_ok(&HEALTHY.replace("NORMAL (0)", "RECOVERY (1)"), 3));
        assert!(!all_ok("", 3));
    }

    #[test]
    fn services_file_moves_ctdb_and_keeps_the_rest() {
        let s = services_file("ssh\t\t22/tcp\nctdb\t\t4379/tcp\nctdb\t\t4379/udp\nmicrosoft-ds\t445/tcp\n");
        assert!(s.contains("ssh\t\t22/tcp\n") && s.contains("microsoft-ds\t445/tcp\n"), "{s}");
        assert!(!s.contains("4379"), "{s}");
        assert!(s.contains(&format!("ctdb {CTDB_PORT}/tcp\n")), "{s}");
    }
}
