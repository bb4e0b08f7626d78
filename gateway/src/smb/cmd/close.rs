//! CLOSE (MS-SMB2 2.2.15/2.2.16): releases a handle (its share mode, byte-range locks and,
//! on the last close, a pending delete), optionally answering the final attributes.

use super::open::{read_file_id, Open, OpenKind};
use super::Reply;
use crate::smb::conn::Connection;
use crate::smb::wire::header::Header;
use crate::smb::wire::status::NtStatus;
use crate::smb::wire::{Reader, WireError, WireResult, Writer};
use crate::smb::SmbServer;

/// Flag: answer the attributes after close.
pub const POSTQUERY_ATTRIB: u16 = 1;

/// Releases everything an open holds; used by CLOSE, LOGOFF, TREE_DISCONNECT and disconnect.
/// A file written through the open is flushed first, so that every other node reads what was
/// written once the client saw it closed; the flush's error (a write the volume's client had
/// acknowledged early failed) is returned, after the release.
pub async fn release(server: &SmbServer, open: Open) -> Result<(), NtStatus> {
    let OpenKind::File(f) = open.kind else { return Ok(()) };
    let flushed = if f.wrote { server.ns.flush(f.id).await } else { Ok(()) };
    if let Err(e) = flushed {
        tracing::warn!(error = %e, file = %crate::logging::untrusted(f.name()), "SMB: data written through a closed handle failed to reach the volume");
    }
    server.track_path(f.key, None);
    let out = match server.locks.close(&f.id, f.key).await {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(error = %e, file = f.name(), "SMB: the cluster did not confirm a close");
            crate::locks::CloseOutcome::default()
        }
    };
    if out.delete {
        if let Some(name) = f.path.last() {
            let r = if f.is_dir {
                server.ns.rmdir(&f.cred, f.parent, name.as_bytes()).await
            } else {
                server.ns.remove(&f.cred, f.parent, name.as_bytes()).await
            };
            if let Err(e) = r {
                tracing::info!(error = %e, "SMB: delete-on-close failed");
            }
        }
    }
    flushed.map_err(NtStatus::from)
}

/// A decoded CLOSE request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Flags ([`POSTQUERY_ATTRIB`]).
    pub flags: u16,
    /// FileId (persistent, volatile).
    pub file_id: (u64, u64),
}

impl Request {
    /// Decodes the body of `msg`.
    pub fn parse(msg: &[u8]) -> WireResult<Self> {
        let mut r = Reader::at(msg, 64);
        if r.u16()? != 24 {
            return Err(WireError::Malformed("CLOSE structure size"));
        }
        let flags = r.u16()?;
        r.skip(4)?;
        Ok(Self { flags, file_id: read_file_id(&mut r)? })
    }
}

/// Handles CLOSE.
pub async fn handle(conn: &mut Connection, hdr: &Header, req: Request) -> Result<Reply, NtStatus> {
    let Request { flags, file_id: fid } = req;
    conn.session(hdr.session_id)?;
    let vol = conn.file_id(fid.0, fid.1)?;
    conn.opens.get_mut(vol, hdr.session_id, hdr.tree_id)?;
    conn.cancel_pending_on(vol);
    let open = conn.opens.remove(vol).ok_or(NtStatus::FILE_CLOSED)?;
    let server = conn.server.clone();
    let mut basics = None;
    if flags & POSTQUERY_ATTRIB != 0 {
        if let OpenKind::File(f) = &open.kind {
            if let Ok(a) = server.ns.getattr(f.id).await {
                basics = Some(super::create::basics(&a, f.name()));
            }
        }
    }
    release(&server, open).await?;
    let mut w = Writer::with_capacity(60);
    match basics {
        Some(b) => {
            w.u16(60).u16(POSTQUERY_ATTRIB).u32(0);
            w.u64(b.creation).u64(b.access).u64(b.write).u64(b.change).u64(b.allocation).u64(b.eof).u32(b.attributes);
        }
        None => {
            w.u16(60).u16(0).u32(0).zeros(6 * 8).u32(0);
        }
    }
    Ok(Reply::ok(w.buf))
}
