//! QUERY_DIRECTORY (MS-SMB2 2.2.33/2.2.34): lists a directory in the information classes
//! smbclient and Windows use, with wildcards, restart/reopen and single-entry queries.

use super::open::{read_file_id, Listing};
use super::Reply;
use crate::smb::conn::Connection;
use crate::smb::dosattrib::DosInfo;
use crate::smb::fs;
use crate::smb::wire::header::Header;
use crate::smb::wire::status::NtStatus;
use crate::smb::wire::{from_utf16le, slice_at, utf16le, Reader, WireError, WireResult, Writer};
use crate::vfs::{Attr, Credentials, FileId, Namespace};

/// Flag: start over.
const RESTART_SCANS: u8 = 0x01;
/// Flag: one entry only.
const RETURN_SINGLE_ENTRY: u8 = 0x02;
/// Flag: start over with a new pattern.
const REOPEN: u8 = 0x10;

/// Information classes.
#[allow(missing_docs)]
pub mod class {
    pub const DIRECTORY: u8 = 1;
    pub const FULL_DIRECTORY: u8 = 2;
    pub const BOTH_DIRECTORY: u8 = 3;
    pub const NAMES: u8 = 12;
    pub const ID_BOTH_DIRECTORY: u8 = 37;
    pub const ID_FULL_DIRECTORY: u8 = 38;
}

/// A decoded QUERY_DIRECTORY request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Information class.
    pub class: u8,
    /// Flags.
    pub flags: u8,
    /// FileId.
    pub file_id: (u64, u64),
    /// Search pattern.
    pub pattern: String,
    /// Most bytes to return.
    pub max_len: u32,
}

impl Request {
    /// Decodes the body of `msg`.
    pub fn parse(msg: &[u8]) -> WireResult<Self> {
        let mut r = Reader::at(msg, 64);
        if r.u16()? != 33 {
            return Err(WireError::Malformed("QUERY_DIRECTORY structure size"));
        }
        let class = r.u8()?;
        let flags = r.u8()?;
        r.skip(4)?;
        let file_id = read_file_id(&mut r)?;
        let off = r.u16()? as usize;
        let len = r.u16()? as usize;
        let max_len = r.u32()?;
        let pattern = from_utf16le(slice_at(msg, off, len)?)?;
        Ok(Self { class, flags, file_id, pattern, max_len })
    }
}

/// One directory entry as a listing hands it out: its name, attributes and what its
/// `user.DOSATTRIB` says.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The name as on the volume.
    pub name: String,
    /// Its attributes.
    pub attr: Attr,
    /// Its stored DOS attributes and creation time.
    pub dos: DosInfo,
    /// The size of its EAs as one FILE_FULL_EA_INFORMATION list (the EaSize of the classes
    /// that carry one; 0 without EAs, or when the listing's class has no EaSize).
    pub ea_size: u32,
    /// Its identity, when the listing knows it (the write time SMB shows may be kept apart
    /// from the volume's, see [`crate::smb::write_time`]).
    pub id: Option<FileId>,
}

/// Whether `class` carries an EaSize (FileFullDirectory, FileBothDirectory and their Id forms).
pub fn has_ea_size(class: u8) -> bool {
    matches!(class, class::FULL_DIRECTORY | class::BOTH_DIRECTORY | class::ID_FULL_DIRECTORY | class::ID_BOTH_DIRECTORY)
}

/// What a listing reads of one entry besides its attributes: its DOS information and, for a
/// class with an EaSize, the size of its EAs, as smbd reports them. One `listxattr` of the
/// entry tells both whether it has a `user.DOSATTRIB` (read only then) and whether it has EAs
/// (read only then): on the local backend an entry without EAs costs one `llistxattr` more
/// than the DOS information alone when it has a `user.DOSATTRIB`, and the same when it has
/// none; over gfapi, one `listxattr` round trip more per entry.
async fn entry_meta(
    ns: &Namespace,
    cred: &Credentials,
    dir: FileId,
    name: &str,
    file: FileId,
    ftype: crate::vfs::FileType,
    with_ea: bool,
) -> (DosInfo, u32) {
    if ftype == crate::vfs::FileType::Symlink {
        return (DosInfo::default(), 0);
    }
    if !with_ea {
        return (fs::dos_at(ns, cred, dir, name).await, 0);
    }
    let Ok(names) = ns.list_xattrs_at(cred, dir, name.as_bytes(), file).await else {
        return (fs::dos_at(ns, cred, dir, name).await, 0);
    };
    let dos = if names.iter().any(|n| n == crate::smb::dosattrib::XATTR_NAME) {
        fs::dos_at(ns, cred, dir, name).await
    } else {
        DosInfo::default()
    };
    let mut eas = Vec::new();
    for x in &names {
        let Some(ea) = crate::smb::eas::ea_of(x) else { continue };
        if let Ok(Some(value)) = ns.get_xattr_at(cred, dir, name.as_bytes(), x).await {
            eas.push(crate::smb::eas::Ea { name: ea.to_string(), value, flags: 0 });
        }
    }
    let size = if eas.is_empty() { 0 } else { crate::smb::eas::list_size(&eas) };
    (dos, size)
}

