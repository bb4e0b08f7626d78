//! Shared set-up for the HA end-to-end tests: three nasgw nodes and a client on a bridge
//! (198.18.0.0/16), a shared directory as the volume holding the recovery lock, three public
//! addresses, the test echo service as the client-facing TCP service, and a sampler that
//! watches every namespace's addresses to catch an address held twice.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nasgw_tests::{is_root, wait_for, Daemon, Topology};

/// Public addresses of the test cluster.
pub const VIPS: [&str; 3] = ["198.18.1.1", "198.18.1.2", "198.18.1.3"];
/// Public addresses of the IPv6 test cluster ([`Cluster::start_ipv6`]), on fd18::/64.
pub const VIPS6: [&str; 3] = ["fd18::101", "fd18::102", "fd18::103"];
/// The test echo service's port.
pub const ECHO_PORT: u16 = 7777;
/// Node names, in `[cluster] nodes` order (pnn 0, 1, 2).
pub const NODES: [&str; 3] = ["n1", "n2", "n3"];

/// Three nodes and a client.
pub struct Cluster {
    pub topo: Topology,
    pub root: tempfile::TempDir,
    pub daemons: Vec<Option<Daemon>>,
    /// Nodes killed with their link down: their dead kernel still lists the address they had,
    /// but nobody can reach it, so they are left out of `holders`.
    pub dead: Vec<bool>,
    /// Its public addresses ([`VIPS`] or [`VIPS6`]).
    pub vips: [&'static str; 3],
    config: String,
}

impl Cluster {
    /// Starts the three daemons and waits until every public address is served once.
    pub fn start(failback: bool) -> Cluster {
        Cluster::start_with(failback, |_| {})
    }

    /// Like [`Cluster::start`], with `prepare` run on the shared volume's directory before the
    /// daemons start (to mount something there).
    pub fn start_with(failback: bool, prepare: impl FnOnce(&Path)) -> Cluster {
        Cluster::start_on(failback, VIPS, prepare)
    }

    /// Like [`Cluster::start`] with IPv6 public addresses ([`VIPS6`]): every host also gets an
    /// IPv6 address on fd18::/64 and the listeners listen on `[::]`.
    pub fn start_ipv6() -> Cluster {
        Cluster::start_on(true, VIPS6, |_| {})
    }

    /// Like [`Cluster::start`], with `extra` TOML tables appended to every node's config.
    pub fn start_extra(extra: &str) -> Cluster {
        Cluster::start_full(true, VIPS, |_| {}, extra, "")
    }

    /// Like [`Cluster::start`], with `nfs` as the `[nfs]` keys (instead of `listen` on 12049)
    /// and `extra` TOML tables appended.
    pub fn start_nfs(nfs: &str, extra: &str) -> Cluster {
        Cluster::start_full(true, VIPS, |_| {}, extra, nfs)
    }

