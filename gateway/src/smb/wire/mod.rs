//! SMB2 bytes on the wire, smoltcp style: pure functions from bytes to values (or an error) and
//! back. Parsing never panics on any input: every read goes through [`Reader`], which checks
//! bounds and returns [`WireError`] instead.

pub mod header;
pub mod status;

use thiserror::Error;

/// A message that cannot be decoded. The connection answers `STATUS_INVALID_PARAMETER` or
/// closes, it never panics.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WireError {
    /// Fewer bytes than a field needs.
    #[error("message truncated: need {need} bytes at offset {at}, have {have}")]
    Truncated {
        /// Offset of the field.
        at: usize,
        /// Bytes the field needs.
        need: usize,
        /// Bytes available.
        have: usize,
    },
    /// A field holds a value the protocol forbids.
    #[error("malformed {0}")]
    Malformed(&'static str),
}

/// Result of a decoder.
pub type WireResult<T> = Result<T, WireError>;

/// A bounds-checked little-endian reader over a borrowed buffer.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Reads `buf` from its start.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// Reads `buf` from `pos`.
    pub fn at(buf: &'a [u8], pos: usize) -> Self {
        Self { buf, pos }
    }

    /// Current offset.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Takes `n` bytes.
    pub fn bytes(&mut self, n: usize) -> WireResult<&'a [u8]> {
        let end = self.pos.checked_add(n).ok_or(WireError::Malformed("length"))?;
        let have = self.buf.len().saturating_sub(self.pos);
        let s = self.buf.get(self.pos..end).ok_or(WireError::Truncated { at: self.pos, need: n, have })?;
        self.pos = end;
        Ok(s)
    }

    /// Skips `n` bytes.
    pub fn skip(&mut self, n: usize) -> WireResult<()> {
        self.bytes(n).map(|_| ())
    }

    /// One byte.
    pub fn u8(&mut self) -> WireResult<u8> {
        Ok(self.bytes(1)?[0])
    }

    /// Little-endian u16.
    pub fn u16(&mut self) -> WireResult<u16> {
        let b = self.bytes(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    /// Little-endian u32.
    pub fn u32(&mut self) -> WireResult<u32> {
        let b = self.bytes(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Little-endian u64.
    pub fn u64(&mut self) -> WireResult<u64> {
        let b = self.bytes(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    /// A fixed-size array.
    pub fn array<const N: usize>(&mut self) -> WireResult<[u8; N]> {
        let b = self.bytes(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(b);
        Ok(a)
    }
}

/// `len` bytes at `offset` of `buf`, or an error when they are not all inside it.
pub fn slice_at(buf: &[u8], offset: usize, len: usize) -> WireResult<&[u8]> {
    if len == 0 {
        return Ok(&[]);
    }
    let end = offset.checked_add(len).ok_or(WireError::Malformed("offset"))?;
    buf.get(offset..end).ok_or(WireError::Truncated { at: offset, need: len, have: buf.len().saturating_sub(offset) })
}

/// A little-endian writer appending to a `Vec`.
#[derive(Debug, Default, Clone)]
pub struct Writer {
    /// The bytes written so far.
    pub buf: Vec<u8>,
}

impl Writer {
    /// An empty writer.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty writer with room for `n` bytes.
    pub fn with_capacity(n: usize) -> Self {
        Self { buf: Vec::with_capacity(n) }
    }

    /// Bytes written.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Nothing written yet.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Appends one byte.
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }

    /// Appends a little-endian u16.
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// Appends a little-endian u32.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// Appends a little-endian u64.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// Appends raw bytes.
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(b);
        self
    }

    /// Appends `n` zero bytes.
    pub fn zeros(&mut self, n: usize) -> &mut Self {
        self.buf.resize(self.buf.len() + n, 0);
        self
    }

    /// Pads with zeros to a multiple of `n`.
    pub fn align(&mut self, n: usize) -> &mut Self {
        let rem = self.buf.len() % n;
        if rem != 0 {
            self.zeros(n - rem);
        }
        self
    }

    /// Overwrites a u16 written earlier at `at`.
    pub fn put_u16(&mut self, at: usize, v: u16) {
        if let Some(s) = self.buf.get_mut(at..at + 2) {
            s.copy_from_slice(&v.to_le_bytes());
        }
    }

    /// Overwrites a u32 written earlier at `at`.
    pub fn put_u32(&mut self, at: usize, v: u32) {
        if let Some(s) = self.buf.get_mut(at..at + 4) {
            s.copy_from_slice(&v.to_le_bytes());
        }
    }
}

/// UTF-16LE bytes of `s` (SMB names are UTF-16LE on the wire).
pub fn utf16le(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

/// Decodes UTF-16LE bytes; odd lengths and unpaired surrogates are errors.
pub fn from_utf16le(b: &[u8]) -> WireResult<String> {
    if b.len() % 2 != 0 {
        return Err(WireError::Malformed("UTF-16 length"));
    }
    let units: Vec<u16> = b.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
    String::from_utf16(&units).map_err(|_| WireError::Malformed("UTF-16 name"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_reports_truncation_instead_of_panicking() {
        let mut r = Reader::new(&[1, 2, 3]);
        assert_eq!(r.u16().unwrap(), 0x0201);
        assert!(matches!(r.u32(), Err(WireError::Truncated { at: 2, need: 4, have: 1 })));
        assert!(slice_at(&[0; 4], usize::MAX, 2).is_err());
        assert!(slice_at(&[0; 4], 3, 2).is_err());
    }

    #[test]
    fn utf16_round_trips() {
        assert_eq!(from_utf16le(&utf16le("dir\\é.txt")).unwrap(), "dir\\é.txt");
        assert!(from_utf16le(&[0x41]).is_err());
    }
}
