//! SESSION_SETUP (MS-SMB2 2.2.5/2.2.6): the two NTLMSSP legs, then the session's signing key
//! (3.1.1 derives it from the session's preauth hash) and, when the connection negotiated a
//! cipher, its encryption keys. Guests and anonymous sessions get no keys and are flagged so
//! clients know they cannot sign or encrypt; `[smb] encryption = "required"` refuses them.

use std::sync::Arc;

use super::Reply;
use crate::config::SmbEncryption;
use crate::smb::auth::{self, Identity};
use crate::smb::conn::Connection;
use crate::smb::filetime_now;
use crate::smb::session::{Session, SessionState};
use crate::smb::signing::{self, dialect};
use crate::smb::transform::SessionCipher;
use crate::smb::wire::header::Header;
use crate::smb::wire::status::NtStatus;
use crate::smb::wire::{slice_at, Reader, WireError, WireResult, Writer};

/// SessionFlags: guest.
const IS_GUEST: u16 = 1;
/// SessionFlags: anonymous.
const IS_NULL: u16 = 2;
/// SessionFlags: the client must encrypt all of the session's traffic.
pub const ENCRYPT_DATA: u16 = 4;
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
    /// The session this client had before it lost its connection (0: none).
    pub previous_session_id: u64,
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
        let previous_session_id = r.u64()?;
        Ok(Self { flags, security_mode, blob: slice_at(msg, off, len)?, previous_session_id })
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

/// Most sessions one connection may hold (Windows clients use one per user).
pub const MAX_SESSIONS: usize = 64;
/// Most sessions one connection may have between their first and last SESSION_SETUP leg:
/// each holds an NTLM exchange, so unbounded first legs would grow the server.
pub const MAX_SESSIONS_IN_SETUP: usize = 4;

/// Where a SESSION_SETUP stands.
enum Step {
    /// First leg of a new session.
    New,
    /// First leg of a re-authentication of a valid session.
    Reauth,
    /// Last leg of a re-authentication.
    FinishReauth,
    /// Last leg of a new session.
    Finish,
}

/// Runs SESSION_SETUP ([`handle`]); a re-authentication that fails ends the session, its
/// trees and opens (MS-SMB2 3.3.5.5.3: a failed authentication removes the session; smbd does
/// the same, and smbtorture notify.invalid-reauth expects the watch to end).
pub async fn run(conn: &mut Connection, hdr: &Header, req: Request<'_>, msg: &[u8]) -> Result<Reply, NtStatus> {
    let finishing_reauth = conn.sessions.get(&hdr.session_id).is_some_and(|s| s.is_valid() && s.reauth.is_some());
    let r = handle(conn, hdr, req, msg);
    if finishing_reauth && r.is_err() {
        tracing::info!(client = %conn.tcp.client, session = hdr.session_id, "SMB: re-authentication failed: the session ends");
        super::logoff::end_session(conn, hdr.session_id).await;
    }
    r
}

/// A re-authentication proved another identity than the session's: the session becomes
/// theirs, as smbd and Windows allow (smbtorture `smb2.session.reauth2`-`5`: a session
/// re-authenticated as anonymous and back), and its trees run as what the new identity runs
/// as on their shares. Refused (LOGON_FAILURE; [`run`] then ends the session) when the
/// credentials were wrong and mapped to the guest (smbtorture notify.invalid-reauth, as
/// Windows answers), or when a tree's share would not take the new identity (a guest on a
/// share without `guest_ok`, a forced user this node lacks): a session never keeps a tree
/// its user could not connect.
fn reidentify(conn: &mut Connection, session: u64, new: &Identity) -> Result<(), NtStatus> {
    let refuse = |why: &str| {
        tracing::info!(client = %conn.tcp.client, session, asked = ?new, why, "SMB: re-authentication as another identity refused");
        Err(NtStatus::LOGON_FAILURE)
    };
    if *new == Identity::Guest {
        return refuse("wrong credentials mapped to the guest");
    }
    let s = conn.sessions.get(&session).ok_or(NtStatus::USER_SESSION_DELETED)?;
    let mut ids = Vec::new();
    for (tid, t) in &s.trees {
        if let crate::smb::session::TreeKind::Disk(share) = &t.kind {
            if new.is_guest_like() && !share.guest_ok {
                return refuse("a tree of the session is on a share without guest access");
            }
            let Some(id) = super::tree_connect::identity_on(conn, new, share) else {
                return refuse("a tree's share forces a user or group this node lacks");
            };
            ids.push((*tid, id));
        }
    }
    tracing::info!(client = %conn.tcp.client, session, identity = ?new, "SMB: session re-authenticated as another identity");
    let s = conn.sessions.get_mut(&session).ok_or(NtStatus::USER_SESSION_DELETED)?;
    for (tid, (uid, gid)) in ids {
        if let Some(t) = s.trees.get_mut(&tid) {
            (t.uid, t.gid) = (uid, gid);
        }
    }
    s.identity = Some(new.clone());
    conn.server.sessions.register(session, new.clone(), conn.client_guid, conn.end.clone());
    Ok(())
}

