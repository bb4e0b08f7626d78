//! nasgw's high-availability module: what CTDB did for the seed recipe, inside the binary.
//!
//! Decisions (membership, leader election, public address placement, failover) are pure state
//! machines fed by events ([`machine`], [`placement`]); side effects (netlink, ARP, tickle ACKs,
//! the recovery lock, the notify script) sit behind one small trait ([`effects::Effects`]) so the
//! same logic runs in deterministic tests (`sim`, test-only) and in the daemon ([`runtime`]).
//! Wire formats are pure parsers/emitters ([`wire`]).
//! This crate knows nothing of SMB, NFS or the volume's contents.

pub mod connections;
pub mod effects;
pub mod health;
pub mod machine;
pub mod placement;
pub mod recovery_lock;
pub mod runtime;
pub mod self_id;
#[cfg(test)]
pub mod sim;
pub mod status;
pub mod system;
pub mod wire;
