//! What `nasgw status` and `nasgw ip` show: the cluster as one node sees it.
//! These types cross the control socket as JSON, so field names are part of the CLI contract.

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// A node's state, as CTDB names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum NodeState {
    /// Healthy and serving; may hold public addresses.
    Ok,
    /// Not heard from within the dead interval.
    Disconnected,
    /// Reachable, but its volume or a listener is failing; holds no public addresses.
    Unhealthy,
    /// Switched off by an admin (`nasgw disable`); holds no public addresses.
    Disabled,
    /// Shutting down or not started.
    Stopped,
}

impl fmt::Display for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NodeState::Ok => "OK",
            NodeState::Disconnected => "DISCONNECTED",
            NodeState::Unhealthy => "UNHEALTHY",
            NodeState::Disabled => "DISABLED",
            NodeState::Stopped => "STOPPED",
        })
    }
}

/// Whether the cluster is settled or re-placing addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RecoveryMode {
    /// Placement is settled.
    Normal,
    /// A membership change is being applied.
    Active,
}

impl fmt::Display for RecoveryMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RecoveryMode::Normal => "NORMAL",
            RecoveryMode::Active => "ACTIVE",
        })
    }
}

/// One node in `nasgw status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Physical node number: the node's index in `[cluster] nodes`.
    pub pnn: u32,
    /// The node's cluster address.
    pub address: IpAddr,
    /// Its state as this node sees it.
    pub state: NodeState,
    /// Is this the node answering?
    pub this_node: bool,
    /// Why it is not OK (the failed health check, "disabled by an admin", "not heard for
    /// 1200 ms"); empty when OK.
    #[serde(default)]
    pub reason: String,
    /// Its software version, once heard.
    #[serde(default)]
    pub version: String,
    /// When it started (seconds since the Unix epoch), 0 when not heard yet.
    #[serde(default)]
    pub started: u64,
}

/// `nasgw status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// Every configured node.
    pub nodes: Vec<NodeStatus>,
    /// Changes on every membership change.
    pub generation: u64,
    /// The node holding the recovery lock and deciding placement.
    pub leader: Option<u32>,
    /// Settled or recovering.
    pub recovery_mode: RecoveryMode,
    /// This node sees a majority of the nodes (or exactly half, with the leader): only then
    /// may it hold public addresses and answer for the cluster's name.
    #[serde(default)]
    pub quorum: bool,
    /// What happened on this node since it started.
    #[serde(default)]
    pub counters: HaCounters,
    /// When the answering node took this status (seconds since the Unix epoch), for uptimes.
    #[serde(default)]
    pub now: u64,
}

/// Events counted on one node since it started (Prometheus counters).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaCounters {
    /// Public addresses this node took over (added).
    pub takeovers: u64,
    /// Public addresses this node released.
    pub releases: u64,
    /// Times this node saw the leader change (including to itself).
    pub leader_changes: u64,
}

/// "3d 4h", "5m 2s": a short uptime.
pub fn short_duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

impl fmt::Display for ClusterStatus {
    /// The `ctdb status` layout admins know.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "Number of nodes:{}", self.nodes.len())?;
        for n in &self.nodes {
            let me = if n.this_node { " (THIS NODE)" } else { "" };
            write!(f, "pnn:{:<3} {:<16} {:<13}", n.pnn, n.address, n.state.to_string())?;
            if !n.version.is_empty() {
                write!(f, " version {}", n.version)?;
            }
            if n.started > 0 && self.now >= n.started {
                write!(f, " up {}", short_duration(self.now - n.started))?;
            }
            writeln!(f, "{me}")?;
            if !n.reason.is_empty() {
                writeln!(f, "       why: {}", n.reason)?;
            }
        }
        writeln!(f, "Generation:{}", self.generation)?;
        writeln!(f, "Recovery mode:{}", self.recovery_mode)?;
        writeln!(
            f,
            "Quorum:{}",
            if self.quorum { "yes" } else { "NO (holds no public address, answers no DNS query)" }
        )?;
        match self.leader {
            Some(l) => write!(f, "Leader:{l}"),
            None => write!(f, "Leader:none"),
        }
    }
}

