//! `nasgw-appliance system`: turns `nasgw.toml` into the node's operating system settings at
//! boot: its address (by MAC from `[[system.host]]`, else DHCP), host name, firewall (exactly
//! the ports the file uses), the Unix accounts the shares name, time servers and SSH keys.
//! Each setting is rendered by a pure function (tested here); [`apply`] writes them.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use ipnet::IpNet;
use nasgw::config::{BackendKind, Config};

use crate::provision::plan::host_of;

/// A network card: its kernel name and MAC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    /// Kernel name (`eth0`).
    pub name: String,
    /// MAC address, lower case.
    pub mac: String,
}

/// How this node is addressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkPlan {
    /// systemd-networkd files: name and contents.
    pub files: Vec<(String, String)>,
    /// This node's host name.
    pub hostname: String,
    /// The address came from DHCP (no `[[system.host]]` matched a card).
    pub dhcp: bool,
}

/// Picks this node's address: the `[[system.host]]` whose MAC one of `nics` has, else DHCP.
pub fn network(cfg: &Config, nics: &[Nic]) -> NetworkPlan {
    let sys = cfg.system.clone().unwrap_or_default();
    let found = sys.hosts.iter().find_map(|h| nics.iter().find(|n| n.mac.eq_ignore_ascii_case(&h.mac)).map(|n| (h, n)));
    let Some((host, nic)) = found else {
        let file = "[Match]\nType=ether\nName=eth* en*\n\n[Network]\nDHCP=yes\nLinkLocalAddressing=no\n".to_string();
        return NetworkPlan {
            files: vec![("90-nasgw-dhcp.network".into(), file)],
            hostname: "nasgw".into(),
            dhcp: true,
        };
    };
    let mut f = format!("[Match]\nMACAddress={}\n\n[Network]\nAddress={}\n", nic.mac, host.address);
    if let Some(gw) = sys.gateway {
        let _ = writeln!(f, "Gateway={gw}");
    }
    for d in &sys.dns {
        let _ = writeln!(f, "DNS={d}");
    }
    f.push_str("LinkLocalAddressing=no\nIPv6AcceptRA=no\n");
    let pnn = cfg.cluster.as_ref().and_then(|c| c.nodes.iter().position(|n| *n == host.address.addr()));
    let hostname = host.hostname.clone().unwrap_or_else(|| match pnn {
        Some(i) => format!("nasgw-{}", i + 1),
        None => "nasgw".into(),
    });
    NetworkPlan { files: vec![("10-nasgw-static.network".into(), f)], hostname, dhcp: false }
}

