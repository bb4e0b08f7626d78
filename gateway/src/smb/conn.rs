//! One client connection, on a thread of its own: reads transport frames, upgrades an SMB1
//! negotiate, decrypts TRANSFORM messages, walks compound chains, checks and adds signatures,
//! grants credits, runs each command, and sends replies, encrypted where [`encryption`] says
//! (async ones from tasks on the connection's runtime). Malformed input, a bad transform or a
//! failed decryption closes the connection, logged; it never panics.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use ha::connections::TcpConnection;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::cmd::{self, Reply};
use super::compound::{self, ReplyChain};
use super::encryption;
use super::node_sessions::{ChainRest, ChannelRequest, ConnectionEnd, Inbound};
use super::open_updates::OpenUpdates;
use super::sequence::SequenceWindow;
use super::session::{Channel, OpenTable, Session};
use super::signing::{self, dialect, SigningAlgorithm};
use super::transform::{self, Cipher, SessionCipher, TransformHeader};
use super::transport::{Frame, FrameReader, FrameWriter, ReadError, SESSION_GRANTED};
use super::wire::header::{
    self, command, Header, FLAG_ASYNC_COMMAND, FLAG_RELATED_OPERATIONS, FLAG_SERVER_TO_REDIR, HEADER_LEN,
};
use super::wire::status::NtStatus;
use super::wire::{Reader, Writer};
use super::SmbServer;
use crate::descriptors::ThreadPermit;

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
    /// Fired by the work once it has begun what a cancel must not cut (a rename under way):
    /// from then on a CANCEL or a close waits for the work's own reply, which tells the truth.
    pub committed: CancellationToken,
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
    /// Cipher of this connection (`None`: nothing encrypts on it).
    pub cipher: Option<Cipher>,
    /// SMB 3.1.1 connection preauth hash.
    pub preauth: [u8; 64],
    /// Sessions by SessionId.
    pub sessions: HashMap<u64, Session>,
    /// Sessions of other connections of this node this connection is a channel of (or is
    /// binding to), by SessionId.
    pub channels: HashMap<u64, Channel>,
    /// Opens by volatile id.
    pub opens: OpenTable,
    /// The FileId a CREATE earlier in the current compound chain returned.
    pub compound_fid: Option<(u64, u64)>,
    /// The reply to the request being run goes out encrypted (set before each command): READ
    /// then leaves room for the reply's header before its data ([`crate::smb::bulk`]).
    pub sealing: bool,
    /// The framing side: where replies go and which async replies are still owed.
    pub link: Link,
    /// Changes async work made to opens of this connection (a rename that waited), applied
    /// before the next message runs ([`Connection::apply_open_updates`]).
    pub open_updates: OpenUpdates,
    /// Where breaks of this connection's detached durable opens go (made at the first one).
    ghost: Option<tokio::sync::mpsc::UnboundedSender<Vec<u8>>>,
    /// How other connections of this node reach this one ([`crate::smb::node_sessions`]).
    pub end: ConnectionEnd,
    /// What they ask of it; taken while it is being waited on.
    inbox: Option<tokio::sync::mpsc::UnboundedReceiver<Inbound>>,
    next_session: u64,
    next_tree: u32,
}

/// Async operations one connection may have outstanding (as Windows' default
/// `Smb2MaxAsyncCredits`): each holds a task and its state until it completes. A
/// CHANGE_NOTIFY, blocking LOCK or waiting SET_INFO that would go past it is answered
/// STATUS_INSUFFICIENT_RESOURCES at once.
pub const MAX_PENDING: usize = 512;

/// The framing side of a connection, apart from its session and open state: the writer
/// every reply goes through (async ones included, from their own tasks) and the async
/// operations whose final reply is still owed.
pub struct Link {
    /// Framed messages out.
    pub out: FrameWriter<OwnedWriteHalf>,
    /// Pending async operations by AsyncId (CANCEL finds them here).
    pub pending: Arc<Mutex<HashMap<u64, PendingOp>>>,
    /// The MessageIds the client may use next.
    pub sequence: SequenceWindow,
    /// Unsolicited messages (oplock and lease breaks), sent by a task of the connection.
    pub notices: tokio::sync::mpsc::UnboundedSender<Vec<u8>>,
    /// The keys that encrypt those notices: a session of this connection that encrypts
    /// (MS-SMB2 3.3.4.6/3.3.4.7), kept current by [`refresh_notice_seal`].
    notice_seal: Arc<Mutex<Option<Arc<SessionCipher>>>>,
    /// The task sending notices: fire `.0` and it hands back its queue (the connection goes
    /// dormant); `None` while dormant.
    notice_task: Option<(CancellationToken, tokio::task::JoinHandle<Option<NoticeQueue>>)>,
    next_async: u64,
}

/// Where a connection's notices wait to be sent.
type NoticeQueue = tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>;

impl Link {
    /// A link that writes to `out`.
    pub fn new(out: FrameWriter<OwnedWriteHalf>) -> Self {
        let (notices, queued) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
        let mut link = Self {
            out,
            pending: Arc::new(Mutex::new(HashMap::new())),
            sequence: SequenceWindow::new(),
            notices,
            notice_seal: Arc::default(),
            notice_task: None,
            next_async: 0,
        };
        link.send_notices(queued, None);
        link
    }

    /// Starts the task that sends the notices of `queued` (`first` before them), on the
    /// connection's runtime.
    fn send_notices(&mut self, mut queued: NoticeQueue, first: Option<Vec<u8>>) {
        let writer = self.out.clone();
        let seal = self.notice_seal.clone();
        let park = CancellationToken::new();
        let parked = park.clone();
        let task = tokio::spawn(async move {
            let mut next = first;
            loop {
                let mut m = match next.take() {
                    Some(m) => m,
                    None => tokio::select! {
                        biased;
                        m = queued.recv() => m?,
                        _ = parked.cancelled() => return Some(queued),
                    },
                };
                let cipher = seal.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let sent = match cipher {
                    Some(c) => match c.seal(&mut m) {
                        Ok(th) => writer.message(&[&th, &m]).await,
                        Err(_) => return None,
                    },
                    None => writer.message(&[&m]).await,
                };
                if sent.is_err() {
                    return None;
                }
            }
        });
        self.notice_task = Some((park, task));
    }

    /// Stops the notice task and takes the writer out, for a connection going dormant.
    /// `Err`: a send failed (the client is gone); `Ok(None)`: something still writes, the
    /// connection stays awake.
    async fn quiesce(&mut self) -> Result<Option<(OwnedWriteHalf, NoticeQueue)>, ()> {
        if self.out.busy() {
            // A send under way (the notice task's, to a client slow to read) would hold us.
            return Ok(None);
        }
        let (park, task) = self.notice_task.take().ok_or(())?;
        park.cancel();
        let notices = task.await.ok().flatten().ok_or(())?;
        match self.out.take() {
            Some(wr) => Ok(Some((wr, notices))),
            None => {
                self.send_notices(notices, None);
                Ok(None)
            }
        }
    }

    /// Async operations still owed a final reply.
    pub fn pending_count(&self) -> usize {
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Records async `work` answering request `hdr` in `session_id`; returns its AsyncId.
    pub fn register(&mut self, hdr: &Header, session_id: u64, work: &AsyncWork) -> u64 {
        self.next_async += 1;
        let op = PendingOp {
            message_id: hdr.message_id,
            session_id,
            cancel: work.cancel.clone(),
            volatile: work.waits_on,
            closed: work.closed.clone(),
        };
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).insert(self.next_async, op);
        self.next_async
    }
}

impl Connection {
    /// A connection that has not negotiated yet, sending through `link`.
    fn new(server: Arc<SmbServer>, tcp: TcpConnection, link: Link) -> Self {
        let (end, inbox) = ConnectionEnd::new();
        Connection {
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
            cipher: None,
            preauth: [0; 64],
            sessions: HashMap::new(),
            channels: HashMap::new(),
            opens: OpenTable::default(),
            compound_fid: None,
            sealing: false,
            link,
            open_updates: OpenUpdates::default(),
            ghost: None,
            end,
            inbox: Some(inbox),
            next_session: 0,
            next_tree: 0,
        }
    }

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
        // Both halves must name the same open.
        if self.opens.persistent_of(volatile).is_some_and(|p| p != persistent) {
            return Err(NtStatus::FILE_CLOSED);
        }
        Ok(volatile)
    }

    /// Ends `open` as its session or connection goes away without a CLOSE: a durable open is
    /// kept for its client's reconnect ([`super::durable::DurableTable::detach`]), anything
    /// else is released.
    pub async fn end_open(&mut self, open: super::cmd::open::Open) {
        let server = self.server.clone();
        let mut open = open;
        if server.durable.is_durable(open.persistent) {
            let to = self.ghost.get_or_insert_with(|| server.durable.ghost(&server)).clone();
            match server.durable.detach(&server, open, &to) {
                None => return,
                Some(o) => open = o,
            }
        }
        cmd::close::release(&server, open).await.ok(); // logged there
    }

    /// Applies what async work changed about this connection's opens (see
    /// [`crate::smb::open_updates`]): before a message runs, so a request that follows the
    /// answer of a rename sees the open renamed.
    pub fn apply_open_updates(&mut self) {
        self.open_updates.apply(&mut self.opens);
    }

    /// Cancels pending operations waiting on open `volatile` (its handle is closing).
    pub fn cancel_pending_on(&self, volatile: u64) {
        let p = self.link.pending.lock().unwrap_or_else(|e| e.into_inner());
        for op in p.values().filter(|op| op.volatile == Some(volatile)) {
            op.closed.cancel();
        }
    }
}

