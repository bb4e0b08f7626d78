//! QUERY_INFO (MS-SMB2 2.2.37/2.2.38): file information classes (basic, standard, internal,
//! EA, full EA (the `user.` extended attributes, see [`crate::smb::eas`]), access, name, position, mode, alignment, all, stream, network
//! open, attribute tag, compression) and file-system classes (volume, size, full size, device, attribute, sector
//! size, object id).

use super::open::{read_file_id, FileOpen};
use super::Reply;
use crate::smb::conn::Connection;
use crate::smb::dosattrib::DosInfo;
use crate::smb::fs;
use crate::smb::wire::header::Header;
use crate::smb::wire::status::NtStatus;
use crate::smb::wire::{utf16le, Reader, WireError, WireResult, Writer};
use crate::vfs::{Attr, FileType, FsStat};

/// InfoType: file.
pub const INFO_FILE: u8 = 1;
/// InfoType: file system.
pub const INFO_FILESYSTEM: u8 = 2;
/// InfoType: security descriptor.
pub const INFO_SECURITY: u8 = 3;
/// InfoType: quota (answered only on the quota pseudo-file, [`crate::smb::quota_fake`]).
pub const INFO_QUOTA: u8 = 4;

/// FileFullEaInformation: the file's extended attributes.
pub const FULL_EA: u8 = 15;

/// A decoded QUERY_INFO request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// InfoType.
    pub info_type: u8,
    /// FileInfoClass.
    pub class: u8,
    /// OutputBufferLength.
    pub max_len: u32,
    /// FileId.
    pub file_id: (u64, u64),
    /// AdditionalInformation (which parts of a security descriptor).
    pub additional: u32,
}

impl Request {
    /// Decodes the body of `msg`.
    pub fn parse(msg: &[u8]) -> WireResult<Self> {
        let mut r = Reader::at(msg, 64);
        if r.u16()? != 41 {
            return Err(WireError::Malformed("QUERY_INFO structure size"));
        }
        let info_type = r.u8()?;
        let class = r.u8()?;
        let max_len = r.u32()?;
        r.skip(2 + 2 + 4)?;
        let additional = r.u32()?;
        r.skip(4)?;
        let file_id = read_file_id(&mut r)?;
        Ok(Self { info_type, class, max_len, file_id, additional })
    }
}

/// The name clients see for an open: `\dir\file`, and `\` for the share root (as Windows
/// and Samba answer; the Linux kernel refuses a FileAllInformation without a name).
pub fn smb_name(f: &FileOpen) -> String {
    match &f.state.stream {
        Some(s) => format!("\\{}:{}", f.path.join("\\"), s.name),
        None => format!("\\{}", f.path.join("\\")),
    }
}

/// FileNormalizedNameInformation: the name from the share root without a leading `\` (empty
/// for the root), in its case on the volume, with the stream when one was opened.
pub fn normalized_name(f: &FileOpen) -> Vec<u8> {
    let mut name = f.path.join("\\");
    if let Some(s) = &f.state.stream {
        name = format!("{name}:{}", s.name);
    }
    let n = utf16le(&name);
    let mut w = Writer::with_capacity(4 + n.len());
    w.u32(n.len() as u32).bytes(&n);
    w.buf
}

/// FileStreamInformation (MS-FSCC 2.4.43): the unnamed data stream of a file (not of a
/// directory), then each named stream, entries 8-byte aligned.
pub fn stream_info(a: &Attr, named: &[(String, u64)]) -> Vec<u8> {
    let mut all: Vec<(String, u64, u64)> = Vec::new();
    if a.ftype != FileType::Directory {
        all.push(("::$DATA".into(), a.size, fs::allocation(a)));
    }
    for (n, size) in named {
        all.push((format!(":{n}:$DATA"), *size, size.div_ceil(4096) * 4096));
    }
    let mut w = Writer::with_capacity(64 * all.len());
    let mut last: Option<usize> = None;
    for (name, size, alloc) in all {
        w.align(8);
        let start = w.len();
        if let Some(prev) = last {
            w.put_u32(prev, (start - prev) as u32);
        }
        let n = utf16le(&name);
        w.u32(0).u32(n.len() as u32).u64(size).u64(alloc).bytes(&n);
        last = Some(start);
    }
    w.buf
}

fn basic(w: &mut Writer, a: &Attr, dos: &DosInfo, name: &str) {
    for t in fs::times(a, dos) {
        w.u64(t);
    }
    w.u32(fs::attributes(a, dos, name)).u32(0);
}

