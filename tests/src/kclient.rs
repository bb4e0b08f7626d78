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

/// The shell loop of [`command`]: runs its arguments again while kclient says the guest never
/// booted, holding each run's standard error until the run ends.
const BOOT_RETRY: &str = r#"
err=$(mktemp)
for try in $(seq "$BOOT_TRIES"); do
    "$@" 2>"$err"; rc=$?
    cat "$err" >&2
    if [ "$rc" = 125 ] && grep -q '^kclient: accel=.*, boot ?s' "$err" && [ "$try" -lt "$BOOT_TRIES" ]; then
        echo "kclient: the guest never booted (try $try of $BOOT_TRIES): booting another VM" >&2
        continue
    fi
    rm -f "$err"; exit "$rc"
done"#;

/// Boots of a guest before its test fails (see [`command`]).
pub const BOOT_TRIES: u32 = 3;

/// A command that runs `kclient ARGS` (add them), booting another VM, up to [`BOOT_TRIES`]
/// times, while the guest never booted: kclient exits 125 and reports `boot ?s` when the VM
/// ended before the guest's init said it was ready, so the script never ran and nothing of the
/// test happened. Under TCG on a loaded host the guest kernel's IO-APIC timer check can fail and
/// panic the boot ("IO-APIC + timer doesn't work!", seen at load 20; nlm_kclient's 8 s failure).
/// kclient's standard error comes at the end of each run (the tests read it then anyway).
/// Every test's kclient run goes through it.
pub fn command() -> Command {
    retrying_boots(&[kclient_bin().as_os_str()])
}

/// [`command`] of the command line `kclient`.
fn retrying_boots(kclient: &[&std::ffi::OsStr]) -> Command {
    let mut cmd = Command::new("bash");
    cmd.arg("-c").arg(BOOT_RETRY).arg("kclient-boot-retry").args(kclient);
    cmd.env("BOOT_TRIES", BOOT_TRIES.to_string());
    cmd
}

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
    let mut cmd = command();
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
    let mut cmd = command();
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
    let mut cmd = command();
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for kclient (a bash script: run through bash, never executed, so no "text file
    /// busy") that fails its first `fails` runs as kclient does when the guest never booted,
    /// then prints its arguments and exits with `rc`; counts its runs in `runs`.
    fn fake_kclient(dir: &Path, fails: u32, rc: i32) -> Command {
        let bin = dir.join("kclient");
        let script = format!(
            "echo run >> {runs}\nn=$(wc -l < {runs})\n\
             if [ $n -le {fails} ]; then echo 'kclient: VM ended without an exit code (qemu rc=0)' >&2\n\
             echo 'kclient: accel=tcg, boot ?s (guest uptime ?s), total 1.0s, rc=125' >&2; exit 125; fi\n\
             echo \"guest ran: $*\"; echo 'kclient: accel=tcg, boot 5.0s' >&2; exit {rc}\n",
            runs = dir.join("runs").display()
        );
        std::fs::write(&bin, script).unwrap();
        retrying_boots(&["bash".as_ref(), bin.as_os_str()])
    }

    fn runs(dir: &Path) -> usize {
        std::fs::read_to_string(dir.join("runs")).unwrap_or_default().lines().count()
    }

    #[test]
    fn a_guest_that_never_booted_is_booted_again_and_its_run_is_what_counts() {
        let dir = tempfile::tempdir().unwrap();
        let out = fake_kclient(dir.path(), 2, 3).args(["run", "x.sh"]).output().unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert_eq!((out.status.code(), runs(dir.path())), (Some(3), 3), "{stderr}");
        assert_eq!(stdout, "guest ran: run x.sh\n");
        assert_eq!(stderr.matches("the guest never booted").count(), 2, "each retry is said: {stderr}");
    }

    #[test]
    fn boots_are_tried_a_bounded_number_of_times_and_other_failures_not_again() {
        let dir = tempfile::tempdir().unwrap();
        let out = fake_kclient(dir.path(), 99, 0).arg("run").output().unwrap();
        assert_eq!((out.status.code(), runs(dir.path())), (Some(125), BOOT_TRIES as usize));
        // A script that failed after the boot (exit 125 of kclient itself included) is final.
        let dir = tempfile::tempdir().unwrap();
        let out = fake_kclient(dir.path(), 0, 125).arg("run").output().unwrap();
        assert_eq!((out.status.code(), runs(dir.path())), (Some(125), 1));
    }
}
