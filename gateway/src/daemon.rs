//! `nasgw serve`: prepares the node's directories, starts every service, and stops them cleanly
//! on SIGINT/SIGTERM: listeners close first, in-flight requests finish, then data is synced.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ha::status::{ClusterStatus, IpReport, NodeState, NodeStatus, RecoveryMode};
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{BackendKind, Config, Loaded};
use crate::control;
use crate::gluster::health::HealthWatch;
use crate::gluster::GlusterService;
use crate::vfs::posix::{PosixBackend, PosixOptions};
use crate::vfs::Namespace;
use ha::connections::ConnectionTable;

/// How often cached descriptors of files removed behind the server's back are dropped.
const RELEASE_REMOVED_EVERY: Duration = Duration::from_secs(10);

/// How long in-flight requests may take to finish after a stop signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Stop signal and the tasks that must finish before the process exits.
#[derive(Clone, Default)]
pub struct Lifecycle {
    /// Fires when the daemon is stopping: accept loops return, connections finish their request.
    pub stop: CancellationToken,
    /// Every service and connection task, so the daemon can wait for them.
    pub tasks: TaskTracker,
}

/// Runs the daemon until a stop signal; returns after a clean shutdown.
pub fn serve(loaded: Loaded) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("nasgw").build()?;
    rt.block_on(run(loaded))
}

