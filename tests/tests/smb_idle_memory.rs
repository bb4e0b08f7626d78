//! Memory an idle SMB connection costs the real daemon: 1,000 connections that negotiated and
//! then say nothing go dormant (their threads end), and nasgw's proportional set size must
//! fall under [`LIMIT_KIB`] per connection (issue 17's target is 64 KiB). Measured with 1,000:
//! 16.8 KiB; 39.8 KiB without the heap trim after connection threads end (what those threads
//! freed kept resident in glibc's arenas), which this test fails. Polled, not timed: the
//! figure only has to get there before the connections' 60 s without a session run out.

use std::time::Duration;

use nasgw_tests::idle_clients::{closed, open_smb, pss_kib};
use nasgw_tests::{free_port, guest_smb_config, wait_for_opt, Daemon};

/// Idle connections opened.
const IDLE: usize = 1000;
/// Most Pss growth per idle connection accepted, in KiB.
const LIMIT_KIB: u64 = 25;

#[test]
fn an_idle_smb_connection_costs_under_its_limit_once_dormant() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = guest_smb_config(port);
    let d = Daemon::start("idle", dir.path(), &cfg, None);
    let before = pss_kib(d.pid()).unwrap();
    let conns = open_smb(port, IDLE).unwrap_or_else(|e| panic!("{e}: {}", d.logs()));
    let opened = pss_kib(d.pid()).unwrap();
    let per = |pss: u64| pss.saturating_sub(before) / IDLE as u64;
    println!("Pss {before} KiB -> {opened} KiB just after opening {IDLE}: {} KiB per connection", per(opened));
    let mut last = opened;
    let settled = wait_for_opt(Duration::from_secs(30), Duration::from_millis(200), || {
        last = pss_kib(d.pid()).ok()?;
        (per(last) < LIMIT_KIB).then_some(last)
    });
    println!("Pss {last} KiB once dormant: {} KiB per connection", per(last));
    let lost = closed(&conns);
    assert_eq!(lost, 0, "the server closed {lost} of {IDLE} idle connections: {}", d.logs());
    assert!(settled.is_some(), "{} KiB per idle connection, limit {LIMIT_KIB}", per(last));
    drop(conns);
}