/// Serves one client until it disconnects, sends garbage, or the daemon stops (or this
/// future is dropped: HA moved the address the client came in on).
///
/// The connection runs on a thread of its own with a single-threaded runtime, and backend
/// calls run in place on it (like smbd's process per client): a request is read, executed
/// and answered by one thread, with no hand-off between threads, and a slow backend call
/// stalls only this client. A connection with nothing in flight whose client says nothing
/// for [`SmbServer::dormant_after`] goes dormant: its thread and runtime end (they cost
/// most of an idle connection's memory and descriptors) and this future, on the daemon's
/// runtime, holds its state until the client speaks again, a break must go out, or another
/// connection asks something of it; then a thread takes the connection up again.
///
/// A thread costs descriptors ([`crate::descriptors`]): a new or waking connection waits
/// here, on the daemon's runtime, until the budget has room for one (its client's bytes
/// wait in the socket), and a thread or runtime that cannot be made is tried again after a
/// pause: a storm of connections is answered in turn, never reset.
pub async fn serve(server: Arc<SmbServer>, stream: TcpStream, tcp: TcpConnection, stop: CancellationToken) {
    // Dropping this future (connection reset by HA: the address moved) stops the thread too;
    // the client is then lost, not sent away: its durable opens wait for it.
    let moved = CancellationToken::new();
    let _stop_thread = moved.clone().drop_guard();
    let stream = match stream.into_std() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(client = %tcp.client, error = %e, "SMB: cannot take over the connection");
            return;
        }
    };
    let descriptors = server.descriptors.clone();
    // A new connection until its first thread takes it up (boxed: the task of every idle
    // connection would keep room for it otherwise).
    let mut fresh = Some(Box::new((server, stream, tcp)));
    // Holds a dormant connection (also while it waits for a thread); ends it if this future
    // is dropped meanwhile.
    let mut asleep = Asleep(None);
    // What woke the dormant connection.
    let mut first = First::Client;
    let mut failures = 0;
    loop {
        // Boxed, like the pause below: only a waiting connection pays for its future.
        let permit = tokio::select! {
            biased;
            _ = stop.cancelled() => None,
            p = Box::pin(descriptors.thread()) => Some(p),
        };
        let Some(permit) = permit else {
            if let Some(mut d) = asleep.0.take() {
                Box::pin(finish(&mut d.conn, false)).await;
            }
            return;
        };
        let start = match fresh.take() {
            Some(f) => {
                let (server, stream, tcp) = *f;
                Start::Fresh { server, stream, tcp }
            }
            None => {
                let Some(d) = asleep.0.take() else { return };
                Start::Resume(d, std::mem::replace(&mut first, First::Client))
            }
        };
        let left = match on_thread(start, permit, &stop, &moved) {
            Ok(done) => done.await.unwrap_or(Left::Ended),
            Err(start) => Left::NoThread(*start),
        };
        let dormant = match left {
            Left::Ended => return,
            Left::Dormant(d) => {
                failures = 0;
                asleep.0.insert(d)
            }
            Left::NoThread(start) => {
                // Out of threads or descriptors after all (something beside the budget took
                // them): the connection waits as it is and tries again.
                match start {
                    Start::Fresh { server, stream, tcp } => fresh = Some(Box::new((server, stream, tcp))),
                    Start::Resume(d, f) => {
                        asleep.0 = Some(d);
                        first = f;
                    }
                }
                failures += 1;
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => {}
                    _ = Box::pin(tokio::time::sleep(crate::descriptors::budget::retry_pause(failures))) => {}
                }
                continue;
            }
        };
        match dormant.wait(&stop).await {
            Wake::Client(f) => first = f,
            Wake::Ended { lost, why } => {
                if let Some(why) = why {
                    tracing::info!(client = %dormant.conn.tcp.client, why, "SMB: closing connection");
                }
                // Boxed: inline, the closing work (releasing opens) would make every idle
                // connection's task as large as its largest step.
                Box::pin(finish(&mut dormant.conn, lost)).await;
                asleep.0 = None;
                return;
            }
        }
    }
}

/// How a connection's thread starts.
enum Start {
    /// A new client.
    Fresh { server: Arc<SmbServer>, stream: std::net::TcpStream, tcp: TcpConnection },
    /// A dormant connection, woken by what comes first.
    Resume(Box<Dormant>, First),
}

/// How a connection's thread ended.
enum Left {
    /// The connection is over.
    Ended,
    /// The connection went dormant.
    Dormant(Box<Dormant>),
    /// No thread or runtime could be started for it.
    NoThread(Start),
}

/// The runtime a connection's thread runs: one socket (and the notice task's writes) is all
/// it waits on, so a few events per tick, not the default 1024 (12 KiB per connection
/// thread). It holds [`crate::descriptors::budget::THREAD_DESCRIPTORS`] descriptors.
fn connection_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().max_io_events_per_tick(64).build()
}

/// Starts `start`'s thread with its single-threaded runtime, holding `permit` (its
/// descriptors) until the runtime is gone; what it left comes on the receiver. `Err`: no
/// thread, `start` given back.
fn on_thread(
    start: Start,
    permit: ThreadPermit,
    stop: &CancellationToken,
    moved: &CancellationToken,
) -> Result<tokio::sync::oneshot::Receiver<Left>, Box<Start>> {
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<Left>();
    // Kept here too, so that a thread that cannot be spawned gives it back.
    let slot = Arc::new(Mutex::new(Some(start)));
    let (stop, moved, taken) = (stop.clone(), moved.clone(), slot.clone());
    let spawned = std::thread::Builder::new().name("nasgw-smb".into()).spawn(move || {
        let Some(start) = taken.lock().unwrap_or_else(|e| e.into_inner()).take() else { return };
        let rt = match connection_runtime() {
            Ok(rt) => rt,
            Err(e) => {
                warn_no_thread("runtime", &e);
                let _ = done_tx.send(Left::NoThread(start));
                return;
            }
        };
        crate::vfs::in_place::run_calls_in_place();
        let threads = match &start {
            Start::Fresh { server, .. } => server.clone(),
            Start::Resume(d, _) => d.conn.server.clone(),
        };
        threads.connection_threads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let left = rt.block_on(Box::pin(serve_here(start, stop, moved)));
        threads.connection_threads.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        // `serve` was dropped as the connection went dormant (HA moved its address): end it
        // here, its client lost.
        if let Err(Left::Dormant(mut d)) = done_tx.send(left) {
            rt.block_on(Box::pin(finish(&mut d.conn, true)));
        }
        // What the thread and its runtime held is free now, but resident until trimmed.
        drop(rt);
        drop(permit);
        crate::heap::thread_ended();
    });
    match spawned {
        Ok(_) => Ok(done_rx),
        Err(e) => {
            warn_no_thread("thread", &e);
            match slot.lock().unwrap_or_else(|e| e.into_inner()).take() {
                Some(start) => Err(Box::new(start)),
                None => Ok(done_rx),
            }
        }
    }
}

/// Logs that a connection's `what` (thread, runtime) could not be made, at most once a
/// minute: a storm tries many connections again every second.
fn warn_no_thread(what: &'static str, e: &std::io::Error) {
    static LOGGED: Mutex<Option<std::time::Instant>> = Mutex::new(None);
    let mut last = LOGGED.lock().unwrap_or_else(|e| e.into_inner());
    if last.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(60)) {
        *last = Some(std::time::Instant::now());
        tracing::warn!(what, error = %e, "SMB: cannot start a connection's thread: its connection waits and tries again");
    }
}

/// A connection without a thread: its state, its socket (registered with no runtime), the
/// notices queued for it, and when it is closed if it stays without a session.
struct Dormant {
    conn: Connection,
    stream: Option<std::net::TcpStream>,
    notices: NoticeQueue,
    deadline: Option<tokio::time::Instant>,
}

