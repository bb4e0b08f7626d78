//! CHANGE_NOTIFY for names changed directly on a local volume (`[volume] backend = "local"`):
//! a program on the node creating, deleting or renaming entries of a directory an SMB client
//! watches. Every directory a CHANGE_NOTIFY watches gets an inotify watch (one per directory,
//! however many handles watch it; removed with the last of them); its events become the same
//! [`Change`]s nasgw's own operations publish, so watchers (and other nodes) see them.
//!
//! nasgw's own operations on the volume raise inotify events too: those are echoes of changes
//! already published. Every change the namespace delivers is remembered for [`ECHO_KEEP`]; an
//! inotify event is handled [`ECHO_WAIT`] after it arrived and dropped when it matches a
//! remembered change (each remembered change absorbs one event).
//!
//! Not covered: data and attribute changes (inotify's IN_MODIFY/IN_ATTRIB/IN_CLOSE_WRITE do
//! not tell nasgw's own writes, whose descriptors stay open in the backend's cache, from a
//! local program's); the subdirectories of a recursive watch (only the watched directory
//! itself is followed). A GlusterFS volume has nothing equivalent: its upcalls name no entry,
//! and a change through the node's own FUSE mount already goes through nasgw.
//!
//! [`translate`] (pairing renames, dropping echoes) is pure and tested without inotify.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::locks::OpenKey;
use crate::vfs::changes::{what, Change, ChangeHub, Kind, Place};
use crate::vfs::{FileId, Namespace};

/// How long after an inotify event it is handled: nasgw publishes its own changes as soon as
/// the volume answered, well within this.
pub const ECHO_WAIT: Duration = Duration::from_millis(100);
/// How long a published change is remembered as a possible echo.
pub const ECHO_KEEP: Duration = Duration::from_secs(5);

/// What happened to a name, as inotify reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// IN_CREATE.
    Created,
    /// IN_DELETE.
    Deleted,
    /// IN_MOVED_FROM.
    MovedFrom,
    /// IN_MOVED_TO.
    MovedTo,
}

/// One inotify event of a watched directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Raw {
    /// The watched directory.
    pub dir: FileId,
    /// The entry's name.
    pub name: Vec<u8>,
    /// The entry is a directory.
    pub is_dir: bool,
    /// What happened.
    pub op: Op,
    /// Pairs the two halves of a rename.
    pub cookie: u32,
}

/// A name change to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Named {
    /// `dir/name` appeared.
    Added(FileId, Vec<u8>, bool),
    /// `dir/name` went.
    Removed(FileId, Vec<u8>, bool),
    /// Renamed from the first place to the second.
    Renamed((FileId, Vec<u8>), (FileId, Vec<u8>), bool),
}

/// Changes already published, remembered to recognise their inotify echoes: (appeared or
/// went, directory, name).
#[derive(Debug, Default)]
pub struct Echoes {
    list: VecDeque<(Instant, bool, FileId, Vec<u8>)>,
}

impl Echoes {
    /// Remembers that `dir/name` appeared (`added`) or went.
    pub fn record(&mut self, now: Instant, added: bool, dir: FileId, name: &[u8]) {
        self.expire(now);
        self.list.push_back((now, added, dir, name.to_vec()));
        // Bounded: a burst of operations without watchers' events keeps the newest.
        if self.list.len() > 65_536 {
            self.list.pop_front();
        }
    }

    /// Whether `dir/name` appearing (`added`) or going is an echo; forgets the match.
    pub fn take(&mut self, now: Instant, added: bool, dir: FileId, name: &[u8]) -> bool {
        self.expire(now);
        let hit = self.list.iter().position(|(_, a, d, n)| *a == added && *d == dir && n == name);
        hit.map(|i| self.list.remove(i)).is_some()
    }

    fn expire(&mut self, now: Instant) {
        while self.list.front().is_some_and(|(t, ..)| now.duration_since(*t) > ECHO_KEEP) {
            self.list.pop_front();
        }
    }
}

