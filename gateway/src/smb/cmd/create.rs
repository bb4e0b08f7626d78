//! CREATE (MS-SMB2 2.2.13/2.2.14): opens the srvsvc pipe on IPC$, or a file or directory of a
//! disk share.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::open::{access, expand_access, FileOpen, Open, OpenKind, PendingOpen};
use super::Reply;
use crate::locks::{flags, CachingRequest, Conflict, Granted, LeaseId, OpenKey, OpenRequest};
use crate::smb::conn::Connection;
use crate::smb::conn::{AsyncWork, Outcome};
use crate::smb::dosattrib::DosInfo;
use crate::smb::durable;
use crate::smb::durable_replay::Decision;
use crate::smb::fs;
use crate::smb::leases;
use crate::smb::session::{Tree, TreeKind};
use crate::smb::srvsvc;
use crate::smb::streams::StreamPart;
use crate::smb::wire::header::{Header, FLAG_REPLAY_OPERATION};
use crate::smb::wire::status::NtStatus;
use crate::smb::wire::{from_utf16le, slice_at, Reader, WireError, WireResult, Writer};
use crate::smb::SmbServer;
use crate::vfs::{Attr, CreateHow, Credentials, FileId, FileType, SetAttr, VfsError};

/// A decoded CREATE request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Requested oplock level.
    pub oplock: u8,
    /// ImpersonationLevel.
    pub impersonation: u32,
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
        let impersonation = r.u32()?;
        r.skip(8 + 8)?;
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
        Ok(Self {
            oplock,
            impersonation,
            desired_access,
            file_attributes,
            share_access,
            disposition,
            options,
            name,
            contexts,
        })
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

/// Encodes a CREATE response; `oplock` is the OplockLevel granted ([`leases::level`]).
pub fn response(action: u32, b: &FileBasics, fid: (u64, u64), contexts: &[u8], oplock: u8) -> Vec<u8> {
    let mut w = Writer::with_capacity(96 + contexts.len());
    w.u16(89).u8(oplock).u8(0).u32(action);
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

/// Handles CREATE. An open that must wait (a lease or oplock break to be acknowledged, a
/// decision on another node that is slow to come) is answered STATUS_PENDING after
/// [`WAIT_INLINE`] and finished later, so the connection goes on reading, the holder's
/// acknowledgement included.
pub async fn handle(conn: &mut Connection, hdr: &Header, req: Request) -> Outcome {
    match create(conn, hdr, req).await {
        Ok(o) => o,
        Err(s) => Outcome::Now(Reply::err(s)),
    }
}

/// How long a CREATE waits for the file-sharing state's answer before it goes async.
pub const WAIT_INLINE: Duration = Duration::from_millis(50);

async fn create(conn: &mut Connection, hdr: &Header, req: Request) -> Result<Outcome, NtStatus> {
    let tree = conn.session(hdr.session_id)?.tree(hdr.tree_id)?.clone();
    match tree.kind {
        TreeKind::Ipc => {
            let name = req.name.trim_start_matches('\\').to_ascii_lowercase();
            if name != "srvsvc" {
                return Err(NtStatus::OBJECT_NAME_NOT_FOUND);
            }
            let session_id = hdr.session_id;
            let vol =
                conn.opens.insert(session_id, tree.id, hdr.status as u16, OpenKind::Pipe(srvsvc::Pipe::default()));
            conn.compound_fid = Some((vol, vol));
            let b = FileBasics { attributes: 0x80, ..Default::default() };
            Ok(Outcome::Now(Reply::ok(response(FILE_OPENED, &b, (vol, vol), &[], leases::level::NONE))))
        }
        TreeKind::Disk(_) => open_file(conn, hdr, &req, &tree).await,
    }
}

/// Opens the quota pseudo-file ([`crate::smb::quota_fake`]); as smbd, only for root (an admin).
fn open_quota_fake(conn: &mut Connection, hdr: &Header, tree: &Tree) -> Result<Reply, NtStatus> {
    if tree.uid != 0 {
        return Err(NtStatus::ACCESS_DENIED);
    }
    let session_id = hdr.session_id;
    let vol = conn.opens.insert(session_id, tree.id, hdr.status as u16, OpenKind::QuotaFake);
    conn.compound_fid = Some((vol, vol));
    let b = crate::smb::quota_fake::basics();
    Ok(Reply::ok(response(FILE_OPENED, &b, (vol, vol), &[], leases::level::NONE)))
}

/// CreateDisposition values.
#[allow(missing_docs)]
pub mod disposition {
    pub const SUPERSEDE: u32 = 0;
    pub const OPEN: u32 = 1;
    pub const CREATE: u32 = 2;
    pub const OPEN_IF: u32 = 3;
    pub const OVERWRITE: u32 = 4;
    pub const OVERWRITE_IF: u32 = 5;
}

/// CreateOptions bits.
#[allow(missing_docs)]
pub mod options {
    pub const DIRECTORY_FILE: u32 = 0x1;
    pub const WRITE_THROUGH: u32 = 0x2;
    pub const NON_DIRECTORY_FILE: u32 = 0x40;
    pub const DELETE_ON_CLOSE: u32 = 0x1000;
}

/// CreateAction: superseded.
pub const FILE_SUPERSEDED: u32 = 0;

/// The response basics of a file.
pub fn basics(attr: &Attr, dos: &crate::smb::dosattrib::DosInfo, name: &str) -> FileBasics {
    let [creation, access, write, change] = fs::times(attr, dos);
    FileBasics {
        creation,
        access,
        write,
        change,
        allocation: fs::allocation(attr),
        eof: fs::end_of_file(attr),
        attributes: fs::attributes(attr, dos, name),
    }
}

/// What a CREATE asks, as far as the disposition rules care.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ask {
    /// CreateDisposition.
    pub disposition: u32,
    /// CreateOptions DIRECTORY_FILE.
    pub directory: bool,
    /// CreateOptions NON_DIRECTORY_FILE.
    pub non_directory: bool,
    /// CreateOptions DELETE_ON_CLOSE.
    pub delete_on_close: bool,
    /// FileAttributes has READONLY (for a new file).
    pub read_only_attribute: bool,
    /// The share is writable.
    pub writable: bool,
    /// The name is the share root (no components).
    pub root: bool,
}

