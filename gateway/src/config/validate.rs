//! Rules that span several keys or need more than a type: share paths inside the volume,
//! unique names, a backend with what it needs. Pure: config in, problems out.

use std::collections::HashSet;
use std::net::IpAddr;

use super::locate::KeyPath;
use super::model::{BackendKind, Config, GlusterAccess, SmbEncryption};

/// A rule broken at `path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where (the value, or the table missing a key).
    pub path: KeyPath,
    /// What is wrong.
    pub message: String,
    /// What would be right.
    pub hint: String,
}

fn problem(path: impl AsRef<str>, message: impl Into<String>, hint: impl Into<String>) -> Problem {
    Problem { path: KeyPath::parse(path.as_ref()), message: message.into(), hint: hint.into() }
}

/// Normalises a path inside the volume to `/a/b` form (`/` is the root). Fails when the path
/// climbs above the root with `..`, or holds a NUL.
pub fn inside_volume(path: &str) -> Result<String, String> {
    if path.contains('\0') {
        return Err("the path contains a NUL byte".into());
    }
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(format!("`{path}` climbs above the volume root"));
                }
            }
            p => parts.push(p),
        }
    }
    Ok(format!("/{}", parts.join("/")))
}

/// Checks every cross-key rule; an empty list means the config is valid.
pub fn validate(cfg: &Config) -> Vec<Problem> {
    let mut out = Vec::new();
    volume(cfg, &mut out);
    listeners(cfg, &mut out);
    nfs(cfg, &mut out);
    shares(cfg, &mut out);
    smb_users(cfg, &mut out);
    cluster(cfg, &mut out);
    bricks(cfg, &mut out);
    system(cfg, &mut out);
    dns(cfg, &mut out);
    if cfg.metrics.as_ref().is_some_and(|m| m.listen.port() == 0) {
        out.push(problem(
            "metrics.listen",
            "port 0 is not a fixed port Prometheus can scrape",
            "e.g. listen = \"0.0.0.0:9431\"",
        ));
    }
    if cfg.node.control_socket.as_os_str().is_empty() {
        out.push(problem(
            "node.control_socket",
            "the control socket path is empty",
            "e.g. control_socket = \"/run/nasgw/control.sock\"",
        ));
    }
    if cfg.node.state_dir.as_os_str().is_empty() {
        out.push(problem("node.state_dir", "the state directory path is empty", "e.g. state_dir = \"/var/lib/nasgw\""));
    }
    out
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '$'))
        && !s.starts_with('.')
}

fn volume(cfg: &Config, out: &mut Vec<Problem>) {
    let v = &cfg.volume;
    if !valid_name(&v.name) || v.name.contains('$') {
        out.push(problem(
            "volume.name",
            format!("`{}` is not a usable volume name", v.name),
            "use letters, digits, `-`, `_` or `.`, e.g. name = \"smb\"",
        ));
    }
    match v.backend {
        BackendKind::Local => {
            if v.path.is_none() {
                out.push(problem(
                    "volume",
                    "backend = \"local\" needs `path`",
                    "add path = \"/srv/nasgw\" (the directory to serve)",
                ));
            }
            if v.mount_point.is_some() {
                out.push(problem(
                    "volume.mount_point",
                    "`mount_point` is only used by backend = \"gluster\"",
                    "remove `mount_point`; a local backend serves `path`",
                ));
            }
            if !v.servers.is_empty() {
                out.push(problem(
                    "volume.servers",
                    "`servers` is only used by backend = \"gluster\"",
                    "remove `servers`, or set backend = \"gluster\"",
                ));
            }
        }
        BackendKind::Gluster => {
            if v.servers.is_empty() && v.bricks.is_empty() {
                out.push(problem(
                    "volume",
                    "backend = \"gluster\" needs `servers` (or `bricks`, to have the nodes create the volume)",
                    "add servers = [\"gluster1\", \"gluster2\"] (volfile servers, this node first)",
                ));
            }
            if v.path.is_some() {
                out.push(problem(
                    "volume.path",
                    "`path` is only used by backend = \"local\"",
                    "remove `path`; nasgw mounts the Gluster volume itself",
                ));
            }
            if v.health_interval_ms == 0 || v.health_timeout_ms < 100 {
                out.push(problem(
                    "volume.health_timeout_ms",
                    "health probes need an interval above 0 and a timeout of at least 100 ms",
                    "e.g. health_interval_ms = 2000, health_timeout_ms = 10000",
                ));
            }
            if v.open_files < 16 {
                out.push(problem(
                    "volume.open_files",
                    format!("open_files = {} is too few: every file being read or written needs one", v.open_files),
                    "use at least 16; the default is 4096",
                ));
            }
            if v.mount_point.is_some() && v.access == GlusterAccess::Gfapi {
                out.push(problem(
                    "volume.mount_point",
                    "`mount_point` is only used by access = \"fuse\"",
                    "remove `mount_point`; access = \"gfapi\" mounts nothing",
                ));
            }
            for (i, s) in v.servers.iter().enumerate() {
                if s.is_empty() || s.contains(['/', ' ', ':']) {
                    out.push(problem(
                        format!("volume.servers[{i}]"),
                        format!("`{s}` is not a host name or address"),
                        "write a host name or IP address, e.g. \"gluster1\"",
                    ));
                }
            }
        }
    }
}

