//! OPLOCK_BREAK (MS-SMB2 2.2.24/2.2.25): a client acknowledges an oplock break (24-byte body,
//! by FileId) or a lease break (36-byte body, by lease key). The lock service takes the
//! acknowledgement; opens waiting for the break go on.

use super::open::read_file_id;
use super::Reply;
use crate::locks::{Conflict, LeaseId};
use crate::smb::conn::Connection;
use crate::smb::leases;
use crate::smb::wire::header::Header;
use crate::smb::wire::status::NtStatus;
use crate::smb::wire::{Reader, WireError, WireResult, Writer};

/// STATUS_INVALID_OPLOCK_PROTOCOL: an oplock acknowledgement without a break in progress.
pub const INVALID_OPLOCK_PROTOCOL: NtStatus = NtStatus(0xC000_00E3);

/// A decoded acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Oplock break acknowledgement.
    Oplock {
        /// The level the client went to.
        level: u8,
        /// FileId (persistent, volatile).
        file_id: (u64, u64),
    },
    /// Lease break acknowledgement.
    Lease {
        /// LeaseKey.
        key: [u8; 16],
        /// The state the client kept.
        state: u32,
    },
}

impl Request {
    /// Decodes the body of `msg`.
    pub fn parse(msg: &[u8]) -> WireResult<Self> {
        let mut r = Reader::at(msg, 64);
        match r.u16()? {
            24 => {
                let level = r.u8()?;
                r.skip(5)?;
                Ok(Self::Oplock { level, file_id: read_file_id(&mut r)? })
            }
            36 => {
                r.skip(6)?;
                let key: [u8; 16] = r.bytes(16)?.try_into().map_err(|_| WireError::Malformed("lease key"))?;
                let state = r.u32()?;
                r.skip(8)?;
                Ok(Self::Lease { key, state })
            }
            _ => Err(WireError::Malformed("OPLOCK_BREAK structure size")),
        }
    }
}

/// Handles OPLOCK_BREAK acknowledgements.
pub async fn handle(conn: &mut Connection, hdr: &Header, req: Request) -> Result<Reply, NtStatus> {
    conn.session(hdr.session_id)?;
    let server = conn.server.clone();
    match req {
        Request::Oplock { level, file_id } => {
            let vol = conn.file_id(file_id.0, file_id.1)?;
            let f = conn.opens.get_mut(vol, hdr.session_id, hdr.tree_id)?.file()?;
            let Some(lease) = f.lease.filter(leases::is_oplock) else { return Err(INVALID_OPLOCK_PROTOCOL) };
            if !matches!(level, leases::level::NONE | leases::level::II) {
                return Err(INVALID_OPLOCK_PROTOCOL);
            }
            server.locks.ack_break(&f.id, lease, leases::oplock_state(level)).await.map_err(|c| match c {
                Conflict::NoBreak | Conflict::NoSuchOpen => INVALID_OPLOCK_PROTOCOL,
                c => c.into(),
            })?;
            let mut w = Writer::with_capacity(24);
            w.u16(24).u8(level).u8(0).u32(0).u64(file_id.0).u64(file_id.1);
            Ok(Reply::ok(w.buf))
        }
        Request::Lease { key, state } => {
            let lease = LeaseId { client: conn.client_guid, key };
            let Some(file) = server.breaks.file_of(&lease) else { return Err(NtStatus::OBJECT_NAME_NOT_FOUND) };
            let kept = (state & 7) as u8;
            server.locks.ack_break(&file, lease, kept).await.map_err(|c| match c {
                Conflict::NoBreak => NtStatus::UNSUCCESSFUL,
                Conflict::NotAccepted => NtStatus::REQUEST_NOT_ACCEPTED,
                Conflict::NoSuchOpen => NtStatus::OBJECT_NAME_NOT_FOUND,
                c => c.into(),
            })?;
            let mut w = Writer::with_capacity(36);
            w.u16(36).u16(0).u32(0).bytes(&key).u32(u32::from(kept)).u64(0);
            Ok(Reply::ok(w.buf))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smb::wire::header::HEADER_LEN;

    #[test]
    fn both_acknowledgements_decode() {
        let mut m = vec![0u8; HEADER_LEN];
        m.extend_from_slice(&24u16.to_le_bytes());
        m.push(1);
        m.extend_from_slice(&[0; 5]);
        m.extend_from_slice(&3u64.to_le_bytes());
        m.extend_from_slice(&4u64.to_le_bytes());
        assert_eq!(Request::parse(&m), Ok(Request::Oplock { level: 1, file_id: (3, 4) }));
        let mut l = vec![0u8; HEADER_LEN];
        l.extend_from_slice(&36u16.to_le_bytes());
        l.extend_from_slice(&[0; 6]);
        l.extend_from_slice(&[9; 16]);
        l.extend_from_slice(&3u32.to_le_bytes());
        l.extend_from_slice(&0u64.to_le_bytes());
        assert_eq!(Request::parse(&l), Ok(Request::Lease { key: [9; 16], state: 3 }));
        assert!(Request::parse(&l[..HEADER_LEN + 20]).is_err());
        let mut bad = l.clone();
        bad[HEADER_LEN] = 30;
        assert!(Request::parse(&bad).is_err());
    }
}
