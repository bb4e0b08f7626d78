//! The kernel's inode numbers for the mount (pure bookkeeping).
//!
//! `fuser` replies with the attributes' inode number as the FUSE node id, so the node id of a
//! file is its [`Attr::fileid`](crate::vfs::Attr::fileid): the number NFS reports as `fileid` and
//! SMB as `IndexNumber`, so `stat` on the mount shows the same inode number as every client.
//! Node id 1 is the kernel's name for the root, whatever its inode number.
//!
//! Each number maps to the file's persistent identity while the kernel remembers it: every
//! entry handed to the kernel (lookup, create, mkdir, symlink, mknod, link) counts one lookup,
//! `forget` gives them back, and a number nobody remembers is dropped.

use std::collections::HashMap;

use crate::vfs::FileId;

/// The kernel's node id of the root directory.
pub const ROOT: u64 = 1;

/// Node ids the kernel holds, each with its file's identity and lookup count.
#[derive(Debug)]
pub struct Inodes {
    root: FileId,
    root_fileid: u64,
    known: HashMap<u64, (FileId, u64)>,
    /// The node id of each known identity (invalidations name files by identity).
    by_id: HashMap<FileId, u64>,
}

impl Inodes {
    /// A table whose node 1 is `root` (whose own inode number is `root_fileid`).
    pub fn new(root: FileId, root_fileid: u64) -> Self {
        Self { root, root_fileid, known: HashMap::new(), by_id: HashMap::new() }
    }

    /// The identity of node `ino`, if the kernel may still name it.
    pub fn get(&self, ino: u64) -> Option<FileId> {
        if ino == ROOT || ino == self.root_fileid {
            return Some(self.root);
        }
        self.known.get(&ino).map(|(id, _)| *id)
    }

    /// The node id under which file `id` (inode number `fileid`) is handed to the kernel,
    /// counting one lookup; `None` when the number cannot be used (a file other than the root
    /// with inode number 1, which is the root's node id).
    pub fn remember(&mut self, id: FileId, fileid: u64) -> Option<u64> {
        if id == self.root {
            return Some(if self.root_fileid == ROOT { ROOT } else { self.root_fileid });
        }
        if fileid == ROOT || fileid == self.root_fileid {
            return None;
        }
        let e = self.known.entry(fileid).or_insert((id, 0));
        // The same inode number with another identity: the old file is gone and its number was
        // reused; the kernel's lookups of the number now name the new file (its generation
        // differs, so the kernel drops the old inode).
        if e.0 != id {
            let old = std::mem::replace(&mut e.0, id);
            self.by_id.remove(&old);
        }
        e.1 += 1;
        self.by_id.insert(id, fileid);
        Some(fileid)
    }

    /// The kernel forgot `n` lookups of `ino`.
    pub fn forget(&mut self, ino: u64, n: u64) {
        if let Some(e) = self.known.get_mut(&ino) {
            e.1 = e.1.saturating_sub(n);
            if e.1 == 0 {
                if let Some((id, _)) = self.known.remove(&ino) {
                    self.by_id.remove(&id);
                }
            }
        }
    }

    /// The node id the kernel knows file `id` by, if it knows it.
    pub fn ino_of(&self, id: &FileId) -> Option<u64> {
        if *id == self.root {
            return Some(ROOT);
        }
        self.by_id.get(id).copied()
    }

    /// How many node ids (besides the root) are remembered.
    pub fn len(&self) -> usize {
        self.known.len()
    }

    /// True when only the root is known.
    pub fn is_empty(&self) -> bool {
        self.known.is_empty()
    }
}

/// The FUSE generation of an identity: differs between two files that had the same inode
/// number (the kernel then treats them as different inodes).
pub fn generation(id: &FileId) -> u64 {
    // FNV-1a: stable across runs and nodes, no dependency.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(b: u8) -> FileId {
        FileId::new(&[b; 8]).unwrap()
    }

    #[test]
    fn node_ids_are_inode_numbers_counted_until_forgotten() {
        let mut t = Inodes::new(id(0), 2);
        assert_eq!(t.get(ROOT), Some(id(0)));
        assert_eq!(t.remember(id(0), 2), Some(2), "the root by its own number");
        assert_eq!(t.remember(id(1), 77), Some(77));
        assert_eq!(t.remember(id(1), 77), Some(77));
        assert_eq!(t.get(77), Some(id(1)));
        assert_eq!(t.ino_of(&id(1)), Some(77));
        assert_eq!(t.ino_of(&id(0)), Some(ROOT));
        t.forget(77, 1);
        assert_eq!(t.get(77), Some(id(1)), "one lookup left");
        t.forget(77, 1);
        assert_eq!(t.get(77), None);
        assert_eq!(t.ino_of(&id(1)), None, "forgotten");
        assert!(t.is_empty());
        t.forget(12345, 3); // unknown: ignored
    }

    #[test]
    fn a_reused_inode_number_names_the_new_file_and_inode_one_is_the_root() {
        let mut t = Inodes::new(id(0), 1);
        assert_eq!(t.remember(id(0), 1), Some(ROOT));
        assert_eq!(t.remember(id(5), 1), None, "inode 1 is the root's node id");
        t.remember(id(1), 9);
        t.remember(id(2), 9);
        assert_eq!(t.get(9), Some(id(2)));
        assert_eq!((t.ino_of(&id(1)), t.ino_of(&id(2))), (None, Some(9)), "the old file is no longer known");
        t.forget(9, 1);
        assert_eq!(t.get(9), Some(id(2)), "both lookups share the number");
        assert_ne!(generation(&id(1)), generation(&id(2)));
    }
}
