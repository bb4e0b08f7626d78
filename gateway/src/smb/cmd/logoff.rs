//! LOGOFF: ends a session, closing its opens and trees (durable opens are kept for a
//! reconnect, as smbd does).

use super::Reply;
use crate::smb::conn::Connection;
use crate::smb::wire::header::Header;
use crate::smb::wire::status::NtStatus;
use crate::smb::wire::Writer;

/// The 4-byte body LOGOFF, ECHO and TREE_DISCONNECT answer.
pub fn empty_body() -> Vec<u8> {
    let mut w = Writer::with_capacity(4);
    w.u16(4).u16(0);
    w.buf
}

/// Handles LOGOFF.
pub async fn handle(conn: &mut Connection, hdr: &Header) -> Result<Reply, NtStatus> {
    conn.session(hdr.session_id)?;
    for id in conn.opens.ids_of(hdr.session_id, None) {
        conn.cancel_pending_on(id);
        if let Some(open) = conn.opens.remove(id) {
            conn.end_open(open).await;
        }
    }
    conn.sessions.remove(&hdr.session_id);
    Ok(Reply::ok(empty_body()))
}
