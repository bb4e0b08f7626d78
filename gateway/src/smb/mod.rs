//! The SMB 2/3 service: nasgw's own SMB engine over the shared namespace and lock table.
//!
//! Layout (data flows one way, socket -> wire decode -> command -> namespace -> backend):
//! - [`wire`]: pure decoders/encoders of SMB2 bytes (header, status codes);
//! - [`auth`]: SPNEGO + NTLMSSP, users from the config;
//! - [`signing`]: key derivation and message signing for every dialect;
//! - [`transform`]: SMB 3 encryption: the TRANSFORM header, sealing and opening messages;
//! - [`encryption`]: which requests must come encrypted and which replies are encrypted;
//! - [`transport`]: transport frames in (one reused buffer), framed messages out;
//! - [`bulk`]: READ data read into a buffer with room for the reply's header in front of it,
//!   so an encrypted reply is sealed where the data lies;
//! - [`compound`]: the message rules around commands as pure functions: chain splitting,
//!   related operations, which signatures are checked and made, reply assembly;
//! - [`conn`]: one client connection on its own thread: its [`conn::Link`] (framing, async
//!   replies) apart from its session and open state, running each chain through [`compound`]
//!   and [`cmd`];
//! - [`sequence`]: the MessageId window (each granted id used once: no replays);
//! - [`session`]: sessions, tree connects and opens as named types;
//! - [`eas`], [`security`]: extended attributes and the security descriptors clients set,
//!   kept in the volume's `user.` attributes;
//! - [`durable`]: durable handles: their create contexts, rules, and the opens that outlive
//!   their connection;
//! - [`object_id`]: file object ids (FSCTL_CREATE_OR_GET_OBJECT_ID), derived from file ids;
//! - [`cmd`]: one file per SMB2 command;
//! - [`srvsvc`]: the DCE/RPC share-enumeration pipe on `IPC$`.

pub mod aapl;
pub mod auth;
pub mod binding;
pub mod bulk;
pub mod cmd;
pub mod compound;
pub mod conn;
pub mod copychunk;
pub mod current_name;
pub mod dosattrib;
pub mod durable;
pub mod durable_cluster;
pub mod durable_handover;
pub mod durable_replay;
pub mod eas;
pub mod encryption;
pub mod file_state;
pub mod fs;
pub mod interfaces;
pub mod leases;
pub mod node_sessions;
pub mod notify;
pub mod notify_local;
pub mod object_id;
pub mod open_updates;
pub mod passwd;
pub mod quota_fake;
pub mod security;
pub mod sequence;
pub mod session;
pub mod signing;
pub mod srvsvc;
pub mod status;
pub mod streams;
pub mod transform;
pub mod transport;
pub mod volume_locks;
pub mod wire;
pub mod write_time;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use ha::connections::ConnectionTable;
use tokio::net::TcpListener;

use crate::config::{Config, ShareConfig, SmbEncryption};
use crate::daemon::Lifecycle;
use crate::locks::{LockService, OpenKey};
use crate::vfs::{FileId, Namespace};

/// Default of [`SmbServer::dormant_after`]: long against the gaps inside a client's work
/// (a bulk transfer or a directory walk never waits that long), short enough that
/// connections opened in a burst give their threads back before they pile up.
pub const DORMANT_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// Default of [`SmbServer::idle_without_session`].
pub const IDLE_WITHOUT_SESSION: std::time::Duration = std::time::Duration::from_secs(60);

/// Where an open file is, as the opens of this node know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenPath {
    /// The open's file (a stream open: the stream).
    pub file: FileId,
    /// The share's root.
    pub root: FileId,
    /// The directory holding it.
    pub parent: FileId,
    /// Its share-relative path.
    pub path: Vec<String>,
}

