//! WRITE (MS-SMB2 2.2.21/2.2.22): pipe requests, or file data up to 8 MiB (multi-credit).

use super::open::{access, read_file_id, OpenKind};
use super::Reply;
use crate::smb::conn::Connection;
use crate::smb::srvsvc;
use crate::smb::wire::header::Header;
use crate::smb::wire::status::NtStatus;
use crate::smb::wire::{slice_at, Reader, WireError, WireResult, Writer};
use crate::vfs::Stability;

/// A decoded WRITE request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    /// File offset.
    pub offset: u64,
    /// FileId.
    pub file_id: (u64, u64),
    /// Flags (write-through).
    pub flags: u32,
    /// The data.
    pub data: &'a [u8],
}

impl<'a> Request<'a> {
    /// Decodes the body of `msg`.
    pub fn parse(msg: &'a [u8]) -> WireResult<Self> {
        let mut r = Reader::at(msg, 64);
        if r.u16()? != 49 {
            return Err(WireError::Malformed("WRITE structure size"));
        }
        let data_off = r.u16()? as usize;
        let len = r.u32()? as usize;
        let offset = r.u64()?;
        let file_id = read_file_id(&mut r)?;
        r.skip(4 + 4 + 2 + 2)?;
        let flags = r.u32()?;
        Ok(Self { offset, file_id, flags, data: slice_at(msg, data_off, len)? })
    }
}

/// Encodes a WRITE response.
pub fn response(count: u32) -> Vec<u8> {
    let mut w = Writer::with_capacity(16);
    w.u16(17).u16(0).u32(count).u32(0).u16(0).u16(0);
    w.buf
}

/// Handles WRITE.
pub async fn handle(conn: &mut Connection, hdr: &Header, req: Request<'_>) -> Result<Reply, NtStatus> {
    conn.session(hdr.session_id)?;
    let vol = conn.file_id(req.file_id.0, req.file_id.1)?;
    let shares = srvsvc::listed_shares(&conn.server.shares);
    let server = conn.server.clone();
    let open = conn.opens.get_mut(vol, hdr.session_id, hdr.tree_id)?;
    let f = match &mut open.kind {
        OpenKind::Pipe(p) => {
            p.write(req.data, &shares).map_err(|_| NtStatus::INVALID_PARAMETER)?;
            return Ok(Reply::ok(response(req.data.len() as u32)));
        }
        OpenKind::File(f) => f,
        OpenKind::Pending(_) => return Err(NtStatus::FILE_CLOSED),
        OpenKind::QuotaFake => return Err(NtStatus::INVALID_DEVICE_REQUEST),
    };
    if f.is_dir {
        return Err(NtStatus::INVALID_DEVICE_REQUEST);
    }
    f.require(access::WRITE_DATA | access::APPEND_DATA)?;
    let mut offset = req.offset;
    if let Some(s) = f.state.stream.clone() {
        return write_stream(&server, f, &s, offset, req.data).await;
    }
    if offset == u64::MAX || f.access & access::WRITE_DATA == 0 {
        // Append: at the end of the file whatever the offset says.
        offset = server.ns.getattr(f.id).await?.size;
    }
    if offset.checked_add(req.data.len() as u64).is_none() || offset > i64::MAX as u64 {
        return Err(NtStatus::INVALID_PARAMETER);
    }
    if !server.locks.io_allowed(&f.id, Some(f.key), offset, req.data.len() as u64, true).await? {
        return Err(NtStatus::FILE_LOCK_CONFLICT);
    }
    server.locks.contend_if_needed(&f.id, f.lease).await?;
    let stable = if f.write_through || req.flags & WRITEFLAG_WRITE_THROUGH != 0 {
        Stability::FileSync
    } else {
        Stability::Unstable
    };
    // The write time clients see moves later (see `write_time`): the time before the first
    // write of a handle that keeps no time of its own.
    let delayed = f.state.sticky_write_time.is_none();
    let base = match delayed && !server.write_times.tracks(&f.id) {
        true => crate::smb::fs::filetime(server.ns.getattr(f.id).await?.mtime),
        false => 0,
    };
    let (n, _, _) = server.ns.write_from(&f.cred, f.id, offset, req.data, stable).await?;
    f.position = offset + n as u64;
    f.wrote = true;
    if delayed {
        server.write_times.wrote(f.id, f.key, base, crate::smb::filetime_now());
    }
    crate::smb::fs::keep_sticky_times(&server.ns, f).await;
    Ok(Reply::ok(response(n)))
}

/// A WRITE to an alternate data stream (see [`crate::smb::streams`]): one DISK_FULL when the
/// stream would outgrow what an extended attribute holds, and nothing changed.
async fn write_stream(
    server: &crate::smb::SmbServer,
    f: &mut super::open::FileOpen,
    s: &crate::smb::streams::StreamOpen,
    mut offset: u64,
    data: &[u8],
) -> Result<Reply, NtStatus> {
    let ns = &server.ns;
    if offset == u64::MAX || f.access & access::WRITE_DATA == 0 {
        offset = crate::smb::streams::read_all(ns, &f.cred, s).await?.len() as u64;
    }
    if !server.locks.io_allowed(&f.id, Some(f.key), offset, data.len() as u64, true).await? {
        return Err(NtStatus::FILE_LOCK_CONFLICT);
    }
    crate::smb::streams::write_at(ns, &f.cred, s, offset, data).await?;
    f.position = offset + data.len() as u64;
    f.wrote = true;
    Ok(Reply::ok(response(data.len() as u32)))
}

/// WRITE flag: write through to stable storage.
pub const WRITEFLAG_WRITE_THROUGH: u32 = 1;
