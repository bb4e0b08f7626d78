//! The Linux kernel's NFS and SMB clients, in a throwaway qemu VM: `kclient` (see its README
//! beside it) boots a Debian kernel and runs a shell script as root in it. The guest reaches the
//! host's 127.0.0.1 as 10.0.2.2 (qemu user-mode networking, in the network namespace of the
//! thread that starts it), so a daemon listening on loopback serves it.
//!
//! Located through `$KCLIENT`, else the shared tools directory. A missing kclient fails the test
//! loudly: a kernel-client test that skipped itself would look like a pass.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Where kclient is when `$KCLIENT` does not say.
pub const DEFAULT_KCLIENT: &str = "/work/shared/tools/kclient/kclient";

/// The guest's name for the host's `127.0.0.1`.
pub const HOST: &str = "10.0.2.2";

/// The kclient command: `$KCLIENT`, else [`DEFAULT_KCLIENT`]; panics when it is missing.
pub fn kclient_bin() -> PathBuf {
    let path = std::env::var_os("KCLIENT").map_or_else(|| PathBuf::from(DEFAULT_KCLIENT), PathBuf::from);
    assert!(
        path.is_file(),
        "kclient not found at {} (set KCLIENT to its path): the kernel-client tests need it",
        path.display()
    );
    path
}

/// What a script run in the VM printed and how it ended.
#[derive(Debug)]
pub struct GuestRun {
    /// The script's standard output.
    pub stdout: String,
    /// Its standard error, then kclient's own messages (boot time, console on failure).
    pub stderr: String,
    /// The script's exit code (124: timed out; 125: kclient itself failed).
    pub code: Option<i32>,
    /// Wall time of the whole run, boot included.
    pub elapsed: Duration,
}

impl GuestRun {
    /// True when the script exited 0.
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }
}

/// Runs `script` (a path in the workspace, e.g. `tests/kclient/cifs-checks.sh`) as root in a
/// fresh VM with `env` exported to it (names must start with `KC_`), bounded by `timeout`.
pub fn run_guest(script: &str, env: &[(&str, String)], timeout: Duration) -> GuestRun {
    run_guest_with_files(script, env, &[], timeout)
}

/// [`run_guest`] with `files` copied into the guest's `$KCLIENT_JOB/files/` (binaries the
/// guest lacks: a static pjdfstest, a socket client).
pub fn run_guest_with_files(script: &str, env: &[(&str, String)], files: &[&Path], timeout: Duration) -> GuestRun {
    let script = crate::workspace_root().join(script);
    let mut cmd = Command::new(kclient_bin());
    cmd.arg("run").arg("-t").arg(timeout.as_secs().to_string());
    for f in files {
        cmd.arg("-f").arg(f);
    }
    cmd.arg(&script);
    // The host's own KC_* variables would be passed in too: the test says what it means.
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("KC_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        assert!(k.starts_with("KC_"), "kclient passes only KC_* variables, not {k}");
        cmd.env(k, v);
    }
    let start = Instant::now();
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run kclient: {e}"));
    GuestRun {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        code: out.status.code(),
        elapsed: start.elapsed(),
    }
}

/// Compiles a single-file Rust program into a static executable the guest can run (the guest
/// has no libgcc_s; a static binary needs nothing): `rustc -O -C target-feature=+crt-static`.
pub fn static_binary(source: &Path, out: &Path) -> PathBuf {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let o = Command::new(&rustc)
        .args(["--edition", "2021", "-O", "-C", "target-feature=+crt-static", "-o"])
        .arg(out)
        .arg(source)
        .output()
        .unwrap_or_else(|e| panic!("cannot run rustc: {e}"));
    assert!(o.status.success(), "rustc {} failed:\n{}", source.display(), String::from_utf8_lossy(&o.stderr));
    out.to_path_buf()
}

/// Runs `script` (its text) as root in a fresh VM whose eth0 is tap device `tap` in namespace
/// `netns` (already attached to the test bridge: the guest sets its own address), with `env`
/// exported to it, bounded by `timeout_s` seconds.
pub fn run_on_tap(tap: &str, netns: &str, script: &str, env: &[(&str, &str)], timeout_s: u32) -> std::process::Output {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("guest.sh");
    std::fs::write(&file, script).expect("write guest script");
    let mut cmd = Command::new(kclient_bin());
    cmd.arg("run").arg("-t").arg(timeout_s.to_string());
    for (k, v) in env {
        cmd.arg("-e").arg(format!("{k}={v}"));
    }
    cmd.arg(&file).env("KCLIENT_NET", format!("tap:{tap}@{netns}"));
    cmd.output().expect("run kclient")
}

/// [`run_on_tap`] with `files` copied into the guest's `$KCLIENT_JOB/files/`, started in the
/// background: the test talks to the guest meanwhile; [`std::process::Child::wait_with_output`]
/// collects what it printed.
pub fn spawn_on_tap(
    tap: &str,
    netns: &str,
    script: &str,
    env: &[(&str, &str)],
    files: &[&Path],
    timeout_s: u32,
) -> (tempfile::TempDir, std::process::Child) {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("guest.sh");
    std::fs::write(&file, script).expect("write guest script");
    let mut cmd = Command::new(kclient_bin());
    cmd.arg("run").arg("-t").arg(timeout_s.to_string());
    for (k, v) in env {
        cmd.arg("-e").arg(format!("{k}={v}"));
    }
    for f in files {
        cmd.arg("-f").arg(f);
    }
    cmd.arg(&file).env("KCLIENT_NET", format!("tap:{tap}@{netns}"));
    cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let child = cmd.spawn().expect("run kclient");
    (dir, child)
}
