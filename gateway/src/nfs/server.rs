//! The NFS service: one TCP listener serving NFSv3 and MOUNT v3, NLM and NSM (and the
//! portmapper program, also on its own optional listener), with requests of one connection
//! processed concurrently and answered in any order; the same port over UDP serves MOUNT, NLM,
//! NSM and the portmapper (see [`super::udp`]).
//!
//! Per connection: a reader task splits the byte stream into records ([`RecordReader`], which
//! refuses fragments over [`super::rpc::MAX_FRAGMENT`]; a malformed header closes the
//! connection with a log line), parses each call header, and spawns the call, which writes its
//! own reply. At most [`MAX_IN_FLIGHT`] calls of one connection run at once. A call the client
//! waits on alone is answered by the reader task itself on a local file system (see
//! [`NfsServer::serve_connection`]).

use std::io::IoSlice;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use ha::connections::{ConnectionTable, TcpConnection};
use nfs3_types::mount::{dirpath, export_node, exports, fhandle3, mountres3, mountres3_ok, mountstat3, name};
use nfs3_types::xdr_codec::{List, Opaque, Pack};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, Semaphore};

use super::args::{decode_mount, decode_nfs, procs, MountArgs, NfsArgs, MAX_IO};
use super::budget::{self, ReplyBudget, Reservation};
use super::export::ExportPolicy;
use super::handle::{HandleCodec, HandleError};
use super::nlm::{self, NlmService, Peer};
use super::portmap::Portmap;
use super::proc;
use super::record::RecordReader;
use super::rpc::{self, AuthFailure, Call, CallError, ReplyStatus};
use crate::config::Config;
use crate::daemon::Lifecycle;
use crate::locks::LockService;
use crate::vfs::{Credentials, FileId, FileType, Namespace, ReadData};

/// RPC program numbers served.
const NFS_PROGRAM: u32 = 100_003;
const MOUNT_PROGRAM: u32 = 100_005;
const PORTMAP_PROGRAM: u32 = 100_000;
const NLM_PROGRAM: u32 = nlm::wire::PROGRAM;
const NSM_PROGRAM: u32 = super::nsm::PROGRAM;

/// Calls of one connection executing at once.
pub const MAX_IN_FLIGHT: usize = 64;
/// A reply the client has not taken within this long closes the connection (its calls and
/// their memory are released; a live client resends on a new connection).
const SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Who is calling: the identity the export maps them to and where from.
pub struct Request {
    /// Identity the namespace runs the call with.
    pub cred: Credentials,
    /// Client address.
    pub client: IpAddr,
}

/// The NFS server state shared by all connections.
pub struct NfsServer {
    pub(super) ns: Namespace,
    pub(super) handles: HandleCodec,
    pub(super) policy: ExportPolicy,
    /// Changes on every start, so a client holding UNSTABLE data resends it after a restart.
    pub(super) write_verifier: [u8; 8],
    export: String,
    /// What the portmapper answers.
    portmap: Portmap,
    /// The lock manager (NLM and NSM), once started.
    nlm: std::sync::OnceLock<Arc<NlmService>>,
    /// Memory the calls in flight and their unsent replies may hold (see [`ReplyBudget`]).
    pub(super) budget: ReplyBudget,
    /// How long a connection may stay open without sending a first RPC call.
    pub first_call_timeout: std::time::Duration,
    /// NFS's part in the cluster's file-sharing state (SMB opens, locks and leases).
    pub(super) sharing: Arc<super::sharing::NfsSharing>,
    /// `[nfs] zero_copy_reads`: READ data the page cache holds is sent from it by reference
    /// (true, the default) or copied into memory first (false: [`Namespace::read_copied`]).
    pub zero_copy_reads: bool,
}

/// Default of [`NfsServer::first_call_timeout`]: a client sends its first call right after
/// connecting; a connection that sends nothing only holds a slot and a descriptor.
pub const FIRST_CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

impl NfsServer {
    /// A server exporting `ns` as volume `export` with `policy`, handles keyed by `key`.
    pub fn new(
        ns: Namespace,
        export: &str,
        policy: ExportPolicy,
        key: &[u8],
        nfs_port: u16,
        portmap_port: Option<u16>,
        locks: Arc<crate::locks::LockService>,
    ) -> Self {
        let handles = HandleCodec::new(key, ns.volume_id());
        let mut write_verifier: [u8; 8] = rand::random();
        // Never equal to a previous start's by accident: mix in the start time.
        let t =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos() as u64;
        for (v, b) in write_verifier.iter_mut().zip(t.to_be_bytes()) {
            *v ^= b;
        }
        Self {
            ns,
            handles,
            policy,
            write_verifier,
            export: export.to_string(),
            portmap: Portmap::nasgw(nfs_port, portmap_port),
            nlm: std::sync::OnceLock::new(),
            budget: ReplyBudget::default(),
            first_call_timeout: FIRST_CALL_TIMEOUT,
            sharing: super::sharing::NfsSharing::new(locks),
            zero_copy_reads: true,
        }
    }