async fn run(loaded: Loaded) -> Result<()> {
    let cfg = Arc::new(loaded.config);
    tracing::info!(config = %loaded.source.display_name(), volume = %cfg.volume.name, "nasgw starting");
    prepare_dirs(&cfg)?;
    // The open-files limit raised and shared out before anything opens much.
    let budget = crate::descriptors::process().budget();
    tracing::info!(
        open_files_limit = budget.limit,
        reserved = budget.reserved,
        connection_sockets = budget.sockets,
        smb_threads_idle = budget.threads_beside(0),
        smb_threads_at_least = budget.min_threads(),
        "descriptor budget"
    );
    let life = Lifecycle::default();
    // The GlusterFS backend mounts (or connects to) the volume in the background and reports
    // its health; while the volume is not usable this node is UNHEALTHY.
    let gluster = match cfg.volume.backend {
        BackendKind::Gluster => Some(GlusterService::start(&cfg)?),
        BackendKind::Local => None,
    };

    let control = bind_control(&cfg.node.control_socket)?;
    // Services listen before the control socket answers, so "status answers" means "serving".
    let connections = ConnectionTable::new();
    let listeners = ha::health::ListenerHealth::new();
    let namespace = open_namespace(&cfg, gluster.as_ref())?;
    // The one file-sharing state (opens, share modes, byte-range locks, leases) of every
    // protocol: this node's own, or the cluster's.
    let locks = match &cfg.cluster {
        Some(cluster) => crate::cluster::lock_service(cluster, &life).await?,
        None => {
            let l = crate::locks::LockService::single();
            life.tasks.spawn(l.clone().run(Duration::from_millis(100), None, life.stop.clone()));
            l
        }
    };
    if cfg.cluster.is_some() {
        // Change notifications cross nodes on the lock mesh (best effort), only to the nodes
        // that want them (`locks::interest`).
        let l = Arc::downgrade(&locks);
        namespace.changes().set_remote(Box::new(move |b| {
            if let Some(l) = l.upgrade() {
                l.notify(b);
            }
        }));
        namespace.changes().set_remote_interest(locks.remote_interest());
        let hub = Arc::downgrade(namespace.changes());
        locks.on_interest_acked(Box::new(move |seq| {
            if let Some(h) = hub.upgrade() {
                h.interest_acked(seq);
            }
        }));
        let l = Arc::downgrade(&locks);
        namespace.changes().set_interest_sink(Box::new(move |level, seq| {
            if let Some(l) = l.upgrade() {
                l.set_interest(level, seq);
            }
        }));
        let hub = namespace.changes().clone();
        locks.add_events(Box::new(move |b| hub.receive(b)));
    }
    // Share folders for their writers (a fresh volume needs no admin chown). A local directory
    // is ready now, so the first client already finds them; a GlusterFS volume once it answers.
    match &gluster {
        None => {
            crate::provision::share_folders(&cfg, &namespace).await;
        }
        Some(g) => {
            let (cfg, ns, mut health, stop) = (cfg.clone(), namespace.clone(), g.health(), life.stop.clone());
            life.tasks.spawn(async move {
                let ready = tokio::select! {
                    _ = stop.cancelled() => false,
                    r = health.wait_for(|h| h.is_healthy()) => r.is_ok(),
                };
                if ready {
                    crate::provision::share_folders(&cfg, &ns).await;
                }
            });
        }
    }
    let nfs = if cfg.nfs.enabled {
        let s = crate::nfs::start(&cfg, namespace.clone(), locks.clone(), connections.clone(), &life).await?;
        listeners.up("nfs");
        Some(s)
    } else {
        None
    };
    if cfg.smb.enabled {
        crate::smb::start(&cfg, namespace.clone(), locks.clone(), connections.clone(), life.clone()).await?;
        listeners.up("smb");
    }
    let volume_health = gluster.as_ref().map(GlusterService::health);
    let handler: Arc<dyn control::Handler> = match &cfg.cluster {
        Some(cluster) => {
            let node = crate::cluster::start(
                &cfg,
                cluster,
                connections.clone(),
                listeners.clone(),
                gluster.as_ref(),
                locks.clone(),
                &life,
            )?;
            // NLM's grace periods and notifications follow the public addresses HA gives this node.
            if let Some(nlm) = nfs.as_ref().and_then(|n| n.nlm()) {
                nlm.follow(node.held_addresses());
            }
            Arc::new(node)
        }
        None => Arc::new(StandaloneNode::new(cfg.clone(), volume_health)),
    };
    if let Some(m) = &cfg.metrics {
        let lock_table = locks.clone();
        let source = crate::metrics::collect::NodeSource {
            node: handler.clone(),
            // Files whose state this node decides or keeps a copy of.
            lock_files: Box::new(move || {
                let (decided, kept) = lock_table.record_count();
                decided + kept
            }),
        };
        crate::metrics::serve::start(m.listen, crate::metrics::collect::registry(source), &life).await?;
    }
    if let Some(d) = &cfg.dns {
        // This node's own cluster addresses: a resolver may be pointed at them too.
        let own: Vec<IpAddr> = match &cfg.cluster {
            Some(c) => {
                let local = ha::self_id::local_addresses().unwrap_or_default();
                c.nodes.iter().filter(|n| local.contains(n)).copied().collect()
            }
            None => Vec::new(),
        };
        crate::dns::start(&cfg, d, handler.clone(), &own, &life).await?;
    }
    // The node's own mount, on threads of its own, once SMB and NFS serve.
    let fuse = match &cfg.fuse {
        Some(f) => Some(crate::fuse::FuseMount::start(f, namespace.clone(), locks.clone(), &cfg.volume.name).await?),
        None => None,
    };
    life.tasks.spawn(control::serve(control, handler.clone(), life.stop.clone()));
    life.tasks.spawn(release_removed(namespace.clone(), life.stop.clone()));

    print_banner(&cfg);
    crate::systemd::ready(handler.as_ref());
    life.tasks.spawn(crate::systemd::watchdog(handler, life.stop.clone()));
    wait_for_stop_signal().await?;
    crate::systemd::stopping();

    tracing::info!("stop signal received: closing listeners, finishing in-flight requests");
    // The mount first, while the cluster still answers what its last requests ask (a close,
    // an unlock): its threads are joined, none is left waiting for a lock service that stopped.
    if let Some(f) = fuse {
        f.stop().await;
    }
    life.stop.cancel();
    life.tasks.close();
    if tokio::time::timeout(DRAIN_TIMEOUT, life.tasks.wait()).await.is_err() {
        tracing::warn!(timeout_s = DRAIN_TIMEOUT.as_secs(), "some requests did not finish in time");
    }
    if let Err(e) = namespace.sync_all().await {
        tracing::error!(error = %e, "flushing the volume on shutdown failed");
    }
    if let Some(g) = &gluster {
        g.shutdown().await;
    }
    let _ = std::fs::remove_file(&cfg.node.control_socket);
    tracing::info!("nasgw stopped");
    Ok(())
}

/// Periodically frees the space of files another node (or anything but this server) removed
/// while this server still held them open in its descriptor cache.
async fn release_removed(namespace: Namespace, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(RELEASE_REMOVED_EVERY) => {}
        }
        let n = namespace.release_removed().await;
        if n > 0 {
            tracing::debug!(files = n, "dropped cached descriptors of removed files");
        }
    }
}

