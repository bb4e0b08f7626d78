//! The config file's shape: one struct per TOML table, every key documented.
//!
//! Deserialising rejects unknown keys (`deny_unknown_fields`) and wrong types, so a typo never
//! silently falls back to a default. Cross-key rules (a share path inside the volume, a node
//! list that makes sense) live in `validate.rs`. Serialising the same structs prints the effective
//! config for `nasgw check`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// The whole `nasgw.toml`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// What is served: the volume and how nasgw reaches it.
    pub volume: VolumeConfig,
    /// NFSv3 service.
    #[serde(default)]
    pub nfs: NfsConfig,
    /// SMB 2/3 service and its shares.
    #[serde(default)]
    pub smb: SmbConfig,
    /// Cluster membership and public addresses; absent for a single node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterConfig>,
    /// This node's local paths.
    #[serde(default)]
    pub node: NodeConfig,
    /// The appliance's operating system (network, time, login); read by the image's boot
    /// services, ignored by `nasgw serve`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<SystemConfig>,
    /// Prometheus metrics endpoint; absent: no endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsConfig>,
    /// Authoritative DNS for the cluster's name; absent: no DNS service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsConfig>,
    /// The node's own mount of the volume (FUSE); absent: no mount.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuse: Option<FuseConfig>,
}

/// `[fuse]`: nasgw mounts the volume it serves on this node, so local programs (backup agents,
/// rsync, the admin's shell) see the same namespace and rules as SMB and NFS clients.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FuseConfig {
    /// Where the volume is mounted, e.g. `/srv/data`: an existing, empty directory outside
    /// the volume.
    pub mountpoint: PathBuf,
    /// Let reads and writes of regular files go straight to the backing file (kernel FUSE
    /// passthrough, Linux 6.9+) on the local and GlusterFS-FUSE backends; ordinary FUSE I/O
    /// elsewhere.
    #[serde(default = "yes")]
    pub passthrough: bool,
    /// A local operation that waits for the cluster's file-sharing state (an open, close,
    /// truncate, unlink, rename or lock) fails with EIO when the cluster has not answered it
    /// within this many milliseconds (a node cut off from the cluster). The default covers the
    /// lock service's own bound for an open waiting for an SMB client's lease break (10 s +
    /// 35 s).
    #[serde(default = "default_fuse_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_fuse_timeout_ms() -> u64 {
    45_000
}

/// `[metrics]`: the Prometheus endpoint.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// `GET /metrics` is served here, e.g. `0.0.0.0:9431`.
    pub listen: SocketAddr,
}

/// Which public address a DNS answer lists first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DnsOrder {
    /// Rotate the list on every query (round robin).
    RoundRobin,
    /// The address with the fewest client connections first (ties rotate).
    LeastConnections,
}

/// `[dns]`: the cluster answers for its own name (Isilon SmartConnect style). The site DNS
/// delegates `name` to the public addresses; each node answers A/AAAA queries with the public
/// addresses served right now, NS/SOA for the delegation, and nothing without quorum.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    /// The cluster's name, e.g. `data.example.com` (the zone nasgw is authoritative for).
    pub name: String,
    /// UDP and TCP port 53 here; an unspecified address means every public address plus this
    /// node's cluster address (each bound on its own, so answers leave from the queried address).
    #[serde(default = "default_dns_listen")]
    pub listen: SocketAddr,
    /// Seconds resolvers may cache an answer (short, so clients follow moves and load).
    #[serde(default = "default_dns_ttl")]
    pub ttl: u32,
    /// `round_robin` or `least_connections`.
    #[serde(default = "default_dns_order")]
    pub order: DnsOrder,
    /// Mailbox in the SOA record (`hostmaster.NAME` by default), written as a domain name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostmaster: Option<String>,
}

fn default_dns_listen() -> SocketAddr {
    "0.0.0.0:53".parse().expect("literal address")
}