    /// The identity inside a client's handle.
    pub(super) fn id(&self, h: &[u8]) -> Result<FileId, nfs3_types::nfs3::nfsstat3> {
        self.handles.decode(h).map_err(|e| match e {
            HandleError::Bad => nfs3_types::nfs3::nfsstat3::NFS3ERR_BADHANDLE,
            HandleError::OtherVolume => nfs3_types::nfs3::nfsstat3::NFS3ERR_STALE,
        })
    }

    /// The lock manager, when NFS serves locks.
    pub fn nlm(&self) -> Option<&Arc<NlmService>> {
        self.nlm.get()
    }

    /// The handle of the export root (what MOUNT returns).
    pub fn root_handle(&self) -> Vec<u8> {
        self.handles.encode(&self.ns.root())
    }

    /// Serves one TCP connection until the client closes it, it sends garbage, or the daemon
    /// stops (in-flight calls finish first).
    pub async fn serve_connection(self: Arc<Self>, stream: TcpStream, conn: TcpConnection, life: Lifecycle) {
        let client = conn.client;
        let server = conn.server.ip();
        let (rd, wr) = stream.into_split();
        let mut rd = RecordReader::new(rd);
        // Each call writes its own reply when done (no hand-off to a writer task).
        let tx = Arc::new(ReplySink {
            wr: Mutex::new(Sender { half: wr, broken: false }),
            client,
            dead: std::sync::atomic::AtomicBool::new(false),
        });
        let own_memory = Arc::new(Semaphore::new(budget::CONNECTION_UNITS));
        let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        let local = self.ns.is_local();
        let mut called = false;
        loop {
            if tx.dead.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            let first_call_timeout = self.first_call_timeout;
            let next = async {
                if called {
                    Ok(rd.next().await)
                } else {
                    tokio::time::timeout(first_call_timeout, rd.next()).await
                }
            };
            let record = tokio::select! {
                _ = life.stop.cancelled() => break,
                r = next => match r {
                    Ok(r) => r,
                    Err(_) => {
                        tracing::info!(%client, "NFS: closing a connection that sent no call");
                        break;
                    }
                },
            };
            called = true;
            let record = match record {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(why) => {
                    tracing::warn!(%client, %why, "NFS: closing connection after a malformed record");
                    break;
                }
            };
            let call = match rpc::parse_call(&record) {
                Ok(c) => c,
                Err(CallError::RpcVersion { xid, .. }) => {
                    tx.send(rpc::reply_only(xid, ReplyStatus::RpcMismatch).into()).await;
                    continue;
                }
                Err(CallError::BadCredential { xid }) => {
                    tx.send(rpc::reply_only(xid, ReplyStatus::AuthError(AuthFailure::BadCred)).into()).await;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(%client, error = %e, "NFS: closing connection after a malformed call");
                    break;
                }
            };
            let Ok(permit) = in_flight.clone().acquire_owned().await else { break };
            // The request's bytes (a READ reserves its reply itself, once its handle is checked).
            let Some(memory) = self.budget.request(&own_memory, record.len()).await else { break };
            // The client waits on this call alone (nothing else in flight, nothing more sent):
            // answer it here, saving a task and a thread hand-off. Only on a local file system
            // (calls take microseconds) and never for calls that may wait for the disk, which
            // would hold up calls the client sends meanwhile.
            let alone = in_flight.available_permits() == MAX_IN_FLIGHT - 1 && rd.buffered() == 0;
            // Lock calls may wait (a reclaim for the cluster's lock table to settle).
            let syncs = call.prog == NFS_PROGRAM && matches!(call.proc_, procs::WRITE | procs::COMMIT)
                || call.prog == NLM_PROGRAM;
            if local && alone && !syncs {
                let reply = self.dispatch(&call, &record, client, server).await;
                tx.send(reply).await;
                drop((permit, memory));
                continue;
            }
            let (me, tx) = (self.clone(), tx.clone());
            life.tasks.spawn(async move {
                let reply = me.dispatch(&call, &record, client, server).await;
                tx.send(reply).await;
                drop((permit, memory));
            });
        }
        // Let in-flight calls finish and their replies go out.
        let _ = in_flight.acquire_many(MAX_IN_FLIGHT as u32).await;
    }

    /// Answers one call (any program) from `client` to local address `server` with a complete
    /// reply record (empty: no reply at all), and counts it in the metrics (operation, latency,
    /// status, bytes read).
    pub async fn dispatch(&self, call: &Call, record: &[u8], client: SocketAddr, server: IpAddr) -> Reply {
        let started = std::time::Instant::now();
        let reply = self.answer(call, record, client, server).await;
        let stats = match call.prog {
            NFS_PROGRAM => &crate::metrics::NFS,
            MOUNT_PROGRAM => &crate::metrics::MOUNT,
            _ => return reply,
        };
        stats.request(call.proc_ as usize, started, crate::metrics::rpc_reply_status(&reply.bytes));
        if let Some(d) = &reply.data {
            stats.read(d.len());
            if matches!(d, ReadData::File(_)) {
                stats.read_by_sendfile(d.len());
            }
        }
        reply
    }

