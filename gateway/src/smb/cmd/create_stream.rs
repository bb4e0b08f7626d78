//! CREATE of an alternate data stream (`file:name`, see [`crate::smb::streams`]): the
//! disposition applies to the stream; the file it belongs to is created first when it is
//! missing and the disposition creates. The open's lock-table key is the stream's own, so share
//! modes and byte-range locks are per stream as on NTFS.

use super::create::{
    check_unix_access, disposition, options, response, response_contexts, FileBasics, Request, ShareModeGuard,
    FILE_CREATED, FILE_OPENED, FILE_OVERWRITTEN, FILE_SUPERSEDED,
};
use super::open::{access, FileOpen, OpenKind};
use super::Reply;
use crate::locks::{flags, CachingRequest, Conflict, OpenRequest};
use crate::smb::conn::Connection;
use crate::smb::file_state::FileState;
use crate::smb::fs::{self, Case};
use crate::smb::session::Tree;
use crate::smb::streams::{self, StreamOpen};
use crate::smb::wire::header::Header;
use crate::smb::wire::status::NtStatus;
use crate::vfs::{Attr, CreateHow, Credentials, FileId, FileType, SetAttr, VfsError};

/// What CREATE resolved before it saw the name is a stream's.
pub struct Base {
    /// Identity file access runs as.
    pub cred: Credentials,
    /// The share root.
    pub root: FileId,
    /// The directory holding the file.
    pub parent: FileId,
    /// Share-relative components of the file (names as on the volume when found).
    pub comps: Vec<String>,
    /// The file, when it exists.
    pub existing: Option<(FileId, Attr)>,
    /// The access granted so far.
    pub granted: u32,
    /// The share's case rule.
    pub case: Case,
}

/// What the disposition does to a stream that exists (`true`) or not: the CreateAction, and
/// whether the stream is (re)made empty. Pure (MS-FSA 2.1.5.1 for a stream).
pub fn stream_plan(disp: u32, exists: bool) -> Result<(u32, bool), NtStatus> {
    use disposition::*;
    match (disp, exists) {
        (CREATE, true) => Err(NtStatus::OBJECT_NAME_COLLISION),
        (OPEN | OVERWRITE, false) => Err(NtStatus::OBJECT_NAME_NOT_FOUND),
        (OPEN | OPEN_IF, true) => Ok((FILE_OPENED, false)),
        (OVERWRITE | OVERWRITE_IF, true) => Ok((FILE_OVERWRITTEN, true)),
        (SUPERSEDE, true) => Ok((FILE_SUPERSEDED, true)),
        (_, false) => Ok((FILE_CREATED, true)),
        _ => Err(NtStatus::INVALID_PARAMETER),
    }
}

/// An open of `file` with DELETE access must be one each of its open streams would also
/// admit (NTFS opens every stream for the deletion): SHARING_VIOLATION when one of them was
/// opened without FILE_SHARE_DELETE.
pub async fn streams_allow_delete(server: &crate::smb::SmbServer, file: &FileId) -> Result<(), NtStatus> {
    for key in server.open_streams.keys(file) {
        // A client without an open of the stream asking for DELETE: its share modes decide.
        if server.locks.may_also(&key, None, access::DELETE, false, None).await.is_err() {
            return Err(NtStatus::SHARING_VIOLATION);
        }
    }
    Ok(())
}

/// The attributes a stream shows: its file's, without DIRECTORY (a stream of a directory is
/// data).
pub fn stream_attributes(file: u32) -> u32 {
    match file & !fs::ATTR_DIRECTORY {
        0 => fs::ATTR_NORMAL,
        a => a,
    }
}

