//! Admin disable/enable, an unhealthy volume, recovery-lock loss, `nasgw ip move`, and a node
//! without the cluster secret, on a real three-node cluster in network namespaces.

mod ha_support;

use std::time::{Duration, Instant};

use ha_support::{Cluster, Sampler, NODES, VIPS};
use nasgw_tests::wait_for;

const T: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(20);

#[test]
fn disable_enable_unhealthy_volume_lock_loss_and_ip_move() {
    let mut c = Cluster::start(true);
    let sampler = Sampler::start(NODES.iter().map(|n| c.topo.ns(n).to_string()).collect());

    // Admin disable: n2 releases its address, everyone sees it DISABLED, and a client
    // connected through that address is cut at once (not left hanging) and reconnects.
    let vip = c.held(1)[0].clone();
    let client = ha_support::connect_echo(c.topo.ns("c1"), &vip);
    wait_for("the connection to be replicated", T, POLL, || {
        let v: serde_json::Value = serde_json::from_slice(&c.daemon(0).ctl(&["ip", "--json"]).stdout).ok()?;
        v["addresses"].as_array()?.iter().any(|a| a["address"] == vip.as_str() && a["connections"] == 1).then_some(())
    });
    client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let out = c.daemon(1).ctl(&["disable"]);
    assert!(out.status.success(), "{out:?}");
    let t = Instant::now();
    c.wait_converged(T, &[0, 2]);
    wait_for("n2 DISABLED on n1", T, POLL, || (c.state_seen(0, 1) == "DISABLED").then_some(()));
    println!("disable: addresses off n2 in {:.3} s", t.elapsed().as_secs_f64());
    let mut b = [0u8; 4];
    let r = std::io::Read::read(&mut &client, &mut b);
    println!("disable: the client's read returned {r:?} after {:.3} s", t.elapsed().as_secs_f64());
    assert!(
        matches!(&r, Ok(0)) || matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "the client of a released address must be cut, got {r:?}\n{}",
        c.logs()
    );
    assert!(t.elapsed() < Duration::from_secs(3));
    ha_support::echo(&ha_support::connect_echo(c.topo.ns("c1"), &vip));
    let text = String::from_utf8_lossy(&c.daemon(0).ctl(&["status"]).stdout).into_owned();
    assert!(text.contains("DISABLED") && text.contains("Leader:0") && text.contains("Generation:"), "{text}");
    assert!(c.daemon(1).ctl(&["enable"]).status.success());
    wait_for("n2 serves again after enable", T, POLL, || (c.held(1).len() == 1).then_some(()));
    c.wait_converged(T, &[0, 1, 2]);

    // Unhealthy volume: n3's view of the volume disappears (its volume path dangles).
    let link = c.dir(2).join("vol");
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(c.root.path().join("gone"), &link).unwrap();
    let t = Instant::now();
    c.wait_converged(T, &[0, 1]);
    wait_for("n3 UNHEALTHY on n1", T, POLL, || (c.state_seen(0, 2) == "UNHEALTHY").then_some(()));
    println!("unhealthy volume: addresses off n3 in {:.3} s", t.elapsed().as_secs_f64());
    assert!(c.notify_log(2).contains("unhealthy"), "notify script saw the state change");
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(c.volume(), &link).unwrap();
    wait_for("n3 serves again once healthy", T, POLL, || (c.held(2).len() == 1).then_some(()));
    c.wait_converged(T, &[0, 1, 2]);

    // Recovery-lock loss: the lock file is replaced under the leader (same path, new inode).
    let lock = c.volume().join("lock/lockfile");
    std::fs::remove_file(&lock).unwrap();
    std::fs::write(&lock, b"").unwrap();
    wait_for("the leader to notice the lost lock", T, POLL, || c.notify_log(0).contains("lock_lost").then_some(()));
    c.wait_converged(T, &[0, 1, 2]);
    wait_for("a leader again", T, POLL, || c.status(1)["leader"].as_u64());

    // ip move, typed on a node that is not the leader.
    let out = c.daemon(1).ctl(&["ip", "move", VIPS[0], "2"]);
    assert!(out.status.success(), "{out:?}");
    wait_for("198.18.1.1 on n3", T, POLL, || c.holders()[VIPS[0]].eq(&vec![2]).then_some(()));
    c.wait_converged(T, &[0, 1, 2]);
    let ip = String::from_utf8_lossy(&c.daemon(0).ctl(&["ip", "-v"]).stdout).into_owned();
    assert!(ip.contains("198.18.1.1/16 node[2] interface[eth0]"), "{ip}");
    let bad = c.daemon(1).ctl(&["ip", "move", "198.18.9.9", "1"]);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("not one of"), "{bad:?}");

    // A node without the secret: its datagrams are ignored and logged.
    let forged = c.topo.exec(
        "c1",
        "bash",
        &["-c", "printf 'NGW1forged-heartbeat-without-the-secret-xxxxxxxxxxxxxxxxxxxxxxxx' > /dev/udp/198.18.0.1/4379"],
    );
    assert!(forged.status.success(), "{forged:?}");
    wait_for("the refusal to be logged", T, POLL, || {
        c.daemon(0).logs().contains("cluster datagram refused").then_some(())
    });
    assert_eq!(c.state_seen(0, 1), "OK");

    let (rounds, overlaps) = sampler.finish();
    println!("sampled every namespace {rounds} times: {} overlaps", overlaps.len());
    assert!(overlaps.is_empty(), "{overlaps:?}\n{}", c.logs());
    for d in c.daemons.iter_mut().filter_map(Option::take) {
        assert!(d.stop().success());
    }
}
