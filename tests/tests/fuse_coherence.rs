//! The node's own mount in the cluster's file-sharing state (issue 19, item 4), against real
//! SMB clients (Python smbprotocol through `tests/smb/cluster_client.py`) and local processes,
//! each both ways: share modes refuse local opens (EACCES) and local opens refuse SMB opens
//! (SHARING_VIOLATION); a local open for writing breaks an SMB lease before it returns; an SMB
//! write is seen at once by a local reader, even through a descriptor opened before it and
//! with the kernel's page cache in use (passthrough off); names an SMB client removes are gone
//! from the mount at once.

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use nasgw_tests::cluster::SmbClient;
use nasgw_tests::{free_port, hex, Daemon, Unmount};
use serde_json::json;

const READ: u32 = 0x0012_0089;
const SHARE_READ: u32 = 1;
const SHARE_ALL: u32 = 7;

/// One node on loopback serving `dir/data` over SMB (guest share `pub`, writing as root) with
/// its mount at `dir/mnt`.
fn start(dir: &Path, passthrough: bool) -> (Daemon, u16, Unmount) {
    let smb = free_port();
    std::fs::create_dir_all(dir.join("mnt")).unwrap();
    let config = format!(
        "[volume]\nname = \"smb\"\nbackend = \"local\"\npath = \"{{dir}}/data\"\n\n[nfs]\nlisten = \"127.0.0.1:{}\"\n\n[smb]\nlisten = \"127.0.0.1:{smb}\"\n\n[[smb.share]]\nname = \"pub\"\nguest_ok = true\nguest_only = true\nwritable = true\nforce_user = \"root\"\n\n[fuse]\nmountpoint = \"{{dir}}/mnt\"\npassthrough = {passthrough}\n\n[node]\ncontrol_socket = \"{{dir}}/ctl.sock\"\nstate_dir = \"{{dir}}/state\"\n",
        free_port()
    );
    let d = Daemon::start("fuse", dir, &config, None);
    (d, smb, Unmount(dir.join("mnt")))
}

