//! TREE_DISCONNECT: closes the tree's opens and forgets the tree.

use super::Reply;
use crate::smb::conn::Connection;
use crate::smb::wire::header::Header;
use crate::smb::wire::status::NtStatus;

/// Handles TREE_DISCONNECT.
pub async fn handle(conn: &mut Connection, hdr: &Header) -> Result<Reply, NtStatus> {
    conn.session(hdr.session_id)?.tree(hdr.tree_id)?;
    for id in conn.opens.ids_of(hdr.session_id, Some(hdr.tree_id)) {
        conn.cancel_pending_on(id);
        if let Some(open) = conn.opens.remove(id) {
            super::close::release(&conn.server.clone(), open).await.ok(); // logged there
        }
    }
    if let Some(s) = conn.sessions.get_mut(&hdr.session_id) {
        s.trees.remove(&hdr.tree_id);
    }
    Ok(Reply::ok(super::logoff::empty_body()))
}