/// The name changes a batch of inotify events stands for, without nasgw's own echoes: a
/// MOVED_FROM followed by the MOVED_TO of the same cookie is one rename (a half whose other
/// half is outside the watched directories is a removal or an appearance).
pub fn translate(batch: &[Raw], echoes: &mut Echoes, now: Instant) -> Vec<Named> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < batch.len() {
        let e = &batch[i];
        let added = matches!(e.op, Op::Created | Op::MovedTo);
        let echo = echoes.take(now, added, e.dir, &e.name);
        if e.op == Op::MovedFrom {
            if let Some(to) = batch.get(i + 1).filter(|t| t.op == Op::MovedTo && t.cookie == e.cookie) {
                let to_echo = echoes.take(now, true, to.dir, &to.name);
                match (echo, to_echo) {
                    (true, true) => {}
                    (false, false) => out.push(Named::Renamed(
                        (e.dir, e.name.clone()),
                        (to.dir, to.name.clone()),
                        e.is_dir || to.is_dir,
                    )),
                    (true, false) => out.push(Named::Added(to.dir, to.name.clone(), to.is_dir)),
                    (false, true) => out.push(Named::Removed(e.dir, e.name.clone(), e.is_dir)),
                }
                i += 2;
                continue;
            }
        }
        if !echo {
            out.push(if added {
                Named::Added(e.dir, e.name.clone(), e.is_dir)
            } else {
                Named::Removed(e.dir, e.name.clone(), e.is_dir)
            });
        }
        i += 1;
    }
    out
}

thread_local! {
    /// Set while this module publishes, so its own changes are not remembered as echoes.
    static PUBLISHING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The inotify watches of the directories SMB clients watch on a local volume.
pub struct LocalEvents {
    root: PathBuf,
    ns: Namespace,
    state: Mutex<State>,
    echoes: Arc<Mutex<Echoes>>,
    inotify: Mutex<Option<inotify::Watches>>,
    started: std::sync::Once,
    /// Where the reader runs: the daemon's runtime, current when this was made. A
    /// connection's own runtime ends with its thread (when it closes or goes dormant), and
    /// the reader with it.
    runtime: Option<tokio::runtime::Handle>,
}

impl std::fmt::Debug for LocalEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalEvents").field("root", &self.root).finish()
    }
}

#[derive(Default)]
struct State {
    /// Watching handles: the directory each watches.
    by_open: HashMap<OpenKey, FileId>,
    /// Watched directories: their inotify watch, path from the volume root, handle count.
    by_dir: HashMap<FileId, (inotify::WatchDescriptor, Vec<u8>, usize)>,
    /// Directories by inotify watch.
    by_wd: HashMap<inotify::WatchDescriptor, FileId>,
}