/// One public address in `nasgw ip`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicIpStatus {
    /// The floating address.
    pub address: IpAddr,
    /// Its prefix length.
    pub prefix: u8,
    /// Interface it is added to.
    pub interface: String,
    /// Node holding it; `None` when no healthy node can.
    pub owner: Option<u32>,
    /// Client TCP connections on it known cluster-wide (replicated connection tables): whom a
    /// new owner tickles (like `ctdb gettickles`).
    #[serde(default)]
    pub connections: usize,
    /// The last owner change this node saw, if any since it started.
    #[serde(default)]
    pub last_move: Option<AddressMove>,
}

/// An owner change of a public address, as one node saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressMove {
    /// When (seconds since the Unix epoch).
    pub at: u64,
    /// The owner before (`None`: nobody).
    pub from: Option<u32>,
    /// The owner after (`None`: nobody).
    pub to: Option<u32>,
}

/// `nasgw ip`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpReport {
    /// The node answering.
    pub this_node: u32,
    /// Every configured public address.
    pub addresses: Vec<PublicIpStatus>,
    /// When the answering node took this report (seconds since the Unix epoch).
    #[serde(default)]
    pub now: u64,
}

impl IpReport {
    /// The `ctdb ip` layout; `verbose` adds the interface.
    pub fn render(&self, verbose: bool) -> String {
        let mut out = format!("Public IPs on node {}\n", self.this_node);
        if self.addresses.is_empty() {
            out.push_str("(no public addresses configured)\n");
        }
        for a in &self.addresses {
            let owner = a.owner.map_or("-1".to_string(), |o| o.to_string());
            if verbose {
                let node = |n: Option<u32>| n.map_or("none".to_string(), |n| n.to_string());
                let moved = match a.last_move {
                    Some(m) => format!(
                        " last_move[{} ago: node {} -> {}]",
                        short_duration(self.now.saturating_sub(m.at)),
                        node(m.from),
                        node(m.to)
                    ),
                    None => " last_move[none seen]".to_string(),
                };
                out.push_str(&format!(
                    "{}/{} node[{}] interface[{}] connections[{}]{moved}\n",
                    a.address, a.prefix, owner, a.interface, a.connections
                ));
            } else {
                out.push_str(&format!("{} {}\n", a.address, owner));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_shows_why_versions_and_uptime() {
        let node = |pnn, state, reason: &str| NodeStatus {
            pnn,
            address: format!("198.18.0.{}", pnn + 1).parse().unwrap(),
            state,
            this_node: pnn == 0,
            reason: reason.into(),
            version: "0.1.0".into(),
            started: 1000,
        };
        let s = ClusterStatus {
            nodes: vec![node(0, NodeState::Ok, ""), node(1, NodeState::Unhealthy, "volume hung")],
            generation: 3,
            leader: Some(0),
            recovery_mode: RecoveryMode::Normal,
            quorum: true,
            counters: HaCounters::default(),
            now: 1000 + 3 * 3600 + 60,
        };
        let text = s.to_string();
        assert!(text.contains("pnn:0   198.18.0.1       OK            version 0.1.0 up 3h 1m (THIS NODE)"), "{text}");
        assert!(text.contains("UNHEALTHY     version 0.1.0 up 3h 1m\n       why: volume hung\n"), "{text}");
        assert!(text.contains("Quorum:yes"), "{text}");
        assert_eq!(short_duration(59), "59s");
        assert_eq!(short_duration(61), "1m 1s");
        assert_eq!(short_duration(2 * 86_400 + 7200), "2d 2h");
    }

    #[test]
    fn ip_verbose_shows_connections_and_the_last_move() {
        let ip = |last_move| PublicIpStatus {
            address: "198.18.1.1".parse().unwrap(),
            prefix: 24,
            interface: "eth0".into(),
            owner: Some(2),
            connections: 4,
            last_move,
        };
        let r = IpReport {
            this_node: 0,
            addresses: vec![ip(Some(AddressMove { at: 90, from: Some(1), to: Some(2) })), ip(None)],
            now: 100,
        };
        let text = r.render(true);
        assert!(
            text.contains("198.18.1.1/24 node[2] interface[eth0] connections[4] last_move[10s ago: node 1 -> 2]"),
            "{text}"
        );
        assert!(text.contains("last_move[none seen]"), "{text}");
        assert_eq!(r.render(false).lines().nth(1), Some("198.18.1.1 2"));
    }
}
