//! Sends a READ reply whose data is still in the file ([`FileSlice`]) without copying the data
//! through user space: the head goes to the socket held back (`MSG_MORE`), the file's pages are
//! spliced into a 1 MiB pipe, then from the pipe to the socket in one call.
//!
//! Why not `sendfile`: it splices through a pipe of 16 pages of its own, so TCP gets the data
//! 64 KiB at a time and sends each piece at once. A client then wakes once per piece: libnfs's
//! `nfs-cat` made 33 `recvfrom` calls per 1 MiB reply from nasgw (2 from Ganesha, which copies
//! the data into a buffer and sends it with one `sendmsg`). Every piece wakes both ends, which
//! costs CPU on both and, on a loaded machine, a scheduling delay each. Measured on this
//! project's 2-core machine (load 13, C sender and `poll`+`recv` client on loopback, 1 MiB
//! replies from the page cache): `sendfile` 8.7-12 `recv` calls per reply, sender 0.33-0.35
//! CPU s/GiB, client 0.27-0.32; through a 1 MiB pipe 1.1-1.2 calls, sender 0.13, client
//! 0.17-0.20; copying (`pread` + `writev`) 2.0-2.4 calls, sender 0.29-0.38.
//!
//! Pipes are kept for reuse (each is two descriptors); when [`MAX_PIPES`] are in use, or the
//! kernel refuses a 1 MiB pipe (an unprivileged user past `fs.pipe-user-pages-soft`), the reply
//! goes out with `sendfile` as before.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::vfs::FileSlice;

/// Bytes a pipe of the pool holds: a whole READ of [`super::args::MAX_IO`].
pub const PIPE_BYTES: usize = 1 << 20;
/// Pipes in existence at most (in use or idle); beyond, replies use `sendfile`. Also keeps an
/// unprivileged server below the kernel's default 64 MiB of big pipes per user.
pub const MAX_PIPES: usize = 48;
/// Idle pipes kept for the next replies.
const MAX_IDLE: usize = 16;

/// An empty pipe of [`PIPE_BYTES`] (or more).
struct Pipe {
    rd: OwnedFd,
    wr: OwnedFd,
}

/// Pipes in existence.
static LIVE: AtomicUsize = AtomicUsize::new(0);
/// Empty pipes for reuse.
static IDLE: Mutex<Vec<Pipe>> = Mutex::new(Vec::new());

impl Pipe {
    /// An idle pipe, a new one, or `None` (too many in use, or no big pipe to be had).
    fn take() -> Option<Pipe> {
        if let Some(p) = IDLE.lock().unwrap_or_else(|e| e.into_inner()).pop() {
            return Some(p);
        }
        if LIVE.fetch_add(1, Ordering::Relaxed) >= MAX_PIPES {
            LIVE.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        let made = Pipe::make();
        if made.is_none() {
            LIVE.fetch_sub(1, Ordering::Relaxed);
        }
        made
    }

    fn make() -> Option<Pipe> {
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two descriptors into `fds`, which this function then owns.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
            return None;
        }
        // SAFETY: both descriptors were just created and are owned by nothing else.
        let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: fcntl on a descriptor this function owns.
        let size = unsafe { libc::fcntl(wr.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_BYTES as libc::c_int) };
        Pipe::if_big(rd, wr, size)
    }

    /// A `Pipe` of the two ends if the kernel gave it `size` >= [`PIPE_BYTES`] (a `Pipe` only
    /// once it is one: its drop uncounts it, and `take` uncounts a failure itself).
    fn if_big(rd: OwnedFd, wr: OwnedFd, size: libc::c_int) -> Option<Pipe> {
        (size >= PIPE_BYTES as libc::c_int).then(|| Pipe { rd, wr })
    }