impl LocalEvents {
    /// Follows directories of the local volume at `root`, served through `ns`.
    pub fn new(root: PathBuf, ns: Namespace) -> Self {
        Self {
            root,
            ns,
            state: Mutex::new(State::default()),
            echoes: Arc::new(Mutex::new(Echoes::default())),
            inotify: Mutex::new(None),
            started: std::sync::Once::new(),
            runtime: tokio::runtime::Handle::try_current().ok(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Open `key` watches directory `dir`: follow it (once per directory).
    pub async fn watch(self: &Arc<Self>, key: OpenKey, dir: FileId) {
        if self.state().by_open.contains_key(&key) {
            return;
        }
        self.start();
        let known = {
            let mut s = self.state();
            match s.by_dir.get_mut(&dir) {
                Some(entry) => {
                    entry.2 += 1;
                    true
                }
                None => false,
            }
        };
        if !known {
            let Ok(rel) = self.ns.path_of(dir).await else { return };
            let path = self.root.join(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&rel));
            let mask = inotify::WatchMask::CREATE
                | inotify::WatchMask::DELETE
                | inotify::WatchMask::MOVE
                | inotify::WatchMask::ONLYDIR
                | inotify::WatchMask::DONT_FOLLOW
                | inotify::WatchMask::EXCL_UNLINK;
            let wd = {
                let mut w = self.inotify.lock().unwrap_or_else(|p| p.into_inner());
                let Some(w) = w.as_mut() else { return };
                match w.add(&path, mask) {
                    Ok(wd) => wd,
                    Err(e) => {
                        tracing::info!(error = %e, dir = %path.display(), "SMB: cannot follow local changes of a watched directory (inotify)");
                        return;
                    }
                }
            };
            let mut s = self.state();
            match s.by_dir.get_mut(&dir) {
                // Added meanwhile by another watcher: one watch serves both.
                Some(entry) => entry.2 += 1,
                None => {
                    s.by_dir.insert(dir, (wd.clone(), rel, 1));
                    s.by_wd.insert(wd, dir);
                }
            }
        }
        self.state().by_open.insert(key, dir);
    }

    /// Open `key` closed: the last handle watching a directory removes its inotify watch.
    pub fn forget(&self, key: OpenKey) {
        let mut s = self.state();
        let Some(dir) = s.by_open.remove(&key) else { return };
        let last = match s.by_dir.get_mut(&dir) {
            Some(entry) => {
                entry.2 -= 1;
                entry.2 == 0
            }
            None => false,
        };
        if last {
            if let Some((wd, _, _)) = s.by_dir.remove(&dir) {
                s.by_wd.remove(&wd);
                if let Some(w) = self.inotify.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
                    let _ = w.remove(wd);
                }
            }
        }
    }

    /// Directories followed now (tests, diagnostics).
    pub fn followed(&self) -> usize {
        self.state().by_dir.len()
    }

    /// At the first watch: the inotify instance, its reader task, and the listener that
    /// remembers published changes (from then on every name change is published, as with any
    /// watcher).
    fn start(self: &Arc<Self>) {
        self.started.call_once(|| {
            let inotify = match inotify::Inotify::init() {
                Ok(i) => i,
                Err(e) => {
                    tracing::warn!(error = %e, "SMB: inotify unavailable: local changes of watched directories are not reported");
                    return;
                }
            };
            *self.inotify.lock().unwrap_or_else(|p| p.into_inner()) = Some(inotify.watches());
            let echoes = self.echoes.clone();
            // Only while this node has watches: it asks the other nodes for nothing itself.
            self.ns.changes().listen_while_watched(Box::new(move |c: &Change| {
                if PUBLISHING.with(|p| p.get()) {
                    return;
                }
                let mut e = echoes.lock().unwrap_or_else(|p| p.into_inner());
                let now = Instant::now();
                match c.kind {
                    Kind::Added => e.record(now, true, c.at.dir, &c.at.name),
                    Kind::Removed => e.record(now, false, c.at.dir, &c.at.name),
                    Kind::Renamed => {
                        e.record(now, false, c.at.dir, &c.at.name);
                        if let Some(to) = &c.to {
                            e.record(now, true, to.dir, &to.name);
                        }
                    }
                    _ => {}
                }
            }));
            let me = Arc::downgrade(self);
            let reader = async move {
                // Registered from inside the task: an AsyncFd belongs to the reactor of the
                // runtime that registers it.
                // SAFETY: the Inotify owns its descriptor until it is dropped (with the
                // AsyncFd) and always returns that one from as_raw_fd.
                match unsafe { tokio::io::unix::AsyncFd::register(inotify) } {
                    Ok(fd) => read_loop(fd, me).await,
                    Err(_) => tracing::warn!(
                        "SMB: inotify cannot be polled: local changes of watched directories are not reported"
                    ),
                }
            };
            match &self.runtime {
                Some(rt) => drop(rt.spawn(reader)),
                None => drop(tokio::spawn(reader)),
            }
        });
    }

    /// Turns one batch of inotify events into published changes.
    fn handle(&self, events: Vec<(inotify::WatchDescriptor, u32, u32, Option<Vec<u8>>)>) {
        use inotify::EventMask as M;
        let mut batch = Vec::new();
        {
            let mut s = self.state();
            for (wd, mask, cookie, name) in events {
                let mask = M::from_bits_truncate(mask);
                if mask.contains(M::IGNORED) {
                    if let Some(dir) = s.by_wd.remove(&wd) {
                        s.by_dir.remove(&dir);
                    }
                    continue;
                }
                let (Some(&dir), Some(name)) = (s.by_wd.get(&wd), name) else { continue };
                let op = if mask.contains(M::CREATE) {
                    Op::Created
                } else if mask.contains(M::DELETE) {
                    Op::Deleted
                } else if mask.contains(M::MOVED_FROM) {
                    Op::MovedFrom
                } else if mask.contains(M::MOVED_TO) {
                    Op::MovedTo
                } else {
                    continue;
                };
                batch.push(Raw { dir, name, is_dir: mask.contains(M::ISDIR), op, cookie });
            }
        }
        let named = translate(&batch, &mut self.echoes.lock().unwrap_or_else(|p| p.into_inner()), Instant::now());
        if named.is_empty() {
            return;
        }
        let hub: &Arc<ChangeHub> = self.ns.changes();
        let place = |dir: FileId, name: Vec<u8>| {
            let dir_path = self.state().by_dir.get(&dir).map(|(_, p, _)| p.clone());
            Place { dir, dir_path, name }
        };
        PUBLISHING.with(|p| p.set(true));
        for n in named {
            let bit = |is_dir: bool| if is_dir { what::DIR_NAME } else { what::FILE_NAME };
            let c = match n {
                Named::Added(dir, name, d) => {
                    Change { kind: Kind::Added, what: bit(d), at: place(dir, name), to: None, files: Vec::new() }
                }
                Named::Removed(dir, name, d) => {
                    Change { kind: Kind::Removed, what: bit(d), at: place(dir, name), to: None, files: Vec::new() }
                }
                Named::Renamed((fd, fname), (td, tname), d) => Change {
                    kind: Kind::Renamed,
                    what: bit(d),
                    at: place(fd, fname),
                    to: Some(place(td, tname)),
                    files: Vec::new(),
                },
            };
            hub.publish(&c);
        }
        PUBLISHING.with(|p| p.set(false));
    }
}

/// Reads inotify events until the [`LocalEvents`] goes; each batch is handled [`ECHO_WAIT`]
/// after its first event.
async fn read_loop(mut fd: tokio::io::unix::AsyncFd<inotify::Inotify>, me: std::sync::Weak<LocalEvents>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut events = Vec::new();
        let mut first = true;
        loop {
            let ready = if first {
                fd.readable_mut().await
            } else {
                match tokio::time::timeout(Duration::ZERO, fd.readable_mut()).await {
                    Ok(r) => r,
                    Err(_) => break,
                }
            };
            let Ok(mut guard) = ready else { return };
            match guard.try_io(|inner| {
                inner.get_mut().read_events(&mut buf).map(|evs| {
                    evs.map(|e| (e.wd.clone(), e.mask.bits(), e.cookie, e.name.map(|n| n.as_encoded_bytes().to_vec())))
                        .collect::<Vec<_>>()
                })
            }) {
                Ok(Ok(mut got)) => events.append(&mut got),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "SMB: reading inotify events failed; local changes are no longer reported");
                    return;
                }
                Err(_would_block) => {
                    if !first {
                        break;
                    }
                    continue;
                }
            }
            if first {
                first = false;
                tokio::time::sleep(ECHO_WAIT).await;
            }
        }
        let Some(me) = me.upgrade() else { return };
        me.handle(events);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(n: u8) -> FileId {
        FileId::new(&[n]).unwrap()
    }

    fn raw(op: Op, name: &str, cookie: u32) -> Raw {
        Raw { dir: dir(1), name: name.as_bytes().to_vec(), is_dir: false, op, cookie }
    }

    #[test]
    fn local_names_become_changes_and_renames_pair_up() {
        let mut e = Echoes::default();
        let now = Instant::now();
        let batch =
            [raw(Op::Created, "a", 0), raw(Op::MovedFrom, "a", 7), raw(Op::MovedTo, "b", 7), raw(Op::Deleted, "b", 0)];
        assert_eq!(
            translate(&batch, &mut e, now),
            vec![
                Named::Added(dir(1), b"a".to_vec(), false),
                Named::Renamed((dir(1), b"a".to_vec()), (dir(1), b"b".to_vec()), false),
                Named::Removed(dir(1), b"b".to_vec(), false),
            ]
        );
        // A half whose other half is elsewhere.
        assert_eq!(
            translate(&[raw(Op::MovedFrom, "x", 9), raw(Op::Created, "y", 0)], &mut e, now),
            vec![Named::Removed(dir(1), b"x".to_vec(), false), Named::Added(dir(1), b"y".to_vec(), false)]
        );
    }

    #[test]
    fn echoes_of_published_changes_are_dropped_once() {
        let mut e = Echoes::default();
        let now = Instant::now();
        e.record(now, true, dir(1), b"a");
        e.record(now, false, dir(1), b"a");
        e.record(now, true, dir(1), b"b");
        let batch = [raw(Op::Created, "a", 0), raw(Op::MovedFrom, "a", 3), raw(Op::MovedTo, "b", 3)];
        assert_eq!(translate(&batch, &mut e, now), vec![]);
        // The same again is no echo any more.
        assert_eq!(translate(&batch[..1], &mut e, now), vec![Named::Added(dir(1), b"a".to_vec(), false)]);
    }

    #[test]
    fn remembered_changes_expire() {
        let mut e = Echoes::default();
        let then = Instant::now();
        e.record(then, true, dir(1), b"a");
        assert!(!e.take(then + ECHO_KEEP + Duration::from_secs(1), true, dir(1), b"a"));
    }
}
