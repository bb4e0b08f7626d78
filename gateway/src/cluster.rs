//! Wiring the HA module into `nasgw serve`: when `[cluster]` is configured, start the HA node
//! (membership, recovery lock, public addresses, tickles), feed it this node's connection table
//! and listener health, and answer the control socket's `status`, `ip`, `disable`, `enable` and
//! `ip move` from it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ha::connections::ConnectionTable;
use ha::health::ListenerHealth;
use ha::machine::{Event, Timings};
use ha::recovery_lock::{ClusterLock, RecoveryLock};
use ha::runtime::{HaHandle, HaSettings, SharedVolume};
use ha::system::PublicAddress;
use ha::wire::message::ClusterKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::config::{ClusterConfig, Config};
use crate::control::{Handler, Request, Response};
use crate::daemon::Lifecycle;
use crate::gluster::{GlusterService, VolumeAccess};
use crate::locks::machine::HaInput;
use crate::locks::mesh::MeshConfig;
use crate::locks::LockService;

/// Resolves `[cluster]` into the HA node's settings: finds this node, reads the secret.
pub fn settings(cluster: &ClusterConfig) -> Result<HaSettings> {
    let secret = std::fs::read(&cluster.secret_file).with_context(|| {
        format!(
            "cannot read [cluster] secret_file {}: create it with the same content on every node, e.g. `head -c 32 /dev/urandom | base64 > FILE`",
            cluster.secret_file.display()
        )
    })?;
    let key = ClusterKey::from_secret(&secret)
        .map_err(|e| anyhow::anyhow!("[cluster] secret_file {}: {e}", cluster.secret_file.display()))?;
    let local = ha::self_id::local_addresses().context("cannot list this host's addresses")?;
    let Some(me) = ha::self_id::find_self(&cluster.nodes, &local) else {
        bail!(
            "none of [cluster] nodes {:?} is an address of this host; add this node's cluster address to the list",
            cluster.nodes
        );
    };
    let ms = Duration::from_millis;
    Ok(HaSettings {
        me,
        nodes: cluster.nodes.clone(),
        port: cluster.port,
        key,
        public: cluster
            .public_addresses
            .iter()
            .map(|p| PublicAddress {
                address: p.address.addr(),
                prefix: p.address.prefix_len(),
                interface: p.interface.clone(),
            })
            .collect(),
        failback: cluster.failback,
        timings: Timings {
            heartbeat: ms(cluster.heartbeat_interval_ms),
            dead: ms(cluster.dead_interval_ms),
            lock_check: ms(cluster.lock_check_interval_ms),
        },
        health_interval: ms(cluster.health_interval_ms),
        health_timeout: ms(cluster.health_timeout_ms),
        notify_script: cluster.notify_script.clone(),
        version: crate::VERSION.to_string(),
    })
}

/// How this node's HA reaches the shared volume: on a local backend (a directory every node
/// mounts) an fcntl lock and a stat + write probe there; on GlusterFS the lock through the managed
/// FUSE mount (fcntl, forwarded to the bricks' locks translator) or through libgfapi, and the
/// backend's own health monitor (mount state, quorum, hung probes) as the probe.
fn shared_volume(
    cfg: &Config,
    cluster: &ClusterConfig,
    me: u32,
    gluster: Option<&GlusterService>,
) -> Result<SharedVolume> {
    let rel = cluster.recovery_lock.trim_start_matches('/');
    let Some(g) = gluster else {
        let root = cfg.volume.path.clone().context("a local volume has a path")?;
        let mut shared =
            SharedVolume::directory(root.clone(), root.join(rel), me, Duration::from_millis(cluster.dead_interval_ms));
        // The probe's latency and verdict are the volume metrics of a local backend.
        let mut probe = shared.probe;
        shared.probe = Box::new(move || {
            let start = std::time::Instant::now();
            let r = probe();
            crate::metrics::VOLUME.record(start.elapsed(), r.is_ok());
            r
        });
        return Ok(shared);
    };
    let lock: Box<dyn ClusterLock> = match &g.access {
        VolumeAccess::Fuse(m) => Box::new(RecoveryLock::new(m.path().join(rel))),
        VolumeAccess::Gfapi(slot) => Box::new(crate::gluster::recovery_lock::GfapiLock::new(slot.clone(), rel)),
    };
    let (health, lapses) = (g.health(), g.lapses());
    let mut seen = lapses.get().0;
    let probe = Box::new(move || {
        // A lapse since the last look counts even if it is over (a FUSE client that died and
        // was mounted again in between): the node's open files on the old mount are gone.
        let (count, reason) = lapses.get();
        if count != seen {
            seen = count;
            return Err(reason);
        }
        let h = health.borrow().clone();
        if h.is_healthy() {
            Ok(())
        } else {
            Err(h.to_string())
        }
    });
    // A GlusterFS volume stalls every call for up to `network.ping-timeout` when a brick goes
    // away: a lock call may take as long as the volume's own health probe is allowed to. Nobody
    // else tries the lock while this node's heartbeats flow, so patience here is safe.
    let lock_timeout = Duration::from_millis(cfg.volume.health_timeout_ms);
    Ok(SharedVolume { lock, probe, lock_timeout })
}

