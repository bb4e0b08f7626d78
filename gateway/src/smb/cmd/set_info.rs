//! SET_INFO (MS-SMB2 2.2.39/2.2.40): basic (times, read-only), rename, disposition
//! (delete-on-close), end of file, allocation, position, mode, full EA (see
//! [`crate::smb::eas`]). Renames and deletes go through
//! the lock table's share modes.

use super::open::{access, read_file_id};
use super::query_info::{INFO_FILE, INFO_FILESYSTEM, INFO_SECURITY};
use super::Reply;
use crate::smb::conn::Connection;
use crate::smb::fs;
use crate::smb::streams;
use crate::smb::wire::header::Header;
use crate::smb::wire::status::NtStatus;
use crate::smb::wire::{from_utf16le, slice_at, Reader, WireError, WireResult, Writer};
use crate::vfs::changes::what;
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
    /// AdditionalInformation (which parts of a security descriptor are set).
    pub additional: u32,
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
        r.skip(2)?;
        let additional = r.u32()?;
        let file_id = read_file_id(&mut r)?;
        Ok(Self { info_type, class, file_id, additional, data: slice_at(msg, off, len)? })
    }
}

fn ok() -> Reply {
    let mut w = Writer::with_capacity(2);
    w.u16(2);
    Reply::ok(w.buf)
}

