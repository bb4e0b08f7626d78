//! One file per SMB2 command (mini-redis style): each parses its request body with a pure
//! function and applies it to the connection's state. [`dispatch`] picks the file by command.

pub mod cancel;
pub mod change_notify;
pub mod close;
pub mod create;
pub mod create_durable;
pub mod create_persistent;
pub mod create_stream;
pub mod echo;
pub mod flush;
pub mod ioctl;
pub mod lock;
pub mod logoff;
pub mod negotiate;
pub mod open;
pub mod oplock_break;
pub mod query_directory;
pub mod query_info;
pub mod read;
pub mod session_setup;
pub mod set_info;
pub mod tree_connect;
pub mod tree_disconnect;
pub mod write;

use super::bulk::Bulk;
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
    pub tail: Bulk,
}

impl Reply {
    /// A successful reply with `body`.
    pub fn ok(body: Vec<u8>) -> Self {
        Self {
            status: NtStatus::SUCCESS,
            body,
            session_id: None,
            sign_final: false,
            tree_id: None,
            tail: Bulk::default(),
        }
    }

    /// A reply with `status` and `body`.
    pub fn with(status: NtStatus, body: Vec<u8>) -> Self {
        Self { status, body, session_id: None, sign_final: false, tree_id: None, tail: Bulk::default() }
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

/// One decoded SMB2 request body: every command's typed request, so that everything a client
/// can send goes through one pure decoder ([`Request::parse`]) before any handler runs.
#[derive(Debug, Clone)]
pub enum Request<'a> {
    /// NEGOTIATE.
    Negotiate(negotiate::Request),
    /// SESSION_SETUP.
    SessionSetup(session_setup::Request<'a>),
    /// LOGOFF (its body carries nothing we use).
    Logoff,
    /// TREE_CONNECT.
    TreeConnect(tree_connect::Request),
    /// TREE_DISCONNECT (its body carries nothing we use).
    TreeDisconnect,
    /// CREATE.
    Create(create::Request),
    /// CLOSE.
    Close(close::Request),
    /// FLUSH.
    Flush(flush::Request),
    /// READ.
    Read(read::Request),
    /// WRITE.
    Write(write::Request<'a>),
    /// LOCK.
    Lock(lock::Request),
    /// IOCTL.
    Ioctl(ioctl::Request<'a>),
    /// CANCEL (identified by the header alone).
    Cancel,
    /// ECHO.
    Echo,
    /// QUERY_DIRECTORY.
    QueryDirectory(query_directory::Request),
    /// CHANGE_NOTIFY.
    ChangeNotify(change_notify::Request),
    /// QUERY_INFO.
    QueryInfo(query_info::Request),
    /// SET_INFO.
    SetInfo(set_info::Request<'a>),
    /// OPLOCK_BREAK (an oplock or lease break acknowledgement).
    OplockBreak(oplock_break::Request),
}

/// Why a request body could not be decoded, as the status the client gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// A command code we do not implement (OPLOCK_BREAK, SMB1 codes, garbage).
    Unsupported,
    /// The body is malformed: truncated, a bad structure size, an offset out of bounds.
    Malformed,
}

impl From<ParseError> for NtStatus {
    fn from(e: ParseError) -> Self {
        match e {
            ParseError::Unsupported => NtStatus::NOT_SUPPORTED,
            ParseError::Malformed => NtStatus::INVALID_PARAMETER,
        }
    }
}

impl<'a> Request<'a> {
    /// Decodes the body of request `msg` (the message from its SMB2 header on; body offsets
    /// count from the header) for `command`. Pure: never panics, allocates at most what the
    /// message bounds.
    pub fn parse(command: u16, msg: &'a [u8]) -> Result<Self, ParseError> {
        fn m<T>(r: super::wire::WireResult<T>) -> Result<T, ParseError> {
            r.map_err(|_| ParseError::Malformed)
        }
        Ok(match command {
            command::NEGOTIATE => Self::Negotiate(m(negotiate::Request::parse(msg))?),
            command::SESSION_SETUP => Self::SessionSetup(m(session_setup::Request::parse(msg))?),
            command::LOGOFF => Self::Logoff,
            command::TREE_CONNECT => Self::TreeConnect(m(tree_connect::Request::parse(msg))?),
            command::TREE_DISCONNECT => Self::TreeDisconnect,
            command::CREATE => Self::Create(m(create::Request::parse(msg))?),
            command::CLOSE => Self::Close(m(close::Request::parse(msg))?),
            command::FLUSH => Self::Flush(m(flush::Request::parse(msg))?),
            command::READ => Self::Read(m(read::Request::parse(msg))?),
            command::WRITE => Self::Write(m(write::Request::parse(msg))?),
            command::LOCK => Self::Lock(m(lock::Request::parse(msg))?),
            command::IOCTL => Self::Ioctl(m(ioctl::Request::parse(msg))?),
            command::CANCEL => Self::Cancel,
            command::ECHO => Self::Echo,
            command::QUERY_DIRECTORY => Self::QueryDirectory(m(query_directory::Request::parse(msg))?),
            command::CHANGE_NOTIFY => Self::ChangeNotify(m(change_notify::Request::parse(msg))?),
            command::QUERY_INFO => Self::QueryInfo(m(query_info::Request::parse(msg))?),
            command::SET_INFO => Self::SetInfo(m(set_info::Request::parse(msg))?),
            command::OPLOCK_BREAK => Self::OplockBreak(m(oplock_break::Request::parse(msg))?),
            _ => return Err(ParseError::Unsupported),
        })
    }
}

impl Request<'_> {
    /// The FileId a request on an open names (`None` for CREATE, session and tree commands,
    /// and break acknowledgements).
    pub fn file_id(&self) -> Option<(u64, u64)> {
        Some(match self {
            Self::Close(r) => r.file_id,
            Self::Flush(r) => r.file_id,
            Self::Read(r) => r.file_id,
            Self::Write(r) => r.file_id,
            Self::Lock(r) => r.file_id,
            Self::Ioctl(r) => r.file_id,
            Self::QueryDirectory(r) => r.file_id,
            Self::ChangeNotify(r) => r.file_id,
            Self::QueryInfo(r) => r.file_id,
            Self::SetInfo(r) => r.file_id,
            _ => return None,
        })
    }

    /// The bytes this request moves, for the CreditCharge check
    /// ([`crate::smb::sequence::charge_covers`]): the larger of what it sends and the most it
    /// asks back; 0 for commands without a bulk buffer.
    pub fn payload(&self) -> u64 {
        match self {
            Self::Read(r) => u64::from(r.length),
            Self::Write(r) => r.data.len() as u64,
            Self::Ioctl(r) => (r.input.len() as u64).max(u64::from(r.max_output)),
            Self::QueryDirectory(r) => u64::from(r.max_len),
            Self::ChangeNotify(r) => u64::from(r.output_length),
            Self::QueryInfo(r) => u64::from(r.max_len),
            Self::SetInfo(r) => r.data.len() as u64,
            _ => 0,
        }
    }
}

/// Runs the command of `hdr` against the connection. `msg` is the request from its header on
/// (SMB2 buffer offsets count from the header): it is decoded by [`Request::parse`] first, and
/// a request that does not decode is answered with an error without touching any state.
/// Every request is counted in the metrics and `nasgw connections` ([`crate::smb::status`]).
pub async fn dispatch(conn: &mut Connection, hdr: &Header, msg: &[u8]) -> Outcome {
    let started = std::time::Instant::now();
    let out = run(conn, hdr, msg).await;
    crate::smb::status::account(conn, hdr, msg, &out, started);
    out
}

async fn run(conn: &mut Connection, hdr: &Header, msg: &[u8]) -> Outcome {
    let req = match Request::parse(hdr.command, msg) {
        Ok(r) => r,
        Err(e) => return Outcome::Now(Reply::err(e.into())),
    };
    let multi_credit =
        conn.dialect >= super::signing::dialect::SMB210 && conn.dialect != super::signing::dialect::WILDCARD;
    if !super::sequence::charge_covers(multi_credit, hdr.credit_charge, req.payload()) {
        tracing::info!(client = %conn.tcp.client, command = hdr.command, charge = hdr.credit_charge, payload = req.payload(), "SMB: CreditCharge too small for the request");
        return Outcome::Now(Reply::err(NtStatus::INVALID_PARAMETER));
    }
    // A request on an open whose CREATE is in the replay cache: the client has the answer, a
    // replay of that CREATE from now on is a new one (smbd purges its replay cache the same way).
    if !conn.server.replay_cache.is_empty() {
        let pid = req.file_id().and_then(|(p, v)| conn.file_id(p, v).ok()).and_then(|v| conn.opens.persistent_of(v));
        if let Some(pid) = pid {
            conn.server.replay_cache.purge(pid);
        }
    }
    match req {
        Request::Negotiate(r) => now(negotiate::handle(conn, r)),
        Request::SessionSetup(r) => now(session_setup::run(conn, hdr, r, msg).await),
        Request::Logoff => now(logoff::handle(conn, hdr).await),
        Request::TreeConnect(r) => now(tree_connect::handle(conn, hdr, r).await),
        Request::TreeDisconnect => now(tree_disconnect::handle(conn, hdr).await),
        Request::Echo => now(Ok(echo::handle())),
        Request::Cancel => now(Ok(cancel::handle(conn, hdr))),
        Request::Create(_) if conn.opens.is_full() => {
            tracing::info!(client = %conn.tcp.client, "SMB: CREATE refused, the connection holds too many opens");
            Outcome::Now(Reply::err(NtStatus::INSUFFICIENT_RESOURCES))
        }
        Request::Create(r) => create::handle(conn, hdr, r).await,
        Request::OplockBreak(r) => now(oplock_break::handle(conn, hdr, r).await),
        Request::Close(r) => now(close::handle(conn, hdr, r).await),
        Request::Read(r) => now(read::handle(conn, hdr, r).await),
        Request::Write(r) => match channel_sequence(conn, hdr, r.file_id) {
            Ok(()) => now(write::handle(conn, hdr, r).await),
            Err(s) => Outcome::Now(Reply::err(s)),
        },
        Request::Ioctl(r) => match channel_sequence(conn, hdr, r.file_id) {
            Ok(()) => now(ioctl::handle(conn, hdr, r).await),
            Err(s) => Outcome::Now(Reply::err(s)),
        },
        Request::Flush(r) => now(flush::handle(conn, hdr, r).await),
        Request::QueryDirectory(r) => now(query_directory::handle(conn, hdr, r).await),
        Request::QueryInfo(r) => now(query_info::handle(conn, hdr, r).await),
        Request::SetInfo(r) => match channel_sequence(conn, hdr, r.file_id) {
            Ok(()) => set_info::handle(conn, hdr, r).await,
            Err(s) => Outcome::Now(Reply::err(s)),
        },
        Request::Lock(r) => {
            // A durable open's LOCK replayed with the lock sequence of one that succeeded is
            // answered as it was, not applied again (MS-SMB2 3.3.5.14).
            let seq = crate::smb::durable_replay::lock_sequence(msg);
            let pid = conn.file_id(r.file_id.0, r.file_id.1).ok().and_then(|v| conn.opens.persistent_of(v));
            let tracked = match (seq, pid) {
                (Some(seq), Some(pid)) => match conn.server.durable.lock_replayed(pid, seq) {
                    Some(true) => return Outcome::Now(Reply::ok(logoff::empty_body())),
                    Some(false) => Some((pid, seq)),
                    None => None,
                },
                _ => None,
            };
            // Any open of a connection that offered multichannel keeps its own buckets.
            let multichannel = conn.server_capabilities & negotiate::CAP_MULTI_CHANNEL != 0;
            let on_handle = match seq.filter(|_| tracked.is_none() && multichannel) {
                Some(seq) => match handle_lock_sequences(conn, hdr, r.file_id).map(|b| b.replayed(seq)) {
                    Some(true) => return Outcome::Now(Reply::ok(logoff::empty_body())),
                    Some(false) => Some(seq),
                    None => None,
                },
                None => None,
            };
            let file_id = r.file_id;
            let out = lock::handle(conn, hdr, r).await;
            if let Outcome::Now(reply) = &out {
                if reply.status == NtStatus::SUCCESS {
                    if let Some((pid, seq)) = tracked {
                        conn.server.durable.lock_succeeded(pid, seq);
                    }
                    if let Some(seq) = on_handle {
                        if let Some(b) = handle_lock_sequences(conn, hdr, file_id) {
                            b.succeeded(seq);
                        }
                    }
                }
            }
            out
        }
        Request::ChangeNotify(r) => change_notify::handle(conn, hdr, r).await,
    }
}

/// The lock-sequence buckets of the file open `fid` names, if it is one.
fn handle_lock_sequences<'a>(
    conn: &'a mut Connection,
    hdr: &Header,
    fid: (u64, u64),
) -> Option<&'a mut crate::smb::durable_replay::LockSequences> {
    let v = conn.file_id(fid.0, fid.1).ok()?;
    let open = conn.opens.get_mut(v, hdr.session_id, hdr.tree_id).ok()?;
    open.file().ok().map(|f| &mut f.state.lock_sequences)
}

/// SMB 3.x: a WRITE, SET_INFO or IOCTL whose channel sequence is older than its open's is
/// refused ([`crate::smb::durable_replay::check`]); a newer one becomes the open's. A FileId
/// that names no open is left to the command (its own FILE_CLOSED).
fn channel_sequence(conn: &mut Connection, hdr: &Header, fid: (u64, u64)) -> Result<(), NtStatus> {
    // An IOCTL not about a file (FSCTL_VALIDATE_NEGOTIATE_INFO) names the all-ones FileId.
    let all_ones = fid == (u64::MAX, u64::MAX) && hdr.command == command::IOCTL;
    if conn.dialect < crate::smb::signing::dialect::SMB300 || all_ones {
        return Ok(());
    }
    let Ok(vol) = conn.file_id(fid.0, fid.1) else { return Ok(()) };
    let Ok(open) = conn.opens.get_mut(vol, hdr.session_id, hdr.tree_id) else { return Ok(()) };
    open.channel_sequence = crate::smb::durable_replay::check(open.channel_sequence, hdr.status as u16)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smb::wire::header::HEADER_LEN;

    /// A request with a zeroed header and `body`.
    fn msg(body: &[u8]) -> Vec<u8> {
        let mut m = vec![0u8; HEADER_LEN];
        m.extend_from_slice(body);
        m
    }

    #[test]
    fn every_command_with_a_body_refuses_an_empty_one() {
        for c in [
            command::NEGOTIATE,
            command::SESSION_SETUP,
            command::TREE_CONNECT,
            command::CREATE,
            command::CLOSE,
            command::FLUSH,
            command::READ,
            command::WRITE,
            command::LOCK,
            command::IOCTL,
            command::QUERY_DIRECTORY,
            command::CHANGE_NOTIFY,
            command::QUERY_INFO,
            command::SET_INFO,
        ] {
            assert_eq!(Request::parse(c, &msg(&[])).unwrap_err(), ParseError::Malformed, "command {c:#x}");
            assert_eq!(Request::parse(c, &[]).unwrap_err(), ParseError::Malformed, "command {c:#x}");
        }
    }

    #[test]
    fn header_only_commands_and_unknown_codes() {
        for c in [command::LOGOFF, command::TREE_DISCONNECT, command::CANCEL, command::ECHO] {
            assert!(Request::parse(c, &msg(&[4, 0, 0, 0])).is_ok(), "command {c:#x}");
        }
        for c in [0x13u16, 0xffff] {
            assert_eq!(Request::parse(c, &msg(&[])).unwrap_err(), ParseError::Unsupported);
        }
    }

    #[test]
    fn close_flush_and_notify_decode_their_file_ids() {
        let mut close = vec![24, 0, 1, 0, 0, 0, 0, 0];
        close.extend_from_slice(&7u64.to_le_bytes());
        close.extend_from_slice(&9u64.to_le_bytes());
        match Request::parse(command::CLOSE, &msg(&close)).unwrap() {
            Request::Close(c) => assert_eq!((c.flags, c.file_id), (close::POSTQUERY_ATTRIB, (7, 9))),
            other => panic!("{other:?}"),
        }
        let mut flush = vec![24, 0, 0, 0, 0, 0, 0, 0];
        flush.extend_from_slice(&3u64.to_le_bytes());
        flush.extend_from_slice(&4u64.to_le_bytes());
        match Request::parse(command::FLUSH, &msg(&flush)).unwrap() {
            Request::Flush(f) => assert_eq!(f.file_id, (3, 4)),
            other => panic!("{other:?}"),
        }
        let mut notify = vec![32, 0, 1, 0, 0, 16, 0, 0];
        notify.extend_from_slice(&5u64.to_le_bytes());
        notify.extend_from_slice(&6u64.to_le_bytes());
        notify.extend_from_slice(&[0x17, 0, 0, 0, 0, 0, 0, 0]);
        match Request::parse(command::CHANGE_NOTIFY, &msg(&notify)).unwrap() {
            Request::ChangeNotify(n) => {
                assert_eq!((n.flags, n.output_length, n.file_id, n.filter), (1, 4096, (5, 6), 0x17))
            }
            other => panic!("{other:?}"),
        }
        close[0] = 25;
        assert_eq!(Request::parse(command::CLOSE, &msg(&close)).unwrap_err(), ParseError::Malformed);
    }
}
