//! NFSv3 end to end with the real libnfs clients (`nfs-cp`, `nfs-ls`, `nfs-cat`) and the Rust
//! `nfs3_client`: bulk data both ways, namespace operations, and a 100k-entry listing.

mod nfs_common;

use std::collections::HashSet;
use std::hash::Hasher;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Instant;

use nfs3_types::nfs3::stable_how;
use nfs_common::*;

/// Writes `len` bytes of a fast pseudo-random stream to `p`; returns its hash.
fn make_file(p: &Path, len: usize, seed: u64) -> u64 {
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(p).unwrap());
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let mut x = seed | 1;
    let mut chunk = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        for w in chunk.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(chunk.len());
        f.write_all(&chunk[..n]).unwrap();
        h.write(&chunk[..n]);
        left -= n;
    }
    f.flush().unwrap();
    h.finish()
}

fn hash_in_mib_chunks(p: &Path) -> (u64, u64) {
    // read() may return short chunks; re-chunk to exactly 1 MiB to match make_file.
    let mut f = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(p).unwrap());
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            let n = f.read(&mut buf[filled..]).unwrap();
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            return (h.finish(), total);
        }
        h.write(&buf[..filled]);
        total += filled as u64;
        if filled < buf.len() {
            return (h.finish(), total);
        }
    }
}