fn standard(w: &mut Writer, a: &Attr, delete_pending: bool) {
    let is_dir = a.ftype == FileType::Directory;
    w.u64(fs::allocation(a))
        .u64(fs::end_of_file(a))
        .u32(a.nlink.max(1))
        .u8(delete_pending as u8)
        .u8(is_dir as u8)
        .u16(0);
}

/// Whether a file information class carries times or attributes (its answer needs the file's
/// `user.DOSATTRIB`).
pub fn needs_dos(class: u8) -> bool {
    matches!(class, 4 | 18 | 34 | 35)
}

/// Encodes a file information class; `None` means the class is not supported.
pub fn file_info(class: u8, f: &FileOpen, a: &Attr, dos: &DosInfo, delete_pending: bool) -> Option<Vec<u8>> {
    let mut w = Writer::with_capacity(128);
    let name = f.name().to_string();
    match class {
        4 => basic(&mut w, a, dos, &name),
        5 => standard(&mut w, a, delete_pending),
        6 => {
            w.u64(a.fileid);
        }
        7 => {
            w.u32(0);
        }
        8 => {
            w.u32(f.access);
        }
        9 => {
            let n = utf16le(&smb_name(f));
            w.u32(n.len() as u32).bytes(&n);
        }
        14 => {
            w.u64(f.position);
        }
        21 => {
            let n = utf16le(&crate::smb::fs::short_name(&name));
            w.u32(n.len() as u32).bytes(&n);
        }
        16 => {
            w.u32(if f.write_through { 2 } else { 0 });
        }
        17 => {
            w.u32(0);
        }
        18 => {
            basic(&mut w, a, dos, &name);
            standard(&mut w, a, delete_pending);
            w.u64(a.fileid).u32(0).u32(f.access).u64(f.position).u32(0).u32(0);
            let n = utf16le(&smb_name(f));
            w.u32(n.len() as u32).bytes(&n);
        }
        22 => {
            w.bytes(&stream_info(a, &[]));
        }
        28 => {
            w.u64(a.size).u16(0).u8(0).u8(0).u8(0).zeros(3);
        }
        34 => {
            for t in fs::times(a, dos) {
                w.u64(t);
            }
            w.u64(fs::allocation(a)).u64(fs::end_of_file(a)).u32(fs::attributes(a, dos, &name)).u32(0);
        }
        35 => {
            w.u32(fs::attributes(a, dos, &name)).u32(0);
        }
        _ => return None,
    }
    Some(w.buf)
}

/// Encodes a file-system information class.
pub fn fs_info(class: u8, st: &FsStat, volume_name: &str, created: u64) -> Option<Vec<u8>> {
    let mut w = Writer::with_capacity(64);
    let unit = 4096u64;
    let block = st.block_size.max(512) as u64;
    let sectors = (unit / 512) as u32;
    let _ = block;
    match class {
        1 => {
            let label = utf16le(volume_name);
            w.u64(created).u32(0x6e61_7367).u32(label.len() as u32).u8(0).u8(0).bytes(&label);
        }
        3 => {
            w.u64(st.total_bytes / unit).u64(st.avail_bytes / unit).u32(sectors).u32(512);
        }
        4 => {
            w.u32(7).u32(0x20); // FILE_DEVICE_DISK, FILE_DEVICE_IS_MOUNTED
        }
        6 => {
            // FileFsControlInformation: no quotas enforced.
            w.zeros(24).u64(u64::MAX).u64(u64::MAX).u32(0).u32(0);
        }
        5 => {
            let n = utf16le("NTFS");
            // case-sensitive search, case-preserved names, unicode on disk, named streams
            w.u32(0x4_0007).u32(st.name_max.clamp(12, 255)).u32(n.len() as u32).bytes(&n);
        }
        7 => {
            w.u64(st.total_bytes / unit).u64(st.avail_bytes / unit).u64(st.free_bytes / unit).u32(sectors).u32(512);
        }
        8 => {
            w.zeros(64);
        }
        11 => {
            w.u32(512).u32(512).u32(512).u32(512).u32(0x3).u32(0).u32(0);
        }
        _ => return None,
    }
    Some(w.buf)
}

