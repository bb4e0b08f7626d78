//! Real network namespaces for cluster tests: a switch namespace with a bridge, and one namespace
//! per host joined to it by a veth pair (`eth0` inside the host). Addresses are 198.18.0.0/15.
//! Names carry a per-process prefix so tests running in parallel never collide.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::run;

/// A bridge and its hosts; every namespace is deleted on drop.
pub struct Topology {
    /// The switch namespace holding `br0`.
    pub switch: String,
    /// (name, namespace, address) of every host.
    hosts: Vec<(String, String, String)>,
}

impl Topology {
    /// Creates the switch and one namespace per `(name, address)`; addresses get a /16 on
    /// `eth0` so the whole 198.18.0.0/16 test range is on-link.
    pub fn new(hosts: &[(&str, &str)]) -> Topology {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let tag = format!("t{}x{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
        let switch = format!("{tag}-sw");
        run("ip", &["netns", "add", &switch]);
        let mut topo = Topology { switch: switch.clone(), hosts: Vec::new() };
        run("ip", &["-n", &switch, "link", "add", "br0", "type", "bridge"]);
        run("ip", &["-n", &switch, "link", "set", "br0", "up"]);
        for (name, addr) in hosts {
            let ns = format!("{tag}-{name}");
            topo.hosts.push((name.to_string(), ns.clone(), addr.to_string()));
            topo.plug(name, &ns, addr);
        }
        topo
    }

    /// Makes host `name`'s namespace and plugs it into the bridge with address `addr`.
    fn plug(&self, name: &str, ns: &str, addr: &str) {
        run("ip", &["netns", "add", ns]);
        let port = format!("v{name}");
        run("ip", &["link", "add", &port, "netns", &self.switch, "type", "veth", "peer", "name", "eth0", "netns", ns]);
        run("ip", &["-n", &self.switch, "link", "set", &port, "master", "br0", "up"]);
        run("ip", &["-n", ns, "addr", "add", &format!("{addr}/16"), "dev", "eth0"]);
        run("ip", &["-n", ns, "link", "set", "eth0", "up"]);
        run("ip", &["-n", ns, "link", "set", "lo", "up"]);
    }

    /// Host `name` loses power and boots again: every process in its namespace is killed while
    /// its link is down, and the namespace is made anew with the same name, address and port.
    /// Its kernel's connections are gone without a FIN or a RST reaching anyone, so its peers'
    /// connections to it stay open until they send on them, as after a real power cut.
    pub fn power_cycle(&self, name: &str) {
        let (_, ns, addr) = self.host(name);
        self.cut(name);
        kill_all(ns);
        run("ip", &["-n", &self.switch, "link", "del", &format!("v{name}")]);
        run("ip", &["netns", "del", ns]);
        self.plug(name, ns, addr);
    }

    /// The namespace of host `name`.
    pub fn ns(&self, name: &str) -> &str {
        &self.host(name).1
    }

    /// Host `name`'s (name, namespace, address).
    fn host(&self, name: &str) -> &(String, String, String) {
        self.hosts.iter().find(|h| h.0 == name).unwrap_or_else(|| panic!("no host {name}"))
    }

    /// Cuts `name` off the bridge (a partition: its processes live on).
    pub fn cut(&self, name: &str) {
        run("ip", &["-n", &self.switch, "link", "set", &format!("v{name}"), "down"]);
    }

    /// Reconnects `name`.
    pub fn heal(&self, name: &str) {
        run("ip", &["-n", &self.switch, "link", "set", &format!("v{name}"), "up"]);
    }

    /// Runs a command inside host `name`'s namespace.
    pub fn exec(&self, name: &str, cmd: &str, args: &[&str]) -> std::process::Output {
        Command::new("ip").args(["netns", "exec", self.ns(name), cmd]).args(args).output().expect("ip netns exec")
    }
}

/// Moves the calling thread into network namespace `ns`: sockets it opens from now on live
/// there (a current-thread async test can then reach a node's loopback services).
pub fn enter(ns: &str) {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(format!("/run/netns/{ns}")).expect("namespace");
    // SAFETY: setns on a valid namespace fd; affects only the calling thread.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(r, 0, "setns {ns}: {}", std::io::Error::last_os_error());
}

/// SIGKILLs every process in namespace `ns` and waits (up to 5 s) until none is left.
fn kill_all(ns: &str) {
    let pids = || -> Vec<i32> {
        Command::new("ip")
            .args(["netns", "pids", ns])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().filter_map(|p| p.parse().ok()).collect())
            .unwrap_or_default()
    };
    let start = std::time::Instant::now();
    loop {
        let left = pids();
        if left.is_empty() || start.elapsed() > std::time::Duration::from_secs(5) {
            return;
        }
        for pid in left {
            // SAFETY: kill(2) on a process of a namespace this test created.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in self.hosts.iter().map(|h| &h.1).chain(std::iter::once(&self.switch)) {
            // Kill anything left in the namespace, then delete it.
            kill_all(ns);
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}
