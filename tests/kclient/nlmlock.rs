//! Byte-range and whole-file locks for the kernel-client lock tests (the guest's busybox has no
//! fcntl tool). Built static by the test (`kclient::static_binary`).
//!
//! - `nlmlock hold KIND PATH r|w START LEN wait|nowait RELEASE` takes a lock (`KIND`: `fcntl`,
//!   `ofd` or `flock`; a LEN of 0 runs to the end), prints `locked <ms>` (ms it waited) or
//!   `denied <errno>`, then keeps it until file RELEASE exists, unlocks and prints `unlocked`.
//! - `nlmlock test PATH r|w START LEN` prints `free` or `held <r|w> <start> <len> <pid>`
//!   (`F_GETLK`).

use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

#[repr(C)]
struct Flock {
    l_type: i16,
    l_whence: i16,
    l_start: i64,
    l_len: i64,
    l_pid: i32,
}

extern "C" {
    fn fcntl(fd: i32, cmd: i32, ...) -> i32;
    fn flock(fd: i32, op: i32) -> i32;
}

const F_GETLK: i32 = 5;
const F_SETLK: i32 = 6;
const F_SETLKW: i32 = 7;
const F_OFD_GETLK: i32 = 36;
const F_OFD_SETLK: i32 = 37;
const F_OFD_SETLKW: i32 = 38;
const F_RDLCK: i16 = 0;
const F_WRLCK: i16 = 1;
const F_UNLCK: i16 = 2;
const LOCK_SH: i32 = 1;
const LOCK_EX: i32 = 2;
const LOCK_NB: i32 = 4;
const LOCK_UN: i32 = 8;

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn say(s: String) {
    let mut o = std::io::stdout();
    let _ = writeln!(o, "{s}");
    let _ = o.flush();
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let arg = |i: usize| a.get(i).cloned().unwrap_or_else(|| usage());
    match a.get(1).map(String::as_str) {
        Some("hold") => {
            let (kind, path, mode) = (arg(2), arg(3), arg(4));
            let (start, len): (i64, i64) = (arg(5).parse().unwrap_or_else(|_| usage()), arg(6).parse().unwrap_or_else(|_| usage()));
            let wait = arg(7) == "wait";
            let release = arg(8);
            let f = OpenOptions::new().read(true).write(true).open(&path).unwrap_or_else(|e| {
                say(format!("open failed: {e}"));
                std::process::exit(1)
            });
            let fd = f.as_raw_fd();
            let t = Instant::now();
            let ty = if mode == "w" { F_WRLCK } else { F_RDLCK };
            let r = match kind.as_str() {
                "flock" => {
                    let op = if mode == "w" { LOCK_EX } else { LOCK_SH } | if wait { 0 } else { LOCK_NB };
                    unsafe { flock(fd, op) }
                }
                k => {
                    let cmd = match (k, wait) {
                        ("ofd", true) => F_OFD_SETLKW,
                        ("ofd", false) => F_OFD_SETLK,
                        (_, true) => F_SETLKW,
                        (_, false) => F_SETLK,
                    };
                    let mut fl = Flock { l_type: ty, l_whence: 0, l_start: start, l_len: len, l_pid: 0 };
                    unsafe { fcntl(fd, cmd, &mut fl as *mut Flock) }
                }
            };
            if r != 0 {
                say(format!("denied {}", errno()));
                std::process::exit(3);
            }
            say(format!("locked {}", t.elapsed().as_millis()));
            while std::fs::metadata(&release).is_err() {
                std::thread::sleep(Duration::from_millis(50));
            }
            let r = match kind.as_str() {
                "flock" => unsafe { flock(fd, LOCK_UN) },
                k => {
                    let cmd = if k == "ofd" { F_OFD_SETLK } else { F_SETLK };
                    let mut fl = Flock { l_type: F_UNLCK, l_whence: 0, l_start: start, l_len: len, l_pid: 0 };
                    unsafe { fcntl(fd, cmd, &mut fl as *mut Flock) }
                }
            };
            say(if r == 0 { "unlocked".to_string() } else { format!("unlock failed {}", errno()) });
        }
        Some("test") => {
            let (path, mode) = (arg(2), arg(3));
            let (start, len): (i64, i64) = (arg(4).parse().unwrap_or_else(|_| usage()), arg(5).parse().unwrap_or_else(|_| usage()));
            let f = OpenOptions::new().read(true).write(true).open(&path).unwrap_or_else(|e| {
                say(format!("open failed: {e}"));
                std::process::exit(1)
            });
            let ty = if mode == "w" { F_WRLCK } else { F_RDLCK };
            let mut fl = Flock { l_type: ty, l_whence: 0, l_start: start, l_len: len, l_pid: 0 };
            let cmd = if std::env::var_os("NLMLOCK_OFD").is_some() { F_OFD_GETLK } else { F_GETLK };
            if unsafe { fcntl(f.as_raw_fd(), cmd, &mut fl as *mut Flock) } != 0 {
                say(format!("test failed {}", errno()));
                std::process::exit(1);
            }
            if fl.l_type == F_UNLCK {
                say("free".to_string());
            } else {
                let t = if fl.l_type == F_WRLCK { "w" } else { "r" };
                say(format!("held {t} {} {} {}", fl.l_start, fl.l_len, fl.l_pid));
            }
        }
        _ => usage(),
    }
}

fn usage() -> ! {
    eprintln!("usage: nlmlock hold fcntl|ofd|flock PATH r|w START LEN wait|nowait RELEASE | nlmlock test PATH r|w START LEN");
    std::process::exit(2)
}
