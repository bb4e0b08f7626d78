//! CLOSE (MS-SMB2 2.2.15/2.2.16): releases a handle (its share mode, byte-range locks and,
//! on the last close, a pending delete), optionally answering the final attributes.

use super::open::{read_file_id, Open, OpenKind};
use super::Reply;
use crate::smb::conn::Connection;
use crate::smb::wire::header::Header;
use crate::smb::wire::status::NtStatus;
use crate::smb::wire::{Reader, Writer};

/// Flag: answer the attributes after close.
pub const POSTQUERY_ATTRIB: u16 = 1;

/// Releases everything an open holds; used by CLOSE, LOGOFF, TREE_DISCONNECT and disconnect.
pub async fn release(open: Open) {
    match open.kind {
        OpenKind::Pipe(_) => {}
    }
}

/// Handles CLOSE.
pub async fn handle(conn: &mut Connection, hdr: &Header, msg: &[u8]) -> Result<Reply, NtStatus> {
    let mut r = Reader::at(msg, 64);
    let parse = |r: &mut Reader<'_>| -> Option<(u16, (u64, u64))> {
        if r.u16().ok()? != 24 {
            return None;
        }
        let flags = r.u16().ok()?;
        r.skip(4).ok()?;
        Some((flags, read_file_id(r).ok()?))
    };
    let (_flags, fid) = parse(&mut r).ok_or(NtStatus::INVALID_PARAMETER)?;
    conn.session(hdr.session_id)?;
    let vol = conn.file_id(fid.0, fid.1)?;
    conn.opens.get_mut(vol, hdr.session_id, hdr.tree_id)?;
    conn.cancel_pending_on(vol);
    let open = conn.opens.remove(vol).ok_or(NtStatus::FILE_CLOSED)?;
    release(open).await;
    let mut w = Writer::with_capacity(60);
    w.u16(60).u16(0).u32(0).zeros(6 * 8).u32(0);
    Ok(Reply::ok(w.buf))
}
