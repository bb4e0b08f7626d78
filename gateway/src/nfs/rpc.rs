//! ONC RPC (RFC 5531) over TCP: record marking, the call header with its credential, and the
//! reply header. Parsing is pure (bytes in, value or error out) and never panics; it is fuzzed
//! (`fuzz/fuzz_targets/nfs_rpc.rs`).

use nfs3_types::rpc::{
    accept_stat_data, accepted_reply, auth_stat, msg_body, opaque_auth, rejected_reply, reply_body, rpc_msg,
};
use nfs3_types::xdr_codec::Pack;

use super::xdr::{XdrError, XdrReader};

/// Largest RPC fragment accepted: a 1 MiB WRITE plus its header, with room to spare.
pub const MAX_FRAGMENT: u32 = 1024 * 1024 + 64 * 1024;
/// Largest record (all fragments of one message) accepted.
pub const MAX_RECORD: usize = MAX_FRAGMENT as usize;
/// Most supplementary groups an AUTH_UNIX credential may carry (RFC 5531).
pub const MAX_AUTH_GROUPS: usize = 16;
/// Longest credential or verifier body (RFC 5531).
pub const MAX_AUTH_BYTES: usize = 400;

/// A record-marking header: length of the fragment that follows and whether it is the last.
pub fn fragment_header(bytes: [u8; 4]) -> (u32, bool) {
    let h = u32::from_be_bytes(bytes);
    (h & 0x7fff_ffff, h & 0x8000_0000 != 0)
}

/// The caller's credential.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Auth {
    /// AUTH_NONE (flavor 0).
    None,
    /// AUTH_UNIX / AUTH_SYS (flavor 1).
    Unix {
        /// User id the client claims.
        uid: u32,
        /// Primary group id.
        gid: u32,
        /// Supplementary groups (at most 16).
        gids: Vec<u32>,
    },
    /// Any other flavor (refused).
    Other(u32),
}

/// A parsed RPC call: header fields and where the procedure's arguments start.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Call {
    /// Transaction id, echoed in the reply.
    pub xid: u32,
    /// Program number (100003 NFS, 100005 MOUNT, 100000 portmapper).
    pub prog: u32,
    /// Program version.
    pub vers: u32,
    /// Procedure number.
    pub proc_: u32,
    /// The credential.
    pub auth: Auth,
    /// Offset of the arguments in the record.
    pub args_at: usize,
}

/// Why a record is not a usable call.
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
pub enum CallError {
    /// Not even an RPC call header: the connection is closed.
    #[error("malformed RPC header: {0}")]
    Malformed(XdrError),
    /// A REPLY, or a message type other than CALL: the connection is closed.
    #[error("not an RPC call (message type {0})")]
    NotACall(u32),
    /// RPC version other than 2: answered with RPC_MISMATCH.
    #[error("RPC version {vers} (only 2)")]
    RpcVersion {
        /// Transaction id to answer.
        xid: u32,
        /// The version asked.
        vers: u32,
    },
    /// A credential that does not parse: answered with AUTH_BADCRED.
    #[error("bad credential")]
    BadCredential {
        /// Transaction id to answer.
        xid: u32,
    },
}

/// Parses the call header of one complete record.
pub fn parse_call(record: &[u8]) -> Result<Call, CallError> {
    let mut r = XdrReader::new(record);
    let xid = r.u32().map_err(CallError::Malformed)?;
    let mtype = r.u32().map_err(CallError::Malformed)?;
    if mtype != 0 {
        return Err(CallError::NotACall(mtype));
    }
    let rpcvers = r.u32().map_err(CallError::Malformed)?;
    if rpcvers != 2 {
        return Err(CallError::RpcVersion { xid, vers: rpcvers });
    }
    let prog = r.u32().map_err(CallError::Malformed)?;
    let vers = r.u32().map_err(CallError::Malformed)?;
    let proc_ = r.u32().map_err(CallError::Malformed)?;
    let flavor = r.u32().map_err(CallError::Malformed)?;
    let body = r.opaque(MAX_AUTH_BYTES).map_err(|_| CallError::BadCredential { xid })?;
    let auth = match flavor {
        0 => Auth::None,
        1 => parse_auth_unix(body).map_err(|_| CallError::BadCredential { xid })?,
        f => Auth::Other(f),
    };
    // Verifier: flavor + body, ignored for AUTH_NONE / AUTH_UNIX.
    r.u32().map_err(|_| CallError::BadCredential { xid })?;
    r.opaque(MAX_AUTH_BYTES).map_err(|_| CallError::BadCredential { xid })?;
    Ok(Call { xid, prog, vers, proc_, auth, args_at: r.position() })
}

