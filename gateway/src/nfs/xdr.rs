//! A bounded XDR reader over a borrowed buffer (RFC 4506), for decoding what clients send.
//!
//! Why not `nfs3_types`' `Unpack` for requests: it allocates the length a client claims before
//! reading it (a 4-byte length can ask for 4 GiB, and a `Vec<u32>` for 16 GiB), which lets one
//! packet abort the process. This reader borrows from the record and checks every length
//! against the bytes actually present, so decoding never allocates more than the record and
//! never panics. Replies are encoded with `nfs3_types`.

/// Decoding failed: the record is malformed (the caller answers GARBAGE_ARGS).
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
pub enum XdrError {
    /// Fewer bytes than the field needs.
    #[error("truncated")]
    Truncated,
    /// A variable-length item longer than its protocol limit.
    #[error("length {0} over limit")]
    TooLong(u32),
    /// A discriminant or boolean out of range.
    #[error("invalid value {0}")]
    BadValue(u32),
}

/// Cursor over XDR data.
#[derive(Clone, Debug)]
pub struct XdrReader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> XdrReader<'a> {
    /// Reads `buf` from its start.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// Bytes not yet consumed.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Offset of the cursor in the buffer.
    pub fn position(&self) -> usize {
        self.pos
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], XdrError> {
        if self.remaining() < n {
            return Err(XdrError::Truncated);
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// An unsigned 32-bit integer.
    pub fn u32(&mut self) -> Result<u32, XdrError> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }

    /// An unsigned 64-bit integer.
    pub fn u64(&mut self) -> Result<u64, XdrError> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }

    /// A boolean (0 or 1).
    pub fn bool(&mut self) -> Result<bool, XdrError> {
        match self.u32()? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(XdrError::BadValue(v)),
        }
    }

    /// Fixed-length opaque data of `n` bytes (padded to 4).
    pub fn fixed(&mut self, n: usize) -> Result<&'a [u8], XdrError> {
        let s = self.take(n)?;
        self.take((4 - n % 4) % 4)?;
        Ok(s)
    }

    /// Variable-length opaque data of at most `max` bytes (padded to 4).
    pub fn opaque(&mut self, max: usize) -> Result<&'a [u8], XdrError> {
        let len = self.u32()?;
        if len as usize > max {
            return Err(XdrError::TooLong(len));
        }
        self.fixed(len as usize)
    }
}

/// Appends XDR values to a buffer (for the small bodies of NLM, NSM and portmapper messages;
/// NFS replies are encoded with `nfs3_types`).
#[derive(Debug, Default)]
pub struct XdrWriter {
    /// The encoded bytes so far.
    pub buf: Vec<u8>,
}

impl XdrWriter {
    /// Appends to `buf`.
    pub fn new(buf: Vec<u8>) -> Self {
        Self { buf }
    }

    /// An unsigned 32-bit integer.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// An unsigned 64-bit integer.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// A boolean.
    pub fn bool(&mut self, v: bool) -> &mut Self {
        self.u32(u32::from(v))
    }

    /// Fixed-length opaque data (padded to 4).
    pub fn fixed(&mut self, v: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(v);
        self.buf.resize(self.buf.len() + (4 - v.len() % 4) % 4, 0);
        self
    }

    /// Variable-length opaque data or a string (length, bytes, padding).
    pub fn opaque(&mut self, v: &[u8]) -> &mut Self {
        self.u32(v.len() as u32);
        self.fixed(v)
    }

    /// The bytes.
    pub fn into_inner(self) -> Vec<u8> {
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_values_and_refuses_lies() {
        let data = [0, 0, 0, 3, b'a', b'b', b'c', 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 9];
        let mut r = XdrReader::new(&data);
        assert_eq!(r.opaque(10).unwrap(), b"abc");
        assert!(r.bool().unwrap());
        assert_eq!(r.u64().unwrap(), 9);
        assert_eq!(r.u32(), Err(XdrError::Truncated));
        // A length larger than the data, or than the limit, fails without allocating.
        let huge = [0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4];
        assert_eq!(XdrReader::new(&huge).opaque(usize::MAX), Err(XdrError::Truncated));
        assert_eq!(XdrReader::new(&huge).opaque(64), Err(XdrError::TooLong(u32::MAX)));
        assert_eq!(XdrReader::new(&[0, 0, 0, 2]).bool(), Err(XdrError::BadValue(2)));
    }

    #[test]
    fn writer_pads_and_reader_reads_it_back() {
        let mut w = XdrWriter::default();
        w.opaque(b"abcde").bool(true).u64(7).fixed(b"xy");
        assert_eq!(w.buf.len(), 4 + 8 + 4 + 8 + 4);
        let mut r = XdrReader::new(&w.buf);
        assert_eq!(r.opaque(8).unwrap(), b"abcde");
        assert!(r.bool().unwrap());
        assert_eq!(r.u64().unwrap(), 7);
        assert_eq!(r.fixed(2).unwrap(), b"xy");
        assert_eq!(r.remaining(), 0);
    }
}
