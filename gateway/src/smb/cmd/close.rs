//! CLOSE (MS-SMB2 2.2.15/2.2.16): releases a handle (its share mode, byte-range locks and,
//! on the last close, a pending delete), optionally answering the final attributes.

use super::open::{read_file_id, Open, OpenKind, PendingOpen};
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
    server.replay_cache.purge(open.persistent);
    if server.durable.forget(open.persistent).is_some() && server.clustered {
        server.cluster_opens.drop_mine(&server.locks, open.persistent, true);
    }
    let f = match open.kind {
        OpenKind::File(f) => f,
        // A CREATE that finished but was never used (the client went away first).
        OpenKind::Pending(slot) => {
            match std::mem::replace(&mut *slot.lock().unwrap_or_else(|p| p.into_inner()), PendingOpen::Failed) {
                PendingOpen::Ready(f) => f,
                _ => return Ok(()),
            }
        }
        OpenKind::Pipe(_) | OpenKind::QuotaFake => return Ok(()),
    };
    if let Some(l) = &f.lease {
        server.breaks.release_open(l, Some(f.key));
    }
    let flushed = if f.wrote { server.ns.flush(crate::smb::fs::file_of(&f)).await } else { Ok(()) };
    if let Err(e) = flushed {
        tracing::warn!(error = %e, file = %crate::logging::untrusted(f.name()), "SMB: data written through a closed handle failed to reach the volume");
    }
    crate::smb::write_time::closed(server, &f).await;
    // Where the file is now: another open of it on this node may have renamed it through
    // this open's name, or a client through another node, share or protocol (the cluster's
    // record says, for one of the file's names).
    let tracked = server.untrack_path(f.key).map(|at| (at.parent, at.path));
    let before = if f.state.stream.is_none() { server.locks.current_name(&f.id) } else { None };
    let (parent, path) = tracked.clone().unwrap_or_else(|| (f.parent, f.path.clone()));
    // Only where change notifications go: nothing is done to this name.
    let (shown_parent, shown_path) = match &before {
        Some(n) => crate::smb::current_name::apply(n, f.root, parent, &path),
        None => (parent, path),
    };
    server.resume_keys.forget(f.key);
    if f.is_dir {
        server.watches.forget(f.key);
        if let Some(local) = &server.local_events {
            local.forget(f.key);
        }
    } else if f.wrote {
        // Written through this handle: watchers see the new size and write time now (as
        // Windows and Samba report a write, once, when the handle closes).
        let bits = if f.state.stream.is_some() {
            crate::vfs::changes::what::STREAM_SIZE | crate::vfs::changes::what::STREAM_WRITE
        } else {
            crate::vfs::changes::what::SIZE | crate::vfs::changes::what::LAST_WRITE
        };
        if let Some(name) = shown_path.last() {
            server.ns.modified(shown_parent, name.as_bytes(), bits).await;
        }
    }
    let out = match server.locks.close(&f.id, f.key).await {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(error = %e, file = f.name(), "SMB: the cluster did not confirm a close");
            crate::locks::CloseOutcome::default()
        }
    };
    server.volume_locks.close(f.id, f.key);
    if f.is_dir && !out.delete && server.watches.watching(&f.id) {
        // A delete-on-close handle closed while watchers keep the directory open: it is
        // delete-pending now, and their requests end.
        if server.locks.record(&f.id).await.is_ok_and(|r| r.delete_pending) {
            server.watches.delete_pending(&f.id);
        }
    }
    if let Some(s) = &f.state.stream {
        if out.delete {
            // Delete-on-close of a stream removes the stream, never the file.
            if let Err(e) = server.ns.remove_xattr(&f.cred, s.base, &s.xattr()).await {
                tracing::info!(error = %e, "SMB: delete-on-close of a stream failed");
            }
        }
        // The file was deleted while this stream was open: it goes now.
        if let Some(d) = server.open_streams.closed(&s.base, &f.id) {
            if let Err(e) = server.ns.remove(&d.cred, d.parent, d.name.as_bytes(), Some(s.base)).await {
                tracing::info!(error = %e, "SMB: deferred delete of a file with streams failed");
            }
        }
    } else if out.delete {
        // The name the deciding node had at the last close (a rename may have come since the
        // one this node had), followed only when the open's own name is no longer the file's.
        let record = out.name.as_deref().or(before.as_ref());
        let own: Vec<_> = tracked.into_iter().chain([(f.parent, f.path.clone())]).collect();
        let Some(at) = crate::smb::current_name::locate(&server.ns, &f.cred, (f.id, f.root), &own, record).await else {
            // Renamed beside nasgw (a plain GlusterFS client, a local program on a local volume):
            // the names known may be other files' now, which are not this delete's to remove.
            tracing::info!(
                file = %crate::logging::untrusted(f.name()),
                "SMB: delete-on-close skipped: no name nasgw knows is the file's any more"
            );
            return flushed.map_err(NtStatus::from);
        };
        let Some(name) = at.path.last() else { return flushed.map_err(NtStatus::from) };
        let deferred = !f.is_dir
            && server.open_streams.defer_delete(
                &f.id,
                crate::smb::streams::DeferredDelete { parent: at.parent, name: name.clone(), cred: f.cred.clone() },
            );
        if !deferred {
            // (When its streams are still open, it is deleted as the last of them closes.)
            let r = if f.is_dir {
                server.ns.rmdir(&f.cred, at.parent, name.as_bytes()).await
            } else {
                // The file found there (a symlink the open came through is what goes).
                server.ns.remove(&f.cred, at.parent, name.as_bytes(), Some(at.found)).await
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
    if conn.opens.close_waiting(vol, hdr.session_id, hdr.tree_id) {
        // A CREATE still waiting, named by its FileId (a compound's own CLOSE now runs after its
        // CREATE's answer, so only a client that guesses the id gets here): closed now; the
        // CREATE gives back what it is granted.
        let mut w = Writer::with_capacity(60);
        w.u16(60).u16(0).u32(0).zeros(6 * 8).u32(0);
        return Ok(Reply::ok(w.buf));
    }
    conn.opens.get_mut(vol, hdr.session_id, hdr.tree_id)?;
    conn.cancel_pending_on(vol);
    let open = conn.opens.remove(vol).ok_or(NtStatus::FILE_CLOSED)?;
    let server = conn.server.clone();
    let mut basics = None;
    if let OpenKind::File(f) = &open.kind {
        // The close's write-time update comes before the times it answers.
        crate::smb::write_time::closed(&server, f).await;
    }
    if flags & POSTQUERY_ATTRIB != 0 {
        if let OpenKind::File(f) = &open.kind {
            let file = crate::smb::fs::file_of(f);
            if let Ok(mut a) = server.ns.getattr(file).await {
                crate::smb::write_time::show(&server, file, &mut a);
                let dos = crate::smb::fs::dos_of(&server.ns, &f.cred, file).await;
                let mut b = super::create::basics(&a, &dos, f.name());
                if let Some(s) = &f.state.stream {
                    let size =
                        crate::smb::streams::read_all(&server.ns, &f.cred, s).await.map_or(0, |v| v.len() as u64);
                    (b.eof, b.allocation) = (size, size.div_ceil(4096) * 4096);
                    b.attributes = super::create_stream::stream_attributes(b.attributes);
                }
                basics = Some(b);
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
