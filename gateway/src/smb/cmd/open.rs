//! An open handle: a named pipe or a file/directory of a disk share. Commands find it through
//! the connection's [`crate::smb::session::OpenTable`] by its volatile id.

use crate::smb::srvsvc;
use crate::smb::wire::{Reader, WireResult};

/// What an open refers to.
#[derive(Debug)]
pub enum OpenKind {
    /// The srvsvc pipe on IPC$.
    Pipe(srvsvc::Pipe),
}

/// One open handle.
#[derive(Debug)]
pub struct Open {
    /// Volatile id (the table key).
    pub volatile: u64,
    /// Persistent id (we have no durable handles: equal to the volatile id).
    pub persistent: u64,
    /// Session that opened it.
    pub session_id: u64,
    /// Tree it was opened on.
    pub tree_id: u32,
    /// The handle's target.
    pub kind: OpenKind,
}

/// Reads a 16-byte SMB2 FileId (persistent, volatile).
pub fn read_file_id(r: &mut Reader<'_>) -> WireResult<(u64, u64)> {
    Ok((r.u64()?, r.u64()?))
}