/// Fixed part of each class: shorter output buffers are a length mismatch; variable ones are
/// truncated with BUFFER_OVERFLOW.
fn min_len(info_type: u8, class: u8) -> usize {
    match (info_type, class) {
        (INFO_FILE, 4) => 40,
        (INFO_FILE, 5) => 24,
        (INFO_FILE, 6 | 14) => 8,
        (INFO_FILE, 7 | 8 | 16 | 17) => 4,
        (INFO_FILE, 9 | 48) => 4,
        (INFO_FILE, 21) => 8,
        (INFO_FILE, 18) => 104,
        (INFO_FILE, 22) => 32,
        (INFO_FILE, 28) => 16,
        (INFO_FILE, 34) => 56,
        (INFO_FILE, 35) => 8,
        (INFO_FILESYSTEM, 1) => 18,
        (INFO_FILESYSTEM, 3) => 24,
        (INFO_FILESYSTEM, 4) => 8,
        (INFO_FILESYSTEM, 5) => 12,
        (INFO_FILESYSTEM, 7) => 32,
        _ => 0,
    }
}

/// Handles QUERY_INFO.
pub async fn handle(conn: &mut Connection, hdr: &Header, req: Request) -> Result<Reply, NtStatus> {
    conn.session(hdr.session_id)?;
    let vol = conn.file_id(req.file_id.0, req.file_id.1)?;
    let server = conn.server.clone();
    let share_name = match &conn.session(hdr.session_id)?.tree(hdr.tree_id)?.kind {
        crate::smb::session::TreeKind::Disk(s) => s.name.clone(),
        crate::smb::session::TreeKind::Ipc => "IPC$".into(),
    };
    let dialect = conn.dialect;
    let open = conn.opens.get_mut(vol, hdr.session_id, hdr.tree_id)?;
    if matches!(open.kind, super::open::OpenKind::QuotaFake) {
        // No per-user quotas to list (what smbd answers on a volume without quotas); the
        // pseudo-file has no other information.
        return Err(if req.info_type == INFO_QUOTA {
            NtStatus::NO_MORE_ENTRIES
        } else {
            NtStatus::INVALID_DEVICE_REQUEST
        });
    }
    let f = open.file()?;
    let data = match req.info_type {
        INFO_FILE => {
            // Names answered are the file's now (a rename through another node may have moved it).
            crate::smb::current_name::refresh(&server, f).await;
            if matches!(req.class, 4 | 18 | 34 | 35) {
                f.require(super::open::access::READ_ATTRIBUTES)?;
            }
            if req.class == FULL_EA {
                f.require(super::open::access::READ_EA)?;
            }
            let file = fs::file_of(f);
            let mut a = server.ns.getattr(file).await?;
            crate::smb::write_time::show(&server, file, &mut a);
            let mut dos =
                if needs_dos(req.class) { fs::dos_of(&server.ns, &f.cred, file).await } else { DosInfo::default() };
            if let Some(s) = &f.state.stream {
                // A stream is data of its own size; times and attributes are its file's.
                let size = crate::smb::streams::read_all(&server.ns, &f.cred, s).await?.len() as u64;
                (a.size, a.used, a.ftype) = (size, size.div_ceil(4096) * 4096, FileType::Regular);
                let shown = super::create_stream::stream_attributes(fs::attributes(&a, &dos, f.name()));
                dos.attributes = Some(shown);
            }
            let pending = server.locks.record(&f.id).await?.delete_pending;
            match req.class {
                22 => {
                    let file_attr = server.ns.getattr(file).await?;
                    let named = crate::smb::streams::list(&server.ns, &f.cred, file).await.unwrap_or_default();
                    stream_info(&file_attr, &named)
                }
                48 if dialect < crate::smb::signing::dialect::SMB311 => return Err(NtStatus::NOT_SUPPORTED),
                48 => normalized_name(f),
                FULL_EA => {
                    let all = crate::smb::eas::load(&server.ns, &f.cred, file).await?;
                    if all.is_empty() {
                        // What smbd answers for a file without EAs.
                        return Err(NtStatus::NO_EAS_ON_FILE);
                    }
                    // Whole entries only: none fits is BUFFER_TOO_SMALL, some BUFFER_OVERFLOW.
                    let (list, whole) = crate::smb::eas::encode(&all, req.max_len as usize);
                    if list.is_empty() {
                        return Err(NtStatus::BUFFER_TOO_SMALL);
                    }
                    let status = if whole { NtStatus::SUCCESS } else { NtStatus::BUFFER_OVERFLOW };
                    let mut w = Writer::with_capacity(8 + list.len());
                    w.u16(9).u16(72).u32(list.len() as u32).bytes(&list);
                    return Ok(Reply::with(status, w.buf));
                }
                7 | 18 => {
                    let eas = crate::smb::eas::load(&server.ns, &f.cred, file).await.unwrap_or_default();
                    let mut data = file_info(req.class, f, &a, &dos, pending).ok_or(NtStatus::INVALID_INFO_CLASS)?;
                    // EaSize: FileEaInformation's only field, FileAllInformation's after the ids.
                    let at = if req.class == 7 { 0 } else { 40 + 24 + 8 };
                    data[at..at + 4].copy_from_slice(&crate::smb::eas::list_size(&eas).to_le_bytes());
                    data
                }
                _ => file_info(req.class, f, &a, &dos, pending).ok_or(NtStatus::INVALID_INFO_CLASS)?,
            }
        }
        INFO_FILESYSTEM => {
            let st = server.ns.statfs(f.id).await?;
            fs_info(req.class, &st, &share_name, server.start_time).ok_or(NtStatus::INVALID_INFO_CLASS)?
        }
        INFO_SECURITY => {
            f.require(super::open::access::READ_CONTROL)?;
            let a = server.ns.getattr(f.id).await?;
            let shown = match crate::smb::security::load(&server.ns, &f.cred, fs::file_of(f)).await {
                // The parts a client set, the made-up ones for the rest.
                Some(kept) => crate::smb::security::merge(
                    crate::smb::security::made_up(a.uid, a.gid),
                    kept.clone(),
                    kept_parts(&kept),
                ),
                None => crate::smb::security::made_up(a.uid, a.gid),
            };
            let sd = crate::smb::security::encode(&shown, req.additional);
            if (req.max_len as usize) < sd.len() {
                // The client retries with the size carried in the error data.
                let mut w = Writer::with_capacity(12);
                w.u16(9).u8(0).u8(0).u32(4).u32(sd.len() as u32);
                return Ok(Reply::with(NtStatus::BUFFER_TOO_SMALL, w.buf));
            }
            sd
        }
        _ => return Err(NtStatus::INVALID_PARAMETER),
    };
    let max = req.max_len as usize;
    if max < min_len(req.info_type, req.class) {
        return Err(NtStatus::INFO_LENGTH_MISMATCH);
    }
    let (status, data) =
        if data.len() > max { (NtStatus::BUFFER_OVERFLOW, &data[..max]) } else { (NtStatus::SUCCESS, &data[..]) };
    let mut w = Writer::with_capacity(8 + data.len());
    w.u16(9).u16(72).u32(data.len() as u32).bytes(data);
    Ok(Reply::with(status, w.buf))
}

