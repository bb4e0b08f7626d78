//! SESSION_SETUP (MS-SMB2 2.2.5/2.2.6): the two NTLMSSP legs, then the session's signing key
//! (3.1.1 derives it from the session's preauth hash) and, when the connection negotiated a
//! cipher, its encryption keys. Guests and anonymous sessions get no keys and are flagged so
//! clients know they cannot sign or encrypt; `[smb] encryption = "required"` refuses them.
//! With the BINDING flag, the same two legs make this connection a channel of a session of
//! another connection of the node (`bind`).

use std::sync::Arc;

use super::Reply;
use crate::config::SmbEncryption;
use crate::smb::auth::{self, Identity};
use crate::smb::conn::Connection;
use crate::smb::filetime_now;
use crate::smb::node_sessions::{Inbound, SessionFacts};
use crate::smb::session::{Channel, Session, SessionState};
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
/// Request flag: bind an existing session to this connection (multichannel).
const BINDING: u8 = 1;

/// How long a new session waits for the connection holding its PreviousSessionId to end that
/// session (it does so between two of its requests).
const END_PREVIOUS_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

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
    let finishing_new = conn.sessions.get(&hdr.session_id).is_some_and(|s| !s.is_valid());
    let previous = req.previous_session_id;
    let r = if req.flags & BINDING != 0 { bind(conn, hdr, req, msg) } else { handle(conn, hdr, req, msg) };
    if finishing_reauth && r.is_err() {
        tracing::info!(client = %conn.tcp.client, session = hdr.session_id, "SMB: re-authentication failed: the session ends");
        super::logoff::end_session(conn, hdr.session_id).await;
    }
    if finishing_new
        && previous != 0
        && previous != hdr.session_id
        && r.as_ref().is_ok_and(|r| r.status == NtStatus::SUCCESS)
    {
        end_previous(conn, hdr.session_id, previous).await;
    }
    r
}

/// MS-SMB2 3.3.5.5.3: the new session `id` names `previous` as the client's old session, which
/// ends (only that session, as smbd ends it: its plain opens close, its durable opens wait for
/// their reconnect), whichever connection of this node holds it, before the new session is
/// answered (smbtorture `smb2.session.reconnect1`/`2` use the old handle right after).
async fn end_previous(conn: &mut Connection, id: u64, previous: u64) {
    let Some(identity) = conn.sessions.get(&id).and_then(|s| s.identity.clone()) else { return };
    let Some(holder) = conn.server.sessions.previous(previous, &identity, conn.client_guid) else { return };
    tracing::info!(client = %conn.tcp.client, previous, "SMB: the client's previous session ends");
    if holder.serial == conn.end.serial {
        super::logoff::end_session(conn, previous).await;
        return;
    }
    let (done, ended) = tokio::sync::oneshot::channel();
    if holder.inbox.send(Inbound::EndSession { id: previous, done }).is_ok()
        && tokio::time::timeout(END_PREVIOUS_WAIT, ended).await.is_err()
    {
        tracing::warn!(client = %conn.tcp.client, previous, "SMB: the previous session's connection did not end it in time");
    }
}

