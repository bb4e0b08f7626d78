//! The node's own FUSE mount (`[fuse] mountpoint`): a local program sees the volume through
//! nasgw, with the volume's inode numbers, its caller's permissions, passthrough on and off,
//! pjdfstest on the mount against the backing directory, a crash's stale mount replaced at the
//! next start, and `nasgw check` placing a bad mount point at its line.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use nasgw_tests::pjdfstest::{self, Outcome};
use nasgw_tests::posix_lock::{fcntl, flock};
use nasgw_tests::{free_port, nasgw_bin, wait_for, Daemon, Unmount};

fn config(passthrough: bool) -> String {
    config_on(passthrough, free_port())
}

fn config_on(passthrough: bool, smb: u16) -> String {
    format!(
        "[volume]\nname = \"smb\"\nbackend = \"local\"\npath = \"{{dir}}/data\"\n\n[nfs]\nlisten = \"127.0.0.1:{}\"\n\n[smb]\nlisten = \"127.0.0.1:{}\"\n\n[[smb.share]]\nname = \"pub\"\nguest_ok = true\nwritable = true\n\n[fuse]\nmountpoint = \"{{dir}}/mnt\"\npassthrough = {passthrough}\n\n[node]\ncontrol_socket = \"{{dir}}/ctl.sock\"\nstate_dir = \"{{dir}}/state\"\n",
        free_port(),
        smb
    )
}

/// Starts nasgw with its mount at `dir/mnt` (made first: the mount point must exist).
fn start(dir: &Path, passthrough: bool) -> (Daemon, Unmount) {
    std::fs::create_dir_all(dir).unwrap();
    // (A dead mount left there answers ENOTCONN, which create_dir_all takes for an error.)
    let _ = std::fs::create_dir(dir.join("mnt"));
    let d = Daemon::start("fuse", dir, &config(passthrough), None);
    assert!(mounted(&dir.join("mnt")), "nasgw answers, so its mount is up:\n{}", d.logs());
    (d, Unmount(dir.join("mnt")))
}

fn mounted(p: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let p = p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    info.lines().any(|l| l.split(' ').nth(4) == Some(p.to_str().unwrap()) && l.contains(" - fuse nasgw:"))
}

/// Runs `sh -c script` as uid/gid 65534 (nobody:nogroup).
fn as_nobody(script: &str) -> std::process::Output {
    Command::new("sh").args(["-c", script]).uid(65534).gid(65534).output().unwrap()
}

