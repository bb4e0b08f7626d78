//! The Linux kernel NFSv3 client (kclient VM) on nasgw:
//! - special files: a fifo with a writer and a reader, a Unix socket bound on the mount with a
//!   client, `mknod c`/`b` as root, `ls -l` and `stat` showing types and device numbers, a
//!   squashed root refused devices (EPERM) but allowed fifos; then the files on the volume
//!   checked from the host;
//! - large files on the READ path that splices the server's page cache to the socket: a 128 MiB
//!   random file written with 1 MiB WRITEs, read back through fresh client caches with 1 MiB
//!   READs (and its first 32 MiB with 4 KiB READs) and with `O_DIRECT` READs at odd offsets,
//!   checked in the guest and on the volume;
//! - `O_DIRECT` reads of a file the host truncates and rewrites meanwhile through NFS (another
//!   client), with `[nfs] zero_copy_reads = false`: short reads and end of file, never a hang,
//!   never a wrong byte; (ignored: documents the default) with zero-copy READs, the only wrong
//!   bytes are zeros, where a truncate overtook a reply in the socket's queue (README, NFS, "A
//!   READ racing a truncate").

mod nfs_common;

#[path = "../kclient/pattern.rs"]
mod pattern;

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use nasgw_tests::kclient;
use nfs3_types::nfs3::{sattr3, stable_how, Nfs3Option, Nfs3Result, SETATTR3args};
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

/// Size of the large file (MiB): large enough for many 1 MiB READs and a pool's worth of pipes,
/// small enough for the VM's ~20 MB/s under TCG.
const LARGE_MB: u64 = 128;
/// Size of the file the host truncates while the guest reads it.
const RACE_BYTES: u64 = 8 << 20;
/// How long the guest reads it.
const RACE_SECS: u64 = 10;

/// `len` bytes of the pattern from `from` on.
fn pattern_bytes(from: u64, len: u64) -> Vec<u8> {
    (from..from + len).map(pattern::pattern_byte).collect()
}

/// What the host's truncating client did.
#[derive(Debug, Default)]
struct Truncations {
    /// Truncate-and-rewrite cycles completed.
    cycles: u64,
    /// The shortest size it left the file at.
    shortest: u64,
}

