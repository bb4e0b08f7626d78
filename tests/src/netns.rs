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
    hosts: Vec<(String, String)>,
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
            run("ip", &["netns", "add", &ns]);
            topo.hosts.push((name.to_string(), ns.clone()));
            let port = format!("v{name}");
            run("ip", &["link", "add", &port, "netns", &switch, "type", "veth", "peer", "name", "eth0", "netns", &ns]);
            run("ip", &["-n", &switch, "link", "set", &port, "master", "br0", "up"]);
            run("ip", &["-n", &ns, "addr", "add", &format!("{addr}/16"), "dev", "eth0"]);
            run("ip", &["-n", &ns, "link", "set", "eth0", "up"]);
            run("ip", &["-n", &ns, "link", "set", "lo", "up"]);
        }
        topo
    }

    /// The namespace of host `name`.
    pub fn ns(&self, name: &str) -> &str {
        &self.hosts.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no host {name}")).1
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

impl Drop for Topology {
    fn drop(&mut self) {
        for (_, ns) in self.hosts.iter().chain(std::iter::once(&(String::new(), self.switch.clone()))) {
            // Kill anything left in the namespace, then delete it.
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    if let Ok(pid) = pid.parse::<i32>() {
                        // SAFETY: kill(2) on a process of a namespace this test created.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
            }
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}