impl Ask {
    /// The rule inputs of `req` on a share that is `writable`, for a name of `components`.
    pub fn of(req: &Request, writable: bool, components: usize) -> Self {
        Self {
            disposition: req.disposition,
            directory: req.options & options::DIRECTORY_FILE != 0,
            non_directory: req.options & options::NON_DIRECTORY_FILE != 0,
            delete_on_close: req.options & options::DELETE_ON_CLOSE != 0,
            read_only_attribute: req.file_attributes & fs::ATTR_READONLY != 0,
            writable,
            root: components == 0,
        }
    }
}

/// What exists at the name, as far as the disposition rules care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    /// It is a directory.
    pub directory: bool,
    /// No write bit is set in its mode (a read-only file).
    pub read_only: bool,
}

/// What a CREATE does, decided by [`plan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Open what exists, answering `action`; `truncate` empties it (and needs write access).
    Open {
        /// CreateAction to answer.
        action: u32,
        /// Overwrite/supersede: the file is truncated.
        truncate: bool,
    },
    /// Make a new file (`directory: false`, with `mode`) or directory.
    Make {
        /// A directory.
        directory: bool,
        /// Its permission bits.
        mode: u32,
    },
}

/// Checks of a CREATE request that come before any lookup (MS-SMB2 3.3.5.9).
pub fn validate(req: &Request) -> Result<(), NtStatus> {
    if req.impersonation > 3 {
        return Err(NtStatus::BAD_IMPERSONATION_LEVEL);
    }
    if req.disposition > disposition::OVERWRITE_IF {
        return Err(NtStatus::INVALID_PARAMETER);
    }
    if req.options & options::DIRECTORY_FILE != 0 && req.options & options::NON_DIRECTORY_FILE != 0 {
        return Err(NtStatus::INVALID_PARAMETER);
    }
    Ok(())
}

/// The CREATE disposition rules (MS-FSA 2.1.5.1): what to do given what the client asks and
/// what exists at the name. Pure; the table test below lists every case.
pub fn plan(ask: Ask, found: Option<Found>) -> Result<Plan, NtStatus> {
    use disposition::*;
    match found {
        Some(f) => {
            if ask.disposition == CREATE {
                return Err(NtStatus::OBJECT_NAME_COLLISION);
            }
            if ask.directory && !f.directory {
                return Err(NtStatus::NOT_A_DIRECTORY);
            }
            if ask.non_directory && f.directory {
                return Err(NtStatus::FILE_IS_A_DIRECTORY);
            }
            let truncate = matches!(ask.disposition, SUPERSEDE | OVERWRITE | OVERWRITE_IF);
            if truncate && f.directory {
                return Err(NtStatus::INVALID_PARAMETER);
            }
            if ask.delete_on_close && !f.directory && f.read_only {
                return Err(NtStatus::CANNOT_DELETE);
            }
            if truncate && !ask.writable {
                return Err(NtStatus::ACCESS_DENIED);
            }
            let action = match ask.disposition {
                SUPERSEDE => FILE_SUPERSEDED,
                OVERWRITE | OVERWRITE_IF => FILE_OVERWRITTEN,
                _ => FILE_OPENED,
            };
            Ok(Plan::Open { action, truncate })
        }
        None => {
            if ask.root {
                return Err(NtStatus::OBJECT_NAME_INVALID);
            }
            if matches!(ask.disposition, OPEN | OVERWRITE) {
                return Err(NtStatus::OBJECT_NAME_NOT_FOUND);
            }
            if !ask.writable {
                return Err(NtStatus::ACCESS_DENIED);
            }
            if ask.delete_on_close && ask.read_only_attribute {
                return Err(NtStatus::CANNOT_DELETE);
            }
            let mode = if ask.directory {
                0o755
            } else if ask.read_only_attribute {
                0o444
            } else {
                0o644
            };
            Ok(Plan::Make { directory: ask.directory, mode })
        }
    }
}

/// An open recorded in the file-sharing state that is taken back when dropped, unless
/// [`kept`]: every early return of CREATE after the open was granted (or while its answer was
/// awaited) releases it, and the lease registration made for its breaks.
///
/// [`kept`]: ShareModeGuard::kept
pub(super) struct ShareModeGuard {
    pub(super) server: Arc<SmbServer>,
    pub(super) id: crate::vfs::FileId,
    pub(super) key: OpenKey,
    pub(super) lease: Option<LeaseId>,
    pub(super) armed: bool,
}

impl ShareModeGuard {
    /// The open succeeded: keep the record (CLOSE releases it).
    pub(super) fn kept(mut self) {
        self.armed = false;
    }
}

impl Drop for ShareModeGuard {
    fn drop(&mut self) {
        if self.armed {
            self.server.locks.close_detached(&self.id, self.key);
            if let Some(l) = &self.lease {
                self.server.breaks.release_open(l, Some(self.key));
            }
        }
    }
}