#[test]
fn one_gib_copied_in_and_out_is_identical() {
    let srv = Server::start("bulk", "root_squash = false");
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src.bin");
    const LEN: usize = 1 << 30;
    let want = make_file(&src, LEN, 0x5eed);

    let t = Instant::now();
    ok(&libnfs("nfs-cp", &[src.to_str().unwrap(), &srv.url("/big.bin")]), "nfs-cp in");
    let put = t.elapsed();
    let (got, len) = hash_in_mib_chunks(&srv.data().join("big.bin"));
    assert_eq!((got, len), (want, LEN as u64), "the file on the volume is the one sent");

    let back = tmp.path().join("back.bin");
    let t = Instant::now();
    ok(&libnfs("nfs-cp", &[&srv.url("/big.bin"), back.to_str().unwrap()]), "nfs-cp out");
    let get = t.elapsed();
    assert_eq!(hash_in_mib_chunks(&back), (want, LEN as u64), "the file read back is the one sent");
    let mib = (LEN >> 20) as f64;
    println!(
        "1 GiB via nfs-cp: put {:.0} MiB/s ({put:.2?}), get {:.0} MiB/s ({get:.2?})",
        mib / put.as_secs_f64(),
        mib / get.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_operations_through_both_clients() {
    let srv = Server::start("ops", "root_squash = false");
    let mut c = mount(srv.port, 0, 0).await;
    let root = c.root_nfs_fh3();
    let exports = c.mount_client.export().await.unwrap();
    let dirs: Vec<Vec<u8>> = exports.0.iter().map(|e| e.ex_dir.0.to_vec()).collect();
    assert_eq!(dirs, vec![b"/smb".to_vec()], "MOUNT EXPORT lists the volume");

    // Small file in with nfs-cp, back with nfs-cat and the Rust client.
    let tmp = tempfile::tempdir().unwrap();
    let small = tmp.path().join("hello.txt");
    std::fs::write(&small, b"hello over nfs\n").unwrap();
    ok(&libnfs("nfs-cp", &[small.to_str().unwrap(), &srv.url("/hello.txt")]), "nfs-cp small");
    let cat = libnfs("nfs-cat", &[&srv.url("/hello.txt")]);
    ok(&cat, "nfs-cat");
    assert_eq!(cat.stdout, b"hello over nfs\n");
    // nfs-cp refuses to overwrite (O_EXCL): the server answers EXIST.
    assert!(!libnfs("nfs-cp", &[small.to_str().unwrap(), &srv.url("/hello.txt")]).status.success());

    let dir = mkdir(&mut c, &root, "dir").await.unwrap();
    let f = create(&mut c, &dir, "a.txt", 0o644).await.unwrap();
    let w = write(&mut c, &f, 0, b"abcdef", stable_how::FILE_SYNC).await.unwrap();
    assert_eq!((w.count, w.committed), (6, stable_how::FILE_SYNC));
    assert_eq!(read(&mut c, &f, 2, 100).await.unwrap(), (b"cdef".to_vec(), true));
    assert_eq!(create(&mut c, &dir, "a.txt", 0o644).await.unwrap_err(), nfs3_types::nfs3::nfsstat3::NFS3ERR_EXIST);

    rename(&mut c, &dir, "a.txt", &root, "b.txt").await.unwrap();
    assert_eq!(std::fs::read(srv.data().join("b.txt")).unwrap(), b"abcdef");
    assert!(!srv.data().join("dir/a.txt").exists());
    // The handle follows the file through the rename.
    assert_eq!(read(&mut c, &f, 0, 3).await.unwrap().0, b"abc");

    symlink(&mut c, &root, "link", "b.txt").await.unwrap();
    assert_eq!(std::fs::read_link(srv.data().join("link")).unwrap().to_str(), Some("b.txt"));
    let ls = libnfs("nfs-ls", &[&srv.url("/")]);
    ok(&ls, "nfs-ls");
    let text = String::from_utf8_lossy(&ls.stdout);
    for n in ["hello.txt", "dir", "b.txt", "link"] {
        assert!(
            text.lines().any(|l| l.ends_with(&format!(" {n}")) || l.contains(&format!(" {n} "))),
            "{n} listed:\n{text}"
        );
    }

    remove(&mut c, &root, "b.txt").await.unwrap();
    assert_eq!(getattr(&mut c, &f).await.unwrap_err(), nfs3_types::nfs3::nfsstat3::NFS3ERR_STALE);
    assert_eq!(remove(&mut c, &root, "dir").await.unwrap_err(), nfs3_types::nfs3::nfsstat3::NFS3ERR_ISDIR);
    let rm = c
        .rmdir(&nfs3_types::nfs3::RMDIR3args {
            object: nfs3_types::nfs3::diropargs3 {
                dir: root.clone(),
                name: nfs3_types::nfs3::filename3(nfs3_types::xdr_codec::Opaque::owned(b"dir".to_vec())),
            },
        })
        .await
        .unwrap();
    assert!(matches!(rm, nfs3_types::nfs3::Nfs3Result::Ok(_)));
    assert!(!srv.data().join("dir").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_thousand_entries_are_listed_exactly_once() {
    let srv = Server::start("big-dir", "root_squash = false");
    let dir = srv.data().join("many");
    std::fs::create_dir(&dir).unwrap();
    const N: usize = 100_000;
    for i in 0..N {
        std::fs::File::create(dir.join(format!("entry-{i:06}"))).unwrap();
    }

    let t = Instant::now();
    let ls = libnfs("nfs-ls", &[&srv.url("/many")]);
    ok(&ls, "nfs-ls of 100k entries");
    let took = t.elapsed();
    let text = String::from_utf8_lossy(&ls.stdout);
    let names: Vec<&str> =
        text.lines().filter_map(|l| l.split_whitespace().last()).filter(|n| n.starts_with("entry-")).collect();
    let unique: HashSet<&str> = names.iter().copied().collect();
    println!("nfs-ls listed {} entries in {took:.2?}", names.len());
    assert_eq!(names.len(), N, "every entry listed once by nfs-ls");
    assert_eq!(unique.len(), N);

    let mut c = mount(srv.port, 0, 0).await;
    let root = c.root_nfs_fh3();
    let (many, _) = lookup(&mut c, &root, b"many").await.unwrap();
    for (plus, count) in [(false, 8192), (true, 32768)] {
        let t = Instant::now();
        let (names, calls) = list(&mut c, &many, plus, count).await;
        let unique: HashSet<&Vec<u8>> = names.iter().collect();
        println!("READDIR{} of 100k in {calls} calls, {:.2?}", if plus { "PLUS" } else { "" }, t.elapsed());
        assert_eq!(names.len(), N, "plus={plus}: every entry exactly once");
        assert_eq!(unique.len(), N);
        assert!(calls > 10, "the listing came in pages ({calls})");
    }
}
