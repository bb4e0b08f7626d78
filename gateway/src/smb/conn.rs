//! One client connection: reads transport frames, upgrades an SMB1 negotiate, walks compound
//! chains, checks and adds signatures, grants credits, runs each command, and sends replies
//! (async ones through the writer task). Malformed input closes the connection, logged; it
//! never panics.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use ha::connections::TcpConnection;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::cmd::{self, Reply};
use super::session::{OpenTable, Session};
use super::signing::{self, dialect, SigningAlgorithm};
use super::wire::header::{
    self, command, Header, FLAG_ASYNC_COMMAND, FLAG_RELATED_OPERATIONS, FLAG_SERVER_TO_REDIR, FLAG_SIGNED, HEADER_LEN,
};
use super::wire::status::NtStatus;
use super::wire::{Reader, Writer};
use super::SmbServer;

/// Largest transport frame accepted: an 8 MiB write plus headers.
const MAX_FRAME: usize = 8 * 1024 * 1024 + 64 * 1024;
/// Most credits granted in one response.
const MAX_GRANT: u16 = 512;

/// Work a command finishes later (a blocking lock, a change notification): the connection
/// answers STATUS_PENDING at once and sends this future's reply when it completes or is
/// cancelled.
pub struct AsyncWork {
    /// Fires on CANCEL, close of the handle, logoff or disconnect.
    pub cancel: CancellationToken,
    /// Produces the final reply.
    pub work: Pin<Box<dyn Future<Output = Reply> + Send>>,
    /// The open whose close completes it.
    pub waits_on: Option<u64>,
    /// Fires when that open closes.
    pub closed: CancellationToken,
    /// The status it completes with then (NOTIFY_CLEANUP for CHANGE_NOTIFY).
    pub close_status: NtStatus,
}

/// A pending async operation, findable by CANCEL.
#[derive(Debug, Clone)]
pub struct PendingOp {
    /// MessageId of the request.
    pub message_id: u64,
    /// Session it runs in.
    pub session_id: u64,
    /// Cancels it.
    pub cancel: CancellationToken,
    /// The open it waits on (closing the handle completes it).
    pub volatile: Option<u64>,
    /// Fires when that open closes.
    pub closed: CancellationToken,
}

/// Everything one client connection knows.
pub struct Connection {
    /// Server-wide state.
    pub server: Arc<SmbServer>,
    /// Client and server address, for logs.
    pub tcp: TcpConnection,
    /// Negotiated dialect, 0 before NEGOTIATE.
    pub dialect: u16,
    /// The client's GUID from NEGOTIATE.
    pub client_guid: [u8; 16],
    /// The client's SecurityMode from NEGOTIATE.
    pub client_security_mode: u16,
    /// The client's Capabilities from NEGOTIATE.
    pub client_capabilities: u32,
    /// The dialects the client offered (for VALIDATE_NEGOTIATE_INFO).
    pub client_dialects: Vec<u16>,
    /// Capabilities we answered.
    pub server_capabilities: u32,
    /// SecurityMode we answered.
    pub server_security_mode: u16,
    /// Signing algorithm of this connection.
    pub signing_alg: SigningAlgorithm,
    /// SMB 3.1.1 connection preauth hash.
    pub preauth: [u8; 64],
    /// Sessions by SessionId.
    pub sessions: HashMap<u64, Session>,
    /// Opens by volatile id.
    pub opens: OpenTable,
    /// The FileId a CREATE earlier in the current compound chain returned.
    pub compound_fid: Option<(u64, u64)>,
    /// Pending async operations by AsyncId.
    pub pending: Arc<Mutex<HashMap<u64, PendingOp>>>,
    next_session: u64,
    next_tree: u32,
    next_async: u64,
    out: mpsc::UnboundedSender<Outgoing>,
}

impl Connection {
    /// A fresh SessionId.
    pub fn new_session_id(&mut self) -> u64 {
        self.next_session += 1;
        // Mix in a random high part so ids from different connections differ.
        (self.next_session & 0xffff_ffff) | ((rand::random::<u32>() as u64 & 0x7fff_ffff) << 32)
    }

    /// A fresh TreeId.
    pub fn new_tree_id(&mut self) -> u32 {
        self.next_tree += 1;
        self.next_tree
    }

    /// The valid session `id`.
    pub fn session(&self, id: u64) -> Result<&Session, NtStatus> {
        match self.sessions.get(&id) {
            Some(s) if s.is_valid() => Ok(s),
            _ => Err(NtStatus::USER_SESSION_DELETED),
        }
    }

