//! Whether this node is cut off from the cluster (pure): the moment from which other nodes may
//! give what its clients held (opens, share modes, locks, leases) to their own clients, so
//! nothing this node still lets through may reach the volume.
//!
//! The file-sharing state's license alone does not say it: every node loses its license for a
//! moment when the leader dies or a new leader takes over (the new leader waits one license
//! before its first view), and nobody gives a node's files away then. What tells them apart:
//! - **Minority**: HA hears no strict majority of the nodes and no leader, which holds half of
//!   `[cluster] dead_interval_ms` after the cut. The majority side excludes the node one
//!   license (`dead - 2 x heartbeat`) after it last confirmed it at the earliest
//!   (`locks::machine`, "Fencing"), so this comes first (300 ms ahead with the default
//!   timings); it does not wait for the node's own license to run out, which is later. A node
//!   whose leader died still hears the majority electing the next one. (Two nodes cannot tell
//!   their peer's death from their own cut: the survivor is fenced too, then takes over.)
//! - **Excluded**: unlicensed for [`EXCLUDED_AFTER`] although HA hears quorum and a leader: the
//!   leader leaves the node out of its views (its lock mesh links are down while heartbeats
//!   still flow). A new leader licenses its members within about a license; this much longer
//!   is no takeover. The same bound makes the node report itself unhealthy (`cluster.rs`).

use std::time::Duration;

/// How long a node may be unlicensed while HA hears quorum and a leader before it counts as
/// left out of the cluster's views.
pub const EXCLUDED_AFTER: Duration = Duration::from_secs(5);

/// Why this node is cut off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutOff {
    /// It hears no majority of the nodes and no leader.
    Minority,
    /// HA hears quorum and a leader, but the file-sharing state left this node out.
    Excluded,
}

impl std::fmt::Display for CutOff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CutOff::Minority => "this node hears no majority of the cluster's nodes and no leader",
            CutOff::Excluded => "the cluster's file-sharing state has left this node out although HA hears quorum",
        })
    }
}

/// What the node knows at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// The node was licensed at some time since it started: until then it held nothing
    /// anyone could be given (a node starting before the others hears no majority either).
    pub was_licensed: bool,
    /// The file-sharing state licenses this node.
    pub licensed: bool,
    /// HA hears quorum and a fresh leader (or leads).
    pub in_quorum: bool,
    /// HA hears a strict majority of the nodes.
    pub majority: bool,
    /// How long the node has been unlicensed while HA heard quorum and a leader.
    pub excluded_for: Duration,
}

/// Whether the node is cut off, and why.
pub fn verdict(s: Seen) -> Option<CutOff> {
    if !s.was_licensed {
        None
    } else if !s.in_quorum && !s.majority {
        Some(CutOff::Minority)
    } else if !s.licensed && s.in_quorum && s.excluded_for >= EXCLUDED_AFTER {
        Some(CutOff::Excluded)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_is_cut_off_only_where_others_may_give_its_files_away() {
        let ms = Duration::from_millis;
        // (licensed, in_quorum, majority, excluded_for, verdict), for a node licensed before
        let cases: &[(bool, bool, bool, Duration, Option<CutOff>)] = &[
            // In sync.
            (true, true, true, ms(0), None),
            // Cut off, its license not run out yet: the others wait for more than that.
            (true, false, false, ms(0), Some(CutOff::Minority)),
            // Cut off: hears nobody, its license ran out.
            (false, false, false, ms(0), Some(CutOff::Minority)),
            // Its leader died: the majority elects the next one (no leader heard yet).
            (false, false, true, ms(0), None),
            // A new leader is heard and waits one license before its first view.
            (false, true, true, ms(900), None),
            (false, true, true, ms(4999), None),
            // Left out of the views although HA is content (the lock mesh is cut).
            (false, true, true, ms(5000), Some(CutOff::Excluded)),
            // A tie with the leader on this side: HA's quorum, not a majority.
            (false, true, false, ms(100), None),
            (false, true, false, ms(6000), Some(CutOff::Excluded)),
        ];
        for &(licensed, in_quorum, majority, excluded_for, want) in cases {
            let s = Seen { was_licensed: true, licensed, in_quorum, majority, excluded_for };
            assert_eq!(verdict(s), want, "{s:?}");
            // A node never licensed since it started holds nothing to fence.
            assert_eq!(verdict(Seen { was_licensed: false, ..s }), None, "{s:?}");
        }
    }
}
