//! The 64-byte SMB2 header (MS-SMB2 2.2.1) and the transport frame around messages.

use super::{Reader, WireError, WireResult, Writer};

/// `\xFESMB`: an SMB2/3 message.
pub const PROTOCOL_ID: [u8; 4] = [0xFE, b'S', b'M', b'B'];
/// `\xFFSMB`: an SMB1 message (only NEGOTIATE is understood, to upgrade to SMB2).
pub const SMB1_PROTOCOL_ID: [u8; 4] = [0xFF, b'S', b'M', b'B'];
/// `\xFDSMB`: an SMB3 transform (encrypted) message; refused, encryption is not offered.
pub const TRANSFORM_PROTOCOL_ID: [u8; 4] = [0xFD, b'S', b'M', b'B'];
/// Size of the SMB2 header.
pub const HEADER_LEN: usize = 64;

/// Header flag: the message is a response.
pub const FLAG_SERVER_TO_REDIR: u32 = 0x1;
/// Header flag: async form (AsyncId instead of TreeId).
pub const FLAG_ASYNC_COMMAND: u32 = 0x2;
/// Header flag: compound element related to the previous one.
pub const FLAG_RELATED_OPERATIONS: u32 = 0x4;
/// Header flag: the message is signed.
pub const FLAG_SIGNED: u32 = 0x8;
/// Header flag: DFS operation.
pub const FLAG_DFS_OPERATIONS: u32 = 0x1000_0000;
/// Header flag: replayed operation.
pub const FLAG_REPLAY_OPERATION: u32 = 0x2000_0000;

/// SMB2 command codes.
#[allow(missing_docs)]
pub mod command {
    pub const NEGOTIATE: u16 = 0x00;
    pub const SESSION_SETUP: u16 = 0x01;
    pub const LOGOFF: u16 = 0x02;
    pub const TREE_CONNECT: u16 = 0x03;
    pub const TREE_DISCONNECT: u16 = 0x04;
    pub const CREATE: u16 = 0x05;
    pub const CLOSE: u16 = 0x06;
    pub const FLUSH: u16 = 0x07;
    pub const READ: u16 = 0x08;
    pub const WRITE: u16 = 0x09;
    pub const LOCK: u16 = 0x0A;
    pub const IOCTL: u16 = 0x0B;
    pub const CANCEL: u16 = 0x0C;
    pub const ECHO: u16 = 0x0D;
    pub const QUERY_DIRECTORY: u16 = 0x0E;
    pub const CHANGE_NOTIFY: u16 = 0x0F;
    pub const QUERY_INFO: u16 = 0x10;
    pub const SET_INFO: u16 = 0x11;
    pub const OPLOCK_BREAK: u16 = 0x12;
}

/// A decoded SMB2 header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    /// Credits this request consumes (large MTU).
    pub credit_charge: u16,
    /// Status in responses; channel sequence in requests.
    pub status: u32,
    /// Command code.
    pub command: u16,
    /// Credits requested (request) or granted (response).
    pub credits: u16,
    /// Header flags.
    pub flags: u32,
    /// Offset of the next compound element, 0 for the last.
    pub next_command: u32,
    /// Message id (sequence number).
    pub message_id: u64,
    /// Async id (async form only).
    pub async_id: u64,
    /// Tree id (sync form only).
    pub tree_id: u32,
    /// Session id.
    pub session_id: u64,
    /// Signature (zero when unsigned).
    pub signature: [u8; 16],
}

