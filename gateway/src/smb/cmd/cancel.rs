//! CANCEL: completes a pending async operation with STATUS_CANCELLED. It has no response.

use super::Reply;
use crate::smb::conn::Connection;
use crate::smb::wire::header::{Header, FLAG_ASYNC_COMMAND};
use crate::smb::wire::status::NtStatus;

/// Handles CANCEL (the connection sends nothing back for it).
pub fn handle(conn: &mut Connection, hdr: &Header) -> Reply {
    let pending = conn.link.pending.lock().unwrap_or_else(|e| e.into_inner());
    let hit = if hdr.flags & FLAG_ASYNC_COMMAND != 0 {
        pending.get(&hdr.async_id)
    } else {
        pending.values().find(|op| op.message_id == hdr.message_id && op.session_id == hdr.session_id)
    };
    if let Some(op) = hit {
        op.cancel.cancel();
    }
    Reply::err(NtStatus::CANCELLED)
}
