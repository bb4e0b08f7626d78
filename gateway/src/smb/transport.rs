//! The byte stream under SMB2 (MS-SMB2 2.1, direct TCP): transport frames in, one reused
//! buffer per connection; framed messages out, written by whoever made them.

use std::io::{self, IoSlice};
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt as _, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::Mutex;

use super::wire::header;

/// Largest transport frame accepted: an 8 MiB write plus headers.
pub const MAX_FRAME: usize = 8 * 1024 * 1024 + 64 * 1024;
/// Receive buffer of the stream: one read picks up several small requests a client pipelined.
const READ_BUFFER: usize = 256 * 1024;
/// A frame buffer grown beyond this (by a large WRITE) is given back once small frames
/// follow, so an idle connection does not pin megabytes.
const KEEP_FRAME_BUFFER: usize = 1024 * 1024;
/// Frames at least this long (bulk WRITEs) are read from the socket straight into the frame
/// buffer, and so is the header of the frame after one: through the receive buffer, up to
/// [`READ_BUFFER`] bytes of each would be copied once more in user space (perf of an
/// encrypted upload: 3% of the server's CPU, a fifth of what decrypting costs).
const BULK_FRAME: usize = 64 * 1024;

/// What [`FrameReader::next`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// An SMB message, now in [`FrameReader::message`].
    Message,
    /// A NetBIOS session request (clients on a port other than 445 start with one): answer
    /// [`SESSION_GRANTED`].
    SessionRequest,
}

/// The NetBIOS positive session response.
pub const SESSION_GRANTED: [u8; 4] = [0x82, 0, 0, 0];

/// Why reading stopped.
#[derive(Debug)]
pub enum ReadError {
    /// The client went away (or the socket failed).
    Closed,
    /// A frame that is not a session message or exceeds [`MAX_FRAME`].
    BadFrame,
}

/// Reads transport frames. The message lands in one buffer that is reused, so a stream of
/// 8 MiB WRITEs neither allocates nor zero-fills per request.
pub struct FrameReader<R> {
    rd: BufReader<R>,
    buf: Vec<u8>,
    /// The last frame was a bulk one ([`BULK_FRAME`]): the next header is read on its own,
    /// so the receive buffer does not fill with the start of another bulk frame.
    after_bulk: bool,
}

impl FrameReader<tokio::net::tcp::OwnedReadHalf> {
    /// Returns once a frame can be read: bytes are buffered, or the socket is readable (or
    /// closed). Cancel-safe, so a connection can wait for its client and for other work at
    /// once; [`FrameReader::next`] then reads the frame.
    pub async fn ready(&mut self) {
        if self.rd.buffer().is_empty() {
            // A peek, not `readable()`: readiness can be stale once the buffer drained the
            // socket, and a stale one would leave the caller blocked in `next`. An error or
            // 0 is a closed socket, which `next` reports.
            let _ = self.rd.get_mut().peek(&mut [0u8; 1]).await;
        }
    }

    /// Nothing read from the socket is waiting in the buffer: the reader can be given up
    /// ([`FrameReader::into_inner`]) without losing bytes.
    pub fn drained(&self) -> bool {
        self.rd.buffer().is_empty()
    }

    /// The socket half, its buffers freed (a dormant connection keeps neither); what was
    /// buffered is lost, so check [`FrameReader::drained`] first.
    pub fn into_inner(self) -> tokio::net::tcp::OwnedReadHalf {
        self.rd.into_inner()
    }
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Reads frames from `rd`.
    pub fn new(rd: R) -> Self {
        Self { rd: BufReader::with_capacity(READ_BUFFER, rd), buf: Vec::new(), after_bulk: false }
    }

    /// The message of the last [`Frame::Message`].
    pub fn message(&self) -> &[u8] {
        &self.buf
    }

    /// The message of the last [`Frame::Message`], to decrypt in place.
    pub fn message_mut(&mut self) -> &mut [u8] {
        &mut self.buf
    }

    /// Reads the next frame; NetBIOS keep-alives are skipped. Not cancel-safe (a frame half
    /// read is lost): wait with [`FrameReader::ready`] first where something else may win.
    pub async fn next(&mut self) -> Result<Frame, ReadError> {
        loop {
            let mut hdr = [0u8; 4];
            let read = if self.after_bulk && self.rd.buffer().is_empty() {
                self.rd.get_mut().read_exact(&mut hdr).await
            } else {
                self.rd.read_exact(&mut hdr).await
            };
            read.map_err(|_| ReadError::Closed)?;
            if hdr[0] == 0x81 || hdr[0] == 0x85 {
                let n = ((hdr[1] as u64 & 1) << 16) | ((hdr[2] as u64) << 8) | hdr[3] as u64;
                let skipped = tokio::io::copy(&mut (&mut self.rd).take(n), &mut tokio::io::sink()).await;
                if skipped.map_err(|_| ReadError::Closed)? != n {
                    return Err(ReadError::Closed);
                }
                if hdr[0] == 0x81 {
                    return Ok(Frame::SessionRequest);
                }
                continue;
            }
            let len = match header::frame_len(hdr) {
                Ok(l) if (4..=MAX_FRAME).contains(&l) => l,
                _ => return Err(ReadError::BadFrame),
            };
            self.fill(len).await?;
            return Ok(Frame::Message);
        }
    }

