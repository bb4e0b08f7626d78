//! nasgw, the clustered NAS gateway: config, daemon lifecycle, control socket, and (as they
//! land) the namespace layer, NFS and SMB services. `main.rs` is only the CLI front.

pub mod cli;
pub mod cluster;
pub mod config;
pub mod control;
pub mod daemon;
pub mod gluster;
pub mod listener;
pub mod locks;
pub mod logging;
pub mod nfs;
pub mod smb;
pub mod systemd;
pub mod vfs;