/// How long a break waits for the client's acknowledgement (MS-SMB2's 35 s, as Windows and Samba).
const BREAK_TIMEOUT: Duration = Duration::from_secs(35);

/// How long a node may stay out of sync with the cluster's file-sharing state (not licensed
/// although HA sees quorum) before it reports itself unhealthy so its addresses move.
const OUT_OF_SYNC_UNHEALTHY: Duration = crate::cut_off::EXCLUDED_AFTER;

/// Starts this node's part of the cluster-wide file-sharing state: its machine and the
/// authenticated mesh to the other nodes (TCP on `[cluster] port`). HA's verdict is fed to it
/// by [`start`].
pub async fn lock_service(cluster: &ClusterConfig, life: &Lifecycle) -> Result<Arc<LockService>> {
    let s = settings(cluster)?;
    let incarnation =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos() as u64;
    let cfg = crate::locks::machine::Config {
        me: s.me as u16,
        nodes: s.nodes.len() as u16,
        incarnation,
        heartbeat: s.timings.heartbeat,
        dead: s.timings.dead,
        // A follower stops acting when HA's hold limit runs out: the same instant it drops its
        // addresses, before anyone declares it dead.
        license: s.timings.hold_limit(),
        break_timeout: BREAK_TIMEOUT,
        request_timeout: Duration::from_secs(10),
        max_idle_delegations: 65_536,
    };
    let outbox = crate::locks::outbox::Outbox::new(cfg.me, cfg.nodes);
    let svc = LockService::clustered(cfg, outbox.clone());
    let mesh = MeshConfig {
        me: s.me as u16,
        nodes: s.nodes.clone(),
        port: s.port,
        key: s.key.derive(b"lock-mesh"),
        incarnation,
        dead: s.timings.dead,
    };
    crate::locks::mesh::start(mesh, svc.clone(), outbox, life.stop.clone()).await?;
    Ok(svc)
}

/// Reports the node unhealthy (so HA moves its addresses) while it has been out of sync with
/// the cluster's file-sharing state for [`OUT_OF_SYNC_UNHEALTHY`] although HA sees quorum: its
/// clients could do nothing that needs the state (opens, locks, I/O checks) meanwhile. Tells the
/// lock service when the node is cut off (`crate::cut_off`), so what would still reach the
/// volume without asking the cluster (the node's own mount) is stopped.
async fn watch_sync(locks: Arc<LockService>, ha: HaHandle, listeners: ListenerHealth, stop: CancellationToken) {
    const NAME: &str = "file-state";
    let mut licensed = locks.licensed();
    let mut since: Option<std::time::Instant> = None;
    let mut down = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = licensed.changed() => {}
            // HA's view is read, not waited on: often enough to follow its quorum closely.
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
        let view = ha.view();
        let is_licensed = *licensed.borrow();
        let ok = is_licensed || !view.in_quorum;
        since = if ok { None } else { since.or(Some(std::time::Instant::now())) };
        let seen = crate::cut_off::Seen {
            was_licensed: locks.was_licensed(),
            licensed: is_licensed,
            in_quorum: view.in_quorum,
            majority: view.majority,
            excluded_for: since.map_or(Duration::ZERO, |t| t.elapsed()),
        };
        let cut = crate::cut_off::verdict(seen);
        if cut != *locks.cut_off().borrow() {
            match cut {
                Some(why) => tracing::warn!(reason = %why, "this node is cut off from the cluster"),
                None => tracing::info!("this node is no longer cut off from the cluster"),
            }
            locks.set_cut_off(cut);
        }
        let bad = since.is_some_and(|t| t.elapsed() >= OUT_OF_SYNC_UNHEALTHY);
        if bad != down {
            down = bad;
            if bad {
                listeners.down(NAME, "this node is out of sync with the cluster's file-sharing state");
            } else {
                listeners.up(NAME);
            }
        }
    }
}

/// The running HA node, answering the control socket.
pub struct ClusterNode {
    ha: HaHandle,
    public: Vec<std::net::IpAddr>,
    nodes: u32,
}

