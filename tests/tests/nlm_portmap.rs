//! Where clients find the lock manager: nasgw's portmapper answers `rpcinfo` (portmapper 2 and
//! rpcbind 3/4, over TCP and UDP) for MOUNT, NFS, NLM and NSM, and its UDP answers come from the
//! address the client asked; NLM answers over UDP and TCP; without a portmapper of its own,
//! nasgw registers its programs with a host rpcbind (and removes them when it stops).

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use nasgw_tests::nlm::{file_handle, getport, stat, NlmClient};
use nasgw_tests::{is_root, netns, require_tool, wait_for, Daemon, Topology};

fn config(portmap: bool) -> String {
    let pm = if portmap { "portmap_listen = \"0.0.0.0:111\"\n" } else { "" };
    format!(
        "[volume]\nname = \"smb\"\nbackend = \"local\"\npath = \"{{dir}}/vol\"\n[nfs]\nlisten = \"0.0.0.0:2049\"\n{pm}[smb]\nenabled = false\n[node]\ncontrol_socket = \"{{dir}}/ctl.sock\"\nstate_dir = \"{{dir}}/state\"\n"
    )
}

fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        netns::enter(&ns);
        f()
    })
    .join()
    .expect("namespace thread")
}

fn rpcinfo(topo: &Topology, host: &str, args: &[&str]) -> String {
    let out = topo.exec(host, "rpcinfo", args);
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn the_portmapper_and_the_lock_manager_answer_over_udp_and_tcp() {
    assert!(is_root(), "network namespace tests need root");
    require_tool("rpcinfo");
    let topo = Topology::new(&[("n1", "198.18.0.1"), ("c1", "198.18.0.10")]);
    // A second address on the server: answers must come from the address asked.
    assert!(topo.exec("n1", "ip", &["addr", "add", "198.18.0.5/16", "dev", "eth0"]).status.success());
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start("n1", &tmp.path().join("n1"), &config(true), Some(topo.ns("n1")));
    std::fs::write(tmp.path().join("n1/vol/f"), b"data").unwrap();

    let dump = rpcinfo(&topo, "c1", &["-p", "198.18.0.1"]);
    println!("rpcinfo -p:\n{dump}");
    for (prog, vers, proto) in [
        ("nfs", "3", "tcp"),
        ("mountd", "3", "udp"),
        ("nlockmgr", "4", "udp"),
        ("nlockmgr", "4", "tcp"),
        ("nlockmgr", "1", "udp"),
        ("status", "1", "udp"),
        ("portmapper", "2", "udp"),
    ] {
        assert!(
            dump.lines().any(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                w.len() == 5 && w[1] == vers && w[2] == proto && w[4] == prog
            }),
            "{prog} {vers} {proto} missing from:\n{dump}"
        );
    }
    let v4 = rpcinfo(&topo, "c1", &["198.18.0.5"]);
    assert!(v4.contains("198.18.0.5.8.1") && v4.contains("nlockmgr"), "rpcbind 4 dump names the address asked:\n{v4}");
    for (flag, prog, vers) in
        [("-u", "nlockmgr", "4"), ("-t", "nlockmgr", "4"), ("-u", "status", "1"), ("-u", "mountd", "3")]
    {
        let out = rpcinfo(&topo, "c1", &[flag, "198.18.0.5", prog, vers]);
        assert!(out.contains("ready and waiting"), "rpcinfo {flag} {prog} {vers}: {out}");
    }
    // GETPORT over UDP from another address answers from that address (checked by the client).
    let ports = in_ns(topo.ns("c1"), || {
        let a = "198.18.0.5".parse().unwrap();
        (getport(a, 100_021, 4, 17, false), getport(a, 100_024, 1, 17, false), getport(a, 100_003, 3, 17, true))
    });
    assert_eq!(ports, (2049, 2049, 0), "NLM and NSM over UDP on the NFS port; NFS itself TCP only");

    // NLM over UDP and over TCP: two owners of two clients exclude each other.
    let results = in_ns(topo.ns("c1"), || {
        let server: SocketAddr = "198.18.0.5:2049".parse().unwrap();
        let fh = file_handle(server, "smb", "f");
        let a = NlmClient::new(server, "client-a", 1);
        let mut b = NlmClient::new(server, "client-b", 1);
        b.tcp = true;
        let r = vec![
            a.lock(&fh, true, 0, 10, false),
            b.lock(&fh, false, 5, 1, false),
            b.test(&fh, false, 10, 5),
            b.lock(&fh, false, 10, 5, false),
            a.unlock(&fh, 0, 10),
            b.lock(&fh, true, 0, 0, false),
            a.test(&fh, false, 0, 1),
        ];
        r
    });
    let g = Some(stat::GRANTED);
    let dn = Some(stat::DENIED);
    assert_eq!(results, vec![g, dn, g, g, g, g, dn], "{}", d.logs());
    assert!(!d.logs().contains("panicked"));
}

