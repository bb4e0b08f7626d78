//! A Unix-domain socket server and client for the kernel-client tests (the guest's busybox has
//! none): `uds listen PATH` binds PATH (the socket's name is made on the mount, over NFS MKNOD),
//! accepts one connection and answers one line; `uds talk PATH MSG` connects, sends MSG and
//! prints the answer. Built static by the test (`kclient::static_binary`).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("listen") if args.len() == 3 => {
            let l = UnixListener::bind(&args[2]).unwrap_or_else(|e| fail("bind", &e));
            println!("bound {}", args[2]);
            let (s, _) = l.accept().unwrap_or_else(|e| fail("accept", &e));
            let mut line = String::new();
            BufReader::new(&s).read_line(&mut line).unwrap_or_else(|e| fail("read", &e));
            (&s).write_all(format!("pong {line}").as_bytes()).unwrap_or_else(|e| fail("write", &e));
        }
        Some("talk") if args.len() == 4 => {
            let s = UnixStream::connect(&args[2]).unwrap_or_else(|e| fail("connect", &e));
            (&s).write_all(format!("{}\n", args[3]).as_bytes()).unwrap_or_else(|e| fail("write", &e));
            let mut line = String::new();
            BufReader::new(&s).read_line(&mut line).unwrap_or_else(|e| fail("read", &e));
            print!("{line}");
        }
        _ => {
            eprintln!("usage: uds listen PATH | uds talk PATH MSG");
            std::process::exit(2);
        }
    }
}

fn fail(what: &str, e: &std::io::Error) -> ! {
    eprintln!("uds: {what}: {e} (errno {:?})", e.raw_os_error());
    std::process::exit(1);
}
