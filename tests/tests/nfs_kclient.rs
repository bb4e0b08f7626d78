//! Special files through the Linux kernel NFSv3 client (kclient VM): a fifo with a writer and a
//! reader, a Unix socket bound on the mount with a client, `mknod c`/`b` as root, `ls -l` and
//! `stat` showing types and device numbers, a squashed root refused devices (EPERM) but allowed
//! fifos; then the files on the volume checked from the host.

mod nfs_common;

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::time::Duration;

use nasgw_tests::kclient;
use nfs_common::Server;

fn script(name: &str) -> std::path::PathBuf {
    nasgw_tests::workspace_root().join("tests/kclient").join(name)
}

#[test]
fn special_files_through_the_linux_nfs_client() {
    let srv = Server::start("special", "root_squash = false");
    let squash = Server::start("squashed", "root_squash = true");
    let open = squash.data().join("open");
    std::fs::create_dir_all(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let uds = kclient::static_binary(&script("uds.rs"), &tmp.path().join("uds"));

    let run = kclient::run_guest_with_files(
        "tests/kclient/special-files.sh",
        &[("KC_PORT", srv.port.to_string()), ("KC_SQUASH_PORT", squash.port.to_string())],
        &[&uds],
        Duration::from_secs(300),
    );
    let (stdout, stderr) = (&run.stdout, &run.stderr);
    println!("{stdout}\n--- stderr ---\n{stderr}\nVM run took {:.1?}", run.elapsed);
    let failed: Vec<&str> = stdout.lines().filter(|l| l.starts_with("CHECK ") && !l.ends_with(" ok")).collect();
    let passed = stdout.lines().filter(|l| l.starts_with("CHECK ") && l.ends_with(" ok")).count();
    assert!(
        run.ok() && failed.is_empty() && passed == 22,
        "guest checks failed ({:?}): {failed:?} ({passed} passed)\n{}\n{}",
        run.code,
        srv.logs(),
        squash.logs()
    );

    // On the volume: what the kernel client made through nasgw is what the host sees.
    let k = srv.data().join("k");
    let fifo = std::fs::symlink_metadata(k.join("kept-fifo")).unwrap();
    assert!(fifo.file_type().is_fifo());
    assert_eq!(fifo.mode() & 0o7777, 0o604);
    let null = std::fs::symlink_metadata(k.join("kept-null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!((null.rdev(), null.mode() & 0o7777, null.uid()), (libc::makedev(1, 3), 0o600, 0));
    let mut left: Vec<String> =
        std::fs::read_dir(&k).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    left.sort();
    assert_eq!(left, ["kept-fifo", "kept-null"], "everything else was renamed, linked and removed");
    let sq = std::fs::symlink_metadata(open.join("fifo")).unwrap();
    assert!(sq.file_type().is_fifo());
    assert_eq!(sq.uid(), 65534, "a squashed root's fifo belongs to the anonymous user");
    assert!(!open.join("dev").exists(), "no device was made for a squashed root");
    for s in [&srv, &squash] {
        assert!(!s.logs().contains("panicked"), "{}", s.logs());
    }
}