/// Waits for the guest's `race-go` on the volume, then truncates `race` to odd sizes and writes
/// the pattern back through NFS (1 MiB WRITEs, another client than the guest) until `race-done`
/// or `give_up`. Each state is held for some milliseconds so the guest's reads meet both.
fn truncate_while_the_guest_reads(port: u16, data: &Path, give_up: Instant) -> Truncations {
    let (go, done) = (data.join("race-go"), data.join("race-done"));
    while !go.exists() {
        if done.exists() || Instant::now() > give_up {
            return Truncations::default();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let whole = pattern_bytes(0, RACE_BYTES);
    rt.block_on(async move {
        let mut conn = nfs_common::mount(port, 0, 0).await;
        let root = conn.root_nfs_fh3();
        let (fh, _) = nfs_common::lookup(&mut conn, &root, b"race").await.expect("lookup race");
        let mut t = Truncations { cycles: 0, shortest: RACE_BYTES };
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        while !done.exists() && Instant::now() < give_up {
            // xorshift: an odd size anywhere in the file (mid-page: the page it ends in is
            // zeroed past it by the truncate), now and then empty.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let size = if x % 16 == 0 { 0 } else { (x % RACE_BYTES) | 1 };
            let attrs = sattr3 { size: Nfs3Option::Some(size), ..Default::default() };
            let args = SETATTR3args { object: fh.clone(), new_attributes: attrs, guard: Nfs3Option::None };
            match conn.setattr(&args).await.expect("rpc") {
                Nfs3Result::Ok(_) => {}
                Nfs3Result::Err((s, _)) => panic!("SETATTR size {size}: {s:?}"),
            }
            t.shortest = t.shortest.min(size);
            // Pacing, not waiting for anything: the guest's reads see the short file.
            tokio::time::sleep(Duration::from_millis(5 + x % 20)).await;
            let mut at = size;
            while at < RACE_BYTES {
                let n = (RACE_BYTES - at).min(1 << 20);
                nfs_common::write(&mut conn, &fh, at, &whole[at as usize..(at + n) as usize], stable_how::UNSTABLE)
                    .await
                    .expect("WRITE");
                at += n;
            }
            t.cycles += 1;
            tokio::time::sleep(Duration::from_millis(5 + (x >> 8) % 20)).await;
        }
        t
    })
}

fn sha256_of(path: &Path) -> String {
    let out = nasgw_tests::run("sha256sum", &[path.to_str().unwrap()]);
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or_default().to_string()
}

/// The value of `key=N` in `line`.
fn count(line: &str, key: &str) -> u64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

/// One kclient run of `tests/kclient/large-io.sh` on a fresh server with `nfs_extra` in `[nfs]`:
/// a `large_mb` MiB file, then `race_secs` of reads racing the host's truncates, accepting
/// `allow` wrong bytes (`nothing` or `zeros`); asserts the guest's `checks` all passed.
fn large_io(
    nfs_extra: &str,
    large_mb: u64,
    race_secs: u64,
    allow: &str,
    checks: usize,
) -> (Server, String, Truncations) {
    let srv = Server::start("large", &format!("root_squash = false\n{nfs_extra}"));
    let data = srv.data();
    std::fs::write(data.join("race"), pattern_bytes(0, RACE_BYTES)).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let checker = kclient::static_binary(&script("pattern.rs"), &tmp.path().join("pattern"));

    let port = srv.port;
    let d = data.clone();
    let give_up = Instant::now() + Duration::from_secs(480);
    let truncater = std::thread::spawn(move || truncate_while_the_guest_reads(port, &d, give_up));
    let run = kclient::run_guest_with_files(
        "tests/kclient/large-io.sh",
        &[
            ("KC_PORT", srv.port.to_string()),
            ("KC_MB", large_mb.to_string()),
            ("KC_RACE_SECS", race_secs.to_string()),
            ("KC_RACE_BYTES", RACE_BYTES.to_string()),
            ("KC_RACE_ALLOW", allow.to_string()),
        ],
        &[&checker],
        Duration::from_secs(420),
    );
    // The guest has ended: a truncater still waiting for a "race-done" it never wrote stops.
    std::fs::write(data.join("race-done"), b"").unwrap();
    let truncated = truncater.join().expect("the truncating client");
    let (stdout, stderr) = (&run.stdout, &run.stderr);
    println!("{stdout}\n--- stderr ---\n{stderr}\nVM run took {:.1?}; host truncations: {truncated:?}", run.elapsed);

    let failed: Vec<&str> = stdout.lines().filter(|l| l.starts_with("CHECK ") && !l.ends_with(" ok")).collect();
    let passed = stdout.lines().filter(|l| l.starts_with("CHECK ") && l.ends_with(" ok")).count();
    assert!(
        run.ok() && failed.is_empty() && passed == checks,
        "guest checks failed ({:?}): {failed:?} ({passed} passed)\n{}",
        run.code,
        srv.logs()
    );
    assert!(!srv.logs().contains("panicked"), "{}", srv.logs());
    (srv, run.stdout, truncated)
}

#[test]
fn large_files_through_the_linux_nfs_client() {
    let (srv, stdout, _) = large_io("", LARGE_MB, 0, "nothing", 13);
    // What the guest wrote is on the volume, byte for byte.
    let written = stdout.lines().find_map(|l| l.strip_prefix("SHA256 ")).expect("the guest's SHA256 line");
    let big = srv.data().join("big");
    assert_eq!(std::fs::metadata(&big).unwrap().len(), LARGE_MB << 20);
    assert_eq!(sha256_of(&big), written.trim(), "the file on the volume is what the guest wrote");
}

/// The checker's `PATTERN` line, after the checks every racing run must pass: the host
/// truncated the file several times, reads met it short, nothing failed, and the file ends whole.
fn raced(srv: &Server, stdout: &str, truncated: &Truncations) -> String {
    let line = stdout.lines().find(|l| l.starts_with("PATTERN ")).expect("the checker's PATTERN line");
    println!("{line}; {} truncations", truncated.cycles);
    assert!(truncated.cycles >= 3, "the host truncated the file only {} times", truncated.cycles);
    assert_eq!(count(line, "errors"), 0, "{line}");
    assert!(count(line, "passes") >= 5, "{line}");
    assert!(count(line, "cut") >= 1, "no read met a truncated file: {line}");
    // The last cycle wrote the pattern back in full.
    assert!(std::fs::read(srv.data().join("race")).unwrap() == pattern_bytes(0, RACE_BYTES), "race file ends whole");
    line.to_string()
}

/// With `zero_copy_reads = false` every READ reply carries a copy of the data: a read racing a
/// truncate gets old data or a short read, never a wrong byte.
#[test]
fn reads_racing_a_truncate_through_the_linux_nfs_client() {
    let (srv, stdout, truncated) = large_io("zero_copy_reads = false", 0, RACE_SECS, "nothing", 7);
    let line = raced(&srv, &stdout, &truncated);
    assert_eq!(count(line.as_str(), "garbage"), 0, "{line}");
}

/// The default, zero-copy READs (README, NFS, "A READ racing a truncate"): a truncate zeroes
/// in place the page-cache pages of a reply already spliced into the pipe or the socket's
/// queue, so a racing reader may get zeros where the reply promised data (none when the race
/// is not met: the count is printed, not required); any other wrong byte fails.
#[test]
#[ignore = "documents the default (README, NFS): zero-copy READs racing a truncate may carry zeros"]
fn reads_racing_a_truncate_with_zero_copy_replies() {
    let (srv, stdout, truncated) = large_io("", 0, RACE_SECS, "zeros", 7);
    let line = raced(&srv, &stdout, &truncated);
    assert_eq!(count(&line, "garbage"), count(&line, "zeros"), "only zeros: {line}");
}
