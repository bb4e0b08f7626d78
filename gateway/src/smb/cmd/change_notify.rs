//! CHANGE_NOTIFY (MS-SMB2 2.2.35/2.2.36): accepted and kept pending (STATUS_PENDING) until
//! the client cancels it or closes the directory, so clients that watch folders keep working.
//! Change events themselves are not reported yet.

use tokio_util::sync::CancellationToken;

use super::open::read_file_id;
use super::Reply;
use crate::smb::conn::{AsyncWork, Connection, Outcome};
use crate::smb::wire::header::Header;
use crate::smb::wire::status::NtStatus;
use crate::smb::wire::Reader;

/// Handles CHANGE_NOTIFY.
pub async fn handle(conn: &mut Connection, hdr: &Header, msg: &[u8]) -> Outcome {
    let mut run = || -> Result<Outcome, NtStatus> {
        let mut r = Reader::at(msg, 64);
        let fid = (|| {
            if r.u16().ok()? != 32 {
                return None;
            }
            r.skip(2 + 4).ok()?;
            read_file_id(&mut r).ok()
        })()
        .ok_or(NtStatus::INVALID_PARAMETER)?;
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
