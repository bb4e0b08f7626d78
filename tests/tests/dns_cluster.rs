//! `[dns]`: the cluster answers for its own name. Three nodes in namespaces; `dig` on a client
//! asks every node (by its own and by public addresses) for `data.example.com`:
//! - A answers list exactly the public addresses held by live nodes, least-connected first;
//!   NS/SOA/glue are there for a delegation;
//! - a killed node's address is never answered unreachable longer than the takeover takes;
//! - a node that lost quorum answers SERVFAIL (a resolver then asks another server);
//! - a Linux kernel client in a VM on the test bridge, whose resolver points at a public
//!   address, mounts `data.example.com:/smb` over NFS by name and writes a file.

mod ha_support;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use ha_support::{connect_echo, wait_connection_known, Cluster, NODES, VIPS};
use nasgw_tests::{kclient, require_tool, run, wait_for};

const NAME: &str = "data.example.com";

/// `dig` from the client namespace: (status, answer lines' data).
fn dig(c: &Cluster, server: &str, qtype: &str) -> (String, Vec<String>) {
    let out = Command::new("ip")
        .args(["netns", "exec", c.topo.ns("c1"), "dig", "+tries=1", "+time=1", &format!("@{server}"), NAME, qtype])
        .output()
        .expect("run dig");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = text.split("status: ").nth(1).and_then(|s| s.split(',').next()).unwrap_or("NO ANSWER").to_string();
    let answers = text
        .split(";; ANSWER SECTION:")
        .nth(1)
        .map(|s| {
            s.lines()
                .skip(1)
                .take_while(|l| !l.is_empty())
                .filter_map(|l| l.split_whitespace().last())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    (status, answers)
}

#[test]
fn the_cluster_answers_for_its_name_with_live_addresses_and_only_with_quorum() {
    require_tool("dig");
    let c = Cluster::start_extra(&format!(
        "[dns]\nname = \"{NAME}\"\nlisten = \"0.0.0.0:53\"\norder = \"least_connections\"\n"
    ));
    let all: BTreeSet<String> = VIPS.iter().map(|v| v.to_string()).collect();

    // Every node answers, on its own address and on the public addresses it holds.
    for server in ["198.18.0.1", "198.18.0.2", "198.18.0.3", VIPS[0], VIPS[1], VIPS[2]] {
        let (status, a) = wait_for("an answer", Duration::from_secs(5), Duration::from_millis(50), || {
            let r = dig(&c, server, "A");
            (r.0 == "NOERROR").then_some(r)
        });
        assert_eq!(a.iter().cloned().collect::<BTreeSet<_>>(), all, "@{server}: {status} {a:?}\n{}", c.logs());
    }
    let (_, ns) = dig(&c, "198.18.0.2", "NS");
    assert_eq!(ns, ["ns1.data.example.com.", "ns2.data.example.com.", "ns3.data.example.com."]);
    let out = run("ip", &["netns", "exec", c.topo.ns("c1"), "dig", "@198.18.0.2", NAME, "NS"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("flags: qr aa") && text.contains("ns2.data.example.com.\t1\tIN\tA\t198.18.1.2"),
        "glue:\n{text}"
    );
    let (_, soa) = dig(&c, "198.18.0.3", "SOA");
    assert_eq!(soa.len(), 1, "{soa:?}");
    let (status, _) = dig(&c, "198.18.0.1", "AAAA");
    assert_eq!(status, "NOERROR", "no IPv6 public address: NODATA");
    let out = run("ip", &["netns", "exec", c.topo.ns("c1"), "dig", "@198.18.0.1", "www.data.example.com", "A"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("status: NXDOMAIN"));
    let out = run("ip", &["netns", "exec", c.topo.ns("c1"), "dig", "@198.18.0.1", "example.org", "A"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("status: REFUSED"));

    // Least connections: three clients on the first address; it is never listed first.
    let conns: Vec<_> = (0..3).map(|_| connect_echo(c.topo.ns("c1"), VIPS[0])).collect();
    for i in 0..3 {
        wait_connection_known(c.daemon(i), VIPS[0]);
    }
    let firsts: Vec<String> = (0..6).map(|_| dig(&c, "198.18.0.1", "A").1[0].clone()).collect();
    assert!(!firsts.contains(&VIPS[0].to_string()), "the busy address leads: {firsts:?}");
    assert_eq!(firsts.iter().collect::<BTreeSet<_>>().len(), 2, "the idle two take turns: {firsts:?}");
    assert_eq!(dig(&c, "198.18.0.1", "A").1.last().map(String::as_str), Some(VIPS[0]));
    drop(conns);

    // A kernel client resolves the name through a public address and mounts over NFS.
    mount_by_name(&c);

    // Kill n3 (link down + kill -9). Sample every 20 ms: DNS answers vs who really holds.
    println!(
        "holders before the kill: {:?}\n{}",
        c.holders(),
        String::from_utf8_lossy(&c.daemon(0).ctl(&["status"]).stdout)
    );
    let (victim, vip) =
        wait_for("n2 or n3 to hold an address", Duration::from_secs(10), Duration::from_millis(50), || {
            [2, 1].into_iter().find_map(|i| c.held(i).first().cloned().map(|a| (i, a)))
        });
    let other = 3 - victim; // the node killed second (n1 is the one we ask)
    let t0 = Instant::now();
    c.topo.cut(NODES[victim]);
    let mut c = c;
    c.daemons[victim].take().unwrap().kill();
    c.dead[victim] = true;
    let mut last_unreachable = None;
    let mut served_again = None;
    while t0.elapsed() < Duration::from_secs(6) {
        let holders = c.holders();
        let (status, a) = dig(&c, "198.18.0.1", "A");
        let now = t0.elapsed();
        if status == "NOERROR" && a.iter().any(|x| holders.get(x).is_none_or(|h| h.is_empty())) {
            last_unreachable = Some(now);
        }
        if served_again.is_none() && holders.get(&vip).is_some_and(|h| !h.is_empty()) {
            served_again = Some(now);
        }
        if served_again.is_some_and(|s| now > s + Duration::from_secs(1)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let takeover = served_again.expect("the killed node's address is served again");
    println!(
        "kill of {}: {vip} served again after {:.3} s; DNS last listed an unreachable address at {}",
        NODES[victim],
        takeover.as_secs_f64(),
        last_unreachable.map_or("never".to_string(), |t| format!("{:.3} s", t.as_secs_f64()))
    );
    assert!(
        last_unreachable.is_none_or(|t| t <= takeover + Duration::from_millis(500)),
        "an unreachable address was answered after the takeover ({takeover:?}): {last_unreachable:?}"
    );
    let (_, a) = dig(&c, "198.18.0.2", "A");
    assert_eq!(a.iter().cloned().collect::<BTreeSet<_>>(), all, "every address is answered again, now on survivors");

    // `nasgw status` says why n3 is out, and versions and uptimes of the others; `ip -v` shows
    // where its address went and when.
    let st = c.status(0);
    let why = st["nodes"][victim]["reason"].as_str().unwrap_or_default().to_string();
    assert!(why.starts_with("not heard for"), "{st}");
    for i in 0..2 {
        assert!(
            !st["nodes"][i]["version"].as_str().unwrap_or_default().is_empty()
                && st["nodes"][i]["started"].as_u64() > Some(0),
            "{st}"
        );
    }
    let text = String::from_utf8_lossy(&c.daemon(0).ctl(&["status"]).stdout).into_owned();
    assert!(text.contains("DISCONNECTED") && text.contains("why: not heard for") && text.contains(" up "), "{text}");
    let ip = String::from_utf8_lossy(&c.daemon(0).ctl(&["ip", "-v"]).stdout).into_owned();
    println!("{text}\n{ip}");
    let line = ip.lines().find(|l| l.starts_with(&format!("{vip}/"))).unwrap_or_default().to_string();
    assert!(line.contains("last_move[") && line.contains(&format!("node {victim} -> ")), "{ip}");

    // Kill the other one too: n1 alone has no quorum; it answers SERVFAIL instead of addresses.
    let t1 = Instant::now();
    c.topo.cut(NODES[other]);
    c.daemons[other].take().unwrap().kill();
    c.dead[other] = true;
    let gone = wait_for("n1 to refuse without quorum", Duration::from_secs(5), Duration::from_millis(20), || {
        (dig(&c, "198.18.0.1", "A").0 == "SERVFAIL").then(|| t1.elapsed())
    });
    println!("n1 lost quorum: SERVFAIL {:.3} s after the second kill", gone.as_secs_f64());
    assert_eq!(c.status(0)["quorum"], false);
}

/// A VM on the bridge (198.18.0.20) with `nameserver` = a public address mounts the export by
/// name, writes a file, and the file is on the shared volume.
fn mount_by_name(c: &Cluster) {
    let tap = "tapvm";
    run("ip", &["-n", &c.topo.switch, "tuntap", "add", "dev", tap, "mode", "tap"]);
    run("ip", &["-n", &c.topo.switch, "link", "set", tap, "master", "br0", "up"]);
    let script = r#"set -e
ip addr flush dev eth0
ip addr add 198.18.0.20/16 dev eth0
ip link set eth0 up
echo "nameserver $KC_DNS" > /etc/resolv.conf
mkdir -p /mnt/n
n=0
until mount -t nfs -o vers=3,proto=tcp,port=12049,mountport=12049,nolock data.example.com:/smb /mnt/n; do
  n=$((n+1)); [ $n -lt 5 ] || exit 1; sleep 1
done
grep ' /mnt/n ' /proc/mounts
echo "written by a kernel client that found the cluster by name" > /mnt/n/by-name.txt
umount /mnt/n
echo MOUNTED-BY-NAME
"#;
    let t = Instant::now();
    let out = kclient::run_on_tap(tap, &c.topo.switch, script, &[("KC_DNS", VIPS[1])], 240);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("kclient (mount by name) took {:.1?}:\n{text}", t.elapsed());
    assert!(out.status.success() && text.contains("MOUNTED-BY-NAME"), "{text}\n{}", c.logs());
    assert!(text.contains("data.example.com:/smb"), "mounted by the name: {text}");
    let f = std::fs::read_to_string(c.volume().join("by-name.txt")).expect("the file is on the volume");
    assert!(f.starts_with("written by a kernel client"));
}
