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
    end_session(conn, hdr.session_id).await;
    Ok(Reply::ok(empty_body()))
}

/// Ends session `id`: its opens close (pending requests on them end), then it goes. Used by
/// LOGOFF and by a failed re-authentication.
pub async fn end_session(conn: &mut Connection, id: u64) {
    for open in conn.opens.ids_of(id, None) {
        conn.cancel_pending_on(open);
        if let Some(open) = conn.opens.remove(open) {
            conn.end_open(open).await;
        }
    }
    conn.sessions.remove(&id);
    conn.server.sessions.unregister(id);
}
