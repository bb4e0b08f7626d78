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
}

impl fmt::Display for ClusterStatus {
    /// The `ctdb status` layout admins know.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "Number of nodes:{}", self.nodes.len())?;
        for n in &self.nodes {
            let me = if n.this_node { " (THIS NODE)" } else { "" };
            writeln!(f, "pnn:{:<3} {:<16} {}{}", n.pnn, n.address, n.state, me)?;
        }
        writeln!(f, "Generation:{}", self.generation)?;
        writeln!(f, "Recovery mode:{}", self.recovery_mode)?;
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
}

/// `nasgw ip`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpReport {
    /// The node answering.
    pub this_node: u32,
    /// Every configured public address.
    pub addresses: Vec<PublicIpStatus>,
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
                out.push_str(&format!(
                    "{}/{} node[{}] interface[{}] connections[{}]\n",
                    a.address, a.prefix, owner, a.interface, a.connections
                ));
            } else {
                out.push_str(&format!("{} {}\n", a.address, owner));
            }
        }
        out
    }
}
