//! SMB and special files: a directory holding a fifo, a Unix socket, a character and a block
//! device is listed by smbclient, and opening each to read (`get`) or write (`put`) is refused
//! with ACCESS_DENIED, never hangs or crashes the server, which answers the next request;
//! attributes and delete work.
//!
//! smbd 4.17 (measured with the same clients, guest share forced to root) lists them alike as
//! plain files of size 0, refuses a socket at open, opens a fifo and refuses its reads and
//! writes, but opens devices and reads and writes them: a `c 1 5` node in the share returned
//! `/dev/zero`'s bytes, a block device node reaches the server's disk. nasgw refuses data
//! access to every special file at open.

mod smb_common;

use std::os::unix::fs::FileTypeExt;
use std::time::{Duration, Instant};

use smb_common::start;

fn mknod(path: &std::path::Path, mode: u32, dev: libc::dev_t) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    let r = unsafe { libc::mknod(c.as_ptr(), mode, dev) };
    assert_eq!(r, 0, "mknod {}: {}", path.display(), std::io::Error::last_os_error());
}

#[test]
fn special_files_are_listed_and_their_data_refused_without_hanging_the_server() {
    assert!(nasgw_tests::is_root(), "making device nodes needs root");
    let s = start("special", "");
    let d = s.data.join("sp");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("reg"), b"regular\n").unwrap();
    mknod(&d.join("fifo"), libc::S_IFIFO | 0o666, 0);
    mknod(&d.join("zero"), libc::S_IFCHR | 0o666, libc::makedev(1, 5));
    mknod(&d.join("blk"), libc::S_IFBLK | 0o660, libc::makedev(7, 200));
    let _sock = std::os::unix::net::UnixListener::bind(d.join("sock")).unwrap();

    let ls = s.smbclient_ok("pub", &["-N", "-c", "cd sp; ls"]);
    for n in ["reg", "fifo", "zero", "blk", "sock"] {
        assert!(ls.lines().any(|l| l.split_whitespace().next() == Some(n)), "ls lists {n}:\n{ls}");
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::write(&src, b"data for a special file\n").unwrap();
    for n in ["fifo", "zero", "blk", "sock"] {
        let t = Instant::now();
        let dst = tmp.path().join(n);
        let get = s.smbclient("pub", &["-N", "-c", &format!("cd sp; get {n} {}", dst.display())]);
        let text = String::from_utf8_lossy(&get.stdout).into_owned() + &String::from_utf8_lossy(&get.stderr);
        assert!(text.contains("NT_STATUS_ACCESS_DENIED opening remote file"), "get {n}:\n{text}");
        let put = s.smbclient("pub", &["-N", "-c", &format!("cd sp; put {} {n}", src.display())]);
        let text = String::from_utf8_lossy(&put.stdout).into_owned() + &String::from_utf8_lossy(&put.stderr);
        assert!(text.contains("NT_STATUS_ACCESS_DENIED opening remote file"), "put {n}:\n{text}");
        assert!(t.elapsed() < Duration::from_secs(30), "{n}: {:?}", t.elapsed());
        println!("get and put of {n} refused in {:.2?}", t.elapsed());
        // Attributes are readable; the server still answers and serves regular files.
        let info = s.smbclient_ok("pub", &["-N", "-c", &format!("cd sp; allinfo {n}")]);
        assert!(info.contains("attributes:"), "allinfo {n}:\n{info}");
        let reg = tmp.path().join(format!("reg-after-{n}"));
        s.smbclient_ok("pub", &["-N", "-c", &format!("cd sp; get reg {}", reg.display())]);
        assert_eq!(std::fs::read(&reg).unwrap(), b"regular\n");
    }
    // Nothing was written to or through them; their types are intact.
    assert!(std::fs::symlink_metadata(d.join("fifo")).unwrap().file_type().is_fifo());
    assert!(std::fs::symlink_metadata(d.join("blk")).unwrap().file_type().is_block_device());
    // Deleting them works as for any file.
    s.smbclient_ok("pub", &["-N", "-c", "cd sp; rm fifo; rm zero; rm sock"]);
    for n in ["fifo", "zero", "sock"] {
        assert!(std::fs::symlink_metadata(d.join(n)).is_err(), "{n} removed");
    }
    assert!(!s.daemon.logs().contains("panicked"), "{}", s.daemon.logs());
}
