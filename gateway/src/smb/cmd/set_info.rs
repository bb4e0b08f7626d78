//! SET_INFO (MS-SMB2 2.2.39/2.2.40): basic (times, read-only), rename, disposition
//! (delete-on-close), end of file, allocation, position, mode, full EA (see
//! [`crate::smb::eas`]). Renames and deletes go through
//! the lock table's share modes.
//!
//! A rename, disposition, allocation or end-of-file set asks the file-sharing state first and
//! may wait there for other clients' breaks (a rename for their handle caching): it runs as
//! owned work on a copy of its open's facts, in place for [`WAIT_INLINE`] and then
//! asynchronously (STATUS_PENDING), as a CREATE does; a rename that finishes later hands its
//! open's new path back through [`crate::smb::open_updates`].

use std::sync::Arc;

use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

use super::create::WAIT_INLINE;
use super::open::{access, read_file_id};
use super::query_info::{INFO_FILE, INFO_FILESYSTEM, INFO_SECURITY};
use super::Reply;
use crate::locks::types::{LeaseId, OpenKey};
use crate::smb::conn::{AsyncWork, Connection, Outcome};
use crate::smb::fs;
use crate::smb::open_updates::{Change, OpenUpdate};
use crate::smb::streams;
use crate::smb::wire::header::Header;
use crate::smb::wire::status::NtStatus;
use crate::smb::wire::{from_utf16le, slice_at, Reader, WireError, WireResult, Writer};
use crate::smb::SmbServer;
use crate::vfs::changes::what;
use crate::vfs::{Credentials, FileId, FileType, SetAttr, SetTime, VfsError};

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
async fn changed(ns: &crate::vfs::Namespace, f: &super::open::FileOpen, bits: u32) {
    changed_at(ns, f.parent, f.path.last(), f.state.stream.is_some(), bits).await;
}