/// The nftables rule set: the input chain drops everything but the ports the file uses (SMB,
/// NFS, the portmapper, the cluster port from the nodes, GlusterFS from the brick hosts, SSH
/// when keys are given, DHCP replies when the address comes from DHCP).
pub fn firewall(cfg: &Config, dhcp: bool) -> String {
    let mut rules = Vec::new();
    let nfs_from = sources(&cfg.nfs.clients);
    if cfg.smb.enabled {
        rules.push(format!("tcp dport {} accept comment \"SMB\"", cfg.smb.listen.port()));
    }
    if cfg.nfs.enabled {
        for r in
            with_sources(&nfs_from, &format!("tcp dport {} accept comment \"NFS and MOUNT\"", cfg.nfs.listen.port()))
        {
            rules.push(r);
        }
        if let Some(pm) = cfg.nfs.portmap_listen {
            for r in with_sources(&nfs_from, &format!("tcp dport {} accept comment \"portmapper\"", pm.port())) {
                rules.push(r);
            }
        }
    }
    let mut peers: Vec<IpAddr> = cfg.cluster.as_ref().map(|c| c.nodes.clone()).unwrap_or_default();
    let mut named_peer = false;
    for b in &cfg.volume.bricks {
        match host_of(b).parse::<IpAddr>() {
            Ok(ip) if !peers.contains(&ip) => peers.push(ip),
            Ok(_) => {}
            Err(_) => named_peer = true,
        }
    }
    let peer_nets: Vec<IpNet> = peers.iter().map(|ip| IpNet::from(*ip)).collect();
    let peer_src = sources(&peer_nets);
    if let Some(c) = &cfg.cluster {
        for r in
            with_sources(&peer_src, &format!("meta l4proto {{ 6, 17 }} th dport {} accept comment \"cluster\"", c.port))
        {
            rules.push(r);
        }
    }
    if !cfg.volume.bricks.is_empty() {
        let rule = "tcp dport { 24007-24008, 49152-49251 } accept comment \"GlusterFS\"";
        // Brick hosts given by name cannot be pinned to addresses here: GlusterFS is then open.
        let src = if named_peer { vec![String::new()] } else { peer_src.clone() };
        rules.extend(with_sources(&src, rule));
    }
    if cfg.system.as_ref().is_some_and(|s| !s.ssh_keys.is_empty()) {
        rules.push("tcp dport 22 accept comment \"SSH (keys from [system] ssh_keys)\"".into());
    }
    if dhcp {
        rules.push("udp dport 68 accept comment \"DHCP\"".into());
        rules.push("udp dport 546 accept comment \"DHCPv6\"".into());
    }
    let mut out = String::from(
        "# Written at boot by nasgw-appliance from nasgw.toml: exactly the ports the file uses.\n\
         flush ruleset\ntable inet nasgw {\n  chain input {\n    type filter hook input priority 0; policy drop;\n\
         \x20   ct state established,related accept\n    ct state invalid drop\n    iif lo accept\n\
         \x20   meta l4proto { 1, 58 } accept comment \"ICMP, ICMPv6\"\n",
    );
    for r in rules {
        let _ = writeln!(out, "    {r}");
    }
    out.push_str("  }\n}\n");
    out
}

/// `ip saddr {...}` / `ip6 saddr {...}` prefixes for a list of networks; one empty prefix
/// when they cover everything.
fn sources(nets: &[IpNet]) -> Vec<String> {
    let v4_all = nets.iter().any(|n| n.prefix_len() == 0 && n.addr().is_ipv4());
    let v6_all = nets.iter().any(|n| n.prefix_len() == 0 && n.addr().is_ipv6());
    if v4_all && v6_all {
        return vec![String::new()];
    }
    let list = |v4: bool| -> Vec<String> {
        nets.iter().filter(|n| n.addr().is_ipv4() == v4).map(|n| n.trunc().to_string()).collect()
    };
    let mut out = Vec::new();
    if v4_all {
        out.push("meta nfproto ipv4 ".to_string());
    } else if !list(true).is_empty() {
        out.push(format!("ip saddr {{ {} }} ", list(true).join(", ")));
    }
    if v6_all {
        out.push("meta nfproto ipv6 ".to_string());
    } else if !list(false).is_empty() {
        out.push(format!("ip6 saddr {{ {} }} ", list(false).join(", ")));
    }
    out
}

fn with_sources(src: &[String], rule: &str) -> Vec<String> {
    src.iter().map(|s| format!("{s}{rule}")).collect()
}

/// A Unix account the file names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Account {
    /// User (or group) name.
    pub name: String,
    /// Its uid and gid: the same on every node, from the name alone.
    pub id: u32,
    /// Only a group (`force_group`), no user.
    pub group_only: bool,
}

/// The id an account gets: 10000 + FNV-1a of its name modulo 50000, so every node derives the
/// same uid from the same file without talking to the others.
pub fn account_id(name: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    10_000 + h % 50_000
}