#[test]
fn the_mount_is_the_volume_with_its_inode_numbers_and_its_callers_rights() {
    assert!(nasgw_tests::is_root(), "mounting needs root");
    let dir = tempfile::tempdir().unwrap();
    let (d, _unmount) = start(dir.path(), true);
    let (mnt, data) = (dir.path().join("mnt"), dir.path().join("data"));
    assert!(d.logs().contains("passthrough=\"on\""), "this kernel has passthrough:\n{}", d.logs());

    // Names, data, links, renames and attributes land on the volume as they are.
    std::fs::write(mnt.join("a.txt"), b"hello\n").unwrap();
    std::fs::create_dir(mnt.join("d")).unwrap();
    std::os::unix::fs::symlink("a.txt", mnt.join("l")).unwrap();
    std::fs::rename(mnt.join("a.txt"), mnt.join("d/b.txt")).unwrap();
    assert_eq!(std::fs::read(data.join("d/b.txt")).unwrap(), b"hello\n");
    assert_eq!(std::fs::read_link(data.join("l")).unwrap(), Path::new("a.txt"));
    let (m, b) = (std::fs::metadata(mnt.join("d/b.txt")).unwrap(), std::fs::metadata(data.join("d/b.txt")).unwrap());
    assert_eq!(m.ino(), b.ino(), "the mount's inode number is the volume's (NFS fileid, SMB IndexNumber)");
    assert_eq!((m.size(), m.mode(), m.mtime()), (b.size(), b.mode(), b.mtime()));
    let mut names: Vec<String> =
        std::fs::read_dir(&mnt).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["d", "l"]);
    // Changes made beside the mount are seen (after the attribute time-to-live at most).
    std::fs::write(data.join("d/side.txt"), b"from the volume").unwrap();
    assert_eq!(std::fs::read(mnt.join("d/side.txt")).unwrap(), b"from the volume");

    // Extended attributes in the user namespace are the volume's (Samba's DOSATTRIB layout
    // included), others are refused.
    // setfattr/getfattr come from `attr` (scripts/install-deps): missing, the test fails.
    let out = Command::new("setfattr")
        .args(["-n", "user.DOSATTRIB", "-v", "0x0102"])
        .arg(mnt.join("d/b.txt"))
        .output()
        .expect("setfattr (package attr)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got = Command::new("getfattr")
        .args(["--only-values", "-n", "user.DOSATTRIB"])
        .arg(data.join("d/b.txt"))
        .output()
        .expect("getfattr (package attr)");
    assert_eq!(got.stdout, [1, 2]);

    // Permissions are the caller's: nobody cannot write into root's 0755 directory, can into
    // a 1777 one, and what it makes is its own on the volume.
    let denied = as_nobody(&format!("echo x > {}/d/nope", mnt.display()));
    assert!(!denied.status.success(), "nobody wrote into a 0755 root directory");
    assert!(!data.join("d/nope").exists());
    std::fs::create_dir(mnt.join("t")).unwrap();
    std::fs::set_permissions(mnt.join("t"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let ok = as_nobody(&format!("echo x > {m}/t/mine && mkdir {m}/t/sub", m = mnt.display()));
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let mine = std::fs::metadata(data.join("t/mine")).unwrap();
    assert_eq!((mine.uid(), mine.gid()), (65534, 65534));
    let foreign = as_nobody(&format!("rm {}/d/b.txt", mnt.display()));
    assert!(!foreign.status.success() && data.join("d/b.txt").exists(), "nobody removed root's file");

    // statfs is the volume's.
    let (sm, sb) = (statvfs(&mnt), statvfs(&data));
    assert_eq!(sm.f_blocks * sm.f_frsize, sb.f_blocks * sb.f_frsize);

    // A file removed while open stays readable, writable and stat-able through its descriptor.
    let out = Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import os\nfd=os.open('{}/gone',os.O_CREAT|os.O_RDWR,0o644)\nos.write(fd,b'abc')\nos.unlink('{}/gone')\nassert os.fstat(fd).st_size==3\nassert os.pread(fd,3,0)==b'abc'\nos.ftruncate(fd,1)\nassert os.fstat(fd).st_size==1\n",
            mnt.display(),
            mnt.display()
        ))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // A clean stop unmounts.
    assert!(d.stop().success());
    assert!(!mounted(&mnt), "unmounted on stop");
    assert!(std::fs::read_dir(&mnt).unwrap().next().is_none(), "the empty mount point is left");
}

fn statvfs(p: &Path) -> libc::statvfs {
    let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    // SAFETY: a zeroed statvfs is valid; the path is NUL-terminated.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut s) }, 0);
    s
}

#[test]
fn a_killed_daemon_leaves_a_stale_mount_that_the_next_start_replaces() {
    let dir = tempfile::tempdir().unwrap();
    let (d, _unmount) = start(dir.path(), true);
    let mnt = dir.path().join("mnt");
    std::fs::write(mnt.join("kept"), b"before the crash").unwrap();
    d.kill();
    let err = std::fs::metadata(&mnt).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOTCONN), "a dead server's mount: {err}");
    // `check` knows the next start will replace it.
    let check = Command::new(nasgw_bin())
        .arg("--config")
        .arg(dir.path().join("nasgw.toml"))
        .args(["check", "-q"])
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    let t = Instant::now();
    let (d, _unmount) = start(dir.path(), true);
    println!("restart over a stale mount: {:?}", t.elapsed());
    assert!(d.logs().contains("replacing a stale FUSE mount"), "{}", d.logs());
    assert_eq!(std::fs::read(mnt.join("kept")).unwrap(), b"before the crash");
    assert!(d.stop().success());
    assert!(!mounted(&mnt));
}

