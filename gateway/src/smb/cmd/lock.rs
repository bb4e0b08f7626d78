//! LOCK (MS-SMB2 2.2.26/2.2.27): byte-range locks in the cluster's file-sharing state, shared or
//! exclusive, and then on the volume (`smb/volume_locks.rs`) so its other clients see them; a
//! single lock without FAIL_IMMEDIATELY waits (STATUS_PENDING, then the final answer) until the
//! range is free or the request is cancelled.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::open::read_file_id;
use super::Reply;
use crate::locks::posix_view::WinLock;
use crate::locks::{Conflict, OpenKey, Owner, RangeLock};
use crate::smb::conn::{AsyncWork, Connection, Outcome};
use crate::smb::wire::header::Header;
use crate::smb::wire::status::NtStatus;
use crate::smb::wire::{Reader, WireError, WireResult};
use crate::smb::SmbServer;
use crate::vfs::FileId;

/// Lock flag: shared.
pub const SHARED: u32 = 1;
/// Lock flag: exclusive.
pub const EXCLUSIVE: u32 = 2;
/// Lock flag: unlock.
pub const UNLOCK: u32 = 4;
/// Lock flag: do not wait.
pub const FAIL_IMMEDIATELY: u32 = 0x10;

/// One LOCK element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Element {
    /// First byte.
    pub offset: u64,
    /// Length.
    pub length: u64,
    /// Flags.
    pub flags: u32,
}

/// A decoded LOCK request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// FileId (persistent, volatile).
    pub file_id: (u64, u64),
    /// The lock elements, in order.
    pub elements: Vec<Element>,
}

impl Request {
    /// Decodes the body of `msg`.
    pub fn parse(msg: &[u8]) -> WireResult<Self> {
        parse(msg).map(|(file_id, elements)| Self { file_id, elements })
    }
}

/// Decodes a LOCK request: FileId and elements.
pub fn parse(msg: &[u8]) -> WireResult<((u64, u64), Vec<Element>)> {
    let mut r = Reader::at(msg, 64);
    if r.u16()? != 48 {
        return Err(WireError::Malformed("LOCK structure size"));
    }
    let count = r.u16()? as usize;
    r.skip(4)?;
    let fid = read_file_id(&mut r)?;
    if count > 4096 {
        return Err(WireError::Malformed("lock count"));
    }
    let mut v = Vec::with_capacity(count);
    for _ in 0..count {
        let offset = r.u64()?;
        let length = r.u64()?;
        let flags = r.u32()?;
        r.skip(4)?;
        v.push(Element { offset, length, flags });
    }
    Ok((fid, v))
}

fn done() -> Reply {
    Reply::ok(super::logoff::empty_body())
}

/// Handles LOCK.
pub async fn handle(conn: &mut Connection, hdr: &Header, req: Request) -> Outcome {
    match run(conn, hdr, req).await {
        Ok(o) => o,
        Err(s) => Outcome::Now(Reply::err(s)),
    }
}

