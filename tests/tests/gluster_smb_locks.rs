//! SMB byte-range locks are also locks on the GlusterFS volume (issue 12 item 3, Samba's
//! `posix locking = yes`): on a real replica 3 volume, an exclusive SMB lock taken through a
//! nasgw node on libgfapi stops an fcntl lock of a plain GlusterFS FUSE client of the same
//! volume, and the reverse: the FUSE client's lock makes the SMB lock fail with
//! LOCK_NOT_GRANTED. Locks outside the range, unlocks and closes are seen too.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::time::Duration;

use nasgw_tests::gluster::{GlusterCluster, GlusterSpec};
use nasgw_tests::smb_locker::SmbLocker;
use nasgw_tests::{wait_for, Daemon};

/// A classic POSIX lock of this (test) process on `f`: `Ok` or the errno.
fn fcntl_lock(f: &File, kind: i32, start: i64, len: i64) -> Result<(), i32> {
    // SAFETY: a zeroed flock is valid; the descriptor is open.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    fl.l_start = start;
    fl.l_len = len;
    // SAFETY: as above.
    let r = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETLK, &fl) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }
}

fn config(cluster: &GlusterCluster) -> String {
    format!(
        "{}[smb]\nlisten = \"127.0.0.1:4445\"\n[[smb.share]]\nname = \"pub\"\nwritable = true\nguest_ok = true\n\
         guest_only = true\nforce_user = \"root\"\n[node]\ncontrol_socket = \"{{dir}}/ctl.sock\"\n\
         state_dir = \"{{dir}}/state\"\n",
        cluster.nasgw_volume_toml(1, "gfapi")
    )
}

#[test]
fn smb_locks_through_a_gfapi_node_and_fcntl_locks_of_a_fuse_client_exclude_each_other() {
    let cluster = GlusterCluster::start(GlusterSpec::default());
    let mnt = cluster.mount("n1", &cluster.dir().join("fuse"));
    std::fs::write(mnt.join("shared.dat"), vec![7u8; 4096]).unwrap();
    let ns2 = cluster.topo().ns("n2").to_string();
    let node = Daemon::start("n2", &cluster.dir().join("d2"), &config(&cluster), Some(&ns2));
    node.wait_ok(Duration::from_secs(60));

    let f = std::fs::OpenOptions::new().read(true).write(true).open(mnt.join("shared.dat")).unwrap();
    let mut smb = SmbLocker::open(&ns2, "127.0.0.1", 4445, "pub", "shared.dat");

    // SMB first: the FUSE client cannot lock inside the range, can outside it.
    assert_eq!(smb.cmd("lock 0 100"), "granted");
    assert_eq!(fcntl_lock(&f, libc::F_WRLCK, 50, 10), Err(libc::EAGAIN), "the SMB lock is on the volume");
    assert_eq!(fcntl_lock(&f, libc::F_RDLCK, 10, 1), Err(libc::EAGAIN), "an exclusive SMB lock stops readers too");
    assert_eq!(fcntl_lock(&f, libc::F_WRLCK, 200, 10), Ok(()), "outside the range is free");
    assert_eq!(fcntl_lock(&f, libc::F_UNLCK, 200, 10), Ok(()));
    // The SMB unlock reaches the volume.
    assert_eq!(smb.cmd("unlock 0 100"), "unlocked");
    wait_for("the FUSE client's lock after the SMB unlock", Duration::from_secs(10), Duration::from_millis(50), || {
        fcntl_lock(&f, libc::F_WRLCK, 50, 10).ok()
    });

    // The FUSE client first: the SMB lock is refused, then granted once the FUSE lock goes.
    let answer = smb.cmd("lock 40 30");
    assert!(answer.starts_with("denied"), "an SMB lock over the FUSE client's lock: {answer}");
    assert_eq!(smb.cmd("lock 0 40"), "granted", "next to it is free");
    assert_eq!(fcntl_lock(&f, libc::F_UNLCK, 50, 10), Ok(()));
    assert_eq!(smb.cmd("lock 40 30"), "granted");
    assert_eq!(fcntl_lock(&f, libc::F_WRLCK, 60, 1), Err(libc::EAGAIN));

    // Closing the SMB open releases what it held on the volume.
    drop(smb);
    wait_for("the FUSE client's lock after the SMB close", Duration::from_secs(10), Duration::from_millis(50), || {
        fcntl_lock(&f, libc::F_WRLCK, 0, 100).ok()
    });
    let _ = fcntl_lock(&f, libc::F_UNLCK, 0, 0);
    drop(f);
    node.stop();
}
