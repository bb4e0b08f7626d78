//! One file per SMB2 command (mini-redis style): each parses its request body with a pure
//! function and applies it to the connection's state. [`dispatch`] picks the file by command.

pub mod cancel;
pub mod change_notify;
pub mod close;
pub mod create;
pub mod echo;
pub mod flush;
pub mod ioctl;
pub mod lock;
pub mod logoff;
pub mod negotiate;
pub mod open;
pub mod query_directory;
pub mod query_info;
pub mod read;
pub mod session_setup;
pub mod set_info;
pub mod tree_connect;
pub mod tree_disconnect;
pub mod write;

use super::conn::{Connection, Outcome};
use super::wire::header::{command, Header};
use super::wire::status::NtStatus;
use super::wire::Writer;

/// A command's answer: status and response body (without the header).
#[derive(Debug, Clone)]
pub struct Reply {
    /// NTSTATUS of the response header.
    pub status: NtStatus,
    /// Response body.
    pub body: Vec<u8>,
    /// SessionId to answer with when it differs from the request's (SESSION_SETUP).
    pub session_id: Option<u64>,
    /// The final SESSION_SETUP response, signed with the new key.
    pub sign_final: bool,
    /// TreeId to answer with (TREE_CONNECT).
    pub tree_id: Option<u32>,
    /// Bulk data that follows `body` (READ), kept apart so it is not copied again.
    pub tail: Vec<u8>,
}

impl Reply {
    /// A successful reply with `body`.
    pub fn ok(body: Vec<u8>) -> Self {
        Self { status: NtStatus::SUCCESS, body, session_id: None, sign_final: false, tree_id: None, tail: Vec::new() }
    }

    /// A reply with `status` and `body`.
    pub fn with(status: NtStatus, body: Vec<u8>) -> Self {
        Self { status, body, session_id: None, sign_final: false, tree_id: None, tail: Vec::new() }
    }

    /// An error reply (SMB2 ERROR body, MS-SMB2 2.2.2).
    pub fn err(status: NtStatus) -> Self {
        Self::with(status, error_body())
    }
}

impl From<NtStatus> for Reply {
    fn from(s: NtStatus) -> Self {
        Self::err(s)
    }
}

/// The 9-byte SMB2 ERROR response body.
pub fn error_body() -> Vec<u8> {
    let mut w = Writer::with_capacity(9);
    w.u16(9).u8(0).u8(0).u32(0).u8(0);
    w.buf
}

/// Turns a command's `Result` into an immediate outcome.
fn now(r: Result<Reply, NtStatus>) -> Outcome {
    Outcome::Now(r.unwrap_or_else(Reply::err))
}

/// Runs the command of `hdr` against the connection. `msg` is the request from its header on
/// (SMB2 buffer offsets count from the header). Counted in the metrics and `nasgw connections`.
pub async fn dispatch(conn: &mut Connection, hdr: &Header, msg: &[u8]) -> Outcome {
    let started = std::time::Instant::now();
    let out = run(conn, hdr, msg).await;
    crate::smb::status::account(conn, hdr, msg, &out, started);
    out
}

async fn run(conn: &mut Connection, hdr: &Header, msg: &[u8]) -> Outcome {
    match hdr.command {
        command::NEGOTIATE => now(negotiate::handle(conn, msg)),
        command::SESSION_SETUP => now(session_setup::handle(conn, hdr, msg)),
        command::LOGOFF => now(logoff::handle(conn, hdr).await),
        command::TREE_CONNECT => now(tree_connect::handle(conn, hdr, msg).await),
        command::TREE_DISCONNECT => now(tree_disconnect::handle(conn, hdr).await),
        command::ECHO => now(Ok(echo::handle())),
        command::CANCEL => now(Ok(cancel::handle(conn, hdr))),
        command::CREATE => now(create::handle(conn, hdr, msg).await),
        command::CLOSE => now(close::handle(conn, hdr, msg).await),
        command::READ => now(read::handle(conn, hdr, msg).await),
        command::WRITE => now(write::handle(conn, hdr, msg).await),
        command::IOCTL => now(ioctl::handle(conn, hdr, msg).await),
        command::FLUSH => now(flush::handle(conn, hdr, msg).await),
        command::QUERY_DIRECTORY => now(query_directory::handle(conn, hdr, msg).await),
        command::QUERY_INFO => now(query_info::handle(conn, hdr, msg).await),
        command::SET_INFO => now(set_info::handle(conn, hdr, msg).await),
        command::LOCK => lock::handle(conn, hdr, msg).await,
        command::CHANGE_NOTIFY => change_notify::handle(conn, hdr, msg).await,
        _ => now(Err(NtStatus::NOT_SUPPORTED)),
    }
}
