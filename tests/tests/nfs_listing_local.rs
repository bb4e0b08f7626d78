//! READDIRPLUS of a local volume answered from remembered attributes (a fanotify mark on the
//! volume's file system keeps them current) shows every change a plain local process made just
//! before, at once: no wait between the change and the listing. First a directory is listed
//! until its listing and its entries' attributes are remembered; then size (append, truncate),
//! mode, mtime, a hard link made in another directory (nlink, ctime) and a write through nasgw
//! itself, with no change of the directory's entries; then a rename and a file replaced by a
//! rename over it. After each step every listed attribute (atime aside) equals `lstat`'s.

mod nfs_common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use nasgw_tests::wait_for;
use nfs3_types::nfs3::{fattr3, nfs_fh3, stable_how};
use nfs_common::*;

/// Every entry of `dir` with its attributes and handle, by READDIRPLUS in small pages.
async fn listing(c: &mut Conn, dir: &nfs_fh3) -> Vec<(String, fattr3, nfs_fh3)> {
    let entries = readdirplus_all(c, dir, 1024, 2048).await;
    entries.into_iter().map(|(n, a, fh)| (String::from_utf8(n).unwrap(), a, fh)).collect()
}

/// Lists `dir` through nasgw and checks each entry's attributes against the file system's.
async fn listed_as_on_disk(c: &mut Conn, fh: &nfs_fh3, dir: &Path, what: &str) -> Vec<(String, fattr3, nfs_fh3)> {
    let listed = listing(c, fh).await;
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    let mut got: Vec<String> = listed.iter().map(|e| e.0.clone()).collect();
    got.sort();
    assert_eq!(got, names, "{what}: the names");
    for (name, a, _) in &listed {
        let m = std::fs::symlink_metadata(dir.join(name)).unwrap();
        let seen = (a.size, a.mode, a.nlink, a.uid, a.gid, a.fileid, a.mtime.seconds, a.mtime.nseconds);
        let disk = (
            m.size(),
            m.mode() & 0o7777,
            m.nlink() as u32,
            m.uid(),
            m.gid(),
            m.ino(),
            m.mtime() as u32,
            m.mtime_nsec() as u32,
        );
        assert_eq!(seen, disk, "{what}: {name} (size, mode, nlink, uid, gid, fileid, mtime)");
        assert_eq!(
            (a.ctime.seconds, a.ctime.nseconds),
            (m.ctime() as u32, m.ctime_nsec() as u32),
            "{what}: {name} ctime"
        );
    }
    listed
}

fn sh(dir: &Path, script: &str) {
    let out = Command::new("sh").arg("-ec").arg(script).current_dir(dir).output().unwrap();
    ok(&out, script);
}

#[tokio::test(flavor = "current_thread")]
async fn a_listing_shows_local_changes_at_once() {
    let s = Server::start("listattr", "root_squash = false");
    let data = s.data();
    let dir = data.join("d");
    std::fs::create_dir_all(data.join("elsewhere")).unwrap();
    std::fs::create_dir(&dir).unwrap();
    for i in 0..40 {
        std::fs::write(dir.join(format!("f{i:02}")), format!("file {i}")).unwrap();
    }
    // Only a directory unchanged for a second has its listing remembered (its ctime must be
    // older than the clock's tick could share): poll the clock until then.
    let ctime = std::fs::metadata(&dir).unwrap().ctime();
    wait_for("the directory to settle", Duration::from_secs(5), Duration::from_millis(50), || {
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64;
        (now >= ctime + 2).then_some(())
    });
    let mut c = mount(s.port, 0, 0).await;
    let root = c.root_nfs_fh3();
    let (d, _) = lookup(&mut c, &root, b"d").await.expect("lookup d");
    // Listed thrice: entries read, then remembered with their attributes, then answered from
    // memory.
    let mut listed = Vec::new();
    for n in 0..3 {
        listed = listed_as_on_disk(&mut c, &d, &dir, &format!("listing {n}")).await;
    }
    assert!(s.logs().contains("watched=true"), "the file system's events are followed: {}", s.logs());

    // Attributes only: the directory's entries stay as they are.
    sh(&dir, "printf more >> f01; truncate -s 2 f02; chmod 600 f03; touch -d '2001-02-03 04:05:06' f04; ln f05 ../elsewhere/link");
    listed_as_on_disk(&mut c, &d, &dir, "size, mode, mtime and a link made elsewhere").await;
    let f06 = &listed.iter().find(|e| e.0 == "f06").unwrap().2;
    write(&mut c, f06, 0, b"written through nasgw", stable_how::FILE_SYNC).await.expect("write");
    listed_as_on_disk(&mut c, &d, &dir, "a write through nasgw").await;
    sh(&dir, "rm ../elsewhere/link; printf again >> f07");
    listed_as_on_disk(&mut c, &d, &dir, "the link removed, another append").await;

    // Names: one renamed, one replaced by a rename over it.
    sh(&dir, "mv f08 renamed; printf new > new.tmp; mv new.tmp f09");
    listed_as_on_disk(&mut c, &d, &dir, "a rename and a replacement").await;
    listed_as_on_disk(&mut c, &d, &dir, "listed again").await;
}
