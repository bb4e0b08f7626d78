//! Change events of the namespace: what SMB CHANGE_NOTIFY (and any later watcher) reports.
//!
//! The [`Namespace`](super::Namespace) publishes a [`Change`] after every name operation it
//! performs (create, mkdir, symlink, mknod, link, remove, rmdir, rename), whichever protocol
//! asked for it; a protocol that changes a file's data or attributes publishes a modification
//! itself with [`Namespace::modified`](super::Namespace::modified), because only it knows under
//! which name it opened the file. Watchers register a [`Watch`] on a directory (optionally the
//! whole tree below it) and a filter; matching changes queue in the watch, as names relative to
//! the watched directory, until the watcher takes them.
//!
//! Changes made on another node arrive through [`ChangeHub::receive`] (the cluster broadcast of
//! the lock mesh carries them, encoded by [`encode`]); every change made here goes to the
//! [`ChangeHub::set_remote`] sink. A directory is matched by its [`FileId`] (the same on every
//! node serving the volume); a recursive watch matches deeper directories by their path from the
//! volume root, which the publisher adds when a backend can tell it
//! ([`Backend::path_of`](super::Backend::path_of)).
//!
//! Besides name changes, the hub carries **attribute changes** ([`ChangeHub::attributes_changed`]):
//! a file, by identity, whose attributes (mode, owner, times, size) changed, for caches of
//! attributes that a file's name does not reach (the node's own FUSE mount, whose kernel caches
//! attributes per inode). The namespace publishes one after every SETATTR, and after a flush or
//! sync of written data (a close of a handle that wrote, SMB FLUSH, NFS COMMIT), to listeners on
//! this node and to the other nodes; after each WRITE to listeners on this node only (a write
//! reaches other nodes' caches at its close, flush or commit, or through their read leases).
//! Nothing is published on a node without such a listener (the nodes share one config: no
//! node of its cluster has one either). A link, unlink or rename changes the link count and
//! ctime of a file that its directories do not name: while such listeners exist the name
//! change carries that file's identity ([`Change::files`]), and delivering it here or on
//! another node tells the attribute listeners too (one message, no separate attribute change).
//! In a cluster only the nodes that want changes get them: the hub tells the others how much
//! this node wants (its *interest*: nothing; the changes, for a watch or the node's own mount;
//! or the changes with their paths, for a recursive watch) through [`ChangeHub::set_interest_sink`],
//! and learns theirs through [`ChangeHub::set_remote_interest`]; with nobody watching anywhere, a
//! create costs no message and no path lookup. A watch made while this node wanted less relies
//! on the others only after [`ChangeHub::settled`] (every other node acknowledged the new level).
//!
//! Invariants: publishing never blocks on a watcher (a full watch drops its queue and reports an
//! overflow instead); [`decode`] is a pure function that never panics on any input.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::Notify;

use super::types::FileId;

/// What changed, as a bit set; the values are MS-FSCC's `FILE_NOTIFY_CHANGE_*` bits, so SMB
/// passes its CompletionFilter through.
pub mod what {
    /// A file's name appeared, went or changed.
    pub const FILE_NAME: u32 = 0x001;
    /// A directory's name appeared, went or changed.
    pub const DIR_NAME: u32 = 0x002;
    /// Attributes (DOS attributes, mode bits).
    pub const ATTRIBUTES: u32 = 0x004;
    /// Size.
    pub const SIZE: u32 = 0x008;
    /// Last write time.
    pub const LAST_WRITE: u32 = 0x010;
    /// Last access time.
    pub const LAST_ACCESS: u32 = 0x020;
    /// Creation time.
    pub const CREATION: u32 = 0x040;
    /// Extended attributes.
    pub const EA: u32 = 0x080;
    /// Security (owner, group, permissions).
    pub const SECURITY: u32 = 0x100;
    /// A named stream appeared or went.
    pub const STREAM_NAME: u32 = 0x200;
    /// A named stream's size.
    pub const STREAM_SIZE: u32 = 0x400;
    /// A named stream's data.
    pub const STREAM_WRITE: u32 = 0x800;
}

/// How much of the other nodes' changes a node wants (its *interest*, see the module doc).
pub mod level {
    /// Nothing: no watch, no listener.
    pub const NONE: u8 = 0;
    /// The changes (a watch of a directory, the node's own mount).
    pub const NAMES: u8 = 1;
    /// The changes with their directories' paths from the volume root (a recursive watch
    /// matches deeper directories by path).
    pub const PATHS: u8 = 2;
}

/// How a name changed (MS-FSCC FILE_NOTIFY_INFORMATION actions, in their order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The name appeared.
    Added = 1,
    /// The name went.
    Removed = 2,
    /// The file behind the name changed.
    Modified = 3,
    /// A rename's old name.
    RenamedOld = 4,
    /// A rename's new name.
    RenamedNew = 5,
}