/// What woke a dormant connection.
enum Wake {
    /// It goes on, on a thread, starting with this.
    Client(First),
    /// It ends (`lost`: its client may come back for its durable opens).
    Ended { lost: bool, why: Option<&'static str> },
}

/// What a woken connection does first.
enum First {
    /// Its client sent something (or closed the connection).
    Client,
    /// Another connection of the node asked something of it.
    Inbound(Inbound),
    /// A break to send.
    Notice(Vec<u8>),
}

impl Dormant {
    /// Waits, on the daemon's runtime, for whatever needs the connection again.
    async fn wait(&mut self, stop: &CancellationToken) -> Wake {
        let ended = |why| Wake::Ended { lost: true, why: Some(why) };
        let Some(socket) = self.stream.take() else { return ended("dormant connection without its socket") };
        let Ok(socket) = TcpStream::from_std(socket) else { return ended("cannot register the dormant connection") };
        let Some(mut inbox) = self.conn.inbox.take() else { return ended("inbox lost") };
        let evict = self.conn.server.evict.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let superseded = self.conn.end.token.clone();
        let far = tokio::time::Instant::now() + std::time::Duration::from_secs(86400 * 365);
        let wake = tokio::select! {
            biased;
            _ = stop.cancelled() => Wake::Ended { lost: false, why: None },
            _ = superseded.cancelled() => {
                Wake::Ended { lost: true, why: Some("its client set up a new session in place of one of its sessions (PreviousSessionId)") }
            }
            _ = evict.cancelled() => {
                tracing::warn!(client = %self.conn.tcp.client, "SMB: closing connection: this node left the cluster's file-sharing view");
                Wake::Ended { lost: false, why: None }
            }
            Some(m) = inbox.recv() => Wake::Client(First::Inbound(m)),
            Some(m) = self.notices.recv() => Wake::Client(First::Notice(m)),
            _ = socket.readable() => Wake::Client(First::Client),
            _ = tokio::time::sleep_until(self.deadline.unwrap_or(far)), if self.deadline.is_some() => {
                ended("idle without an authenticated session")
            }
        };
        self.conn.inbox = Some(inbox);
        match socket.into_std() {
            Ok(s) => self.stream = Some(s),
            Err(_) if matches!(wake, Wake::Client(_)) => return ended("cannot take the dormant connection back"),
            Err(_) => {}
        }
        wake
    }
}

/// Holds a dormant connection; if the future holding it is dropped (HA moved the address its
/// client came in on), the connection ends on the daemon's runtime, its client lost.
struct Asleep(Option<Box<Dormant>>);

impl Drop for Asleep {
    fn drop(&mut self) {
        let Some(mut d) = self.0.take() else { return };
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { finish(&mut d.conn, true).await });
        }
    }
}

/// The connection's thread: takes up `start`, then serves until the connection ends or goes
/// dormant.
async fn serve_here(start: Start, stop: CancellationToken, moved: CancellationToken) -> Left {
    let (stream, conn, first) = match start {
        Start::Fresh { server, stream, tcp } => (stream, Err((server, tcp)), First::Client),
        Start::Resume(mut d, first) => match d.stream.take() {
            Some(stream) => (stream, Ok(d), first),
            None => {
                finish(&mut d.conn, true).await;
                return Left::Ended;
            }
        },
    };
    let stream = match TcpStream::from_std(stream) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "SMB: cannot register the connection");
            if let Ok(mut d) = conn {
                finish(&mut d.conn, true).await;
            }
            return Left::Ended;
        }
    };
    let (rd, wr) = stream.into_split();
    let mut frames = FrameReader::new(rd);
    let mut first_inbound = None;
    let mut conn = match conn {
        Err((server, tcp)) => Connection::new(server, tcp, Link::new(FrameWriter::new(wr))),
        Ok(d) => {
            let Dormant { mut conn, notices, .. } = *d;
            conn.link.out.put(wr).await;
            let notice = match first {
                First::Notice(m) => Some(m),
                First::Inbound(m) => {
                    first_inbound = Some(m);
                    None
                }
                First::Client => None,
            };
            conn.link.send_notices(notices, notice);
            conn
        }
    };
    let evict = conn.server.evict.lock().unwrap_or_else(|p| p.into_inner()).clone();
    // Stop interrupts the loop wherever it waits, including a reply to a client that does not
    // read. Handlers never wait in the middle (backend calls run in place), so it is always
    // between requests or on the socket: the cleanup below then sees consistent state.
    // Only a lost client keeps its durable opens (its connection ended, or its address moved
    // to another node, where it reconnects): a stopping daemon or an evicted node releases
    // everything.
    let mut lost = false;
    let superseded = conn.end.token.clone();
    let mut dormant = None;
    tokio::select! {
        biased;
        _ = stop.cancelled() => {}
        _ = moved.cancelled() => lost = true,
        _ = superseded.cancelled() => {
            lost = true;
            tracing::info!(client = %conn.tcp.client, "SMB: closing connection: its client set up a new session in place of one of its sessions (PreviousSessionId)");
        }
        _ = evict.cancelled() => {
            tracing::warn!(client = %conn.tcp.client, "SMB: closing connection: this node left the cluster's file-sharing view");
        }
        end = command_loop(&mut conn, &mut frames, first_inbound) => match end {
            End::Closed(why) => {
                lost = true;
                if let Some(why) = why {
                    tracing::info!(client = %conn.tcp.client, why, "SMB: closing connection");
                }
            }
            End::Dormant { wr, notices, deadline } => dormant = Some((wr, notices, deadline)),
        }
    }
    if let Some((wr, notices, deadline)) = dormant {
        // Off the runtime that ends with this thread: the halves become the socket again.
        let stream = frames.into_inner().reunite(wr).ok().and_then(|s| s.into_std().ok());
        match stream {
            Some(stream) => return Left::Dormant(Box::new(Dormant { conn, stream: Some(stream), notices, deadline })),
            None => {
                tracing::warn!(client = %conn.tcp.client, "SMB: closing connection: its socket cannot be set aside");
                lost = true;
            }
        }
    }
    finish(&mut conn, lost).await;
    Left::Ended
}

/// Ends a connection: cancels its waiters, ends its sessions and closes every open
/// (delete-on-close and locks are released) but, when its client is `lost`, the durable ones,
/// which wait for the client's reconnect.
async fn finish(conn: &mut Connection, lost: bool) {
    for op in conn.link.pending.lock().unwrap_or_else(|e| e.into_inner()).values() {
        op.cancel.cancel();
    }
    let server = conn.server.clone();
    for id in conn.sessions.keys() {
        server.sessions.unregister(*id);
    }
    // A rename that finished as the connection ended: its open closes under its new name.
    conn.apply_open_updates();
    for id in conn.opens.all_ids() {
        let Some(open) = conn.opens.remove(id) else { continue };
        if lost {
            conn.end_open(open).await;
        } else {
            cmd::close::release(&server, open).await.ok(); // logged there
        }
    }
    crate::vfs::in_place::drop_deferred();
    conn.link.out.shutdown().await;
}

/// Why [`command_loop`] returned.
enum End {
    /// The client went away (`None`) or must be cut off (why).
    Closed(Option<&'static str>),
    /// Nothing in flight and nothing heard for [`SmbServer::dormant_after`]: the connection
    /// gives its thread up; the notice task has stopped and handed back its queue, and the
    /// writer is out of the link.
    Dormant { wr: OwnedWriteHalf, notices: NoticeQueue, deadline: Option<tokio::time::Instant> },
}

/// Serves requests until the client goes away or must be cut off, or the connection goes
/// dormant; between requests, what other connections of the node ask of this one
/// ([`Inbound`]), `first` before anything.
async fn command_loop(conn: &mut Connection, frames: &mut FrameReader<OwnedReadHalf>, first: Option<Inbound>) -> End {
    if let Some(m) = first {
        if let Err(why) = run_inbound(conn, m).await {
            return End::Closed(Some(why));
        }
    }
    loop {
        let idle = !conn.sessions.values().any(|s| s.is_valid()) && conn.channels.is_empty();
        let deadline = tokio::time::Instant::now() + conn.server.idle_without_session;
        // Only a connection that owes no async reply may go dormant (its thread's runtime
        // runs the tasks that send them).
        let may_rest = conn.link.pending_count() == 0;
        // Wait for the client's next frame (only waiting is cancel-safe, so the frame is read
        // after) or for another connection's request, whichever comes first.
        let Some(mut inbox) = conn.inbox.take() else { return End::Closed(Some("inbox lost")) };
        let inbound = tokio::select! {
            biased;
            Some(m) = inbox.recv() => Some(m),
            _ = frames.ready() => None,
            _ = tokio::time::sleep_until(deadline), if idle => return End::Closed(Some("idle without an authenticated session")),
            _ = tokio::time::sleep(conn.server.dormant_after), if may_rest => {
                conn.inbox = Some(inbox);
                // No task but the notice sender may be alive on this runtime: a task
                // finishing an async reply, or one a backend started, would die with it.
                let alone = tokio::runtime::Handle::current().metrics().num_alive_tasks() <= 1;
                if alone && frames.drained() {
                    match conn.link.quiesce().await {
                        Err(()) => return End::Closed(Some("send failed")),
                        Ok(Some((wr, notices))) => {
                            return End::Dormant { wr, notices, deadline: idle.then_some(deadline) };
                        }
                        Ok(None) => {}
                    }
                }
                continue;
            }
        };
        conn.inbox = Some(inbox);
        if let Some(m) = inbound {
            if let Err(why) = run_inbound(conn, m).await {
                return End::Closed(Some(why));
            }
            continue;
        }
        let next = frames.next().await;
        let keep = match next {
            Ok(Frame::SessionRequest) => conn.link.out.raw(&SESSION_GRANTED).await.map_err(|_| "send failed"),
            Ok(Frame::Message) => {
                conn.apply_open_updates();
                let msg = frames.message();
                match &msg[..4] {
                    p if p == header::PROTOCOL_ID => handle_smb2(conn, msg, None).await,
                    p if p == header::SMB1_PROTOCOL_ID => handle_smb1_negotiate(conn, msg).await,
                    p if p == transform::PROTOCOL_ID => handle_encrypted(conn, frames.message_mut()).await,
                    _ => Err("not an SMB2 message (unknown protocol)"),
                }
                .inspect(|_| refresh_notice_seal(conn))
            }
            Err(ReadError::Closed) => return End::Closed(None),
            Err(ReadError::BadFrame) => Err("bad transport frame"),
        };
        // The answer is out: now the work backends left for later (a removed file's last
        // close, where ext4 may wait on a discard) overlaps with the client's next step.
        crate::vfs::in_place::drop_deferred();
        if let Err(why) = keep {
            return End::Closed(Some(why));
        }
    }
}

/// Does what another connection of this node asked: ends one of this connection's sessions,
/// or runs a request that came in on a channel bound to one of them.
async fn run_inbound(conn: &mut Connection, m: Inbound) -> Result<(), &'static str> {
    match m {
        Inbound::EndSession { id, done } => {
            if conn.sessions.contains_key(&id) {
                tracing::info!(client = %conn.tcp.client, session = id, "SMB: the client's previous session ends (PreviousSessionId)");
                cmd::logoff::end_session(conn, id).await;
            }
            drop(done);
        }
        Inbound::Dispatch(req) => {
            let ChannelRequest { hdr, elem, compound_fid, reply } = *req;
            // This connection may be in the middle of a chain of its own (waiting on a
            // channel's answer in `forward`): its chain's FileId is kept.
            let own = std::mem::replace(&mut conn.compound_fid, compound_fid);
            conn.apply_open_updates();
            let out = dispatch(conn, &hdr, &elem).await;
            let _ = reply.send((out, conn.compound_fid));
            conn.compound_fid = own;
        }
        Inbound::Resume(rest) => {
            let ChainRest { msg, prev, fid, encrypted } = *rest;
            // This connection may be in the middle of another chain (waiting on a channel's
            // answer in `forward`): that chain's FileId and sealing are kept.
            let own = (conn.compound_fid, conn.sealing);
            conn.apply_open_updates();
            let done = run_chain(conn, &msg, encrypted, Some((prev, fid))).await;
            (conn.compound_fid, conn.sealing) = own;
            refresh_notice_seal(conn);
            return done;
        }
    }
    Ok(())
}

