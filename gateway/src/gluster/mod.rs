//! The GlusterFS backend: how nasgw reaches a `[volume] backend = "gluster"` volume, and how it
//! tells HA whether the volume is usable.
//!
//! - `access = "fuse"` ([`mount`]): nasgw mounts the volume itself (managed FUSE mount) and the
//!   POSIX backend serves the mount point. File identities come from the volume's GFIDs (virtual
//!   xattr `glusterfs.gfid.string`; `/.gfid/<uuid>` through the aux-gfid mount), the same on
//!   every node.
//! - `access = "gfapi"` ([`gfapi`]): nasgw talks to the bricks through libgfapi, loaded at run
//!   time; objects are GFID handles (`glfs_h_*`).
//! - Either way a [`health::HealthMonitor`] probes the volume with a timeout on its own thread and
//!   publishes [`health::VolumeHealth`] on a watch ([`GlusterService::health`]).

pub mod attr_cache;
pub mod coherence;
pub mod data_cache;
pub mod fuse_backend;
pub mod gfapi;
pub mod gfapi_backend;
pub mod health;
pub mod mount;
pub mod name_cache;
pub mod recovery_lock;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, GlusterAccess};
use health::{HealthMonitor, HealthWatch, ProbeTiming, VolumeHealth};
use mount::{ManagedMount, MountSpec, MountState};

/// nasgw's reserved directory at the volume root (health probe files).
pub const RESERVED_DIR: &str = ".nasgw";

/// How this node reaches the volume.
pub enum VolumeAccess {
    /// The managed FUSE mount.
    Fuse(Arc<ManagedMount>),
    /// A libgfapi connection, set once connected (the connection is made in the background).
    Gfapi(Arc<Mutex<Option<gfapi::Volume>>>),
}

/// A running GlusterFS backend: the mount or connection, and its health.
pub struct GlusterService {
    /// How the volume is reached.
    pub access: VolumeAccess,
    health: HealthWatch,
    lapses: health::Lapses,
    stop: CancellationToken,
    /// Whether attributes may be cached over libgfapi (upcalls proved), and the cache's counters.
    coherence: Arc<coherence::Coherence>,
    /// What the gfapi backend may keep (`[volume] data_cache_mib`, `open_files`).
    limits: gfapi_backend::Limits,
}

impl GlusterService {
    /// Starts the backend for `cfg` (which must be `backend = "gluster"`): mounts the volume or
    /// connects to it in the background, and starts the health probe. Returns at once; the
    /// health watch says when the volume is usable. Must run inside the tokio runtime.
    pub fn start(cfg: &Config) -> Result<GlusterService> {
        let v = &cfg.volume;
        let volume = v.gluster_volume.clone().unwrap_or_else(|| v.name.clone());
        let timing = ProbeTiming {
            interval: Duration::from_millis(v.health_interval_ms),
            timeout: Duration::from_millis(v.health_timeout_ms),
        };
        // This node's own volfile server first, and its probe file named after this node: the
        // same file on every node lists the same servers, and two nodes writing one probe file
        // would hide each other's failures.
        let local = ha::self_id::local_addresses().unwrap_or_default();
        let node = NodeName::of(&v.servers, cfg.cluster.as_ref().map_or(&[][..], |c| &c.nodes), &local, &host_name());
        let servers = node.servers_own_first(&v.servers);
        let tag = format!("health-{}", node.0);
        let (monitor, health) = HealthMonitor::new();
        let lapses = monitor.lapses();
        let stop = CancellationToken::new();
        let coherence = coherence::Coherence::new();
        let access = match v.access {
            GlusterAccess::Fuse => {
                let spec = MountSpec {
                    volume,
                    servers: servers.clone(),
                    mount_point: v.mount_point.clone().unwrap_or_else(|| cfg.node.state_dir.join("mnt")),
                    log_file: cfg.node.state_dir.join("glusterfs-fuse.log"),
                    mount_timeout: Duration::from_secs(30),
                };
                let mount = ManagedMount::start(spec, monitor.publisher())?;
                let mut probe = fuse_probe(mount.clone(), tag);
                monitor.run(move || probe().map_err(|h| classify(h, &servers)), timing, stop.clone());
                VolumeAccess::Fuse(mount)
            }
            GlusterAccess::Gfapi => {
                gfapi::library()?;
                let slot = Arc::new(Mutex::new(None));
                let log = cfg.node.state_dir.join("gfapi.log");
                let prover = ProverSpec {
                    file: format!("upcall-{}", node.0),
                    witness_log: cfg.node.state_dir.join("gfapi-witness.log"),
                    coherence: coherence.clone(),
                    stop: stop.clone(),
                };
                let mut probe = gfapi_probe(slot.clone(), volume, servers.clone(), log, tag, prover);
                monitor.run(move || probe().map_err(|h| classify(h, &servers)), timing, stop.clone());
                VolumeAccess::Gfapi(slot)
            }
        };
        let limits =
            gfapi_backend::Limits { data_bytes: v.data_cache_mib.saturating_mul(1 << 20), open_files: v.open_files };
        Ok(GlusterService { access, health, lapses, stop, coherence, limits })
    }

