//! CHANGE_NOTIFY (MS-SMB2 2.2.35/2.2.36): accepted and kept pending (STATUS_PENDING) until
//! the client cancels it or closes the directory, so clients that watch folders keep working.
//! Change events themselves are not reported yet.

use tokio_util::sync::CancellationToken;

use super::open::read_file_id;
use super::Reply;
use crate::smb::conn::{AsyncWork, Connection, Outcome};
use crate::smb::wire::header::Header;
use crate::smb::wire::status::NtStatus;
use crate::smb::wire::{Reader, WireError, WireResult};

/// A decoded CHANGE_NOTIFY request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Flags (WATCH_TREE).
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

/// Handles CHANGE_NOTIFY.
pub async fn handle(conn: &mut Connection, hdr: &Header, req: Request) -> Outcome {
    let mut run = || -> Result<Outcome, NtStatus> {
        let fid = req.file_id;
        conn.session(hdr.session_id)?;
        let vol = conn.file_id(fid.0, fid.1)?;
        let f = conn.opens.get_mut(vol, hdr.session_id, hdr.tree_id)?.file()?;
        if !f.is_dir {
            return Err(NtStatus::INVALID_PARAMETER);
        }
        Ok(Outcome::Later(AsyncWork {
            cancel: CancellationToken::new(),
            work: Box::pin(std::future::pending::<Reply>()),
            waits_on: Some(vol),
            closed: CancellationToken::new(),
            close_status: NtStatus::NOTIFY_CLEANUP,
        }))
    };
    run().unwrap_or_else(|s| Outcome::Now(Reply::err(s)))
}