async fn open_file(conn: &mut Connection, hdr: &Header, req: &Request, tree: &Tree) -> Result<Outcome, NtStatus> {
    use access::*;
    let server = conn.server.clone();
    let ns = &server.ns;
    let root = tree.root.ok_or(NtStatus::INTERNAL_ERROR)?;
    let cred = Credentials::new(tree.uid, tree.gid);
    let dur = durable::parse(&req.contexts, conn.dialect >= crate::smb::signing::dialect::SMB300)?;
    if let Some(r) = dur.reconnect {
        return super::create_durable::reconnect(conn, hdr, req, tree, r).await.map(Outcome::Now);
    }
    // A CREATE with a CreateGuid goes through the node's replay cache: a replay of one still
    // running is refused, one of an open made is answered with it, and a durable open of a
    // lost connection is taken back (MS-SMB2 3.3.5.9.10).
    let mut replay_pending = None;
    if let durable::Ask::V2 { create_guid, .. } = dur.ask {
        let replay = hdr.flags & FLAG_REPLAY_OPERATION != 0;
        match server.replay_cache.check(conn.client_guid, create_guid, replay) {
            Decision::Refuse(s) => return Err(s),
            Decision::Again { persistent, action } => {
                if let Some(reply) = super::create_durable::again(conn, hdr, req, persistent, action).await? {
                    return Ok(Outcome::Now(reply));
                }
            }
            Decision::Run => {}
        }
        if replay {
            if let Some(reply) = super::create_durable::replay(conn, hdr, req, tree, create_guid).await? {
                return Ok(Outcome::Now(reply));
            }
        }
        replay_pending = Some(server.replay_cache.begin(conn.client_guid, create_guid));
    }
    validate(req)?;
    if crate::smb::quota_fake::is_quota_file(&req.name) {
        return open_quota_fake(conn, hdr, tree).map(Outcome::Now);
    }
    // EAs to give a file this CREATE makes or overwrites: refused before anything changes.
    let create_eas = find_context(&req.contexts, b"ExtA").map(crate::smb::eas::parse).transpose()?;
    let (mut comps, stream) = fs::parse_name(&req.name)?;
    let case = match &tree.kind {
        TreeKind::Disk(share) => fs::Case::of(share),
        TreeKind::Ipc => fs::Case::Sensitive,
    };
    let mut granted = expand_access(req.desired_access, tree.writable);
    if granted & ACCESS_SYSTEM_SECURITY != 0 {
        return Err(NtStatus::PRIVILEGE_NOT_HELD);
    }
    if !tree.writable && granted & WRITE_BITS != 0 {
        return Err(NtStatus::ACCESS_DENIED);
    }
    let ask = Ask::of(req, tree.writable, comps.len());
    if ask.delete_on_close && granted & DELETE == 0 {
        return Err(NtStatus::ACCESS_DENIED);
    }
    let parent = fs::parent_of(ns, &cred, root, &mut comps, case).await?;
    let existing = match comps.last_mut() {
        None => Some((root, ns.getattr(root).await?)),
        Some(last) => match fs::lookup(ns, &cred, parent, last, case).await {
            Ok((real, _, a)) if a.ftype == FileType::Symlink => {
                *last = real;
                // Follow a symlink only while it stays inside the share.
                match ns.walk_beneath(&cred, root, root, comps.join("/").as_bytes(), true).await {
                    Ok(x) => Some(x),
                    Err(VfsError::NotFound) => return Err(NtStatus::OBJECT_NAME_NOT_FOUND),
                    Err(VfsError::Escape) => return Err(NtStatus::ACCESS_DENIED),
                    Err(e) => return Err(e.into()),
                }
            }
            Ok((real, id, a)) => {
                // The name as it is on the volume: a name differing only in case is this file.
                *last = real;
                Some((id, a))
            }
            Err(VfsError::NotFound) => None,
            Err(e) => return Err(e.into()),
        },
    };
    match stream {
        Some(StreamPart::Named(stream)) => {
            let at = super::create_stream::Base { cred, root, parent, comps, existing, granted, case };
            return super::create_stream::open(conn, hdr, req, tree, at, stream).await.map(Outcome::Now);
        }
        // `dir::$DATA`: a directory has no unnamed data stream.
        Some(StreamPart::Unnamed) if existing.as_ref().is_some_and(|(_, a)| a.ftype == FileType::Directory) => {
            return Err(if ask.directory { NtStatus::NOT_A_DIRECTORY } else { NtStatus::FILE_IS_A_DIRECTORY });
        }
        _ => {}
    }
    let name = comps.last().cloned().unwrap_or_default();
    // What the existing file's user.DOSATTRIB says (READONLY, HIDDEN, SYSTEM, creation time).
    let mut dos = match &existing {
        Some((id, _)) => fs::dos_of(ns, &cred, *id).await,
        None => DosInfo::default(),
    };
    let found = existing.as_ref().map(|(_, a)| Found {
        directory: a.ftype == FileType::Directory,
        read_only: fs::attributes(a, &dos, "") & fs::ATTR_READONLY != 0 && a.ftype != FileType::Directory,
    });
    let (id, attr, action) = match (plan(ask, found)?, existing) {
        (Plan::Open { action, truncate }, Some((id, attr))) => {
            if truncate {
                granted |= WRITE_DATA;
                // Overwriting replaces the attributes; a HIDDEN or SYSTEM file only by a
                // request that keeps them (MS-FSA 2.1.5.1.2.1).
                let now = fs::attributes(&attr, &dos, "");
                dos.attributes = Some(fs::overwrite_attributes(now, req.file_attributes)?);
            }
            granted = special_file_access(attr.ftype, req.desired_access, granted)?;
            check_unix_access(&attr, &cred, granted)?;
            granted = kept_descriptor_access(ns, &cred, id, req.desired_access, ask.delete_on_close, granted).await?;
            (id, attr, action)
        }
        (Plan::Make { directory, mode }, _) => {
            let made = if directory {
                ns.mkdir(&cred, parent, name.as_bytes(), mode).await
            } else {
                ns.create(&cred, parent, name.as_bytes(), mode, CreateHow::Guarded(SetAttr::default())).await
            };
            match made {
                Ok((id, attr)) => {
                    // Stored when the client asked for more than the defaults, or when the
                    // volume keeps no birth time (GlusterFS): the creation time then lives
                    // here, or it would move with every change.
                    let wanted = fs::new_attributes(req.file_attributes, directory);
                    let plain = if directory { fs::ATTR_DIRECTORY } else { fs::ATTR_ARCHIVE };
                    if wanted != plain || attr.btime.is_none() {
                        let created = attr.btime.unwrap_or(attr.mtime);
                        dos = DosInfo { attributes: Some(wanted), create_time: Some(fs::filetime(created)) };
                        if let Err(e) = fs::store_dos(ns, &cred, id, &dos).await {
                            tracing::debug!(error = ?e, "SMB: cannot store DOS attributes of a new file");
                            dos = DosInfo::default();
                        }
                    }
                    (id, attr, FILE_CREATED)
                }
                // Another client created it between our lookup and create: open it instead.
                Err(VfsError::Exists) if req.disposition == disposition::OPEN_IF => {
                    let (id, attr) = ns.lookup(&cred, parent, name.as_bytes()).await?;
                    if directory && attr.ftype != FileType::Directory {
                        return Err(NtStatus::NOT_A_DIRECTORY);
                    }
                    dos = fs::dos_of(ns, &cred, id).await;
                    (id, attr, FILE_OPENED)
                }
                Err(e) => return Err(e.into()),
            }
        }
        (Plan::Open { .. }, None) => return Err(NtStatus::INTERNAL_ERROR),
    };
    if let Some(eas) = create_eas.filter(|_| matches!(action, FILE_CREATED | FILE_OVERWRITTEN | FILE_SUPERSEDED)) {
        crate::smb::eas::store(ns, &cred, id, &eas).await?;
    }
    let is_dir = attr.ftype == FileType::Directory;
    let key = server.open_key();
    if server.open_streams.delete_pending(&id) {
        return Err(NtStatus::DELETE_PENDING);
    }
    let lease_req = find_context(&req.contexts, b"RqLs").and_then(|d| leases::parse_lease(d).ok());
    // No directory leases (the capability is not offered): a directory gets no caching.
    let caching = if is_dir {
        CachingRequest::None
    } else {
        match leases::caching_request(req.oplock, lease_req, conn.client_guid, conn.dialect) {
            // A stat open of an existing file asking for an oplock gets none (a lease it may
            // have), as on Windows; one that creates the file gets what it asks.
            CachingRequest::Oplock(_) if action != FILE_CREATED && crate::locks::record::is_stat_access(granted) => {
                CachingRequest::None
            }
            c => c,
        }
    };
    let lease = match caching {
        CachingRequest::Lease { id: l, .. } => {
            // A lease key names one file (MS-SMB2 3.3.5.9.8).
            if server.breaks.file_of(&l).is_some_and(|f| f != id) {
                return Err(NtStatus::INVALID_PARAMETER);
            }
            Some(l)
        }
        CachingRequest::Oplock(_) => Some(LeaseId::oplock(key)),
        CachingRequest::None => None,
    };
    // Breaks can follow the grant at once: the connection is registered before asking.
    let vol = conn.opens.reserve();
    let pid = server.durable.new_persistent_id();
    if let Some(l) = lease {
        let oplock_fid = matches!(caching, CachingRequest::Oplock(_)).then_some((pid, vol));
        server.breaks.hold_open(l, id, oplock_fid, conn.link.notices.clone(), Some(key));
    }
    let opening = Opening {
        server: server.clone(),
        id,
        parent,
        comps,
        root,
        cred,
        attr,
        dos,
        action,
        granted,
        is_dir,
        key,
        lease,
        lease_req: lease_req.filter(|_| matches!(caching, CachingRequest::Lease { .. })),
        delete_on_close: ask.delete_on_close,
        write_through: req.options & options::WRITE_THROUGH != 0,
        contexts: req.contexts.clone(),
        vol,
        pid,
        durable: DurableAsk {
            ask: dur.ask,
            client_guid: conn.client_guid,
            user: conn.session(hdr.session_id)?.identity.clone().unwrap_or(crate::smb::auth::Identity::Anonymous),
            ca: matches!(&tree.kind, TreeKind::Disk(share) if share.continuously_available),
            link: conn.link.notices.clone(),
            lease_version: match caching {
                CachingRequest::Lease { version, .. } => version,
                _ => 0,
            },
        },
    };
    let open = OpenRequest {
        key,
        access: granted,
        share: req.share_access & 7,
        caching,
        overwrite: matches!(action, FILE_OVERWRITTEN | FILE_SUPERSEDED),
        is_dir,
        flags: flags::HANDLE,
    };
    // Until the answer is in, a dropped future (the connection closed, the request cancelled)
    // must not leave the open or its lease registration behind.
    let waiting = ShareModeGuard { server: server.clone(), id, key, lease, armed: true };
    let locks = server.locks.clone();
    let mut decided = Box::pin(async move { locks.open(&id, open).await });
    let session_id = hdr.session_id;
    let tree_id = tree.id;
    let channel_sequence = hdr.status as u16;
    // The table entry of this open, once its kind is known (granted now, pending, or granted
    // after its handle was closed).
    let entry = move |kind| Open { volatile: vol, persistent: pid, session_id, tree_id, channel_sequence, kind };
    match tokio::time::timeout(WAIT_INLINE, &mut decided).await {
        Ok(d) => {
            waiting.kept();
            let (file, reply) = opening.finish(d).await?;
            if let Some(p) = replay_pending {
                p.done(pid, action);
            }
            conn.opens.insert_at(vol, entry(OpenKind::File(file)));
            conn.compound_fid = Some((pid, vol));
            Ok(Outcome::Now(reply))
        }
        Err(_) => {
            let slot = Arc::new(std::sync::Mutex::new(PendingOpen::Waiting));
            let kind = OpenKind::Pending(slot.clone());
            conn.opens.insert_at(vol, entry(kind));
            // The rest of its compound (CREATE + CLOSE, as smbprotocol's mkdir sends) runs once
            // the answer is out, and names this open ([`crate::smb::node_sessions::ChainRest`]).
            conn.compound_fid = Some((pid, vol));
            let server = server.clone();
            let work = async move {
                let d = decided.await;
                waiting.kept();
                let (done, reply) = match opening.finish(d).await {
                    Ok((file, reply)) => {
                        if let Some(p) = replay_pending {
                            p.done(pid, action);
                        }
                        (PendingOpen::Ready(file), reply)
                    }
                    Err(s) => (PendingOpen::Failed, Reply::err(s)),
                };
                let closed = {
                    let mut s = slot.lock().unwrap_or_else(|p| p.into_inner());
                    if matches!(*s, PendingOpen::Failed) {
                        // Closed while it waited (its compound's CLOSE, or its session went):
                        // what was granted is given back, not kept for a handle nobody has.
                        Some(done)
                    } else {
                        *s = done;
                        None
                    }
                };
                if let Some(PendingOpen::Ready(file)) = closed {
                    let _ = super::close::release(&server, entry(OpenKind::File(file))).await;
                }
                reply
            };
            Ok(Outcome::Later(AsyncWork {
                cancel: CancellationToken::new(),
                work: Box::pin(work),
                waits_on: None,
                closed: CancellationToken::new(),
                close_status: NtStatus::CANCELLED,
                committed: CancellationToken::new(),
            }))
        }
    }
}

