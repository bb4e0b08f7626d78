//! A rename that must wait for another open's handle-lease break (issue 12): SET_INFO goes
//! async as CREATE does, so the connection keeps reading while it waits, the break's
//! acknowledgement included when it comes on the same connection. Real Python smbprotocol
//! clients (`tests/smb/cluster_client.py`) against one daemon on loopback: the rename is
//! answered after the acknowledgement, the open then carries its new name (a name query, and a
//! delete-on-close that removes the new name), and a CANCEL or a CLOSE of the handle ends the
//! wait with nothing renamed.

use std::path::Path;
use std::time::{Duration, Instant};

use nasgw_tests::cluster::SmbClient;
use nasgw_tests::{free_port, Daemon};
use serde_json::json;

/// Read, write and DELETE: the renaming handle.
const RW_DELETE: u32 = 0x0013_019F;
/// Generic read.
const READ: u32 = 0x0012_0089;
/// CreateDisposition FILE_OPEN.
const OPEN: u32 = 1;

/// One node on loopback serving `dir/data` over SMB (the seed's guest share `pub`).
fn start(dir: &Path) -> (Daemon, u16) {
    let smb = free_port();
    let config = format!(
        "[volume]\nname = \"smb\"\nbackend = \"local\"\npath = \"{{dir}}/data\"\n\n[nfs]\nenabled = false\n\n\
         [smb]\nlisten = \"127.0.0.1:{smb}\"\n\n\
         [[smb.share]]\nname = \"pub\"\nguest_ok = true\nguest_only = true\nwritable = true\nforce_user = \"root\"\n\n\
         [node]\ncontrol_socket = \"{{dir}}/ctl.sock\"\nstate_dir = \"{{dir}}/state\"\n"
    );
    (Daemon::start("rename", dir, &config, None), smb)
}

/// Client `a` holding `src` twice, through two RH leases: `h1` (may delete) and `h2` (reads).
/// A rename through `h1` must break `h2`'s lease to R and wait for the acknowledgement.
fn two_handle_leases(c: &mut SmbClient, smb: u16, src: &str) {
    c.ok(json!({"op": "connect", "c": "a", "host": "127.0.0.1", "port": smb}));
    let l1 = c.ok(json!({"op": "open", "c": "a", "h": "h1", "path": src, "access": RW_DELETE, "lease": "RH"}));
    assert_eq!(l1.v["lease"], "RH", "{}", l1.v);
    let l2 = c.ok(
        json!({"op": "open", "c": "a", "h": "h2", "path": src, "access": READ, "disposition": OPEN, "lease": "RH"}),
    );
    assert_eq!(l2.v["lease"], "RH", "{}", l2.v);
}

/// Waits for the one break the rename causes: `h2`'s lease, RH to R.
fn rename_break(c: &mut SmbClient) {
    let b = c.ok(json!({"op": "breaks", "c": "a", "n": 1, "timeout": 10}));
    let got = &b.v["breaks"][0];
    assert_eq!((got["from"].as_str(), got["to"].as_str()), (Some("RH"), Some("R")), "{}", b.v);
}

#[test]
fn a_rename_waiting_for_a_break_on_its_own_connection_finishes_after_the_ack() {
    let dir = tempfile::tempdir().unwrap();
    let (d, smb) = start(dir.path());
    let mut c = SmbClient::spawn_local();
    two_handle_leases(&mut c, smb, "src.txt");
    let started = Instant::now();
    let rename = c.start(json!({"op": "rename", "h": "h1", "to": "dst.txt", "replace": true}));
    rename_break(&mut c);
    // The connection still reads: a CREATE on it is answered while the rename waits, and the
    // target does not exist yet.
    let probe = json!({"op": "open", "c": "a", "h": "p", "path": "dst.txt", "access": READ, "disposition": OPEN});
    for _ in 0..3 {
        c.fails(probe.clone(), "STATUS_OBJECT_NAME_NOT_FOUND");
    }
    assert!(c.try_wait(rename, Duration::ZERO).is_none(), "the rename was answered before the acknowledgement");
    let acked = Instant::now();
    c.ok(json!({"op": "ack", "h": "h2", "state": "R"}));
    let r = c.wait(rename, Duration::from_secs(20));
    let after_ack = acked.elapsed();
    println!("rename answered {after_ack:?} after the acknowledgement ({:?} after it was sent)", started.elapsed());
    assert!(r.ok, "rename: {}", r.v);
    // The 35 s break timeout did not end the wait: the acknowledgement did.
    assert!(after_ack < Duration::from_secs(10), "answered {after_ack:?} after the acknowledgement");
    // The open follows its file: its name, and a delete-on-close removes the new name.
    assert_eq!(c.ok(json!({"op": "name", "h": "h1"})).s("name"), "\\dst.txt");
    c.ok(json!({"op": "open", "c": "a", "h": "p", "path": "dst.txt", "access": READ, "disposition": OPEN}));
    c.ok(json!({"op": "close", "h": "p"}));
    assert!(dir.path().join("data/dst.txt").exists() && !dir.path().join("data/src.txt").exists());
    // (The renaming open closes last: another open of the file keeps the path it was opened
    // by, and a last close through it would not find the file under it.)
    c.ok(json!({"op": "close", "h": "h2"}));
    c.ok(json!({"op": "delete", "h": "h1"}));
    c.ok(json!({"op": "close", "h": "h1"}));
    assert!(!dir.path().join("data/dst.txt").exists(), "delete-on-close removed the renamed file");
    assert!(!dir.path().join("data/src.txt").exists());
    drop(c);
    assert!(d.stop().success());
}