/// Server-wide SMB state shared by every connection.
pub struct SmbServer {
    /// Name clients see (NTLMSSP target, srvsvc).
    pub server_name: String,
    /// The shares of `[[smb.share]]`.
    pub shares: Vec<ShareConfig>,
    /// Users of `[[smb.user]]`.
    pub users: auth::UserDb,
    /// `[smb] require_signing`.
    pub require_signing: bool,
    /// `[smb] encryption`: offered at all, and asked of every session or not.
    pub encryption: SmbEncryption,
    /// `[smb] multichannel`: session binding and the MULTI_CHANNEL capability on 3.x.
    pub multichannel: bool,
    /// `[smb] listen`: the interfaces multichannel clients are told of.
    pub listen: std::net::SocketAddr,
    /// Our GUID, stable for the process.
    pub guid: [u8; 16],
    /// When the process started, as a FILETIME.
    pub start_time: u64,
    /// Some share admits guests, so unknown users map to the guest.
    pub guest_allowed: bool,
    /// Unix identity lookup for the configured users (name -> unix user).
    pub unix_users: std::collections::HashMap<String, String>,
    /// The namespace every share is a folder of.
    pub ns: Namespace,
    /// The cluster-wide file-sharing state (shared with NFS).
    pub locks: Arc<LockService>,
    /// This node's leases and oplocks: where their breaks go.
    pub breaks: Arc<leases::Breaks>,
    /// Byte-range locks of this node's opens, mirrored onto the volume.
    pub volume_locks: Arc<volume_locks::SmbVolumeLocks>,
    /// Fires to close every connection (this node left the cluster's view: what its clients
    /// held was released cluster-wide, so their handles are gone too); replaced after firing.
    pub evict: Arc<std::sync::Mutex<tokio_util::sync::CancellationToken>>,
    /// How long a connection without an authenticated session may stay idle before it is
    /// closed (a client that connects and sends nothing, or stops half way through logon,
    /// holds a descriptor and a thread).
    pub idle_without_session: std::time::Duration,
    /// How long a connection with nothing in flight waits on its client before it gives its
    /// thread back (see [`conn::serve`]): an idle connection then costs its state and its
    /// socket, not a thread, a runtime and their descriptors.
    pub dormant_after: std::time::Duration,
    /// SMB connections on a thread of their own now (the others are dormant).
    pub connection_threads: std::sync::atomic::AtomicUsize,
    /// The descriptors connection threads take theirs from (the process's, see
    /// [`crate::descriptors`]): past them, connections wait for a thread.
    pub descriptors: Arc<crate::descriptors::Descriptors>,
    /// Where every open file is now (a rename moves every open of the file through the same
    /// share and name on this node; renames through other nodes, shares and protocols reach opens
    /// through the file's record, see [`current_name`]).
    pub open_paths: std::sync::Mutex<std::collections::HashMap<OpenKey, OpenPath>>,
    /// Alternate data streams open on this node, per file (deletion rules between a file and
    /// its streams).
    pub open_streams: streams::OpenStreams,
    /// CHANGE_NOTIFY watches of open directories.
    pub watches: notify::Watches,
    /// inotify watches of those directories on a local volume (names changed on the node
    /// outside nasgw); `None` on other backends.
    pub local_events: Option<Arc<notify_local::LocalEvents>>,
    /// Resume keys of server-side copy sources.
    pub resume_keys: copychunk::ResumeKeys,
    /// The delayed write-time updates of files written through this node's handles.
    pub write_times: write_time::WriteTimes,
    /// Durable opens by persistent FileId, those whose connection was lost included.
    pub durable: durable::DurableTable,
    /// CREATEs with a CreateGuid, for replay detection ([`durable_replay::ReplayCache`]).
    pub replay_cache: durable_replay::ReplayCache,
    /// Durable opens of the cluster (what a reconnect here may reclaim from another node).
    pub cluster_opens: durable_cluster::ClusterOpens,
    /// This node's valid sessions (PreviousSessionId, session binding).
    pub sessions: node_sessions::SessionDirectory,
    /// This node is part of a `[cluster]` (every node serves every share).
    pub clustered: bool,
}