/// Everything a CREATE needs to finish once the file-sharing state has answered (now, or later
/// for an open that waited).
struct Opening {
    server: Arc<SmbServer>,
    id: crate::vfs::FileId,
    parent: crate::vfs::FileId,
    comps: Vec<String>,
    root: crate::vfs::FileId,
    cred: Credentials,
    attr: Attr,
    dos: DosInfo,
    action: u32,
    granted: u32,
    is_dir: bool,
    key: OpenKey,
    lease: Option<LeaseId>,
    lease_req: Option<leases::LeaseRequest>,
    delete_on_close: bool,
    write_through: bool,
    contexts: Vec<u8>,
    vol: u64,
    pid: u64,
    durable: DurableAsk,
}

/// What decides whether a new open is made durable, and what it then records.
struct DurableAsk {
    ask: durable::Ask,
    client_guid: [u8; 16],
    user: crate::smb::auth::Identity,
    /// The share is continuously available (persistent handles).
    ca: bool,
    /// The connection's queue (where the durable table finds the open while attached).
    link: tokio::sync::mpsc::UnboundedSender<Vec<u8>>,
    lease_version: u8,
}

impl Opening {
    /// Truncates an overwritten file, marks delete-on-close, and builds the open and the reply.
    async fn finish(self, decided: Result<Granted, Conflict>) -> Result<(Box<FileOpen>, Reply), NtStatus> {
        let server = self.server.clone();
        let ns = &server.ns;
        let g = match decided {
            Ok(g) => g,
            Err(c) => {
                if let Some(l) = &self.lease {
                    server.breaks.release_open(l, Some(self.key));
                }
                return Err(match c {
                    Conflict::DeletePending => NtStatus::DELETE_PENDING,
                    c => c.into(),
                });
            }
        };
        let (id, key) = (self.id, self.key);
        // An oplock that came out as none holds nothing to break; a lease is kept even at none
        // (the client may upgrade it through another open).
        let lease = match (self.lease, self.lease_req.is_some()) {
            (Some(l), false) if g.state == 0 => {
                server.breaks.release_open(&l, Some(key));
                None
            }
            (l, _) => l,
        };
        let guard = ShareModeGuard { server: server.clone(), id, key, lease, armed: true };
        if self.granted & access::DELETE != 0 {
            super::create_stream::streams_allow_delete(&server, &id).await?;
        }
        let mut attr = self.attr;
        let mut dos = self.dos;
        if matches!(self.action, FILE_OVERWRITTEN | FILE_SUPERSEDED) {
            if attr.size != 0 {
                attr = ns.setattr(&self.cred, id, SetAttr { size: Some(0), ..Default::default() }).await?;
            }
            if dos.create_time.is_none() && attr.btime.is_none() {
                dos.create_time = Some(fs::filetime(attr.mtime));
            }
            if let Err(e) = fs::store_dos(ns, &self.cred, id, &dos).await {
                tracing::debug!(error = ?e, "SMB: cannot store DOS attributes of an overwritten file");
            }
        }
        if self.delete_on_close {
            if self.is_dir && !dir_is_empty(ns, &self.cred, id).await {
                // Windows refuses delete-on-close of a non-empty directory at close time; report it now.
                return Err(NtStatus::DIRECTORY_NOT_EMPTY);
            }
            server.locks.set_delete_on_close(&id, key, true).await?;
        }
        guard.kept();
        let name = self.comps.last().cloned().unwrap_or_default();
        let mut b = basics(&attr, &dos, &name);
        let initial_allocation = match self.action {
            FILE_CREATED | FILE_OVERWRITTEN | FILE_SUPERSEDED if !self.is_dir => initial_allocation(&self.contexts),
            _ => 0,
        };
        b.allocation = b.allocation.max(initial_allocation);
        server.track_path(
            key,
            Some(crate::smb::OpenPath { file: id, root: self.root, parent: self.parent, path: self.comps.clone() }),
        );
        let (oplock, lease_ctx) = match &self.lease_req {
            Some(l) => {
                (leases::level::LEASE, Some(leases::lease_response_as(l, g.version, g.state, g.epoch, g.breaking)))
            }
            None => (leases::state_level(g.state), None),
        };
        let mut made_durable =
            durable::grant(self.durable.ask, g.state, self.is_dir, self.durable.ca).map(|(timeout, persistent)| {
                durable::Durability {
                    version: if matches!(self.durable.ask, durable::Ask::V1) { 1 } else { 2 },
                    timeout,
                    persistent,
                    create_guid: match self.durable.ask {
                        durable::Ask::V2 { create_guid, .. } => Some(create_guid),
                        _ => None,
                    },
                    client_guid: self.durable.client_guid,
                    user: self.durable.user.clone(),
                    lease_key: self.lease_req.map(|l| l.key),
                    lease_version: self.durable.lease_version,
                    action: self.action,
                }
            });
        if let Some(d) = made_durable.as_ref().filter(|d| d.persistent || server.clustered) {
            // A durable open outlives this node: the cluster keeps it (and its locks) as an
            // orphan for its timeout, and every node learns how to find it.
            if let Err(e) = server.locks.set_durable(&id, key, d.timeout).await {
                tracing::warn!(error = %e, "SMB: the cluster did not keep an open durable; granted without durability");
                made_durable = None;
            }
        }
        let dh = made_durable.as_ref().map(durable::response);
        let contexts = response_contexts(&self.contexts, self.granted, &attr, lease_ctx, dh);
        let persistent = made_durable.as_ref().is_some_and(|d| d.persistent);
        let announced = made_durable.clone().filter(|_| server.clustered);
        if let Some(d) = made_durable {
            server.durable.attach(self.pid, d, self.durable.link.clone(), self.vol);
        }
        let reply = Reply::ok(response(self.action, &b, (self.pid, self.vol), &contexts, oplock));
        let file = FileOpen {
            id,
            parent: self.parent,
            path: self.comps,
            is_dir: self.is_dir,
            access: self.granted,
            key,
            lease,
            cred: self.cred,
            root: self.root,
            position: 0,
            // A persistent open's writes are on the volume before they are answered: the node
            // may die right after, and the client will not send them again. (A durable open's
            // are not: MS-SMB2 asks write-through of continuously available shares only.)
            write_through: self.write_through || persistent,
            wrote: false,
            listing: None,
            state: crate::smb::file_state::FileState { initial_allocation, ..Default::default() },
        };
        if let Some(d) = announced {
            // Every node learns how to find it when its client comes back through them.
            server.cluster_opens.hold(&server.locks, crate::smb::durable_cluster::Held::of(self.pid, &file, &d));
        }
        Ok((Box::new(file), reply))
    }
}