/// Handles SESSION_SETUP.
/// `msg` is the whole request, for the SMB 3.1.1 preauth hash.
pub fn handle(conn: &mut Connection, hdr: &Header, req: Request<'_>, msg: &[u8]) -> Result<Reply, NtStatus> {
    if req.flags & BINDING != 0 {
        return Err(NtStatus::REQUEST_NOT_ACCEPTED);
    }
    let is311 = conn.dialect == dialect::SMB311;
    let server = conn.server.clone();
    let step = match conn.sessions.get(&hdr.session_id) {
        None if hdr.session_id != 0 => return Err(NtStatus::USER_SESSION_DELETED),
        None => Step::New,
        Some(s) if s.is_valid() && s.reauth.is_none() => Step::Reauth,
        Some(s) if s.is_valid() => Step::FinishReauth,
        Some(_) => Step::Finish,
    };
    match step {
        Step::New => {
            let setting_up = conn.sessions.values().filter(|s| !s.is_valid()).count();
            if setting_up >= MAX_SESSIONS_IN_SETUP || conn.sessions.len() >= MAX_SESSIONS {
                tracing::info!(client = %conn.tcp.client, sessions = conn.sessions.len(), setting_up, "SMB: too many sessions on one connection");
                return Err(NtStatus::INSUFFICIENT_RESOURCES);
            }
            let (ex, out) = auth::start(req.blob, &server.server_name, filetime_now())?;
            let id = conn.new_session_id();
            let mut preauth = conn.preauth;
            if is311 {
                signing::preauth_update(&mut preauth, msg);
            }
            conn.sessions.insert(id, Session::new(id, ex, preauth));
            let mut r = Reply::with(NtStatus::MORE_PROCESSING_REQUIRED, body(0, &out));
            r.session_id = Some(id);
            return Ok(r);
        }
        Step::Reauth => {
            // Re-authentication of a live session (the request was signed if the session
            // signs: see compound::signature_check). The session keeps its identity, key and
            // trees meanwhile; only the same user can complete it.
            let (ex, out) = auth::start(req.blob, &server.server_name, filetime_now())?;
            let s = conn.sessions.get_mut(&hdr.session_id).ok_or(NtStatus::USER_SESSION_DELETED)?;
            s.reauth = Some(ex);
            let mut r = Reply::with(NtStatus::MORE_PROCESSING_REQUIRED, body(0, &out));
            r.session_id = Some(hdr.session_id);
            return Ok(r);
        }
        Step::FinishReauth => {
            let s = conn.sessions.get_mut(&hdr.session_id).ok_or(NtStatus::USER_SESSION_DELETED)?;
            let ex = s.reauth.take().ok_or(NtStatus::INVALID_PARAMETER)?;
            let a = auth::finish(&ex, req.blob, &server.users, server.guest_allowed)?;
            if s.identity.as_ref() != Some(&a.identity) {
                reidentify(conn, hdr.session_id, &a.identity)?;
            }
            let s = conn.sessions.get_mut(&hdr.session_id).ok_or(NtStatus::USER_SESSION_DELETED)?;
            let flags = match a.identity {
                Identity::Anonymous => IS_NULL,
                Identity::Guest => IS_GUEST,
                Identity::User(_) if s.encrypt_data => ENCRYPT_DATA,
                Identity::User(_) => 0,
            };
            let mut r = Reply::ok(body(flags, &a.blob));
            r.session_id = Some(hdr.session_id);
            r.sign_final = true;
            return Ok(r);
        }
        Step::Finish => {}
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
    let mut flags = match a.identity {
        Identity::Anonymous => IS_NULL,
        Identity::Guest => IS_GUEST,
        Identity::User(_) => 0,
    };
    s.signing_key = a.session_key.map(|k| signing::signing_key(conn.dialect, &k, &s.preauth));
    s.cipher = conn.cipher.zip(a.session_key).and_then(|(cipher, k)| {
        let (seal, open) = signing::encryption_keys(conn.dialect, cipher, &k, &s.preauth);
        SessionCipher::new(id, cipher, &seal, &open).map(Arc::new)
    });
    if server.encryption == SmbEncryption::Required && s.cipher.is_none() {
        let why = if a.identity.is_guest_like() {
            "guest and anonymous sessions have no keys and cannot encrypt"
        } else if conn.dialect < dialect::SMB300 {
            "the client negotiated SMB 2.x, which has no encryption"
        } else {
            "the client negotiated no cipher"
        };
        tracing::info!(client = %conn.tcp.client, identity = ?a.identity, why, "SMB: session refused because [smb] encryption = \"required\"");
        conn.sessions.remove(&id);
        return Err(NtStatus::ACCESS_DENIED);
    }
    if server.encryption >= SmbEncryption::Desired && s.cipher.is_some() {
        s.encrypt_data = true;
        flags |= ENCRYPT_DATA;
    }
    s.require_encryption = server.encryption == SmbEncryption::Required;
    s.signing_required = s.signing_key.is_some()
        && (server.require_signing || req.security_mode & 2 != 0 || conn.client_security_mode & 2 != 0);
    let cipher = s.cipher.as_ref().map(|c| c.cipher().name());
    tracing::info!(client = %conn.tcp.client, identity = ?a.identity, signing = s.signing_required, cipher, encrypt_data = s.encrypt_data, "SMB session established");
    let previous = req.previous_session_id;
    if previous != 0
        && previous != id
        && server.sessions.end_previous(previous, &a.identity, conn.client_guid, conn.end.serial)
    {
        // MS-SMB2 3.3.5.5.3: the client's old session ends (here: its connection, as lost, so
        // its durable opens wait for their reconnect and the others close).
        tracing::info!(client = %conn.tcp.client, previous, "SMB: the client's previous session ends");
    }
    server.sessions.register(id, a.identity.clone(), conn.client_guid, conn.end.clone());
    s.identity = Some(a.identity);
    s.state = SessionState::Valid;
    let mut r = Reply::ok(body(flags, &a.blob));
    r.session_id = Some(id);
    r.sign_final = true;
    Ok(r)
}