/// The kind of a published change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `at` was created.
    Added,
    /// `at` was removed.
    Removed,
    /// The file at `at` changed.
    Modified,
    /// `at` was renamed to `to`.
    Renamed,
}

/// A name in a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    /// The directory.
    pub dir: FileId,
    /// The directory's path from the volume root (`a/b`, empty for the root), when known.
    pub dir_path: Option<Vec<u8>>,
    /// The entry's name in it.
    pub name: Vec<u8>,
}

/// One change of the namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// What happened.
    pub kind: Kind,
    /// Which [`what`] bits it touches.
    pub what: u32,
    /// Where.
    pub at: Place,
    /// The new place of a rename.
    pub to: Option<Place>,
    /// The files whose link count and ctime the change altered, when the node that made it
    /// knows them (a name change only names directories): the file linked, unlinked or
    /// renamed, and the one a rename replaced. Delivered to the attribute listeners, as
    /// [`ChangeHub::attributes_changed`]; at most [`MAX_FILES`].
    pub files: Vec<FileId>,
}

/// Most files one [`Change`] names (a rename names two: the renamed file and the one it
/// replaced).
pub const MAX_FILES: usize = 2;

/// Gets every attribute change, made here or on another node (the file's identity). Must not
/// block.
pub type AttrListener = Box<dyn Fn(&FileId) + Send + Sync>;

/// First byte of an encoded attribute change.
pub const ATTR_TAG: u8 = b'A';

/// Encodes the attribute change of `file` for another node.
pub fn encode_attributes(file: &FileId) -> Vec<u8> {
    let mut out = vec![ATTR_TAG];
    put(&mut out, file.as_bytes());
    out
}

/// Decodes an attribute change another node encoded; never panics.
pub fn decode_attributes(bytes: &[u8]) -> Result<FileId, BadChange> {
    let mut r = Cursor(bytes);
    if r.u8()? != ATTR_TAG {
        return Err(BadChange);
    }
    let id = FileId::new(r.bytes()?).ok_or(BadChange)?;
    if !r.0.is_empty() {
        return Err(BadChange);
    }
    Ok(id)
}

/// The name of `p` relative to a watch of `dir` (at `dir_path`), if the watch sees it.
fn relative(p: &Place, dir: &FileId, dir_path: Option<&[u8]>, recursive: bool) -> Option<Vec<u8>> {
    if p.dir == *dir {
        return Some(p.name.clone());
    }
    if !recursive {
        return None;
    }
    let (top, inner) = (dir_path?, p.dir_path.as_deref()?);
    let rest = if top.is_empty() { inner } else { inner.strip_prefix(top)?.strip_prefix(b"/")? };
    if rest.is_empty() {
        return None;
    }
    let mut name = rest.to_vec();
    name.push(b'/');
    name.extend_from_slice(&p.name);
    Some(name)
}

/// What a watch of `dir` (at `dir_path`, with `filter`) reports for `c`: (action, name
/// relative to `dir`, `/`-separated). A pure function (the decision table of notifications).
pub fn matches(
    c: &Change,
    dir: &FileId,
    dir_path: Option<&[u8]>,
    recursive: bool,
    filter: u32,
) -> Vec<(Action, Vec<u8>)> {
    if c.what & filter == 0 {
        return Vec::new();
    }
    let at = relative(&c.at, dir, dir_path, recursive);
    match c.kind {
        Kind::Added => at.map(|n| vec![(Action::Added, n)]).unwrap_or_default(),
        Kind::Removed => at.map(|n| vec![(Action::Removed, n)]).unwrap_or_default(),
        Kind::Modified => at.map(|n| vec![(Action::Modified, n)]).unwrap_or_default(),
        Kind::Renamed => {
            let to = c.to.as_ref().and_then(|t| relative(t, dir, dir_path, recursive));
            match (at, to) {
                (Some(a), Some(b)) => vec![(Action::RenamedOld, a), (Action::RenamedNew, b)],
                (Some(a), None) => vec![(Action::Removed, a)],
                (None, Some(b)) => vec![(Action::Added, b)],
                (None, None) => Vec::new(),
            }
        }
    }
}

/// Most changes one watch queues before it reports an overflow instead.
pub const MAX_QUEUED: usize = 4096;

/// What a watch has queued.
#[derive(Debug, Default)]
pub struct Queued {
    /// Changes in order: action and name relative to the watched directory.
    pub events: Vec<(Action, Vec<u8>)>,
    /// More changed than the queue holds: the watcher must re-read the directory.
    pub overflow: bool,
}

/// A watcher's registration: a directory, optionally its whole tree, and a filter.
#[derive(Debug)]
pub struct Watch {
    dir: FileId,
    dir_path: Option<Vec<u8>>,
    recursive: bool,
    filter: u32,
    queued: Mutex<Queued>,
    /// Most bytes the watcher can take at once (set by it; 0 = no limit).
    limit: AtomicUsize,
    ready: Notify,
    /// The watched directory is delete-pending: requests end with DELETE_PENDING.
    doomed: AtomicBool,
}

