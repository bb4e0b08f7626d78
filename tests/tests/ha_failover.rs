//! Kill a node (kill -9 and link down): its public address is served by a survivor within 3 s,
//! a client with an established TCP connection to that address gets a RST within 1 s of the
//! takeover (tickle ACK) and reconnects at once. Prints the timeline.

mod ha_support;

use std::io::Read;
use std::time::{Duration, Instant};

use ha_support::{connect_echo, echo, wait_connection_known, Cluster, NODES, VIPS};
use nasgw_tests::wait_for;

#[test]
fn killed_node_address_moves_within_3s_and_its_client_is_reset_within_1s() {
    let mut c = Cluster::start(true);
    // The victim: the node holding VIPS[1] (not the leader, pnn 0, so this is a plain node death).
    let holders = c.holders();
    let victim = holders[VIPS[1]][0];
    assert_ne!(victim, 0, "{holders:?}");
    let vip = VIPS[1];
    let client = connect_echo(c.topo.ns("c1"), vip);
    // The survivors learn the connection through the replicated connection tables.
    for i in (0..3).filter(|i| *i != victim) {
        wait_connection_known(c.daemon(i), vip);
    }

    // The client blocks in read; the tickle must make it fail with a reset.
    let reader = client.try_clone().unwrap();
    reader.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let t0 = Instant::now();
    let rst = std::thread::spawn(move || {
        let mut b = [0u8; 16];
        let r = (&reader).read(&mut b);
        (t0.elapsed(), r.map_err(|e| e.kind()))
    });

    // Link down first, so the dying kernel's FINs never reach the client (a host that dies
    // sends nothing), then kill -9.
    c.topo.cut(NODES[victim]);
    c.daemons[victim].take().unwrap().kill();
    c.dead[victim] = true;
    let killed = t0.elapsed();
    let survivors: Vec<usize> = (0..3).filter(|i| *i != victim).collect();
    let served = wait_for("a survivor to hold the address", Duration::from_secs(10), Duration::from_millis(5), || {
        let h = c.holders();
        (h[vip].len() == 1 && survivors.contains(&h[vip][0])).then(|| (t0.elapsed(), h[vip][0]))
    });
    let (rst_at, result) = rst.join().unwrap();
    c.wait_converged(Duration::from_secs(5), &survivors);
    let reconnect_start = Instant::now();
    let again = connect_echo(c.topo.ns("c1"), vip);
    echo(&again);
    let reconnected = reconnect_start.elapsed();

    println!("timeline (kill -9 + link down of {} holding {vip}):", NODES[victim]);
    println!("  {:>7.3} s  kill -9 and link down", killed.as_secs_f64());
    println!("  {:>7.3} s  {vip} on {} (takeover)", served.0.as_secs_f64(), NODES[served.1]);
    println!("  {:>7.3} s  client read returned {result:?}", rst_at.as_secs_f64());
    println!("  reconnect + echo took {:.3} s", reconnected.as_secs_f64());
    assert!(served.0 <= Duration::from_secs(3), "takeover took {:?}\n{}", served.0, c.logs());
    assert_eq!(
        result,
        Err(std::io::ErrorKind::ConnectionReset),
        "the client must be reset, not left hanging\n{}",
        c.logs()
    );
    assert!(
        rst_at.saturating_sub(served.0) <= Duration::from_secs(1),
        "RST {:?} after takeover\n{}",
        rst_at.saturating_sub(served.0),
        c.logs()
    );
    // The survivors see the dead node as DISCONNECTED.
    for i in &survivors {
        wait_for("the dead node to show DISCONNECTED", Duration::from_secs(5), Duration::from_millis(50), || {
            (c.state_seen(*i, victim) == "DISCONNECTED").then_some(())
        });
    }

    // Restart it (a fresh run): it is serving again within seconds (failback on).
    c.topo.heal(NODES[victim]);
    c.dead[victim] = false;
    let t1 = Instant::now();
    let d = c.start_node(victim);
    c.daemons[victim] = Some(d);
    wait_for("the restarted node to serve an address", Duration::from_secs(10), Duration::from_millis(20), || {
        (c.held(victim).len() == 1).then_some(())
    });
    c.wait_converged(Duration::from_secs(5), &[0, 1, 2]);
    println!("  restarted {} serves again {:.3} s after start", NODES[victim], t1.elapsed().as_secs_f64());
    assert!(t1.elapsed() < Duration::from_secs(10));
    for d in c.daemons.iter_mut().filter_map(Option::take) {
        assert!(d.stop().success());
    }
}