    /// The attribute cache's counters (gfapi access; all zero over FUSE).
    pub fn cache_stats(&self) -> coherence::CacheStats {
        self.coherence.stats()
    }

    /// The volume's health, for HA and `nasgw status`.
    pub fn health(&self) -> HealthWatch {
        self.health.clone()
    }

    /// The volume's lapses from healthy (counted even when they are over by the next look).
    pub fn lapses(&self) -> health::Lapses {
        self.lapses.clone()
    }

    /// The mount point the POSIX backend serves (`access = "fuse"`).
    pub fn mount_path(&self) -> Option<&Path> {
        match &self.access {
            VolumeAccess::Fuse(m) => Some(m.path()),
            VolumeAccess::Gfapi(_) => None,
        }
    }

    /// The libgfapi connection, once made (`access = "gfapi"`).
    pub fn gfapi_volume(&self) -> Option<gfapi::Volume> {
        match &self.access {
            VolumeAccess::Gfapi(slot) => slot.lock().expect("lock").clone(),
            VolumeAccess::Fuse(_) => None,
        }
    }

    /// The backend both protocols serve: the POSIX backend over the managed mount (GFID
    /// identities, reopened after a remount) or the gfapi backend.
    pub fn backend(&self, volume_name: &str) -> Arc<dyn crate::vfs::Backend> {
        match &self.access {
            VolumeAccess::Fuse(m) => {
                Arc::new(fuse_backend::FuseBackend::new(m.clone(), volume_name, self.limits.open_files))
            }
            VolumeAccess::Gfapi(slot) => Arc::new(gfapi_backend::GfapiBackend::new(
                slot.clone(),
                volume_name,
                self.coherence.clone(),
                self.limits,
            )),
        }
    }

    /// Stops probing, then unmounts (FUSE) or disconnects (gfapi). Call after in-flight
    /// requests have finished.
    pub async fn shutdown(&self) {
        self.stop.cancel();
        match &self.access {
            VolumeAccess::Fuse(m) => m.shutdown().await,
            VolumeAccess::Gfapi(slot) => {
                let vol = slot.lock().expect("lock").take();
                // glfs_fini may block on an unreachable volume: never on an executor thread.
                let _ = tokio::task::spawn_blocking(move || drop(vol)).await;
            }
        }
    }
}

