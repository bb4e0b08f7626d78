//! The end-to-end harness: start N real nasgw daemons (each with its own config, control socket
//! and data directory, optionally inside its own network namespace), wait for them by polling,
//! and stop them by PID. Protocol and HA tests build on it.
//!
//! Nothing here fakes a part: daemons are the real binary, namespaces are real kernel ones.

pub mod anchors;
pub mod cluster;
pub mod forwarder;
pub mod gluster;
pub mod idle_clients;
pub mod kclient;
pub mod netns;
pub mod nlm;
pub mod pjdfstest;
pub mod posix_lock;
pub mod process;
pub mod smb_locker;
pub mod vm;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub use netns::Topology;
pub use process::Daemon;

/// The workspace root (for examples/ and scripts).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// The nasgw binary under test: `$NASGW_BIN`, else built once per test process with cargo
/// (release profile, as the README's test command builds it).
pub fn nasgw_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("NASGW_BIN") {
            return PathBuf::from(p);
        }
        let root = workspace_root();
        let status = Command::new(env!("CARGO"))
            .args(["build", "--release", "-p", "nasgw", "--bin", "nasgw"])
            .current_dir(&root)
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build of nasgw failed");
        let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
        target.join("release/nasgw")
    })
    .clone()
}

/// Runs `nasgw ARGS` to completion (for `check`, `status`, `ip`).
pub fn nasgw(args: &[&str]) -> Output {
    Command::new(nasgw_bin()).args(args).output().expect("run nasgw")
}

/// Runs a command, panicking with its output when it fails.
pub fn run(cmd: &str, args: &[&str]) -> Output {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Polls `f` every `every` until it returns `Some`, or panics with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, every: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(every);
    }
}

/// Like [`wait_for`], but `None` after `timeout` instead of failing.
pub fn wait_for_opt<T>(timeout: Duration, every: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() >= timeout {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// A one-node config serving only SMB on loopback `port`: the seed's guest share `pub`
/// (writable, guests only, as root) on a local volume in `{dir}/data` (`{dir}` is replaced by
/// [`Daemon::start`] with the daemon's directory).
pub fn guest_smb_config(port: u16) -> String {
    format!(
        "[volume]\nname = \"smb\"\nbackend = \"local\"\npath = \"{{dir}}/data\"\n\n[nfs]\nenabled = false\n\n\
         [smb]\nlisten = \"127.0.0.1:{port}\"\n\n\
         [[smb.share]]\nname = \"pub\"\nwritable = true\nguest_ok = true\nguest_only = true\nforce_user = \"root\"\n\n\
         [node]\ncontrol_socket = \"{{dir}}/ctl.sock\"\nstate_dir = \"{{dir}}/state\"\n"
    )
}

/// A loopback TCP port that was free a moment ago (the kernel picked it).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// Fails the test with a clear message when a tool the README's test command installs is missing.
pub fn require_tool(name: &str) {
    let found =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file())).unwrap_or(false);
    assert!(found, "`{name}` is not installed: run the README's test command (scripts/test), which installs it");
}

/// Is this process root (needed for network namespaces)?
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Lower-case hex of `b`, as `tests/smb/cluster_client.py` takes and gives data.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Detaches a mount point when a test ends, however it ends (a failed assertion after a
/// `kill -9`, or a node sharing the test's mount namespace, would otherwise leave a dead mount
/// behind).
pub struct Unmount(pub PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        if let Ok(c) = std::ffi::CString::new(self.0.to_str().unwrap_or_default()) {
            // SAFETY: umount2 with a valid path; MNT_DETACH never blocks.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}
