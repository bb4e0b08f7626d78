//! Samba's own conformance tests against nasgw: the smbtorture subtests listed in
//! `tests/smbtorture/pass-nasgw.txt` must keep passing. Suites run in parallel, one
//! smbtorture process per suite, against one fresh daemon with the seed's guest share.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::Instant;

use nasgw_tests::{free_port, require_tool, workspace_root, Daemon};

/// One smbtorture process per entry; an entry of several tests (space-separated, one suite)
/// runs them in one process and names their subtests after that suite.
const SUITES: [&str; 19] = [
    "smb2.connect",
    "smb2.read",
    "smb2.rw",
    "smb2.dir",
    "smb2.getinfo",
    "smb2.setinfo",
    "smb2.lock",
    "smb2.rename",
    "smb2.create",
    "smb2.delete-on-close-perms",
    "smb2.sharemode",
    "smb2.streams",
    "smb2.timestamps",
    "smb2.winattr",
    "smb2.openattr",
    "smb2.durable-open",
    "smb2.durable-v2-open",
    NOTIFY,
    COPYCHUNK,
];

/// smb2.notify's subtests that finish on nasgw: `session-reconnect` waits forever on nasgw and on
/// smbd 4.17 alike; `basedir` and `rmdir1`-`rmdir4` wait for events nasgw does not send (see
/// tests/smbtorture/README.md), so they are left out rather than left to time out.
const NOTIFY: &str = "smb2.notify.valid-req smb2.notify.tcon smb2.notify.dir smb2.notify.mask \
     smb2.notify.tdis smb2.notify.tdis1 smb2.notify.close smb2.notify.logoff smb2.notify.double \
     smb2.notify.file smb2.notify.handle-permissions smb2.notify.overflow smb2.notify.tcp \
     smb2.notify.mask-change smb2.notify.invalid-reauth smb2.notify.tree";

/// smb2.ioctl's server-side copy subtests (the rest of smb2.ioctl is about sparse files,
/// compression, shadow copies, ... nasgw does not offer).
const COPYCHUNK: &str = "smb2.ioctl.copy_chunk_simple smb2.ioctl.copy_chunk_multi smb2.ioctl.copy_chunk_tiny \
     smb2.ioctl.copy_chunk_overwrite smb2.ioctl.copy_chunk_append smb2.ioctl.copy_chunk_limits \
     smb2.ioctl.copy_chunk_src_lock smb2.ioctl.copy_chunk_dest_lock smb2.ioctl.copy_chunk_bad_key \
     smb2.ioctl.copy_chunk_src_is_dest smb2.ioctl.copy_chunk_src_is_dest_overlap smb2.ioctl.copy_chunk_bad_access \
     smb2.ioctl.copy_chunk_write_access smb2.ioctl.copy_chunk_src_exceed smb2.ioctl.copy_chunk_src_exceed_multi \
     smb2.ioctl.copy_chunk_sparse_dest smb2.ioctl.copy_chunk_max_output_sz smb2.ioctl.copy_chunk_zero_length \
     smb2.ioctl.copy_chunk_across_shares smb2.ioctl.copy_chunk_across_shares2 smb2.ioctl.copy_chunk_across_shares3";

/// The name subtests of `entry` are listed under: the suite, or for several tests the suite
/// they belong to.
fn label(entry: &str) -> &str {
    let mut tests = entry.split_whitespace();
    let first = tests.next().unwrap_or(entry);
    if tests.next().is_none() {
        first
    } else {
        first.rsplit_once('.').map_or(first, |(suite, _)| suite)
    }
}

fn read_list(name: &str) -> BTreeSet<String> {
    let path = workspace_root().join("tests/smbtorture").join(name);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

#[test]
fn smbtorture_subtests_that_passed_still_pass() {
    require_tool("smbtorture");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = format!(
        "[volume]\nname = \"smb\"\nbackend = \"local\"\npath = \"{{dir}}/data\"\n\n[nfs]\nenabled = false\n\n\
         [smb]\nlisten = \"127.0.0.1:{port}\"\n\n\
         [[smb.share]]\nname = \"pub\"\nwritable = true\nguest_ok = true\nguest_only = true\nforce_user = \"root\"\n\n\
         [node]\ncontrol_socket = \"{{dir}}/ctl.sock\"\nstate_dir = \"{{dir}}/state\"\n"
    );
    let d = Daemon::start("torture", &dir.path().join("d"), &cfg, None);
    let start = Instant::now();
    let mut passed = run_suites(port, &SUITES);
    println!("smbtorture: {} subtests passed in {:?}", passed.len(), start.elapsed());
    let expected = read_list("pass-nasgw.txt");
    let smbd = read_list("pass-smbd-4.17.txt");
    // A few subtests race against timers (blocking locks, cancels); on a loaded CI machine one
    // may miss once. Suites with a missing subtest run once more; a real regression fails twice.
    let missing: Vec<String> = expected.difference(&passed).cloned().collect();
    if !missing.is_empty() {
        println!("not passed on the first run, retrying their suites: {missing:?}");
        let again: Vec<&str> = SUITES
            .iter()
            .copied()
            .filter(|s| missing.iter().any(|m| m.starts_with(&format!("{}.", label(s)))))
            .collect();
        passed.extend(run_suites(port, &again));
    }
    let regressed: Vec<_> = expected.difference(&passed).collect();
    let new: Vec<_> = passed.difference(&expected).collect();
    println!(
        "nasgw passes {} listed subtests; smbd 4.17 passes {} on the same configuration; {} of smbd's are passed by nasgw",
        expected.len(),
        smbd.len(),
        smbd.intersection(&passed).count()
    );
    if !new.is_empty() {
        println!("newly passing (add to tests/smbtorture/pass-nasgw.txt): {new:?}");
    }
    assert!(regressed.is_empty(), "smbtorture subtests regressed: {regressed:?}\n--- server log:\n{}", d.logs());
}

/// Runs `suites` in parallel (one smbtorture process each) and returns the passed subtests.
fn run_suites(port: u16, suites: &[&str]) -> BTreeSet<String> {
    let children: Vec<_> = suites
        .iter()
        .map(|suite| {
            let child = Command::new("timeout")
                .args(["300", "smbtorture", "//127.0.0.1/pub", "-U%", "-p", &port.to_string(), "--format=subunit"])
                .args(suite.split_whitespace())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("run smbtorture");
            (label(suite), child)
        })
        .collect();
    let mut passed = BTreeSet::new();
    for (suite, child) in children {
        let out = child.wait_with_output().expect("smbtorture output");
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some(rest) = line.strip_prefix("success: ") {
                let name = rest.split(" [").next().unwrap_or(rest).trim();
                passed.insert(format!("{suite}.{name}"));
            }
        }
    }
    passed
}
