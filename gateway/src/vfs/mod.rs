//! The namespace layer both protocols serve: one view of the volume, reached through a
//! [`Backend`] that is addressed by persistent file identities, never by paths.
//!
//! Data flows one way: a protocol decodes a request, calls [`Namespace`] with the caller's
//! [`Credentials`] and a [`FileId`], the namespace validates names and runs the backend call on a
//! blocking thread, and the result ([`Attr`], [`VfsError`]) is mapped back by the protocol.
//!
//! Invariants:
//! - a [`FileId`] names one file for its whole life, on every node serving the volume; resolving
//!   the id of a deleted file fails with [`VfsError::Stale`], never yields another file;
//! - every name reaching a backend is one path component ([`Name`]): no `/`, `.`, `..` or NUL;
//! - the POSIX backend never follows a symlink on the server while resolving a [`Name`]; only
//!   [`Namespace::walk`] follows symlinks, and only while they stay beneath the root.
//!
//! See `API.md` in this directory for a walkthrough.

pub mod access;
pub mod backend;
pub mod changes;
pub mod cred;
pub mod disk_pool;
pub mod error;
pub mod folding;
pub mod in_place;
pub mod local_folded;
pub mod name;
pub mod namespace;
pub mod open_files;
pub mod posix;
pub mod types;

pub use backend::Backend;
pub use cred::Credentials;
pub use error::{VfsError, VfsResult};
pub use name::Name;
pub use namespace::Namespace;
pub use types::*;
