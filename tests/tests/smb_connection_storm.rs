//! A storm of new SMB connections must not run nasgw out of descriptors (issue 17; after a
//! failover thousands of clients reconnect to one node within a second). nasgw runs with an
//! open-files limit of [`OPEN_FILES`] and [`STORM`] clients connect at once, each doing
//! NEGOTIATE, a guest SESSION_SETUP and a TREE_CONNECT: several times the connection threads
//! that limit allows beside their sockets (its log says how many). Every client must be
//! answered at every step and none reset, and a client working meanwhile (smbclient) must
//! still create, write and read a file. Before connections waited for a thread (main at
//! 5dabafd), this failed: each connection's thread and runtime took 4 descriptors beside its
//! socket, runtimes that could not be made dropped their connection (reset), and accept spun
//! on EMFILE.

use std::process::Command;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use nasgw_tests::idle_clients::{closed, connect_from, guest_tree_connect, source_address};
use nasgw_tests::{free_port, guest_smb_config, Daemon};

/// The daemon's open-files limit (soft and hard).
const OPEN_FILES: u64 = 512;
/// Clients connecting at once.
const STORM: usize = 150;

/// Descriptors the daemon holds now.
fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn a_storm_of_smb_connections_is_answered_in_turn_not_reset() {
    nasgw_tests::require_tool("smbclient");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = guest_smb_config(port);
    let d = Daemon::start_with_open_files("storm", dir.path(), &cfg, OPEN_FILES);
    let logs = d.logs();
    let budget = logs.lines().find(|l| l.contains("descriptor budget")).unwrap_or("(no budget logged)");
    println!("{budget}");

    let start = Arc::new(Barrier::new(STORM + 1));
    let began = Instant::now();
    let clients: Vec<_> = (0..STORM)
        .map(|i| {
            let start = start.clone();
            std::thread::spawn(move || {
                start.wait();
                let mut s = connect_from(source_address(i), port).map_err(|e| format!("client {i}: connect: {e}"))?;
                // Answered in turn: the last may wait for several rounds of threads going dormant.
                s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                guest_tree_connect(&mut s, i as u64, "stormguest", r"\\127.0.0.1\pub")
                    .map_err(|e| format!("client {i}: {e}"))?;
                Ok::<_, String>((s, began.elapsed()))
            })
        })
        .collect();
    start.wait();

    // A client at work meanwhile: a new file written, then read back.
    let local = dir.path().join("active.bin");
    let back = dir.path().join("active.back");
    let data: Vec<u8> = (0..256 * 1024u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&local, &data).unwrap();
    let mut peak = open_descriptors(d.pid());
    let active = Instant::now();
    let mut smbclient = Command::new("smbclient")
        .args(["//127.0.0.1/pub", "-N", "-p", &port.to_string(), "-c"])
        .arg(format!("put {} active.bin; get active.bin {}", local.display(), back.display()))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    while smbclient.try_wait().unwrap().is_none() {
        peak = peak.max(open_descriptors(d.pid()));
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = smbclient.wait_with_output().unwrap();
    let took = active.elapsed();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("the active client's put + get took {took:?} during the storm");
    let active_ok = out.status.success() && !text.contains("NT_STATUS_");
    let read_back = std::fs::read(&back).unwrap_or_default();

    let mut conns = Vec::new();
    let mut failed = Vec::new();
    let mut last = Duration::ZERO;
    for c in clients {
        match c.join().unwrap() {
            Ok((s, at)) => {
                last = last.max(at);
                conns.push(s);
            }
            Err(e) => failed.push(e),
        }
        peak = peak.max(open_descriptors(d.pid()));
    }
    let lost = closed(&conns);
    println!(
        "{} of {STORM} clients connected to the share ({} failed, {lost} closed since), the last {last:?} after \
         the storm began; the daemon held at most {peak} descriptors seen (limit {OPEN_FILES})",
        conns.len(),
        failed.len()
    );
    let logs = d.logs();
    assert!(active_ok, "the active client failed during the storm:\n{text}\n--- server log:\n{logs}");
    assert!(read_back == data, "the active client read back {} bytes, not what it wrote", read_back.len());
    assert!(
        failed.is_empty(),
        "{} clients failed, e.g. {:?}\n--- server log:\n{logs}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert_eq!(lost, 0, "the server closed {lost} of {STORM} connections: {logs}");
    for bad in ["cannot start a connection's thread", "accept failed"] {
        assert!(!logs.contains(bad), "the daemon logged {bad:?}: {logs}");
    }
    drop(conns);
}
