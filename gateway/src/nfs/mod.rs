//! NFSv3 service (RFC 1813) with MOUNT v3, the lock manager (NLM, NSM) and a portmapper, over TCP
//! (and UDP for everything but NFS itself), on the namespace layer.
//!
//! Data flows one way: `server` (records, dispatch) -> `rpc` (call header, credential) ->
//! `args` (pure, bounded argument decoding) -> `proc` (one method per procedure) ->
//! [`crate::vfs::Namespace`]. Replies are encoded with `nfs3_types`. Handles are minted and
//! checked by `handle`; who may do what is `export`. Locks: `nlm` (NLM on the cluster's lock
//! table, grace per address, the monitor list on the volume) and `nsm`; `portmap` says where
//! each program is; `udp` serves datagrams; `rpc_client` makes the few calls the server sends;
//! `splice` sends READ data from the page cache without a copy.

pub mod args;
pub mod attr;
pub mod budget;
mod dirlist;
pub mod export;
pub mod handle;
pub mod nlm;
pub mod nsm;
pub mod portmap;
mod proc;
pub mod record;
pub mod rpc;
pub mod rpc_client;
pub mod server;
pub mod sharing;
pub mod splice;
pub mod udp;
pub mod xdr;

pub use server::{start, NfsServer};