impl Header {
    /// Decodes the header at the start of `buf`.
    pub fn parse(buf: &[u8]) -> WireResult<Self> {
        let mut r = Reader::new(buf);
        if r.array::<4>()? != PROTOCOL_ID {
            return Err(WireError::Malformed("protocol id"));
        }
        if r.u16()? != 64 {
            return Err(WireError::Malformed("header structure size"));
        }
        let credit_charge = r.u16()?;
        let status = r.u32()?;
        let command = r.u16()?;
        let credits = r.u16()?;
        let flags = r.u32()?;
        let next_command = r.u32()?;
        let message_id = r.u64()?;
        let (async_id, tree_id) = if flags & FLAG_ASYNC_COMMAND != 0 {
            (r.u64()?, 0)
        } else {
            r.skip(4)?;
            (0, r.u32()?)
        };
        let session_id = r.u64()?;
        let signature = r.array::<16>()?;
        Ok(Self {
            credit_charge,
            status,
            command,
            credits,
            flags,
            next_command,
            message_id,
            async_id,
            tree_id,
            session_id,
            signature,
        })
    }

    /// Appends the 64 header bytes.
    pub fn emit(&self, w: &mut Writer) {
        w.bytes(&PROTOCOL_ID).u16(64).u16(self.credit_charge).u32(self.status).u16(self.command).u16(self.credits);
        w.u32(self.flags).u32(self.next_command).u64(self.message_id);
        if self.flags & FLAG_ASYNC_COMMAND != 0 {
            w.u64(self.async_id);
        } else {
            w.u32(0).u32(self.tree_id);
        }
        w.u64(self.session_id).bytes(&self.signature);
    }

    /// The request is signed.
    pub fn is_signed(&self) -> bool {
        self.flags & FLAG_SIGNED != 0
    }

    /// The request is related to the previous compound element.
    pub fn is_related(&self) -> bool {
        self.flags & FLAG_RELATED_OPERATIONS != 0
    }
}

/// Byte offsets inside the header that signing and compound chaining patch in place.
pub mod offset {
    /// Flags field.
    pub const FLAGS: usize = 16;
    /// NextCommand field.
    pub const NEXT_COMMAND: usize = 20;
    /// Signature field.
    pub const SIGNATURE: usize = 48;
}

/// Length of the Direct TCP transport frame whose 4-byte header is `hdr` (RFC 1002 style:
/// a zero byte then a 24-bit big-endian length).
pub fn frame_len(hdr: [u8; 4]) -> WireResult<usize> {
    if hdr[0] != 0 {
        return Err(WireError::Malformed("transport frame type"));
    }
    Ok(((hdr[1] as usize) << 16) | ((hdr[2] as usize) << 8) | hdr[3] as usize)
}

/// Longest message a transport frame can carry (24-bit length).
pub const MAX_FRAME_LEN: usize = 0xFF_FFFF;

/// The 4-byte transport header for a message of `len` bytes; `None` past [`MAX_FRAME_LEN`]
/// (the length would wrap).
pub fn frame_header(len: usize) -> Option<[u8; 4]> {
    if len > MAX_FRAME_LEN {
        return None;
    }
    let l = len as u32;
    Some([0, (l >> 16) as u8, (l >> 8) as u8, l as u8])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_in_both_forms() {
        for flags in [FLAG_SIGNED, FLAG_ASYNC_COMMAND | FLAG_SERVER_TO_REDIR] {
            let h = Header {
                credit_charge: 2,
                status: 0x103,
                command: command::READ,
                credits: 31,
                flags,
                next_command: 0,
                message_id: 77,
                async_id: if flags & FLAG_ASYNC_COMMAND != 0 { 9 } else { 0 },
                tree_id: if flags & FLAG_ASYNC_COMMAND != 0 { 0 } else { 5 },
                session_id: 0xdead,
                signature: [7; 16],
            };
            let mut w = Writer::new();
            h.emit(&mut w);
            assert_eq!(w.len(), HEADER_LEN);
            assert_eq!(Header::parse(&w.buf).unwrap(), h);
        }
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(Header::parse(b"\xFESMB").is_err());
        assert!(Header::parse(&[0u8; 64]).is_err());
        assert!(frame_len([1, 0, 0, 0]).is_err());
        assert_eq!(frame_len(frame_header(0x12345).unwrap()).unwrap(), 0x12345);
        assert_eq!(frame_header(MAX_FRAME_LEN + 1), None, "a length that does not fit is refused");
    }
}