#[test]
fn check_places_an_unusable_mountpoint_at_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("nasgw.toml");
    let check = |mountpoint: &Path| {
        let text = config(true).replace("{dir}", &dir.path().display().to_string()).replace(
            &format!("mountpoint = \"{}/mnt\"", dir.path().display()),
            &format!("mountpoint = \"{}\"", mountpoint.display()),
        );
        std::fs::write(&cfg, text).unwrap();
        let out = Command::new(nasgw_bin()).arg("--config").arg(&cfg).args(["check", "-q"]).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let line = format!("{}:18:", cfg.display());
    let (ok, err) = check(&dir.path().join("missing"));
    assert!(!ok && err.contains(&line) && err.contains("does not exist"), "{err}");
    std::fs::write(dir.path().join("file"), b"").unwrap();
    let (ok, err) = check(&dir.path().join("file"));
    assert!(!ok && err.contains(&line) && err.contains("is not a directory"), "{err}");
    std::fs::create_dir_all(dir.path().join("full/x")).unwrap();
    let (ok, err) = check(&dir.path().join("full"));
    assert!(!ok && err.contains("is not empty"), "{err}");
    std::fs::create_dir_all(dir.path().join("data/inside")).unwrap();
    let (ok, err) = check(&dir.path().join("data/inside"));
    assert!(!ok && err.contains("overlaps the volume"), "{err}");
    std::fs::create_dir_all(dir.path().join("good")).unwrap();
    let (ok, err) = check(&dir.path().join("good"));
    assert!(ok, "{err}");
}

#[test]
fn pjdfstest_passes_on_the_mount_wherever_it_passes_on_the_backing_directory() {
    let dir = tempfile::tempdir().unwrap();
    let secondary = dir.path().join("secondary");
    std::fs::create_dir_all(&secondary).unwrap();
    let backing = pjdfstest::run_in(&dir.path().join("backing"), &secondary);
    let committed: Vec<String> =
        std::fs::read_to_string(nasgw_tests::workspace_root().join("tests/fuse/pjdfstest-passes.txt"))
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(str::to_string)
            .collect();
    for passthrough in [true, false] {
        let (d, _unmount) = start(&dir.path().join(format!("node-{passthrough}")), passthrough);
        let mount = pjdfstest::run_in(&d.dir.join("mnt/pjd"), &secondary);
        // A case the mount skips is not a failure: `link::link_count_max` needs the file
        // system's LINK_MAX, which pathconf cannot tell for FUSE (printed, not counted).
        let (skipped, worse): (Vec<String>, Vec<String>) = pjdfstest::regressions(&mount, &backing)
            .into_iter()
            .partition(|c| mount.cases.get(c) == Some(&Outcome::Skipped));
        println!("passthrough={passthrough}: skipped on the mount, passed on the backing directory: {skipped:?}");
        let lost: Vec<&String> = committed.iter().filter(|c| mount.cases.get(*c) != Some(&Outcome::Passed)).collect();
        for c in worse.iter().chain(lost.iter().copied()) {
            println!("  {c}: {}", mount.details.get(c).map_or("", String::as_str));
        }
        assert!(
            worse.is_empty(),
            "passthrough={passthrough}: pass on the backing directory, not on the mount: {worse:?}"
        );
        assert!(lost.is_empty(), "passthrough={passthrough}: committed passes lost: {lost:?}");
        println!(
            "passthrough={passthrough}: {} better than the backing directory",
            pjdfstest::improvements(&mount, &backing).len()
        );
        assert!(d.stop().success());
    }
}