/// Runs request `hdr` of a session this connection is a bound channel of on the connection
/// holding the session, which answers with its outcome; the channel's own sequence window,
/// signing and pending table frame it. `None`: not such a request.
async fn forward(conn: &mut Connection, hdr: &Header, elem: &[u8]) -> Option<Outcome> {
    // Setup and connection-level commands stay on the channel.
    if matches!(hdr.command, command::NEGOTIATE | command::SESSION_SETUP | command::ECHO | command::CANCEL) {
        return None;
    }
    let c = conn.channels.get(&hdr.session_id).filter(|c| c.binding.is_none())?;
    let inbox = c.session.connection.inbox.clone();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let sent = inbox.send(Inbound::Dispatch(Box::new(ChannelRequest {
        hdr: *hdr,
        elem: elem.to_vec(),
        compound_fid: conn.compound_fid,
        reply: tx,
    })));
    // While waiting, this connection still runs what others ask of it: two connections that
    // are each a channel of the other's session must not wait on each other.
    let mut rx = rx;
    let answer = loop {
        let Some(mut mine) = conn.inbox.take() else { break (&mut rx).await };
        let inbound = tokio::select! {
            biased;
            r = &mut rx => Err(r),
            Some(m) = mine.recv() => Ok(m),
        };
        conn.inbox = Some(mine);
        match inbound {
            Ok(m) => {
                if let Err(why) = Box::pin(run_inbound(conn, m)).await {
                    // The connection's own loop sees the socket fail next, or goes on.
                    tracing::info!(client = %conn.tcp.client, why, "SMB: the rest of a compound failed while a channel's request ran");
                }
            }
            Err(r) => break r,
        }
    };
    match (sent, answer) {
        (Ok(()), Ok((out, fid))) => {
            conn.compound_fid = fid;
            Some(out)
        }
        _ => {
            // The session's connection is gone, and the session with it.
            conn.channels.remove(&hdr.session_id);
            Some(Outcome::Now(Reply::err(NtStatus::USER_SESSION_DELETED)))
        }
    }
}

/// SMB1 NEGOTIATE from an old-style client: answer with an SMB2 NEGOTIATE response so it
/// switches to SMB2 ("SMB 2.???" -> renegotiate; "SMB 2.002" only -> 2.0.2).
async fn handle_smb1_negotiate(conn: &mut Connection, msg: &[u8]) -> Result<(), &'static str> {
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
    let body = cmd::negotiate::response_body(conn, chosen, None, cmd::negotiate::EncryptionAnswer::default());
    if chosen == dialect::SMB202 {
        conn.dialect = dialect::SMB202;
    }
    conn.link.sequence.take(0, 1).map_err(|_| "SMB1 NEGOTIATE after MessageId 0")?;
    let credits = conn.link.sequence.grant(1);
    let h = Header { command: command::NEGOTIATE, credits, flags: FLAG_SERVER_TO_REDIR, ..Default::default() };
    let mut w = Writer::with_capacity(HEADER_LEN + body.len());
    h.emit(&mut w);
    w.bytes(&body);
    conn.link.out.message(&[&w.buf]).await.map_err(|_| "send failed")
}

/// Decrypts a TRANSFORM message in place (MS-SMB2 3.3.5.2.1.1) and runs the SMB2 message
/// inside it. Anything wrong (no cipher negotiated, a malformed header, an unknown session or
/// one without keys, a failed decryption, no SMB2 message inside) closes the connection.
async fn handle_encrypted(conn: &mut Connection, msg: &mut [u8]) -> Result<(), &'static str> {
    if conn.cipher.is_none() {
        return Err("encrypted message on a connection that negotiated no cipher");
    }
    let hdr = TransformHeader::parse(msg).map_err(|e| match e {
        transform::TransformError::Flags => "transform flags are not 'encrypted'",
        transform::TransformError::Size => "transform OriginalMessageSize does not match the message",
        _ => "malformed transform header",
    })?;
    let Some(session) = conn.sessions.get_mut(&hdr.session_id) else {
        // A channel of a session of another connection decrypts with the session's keys.
        let cipher = conn.channels.get(&hdr.session_id).filter(|c| c.binding.is_none());
        let Some(cipher) = cipher.and_then(|c| c.session.session_cipher.clone()) else {
            return Err("encrypted message for an unknown session");
        };
        if cipher.open(msg).is_err() {
            return Err("decryption failed");
        }
        let plain = &msg[transform::HEADER_LEN..];
        if plain.len() < 4 || plain[..4] != header::PROTOCOL_ID {
            return Err("the encrypted message is not an SMB2 message");
        }
        return handle_smb2(conn, plain, Some(cipher)).await;
    };
    let Some(cipher) = session.cipher.clone() else {
        return Err("encrypted message for a session without keys (guest, anonymous or in setup)");
    };
    if cipher.open(msg).is_err() {
        return Err("decryption failed");
    }
    if !session.seen_encrypted {
        session.seen_encrypted = true;
        tracing::info!(client = %conn.tcp.client, session = hdr.session_id, cipher = cipher.cipher().name(), "SMB: session encrypts");
    }
    let plain = &msg[transform::HEADER_LEN..];
    if plain.len() < 4 || plain[..4] != header::PROTOCOL_ID {
        return Err("the encrypted message is not an SMB2 message");
    }
    handle_smb2(conn, plain, Some(cipher)).await
}

/// Points the connection's break notices at the keys of its first session that encrypts
/// (told to, by itself or one of its tree connects, or sending encrypted requests), or at none.
fn refresh_notice_seal(conn: &Connection) {
    let want = conn
        .sessions
        .iter()
        .filter(|(_, s)| s.is_valid() && s.encrypts_anything())
        .min_by_key(|(id, _)| **id)
        .and_then(|(_, s)| s.cipher.clone());
    let mut cur = conn.link.notice_seal.lock().unwrap_or_else(|e| e.into_inner());
    if cur.as_ref().map(|c| c.session_id()) != want.as_ref().map(|c| c.session_id()) {
        *cur = want;
    }
}

/// What the request of session `id` on tree `tree_id` must satisfy, and who seals its reply.
/// A bound channel answers by its session's own settings (its trees are on the connection
/// holding it, which refuses or seals nothing for the channel).
fn encryption_facts(conn: &Connection, id: u64, tree_id: u32) -> (encryption::Facts, Option<Arc<SessionCipher>>) {
    if let Some(s) = conn.sessions.get(&id) {
        return (s.encryption_facts(tree_id), s.cipher.clone());
    }
    match conn.channels.get(&id).filter(|c| c.binding.is_none()) {
        Some(c) => {
            let f = &c.session;
            let facts = encryption::Facts {
                session_encrypts: f.encrypt_data,
                session_requires: f.require_encryption,
                ..encryption::Facts::default()
            };
            (facts, f.session_cipher.clone())
        }
        None => (encryption::Facts::default(), None),
    }
}