    async fn answer(&self, call: &Call, record: &[u8], peer: SocketAddr, server: IpAddr) -> Reply {
        let args = &record[call.args_at..];
        let client = peer.ip();
        let bytes = match (call.prog, call.vers) {
            (NFS_PROGRAM, 3) => return self.dispatch_nfs(call, args, client).await,
            (NFS_PROGRAM, _) => rpc::reply_only(call.xid, ReplyStatus::ProgMismatch(3, 3)),
            (MOUNT_PROGRAM, 3) => self.dispatch_mount(call, args, client).await,
            (MOUNT_PROGRAM, _) => rpc::reply_only(call.xid, ReplyStatus::ProgMismatch(3, 3)),
            (PORTMAP_PROGRAM, v) => match self.portmap.answer(v, call.proc_, args, server) {
                Ok(body) => {
                    let mut out = rpc::begin_reply(call.xid, ReplyStatus::Success, body.len());
                    out.extend_from_slice(&body);
                    rpc::finish_reply(out)
                }
                Err(status) => rpc::reply_only(call.xid, status),
            },
            (NLM_PROGRAM | NSM_PROGRAM, _) => return self.dispatch_locks(call, args, peer, server).await,
            _ => rpc::reply_only(call.xid, ReplyStatus::ProgUnavail),
        };
        Reply::from(bytes)
    }

    /// NLM and NSM calls, for clients the export admits.
    async fn dispatch_locks(&self, call: &Call, args: &[u8], client: SocketAddr, server: IpAddr) -> Reply {
        let Some(nlm) = self.nlm.get() else {
            return rpc::reply_only(call.xid, ReplyStatus::ProgUnavail).into();
        };
        if call.proc_ != 0 && !self.policy.allows(client.ip()) {
            tracing::info!(client = %client.ip(), "NLM: client not in [nfs] clients, refused");
            return rpc::reply_only(call.xid, ReplyStatus::AuthError(AuthFailure::TooWeak)).into();
        }
        let peer = Peer { client, server };
        let answer = if call.prog == NLM_PROGRAM {
            nlm.call(peer, call.vers, call.proc_, args).await
        } else {
            nlm.nsm_call(peer, call.vers, call.proc_, args).await
        };
        match answer {
            nlm::Answer::Body(body) => {
                let mut out = rpc::begin_reply(call.xid, ReplyStatus::Success, body.len());
                out.extend_from_slice(&body);
                rpc::finish_reply(out).into()
            }
            nlm::Answer::Status(s) => rpc::reply_only(call.xid, s).into(),
            nlm::Answer::Silent => Reply::from(Vec::new()),
        }
    }

    async fn dispatch_nfs(&self, call: &Call, args: &[u8], client: IpAddr) -> Reply {
        if call.proc_ != 0 && !self.policy.allows(client) {
            tracing::info!(%client, "NFS: client not in [nfs] clients, refused");
            return rpc::reply_only(call.xid, ReplyStatus::AuthError(AuthFailure::TooWeak)).into();
        }
        let cred = match self.policy.credentials(&call.auth) {
            Ok(c) => c,
            Err(_) if call.proc_ == 0 => Credentials::new(self.policy.anon_uid, self.policy.anon_gid),
            Err(why) => return rpc::reply_only(call.xid, ReplyStatus::AuthError(why)).into(),
        };
        let decoded = match decode_nfs(call.proc_, args) {
            Ok(Some(a)) => a,
            Ok(None) => return rpc::reply_only(call.xid, ReplyStatus::ProcUnavail).into(),
            Err(e) => {
                tracing::debug!(%client, proc_ = call.proc_, error = %e, "NFS: garbage arguments");
                return rpc::reply_only(call.xid, ReplyStatus::GarbageArgs).into();
            }
        };
        if let NfsArgs::Write { data, .. } = &decoded {
            crate::metrics::NFS.written(data.len());
        }
        let req = Request { cred, client };
        let hint = match decoded {
            NfsArgs::Read { count, .. } => count.min(MAX_IO) as usize + 128,
            NfsArgs::Readdir { count: max, .. } | NfsArgs::Readdirplus { maxcount: max, .. } => {
                max.min(MAX_IO) as usize + 128
            }
            _ => 256,
        };
        let mut out = rpc::begin_reply(call.xid, ReplyStatus::Success, hint);
        match self.nfs3(&req, decoded, &mut out).await {
            None => rpc::finish_reply(out).into(),
            Some((data, hold)) => {
                let more = data.len() + proc::xdr_pad(data.len());
                Reply { bytes: rpc::finish_reply_followed(out, more), data: Some(data), hold }
            }
        }
    }