#[test]
fn the_mount_answers_while_smb_and_nfs_serve() {
    // The FUSE loop runs on its own threads: a burst of local metadata work does not keep
    // the control socket (a runtime task like SMB and NFS) from answering.
    let dir = tempfile::tempdir().unwrap();
    let (d, _unmount) = start(dir.path(), true);
    let mnt = d.dir.join("mnt");
    let burst = std::thread::spawn(move || {
        for i in 0..2000 {
            std::fs::write(mnt.join(format!("f{i}")), b"x").unwrap();
        }
    });
    let mut worst = Duration::ZERO;
    while !burst.is_finished() {
        let t = Instant::now();
        assert!(d.ctl(&["status"]).status.success());
        worst = worst.max(t.elapsed());
    }
    burst.join().unwrap();
    println!("slowest control-socket answer during 2000 creates on the mount: {worst:?}");
    assert!(worst < Duration::from_secs(5), "{worst:?}");
    wait_for("all files listed", Duration::from_secs(10), Duration::from_millis(50), || {
        let n = std::fs::read_dir(d.dir.join("data"))
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with('f'))
            .count();
        (n == 2000).then_some(())
    });
}

#[test]
fn a_local_fcntl_lock_and_an_smb_byte_range_lock_exclude_each_other() {
    use std::io::{BufRead, BufReader, Write};
    let dir = tempfile::tempdir().unwrap();
    let smb = free_port();
    std::fs::create_dir_all(dir.path().join("mnt")).unwrap();
    let d = Daemon::start("fuse", dir.path(), &config_on(true, smb), None);
    let _unmount = Unmount(dir.path().join("mnt"));
    let mnt = dir.path().join("mnt");
    std::fs::write(mnt.join("locked.bin"), [0u8; 100]).unwrap();
    // smbprotocol writes into the share as its guest (nobody): let it.
    std::fs::set_permissions(mnt.join("locked.bin"), std::fs::Permissions::from_mode(0o666)).unwrap();
    let script = nasgw_tests::workspace_root().join("tests/smb/smb_lock.py");
    let mut client = Command::new("python3")
        .arg(&script)
        .args(["127.0.0.1", &smb.to_string(), "pub", "locked.bin"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut to = client.stdin.take().unwrap();
    let mut from = BufReader::new(client.stdout.take().unwrap());
    let mut ready = String::new();
    from.read_line(&mut ready).unwrap();
    assert_eq!(ready.trim(), "ready", "smbprotocol could not open the file:\n{}", d.logs());
    let mut say = |cmd: &str| {
        writeln!(to, "{cmd}").unwrap();
        let mut line = String::new();
        from.read_line(&mut line).unwrap();
        line.trim().to_string()
    };

    let f = std::fs::OpenOptions::new().read(true).write(true).open(mnt.join("locked.bin")).unwrap();
    // SMB first: the local lock is refused, GETLK names the SMB lock, a range beside it is free.
    assert_eq!(say("lock 0 10"), "granted");
    let e = fcntl(&f, libc::F_SETLK, &mut flock(libc::F_WRLCK, 0, 10)).unwrap_err();
    assert!(e == libc::EAGAIN || e == libc::EACCES, "errno {e}");
    let mut probe = flock(libc::F_RDLCK, 5, 1);
    fcntl(&f, libc::F_GETLK, &mut probe).unwrap();
    assert_eq!((i32::from(probe.l_type), probe.l_start, probe.l_len), (libc::F_WRLCK, 0, 10));
    fcntl(&f, libc::F_SETLK, &mut flock(libc::F_WRLCK, 20, 10)).unwrap();
    assert_eq!(say("unlock 0 10"), "unlocked");

    // Local first: the SMB lock is refused until the local unlock.
    fcntl(&f, libc::F_SETLK, &mut flock(libc::F_WRLCK, 0, 10)).unwrap();
    assert!(say("lock 5 1").starts_with("denied"), "an SMB lock inside a local fcntl lock was granted");
    fcntl(&f, libc::F_SETLK, &mut flock(libc::F_UNLCK, 0, 0)).unwrap();
    assert_eq!(say("lock 5 1"), "granted");

    // A waiting local lock (F_SETLKW) is granted once the SMB client unlocks.
    let f2 = f.try_clone().unwrap();
    let t = Instant::now();
    let waiter = std::thread::spawn(move || fcntl(&f2, libc::F_SETLKW, &mut flock(libc::F_WRLCK, 0, 10)));
    std::thread::sleep(Duration::from_millis(300)); // let the waiter start waiting (it cannot finish)
    assert!(!waiter.is_finished(), "F_SETLKW returned while SMB held the range");
    let unlocked = Instant::now();
    assert_eq!(say("unlock 5 1"), "unlocked");
    waiter.join().unwrap().unwrap();
    println!("F_SETLKW granted {:?} after the SMB unlock ({:?} in all)", unlocked.elapsed(), t.elapsed());
    assert!(unlocked.elapsed() < Duration::from_secs(3), "{:?}", unlocked.elapsed());
    // Closing the file drops its locks: SMB gets the range.
    drop(f);
    assert_eq!(say("lock 0 10"), "granted");

    // A process killed while its F_SETLKW waits ends at once (the kernel waits for the
    // answer; nasgw watches the waiter) and never gets the lock afterwards.
    let mut waiter = Command::new("python3")
        .args(["-c", "import fcntl,sys; f=open(sys.argv[1],'r+b'); fcntl.lockf(f, fcntl.LOCK_EX, 10, 0); print('got')"])
        .arg(mnt.join("locked.bin"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = waiter.id();
    // Waiting: blocked in fcntl (syscall 72 on x86_64, 25 on aarch64).
    let nr = if cfg!(target_arch = "aarch64") { "25 " } else { "72 " };
    wait_for("the waiter to block in F_SETLKW", Duration::from_secs(20), Duration::from_millis(20), || {
        std::fs::read_to_string(format!("/proc/{pid}/syscall")).ok().filter(|s| s.starts_with(nr))
    });
    let killed = Instant::now();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let status = wait_for("the killed waiter to end", Duration::from_secs(20), Duration::from_millis(10), || {
        waiter.try_wait().ok().flatten()
    });
    println!("a killed F_SETLKW waiter ended {:?} after the kill", killed.elapsed());
    assert!(!status.success());
    assert!(killed.elapsed() < Duration::from_secs(5), "{:?}", killed.elapsed());
    // Its wait left nothing behind: once SMB lets go, the range is free.
    assert_eq!(say("unlock 0 10"), "unlocked");
    let g = std::fs::OpenOptions::new().read(true).write(true).open(mnt.join("locked.bin")).unwrap();
    fcntl(&g, libc::F_SETLK, &mut flock(libc::F_WRLCK, 0, 10)).expect("the range after the killed waiter");
    drop(g);
    assert_eq!(say("lock 0 10"), "granted");
    let _ = say("quit");
    let _ = client.wait();
    assert!(d.stop().success());
}

#[test]
fn a_local_mv_and_a_local_write_through_the_mount_fire_smb_change_notify() {
    // With passthrough the writes never reach nasgw: the close reports them.
    for passthrough in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let smb = free_port();
        std::fs::create_dir_all(dir.path().join("mnt")).unwrap();
        let d = Daemon::start("fuse", dir.path(), &config_on(passthrough, smb), None);
        let _unmount = Unmount(dir.path().join("mnt"));
        let script = nasgw_tests::workspace_root().join("tests/smb/fuse_notify.py");
        let out = Command::new("python3")
            .arg(&script)
            .args(["127.0.0.1", &smb.to_string(), "pub"])
            .arg(dir.path().join("mnt"))
            .output()
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        println!("passthrough {passthrough}:\n{text}");
        assert!(out.status.success() && text.contains("ALL OK"), "passthrough {passthrough}: {text}\n{}", d.logs());
        assert!(d.stop().success());
    }
}