/// Encodes one entry of `class` (without NextEntryOffset patched).
pub fn entry(class: u8, index: u32, e: &Entry) -> Option<Vec<u8>> {
    let (name, attr) = (e.name.as_str(), &e.attr);
    let n = utf16le(name);
    let mut w = Writer::with_capacity(104 + n.len());
    w.u32(0).u32(index);
    if class == class::NAMES {
        w.u32(n.len() as u32).bytes(&n);
        return Some(w.buf);
    }
    let [c, a, m, ch] = fs::times(attr, &e.dos);
    w.u64(c).u64(a).u64(m).u64(ch).u64(fs::end_of_file(attr)).u64(fs::allocation(attr));
    w.u32(fs::attributes(attr, &e.dos, name)).u32(n.len() as u32);
    match class {
        class::DIRECTORY => {}
        class::FULL_DIRECTORY => {
            w.u32(e.ea_size);
        }
        class::ID_FULL_DIRECTORY => {
            w.u32(e.ea_size).u32(0).u64(attr.fileid);
        }
        class::BOTH_DIRECTORY => {
            w.u32(e.ea_size).u8(0).u8(0).zeros(24);
        }
        class::ID_BOTH_DIRECTORY => {
            w.u32(e.ea_size).u8(0).u8(0).zeros(24).u16(0).u64(attr.fileid);
        }
        _ => return None,
    }
    w.bytes(&n);
    Some(w.buf)
}

/// Entries read from the backend at a time and kept by a handle between queries.
pub const WINDOW: usize = 128;

/// The first window of a listing: `.` and `..` (the rest is read by [`window`]).
async fn dots(
    ns: &Namespace,
    cred: &Credentials,
    id: FileId,
    parent: FileId,
    is_root: bool,
) -> Result<Vec<Entry>, NtStatus> {
    let me = ns.getattr(id).await?;
    let parent = if is_root { id } else { parent };
    let up = if is_root { me } else { ns.getattr(parent).await.unwrap_or(me) };
    Ok(vec![
        Entry { name: ".".into(), attr: me, dos: fs::dos_of(ns, cred, id).await, ea_size: 0, id: None },
        Entry { name: "..".into(), attr: up, dos: fs::dos_of(ns, cred, parent).await, ea_size: 0, id: None },
    ])
}

/// Up to [`WINDOW`] entries of directory `id` from `cookie`, and the cookie after them
/// (`None` at the end of the directory).
async fn window(
    ns: &Namespace,
    cred: &Credentials,
    id: FileId,
    cookie: u64,
    with_ea: bool,
) -> Result<(Vec<Entry>, Option<u64>), NtStatus> {
    let page = ns.readdir(cred, id, cookie, WINDOW, true).await?;
    let mut out = Vec::with_capacity(page.entries.len());
    let mut next = cookie;
    for e in &page.entries {
        next = e.cookie;
        if let (Ok(name), Some((fid, a))) = (std::str::from_utf8(&e.name), e.plus) {
            let (dos, ea_size) = entry_meta(ns, cred, id, name, fid, a.ftype, with_ea).await;
            out.push(Entry { name: name.to_string(), attr: a, dos, ea_size, id: Some(fid) });
        }
    }
    let more = !page.eof && !page.entries.is_empty();
    Ok((out, more.then_some(next)))
}

