//! The GlusterFS harness itself: three glusterd with private state in namespaces form a replica 3
//! volume; a file written through one node's FUSE mount is read byte-identical through another's.

use std::time::Instant;

use nasgw_tests::gluster::{is_glusterfs_mount, GlusterCluster, GlusterSpec};

#[test]
fn replica3_cluster_serves_the_same_bytes_on_every_node() {
    let cluster = GlusterCluster::start(GlusterSpec::default());
    let info = cluster.gluster_ok(1, &["volume", "info", "smb"]);
    assert!(info.contains("Number of Bricks: 1 x 3 = 3") && info.contains("network.ping-timeout: 5"), "{info}");
    let m1 = cluster.mount("n1", &cluster.dir().join("m1"));
    let m2 = cluster.mount("n2", &cluster.dir().join("m2"));
    assert!(is_glusterfs_mount(&m1) && is_glusterfs_mount(&m2));
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    std::fs::write(m1.join("f.bin"), &data).unwrap();
    assert_eq!(std::fs::read(m2.join("f.bin")).unwrap(), data);
    // Every brick holds a full copy (replica 3), with the same GFID.
    let gfid = |n: usize| xattr(&cluster.nodes[n].brick.join("f.bin"), "trusted.gfid");
    assert_eq!(gfid(0).len(), 16);
    assert!(gfid(0) == gfid(1) && gfid(1) == gfid(2));
    let t = Instant::now();
    cluster.teardown();
    eprintln!("teardown {:.1} s", t.elapsed().as_secs_f64());
    assert!(!is_glusterfs_mount(&m1));
}

fn xattr(path: &std::path::Path, name: &str) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: valid NUL-terminated strings and a buffer of the stated length.
    let len = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(len >= 0, "getxattr {name} on {}: {}", path.display(), std::io::Error::last_os_error());
    buf.truncate(len as usize);
    buf
}