    /// Large MTU is in effect (2.1 and later).
    pub fn large_mtu(&self) -> bool {
        self.dialect >= dialect::SMB210
    }

    /// Resolves a FileId of a request: all-ones in a compound means "the one CREATE returned".
    pub fn file_id(&self, persistent: u64, volatile: u64) -> Result<u64, NtStatus> {
        if persistent == u64::MAX && volatile == u64::MAX {
            return self.compound_fid.map(|(_, v)| v).ok_or(NtStatus::FILE_CLOSED);
        }
        Ok(volatile)
    }

    /// Cancels pending operations waiting on open `volatile` (its handle is closing).
    pub fn cancel_pending_on(&self, volatile: u64) {
        let p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        for op in p.values().filter(|op| op.volatile == Some(volatile)) {
            op.closed.cancel();
        }
    }
}

/// Serves one client until it disconnects, sends garbage, or the daemon stops.
pub async fn serve(server: Arc<SmbServer>, stream: TcpStream, tcp: TcpConnection, stop: CancellationToken) {
    let (rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Outgoing>();
    let writer = tokio::spawn(async move {
        while let Some(out) = rx.recv().await {
            let ok = match out {
                Outgoing::Raw(bytes) => wr.write_all(&bytes).await.is_ok(),
                Outgoing::Message(msg) if msg.len() < 64 * 1024 => {
                    let mut frame = Vec::with_capacity(msg.len() + 4);
                    frame.extend_from_slice(&header::frame_header(msg.len()));
                    frame.extend_from_slice(&msg);
                    wr.write_all(&frame).await.is_ok()
                }
                // Large replies (READ data) go out without another copy.
                Outgoing::Message(msg) => {
                    wr.write_all(&header::frame_header(msg.len())).await.is_ok() && wr.write_all(&msg).await.is_ok()
                }
            };
            if !ok {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    let mut conn = Connection {
        server,
        tcp,
        dialect: 0,
        client_guid: [0; 16],
        client_security_mode: 0,
        client_capabilities: 0,
        client_dialects: Vec::new(),
        server_capabilities: 0,
        server_security_mode: 0,
        signing_alg: SigningAlgorithm::HmacSha256,
        preauth: [0; 64],
        sessions: HashMap::new(),
        opens: OpenTable::default(),
        compound_fid: None,
        pending: Arc::new(Mutex::new(HashMap::new())),
        next_session: 0,
        next_tree: 0,
        next_async: 0,
        out: tx,
    };
    // The reader runs ahead of the command loop (a few frames), so the next request arrives
    // from the network while the current one is on the backend.
    let (ftx, mut frx) = mpsc::channel::<Vec<u8>>(READ_AHEAD);
    let reader = tokio::spawn(read_frames(rd, ftx, conn.out.clone(), conn.tcp));
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => break,
            m = frx.recv() => match m {
                Some(m) => m,
                None => break,
            },
        };
        let keep = match &msg[..4] {
            p if p == header::PROTOCOL_ID => handle_smb2(&mut conn, &msg).await,
            p if p == header::SMB1_PROTOCOL_ID => handle_smb1_negotiate(&mut conn, &msg),
            _ => Err("not an SMB2 message (encrypted transform or unknown protocol)"),
        };
        if let Err(why) = keep {
            tracing::info!(client = %conn.tcp.client, why, "SMB: closing connection");
            break;
        }
    }
    reader.abort();
    // Disconnect: cancel waiters, close every open (delete-on-close and locks are released).
    for op in conn.pending.lock().unwrap_or_else(|e| e.into_inner()).values() {
        op.cancel.cancel();
    }
    for id in conn.opens.all_ids() {
        if let Some(open) = conn.opens.remove(id) {
            cmd::close::release(&conn.server.clone(), open).await;
        }
    }
    drop(conn);
    let _ = writer.await;
}

/// Frames the reader may hold ahead of the command loop.
const READ_AHEAD: usize = 4;

/// Reads transport frames until the client goes away or sends a bad frame. NetBIOS session
/// requests (clients on a port other than 445 start with one) get a positive answer and
/// keep-alives are skipped.
async fn read_frames(
    rd: tokio::net::tcp::OwnedReadHalf,
    frames: mpsc::Sender<Vec<u8>>,
    out: mpsc::UnboundedSender<Outgoing>,
    tcp: TcpConnection,
) {
    let mut rd = BufReader::with_capacity(256 * 1024, rd);
    loop {
        let mut hdr = [0u8; 4];
        if rd.read_exact(&mut hdr).await.is_err() {
            return;
        }
        if hdr[0] == 0x81 || hdr[0] == 0x85 {
            let n = ((hdr[1] as usize & 1) << 16) | ((hdr[2] as usize) << 8) | hdr[3] as usize;
            let mut skip = vec![0u8; n];
            if rd.read_exact(&mut skip).await.is_err() {
                return;
            }
            if hdr[0] == 0x81 {
                let _ = out.send(Outgoing::Raw(vec![0x82, 0, 0, 0]));
            }
            continue;
        }
        let len = match header::frame_len(hdr) {
            Ok(l) if (4..=MAX_FRAME).contains(&l) => l,
            _ => {
                tracing::info!(client = %tcp.client, "SMB: bad transport frame, closing");
                return;
            }
        };
        let mut msg = vec![0u8; len];
        if rd.read_exact(&mut msg).await.is_err() || frames.send(msg).await.is_err() {
            return;
        }
    }
}

/// What the writer task sends.
#[derive(Debug)]
pub enum Outgoing {
    /// Bytes as they are (NetBIOS session answers).
    Raw(Vec<u8>),
    /// An SMB2 message; the writer adds the transport header.
    Message(Vec<u8>),
}

fn send(conn: &Connection, msg: Vec<u8>) {
    let _ = conn.out.send(Outgoing::Message(msg));
}

/// SMB1 NEGOTIATE from an old-style client: answer with an SMB2 NEGOTIATE response so it
/// switches to SMB2 ("SMB 2.???" -> renegotiate; "SMB 2.002" only -> 2.0.2).
fn handle_smb1_negotiate(conn: &mut Connection, msg: &[u8]) -> Result<(), &'static str> {
    if conn.dialect != 0 || msg.len() < 35 || msg[4] != 0x72 {
        return Err("SMB1 request other than a first NEGOTIATE");
    }
    let mut r = Reader::at(msg, 32);
    let words = r.u8().map_err(|_| "SMB1 negotiate truncated")? as usize;
    r.skip(words * 2).map_err(|_| "SMB1 negotiate truncated")?;
    let count = r.u16().map_err(|_| "SMB1 negotiate truncated")? as usize;
    let bytes = r.bytes(count).map_err(|_| "SMB1 negotiate truncated")?;
    let names: Vec<&[u8]> = bytes.split(|b| *b == 0).map(|s| s.strip_prefix(&[2u8]).unwrap_or(s)).collect();
    let chosen = if names.iter().any(|n| *n == b"SMB 2.???") {
        dialect::WILDCARD
    } else if names.iter().any(|n| *n == b"SMB 2.002") {
        dialect::SMB202
    } else {
        return Err("client speaks only SMB1");
    };
    let body = cmd::negotiate::response_body(conn, chosen, None);
    if chosen == dialect::SMB202 {
        conn.dialect = dialect::SMB202;
    }
    let h = Header { command: command::NEGOTIATE, credits: 1, flags: FLAG_SERVER_TO_REDIR, ..Default::default() };
    let mut w = Writer::with_capacity(HEADER_LEN + body.len());
    h.emit(&mut w);
    w.bytes(&body);
    send(conn, w.buf);
    Ok(())
}

/// Walks one SMB2 message (a compound chain of one or more requests).
async fn handle_smb2(conn: &mut Connection, msg: &[u8]) -> Result<(), &'static str> {
    let mut off = 0usize;
    let mut out: Vec<Vec<u8>> = Vec::new();
    let mut prev: Option<(u64, u32, NtStatus)> = None;
    conn.compound_fid = None;
    loop {
        let rest = &msg[off..];
        let mut hdr = Header::parse(rest).map_err(|_| "malformed SMB2 header")?;
        let end = if hdr.next_command == 0 {
            msg.len()
        } else {
            let n = hdr.next_command as usize;
            if n < HEADER_LEN || n % 8 != 0 || off + n > msg.len() {
                return Err("bad NextCommand offset");
            }
            off + n
        };
        let elem = &msg[off..end];
        let related = hdr.flags & FLAG_RELATED_OPERATIONS != 0 && prev.is_some();
        if related {
            let (sid, tid, _) = prev.expect("checked");
            if hdr.session_id == u64::MAX {
                hdr.session_id = sid;
            }
            if hdr.tree_id == u32::MAX {
                hdr.tree_id = tid;
            }
        } else {
            conn.compound_fid = None;
        }
        if conn.dialect == 0 && hdr.command != command::NEGOTIATE {
            return Err("request before NEGOTIATE");
        }
        if hdr.command == command::NEGOTIATE && conn.dialect == dialect::SMB311 {
            return Err("second NEGOTIATE");
        }
        let signed_in = hdr.is_signed();
        let reply = match check_signature(conn, &hdr, elem) {
            Err(s) => Outcome::Now(Reply::err(s)),
            Ok(()) => match prev {
                Some((_, _, st)) if related && st.is_error() && hdr.command != command::NEGOTIATE => {
                    Outcome::Now(Reply::err(st))
                }
                _ => dispatch(conn, &hdr, elem).await,
            },
        };
        if hdr.command == command::CANCEL {
            // CANCEL has no response.
            if hdr.next_command == 0 {
                break;
            }
            off = end;
            continue;
        }
        let (reply, pending) = match reply {
            Outcome::Now(r) => (r, None),
            Outcome::Later(work) => (Reply { status: NtStatus::PENDING, ..Reply::err(NtStatus::PENDING) }, Some(work)),
        };
        let session_id = reply.session_id.unwrap_or(hdr.session_id);
        let mut rh = Header {
            credit_charge: hdr.credit_charge,
            status: reply.status.0,
            command: hdr.command,
            credits: hdr.credits.clamp(1, MAX_GRANT),
            flags: FLAG_SERVER_TO_REDIR | (hdr.flags & FLAG_RELATED_OPERATIONS),
            next_command: 0,
            message_id: hdr.message_id,
            async_id: 0,
            tree_id: reply.tree_id.unwrap_or(hdr.tree_id),
            session_id,
            signature: [0; 16],
        };
        let mut async_id = 0;
        if let Some(work) = &pending {
            conn.next_async += 1;
            async_id = conn.next_async;
            rh.flags |= FLAG_ASYNC_COMMAND;
            rh.async_id = async_id;
            conn.pending.lock().unwrap_or_else(|e| e.into_inner()).insert(
                async_id,
                PendingOp {
                    message_id: hdr.message_id,
                    session_id,
                    cancel: work.cancel.clone(),
                    volatile: work.waits_on,
                    closed: work.closed.clone(),
                },
            );
        }
        let mut w = Writer::with_capacity(HEADER_LEN + reply.body.len() + 8);
        rh.emit(&mut w);
        w.bytes(&reply.body);
        let resp = w.buf;
        if hdr.command == command::NEGOTIATE && conn.dialect == dialect::SMB311 {
            signing::preauth_update(&mut conn.preauth, elem);
            signing::preauth_update(&mut conn.preauth, &resp);
        }
        if hdr.command == command::SESSION_SETUP
            && conn.dialect == dialect::SMB311
            && reply.status == NtStatus::MORE_PROCESSING_REQUIRED
        {
            if let Some(s) = conn.sessions.get_mut(&session_id) {
                signing::preauth_update(&mut s.preauth, &resp);
            }
        }
        let key = if pending.is_some() { None } else { response_key(conn, session_id, signed_in, reply.sign_final) };
        prev = Some((session_id, rh.tree_id, reply.status));
        if let Some(work) = pending {
            spawn_async(conn, rh, async_id, work, response_key(conn, session_id, signed_in, false));
        }
        out.push(resp);
        if let Some(k) = key {
            let last = out.last_mut().expect("just pushed");
            out_key_sign(conn.signing_alg, &k, last, hdr.next_command != 0);
        } else if hdr.next_command != 0 {
            let last = out.last_mut().expect("just pushed");
            pad8(last);
        }
        if hdr.next_command == 0 {
            break;
        }
        off = end;
    }
    if out.is_empty() {
        return Ok(());
    }
    if out.len() == 1 {
        let mut only = out.pop().expect("one part");
        resign_chain(conn, &mut only);
        send(conn, only);
        return Ok(());
    }
    // Chain the responses: NextCommand of each but the last is its padded length.
    let n = out.len();
    let mut all = Vec::with_capacity(out.iter().map(Vec::len).sum());
    for (i, mut part) in out.into_iter().enumerate() {
        if i + 1 < n {
            let l = part.len() as u32;
            part[header::offset::NEXT_COMMAND..header::offset::NEXT_COMMAND + 4].copy_from_slice(&l.to_le_bytes());
        }
        all.extend_from_slice(&part);
    }
    // Signatures were computed with NextCommand = 0 for chained parts; recompute them now
    // that NextCommand is set.
    resign_chain(conn, &mut all);
    send(conn, all);
    Ok(())
}

fn pad8(v: &mut Vec<u8>) {
    while v.len() % 8 != 0 {
        v.push(0);
    }
}

fn out_key_sign(_alg: SigningAlgorithm, _key: &[u8; 16], part: &mut Vec<u8>, chained: bool) {
    if chained {
        pad8(part);
    }
    // Mark as to-be-signed; the signature itself is written by resign_chain once the
    // chain's NextCommand offsets are final.
    let flags = u32::from_le_bytes([part[16], part[17], part[18], part[19]]) | FLAG_SIGNED;
    part[16..20].copy_from_slice(&flags.to_le_bytes());
}

fn resign_chain(conn: &Connection, all: &mut [u8]) {
    let mut off = 0usize;
    loop {
        let Ok(h) = Header::parse(&all[off..]) else { return };
        let end = if h.next_command == 0 { all.len() } else { off + h.next_command as usize };
        if h.flags & FLAG_SIGNED != 0 {
            if let Some(key) = conn.sessions.get(&h.session_id).and_then(|s| s.signing_key) {
                signing::sign(conn.signing_alg, &key, &mut all[off..end]);
            }
        }
        if h.next_command == 0 || end > all.len() {
            return;
        }
        off = end;
    }
}

/// Verifies a signed request; refuses an unsigned one where signing is required.
fn check_signature(conn: &Connection, hdr: &Header, elem: &[u8]) -> Result<(), NtStatus> {
    if matches!(hdr.command, command::NEGOTIATE | command::SESSION_SETUP) && !hdr.is_signed() {
        return Ok(());
    }
    let Some(s) = conn.sessions.get(&hdr.session_id) else { return Ok(()) };
    match s.signing_key {
        Some(key) if hdr.is_signed() => {
            if signing::verify(conn.signing_alg, &key, elem) {
                Ok(())
            } else {
                tracing::info!(client = %conn.tcp.client, command = hdr.command, "SMB: bad signature");
                Err(NtStatus::ACCESS_DENIED)
            }
        }
        _ if s.signing_required && s.is_valid() && hdr.command != command::CANCEL => Err(NtStatus::ACCESS_DENIED),
        _ => Ok(()),
    }
}

/// The key a response must be signed with, if any.
fn response_key(conn: &Connection, session_id: u64, signed_in: bool, final_setup: bool) -> Option<[u8; 16]> {
    let s = conn.sessions.get(&session_id)?;
    let key = s.signing_key?;
    if signed_in || s.signing_required || (final_setup && conn.dialect >= dialect::SMB300) {
        Some(key)
    } else {
        None
    }
}

/// Sends the final reply of async work when it completes or is cancelled.
fn spawn_async(conn: &Connection, mut rh: Header, async_id: u64, work: AsyncWork, key: Option<[u8; 16]>) {
    let out = conn.out.clone();
    let pending = conn.pending.clone();
    let alg = conn.signing_alg;
    tokio::spawn(async move {
        let AsyncWork { cancel, work, closed, close_status, .. } = work;
        let reply = tokio::select! {
            r = work => r,
            _ = cancel.cancelled() => Reply::err(NtStatus::CANCELLED),
            _ = closed.cancelled() => Reply::err(close_status),
        };
        pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&async_id);
        rh.status = reply.status.0;
        rh.credits = 0;
        rh.flags &= !FLAG_RELATED_OPERATIONS;
        let mut w = Writer::with_capacity(HEADER_LEN + reply.body.len());
        rh.emit(&mut w);
        w.bytes(&reply.body);
        let mut msg = w.buf;
        if let Some(k) = key {
            signing::sign(alg, &k, &mut msg);
        }
        let _ = out.send(Outgoing::Message(msg));
    });
}

/// Result of a command: now, or later (async).
pub enum Outcome {
    /// Answer now.
    Now(Reply),
    /// Answer STATUS_PENDING now and the real reply later.
    Later(AsyncWork),
}

async fn dispatch(conn: &mut Connection, hdr: &Header, elem: &[u8]) -> Outcome {
    cmd::dispatch(conn, hdr, elem).await
}