/// Creates the state directory, and the served directory of a local backend.
/// `state_dir` holds the NFS handle key: it is made 0700 whatever the umask (anyone who could
/// replace the key could forge file handles).
fn prepare_dirs(cfg: &Config) -> Result<()> {
    let state = &cfg.node.state_dir;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state)
        .with_context(|| format!("cannot create state_dir {}", state.display()))?;
    std::fs::set_permissions(state, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot restrict state_dir {}", state.display()))?;
    if let Some(dir) = cfg.node.control_socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    match cfg.volume.backend {
        BackendKind::Local => {
            let path = cfg.volume.path.as_ref().expect("validated: local has a path");
            std::fs::create_dir_all(path).with_context(|| format!("cannot create volume path {}", path.display()))?;
        }
        // The mount point and its guard are prepared by the GlusterFS backend itself.
        BackendKind::Gluster => {}
    }
    Ok(())
}

/// Opens the volume both protocols serve.
fn open_namespace(cfg: &Config, gluster: Option<&GlusterService>) -> Result<Namespace> {
    if let Some(g) = gluster {
        let backend = g.backend(&cfg.volume.name);
        let ns = Namespace::new(backend.clone());
        // Names another nasgw node changes reach the backend's name cache through the cluster's
        // change broadcast as well as through the volume's upcalls (whichever comes first). A
        // change made here is written into that cache by the backend itself (`name_cache.rs`):
        // told of it again, the cache would forget the directory.
        ns.changes().listen_to_others(Box::new(move |c: &crate::vfs::changes::Change| {
            if c.kind != crate::vfs::changes::Kind::Modified {
                backend.forget_names(&c.at.dir);
                if let Some(to) = &c.to {
                    backend.forget_names(&to.dir);
                }
            }
        }));
        return Ok(ns);
    }
    let path = cfg.volume.path.as_ref().context("the local backend needs [volume] path")?;
    let backend = PosixBackend::open(path, PosixOptions::new(&cfg.volume.name))
        .with_context(|| format!("cannot open volume directory {}", path.display()))?;
    Ok(Namespace::new(Arc::new(backend)))
}

/// Binds the control socket, refusing to steal it from a live daemon and clearing a stale one.
fn bind_control(path: &Path) -> Result<UnixListener> {
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "another nasgw already answers on {}; stop it or give this one its own [node] control_socket",
                path.display()
            );
        }
        std::fs::remove_file(path).with_context(|| format!("cannot remove stale control socket {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("cannot bind control socket {}", path.display()))?;
    // Only root (the daemon's user) may connect, whatever the umask; changing commands also
    // check the peer's credentials (control::serve), which covers the instant before this.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict control socket {}", path.display()))?;
    Ok(listener)
}

async fn wait_for_stop_signal() -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    Ok(())
}

/// The address a client on this machine would use for `listen`.
fn reachable(listen: SocketAddr) -> IpAddr {
    if listen.ip().is_unspecified() {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        listen.ip()
    }
}

/// Whether `share` requires encryption (then guests cannot use it).
fn sealed(cfg: &Config, share: &crate::config::ShareConfig) -> bool {
    share.encryption.unwrap_or(cfg.smb.encryption).max(cfg.smb.encryption) == crate::config::SmbEncryption::Required
}