async fn run(conn: &mut Connection, hdr: &Header, req: Request) -> Result<Outcome, NtStatus> {
    let Request { file_id: fid, elements: elems } = req;
    conn.session(hdr.session_id)?;
    let vol = conn.file_id(fid.0, fid.1)?;
    let server = conn.server.clone();
    let f = conn.opens.get_mut(vol, hdr.session_id, hdr.tree_id)?.file()?;
    // A stream's locks are its own (per-stream identity): the volume file is not theirs.
    let who = Holder { id: f.id, key: f.key, mirror: f.state.stream.is_none() };
    let (id, owner) = (who.id, Owner::Open(who.key));
    let locks = &server.locks;
    if elems.is_empty() {
        return Err(NtStatus::INVALID_PARAMETER);
    }
    if elems[0].flags & UNLOCK != 0 {
        for e in &elems {
            if e.flags != UNLOCK {
                return Err(NtStatus::INVALID_PARAMETER);
            }
            locks.unlock(&id, owner, e.offset, e.length).await.map_err(|c| match c {
                Conflict::NotLocked => NtStatus::RANGE_NOT_LOCKED,
                c => c.into(),
            })?;
            if who.mirror {
                server.volume_locks.unlock(id, who.key, e.offset, e.length).await;
            }
        }
        return Ok(Outcome::Now(done()));
    }
    let mut taken: Vec<Element> = Vec::new();
    for e in &elems {
        let kind = e.flags & !FAIL_IMMEDIATELY;
        // Several locks in one request must all fail immediately (only a lone lock may wait).
        if kind != SHARED && kind != EXCLUSIVE || (elems.len() > 1 && e.flags & FAIL_IMMEDIATELY == 0) {
            release(&server, who, &taken).await;
            return Err(NtStatus::INVALID_PARAMETER);
        }
        if e.length > 0 && e.offset.checked_add(e.length - 1).is_none() {
            release(&server, who, &taken).await;
            return Err(NtStatus::INVALID_LOCK_RANGE);
        }
        let lock = RangeLock { owner, offset: e.offset, len: e.length, exclusive: kind == EXCLUSIVE };
        match take(&server, who, lock).await {
            Ok(()) => taken.push(*e),
            Err(Conflict::Locked) if elems.len() == 1 && e.flags & FAIL_IMMEDIATELY == 0 => {
                let work = wait_for(server.clone(), who, lock);
                return Ok(Outcome::Later(AsyncWork {
                    cancel: CancellationToken::new(),
                    work: Box::pin(work),
                    waits_on: Some(vol),
                    closed: CancellationToken::new(),
                    close_status: NtStatus::RANGE_NOT_LOCKED,
                    committed: CancellationToken::new(),
                }));
            }
            Err(c) => {
                release(&server, who, &taken).await;
                return Err(match c {
                    Conflict::Locked => NtStatus::LOCK_NOT_GRANTED,
                    c => c.into(),
                });
            }
        }
    }
    Ok(Outcome::Now(done()))
}

/// The open a lock request is for.
#[derive(Clone, Copy)]
struct Holder {
    id: FileId,
    key: OpenKey,
    /// Its locks are mirrored onto the volume (a file, not a stream).
    mirror: bool,
}

/// Takes `lock` in the cluster's state, then on the volume: a lock another client of the volume
/// holds is given back and refused like any conflict.
async fn take(server: &SmbServer, who: Holder, lock: RangeLock) -> Result<(), Conflict> {
    server.locks.lock_range(&who.id, lock).await?;
    if who.mirror {
        let w = WinLock { offset: lock.offset, len: lock.len, exclusive: lock.exclusive };
        if server.volume_locks.lock(who.id, who.key, w).await.is_err() {
            let _ = server.locks.unlock(&who.id, lock.owner, lock.offset, lock.len).await;
            return Err(Conflict::Locked);
        }
    }
    Ok(())
}

/// A blocking lock: tries again whenever the file's state changes on this node (a release
/// anywhere in the cluster reaches it as a change of its copy of the record), and at least
/// every second in case a change came in another way (a release by another client of the
/// volume).
async fn wait_for(server: Arc<SmbServer>, who: Holder, lock: RangeLock) -> Reply {
    loop {
        let changes = server.locks.changes(&who.id);
        let notified = changes.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        match take(&server, who, lock).await {
            Ok(()) => return done(),
            Err(Conflict::Locked) => {}
            Err(c) => return Reply::err(c.into()),
        }
        tokio::select! {
            _ = notified => {}
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
        }
    }
}

/// Gives back the locks a failed request took before it failed.
async fn release(server: &SmbServer, who: Holder, taken: &[Element]) {
    for t in taken {
        let _ = server.locks.unlock(&who.id, Owner::Open(who.key), t.offset, t.length).await;
        if who.mirror {
            server.volume_locks.unlock(who.id, who.key, t.offset, t.length).await;
        }
    }
}
