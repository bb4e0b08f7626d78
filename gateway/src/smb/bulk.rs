//! A reply's bulk data (READ), read into a buffer that can keep room in front of it.
//!
//! The ciphers seal one contiguous buffer in place, so an encrypted READ reply needs its
//! header and body right before the data. Reading the file into a buffer that starts with
//! [`Bulk::ROOM`] spare bytes lets the header go there: the data is copied once, from the file
//! into this buffer, then encrypted where it lies and written to the socket. Without the room
//! (an unencrypted reply, data from a stream) the header is sent in a slice of its own, or
//! prepended by moving the data.

use super::wire::header::HEADER_LEN;

/// Bulk data, `buf[start..]`; `buf[..start]` is spare room for what goes before it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bulk {
    buf: Vec<u8>,
    start: usize,
}

impl Bulk {
    /// Room kept before the data: an SMB2 header and a READ response body.
    pub const ROOM: usize = HEADER_LEN + 16;

    /// A buffer for reading up to `capacity` bytes of data after [`Bulk::ROOM`] spare bytes;
    /// append the data to it and pass it to [`Bulk::after_room`].
    pub fn room_for(capacity: usize) -> Vec<u8> {
        let mut buf = Vec::with_capacity(Self::ROOM + capacity);
        buf.resize(Self::ROOM, 0);
        buf
    }

    /// The data appended to a buffer of [`Bulk::room_for`] (the room is what is missing
    /// when `buf` is shorter).
    pub fn after_room(buf: Vec<u8>) -> Self {
        let start = Self::ROOM.min(buf.len());
        Self { buf, start }
    }

    /// The bytes, without room.
    pub fn bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// The bytes, to seal or sign in place.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..]
    }

    /// Number of bytes.
    pub fn len(&self) -> usize {
        self.buf.len() - self.start
    }

    /// No bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Puts `head` before the bytes: in the room when it fits (no copy of the data), else by
    /// moving the data behind it.
    pub fn prepend(&mut self, head: &[u8]) {
        if head.len() <= self.start {
            self.start -= head.len();
            self.buf[self.start..self.start + head.len()].copy_from_slice(head);
        } else {
            self.buf.splice(..self.start, head.iter().copied());
            self.start = 0;
        }
    }
}

impl From<Vec<u8>> for Bulk {
    /// Bytes without room.
    fn from(buf: Vec<u8>) -> Self {
        Self { buf, start: 0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_goes_into_the_room_without_moving_the_data() {
        let mut buf = Bulk::room_for(1000);
        buf.extend_from_slice(&[7; 1000]);
        let data_at = buf.as_ptr() as usize + Bulk::ROOM;
        let mut b = Bulk::after_room(buf);
        assert_eq!((b.len(), b.bytes()), (1000, &[7u8; 1000][..]));
        let head = [1u8; Bulk::ROOM];
        b.prepend(&head);
        assert_eq!(b.len(), Bulk::ROOM + 1000);
        assert_eq!(&b.bytes()[..Bulk::ROOM], &head);
        assert_eq!(b.bytes()[Bulk::ROOM..].as_ptr() as usize, data_at, "the data did not move");
        b.bytes_mut()[0] = 9;
        assert_eq!(b.bytes()[0], 9);
    }

    #[test]
    fn without_room_the_data_moves_behind_the_head() {
        let mut b = Bulk::from(vec![5u8; 10]);
        b.prepend(b"head");
        assert_eq!(b.bytes(), b"head\x05\x05\x05\x05\x05\x05\x05\x05\x05\x05");
        // A head longer than the room left: the room is dropped, nothing is lost.
        let mut b = Bulk::after_room(Bulk::room_for(3));
        b.buf.extend_from_slice(b"abc");
        b.prepend(&[b'x'; Bulk::ROOM + 2]);
        assert_eq!(b.len(), Bulk::ROOM + 2 + 3);
        assert!(b.bytes().ends_with(b"xxabc"));
        // A short buffer is all room, no data.
        assert!(Bulk::after_room(vec![0; 4]).is_empty());
        assert!(Bulk::default().is_empty());
    }
}