/// The parts a kept descriptor has (a kept DACL may be NULL: it is always a part).
fn kept_parts(d: &crate::smb::security::Descriptor) -> u32 {
    use crate::smb::security::part;
    part::DACL | if d.owner.is_some() { part::OWNER } else { 0 } | if d.group.is_some() { part::GROUP } else { 0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::locks::OpenKey;
    use crate::vfs::{Credentials, FileId, Timestamp};

    fn open(path: &[&str]) -> FileOpen {
        let id = FileId::new(b"x").unwrap();
        FileOpen {
            id,
            parent: id,
            path: path.iter().map(|s| s.to_string()).collect(),
            is_dir: path.is_empty(),
            access: 0x1f01ff,
            key: OpenKey { node: 0, seq: 1 },
            lease: None,
            cred: Credentials::root(),
            root: id,
            position: 0,
            write_through: false,
            wrote: false,
            listing: None,
            state: Default::default(),
        }
    }

    fn attr() -> Attr {
        let t = Timestamp { secs: 1_700_000_000, nanos: 0 };
        Attr {
            ftype: FileType::Directory,
            mode: 0o755,
            nlink: 2,
            uid: 0,
            gid: 0,
            size: 0,
            used: 0,
            rdev: (0, 0),
            fsid: 1,
            fileid: 2,
            atime: t,
            mtime: t,
            ctime: t,
            btime: None,
        }
    }

    #[test]
    fn the_share_root_is_named_backslash() {
        // Linux's cifs refuses a FileAllInformation shorter than its struct with a one-byte
        // name (101 bytes): "buffer length 100 smaller than minimum size 101".
        let root = open(&[]);
        let d = DosInfo::default();
        let all = file_info(18, &root, &attr(), &d, false).unwrap();
        assert_eq!(all.len(), 102);
        assert_eq!(&all[96..], &[2, 0, 0, 0, b'\\', 0]);
        let name = file_info(9, &root, &attr(), &d, false).unwrap();
        assert_eq!(name, [2, 0, 0, 0, b'\\', 0]);
        let deep = file_info(9, &open(&["a", "b"]), &attr(), &d, false).unwrap();
        assert_eq!(deep[4..], utf16le("\\a\\b")[..]);
    }
}