/// Accounts the shares (`force_user`, `force_group`) and SMB users (`unix_user`) name; numeric
/// ids and root need none. Two names with one id are an error.
pub fn accounts(cfg: &Config) -> Result<Vec<Account>> {
    let named = |s: &str| !s.is_empty() && !s.chars().all(|c| c.is_ascii_digit()) && s != "root";
    let mut users = BTreeSet::new();
    let mut groups = BTreeSet::new();
    for s in &cfg.smb.shares {
        if let Some(u) = s.force_user.as_deref().filter(|u| named(u)) {
            users.insert(u.to_string());
        }
        if let Some(g) = s.force_group.as_deref().filter(|g| named(g)) {
            groups.insert(g.to_string());
        }
    }
    for u in &cfg.smb.users {
        users.insert(u.unix_user.clone().unwrap_or_else(|| u.name.to_ascii_lowercase()));
    }
    let mut out: Vec<Account> =
        users.iter().map(|n| Account { name: n.clone(), id: account_id(n), group_only: false }).collect();
    for g in groups.difference(&users) {
        out.push(Account { name: g.clone(), id: account_id(g), group_only: true });
    }
    let mut ids = std::collections::BTreeMap::new();
    for a in &out {
        if let Some(other) = ids.insert(a.id, &a.name) {
            bail!("accounts `{other}` and `{}` would get the same id {}; rename one", a.name, a.id);
        }
    }
    Ok(out)
}

/// timesyncd's drop-in for `[system] ntp`, if any.
pub fn timesync(cfg: &Config) -> Option<String> {
    let ntp = &cfg.system.as_ref()?.ntp;
    (!ntp.is_empty()).then(|| format!("[Time]\nNTP={}\n", ntp.join(" ")))
}

/// Whether this node runs glusterd: it holds a brick of `[volume] bricks`.
pub fn runs_glusterd(cfg: &Config, local: &[IpAddr]) -> bool {
    cfg.volume.backend == BackendKind::Gluster
        && cfg.volume.bricks.iter().any(|b| host_of(b).parse::<IpAddr>().is_ok_and(|ip| local.contains(&ip)))
}