fn listeners(cfg: &Config, out: &mut Vec<Problem>) {
    if cfg.nfs.enabled && cfg.smb.enabled && cfg.nfs.listen.port() == cfg.smb.listen.port() {
        out.push(problem(
            "smb.listen",
            format!("SMB and NFS both listen on port {}", cfg.smb.listen.port()),
            "give each protocol its own port (445 for SMB, 2049 for NFS)",
        ));
    }
    if cfg.nfs.enabled && cfg.nfs.listen.port() == 0 {
        out.push(problem(
            "nfs.listen",
            "port 0 is not a fixed port clients can reach",
            "use 2049, or another free port",
        ));
    }
    if cfg.smb.enabled && cfg.smb.listen.port() == 0 {
        out.push(problem(
            "smb.listen",
            "port 0 is not a fixed port clients can reach",
            "use 445, or another free port",
        ));
    }
    if cfg.smb.enabled && cfg.smb.max_connections == 0 {
        out.push(problem("smb.max_connections", "0 connections admits no client", "e.g. max_connections = 4096"));
    }
}

fn shares(cfg: &Config, out: &mut Vec<Problem>) {
    let mut seen = HashSet::new();
    for (i, s) in cfg.smb.shares.iter().enumerate() {
        let at = |k: &str| format!("smb.share[{i}].{k}");
        if !valid_name(&s.name) || s.name.contains('$') || s.name.len() > 80 {
            out.push(problem(
                at("name"),
                format!("`{}` is not a usable share name", s.name),
                "use up to 80 letters, digits, `-`, `_` or `.`, e.g. name = \"pub\"",
            ));
        } else if !seen.insert(s.name.to_ascii_lowercase()) {
            out.push(problem(
                at("name"),
                format!("share `{}` is defined twice (share names ignore case)", s.name),
                "rename or remove one of the two [[smb.share]] tables",
            ));
        }
        if let Err(why) = inside_volume(&s.path) {
            let mut hint = "share paths are inside the volume: \"/\" is its root, \"/pub\" a folder in it".to_string();
            if let Some(root) = cfg.volume.path.as_ref().and_then(|p| p.to_str()) {
                if let Some(rest) = s.path.strip_prefix(root) {
                    hint = format!("did you mean path = \"/{}\"? {hint}", rest.trim_start_matches('/'));
                }
            }
            out.push(problem(at("path"), format!("share path is outside the volume: {why}"), hint));
        } else if let Some(root) = cfg.volume.path.as_ref().and_then(|p| p.to_str()) {
            if root != "/" && s.path.starts_with(&format!("{}/", root.trim_end_matches('/'))) {
                let rest = &s.path[root.trim_end_matches('/').len()..];
                out.push(problem(
                    at("path"),
                    format!("`{}` looks like a host path, but share paths are inside the volume", s.path),
                    format!("did you mean path = \"{rest}\"?"),
                ));
            }
        }
        if s.guest_only && !s.guest_ok {
            out.push(problem(
                at("guest_only"),
                "guest_only = true needs guest_ok = true",
                "add guest_ok = true, or drop guest_only",
            ));
        }
        if cfg.smb.encryption == SmbEncryption::Off && s.encryption >= Some(SmbEncryption::Desired) {
            out.push(problem(
                at("encryption"),
                format!(
                    "share `{}` asks for encryption = \"{}\", but [smb] encryption = \"off\" offers no cipher",
                    s.name,
                    s.encryption.unwrap_or_default().as_str()
                ),
                "set [smb] encryption = \"allowed\" (or drop this share's encryption)",
            ));
        }
        if s.guest_ok && cfg.smb.encryption == SmbEncryption::Required {
            out.push(problem(
                at("guest_ok"),
                format!(
                    "share `{}` admits guests, but [smb] encryption = \"required\" refuses every guest session (guests have no keys and cannot encrypt)",
                    s.name
                ),
                "drop guest_ok, or require encryption per share ([[smb.share]] encryption = \"required\") and keep [smb] encryption = \"allowed\"",
            ));
        }
        if s.guest_only && s.encryption == Some(SmbEncryption::Required) {
            out.push(problem(
                at("encryption"),
                format!(
                    "share `{}` is guest_only, and guests cannot encrypt: every tree connect would be refused",
                    s.name
                ),
                "drop guest_only, or use encryption = \"desired\"",
            ));
        }
        for (key, v) in [("force_user", &s.force_user), ("force_group", &s.force_group)] {
            if v.as_deref().is_some_and(|n| n.is_empty() || n.contains([':', '/', ' '])) {
                out.push(problem(
                    at(key),
                    format!("`{}` is not a user or group name", v.as_deref().unwrap_or_default()),
                    "write a name such as \"smbcli\" or a numeric id such as \"1000\"",
                ));
            }
        }
    }
}

