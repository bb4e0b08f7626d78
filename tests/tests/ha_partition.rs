//! Partition a node (link down, process alive): at no instant do two namespaces hold the same
//! address, the cut-off node releases its addresses, the others serve them within 3 s, and on
//! heal the cluster converges with failback per policy. The cut-off node is the leader, so this
//! is also the leader-loss test.

mod ha_support;

use std::time::{Duration, Instant};

use ha_support::{ArpSampler, Cluster, Sampler, NODES};
use nasgw_tests::wait_for;

fn partition_the_leader(failback: bool) {
    let mut c = Cluster::start(failback);
    assert_eq!(c.status(1)["leader"], 0, "pnn 0 leads a fresh cluster");
    let before = c.holders();
    let sampler = Sampler::start(NODES.iter().map(|n| c.topo.ns(n).to_string()).collect());
    let arp = ArpSampler::start(c.topo.ns("c1"), "198.18.0.10".parse().unwrap());

    let t0 = Instant::now();
    c.topo.cut("n1");
    let released =
        wait_for("the cut-off node to release its addresses", Duration::from_secs(5), Duration::from_millis(5), || {
            c.held(0).is_empty().then(|| t0.elapsed())
        });
    c.wait_converged(Duration::from_secs(5), &[1, 2]);
    let served = t0.elapsed();
    let new_leader = wait_for("a new leader", Duration::from_secs(5), Duration::from_millis(50), || {
        c.status(1)["leader"].as_u64().filter(|l| *l != 0)
    });
    let cut_view = c.status(0);
    println!("timeline (partition of the leader n1, failback {failback}):");
    println!("  {:>7.3} s  n1 released its addresses", released.as_secs_f64());
    println!("  {:>7.3} s  n2+n3 serve every address", served.as_secs_f64());
    println!("  new leader: pnn {new_leader}; n1 sees leader {}", cut_view["leader"]);
    assert!(served <= Duration::from_secs(3), "took {served:?}\n{}", c.logs());
    assert!(cut_view["leader"].is_null(), "the cut-off node must not lead: {cut_view}");

    // Heal: it rejoins; with failback it gets one address back, without it gets none.
    c.topo.heal("n1");
    let t1 = Instant::now();
    if failback {
        wait_for("failback to n1", Duration::from_secs(10), Duration::from_millis(20), || {
            (c.held(0).len() == 1).then_some(())
        });
        c.wait_converged(Duration::from_secs(5), &[0, 1, 2]);
        println!("  {:>7.3} s  after heal n1 serves again (failback)", t1.elapsed().as_secs_f64());
    } else {
        wait_for("n1 to be OK again", Duration::from_secs(10), Duration::from_millis(50), || {
            (c.state_seen(new_leader as usize, 0) == "OK").then_some(())
        });
        std::thread::sleep(Duration::from_millis(1500)); // long enough for a wrong failback to show
        assert!(c.held(0).is_empty(), "failback = false must leave addresses where they are");
        c.wait_converged(Duration::from_secs(5), &[1, 2]);
    }
    let (rounds, overlaps) = sampler.finish();
    let (arp_rounds, answers, double) = arp.finish();
    println!("  sampled every namespace {rounds} times: {} overlaps", overlaps.len());
    println!("  asked the client's network who has each address {arp_rounds} times: {answers} answers, {} rounds with two answerers", double.len());
    assert!(rounds > 10, "the sampler must actually sample ({rounds})");
    assert!(
        arp_rounds > 10 && answers > arp_rounds,
        "the ARP sampler must see answers ({arp_rounds} rounds, {answers} answers)"
    );
    assert!(double.is_empty(), "two hosts answered ARP for one address: {double:?}\n{}", c.logs());
    assert!(overlaps.is_empty(), "an address was on two nodes at once: {overlaps:?}\nbefore: {before:?}\n{}", c.logs());
    assert!(c.notify_log(0).contains("releaseip"), "the notify script ran on release");
    for d in c.daemons.iter_mut().filter_map(Option::take) {
        assert!(d.stop().success());
    }
}

#[test]
fn partitioned_leader_fences_itself_and_fails_back_on_heal() {
    partition_the_leader(true);
}

#[test]
fn partitioned_leader_gets_nothing_back_without_failback() {
    partition_the_leader(false);
}

/// The ARP check above can fail: two hosts that both hold an address are caught.
#[test]
fn arp_sampler_catches_an_address_held_twice() {
    assert!(nasgw_tests::is_root(), "network namespace tests need root");
    let topo = nasgw_tests::Topology::new(&[("n1", "198.18.0.1"), ("n2", "198.18.0.2"), ("c1", "198.18.0.10")]);
    for n in ["n1", "n2"] {
        nasgw_tests::run(
            "ip",
            &["-n", topo.ns(n), "addr", "add", &format!("{}/16", ha_support::VIPS[0]), "dev", "eth0"],
        );
    }
    let arp = ArpSampler::start(topo.ns("c1"), "198.18.0.10".parse().unwrap());
    wait_for("20 ARP rounds", Duration::from_secs(10), Duration::from_millis(10), || {
        (arp.rounds() >= 20).then_some(())
    });
    let (rounds, answers, double) = arp.finish();
    println!("{rounds} rounds, {answers} answers, {} doubles", double.len());
    assert!(!double.is_empty(), "two hosts answer for {} and the sampler must say so", ha_support::VIPS[0]);
}
