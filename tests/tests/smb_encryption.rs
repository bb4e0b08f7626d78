//! SMB 3 encryption with real clients: smbclient `--client-protection=encrypt` put/get as a
//! user (3.0 and 3.1.1), Python smbprotocol on 3.0.2 and on 3.1.1 with each of the four
//! ciphers (every reply a TRANSFORM, an oplock break too), the Linux kernel's `mount -t cifs -o seal` (3.0, 3.1.1)
//! in a kclient VM, a share with `encryption = "required"` refusing clients that cannot
//! encrypt (SMB 2.x, guests) and unencrypted requests, a tampered message closing the
//! connection, `[smb] encryption = "required"`
//! refusing guest sessions, and `"off"` offering no cipher.

mod smb_common;

use std::process::Command;
use std::time::Duration;

use nasgw_tests::kclient::run_guest;
use smb_common::{start, start_shares, start_with_shares, SmbServer, ALICE_PASSWORD, PRIV};

/// A share that requires encryption and would admit guests if they could encrypt.
const SEALED: &str = "[[smb.share]]\nname = \"sealed\"\npath = \"/sealed\"\nwritable = true\nguest_ok = true\n\
                      force_user = \"root\"\nencryption = \"required\"\n";

fn text(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn alice() -> String {
    format!("alice%{ALICE_PASSWORD}")
}

fn sealed_server(name: &str) -> SmbServer {
    start_with_shares(name, "", SEALED)
}

#[test]
fn smbclient_puts_and_gets_encrypted_as_a_user() {
    let s = sealed_server("encput");
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.bin");
    let data: Vec<u8> = (0..3 * 1024 * 1024 + 11).map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(&src, &data).unwrap();
    for (m, share) in [("SMB3_00", "priv"), ("SMB3_11", "priv"), ("SMB3_11", "sealed")] {
        let back = dir.path().join(format!("back-{m}-{share}.bin"));
        let cmd = format!("put {} enc-{m}.bin; get enc-{m}.bin {}; del enc-{m}.bin", src.display(), back.display());
        s.smbclient_ok(share, &["-U", &alice(), "-m", m, "--client-protection=encrypt", "-c", &cmd]);
        assert!(std::fs::read(&back).unwrap() == data, "{m} {share}: the file came back different");
    }
    let logs = s.daemon.logs();
    assert!(
        logs.contains("SMB: session encrypts") && logs.contains("AES-128-CCM"),
        "no encrypted 3.0 session logged:\n{logs}"
    );
    assert!(logs.contains("AES-128-GCM"), "smbclient 4.17 prefers AES-128-GCM on 3.1.1:\n{logs}");
    assert!(!logs.contains(ALICE_PASSWORD));
}

#[test]
fn smbprotocol_encrypts_on_3_0_2_and_with_each_3_1_1_cipher() {
    let s = sealed_server("encpy");
    nasgw_tests::require_tool("python3");
    let script = nasgw_tests::workspace_root().join("tests/smb/smbprotocol_encrypt.py");
    let out = Command::new("python3")
        .arg(&script)
        .args(["127.0.0.1", &s.port.to_string(), "priv", "alice", ALICE_PASSWORD, "sealed"])
        .output()
        .expect("run python3");
    let t = text(&out);
    println!("{t}");
    assert!(
        out.status.success() && t.contains("ALL OK"),
        "smbprotocol encryption checks failed:\n{t}\n--- server log:\n{}",
        s.daemon.logs()
    );
    let logs = s.daemon.logs();
    for c in ["AES-128-CCM", "AES-128-GCM", "AES-256-CCM", "AES-256-GCM"] {
        assert!(logs.contains(c), "no session with {c} logged");
    }
    assert!(logs.contains("closing connection") && logs.contains("decryption failed"), "{logs}");
}

#[test]
fn smbprotocol_file_checks_pass_on_an_encrypted_session() {
    // The broad smbprotocol checks (compounds, locks, rename, walk) with `encrypt=True`.
    let s = start("encpycheck", "");
    let script = nasgw_tests::workspace_root().join("tests/smb/smbprotocol_check.py");
    let out = Command::new("python3")
        .arg(&script)
        .args(["127.0.0.1", &s.port.to_string(), "priv", "alice", ALICE_PASSWORD, "encrypt"])
        .output()
        .expect("run python3");
    let t = text(&out);
    assert!(
        out.status.success() && t.contains("ALL OK"),
        "smbprotocol checks failed encrypted:\n{t}\n--- server log:\n{}",
        s.daemon.logs()
    );
    assert!(s.daemon.logs().contains("SMB: session encrypts"), "the session did not encrypt");
}

#[test]
fn a_share_that_requires_encryption_refuses_clients_that_cannot_encrypt() {
    let s = sealed_server("encreq");
    // SMB 2.1 has no encryption: the tree connect is refused, the rest of the server works.
    let old = s.smbclient("sealed", &["-U", &alice(), "-m", "SMB2_10", "-c", "ls"]);
    assert!(!old.status.success() && text(&old).contains("NT_STATUS_ACCESS_DENIED"), "SMB 2.1: {}", text(&old));
    s.smbclient_ok("priv", &["-U", &alice(), "-m", "SMB2_10", "-c", "ls"]);
    // Guests have no keys.
    let guest = s.smbclient("sealed", &["-N", "-m", "SMB3", "-c", "ls"]);
    assert!(!guest.status.success() && text(&guest).contains("NT_STATUS_ACCESS_DENIED"), "guest: {}", text(&guest));
    s.smbclient_ok("pub", &["-N", "-m", "SMB3", "-c", "ls"]);
    // A user on SMB 3 that did not ask for encryption is told to (SHI1005_FLAGS_ENCRYPT_DATA) and does.
    s.smbclient_ok("sealed", &["-U", &alice(), "-m", "SMB3", "--client-protection=off", "-c", "ls"]);
    let logs = s.daemon.logs();
    assert!(logs.contains("guest and anonymous sessions have no keys and cannot encrypt"), "{logs}");
    assert!(logs.contains("the client negotiated SMB 2.x, which has no encryption"), "{logs}");
    assert!(logs.contains("SMB: session encrypts"), "{logs}");
}

#[test]
fn server_wide_required_refuses_guests_and_off_offers_no_cipher() {
    // (A guest share under `[smb] encryption = "required"` is a config error: only users here.)
    let s = start_shares("encsrv", "encryption = \"required\"", PRIV);
    let anonymous = s.list(&["-N", "-m", "SMB3"]);
    assert!(!anonymous.status.success(), "an anonymous session under encryption = required: {}", text(&anonymous));
    let old = s.list(&["-U", &alice(), "-m", "SMB2_10"]);
    assert!(!old.status.success(), "SMB 2.1 under encryption = required: {}", text(&old));
    // Clients that can encrypt are told to, and work without asking.
    let out = s.list(&["-U", &alice(), "-m", "SMB3", "--client-protection=off"]);
    assert!(out.status.success() && text(&out).contains("priv"), "{}\n{}", text(&out), s.daemon.logs());
    s.smbclient_ok("priv", &["-U", &alice(), "-m", "SMB3_00", "-c", "ls"]);
    assert!(
        s.daemon.logs().contains("SMB: session refused because [smb] encryption = \"required\""),
        "{}",
        s.daemon.logs()
    );
    drop(s);

    let s = start("encoff", "encryption = \"off\"");
    let out = s.smbclient("priv", &["-U", &alice(), "-m", "SMB3", "--client-protection=encrypt", "-c", "ls"]);
    assert!(!out.status.success(), "a client that requires encryption is refused when it is off: {}", text(&out));
    s.smbclient_ok("priv", &["-U", &alice(), "-m", "SMB3", "-c", "ls"]);
}

#[test]
fn the_linux_kernel_mounts_with_seal_on_3_0_and_3_1_1() {
    let s = sealed_server("enckc");
    let combos = ["user,3.0,strict,seal", "user,3.1.1,none,seal"];
    let env = [
        ("KC_SMB_PORT", s.port.to_string()),
        ("KC_SHARE", "sealed".to_string()),
        ("KC_USER_SHARE", "sealed".to_string()),
        ("KC_USER", "alice".to_string()),
        ("KC_PASS", ALICE_PASSWORD.to_string()),
        ("KC_COMBOS", combos.join(" ")),
        ("KC_SMALL", "10".to_string()),
        ("KC_BIG_MB", std::env::var("KC_BIG_MB").unwrap_or_else(|_| "4".into())),
    ];
    let run = run_guest("tests/kclient/cifs-checks.sh", &env, Duration::from_secs(600));
    println!("{}", run.stdout);
    println!("kernel client run: {:.1} s, boot included", run.elapsed.as_secs_f64());
    assert!(
        run.ok() && run.stdout.contains("ALL PASSED"),
        "the kernel client failed (exit {:?}):\n{}\n{}\n--- server log:\n{}",
        run.code,
        run.stdout,
        run.stderr,
        s.daemon.logs()
    );
    for line in ["PASS user vers=3.0 cache=strict seal", "PASS user vers=3.1.1 cache=none seal"] {
        assert!(run.stdout.contains(line), "no `{line}` in the guest's output");
    }
    let logs = s.daemon.logs();
    assert!(logs.contains("SMB: session encrypts"), "{logs}");
    assert!(
        logs.contains("AES-128-CCM") && logs.contains("AES-128-GCM"),
        "kernel 6.1: CCM on 3.0, GCM on 3.1.1:\n{logs}"
    );
}
