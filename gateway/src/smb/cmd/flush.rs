//! FLUSH: makes a file's data stable on the volume.

use super::open::read_file_id;
use super::Reply;
use crate::smb::conn::Connection;
use crate::smb::wire::header::Header;
use crate::smb::wire::status::NtStatus;
use crate::smb::wire::{Reader, WireError, WireResult};

/// A decoded FLUSH request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// FileId (persistent, volatile).
    pub file_id: (u64, u64),
}

impl Request {
    /// Decodes the body of `msg`.
    pub fn parse(msg: &[u8]) -> WireResult<Self> {
        let mut r = Reader::at(msg, 64);
        if r.u16()? != 24 {
            return Err(WireError::Malformed("FLUSH structure size"));
        }
        r.skip(6)?;
        Ok(Self { file_id: read_file_id(&mut r)? })
    }
}

/// Handles FLUSH.
pub async fn handle(conn: &mut Connection, hdr: &Header, req: Request) -> Result<Reply, NtStatus> {
    let fid = req.file_id;
    conn.session(hdr.session_id)?;
    let vol = conn.file_id(fid.0, fid.1)?;
    let server = conn.server.clone();
    let f = conn.opens.get_mut(vol, hdr.session_id, hdr.tree_id)?.file()?;
    if f.access & (super::open::access::WRITE_DATA | super::open::access::APPEND_DATA) == 0 {
        return Err(NtStatus::ACCESS_DENIED);
    }
    if !f.is_dir {
        server.ns.fsync(crate::smb::fs::file_of(f)).await?;
        // A pending write-time update happens now (see `write_time`).
        server.write_times.flush(&f.id, crate::smb::filetime_now());
    }
    Ok(Reply::ok(super::logoff::empty_body()))
}
