//! An open handle: a named pipe or a file/directory of a disk share. Commands find it through
//! the connection's [`crate::smb::session::OpenTable`] by its volatile id.

use std::sync::{Arc, Mutex};

use crate::locks::{Conflict, LeaseId, OpenKey};
use crate::smb::srvsvc;
use crate::smb::wire::status::NtStatus;
use crate::smb::wire::{Reader, WireResult};
use crate::vfs::{Credentials, FileId};

/// What an open refers to.
#[derive(Debug)]
pub enum OpenKind {
    /// The srvsvc pipe on IPC$.
    Pipe(srvsvc::Pipe),
    /// A file or directory.
    File(Box<FileOpen>),
    /// A CREATE still waiting (for a break to be acknowledged): its FileId is reserved, the
    /// client learns it with the final answer, which fills the slot.
    Pending(Arc<Mutex<PendingOpen>>),
    /// The NTFS quota pseudo-file ([`crate::smb::quota_fake`]): only quota queries answer.
    QuotaFake,
}

/// Where a waiting CREATE stands.
#[derive(Debug)]
pub enum PendingOpen {
    /// Not answered yet.
    Waiting,
    /// Granted: the open, moved into the table at its first use.
    Ready(Box<FileOpen>),
    /// Refused or abandoned: the reserved FileId is dropped at its first use.
    Failed,
}

/// A directory listing being handed out by QUERY_DIRECTORY: a window of the directory read
/// from the backend ([`super::query_directory::WINDOW`] entries at most), not the whole
/// directory, so a handle holds little memory however large the directory.
#[derive(Debug, Default)]
pub struct Listing {
    /// Entries read and not all handed out yet (`.` and `..` first in the first window).
    pub entries: Vec<super::query_directory::Entry>,
    /// Next entry of `entries` to return.
    pub next: usize,
    /// The search pattern of the first query.
    pub pattern: String,
    /// Where the backend's next window starts (its readdir cookie); `None` once the directory
    /// was read to its end.
    pub cookie: Option<u64>,
}

/// An open file or directory of a disk share.
#[derive(Debug)]
pub struct FileOpen {
    /// The file's persistent identity (the lock table key).
    pub id: FileId,
    /// Its directory.
    pub parent: FileId,
    /// Share-relative components (empty for the share root).
    pub path: Vec<String>,
    /// A directory.
    pub is_dir: bool,
    /// Granted access mask.
    pub access: u32,
    /// This open in the lock table.
    pub key: OpenKey,
    /// The lease (or the oplock's own lease) it caches through.
    pub lease: Option<LeaseId>,
    /// Identity file access runs as.
    pub cred: Credentials,
    /// The share root (rename targets are resolved from it).
    pub root: FileId,
    /// FilePositionInformation.
    pub position: u64,
    /// Writes go to stable storage before they are answered.
    pub write_through: bool,
    /// Written through this open since its last flush: its close must flush the file (see
    /// [`crate::vfs::Backend::flush`]).
    pub wrote: bool,
    /// QUERY_DIRECTORY state.
    pub listing: Option<Listing>,
    /// Windows semantics of this handle (times the client fixed).
    pub state: crate::smb::file_state::FileState,
}

impl FileOpen {
    /// The last component ("" for the share root).
    pub fn name(&self) -> &str {
        self.path.last().map_or("", String::as_str)
    }

    /// Fails with ACCESS_DENIED unless the open was granted one of `bits`.
    pub fn require(&self, bits: u32) -> Result<(), NtStatus> {
        if self.access & bits != 0 {
            Ok(())
        } else {
            Err(NtStatus::ACCESS_DENIED)
        }
    }
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
    /// The newest channel sequence a request on it carried (SMB 3.x replay detection, see
    /// [`crate::smb::durable_replay`]).
    pub channel_sequence: u16,
    /// The handle's target.
    pub kind: OpenKind,
}

impl Open {
    /// The file behind this handle, or INVALID_DEVICE_REQUEST for a pipe.
    pub fn file(&mut self) -> Result<&mut FileOpen, NtStatus> {
        match &mut self.kind {
            OpenKind::File(f) => Ok(f),
            OpenKind::Pipe(_) | OpenKind::QuotaFake => Err(NtStatus::INVALID_DEVICE_REQUEST),
            OpenKind::Pending(_) => Err(NtStatus::FILE_CLOSED),
        }
    }
}

