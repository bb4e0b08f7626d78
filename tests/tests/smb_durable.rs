//! Durable handles end to end: Python smbprotocol opens a file durably (DH2Q with a lease)
//! as a signing user, writes, locks, drops its TCP connection, and takes the open back with
//! DH2C while a second client is refused the lock meanwhile (`tests/smb/durable_check.py`).

mod smb_common;

use std::process::Command;

use smb_common::{start, ALICE_PASSWORD};

#[test]
fn a_durable_open_survives_its_connection_with_data_and_lock() {
    nasgw_tests::require_tool("python3");
    let s = start("durable", "");
    let script = nasgw_tests::workspace_root().join("tests/smb/durable_check.py");
    let out = Command::new("python3")
        .arg(&script)
        .args(["127.0.0.1", &s.port.to_string(), "priv", "alice", ALICE_PASSWORD])
        .output()
        .expect("run python3");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{text}");
    assert!(
        out.status.success() && text.contains("ALL OK"),
        "durable handle checks failed:\n{text}\n--- server log:\n{}",
        s.daemon.logs()
    );
    let logs = s.daemon.logs();
    assert!(logs.contains("durable open is kept for a reconnect"), "the server kept the open:\n{logs}");
    assert!(logs.contains("durable open reconnected"), "the server handed it back:\n{logs}");
}