/// The AllocationSize a CREATE's `AlSi` context asks (MS-SMB2 2.2.13.2.6), rounded up to
/// 4 KiB; 0 without one (or a malformed one). Pure.
pub fn initial_allocation(contexts: &[u8]) -> u64 {
    find_context(contexts, b"AlSi")
        .and_then(|d| d.get(..8))
        .map(|d| u64::from_le_bytes(d.try_into().unwrap_or([0; 8])))
        .map_or(0, |a| a.min(i64::MAX as u64).div_ceil(4096) * 4096)
}

/// The data of the request create context named `name`, if the client sent one.
pub fn find_context<'a>(contexts: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let mut off = 0usize;
    for _ in 0..32 {
        let mut r = Reader::at(contexts, off);
        let next = r.u32().ok()?;
        let name_off = r.u16().ok()? as usize;
        let name_len = r.u16().ok()? as usize;
        r.skip(2).ok()?;
        let data_off = r.u16().ok()? as usize;
        let data_len = r.u32().ok()? as usize;
        if slice_at(contexts, off + name_off, name_len).ok()? == name {
            return slice_at(contexts, off + data_off, data_len).ok();
        }
        if next == 0 {
            return None;
        }
        off = off.checked_add(next as usize)?;
    }
    None
}

/// Whether a directory has no entries.
pub async fn dir_is_empty(ns: &crate::vfs::Namespace, cred: &Credentials, id: crate::vfs::FileId) -> bool {
    ns.readdir(cred, id, 0, 1, false).await.map(|r| r.entries.is_empty()).unwrap_or(false)
}