fn smb_users(cfg: &Config, out: &mut Vec<Problem>) {
    let mut seen = HashSet::new();
    for (i, u) in cfg.smb.users.iter().enumerate() {
        let at = |k: &str| format!("smb.user[{i}].{k}");
        if u.name.is_empty() || u.name.len() > 64 || u.name.contains(['\\', '/', ':', '@', ' ']) {
            out.push(problem(at("name"), format!("`{}` is not a usable user name", u.name), "e.g. name = \"alice\""));
        } else if !seen.insert(u.name.to_lowercase()) {
            out.push(problem(
                at("name"),
                format!("user `{}` is defined twice (user names ignore case)", u.name),
                "remove one of the two [[smb.user]] tables",
            ));
        }
        if u.nt_hash.len() != 32 || !u.nt_hash.chars().all(|c| c.is_ascii_hexdigit()) {
            out.push(problem(
                at("nt_hash"),
                "nt_hash must be 32 hex digits (an NT hash, never a password)",
                format!("run `nasgw passwd {}` to set it", u.name),
            ));
        }
    }
}

fn cluster(cfg: &Config, out: &mut Vec<Problem>) {
    let Some(c) = &cfg.cluster else { return };
    if c.nodes.is_empty() {
        out.push(problem(
            "cluster.nodes",
            "the node list is empty",
            "list every node's cluster address, e.g. nodes = [\"192.168.122.100\", \"192.168.122.101\"]",
        ));
    }
    let mut seen = HashSet::new();
    for (i, n) in c.nodes.iter().enumerate() {
        if !seen.insert(*n) {
            out.push(problem(
                format!("cluster.nodes[{i}]"),
                format!("node {n} is listed twice"),
                "list each node once; the list is the same on every node",
            ));
        }
        if n.is_unspecified() || n.is_multicast() {
            out.push(problem(
                format!("cluster.nodes[{i}]"),
                format!("{n} is not a node's address"),
                "use the address the node has on the cluster network",
            ));
        }
    }
    let mut seen = HashSet::new();
    for (i, p) in c.public_addresses.iter().enumerate() {
        if !seen.insert(p.address.addr()) {
            out.push(problem(
                format!("cluster.public_addresses[{i}].address"),
                format!("public address {} is listed twice", p.address.addr()),
                "list each public address once",
            ));
        }
        if c.nodes.contains(&p.address.addr()) {
            out.push(problem(
                format!("cluster.public_addresses[{i}].address"),
                format!("{} is also a node address", p.address.addr()),
                "public addresses float between nodes; pick addresses no node owns",
            ));
        }
        if p.interface.is_empty() || p.interface.len() > 15 || p.interface.contains(['/', ' ', ':']) {
            out.push(problem(
                format!("cluster.public_addresses[{i}].interface"),
                format!("`{}` is not a network interface name", p.interface),
                "interface names are 1-15 characters, e.g. interface = \"eth0\"",
            ));
        }
    }
    // An IPv6 public address is useless to a protocol listening on IPv4 only.
    if let Some(v6) = c.public_addresses.iter().map(|p| p.address.addr()).find(IpAddr::is_ipv6) {
        for (key, name, on, listen) in [
            ("smb.listen", "SMB", cfg.smb.enabled, cfg.smb.listen),
            ("nfs.listen", "NFS", cfg.nfs.enabled, cfg.nfs.listen),
        ] {
            if on && listen.is_ipv4() {
                out.push(problem(
                    key,
                    format!("public address {v6} is IPv6 but {name} listens on IPv4 only ({listen})"),
                    format!("listen = \"[::]:{}\" serves IPv4 and IPv6 clients", listen.port()),
                ));
            }
        }
    }
    match inside_volume(&c.recovery_lock) {
        Err(why) => out.push(problem(
            "cluster.recovery_lock",
            format!("the recovery lock is outside the volume: {why}"),
            "the lock must live on the shared volume, e.g. recovery_lock = \"/lock/lockfile\"",
        )),
        Ok(p) if p == "/" => out.push(problem(
            "cluster.recovery_lock",
            "the recovery lock must be a file, not the volume root",
            "e.g. recovery_lock = \"/lock/lockfile\"",
        )),
        Ok(_) => {}
    }
    if c.port == 0 {
        out.push(problem("cluster.port", "port 0 is not a fixed port", "use 4379 (the default) or another free port"));
    }
    if !(10..=10_000).contains(&c.heartbeat_interval_ms) {
        out.push(problem(
            "cluster.heartbeat_interval_ms",
            format!("{} ms is outside 10..10000", c.heartbeat_interval_ms),
            "the default 100 ms is cheap on any LAN",
        ));
    }
    if c.dead_interval_ms < 5 * c.heartbeat_interval_ms {
        out.push(problem(
            "cluster.dead_interval_ms",
            format!("{} ms is less than 5 heartbeats ({} ms)", c.dead_interval_ms, 5 * c.heartbeat_interval_ms),
            "a node must miss several heartbeats before it is declared dead; e.g. 10 x heartbeat_interval_ms",
        ));
    }
    for (key, v) in [
        ("lock_check_interval_ms", c.lock_check_interval_ms),
        ("health_interval_ms", c.health_interval_ms),
        ("health_timeout_ms", c.health_timeout_ms),
    ] {
        if v == 0 {
            out.push(problem(format!("cluster.{key}"), "0 ms is not an interval", "use a few hundred milliseconds"));
        }
    }
    if c.test_echo_port == Some(0) {
        out.push(problem("cluster.test_echo_port", "port 0 is not a fixed port", "remove the key (it is for tests)"));
    }
}