/// Starts the HA node (and the test echo service when configured) as tasks of `life`.
pub fn start(
    cfg: &Config,
    cluster: &ClusterConfig,
    connections: Arc<ConnectionTable>,
    listeners: ListenerHealth,
    gluster: Option<&GlusterService>,
    locks: Arc<LockService>,
    life: &Lifecycle,
) -> Result<ClusterNode> {
    let mut s = settings(cluster)?;
    let heartbeat = s.timings.heartbeat;
    let volume = shared_volume(cfg, cluster, s.me, gluster)?;
    if gluster.is_some() {
        // The GlusterFS backend probes the volume itself; HA only reads its verdict, cheaply.
        s.health_interval = s.health_interval.min(Duration::from_millis(100));
    }
    tracing::info!(pnn = s.me, node = %s.nodes[s.me as usize], port = s.port, public = s.public.len(), "starting the HA node");
    let public = s.public.iter().map(|p| p.address).collect();
    let nodes = s.nodes.len() as u32;
    let (ha, task) = ha::runtime::start(s, volume, connections.clone(), listeners.clone(), life.stop.clone())?;
    life.tasks.spawn(async move {
        if let Err(e) = task.await {
            tracing::error!(error = %e, "the HA node task failed");
        }
    });
    // The file-sharing state follows HA's leader and quorum.
    let view = ha.clone();
    let verdict = Box::new(move || {
        let v = view.view();
        HaInput { leader: v.status.leader.and_then(|l| u16::try_from(l).ok()), ok: v.in_quorum }
    });
    let tick = (heartbeat / 4).clamp(Duration::from_millis(5), Duration::from_millis(25));
    life.tasks.spawn(locks.clone().run(tick, Some(verdict), life.stop.clone()));
    life.tasks.spawn(watch_sync(locks, ha.clone(), listeners.clone(), life.stop.clone()));
    if let Some(port) = cluster.test_echo_port {
        start_echo(port, connections, listeners, life)?;
    }
    Ok(ClusterNode { ha, public, nodes })
}

/// TEST ONLY (`[cluster] test_echo_port`): echoes bytes back; its connections are registered in
/// the connection table exactly as SMB and NFS connections are, and its listener reports health.
fn start_echo(port: u16, connections: Arc<ConnectionTable>, listeners: ListenerHealth, life: &Lifecycle) -> Result<()> {
    // Both IPv4 and IPv6 public addresses (a dual-stack socket), IPv4 alone where IPv6 is off.
    let any6 = SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port));
    let addr = SocketAddr::from(([0, 0, 0, 0], port));
    let std = std::net::TcpListener::bind(any6)
        .or_else(|_| std::net::TcpListener::bind(addr))
        .with_context(|| format!("cannot bind test echo port {addr}"))?;
    std.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(std)?;
    tracing::warn!(%addr, "TEST ONLY echo service listening ([cluster] test_echo_port)");
    listeners.up("echo");
    let l = life.clone();
    life.tasks.spawn(async move {
        crate::listener::accept_loop("echo", listener, 1024, connections, l.clone(), move |mut s, _| {
            let stop = l.stop.clone();
            async move {
                let mut buf = [0u8; 4096];
                loop {
                    let n = tokio::select! {
                        _ = stop.cancelled() => return,
                        r = s.read(&mut buf) => match r { Ok(0) | Err(_) => return, Ok(n) => n },
                    };
                    if s.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        })
        .await;
    });
    Ok(())
}

impl ClusterNode {
    /// A function listing the public addresses HA assigns to this node now.
    pub fn held_addresses(&self) -> Box<dyn Fn() -> Vec<std::net::IpAddr> + Send + Sync> {
        let ha = self.ha.clone();
        Box::new(move || {
            let ip = ha.view().ip;
            ip.addresses.iter().filter(|a| a.owner == Some(ip.this_node)).map(|a| a.address).collect()
        })
    }
}

impl Handler for ClusterNode {
    fn alive(&self) -> Result<(), String> {
        let idle = self.ha.since_last_turn();
        if idle > std::time::Duration::from_secs(5) {
            return Err(format!("the HA loop has not run for {} ms", idle.as_millis()));
        }
        Ok(())
    }

    fn handle(&self, req: Request) -> Response {
        let ack = |r: Result<(), String>, message: String| match r {
            Ok(()) => Response::Done { message },
            Err(message) => Response::Error { message },
        };
        match req {
            Request::Status => Response::Status(self.ha.view().status),
            Request::Ip => Response::Ip(self.ha.view().ip),
            Request::Disable => {
                ack(self.ha.request(Event::Disable), "node disabled: its public addresses move to other nodes".into())
            }
            Request::Enable => ack(self.ha.request(Event::Enable), "node enabled".into()),
            Request::Connections => Response::Error { message: "answered by the control socket itself".into() },
            Request::IpMove { address, node } => {
                if !self.public.contains(&address) {
                    return Response::Error { message: format!("{address} is not one of [cluster] public_addresses") };
                }
                if node >= self.nodes {
                    return Response::Error {
                        message: format!("there is no node {node}; nodes are numbered 0..{}", self.nodes - 1),
                    };
                }
                ack(
                    self.ha.request(Event::Move { address, node }),
                    format!("asked the leader to move {address} to node {node}"),
                )
            }
        }
    }
}