#[test]
fn a_cancel_or_a_close_ends_a_waiting_rename_with_nothing_renamed() {
    let dir = tempfile::tempdir().unwrap();
    let (d, smb) = start(dir.path());
    let mut c = SmbClient::spawn_local();
    two_handle_leases(&mut c, smb, "a.txt");
    let rename = c.start(json!({"op": "rename", "h": "h1", "to": "b.txt", "replace": true, "tag": "r1"}));
    rename_break(&mut c);
    let cancel = c.ok(json!({"op": "cancel", "tag": "r1"}));
    assert_eq!(cancel.v["async"], true, "the rename went async: {}", cancel.v);
    let r = c.wait(rename, Duration::from_secs(20));
    assert!(!r.ok && r.status == "STATUS_CANCELLED", "cancelled rename: {}", r.v);
    assert!(dir.path().join("data/a.txt").exists() && !dir.path().join("data/b.txt").exists());
    assert_eq!(c.ok(json!({"op": "name", "h": "h1"})).s("name"), "\\a.txt");
    // The break stays: acknowledged, the lease is R; a second rename needs no break now.
    c.ok(json!({"op": "ack", "h": "h2", "state": "R"}));
    c.ok(json!({"op": "rename", "h": "h1", "to": "b.txt", "replace": true}));
    assert!(dir.path().join("data/b.txt").exists() && !dir.path().join("data/a.txt").exists());
    c.ok(json!({"op": "close", "h": "h1"}));
    c.ok(json!({"op": "close", "h": "h2"}));

    // Closing the renaming handle ends its wait the same way.
    let mut c2 = SmbClient::spawn_local();
    c2.ok(json!({"op": "connect", "c": "a", "host": "127.0.0.1", "port": smb}));
    let l1 = c2.ok(json!({"op": "open", "c": "a", "h": "h1", "path": "b.txt", "access": RW_DELETE, "disposition": OPEN, "lease": "RH"}));
    assert_eq!(l1.v["lease"], "RH", "{}", l1.v);
    c2.ok(
        json!({"op": "open", "c": "a", "h": "h2", "path": "b.txt", "access": READ, "disposition": OPEN, "lease": "RH"}),
    );
    let rename = c2.start(json!({"op": "rename", "h": "h1", "to": "c.txt", "replace": true}));
    rename_break(&mut c2);
    c2.ok(json!({"op": "close", "h": "h1"}));
    let r = c2.wait(rename, Duration::from_secs(20));
    assert!(!r.ok && r.status == "STATUS_CANCELLED", "rename of a closed handle: {}", r.v);
    assert!(dir.path().join("data/b.txt").exists() && !dir.path().join("data/c.txt").exists());
    c2.ok(json!({"op": "close", "h": "h2"}));
    drop((c, c2));
    assert!(d.stop().success());
}

/// Another open of a renamed file deletes it under its new name: `h2` (DELETE access) set
/// delete-pending after `h1` renamed the file, and `h2`'s close is the last. A file made
/// under the old name meanwhile is not the one deleted (the binary before the fix looked the
/// old name up at that close: it deleted that other file and left the renamed one).
#[test]
fn the_last_close_of_another_open_deletes_a_renamed_file_under_its_new_name() {
    let dir = tempfile::tempdir().unwrap();
    let (d, smb) = start(dir.path());
    let data = dir.path().join("data");
    let mut c = SmbClient::spawn_local();
    c.ok(json!({"op": "connect", "c": "a", "host": "127.0.0.1", "port": smb}));
    c.ok(json!({"op": "open", "c": "a", "h": "h1", "path": "old.txt", "access": RW_DELETE}));
    c.ok(json!({"op": "open", "c": "a", "h": "h2", "path": "old.txt", "access": RW_DELETE, "disposition": OPEN}));
    c.ok(json!({"op": "rename", "h": "h1", "to": "new.txt"}));
    c.ok(json!({"op": "open", "c": "a", "h": "h3", "path": "old.txt", "access": RW_DELETE}));
    c.ok(json!({"op": "close", "h": "h3"}));
    c.ok(json!({"op": "delete", "h": "h2"}));
    c.ok(json!({"op": "close", "h": "h1"}));
    assert!(data.join("new.txt").exists(), "delete-pending until the last close");
    c.ok(json!({"op": "close", "h": "h2"}));
    assert!(!data.join("new.txt").exists(), "the renamed file was deleted at its last close");
    assert!(data.join("old.txt").exists(), "the file made under the old name stays");
    drop(c);
    assert!(d.stop().success());
}