/// Whether `name` is a usable DNS name: dot-separated labels of letters, digits and `-` (not at
/// either end of a label), 1-63 bytes each, at most 253 bytes, a trailing dot allowed.
pub fn dns_name(name: &str) -> bool {
    let n = name.strip_suffix('.').unwrap_or(name);
    !n.is_empty()
        && n.len() <= 253
        && n.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// `[dns]`: a name to answer for and public addresses to answer with.
fn dns(cfg: &Config, out: &mut Vec<Problem>) {
    let Some(d) = &cfg.dns else { return };
    if !dns_name(&d.name) || !d.name.contains('.') {
        out.push(problem(
            "dns.name",
            format!("`{}` is not a fully qualified DNS name", d.name),
            "the cluster's name in your domain, e.g. name = \"data.example.com\"",
        ));
    }
    if let Some(h) = &d.hostmaster {
        if !dns_name(h) {
            out.push(problem(
                "dns.hostmaster",
                format!("`{h}` is not a DNS name"),
                "write the mailbox as a name, e.g. \"hostmaster.example.com\"",
            ));
        }
    }
    if d.listen.port() == 0 {
        out.push(problem("dns.listen", "port 0 is not a fixed port", "resolvers ask port 53: listen = \"0.0.0.0:53\""));
    }
    if d.ttl > 86_400 {
        out.push(problem(
            "dns.ttl",
            format!("{} s is more than a day", d.ttl),
            "keep it short (the default 1 s) so clients follow moves",
        ));
    }
    if cfg.cluster.as_ref().is_none_or(|c| c.public_addresses.is_empty()) {
        out.push(problem(
            "dns",
            "[dns] answers with the cluster's public addresses, but none is configured",
            "add [cluster] public_addresses, or remove [dns]",
        ));
    }
}

/// `[nfs]` keys that only make sense together.
fn nfs(cfg: &Config, out: &mut Vec<Problem>) {
    let n = &cfg.nfs;
    if !n.enabled {
        return;
    }
    if n.clients.is_empty() {
        out.push(problem(
            "nfs.clients",
            "no client network is allowed, so nobody could mount the export",
            "list the networks that may mount, e.g. clients = [\"192.168.122.0/24\"], or set enabled = false",
        ));
    }
    if n.max_connections == 0 {
        out.push(problem("nfs.max_connections", "0 connections admits no client", "e.g. max_connections = 1024"));
    }
    if let Some(pm) = n.portmap_listen {
        if pm.port() == n.listen.port()
            && (pm.ip() == n.listen.ip() || pm.ip().is_unspecified() || n.listen.ip().is_unspecified())
        {
            out.push(problem(
                "nfs.portmap_listen",
                format!("the portmapper and NFS both listen on port {}", pm.port()),
                "the portmapper's port is 111, e.g. portmap_listen = \"0.0.0.0:111\"",
            ));
        }
    }
}

/// Splits a brick `HOST:/PATH` into its host and absolute path.
pub fn split_brick(brick: &str) -> Option<(&str, &str)> {
    let (host, _) = brick.rsplit_once(":/")?;
    let path = &brick[host.len() + 1..];
    let host_ok = !host.is_empty() && !host.contains(['/', ' ', ':']);
    let path_ok = path.len() > 1 && !path.contains(['\0', ' ']) && !path.split('/').any(|c| c == "." || c == "..");
    (host_ok && path_ok && !path.ends_with('/')).then_some((host, path))
}

fn bricks(cfg: &Config, out: &mut Vec<Problem>) {
    let v = &cfg.volume;
    if v.bricks.is_empty() {
        for key in ["replica", "arbiter", "options"] {
            let set = match key {
                "replica" => v.replica.is_some(),
                "arbiter" => v.arbiter,
                _ => !v.options.is_empty(),
            };
            if set {
                out.push(problem(
                    format!("volume.{key}"),
                    format!("`{key}` only applies to a volume the nodes create from `bricks`"),
                    "add bricks = [\"HOST:/PATH\", ...], or remove the key",
                ));
            }
        }
        return;
    }
    if v.backend != BackendKind::Gluster {
        out.push(problem(
            "volume.bricks",
            "`bricks` needs backend = \"gluster\"",
            "set backend = \"gluster\" (the nodes then create the GlusterFS volume from these bricks)",
        ));
    }
    let mut seen = HashSet::new();
    for (i, b) in v.bricks.iter().enumerate() {
        if split_brick(b).is_none() {
            out.push(problem(
                format!("volume.bricks[{i}]"),
                format!("`{b}` is not a brick"),
                "write HOST:/ABSOLUTE/PATH, e.g. \"192.168.122.100:/data/brick1/smb\"",
            ));
        } else if !seen.insert(b.as_str()) {
            out.push(problem(
                format!("volume.bricks[{i}]"),
                format!("brick `{b}` is listed twice"),
                "list each brick once",
            ));
        }
    }
    let Some(replica) = v.replica else {
        out.push(problem(
            "volume",
            "`bricks` needs `replica`",
            "add replica = 3 (three copies), or replica = 2 with arbiter = true",
        ));
        return;
    };
    let set = if v.arbiter { replica as usize + 1 } else { replica as usize };
    if v.arbiter && replica != 2 {
        out.push(problem(
            "volume.arbiter",
            "an arbiter goes with replica = 2 (two copies and one arbiter per set)",
            "set replica = 2, or remove arbiter",
        ));
    } else if !v.arbiter && !(2..=4).contains(&replica) {
        out.push(problem(
            "volume.replica",
            format!("replica = {replica} gives no useful redundancy"),
            "use replica = 3 (or replica = 2 with arbiter = true)",
        ));
    } else if v.bricks.len() % set != 0 {
        out.push(problem(
            "volume.bricks",
            format!("{} bricks do not make whole replica sets of {set}", v.bricks.len()),
            format!("list a multiple of {set} bricks (each run of {set} is one replica set)"),
        ));
    } else {
        for (k, chunk) in v.bricks.chunks(set).enumerate() {
            let hosts: HashSet<&str> = chunk.iter().filter_map(|b| split_brick(b)).map(|(h, _)| h).collect();
            if hosts.len() < chunk.len() {
                out.push(problem(
                    format!("volume.bricks[{}]", k * set),
                    format!("replica set {} has two bricks on one host", k + 1),
                    "put the bricks of one replica set on different nodes, or a lost node loses copies",
                ));
            }
        }
    }
    for (k, value) in &v.options {
        if k.is_empty() || k.contains([' ', '=']) || value.contains('\n') {
            out.push(problem(
                format!("volume.options.{k}"),
                format!("`{k}` = `{value}` is not a GlusterFS option"),
                "e.g. options = { \"performance.cache-size\" = \"256MB\" }",
            ));
        }
    }
}

fn system(cfg: &Config, out: &mut Vec<Problem>) {
    let Some(sys) = &cfg.system else { return };
    let mut macs = HashSet::new();
    for (i, h) in sys.hosts.iter().enumerate() {
        let mac_ok = h.mac.len() == 17
            && h.mac.split(':').count() == 6
            && h.mac.split(':').all(|b| b.len() == 2 && b.chars().all(|c| c.is_ascii_hexdigit()));
        if !mac_ok {
            out.push(problem(
                format!("system.host[{i}].mac"),
                format!("`{}` is not a MAC address", h.mac),
                "six hex pairs, e.g. mac = \"52:54:00:12:34:01\"",
            ));
        } else if !macs.insert(h.mac.to_ascii_lowercase()) {
            out.push(problem(
                format!("system.host[{i}].mac"),
                format!("MAC {} is listed twice", h.mac),
                "list each card once",
            ));
        }
        if let Some(c) = &cfg.cluster {
            if !c.nodes.contains(&h.address.addr()) {
                out.push(problem(
                    format!("system.host[{i}].address"),
                    format!("{} is not one of [cluster] nodes", h.address.addr()),
                    "give each node the address it has in [cluster] nodes",
                ));
            }
        }
        if let Some(name) = &h.hostname {
            let ok = !name.is_empty()
                && name.len() <= 63
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !name.starts_with('-');
            if !ok {
                out.push(problem(
                    format!("system.host[{i}].hostname"),
                    format!("`{name}` is not a host name"),
                    "letters, digits and `-`, e.g. hostname = \"gluster1\"",
                ));
            }
        }
    }
    for (i, k) in sys.ssh_keys.iter().enumerate() {
        if k.split_whitespace().count() < 2
            || k.contains('\n')
            || !["ssh-", "ecdsa-", "sk-"].iter().any(|p| k.starts_with(p))
        {
            out.push(problem(
                format!("system.ssh_keys[{i}]"),
                "not an OpenSSH public key line",
                "paste one line of a .pub file, e.g. \"ssh-ed25519 AAAA... admin@laptop\"",
            ));
        }
    }
    for (i, n) in sys.ntp.iter().enumerate() {
        if n.is_empty() || n.contains([' ', '/']) {
            out.push(problem(
                format!("system.ntp[{i}]"),
                format!("`{n}` is not an NTP server"),
                "a host name or address",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inside_volume_normalises_and_refuses_escapes() {
        assert_eq!(inside_volume("/").unwrap(), "/");
        assert_eq!(inside_volume("pub//a/./b/..").unwrap(), "/pub/a");
        assert!(inside_volume("../etc").is_err());
        assert!(inside_volume("/a/../../b").is_err());
        assert!(inside_volume("a\0b").is_err());
    }

    #[test]
    fn dns_names_follow_the_label_rules() {
        for good in ["data.example.com", "data.example.com.", "a-1.b2.example"] {
            assert!(dns_name(good), "{good}");
        }
        for bad in ["", ".", "a..b", "-a.b", "a-.b", "a_b.c", &format!("{}.com", "a".repeat(64))] {
            assert!(!dns_name(bad), "{bad}");
        }
        let text =
            "[volume]\nname = \"smb\"\nbackend = \"local\"\npath = \"/d\"\n[dns]\nname = \"data\"\nttl = 999999\n";
        let cfg: Config = toml::from_str(text).unwrap();
        let paths: Vec<String> = validate(&cfg).iter().map(|p| p.path.to_string()).collect();
        assert_eq!(paths, ["dns.name", "dns.ttl", "dns"], "{paths:?}");
    }

    #[test]
    fn encryption_settings_that_contradict_each_other_are_refused() {
        let base = "[volume]\nname = \"smb\"\nbackend = \"local\"\npath = \"/d\"\n";
        let paths = |extra: &str| -> Vec<String> {
            let cfg: Config = toml::from_str(&format!("{base}{extra}")).unwrap();
            validate(&cfg).iter().map(|p| p.path.to_string()).collect()
        };
        let share = |keys: &str| format!("[[smb.share]]\nname = \"s\"\n{keys}\n");
        assert!(paths(&format!("[smb]\nencryption = \"desired\"\n{}", share("encryption = \"required\""))).is_empty());
        assert!(paths(&share("guest_ok = true\nencryption = \"desired\"")).is_empty());
        assert_eq!(
            paths(&format!("[smb]\nencryption = \"off\"\n{}", share("encryption = \"required\""))),
            ["smb.share[0].encryption"]
        );
        assert_eq!(
            paths(&format!("[smb]\nencryption = \"required\"\n{}", share("guest_ok = true"))),
            ["smb.share[0].guest_ok"]
        );
        assert_eq!(
            paths(&share("guest_ok = true\nguest_only = true\nencryption = \"required\"")),
            ["smb.share[0].encryption"]
        );
        let bad: Result<Config, _> = toml::from_str(&format!("{base}[smb]\nencryption = \"yes\"\n"));
        assert!(bad.unwrap_err().to_string().contains("unknown variant"));
        let d: Config = toml::from_str(base).unwrap();
        assert_eq!(d.smb.encryption, SmbEncryption::Allowed);
    }

    #[test]
    fn nfs_keys_that_cannot_work_are_refused() {
        let text = "[volume]\nname = \"smb\"\nbackend = \"local\"\npath = \"/d\"\n[nfs]\nlisten = \"0.0.0.0:2049\"\nclients = []\nmax_connections = 0\nportmap_listen = \"127.0.0.1:2049\"\n";
        let cfg: Config = toml::from_str(text).unwrap();
        let paths: Vec<String> = validate(&cfg).iter().map(|p| format!("{:?}", p.path)).collect();
        assert_eq!(paths.len(), 3, "{paths:?}");
        let ok: Config = toml::from_str("[volume]\nname = \"smb\"\nbackend = \"local\"\npath = \"/d\"\n").unwrap();
        assert!(validate(&ok).is_empty());
        assert!(ok.nfs.root_squash && !ok.nfs.read_only && !ok.nfs.allow_auth_none && ok.nfs.portmap_listen.is_none());
    }

    #[test]
    fn smb_connection_cap_is_a_key_and_zero_is_refused() {
        let base = "[volume]\nname = \"smb\"\nbackend = \"local\"\npath = \"/d\"\n";
        let d: Config = toml::from_str(base).unwrap();
        assert_eq!(d.smb.max_connections, 4096);
        let big: Config = toml::from_str(&format!("{base}[smb]\nmax_connections = 20000\n")).unwrap();
        assert_eq!(big.smb.max_connections, 20000);
        assert!(validate(&big).is_empty());
        let zero: Config = toml::from_str(&format!("{base}[smb]\nmax_connections = 0\n")).unwrap();
        let paths: Vec<String> = validate(&zero).iter().map(|p| p.path.to_string()).collect();
        assert_eq!(paths, ["smb.max_connections"]);
        let off: Config = toml::from_str(&format!("{base}[smb]\nenabled = false\nmax_connections = 0\n")).unwrap();
        assert!(validate(&off).is_empty(), "a disabled service's cap does not matter");
    }
}