/// Handles QUERY_DIRECTORY.
pub async fn handle(conn: &mut Connection, hdr: &Header, req: Request) -> Result<Reply, NtStatus> {
    conn.session(hdr.session_id)?;
    if !matches!(
        req.class,
        class::DIRECTORY
            | class::FULL_DIRECTORY
            | class::BOTH_DIRECTORY
            | class::NAMES
            | class::ID_BOTH_DIRECTORY
            | class::ID_FULL_DIRECTORY
    ) {
        return Err(NtStatus::INVALID_INFO_CLASS);
    }
    let vol = conn.file_id(req.file_id.0, req.file_id.1)?;
    let needs_load = {
        let f = conn.opens.get_mut(vol, hdr.session_id, hdr.tree_id)?.file()?;
        if !f.is_dir {
            return Err(NtStatus::INVALID_PARAMETER);
        }
        f.require(super::open::access::READ_DATA)?;
        f.listing.is_none() || req.flags & (RESTART_SCANS | REOPEN) != 0
    };
    let first = needs_load;
    let case = match &conn.session(hdr.session_id)?.tree(hdr.tree_id)?.kind {
        crate::smb::session::TreeKind::Disk(share) => fs::Case::of(share),
        crate::smb::session::TreeKind::Ipc => fs::Case::Sensitive,
    };
    if needs_load {
        let (cred, id, parent, is_root) = {
            let f = conn.opens.get_mut(vol, hdr.session_id, hdr.tree_id)?.file()?;
            (f.cred.clone(), f.id, f.parent, f.path.is_empty())
        };
        let pattern = if req.pattern.is_empty() { "*".to_string() } else { req.pattern.clone() };
        let ns = &conn.server.ns;
        let (entries, cookie) = if fs::has_wildcard(&pattern) || pattern == "." || pattern == ".." {
            (dots(ns, &cred, id, parent, is_root).await?, Some(0))
        } else {
            // One name (what Windows asks before most opens): a lookup by the share's case
            // rule, not a listing of the whole directory.
            let found = match fs::lookup(ns, &cred, id, &pattern, case).await {
                Ok((real, fid, attr)) => {
                    let (dos, ea_size) =
                        entry_meta(ns, &cred, id, &real, fid, attr.ftype, has_ea_size(req.class)).await;
                    vec![Entry { dos, name: real, attr, ea_size, id: Some(fid) }]
                }
                Err(crate::vfs::VfsError::NotFound) => Vec::new(),
                Err(crate::vfs::VfsError::BadName | crate::vfs::VfsError::NameTooLong) => Vec::new(),
                Err(e) => return Err(e.into()),
            };
            (found, None)
        };
        let f = conn.opens.get_mut(vol, hdr.session_id, hdr.tree_id)?.file()?;
        f.listing = Some(Listing { entries, next: 0, pattern, cookie });
    }
    let server = conn.server.clone();
    let f = conn.opens.get_mut(vol, hdr.session_id, hdr.tree_id)?.file()?;
    let (cred, id) = (f.cred.clone(), f.id);
    let listing = f.listing.as_mut().ok_or(NtStatus::INTERNAL_ERROR)?;
    let max = req.max_len as usize;
    let mut w = Writer::with_capacity(max.min(1 << 20));
    let mut last_start: Option<usize> = None;
    let mut count = 0;
    let (tracking, now) = (!server.write_times.is_empty(), crate::smb::filetime_now());
    'fill: loop {
        while listing.next < listing.entries.len() {
            let listed = &listing.entries[listing.next];
            if !fs::wildcard_match(&listing.pattern, &listed.name, case) {
                listing.next += 1;
                continue;
            }
            // A file written through an open handle shows the write time SMB shows for it.
            let shown = if tracking { listed.id.and_then(|id| server.write_times.shown(&id, now)) } else { None };
            let e = match shown {
                Some(t) => {
                    let mut l = listed.clone();
                    l.attr.mtime = fs::from_filetime(t);
                    entry(req.class, 0, &l)
                }
                None => entry(req.class, 0, listed),
            };
            let Some(e) = e else { return Err(NtStatus::INVALID_INFO_CLASS) };
            let start = (w.len() + 7) & !7;
            if start + e.len() > max {
                if count == 0 {
                    return Err(NtStatus::INFO_LENGTH_MISMATCH);
                }
                break 'fill;
            }
            w.align(8);
            if let Some(prev) = last_start {
                w.put_u32(prev, (start - prev) as u32);
            }
            w.bytes(&e);
            last_start = Some(start);
            listing.next += 1;
            count += 1;
            if req.flags & RETURN_SINGLE_ENTRY != 0 {
                break 'fill;
            }
        }
        // This window is handed out: read the next one (the handle keeps one at a time).
        let Some(cookie) = listing.cookie else { break };
        let (entries, next) = match window(&server.ns, &cred, id, cookie, has_ea_size(req.class)).await {
            Ok(w) => w,
            Err(e) if count == 0 => return Err(e),
            Err(_) => break, // hand out what this reply holds; the next query retries the window
        };
        *listing = Listing { entries, next: 0, pattern: std::mem::take(&mut listing.pattern), cookie: next };
    }
    if count == 0 {
        return Err(if first { NtStatus::NO_SUCH_FILE } else { NtStatus::NO_MORE_FILES });
    }
    let mut out = Writer::with_capacity(8 + w.len());
    out.u16(9).u16(72).u32(w.len() as u32).bytes(&w.buf);
    Ok(Reply::ok(out.buf))
}