    fn start_on(failback: bool, vips: [&'static str; 3], prepare: impl FnOnce(&Path)) -> Cluster {
        Cluster::start_full(failback, vips, prepare, "", "")
    }

    fn start_full(
        failback: bool,
        vips: [&'static str; 3],
        prepare: impl FnOnce(&Path),
        extra: &str,
        nfs: &str,
    ) -> Cluster {
        assert!(is_root(), "network namespace tests need root (the README's test command runs as root)");
        let topo =
            Topology::new(&[("n1", "198.18.0.1"), ("n2", "198.18.0.2"), ("n3", "198.18.0.3"), ("c1", "198.18.0.10")]);
        let v6 = vips[0].contains(':');
        if v6 {
            for (host, a) in [("n1", "fd18::1"), ("n2", "fd18::2"), ("n3", "fd18::3"), ("c1", "fd18::10")] {
                let out = topo.exec(host, "ip", &["addr", "add", &format!("{a}/64"), "dev", "eth0", "nodad"]);
                assert!(out.status.success(), "ip addr add {a}: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
        let (any, prefix) = if v6 { ("[::]", 64) } else { ("0.0.0.0", 16) };
        let public: String =
            vips.iter().map(|v| format!("  {{ address = \"{v}/{prefix}\", interface = \"eth0\" }},\n")).collect();
        let nfs = if nfs.is_empty() { format!("listen = \"{any}:12049\"") } else { nfs.to_string() };
        let root = tempfile::tempdir().unwrap();
        let vol = root.path().join("vol");
        std::fs::create_dir_all(&vol).unwrap();
        prepare(&vol);
        nasgw_tests::process::write_private(&root.path().join("key"), "nasgw-test-cluster-secret-0123456789\n");
        let notify = root.path().join("notify.sh");
        std::fs::write(&notify, "#!/bin/sh\necho \"$(date +%s.%N) $*\" >> notify.log\n").unwrap();
        std::fs::set_permissions(&notify, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let config = format!(
            r#"[volume]
name = "smb"
backend = "local"
path = "{{dir}}/vol"
[nfs]
{nfs}
[smb]
listen = "{any}:4445"
[[smb.share]]
name = "pub"
path = "/"
writable = true
guest_ok = true
guest_only = true
[cluster]
nodes = ["198.18.0.1", "198.18.0.2", "198.18.0.3"]
recovery_lock = "/lock/lockfile"
secret_file = "{key}"
notify_script = "{notify}"
failback = {failback}
test_echo_port = {ECHO_PORT}
public_addresses = [
{public}]
[node]
control_socket = "{{dir}}/ctl.sock"
state_dir = "{{dir}}/state"
{extra}"#,
            key = root.path().join("key").display(),
            notify = notify.display(),
        );
        let mut c = Cluster { topo, root, daemons: Vec::new(), dead: vec![false; 3], vips, config };
        for i in 0..3 {
            let d = c.start_node(i);
            c.daemons.push(Some(d));
        }
        c.wait_converged(Duration::from_secs(10), &[0, 1, 2]);
        c
    }

    /// The node's private directory; its volume is a symlink to the shared one.
    pub fn dir(&self, i: usize) -> PathBuf {
        self.root.path().join(NODES[i])
    }

    /// The shared volume.
    pub fn volume(&self) -> PathBuf {
        self.root.path().join("vol")
    }

    /// Starts (or restarts) node `i`.
    pub fn start_node(&self, i: usize) -> Daemon {
        let dir = self.dir(i);
        std::fs::create_dir_all(&dir).unwrap();
        let link = dir.join("vol");
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(self.volume(), &link).unwrap();
        }
        Daemon::start(NODES[i], &dir, &self.config, Some(self.topo.ns(NODES[i])))
    }

    pub fn daemon(&self, i: usize) -> &Daemon {
        self.daemons[i].as_ref().expect("node running")
    }

    /// Public addresses on node `i`'s eth0 right now.
    pub fn held(&self, i: usize) -> Vec<String> {
        held_in(self.topo.ns(NODES[i]))
    }

    /// VIP -> nodes holding it.
    pub fn holders(&self) -> BTreeMap<String, Vec<usize>> {
        let mut m: BTreeMap<String, Vec<usize>> = self.vips.iter().map(|v| (v.to_string(), Vec::new())).collect();
        for i in (0..3).filter(|i| !self.dead[*i]) {
            for a in self.held(i) {
                m.entry(a).or_default().push(i);
            }
        }
        m
    }

    /// Waits until every VIP is on exactly one node of `allowed`; returns how long it took.
    pub fn wait_converged(&self, timeout: Duration, allowed: &[usize]) -> Duration {
        let start = Instant::now();
        wait_for("every public address on exactly one allowed node", timeout, Duration::from_millis(20), || {
            let h = self.holders();
            h.values().all(|n| n.len() == 1 && allowed.contains(&n[0])).then_some(())
        });
        start.elapsed()
    }

    /// Logs of every node, for failure messages.
    pub fn logs(&self) -> String {
        self.daemons.iter().flatten().map(|d| d.logs()).collect::<Vec<_>>().join("\n")
    }

    /// `nasgw status --json` of node `i`.
    pub fn status(&self, i: usize) -> serde_json::Value {
        let out = self.daemon(i).ctl(&["status", "--json"]);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("status of {}: {e}: {:?}", NODES[i], out))
    }

    /// Node `j`'s state as node `i` sees it.
    pub fn state_seen(&self, i: usize, j: usize) -> String {
        self.status(i)["nodes"][j]["state"].as_str().unwrap_or_default().to_string()
    }

    /// The notify script's log of node `i`.
    pub fn notify_log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir(i).join("notify.log")).unwrap_or_default()
    }
}

/// Waits until node daemon `d` lists at least one client connection on `vip` (its own, or
/// learnt from the replicated connection tables).
pub fn wait_connection_known(d: &Daemon, vip: &str) {
    wait_for("the connection to be replicated", Duration::from_secs(5), Duration::from_millis(20), || {
        let out = d.ctl(&["ip", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let a = v["addresses"].as_array()?.iter().find(|a| a["address"] == vip)?.clone();
        (a["connections"].as_u64()? >= 1).then_some(())
    });
}

/// Public addresses ([`VIPS`], [`VIPS6`]) on `ns`'s eth0.
pub fn held_in(ns: &str) -> Vec<String> {
    let out = Command::new("ip").args(["-n", ns, "-o", "addr", "show", "dev", "eth0"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|w| w.split_once('/').map(|(a, _)| a.to_string()))
        .filter(|a| VIPS.contains(&a.as_str()) || VIPS6.contains(&a.as_str()))
        .collect()
}

/// Runs `f` on a thread that has entered network namespace `ns` (sockets it creates stay there).
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let fd = std::fs::File::open(&path).unwrap();
        // SAFETY: setns on this thread only, with a namespace fd we opened.
        let r = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&fd), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .unwrap()
}

/// A client connection from the client namespace to `vip`'s echo service, checked with one echo.
pub fn connect_echo(ns: &str, vip: &str) -> TcpStream {
    let addr = SocketAddr::new(vip.parse().unwrap(), ECHO_PORT);
    let s = in_netns(ns, move || TcpStream::connect_timeout(&addr, Duration::from_secs(3)).expect("connect to echo"));
    echo(&s);
    s
}

/// One echo round trip.
pub fn echo(s: &TcpStream) {
    use std::io::{Read, Write};
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    (&*s).write_all(b"ping").unwrap();
    let mut b = [0u8; 4];
    (&*s).read_exact(&mut b).unwrap();
    assert_eq!(&b, b"ping");
}

/// Watches all node namespaces and records any instant where one address is on two nodes.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    found: Arc<Mutex<Vec<String>>>,
    rounds: Arc<Mutex<u64>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    /// Samples `ip -n NS addr` of every node in turn, continuously. An overlap is counted only
    /// when node X has the address in two consecutive rounds and node Y has it in between, so
    /// a sequential (non-atomic) sample cannot report a clean hand-over as a double owner.
    pub fn start(namespaces: Vec<String>) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let found = Arc::new(Mutex::new(Vec::new()));
        let rounds = Arc::new(Mutex::new(0));
        let (s, f, r) = (stop.clone(), found.clone(), rounds.clone());
        let thread = std::thread::spawn(move || {
            let t0 = Instant::now();
            let mut prev: Option<Vec<Vec<String>>> = None;
            while !s.load(Ordering::Relaxed) {
                let cur: Vec<Vec<String>> = namespaces.iter().map(|n| held_in(n)).collect();
                if let Some(p) = &prev {
                    for x in 0..cur.len() {
                        for a in &p[x] {
                            if !cur[x].contains(a) {
                                continue;
                            }
                            for y in 0..cur.len() {
                                // y was sampled after x in `p` (y > x) or before x in `cur` (y < x).
                                let between = if y > x { &p[y] } else { &cur[y] };
                                if y != x && between.contains(a) {
                                    f.lock().unwrap().push(format!(
                                        "{:.3}s: {a} on node {x} and node {y}",
                                        t0.elapsed().as_secs_f64()
                                    ));
                                }
                            }
                        }
                    }
                }
                prev = Some(cur);
                *r.lock().unwrap() += 1;
            }
        });
        Sampler { stop, found, rounds, thread: Some(thread) }
    }

    /// Stops sampling; returns (rounds, overlaps found).
    pub fn finish(mut self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        let rounds = *self.rounds.lock().unwrap();
        let found = self.found.lock().unwrap().clone();
        (rounds, found)
    }
}

/// Asks "who has VIP?" for every public address from a client namespace, continuously, and
/// records every round in which two different hosts answered for one address: what a client
/// would see if two nodes held it. (A cut-off node's answers cannot reach the client, so this
/// watches hand-overs and the moment a partition heals; `Sampler` watches the namespaces.)
pub struct ArpSampler {
    stop: Arc<AtomicBool>,
    found: Arc<Mutex<Vec<String>>>,
    counts: Arc<Mutex<(u64, u64)>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ArpSampler {
    /// Starts probing from `ns`, whose eth0 has `client_ip`.
    pub fn start(ns: &str, client_ip: std::net::Ipv4Addr) -> ArpSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let found = Arc::new(Mutex::new(Vec::new()));
        let counts = Arc::new(Mutex::new((0, 0)));
        let (s, f, c, path) = (stop.clone(), found.clone(), counts.clone(), format!("/run/netns/{ns}"));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let nsf = std::fs::File::open(&path).unwrap();
            // SAFETY: setns on this thread only, with a namespace fd we opened.
            assert_eq!(unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&nsf), libc::CLONE_NEWNET) }, 0);
            let sock = ArpSocket::open("eth0").expect("AF_PACKET socket on the client's eth0");
            let _ = ready_tx.send(());
            let vips: Vec<std::net::Ipv4Addr> = VIPS.iter().map(|v| v.parse().unwrap()).collect();
            let t0 = Instant::now();
            while !s.load(Ordering::Relaxed) {
                let mut answers: BTreeMap<std::net::Ipv4Addr, std::collections::BTreeSet<[u8; 6]>> = BTreeMap::new();
                for v in &vips {
                    sock.ask(client_ip, *v);
                }
                let deadline = Instant::now() + Duration::from_millis(10);
                while let Some(reply) = sock.next_reply(deadline) {
                    if reply.target_ip == client_ip && vips.contains(&reply.source_ip) {
                        answers.entry(reply.source_ip).or_default().insert(reply.source_mac);
                        c.lock().unwrap().1 += 1;
                    }
                }
                for (vip, macs) in answers.iter().filter(|(_, m)| m.len() > 1) {
                    f.lock()
                        .unwrap()
                        .push(format!("{:.3}s: {vip} answered by {macs:02x?}", t0.elapsed().as_secs_f64()));
                }
                c.lock().unwrap().0 += 1;
            }
        });
        ready_rx.recv().expect("ARP sampler started");
        ArpSampler { stop, found, counts, thread: Some(thread) }
    }

    /// Rounds done so far (each asks for every address once).
    pub fn rounds(&self) -> u64 {
        self.counts.lock().unwrap().0
    }

    /// Stops probing; returns (rounds, answers received, rounds with two answerers).
    pub fn finish(mut self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        let (rounds, answers) = *self.counts.lock().unwrap();
        let found = self.found.lock().unwrap().clone();
        (rounds, answers, found)
    }
}

