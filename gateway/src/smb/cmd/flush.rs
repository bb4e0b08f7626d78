//! FLUSH: makes a file's data stable on the volume.

use super::open::read_file_id;
use super::Reply;
use crate::smb::conn::Connection;
use crate::smb::wire::header::Header;
use crate::smb::wire::status::NtStatus;
use crate::smb::wire::Reader;

/// Handles FLUSH.
pub async fn handle(conn: &mut Connection, hdr: &Header, msg: &[u8]) -> Result<Reply, NtStatus> {
    let mut r = Reader::at(msg, 64);
    let fid = (|| {
        if r.u16().ok()? != 24 {
            return None;
        }
        r.skip(6).ok()?;
        read_file_id(&mut r).ok()
    })()
    .ok_or(NtStatus::INVALID_PARAMETER)?;
    conn.session(hdr.session_id)?;
    let vol = conn.file_id(fid.0, fid.1)?;
    let server = conn.server.clone();
    let f = conn.opens.get_mut(vol, hdr.session_id, hdr.tree_id)?.file()?;
    if f.access & (super::open::access::WRITE_DATA | super::open::access::APPEND_DATA) == 0 {
        return Err(NtStatus::ACCESS_DENIED);
    }
    if !f.is_dir {
        server.ns.fsync(f.id).await?;
    }
    Ok(Reply::ok(super::logoff::empty_body()))
}
