//! NFSv3 service (RFC 1813) with MOUNT v3 and a portmapper, over TCP, on the namespace layer.
//!
//! Data flows one way: `server` (records, dispatch) -> `rpc` (call header, credential) ->
//! `args` (pure, bounded argument decoding) -> `proc` (one method per procedure) ->
//! [`crate::vfs::Namespace`]. Replies are encoded with `nfs3_types`. Handles are minted and
//! checked by `handle`; who may do what is `export`.

pub mod args;
pub mod attr;
pub mod budget;
mod dirlist;
pub mod export;
pub mod handle;
mod proc;
pub mod record;
pub mod rpc;
pub mod server;
pub mod sharing;
pub mod xdr;

pub use server::{start, NfsServer};