    /// Reads exactly `len` bytes into the buffer, without zero-filling it first: what the
    /// receive buffer already holds, then a bulk frame's rest straight from the socket.
    async fn fill(&mut self, len: usize) -> Result<(), ReadError> {
        if self.buf.capacity() > KEEP_FRAME_BUFFER && len <= KEEP_FRAME_BUFFER {
            self.buf = Vec::new();
        }
        self.buf.clear();
        self.buf.reserve_exact(len);
        self.after_bulk = len >= BULK_FRAME;
        let held = self.rd.buffer();
        let n = held.len().min(len);
        self.buf.extend_from_slice(&held[..n]);
        self.rd.consume(n);
        while self.buf.len() < len {
            let want = (len - self.buf.len()) as u64;
            // The receive buffer is empty here: reading around it loses nothing.
            let read = if self.after_bulk {
                self.rd.get_mut().take(want).read_buf(&mut self.buf).await
            } else {
                (&mut self.rd).take(want).read_buf(&mut self.buf).await
            };
            match read {
                Ok(0) | Err(_) => return Err(ReadError::Closed),
                Ok(_) => {}
            }
        }
        Ok(())
    }
}

/// The sending side of a connection, shared by the command loop and the tasks that finish
/// async work: each message goes out whole, with its transport header, in one gathered write
/// where possible (no copy of READ data). A dormant connection's writer is taken out
/// ([`FrameWriter::take`]); a send then fails until it is put back.
pub struct FrameWriter<W> {
    wr: Arc<Mutex<Option<W>>>,
}

impl<W> Clone for FrameWriter<W> {
    fn clone(&self) -> Self {
        Self { wr: self.wr.clone() }
    }
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// Writes to `wr`.
    pub fn new(wr: W) -> Self {
        Self { wr: Arc::new(Mutex::new(Some(wr))) }
    }

    /// Takes the writer out, unless a send holds it now.
    pub fn take(&self) -> Option<W> {
        self.wr.try_lock().ok()?.take()
    }

    /// A send holds the writer now.
    pub fn busy(&self) -> bool {
        self.wr.try_lock().is_err()
    }

    /// Puts a writer (back) in.
    pub async fn put(&self, wr: W) {
        *self.wr.lock().await = Some(wr);
    }

    /// Sends one SMB message made of `parts` (header and body, then bulk data).
    /// A message longer than the 24-bit transport length can say is refused, never sent with
    /// a wrapped length.
    pub async fn message(&self, parts: &[&[u8]]) -> io::Result<()> {
        let len = parts.iter().map(|p| p.len()).sum();
        let hdr = header::frame_header(len).ok_or_else(|| io::Error::other("SMB message too long for its frame"))?;
        let mut slices = Vec::with_capacity(parts.len() + 1);
        slices.push(IoSlice::new(&hdr));
        slices.extend(parts.iter().map(|p| IoSlice::new(p)));
        let mut wr = self.wr.lock().await;
        write_all_vectored(wr.as_mut().ok_or_else(taken)?, &mut slices).await
    }

    /// Sends bytes as they are (NetBIOS session answers).
    pub async fn raw(&self, bytes: &[u8]) -> io::Result<()> {
        self.wr.lock().await.as_mut().ok_or_else(taken)?.write_all(bytes).await
    }

    /// Closes the sending direction, unless a send is stuck on a client that does not read
    /// (the socket then closes when the connection's thread ends).
    pub async fn shutdown(&self) {
        if let Ok(mut wr) = self.wr.try_lock() {
            if let Some(wr) = wr.as_mut() {
                let _ = wr.shutdown().await;
            }
        }
    }
}

fn taken() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the connection is dormant: its writer is taken out")
}