fn default_dns_ttl() -> u32 {
    1
}

fn default_dns_order() -> DnsOrder {
    DnsOrder::RoundRobin
}

/// How the volume is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// A plain local directory (`path`): the embedded default, and HA tests.
    Local,
    /// A GlusterFS volume reached from `servers`.
    Gluster,
}

/// How a GlusterFS volume is accessed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GlusterAccess {
    /// nasgw mounts the volume with the GlusterFS FUSE client and serves the mount.
    Fuse,
    /// nasgw talks to the bricks directly through libgfapi.
    Gfapi,
}

/// `[volume]`: the one namespace both protocols serve.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeConfig {
    /// Name clients use: the NFS export (`data:smb`, `/smb`).
    pub name: String,
    /// `local` or `gluster`.
    pub backend: BackendKind,
    /// Directory served by the `local` backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// GlusterFS volfile servers, this node's own first by convention (`gluster` backend).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<String>,
    /// The GlusterFS volume's own name; defaults to `name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gluster_volume: Option<String>,
    /// `fuse` or `gfapi` (`gluster` backend).
    #[serde(default = "default_access")]
    pub access: GlusterAccess,
    /// Where nasgw mounts the volume (`access = "fuse"`); default `state_dir/mnt`. Private to
    /// nasgw: it sits on a read-only guard, so nothing is written there while unmounted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount_point: Option<PathBuf>,
    /// Milliseconds between two health probes of the volume (a small read and write).
    #[serde(default = "default_volume_health_interval_ms")]
    pub health_interval_ms: u64,
    /// A probe taking longer than this (ms) marks the volume hung and the node unhealthy. Keep it
    /// above the volume's `network.ping-timeout` if brief brick losses must not move addresses.
    #[serde(default = "default_volume_health_timeout_ms")]
    pub health_timeout_ms: u64,
    /// MiB of file data kept in memory over libgfapi (`access = "gfapi"`) while the volume's
    /// upcalls are proved to reach the node; 0 turns the data cache off.
    #[serde(default = "default_data_cache_mib")]
    pub data_cache_mib: u64,
    /// Most files this node keeps open on the GlusterFS volume at once (each is an open file
    /// on its bricks, whose open-files limit every client shares); beyond it the least
    /// recently used is closed, and opened again when used.
    #[serde(default = "default_open_files")]
    pub open_files: usize,
    /// Bricks of a GlusterFS volume the nodes create themselves (`HOST:/PATH`, in GlusterFS's
    /// order: each run of `replica` bricks is one replica set). Empty: the volume exists already.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bricks: Vec<String>,
    /// Copies of each file (`bricks`): 3, or 2 with `arbiter`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<u32>,
    /// With `replica = 2`: every third brick is an arbiter (metadata only), so each replica set
    /// is three bricks and has quorum without a third full copy.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub arbiter: bool,
    /// Extra GlusterFS volume options set when the nodes provision the volume (`bricks`); they
    /// override the failover defaults of the same name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
}

fn default_access() -> GlusterAccess {
    GlusterAccess::Fuse
}

fn default_volume_health_interval_ms() -> u64 {
    2000
}

fn default_volume_health_timeout_ms() -> u64 {
    10_000
}

fn default_data_cache_mib() -> u64 {
    1024
}

fn default_open_files() -> usize {
    crate::vfs::open_files::DEFAULT_OPEN_FILES
}