/// FileBasicInformation (MS-FSA 2.1.5.14.2): times (0: leave it; -1: keep it through this
/// handle's writes; -2: let writes move it again; else set it, and keep it), the creation
/// time and the attributes in `user.DOSATTRIB`, READONLY also as the mode's write bits.
async fn set_basic(
    server: &crate::smb::SmbServer,
    f: &mut super::open::FileOpen,
    b: fs::BasicInfo,
) -> Result<(), NtStatus> {
    let ns = &server.ns;
    let file = fs::file_of(f);
    let mut cur = ns.getattr(file).await?;
    // Any basic-information set makes a pending write-time update happen (as Windows and
    // smbd); a freeze keeps the time clients see.
    let now = crate::smb::filetime_now();
    server.write_times.flush(&file, now);
    if let Some(t) = server.write_times.shown(&file, now) {
        cur.mtime = fs::from_filetime(t);
    }
    if !matches!(b.mtime, 0 | fs::TIME_FREEZE | fs::TIME_THAW) {
        server.write_times.set_by_client(&file, b.mtime);
    }
    let mut dos = fs::dos_of(ns, &f.cred, file).await;
    let mut set = SetAttr::default();
    let mut store = false;
    for (ft, now, sticky, time) in [
        (b.mtime, cur.mtime, &mut f.state.sticky_write_time, &mut set.mtime),
        (b.atime, cur.atime, &mut f.state.sticky_access_time, &mut set.atime),
    ] {
        match ft {
            0 => {}
            fs::TIME_FREEZE => *sticky = Some(now),
            fs::TIME_THAW => *sticky = None,
            t => {
                let t = fs::from_filetime(t);
                *time = SetTime::Client(t);
                *sticky = Some(t);
            }
        }
    }
    if !matches!(b.create, 0 | fs::TIME_FREEZE | fs::TIME_THAW) {
        dos.create_time = Some(b.create);
        store = true;
    }
    let dir = cur.ftype == FileType::Directory;
    if b.attributes != 0 {
        if b.attributes & fs::ATTR_DIRECTORY != 0 && !dir {
            return Err(NtStatus::INVALID_PARAMETER);
        }
        if b.attributes & fs::ATTR_TEMPORARY != 0 && dir {
            return Err(NtStatus::INVALID_PARAMETER);
        }
        dos.attributes = Some(b.attributes & fs::ATTR_SETTABLE | if dir { fs::ATTR_DIRECTORY } else { 0 });
        store = true;
        if !dir {
            // READONLY is also the mode's write bits, so NFS clients and local programs see it.
            let mode = if b.attributes & fs::ATTR_READONLY != 0 {
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
    if store {
        if dos.create_time.is_none() {
            // Keep the creation time clients saw so far: without a birth time from the
            // volume it would otherwise follow mtime/ctime.
            dos.create_time = Some(fs::times(&cur, &dos)[0]);
        }
        // Before a chmod a-w, while the caller may still write the file's attributes.
        fs::store_dos(ns, &f.cred, file, &dos).await?;
    }
    if !set.is_empty() {
        ns.setattr(&f.cred, file, set).await?;
    }
    Ok(())
}

/// Renames the stream an open refers to (FileRenameInformation with a name `:new[:$DATA]`):
/// the value moves to the new attribute; an existing target is replaced only when asked.
async fn rename_stream(
    server: &crate::smb::SmbServer,
    f: &mut super::open::FileOpen,
    to: &str,
    replace: bool,
    case: fs::Case,
) -> Result<Reply, NtStatus> {
    let ns = &server.ns;
    let Some(from) = f.state.stream.clone() else { return Err(NtStatus::INVALID_PARAMETER) };
    let Some(to) = streams::parse(to)? else { return Err(NtStatus::INVALID_PARAMETER) };
    if let Some(existing) = streams::find(ns, &f.cred, from.base, &to, case).await? {
        if existing == from.name {
            return Ok(ok());
        }
        // NTFS never replaces a stream by a rename (Samba answers the same).
        return Err(if replace { NtStatus::INVALID_PARAMETER } else { NtStatus::OBJECT_NAME_COLLISION });
    }
    let data = streams::read_all(ns, &f.cred, &from).await?;
    let target = streams::StreamOpen { base: from.base, name: to };
    streams::write_all(ns, &f.cred, &target, data).await?;
    ns.remove_xattr(&f.cred, from.base, &from.xattr()).await?;
    // The open follows its stream; its lock key stays (the lock table keeps its records).
    f.state.stream = Some(target);
    Ok(ok())
}

/// Tells change watchers that the file of `f` changed (`bits`: [`what`]); a stream's change
/// is reported as its file's stream bits.
async fn changed(ns: &crate::vfs::Namespace, f: &super::open::FileOpen, mut bits: u32) {
    if f.state.stream.is_some() {
        bits = if bits & what::SIZE != 0 { what::STREAM_SIZE } else { 0 };
    }
    if let Some(name) = f.path.last() {
        ns.modified(f.parent, name.as_bytes(), bits).await;
    }
}

/// SET_INFO of a security descriptor: the `parts` of `data` are kept (see
/// [`crate::smb::security`]); WRITE_OWNER for the owner and group, WRITE_DAC for the DACL.
async fn set_security(
    ns: &crate::vfs::Namespace,
    f: &super::open::FileOpen,
    parts: u32,
    data: &[u8],
) -> Result<Reply, NtStatus> {
    use crate::smb::security::{self, part};
    if parts & part::SACL != 0 {
        return Err(NtStatus::PRIVILEGE_NOT_HELD);
    }
    if parts & (part::OWNER | part::GROUP) != 0 {
        f.require(access::WRITE_OWNER)?;
    }
    if parts & part::DACL != 0 {
        f.require(access::WRITE_DAC)?;
    }
    let (new, _) = security::parse(data)?;
    let file = fs::file_of(f);
    let base = match security::load(ns, &f.cred, file).await {
        Some(kept) => kept,
        None => {
            let a = ns.getattr(file).await?;
            security::made_up(a.uid, a.gid)
        }
    };
    security::store(ns, &f.cred, file, &security::merge(base, new, parts)).await?;
    changed(ns, f, what::SECURITY).await;
    Ok(ok())
}

/// Handles SET_INFO.
pub async fn handle(conn: &mut Connection, hdr: &Header, req: Request<'_>) -> Result<Reply, NtStatus> {
    conn.session(hdr.session_id)?;
    let tree = conn.session(hdr.session_id)?.tree(hdr.tree_id)?;
    let writable = tree.writable;
    let case = match &tree.kind {
        crate::smb::session::TreeKind::Disk(share) => fs::Case::of(share),
        crate::smb::session::TreeKind::Ipc => fs::Case::Sensitive,
    };
    let vol = conn.file_id(req.file_id.0, req.file_id.1)?;
    let server = conn.server.clone();
    let ns = &server.ns;
    let f = conn.opens.get_mut(vol, hdr.session_id, hdr.tree_id)?.file()?;
    match req.info_type {
        INFO_FILE => {}
        INFO_SECURITY => {
            if !writable {
                return Err(NtStatus::ACCESS_DENIED);
            }
            return set_security(ns, f, req.additional, req.data).await;
        }
        INFO_FILESYSTEM => return Err(NtStatus::NOT_SUPPORTED),
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
            let create = r.u64().map_err(short)?;
            let atime = r.u64().map_err(short)?;
            let mtime = r.u64().map_err(short)?;
            let _change = r.u64().map_err(short)?;
            let attrs = r.u32().map_err(short)?;
            set_basic(&server, f, fs::BasicInfo { create, atime, mtime, attributes: attrs }).await?;
            let set = |t: u64, bit: u32| if matches!(t, 0 | fs::TIME_FREEZE | fs::TIME_THAW) { 0 } else { bit };
            let bits = set(create, what::CREATION)
                | set(atime, what::LAST_ACCESS)
                | set(mtime, what::LAST_WRITE)
                | if attrs != 0 { what::ATTRIBUTES } else { 0 };
            changed(ns, f, bits).await;
            Ok(ok())
        }
        // FileRenameInformation
        10 => {
            f.require(access::DELETE)?;
            let replace = r.u8().map_err(short)? != 0;
            r.skip(7 + 8).map_err(short)?;
            let len = r.u32().map_err(short)? as usize;
            let name = from_utf16le(r.bytes(len).map_err(short)?).map_err(|_| NtStatus::OBJECT_NAME_INVALID)?;
            if let Some(to) = name.strip_prefix(':') {
                // A stream renamed to another stream of its file (`:new` or `:new:$DATA`).
                return rename_stream(&server, f, to, replace, case).await;
            }
            if f.state.stream.is_some() {
                return Err(NtStatus::INVALID_PARAMETER);
            }
            let name = name.trim_start_matches('\\');
            let mut comps = fs::split_name(name)?;
            let Some(old_name) = f.path.last().cloned() else { return Err(NtStatus::ACCESS_DENIED) };
            // Other clients' handle caching goes first (they may close), then share modes decide.
            server.locks.may_also(&f.id, Some(f.key), access::DELETE, true, f.lease).await?;
            if server.locks.record(&f.parent).await?.blocks_child_rename() {
                return Err(NtStatus::SHARING_VIOLATION);
            }
            if f.is_dir && server.has_open_below(f.root, &f.path, f.key) {
                return Err(NtStatus::ACCESS_DENIED);
            }
            let to_dir = fs::parent_of(ns, &f.cred, f.root, &mut comps, case).await?;
            let Some(new_name) = comps.last().cloned() else { return Err(NtStatus::INVALID_PARAMETER) };
            if to_dir == f.parent && new_name == old_name {
                return Ok(ok());
            }
            // The target by the share's case rule: on a case-insensitive share `B.txt` is the
            // existing `b.txt` (replaced, or a collision), and renaming a file to its own name
            // in another case changes only the case.
            let replaced = match fs::lookup(ns, &f.cred, to_dir, &new_name, case).await {
                Ok((real, tid, ta)) if tid != f.id => {
                    if !replace {
                        return Err(NtStatus::OBJECT_NAME_COLLISION);
                    }
                    if ta.ftype == FileType::Directory || server.locks.record(&tid).await?.has_other_opens(f.key) {
                        return Err(NtStatus::ACCESS_DENIED);
                    }
                    Some(real)
                }
                Ok(_) | Err(VfsError::NotFound) => None,
                Err(e) => return Err(e.into()),
            };
            match replaced {
                Some(real) if real != new_name => {
                    // Replace the file under its own name, then give ours the name asked for.
                    ns.rename(&f.cred, f.parent, old_name.as_bytes(), to_dir, real.as_bytes()).await?;
                    ns.rename(&f.cred, to_dir, real.as_bytes(), to_dir, new_name.as_bytes()).await?;
                }
                _ => ns.rename(&f.cred, f.parent, old_name.as_bytes(), to_dir, new_name.as_bytes()).await?,
            }
            f.parent = to_dir;
            f.path = comps;
            server.track_path(f.key, Some((f.root, f.path.clone())));
            Ok(ok())
        }
        // FileDispositionInformation / FileDispositionInformationEx
        13 | 64 => {
            let on = if req.class == 13 { r.u8().map_err(short)? != 0 } else { r.u32().map_err(short)? & 1 != 0 };
            f.require(access::DELETE)?;
            if on && f.state.stream.is_none() {
                if f.path.is_empty() {
                    return Err(NtStatus::ACCESS_DENIED);
                }
                let a = ns.getattr(f.id).await?;
                if a.ftype == FileType::Directory {
                    if !super::create::dir_is_empty(ns, &f.cred, f.id).await {
                        return Err(NtStatus::DIRECTORY_NOT_EMPTY);
                    }
                } else if fs::attributes(&a, &fs::dos_of(ns, &f.cred, f.id).await, "") & fs::ATTR_READONLY != 0 {
                    return Err(NtStatus::CANNOT_DELETE);
                }
            }
            server.locks.set_delete_pending(&f.id, on).await?;
            if on && f.is_dir && f.state.stream.is_none() {
                server.watches.delete_pending(&f.id);
            }
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
            if let Some(s) = &f.state.stream {
                let len = streams::read_all(ns, &f.cred, s).await?.len() as u64;
                if alloc < len {
                    streams::set_size(ns, &f.cred, s, alloc).await?;
                }
                return Ok(ok());
            }
            // Growing or shrinking, the allocation changes: other opens' read caching goes
            // (smbd breaks level II oplocks either way).
            server.locks.contend_if_needed(&f.id, f.lease).await?;
            let a = ns.getattr(f.id).await?;
            if alloc < a.size {
                ns.setattr(&f.cred, f.id, SetAttr { size: Some(alloc), ..Default::default() }).await?;
                changed(ns, f, what::SIZE).await;
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
            if let Some(s) = &f.state.stream {
                streams::set_size(ns, &f.cred, s, size).await?;
                return Ok(ok());
            }
            if f.is_dir {
                return Err(NtStatus::INVALID_PARAMETER);
            }
            server.locks.contend_if_needed(&f.id, f.lease).await?;
            ns.setattr(&f.cred, f.id, SetAttr { size: Some(size), ..Default::default() }).await?;
            server.write_times.flush(&f.id, crate::smb::filetime_now());
            changed(ns, f, what::SIZE).await;
            Ok(ok())
        }
        // FileFullEaInformation: set (or, with an empty value, remove) EAs.
        15 => {
            f.require(access::WRITE_EA)?;
            let eas = crate::smb::eas::parse(req.data)?;
            crate::smb::eas::store(ns, &f.cred, fs::file_of(f), &eas).await?;
            changed(ns, f, what::EA).await;
            Ok(ok())
        }
        _ => Err(NtStatus::INVALID_INFO_CLASS),
    }
}