    /// Gives an empty pipe back for reuse (closes it when enough are idle).
    fn put_back(self) {
        let mut idle = IDLE.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(self);
        } else {
            drop(idle);
            drop(self);
        }
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        LIVE.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How [`send_file`] sent the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SentBy {
    /// Through a pooled pipe.
    Splice,
    /// With `sendfile`: no pipe was free.
    Sendfile,
}

/// Sends `head`, then `f`'s bytes from the file, then `pad`, all or an error; the data reaches
/// TCP in as few pieces as a 1 MiB pipe allows (one for a READ of at most 1 MiB that starts on
/// a page boundary). Fails with `UnexpectedEof` if the file ends before the slice does (the
/// stream is then cut: the caller must close the connection).
pub async fn send_file(sock: &TcpStream, head: &[u8], f: &FileSlice, pad: &[u8]) -> io::Result<SentBy> {
    let Some(pipe) = Pipe::take() else {
        send_all(sock, head, false).await?;
        sendfile(sock, f).await?;
        send_all(sock, pad, false).await?;
        return Ok(SentBy::Sendfile);
    };
    // Held back until the data joins it: the client sees head and data arrive together.
    send_all(sock, head, true).await?;
    let file = f.fd.as_raw_fd();
    let mut at = f.offset as libc::loff_t;
    let end = f.offset + u64::from(f.len);
    let mut in_pipe = 0usize;
    let mut shrank = false;
    while !shrank && (at as u64) < end || in_pipe > 0 {
        // Fill the pipe as far as it takes (it counts pages, not bytes: an unaligned 1 MiB
        // needs one page more than it holds, and goes out in two pieces).
        while !shrank && (at as u64) < end {
            let want = (end - at as u64) as usize;
            // SAFETY: splice between descriptors this function holds open; `at` is a valid offset.
            let n = unsafe {
                libc::splice(file, &mut at, pipe.wr.as_raw_fd(), std::ptr::null_mut(), want, libc::SPLICE_F_NONBLOCK)
            };
            match n {
                // What it had still goes out, then the caller cuts the stream.
                0 => shrank = true,
                n if n > 0 => in_pipe += n as usize,
                _ => match io::Error::last_os_error() {
                    e if e.kind() == io::ErrorKind::WouldBlock && in_pipe > 0 => break,
                    e if e.kind() == io::ErrorKind::Interrupted => {}
                    e => return Err(e),
                },
            }
        }
        let more = !shrank && ((at as u64) < end || !pad.is_empty());
        let flags = libc::SPLICE_F_NONBLOCK | if more { libc::SPLICE_F_MORE } else { 0 };
        write_fully(sock, in_pipe, |left| {
            // SAFETY: splice from the pipe this function holds to the socket it borrows.
            syscall(unsafe {
                libc::splice(
                    pipe.rd.as_raw_fd(),
                    std::ptr::null_mut(),
                    sock.as_raw_fd(),
                    std::ptr::null_mut(),
                    left,
                    flags,
                )
            })
        })
        .await?;
        in_pipe = 0;
    }
    pipe.put_back();
    if shrank {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "file shrank while being sent"));
    }
    send_all(sock, pad, false).await?;
    Ok(SentBy::Splice)
}

/// Writes all of `buf` (`MSG_MORE` when `more`: TCP holds a partial segment back for what
/// follows).
async fn send_all(sock: &TcpStream, buf: &[u8], more: bool) -> io::Result<()> {
    let flags = libc::MSG_NOSIGNAL | if more { libc::MSG_MORE } else { 0 };
    write_fully(sock, buf.len(), |left| {
        let rest = &buf[buf.len() - left..];
        // SAFETY: send from a live buffer of `rest.len()` bytes on a socket this function borrows.
        syscall(unsafe { libc::send(sock.as_raw_fd(), rest.as_ptr().cast(), rest.len(), flags) })
    })
    .await
}

/// `sendfile` of the slice (when no pipe is to be had).
async fn sendfile(sock: &TcpStream, f: &FileSlice) -> io::Result<()> {
    let mut at = f.offset as libc::off_t;
    write_fully(sock, f.len as usize, |left| {
        // SAFETY: sendfile between descriptors the caller holds open; `at` is a valid offset.
        match syscall(unsafe { libc::sendfile(sock.as_raw_fd(), f.fd.as_raw_fd(), &mut at, left) })? {
            0 => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "file shrank while being sent")),
            n => Ok(n),
        }
    })
    .await
}

