//! `nasgw serve`: the embedded default, several daemons on one machine, clean stop by PID,
//! and the control socket.

use std::process::{Command, Stdio};
use std::time::Duration;

use nasgw_tests::{free_port, nasgw_bin, wait_for, Daemon};

fn local_config(nfs: u16, smb: u16) -> String {
    format!(
        "[volume]\nname = \"smb\"\nbackend = \"local\"\npath = \"{{dir}}/data\"\n\n[nfs]\nlisten = \"127.0.0.1:{nfs}\"\n\n[smb]\nlisten = \"127.0.0.1:{smb}\"\n\n[[smb.share]]\nname = \"pub\"\nguest_ok = true\nwritable = true\n\n[node]\ncontrol_socket = \"{{dir}}/ctl.sock\"\nstate_dir = \"{{dir}}/state\"\n"
    )
}

#[test]
fn embedded_default_serves_from_the_working_directory() {
    let cwd = tempfile::tempdir().unwrap();
    let mut child = Command::new(nasgw_bin())
        .arg("serve")
        .env_remove("NASGW_CONFIG")
        .current_dir(cwd.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let sock = cwd.path().join("nasgw-state/control.sock");
    wait_for("embedded daemon's control socket", Duration::from_secs(30), Duration::from_millis(50), || {
        let out = Command::new(nasgw_bin()).arg("status").current_dir(cwd.path()).output().ok()?;
        out.status.success().then_some(())
    });
    assert!(cwd.path().join("nasgw-data").is_dir(), "./nasgw-data is created");
    assert!(sock.exists());
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = wait_for("exit", Duration::from_secs(40), Duration::from_millis(20), || child.try_wait().unwrap());
    assert!(out.success(), "clean exit on SIGTERM: {out}");
    let banner = std::io::read_to_string(child.stdout.take().unwrap()).unwrap();
    assert!(banner.contains("smbclient //127.0.0.1/pub -p 4445 -N"), "{banner}");
    assert!(banner.contains("nfs://127.0.0.1/smb/?version=3&nfsport=12049&mountport=12049"), "{banner}");
    assert!(!sock.exists(), "the control socket is removed on a clean stop");
}

#[test]
fn several_daemons_run_side_by_side_and_stop_by_pid() {
    let root = tempfile::tempdir().unwrap();
    let daemons: Vec<Daemon> = (0..3)
        .map(|i| {
            let name = format!("d{i}");
            Daemon::start(&name, &root.path().join(&name), &local_config(free_port(), free_port()), None)
        })
        .collect();
    let pids: Vec<u32> = daemons.iter().map(Daemon::pid).collect();
    for d in &daemons {
        let out = d.ctl(&["status", "--json"]);
        assert!(out.status.success(), "{}", d.logs());
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["kind"], "status");
        assert_eq!(v["nodes"][0]["state"], "OK");
        assert!(d.dir.join("data").is_dir() && d.dir.join("state").is_dir());
    }
    assert_eq!(pids.len(), 3);
    for d in daemons {
        let logs = d.dir.clone();
        let status = d.stop();
        assert!(status.success(), "{status}");
        assert!(!logs.join("ctl.sock").exists());
    }
}

#[test]
fn a_second_daemon_on_the_same_control_socket_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let a = Daemon::start("a", root.path(), &local_config(free_port(), free_port()), None);
    let out = Command::new(nasgw_bin()).args(["--config", a.config.to_str().unwrap(), "serve"]).output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("another nasgw already answers"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(a.ctl(&["status"]).status.success(), "the first daemon is untouched");
    assert!(a.stop().success());
}

#[test]
fn status_without_a_daemon_says_it_is_not_running() {
    let root = tempfile::tempdir().unwrap();
    let cfg = root.path().join("nasgw.toml");
    std::fs::write(&cfg, local_config(1, 2).replace("{dir}", root.path().to_str().unwrap())).unwrap();
    let out = Command::new(nasgw_bin()).args(["status", "--config", cfg.to_str().unwrap()]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nasgw is not running"));
}

#[test]
fn json_logs_are_one_object_per_line() {
    let root = tempfile::tempdir().unwrap();
    let d = Daemon::start("j", root.path(), &local_config(free_port(), free_port()), None);
    drop(d);
    let cfg = root.path().join("nasgw.toml");
    let mut child = Command::new(nasgw_bin())
        .args(["--config", cfg.to_str().unwrap(), "--log-format", "json", "serve"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("json daemon", Duration::from_secs(30), Duration::from_millis(50), || {
        Command::new(nasgw_bin())
            .args(["--config", cfg.to_str().unwrap(), "status"])
            .output()
            .ok()?
            .status
            .success()
            .then_some(())
    });
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    assert!(child.wait().unwrap().success());
    let logs = std::io::read_to_string(child.stderr.take().unwrap()).unwrap();
    assert!(logs.lines().count() >= 2, "{logs}");
    for line in logs.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["level"].is_string() && v["message"].is_string(), "{line}");
    }
}