/// Data access to a special file (fifo, socket, device) is refused: reading or writing one
/// would block the connection's thread on a fifo, or reach a device of the server itself (as
/// smbd 4.17 does: it reads `/dev/zero` through a node in the share, and writes block devices).
/// Everything else (attributes, rename, delete) works as on a file; a MAXIMUM_ALLOWED open
/// that names no data access is granted without the data bits. Returns the access to grant.
fn special_file_access(ftype: FileType, desired: u32, granted: u32) -> Result<u32, NtStatus> {
    use access::*;
    const DATA: u32 = READ_DATA | WRITE_DATA | APPEND_DATA | EXECUTE;
    const ASKS_DATA: u32 = DATA | GENERIC_READ | GENERIC_WRITE | GENERIC_EXECUTE | GENERIC_ALL;
    if matches!(ftype, FileType::Regular | FileType::Directory) || granted & DATA == 0 {
        Ok(granted)
    } else if desired & MAXIMUM_ALLOWED != 0 && desired & ASKS_DATA == 0 && granted & DATA == DATA & FILE_ALL {
        Ok(granted & !DATA)
    } else {
        Err(NtStatus::ACCESS_DENIED)
    }
}

/// Refuses access the Unix mode bits deny (as the share's identity).
/// DELETE by the descriptor a client set on the file, if any (see [`crate::smb::security`]):
/// refused when its DACL grants the caller (other than root) no DELETE, unless the open only asked for the
/// maximum allowed (then it is granted without DELETE). Returns the access to grant.
async fn kept_descriptor_access(
    ns: &crate::vfs::Namespace,
    cred: &Credentials,
    id: FileId,
    desired: u32,
    delete_on_close: bool,
    granted: u32,
) -> Result<u32, NtStatus> {
    use crate::smb::security;
    // Root is not held back by a DACL, as smbd does not hold it back (the seed's share forces
    // every client to one user; that user may be root).
    if granted & access::DELETE == 0 || cred.uid == 0 {
        return Ok(granted);
    }
    let Some(sd) = security::load(ns, cred, id).await else { return Ok(granted) };
    if security::grants(&sd, &security::caller_sids(cred), access::DELETE) {
        return Ok(granted);
    }
    let explicit = desired & (access::DELETE | access::GENERIC_ALL) != 0 || delete_on_close;
    if explicit {
        Err(NtStatus::ACCESS_DENIED)
    } else {
        Ok(granted & !access::DELETE)
    }
}

