//! CHANGE_NOTIFY (MS-SMB2 2.2.35/2.2.36, 3.3.5.19): reports changes below a directory handle.
//! The handle's first request registers a watch on the namespace's change events
//! ([`crate::vfs::changes`]) with its CompletionFilter and WATCH_TREE; changes queue in it
//! between requests. A request completes at once when something is queued, else stays pending
//! (STATUS_PENDING) until a change arrives, the client cancels it, or the handle closes
//! (STATUS_NOTIFY_CLEANUP). More changes than the client's buffer holds are answered
//! STATUS_NOTIFY_ENUM_DIR: the client re-reads the directory.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::negotiate::MAX_IO;
use super::open::{access, read_file_id};
use super::Reply;
use crate::smb::conn::{AsyncWork, Connection, Outcome};
use crate::smb::notify;
use crate::smb::wire::header::Header;
use crate::smb::wire::status::NtStatus;
use crate::smb::wire::{Reader, WireError, WireResult, Writer};
use crate::vfs::changes::WatchHandle;

/// Flags: watch the whole tree below the directory.
pub const WATCH_TREE: u16 = 0x0001;

/// Every CompletionFilter bit MS-FSCC defines.
pub const FILTER_ALL: u32 = 0x0FFF;

/// A decoded CHANGE_NOTIFY request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Flags ([`WATCH_TREE`]).
    pub flags: u16,
    /// OutputBufferLength.
    pub output_length: u32,
    /// FileId (persistent, volatile) of the watched directory.
    pub file_id: (u64, u64),
    /// CompletionFilter.
    pub filter: u32,
}

impl Request {
    /// Decodes the body of `msg`.
    pub fn parse(msg: &[u8]) -> WireResult<Self> {
        let mut r = Reader::at(msg, 64);
        if r.u16()? != 32 {
            return Err(WireError::Malformed("CHANGE_NOTIFY structure size"));
        }
        let flags = r.u16()?;
        let output_length = r.u32()?;
        let file_id = read_file_id(&mut r)?;
        let filter = r.u32()?;
        Ok(Self { flags, output_length, file_id, filter })
    }
}

/// The reply to a request with `max` bytes of buffer, from what `w` has queued; `None` when
/// another request of the handle took it first.
fn answer(w: &WatchHandle, max: usize) -> Option<Reply> {
    if w.is_delete_pending() {
        return Some(Reply::err(NtStatus::DELETE_PENDING));
    }
    let q = w.take();
    if q.events.is_empty() && !q.overflow {
        return None;
    }
    let body = if q.overflow { None } else { notify::encode(&q.events, max) };
    Some(match body {
        None => Reply::err(NtStatus::NOTIFY_ENUM_DIR),
        Some(buf) => {
            let mut out = Writer::with_capacity(8 + buf.len());
            out.u16(9).u16(if buf.is_empty() { 0 } else { 72 }).u32(buf.len() as u32).bytes(&buf);
            Reply::ok(out.buf)
        }
    })
}

/// Handles CHANGE_NOTIFY.
pub async fn handle(conn: &mut Connection, hdr: &Header, req: Request) -> Outcome {
    match start(conn, hdr, req).await {
        Ok(o) => o,
        Err(s) => Outcome::Now(Reply::err(s)),
    }
}

async fn start(conn: &mut Connection, hdr: &Header, req: Request) -> Result<Outcome, NtStatus> {
    let fid = req.file_id;
    conn.session(hdr.session_id)?;
    let vol = conn.file_id(fid.0, fid.1)?;
    if req.output_length > MAX_IO {
        return Err(NtStatus::INVALID_PARAMETER);
    }
    let server = conn.server.clone();
    let f = conn.opens.get_mut(vol, hdr.session_id, hdr.tree_id)?.file()?;
    if !f.is_dir {
        return Err(NtStatus::INVALID_PARAMETER);
    }
    // FILE_LIST_DIRECTORY is the directory's READ_DATA bit.
    f.require(access::READ_DATA)?;
    let (key, id) = (f.key, f.id);
    if server.locks.record(&id).await?.delete_pending {
        // The directory is being removed (by this node or another): nothing more to watch.
        return Err(NtStatus::DELETE_PENDING);
    }
    let w = match server.watches.get(key) {
        Some(w) => w,
        None => {
            let recursive = req.flags & WATCH_TREE != 0;
            let path = if recursive { server.ns.path_of(id).await.ok() } else { None };
            let w = server.ns.changes().watch(id, path, recursive, req.filter & FILTER_ALL);
            // The other nodes send this node their changes only once they know it watches: wait
            // for that before the client is told the watch is in place (bounded: a node that
            // does not answer is being dropped from the view, and the changes are best effort).
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), server.ns.changes().settled()).await;
            if let Some(local) = &server.local_events {
                // Names changed on the volume by local programs, too (inotify).
                local.watch(key, id).await;
            }
            server.watches.insert(key, Arc::new(w))
        }
    };
    let max = req.output_length as usize;
    w.set_limit(max);
    if let Some(reply) = answer(&w, max) {
        return Ok(Outcome::Now(reply));
    }
    Ok(Outcome::Later(AsyncWork {
        cancel: CancellationToken::new(),
        work: Box::pin(async move {
            loop {
                w.ready().await;
                if let Some(reply) = answer(&w, max) {
                    return reply;
                }
            }
        }),
        waits_on: Some(vol),
        closed: CancellationToken::new(),
        close_status: NtStatus::NOTIFY_CLEANUP,
        committed: CancellationToken::new(),
    }))
}
