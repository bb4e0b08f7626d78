//! Python smbprotocol (`smbclient` module) against nasgw: open_file in every mode, stat,
//! walk, rmtree, copyfile, rename, truncate and byte-range locks, as a guest and as a signing
//! NTLMv2 user. The checks live in `tests/smb/smbprotocol_check.py`.

mod smb_common;

use std::process::Command;

use smb_common::{start, ALICE_PASSWORD};

fn run_check(port: u16, share: &str, user: Option<(&str, &str)>) -> String {
    nasgw_tests::require_tool("python3");
    let script = nasgw_tests::workspace_root().join("tests/smb/smbprotocol_check.py");
    let mut cmd = Command::new("python3");
    cmd.arg(&script).args(["127.0.0.1", &port.to_string(), share]);
    if let Some((u, p)) = user {
        cmd.args([u, p]);
    }
    let out = cmd.output().expect("run python3");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.contains("ALL OK"), "smbprotocol checks failed:\n{text}");
    text
}

#[test]
fn smbprotocol_guest_on_the_seed_share() {
    let s = start("pyguest", "");
    let out = run_check(s.port, "pub", None);
    println!("{out}");
}

#[test]
fn smbprotocol_signing_user_on_a_password_share() {
    let s = start("pyuser", "");
    let out = run_check(s.port, "priv", Some(("alice", ALICE_PASSWORD)));
    println!("{out}");
    assert!(!s.daemon.logs().contains(ALICE_PASSWORD));
}