    async fn dispatch_mount(&self, call: &Call, args: &[u8], client: IpAddr) -> Vec<u8> {
        let decoded = match decode_mount(call.proc_, args) {
            Ok(Some(a)) => a,
            Ok(None) => return rpc::reply_only(call.xid, ReplyStatus::ProcUnavail),
            Err(_) => return rpc::reply_only(call.xid, ReplyStatus::GarbageArgs),
        };
        let mut out = rpc::begin_reply(call.xid, ReplyStatus::Success, 128);
        match decoded {
            MountArgs::Null | MountArgs::Umnt(_) | MountArgs::Umntall => {}
            MountArgs::Dump => List::<export_node<'_, '_>>::default().pack(&mut out).map(|_| ()).expect("Vec"),
            MountArgs::Export => {
                let groups = if self.policy.clients.iter().any(|n| n.prefix_len() == 0) {
                    Vec::new()
                } else {
                    self.policy.clients.iter().map(|n| name(Opaque::owned(n.to_string().into_bytes()))).collect()
                };
                let list: exports<'_, '_> = List(vec![export_node {
                    ex_dir: dirpath(Opaque::owned(format!("/{}", self.export).into_bytes())),
                    ex_groups: List(groups),
                }]);
                list.pack(&mut out).expect("Vec");
            }
            MountArgs::Mnt(path) => {
                let res = match self.mount(call, path, client).await {
                    Ok(h) => mountres3::Ok(mountres3_ok {
                        fhandle: fhandle3(Opaque::owned(h)),
                        auth_flavors: self.policy.auth_flavors(),
                    }),
                    Err(s) => {
                        tracing::info!(%client, path = %crate::logging::untrusted(path), status = %s, "MOUNT refused");
                        mountres3::Err(s)
                    }
                };
                res.pack(&mut out).expect("Vec");
            }
        }
        rpc::finish_reply(out)
    }

    /// MNT: the export is the volume, `smb` or `/smb`; a directory below it (`/smb/dir`) too.
    async fn mount(&self, call: &Call, path: &[u8], client: IpAddr) -> Result<Vec<u8>, mountstat3> {
        if !self.policy.allows(client) {
            return Err(mountstat3::MNT3ERR_ACCES);
        }
        let cred = self.policy.credentials(&call.auth).map_err(|_| mountstat3::MNT3ERR_ACCES)?;
        let p = path.strip_prefix(b"/").unwrap_or(path);
        let export = self.export.as_bytes();
        let rest = if p == export || p.strip_suffix(b"/") == Some(export) {
            None
        } else if p.len() > export.len() && p.starts_with(export) && p[export.len()] == b'/' {
            Some(&p[export.len() + 1..])
        } else {
            return Err(mountstat3::MNT3ERR_NOENT);
        };
        let id = match rest {
            None => self.ns.root(),
            Some(sub) => {
                let (id, attr) =
                    self.ns.walk(&cred, self.ns.root(), sub, true).await.map_err(|e| match e.nfs3_status() {
                        2 => mountstat3::MNT3ERR_NOENT,
                        13 => mountstat3::MNT3ERR_ACCES,
                        20 => mountstat3::MNT3ERR_NOTDIR,
                        _ => mountstat3::MNT3ERR_IO,
                    })?;
                if attr.ftype != FileType::Directory {
                    return Err(mountstat3::MNT3ERR_NOTDIR);
                }
                id
            }
        };
        Ok(self.handles.encode(&id))
    }
}

/// A complete reply record.
pub struct Reply {
    /// Record mark, reply header and result; the record mark also counts `data` and its padding.
    pub bytes: Vec<u8>,
    /// READ data sent after `bytes` (from memory as it is, or from the file without a copy:
    /// see [`super::splice`]), then its XDR padding.
    pub data: Option<ReadData>,
    /// The budget `data` holds until it is sent.
    pub hold: Option<Reservation>,
}

impl From<Vec<u8>> for Reply {
    fn from(bytes: Vec<u8>) -> Self {
        Self { bytes, data: None, hold: None }
    }
}

/// The sending half of a connection, shared by its calls.
struct ReplySink {
    wr: Mutex<Sender>,
    client: SocketAddr,
    /// A send failed or timed out: the connection is closing.
    dead: std::sync::atomic::AtomicBool,
}

struct Sender {
    half: OwnedWriteHalf,
    /// A reply was cut short: the stream is no longer a sequence of records, nothing more goes.
    broken: bool,
}

impl ReplySink {
    /// Sends one complete reply record (a failed send is only logged: the reader sees the
    /// connection close).
    async fn send(&self, reply: Reply) {
        let mut wr = self.wr.lock().await;
        if wr.broken {
            return;
        }
        let sent = async {
            let pad = [0; 3];
            match &reply.data {
                None => wr.half.write_all(&reply.bytes).await?,
                Some(ReadData::Bytes(b)) => {
                    let mut parts =
                        [IoSlice::new(&reply.bytes), IoSlice::new(b), IoSlice::new(&pad[..proc::xdr_pad(b.len())])];
                    write_all_vectored(&mut wr.half, &mut parts).await?;
                }
                Some(ReadData::File(f)) => {
                    let sock: &TcpStream = wr.half.as_ref();
                    let by =
                        super::splice::send_file(sock, &reply.bytes, f, &pad[..proc::xdr_pad(f.len as usize)]).await?;
                    if by == super::splice::SentBy::Splice {
                        crate::metrics::NFS.read_by_splice(f.len as usize);
                    }
                }
            }
            std::io::Result::Ok(())
        };
        let sent = tokio::time::timeout(SEND_TIMEOUT, sent).await.unwrap_or_else(|_| {
            Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "client took no reply for 30 s"))
        });
        if let Err(e) = sent {
            self.dead.store(true, std::sync::atomic::Ordering::Relaxed);
            tracing::debug!(client = %self.client, error = %e, "NFS reply not sent: closing the connection");
            // The client sees the connection close and sends its calls again on a new one.
            wr.broken = true;
            let _ = wr.half.shutdown().await;
        }
    }
}