fn parse_auth_unix(body: &[u8]) -> Result<Auth, XdrError> {
    let mut r = XdrReader::new(body);
    let _stamp = r.u32()?;
    let _machine = r.opaque(255)?;
    let uid = r.u32()?;
    let gid = r.u32()?;
    let n = r.u32()?;
    if n as usize > MAX_AUTH_GROUPS {
        return Err(XdrError::TooLong(n));
    }
    let gids = (0..n).map(|_| r.u32()).collect::<Result<Vec<_>, _>>()?;
    Ok(Auth::Unix { uid, gid, gids })
}

/// How a call is answered when it is not a successful procedure result.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ReplyStatus {
    /// SUCCESS: the procedure's result follows.
    Success,
    /// PROG_UNAVAIL.
    ProgUnavail,
    /// PROG_MISMATCH with the supported range.
    ProgMismatch(u32, u32),
    /// PROC_UNAVAIL.
    ProcUnavail,
    /// GARBAGE_ARGS: the arguments did not decode.
    GarbageArgs,
    /// SYSTEM_ERR.
    SystemErr,
    /// MSG_DENIED / RPC_MISMATCH (only version 2).
    RpcMismatch,
    /// MSG_DENIED / AUTH_ERROR with this reason.
    AuthError(AuthFailure),
}

/// Why a credential is refused.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum AuthFailure {
    /// AUTH_BADCRED: unparsable.
    BadCred,
    /// AUTH_TOOWEAK: a flavor or a client the export does not accept.
    TooWeak,
}

/// Starts a reply buffer: 4 bytes reserved for the record mark, then the reply header.
/// Append the result body (for [`ReplyStatus::Success`]) and call [`finish_reply`].
pub fn begin_reply(xid: u32, status: ReplyStatus, body_hint: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + 24 + body_hint);
    out.extend_from_slice(&[0; 4]);
    let accepted = |data| reply_body::MSG_ACCEPTED(accepted_reply { verf: opaque_auth::default(), reply_data: data });
    let body = match status {
        ReplyStatus::Success => accepted(accept_stat_data::SUCCESS),
        ReplyStatus::ProgUnavail => accepted(accept_stat_data::PROG_UNAVAIL),
        ReplyStatus::ProgMismatch(low, high) => accepted(accept_stat_data::PROG_MISMATCH { low, high }),
        ReplyStatus::ProcUnavail => accepted(accept_stat_data::PROC_UNAVAIL),
        ReplyStatus::GarbageArgs => accepted(accept_stat_data::GARBAGE_ARGS),
        ReplyStatus::SystemErr => accepted(accept_stat_data::SYSTEM_ERR),
        ReplyStatus::RpcMismatch => reply_body::MSG_DENIED(rejected_reply::rpc_mismatch(2, 2)),
        ReplyStatus::AuthError(why) => reply_body::MSG_DENIED(rejected_reply::auth_error(match why {
            AuthFailure::BadCred => auth_stat::AUTH_BADCRED,
            AuthFailure::TooWeak => auth_stat::AUTH_TOOWEAK,
        })),
    };
    let msg = rpc_msg { xid, body: msg_body::REPLY(body) };
    msg.pack(&mut out).expect("packing into a Vec cannot fail");
    out
}

