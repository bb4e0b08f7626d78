//! pjdfstest (the Rust crate, a static binary copied into a kclient VM) run as root through the
//! Linux kernel NFSv3 client against nasgw and against NFS-Ganesha 4.3 (FSAL_VFS,
//! `No_Root_Squash`) in the same VM run. Prints both counts; fails when a case Ganesha passes
//! fails on nasgw.
//!
//! CI runs the whole suite (398 cases; about a minute for both servers under TCG), the cases
//! about special files (fifos, sockets, devices: about 200) among them.

mod nfs_common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use nasgw_tests::anchors::{self, Ganesha, GaneshaFsal};
use nasgw_tests::kclient;
use nasgw_tests::pjdfstest::{self, Outcome, Report};
use nfs_common::Server;

/// Runs pjdfstest (`patterns`: its name filters, empty for all) on nasgw and on Ganesha, each
/// through the kernel client, in one VM; returns (nasgw, Ganesha).
fn nasgw_and_ganesha(patterns: &str, timeout_s: u64) -> (Report, Report) {
    anchors::isolate_network().expect("a private network namespace for Ganesha's rpcbind");
    let srv = Server::start("pjd", "root_squash = false");
    let tmp = tempfile::tempdir().unwrap();
    let export = tmp.path().join("ganesha-export");
    std::fs::create_dir_all(&export).unwrap();
    std::fs::set_permissions(&export, std::fs::Permissions::from_mode(0o755)).unwrap();
    let ganesha = Ganesha::start(&tmp.path().join("ganesha"), GaneshaFsal::Vfs(&export));
    let targets = format!(
        "nasgw:{p}:{p}:/smb ganesha:{}:{}:{}",
        ganesha.nfs_port,
        ganesha.mount_port,
        ganesha.export_path,
        p = srv.port
    );
    let pjd = pjdfstest::binary();
    let run = kclient::run_guest_with_files(
        "tests/kclient/pjdfstest.sh",
        &[
            ("KC_TARGETS", targets),
            ("KC_PATTERNS", patterns.to_string()),
            ("KC_CASE_TIMEOUT", (timeout_s / 2).to_string()),
        ],
        &[&pjd],
        Duration::from_secs(timeout_s),
    );
    let (stdout, stderr, elapsed) = (&run.stdout, &run.stderr, run.elapsed);
    let s = pjdfstest::sections(stdout);
    let (ours, anchor) = (
        pjdfstest::parse(s.get("nasgw").map_or("", String::as_str)),
        pjdfstest::parse(s.get("ganesha").map_or("", String::as_str)),
    );
    for line in stdout.lines().filter(|l| l.starts_with("== ")) {
        println!("{line}");
    }
    println!("VM run with both servers: {elapsed:.1?}");
    println!("pjdfstest through the Linux NFSv3 client, patterns {patterns:?}:");
    println!("  NFS-Ganesha 4.3: {}", anchor.summary());
    println!("  nasgw:           {}", ours.summary());
    if !(run.ok() && ours.finished && anchor.finished) {
        panic!(
            "the VM run did not finish both suites ({:?}):\n{stdout}\n--- stderr ---\n{stderr}\n{}",
            run.code,
            srv.logs()
        );
    }
    assert!(!srv.logs().contains("panicked"), "{}", srv.logs());
    drop(ganesha);
    (ours, anchor)
}

/// Fails with every case Ganesha passes and nasgw does not, with pjdfstest's message for it.
fn assert_no_regressions(ours: &Report, anchor: &Report) {
    let better = pjdfstest::improvements(ours, anchor);
    println!("  nasgw passes {} case(s) Ganesha fails: {better:?}", better.len());
    for (name, o) in ours.cases.iter().filter(|(_, o)| **o != Outcome::Passed) {
        println!("  nasgw {o:?}: {name} {}", ours.details.get(name).map_or("", String::as_str).replace('\n', " | "));
    }
    let worse = pjdfstest::regressions(ours, anchor);
    assert!(
        worse.is_empty(),
        "{} case(s) pass on Ganesha and not on nasgw:\n{}",
        worse.len(),
        worse
            .iter()
            .map(|n| format!("  {n}: {}", ours.details.get(n).map_or("(not run)", String::as_str).replace('\n', " | ")))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The whole suite (398 cases, about a minute for both servers under TCG). `PJDFSTEST_PATTERNS`
/// (pjdfstest's name filters, e.g. `"mkfifo mknod fifo socket char block"`) runs a part.
#[test]
fn pjdfstest_passes_wherever_ganesha_passes() {
    let patterns = std::env::var("PJDFSTEST_PATTERNS").unwrap_or_default();
    let (ours, anchor) = nasgw_and_ganesha(&patterns, 900);
    if patterns.is_empty() {
        assert!(anchor.cases.len() >= 398, "the whole suite ran: {}", anchor.summary());
    }
    // The cases about special files are there and pass (they all failed before MKNOD).
    let special: Vec<&String> = ours
        .cases
        .keys()
        .filter(|n| ["mkfifo::", "mknod::", "::fifo", "::socket", "::char", "::block"].iter().any(|p| n.contains(p)))
        .collect();
    let special_passed = special.iter().filter(|n| ours.cases[**n] == Outcome::Passed).count();
    println!("  special-file cases on nasgw: {special_passed} / {} passed", special.len());
    assert!(patterns.is_empty() || !special.is_empty() || !patterns.contains("fifo"));
    assert_no_regressions(&ours, &anchor);
}