/// Writes every byte of `parts` in as few system calls as the socket allows (one `writev` when
/// it takes everything): a READ reply's head and data go out together, never copied into one
/// buffer first.
async fn write_all_vectored(half: &mut OwnedWriteHalf, mut parts: &mut [IoSlice<'_>]) -> std::io::Result<()> {
    IoSlice::advance_slices(&mut parts, 0);
    while !parts.is_empty() {
        let n = half.write_vectored(parts).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut parts, n);
    }
    Ok(())
}

/// The key handles are signed with: derived from the cluster secret when there is a cluster
/// (every node must accept every node's handles), else a random key kept in `state_dir`.
pub fn handle_key(cfg: &Config) -> Result<Vec<u8>> {
    if let Some(cluster) = &cfg.cluster {
        match std::fs::read(&cluster.secret_file) {
            Ok(secret) => {
                let mut h = Sha256::new();
                h.update(b"nasgw nfs handle key v1\0");
                h.update(&secret);
                return Ok(h.finalize().to_vec());
            }
            // Serve anyway (this node's own key), but loudly: other nodes will refuse its handles.
            Err(e) => tracing::error!(
                secret_file = %cluster.secret_file.display(),
                error = %e,
                "cannot read the cluster secret: NFS handles of this node will not be valid on other nodes"
            ),
        }
    }
    let path = cfg.node.state_dir.join("nfs-handle.key");
    load_or_create_key(&path)
}