/// SESSION_SETUP with the BINDING flag (MS-SMB2 3.3.5.5.2): this connection asks to become a
/// channel of session `hdr.session_id`, held by another connection of this node. The checks
/// are [`binding::refusal`]'s; then the two NTLMSSP legs, which must prove the session's own
/// user, give the channel its signing key. Refusals are answered signed with the session's key
/// (the connection's signing rules find it in the node's table).
///
/// [`binding::refusal`]: crate::smb::binding::refusal
fn bind(conn: &mut Connection, hdr: &Header, req: Request<'_>, msg: &[u8]) -> Result<Reply, NtStatus> {
    use crate::smb::binding::{refusal, ChannelSide, SessionSide};
    let id = hdr.session_id;
    if id == 0 {
        return Err(NtStatus::INVALID_PARAMETER);
    }
    let server = conn.server.clone();
    let Some(facts) = server.sessions.lookup(id) else { return Err(NtStatus::USER_SESSION_DELETED) };
    let binding = conn.channels.get(&id).is_some_and(|c| c.binding.is_some());
    let session = SessionSide {
        dialect: facts.dialect,
        signing_alg: facts.signing_alg,
        cipher: facts.cipher,
        guest_like: facts.identity.is_guest_like(),
    };
    let channel = ChannelSide {
        dialect: conn.dialect,
        signing_alg: conn.signing_alg,
        cipher: conn.cipher,
        multichannel: server.multichannel,
        signed: hdr.is_signed(),
        already_bound: conn.sessions.contains_key(&id) || (conn.channels.contains_key(&id) && !binding),
    };
    if let Some(st) = refusal(session, channel) {
        tracing::info!(client = %conn.tcp.client, session = id, status = ?st, "SMB: session binding refused");
        return Err(st);
    }
    let is311 = conn.dialect == dialect::SMB311;
    if !binding {
        // Channels count against the connection's session limits: each holds keys, and one
        // in setup an NTLM exchange.
        let setting_up = conn.sessions.values().filter(|s| !s.is_valid()).count()
            + conn.channels.values().filter(|c| c.binding.is_some()).count();
        if setting_up >= MAX_SESSIONS_IN_SETUP || conn.sessions.len() + conn.channels.len() >= MAX_SESSIONS {
            tracing::info!(client = %conn.tcp.client, channels = conn.channels.len(), "SMB: too many sessions and channels on one connection");
            return Err(NtStatus::INSUFFICIENT_RESOURCES);
        }
        let (ex, out) = auth::start(req.blob, &server.server_name, filetime_now())?;
        let mut preauth = conn.preauth;
        if is311 {
            signing::preauth_update(&mut preauth, msg);
        }
        conn.channels.insert(id, Channel { binding: Some((ex, preauth)), signing_key: None, session: facts });
        let mut r = Reply::with(NtStatus::MORE_PROCESSING_REQUIRED, body(0, &out));
        r.session_id = Some(id);
        return Ok(r);
    }
    let Some((ex, mut preauth)) = conn.channels.get_mut(&id).and_then(|c| c.binding.take()) else {
        return Err(NtStatus::INVALID_PARAMETER);
    };
    if is311 {
        signing::preauth_update(&mut preauth, msg);
    }
    let proved = auth::finish(&ex, req.blob, &server.users, server.guest_allowed).and_then(|a| {
        if a.identity != facts.identity {
            tracing::info!(client = %conn.tcp.client, session = id, asked = ?a.identity, "SMB: session binding as another user refused");
            return Err(NtStatus::ACCESS_DENIED);
        }
        // MS-SMB2 3.3.5.5.3: a binding without a session key cannot sign its channel.
        let key = a.session_key.ok_or(NtStatus::NOT_SUPPORTED)?;
        Ok((a.blob, key))
    });
    let (blob, key) = match proved {
        Ok(p) => p,
        Err(st) => {
            conn.channels.remove(&id);
            return Err(st);
        }
    };
    let c = conn.channels.get_mut(&id).ok_or(NtStatus::USER_SESSION_DELETED)?;
    c.signing_key = Some(signing::signing_key(conn.dialect, &key, &preauth));
    tracing::info!(client = %conn.tcp.client, session = id, holder = c.session.connection.serial, "SMB: connection bound to a session as a channel");
    let mut r = Reply::ok(body(0, &blob));
    r.session_id = Some(id);
    r.sign_final = true;
    Ok(r)
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
    conn.server.sessions.set_identity(session, new.clone());
    Ok(())
}

/// Handles SESSION_SETUP.
/// `msg` is the whole request, for the SMB 3.1.1 preauth hash.
pub fn handle(conn: &mut Connection, hdr: &Header, req: Request<'_>, msg: &[u8]) -> Result<Reply, NtStatus> {
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
    // The client's PreviousSessionId ends in `run`, once this session is valid.
    let facts = SessionFacts {
        identity: a.identity.clone(),
        client_guid: conn.client_guid,
        dialect: conn.dialect,
        signing_alg: conn.signing_alg,
        cipher: conn.cipher,
        signing_key: s.signing_key,
        signing_required: s.signing_required,
        session_cipher: s.cipher.clone(),
        encrypt_data: s.encrypt_data,
        require_encryption: s.require_encryption,
        connection: conn.end.clone(),
    };
    server.sessions.register(id, facts);
    s.identity = Some(a.identity);
    s.state = SessionState::Valid;
    let mut r = Reply::ok(body(flags, &a.blob));
    r.session_id = Some(id);
    r.sign_final = true;
    Ok(r)
}