impl SmbServer {
    /// Server state from the config.
    pub fn new(cfg: &Config, ns: Namespace, locks: Arc<LockService>) -> Self {
        let server_name = cfg.smb.server_name.clone().unwrap_or_else(hostname);
        let users = auth::UserDb::new(cfg.smb.users.iter().map(|u| (u.name.as_str(), u.nt_hash.as_str())));
        let unix_users = cfg
            .smb
            .users
            .iter()
            .map(|u| (u.name.to_lowercase(), u.unix_user.clone().unwrap_or_else(|| u.name.clone())))
            .collect();
        let breaks = Arc::new(leases::Breaks::default());
        let evict = Arc::new(std::sync::Mutex::new(tokio_util::sync::CancellationToken::new()));
        let hook = evict.clone();
        breaks.on_evict(Box::new(move || {
            let mut t = hook.lock().unwrap_or_else(|p| p.into_inner());
            t.cancel();
            *t = tokio_util::sync::CancellationToken::new();
        }));
        locks.set_holders(breaks.clone());
        let volume_locks = Arc::new(volume_locks::SmbVolumeLocks::new(ns.clone()));
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            // Out of sync = cut off: give the volume locks back (see `release_all`); in sync
            // again: set those the cluster still holds for this node's opens (`restore`).
            let (mirror, mut licensed, table) = (volume_locks.clone(), locks.licensed(), Arc::downgrade(&locks));
            rt.spawn(async move {
                while licensed.changed().await.is_ok() {
                    if !*licensed.borrow_and_update() {
                        mirror.release_all();
                        continue;
                    }
                    let Some(table) = table.upgrade() else { return };
                    let (set, refused) = mirror.restore(&table.holdings()).await;
                    if set > 0 {
                        tracing::info!(
                            opens = set,
                            refused,
                            "SMB: in sync again: byte-range locks set on the volume again"
                        );
                    }
                }
            });
        }
        let local_events = match (cfg.volume.backend, &cfg.volume.path) {
            (crate::config::BackendKind::Local, Some(root)) => {
                Some(Arc::new(notify_local::LocalEvents::new(root.clone(), ns.clone())))
            }
            _ => None,
        };
        Self {
            breaks,
            volume_locks,
            evict,
            server_name,
            shares: cfg.smb.shares.clone(),
            users,
            require_signing: cfg.smb.require_signing,
            encryption: cfg.smb.encryption,
            multichannel: cfg.smb.multichannel,
            listen: cfg.smb.listen,
            guid: rand::random(),
            start_time: filetime_now(),
            guest_allowed: cfg.smb.shares.iter().any(|s| s.guest_ok),
            unix_users,
            ns,
            idle_without_session: IDLE_WITHOUT_SESSION,
            dormant_after: DORMANT_AFTER,
            connection_threads: std::sync::atomic::AtomicUsize::new(0),
            descriptors: crate::descriptors::process().clone(),
            open_paths: std::sync::Mutex::new(std::collections::HashMap::new()),
            open_streams: streams::OpenStreams::default(),
            watches: notify::Watches::default(),
            local_events,
            resume_keys: copychunk::ResumeKeys::default(),
            write_times: write_time::WriteTimes::default(),
            durable: durable::DurableTable::new(locks.node()),
            replay_cache: durable_replay::ReplayCache::default(),
            cluster_opens: durable_cluster::ClusterOpens::default(),
            sessions: node_sessions::SessionDirectory::default(),
            clustered: cfg.cluster.is_some(),
            locks,
        }
    }

    /// Records (or with `None` forgets) where open `key` is.
    pub fn track_path(&self, key: OpenKey, at: Option<OpenPath>) {
        let mut m = self.open_paths.lock().unwrap_or_else(|e| e.into_inner());
        match at {
            Some(v) => {
                m.insert(key, v);
            }
            None => {
                m.remove(&key);
            }
        }
    }

    /// Forgets where open `key` is, and says where it was last (after any rename of its file
    /// through this node, by whichever open).
    pub fn untrack_path(&self, key: OpenKey) -> Option<OpenPath> {
        self.open_paths.lock().unwrap_or_else(|e| e.into_inner()).remove(&key)
    }

    /// `file` was renamed from entry `from` (directory, name) through share `root` to `path` in
    /// directory `parent`: every open of it through that share and name on this node is there
    /// now (an open through another hard link of the file keeps its own name).
    pub fn moved(&self, file: FileId, root: FileId, from: (FileId, &str), parent: FileId, path: &[String]) {
        let mut m = self.open_paths.lock().unwrap_or_else(|e| e.into_inner());
        let through = |at: &OpenPath| at.parent == from.0 && at.path.last().map(String::as_str) == Some(from.1);
        for at in m.values_mut().filter(|at| at.file == file && at.root == root && through(at)) {
            at.parent = parent;
            at.path = path.to_vec();
        }
    }

    /// A fresh identity for a new open, unique in the cluster.
    pub fn open_key(&self) -> OpenKey {
        self.locks.new_key()
    }

    /// What a tree connect of `share` asks for: the share's own `encryption`, never less
    /// than `[smb] encryption`.
    pub fn share_encryption(&self, share: &ShareConfig) -> SmbEncryption {
        share.encryption.unwrap_or(self.encryption).max(self.encryption)
    }

    /// The share named `name` (case-insensitive).
    pub fn share(&self, name: &str) -> Option<&ShareConfig> {
        self.shares.iter().find(|s| s.name.eq_ignore_ascii_case(name))
    }
}