/// `[nfs]`: NFSv3, MOUNT and (optionally) the portmapper.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NfsConfig {
    /// Serve NFS at all.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// NFS and MOUNT listen here (one port serves both).
    #[serde(default = "default_nfs_listen")]
    pub listen: SocketAddr,
    /// Portmapper (rpcbind v2) answers GETPORT/DUMP here for stock clients (`0.0.0.0:111`
    /// needs root and no other portmapper on the host); off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub portmap_listen: Option<SocketAddr>,
    /// Client networks allowed to use the export; others are refused.
    #[serde(default = "default_nfs_clients")]
    pub clients: Vec<IpNet>,
    /// Refuse every change (NFS3ERR_ROFS).
    #[serde(default)]
    pub read_only: bool,
    /// Map a client's uid 0 to `anon_uid`/`anon_gid` (NFS `root_squash`).
    #[serde(default = "yes")]
    pub root_squash: bool,
    /// Identity of squashed root and AUTH_NONE callers.
    #[serde(default = "default_anon_id")]
    pub anon_uid: u32,
    /// Group of squashed root and AUTH_NONE callers.
    #[serde(default = "default_anon_id")]
    pub anon_gid: u32,
    /// Accept AUTH_NONE calls (as the anonymous identity).
    #[serde(default)]
    pub allow_auth_none: bool,
    /// Most simultaneous client connections; more wait in the kernel's backlog.
    #[serde(default = "default_nfs_max_connections")]
    pub max_connections: usize,
    /// NLM grace period after a restart or takeover of an address whose clients held locks:
    /// only reclaims are granted meanwhile.
    #[serde(default = "default_nfs_grace_period_ms")]
    pub grace_period_ms: u64,
    /// READ replies send the file's page-cache pages by reference (`splice`/`sendfile`), as
    /// the kernel's nfsd does; `false` copies every reply's data first (more CPU), so a READ
    /// racing a truncate is old data or short, never the zeros the truncate left in the pages.
    #[serde(default = "yes")]
    pub zero_copy_reads: bool,
}

impl Default for NfsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: default_nfs_listen(),
            portmap_listen: None,
            clients: default_nfs_clients(),
            read_only: false,
            root_squash: true,
            anon_uid: default_anon_id(),
            anon_gid: default_anon_id(),
            allow_auth_none: false,
            max_connections: default_nfs_max_connections(),
            grace_period_ms: default_nfs_grace_period_ms(),
            zero_copy_reads: true,
        }
    }
}

fn default_nfs_grace_period_ms() -> u64 {
    90_000
}

fn default_nfs_clients() -> Vec<IpNet> {
    vec!["0.0.0.0/0".parse().expect("literal network"), "::/0".parse().expect("literal network")]
}

fn default_anon_id() -> u32 {
    65534
}

fn default_nfs_max_connections() -> usize {
    1024
}

fn default_nfs_listen() -> SocketAddr {
    "0.0.0.0:2049".parse().expect("literal address")
}

/// `[smb]`: SMB 2/3 and its shares.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SmbConfig {
    /// Serve SMB at all.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// SMB listens here (`445` for stock clients).
    #[serde(default = "default_smb_listen")]
    pub listen: SocketAddr,
    /// NetBIOS-free server name clients see; defaults to the host name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// Shares (`[[smb.share]]`).
    #[serde(default, rename = "share")]
    pub shares: Vec<ShareConfig>,
    /// Refuse unsigned requests from every authenticated session (guests cannot sign, so they
    /// are refused when this is set).
    #[serde(default)]
    pub require_signing: bool,
    /// SMB 3 encryption of every session (`off`, `allowed`, `desired`, `required`); a share's
    /// own `encryption` can ask for more on that share.
    #[serde(default)]
    pub encryption: SmbEncryption,
    /// Users who log on with a password (`[[smb.user]]`, written by `nasgw passwd USER`).
    #[serde(default, rename = "user", skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<SmbUser>,
    /// Most simultaneous client connections; more wait in the kernel's backlog.
    #[serde(default = "default_smb_max_connections")]
    pub max_connections: usize,
    /// Multichannel on SMB 3.x: the MULTI_CHANNEL capability, this node's interfaces in
    /// FSCTL_QUERY_NETWORK_INTERFACE_INFO, and session binding (a client's further
    /// connections to this node become channels of its session).
    #[serde(default)]
    pub multichannel: bool,
}

