//! A full volume: three HA nodes share an 8 MiB volume that fills up. Writes fail with the
//! protocols' disk-full errors (NFS3ERR_NOSPC, NT_STATUS_DISK_FULL), files written before are
//! intact, and every node stays OK and keeps its public address (a full volume is not an
//! unhealthy one: calling it so would take every address down, reads included). Once space is
//! freed, writes work again.

mod ha_support;
mod nfs_common;

use std::process::Command;
use std::time::{Duration, Instant};

use ha_support::{Cluster, VIPS};
use nasgw_tests::netns::enter;
use nfs3_types::nfs3::{nfsstat3, stable_how};
use nfs_common::*;

/// Unmounts the test's tmpfs however the test ends.
struct Tmpfs(std::path::PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes `path` until the file system is full.
fn fill(path: &std::path::Path) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
    let block = vec![7u8; 4096];
    loop {
        match f.write_all(&block) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => return,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_full_volume_fails_writes_clearly_loses_nothing_and_keeps_every_node_serving() {
    let mut mounted = None;
    let c = Cluster::start_with(true, |vol| {
        let st = Command::new("mount").args(["-t", "tmpfs", "-o", "size=8m,mode=1777", "tmpfs"]).arg(vol).status();
        assert!(st.unwrap().success(), "mount tmpfs");
        mounted = Some(Tmpfs(vol.to_path_buf()));
    });
    let vol = c.volume();

    // Through node 1's NFS: a file written before the volume fills up.
    enter(c.topo.ns("n1"));
    let mut nfs = mount(12049, 1000, 1000).await;
    let root = nfs.root_nfs_fh3();
    let kept: Vec<u8> = (0..1_000_000u32).map(|i| (i.wrapping_mul(2654435761) >> 11) as u8).collect();
    let keep = create(&mut nfs, &root, "keep.bin", 0o644).await.unwrap();
    for (i, part) in kept.chunks(256 * 1024).enumerate() {
        write(&mut nfs, &keep, (i * 256 * 1024) as u64, part, stable_how::FILE_SYNC).await.unwrap();
    }

    // NFS fills it: the write that does not fit is refused with NOSPC.
    let filler = create(&mut nfs, &root, "filler.bin", 0o644).await.unwrap();
    let chunk = vec![1u8; 256 * 1024];
    let mut refused = None;
    for i in 0..64u64 {
        if let Err(e) = write(&mut nfs, &filler, i * chunk.len() as u64, &chunk, stable_how::FILE_SYNC).await {
            refused = Some(e);
            break;
        }
    }
    assert_eq!(refused, Some(nfsstat3::NFS3ERR_NOSPC), "an 8 MiB volume refuses 16 MiB with NOSPC");

    // SMB, from the client through a public address: the upload fails with DISK_FULL.
    let src = c.root.path().join("upload.bin");
    std::fs::write(&src, vec![3u8; 2 << 20]).unwrap();
    let put = format!("put {} upload.bin", src.display());
    let out =
        c.topo.exec("c1", "smbclient", &[&format!("//{}/pub", VIPS[0]), "-p", "4445", "-N", "-m", "SMB3", "-c", &put]);
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(said.contains("NT_STATUS_DISK_FULL"), "smbclient put on a full volume:\n{said}");

    // The nodes' own write probes meet the full volume too (each rewrites a small file beside
    // the recovery lock, which a full volume may still fit: make them miss it until one says so).
    let t = Instant::now();
    loop {
        for e in std::fs::read_dir(vol.join("lock")).unwrap().flatten() {
            if e.file_name().to_string_lossy().starts_with(".health.") {
                let _ = std::fs::remove_file(e.path());
            }
        }
        fill(&vol.join("filler2.bin"));
        let seen = nasgw_tests::wait_for_opt(Duration::from_secs(3), Duration::from_millis(50), || {
            c.logs().contains("the volume is full").then_some(())
        });
        if seen.is_some() {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "no node's probe met the full volume\n{}", c.logs());
    }
    println!("a node's probe met the full volume {:.1} s in", t.elapsed().as_secs_f64());

    // Every node stays OK and every public address stays served, sampled over a few probe
    // rounds (the default probe interval is 1 s).
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(3) {
        for i in 0..3 {
            assert_eq!(c.state_seen(i, i), "OK", "node {i} on a full volume\n{}", c.logs());
        }
        assert!(c.holders().values().all(|n| n.len() == 1), "an address went unserved: {:?}", c.holders());
    }
    assert!(!c.logs().contains("to=UNHEALTHY"), "a full volume made a node UNHEALTHY\n{}", c.logs());

    // Nothing written before was lost; reads and listings work.
    let (h, a) = lookup(&mut nfs, &root, b"keep.bin").await.unwrap();
    assert_eq!(a.size, kept.len() as u64);
    let mut got = Vec::new();
    while got.len() < kept.len() {
        got.extend(read(&mut nfs, &h, got.len() as u64, 1 << 20).await.unwrap().0);
    }
    assert!(got == kept, "keep.bin changed on a full volume");

    // Space freed: writes work again, and the nodes say so.
    remove(&mut nfs, &root, "filler.bin").await.unwrap();
    std::fs::remove_file(vol.join("filler2.bin")).unwrap();
    let again = create(&mut nfs, &root, "after.bin", 0o644).await.unwrap();
    write(&mut nfs, &again, 0, &chunk, stable_how::FILE_SYNC).await.unwrap();
    nasgw_tests::wait_for("a node to see room again", Duration::from_secs(10), Duration::from_millis(50), || {
        c.logs().contains("the volume has room again").then_some(())
    });
    drop(nfs);
    let mut c = c;
    for d in c.daemons.iter_mut().filter_map(Option::take) {
        assert!(d.stop().success());
    }
    drop(mounted);
}