async fn write_all_vectored<W: AsyncWrite + Unpin>(wr: &mut W, mut slices: &mut [IoSlice<'_>]) -> io::Result<()> {
    while !slices.is_empty() {
        let n = wr.write_vectored(slices).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut slices, n);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(msg: &[u8]) -> Vec<u8> {
        let mut f = header::frame_header(msg.len()).unwrap().to_vec();
        f.extend_from_slice(msg);
        f
    }

    #[tokio::test]
    async fn reads_frames_skips_keepalives_and_answers_session_requests() {
        let mut input = frame(b"\xfeSMBfirst");
        input.extend_from_slice(&[0x85, 0, 0, 0]);
        input.extend_from_slice(&[0x81, 0, 0, 2, 9, 9]);
        input.extend(frame(&vec![7u8; 3 * 1024 * 1024]));
        input.extend(frame(b"\xfeSMBsmall"));
        let mut r = FrameReader::new(&input[..]);
        assert_eq!(r.next().await.unwrap(), Frame::Message);
        assert_eq!(r.message(), b"\xfeSMBfirst");
        assert_eq!(r.next().await.unwrap(), Frame::SessionRequest);
        assert_eq!(r.next().await.unwrap(), Frame::Message);
        assert_eq!(r.message().len(), 3 * 1024 * 1024);
        assert!(r.message().iter().all(|b| *b == 7));
        assert_eq!(r.next().await.unwrap(), Frame::Message);
        assert_eq!(r.message(), b"\xfeSMBsmall");
        // The big buffer was given back after the small frame.
        assert!(r.buf.capacity() <= KEEP_FRAME_BUFFER);
        assert!(matches!(r.next().await, Err(ReadError::Closed)));
    }

    /// A stream that serves at most `chunk` bytes per read and records, per read, where it
    /// started and how much the reader asked for.
    struct Recorder {
        data: Vec<u8>,
        pos: usize,
        chunk: usize,
        reads: Vec<(usize, usize)>,
    }

    impl AsyncRead for Recorder {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            let (pos, asked) = (self.pos, buf.remaining());
            self.reads.push((pos, asked));
            let n = asked.min(self.chunk).min(self.data.len() - pos);
            buf.put_slice(&self.data[pos..pos + n]);
            self.pos += n;
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn bulk_frames_bypass_the_receive_buffer() {
        let big = |b: u8| frame(&vec![b; 1 << 20]);
        let (first, second) = (big(1), big(2));
        let mut input = first.clone();
        input.extend_from_slice(&second);
        input.extend(frame(b"\xfeSMBsmall-1"));
        input.extend(frame(b"\xfeSMBsmall-2"));
        let rec = Recorder { data: input, pos: 0, chunk: 100_000, reads: Vec::new() };
        let mut r = FrameReader::new(rec);
        for want in [&first[4..], &second[4..], b"\xfeSMBsmall-1", b"\xfeSMBsmall-2"] {
            assert_eq!(r.next().await.unwrap(), Frame::Message);
            assert_eq!(r.message(), want);
        }
        assert!(matches!(r.next().await, Err(ReadError::Closed)));
        // Every read of the second frame, its header included, asked for no more than was
        // left of it, and none filled the receive buffer (that asks for all of READ_BUFFER).
        let (start, end) = (first.len(), first.len() + second.len());
        let rec = r.rd.into_inner();
        let of_second: Vec<_> = rec.reads.iter().filter(|(at, _)| (start..end).contains(at)).collect();
        assert!(of_second.len() >= (1 << 20) / 100_000, "{of_second:?}");
        assert!(of_second.iter().all(|(at, asked)| at + asked <= end && *asked != READ_BUFFER), "{of_second:?}");
        // The small frames after it are read ahead together, as before.
        assert!(rec.reads.iter().any(|(at, asked)| *at >= end && *asked == READ_BUFFER));
    }

    #[tokio::test]
    async fn refuses_oversized_and_unknown_frames() {
        let mut too_big = header::frame_header(MAX_FRAME + 1).unwrap().to_vec();
        too_big.extend_from_slice(&[0; 16]);
        assert!(matches!(FrameReader::new(&too_big[..]).next().await, Err(ReadError::BadFrame)));
        let unknown = [0x42u8, 0, 0, 4, 1, 2, 3, 4];
        assert!(matches!(FrameReader::new(&unknown[..]).next().await, Err(ReadError::BadFrame)));
        let truncated = [0u8, 0, 0, 10, 1, 2];
        assert!(matches!(FrameReader::new(&truncated[..]).next().await, Err(ReadError::Closed)));
    }

    #[tokio::test]
    async fn writes_each_message_with_its_transport_header() {
        let (client, server) = tokio::io::duplex(64);
        let w = FrameWriter::new(server);
        let big = vec![3u8; 100_000];
        let sender = tokio::spawn({
            let w = w.clone();
            async move {
                w.message(&[b"\xfeSMBhead", &big]).await.unwrap();
                w.raw(&SESSION_GRANTED).await.unwrap();
                w.shutdown().await;
            }
        });
        let mut got = Vec::new();
        let mut client = client;
        client.read_to_end(&mut got).await.unwrap();
        sender.await.unwrap();
        assert_eq!(&got[..4], &header::frame_header(8 + 100_000).unwrap());
        assert_eq!(&got[4..12], b"\xfeSMBhead");
        assert_eq!(got.len(), 4 + 8 + 100_000 + 4);
        assert_eq!(&got[got.len() - 4..], &SESSION_GRANTED);
    }
}