/// FUSE probe: the volume is the top mount, its root answers, a small write reaches it.
fn fuse_probe(mount: Arc<ManagedMount>, tag: String) -> impl FnMut() -> Result<(), VolumeHealth> + Send {
    let mut full = ha::health::FullVolume::default();
    move || {
        match mount.state() {
            MountState::Mounted { .. } => {}
            MountState::Failed { reason } => return Err(VolumeHealth::Unreachable { reason }),
            MountState::Mounting if mount.mount_count() > 0 => {
                return Err(VolumeHealth::Remounting { reason: "the FUSE client is being restarted".into() })
            }
            MountState::Mounting | MountState::Stopped => {
                return Err(VolumeHealth::Unreachable { reason: "the volume is not mounted".into() })
            }
        }
        let root = mount.path();
        if !mount::top_mount_is_glusterfs(root) {
            return Err(VolumeHealth::Unreachable { reason: "the volume is not mounted".into() });
        }
        let err = |e: std::io::Error| VolumeHealth::from_probe_error(&e);
        std::fs::metadata(root).map_err(err)?;
        let dir = root.join(RESERVED_DIR);
        if let Err(e) = std::fs::create_dir(&dir) {
            if e.kind() != std::io::ErrorKind::AlreadyExists {
                return Err(VolumeHealth::from_write_error(&e));
            }
        }
        let written = std::fs::File::create(dir.join(&tag)).and_then(|mut f| {
            f.write_all(&probe_stamp())?;
            f.sync_data()
        });
        full.check(written).map_err(|e| VolumeHealth::from_write_error(&e))
    }
}

/// What the gfapi probe needs to start the coherence prover once connected.
struct ProverSpec {
    file: String,
    witness_log: PathBuf,
    coherence: Arc<coherence::Coherence>,
    stop: CancellationToken,
}

/// gfapi probe: connect if not yet connected (then start proving upcalls: `coherence.rs`), then
/// the same stat and small write by handles.
fn gfapi_probe(
    slot: Arc<Mutex<Option<gfapi::Volume>>>,
    volume: String,
    servers: Vec<String>,
    log: PathBuf,
    tag: String,
    prover: ProverSpec,
) -> impl FnMut() -> Result<(), VolumeHealth> + Send {
    let mut full = ha::health::FullVolume::default();
    move || {
        let err = |e: std::io::Error| VolumeHealth::from_probe_error(&e);
        let existing = slot.lock().expect("lock").clone();
        let vol = match existing {
            Some(v) => v,
            None => {
                let v = gfapi::Volume::connect(&volume, &servers, &log).map_err(|e| VolumeHealth::Unreachable {
                    reason: format!("cannot connect to volume {volume} through {servers:?}: {e}"),
                })?;
                tracing::info!(%volume, ?servers, "connected to the volume through libgfapi");
                *slot.lock().expect("lock") = Some(v.clone());
                coherence::Prover {
                    vol: v.clone(),
                    volume: volume.clone(),
                    servers: servers.clone(),
                    log: prover.witness_log.clone(),
                    file: prover.file.clone(),
                    coherence: prover.coherence.clone(),
                    stop: prover.stop.clone(),
                }
                .start();
                v
            }
        };
        gfapi::Credentials::root().apply().map_err(err)?;
        let (root, _) = vol.root().map_err(err)?;
        let dir = match vol.lookup(&root, RESERVED_DIR.as_ref()) {
            Ok((d, _)) => d,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => match vol.mkdir(&root, RESERVED_DIR.as_ref(), 0o755) {
                Ok((d, _)) => d,
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                    vol.lookup(&root, RESERVED_DIR.as_ref()).map_err(err)?.0
                }
                Err(e) => return Err(err(e)),
            },
            Err(e) => return Err(err(e)),
        };
        let written = vol.create(&dir, tag.as_ref(), libc::O_WRONLY | libc::O_TRUNC, 0o644).and_then(|(obj, _)| {
            let f = vol.open(&obj, libc::O_WRONLY)?;
            f.write_all_at(&probe_stamp(), 0)?;
            f.fsync()
        });
        full.check(written).map_err(|e| VolumeHealth::from_write_error(&e))
    }
}

/// Refines an `Unreachable` caused by ENOTCONN: when volfile servers still answer, the volume
/// is up but has too few bricks for quorum (GlusterFS 10 replicas below quorum answer ENOTCONN
/// to reads and writes alike); when none answers, the node is cut off.
fn classify(h: VolumeHealth, servers: &[String]) -> VolumeHealth {
    let VolumeHealth::Unreachable { reason } = &h else { return h };
    if !reason.contains("os error 107") {
        return h;
    }
    let answering: Vec<&String> = servers
        .iter()
        .filter(|s| {
            use std::net::ToSocketAddrs;
            (s.as_str(), 24007u16).to_socket_addrs().ok().and_then(|mut a| a.next()).is_some_and(|a| {
                std::net::TcpStream::connect_timeout(&a, std::time::Duration::from_millis(500)).is_ok()
            })
        })
        .collect();
    if answering.is_empty() {
        h
    } else {
        VolumeHealth::QuorumLost {
            reason: format!("servers {answering:?} answer but the volume refuses I/O: {reason}"),
        }
    }
}

