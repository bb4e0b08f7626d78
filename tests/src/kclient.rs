//! Linux kernel clients for end-to-end tests: `kclient` (see `../shared/tools/kclient/README.md`)
//! boots Debian's kernel in a throwaway qemu VM and runs a shell script as root in it, so a
//! test mounts nasgw with the real kernel NFS or CIFS client. The guest reaches the host's
//! `127.0.0.1` as `10.0.2.2` (qemu user-mode networking, in the network namespace of the thread
//! that starts it).
//!
//! Located through `$KCLIENT`, else `/work/shared/tools/kclient/kclient`; a missing kclient
//! fails the test loudly, never skips it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Where kclient is expected when `$KCLIENT` is not set.
pub const DEFAULT_PATH: &str = "/work/shared/tools/kclient/kclient";

/// The guest's name for the host's `127.0.0.1`.
pub const HOST: &str = "10.0.2.2";

/// The kclient executable: `$KCLIENT`, else [`DEFAULT_PATH`]; panics when it is not there.
pub fn path() -> PathBuf {
    let p = std::env::var_os("KCLIENT").map_or_else(|| PathBuf::from(DEFAULT_PATH), PathBuf::from);
    assert!(
        p.is_file(),
        "kclient not found at {} (set KCLIENT to the kclient script; see ../shared/tools/kclient/README.md)",
        p.display()
    );
    p
}

/// One run of a guest script.
pub struct GuestRun {
    /// Files copied into the guest's `$KCLIENT_JOB/files/`.
    pub files: Vec<PathBuf>,
    /// Variables exported to the script (`-e NAME=VALUE`).
    pub env: Vec<(String, String)>,
    /// Bound on the whole run, boot included (kclient exits 124 after it).
    pub timeout_s: u64,
}

impl Default for GuestRun {
    fn default() -> Self {
        Self { files: Vec::new(), env: Vec::new(), timeout_s: 300 }
    }
}

impl GuestRun {
    /// Adds a variable for the script.
    pub fn env(mut self, name: &str, value: impl ToString) -> Self {
        self.env.push((name.to_string(), value.to_string()));
        self
    }

    /// Adds a file the script finds in `$KCLIENT_JOB/files/`.
    pub fn file(mut self, p: impl AsRef<Path>) -> Self {
        self.files.push(p.as_ref().to_path_buf());
        self
    }

    /// Runs `script` as root in a fresh VM (from the calling thread, so in its network
    /// namespace) and returns its output: the script's stdout, its stderr followed by
    /// kclient's own lines, and its exit code.
    pub fn run(&self, script: &Path) -> Output {
        let mut cmd = Command::new(path());
        cmd.arg("run").arg("-t").arg(self.timeout_s.to_string());
        for (k, v) in &self.env {
            cmd.arg("-e").arg(format!("{k}={v}"));
        }
        for f in &self.files {
            cmd.arg("-f").arg(f);
        }
        cmd.arg(script);
        // The host's own KC_* variables would be passed in too: the test says what it means.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("KC_") {
                cmd.env_remove(k);
            }
        }
        cmd.output().unwrap_or_else(|e| panic!("cannot run kclient: {e}"))
    }
}

/// Compiles a single-file Rust program into a static executable the guest can run (the guest
/// has no libgcc_s, and a static binary needs nothing): `rustc -O -C target-feature=+crt-static`.
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