pub(super) fn check_unix_access(attr: &Attr, cred: &Credentials, granted: u32) -> Result<(), NtStatus> {
    use crate::vfs::access as unix;
    let mut want = 0;
    if granted & (access::READ_DATA | access::EXECUTE) != 0 && attr.ftype != FileType::Directory {
        want |= unix::READ;
    }
    if granted & (access::WRITE_DATA | access::APPEND_DATA) != 0 && attr.ftype != FileType::Directory {
        want |= unix::MODIFY;
    }
    if want != 0 && unix::granted(attr, cred, want) & want != want {
        return Err(NtStatus::ACCESS_DENIED);
    }
    Ok(())
}

/// Answers the create contexts we understand: MxAc (maximal access), QFid (on-disk id),
/// RqLs (the lease granted, `lease`), DHnQ/DH2Q (the durability granted, `durable`) and AAPL
/// (macOS, see [`crate::smb::aapl`]).
pub(super) fn response_contexts(
    req: &[u8],
    granted: u32,
    attr: &Attr,
    lease: Option<Vec<u8>>,
    durable: Option<(&'static [u8], Vec<u8>)>,
) -> Vec<u8> {
    let mut names = Vec::new();
    let mut off = 0usize;
    for _ in 0..32 {
        let mut r = Reader::at(req, off);
        let Ok(next) = r.u32() else { break };
        let Ok(name_off) = r.u16() else { break };
        let Ok(name_len) = r.u16() else { break };
        if let Ok(n) = slice_at(req, off + name_off as usize, name_len as usize) {
            names.push(n.to_vec());
        }
        if next == 0 {
            break;
        }
        off += next as usize;
    }
    let mut items: Vec<(&[u8], Vec<u8>)> = Vec::new();
    if names.iter().any(|n| n == b"MxAc") {
        let mut d = Writer::new();
        d.u32(0).u32(granted | access::READ_ATTRIBUTES | access::SYNCHRONIZE);
        items.push((b"MxAc", d.buf));
    }
    if names.iter().any(|n| n == b"QFid") {
        let mut d = Writer::new();
        d.u64(attr.fileid).u64(attr.fsid).zeros(16);
        items.push((b"QFid", d.buf));
    }
    if let Some(l) = lease {
        items.push((b"RqLs", l));
    }
    if let Some((name, d)) = durable {
        items.push((name, d));
    }
    // macOS's AAPL query (the volume caps say case-insensitive: the default share rule).
    if let Some(a) = find_context(req, b"AAPL").and_then(|d| crate::smb::aapl::answer(d, false)) {
        items.push((b"AAPL", a));
    }
    let mut w = Writer::new();
    let n = items.len();
    for (i, (name, data)) in items.into_iter().enumerate() {
        let start = w.len();
        // Next, NameOffset=16, NameLength=4, Reserved, DataOffset=24, DataLength
        w.u32(0).u16(16).u16(4).u16(0).u16(24).u32(data.len() as u32).bytes(name).zeros(4).bytes(&data);
        if i + 1 < n {
            w.align(8);
            let next = (w.len() - start) as u32;
            w.put_u32(start, next);
        }
    }
    w.buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_files_grant_everything_but_data() {
        use access::*;
        let max = MAXIMUM_ALLOWED;
        let all = expand_access(max, true);
        let attrs = READ_ATTRIBUTES | SYNCHRONIZE;
        // (type, desired, granted before) -> granted, or the refusal
        let table = [
            (FileType::Fifo, READ_DATA, READ_DATA, Err(NtStatus::ACCESS_DENIED)),
            (FileType::CharDevice, GENERIC_READ, expand_access(GENERIC_READ, true), Err(NtStatus::ACCESS_DENIED)),
            (FileType::BlockDevice, WRITE_DATA, WRITE_DATA, Err(NtStatus::ACCESS_DENIED)),
            (FileType::Socket, attrs, attrs, Ok(attrs)),
            (FileType::Fifo, DELETE | attrs, DELETE | attrs, Ok(DELETE | attrs)),
            (FileType::Fifo, max, all, Ok(all & !(READ_DATA | WRITE_DATA | APPEND_DATA | EXECUTE))),
            // MAXIMUM_ALLOWED with an overwrite (WRITE_DATA added for the truncation) still
            // has every data bit, so it is granted without them and the truncation is refused
            // later; MAXIMUM_ALLOWED plus an explicit read is refused.
            (FileType::Socket, max | READ_DATA, all, Err(NtStatus::ACCESS_DENIED)),
            (FileType::Regular, READ_DATA | WRITE_DATA, READ_DATA | WRITE_DATA, Ok(READ_DATA | WRITE_DATA)),
            (FileType::Directory, max, all, Ok(all)),
        ];
        for (t, desired, granted, want) in table {
            assert_eq!(special_file_access(t, desired, granted), want, "{t:?} {desired:#x}");
        }
    }

    #[test]
    fn disposition_table() {
        use disposition::*;
        use NtStatus as S;
        let file = Some(Found { directory: false, read_only: false });
        let ro_file = Some(Found { directory: false, read_only: true });
        let dir = Some(Found { directory: true, read_only: false });
        let w = Ask { writable: true, ..Default::default() };
        let ro = Ask { writable: false, ..Default::default() };
        let open = |action| Ok(Plan::Open { action, truncate: false });
        let trunc = |action| Ok(Plan::Open { action, truncate: true });
        let mk = |directory, mode| Ok(Plan::Make { directory, mode });
        // (what is asked, what exists) -> what happens
        let table: Vec<(Ask, Option<Found>, Result<Plan, NtStatus>)> = vec![
            (Ask { disposition: OPEN, ..w }, file, open(FILE_OPENED)),
            (Ask { disposition: OPEN, ..w }, None, Err(S::OBJECT_NAME_NOT_FOUND)),
            (Ask { disposition: OPEN_IF, ..w }, file, open(FILE_OPENED)),
            (Ask { disposition: OPEN_IF, ..w }, None, mk(false, 0o644)),
            (Ask { disposition: CREATE, ..w }, file, Err(S::OBJECT_NAME_COLLISION)),
            (Ask { disposition: CREATE, ..w }, dir, Err(S::OBJECT_NAME_COLLISION)),
            (Ask { disposition: CREATE, ..w }, None, mk(false, 0o644)),
            (Ask { disposition: CREATE, directory: true, ..w }, None, mk(true, 0o755)),
            (Ask { disposition: CREATE, read_only_attribute: true, ..w }, None, mk(false, 0o444)),
            (Ask { disposition: OVERWRITE, ..w }, file, trunc(FILE_OVERWRITTEN)),
            (Ask { disposition: OVERWRITE, ..w }, None, Err(S::OBJECT_NAME_NOT_FOUND)),
            (Ask { disposition: OVERWRITE_IF, ..w }, file, trunc(FILE_OVERWRITTEN)),
            (Ask { disposition: OVERWRITE_IF, ..w }, None, mk(false, 0o644)),
            (Ask { disposition: SUPERSEDE, ..w }, file, trunc(FILE_SUPERSEDED)),
            (Ask { disposition: SUPERSEDE, ..w }, None, mk(false, 0o644)),
            (Ask { disposition: OVERWRITE, ..w }, dir, Err(S::INVALID_PARAMETER)),
            (Ask { disposition: SUPERSEDE, ..w }, dir, Err(S::INVALID_PARAMETER)),
            (Ask { disposition: OPEN, directory: true, ..w }, file, Err(S::NOT_A_DIRECTORY)),
            (Ask { disposition: OPEN, directory: true, ..w }, dir, open(FILE_OPENED)),
            (Ask { disposition: OPEN, non_directory: true, ..w }, dir, Err(S::FILE_IS_A_DIRECTORY)),
            (Ask { disposition: OPEN, delete_on_close: true, ..w }, ro_file, Err(S::CANNOT_DELETE)),
            (Ask { disposition: OPEN, delete_on_close: true, ..w }, file, open(FILE_OPENED)),
            (
                Ask { disposition: CREATE, delete_on_close: true, read_only_attribute: true, ..w },
                None,
                Err(S::CANNOT_DELETE),
            ),
            (Ask { disposition: OPEN, ..ro }, file, open(FILE_OPENED)),
            (Ask { disposition: OVERWRITE_IF, ..ro }, file, Err(S::ACCESS_DENIED)),
            (Ask { disposition: OPEN_IF, ..ro }, None, Err(S::ACCESS_DENIED)),
            (Ask { disposition: CREATE, root: true, ..w }, None, Err(S::OBJECT_NAME_INVALID)),
            (Ask { disposition: OPEN, root: true, ..w }, dir, open(FILE_OPENED)),
        ];
        for (ask, found, want) in table {
            assert_eq!(plan(ask, found), want, "{ask:?} {found:?}");
        }
    }

    #[test]
    fn requests_are_validated_before_any_lookup() {
        let base = Request {
            oplock: 0,
            impersonation: 2,
            desired_access: 0,
            file_attributes: 0,
            share_access: 7,
            disposition: disposition::OPEN,
            options: 0,
            name: String::new(),
            contexts: Vec::new(),
        };
        assert_eq!(validate(&base), Ok(()));
        assert_eq!(validate(&Request { impersonation: 4, ..base.clone() }), Err(NtStatus::BAD_IMPERSONATION_LEVEL));
        assert_eq!(validate(&Request { disposition: 6, ..base.clone() }), Err(NtStatus::INVALID_PARAMETER));
        let both = options::DIRECTORY_FILE | options::NON_DIRECTORY_FILE;
        assert_eq!(validate(&Request { options: both, ..base }), Err(NtStatus::INVALID_PARAMETER));
    }

    #[tokio::test]
    async fn a_share_mode_guard_releases_unless_kept() {
        use crate::vfs::FileId;
        let tmp = tempfile::tempdir().unwrap();
        let text = format!("[volume]\nname = \"smb\"\nbackend = \"local\"\npath = \"{}\"\n", tmp.path().display());
        let cfg = crate::config::parse(&text, "test", tmp.path()).expect("config");
        let backend =
            crate::vfs::posix::PosixBackend::open(tmp.path(), crate::vfs::posix::PosixOptions::new("smb")).unwrap();
        let server = Arc::new(SmbServer::new(
            &cfg,
            crate::vfs::Namespace::new(Arc::new(backend)),
            crate::locks::LockService::single(),
        ));
        let locks = server.locks.clone();
        let id = FileId::new(&[1, 2, 3]).unwrap();
        let rec = |key| OpenRequest {
            key,
            access: access::WRITE_DATA,
            share: 0,
            caching: CachingRequest::None,
            overwrite: false,
            is_dir: false,
            flags: flags::HANDLE,
        };
        let (k1, k2, k3) = (locks.new_key(), locks.new_key(), locks.new_key());
        locks.open(&id, rec(k1)).await.unwrap();
        drop(ShareModeGuard { server: server.clone(), id, key: k1, lease: None, armed: true });
        locks.open(&id, rec(k2)).await.expect("the dropped guard released its open");
        ShareModeGuard { server: server.clone(), id, key: k2, lease: None, armed: true }.kept();
        assert!(locks.open(&id, rec(k3)).await.is_err(), "a kept open still holds its share mode");
    }
}