/// A raw ARP socket on one interface: sends requests, reads replies.
struct ArpSocket {
    fd: std::os::fd::OwnedFd,
    ifindex: u32,
    mac: [u8; 6],
}

impl ArpSocket {
    fn open(interface: &str) -> std::io::Result<ArpSocket> {
        use std::os::fd::FromRawFd;
        let ifindex = ha::system::ifindex(interface)?;
        let mac = ha::system::mac_of(interface)?;
        let proto = (libc::ETH_P_ARP as u16).to_be();
        // SAFETY: socket(2); the descriptor is owned below.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: raw is a fresh descriptor nobody else owns.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
        let sock = ArpSocket { fd, ifindex, mac };
        let mut sll = sock.link_addr();
        sll.sll_protocol = proto;
        // SAFETY: bind with a valid sockaddr_ll of the stated size.
        let r = unsafe {
            libc::bind(raw, (&sll as *const libc::sockaddr_ll).cast(), std::mem::size_of::<libc::sockaddr_ll>() as u32)
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(sock)
    }

    fn link_addr(&self) -> libc::sockaddr_ll {
        // SAFETY: a zeroed sockaddr_ll is valid; fields set below.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = (libc::ETH_P_ARP as u16).to_be();
        sll.sll_ifindex = self.ifindex as i32;
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&[0xff; 6]);
        sll
    }