/// Tells the admin how to reach what was just started.
fn print_banner(cfg: &Config) {
    let vol = &cfg.volume;
    let from = vol.path.as_ref().map_or_else(|| vol.servers.join(","), |p| p.display().to_string());
    println!("nasgw serves volume `{}` from {from}", vol.name);
    if cfg.smb.enabled {
        let host = reachable(cfg.smb.listen);
        let port = cfg.smb.listen.port();
        for s in &cfg.smb.shares {
            let auth = match (s.guest_ok, sealed(cfg, s)) {
                (_, true) => "-U USER --client-protection=encrypt",
                (true, false) => "-N",
                (false, false) => "-U USER",
            };
            println!("  SMB  smbclient //{host}/{} -p {port} {auth} -m SMB3", s.name);
        }
    }
    if cfg.nfs.enabled {
        let host = reachable(cfg.nfs.listen);
        let port = cfg.nfs.listen.port();
        println!("  NFS  nfs-ls 'nfs://{host}/{}/?version=3&nfsport={port}&mountport={port}'", vol.name);
    }
    // Commands that write through both protocols, when a guest may write: copy them verbatim.
    let guest_share =
        cfg.smb.shares.iter().find(|s| s.guest_ok && s.writable && !sealed(cfg, s)).filter(|_| cfg.smb.enabled);
    if let (Some(share), true) = (guest_share, cfg.nfs.enabled) {
        let (smb, nfs) = (reachable(cfg.smb.listen), reachable(cfg.nfs.listen));
        let (sp, np) = (cfg.smb.listen.port(), cfg.nfs.listen.port());
        println!("  try it:");
        println!("    echo hello > /tmp/nasgw-hello.txt");
        println!("    smbclient //{smb}/{} -p {sp} -N -m SMB3 -c 'put /tmp/nasgw-hello.txt hello-smb.txt'", share.name);
        println!(
            "    nfs-cp /tmp/nasgw-hello.txt 'nfs://{nfs}/{}/hello-nfs.txt?version=3&nfsport={np}&mountport={np}'",
            vol.name
        );
    }
    if let Some(m) = &cfg.metrics {
        println!("  metrics http://{}:{}/metrics", reachable(m.listen), m.listen.port());
    }
    if let Some(d) = &cfg.dns {
        println!("  DNS  dig @{} -p {} {} A", reachable(d.listen), d.listen.port(), d.name);
    }
    println!("  control socket {} (nasgw status, nasgw ip)", cfg.node.control_socket.display());
}

/// Seconds since the Unix epoch.
pub fn unix_secs(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs()
}

/// Answers the control socket for a node without `[cluster]`: itself, the leader, OK while its
/// volume is usable.
struct StandaloneNode {
    me: NodeStatus,
    volume_health: Option<HealthWatch>,
}

impl StandaloneNode {
    fn new(cfg: Arc<Config>, volume_health: Option<HealthWatch>) -> Self {
        let me = NodeStatus {
            pnn: 0,
            address: reachable(cfg.nfs.listen),
            state: NodeState::Ok,
            this_node: true,
            reason: String::new(),
            version: crate::VERSION.to_string(),
            started: unix_secs(*crate::metrics::STARTED),
        };
        Self { me, volume_health }
    }

    /// This node, UNHEALTHY while its volume is not usable.
    fn me_now(&self) -> NodeStatus {
        let unhealthy = self.volume_health.as_ref().map(|h| h.borrow().clone()).filter(|h| !h.is_healthy());
        match unhealthy {
            None => self.me.clone(),
            Some(h) => NodeStatus { state: NodeState::Unhealthy, reason: h.to_string(), ..self.me.clone() },
        }
    }
}

impl control::Handler for StandaloneNode {
    fn handle(&self, req: control::Request) -> control::Response {
        match req {
            control::Request::Status => control::Response::Status(ClusterStatus {
                nodes: vec![self.me_now()],
                generation: 1,
                leader: Some(0),
                recovery_mode: RecoveryMode::Normal,
                quorum: true,
                counters: Default::default(),
                now: unix_secs(std::time::SystemTime::now()),
            }),
            control::Request::Ip => control::Response::Ip(IpReport {
                this_node: 0,
                addresses: Vec::new(),
                now: unix_secs(std::time::SystemTime::now()),
            }),
            control::Request::Connections => {
                control::Response::Error { message: "answered by the control socket itself".to_string() }
            }
            control::Request::Disable | control::Request::Enable | control::Request::IpMove { .. } => {
                control::Response::Error {
                    message: "this node is not in a cluster ([cluster] is not configured)".to_string(),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[tokio::test]
    async fn the_control_socket_and_state_dir_are_private_whatever_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[volume]\nname = \"smb\"\nbackend = \"local\"\npath = \"{d}/data\"\n[node]\ncontrol_socket = \"{d}/run/ctl.sock\"\nstate_dir = \"{d}/state\"\n",
            d = dir.path().display()
        );
        let cfg = crate::config::parse(&text, "t", dir.path()).unwrap();
        // SAFETY: umask only changes the file creation mask; restored below.
        let old = unsafe { libc::umask(0) };
        let prepared = prepare_dirs(&cfg);
        let bound = bind_control(&cfg.node.control_socket);
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        prepared.unwrap();
        let _listener = bound.unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&cfg.node.state_dir), 0o700);
        assert_eq!(mode(&cfg.node.control_socket), 0o600);
    }
}
