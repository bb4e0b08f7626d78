//! CREATE (MS-SMB2 2.2.13/2.2.14): opens the srvsvc pipe on IPC$, or a file or directory of a
//! disk share.

use super::open::{Open, OpenKind};
use super::Reply;
use crate::smb::conn::Connection;
use crate::smb::session::TreeKind;
use crate::smb::srvsvc;
use crate::smb::wire::header::Header;
use crate::smb::wire::status::NtStatus;
use crate::smb::wire::{from_utf16le, slice_at, Reader, WireError, WireResult, Writer};

/// A decoded CREATE request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Requested oplock level.
    pub oplock: u8,
    /// DesiredAccess.
    pub desired_access: u32,
    /// FileAttributes.
    pub file_attributes: u32,
    /// ShareAccess.
    pub share_access: u32,
    /// CreateDisposition.
    pub disposition: u32,
    /// CreateOptions.
    pub options: u32,
    /// Name relative to the share (backslashes, may be empty for the root).
    pub name: String,
    /// Raw create contexts.
    pub contexts: Vec<u8>,
}

impl Request {
    /// Decodes the body of `msg`.
    pub fn parse(msg: &[u8]) -> WireResult<Self> {
        let mut r = Reader::at(msg, 64);
        if r.u16()? != 57 {
            return Err(WireError::Malformed("CREATE structure size"));
        }
        r.skip(1)?;
        let oplock = r.u8()?;
        r.skip(4 + 8 + 8)?;
        let desired_access = r.u32()?;
        let file_attributes = r.u32()?;
        let share_access = r.u32()?;
        let disposition = r.u32()?;
        let options = r.u32()?;
        let name_off = r.u16()? as usize;
        let name_len = r.u16()? as usize;
        let ctx_off = r.u32()? as usize;
        let ctx_len = r.u32()? as usize;
        let name = from_utf16le(slice_at(msg, name_off, name_len)?)?;
        let contexts = slice_at(msg, ctx_off, ctx_len)?.to_vec();
        Ok(Self { oplock, desired_access, file_attributes, share_access, disposition, options, name, contexts })
    }
}

/// Times, sizes and attributes a CREATE/CLOSE response carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FileBasics {
    /// CreationTime (FILETIME).
    pub creation: u64,
    /// LastAccessTime.
    pub access: u64,
    /// LastWriteTime.
    pub write: u64,
    /// ChangeTime.
    pub change: u64,
    /// AllocationSize.
    pub allocation: u64,
    /// EndOfFile.
    pub eof: u64,
    /// FileAttributes.
    pub attributes: u32,
}

/// Encodes a CREATE response.
pub fn response(action: u32, b: &FileBasics, fid: (u64, u64), contexts: &[u8]) -> Vec<u8> {
    let mut w = Writer::with_capacity(96 + contexts.len());
    w.u16(89).u8(0).u8(0).u32(action);
    w.u64(b.creation).u64(b.access).u64(b.write).u64(b.change).u64(b.allocation).u64(b.eof);
    w.u32(b.attributes).u32(0).u64(fid.0).u64(fid.1);
    if contexts.is_empty() {
        w.u32(0).u32(0).u8(0);
    } else {
        w.u32(64 + 88).u32(contexts.len() as u32).bytes(contexts);
    }
    w.buf
}

/// CreateAction: the file existed and was opened.
pub const FILE_OPENED: u32 = 1;
/// CreateAction: created.
pub const FILE_CREATED: u32 = 2;
/// CreateAction: overwritten.
pub const FILE_OVERWRITTEN: u32 = 3;

/// Handles CREATE.
pub async fn handle(conn: &mut Connection, hdr: &Header, msg: &[u8]) -> Result<Reply, NtStatus> {
    let req = Request::parse(msg).map_err(|_| NtStatus::INVALID_PARAMETER)?;
    let tree = conn.session(hdr.session_id)?.tree(hdr.tree_id)?.clone();
    match tree.kind {
        TreeKind::Ipc => {
            let name = req.name.trim_start_matches('\\').to_ascii_lowercase();
            if name != "srvsvc" {
                return Err(NtStatus::OBJECT_NAME_NOT_FOUND);
            }
            let session_id = hdr.session_id;
            let vol = conn.opens.insert(|v| Open {
                volatile: v,
                persistent: v,
                session_id,
                tree_id: tree.id,
                kind: OpenKind::Pipe(srvsvc::Pipe::default()),
            });
            conn.compound_fid = Some((vol, vol));
            let b = FileBasics { attributes: 0x80, ..Default::default() };
            Ok(Reply::ok(response(FILE_OPENED, &b, (vol, vol), &[])))
        }
        TreeKind::Disk(_) => Err(NtStatus::NOT_SUPPORTED),
    }
}
