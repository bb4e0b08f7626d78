//! `nasgw connections` (like smbstatus) while a real SMB client (Python smbprotocol) holds a
//! file open: the connection, its user and its open file are listed, and gone once it closes.
//! A share forcing a user this node lacks refuses tree connects instead of running as nobody.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use nasgw_tests::{free_port, require_tool, wait_for, Daemon};

/// A pipe's two ends.
fn pipe() -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe fills two new descriptors, owned from here on.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: both were just created and are owned by nothing else.
    unsafe { (std::os::fd::FromRawFd::from_raw_fd(fds[0]), std::os::fd::FromRawFd::from_raw_fd(fds[1])) }
}

const HOLDER: &str = r#"
import sys, smbclient
host, port = "127.0.0.1", int(sys.argv[1])
smbclient.ClientConfig(require_secure_negotiate=False)
smbclient.register_session(host, port=port, username="guest", password="guest", require_signing=False, auth_protocol="ntlm")
f = smbclient.open_file(r"\\127.0.0.1\pub\held.txt", mode="w", port=port)
f.write("held")
f.flush()
print("OPEN", flush=True)
sys.stdin.read()
f.close()
"#;

#[test]
fn connections_lists_users_and_open_files_and_unknown_forced_users_are_refused() {
    require_tool("python3");
    require_tool("smbclient");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = format!(
        "[volume]\nname = \"smb\"\nbackend = \"local\"\npath = \"{{dir}}/data\"\n\n[nfs]\nenabled = false\n\n\
         [smb]\nlisten = \"127.0.0.1:{port}\"\n\n\
         [[smb.share]]\nname = \"pub\"\nwritable = true\nguest_ok = true\nguest_only = true\nforce_user = \"root\"\n\n\
         [[smb.share]]\nname = \"ghost\"\npath = \"/ghost\"\nwritable = true\nguest_ok = true\nforce_user = \"no-such-user-nasgw\"\n\n\
         [node]\ncontrol_socket = \"{{dir}}/ctl.sock\"\nstate_dir = \"{{dir}}/state\"\n"
    );
    let d = Daemon::start("c", dir.path(), &cfg, None);
    let mut holder = Command::new("python3")
        .args(["-c", HOLDER, &port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(holder.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "OPEN", "the client opened a file: {}", d.logs());

    let listed = wait_for("the open file to be listed", Duration::from_secs(5), Duration::from_millis(50), || {
        let out = d.ctl(&["connections", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let c =
            v["connections"].as_array()?.iter().find(|c| c["files"].as_array().is_some_and(|f| !f.is_empty()))?.clone();
        Some(c)
    });
    assert_eq!(listed["protocol"], "smb");
    assert_eq!(listed["users"], serde_json::json!(["guest"]));
    assert_eq!(listed["files"], serde_json::json!(["pub/held.txt"]));
    let text = String::from_utf8_lossy(&d.ctl(&["connections"]).stdout).into_owned();
    println!("{text}");
    assert!(text.starts_with("PROTO") && text.contains("guest") && text.contains("\n      pub/held.txt"), "{text}");

    // Output read by a reader that stops early (`nasgw connections | head -1`): the command
    // ends by SIGPIPE like other tools, with no panic.
    let (read_end, write_end) = pipe();
    drop(read_end);
    let cut = Command::new(nasgw_tests::nasgw_bin())
        .arg("--config")
        .arg(&d.config)
        .arg("connections")
        .stdout(Stdio::from(write_end))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&cut.stderr);
    println!("nasgw connections into a closed pipe: {:?}, stderr {err:?}", cut.status);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&cut.status), Some(libc::SIGPIPE), "{:?}", cut.status);

    drop(holder.stdin.take());
    assert!(holder.wait().unwrap().success());
    wait_for("the connection to leave the list", Duration::from_secs(5), Duration::from_millis(50), || {
        let out = d.ctl(&["connections", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v["connections"].as_array()?.is_empty().then_some(())
    });

    let smb = Command::new("smbclient")
        .args(["//127.0.0.1/ghost", "-p", &port.to_string(), "-N", "-m", "SMB3", "-c", "ls"])
        .stdin(Stdio::piped())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&smb.stdout).into_owned() + &String::from_utf8_lossy(&smb.stderr);
    assert!(!smb.status.success() && out.contains("NT_STATUS_ACCESS_DENIED"), "{out}");
    assert!(d.logs().contains("tree connect refused"), "{}", d.logs());
}