    /// Broadcasts "who has `target`? tell `me`".
    fn ask(&self, me: std::net::Ipv4Addr, target: std::net::Ipv4Addr) {
        use ha::wire::arp::{ArpRepr, Operation};
        let req = ArpRepr {
            operation: Operation::Request,
            source_mac: self.mac,
            source_ip: me,
            target_mac: [0; 6],
            target_ip: target,
            eth_dst: [0xff; 6],
        };
        let mut buf = [0u8; 64];
        let n = req.emit(&mut buf).expect("64 bytes hold an ARP frame");
        let sll = self.link_addr();
        // SAFETY: sendto with a valid buffer and sockaddr_ll.
        unsafe {
            libc::sendto(
                std::os::fd::AsRawFd::as_raw_fd(&self.fd),
                buf.as_ptr().cast(),
                n,
                0,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
    }

    /// The next ARP reply received before `deadline`.
    fn next_reply(&self, deadline: Instant) -> Option<ha::wire::arp::ArpRepr> {
        use ha::wire::arp::{ArpRepr, Operation};
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let mut pfd =
                libc::pollfd { fd: std::os::fd::AsRawFd::as_raw_fd(&self.fd), events: libc::POLLIN, revents: 0 };
            // SAFETY: poll on one valid pollfd.
            if unsafe { libc::poll(&mut pfd, 1, left.as_millis().max(1) as i32) } <= 0 {
                return None;
            }
            let mut buf = [0u8; 128];
            // SAFETY: recv into a valid buffer; non-blocking because poll said readable.
            let n = unsafe { libc::recv(pfd.fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
            if n <= 0 {
                continue;
            }
            if let Ok(r) = ArpRepr::parse(&buf[..n as usize]) {
                if r.operation == Operation::Reply {
                    return Some(r);
                }
            }
        }
    }
}

/// Waits for a file path to exist.
pub fn exists(p: &Path) -> bool {
    p.exists()
}