/// Walks one SMB2 message (a compound chain of one or more requests): the chain rules are
/// [`compound`]'s, the commands [`cmd`]'s; this only runs them in order and sends the result.
/// `encrypted`: the message came in a TRANSFORM of that session; its reply goes out in one.
async fn handle_smb2(
    conn: &mut Connection,
    msg: &[u8],
    encrypted: Option<Arc<SessionCipher>>,
) -> Result<(), &'static str> {
    run_chain(conn, msg, encrypted, None).await
}

/// Runs the elements of `msg` in order and sends their replies as one message. `resumed`:
/// `msg` is the rest of an earlier chain ([`ChainRest`]), whose first element inherits from
/// the CREATE before it. A CREATE that goes async with elements after it ends the message
/// with its interim response; the rest waits for its final answer.
async fn run_chain(
    conn: &mut Connection,
    msg: &[u8],
    encrypted: Option<Arc<SessionCipher>>,
    resumed: Option<(compound::Previous, Option<(u64, u64)>)>,
) -> Result<(), &'static str> {
    let elements = compound::split(msg).map_err(compound::ChainError::why)?;
    let mut out = ReplyChain::new();
    // Async work starts once its interim response is on the wire, so its final response
    // can never overtake it.
    let mut later: Vec<Later> = Vec::new();
    let (mut prev, fid) = match resumed {
        Some((p, fid)) => (Some(p), fid),
        None => (None, None),
    };
    // The session whose keys seal the whole reply, once an element needs it.
    let mut seal: Option<Arc<SessionCipher>> = encrypted.clone();
    conn.compound_fid = fid;
    let count = elements.len();
    let starts: Vec<usize> = elements.iter().map(|e| e.range.start).collect();
    for (i, element) in elements.into_iter().enumerate() {
        let more = i + 1 < count;
        let mut hdr = element.header;
        let elem = &msg[element.range];
        let related = compound::inherit(&mut hdr, prev.as_ref());
        if !related {
            conn.compound_fid = None;
        }
        if conn.dialect == 0 && hdr.command != command::NEGOTIATE {
            return Err("request before NEGOTIATE");
        }
        if hdr.command == command::NEGOTIATE && conn.dialect == dialect::SMB311 {
            return Err("second NEGOTIATE");
        }
        // CANCEL reuses the MessageId of the request it cancels.
        if hdr.command != command::CANCEL {
            if let Err(e) = conn.link.sequence.take(hdr.message_id, hdr.credit_charge) {
                tracing::info!(client = %conn.tcp.client, message_id = hdr.message_id, error = %e, "SMB: request outside the sequence window");
                return Err("MessageId replayed or not granted");
            }
        }
        if encrypted.as_ref().is_some_and(|c| c.session_id() != hdr.session_id) {
            return Err("an encrypted request names another session than its transform");
        }
        let (facts, session_cipher) = encryption_facts(conn, hdr.session_id, hdr.tree_id);
        let refused = encryption::refuse_unencrypted(hdr.command, encrypted.is_some(), facts);
        if refused {
            tracing::info!(client = %conn.tcp.client, command = hdr.command, "SMB: unencrypted request refused: encryption is required");
        }
        let seal_this = match &encrypted {
            Some(c) => Some(c.clone()),
            None => session_cipher.filter(|_| encryption::seal_reply(hdr.command, false, facts)),
        };
        if seal.is_none() {
            seal = seal_this.clone();
        }
        conn.sealing = seal_this.is_some();
        // Inside an encrypted message, the decryption authenticated every element.
        let signed_in = hdr.is_signed() && encrypted.is_none();
        let checked = if encrypted.is_some() { Ok(()) } else { check_signature(conn, &hdr, elem) };
        let checked = if refused { Err(NtStatus::ACCESS_DENIED) } else { checked };
        let reply = match checked {
            Err(s) => Outcome::Now(Reply::err(s)),
            Ok(()) => match compound::inherited_failure(&hdr, related, prev.as_ref()) {
                Some(st) => Outcome::Now(Reply::err(st)),
                None => match forward(conn, &hdr, elem).await {
                    Some(out) => out,
                    None => dispatch(conn, &hdr, elem).await,
                },
            },
        };
        if hdr.command == command::CANCEL {
            // CANCEL has no response.
            continue;
        }
        let (reply, pending) = match reply {
            Outcome::Now(r) if !compound::fits(out.bytes(), HEADER_LEN + 8 + r.body.len() + r.tail.len()) => {
                tracing::info!(client = %conn.tcp.client, command = hdr.command, "SMB: compound reply over its size limit");
                (Reply::err(NtStatus::INSUFFICIENT_RESOURCES), None)
            }
            Outcome::Now(r) => (r, None),
            Outcome::Later(_)
                if matches!(hdr.command, command::CHANGE_NOTIFY | command::LOCK | command::SET_INFO)
                    && conn.link.pending_count() + later.len() >= MAX_PENDING =>
            {
                // The work is dropped unstarted (a SET_INFO: in its wait, before it changed
                // anything). (A CREATE waiting for a break is not refused here: its open is
                // already reserved; CREATEs are bounded by MAX_OPENS.)
                tracing::info!(client = %conn.tcp.client, command = hdr.command, "SMB: too many pending requests");
                (Reply::err(NtStatus::INSUFFICIENT_RESOURCES), None)
            }
            Outcome::Later(_) if more && hdr.command == command::SET_INFO => {
                // Only a CREATE may go async before the end of a chain (MS-SMB2 3.3.5.2.7
                // note <206>; smbd cancels the request and answers INTERNAL_ERROR): dropping
                // the work gives up its wait. (Only a rename already past its wait, on a task
                // of its own, still finishes.)
                tracing::info!(client = %conn.tcp.client, "SMB: SET_INFO in the middle of a compound would wait for a break: refused");
                (Reply::err(NtStatus::INTERNAL_ERROR), None)
            }
            Outcome::Later(work) => (Reply { status: NtStatus::PENDING, ..Reply::err(NtStatus::PENDING) }, Some(work)),
        };
        let session_id = reply.session_id.unwrap_or(hdr.session_id);
        let mut rh = compound::response_header(&hdr, reply.status, session_id, reply.tree_id.unwrap_or(hdr.tree_id));
        rh.credits = conn.link.sequence.grant(rh.credits);
        let mut async_id = 0;
        if let Some(work) = &pending {
            async_id = conn.link.register(&hdr, session_id, work);
            rh.flags |= FLAG_ASYNC_COMMAND;
            rh.async_id = async_id;
        }
        let mut w = Writer::with_capacity(HEADER_LEN + reply.body.len() + 8);
        rh.emit(&mut w);
        w.bytes(&reply.body);
        let mut resp = w.buf;
        let key = if pending.is_some() || seal_this.is_some() {
            None
        } else {
            compound::response_key(signing_facts(conn, session_id), signed_in, reply.sign_final, conn.dialect)
        };
        if !reply.tail.is_empty() {
            if count == 1 && key.is_none() {
                // A lone reply with bulk data (READ), sent without copying the data again:
                // unsigned, the header in a slice of its own; encrypted, the header put in the
                // room before the data and the whole sealed where it lies.
                let mut tail = reply.tail;
                let sent = match &seal {
                    None => conn.link.out.message(&[&resp, tail.bytes()]).await,
                    Some(cipher) => {
                        tail.prepend(&resp);
                        let th = cipher.seal(tail.bytes_mut()).map_err(|_| "cannot encrypt the reply")?;
                        conn.link.out.message(&[&th, tail.bytes()]).await
                    }
                };
                return sent.map_err(|_| "send failed");
            }
            resp.extend_from_slice(reply.tail.bytes());
        }
        if hdr.command == command::NEGOTIATE && conn.dialect == dialect::SMB311 {
            signing::preauth_update(&mut conn.preauth, elem);
            signing::preauth_update(&mut conn.preauth, &resp);
        }
        if hdr.command == command::SESSION_SETUP
            && conn.dialect == dialect::SMB311
            && reply.status == NtStatus::MORE_PROCESSING_REQUIRED
        {
            let binding_alg = signing_alg_of(conn, session_id).unwrap_or(conn.signing_alg);
            if let Some(s) = conn.sessions.get_mut(&session_id) {
                signing::preauth_update(&mut s.preauth, &resp);
            } else if let Some((_, preauth)) = conn.channels.get_mut(&session_id).and_then(|c| c.binding.as_mut()) {
                // A binding leg's answer goes out signed with the session's key, and the
                // client hashes it as it receives it.
                let mut sent = resp.clone();
                if let Some(k) = key {
                    signing::sign(binding_alg, &k, &mut sent);
                }
                signing::preauth_update(preauth, &sent);
            }
        }
        prev = Some(compound::Previous { session_id, tree_id: rh.tree_id, status: reply.status });
        // A CREATE waiting with requests after it: its interim response ends this message,
        // and the rest runs once its final answer is out.
        let rest = (pending.is_some() && more && hdr.command == command::CREATE).then(|| ChainRest {
            msg: msg[starts[i + 1]..].to_vec(),
            prev: compound::Previous { session_id, tree_id: rh.tree_id, status: NtStatus::SUCCESS },
            fid: conn.compound_fid,
            encrypted: encrypted.clone(),
        });
        let stop = rest.is_some();
        if let Some(work) = pending {
            let key = compound::response_key(signing_facts(conn, session_id), signed_in, false, conn.dialect);
            later.push(Later { rh, async_id, work, key, seal: seal_this.clone(), rest });
        }
        out.push_with(resp, key, signing_alg_of(conn, session_id), more && !stop);
        if stop {
            break;
        }
    }
    if out.is_empty() {
        return Ok(());
    }
    match seal {
        // An encrypted reply carries no signatures: the cipher's tag authenticates it.
        Some(cipher) => {
            let mut all = out.finish(None);
            let th = cipher.seal(&mut all).map_err(|_| "cannot encrypt the reply")?;
            conn.link.out.message(&[&th, &all]).await.map_err(|_| "send failed")?;
        }
        None => {
            let all = out.finish(Some(conn.signing_alg));
            conn.link.out.message(&[&all]).await.map_err(|_| "send failed")?;
        }
    }
    for l in later {
        spawn_async(conn, l);
    }
    Ok(())
}