/// Writes `len` bytes to the non-blocking `sock` with `write`, one system call that writes at
/// most the `left` bytes it is given and says how many it wrote, called again for the rest and
/// after each wait for the socket to take more. A write of nothing is an error (`WriteZero`),
/// as are `write`'s own errors other than `WouldBlock`.
async fn write_fully(
    sock: &TcpStream,
    len: usize,
    mut write: impl FnMut(usize) -> io::Result<usize>,
) -> io::Result<()> {
    let mut left = len;
    while left > 0 {
        sock.writable().await?;
        // `try_io` clears the socket's readiness on `WouldBlock`: the next `writable` waits.
        match sock.try_io(Interest::WRITABLE, || write(left)) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            // A system call never writes more than it was given; saturating all the same.
            Ok(n) => left = left.saturating_sub(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The result of a system call that returns a count or -1 with `errno`.
fn syscall(n: isize) -> io::Result<usize> {
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    use super::*;

    /// The pool is one per process and tests run in parallel: a test that holds every pipe or
    /// counts the live ones takes this for writing, one that expects a pipe for reading.
    static POOL: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (server, _) = l.accept().await.unwrap();
        (server, client)
    }

    /// Everything the client end receives until the server end is dropped.
    fn read_all(mut client: TcpStream) -> tokio::task::JoinHandle<Vec<u8>> {
        tokio::spawn(async move {
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            got
        })
    }

    fn slice(dir: &tempfile::TempDir, content: &[u8], offset: u64, len: u32) -> FileSlice {
        let path = dir.path().join("f");
        std::fs::write(&path, content).unwrap();
        FileSlice { fd: Arc::new(std::fs::File::open(&path).unwrap()), offset, len }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn head_data_and_pad_arrive_in_order_for_any_alignment_and_size() {
        let _pool = POOL.read().await;
        let content: Vec<u8> = (0..(3u32 << 20)).map(|i| (i % 251) as u8).collect();
        let dir = tempfile::tempdir().unwrap();
        // Page-aligned 1 MiB, unaligned (one page more than the pipe holds), small, empty, 2.5 MiB.
        for (offset, len) in [(0u64, 1u32 << 20), (4095, 1 << 20), (7, 13), (100, 0), (1 << 19, 5 << 19)] {
            let (server, client) = pair().await;
            let f = slice(&dir, &content, offset, len);
            let reader = read_all(client);
            assert_eq!(send_file(&server, b"head", &f, &[0, 0, 0]).await.unwrap(), SentBy::Splice);
            send_all(&server, b"next", false).await.unwrap();
            drop(server);
            let got = reader.await.unwrap();
            let mut want = b"head".to_vec();
            want.extend_from_slice(&content[offset as usize..(offset + u64::from(len)) as usize]);
            want.extend_from_slice(&[0, 0, 0]);
            want.extend_from_slice(b"next");
            assert_eq!(got.len(), want.len(), "offset {offset} len {len}");
            assert!(got == want, "offset {offset} len {len}: bytes differ");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_file_that_shrank_is_an_error_after_what_it_had() {
        let _pool = POOL.read().await;
        let dir = tempfile::tempdir().unwrap();
        let (server, mut client) = pair().await;
        let f = slice(&dir, &[1; 1000], 0, 2000);
        let e = send_file(&server, b"head", &f, &[]).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        drop(server);
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), 4 + 1000, "the head and what the file had, then nothing");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn write_fully_resumes_after_partial_writes_and_a_full_socket() {
        let (server, mut client) = pair().await;
        // Small buffers, so the socket is full long before 8 MiB.
        for fd in [server.as_raw_fd(), client.as_raw_fd()] {
            for opt in [libc::SO_SNDBUF, libc::SO_RCVBUF] {
                let size: libc::c_int = 64 << 10;
                // SAFETY: setsockopt on a live socket with a c_int option of its size.
                let r = unsafe { libc::setsockopt(fd, libc::SOL_SOCKET, opt, (&size as *const libc::c_int).cast(), 4) };
                assert_eq!(r, 0);
            }
        }
        let data: Vec<u8> = (0..(8u32 << 20)).map(|i| (i % 253) as u8).collect();
        let blocked = Arc::new(AtomicUsize::new(0));
        let calls = AtomicUsize::new(0);
        // The reader starts once the writer found the socket full (polls: it cannot be told).
        let b = blocked.clone();
        let reader = tokio::spawn(async move {
            while b.load(Ordering::Relaxed) == 0 {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            got
        });
        // At most 100 kB a call: the rest is asked for again.
        write_fully(&server, data.len(), |left| {
            calls.fetch_add(1, Ordering::Relaxed);
            let rest = &data[data.len() - left..];
            let n = rest.len().min(100_000);
            // SAFETY: send from a live buffer on the test's socket.
            let r = syscall(unsafe { libc::send(server.as_raw_fd(), rest.as_ptr().cast(), n, libc::MSG_NOSIGNAL) });
            if matches!(&r, Err(e) if e.kind() == io::ErrorKind::WouldBlock) {
                blocked.fetch_add(1, Ordering::Relaxed);
            }
            r
        })
        .await
        .unwrap();
        drop(server);
        let got = reader.await.unwrap();
        assert!(got == data, "every byte once, in order ({} of {} bytes)", got.len(), data.len());
        let (calls, blocked) = (calls.into_inner(), blocked.load(Ordering::Relaxed));
        println!("{calls} calls, {blocked} found the socket full");
        assert!(blocked > 0 && calls > data.len() / 100_000 + blocked - 1, "{calls} calls, {blocked} blocked");
    }

    #[tokio::test]
    async fn write_fully_fails_on_a_write_of_nothing_and_on_errors() {
        let (server, _client) = pair().await;
        let e = write_fully(&server, 10, |_| Ok(0)).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WriteZero);
        let mut calls = 0;
        let e = write_fully(&server, 10, |left| {
            calls += 1;
            if left == 10 {
                Ok(4)
            } else {
                Err(io::Error::from_raw_os_error(libc::EPIPE))
            }
        })
        .await
        .unwrap_err();
        assert_eq!((e.raw_os_error(), calls), (Some(libc::EPIPE), 2), "the error after the partial write");
        // Nothing to write: no call at all.
        write_fully(&server, 0, |_| panic!("called for nothing")).await.unwrap();
    }

    #[test]
    fn a_pipe_the_kernel_kept_small_is_refused_and_not_counted() {
        let _pool = POOL.blocking_write();
        let mut fds = [0; 2];
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let before = LIVE.load(Ordering::Relaxed);
        // An unprivileged user past its big-pipe allowance gets 2 pages.
        assert!(Pipe::if_big(rd, wr, 8192).is_none());
        assert_eq!(LIVE.load(Ordering::Relaxed), before, "a refused pipe is not uncounted by a drop");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pipes_are_reused_and_bounded() {
        let _pool = POOL.write().await;
        let dir = tempfile::tempdir().unwrap();
        let content = vec![9u8; 1 << 16];
        for _ in 0..3 * MAX_IDLE {
            let (server, mut client) = pair().await;
            let f = slice(&dir, &content, 0, 1 << 16);
            send_file(&server, b"", &f, &[]).await.unwrap();
            drop(server);
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            assert_eq!(got.len(), 1 << 16);
        }
        assert!(LIVE.load(Ordering::Relaxed) <= MAX_IDLE, "sequential replies reuse pipes");
        // Past the ceiling there is no pipe: the reply goes out with sendfile, whole, and a
        // file that shrank is an error after what it had there too.
        let held: Vec<Pipe> = std::iter::from_fn(Pipe::take).take(MAX_PIPES + 1).collect();
        assert!(held.len() <= MAX_PIPES);
        assert!(Pipe::take().is_none());
        let content: Vec<u8> = (0..(3u32 << 20)).map(|i| (i % 249) as u8).collect();
        for (offset, len, sent) in
            [(4095u64, 5u32 << 19, Ok(())), (1 << 20, 3 << 20, Err(io::ErrorKind::UnexpectedEof))]
        {
            let (server, client) = pair().await;
            let f = slice(&dir, &content, offset, len);
            let reader = read_all(client);
            let by = send_file(&server, b"h", &f, &[0]).await.map_err(|e| e.kind());
            assert_eq!(by.map(|_| ()), sent);
            if let Ok(by) = by {
                assert_eq!(by, SentBy::Sendfile);
            }
            drop(server);
            let got = reader.await.unwrap();
            let had = &content[offset as usize..content.len().min((offset + u64::from(len)) as usize)];
            let want = [&b"h"[..], had, if sent.is_ok() { &[0][..] } else { &[][..] }].concat();
            assert!(got == want, "offset {offset} len {len}: {} bytes, {} wanted", got.len(), want.len());
        }
        drop(held);
    }
}
