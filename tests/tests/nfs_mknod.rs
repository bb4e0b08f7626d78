//! MKNOD over the wire (the Rust `nfs3_client` against the local backend): each type with its
//! mode and numbers in the reply, GETATTR, LOOKUP and READDIRPLUS; READ and WRITE of a fifo or
//! a device answer INVAL at once; a device for anyone but a non-squashed root is PERM (a
//! squashed root included). (BADTYPE for other types is the decoder's unit test: this client
//! cannot send them.)

mod nfs_common;

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::time::{Duration, Instant};

use nfs3_types::nfs3::*;
use nfs_common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mknod_makes_every_special_type_and_their_data_is_refused() {
    let srv = Server::start("mknod", "root_squash = false");
    let mut c = mount(srv.port, 0, 0).await;
    let root = c.root_nfs_fh3();
    let cases = [
        ("fifo", fifo(0o640), ftype3::NF3FIFO, 0o640, (0, 0)),
        ("sock", socket(0o755), ftype3::NF3SOCK, 0o755, (0, 0)),
        ("zero", char_device(0o666, 1, 5), ftype3::NF3CHR, 0o666, (1, 5)),
        (
            "loop",
            mknoddata3::NF3BLK(devicedata3 {
                dev_attributes: sattr3 { mode: Nfs3Option::Some(0o660), ..Default::default() },
                spec: specdata3 { specdata1: 7, specdata2: 200 },
            }),
            ftype3::NF3BLK,
            0o660,
            (7, 200),
        ),
    ];
    for (n, what, t, mode, rdev) in cases {
        let (h, a) = mknod(&mut c, &root, n, what).await.unwrap_or_else(|e| panic!("MKNOD {n}: {e}"));
        assert_eq!((a.type_, a.mode, a.uid, (a.rdev.specdata1, a.rdev.specdata2)), (t, mode, 0, rdev), "{n}");
        let g = getattr(&mut c, &h).await.unwrap();
        assert_eq!((g.type_, g.mode, g.fileid, g.rdev.specdata1), (a.type_, a.mode, a.fileid, rdev.0), "{n}: GETATTR");
        let (h2, a2) = lookup(&mut c, &root, n.as_bytes()).await.unwrap();
        assert_eq!((h2, a2.type_), (h.clone(), t), "{n}: LOOKUP");
        // Never opened by the server: a fifo would block, a device is the server's own.
        let start = Instant::now();
        assert_eq!(read(&mut c, &h, 0, 4096).await.unwrap_err(), nfsstat3::NFS3ERR_INVAL, "{n}: READ");
        assert_eq!(
            write(&mut c, &h, 0, b"data", stable_how::FILE_SYNC).await.unwrap_err(),
            nfsstat3::NFS3ERR_INVAL,
            "{n}: WRITE"
        );
        assert!(start.elapsed() < Duration::from_secs(5), "{n}: answered at once ({:?})", start.elapsed());
        // On the volume, as asked.
        let m = std::fs::symlink_metadata(srv.data().join(n)).unwrap();
        let ft = m.file_type();
        assert!(ft.is_fifo() || ft.is_socket() || ft.is_char_device() || ft.is_block_device(), "{n}");
        assert_eq!((m.mode() & 0o7777, m.rdev()), (mode, libc::makedev(rdev.0, rdev.1)), "{n}");
    }
    assert_eq!(mknod(&mut c, &root, "fifo", fifo(0o644)).await.unwrap_err(), nfsstat3::NFS3ERR_EXIST);
    // READDIRPLUS carries every type and its numbers.
    let args = READDIRPLUS3args {
        dir: root.clone(),
        cookie: 0,
        cookieverf: cookieverf3([0; 8]),
        dircount: 8192,
        maxcount: 65536,
    };
    let Nfs3Result::Ok(page) = c.readdirplus(&args).await.expect("rpc") else { panic!("READDIRPLUS failed") };
    let mut seen: Vec<(String, ftype3, u32, u32)> = page
        .reply
        .entries
        .0
        .iter()
        .map(|e| {
            let a = e.name_attributes.clone().unwrap();
            (String::from_utf8_lossy(&e.name.0).into_owned(), a.type_, a.rdev.specdata1, a.rdev.specdata2)
        })
        .collect();
    seen.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        seen,
        [
            ("fifo".into(), ftype3::NF3FIFO, 0, 0),
            ("loop".into(), ftype3::NF3BLK, 7, 200),
            ("sock".into(), ftype3::NF3SOCK, 0, 0),
            ("zero".into(), ftype3::NF3CHR, 1, 5)
        ]
    );
    // A user may make fifos and sockets in a folder it may write, never devices.
    std::fs::create_dir(srv.data().join("pub")).unwrap();
    std::fs::set_permissions(srv.data().join("pub"), std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
    let (pubdir, _) = lookup(&mut c, &root, b"pub").await.unwrap();
    let mut u = mount(srv.port, 1000, 1000).await;
    let (_, a) = mknod(&mut u, &pubdir, "userfifo", fifo(0o600)).await.unwrap();
    assert_eq!((a.type_, a.uid, a.gid), (ftype3::NF3FIFO, 1000, 1000));
    assert_eq!(mknod(&mut u, &pubdir, "dev", char_device(0o600, 1, 3)).await.unwrap_err(), nfsstat3::NFS3ERR_PERM);
    // A squashed root is the anonymous user: no devices either.
    let squashed = Server::start("mknod-squash", "root_squash = true");
    std::fs::create_dir(squashed.data().join("pub")).unwrap();
    std::fs::set_permissions(squashed.data().join("pub"), std::os::unix::fs::PermissionsExt::from_mode(0o1777))
        .unwrap();
    let mut s = mount(squashed.port, 0, 0).await;
    let sroot = s.root_nfs_fh3();
    let (spub, _) = lookup(&mut s, &sroot, b"pub").await.unwrap();
    assert_eq!(mknod(&mut s, &spub, "dev", char_device(0o600, 1, 3)).await.unwrap_err(), nfsstat3::NFS3ERR_PERM);
    let (_, a) = mknod(&mut s, &spub, "fifo", fifo(0o644)).await.unwrap();
    assert_eq!(a.uid, 65534);
    assert!(!squashed.data().join("pub/dev").exists() && !srv.data().join("pub/dev").exists());
}
