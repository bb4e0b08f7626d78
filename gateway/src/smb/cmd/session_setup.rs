//! SESSION_SETUP (MS-SMB2 2.2.5/2.2.6): the two NTLMSSP legs, then the session's signing key
//! (3.1.1 derives it from the session's preauth hash). Guests and anonymous sessions get no
//! key and are flagged so clients know they cannot sign.

use super::Reply;
use crate::smb::auth::{self, Identity};
use crate::smb::conn::Connection;
use crate::smb::filetime_now;
use crate::smb::session::{Session, SessionState};
use crate::smb::signing::{self, dialect};
use crate::smb::wire::header::Header;
use crate::smb::wire::status::NtStatus;
use crate::smb::wire::{slice_at, Reader, WireError, WireResult, Writer};

/// SessionFlags: guest.
const IS_GUEST: u16 = 1;
/// SessionFlags: anonymous.
const IS_NULL: u16 = 2;
/// Request flag: bind an existing session to this connection (multichannel; not offered).
const BINDING: u8 = 1;

/// A decoded SESSION_SETUP request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    /// Flags (binding).
    pub flags: u8,
    /// The client's SecurityMode.
    pub security_mode: u8,
    /// Security blob (SPNEGO).
    pub blob: &'a [u8],
}

impl<'a> Request<'a> {
    /// Decodes the body of `msg`.
    pub fn parse(msg: &'a [u8]) -> WireResult<Self> {
        let mut r = Reader::at(msg, 64);
        if r.u16()? != 25 {
            return Err(WireError::Malformed("SESSION_SETUP structure size"));
        }
        let flags = r.u8()?;
        let security_mode = r.u8()?;
        r.skip(8)?;
        let off = r.u16()? as usize;
        let len = r.u16()? as usize;
        Ok(Self { flags, security_mode, blob: slice_at(msg, off, len)? })
    }
}

fn body(session_flags: u16, blob: &[u8]) -> Vec<u8> {
    let mut w = Writer::with_capacity(8 + blob.len());
    w.u16(9).u16(session_flags).u16(if blob.is_empty() { 0 } else { 72 }).u16(blob.len() as u16).bytes(blob);
    if blob.is_empty() {
        w.u8(0);
    }
    w.buf
}

/// Handles SESSION_SETUP.
/// `msg` is the whole request, for the SMB 3.1.1 preauth hash.
pub fn handle(conn: &mut Connection, hdr: &Header, req: Request<'_>, msg: &[u8]) -> Result<Reply, NtStatus> {
    if req.flags & BINDING != 0 {
        return Err(NtStatus::REQUEST_NOT_ACCEPTED);
    }
    let is311 = conn.dialect == dialect::SMB311;
    let server = conn.server.clone();
    let restart = match conn.sessions.get(&hdr.session_id) {
        None if hdr.session_id != 0 => return Err(NtStatus::USER_SESSION_DELETED),
        None => true,
        Some(s) => matches!(s.state, SessionState::Valid),
    };
    if restart {
        let (ex, out) = auth::start(req.blob, &server.server_name, filetime_now())?;
        let id = if hdr.session_id == 0 { conn.new_session_id() } else { hdr.session_id };
        let mut preauth = conn.preauth;
        if is311 {
            signing::preauth_update(&mut preauth, msg);
        }
        match conn.sessions.get_mut(&id) {
            Some(s) => {
                // Re-authentication of a live session: keep its trees, restart the exchange.
                s.state = SessionState::InProgress(ex);
                s.preauth = preauth;
            }
            None => {
                conn.sessions.insert(id, Session::new(id, ex, preauth));
            }
        }
        let mut r = Reply::with(NtStatus::MORE_PROCESSING_REQUIRED, body(0, &out));
        r.session_id = Some(id);
        return Ok(r);
    }
    let id = hdr.session_id;
    let s = conn.sessions.get_mut(&id).ok_or(NtStatus::USER_SESSION_DELETED)?;
    let SessionState::InProgress(ex) = s.state.clone() else { return Err(NtStatus::INVALID_PARAMETER) };
    if is311 {
        signing::preauth_update(&mut s.preauth, msg);
    }
    let result = auth::finish(&ex, req.blob, &server.users, server.guest_allowed);
    let a = match result {
        Ok(a) => a,
        Err(st) => {
            if s.identity.is_none() {
                conn.sessions.remove(&id);
            }
            return Err(st);
        }
    };
    if a.identity.is_guest_like() && server.require_signing {
        tracing::info!(client = %conn.tcp.client, "SMB: guest logon refused because require_signing is set");
        conn.sessions.remove(&id);
        return Err(NtStatus::LOGON_FAILURE);
    }
    let flags = match a.identity {
        Identity::Anonymous => IS_NULL,
        Identity::Guest => IS_GUEST,
        Identity::User(_) => 0,
    };
    s.signing_key = a.session_key.map(|k| signing::signing_key(conn.dialect, &k, &s.preauth));
    s.signing_required = s.signing_key.is_some()
        && (server.require_signing || req.security_mode & 2 != 0 || conn.client_security_mode & 2 != 0);
    tracing::info!(client = %conn.tcp.client, identity = ?a.identity, signing = s.signing_required, "SMB session established");
    s.identity = Some(a.identity);
    s.state = SessionState::Valid;
    let mut r = Reply::ok(body(flags, &a.blob));
    r.session_id = Some(id);
    r.sign_final = true;
    Ok(r)
}