impl Default for SmbConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: default_smb_listen(),
            server_name: None,
            shares: Vec::new(),
            require_signing: false,
            encryption: SmbEncryption::default(),
            users: Vec::new(),
            max_connections: default_smb_max_connections(),
            multichannel: false,
        }
    }
}

/// Default of `[smb] max_connections`: every Windows desktop of a large office with a few
/// connections each, at a few KiB of server memory per idle connection.
fn default_smb_max_connections() -> usize {
    4096
}

/// How much SMB 3 encryption (AES-CCM/GCM) `[smb] encryption` or a share's `encryption` asks
/// for. Guest and anonymous sessions have no keys and can never encrypt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SmbEncryption {
    /// Never offered: NEGOTIATE names no cipher, an encrypted message closes the connection.
    /// (On a share: the same as `allowed`.)
    Off,
    /// Offered; a client that asks for it (`mount -o seal`, smbclient
    /// `--client-protection=encrypt`, Windows "encrypt data") gets it, nobody is forced.
    #[default]
    Allowed,
    /// Every session (on a share: every tree connect of it) whose client can encrypt is told
    /// to, and its traffic is encrypted; clients that cannot (SMB 2.x, guests) still work.
    Desired,
    /// As `desired`, and sessions (tree connects) that cannot encrypt are refused, as is any
    /// unencrypted request on them.
    Required,
}

impl SmbEncryption {
    /// The config word.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Allowed => "allowed",
            Self::Desired => "desired",
            Self::Required => "required",
        }
    }
}

/// One `[[smb.user]]`: an SMB account. Only the NT hash is stored, never the password.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SmbUser {
    /// Account name clients log on with (case-insensitive).
    pub name: String,
    /// MD4 of the UTF-16LE password, 32 hex digits (`nasgw passwd NAME` writes it).
    pub nt_hash: String,
    /// Unix user file access runs as when the share forces none; defaults to `name`, then
    /// `nobody` when no such local user exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unix_user: Option<String>,
}

fn default_smb_listen() -> SocketAddr {
    "0.0.0.0:445".parse().expect("literal address")
}

/// One `[[smb.share]]`, the seed's `[pub]` section.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ShareConfig {
    /// Share name (`\\data\pub`).
    pub name: String,
    /// Folder inside the volume; `/` is the volume root.
    #[serde(default = "root_path")]
    pub path: String,
    /// Free text shown by `smbclient -L`.
    #[serde(default)]
    pub comment: String,
    /// Listed by share enumeration.
    #[serde(default = "yes")]
    pub browseable: bool,
    /// Clients may write.
    #[serde(default)]
    pub writable: bool,
    /// Guests (no password) may connect.
    #[serde(default)]
    pub guest_ok: bool,
    /// Every session is mapped to the guest (requires `guest_ok`).
    #[serde(default)]
    pub guest_only: bool,
    /// All file access runs as this user (name or numeric uid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force_user: Option<String>,
    /// All file access runs with this group (name or numeric gid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force_group: Option<String>,
    /// Names match exactly (as on the volume) instead of ignoring case as Windows does.
    #[serde(default)]
    pub case_sensitive: bool,
    /// SMB 3 encryption on this share (`off`, `allowed`, `desired`, `required`); absent: what
    /// `[smb] encryption` says. `desired` and `required` need `[smb] encryption` not `off`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<SmbEncryption>,
    /// A continuously available share: clients may ask for persistent handles, which the
    /// cluster keeps when their node dies, so the client reopens them (with their byte-range
    /// locks and share mode) on whichever node now holds the address. Writes to such opens
    /// are written through.
    #[serde(default)]
    pub continuously_available: bool,
}

fn root_path() -> String {
    "/".to_string()
}

/// One public (floating) address: the seed's `public_addresses` line.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PublicAddress {
    /// Address with prefix length, e.g. `192.168.122.200/24`.
    pub address: IpNet,
    /// Interface the address is added to on whichever node holds it.
    pub interface: String,
}

