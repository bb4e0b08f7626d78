//! Change notification state of the SMB server: one [`Watch`](crate::vfs::changes::Watch) per
//! directory handle that asked for CHANGE_NOTIFY (registered at its first request, with that
//! request's filter and WATCH_TREE, as Windows does; changes between requests queue in it;
//! a watched directory that becomes delete-pending ends its requests with DELETE_PENDING), and
//! the FILE_NOTIFY_INFORMATION encoding of what it saw (MS-FSCC 2.7.1).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::locks::OpenKey;
use crate::vfs::changes::{Action, WatchHandle};
use crate::vfs::FileId;

/// The watches of open directory handles, by open.
#[derive(Debug, Default)]
pub struct Watches {
    by_open: Mutex<HashMap<OpenKey, Arc<WatchHandle>>>,
}

impl Watches {
    /// The watch of open `key`, if it has one.
    pub fn get(&self, key: OpenKey) -> Option<Arc<WatchHandle>> {
        self.by_open.lock().unwrap_or_else(|e| e.into_inner()).get(&key).cloned()
    }

    /// Gives open `key` its watch.
    pub fn insert(&self, key: OpenKey, w: Arc<WatchHandle>) -> Arc<WatchHandle> {
        self.by_open.lock().unwrap_or_else(|e| e.into_inner()).entry(key).or_insert(w).clone()
    }

    /// Open `key` closed: its watch goes (pending requests end with NOTIFY_CLEANUP).
    pub fn forget(&self, key: OpenKey) {
        self.by_open.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
    }

    /// Whether some open watches directory `dir`.
    pub fn watching(&self, dir: &FileId) -> bool {
        self.by_open.lock().unwrap_or_else(|e| e.into_inner()).values().any(|w| w.dir() == *dir)
    }

    /// Directory `dir` became delete-pending: every watch of it ends its requests with
    /// DELETE_PENDING (as Windows and smbd answer a watcher whose directory is being removed).
    pub fn delete_pending(&self, dir: &FileId) {
        for w in self.by_open.lock().unwrap_or_else(|e| e.into_inner()).values().filter(|w| w.dir() == *dir) {
            w.set_delete_pending();
        }
    }
}

/// Encodes `events` (names `/`-separated, relative to the watched directory) as chained
/// FILE_NOTIFY_INFORMATION entries; `None` when they do not fit in `max` bytes (the client
/// must then re-read the directory: STATUS_NOTIFY_ENUM_DIR).
pub fn encode(events: &[(Action, Vec<u8>)], max: usize) -> Option<Vec<u8>> {
    let mut out: Vec<u8> = Vec::new();
    let mut last_start = None;
    for (i, (action, name)) in events.iter().enumerate() {
        let name: Vec<u16> = String::from_utf8_lossy(name).replace('/', "\\").encode_utf16().collect();
        let start = out.len();
        if let Some(prev) = last_start {
            let next = (start - prev) as u32;
            out[prev..prev + 4].copy_from_slice(&next.to_le_bytes());
        }
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&(*action as u32).to_le_bytes());
        out.extend_from_slice(&((name.len() * 2) as u32).to_le_bytes());
        for c in name {
            out.extend_from_slice(&c.to_le_bytes());
        }
        last_start = Some(start);
        // Entries start 4-byte aligned; the last one is not padded.
        if i + 1 < events.len() {
            while out.len() % 4 != 0 {
                out.push(0);
            }
        }
        if out.len() > max {
            return None;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_chain_and_align() {
        let ev = vec![(Action::Added, b"a".to_vec()), (Action::RenamedNew, b"d/xyz".to_vec())];
        let b = encode(&ev, 1000).unwrap();
        // First entry: 12 bytes + "a" (2) padded to 16.
        assert_eq!(u32::from_le_bytes(b[0..4].try_into().unwrap()), 16);
        assert_eq!(u32::from_le_bytes(b[4..8].try_into().unwrap()), 1);
        assert_eq!(u32::from_le_bytes(b[8..12].try_into().unwrap()), 2);
        assert_eq!(u32::from_le_bytes(b[16..20].try_into().unwrap()), 0, "last entry ends the chain");
        assert_eq!(u32::from_le_bytes(b[20..24].try_into().unwrap()), 5);
        assert_eq!(u32::from_le_bytes(b[24..28].try_into().unwrap()), 10);
        let name: Vec<u16> = b[28..38].chunks(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
        assert_eq!(String::from_utf16(&name).unwrap(), "d\\xyz");
        assert_eq!(b.len(), 38);
        assert!(encode(&ev, 37).is_none());
        assert_eq!(encode(&[], 0), Some(Vec::new()));
    }
}