/// What a refusal of the cluster's file-sharing state means to an SMB client.
impl From<Conflict> for NtStatus {
    fn from(c: Conflict) -> Self {
        match c {
            Conflict::Sharing => NtStatus::SHARING_VIOLATION,
            Conflict::DeletePending => NtStatus::DELETE_PENDING,
            Conflict::Locked => NtStatus::LOCK_NOT_GRANTED,
            Conflict::NotLocked => NtStatus::RANGE_NOT_LOCKED,
            Conflict::NoSuchOpen => NtStatus::FILE_CLOSED,
            Conflict::LeaseKeyInUse => NtStatus::INVALID_PARAMETER,
            Conflict::NoBreak => NtStatus::UNSUCCESSFUL,
            Conflict::NotAccepted => NtStatus::REQUEST_NOT_ACCEPTED,
            Conflict::NotFound => NtStatus::OBJECT_NAME_NOT_FOUND,
            // The node is out of sync with the cluster for now: the client may retry.
            Conflict::Unavailable => NtStatus::IO_TIMEOUT,
        }
    }
}

/// Reads a 16-byte SMB2 FileId (persistent, volatile).
pub fn read_file_id(r: &mut Reader<'_>) -> WireResult<(u64, u64)> {
    Ok((r.u64()?, r.u64()?))
}

/// Access mask bits (MS-SMB2 2.2.13.1).
#[allow(missing_docs)]
pub mod access {
    pub const READ_DATA: u32 = 0x1;
    pub const WRITE_DATA: u32 = 0x2;
    pub const APPEND_DATA: u32 = 0x4;
    pub const READ_EA: u32 = 0x8;
    pub const WRITE_EA: u32 = 0x10;
    pub const EXECUTE: u32 = 0x20;
    pub const DELETE_CHILD: u32 = 0x40;
    pub const READ_ATTRIBUTES: u32 = 0x80;
    pub const WRITE_ATTRIBUTES: u32 = 0x100;
    pub const DELETE: u32 = 0x1_0000;
    pub const READ_CONTROL: u32 = 0x2_0000;
    pub const WRITE_DAC: u32 = 0x4_0000;
    pub const WRITE_OWNER: u32 = 0x8_0000;
    pub const SYNCHRONIZE: u32 = 0x10_0000;
    pub const ACCESS_SYSTEM_SECURITY: u32 = 0x100_0000;
    pub const MAXIMUM_ALLOWED: u32 = 0x200_0000;
    pub const GENERIC_ALL: u32 = 0x1000_0000;
    pub const GENERIC_EXECUTE: u32 = 0x2000_0000;
    pub const GENERIC_WRITE: u32 = 0x4000_0000;
    pub const GENERIC_READ: u32 = 0x8000_0000;
    /// Everything a file can grant.
    pub const FILE_ALL: u32 = 0x001F_01FF;
    /// Bits that modify the file or its name.
    pub const WRITE_BITS: u32 =
        WRITE_DATA | APPEND_DATA | WRITE_EA | WRITE_ATTRIBUTES | DELETE | WRITE_DAC | WRITE_OWNER | DELETE_CHILD;
}

/// Expands generic and MAXIMUM_ALLOWED bits into file-specific ones.
pub fn expand_access(desired: u32, writable: bool) -> u32 {
    use access::*;
    let mut a = desired & 0x01FF_FFFF & !MAXIMUM_ALLOWED;
    if desired & GENERIC_READ != 0 {
        a |= 0x0012_0089;
    }
    if desired & GENERIC_WRITE != 0 {
        a |= 0x0012_0116;
    }
    if desired & GENERIC_EXECUTE != 0 {
        a |= 0x0012_00A0;
    }
    if desired & GENERIC_ALL != 0 {
        a |= FILE_ALL;
    }
    if desired & MAXIMUM_ALLOWED != 0 {
        a |= if writable { FILE_ALL } else { 0x0012_00A9 };
    }
    a
}