/// [`changed`] for the file named `name` in `parent` (`stream`: one of its streams changed).
async fn changed_at(ns: &crate::vfs::Namespace, parent: FileId, name: Option<&String>, stream: bool, mut bits: u32) {
    if stream {
        bits = if bits & what::SIZE != 0 { what::STREAM_SIZE } else { 0 };
    }
    if let Some(name) = name {
        ns.modified(parent, name.as_bytes(), bits).await;
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

/// Handles SET_INFO. The classes that ask the file-sharing state first (a rename or a delete
/// may wait for other clients' handle caching to go, a size change for read caching) run as
/// `Waiting` work: answered in place when it finishes within [`WAIT_INLINE`], else answered
/// STATUS_PENDING and finished later, so the connection goes on reading meanwhile (the break's
/// acknowledgement may come on this very connection).
pub async fn handle(conn: &mut Connection, hdr: &Header, req: Request<'_>) -> Outcome {
    match set(conn, hdr, req).await {
        Ok(o) => o,
        Err(s) => Outcome::Now(Reply::err(s)),
    }
}

async fn set(conn: &mut Connection, hdr: &Header, req: Request<'_>) -> Result<Outcome, NtStatus> {
    conn.session(hdr.session_id)?;
    let tree = conn.session(hdr.session_id)?.tree(hdr.tree_id)?;
    let writable = tree.writable;
    let case = match &tree.kind {
        crate::smb::session::TreeKind::Disk(share) => fs::Case::of(share),
        crate::smb::session::TreeKind::Ipc => fs::Case::Sensitive,
    };
    let vol = conn.file_id(req.file_id.0, req.file_id.1)?;
    let server = conn.server.clone();
    let f = conn.opens.get_mut(vol, hdr.session_id, hdr.tree_id)?.file()?;
    match req.info_type {
        INFO_FILE => {}
        INFO_SECURITY => {
            if !writable {
                return Err(NtStatus::ACCESS_DENIED);
            }
            return Ok(Outcome::Now(set_security(&server.ns, f, req.additional, req.data).await?));
        }
        INFO_FILESYSTEM => return Err(NtStatus::NOT_SUPPORTED),
        _ => return Err(NtStatus::INVALID_PARAMETER),
    }
    if !writable && req.class != 14 {
        return Err(NtStatus::ACCESS_DENIED);
    }
    let Some(op) = Waiting::parse(f, req.class, req.data)? else {
        return Ok(Outcome::Now(set_now(&server, f, &req, case).await?));
    };
    // A rename by handle starts from the file's name now, wherever it was renamed last.
    crate::smb::current_name::refresh(&server, f).await;
    let mut snapshot = Snapshot::of(f);
    if snapshot.is_dir && !snapshot.path.is_empty() {
        // smbd (without `strict rename`) refuses to rename a directory only while the renaming
        // client itself has a file open below it: another client's opens below follow the
        // rename, since they are known by their directory's identity. Doing the same keeps the
        // answer the same whichever node the other client uses.
        snapshot.own_open_below = conn.opens.iter().any(|o| match &o.kind {
            super::open::OpenKind::File(g) => {
                g.key != snapshot.key
                    && g.root == snapshot.root
                    && g.path.len() > snapshot.path.len()
                    && g.path.starts_with(&snapshot.path)
            }
            _ => false,
        });
    }
    let report = Report { vol, updates: conn.open_updates.sender(), committed: CancellationToken::new() };
    let committed = report.committed.clone();
    let mut work = Box::pin(op.run(server, snapshot, case, report));
    match tokio::time::timeout(WAIT_INLINE, &mut work).await {
        Ok(reply) => {
            // A rename done in place queued its open's new path: apply it before answering.
            conn.apply_open_updates();
            Ok(Outcome::Now(reply))
        }
        Err(_) => Ok(Outcome::Later(AsyncWork {
            cancel: CancellationToken::new(),
            work,
            // Closing the handle ends the wait (CANCELLED, as a CANCEL does).
            waits_on: Some(vol),
            closed: CancellationToken::new(),
            close_status: NtStatus::CANCELLED,
            committed,
        })),
    }
}

/// SET_INFO classes that never wait for another client: done in place on the open.
async fn set_now(
    server: &crate::smb::SmbServer,
    f: &mut super::open::FileOpen,
    req: &Request<'_>,
    case: fs::Case,
) -> Result<Reply, NtStatus> {
    let ns = &server.ns;
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
            set_basic(server, f, fs::BasicInfo { create, atime, mtime, attributes: attrs }).await?;
            let set = |t: u64, bit: u32| if matches!(t, 0 | fs::TIME_FREEZE | fs::TIME_THAW) { 0 } else { bit };
            let bits = set(create, what::CREATION)
                | set(atime, what::LAST_ACCESS)
                | set(mtime, what::LAST_WRITE)
                | if attrs != 0 { what::ATTRIBUTES } else { 0 };
            changed(ns, f, bits).await;
            Ok(ok())
        }
        // FileRenameInformation of a stream to another stream of its file (`:new[:$DATA]`);
        // a file's rename is [`Waiting::Rename`].
        10 => {
            let (replace, name) = rename_info(req.data)?;
            let Some(to) = name.strip_prefix(':') else { return Err(NtStatus::INVALID_PARAMETER) };
            rename_stream(server, f, to, replace, case).await
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

/// FileRenameInformation's ReplaceIfExists and FileName.
fn rename_info(data: &[u8]) -> Result<(bool, String), NtStatus> {
    let short = |_| NtStatus::INFO_LENGTH_MISMATCH;
    let mut r = Reader::new(data);
    let replace = r.u8().map_err(short)? != 0;
    r.skip(7 + 8).map_err(short)?;
    let len = r.u32().map_err(short)? as usize;
    let name = from_utf16le(r.bytes(len).map_err(short)?).map_err(|_| NtStatus::OBJECT_NAME_INVALID)?;
    Ok((replace, name))
}

/// A SET_INFO that asks the file-sharing state first, and so may wait for other clients'
/// breaks: decoded and access-checked against the open before it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Waiting {
    /// FileRenameInformation of the file (not a stream): to these share-relative components.
    Rename { to: Vec<String>, replace: bool },
    /// FileDispositionInformation(Ex): delete-pending on or off.
    Disposition(bool),
    /// FileAllocationInformation.
    Allocation(u64),
    /// FileEndOfFileInformation.
    EndOfFile(u64),
}

/// What a [`Waiting`] SET_INFO needs of its open, copied: its work may outlive the request's
/// borrow of the connection. What it changes about the open comes back as an
/// [`OpenUpdate`](crate::smb::open_updates::OpenUpdate).
#[derive(Debug, Clone)]
struct Snapshot {
    id: FileId,
    parent: FileId,
    path: Vec<String>,
    root: FileId,
    is_dir: bool,
    key: OpenKey,
    lease: Option<LeaseId>,
    cred: Credentials,
    stream: Option<streams::StreamOpen>,
    /// A directory with another open of the same connection below it.
    own_open_below: bool,
}

impl Snapshot {
    fn of(f: &super::open::FileOpen) -> Self {
        Self {
            id: f.id,
            parent: f.parent,
            path: f.path.clone(),
            root: f.root,
            is_dir: f.is_dir,
            key: f.key,
            lease: f.lease,
            cred: f.cred.clone(),
            stream: f.state.stream.clone(),
            own_open_below: false,
        }
    }

    async fn changed(&self, ns: &crate::vfs::Namespace, bits: u32) {
        changed_at(ns, self.parent, self.path.last(), self.stream.is_some(), bits).await;
    }
}

impl Waiting {
    /// The waiting work SET_INFO `class` of `data` asks of open `f`, checked against its
    /// access; `None` for a class done in place ([`set_now`]).
    fn parse(f: &super::open::FileOpen, class: u8, data: &[u8]) -> Result<Option<Self>, NtStatus> {
        let mut r = Reader::new(data);
        let short = |_| NtStatus::INFO_LENGTH_MISMATCH;
        Ok(Some(match class {
            10 => {
                f.require(access::DELETE)?;
                let (replace, name) = rename_info(data)?;
                if name.starts_with(':') {
                    return Ok(None);
                }
                if f.state.stream.is_some() {
                    return Err(NtStatus::INVALID_PARAMETER);
                }
                let to = fs::split_name(name.trim_start_matches('\\'))?;
                Self::Rename { to, replace }
            }
            13 | 64 => {
                let on = if class == 13 { r.u8().map_err(short)? != 0 } else { r.u32().map_err(short)? & 1 != 0 };
                f.require(access::DELETE)?;
                Self::Disposition(on)
            }
            19 => {
                f.require(access::WRITE_DATA)?;
                Self::Allocation(r.u64().map_err(short)?)
            }
            20 => {
                f.require(access::WRITE_DATA)?;
                let size = r.u64().map_err(short)?;
                if size > i64::MAX as u64 {
                    return Err(NtStatus::INVALID_PARAMETER);
                }
                Self::EndOfFile(size)
            }
            _ => return Ok(None),
        }))
    }

    /// Runs the work on open `h` and gives its reply; a rename reports to its connection
    /// through `report`.
    async fn run(self, server: Arc<SmbServer>, h: Snapshot, case: fs::Case, report: Report) -> Reply {
        let r = match self {
            Self::Rename { to, replace } => rename(server, h, to, replace, case, report).await,
            Self::Disposition(on) => disposition(&server, &h, on).await,
            Self::Allocation(alloc) => allocation(&server, &h, alloc).await,
            Self::EndOfFile(size) => end_of_file(&server, &h, size).await,
        };
        r.unwrap_or_else(Reply::err)
    }
}

/// What a waiting SET_INFO tells its connection.
struct Report {
    /// The open's volatile id.
    vol: u64,
    /// Where a rename queues its open's new path before it returns, so the path is there
    /// before the reply.
    updates: UnboundedSender<OpenUpdate>,
    /// Fired when a rename begins, after its waits: a CANCEL then no longer cuts it.
    committed: CancellationToken,
}

/// Renames the file of open `h` to `comps` (MS-FSA 2.1.5.14.11). Other clients' handle
/// caching of it goes first (they may close: this is where a rename waits), then share modes
/// decide; the rename itself then runs to its end on a task of its own, whatever happens to
/// the request.
async fn rename(
    server: Arc<SmbServer>,
    mut h: Snapshot,
    mut comps: Vec<String>,
    replace: bool,
    case: fs::Case,
    report: Report,
) -> Result<Reply, NtStatus> {
    let ns = &server.ns;
    if h.path.is_empty() {
        return Err(NtStatus::ACCESS_DENIED);
    }
    server.locks.may_also(&h.id, Some(h.key), access::DELETE, true, h.lease).await?;
    // Another client may have renamed the file while this one waited for the breaks: the
    // open's own name while it is the file's, else the record's; never another file's name.
    let own = [(h.parent, h.path.clone())];
    let record = server.locks.current_name(&h.id);
    let at = crate::smb::current_name::locate(ns, &h.cred, (h.id, h.root), &own, record.as_ref()).await;
    let Some(at) = at else { return Err(NtStatus::OBJECT_NAME_NOT_FOUND) };
    (h.parent, h.path) = (at.parent, at.path);
    let Some(old_name) = h.path.last().cloned() else { return Err(NtStatus::ACCESS_DENIED) };
    if server.locks.record(&h.parent).await?.blocks_child_rename() {
        return Err(NtStatus::SHARING_VIOLATION);
    }
    if h.own_open_below {
        return Err(NtStatus::ACCESS_DENIED);
    }
    let to_dir = fs::parent_of(ns, &h.cred, h.root, &mut comps, case).await?;
    let Some(new_name) = comps.last().cloned() else { return Err(NtStatus::INVALID_PARAMETER) };
    if to_dir == h.parent && new_name == old_name {
        return Ok(ok());
    }
    // The target by the share's case rule: on a case-insensitive share `B.txt` is the
    // existing `b.txt` (replaced, or a collision), and renaming a file to its own name
    // in another case changes only the case.
    let replaced = match fs::lookup(ns, &h.cred, to_dir, &new_name, case).await {
        Ok((real, tid, ta)) if tid != h.id => {
            if !replace {
                return Err(NtStatus::OBJECT_NAME_COLLISION);
            }
            if ta.ftype == FileType::Directory || server.locks.record(&tid).await?.has_other_opens(h.key) {
                return Err(NtStatus::ACCESS_DENIED);
            }
            Some((real, tid))
        }
        Ok(_) | Err(VfsError::NotFound) => None,
        Err(e) => return Err(e.into()),
    };
    // From here on nothing waits, and a cancel or close must not cut the work between its two
    // renames or before the open learns its new path: the client gets this work's reply.
    report.committed.cancel();
    let Report { vol, updates, .. } = report;
    let done = tokio::spawn(async move {
        let ns = &server.ns;
        match replaced {
            Some((real, tid)) if real != new_name => {
                // Replace the file under its own name, then give ours the name asked for.
                ns.rename(&h.cred, h.parent, old_name.as_bytes(), to_dir, real.as_bytes(), Some(tid)).await?;
                ns.rename(&h.cred, to_dir, real.as_bytes(), to_dir, new_name.as_bytes(), None).await?;
            }
            _ => {
                let tid = replaced.map(|(_, tid)| tid);
                ns.rename(&h.cred, h.parent, old_name.as_bytes(), to_dir, new_name.as_bytes(), tid).await?
            }
        }
        // Every open of the file on every node acts on the new name from now on, unless it
        // came through another hard link of the file (another open's delete-on-close removes
        // it): the cluster's record says so before the client hears of the rename, and this
        // node's opens through the share and the old name are moved.
        if let Some(n) = crate::smb::current_name::of_rename(h.root, to_dir, &comps) {
            if let Err(e) = server.locks.renamed(&h.id, n).await {
                tracing::warn!(error = %e, "SMB: the cluster did not confirm a rename's new name");
            }
        }
        server.moved(h.id, h.root, (h.parent, &old_name), to_dir, &comps);
        // Queued before the reply leaves: the connection applies it before the client's next
        // request (see `open_updates`).
        let _ = updates.send(OpenUpdate {
            volatile: vol,
            key: h.key,
            change: Change::Moved { parent: to_dir, path: comps },
        });
        Ok::<_, NtStatus>(ok())
    });
    done.await.unwrap_or(Err(NtStatus::INTERNAL_ERROR))
}

/// FileDispositionInformation(Ex): sets or clears the file's delete-pending state (a
/// non-empty directory or a read-only file cannot be deleted).
async fn disposition(server: &SmbServer, h: &Snapshot, on: bool) -> Result<Reply, NtStatus> {
    let ns = &server.ns;
    if on && h.stream.is_none() {
        if h.path.is_empty() {
            return Err(NtStatus::ACCESS_DENIED);
        }
        let a = ns.getattr(h.id).await?;
        if a.ftype == FileType::Directory {
            if !super::create::dir_is_empty(ns, &h.cred, h.id).await {
                return Err(NtStatus::DIRECTORY_NOT_EMPTY);
            }
        } else if fs::attributes(&a, &fs::dos_of(ns, &h.cred, h.id).await, "") & fs::ATTR_READONLY != 0 {
            return Err(NtStatus::CANNOT_DELETE);
        }
    }
    server.locks.set_delete_pending(&h.id, on).await?;
    if on && h.is_dir && h.stream.is_none() {
        server.watches.delete_pending(&h.id);
    }
    Ok(ok())
}

/// FileAllocationInformation: only a smaller allocation than the size changes the file (it
/// is truncated); a stream's value likewise.
async fn allocation(server: &SmbServer, h: &Snapshot, alloc: u64) -> Result<Reply, NtStatus> {
    let ns = &server.ns;
    if let Some(s) = &h.stream {
        let len = streams::read_all(ns, &h.cred, s).await?.len() as u64;
        if alloc < len {
            streams::set_size(ns, &h.cred, s, alloc).await?;
        }
        return Ok(ok());
    }
    // Growing or shrinking, the allocation changes: other opens' read caching goes
    // (smbd breaks level II oplocks either way).
    server.locks.contend_if_needed(&h.id, h.lease).await?;
    let a = ns.getattr(h.id).await?;
    if alloc < a.size {
        ns.setattr(&h.cred, h.id, SetAttr { size: Some(alloc), ..Default::default() }).await?;
        h.changed(ns, what::SIZE).await;
    }
    Ok(ok())
}

/// FileEndOfFileInformation: the file's (or stream's) new size.
async fn end_of_file(server: &SmbServer, h: &Snapshot, size: u64) -> Result<Reply, NtStatus> {
    let ns = &server.ns;
    if let Some(s) = &h.stream {
        streams::set_size(ns, &h.cred, s, size).await?;
        return Ok(ok());
    }
    if h.is_dir {
        return Err(NtStatus::INVALID_PARAMETER);
    }
    server.locks.contend_if_needed(&h.id, h.lease).await?;
    ns.setattr(&h.cred, h.id, SetAttr { size: Some(size), ..Default::default() }).await?;
    server.write_times.flush(&h.id, crate::smb::filetime_now());
    h.changed(ns, what::SIZE).await;
    Ok(ok())
}
