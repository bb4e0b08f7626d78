//! The Linux kernel client in a throwaway VM (`shared/tools/kclient`): a test hands it a shell
//! script that runs as root in the guest (mount -t nfs/cifs ...). Located by `$KCLIENT`, else
//! `shared/tools/kclient/kclient` beside the repository, else `/work/shared/tools/kclient/kclient`;
//! a missing kclient fails the test loudly.

use std::path::PathBuf;
use std::process::{Command, Output};

/// The kclient launcher.
pub fn path() -> PathBuf {
    if let Some(p) = std::env::var_os("KCLIENT") {
        return PathBuf::from(p);
    }
    let beside = crate::workspace_root().join("../shared/tools/kclient/kclient");
    let candidates = [beside, PathBuf::from("/work/shared/tools/kclient/kclient")];
    candidates.into_iter().find(|p| p.is_file()).unwrap_or_else(|| {
        panic!("kclient not found: set KCLIENT, or put shared/tools/kclient beside the repository (see its README)")
    })
}

/// Runs `script` as root in a fresh VM whose eth0 is tap device `tap` in namespace `netns`
/// (already attached to the test bridge), with `env` exported to the script; `timeout_s`
/// bounds the whole run.
pub fn run_on_tap(tap: &str, netns: &str, script: &str, env: &[(&str, &str)], timeout_s: u32) -> Output {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("guest.sh");
    std::fs::write(&file, script).expect("write guest script");
    let mut cmd = Command::new(path());
    cmd.arg("run").arg("-t").arg(timeout_s.to_string());
    for (k, v) in env {
        cmd.arg("-e").arg(format!("{k}={v}"));
    }
    cmd.arg(&file).env("KCLIENT_NET", format!("tap:{tap}@{netns}"));
    cmd.output().expect("run kclient")
}