#[test]
fn without_its_own_portmapper_nasgw_registers_with_the_hosts_rpcbind() {
    assert!(is_root(), "network namespace tests need root");
    require_tool("rpcbind");
    let topo = Topology::new(&[("n1", "198.18.0.1")]);
    // rpcbind with a private /run (its socket and lock), in the node's network namespace.
    let mut rpcbind = Command::new("ip")
        .args(["netns", "exec", topo.ns("n1"), "unshare", "--mount", "--propagation", "private", "sh", "-c"])
        .arg("mount -t tmpfs tmpfs /run && exec rpcbind -f -w")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start rpcbind");
    wait_for("rpcbind to answer", Duration::from_secs(10), Duration::from_millis(50), || {
        rpcinfo(&topo, "n1", &["-p", "127.0.0.1"]).contains("portmapper").then_some(())
    });
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start("n1", &tmp.path().join("n1"), &config(false), Some(topo.ns("n1")));
    let listed =
        wait_for("nasgw's programs in rpcbind's table", Duration::from_secs(10), Duration::from_millis(50), || {
            let t = rpcinfo(&topo, "n1", &["-p", "127.0.0.1"]);
            (t.contains("nlockmgr") && t.contains("status") && t.contains("mountd")).then_some(t)
        });
    println!("{listed}");
    assert!(listed.lines().filter(|l| l.contains("nlockmgr")).all(|l| l.contains(" 2049 ")), "{listed}");
    // Every program on both protocols (UNSET clears a version on all protocols at once).
    for (vers, proto, prog) in [
        ("3", "tcp", "nfs"),
        ("3", "tcp", "mountd"),
        ("3", "udp", "mountd"),
        ("4", "tcp", "nlockmgr"),
        ("4", "udp", "nlockmgr"),
        ("1", "tcp", "nlockmgr"),
        ("1", "tcp", "status"),
        ("1", "udp", "status"),
    ] {
        let t = wait_for("every registration", Duration::from_secs(10), Duration::from_millis(50), || {
            let t = rpcinfo(&topo, "n1", &["-p", "127.0.0.1"]);
            t.lines()
                .any(|l| {
                    let w: Vec<&str> = l.split_whitespace().collect();
                    w.len() == 5 && w[1] == vers && w[2] == proto && w[4] == prog
                })
                .then_some(t)
        });
        assert!(t.contains(" 2049 "), "{t}");
    }
    assert!(d.logs().contains("registered MOUNT, NFS, NLM and NSM with the host's rpcbind"), "{}", d.logs());
    assert!(d.stop().success());
    wait_for("nasgw's programs gone from rpcbind's table", Duration::from_secs(10), Duration::from_millis(50), || {
        let t = rpcinfo(&topo, "n1", &["-p", "127.0.0.1"]);
        (!t.contains("nlockmgr") && t.contains("portmapper")).then_some(())
    });
    let _ = rpcbind.kill();
    let _ = rpcbind.wait();
}