/// Every network card (not loopback, not virtual) with its MAC.
pub fn nics() -> Vec<Nic> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/sys/class/net") else { return out };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        // Physical cards have a device; bridges, veths and loopback do not.
        if !e.path().join("device").exists() {
            continue;
        }
        if let Ok(mac) = std::fs::read_to_string(e.path().join("address")) {
            out.push(Nic { name, mac: mac.trim().to_ascii_lowercase() });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Writes and applies everything at boot (root `/`, or a test root).
pub fn apply(cfg: &Config, root: &Path) -> Result<()> {
    let net = network(cfg, &nics());
    let netdir = root.join("run/systemd/network");
    std::fs::create_dir_all(&netdir)?;
    for (name, text) in &net.files {
        std::fs::write(netdir.join(name), text)?;
    }
    println!(
        "nasgw-appliance: network: {}",
        if net.dhcp {
            "DHCP on every card (no [[system.host]] MAC matched)".to_string()
        } else {
            net.files[0].1.lines().nth(4).unwrap_or("").to_string()
        }
    );
    run("hostname", &[&net.hostname])?;
    std::fs::write(root.join("etc/hostname"), format!("{}\n", net.hostname))?;
    std::fs::write(
        root.join("etc/hosts"),
        format!("127.0.0.1 localhost\n127.0.1.1 {}\n::1 localhost\n", net.hostname),
    )?;

    let rules = firewall(cfg, net.dhcp);
    let fw = root.join("run/nasgw/nftables.conf");
    std::fs::create_dir_all(fw.parent().expect("has a parent"))?;
    std::fs::write(&fw, &rules)?;
    run("nft", &["-f", &fw.to_string_lossy()])?;
    println!("nasgw-appliance: firewall loaded ({})", fw.display());

    for a in accounts(cfg)? {
        ensure_account(&a)?;
    }
    local_volume(cfg)?;
    if let Some(t) = timesync(cfg) {
        let d = root.join("run/systemd/timesyncd.conf.d");
        std::fs::create_dir_all(&d)?;
        std::fs::write(d.join("nasgw.conf"), t)?;
    }
    let keys = cfg.system.as_ref().map(|s| s.ssh_keys.clone()).unwrap_or_default();
    let ssh = root.join("root/.ssh");
    if keys.is_empty() {
        let _ = std::fs::remove_file(ssh.join("authorized_keys"));
    } else {
        std::fs::create_dir_all(&ssh)?;
        std::fs::write(ssh.join("authorized_keys"), keys.join("\n") + "\n")?;
        run("chmod", &["0700", &ssh.to_string_lossy()])?;
        run("chmod", &["0600", &ssh.join("authorized_keys").to_string_lossy()])?;
        let key = Path::new("/persist/ssh/ssh_host_ed25519_key");
        if !key.exists() {
            std::fs::create_dir_all(key.parent().expect("has a parent"))?;
            run("ssh-keygen", &["-q", "-t", "ed25519", "-N", "", "-f", &key.to_string_lossy()])?;
        }
        run("systemctl", &["--no-block", "start", "ssh.service"])?;
    }
    let local: Vec<IpAddr> = cfg
        .system
        .iter()
        .flat_map(|s| s.hosts.iter())
        .filter(|h| nics().iter().any(|n| n.mac.eq_ignore_ascii_case(&h.mac)))
        .map(|h| h.address.addr())
        .collect();
    // With DHCP the address is not known yet: glusterd starts when provisioning finds a brick.
    if runs_glusterd(cfg, &local) || (net.dhcp && !cfg.volume.bricks.is_empty()) {
        std::fs::write(root.join("run/nasgw/bricks"), "")?;
    }
    Ok(())
}

/// A local backend's folder, made on first boot and given to the root share's `force_user`, so
/// the shipped guest share is writable.
fn local_volume(cfg: &Config) -> Result<()> {
    let Some(path) = cfg.volume.path.as_ref().filter(|_| cfg.volume.backend == BackendKind::Local) else {
        return Ok(());
    };
    if path.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(path).with_context(|| format!("cannot create {}", path.display()))?;
    let owner = cfg.smb.shares.iter().find(|s| s.path == "/").and_then(|s| s.force_user.clone());
    if let Some(user) = owner {
        run("chown", &[&format!("{user}:"), &path.to_string_lossy()])?;
    }
    Ok(())
}

fn ensure_account(a: &Account) -> Result<()> {
    let id = a.id.to_string();
    let exists = |db: &str| Command::new("getent").args([db, &a.name]).output().is_ok_and(|o| o.status.success());
    if !exists("group") {
        run("groupadd", &["-g", &id, &a.name])?;
    }
    if !a.group_only && !exists("passwd") {
        run("useradd", &["-u", &id, "-g", &a.name, "-M", "-d", "/nonexistent", "-s", "/usr/sbin/nologin", &a.name])?;
        println!("nasgw-appliance: created user {} (uid {id})", a.name);
    }
    Ok(())
}

fn run(prog: &str, args: &[&str]) -> Result<()> {
    let st = Command::new(prog).args(args).status().with_context(|| format!("cannot run {prog}"))?;
    if !st.success() {
        bail!("{prog} {} failed ({st})", args.join(" "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra: &str) -> Config {
        let text = format!(
            "[volume]\nname = \"smb\"\nbackend = \"gluster\"\nreplica = 3\n\
             bricks = [\"198.18.0.1:/data/b/smb\", \"198.18.0.2:/data/b/smb\", \"198.18.0.3:/data/b/smb\"]\n\
             [nfs]\nlisten = \"0.0.0.0:2049\"\nclients = [\"198.18.0.0/24\"]\n\
             [smb]\nlisten = \"0.0.0.0:445\"\n\
             [[smb.share]]\nname = \"pub\"\nguest_ok = true\nforce_user = \"smbcli\"\nforce_group = \"staff\"\n\
             [cluster]\nnodes = [\"198.18.0.1\", \"198.18.0.2\", \"198.18.0.3\"]\nrecovery_lock = \"/.lock\"\nsecret_file = \"/etc/nasgw/secret\"\n\
             {extra}"
        );
        nasgw::config::parse(&text, "t", Path::new("/")).unwrap()
    }

    const MACS: &str = "[system]\nntp = [\"ntp.example\"]\ngateway = \"198.18.0.254\"\n\
        [[system.host]]\nmac = \"52:54:00:00:00:01\"\naddress = \"198.18.0.1/24\"\n\
        [[system.host]]\nmac = \"52:54:00:00:00:02\"\naddress = \"198.18.0.2/24\"\nhostname = \"gluster2\"\n";

    fn nic(mac: &str) -> Vec<Nic> {
        vec![Nic { name: "eth0".into(), mac: mac.into() }]
    }

    #[test]
    fn a_node_finds_its_address_by_mac_else_asks_dhcp() {
        let c = cfg(MACS);
        let n = network(&c, &nic("52:54:00:00:00:01"));
        assert!(!n.dhcp);
        assert_eq!(n.hostname, "nasgw-1");
        assert!(n.files[0].1.contains("MACAddress=52:54:00:00:00:01\n"), "{}", n.files[0].1);
        assert!(n.files[0].1.contains("Address=198.18.0.1/24\nGateway=198.18.0.254\n"), "{}", n.files[0].1);
        assert_eq!(network(&c, &nic("52:54:00:00:00:02")).hostname, "gluster2");
        let d = network(&c, &nic("52:54:00:00:00:09"));
        assert!(d.dhcp && d.files[0].1.contains("DHCP=yes"));
    }

    #[test]
    fn the_firewall_opens_exactly_the_configured_ports() {
        let fw = firewall(&cfg(""), false);
        assert!(fw.contains("policy drop;"), "{fw}");
        assert!(fw.contains("tcp dport 445 accept"), "{fw}");
        assert!(fw.contains("ip saddr { 198.18.0.0/24 } tcp dport 2049 accept"), "{fw}");
        assert!(
            fw.contains(
                "ip saddr { 198.18.0.1/32, 198.18.0.2/32, 198.18.0.3/32 } meta l4proto { 6, 17 } th dport 4379"
            ),
            "{fw}"
        );
        assert!(
            fw.contains("ip saddr { 198.18.0.1/32, 198.18.0.2/32, 198.18.0.3/32 } tcp dport { 24007-24008"),
            "{fw}"
        );
        assert!(!fw.contains("dport 22 ") && !fw.contains("dport 68 ") && !fw.contains("dport 111 "), "{fw}");
        // The embedded default: no cluster, no bricks, NFS clients anywhere.
        let d = nasgw::config::parse(nasgw::config::EMBEDDED_DEFAULT, "d", Path::new("/")).unwrap();
        let fw = firewall(&d, true);
        assert!(fw.contains("\n    tcp dport 12049 accept"), "{fw}");
        assert!(fw.contains("tcp dport 4445 accept") && fw.contains("udp dport 68 accept"), "{fw}");
        assert!(!fw.contains("24007") && !fw.contains("4379"), "{fw}");
    }

    #[test]
    fn share_accounts_get_the_same_ids_everywhere() {
        let a = accounts(&cfg("")).unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(a[0], Account { name: "smbcli".into(), id: account_id("smbcli"), group_only: false });
        assert_eq!(a[1], Account { name: "staff".into(), id: account_id("staff"), group_only: true });
        assert!((10_000..60_000).contains(&account_id("x")));
        assert_ne!(account_id("smbcli"), account_id("smbcl1"));
    }

    #[test]
    fn time_servers_come_from_the_file() {
        assert_eq!(timesync(&cfg(MACS)).as_deref(), Some("[Time]\nNTP=ntp.example\n"));
        assert_eq!(timesync(&cfg("")), None);
    }
}
