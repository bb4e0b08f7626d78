//! READ (MS-SMB2 2.2.19/2.2.20): pipe replies, or file data up to 8 MiB (multi-credit).

use super::negotiate::{MAX_IO, MAX_IO_202};
use super::open::{access, read_file_id, OpenKind};
use super::Reply;
use crate::smb::bulk::Bulk;
use crate::smb::conn::Connection;
use crate::smb::wire::header::Header;
use crate::smb::wire::status::NtStatus;
use crate::smb::wire::{Reader, WireError, WireResult, Writer};

/// A decoded READ request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Bytes wanted.
    pub length: u32,
    /// File offset.
    pub offset: u64,
    /// FileId.
    pub file_id: (u64, u64),
    /// Fewer bytes than this is an error (END_OF_FILE).
    pub minimum: u32,
}

impl Request {
    /// Decodes the body of `msg`.
    pub fn parse(msg: &[u8]) -> WireResult<Self> {
        let mut r = Reader::at(msg, 64);
        if r.u16()? != 49 {
            return Err(WireError::Malformed("READ structure size"));
        }
        r.skip(2)?;
        let length = r.u32()?;
        let offset = r.u64()?;
        let file_id = read_file_id(&mut r)?;
        let minimum = r.u32()?;
        Ok(Self { length, offset, file_id, minimum })
    }
}

/// Encodes a READ response around `data`.
pub fn response(data: &[u8]) -> Vec<u8> {
    let mut w = Writer::with_capacity(16 + data.len());
    w.u16(17).u8(80).u8(0).u32(data.len() as u32).u32(0).u32(0).bytes(data);
    w.buf
}

/// Handles READ.
pub async fn handle(conn: &mut Connection, hdr: &Header, req: Request) -> Result<Reply, NtStatus> {
    conn.session(hdr.session_id)?;
    let vol = conn.file_id(req.file_id.0, req.file_id.1)?;
    let max = if conn.large_mtu() { MAX_IO } else { MAX_IO_202 };
    if req.length > max {
        return Err(NtStatus::INVALID_PARAMETER);
    }
    let server = conn.server.clone();
    let sealing = conn.sealing;
    let open = conn.opens.get_mut(vol, hdr.session_id, hdr.tree_id)?;
    let f = match &mut open.kind {
        OpenKind::Pipe(p) => {
            let data = p.read(req.length as usize);
            if data.is_empty() {
                return Err(NtStatus(0xC000_00D9)); // STATUS_PIPE_EMPTY
            }
            return Ok(Reply::ok(response(&data)));
        }
        OpenKind::File(f) => f,
        OpenKind::Pending(_) => return Err(NtStatus::FILE_CLOSED),
        OpenKind::QuotaFake => return Err(NtStatus::INVALID_DEVICE_REQUEST),
    };
    if f.is_dir {
        return Err(NtStatus::INVALID_DEVICE_REQUEST);
    }
    f.require(access::READ_DATA | access::EXECUTE)?;
    if !server.locks.io_allowed(&f.id, Some(f.key), req.offset, req.length as u64, false).await? {
        return Err(NtStatus::FILE_LOCK_CONFLICT);
    }
    let data = match &f.state.stream {
        Some(s) => Bulk::from(crate::smb::streams::read_at(&server.ns, &f.cred, s, req.offset, req.length).await?),
        None if sealing => {
            // Room for the header before the data: the reply is sealed where the data lies.
            let room = Bulk::room_for(req.length as usize);
            let (buf, read) = server.ns.read_append(&f.cred, f.id, req.offset, req.length, room).await;
            read?;
            Bulk::after_room(buf)
        }
        None => Bulk::from(server.ns.read(&f.cred, f.id, req.offset, req.length).await?.0),
    };
    if (data.is_empty() && req.length > 0) || (data.len() as u32) < req.minimum {
        return Err(NtStatus::END_OF_FILE);
    }
    f.position = req.offset + data.len() as u64;
    let mut r = Reply::ok(response(&[]));
    r.body[4..8].copy_from_slice(&(data.len() as u32).to_le_bytes());
    r.tail = data;
    Ok(r)
}
