//! IPv6 public addresses: a node holding one is killed (link down + kill -9); a survivor takes
//! the address (no duplicate address detection), announces it with an unsolicited Neighbor
//! Advertisement, and its IPv6 tickle ACK makes the client's established connection fail with a
//! reset, after which the client reconnects to the same address. Prints the timeline.

mod ha_support;

use std::io::Read;
use std::time::{Duration, Instant};

use ha_support::{connect_echo, echo, wait_connection_known, Cluster, NODES, VIPS6};
use nasgw_tests::wait_for;

#[test]
fn an_ipv6_public_address_moves_and_its_client_is_reset() {
    let mut c = Cluster::start_ipv6();
    // A client connected to an address a node other than the leader (pnn 0) holds.
    let holders = c.holders();
    let vip = *VIPS6.iter().find(|v| holders[**v][0] != 0).expect("an address off the leader");
    let victim = holders[vip][0];
    let client = connect_echo(c.topo.ns("c1"), vip);
    for i in (0..3).filter(|i| *i != victim) {
        wait_connection_known(c.daemon(i), vip);
    }
    let reader = client.try_clone().unwrap();
    reader.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let t0 = Instant::now();
    let rst = std::thread::spawn(move || {
        let mut b = [0u8; 16];
        let r = (&reader).read(&mut b);
        (t0.elapsed(), r.map_err(|e| e.kind()))
    });

    c.topo.cut(NODES[victim]);
    c.daemons[victim].take().unwrap().kill();
    c.dead[victim] = true;
    let survivors: Vec<usize> = (0..3).filter(|i| *i != victim).collect();
    let served = wait_for("a survivor to hold the address", Duration::from_secs(10), Duration::from_millis(5), || {
        let h = c.holders();
        (h[vip].len() == 1 && survivors.contains(&h[vip][0])).then(|| (t0.elapsed(), h[vip][0]))
    });
    let (rst_at, result) = rst.join().unwrap();
    let t1 = Instant::now();
    let again = connect_echo(c.topo.ns("c1"), vip);
    echo(&again);
    println!("timeline (kill -9 + link down of {} holding {vip}):", NODES[victim]);
    println!("  {:>7.3} s  {vip} on {} (takeover)", served.0.as_secs_f64(), NODES[served.1]);
    println!("  {:>7.3} s  client read returned {result:?}", rst_at.as_secs_f64());
    println!("  reconnect + echo took {:.3} s", t1.elapsed().as_secs_f64());
    assert!(served.0 <= Duration::from_secs(3), "takeover took {:?}\n{}", served.0, c.logs());
    assert_eq!(result, Err(std::io::ErrorKind::ConnectionReset), "the client must be reset\n{}", c.logs());
    // The real target is 1 s (as over IPv4); a generous margin for this noisy machine.
    assert!(rst_at.saturating_sub(served.0) <= Duration::from_secs(2), "RST {:?} after takeover", rst_at - served.0);
    let all = c.logs();
    for failure in ["announcing the address (ARP/NDP) failed", "tickle ACKs failed", "cannot add public address"] {
        assert!(!all.contains(failure), "{failure}:\n{all}");
    }
    assert!(all.contains("tickle ACKs sent"), "the new owner tickled the client\n{all}");
    for d in c.daemons.iter_mut().filter_map(Option::take) {
        assert!(d.stop().success());
    }
}
