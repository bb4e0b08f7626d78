//! Who may do what over NFS: files belong to the caller, root is squashed by default, denied
//! networks and AUTH_NONE are refused, a read-only export refuses changes, nothing escapes the
//! export, forged handles and malformed records are refused without harming the server, and
//! the portmapper answers for stock clients.

mod nfs_common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use nfs3_client::tokio::TokioIo;
use nfs3_client::{ConnectError, MountError, PortmapperClient};
use nfs3_types::mount::mountstat3;
use nfs3_types::nfs3::{nfs_fh3, nfsstat3, stable_how, ACCESS3args, Nfs3Result, ACCESS3_MODIFY, ACCESS3_READ};
use nfs3_types::rpc::opaque_auth;
use nfs3_types::xdr_codec::Opaque;
use nfs_common::*;

fn open_data(srv: &Server) {
    std::fs::set_permissions(srv.data(), std::fs::Permissions::from_mode(0o777)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_belong_to_the_caller_and_root_is_squashed() {
    if !nasgw_tests::is_root() {
        eprintln!("not root: the server cannot take callers' identities; skipped");
        return;
    }
    let srv = Server::start("owners", "");
    open_data(&srv);
    let mut user = mount_as(srv.port, "/smb", unix(1234, 5678, vec![42])).await.unwrap();
    let root = user.root_nfs_fh3();
    let f = create(&mut user, &root, "mine.txt", 0o600).await.unwrap();
    write(&mut user, &f, 0, b"private", stable_how::FILE_SYNC).await.unwrap();
    assert_eq!(owner(&srv.data().join("mine.txt")), (1234, 5678), "the caller owns what it creates");
    mkdir(&mut user, &root, "userdir").await.unwrap();
    assert_eq!(owner(&srv.data().join("userdir")), (1234, 5678));

    // uid 0 is squashed to 65534 (root_squash defaults on).
    let mut rootc = mount(srv.port, 0, 0).await;
    create(&mut rootc, &root, "by-root.txt", 0o644).await.unwrap();
    assert_eq!(owner(&srv.data().join("by-root.txt")), (65534, 65534), "root is squashed");
    // ...so the squashed root cannot read a user's private file.
    assert_eq!(read(&mut rootc, &f, 0, 10).await.unwrap_err(), nfsstat3::NFS3ERR_ACCES);
    let mut other = mount_as(srv.port, "/smb", unix(999, 999, vec![])).await.unwrap();
    assert_eq!(read(&mut other, &f, 0, 10).await.unwrap_err(), nfsstat3::NFS3ERR_ACCES);
    assert_eq!(write(&mut other, &f, 0, b"x", stable_how::UNSTABLE).await.unwrap_err(), nfsstat3::NFS3ERR_ACCES);
    let acc = other.access(&ACCESS3args { object: f.clone(), access: ACCESS3_READ | ACCESS3_MODIFY }).await.unwrap();
    let Nfs3Result::Ok(acc) = acc else { panic!("ACCESS failed") };
    assert_eq!(acc.access, 0, "ACCESS grants nothing on someone else's 0600 file");
    let userdir = lookup(&mut other, &root, b"userdir").await.unwrap().0;
    assert_eq!(create(&mut other, &userdir, "x", 0o644).await.unwrap_err(), nfsstat3::NFS3ERR_ACCES);
    assert_eq!(read(&mut user, &f, 0, 10).await.unwrap().0, b"private");

    // libnfs sends the calling process's uid (root here): squashed, cannot write a root-owned dir.
    std::fs::create_dir(srv.data().join("rootonly")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("x");
    std::fs::write(&src, b"x").unwrap();
    let out = libnfs("nfs-cp", &[src.to_str().unwrap(), &srv.url("/rootonly/x")]);
    assert!(!out.status.success(), "squashed root cannot write into a 0755 root-owned directory");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_networks_and_auth_none_are_refused() {
    let srv = Server::start("denied", "clients = [\"10.0.0.0/8\"]");
    match mount_as(srv.port, "/smb", unix(0, 0, vec![])).await.err() {
        Some(ConnectError::Mount(MountError::Denied(mountstat3::MNT3ERR_ACCES))) => {}
        other => panic!("mount from 127.0.0.1 must be refused with ACCES, got {other:?}"),
    }
    assert!(!libnfs("nfs-ls", &[&srv.url("/")]).status.success(), "nfs-ls refused too");
    let logs = srv.logs();
    assert!(logs.contains("MOUNT refused"), "the refusal is logged:\n{logs}");

    let open = Server::start("auth-none", "root_squash = false");
    match mount_as(open.port, "/smb", opaque_auth::default()).await.err() {
        Some(ConnectError::Mount(MountError::Denied(mountstat3::MNT3ERR_ACCES))) => {}
        other => panic!("AUTH_NONE must be refused, got {other:?}"),
    }
    let allowed = Server::start("auth-none-ok", "allow_auth_none = true");
    let mut c =
        mount_as(allowed.port, "/smb", opaque_auth::default()).await.expect("AUTH_NONE allowed when configured");
    let root = c.root_nfs_fh3();
    assert!(getattr(&mut c, &root).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_export_refuses_every_change() {
    let srv = Server::start("ro", "read_only = true\nroot_squash = false");
    std::fs::write(srv.data().join("present.txt"), b"readable").unwrap();
    let mut c = mount(srv.port, 0, 0).await;
    let root = c.root_nfs_fh3();
    let (f, _) = lookup(&mut c, &root, b"present.txt").await.unwrap();
    assert_eq!(read(&mut c, &f, 0, 100).await.unwrap().0, b"readable");
    assert_eq!(write(&mut c, &f, 0, b"x", stable_how::FILE_SYNC).await.unwrap_err(), nfsstat3::NFS3ERR_ROFS);
    assert_eq!(create(&mut c, &root, "new", 0o644).await.unwrap_err(), nfsstat3::NFS3ERR_ROFS);
    assert_eq!(mkdir(&mut c, &root, "d").await.unwrap_err(), nfsstat3::NFS3ERR_ROFS);
    assert_eq!(remove(&mut c, &root, "present.txt").await.unwrap_err(), nfsstat3::NFS3ERR_ROFS);
    assert_eq!(rename(&mut c, &root, "present.txt", &root, "moved").await.unwrap_err(), nfsstat3::NFS3ERR_ROFS);
    let acc = c.access(&ACCESS3args { object: f.clone(), access: ACCESS3_READ | ACCESS3_MODIFY }).await.unwrap();
    let Nfs3Result::Ok(acc) = acc else { panic!("ACCESS failed") };
    assert_eq!(acc.access, ACCESS3_READ, "ACCESS never grants MODIFY on a read-only export");
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("x");
    std::fs::write(&src, b"x").unwrap();
    assert!(!libnfs("nfs-cp", &[src.to_str().unwrap(), &srv.url("/x")]).status.success());
    assert_eq!(std::fs::read(srv.data().join("present.txt")).unwrap(), b"readable");
    assert!(!srv.data().join("x").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_escapes_the_export_and_forged_handles_are_refused() {
    let srv = Server::start("escape", "root_squash = false");
    let outside = srv.dir.join("outside-secret");
    std::fs::write(&outside, b"outside").unwrap();
    std::os::unix::fs::symlink(&outside, srv.data().join("abs-link")).unwrap();
    std::os::unix::fs::symlink("../outside-secret", srv.data().join("rel-link")).unwrap();
    std::fs::create_dir(srv.data().join("sub")).unwrap();
    std::fs::write(srv.data().join("sub/inner.txt"), b"inner").unwrap();

    let mut c = mount(srv.port, 0, 0).await;
    let root = c.root_nfs_fh3();
    let root_id = getattr(&mut c, &root).await.unwrap().fileid;
    let (up, _) = lookup(&mut c, &root, b"..").await.unwrap();
    assert_eq!(getattr(&mut c, &up).await.unwrap().fileid, root_id, ".. of the export root is the root");
    for bad in [&b"sub/inner.txt"[..], b"../outside-secret", b"/etc/passwd"] {
        assert!(lookup(&mut c, &root, bad).await.is_err(), "{:?} must not resolve", String::from_utf8_lossy(bad));
    }
    // A symlink is returned as a link (the client resolves it on its side), never followed.
    for l in [&b"abs-link"[..], b"rel-link"] {
        let (fh, attr) = lookup(&mut c, &root, l).await.unwrap();
        assert_eq!(attr.type_, nfs3_types::nfs3::ftype3::NF3LNK);
        assert_eq!(read(&mut c, &fh, 0, 100).await.unwrap_err(), nfsstat3::NFS3ERR_INVAL);
    }
    assert!(create(&mut c, &root, "a/b", 0o644).await.is_err(), "names with / are refused");

    // MOUNT of paths outside the export.
    for p in ["/smb/../..", "/etc", "/smb/abs-link", "/smb/../outside-secret"] {
        assert!(mount_as(srv.port, p, unix(0, 0, vec![])).await.is_err(), "mount of {p} must fail");
    }
    let mut sub =
        mount_as(srv.port, "/smb/sub", unix(0, 0, vec![])).await.expect("a directory inside the export mounts");
    let subroot = sub.root_nfs_fh3();
    assert_eq!(list(&mut sub, &subroot, false, 4096).await.0, vec![b"inner.txt".to_vec()]);
    assert!(mount_as(srv.port, "smb", unix(0, 0, vec![])).await.is_ok(), "`smb` without a slash mounts (data:smb)");

    // Forged and foreign handles.
    let mut forged = root.data.to_vec();
    let mid = forged.len() / 2;
    forged[mid] ^= 0x40;
    let forged = nfs_fh3 { data: Opaque::owned(forged) };
    assert_eq!(getattr(&mut c, &forged).await.unwrap_err(), nfsstat3::NFS3ERR_BADHANDLE);
    let other = Server::start("escape-other", "root_squash = false");
    let mut oc = mount(other.port, 0, 0).await;
    assert_eq!(getattr(&mut oc, &root).await.unwrap_err(), nfsstat3::NFS3ERR_BADHANDLE, "another server's handle");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_records_close_the_connection_and_the_server_lives_on() {
    let pm = nasgw_tests::free_port();
    let srv = Server::start("garbage", &format!("root_squash = false\nportmap_listen = \"127.0.0.1:{pm}\""));
    let port = srv.port;
    let attempts: [&[u8]; 3] = [
        &[0xff, 0xff, 0xff, 0xff],                // a 2 GiB fragment
        &[0x80, 0, 0, 8, 0, 0, 0, 1, 0, 0, 0, 1], // a REPLY, not a call
        &[0x80, 0, 0, 4, 0, 0, 0, 1],             // a header cut short
    ];
    for bytes in attempts {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(bytes).unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(s.read(&mut buf).unwrap_or(0), 0, "the server closes the connection on {bytes:?}");
    }
    let logs = srv.logs();
    assert!(logs.contains("malformed"), "a log line says why:\n{logs}");

    // Still serving; and the portmapper answers for NFS and MOUNT.
    let mut c = mount(port, 0, 0).await;
    let root = c.root_nfs_fh3();
    assert!(getattr(&mut c, &root).await.is_ok());
    let io = TokioIo::new(tokio::net::TcpStream::connect(("127.0.0.1", pm)).await.unwrap());
    let mut pmc = PortmapperClient::new(io);
    assert_eq!(pmc.getport(100_003, 3, 6).await.unwrap(), port);
    assert_eq!(pmc.getport(100_005, 3, 6).await.unwrap(), port);
    let maps = pmc.dump().await.unwrap();
    assert!(maps.iter().any(|m| m.prog == 100_003 && m.port == u32::from(port)), "{maps:?}");
}
