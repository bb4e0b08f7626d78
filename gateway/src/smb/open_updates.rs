//! Changes that async work makes to an open of its connection: a SET_INFO rename that waited
//! for a lease break finishes on a task of its own, with no access to the connection's open
//! table, yet the open must then carry its new parent and path (a later CLOSE with
//! delete-on-close, a name query, the next rename all start from them).
//!
//! The task queues an [`OpenUpdate`] *before* it sends its reply, and the connection applies
//! what is queued before it runs the next message it reads and before it closes its opens.
//! A client learns of the rename only from that reply, so any request it sends afterwards
//! meets the open already updated. Applying is pure bookkeeping on the [`OpenTable`].

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use super::cmd::open::OpenKind;
use super::session::OpenTable;
use crate::locks::types::OpenKey;
use crate::vfs::FileId;

/// What changed about the open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Renamed: its directory and share-relative path are now these.
    Moved {
        /// The new parent directory.
        parent: FileId,
        /// The new share-relative components.
        path: Vec<String>,
    },
}

/// A change to open `volatile` of the connection, made by async work on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenUpdate {
    /// The open's volatile id.
    pub volatile: u64,
    /// The open's key in the lock table: an update never lands on another open.
    pub key: OpenKey,
    /// What changed.
    pub change: Change,
}

/// The connection's queue of updates from its async work, made by the first work that needs
/// it: a channel costs ~3.5 KiB of heap (its first block holds 32 updates), which every idle
/// connection would otherwise keep.
#[derive(Default)]
pub struct OpenUpdates {
    queue: Option<(UnboundedSender<OpenUpdate>, UnboundedReceiver<OpenUpdate>)>,
}

impl OpenUpdates {
    /// Where async work queues its updates.
    pub fn sender(&mut self) -> UnboundedSender<OpenUpdate> {
        self.queue.get_or_insert_with(unbounded_channel).0.clone()
    }

    /// No queue was made yet (nothing asked for one).
    pub fn is_unused(&self) -> bool {
        self.queue.is_none()
    }

    /// Applies every queued update to `opens`; returns how many found their open (an open
    /// closed meanwhile is skipped: there is nothing left to update).
    pub fn apply(&mut self, opens: &mut OpenTable) -> usize {
        let mut applied = 0;
        let Some((_, rx)) = &mut self.queue else { return 0 };
        while let Ok(u) = rx.try_recv() {
            if apply(opens, u) {
                applied += 1;
            }
        }
        applied
    }
}

/// Applies one update; `false` when its open is gone (closed, or another open now).
fn apply(opens: &mut OpenTable, u: OpenUpdate) -> bool {
    let Some(open) = opens.any_mut(u.volatile) else { return false };
    let OpenKind::File(f) = &mut open.kind else { return false };
    if f.key != u.key {
        return false;
    }
    match u.change {
        Change::Moved { parent, path } => {
            f.parent = parent;
            f.path = path;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smb::cmd::open::FileOpen;
    use crate::vfs::Credentials;

    fn file(key: OpenKey, parent: FileId, path: &[&str]) -> OpenKind {
        OpenKind::File(Box::new(FileOpen {
            id: FileId::new(b"file").unwrap(),
            parent,
            path: path.iter().map(|s| s.to_string()).collect(),
            is_dir: false,
            access: 0,
            key,
            lease: None,
            cred: Credentials::root(),
            root: FileId::new(b"root").unwrap(),
            position: 0,
            write_through: false,
            wrote: false,
            listing: None,
            state: Default::default(),
        }))
    }

    fn key(n: u64) -> OpenKey {
        OpenKey { node: 1, seq: n }
    }

    fn path_of(opens: &mut OpenTable, id: u64) -> (FileId, Vec<String>) {
        match &opens.any_mut(id).unwrap().kind {
            OpenKind::File(f) => (f.parent, f.path.clone()),
            _ => unreachable!(),
        }
    }

    #[test]
    fn a_queued_move_reaches_its_open_and_no_other() {
        let (a, b) = (key(1), key(2));
        let (old_dir, new_dir) = (FileId::new(b"old").unwrap(), FileId::new(b"new").unwrap());
        let mut opens = OpenTable::default();
        let va = opens.insert(1, 1, 0, file(a, old_dir, &["d", "x"]));
        let vb = opens.insert(1, 1, 0, file(b, old_dir, &["d", "y"]));
        let mut q = OpenUpdates::default();
        assert!(q.is_unused(), "no queue before async work asks for one");
        assert_eq!(q.apply(&mut opens), 0);
        let moved = Change::Moved { parent: new_dir, path: vec!["e".into(), "z".into()] };
        q.sender().send(OpenUpdate { volatile: va, key: a, change: moved.clone() }).unwrap();
        // An update naming the right volatile id but another open's key is not applied.
        q.sender().send(OpenUpdate { volatile: vb, key: a, change: moved.clone() }).unwrap();
        assert_eq!(q.apply(&mut opens), 1);
        assert_eq!(path_of(&mut opens, va), (new_dir, vec!["e".to_string(), "z".to_string()]));
        assert_eq!(path_of(&mut opens, vb), (old_dir, vec!["d".to_string(), "y".to_string()]));
        // The queue is empty afterwards.
        assert_eq!(q.apply(&mut opens), 0);
    }

    #[test]
    fn an_update_for_a_closed_open_is_dropped() {
        let mut opens = OpenTable::default();
        let dir = FileId::new(b"dir").unwrap();
        let v = opens.insert(1, 1, 0, file(key(7), dir, &["x"]));
        opens.remove(v);
        let mut q = OpenUpdates::default();
        let change = Change::Moved { parent: dir, path: vec!["y".into()] };
        q.sender().send(OpenUpdate { volatile: v, key: key(7), change }).unwrap();
        assert_eq!(q.apply(&mut opens), 0);
    }
}