/// `[cluster]`: what CTDB's nodes, public_addresses and sysconfig said.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Every node's private cluster address, the same list on every node.
    pub nodes: Vec<IpAddr>,
    /// Addresses that float between healthy nodes.
    #[serde(default)]
    pub public_addresses: Vec<PublicAddress>,
    /// Lock file inside the volume that only the leader holds (split-brain guard).
    pub recovery_lock: String,
    /// Program run on every node state change; optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify_script: Option<PathBuf>,
    /// File holding the shared cluster secret (HMAC key for heartbeats).
    pub secret_file: PathBuf,
    /// TCP/UDP port nodes talk on (CTDB used 4379).
    #[serde(default = "default_cluster_port")]
    pub port: u16,
    /// Move addresses back to a node when it returns healthy.
    #[serde(default = "yes")]
    pub failback: bool,
    /// How often each node announces itself to the others (milliseconds).
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_interval_ms: u64,
    /// A node not heard from for this long is DISCONNECTED and its addresses move (milliseconds).
    /// A cut-off node drops its own addresses before this, so they are never held twice.
    #[serde(default = "default_dead_ms")]
    pub dead_interval_ms: u64,
    /// How often the leader re-checks that it still holds the recovery lock (milliseconds).
    #[serde(default = "default_lock_check_ms")]
    pub lock_check_interval_ms: u64,
    /// How often the volume is probed (stat + small write) for health (milliseconds).
    #[serde(default = "default_health_interval_ms")]
    pub health_interval_ms: u64,
    /// A volume probe slower than this makes the node UNHEALTHY (milliseconds).
    #[serde(default = "default_health_timeout_ms")]
    pub health_timeout_ms: u64,
    /// TEST ONLY: a TCP echo service on this port (all addresses), registered in the connection
    /// table like SMB and NFS connections, so HA tests can hold a real client connection to a
    /// public address across a failover. Leave unset in production.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_echo_port: Option<u16>,
}

fn default_cluster_port() -> u16 {
    4379
}

fn default_heartbeat_ms() -> u64 {
    100
}

fn default_dead_ms() -> u64 {
    1000
}

fn default_lock_check_ms() -> u64 {
    500
}

fn default_health_interval_ms() -> u64 {
    500
}

fn default_health_timeout_ms() -> u64 {
    2000
}

/// `[node]`: paths local to this node.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Unix socket `nasgw status` and `nasgw ip` talk to.
    #[serde(default = "default_control_socket")]
    pub control_socket: PathBuf,
    /// Private state: mount points, connection lists, write verifier.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self { control_socket: default_control_socket(), state_dir: default_state_dir() }
    }
}

fn default_control_socket() -> PathBuf {
    PathBuf::from("/run/nasgw/control.sock")
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/nasgw")
}

fn yes() -> bool {
    true
}

/// `[system]`: the appliance image's operating system, applied at boot by `nasgw-appliance`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SystemConfig {
    /// Static addresses by network card: a node whose card has one of these MACs takes that
    /// address; a node with none of them asks DHCP on every card.
    #[serde(default, rename = "host", skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<SystemHost>,
    /// Default gateway for static addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// DNS servers for static addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<IpAddr>,
    /// NTP servers (names or addresses); empty: DHCP's, else Debian's pool.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ntp: Vec<String>,
    /// Public keys allowed to log in as root over SSH (no password login exists).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh_keys: Vec<String>,
}

/// One `[[system.host]]`: which card of which machine gets which address.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SystemHost {
    /// The network card's MAC address, e.g. `52:54:00:12:34:01`.
    pub mac: String,
    /// Its address with prefix length, e.g. `192.168.122.100/24`.
    pub address: IpNet,
    /// Host name; defaults to `nasgw-N` from the address's place in `[cluster] nodes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
}
