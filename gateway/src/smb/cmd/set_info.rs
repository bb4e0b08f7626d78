//! SET_INFO (MS-SMB2 2.2.39/2.2.40): basic (times, read-only), rename, disposition
//! (delete-on-close), end of file, allocation, position, mode. Renames and deletes go through
//! the lock table's share modes.

use super::open::{access, read_file_id};
use super::query_info::{INFO_FILE, INFO_FILESYSTEM, INFO_SECURITY};
use super::Reply;
use crate::smb::conn::Connection;
use crate::smb::fs;
use crate::smb::wire::header::Header;
use crate::smb::wire::status::NtStatus;
use crate::smb::wire::{from_utf16le, slice_at, Reader, WireError, WireResult, Writer};
use crate::vfs::{FileType, SetAttr, SetTime, VfsError};

/// A decoded SET_INFO request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    /// InfoType.
    pub info_type: u8,
    /// FileInfoClass.
    pub class: u8,
    /// FileId.
    pub file_id: (u64, u64),
    /// The information buffer.
    pub data: &'a [u8],
}

impl<'a> Request<'a> {
    /// Decodes the body of `msg`.
    pub fn parse(msg: &'a [u8]) -> WireResult<Self> {
        let mut r = Reader::at(msg, 64);
        if r.u16()? != 33 {
            return Err(WireError::Malformed("SET_INFO structure size"));
        }
        let info_type = r.u8()?;
        let class = r.u8()?;
        let len = r.u32()? as usize;
        let off = r.u16()? as usize;
        r.skip(2 + 4)?;
        let file_id = read_file_id(&mut r)?;
        Ok(Self { info_type, class, file_id, data: slice_at(msg, off, len)? })
    }
}

fn ok() -> Reply {
    let mut w = Writer::with_capacity(2);
    w.u16(2);
    Reply::ok(w.buf)
}

fn time_of(ft: u64) -> SetTime {
    if ft == 0 || ft == u64::MAX || ft == u64::MAX - 1 {
        SetTime::DontChange
    } else {
        SetTime::Client(fs::from_filetime(ft))
    }
}