/// An SMB open right after a local `close(2)`: the kernel sends FUSE RELEASE after close
/// returns, so the local open may still be in the cluster for a moment; the open is retried
/// while it meets SHARING_VIOLATION (what a Windows client retries on too), and the wait printed.
fn open_after_local_close(c: &mut SmbClient, req: serde_json::Value) {
    let start = Instant::now();
    loop {
        let r = c.call(req.clone());
        if r.ok {
            println!("SMB open after the local close: {:?}", start.elapsed());
            return;
        }
        assert!(
            r.status == "STATUS_SHARING_VIOLATION" && start.elapsed() < Duration::from_secs(10),
            "{req} failed {:?} after the local close: {}",
            start.elapsed(),
            r.v
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn errno_of(r: std::io::Result<impl Sized>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

#[test]
fn share_modes_and_lease_breaks_hold_between_local_programs_and_smb_clients() {
    assert!(nasgw_tests::is_root(), "mounting needs root");
    let dir = tempfile::tempdir().unwrap();
    let (d, smb, _unmount) = start(dir.path(), true);
    let mnt = dir.path().join("mnt");
    let f = mnt.join("f.txt");
    std::fs::write(&f, b"0123456789").unwrap();
    let mut c = SmbClient::spawn_local();
    c.ok(json!({"op": "connect", "c": "a", "host": "127.0.0.1", "port": smb}));

    // SMB first: an open that denies write and delete refuses the local open for writing, a
    // truncate, an unlink and a rename (EACCES); reading is shared.
    open_after_local_close(
        &mut c,
        json!({"op": "open", "c": "a", "h": "r", "path": "f.txt", "access": READ, "share": SHARE_READ}),
    );
    assert_eq!(errno_of(OpenOptions::new().write(true).open(&f)), libc::EACCES, "open for writing");
    assert_eq!(errno_of(OpenOptions::new().read(true).write(true).open(&f)), libc::EACCES, "open O_RDWR");
    let cpath = std::ffi::CString::new(f.to_str().unwrap()).unwrap();
    // SAFETY: truncate with a valid path.
    let t = unsafe { libc::truncate(cpath.as_ptr(), 0) };
    assert_eq!((t, std::io::Error::last_os_error().raw_os_error()), (-1, Some(libc::EACCES)), "truncate");
    assert_eq!(errno_of(std::fs::remove_file(&f)), libc::EACCES, "unlink");
    assert_eq!(errno_of(std::fs::rename(&f, mnt.join("g.txt"))), libc::EACCES, "rename");
    assert_eq!(std::fs::read(&f).unwrap(), b"0123456789", "reading is shared");
    c.ok(json!({"op": "close", "h": "r"}));

    // Local first: a local open for writing refuses an SMB open that denies write.
    let w = OpenOptions::new().write(true).open(&f).unwrap();
    c.fails(
        json!({"op": "open", "c": "a", "h": "r", "path": "f.txt", "access": READ, "share": SHARE_READ}),
        "STATUS_SHARING_VIOLATION",
    );
    c.ok(json!({"op": "open", "c": "a", "h": "r", "path": "f.txt", "access": READ, "share": SHARE_ALL}));
    c.ok(json!({"op": "close", "h": "r"}));
    drop(w);
    open_after_local_close(
        &mut c,
        json!({"op": "open", "c": "a", "h": "r", "path": "f.txt", "access": READ, "share": SHARE_READ}),
    );
    c.ok(json!({"op": "close", "h": "r"}));

    // A local open for writing breaks an RWH lease and returns only after the client's
    // acknowledgement (its cached write is on the volume by then); its own writes bypass
    // nasgw, so the client's read caching goes too.
    let r = c.ok(json!({"op": "open", "c": "a", "h": "la", "path": "f.txt", "lease": "RWH", "share": SHARE_ALL}));
    assert_eq!(r.s("lease"), "RHW", "the client's lease: {}", r.v);
    c.ok(json!({"op": "write", "h": "la", "off": 0, "data": hex(b"cached")}));
    let path = f.clone();
    let opener = std::thread::spawn(move || {
        let r = OpenOptions::new().write(true).open(&path);
        (Instant::now(), r)
    });
    let b = c.ok(json!({"op": "breaks", "c": "a", "n": 1, "timeout": 10}));
    let brk = b.v["breaks"][0].clone();
    assert_eq!((brk["kind"].as_str(), brk["from"].as_str()), (Some("lease"), Some("RHW")), "{}", b.v);
    let to = brk["to"].as_str().unwrap().to_string();
    assert!(!to.contains('W'), "broken to {to}");
    std::thread::sleep(Duration::from_millis(200)); // the open cannot finish before the ack
    assert!(!opener.is_finished(), "the local open returned before the client acknowledged the break");
    let acked = Instant::now();
    c.ok(json!({"op": "ack", "h": "la", "state": to}));
    let (opened, r) = opener.join().unwrap();
    let w = r.expect("the local open after the acknowledgement");
    println!("local open for writing completed {:?} after the lease break acknowledgement", opened - acked);
    let b = c.ok(json!({"op": "breaks", "c": "a", "n": 2, "timeout": 10}));
    let second = b.v["breaks"][1]["to"].as_str().unwrap_or("?").to_string();
    assert!(!second.contains('R'), "the client's read caching was not broken: {}", b.v);
    w.write_all_at(b"LOCAL", 0).unwrap();
    drop(w);
    assert_eq!(c.ok(json!({"op": "read", "h": "la", "off": 0, "len": 6})).s("data"), hex(b"LOCALd"));
    c.ok(json!({"op": "close", "h": "la"}));
    assert!(d.stop().success());
}

/// The kernel's view of `f` through a descriptor opened earlier and through a fresh open.
fn seen(held: &File, f: &Path, len: usize) -> (Vec<u8>, Vec<u8>) {
    let mut a = vec![0u8; len];
    let n = held.read_at(&mut a, 0).unwrap();
    a.truncate(n);
    (a, std::fs::read(f).unwrap())
}

#[test]
fn smb_writes_and_removals_reach_the_mount_at_once() {
    assert!(nasgw_tests::is_root(), "mounting needs root");
    let dir = tempfile::tempdir().unwrap();
    // Passthrough off: reads go through the kernel's page cache of the mount.
    let (d, smb, _unmount) = start(dir.path(), false);
    let mnt = dir.path().join("mnt");
    let f = mnt.join("g.txt");
    std::fs::write(&f, b"AAAAAAAAAA").unwrap();
    let held = File::open(&f).unwrap();
    assert_eq!(seen(&held, &f, 64).0, b"AAAAAAAAAA");
    let mut c = SmbClient::spawn_local();
    c.ok(json!({"op": "connect", "c": "a", "host": "127.0.0.1", "port": smb}));
    c.ok(json!({"op": "open", "c": "a", "h": "g", "path": "g.txt", "share": SHARE_ALL}));
    // Every acknowledged SMB write is what the next local read returns, with no wait.
    let mut expect = b"AAAAAAAAAA".to_vec();
    for i in 0..20u8 {
        let data = [b'a' + i; 5];
        c.ok(json!({"op": "write", "h": "g", "off": i as u64, "data": hex(&data)}));
        let end = expect.len().max(i as usize + 5);
        expect.resize(end, 0);
        expect[i as usize..i as usize + 5].copy_from_slice(&data);
        let (a, b) = seen(&held, &f, 64);
        assert_eq!(a, expect, "write {i}: a descriptor opened before it read stale data");
        assert_eq!(b, expect, "write {i}: a fresh open read stale data");
        assert_eq!(std::fs::metadata(&f).unwrap().len(), expect.len() as u64, "write {i}: stale size");
    }
    c.ok(json!({"op": "close", "h": "g"}));
    // A name removed through SMB is gone from the mount at once (the kernel had it cached).
    std::fs::write(mnt.join("gone.txt"), b"x").unwrap();
    assert!(mnt.join("gone.txt").exists());
    c.ok(json!({"op": "open", "c": "a", "h": "x", "path": "gone.txt", "access": 0x0011_0080, "share": SHARE_ALL}));
    c.ok(json!({"op": "delete", "h": "x"}));
    c.ok(json!({"op": "close", "h": "x"}));
    assert!(!mnt.join("gone.txt").exists(), "a name removed through SMB is still seen on the mount");
    assert_eq!(std::fs::metadata(mnt.join("gone.txt")).unwrap_err().kind(), ErrorKind::NotFound);
    drop(held);
    assert!(d.stop().success());
}
