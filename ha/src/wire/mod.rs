//! Pure wire formats, smoltcp style: every parser is a function from bytes to a value or an
//! error and never panics on any input; every emitter writes into a caller's buffer.
//!
//! - [`message`]: the cluster datagrams (heartbeat, connection list, move request), HMAC-sealed.
//! - [`arp`]: the gratuitous ARP frame a new owner of a public address broadcasts.
//! - [`ndp`]: the unsolicited Neighbor Advertisement, IPv6's gratuitous ARP.
//! - [`tickle`]: the TCP "tickle ACK" (seq 0, ack 0) that makes a client reset and reconnect,
//!   over IPv4 and IPv6.

pub mod arp;
pub mod message;
pub mod ndp;
pub mod tickle;

/// Why bytes were not a valid frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Shorter than its fields say.
    #[error("truncated")]
    Truncated,
    /// A field holds a value the format does not allow.
    #[error("malformed field: {0}")]
    Malformed(&'static str),
    /// The authentication tag does not match (wrong or missing cluster secret).
    #[error("bad authentication tag")]
    BadTag,
}

impl WireError {
    /// What an admin should check when a cluster datagram is refused.
    pub fn hint(&self) -> &'static str {
        match self {
            WireError::BadTag => "the sender does not have this cluster's secret_file (or a different one)",
            _ => "the sender is not a nasgw node of this version",
        }
    }
}

/// Reads big-endian fields from a byte slice, failing (never panicking) past its end.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.buf.len() < n {
            return Err(WireError::Truncated);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    pub(crate) fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }
    pub(crate) fn u16(&mut self) -> Result<u16, WireError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    pub(crate) fn u32(&mut self) -> Result<u32, WireError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub(crate) fn u64(&mut self) -> Result<u64, WireError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }
}

/// The Internet checksum (RFC 1071) over `data`, starting from `sum`.
pub(crate) fn checksum_add(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

/// Folds a running sum into the final one's-complement checksum.
pub(crate) fn checksum_finish(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
