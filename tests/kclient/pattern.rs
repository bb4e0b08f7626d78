//! Reads a file whose every byte is [`pattern_byte`] of its offset, while another client
//! truncates and rewrites it, and counts what came back. Built static for the kernel-client
//! tests (`kclient::static_binary`); the host test includes this file for `pattern_byte`.
//!
//! `pattern check PATH SECS SIZE [ALLOW]`: for SECS seconds, reads PATH from start to end of file again and
//! again with `O_DIRECT` (every read is a READ call answered by the server, never the guest's
//! page cache, whose staleness under another client's truncate is the client's, not the
//! server's), in pieces of 1 MiB and of odd sizes at odd offsets. A byte that is not the
//! pattern of its offset is garbage from the server: zeros from a truncate that overtook a
//! spliced reply, or data from another place. A pass that meets the end of the file before SIZE
//! (the file's size when whole) read a truncated file. Prints one `PATTERN` line of counts;
//! exits 1 on any error or garbage, or with ALLOW `zeros`, on garbage other than zeros (what a
//! zero-copy server may send, see README "A READ racing a truncate").

#![allow(dead_code)] // the host test includes this file for `pattern_byte` alone

use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant};

/// The byte at `offset` of a pattern file: never zero (a zeroed range is seen), and it changes
/// with the page number too (data from another page is seen).
pub fn pattern_byte(offset: u64) -> u8 {
    ((offset ^ (offset >> 12)) % 255) as u8 + 1
}

/// Counts of one `check` run.
#[derive(Default)]
struct Counts {
    passes: u64,
    /// Passes that met the end of the file before its whole size.
    cut: u64,
    reads: u64,
    bytes: u64,
    /// Reads that returned less than asked but more than nothing.
    short: u64,
    /// Reads that returned nothing (end of file).
    eof: u64,
    /// Bytes that were not the pattern of their offset.
    garbage: u64,
    /// The part of `garbage` that was zeros.
    zeros: u64,
    errors: u64,
}

/// `len` bytes of `v` that start on a page boundary (`O_DIRECT` takes them at any offset).
fn aligned(v: &mut [u8], len: usize) -> &mut [u8] {
    let at = v.as_ptr().align_offset(4096);
    &mut v[at..at + len]
}

fn check(path: &str, secs: u64, size: u64) -> Counts {
    use std::os::unix::fs::FileExt;
    let mut c = Counts::default();
    let mut buf = vec![0u8; (2 << 20) + 4096];
    // Piece sizes: a whole READ, odd ones, one page more than a pipe of 1 MiB pages holds.
    let sizes = [1 << 20, 1_000_003, 65_537, 4096, (1 << 20) - 1];
    let start = Instant::now();
    let mut first_garbage: Option<(u64, u8)> = None;
    while start.elapsed() < Duration::from_secs(secs) {
        let f = match std::fs::File::options().read(true).custom_flags(libc_o_direct()).open(path) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("open {path}: {e}");
                c.errors += 1;
                continue;
            }
        };
        // Each pass starts at a different odd offset, then walks to the end of the file.
        let mut at = (c.passes * 4097) % 8191;
        let mut i = c.passes as usize;
        loop {
            let want = sizes[i % sizes.len()];
            i += 1;
            let b = aligned(&mut buf, want);
            match f.read_at(b, at) {
                Ok(0) => {
                    c.eof += 1;
                    c.cut += u64::from(at < size);
                    break;
                }
                Ok(n) => {
                    c.reads += 1;
                    c.bytes += n as u64;
                    if n < want {
                        c.short += 1;
                    }
                    for (k, &byte) in b[..n].iter().enumerate() {
                        if byte != pattern_byte(at + k as u64) {
                            c.garbage += 1;
                            c.zeros += u64::from(byte == 0);
                            first_garbage.get_or_insert((at + k as u64, byte));
                        }
                    }
                    at += n as u64;
                }
                Err(e) => {
                    eprintln!("read {path} at {at}: {e}");
                    c.errors += 1;
                    break;
                }
            }
        }
        c.passes += 1;
    }
    if let Some((at, byte)) = first_garbage {
        eprintln!("first garbage at offset {at}: {byte:#04x}, pattern {:#04x}", pattern_byte(at));
    }
    c
}

/// `O_DIRECT` on x86_64 and aarch64 Linux (no libc crate in a single-file static build).
fn libc_o_direct() -> i32 {
    if cfg!(target_arch = "aarch64") {
        0o200000
    } else {
        0o40000
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match (args.get(1).map(String::as_str), args.len()) {
        (Some("check"), 5 | 6) => {
            let zeros_allowed = match args.get(5).map(String::as_str) {
                None | Some("nothing") => false,
                Some("zeros") => true,
                Some(other) => panic!("ALLOW is nothing or zeros, not {other:?}"),
            };
            let c = check(&args[2], args[3].parse().expect("SECS"), args[4].parse().expect("SIZE"));
            println!(
                "PATTERN passes={} cut={} reads={} bytes={} short={} eof={} garbage={} zeros={} errors={}",
                c.passes, c.cut, c.reads, c.bytes, c.short, c.eof, c.garbage, c.zeros, c.errors
            );
            let bad = if zeros_allowed { c.garbage - c.zeros } else { c.garbage };
            std::process::exit(if bad == 0 && c.errors == 0 { 0 } else { 1 });
        }
        _ => {
            eprintln!("usage: pattern check PATH SECS SIZE [nothing|zeros]");
            std::process::exit(2);
        }
    }
}
