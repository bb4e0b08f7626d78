//! Hostile NFS clients (issue 10): group root after root squash, a write to a set-user-ID
//! file, and a MOUNT path that tries to forge log lines.

mod nfs_common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use nfs3_types::nfs3::{nfsstat3, stable_how};
use nfs_common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_root_is_squashed_too() {
    if !nasgw_tests::is_root() {
        eprintln!("not root: the server cannot take callers' identities; skipped");
        return;
    }
    let srv = Server::start("gidsquash", "");
    std::fs::set_permissions(srv.data(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let secret = srv.data().join("shadow");
    std::fs::write(&secret, b"root only").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o640)).unwrap();
    std::os::unix::fs::chown(&secret, Some(0), Some(0)).unwrap();
    for (what, gid, gids) in [("primary gid 0", 0, vec![]), ("supplementary gid 0", 1000, vec![0])] {
        let mut c = mount_as(srv.port, "/smb", unix(1000, gid, gids)).await.unwrap();
        let root = c.root_nfs_fh3();
        let (fh, _) = lookup(&mut c, &root, b"shadow").await.unwrap();
        assert_eq!(read(&mut c, &fh, 0, 100).await.unwrap_err(), nfsstat3::NFS3ERR_ACCES, "{what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_by_a_user_clears_setuid_and_setgid() {
    if !nasgw_tests::is_root() {
        eprintln!("not root: the server cannot take callers' identities; skipped");
        return;
    }
    let srv = Server::start("setuid", "");
    let prog = srv.data().join("prog");
    std::fs::write(&prog, b"#!/bin/sh\n").unwrap();
    std::os::unix::fs::chown(&prog, Some(1234), Some(1234)).unwrap();
    std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o6777)).unwrap();
    let mut c = mount_as(srv.port, "/smb", unix(999, 999, vec![])).await.unwrap();
    let root = c.root_nfs_fh3();
    let (fh, _) = lookup(&mut c, &root, b"prog").await.unwrap();
    write(&mut c, &fh, 0, b"#!/bin/sh\nid\n", stable_how::FILE_SYNC).await.unwrap();
    let mode = std::fs::metadata(&prog).unwrap().mode() & 0o7777;
    assert_eq!(mode, 0o777, "set-user-ID and set-group-ID cleared by another user's write (mode {mode:o})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mount_path_cannot_forge_log_lines() {
    let srv = Server::start("logforge", "");
    let forged = "/nope\n2026-01-01T00:00:00.000000Z  INFO nasgw: FORGED admin logged in\u{1b}[2J";
    assert!(mount_as(srv.port, forged, unix(0, 0, vec![])).await.is_err());
    let every = std::time::Duration::from_millis(50);
    let logs = nasgw_tests::wait_for("the refused MOUNT in the log", std::time::Duration::from_secs(10), every, || {
        let l = srv.logs();
        l.contains("MOUNT refused").then_some(l)
    });
    assert!(!logs.lines().any(|l| l.contains("FORGED") && !l.contains("MOUNT refused")), "a forged line:\n{logs}");
    assert!(!logs.contains('\u{1b}'), "an escape sequence reached the log");
    assert!(logs.contains("\\n2026-01-01"), "the newline is shown escaped:\n{logs}");
}