/// What this node calls itself on the volume: the volfile server (or `[cluster]` node
/// address) that is one of its own addresses, else its host name. It names the node's health
/// probe file, so every node writes its own even when they all share one config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeName(pub String);

impl NodeName {
    /// Pure: picks the name from the volfile servers, the cluster's node addresses, this
    /// host's addresses and its host name (the last resort, when no listed address is local).
    pub fn of(servers: &[String], nodes: &[std::net::IpAddr], local: &[std::net::IpAddr], hostname: &str) -> NodeName {
        let is_local = |s: &str| s.parse::<std::net::IpAddr>().is_ok_and(|ip| local.contains(&ip));
        if let Some(s) = servers.iter().find(|s| is_local(s) || (!hostname.is_empty() && s.as_str() == hostname)) {
            return NodeName(s.clone());
        }
        if let Some(n) = nodes.iter().find(|n| local.contains(n)) {
            return NodeName(n.to_string());
        }
        NodeName(if hostname.is_empty() { "node".into() } else { hostname.to_string() })
    }

    /// `servers` with this node's own server first (the mount asks it for the volfile; the
    /// others are backups), the rest in their order.
    pub fn servers_own_first(&self, servers: &[String]) -> Vec<String> {
        let mut out: Vec<String> = servers.iter().filter(|s| **s == self.0).cloned().collect();
        out.extend(servers.iter().filter(|s| **s != self.0).cloned());
        out
    }
}

/// This host's name (`/proc/sys/kernel/hostname`); empty when unreadable.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_default()
}

fn probe_stamp() -> Vec<u8> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    format!("{}\n", now.as_millis()).into_bytes()
}

#[cfg(test)]
mod tests {
    use super::NodeName;
    use std::net::IpAddr;

    fn ips(v: &[&str]) -> Vec<IpAddr> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn every_node_of_one_config_names_its_own_probe_file() {
        let servers: Vec<String> = ["198.18.0.1", "198.18.0.2", "198.18.0.3"].map(String::from).to_vec();
        let nodes = ips(&["198.18.0.1", "198.18.0.2", "198.18.0.3"]);
        let names: Vec<NodeName> = ["198.18.0.1", "198.18.0.2", "198.18.0.3"]
            .iter()
            .map(|me| NodeName::of(&servers, &nodes, &ips(&["127.0.0.1", me, "198.18.0.200"]), "nasgw"))
            .collect();
        assert_eq!(names[1], NodeName("198.18.0.2".into()));
        assert!(names[0] != names[1] && names[1] != names[2] && names[0] != names[2], "{names:?}");
        assert_eq!(names[2].servers_own_first(&servers), ["198.18.0.3", "198.18.0.1", "198.18.0.2"]);
    }

    #[test]
    fn a_node_outside_the_server_list_uses_its_cluster_address_or_host_name() {
        let servers = vec!["gluster1".to_string(), "10.0.0.9".to_string()];
        // A server named by this host's name.
        assert_eq!(NodeName::of(&servers, &[], &ips(&["127.0.0.1"]), "gluster1").0, "gluster1");
        // A client-only node of the cluster.
        let nodes = ips(&["10.0.0.1", "10.0.0.2"]);
        let me = NodeName::of(&servers, &nodes, &ips(&["10.0.0.2"]), "n2");
        assert_eq!(me.0, "10.0.0.2");
        assert_eq!(me.servers_own_first(&servers), servers);
        assert_eq!(NodeName::of(&servers, &[], &[], "n7").0, "n7");
        assert_eq!(NodeName::of(&servers, &[], &[], "").0, "node");
    }
}