impl Watch {
    /// The watched directory.
    pub fn dir(&self) -> FileId {
        self.dir
    }

    /// Whether anything is queued.
    pub fn has_queued(&self) -> bool {
        let q = self.queued.lock().unwrap_or_else(|e| e.into_inner());
        q.overflow || !q.events.is_empty()
    }

    /// Takes everything queued.
    pub fn take(&self) -> Queued {
        std::mem::take(&mut *self.queued.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Sets the most bytes the watcher takes at once (each change counted as its
    /// FILE_NOTIFY_INFORMATION entry); a queue beyond it overflows.
    pub fn set_limit(&self, bytes: usize) {
        self.limit.store(bytes, Ordering::Relaxed);
    }

    /// Waits until something is queued or the directory became delete-pending.
    pub async fn ready(&self) {
        loop {
            let n = self.ready.notified();
            if self.has_queued() || self.is_delete_pending() {
                return;
            }
            n.await;
        }
    }

    /// Marks the watched directory delete-pending (a client set delete-on-close on it while
    /// this watcher's handle is still open) and wakes the waiting request.
    pub fn set_delete_pending(&self) {
        self.doomed.store(true, Ordering::Relaxed);
        self.ready.notify_waiters();
    }

    /// Whether the watched directory is delete-pending.
    pub fn is_delete_pending(&self) -> bool {
        self.doomed.load(Ordering::Relaxed)
    }

    /// Queues what this watch sees of `c`.
    fn deliver(&self, c: &Change) {
        let seen = matches(c, &self.dir, self.dir_path.as_deref(), self.recursive, self.filter);
        if seen.is_empty() {
            return;
        }
        {
            let mut q = self.queued.lock().unwrap_or_else(|e| e.into_inner());
            if !q.overflow {
                q.events.extend(seen);
                let limit = self.limit.load(Ordering::Relaxed);
                // FILE_NOTIFY_INFORMATION: 12 bytes, the UTF-16 name, 4-byte alignment.
                let bytes: usize = q.events.iter().map(|(_, n)| (12 + 2 * n.len() + 3) & !3).sum();
                if q.events.len() > MAX_QUEUED || (limit > 0 && bytes > limit) {
                    q.events.clear();
                    q.overflow = true;
                }
            }
        }
        self.ready.notify_waiters();
    }
}

/// A registered [`Watch`]; dropping it unregisters the watch.
#[derive(Debug)]
pub struct WatchHandle {
    hub: Arc<ChangeHub>,
    id: u64,
    watch: Arc<Watch>,
}

impl std::ops::Deref for WatchHandle {
    type Target = Watch;
    fn deref(&self) -> &Watch {
        &self.watch
    }
}

impl Drop for WatchHandle {
    fn drop(&mut self) {
        {
            let mut w = self.hub.watches.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(gone) = w.remove(&self.id) {
                if gone.recursive {
                    self.hub.recursive.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
        self.hub.announce();
    }
}

/// Where changes made here go besides local watchers (the cluster broadcast).
pub type RemoteSink = Box<dyn Fn(Vec<u8>) + Send + Sync>;

/// Gets every change, made here or on another node, as it is delivered (the node's own mount
/// invalidates the kernel's cached names with it). Must not block.
pub type Listener = Box<dyn Fn(&Change) + Send + Sync>;

/// Where this node's interest in the other nodes' changes goes: the [`level`] and its number.
pub type InterestSink = Box<dyn Fn(u8, u64) + Send + Sync>;

/// This node's interest as told to the other nodes, and how far they acknowledged it.
#[derive(Default)]
struct Interest {
    sink: OnceLock<InterestSink>,
    /// The level told and its number (held while telling, so levels go out in order).
    told: Mutex<(u8, u64)>,
    acked: AtomicU64,
    acked_now: Notify,
    /// The other nodes' highest interest in this node's changes (absent: a single node).
    remote: OnceLock<Arc<AtomicU8>>,
    /// Listeners that need the other nodes' changes too.
    remote_listeners: AtomicUsize,
}

/// The change events of one namespace: its watches and where its changes go.
#[derive(Default)]
pub struct ChangeHub {
    watches: Mutex<HashMap<u64, Arc<Watch>>>,
    recursive: AtomicUsize,
    next: AtomicU64,
    remote: OnceLock<RemoteSink>,
    listeners: Mutex<Vec<Arc<Listener>>>,
    /// Listeners of the other nodes' changes only ([`ChangeHub::listen_to_others`]).
    others: Mutex<Vec<Arc<Listener>>>,
    /// Listeners of attribute changes, and whether there is any (checked on every WRITE).
    attr_listeners: Mutex<Vec<Arc<AttrListener>>>,
    has_attr_listeners: AtomicBool,
    interest: Interest,
    /// When each file's last modification by handle was published ([`ChangeHub::throttle_modified`]).
    modified_at: Mutex<HashMap<FileId, std::time::Instant>>,
}

/// How often a file changed through a protocol without opens or closes (NFS WRITE, SETATTR)
/// is reported at most: watchers see a stream of writes once a second, not once per write.
pub const MODIFIED_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

impl std::fmt::Debug for ChangeHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeHub").field("watches", &self.watch_count()).finish()
    }
}

impl ChangeHub {
    /// Registers a watch of `dir` (at `dir_path` from the volume root, if known).
    pub fn watch(
        self: &Arc<Self>,
        dir: FileId,
        dir_path: Option<Vec<u8>>,
        recursive: bool,
        filter: u32,
    ) -> WatchHandle {
        let watch = Arc::new(Watch {
            dir,
            dir_path,
            recursive,
            filter,
            queued: Mutex::new(Queued::default()),
            limit: AtomicUsize::new(0),
            ready: Notify::new(),
            doomed: AtomicBool::new(false),
        });
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        if recursive {
            self.recursive.fetch_add(1, Ordering::Relaxed);
        }
        self.watches.lock().unwrap_or_else(|e| e.into_inner()).insert(id, watch.clone());
        self.announce();
        WatchHandle { hub: self.clone(), id, watch }
    }

    /// How much of the other nodes' changes this node wants now (see the module doc).
    fn level(&self) -> u8 {
        use level::{NAMES, NONE, PATHS};
        if self.recursive.load(Ordering::Relaxed) > 0 {
            PATHS
        } else if self.watch_count() > 0 || self.interest.remote_listeners.load(Ordering::Relaxed) > 0 {
            NAMES
        } else {
            NONE
        }
    }

    /// Tells the other nodes this node's interest if it changed.
    fn announce(&self) {
        let Some(sink) = self.interest.sink.get() else { return };
        let mut told = self.interest.told.lock().unwrap_or_else(|e| e.into_inner());
        let level = self.level();
        if level != told.0 {
            *told = (level, told.1 + 1);
            sink(told.0, told.1);
        }
    }

    /// Registers where this node's interest in the other nodes' changes goes (once), and tells
    /// it the current one.
    pub fn set_interest_sink(&self, sink: InterestSink) {
        if self.interest.sink.set(sink).is_ok() {
            let mut told = self.interest.told.lock().unwrap_or_else(|e| e.into_inner());
            *told = (self.level(), told.1 + 1);
            if let Some(s) = self.interest.sink.get() {
                s(told.0, told.1);
            }
        }
    }

    /// The other nodes acknowledged this node's interest up to number `seq`.
    pub fn interest_acked(&self, seq: u64) {
        self.interest.acked.fetch_max(seq, Ordering::SeqCst);
        self.interest.acked_now.notify_waiters();
    }

    /// Where the other nodes' highest interest in this node's changes is kept (once; without it,
    /// with a remote sink, every change goes out).
    pub fn set_remote_interest(&self, level: Arc<AtomicU8>) {
        let _ = self.interest.remote.set(level);
    }

    /// Waits until every other node knows this node's current interest (at once without a
    /// cluster): a watch registered before this returns gets every change they make after it.
    pub async fn settled(&self) {
        if self.interest.sink.get().is_none() {
            return;
        }
        let want = self.interest.told.lock().unwrap_or_else(|e| e.into_inner()).1;
        loop {
            let n = self.interest.acked_now.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if self.interest.acked.load(Ordering::SeqCst) >= want {
                return;
            }
            n.await;
        }
    }

    /// The other nodes' highest interest (everything while unknown, nothing without a cluster).
    fn remote_level(&self) -> u8 {
        match (self.remote.get(), self.interest.remote.get()) {
            (None, _) => level::NONE,
            (Some(_), None) => level::PATHS,
            (Some(_), Some(l)) => l.load(Ordering::SeqCst),
        }
    }

    /// Registers the sink every change made here is sent to, encoded (once).
    pub fn set_remote(&self, sink: RemoteSink) {
        let _ = self.remote.set(sink);
    }

    /// Adds a listener that gets every change delivered here, the other nodes' too (never
    /// removed).
    pub fn listen(&self, l: Listener) {
        self.listeners.lock().unwrap_or_else(|e| e.into_inner()).push(Arc::new(l));
        self.interest.remote_listeners.fetch_add(1, Ordering::Relaxed);
        self.announce();
    }

    /// Adds a listener that gets only the changes other nodes send (never removed): a cache
    /// that follows this node's own changes itself, and would lose what it learnt if told of
    /// them again. It asks the other nodes for their changes, as [`ChangeHub::listen`].
    pub fn listen_to_others(&self, l: Listener) {
        self.others.lock().unwrap_or_else(|e| e.into_inner()).push(Arc::new(l));
        self.interest.remote_listeners.fetch_add(1, Ordering::Relaxed);
        self.announce();
    }

    /// Adds a listener that needs the other nodes' changes only while this node has watches
    /// (it does not ask them for theirs; never removed).
    pub fn listen_while_watched(&self, l: Listener) {
        self.listeners.lock().unwrap_or_else(|e| e.into_inner()).push(Arc::new(l));
    }

    /// Adds a listener of attribute changes (never removed).
    pub fn listen_attributes(&self, l: AttrListener) {
        self.attr_listeners.lock().unwrap_or_else(|e| e.into_inner()).push(Arc::new(l));
        self.has_attr_listeners.store(true, Ordering::Relaxed);
    }

    /// The attributes of `file` changed here: listeners here are told before this returns,
    /// and, with `remote`, the other nodes (best effort, as every change). Only a node with
    /// listeners of its own sends: the nodes of a cluster share one config, so a node without
    /// a mount has no peers with one, and its SMB and NFS traffic costs the mesh nothing.
    pub fn attributes_changed(&self, file: &FileId, remote: bool) {
        if !self.has_attr_listeners.load(Ordering::Relaxed) {
            return;
        }
        self.deliver_attributes(file);
        if remote {
            if let Some(sink) = self.remote.get() {
                sink(encode_attributes(file));
            }
        }
    }

    fn deliver_attributes(&self, file: &FileId) {
        let listeners: Vec<Arc<AttrListener>> = self.attr_listeners.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for l in listeners {
            l(file);
        }
    }

    /// Whether name changes should name the files whose link count and ctime they alter
    /// ([`Change::files`]; publishers may have to look a name up for it): only while something
    /// caches attributes per file (the node's own mount; the nodes share one config, so the
    /// other nodes have one too).
    pub fn wants_files(&self) -> bool {
        self.has_attr_listeners.load(Ordering::Relaxed)
    }

    /// Whether a change made now would reach a watcher, here or (through the cluster) on
    /// another node: listeners alone do not count.
    pub fn watched(&self) -> bool {
        self.remote_level() > level::NONE || self.watch_count() > 0
    }

    /// Whether a modification of `file` at `now` should be published: not when one was less
    /// than [`MODIFIED_EVERY`] ago.
    pub fn throttle_modified(&self, file: FileId, now: std::time::Instant) -> bool {
        let mut m = self.modified_at.lock().unwrap_or_else(|e| e.into_inner());
        if m.get(&file).is_some_and(|t| now.duration_since(*t) < MODIFIED_EVERY) {
            return false;
        }
        if m.len() >= 4096 {
            m.retain(|_, t| now.duration_since(*t) < MODIFIED_EVERY);
        }
        m.insert(file, now);
        true
    }

    /// Whether a change made now would reach anyone (publishers skip the work otherwise).
    pub fn wanted(&self) -> bool {
        self.remote_level() > level::NONE
            || self.watch_count() > 0
            || !self.listeners.lock().unwrap_or_else(|e| e.into_inner()).is_empty()
    }

    /// Whether publishers should add directory paths (a recursive watch here, or other nodes
    /// that may have one).
    pub fn wants_paths(&self) -> bool {
        self.remote_level() >= level::PATHS || self.recursive.load(Ordering::Relaxed) > 0
    }

    /// Number of registered watches.
    pub fn watch_count(&self) -> usize {
        self.watches.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// A change made here: to local watchers and to the other nodes.
    pub fn publish(&self, c: &Change) {
        self.deliver(c);
        if let Some(sink) = self.remote.get().filter(|_| self.remote_level() > level::NONE) {
            sink(encode(c));
        }
    }

    /// A change another node sent (bytes from its [`ChangeHub::set_remote`] sink); garbage is
    /// ignored.
    pub fn receive(&self, bytes: &[u8]) {
        match bytes.first() {
            Some(&TAG) => {
                if let Ok(c) = decode(bytes) {
                    self.deliver(&c);
                    let others: Vec<Arc<Listener>> = self.others.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    for l in others {
                        l(&c);
                    }
                }
            }
            Some(&ATTR_TAG) => {
                if let Ok(id) = decode_attributes(bytes) {
                    self.deliver_attributes(&id);
                }
            }
            _ => {}
        }
    }

    fn deliver(&self, c: &Change) {
        let listeners: Vec<Arc<Listener>> = self.listeners.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for l in listeners {
            l(c);
        }
        for f in &c.files {
            self.deliver_attributes(f);
        }
        let watches: Vec<Arc<Watch>> =
            self.watches.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        for w in watches {
            w.deliver(c);
        }
    }
}

/// First byte of an encoded change (the cluster broadcast may carry other kinds later).
pub const TAG: u8 = b'N';

fn put(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u16).to_le_bytes());
    out.extend_from_slice(b);
}

fn put_place(out: &mut Vec<u8>, p: &Place) {
    put(out, p.dir.as_bytes());
    match &p.dir_path {
        Some(path) => {
            out.push(1);
            put(out, path);
        }
        None => out.push(0),
    }
    put(out, &p.name);
}

/// Encodes `c` for another node.
pub fn encode(c: &Change) -> Vec<u8> {
    let mut out = vec![TAG, c.kind as u8];
    out.extend_from_slice(&c.what.to_le_bytes());
    put_place(&mut out, &c.at);
    if let Some(to) = &c.to {
        put_place(&mut out, to);
    }
    // Absent when there are none: a change without files is encoded as before them.
    if !c.files.is_empty() {
        let files = &c.files[..c.files.len().min(MAX_FILES)];
        out.push(files.len() as u8);
        for f in files {
            put(&mut out, f.as_bytes());
        }
    }
    out
}

/// Why bytes are not a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadChange;

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], BadChange> {
        if self.0.len() < n {
            return Err(BadChange);
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, BadChange> {
        Ok(self.take(1)?[0])
    }
    fn bytes(&mut self) -> Result<&'a [u8], BadChange> {
        let n = self.take(2)?;
        self.take(u16::from_le_bytes([n[0], n[1]]) as usize)
    }
    fn place(&mut self) -> Result<Place, BadChange> {
        let dir = FileId::new(self.bytes()?).ok_or(BadChange)?;
        let dir_path = match self.u8()? {
            0 => None,
            1 => Some(self.bytes()?.to_vec()),
            _ => return Err(BadChange),
        };
        let name = self.bytes()?.to_vec();
        if name.is_empty() || name.contains(&b'/') || name.contains(&0) {
            return Err(BadChange);
        }
        Ok(Place { dir, dir_path, name })
    }
}

/// Decodes a change another node encoded; never panics.
pub fn decode(bytes: &[u8]) -> Result<Change, BadChange> {
    let mut r = Cursor(bytes);
    if r.u8()? != TAG {
        return Err(BadChange);
    }
    let kind = match r.u8()? {
        0 => Kind::Added,
        1 => Kind::Removed,
        2 => Kind::Modified,
        3 => Kind::Renamed,
        _ => return Err(BadChange),
    };
    let w = r.take(4)?;
    let what = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
    let at = r.place()?;
    let to = if kind == Kind::Renamed { Some(r.place()?) } else { None };
    let mut files = Vec::new();
    if !r.0.is_empty() {
        let n = r.u8()? as usize;
        if n == 0 || n > MAX_FILES {
            return Err(BadChange);
        }
        for _ in 0..n {
            files.push(FileId::new(r.bytes()?).ok_or(BadChange)?);
        }
    }
    if !r.0.is_empty() {
        return Err(BadChange);
    }
    Ok(Change { kind, what, at, to, files })
}

#[cfg(test)]
mod tests {
    #[test]
    fn modifications_by_handle_are_published_once_a_second_per_file() {
        let hub = super::ChangeHub::default();
        let (a, b) = (super::FileId::new(&[1]).unwrap(), super::FileId::new(&[2]).unwrap());
        let t = std::time::Instant::now();
        assert!(hub.throttle_modified(a, t));
        assert!(!hub.throttle_modified(a, t + std::time::Duration::from_millis(500)));
        assert!(hub.throttle_modified(b, t + std::time::Duration::from_millis(500)), "per file");
        assert!(hub.throttle_modified(a, t + super::MODIFIED_EVERY));
    }

    use super::*;

    fn id(n: u8) -> FileId {
        FileId::new(&[n; 8]).unwrap()
    }

    fn place(dir: u8, path: Option<&str>, name: &str) -> Place {
        Place { dir: id(dir), dir_path: path.map(|p| p.as_bytes().to_vec()), name: name.as_bytes().to_vec() }
    }

    fn ch(kind: Kind, what: u32, at: Place, to: Option<Place>) -> Change {
        Change { kind, what, at, to, files: Vec::new() }
    }

    fn names(v: Vec<(Action, Vec<u8>)>) -> Vec<(Action, String)> {
        v.into_iter().map(|(a, n)| (a, String::from_utf8(n).unwrap())).collect()
    }

    #[test]
    fn decision_table() {
        use Action::*;
        let fname = what::FILE_NAME;
        // (change, watch dir, watch path, recursive, filter) -> reported
        type Row<'a> = (Change, u8, Option<&'a str>, bool, u32, Vec<(Action, &'a str)>);
        let rows: Vec<Row> = vec![
            (ch(Kind::Added, fname, place(1, Some("a"), "f"), None), 1, Some("a"), false, fname, vec![(Added, "f")]),
            (ch(Kind::Added, fname, place(1, Some("a"), "f"), None), 1, Some("a"), false, what::DIR_NAME, vec![]),
            (ch(Kind::Added, fname, place(2, Some("a/b"), "f"), None), 1, Some("a"), false, fname, vec![]),
            (ch(Kind::Added, fname, place(2, Some("a/b"), "f"), None), 1, Some("a"), true, fname, vec![(Added, "b/f")]),
            (ch(Kind::Added, fname, place(2, Some("ab/c"), "f"), None), 1, Some("a"), true, fname, vec![]),
            (
                ch(Kind::Added, fname, place(2, Some("a/b"), "f"), None),
                0,
                Some(""),
                true,
                fname,
                vec![(Added, "a/b/f")],
            ),
            (ch(Kind::Added, fname, place(2, None, "f"), None), 1, Some("a"), true, fname, vec![]),
            (ch(Kind::Removed, fname, place(1, None, "f"), None), 1, None, true, fname, vec![(Removed, "f")]),
            (
                ch(Kind::Modified, what::SIZE | what::LAST_WRITE, place(1, None, "f"), None),
                1,
                None,
                false,
                what::LAST_WRITE,
                vec![(Modified, "f")],
            ),
            (
                ch(Kind::Renamed, fname, place(1, Some("a"), "x"), Some(place(1, Some("a"), "y"))),
                1,
                Some("a"),
                false,
                fname,
                vec![(RenamedOld, "x"), (RenamedNew, "y")],
            ),
            (
                ch(Kind::Renamed, fname, place(1, Some("a"), "x"), Some(place(2, Some("b"), "y"))),
                1,
                Some("a"),
                false,
                fname,
                vec![(Removed, "x")],
            ),
            (
                ch(Kind::Renamed, fname, place(1, Some("a"), "x"), Some(place(2, Some("b"), "y"))),
                2,
                Some("b"),
                false,
                fname,
                vec![(Added, "y")],
            ),
            (
                ch(Kind::Renamed, fname, place(1, Some("a"), "x"), Some(place(2, Some("a/s"), "y"))),
                1,
                Some("a"),
                true,
                fname,
                vec![(RenamedOld, "x"), (RenamedNew, "s/y")],
            ),
        ];
        for (i, (c, d, p, rec, filter, want)) in rows.into_iter().enumerate() {
            let got = names(matches(&c, &id(d), p.map(str::as_bytes), rec, filter));
            let want: Vec<(Action, String)> = want.into_iter().map(|(a, n)| (a, n.to_string())).collect();
            assert_eq!(got, want, "row {i}");
        }
    }

    #[test]
    fn listeners_of_others_hear_only_what_other_nodes_send() {
        let hub = ChangeHub::default();
        let heard = Arc::new(Mutex::new(Vec::new()));
        let h = heard.clone();
        hub.listen_to_others(Box::new(move |c: &Change| h.lock().unwrap().push(c.at.name.clone())));
        assert!(!hub.wanted(), "nothing here needs this node's own changes");
        hub.publish(&ch(Kind::Added, what::FILE_NAME, place(1, None, "here"), None));
        hub.receive(&encode(&ch(Kind::Added, what::FILE_NAME, place(1, None, "there"), None)));
        assert_eq!(*heard.lock().unwrap(), vec![b"there".to_vec()]);
    }

    #[test]
    fn encode_decode_round_trip() {
        let cs = [
            ch(Kind::Added, what::FILE_NAME, place(1, Some("a/b"), "f"), None),
            ch(Kind::Removed, what::DIR_NAME, place(1, None, "d"), None),
            ch(Kind::Renamed, what::FILE_NAME, place(1, Some(""), "x"), Some(place(2, None, "y"))),
        ];
        for c in cs {
            assert_eq!(decode(&encode(&c)), Ok(c));
        }
    }

    #[test]
    fn name_changes_carry_the_files_whose_link_count_they_changed() {
        let with =
            |kind, to, files: Vec<FileId>| Change { files, ..ch(kind, what::FILE_NAME, place(1, None, "b"), to) };
        let cs = [
            with(Kind::Added, None, vec![id(7)]),
            with(Kind::Removed, None, vec![id(7)]),
            with(Kind::Renamed, Some(place(2, Some("d"), "c")), vec![id(7), id(8)]),
        ];
        for c in cs {
            let wire = encode(&c);
            assert_eq!(decode(&wire), Ok(c.clone()));
            // Without files the bytes are what they were before files existed.
            let bare = Change { files: Vec::new(), ..c };
            assert_eq!(&wire[..encode(&bare).len()], &encode(&bare)[..]);
        }
        // A count of 0 or more than MAX_FILES is not a change (one encoding per change).
        let mut zero = encode(&ch(Kind::Added, what::FILE_NAME, place(1, None, "b"), None));
        zero.push(0);
        assert_eq!(decode(&zero), Err(BadChange));
        let mut three = encode(&with(Kind::Removed, None, vec![id(7), id(8)]));
        let at = encode(&ch(Kind::Removed, what::FILE_NAME, place(1, None, "b"), None)).len();
        three[at] = 3;
        put(&mut three, id(9).as_bytes());
        assert_eq!(decode(&three), Err(BadChange));

        // Delivered here or received from another node, the files reach the attribute
        // listeners (the mount's kernel forgets their link count and ctime).
        let hub = ChangeHub::default();
        let sent = Arc::new(Mutex::new(Vec::new()));
        let o = sent.clone();
        hub.set_remote(Box::new(move |b| o.lock().unwrap().push(b)));
        assert!(!hub.wants_files(), "nothing caches attributes: publishers need not look files up");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        hub.listen_attributes(Box::new(move |f| s.lock().unwrap().push(*f)));
        assert!(hub.wants_files());
        hub.publish(&with(Kind::Added, None, vec![id(4)]));
        hub.receive(&encode(&with(Kind::Renamed, Some(place(1, None, "c")), vec![id(5), id(6)])));
        assert_eq!(*seen.lock().unwrap(), vec![id(4), id(5), id(6)]);
        let wire = sent.lock().unwrap().clone();
        assert_eq!(wire.len(), 1, "one message: the name change with its file");
        assert_eq!(decode(&wire[0]).map(|c| c.files), Ok(vec![id(4)]));
    }

    #[test]
    fn decode_never_panics() {
        let bare = ch(Kind::Renamed, 3, place(1, Some("a"), "x"), Some(place(2, Some("b"), "y")));
        let good = encode(&Change { files: vec![id(3), id(4)], ..bare.clone() });
        for n in 0..good.len() {
            if n == encode(&bare).len() {
                // Cut right before its files: the change without them.
                assert_eq!(decode(&good[..n]), Ok(bare.clone()));
                continue;
            }
            assert!(decode(&good[..n]).is_err(), "truncated at {n}");
        }
        let mut x: u64 = 1;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 64) as usize;
            let bytes: Vec<u8> =
                (0..len).map(|i| (x >> (i % 8 * 8)) as u8 ^ good.get(i).copied().unwrap_or(0)).collect();
            let _ = decode(&bytes);
        }
    }

    #[test]
    fn attribute_changes_round_trip_reach_listeners_and_other_nodes() {
        let hub = ChangeHub::default();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sent = Arc::new(Mutex::new(Vec::new()));
        let o = sent.clone();
        hub.set_remote(Box::new(move |b| o.lock().unwrap().push(b)));
        // Without listeners here nothing is delivered, nor sent (no node of this cluster
        // mounts).
        hub.attributes_changed(&id(9), true);
        assert!(sent.lock().unwrap().is_empty());
        let s = seen.clone();
        hub.listen_attributes(Box::new(move |f| s.lock().unwrap().push(*f)));
        hub.attributes_changed(&id(1), false);
        assert!(sent.lock().unwrap().is_empty(), "a local-only change stays here");
        hub.attributes_changed(&id(2), true);
        let wire = sent.lock().unwrap().clone();
        assert_eq!(wire.len(), 1);
        assert_eq!(decode_attributes(&wire[0]), Ok(id(2)));
        assert!(decode(&wire[0]).is_err(), "not a name change");
        // Another node's change reaches the listeners; garbage and name changes do not.
        hub.receive(&encode_attributes(&id(3)));
        hub.receive(&wire[0][..wire[0].len() - 1]);
        hub.receive(b"");
        assert_eq!(*seen.lock().unwrap(), vec![id(1), id(2), id(3)]);
        for n in 0..wire[0].len() {
            assert!(decode_attributes(&wire[0][..n]).is_err(), "truncated at {n}");
        }
        let mut longer = wire[0].clone();
        longer.push(0);
        assert!(decode_attributes(&longer).is_err());
    }

    #[tokio::test]
    async fn watch_queues_overflows_and_unregisters() {
        let hub = Arc::new(ChangeHub::default());
        let w = hub.watch(id(1), None, false, what::FILE_NAME);
        assert!(hub.wanted());
        hub.publish(&ch(Kind::Added, what::FILE_NAME, place(1, None, "f"), None));
        w.ready().await;
        let q = w.take();
        assert_eq!(q.events, vec![(Action::Added, b"f".to_vec())]);
        assert!(!q.overflow);
        w.set_limit(64);
        for i in 0..10 {
            hub.publish(&ch(Kind::Added, what::FILE_NAME, place(1, None, &format!("file{i}")), None));
        }
        let q = w.take();
        assert!(q.overflow && q.events.is_empty());
        drop(w);
        assert_eq!(hub.watch_count(), 0);
        assert!(!hub.wanted());
    }

    #[tokio::test]
    async fn a_delete_pending_directory_wakes_its_watcher_for_good() {
        let hub = Arc::new(ChangeHub::default());
        let w = Arc::new(hub.watch(id(1), None, false, what::FILE_NAME));
        let waiter = tokio::spawn({
            let w = w.clone();
            async move { w.ready().await }
        });
        tokio::task::yield_now().await;
        assert!(!w.is_delete_pending());
        w.set_delete_pending();
        tokio::time::timeout(std::time::Duration::from_secs(10), waiter).await.unwrap().unwrap();
        assert!(w.is_delete_pending());
        // Every later wait ends at once too.
        w.ready().await;
    }
}