/// Async work whose interim response is being sent.
struct Later {
    rh: Header,
    async_id: u64,
    work: AsyncWork,
    /// Signs the final reply.
    key: Option<[u8; 16]>,
    /// Encrypts the final reply instead (the request came encrypted, or its session or tree
    /// encrypts).
    seal: Option<Arc<SessionCipher>>,
    /// The rest of its chain, run by the connection after the final reply.
    rest: Option<ChainRest>,
}

/// The signing facts of session `id` on this connection, for [`compound`]'s rules: a
/// session of its own; a channel (bound: its own key, every request signed; binding: the
/// session's key signs the legs, MS-SMB2 3.3.5.2.4); or another connection's session of this
/// node, whose key checks a signed request and signs its answer (a refused binding, or a
/// SESSION_SETUP naming a session of another channel: smbtorture expects those signed), and
/// requires nothing.
fn signing_facts(conn: &Connection, id: u64) -> Option<compound::SessionSigning> {
    if let Some(s) = conn.sessions.get(&id) {
        return Some(compound::SessionSigning {
            key: s.signing_key,
            required: s.signing_required,
            valid: s.is_valid(),
        });
    }
    if let Some(c) = conn.channels.get(&id) {
        return Some(match c.binding {
            Some(_) => compound::SessionSigning { key: c.session.signing_key, required: false, valid: true },
            None => compound::SessionSigning { key: c.signing_key, required: true, valid: true },
        });
    }
    if id == 0 {
        return None;
    }
    let f = conn.server.sessions.lookup(id)?;
    Some(compound::SessionSigning { key: f.signing_key, required: false, valid: true })
}

/// The algorithm that signs for session `id` when it is not the connection's: a binding in
/// progress and a session of another connection sign as that session signs on its own
/// connection (the client signs with the session's key as it was made there).
fn signing_alg_of(conn: &Connection, id: u64) -> Option<SigningAlgorithm> {
    if id == 0 || conn.sessions.contains_key(&id) {
        return None;
    }
    match conn.channels.get(&id) {
        Some(c) => c.binding.as_ref().map(|_| c.session.signing_alg),
        None => conn.server.sessions.lookup(id).map(|f| f.signing_alg),
    }
}

/// Verifies a signed request; refuses an unsigned one where signing is required.
fn check_signature(conn: &Connection, hdr: &Header, elem: &[u8]) -> Result<(), NtStatus> {
    let alg = signing_alg_of(conn, hdr.session_id).unwrap_or(conn.signing_alg);
    let r = compound::verify(alg, hdr, elem, signing_facts(conn, hdr.session_id));
    if r.is_err() && hdr.is_signed() {
        tracing::info!(client = %conn.tcp.client, command = hdr.command, "SMB: bad signature");
    }
    r
}

/// Sends the final reply of async work when it completes or is cancelled.
fn spawn_async(conn: &Connection, later: Later) {
    let Later { mut rh, async_id, work, key, seal, rest } = later;
    let out = conn.link.out.clone();
    let inbox = conn.end.inbox.clone();
    let pending = conn.link.pending.clone();
    let alg = conn.signing_alg;
    tokio::spawn(async move {
        let reply = final_reply(work).await;
        pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&async_id);
        rh.status = reply.status.0;
        rh.credits = 0;
        rh.flags &= !FLAG_RELATED_OPERATIONS;
        let mut w = Writer::with_capacity(HEADER_LEN + reply.body.len());
        rh.emit(&mut w);
        w.bytes(&reply.body);
        let mut msg = w.buf;
        match seal {
            Some(cipher) => {
                if let Ok(th) = cipher.seal(&mut msg) {
                    let _ = out.message(&[&th, &msg]).await;
                }
            }
            None => {
                if let Some(k) = key {
                    signing::sign(alg, &k, &mut msg);
                }
                let _ = out.message(&[&msg]).await;
            }
        }
        // Sent while this task is alive, so the connection cannot go dormant without it.
        if let Some(mut rest) = rest {
            rest.prev.status = reply.status;
            let _ = inbox.send(Inbound::Resume(Box::new(rest)));
        }
    });
}

