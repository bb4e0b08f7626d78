//! What the SMB end-to-end tests share: a daemon with the seed's guest share `pub`, a
//! password share `priv`, and user `alice`; and smbclient runs against it.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use nasgw_tests::{free_port, require_tool, Daemon};

/// alice's password in every SMB test.
pub const ALICE_PASSWORD: &str = "Wonder-land 7";

/// A running nasgw serving SMB on a free port.
pub struct SmbServer {
    /// The daemon.
    pub daemon: Daemon,
    /// SMB port.
    pub port: u16,
    /// The volume directory (share `pub` is its root, `priv` is `/priv`).
    pub data: PathBuf,
    _dir: tempfile::TempDir,
}

/// Starts nasgw with `pub` (guest, writable, force_user root), `priv` (users only) and alice;
/// `extra_smb` is added to the `[smb]` table.
pub fn start(name: &str, extra_smb: &str) -> SmbServer {
    start_with_shares(name, extra_smb, "")
}

/// The guest share `pub` of [`start`].
const PUB: &str = "[[smb.share]]\nname = \"pub\"\ncomment = \"seed guest share\"\nwritable = true\nguest_ok = true\nguest_only = true\nforce_user = \"root\"\n\n";
/// The users' share `priv` of [`start`].
pub const PRIV: &str = "[[smb.share]]\nname = \"priv\"\npath = \"/priv\"\nwritable = true\nforce_user = \"root\"\n\n";

/// [`start`] with more `[[smb.share]]` tables (`extra_shares`, TOML text) after `pub` and `priv`.
pub fn start_with_shares(name: &str, extra_smb: &str, extra_shares: &str) -> SmbServer {
    start_shares(name, extra_smb, &format!("{PUB}{PRIV}{extra_shares}"))
}

/// nasgw with exactly the `[[smb.share]]` tables `shares` (TOML text) and alice.
pub fn start_shares(name: &str, extra_smb: &str, shares: &str) -> SmbServer {
    require_tool("smbclient");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = format!(
        "[volume]\nname = \"smb\"\nbackend = \"local\"\npath = \"{{dir}}/data\"\n\n[nfs]\nenabled = false\n\n\
         [smb]\nlisten = \"127.0.0.1:{port}\"\n{extra_smb}\n\n\
         {shares}\n\n\
         [node]\ncontrol_socket = \"{{dir}}/ctl.sock\"\nstate_dir = \"{{dir}}/state\"\n"
    );
    let ddir = dir.path().join(name);
    std::fs::create_dir_all(ddir.join("data/priv")).unwrap();
    // The password is set the way an admin does it: `nasgw passwd alice` on the config file.
    let cfg_path = ddir.join("nasgw.toml");
    nasgw_tests::process::write_private(&cfg_path, &cfg.replace("{dir}", &ddir.display().to_string()));
    set_password(&cfg_path, "alice", ALICE_PASSWORD);
    let text = std::fs::read_to_string(&cfg_path).unwrap();
    let daemon = Daemon::start(name, &ddir, &text, None);
    SmbServer { daemon, port, data: ddir.join("data"), _dir: dir }
}

/// Runs `nasgw passwd USER` with the password on stdin.
pub fn set_password(cfg: &Path, user: &str, password: &str) {
    use std::io::Write;
    let mut child = Command::new(nasgw_tests::nasgw_bin())
        .args(["--config"])
        .arg(cfg)
        .args(["passwd", user])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "nasgw passwd failed: {}", String::from_utf8_lossy(&out.stderr));
}

impl SmbServer {
    /// `smbclient //127.0.0.1/SHARE -p PORT ARGS`.
    pub fn smbclient(&self, share: &str, args: &[&str]) -> Output {
        let port = self.port.to_string();
        let unc = format!("//127.0.0.1/{share}");
        Command::new("smbclient").arg(&unc).args(["-p", &port]).args(args).output().expect("run smbclient")
    }

    /// Runs `tests/smb/SCRIPT 127.0.0.1 PORT ARGS` (smbprotocol checks) and asserts it ended
    /// well and printed `ALL OK`; `what` names the checks in the failure. Returns its output.
    pub fn python_checks(&self, script: &str, args: &[&str], what: &str) -> String {
        let script = nasgw_tests::workspace_root().join("tests/smb").join(script);
        let out = Command::new("python3")
            .arg(&script)
            .args(["127.0.0.1", &self.port.to_string()])
            .args(args)
            .output()
            .expect("run python3");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        println!("{text}");
        assert!(
            out.status.success() && text.contains("ALL OK"),
            "{what} failed:\n{text}\n--- server log:\n{}",
            self.daemon.logs()
        );
        text
    }

    /// Runs smbclient and asserts it succeeded, returning stdout+stderr.
    pub fn smbclient_ok(&self, share: &str, args: &[&str]) -> String {
        let out = self.smbclient(share, args);
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(
            out.status.success(),
            "smbclient {share} {args:?} failed:\n{text}\n--- server log:\n{}",
            self.daemon.logs()
        );
        text
    }

    /// `smbclient -L` as guest.
    pub fn list(&self, args: &[&str]) -> Output {
        let port = self.port.to_string();
        Command::new("smbclient").args(["-L", "//127.0.0.1", "-p", &port]).args(args).output().expect("run smbclient")
    }
}