/// The host name, for the default server name.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "nasgw".into())
}

/// Now as a Windows FILETIME (100 ns ticks since 1601).
pub fn filetime_now() -> u64 {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    unix_to_filetime(d.as_secs() as i64, d.subsec_nanos())
}

/// Unix seconds/nanoseconds as a FILETIME.
pub fn unix_to_filetime(secs: i64, nanos: u32) -> u64 {
    let ticks = (secs as i128 + 11_644_473_600) * 10_000_000 + (nanos / 100) as i128;
    ticks.clamp(0, u64::MAX as i128) as u64
}

/// Starts the SMB listener; connections are tracked tasks of `life`.
pub async fn start(
    cfg: &Config,
    ns: Namespace,
    locks: Arc<LockService>,
    connections: Arc<ConnectionTable>,
    life: Lifecycle,
) -> Result<()> {
    let listener = TcpListener::bind(cfg.smb.listen)
        .await
        .with_context(|| format!("cannot listen for SMB on {}", cfg.smb.listen))?;
    let server = Arc::new(SmbServer::new(cfg, ns, locks.clone()));
    if cfg.cluster.is_some() {
        // Durable opens of other nodes, announced on the lock mesh.
        let s = Arc::downgrade(&server);
        locks.add_events(Box::new(move |b| {
            if let Some(s) = s.upgrade() {
                durable_handover::on_event(&s, b);
            }
        }));
        durable_handover::ask_on_join(&server);
        // Records of opens whose timeout ended (their node died) are dropped on every node.
        let s = Arc::downgrade(&server);
        let stop = life.stop.clone();
        life.tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(durable_cluster::SWEEP_EVERY) => {}
                }
                let Some(s) = s.upgrade() else { return };
                s.cluster_opens.sweep(&s.locks).await;
            }
        });
    }
    tracing::info!(listen = %cfg.smb.listen, shares = server.shares.len(), "SMB service listening");
    // Connection threads end as their connections go dormant: give back what they freed.
    life.tasks.spawn(crate::heap::trim_when_due(life.stop.clone()));
    let stop = life.stop.clone();
    life.tasks.spawn(crate::listener::accept_loop(
        "smb",
        listener,
        cfg.smb.max_connections,
        connections,
        life.clone(),
        move |stream, tcp| conn::serve(server.clone(), stream, tcp, stop.clone()),
    ));
    Ok(())
}
