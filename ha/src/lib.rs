//! nasgw's high-availability module: what CTDB did for the seed recipe, inside the binary.
//!
//! Decisions (membership, leader election, public address placement, failover) are pure state
//! machines fed by events; side effects (netlink, ARP, tickle ACKs, the recovery lock) sit behind
//! one small trait so the same logic runs in deterministic tests and in the daemon.
//! This crate knows nothing of SMB, NFS or the volume's contents.

pub mod connections;
pub mod self_id;
pub mod status;