fn load_or_create_key(path: &Path) -> Result<Vec<u8>> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::read(path) {
        Ok(k) if k.len() == 32 => return Ok(k),
        Ok(_) => {
            anyhow::bail!("{} is not a 32-byte key; remove it to make a new one (clients must remount)", path.display())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
    let key: [u8; 32] = rand::random();
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(&key)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot create {}", path.display()))?;
    Ok(key.to_vec())
}

/// Starts the NFS listener, the UDP socket beside it (MOUNT, NLM, NSM), the lock manager, and
/// the portmapper (TCP and UDP) if configured, as tasks of `life`. Without a portmapper of its
/// own, nasgw puts its programs in a host rpcbind's table when one answers on 127.0.0.1:111.
pub async fn start(
    cfg: &Config,
    ns: Namespace,
    locks: Arc<LockService>,
    connections: Arc<ConnectionTable>,
    life: &Lifecycle,
) -> Result<Arc<NfsServer>> {
    let nfs = &cfg.nfs;
    let listener =
        TcpListener::bind(nfs.listen).await.with_context(|| format!("cannot listen for NFS on {}", nfs.listen))?;
    let port = listener.local_addr()?.port();
    let udp_addr = SocketAddr::new(nfs.listen.ip(), port);
    let udp = Arc::new(
        super::udp::PktSocket::bind(udp_addr)
            .with_context(|| format!("cannot listen for NLM, NSM and MOUNT on UDP {udp_addr}"))?,
    );
    let pmap = match nfs.portmap_listen {
        Some(a) => Some(TcpListener::bind(a).await.with_context(|| {
            format!("cannot listen for the portmapper on {a} (port 111 needs root and no rpcbind running)")
        })?),
        None => None,
    };
    let pmap_port = pmap.as_ref().and_then(|l| l.local_addr().ok()).map(|a| a.port());
    let pmap_udp = match pmap_port {
        Some(p) => {
            let a = SocketAddr::new(nfs.portmap_listen.map_or(nfs.listen.ip(), |a| a.ip()), p);
            Some(Arc::new(
                super::udp::PktSocket::bind(a)
                    .with_context(|| format!("cannot listen for the portmapper on UDP {a}"))?,
            ))
        }
        None => None,
    };
    let key = handle_key(cfg)?;
    let mut server =
        NfsServer::new(ns, &cfg.volume.name, ExportPolicy::from_config(nfs), &key, port, pmap_port, locks.clone());
    server.zero_copy_reads = nfs.zero_copy_reads;
    let server = Arc::new(server);
    life.tasks.spawn(server.sharing.clone().run(life.stop.clone()));
    let public =
        cfg.cluster.as_ref().map_or_else(Vec::new, |c| c.public_addresses.iter().map(|p| p.address.addr()).collect());
    // A dead node's NLM locks stay in the lock table as orphans of their owners for the grace
    // period, so nobody (through any address) takes them before their client reclaims them.
    locks.set_posix_grace(std::time::Duration::from_millis(nfs.grace_period_ms));
    let nlm = NlmService::new(
        locks,
        server.handles.clone(),
        server.ns.clone(),
        public,
        std::time::Duration::from_millis(nfs.grace_period_ms),
        life.stop.clone(),
    );
    nlm.start();
    let _ = server.nlm.set(nlm);
    tracing::info!(listen = %nfs.listen, portmap = ?nfs.portmap_listen, export = %cfg.volume.name, "NFS listening (TCP; NLM, NSM and MOUNT also on UDP)");
    let s = server.clone();
    let l = life.clone();
    life.tasks.spawn(crate::listener::accept_loop(
        "nfs",
        listener,
        nfs.max_connections,
        connections.clone(),
        life.clone(),
        move |stream, conn| s.clone().serve_connection(stream, conn, l.clone()),
    ));
    for (sock, service) in std::iter::once((udp, "nfs-udp")).chain(pmap_udp.map(|u| (u, "portmap-udp"))) {
        let s = server.clone();
        life.tasks.spawn(super::udp::serve(sock, service, life.stop.clone(), move |data, from, to| {
            let s = s.clone();
            async move { s.answer_datagram(&data, from, to).await }
        }));
    }
    if let Some(pl) = pmap {
        let s = server.clone();
        let l = life.clone();
        life.tasks.spawn(crate::listener::accept_loop(
            "portmap",
            pl,
            64,
            connections,
            life.clone(),
            move |stream, conn| s.clone().serve_connection(stream, conn, l.clone()),
        ));
    } else {
        let (map, stop) = (server.portmap.clone(), life.stop.clone());
        life.tasks.spawn(async move {
            let host = SocketAddr::from(([127, 0, 0, 1], 111));
            match super::portmap::register_with_host(host, &map).await {
                Ok(refused) if refused.is_empty() => {
                    tracing::info!("NFS: registered MOUNT, NFS, NLM and NSM with the host's rpcbind");
                }
                Ok(refused) => {
                    let progs: Vec<String> = refused.iter().map(|m| format!("{}/{}", m.prog, m.vers)).collect();
                    tracing::warn!(
                        refused = %progs.join(" "),
                        "NFS: the host's rpcbind already has some of nasgw's programs (a kernel lockd or rpc.statd running?): clients reach those instead"
                    );
                }
                Err(_) => {
                    tracing::debug!("NFS: no portmapper on this host and none configured ([nfs] portmap_listen): clients need port options");
                    return;
                }
            }
            stop.cancelled().await;
            super::portmap::unregister_from_host(host, &map).await;
        });
    }
    Ok(server)
}

impl NfsServer {
    /// Answers one datagram (a call over UDP): MOUNT, NLM, NSM and the portmapper; NFS itself
    /// only over TCP. Returns the reply message, or nothing.
    async fn answer_datagram(&self, data: &[u8], from: SocketAddr, to: IpAddr) -> Option<Vec<u8>> {
        let call = match rpc::parse_call(data) {
            Ok(c) => c,
            Err(CallError::RpcVersion { xid, .. }) => {
                return Some(rpc::reply_only(xid, ReplyStatus::RpcMismatch)[4..].to_vec())
            }
            Err(CallError::BadCredential { xid }) => {
                return Some(rpc::reply_only(xid, ReplyStatus::AuthError(AuthFailure::BadCred))[4..].to_vec())
            }
            Err(_) => return None,
        };
        if call.prog == NFS_PROGRAM {
            return Some(rpc::reply_only(call.xid, ReplyStatus::ProgUnavail)[4..].to_vec());
        }
        let reply = self.dispatch(&call, data, from, to).await;
        (reply.bytes.len() > 4).then(|| reply.bytes[4..].to_vec())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::AsyncReadExt;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::locks::LockService;
    use crate::vfs::posix::{PosixBackend, PosixOptions};
    use crate::vfs::FileSlice;

    /// A server exporting `dir` (local backend, default `[nfs]` policy).
    fn server(dir: &Path) -> NfsServer {
        let text = format!(
            "[volume]\nname = \"smb\"\nbackend = \"local\"\npath = \"{}\"\n\n[smb]\nenabled = false\n",
            dir.display()
        );
        let cfg = crate::config::parse(&text, "test", dir).expect("config");
        let ns = Namespace::new(Arc::new(PosixBackend::open(dir, PosixOptions::new("smb")).expect("backend")));
        NfsServer::new(ns, "smb", ExportPolicy::from_config(&cfg.nfs), &[9; 32], 2049, None, LockService::single())
    }

    /// Accepts one client and serves it as a spawned task; returns the client's end.
    async fn connect(server: Arc<NfsServer>) -> (TcpStream, tokio::task::JoinHandle<()>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (stream, peer) = l.accept().await.unwrap();
        let life = Lifecycle { stop: CancellationToken::new(), tasks: tokio_util::task::TaskTracker::new() };
        let tcp = TcpConnection { client: peer, server: addr };
        (client, tokio::spawn(server.serve_connection(stream, tcp, life)))
    }

    /// One record-marked NFSv3 call `proc_` from AUTH_UNIX uid/gid 1000 with `args`.
    fn nfs_call(xid: u32, proc_: u32, args: &[u8]) -> Vec<u8> {
        let mut body = Vec::new();
        for x in [xid, 0, 2, NFS_PROGRAM, 3, proc_, 1, 24, 1, 4] {
            body.extend_from_slice(&x.to_be_bytes());
        }
        body.extend_from_slice(b"host");
        for x in [1000u32, 1000, 0, 0, 0] {
            body.extend_from_slice(&x.to_be_bytes());
        }
        body.extend_from_slice(args);
        let mut rec = (0x8000_0000u32 | body.len() as u32).to_be_bytes().to_vec();
        rec.extend_from_slice(&body);
        rec
    }

    /// READ arguments: `count` bytes at 0 of handle `fh`.
    fn read_args(fh: &[u8], count: u32) -> Vec<u8> {
        let mut a = (fh.len() as u32).to_be_bytes().to_vec();
        a.extend_from_slice(fh);
        a.resize(4 + fh.len().div_ceil(4) * 4, 0);
        a.extend_from_slice(&0u64.to_be_bytes());
        a.extend_from_slice(&count.to_be_bytes());
        a
    }

    /// Reads one accepted reply record: (xid, the result's nfsstat3, `None` for a void result).
    async fn reply(c: &mut TcpStream) -> Option<(u32, Option<u32>)> {
        let mut mark = [0u8; 4];
        c.read_exact(&mut mark).await.ok()?;
        let mut rec = vec![0u8; (u32::from_be_bytes(mark) & 0x7fff_ffff) as usize];
        c.read_exact(&mut rec).await.ok()?;
        let word = |i: usize| u32::from_be_bytes(rec[i * 4..i * 4 + 4].try_into().unwrap());
        // xid, REPLY, MSG_ACCEPTED, verifier (flavor, empty), SUCCESS, then the result.
        assert_eq!((word(1), word(2), word(5)), (1, 0, 0), "an accepted, successful RPC reply");
        Some((word(0), (rec.len() >= 28).then(|| word(6))))
    }

    async fn closed_by_server(c: &mut TcpStream) -> bool {
        let mut b = [0u8; 1];
        matches!(c.read(&mut b).await, Ok(0))
            || matches!(c.read(&mut b).await, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_that_sends_no_call_is_closed_and_one_that_called_is_not() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = server(tmp.path());
        s.first_call_timeout = Duration::from_millis(300);
        let s = Arc::new(s);
        let (mut silent, task) = connect(s.clone()).await;
        let (mut caller, _caller_task) = connect(s).await;
        caller.write_all(&nfs_call(1, 0, &[])).await.unwrap();
        assert_eq!(reply(&mut caller).await, Some((1, None)), "NULL answered");
        let start = std::time::Instant::now();
        let closed = tokio::time::timeout(Duration::from_secs(10), closed_by_server(&mut silent)).await;
        let took = start.elapsed();
        println!("silent connection closed after {took:?} (first-call timeout 300 ms)");
        assert_eq!(closed, Ok(true), "the silent connection was closed");
        assert!(took < Duration::from_secs(5), "closed after {took:?}");
        tokio::time::timeout(Duration::from_secs(5), task).await.expect("serve returned").unwrap();
        // The connection that called stays open past the first-call timeout.
        caller.write_all(&nfs_call(2, 0, &[])).await.unwrap();
        assert_eq!(reply(&mut caller).await, Some((2, None)), "a connection that called is kept");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_reserves_its_reply_only_after_the_handle_is_checked() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("f"), vec![7u8; 4096]).unwrap();
        let s = Arc::new(server(tmp.path()));
        let cred = Credentials::new(0, 0);
        let (id, _) = s.ns.lookup(&cred, s.ns.root(), b"f").await.unwrap();
        let good = s.handles.encode(&id);
        let mut forged = good.clone();
        *forged.last_mut().unwrap() ^= 1;
        // Another connection of this address holds the whole of its share.
        let me: IpAddr = "127.0.0.1".parse().unwrap();
        let mut held = Vec::new();
        for _ in 0..budget::CLIENT_UNITS / budget::CONNECTION_UNITS {
            held.push(s.budget.reply(me, budget::CONNECTION_UNITS * budget::UNIT).await.unwrap());
        }
        let (mut c, _task) = connect(s.clone()).await;
        // A forged handle is refused at once: it never waits for (or holds) any budget.
        c.write_all(&nfs_call(1, 6, &read_args(&forged, 1 << 20))).await.unwrap();
        let refused = tokio::time::timeout(Duration::from_secs(5), reply(&mut c)).await.expect("answered at once");
        assert_eq!(refused, Some((1, Some(nfs3_types::nfs3::nfsstat3::NFS3ERR_BADHANDLE as u32))));
        // A good one waits for the share...
        c.write_all(&nfs_call(2, 6, &read_args(&good, 1 << 20))).await.unwrap();
        let waited = tokio::time::timeout(Duration::from_millis(300), reply(&mut c)).await;
        assert!(waited.is_err(), "a READ went past its address's share");
        // ...and NULL calls of the same client are still answered meanwhile.
        let (mut other, _t) = connect(s.clone()).await;
        other.write_all(&nfs_call(3, 0, &[])).await.unwrap();
        let null = tokio::time::timeout(Duration::from_secs(5), reply(&mut other)).await.expect("NULL answered");
        assert_eq!(null, Some((3, None)));
        held.clear();
        let read = tokio::time::timeout(Duration::from_secs(5), reply(&mut c)).await.expect("READ answered");
        assert_eq!(read, Some((2, Some(0))));
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while s.budget.available() != budget::SERVER_UNITS && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(s.budget.available(), budget::SERVER_UNITS, "nothing left held");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_zero_copy_a_read_reply_holds_a_copy_a_later_truncate_cannot_change() {
        let tmp = tempfile::tempdir().unwrap();
        let content: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8 + 1).collect();
        std::fs::write(tmp.path().join("f"), &content).unwrap();
        let mut s = server(tmp.path());
        let cred = Credentials::new(0, 0);
        let (id, _) = s.ns.lookup(&cred, s.ns.root(), b"f").await.unwrap();
        let fh = s.handles.encode(&id);
        let record = nfs_call(1, 6, &read_args(&fh, 1 << 20));
        let call = rpc::parse_call(&record[4..]).unwrap();
        let (client, local) = ("127.0.0.1:1000".parse().unwrap(), "127.0.0.1".parse().unwrap());
        // The default: the data the page cache holds stays in the file until it is sent.
        let spliced = s.dispatch(&call, &record[4..], client, local).await;
        assert!(matches!(spliced.data, Some(ReadData::File(ref f)) if f.len == 100_000), "{:?}", spliced.data);
        s.zero_copy_reads = false;
        let copied = s.dispatch(&call, &record[4..], client, local).await;
        assert_eq!(copied.bytes, spliced.bytes, "the same reply head");
        std::fs::File::options().write(true).open(tmp.path().join("f")).unwrap().set_len(10).unwrap();
        match copied.data {
            Some(ReadData::Bytes(b)) => assert!(b == content, "what was read, whatever the file became"),
            other => panic!("not copied: {other:?}"),
        }
        // After the truncate: the short file, copied, and end of file.
        let short = s.dispatch(&call, &record[4..], client, local).await;
        assert!(matches!(short.data, Some(ReadData::Bytes(ref b)) if b[..] == content[..10]), "{:?}", short.data);
    }

    /// A connected pair: the server's write half (in a [`ReplySink`]) and the client's stream.
    async fn pair() -> (ReplySink, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (server, peer) = l.accept().await.unwrap();
        let (_, half) = server.into_split();
        (ReplySink { wr: Mutex::new(Sender { half, broken: false }), client: peer, dead: Default::default() }, client)
    }

    fn slice(content: &[u8], offset: u64, len: u32) -> (tempfile::TempDir, FileSlice) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, content).unwrap();
        let fd = std::fs::File::open(&path).unwrap();
        (dir, FileSlice { fd: Arc::new(fd), offset, len })
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn file_data_follows_the_head_then_its_padding() {
        let (sink, mut client) = pair().await;
        let content: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
        let (_dir, f) = slice(&content, 7, 200_001);
        sink.send(Reply { bytes: b"head".to_vec(), data: Some(ReadData::File(f)), hold: None }).await;
        sink.send(Reply::from(b"next".to_vec())).await;
        drop(sink);
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        let mut want = b"head".to_vec();
        want.extend_from_slice(&content[7..200_008]);
        want.extend_from_slice(&[0, 0, 0]);
        want.extend_from_slice(b"next");
        assert_eq!(got.len(), want.len());
        assert!(got == want);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn data_in_memory_follows_the_head_then_its_padding() {
        let (sink, mut client) = pair().await;
        // Bigger than the socket buffers: written in several parts.
        let data: Vec<u8> = (0..3_000_001u32).map(|i| (i % 253) as u8).collect();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            got
        });
        sink.send(Reply { bytes: b"head".to_vec(), data: Some(ReadData::Bytes(data.clone())), hold: None }).await;
        sink.send(Reply { bytes: b"empty".to_vec(), data: Some(ReadData::Bytes(Vec::new())), hold: None }).await;
        sink.send(Reply::from(b"next".to_vec())).await;
        drop(sink);
        let got = reader.await.unwrap();
        let mut want = b"head".to_vec();
        want.extend_from_slice(&data);
        want.extend_from_slice(&[0, 0, 0]);
        want.extend_from_slice(b"emptynext");
        assert_eq!(got.len(), want.len());
        assert!(got == want);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_file_that_shrank_closes_the_connection_instead_of_lying() {
        let (sink, mut client) = pair().await;
        // The reply promised 2000 bytes; the file has 1000 left.
        let (_dir, f) = slice(&[1; 1000], 0, 2000);
        sink.send(Reply { bytes: b"head".to_vec(), data: Some(ReadData::File(f)), hold: None }).await;
        sink.send(Reply::from(b"later".to_vec())).await;
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), 4 + 1000, "the stream ends at the cut: nothing after it");
        assert!(sink.wr.lock().await.broken);
    }
}
