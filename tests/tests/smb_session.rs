//! SMB sessions with a real client: share listing over IPC$/srvsvc as guest, NTLMv2 users
//! with signing on every dialect, wrong passwords, guests kept off password shares, and
//! signing that the server requires.

mod smb_common;

use smb_common::{start, ALICE_PASSWORD};

fn text(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn guest_lists_browseable_shares_on_every_dialect() {
    let s = start("list", "");
    for m in ["SMB2_02", "SMB2_10", "SMB3_00", "SMB3_02", "SMB3_11"] {
        let out = s.list(&["-N", "-m", m]);
        let t = text(&out);
        assert!(out.status.success(), "{m}: {t}\n{}", s.daemon.logs());
        assert!(t.contains("pub") && t.contains("seed guest share"), "{m}: {t}");
        assert!(t.contains("IPC$"), "{m}: {t}");
    }
}

#[test]
fn users_log_on_with_ntlmv2_and_sign_on_every_dialect() {
    let s = start("user", "");
    let cred = format!("alice%{ALICE_PASSWORD}");
    for m in ["SMB2_02", "SMB2_10", "SMB3_00", "SMB3_02", "SMB3_11"] {
        for protection in ["sign", "off"] {
            let out = s.list(&["-U", &cred, "-m", m, &format!("--client-protection={protection}")]);
            assert!(out.status.success(), "{m} {protection}: {}\n{}", text(&out), s.daemon.logs());
            assert!(text(&out).contains("priv"), "{}", text(&out));
        }
    }
    let bad = s.list(&["-U", "alice%nope", "-m", "SMB3"]);
    assert!(!bad.status.success());
    assert!(text(&bad).contains("NT_STATUS_LOGON_FAILURE"), "{}", text(&bad));
    assert!(!s.daemon.logs().contains(ALICE_PASSWORD), "the password never reaches the log");
}

#[test]
fn guests_are_kept_off_password_shares() {
    let s = start("guestoff", "");
    let out = s.smbclient("priv", &["-N", "-m", "SMB3", "-c", "ls"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("NT_STATUS_ACCESS_DENIED"), "{}", text(&out));
}

#[test]
fn required_signing_refuses_guests_and_serves_signed_users() {
    let s = start("reqsign", "require_signing = true");
    let guest = s.list(&["-N", "-m", "SMB3"]);
    assert!(!guest.status.success(), "guest sessions cannot sign: {}", text(&guest));
    let cred = format!("alice%{ALICE_PASSWORD}");
    for m in ["SMB2_10", "SMB3_11"] {
        let out = s.list(&["-U", &cred, "-m", m]);
        assert!(out.status.success(), "{m}: {}\n{}", text(&out), s.daemon.logs());
    }
}
