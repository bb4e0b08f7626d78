//! nasgw, the clustered NAS gateway: config, daemon lifecycle, control socket, and (as they
//! land) the namespace layer, NFS and SMB services. `main.rs` is only the CLI front.

/// This build's version, as `nasgw status` and the metrics show it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub mod accounts;
pub mod cli;
pub mod clients;
pub mod cluster;
pub mod config;
pub mod control;
pub mod cut_off;
pub mod daemon;
pub mod descriptors;
pub mod dns;
pub mod fuse;
pub mod gluster;
pub mod heap;
pub mod listener;
pub mod locks;
pub mod logging;
pub mod metrics;
pub mod nfs;
pub mod provision;
pub mod smb;
pub mod systemd;
pub mod vfs;