/// Opens or creates stream `name` of the file `at` resolved.
pub async fn open(
    conn: &mut Connection,
    hdr: &Header,
    req: &Request,
    tree: &Tree,
    at: Base,
    name: String,
) -> Result<Reply, NtStatus> {
    let server = conn.server.clone();
    let ns = &server.ns;
    let Base { cred, root, parent, comps, existing, mut granted, case } = at;
    if req.options & options::DIRECTORY_FILE != 0 {
        return Err(NtStatus::NOT_A_DIRECTORY);
    }
    let creates = matches!(
        req.disposition,
        disposition::SUPERSEDE | disposition::CREATE | disposition::OPEN_IF | disposition::OVERWRITE_IF
    );
    let (base, base_attr) = match existing {
        Some(found) => found,
        None => {
            if !creates {
                return Err(NtStatus::OBJECT_NAME_NOT_FOUND);
            }
            if !tree.writable {
                return Err(NtStatus::ACCESS_DENIED);
            }
            let file = comps.last().ok_or(NtStatus::OBJECT_NAME_INVALID)?;
            match ns.create(&cred, parent, file.as_bytes(), 0o644, CreateHow::Guarded(SetAttr::default())).await {
                Ok(made) => made,
                Err(VfsError::Exists) => ns.lookup(&cred, parent, file.as_bytes()).await?,
                Err(e) => return Err(e.into()),
            }
        }
    };
    if base_attr.ftype == FileType::Symlink {
        return Err(NtStatus::OBJECT_NAME_INVALID);
    }
    let stored = streams::find(ns, &cred, base, &name, case).await?;
    let (action, empty) = stream_plan(req.disposition, stored.is_some())?;
    if empty {
        if !tree.writable {
            return Err(NtStatus::ACCESS_DENIED);
        }
        granted |= access::WRITE_DATA;
    }
    if base_attr.ftype != FileType::Directory {
        check_unix_access(&base_attr, &cred, granted)?;
    }
    if server.open_streams.delete_pending(&base) || server.locks.record(&base).await?.delete_pending {
        return Err(NtStatus::DELETE_PENDING);
    }
    let stream = StreamOpen { base, name: stored.unwrap_or(name) };
    let id = streams::lock_id(&base, &stream.name);
    let key = server.open_key();
    let open = OpenRequest {
        key,
        access: granted,
        share: req.share_access & 7,
        caching: CachingRequest::None,
        overwrite: empty,
        is_dir: false,
        flags: flags::HANDLE,
    };
    server.locks.open(&id, open).await.map_err(|c| match c {
        Conflict::DeletePending => NtStatus::DELETE_PENDING,
        c => c.into(),
    })?;
    let guard = ShareModeGuard { server: server.clone(), id, key, lease: None, armed: true };
    if empty {
        streams::write_all(ns, &cred, &stream, Vec::new()).await?;
    }
    if req.options & options::DELETE_ON_CLOSE != 0 {
        server.locks.set_delete_on_close(&id, key, true).await?;
    }
    guard.kept();
    server.open_streams.opened(base, id);
    let size = streams::read_all(ns, &cred, &stream).await.map_or(0, |v| v.len() as u64);
    let dos = fs::dos_of(ns, &cred, base).await;
    let [creation, access_t, write, change] = fs::times(&base_attr, &dos);
    let b = FileBasics {
        creation,
        access: access_t,
        write,
        change,
        allocation: size.div_ceil(4096) * 4096,
        eof: size,
        attributes: stream_attributes(fs::attributes(&base_attr, &dos, comps.last().map_or("", String::as_str))),
    };
    server.track_path(key, Some(crate::smb::OpenPath { file: id, root, parent, path: comps.clone() }));
    let session_id = hdr.session_id;
    let file = FileOpen {
        id,
        parent,
        path: comps,
        is_dir: false,
        access: granted,
        key,
        lease: None,
        cred,
        root,
        position: 0,
        write_through: req.options & options::WRITE_THROUGH != 0,
        wrote: false,
        listing: None,
        state: FileState { stream: Some(stream), ..Default::default() },
    };
    let vol = conn.opens.insert(session_id, tree.id, hdr.status as u16, OpenKind::File(Box::new(file)));
    conn.compound_fid = Some((vol, vol));
    let contexts = response_contexts(&req.contexts, granted, &base_attr, None, None);
    Ok(Reply::ok(response(action, &b, (vol, vol), &contexts, crate::smb::leases::level::NONE)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use disposition::*;

    #[test]
    fn dispositions_apply_to_the_stream() {
        let table = [
            (OPEN, true, Ok((FILE_OPENED, false))),
            (OPEN, false, Err(NtStatus::OBJECT_NAME_NOT_FOUND)),
            (CREATE, true, Err(NtStatus::OBJECT_NAME_COLLISION)),
            (CREATE, false, Ok((FILE_CREATED, true))),
            (OPEN_IF, true, Ok((FILE_OPENED, false))),
            (OPEN_IF, false, Ok((FILE_CREATED, true))),
            (OVERWRITE, true, Ok((FILE_OVERWRITTEN, true))),
            (OVERWRITE, false, Err(NtStatus::OBJECT_NAME_NOT_FOUND)),
            (OVERWRITE_IF, true, Ok((FILE_OVERWRITTEN, true))),
            (OVERWRITE_IF, false, Ok((FILE_CREATED, true))),
            (SUPERSEDE, true, Ok((FILE_SUPERSEDED, true))),
            (SUPERSEDE, false, Ok((FILE_CREATED, true))),
        ];
        for (d, exists, want) in table {
            assert_eq!(stream_plan(d, exists), want, "disposition {d}, exists {exists}");
        }
    }
}
