//! Hostile SMB clients (issue 10): a replayed signed WRITE, an unsigned re-authentication of
//! a signed session, unbounded first SESSION_SETUP legs. The clients are in
//! `tests/smb/hostile.py` (smbprotocol plus raw sends); compound-chain caps and the sequence
//! window are also covered by `smb::conn`'s unit tests.

mod smb_common;

use std::process::Command;

use smb_common::{start, ALICE_PASSWORD};

#[test]
fn hostile_smb_clients_are_refused() {
    nasgw_tests::require_tool("python3");
    let s = start("hostile", "");
    let script = nasgw_tests::workspace_root().join("tests/smb/hostile.py");
    let out = Command::new("python3")
        .arg(&script)
        .args(["127.0.0.1", &s.port.to_string(), "alice", ALICE_PASSWORD])
        .output()
        .expect("run python3");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{text}");
    assert!(
        out.status.success() && text.contains("ALL OK"),
        "hostile clients got through:\n{text}\n--- server log:\n{}",
        s.daemon.logs()
    );
    assert!(!s.daemon.logs().contains(ALICE_PASSWORD));
}
