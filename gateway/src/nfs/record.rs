//! RPC record marking over TCP (RFC 5531 section 11): the byte stream of a connection cut into
//! records, each made of fragments with a 4-byte header, every length bounded.
//!
//! Reads are buffered (16 KiB), so a small call usually costs one `recv` for its header and body
//! together; a large fragment's payload (a WRITE's data) goes straight into the record. The
//! reader also says whether more of the stream has already arrived ([`RecordReader::buffered`]),
//! which tells the server whether a client is waiting on one call only.

use tokio::io::{AsyncRead, AsyncReadExt};

use super::rpc::{self, MAX_FRAGMENT, MAX_RECORD};

/// Bytes read from the socket at once: room for several small calls (a 4 KiB WRITE with its
/// header is 4.2 KiB), and 16 MiB over 1024 connections.
const BUFFER: usize = 16 * 1024;

/// Splits a byte stream into RPC records.
pub struct RecordReader<R> {
    rd: R,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

impl<R: AsyncRead + Unpin> RecordReader<R> {
    /// Reads records from `rd`.
    pub fn new(rd: R) -> Self {
        Self { rd, buf: vec![0; BUFFER].into_boxed_slice(), start: 0, end: 0 }
    }

    /// Bytes of the stream read but not yet returned in a record.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// The next complete record (all its fragments); `Ok(None)` at a clean end of stream.
    /// A fragment over [`MAX_FRAGMENT`], a record over [`MAX_RECORD`] or a stream that ends
    /// inside a record is an error (the caller closes the connection).
    pub async fn next(&mut self) -> Result<Option<Vec<u8>>, String> {
        let mut record = Vec::new();
        loop {
            if !self.fill(4).await? {
                return if record.is_empty() && self.buffered() == 0 {
                    Ok(None)
                } else {
                    Err("connection closed inside a record".into())
                };
            }
            let hdr: [u8; 4] = self.buf[self.start..self.start + 4].try_into().expect("4 bytes");
            self.start += 4;
            let (len, last) = rpc::fragment_header(hdr);
            let len = len as usize;
            if len > MAX_FRAGMENT as usize || record.len() + len > MAX_RECORD {
                return Err(format!("fragment of {len} bytes over the {MAX_FRAGMENT}-byte limit"));
            }
            record.reserve(len);
            let here = len.min(self.buffered());
            record.extend_from_slice(&self.buf[self.start..self.start + here]);
            self.start += here;
            let rest = (len - here) as u64;
            if rest > 0 {
                // Straight into spare capacity: no zero-filling, no second copy of a WRITE.
                let got = (&mut self.rd)
                    .take(rest)
                    .read_to_end(&mut record)
                    .await
                    .map_err(|e| format!("read failed: {e}"))?;
                if got as u64 != rest {
                    return Err(format!("truncated fragment: {} of {len} bytes", len as u64 - rest + got as u64));
                }
            }
            if last {
                return Ok(Some(record));
            }
        }
    }

    /// Makes at least `n` (<= [`BUFFER`]) bytes available; false at end of stream.
    async fn fill(&mut self, n: usize) -> Result<bool, String> {
        while self.buffered() < n {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            let got = match self.rd.read(&mut self.buf[self.end..]).await {
                Ok(got) => got,
                // A client that resets its connection between calls (libnfs tools on exit)
                // ends the stream like a close.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => 0,
                Err(e) => return Err(format!("read failed: {e}")),
            };
            if got == 0 {
                return Ok(false);
            }
            self.end += got;
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fragment(payload: &[u8], last: bool) -> Vec<u8> {
        let mut v = (payload.len() as u32 | if last { 0x8000_0000 } else { 0 }).to_be_bytes().to_vec();
        v.extend_from_slice(payload);
        v
    }

    #[tokio::test]
    async fn records_of_one_or_many_fragments_small_and_large() {
        let big = vec![7u8; 300 * 1024];
        let mut stream = fragment(b"one", true);
        stream.extend(fragment(b"two-a ", false));
        stream.extend(fragment(b"two-b", true));
        stream.extend(fragment(&big, true));
        stream.extend(fragment(b"", true));
        let mut r = RecordReader::new(&stream[..]);
        assert_eq!(r.next().await.unwrap().unwrap(), b"one");
        assert!(r.buffered() > 0, "the rest of the stream arrived with the first record");
        assert_eq!(r.next().await.unwrap().unwrap(), b"two-a two-b");
        assert_eq!(r.next().await.unwrap().unwrap(), big);
        assert_eq!(r.next().await.unwrap().unwrap(), b"");
        assert_eq!(r.buffered(), 0);
        assert_eq!(r.next().await.unwrap(), None);
    }

    /// A stream that yields `data`, then fails with a connection reset.
    struct ThenReset(&'static [u8]);

    impl AsyncRead for ThenReset {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            if self.0.is_empty() {
                return std::task::Poll::Ready(Err(std::io::ErrorKind::ConnectionReset.into()));
            }
            let n = self.0.len().min(buf.remaining());
            buf.put_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_reset_between_records_ends_the_stream_inside_one_is_an_error() {
        let mut r = RecordReader::new(ThenReset(b"\x80\x00\x00\x02ok"));
        assert_eq!(r.next().await.unwrap().unwrap(), b"ok");
        assert_eq!(r.next().await.unwrap(), None);
        let mut r = RecordReader::new(ThenReset(b"\x80\x00\x00\x09cut"));
        assert!(r.next().await.is_err());
    }

    #[tokio::test]
    async fn oversized_and_truncated_records_are_errors() {
        let huge = ((MAX_FRAGMENT + 1) | 0x8000_0000).to_be_bytes();
        assert!(RecordReader::new(&huge[..]).next().await.is_err());
        let mut cut = fragment(b"abcdef", true);
        cut.truncate(7);
        assert!(RecordReader::new(&cut[..]).next().await.is_err());
        let mut many = Vec::new();
        for _ in 0..2 {
            many.extend(fragment(&vec![0; MAX_RECORD / 2 + 1], false));
        }
        assert!(RecordReader::new(&many[..]).next().await.is_err(), "a record over MAX_RECORD");
        assert!(RecordReader::new(&[0x80, 0][..]).next().await.is_err(), "a stream ending in a header");
    }
}