/// Writes the record mark (one last fragment) into a buffer from [`begin_reply`].
pub fn finish_reply(out: Vec<u8>) -> Vec<u8> {
    finish_reply_followed(out, 0)
}

/// Like [`finish_reply`] for a record whose last `more` bytes are sent after `out` (file data
/// spliced from the page cache).
pub fn finish_reply_followed(mut out: Vec<u8>, more: usize) -> Vec<u8> {
    let len = (out.len() - 4 + more) as u32 | 0x8000_0000;
    out[..4].copy_from_slice(&len.to_be_bytes());
    out
}

/// A complete reply with no result body (errors of the RPC layer, void results).
pub fn reply_only(xid: u32, status: ReplyStatus) -> Vec<u8> {
    finish_reply(begin_reply(xid, status, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(prog: u32, cred_flavor: u32, cred: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        for x in [7u32, 0, 2, prog, 3, 1, cred_flavor, cred.len() as u32] {
            v.extend_from_slice(&x.to_be_bytes());
        }
        v.extend_from_slice(cred);
        v.resize(v.len().div_ceil(4) * 4, 0);
        v.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]);
        v.extend_from_slice(b"ARGS");
        v
    }

    fn unix_cred(uid: u32, gid: u32, gids: &[u32]) -> Vec<u8> {
        let mut v = Vec::new();
        for x in [1u32, 4] {
            v.extend_from_slice(&x.to_be_bytes());
        }
        v.extend_from_slice(b"host");
        for x in [uid, gid, gids.len() as u32] {
            v.extend_from_slice(&x.to_be_bytes());
        }
        for g in gids {
            v.extend_from_slice(&g.to_be_bytes());
        }
        v
    }

    #[test]
    fn parses_auth_unix_call() {
        let rec = call(100_003, 1, &unix_cred(1000, 100, &[4, 5]));
        let c = parse_call(&rec).unwrap();
        assert_eq!((c.xid, c.prog, c.vers, c.proc_), (7, 100_003, 3, 1));
        assert_eq!(c.auth, Auth::Unix { uid: 1000, gid: 100, gids: vec![4, 5] });
        assert_eq!(&rec[c.args_at..], b"ARGS");
    }

    #[test]
    fn refuses_bad_headers_and_credentials() {
        assert!(matches!(parse_call(&[0, 0, 0, 1]), Err(CallError::Malformed(_))));
        let mut reply = call(100_003, 0, b"");
        reply[7] = 1;
        assert_eq!(parse_call(&reply), Err(CallError::NotACall(1)));
        let mut v1 = call(100_003, 0, b"");
        v1[11] = 1;
        assert_eq!(parse_call(&v1), Err(CallError::RpcVersion { xid: 7, vers: 1 }));
        let too_many = unix_cred(1, 1, &[0; 17]);
        assert_eq!(parse_call(&call(100_003, 1, &too_many)), Err(CallError::BadCredential { xid: 7 }));
        assert_eq!(parse_call(&call(100_003, 0, b"")).unwrap().auth, Auth::None);
        assert_eq!(parse_call(&call(100_003, 6, b"gss!")).unwrap().auth, Auth::Other(6));
    }

    #[test]
    fn reply_has_record_mark_and_header() {
        let r = reply_only(9, ReplyStatus::ProcUnavail);
        let (len, last) = fragment_header(r[..4].try_into().unwrap());
        assert!(last);
        assert_eq!(len as usize, r.len() - 4);
        // xid, REPLY, MSG_ACCEPTED, verf (0,0), PROC_UNAVAIL
        assert_eq!(&r[4..], &[0, 0, 0, 9, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3]);
        let followed = finish_reply_followed(begin_reply(9, ReplyStatus::Success, 0), 1000);
        assert_eq!(fragment_header(followed[..4].try_into().unwrap()), (followed.len() as u32 - 4 + 1000, true));
    }
}
