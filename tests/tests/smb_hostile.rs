//! Hostile SMB clients (issue 10): a replayed signed WRITE, an unsigned re-authentication of
//! a signed session, unbounded first SESSION_SETUP legs, a large directory listed through a
//! small buffer, and more pending CHANGE_NOTIFYs than a connection may hold. The clients are in
//! `tests/smb/hostile.py` (smbprotocol plus raw sends); compound-chain caps and the sequence
//! window are also covered by `smb::conn`'s unit tests.

mod smb_common;

use smb_common::{start, ALICE_PASSWORD};

#[test]
fn hostile_smb_clients_are_refused() {
    nasgw_tests::require_tool("python3");
    let s = start("hostile", "");
    let big = s.data.join("priv/big");
    std::fs::create_dir(&big).unwrap();
    for i in 0..700 {
        std::fs::write(big.join(format!("f{i:04}")), b"").unwrap();
    }
    s.python_checks("hostile.py", &["alice", ALICE_PASSWORD], "hostile clients");
    assert!(!s.daemon.logs().contains(ALICE_PASSWORD));
}

#[test]
fn a_symlink_cannot_leave_its_share() {
    // Share `sub` is the folder /pub of the volume; /priv refuses guests. A symlink made
    // behind the share's back (through NFS or on the volume) points from /pub to /priv.
    let extra =
        "[[smb.share]]\nname = \"sub\"\npath = \"/pub\"\nwritable = true\nguest_ok = true\nforce_user = \"root\"\n";
    let s = start("confine", extra);
    std::fs::create_dir_all(s.data.join("pub/inner")).unwrap();
    std::fs::write(s.data.join("pub/inner/ok.txt"), b"inside").unwrap();
    std::fs::write(s.data.join("priv/secret.txt"), b"secret").unwrap();
    std::os::unix::fs::symlink("../priv", s.data.join("pub/esc")).unwrap();
    std::os::unix::fs::symlink("inner", s.data.join("pub/in")).unwrap();
    std::os::unix::fs::symlink("../priv/secret.txt", s.data.join("pub/esc.txt")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let got = tmp.path().join("got");
    let get = |remote: &str| {
        let _ = std::fs::remove_file(&got);
        let cmd = format!("get {remote} {}", got.display());
        let out = s.smbclient("sub", &["-N", "-c", &cmd]);
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (std::fs::read(&got).ok(), text)
    };
    let (inside, text) = get("in\\ok.txt");
    assert_eq!(inside.as_deref(), Some(&b"inside"[..]), "a symlink inside the share is followed:\n{text}");
    for escape in ["esc\\secret.txt", "esc.txt"] {
        let (data, text) = get(escape);
        assert!(data.is_none(), "{escape} reached another share's file:\n{text}");
        assert!(text.contains("NT_STATUS_ACCESS_DENIED"), "{escape}: {text}");
    }
}

#[test]
fn ntlmv1_and_lm_logons_are_refused_with_the_right_password() {
    let s = start("ntlmv1", "");
    let cred = format!("alice%{ALICE_PASSWORD}");
    let run = |opts: &[&str]| {
        let mut args = vec!["-U", &cred, "-m", "SMB3", "-c", "ls"];
        args.extend_from_slice(opts);
        let out = s.smbclient("priv", &args);
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    };
    // The control: the same client and password with NTLMv2 get in.
    let (ok, text) = run(&[]);
    assert!(ok, "NTLMv2 logon failed:\n{text}");
    for (what, opts) in [
        ("NTLMv1", &["--option=client ntlmv2 auth=no"][..]),
        ("LM and NTLMv1", &["--option=client ntlmv2 auth=no", "--option=client lanman auth=yes"][..]),
    ] {
        let (ok, text) = run(opts);
        assert!(!ok, "{what} logon accepted:\n{text}");
        assert!(text.contains("NT_STATUS_LOGON_FAILURE"), "{what}: {text}");
    }
}