/// Handles SET_INFO.
pub async fn handle(conn: &mut Connection, hdr: &Header, req: Request<'_>) -> Result<Reply, NtStatus> {
    conn.session(hdr.session_id)?;
    let writable = conn.session(hdr.session_id)?.tree(hdr.tree_id)?.writable;
    let vol = conn.file_id(req.file_id.0, req.file_id.1)?;
    let server = conn.server.clone();
    let ns = &server.ns;
    let f = conn.opens.get_mut(vol, hdr.session_id, hdr.tree_id)?.file()?;
    match req.info_type {
        INFO_FILE => {}
        INFO_FILESYSTEM | INFO_SECURITY => return Err(NtStatus::NOT_SUPPORTED),
        _ => return Err(NtStatus::INVALID_PARAMETER),
    }
    if !writable && req.class != 14 {
        return Err(NtStatus::ACCESS_DENIED);
    }
    let mut r = Reader::new(req.data);
    let short = |_| NtStatus::INFO_LENGTH_MISMATCH;
    match req.class {
        // FileBasicInformation
        4 => {
            f.require(access::WRITE_ATTRIBUTES)?;
            let _create = r.u64().map_err(short)?;
            let atime = time_of(r.u64().map_err(short)?);
            let mtime = time_of(r.u64().map_err(short)?);
            let _change = r.u64().map_err(short)?;
            let attrs = r.u32().map_err(short)?;
            let cur = ns.getattr(f.id).await?;
            let mut set = SetAttr { atime, mtime, ..Default::default() };
            if attrs != 0 {
                if attrs & fs::ATTR_DIRECTORY != 0 && cur.ftype != FileType::Directory {
                    return Err(NtStatus::INVALID_PARAMETER);
                }
                if attrs & fs::ATTR_TEMPORARY != 0 && cur.ftype == FileType::Directory {
                    return Err(NtStatus::INVALID_PARAMETER);
                }
                if cur.ftype != FileType::Directory {
                    let ro = attrs & fs::ATTR_READONLY != 0;
                    let mode = if ro {
                        cur.mode & !0o222
                    } else if cur.mode & 0o222 == 0 {
                        cur.mode | 0o200
                    } else {
                        cur.mode
                    };
                    if mode != cur.mode {
                        set.mode = Some(mode);
                    }
                }
            }
            if !set.is_empty() {
                ns.setattr(&f.cred, f.id, set).await?;
            }
            Ok(ok())
        }
        // FileRenameInformation
        10 => {
            f.require(access::DELETE)?;
            let replace = r.u8().map_err(short)? != 0;
            r.skip(7 + 8).map_err(short)?;
            let len = r.u32().map_err(short)? as usize;
            let name = from_utf16le(r.bytes(len).map_err(short)?).map_err(|_| NtStatus::OBJECT_NAME_INVALID)?;
            let name = name.trim_start_matches('\\');
            let comps = fs::split_name(name)?;
            let Some(new_name) = comps.last().cloned() else { return Err(NtStatus::INVALID_PARAMETER) };
            let Some(old_name) = f.path.last().cloned() else { return Err(NtStatus::ACCESS_DENIED) };
            // Other clients' handle caching goes first (they may close), then share modes decide.
            server.locks.may_also(&f.id, Some(f.key), access::DELETE, true, f.lease).await?;
            if server.locks.record(&f.parent).await?.blocks_child_rename() {
                return Err(NtStatus::SHARING_VIOLATION);
            }
            if f.is_dir && server.has_open_below(f.root, &f.path, f.key) {
                return Err(NtStatus::ACCESS_DENIED);
            }
            let to_dir = fs::parent_of(ns, &f.cred, f.root, &comps).await?;
            if to_dir == f.parent && new_name == old_name {
                return Ok(ok());
            }
            match ns.lookup(&f.cred, to_dir, new_name.as_bytes()).await {
                Ok((tid, ta)) => {
                    let same_file = tid == f.id;
                    if !same_file {
                        if !replace {
                            return Err(NtStatus::OBJECT_NAME_COLLISION);
                        }
                        if ta.ftype == FileType::Directory || server.locks.record(&tid).await?.has_other_opens(f.key) {
                            return Err(NtStatus::ACCESS_DENIED);
                        }
                    }
                }
                Err(VfsError::NotFound) => {}
                Err(e) => return Err(e.into()),
            }
            ns.rename(&f.cred, f.parent, old_name.as_bytes(), to_dir, new_name.as_bytes()).await?;
            f.parent = to_dir;
            f.path = comps;
            server.track_path(f.key, Some((f.root, f.path.clone())));
            Ok(ok())
        }
        // FileDispositionInformation / FileDispositionInformationEx
        13 | 64 => {
            let on = if req.class == 13 { r.u8().map_err(short)? != 0 } else { r.u32().map_err(short)? & 1 != 0 };
            f.require(access::DELETE)?;
            if on {
                if f.path.is_empty() {
                    return Err(NtStatus::ACCESS_DENIED);
                }
                let a = ns.getattr(f.id).await?;
                if a.ftype == FileType::Directory {
                    if !super::create::dir_is_empty(ns, &f.cred, f.id).await {
                        return Err(NtStatus::DIRECTORY_NOT_EMPTY);
                    }
                } else if a.mode & 0o222 == 0 {
                    return Err(NtStatus::CANNOT_DELETE);
                }
            }
            server.locks.set_delete_pending(&f.id, on).await?;
            Ok(ok())
        }
        // FilePositionInformation
        14 => {
            f.position = r.u64().map_err(short)?;
            Ok(ok())
        }
        // FileModeInformation
        16 => {
            let mode = r.u32().map_err(short)?;
            f.write_through = mode & 2 != 0;
            Ok(ok())
        }
        // FileAllocationInformation
        19 => {
            f.require(access::WRITE_DATA)?;
            let alloc = r.u64().map_err(short)?;
            let a = ns.getattr(f.id).await?;
            if alloc < a.size {
                ns.setattr(&f.cred, f.id, SetAttr { size: Some(alloc), ..Default::default() }).await?;
            }
            Ok(ok())
        }
        // FileEndOfFileInformation
        20 => {
            f.require(access::WRITE_DATA)?;
            let size = r.u64().map_err(short)?;
            if size > i64::MAX as u64 {
                return Err(NtStatus::INVALID_PARAMETER);
            }
            if f.is_dir {
                return Err(NtStatus::INVALID_PARAMETER);
            }
            ns.setattr(&f.cred, f.id, SetAttr { size: Some(size), ..Default::default() }).await?;
            Ok(ok())
        }
        15 => Err(NtStatus::EAS_NOT_SUPPORTED),
        _ => Err(NtStatus::INVALID_INFO_CLASS),
    }
}