/// The final reply of async work: its own, or CANCELLED (or the close status) when a CANCEL
/// (or a close of its handle) comes first, unless the work has committed by then.
async fn final_reply(w: AsyncWork) -> Reply {
    let AsyncWork { cancel, mut work, closed, close_status, committed, .. } = w;
    let cut = tokio::select! {
        r = &mut work => return r,
        _ = cancel.cancelled() => NtStatus::CANCELLED,
        _ = closed.cancelled() => close_status,
    };
    // Checked on the task that polls the work, so it cannot commit after this check.
    if committed.is_cancelled() {
        work.await
    } else {
        Reply::err(cut)
    }
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

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    use super::*;
    use crate::locks::LockService;
    use crate::vfs::posix::{PosixBackend, PosixOptions};
    use crate::vfs::Namespace;

    /// Async work whose body waits on `go`; it fires its `committed` token first when `commits`.
    fn work(commits: bool, go: tokio::sync::oneshot::Receiver<()>) -> AsyncWork {
        let committed = CancellationToken::new();
        let c = committed.clone();
        AsyncWork {
            cancel: CancellationToken::new(),
            work: Box::pin(async move {
                if commits {
                    c.cancel();
                }
                let _ = go.await;
                Reply::err(NtStatus::OBJECT_NAME_COLLISION)
            }),
            waits_on: None,
            closed: CancellationToken::new(),
            close_status: NtStatus::FILE_CLOSED,
            committed,
        }
    }

    #[tokio::test]
    async fn a_cancel_before_the_work_commits_answers_cancelled_and_drops_it() {
        let (_go, rx) = tokio::sync::oneshot::channel();
        let w = work(false, rx);
        w.cancel.cancel();
        assert_eq!(final_reply(w).await.status, NtStatus::CANCELLED);
        let (_go, rx) = tokio::sync::oneshot::channel();
        let w = work(false, rx);
        w.closed.cancel();
        assert_eq!(final_reply(w).await.status, NtStatus::FILE_CLOSED);
    }

    #[tokio::test]
    async fn a_cancel_or_close_after_the_work_commits_gets_the_works_own_reply() {
        for close in [false, true] {
            let (go, rx) = tokio::sync::oneshot::channel();
            let w = work(true, rx);
            let (cancel, closed, committed) = (w.cancel.clone(), w.closed.clone(), w.committed.clone());
            let reply = tokio::spawn(final_reply(w));
            // Let the work start and commit, then cut it, then let it finish.
            while !committed.is_cancelled() {
                tokio::task::yield_now().await;
            }
            if close {
                closed.cancel()
            } else {
                cancel.cancel()
            }
            tokio::task::yield_now().await;
            assert!(!reply.is_finished(), "answered before the work finished");
            go.send(()).unwrap();
            assert_eq!(reply.await.unwrap().status, NtStatus::OBJECT_NAME_COLLISION);
        }
    }

    fn server(dir: &std::path::Path) -> Arc<SmbServer> {
        let text = format!(
            "[volume]\nname = \"smb\"\nbackend = \"local\"\npath = \"{}\"\n\n[smb]\nlisten = \"127.0.0.1:4445\"\n\n\
             [[smb.share]]\nname = \"pub\"\nwritable = true\nguest_ok = true\n",
            dir.display()
        );
        let cfg = crate::config::parse(&text, "test", dir).expect("config");
        let ns = Namespace::new(Arc::new(PosixBackend::open(dir, PosixOptions::new("smb")).expect("backend")));
        Arc::new(SmbServer::new(&cfg, ns, LockService::single()))
    }

    /// A NEGOTIATE for SMB 2.1 in its transport frame.
    fn negotiate() -> Vec<u8> {
        let mut w = Writer::new();
        Header { command: command::NEGOTIATE, credits: 1, ..Default::default() }.emit(&mut w);
        w.u16(36).u16(1).u16(1).u16(0).u32(0).bytes(&[5; 16]).u64(0).u16(dialect::SMB210);
        let mut frame = header::frame_header(w.buf.len()).unwrap().to_vec();
        frame.extend_from_slice(&w.buf);
        frame
    }

    /// Accepts one client and serves it as a spawned task; returns the client's end.
    async fn connect(
        server: Arc<SmbServer>,
        stop: CancellationToken,
    ) -> (std::net::TcpStream, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = std::net::TcpStream::connect(addr).unwrap();
        client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let (stream, peer) = listener.accept().await.unwrap();
        // Small buffers, so a client that does not read blocks the server's sends quickly.
        for (fd, opt) in [(client.as_raw_fd(), libc::SO_RCVBUF), (stream.as_raw_fd(), libc::SO_SNDBUF)] {
            let size: libc::c_int = 4096;
            // SAFETY: setsockopt on a socket we own, with a c_int option value.
            let rc = unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    opt,
                    (&raw const size).cast(),
                    std::mem::size_of_val(&size) as u32,
                )
            };
            assert_eq!(rc, 0);
        }
        let tcp = TcpConnection { client: peer, server: addr };
        (client, tokio::spawn(serve(server, stream, tcp, stop)))
    }

    /// [`answers_negotiate`] off the runtime (the client's socket blocks), handing the socket back.
    async fn after_negotiate(mut client: std::net::TcpStream) -> std::net::TcpStream {
        tokio::task::spawn_blocking(move || {
            answers_negotiate(&mut client);
            client
        })
        .await
        .unwrap()
    }

    fn answers_negotiate(client: &mut std::net::TcpStream) {
        client.write_all(&negotiate()).unwrap();
        let mut hdr = [0u8; 4];
        client.read_exact(&mut hdr).unwrap();
        let mut msg = vec![0u8; header::frame_len(hdr).unwrap()];
        client.read_exact(&mut msg).unwrap();
        let h = Header::parse(&msg).unwrap();
        assert_eq!((h.command, h.status), (command::NEGOTIATE, 0));
        let limit = |at: usize| u32::from_le_bytes(msg[at..at + 4].try_into().unwrap());
        let (transact, read, write) = (limit(HEADER_LEN + 28), limit(HEADER_LEN + 32), limit(HEADER_LEN + 36));
        assert_eq!((transact, read, write), (8 << 20, 8 << 20, 1 << 20), "MaxTransact/Read/WriteSize");
    }

    fn closed_by_server(client: &mut std::net::TcpStream) -> bool {
        let mut b = [0u8; 1];
        matches!(client.read(&mut b), Ok(0))
            || matches!(client.read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_runs_on_its_own_thread_until_the_daemon_stops() {
        let tmp = tempfile::tempdir().unwrap();
        let stop = CancellationToken::new();
        let (client, task) = connect(server(tmp.path()), stop.clone()).await;
        let mut client = after_negotiate(client).await;
        let threads = std::fs::read_dir("/proc/self/task").unwrap().filter_map(|t| {
            std::fs::read_to_string(t.ok()?.path().join("comm")).ok().filter(|c| c.trim() == "nasgw-smb")
        });
        assert!(threads.count() >= 1, "the connection has a thread of its own");
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), task).await.expect("serve returns on stop").unwrap();
        assert!(tokio::task::spawn_blocking(move || closed_by_server(&mut client)).await.unwrap());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stop_cuts_off_a_client_that_does_not_read_its_replies() {
        let tmp = tempfile::tempdir().unwrap();
        let stop = CancellationToken::new();
        let (mut client, task) = connect(server(tmp.path()), stop.clone()).await;
        // Echo requests, sent and never answered-read: the server ends up blocked sending.
        let flood = std::thread::spawn(move || {
            answers_negotiate(&mut client);
            client.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
            // Each ECHO uses the next MessageId, which the previous answer granted.
            for message_id in 1.. {
                let mut w = Writer::new();
                Header { command: command::ECHO, credits: 1, message_id, ..Default::default() }.emit(&mut w);
                w.u16(4).u16(0);
                let mut frame = header::frame_header(w.buf.len()).unwrap().to_vec();
                frame.extend_from_slice(&w.buf);
                if client.write_all(&frame).is_err() {
                    break;
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!task.is_finished(), "the client is still connected");
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), task).await.expect("stop interrupts a blocked send").unwrap();
        tokio::task::spawn_blocking(move || flood.join().unwrap()).await.unwrap();
    }

    /// ECHO requests with these MessageIds, chained into one message when `chained`.
    fn echoes(ids: &[u64], chained: bool) -> Vec<u8> {
        let mut out = Vec::new();
        let mut chain = Vec::new();
        for (i, &message_id) in ids.iter().enumerate() {
            let next = if chained && i + 1 < ids.len() { 72 } else { 0 };
            let mut w = Writer::new();
            Header { command: command::ECHO, credits: 1, message_id, next_command: next, ..Default::default() }
                .emit(&mut w);
            w.u16(4).u16(0).zeros(4);
            if chained {
                chain.extend_from_slice(&w.buf);
            } else {
                out.extend_from_slice(&header::frame_header(w.buf.len()).unwrap());
                out.extend_from_slice(&w.buf);
            }
        }
        if chained {
            out.extend_from_slice(&header::frame_header(chain.len()).unwrap());
            out.extend_from_slice(&chain);
        }
        out
    }

    /// Reads one reply message, or `None` when the server closed the connection.
    fn reply(client: &mut std::net::TcpStream) -> Option<Vec<u8>> {
        let mut hdr = [0u8; 4];
        client.read_exact(&mut hdr).ok()?;
        let mut msg = vec![0u8; header::frame_len(hdr).ok()?];
        client.read_exact(&mut msg).ok()?;
        Some(msg)
    }

    async fn negotiated(tmp: &std::path::Path) -> std::net::TcpStream {
        let (client, _task) = connect(server(tmp), CancellationToken::new()).await;
        after_negotiate(client).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dormant_connection_keeps_a_small_task_and_no_buffers() {
        let tmp = tempfile::tempdir().unwrap();
        let s = dozing(tmp.path(), Duration::from_millis(50));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (stream, peer) = listener.accept().await.unwrap();
        let tcp = TcpConnection { client: peer, server: listener.local_addr().unwrap() };
        // The task every connection keeps on the daemon's runtime, dormant or not.
        let task = serve(s.clone(), stream, tcp, CancellationToken::new());
        println!("serve future: {} bytes", std::mem::size_of_val(&task));
        assert!(std::mem::size_of_val(&task) <= 1024, "{} bytes", std::mem::size_of_val(&task));
        drop((task, client));
        // What a connection keeps once dormant: no receive or frame buffer (the reader is
        // gone: `Dormant` has none), no queue for async work's updates (none asked for one),
        // no notice task; its writer is back in its socket.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let (server_end, peer) = listener.accept().unwrap();
        server_end.set_nonblocking(true).unwrap();
        let tcp = TcpConnection { client: peer, server: listener.local_addr().unwrap() };
        let (stop, moved) = (CancellationToken::new(), CancellationToken::new());
        let start = Start::Fresh { server: s.clone(), stream: server_end, tcp };
        let permit = s.descriptors.thread().await;
        let done = on_thread(start, permit, &stop, &moved).ok().expect("a thread");
        let client = after_negotiate(client).await;
        let left = tokio::time::timeout(Duration::from_secs(5), done).await.expect("dormant in time").unwrap();
        let Left::Dormant(d) = left else { panic!("the connection did not go dormant") };
        assert!(d.conn.open_updates.is_unused(), "no update queue");
        assert!(d.conn.link.notice_task.is_none(), "no notice task");
        assert!(d.conn.link.out.take().is_none(), "the writer is out of the link");
        assert!(d.stream.is_some(), "the socket is kept");
        drop((d, client));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_idle_connection_without_a_session_is_closed() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = server(tmp.path());
        Arc::get_mut(&mut s).unwrap().idle_without_session = Duration::from_millis(300);
        let (mut client, task) = connect(s, CancellationToken::new()).await;
        let start = std::time::Instant::now();
        let closed = tokio::task::spawn_blocking(move || {
            answers_negotiate(&mut client);
            closed_by_server(&mut client)
        })
        .await
        .unwrap();
        let took = start.elapsed();
        println!("closed after {took:?}");
        assert!(closed, "the server closed the idle connection");
        assert!(took < Duration::from_secs(4), "closed after {took:?}, the read timeout is 5 s");
        tokio::time::timeout(Duration::from_secs(5), task).await.expect("serve returned").unwrap();
    }

    /// A server whose connections go dormant after `after` without a word from their client.
    fn dozing(dir: &std::path::Path, after: Duration) -> Arc<SmbServer> {
        let mut s = server(dir);
        Arc::get_mut(&mut s).unwrap().dormant_after = after;
        s
    }

    /// Polls until `server` has `n` connection threads.
    async fn threads_become(server: &SmbServer, n: usize) {
        let threads = || server.connection_threads.load(std::sync::atomic::Ordering::Relaxed);
        let start = std::time::Instant::now();
        while threads() != n {
            assert!(start.elapsed() < Duration::from_secs(10), "{} connection threads, not {n}", threads());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_idle_connection_gives_its_thread_back_and_wakes_when_its_client_speaks() {
        let tmp = tempfile::tempdir().unwrap();
        let s = dozing(tmp.path(), Duration::from_millis(100));
        let stop = CancellationToken::new();
        let (client, task) = connect(s.clone(), stop.clone()).await;
        let mut client = after_negotiate(client).await;
        threads_become(&s, 0).await;
        assert!(!task.is_finished(), "a dormant connection is still served");
        // Woken by its client, twice: each ECHO is answered (only a thread answers).
        for id in [1, 2] {
            client = tokio::task::spawn_blocking(move || {
                client.write_all(&echoes(&[id], false)).unwrap();
                let r = reply(&mut client).expect("the dormant connection answers");
                let h = Header::parse(&r).unwrap();
                assert_eq!((h.command, h.status, h.message_id), (command::ECHO, 0, id));
                client
            })
            .await
            .unwrap();
            threads_become(&s, 0).await;
        }
        // Stop ends a dormant connection too.
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), task).await.expect("serve returns on stop").unwrap();
        assert!(tokio::task::spawn_blocking(move || closed_by_server(&mut client)).await.unwrap());
    }

    #[test]
    fn a_connection_runtime_holds_the_descriptors_its_thread_is_budgeted() {
        let open = || std::fs::read_dir("/proc/self/fd").unwrap().count();
        // The first runtime also makes tokio's process-wide signal pipe: not a thread's cost.
        drop(connection_runtime().unwrap());
        let before = open();
        let rt = connection_runtime().unwrap();
        let held = open() - before;
        drop(rt);
        assert_eq!(held, crate::descriptors::budget::THREAD_DESCRIPTORS, "descriptors of one connection runtime");
        assert_eq!(open(), before, "all given back with the runtime");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_waits_for_a_thread_the_descriptors_allow_and_is_then_answered() {
        let tmp = tempfile::tempdir().unwrap();
        // A budget whose sockets are all taken leaves room for exactly one thread.
        let budget = crate::descriptors::Budget::new(64);
        assert_eq!(budget.min_threads(), 1);
        let descriptors = Arc::new(crate::descriptors::Descriptors::new(budget));
        let mut sockets = Vec::new();
        for _ in 0..budget.sockets {
            sockets.push(descriptors.socket("test").await);
        }
        // Connections that never go dormant: only a closed one gives its thread back.
        let mut s = dozing(tmp.path(), Duration::from_secs(3600));
        Arc::get_mut(&mut s).unwrap().descriptors = descriptors;
        let (first, _a) = connect(s.clone(), CancellationToken::new()).await;
        let first = after_negotiate(first).await;
        let (mut second, _b) = connect(s.clone(), CancellationToken::new()).await;
        second.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        let mut second = tokio::task::spawn_blocking(move || {
            second.write_all(&negotiate()).unwrap();
            assert!(reply(&mut second).is_none(), "answered without a thread to answer on");
            second
        })
        .await
        .unwrap();
        assert_eq!(s.connection_threads.load(std::sync::atomic::Ordering::Relaxed), 1);
        drop(first);
        second.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let got = tokio::task::spawn_blocking(move || reply(&mut second)).await.unwrap();
        let h = Header::parse(&got.expect("answered once the first connection's thread ended")).unwrap();
        assert_eq!((h.command, h.status), (command::NEGOTIATE, 0));
        drop(sockets);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dormant_connection_without_a_session_is_still_closed_in_time() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = dozing(tmp.path(), Duration::from_millis(50));
        Arc::get_mut(&mut s).unwrap().idle_without_session = Duration::from_millis(800);
        let (client, task) = connect(s.clone(), CancellationToken::new()).await;
        let start = std::time::Instant::now();
        let mut client = after_negotiate(client).await;
        threads_become(&s, 0).await;
        assert!(!task.is_finished(), "dormant, not closed yet");
        assert!(tokio::task::spawn_blocking(move || closed_by_server(&mut client)).await.unwrap());
        let took = start.elapsed();
        println!("closed after {took:?}");
        assert!(took < Duration::from_secs(4), "closed after {took:?}, the read timeout is 5 s");
        tokio::time::timeout(Duration::from_secs(5), task).await.expect("serve returned").unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dormant_connection_whose_server_task_is_dropped_is_closed() {
        let tmp = tempfile::tempdir().unwrap();
        let s = dozing(tmp.path(), Duration::from_millis(50));
        let (client, task) = connect(s.clone(), CancellationToken::new()).await;
        let mut client = after_negotiate(client).await;
        threads_become(&s, 0).await;
        // What HA does when the address the client came in on moves.
        task.abort();
        assert!(tokio::task::spawn_blocking(move || closed_by_server(&mut client)).await.unwrap());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dormant_connection_wakes_for_a_break_and_sends_it() {
        let tmp = tempfile::tempdir().unwrap();
        let s = dozing(tmp.path(), Duration::from_millis(50));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let (server_end, peer) = listener.accept().unwrap();
        server_end.set_nonblocking(true).unwrap();
        let tcp = TcpConnection { client: peer, server: listener.local_addr().unwrap() };
        // A connection put to sleep as its command loop does, a break's sender still out (a
        // lease holds one).
        let (rd, wr) = TcpStream::from_std(server_end).unwrap().into_split();
        let mut conn = Connection::new(s.clone(), tcp, Link::new(FrameWriter::new(wr)));
        let (wr, notices) = conn.link.quiesce().await.unwrap().unwrap();
        let breaks = conn.link.notices.clone();
        let stream = rd.reunite(wr).unwrap().into_std().unwrap();
        let mut d = Dormant { conn, stream: Some(stream), notices, deadline: None };
        let stop = CancellationToken::new();
        let moved = CancellationToken::new();
        let waiting = tokio::spawn(async move {
            let wake = d.wait(&CancellationToken::new()).await;
            (d, wake)
        });
        breaks.send(b"\xfeSMB a break".to_vec()).unwrap();
        let (d, wake) = tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("woken").unwrap();
        let Wake::Client(first) = wake else { panic!("the break ended the connection") };
        assert!(matches!(first, First::Notice(_)), "woken by the break");
        let permit = s.descriptors.thread().await;
        let done = on_thread(Start::Resume(Box::new(d), first), permit, &stop, &moved).ok().expect("a thread");
        let (got, client) = tokio::task::spawn_blocking(move || (reply(&mut client), client)).await.unwrap();
        assert_eq!(got.as_deref(), Some(&b"\xfeSMB a break"[..]), "the break went out");
        // With nothing else to do (its client still connected) it goes dormant again.
        let left = tokio::time::timeout(Duration::from_secs(5), done).await.expect("the thread ends").unwrap();
        assert!(matches!(left, Left::Dormant(_)), "dormant again");
        drop(client);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_replayed_message_id_closes_the_connection() {
        let tmp = tempfile::tempdir().unwrap();
        let mut client = negotiated(tmp.path()).await;
        tokio::task::spawn_blocking(move || {
            client.write_all(&echoes(&[1], false)).unwrap();
            assert!(reply(&mut client).is_some(), "MessageId 1 was granted");
            client.write_all(&echoes(&[1], false)).unwrap();
            assert!(reply(&mut client).is_none(), "a replayed MessageId is refused");
        })
        .await
        .unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let mut client = negotiated(tmp.path()).await;
        tokio::task::spawn_blocking(move || {
            client.write_all(&echoes(&[1000], false)).unwrap();
            assert!(reply(&mut client).is_none(), "a MessageId never granted is refused");
        })
        .await
        .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn compound_chains_are_capped() {
        let tmp = tempfile::tempdir().unwrap();
        let mut client = negotiated(tmp.path()).await;
        tokio::task::spawn_blocking(move || {
            // The NEGOTIATE granted one credit: give the client enough for two chains.
            let mut id = 1u64;
            client.write_all(&echoes(&[id], false)).unwrap();
            let mut got = reply(&mut client).unwrap();
            id += 1;
            let mut have = u64::from(Header::parse(&got).unwrap().credits);
            while have < compound::MAX_CHAIN as u64 + 1 {
                let mut w = Writer::new();
                Header { command: command::ECHO, credits: 512, message_id: id, ..Default::default() }.emit(&mut w);
                w.u16(4).u16(0);
                let mut f = header::frame_header(w.buf.len()).unwrap().to_vec();
                f.extend_from_slice(&w.buf);
                client.write_all(&f).unwrap();
                got = reply(&mut client).unwrap();
                have += u64::from(Header::parse(&got).unwrap().credits) - 1;
                id += 1;
            }
            let ok: Vec<u64> = (id..id + compound::MAX_CHAIN as u64).collect();
            client.write_all(&echoes(&ok, true)).unwrap();
            let all = reply(&mut client).expect("a chain of MAX_CHAIN is answered");
            assert_eq!(compound::split(&all).unwrap().len(), compound::MAX_CHAIN);
            let next = id + compound::MAX_CHAIN as u64;
            let too_long: Vec<u64> = (next..next + compound::MAX_CHAIN as u64 + 1).collect();
            client.write_all(&echoes(&too_long, true)).unwrap();
            assert!(reply(&mut client).is_none(), "a longer chain closes the connection");
        })
        .await
        .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropping_the_connection_future_closes_the_client() {
        // What the listener does when HA releases the address the client came in on.
        let tmp = tempfile::tempdir().unwrap();
        let (client, task) = connect(server(tmp.path()), CancellationToken::new()).await;
        let mut client = after_negotiate(client).await;
        task.abort();
        assert!(tokio::task::spawn_blocking(move || closed_by_server(&mut client)).await.unwrap());
    }
}
