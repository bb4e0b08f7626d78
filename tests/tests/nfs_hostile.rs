//! Hostile NFS clients (issue 10): group root after root squash, a write to a set-user-ID
//! file, a MOUNT path that tries to forge log lines, and connections that pipeline READs and
//! never take the replies.

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

/// One record-marked NFSv3 call `proc_` from AUTH_UNIX uid/gid 1000 with `args`.
fn nfs_call(xid: u32, proc_: u32, args: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    for x in [xid, 0, 2, 100_003, 3, proc_, 1, 24, 1, 4] {
        body.extend_from_slice(&x.to_be_bytes());
    }
    body.extend_from_slice(b"host");
    for x in [1000u32, 1000, 0, 0, 0] {
        body.extend_from_slice(&x.to_be_bytes());
    }
    body.extend_from_slice(args);
    let mut rec = (0x8000_0000u32 | body.len() as u32).to_be_bytes().to_vec();
    rec.extend_from_slice(&body);
    rec
}

/// `nasgw_requests_total{protocol="nfs",op=OP}` from the metrics endpoint.
fn nfs_requests(metrics: u16, op: &str) -> Option<u64> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", metrics)).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5))).ok()?;
    write!(s, "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let key = format!("nasgw_requests_total{{protocol=\"nfs\",op=\"{op}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&key)).and_then(|v| v.trim().parse::<f64>().ok()).map(|v| v as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_that_never_take_their_replies_do_not_starve_other_calls() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    // Before the fix, each READ reserved 1 MiB of the server's 1 GiB before its handle was
    // checked and held it until sent: 24 connections x 64 pipelined 1 MiB READs whose replies
    // are never read (24 x 64 x 17 units > 16384) left nothing for anyone else's calls.
    const CONNECTIONS: usize = 24;
    const PIPELINED: usize = 64;
    let metrics = nasgw_tests::free_port();
    let srv = Server::start("readhog", &format!("\n[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n"));
    std::fs::write(srv.data().join("big"), vec![0x5a; 1 << 20]).unwrap();
    let mut c = mount(srv.port, 1000, 1000).await;
    let root = c.root_nfs_fh3();
    let (fh, _) = lookup(&mut c, &root, b"big").await.unwrap();
    let mut args = (fh.data.len() as u32).to_be_bytes().to_vec();
    args.extend_from_slice(&fh.data);
    args.resize(4 + fh.data.len().div_ceil(4) * 4, 0);
    args.extend_from_slice(&0u64.to_be_bytes());
    args.extend_from_slice(&(1u32 << 20).to_be_bytes());
    let before = nfs_requests(metrics, "read").unwrap_or(0);
    let mut hogs = Vec::new();
    for i in 0..CONNECTIONS {
        let mut s = TcpStream::connect(("127.0.0.1", srv.port)).await.unwrap();
        let calls: Vec<u8> = (0..PIPELINED).flat_map(|j| nfs_call((i * 1000 + j) as u32, 6, &args)).collect();
        s.write_all(&calls).await.unwrap();
        hogs.push(s); // never read
    }
    // Every READ was run (the metrics count a call once it is answered, before it is sent).
    let want = before + (CONNECTIONS * PIPELINED) as u64;
    let every = std::time::Duration::from_millis(50);
    nasgw_tests::wait_for("every pipelined READ run", std::time::Duration::from_secs(25), every, || {
        nfs_requests(metrics, "read").filter(|&n| n >= want)
    });
    // NULL calls on a new connection and on the mounted client, and a READ of the mounted
    // client, are answered promptly meanwhile.
    let mut worst = std::time::Duration::ZERO;
    for k in 0..5u32 {
        let t = std::time::Instant::now();
        let mut s = TcpStream::connect(("127.0.0.1", srv.port)).await.unwrap();
        s.write_all(&nfs_call(900_000 + k, 0, &[])).await.unwrap();
        let mut mark = [0u8; 4];
        let got = tokio::time::timeout(std::time::Duration::from_secs(10), s.read_exact(&mut mark)).await;
        assert!(matches!(got, Ok(Ok(_))), "NULL {k} on a new connection not answered: {got:?}");
        worst = worst.max(t.elapsed());
        let t = std::time::Instant::now();
        tokio::time::timeout(std::time::Duration::from_secs(10), c.null()).await.expect("NULL answered").unwrap();
        worst = worst.max(t.elapsed());
    }
    let t = std::time::Instant::now();
    let (data, _) = tokio::time::timeout(std::time::Duration::from_secs(10), read(&mut c, &fh, 0, 4096))
        .await
        .expect("READ answered")
        .unwrap();
    assert_eq!(data, vec![0x5a; 4096]);
    worst = worst.max(t.elapsed());
    println!("{} READs of 1 MiB stuck unsent; slowest other call took {worst:?}", CONNECTIONS * PIPELINED);
    assert!(worst < std::time::Duration::from_secs(3), "another client's call took {worst:?}");
    drop(hogs);
}
