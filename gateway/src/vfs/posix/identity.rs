//! Persistent identities of the POSIX backend, as pure encode/decode functions.
//!
//! Two kinds, chosen once per backend at start (see [`IdentityKind`]):
//! - `K`: the kernel's own file handle (`name_to_handle_at`), resolved with
//!   `open_by_handle_at`, which needs `CAP_DAC_READ_SEARCH` (root). Survives restarts and
//!   renames; a deleted file's handle fails with `ESTALE` in the kernel.
//! - `I`: inode number + birth time (`statx` btime). Resolved without privilege through a
//!   hint (the path last seen for that inode, opened beneath the root without following any
//!   symlink) and, when the hint is wrong, a scan of the tree for the inode number. Both ways
//!   check inode **and** birth time before answering, so a reused inode number is never taken
//!   for the old file: an old identity resolves to its file or to `Stale`.

use crate::vfs::types::{FileId, Timestamp, MAX_FILE_ID_LEN};

/// Which identity scheme a backend uses.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum IdentityKind {
    /// Kernel file handles (root, local file systems).
    Kernel,
    /// Inode number + birth time (unprivileged, FUSE mounts such as GlusterFS's, whose inode
    /// numbers derive from the GFID and so agree on every node).
    Inode,
    /// GlusterFS GFID (a Gluster FUSE mount made with `--aux-gfid-mount`): resolved on any node
    /// through `.gfid/<uuid>`, never by scanning (see `posix::gfid`). Same bytes as the gfapi
    /// backend's ids, so handles are interchangeable between FUSE and gfapi nodes.
    Gfid,
}

/// A decoded POSIX identity.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Identity {
    /// Kernel handle: type and bytes.
    Kernel { handle_type: i32, bytes: Vec<u8> },
    /// Inode number and birth time (zero when the file system has none).
    Inode { ino: u64, btime: Timestamp },
    /// GlusterFS GFID.
    Gfid([u8; 16]),
}

const KERNEL: u8 = b'K';
const INODE: u8 = b'I';
/// Tag of a GFID identity: `G` + 16 bytes (also what the gfapi backend mints).
pub const GFID: u8 = b'G';

/// Longest kernel handle that fits a [`FileId`].
pub const MAX_KERNEL_HANDLE: usize = MAX_FILE_ID_LEN - 5;

impl Identity {
    /// Encodes into a [`FileId`]; `None` if a kernel handle is too long.
    pub fn encode(&self) -> Option<FileId> {
        let mut b = Vec::with_capacity(MAX_FILE_ID_LEN);
        match self {
            Self::Kernel { handle_type, bytes } => {
                if bytes.len() > MAX_KERNEL_HANDLE {
                    return None;
                }
                b.push(KERNEL);
                b.extend_from_slice(&handle_type.to_le_bytes());
                b.extend_from_slice(bytes);
            }
            Self::Inode { ino, btime } => {
                b.push(INODE);
                b.extend_from_slice(&ino.to_le_bytes());
                b.extend_from_slice(&btime.secs.to_le_bytes());
                b.extend_from_slice(&btime.nanos.to_le_bytes());
            }
            Self::Gfid(g) => {
                b.push(GFID);
                b.extend_from_slice(g);
            }
        }
        FileId::new(&b)
    }

    /// The identity of kernel handle (`handle_type`, `bytes`), as [`Identity::encode`] gives it,
    /// without allocating; `None` if the handle is too long.
    pub fn kernel_id(handle_type: i32, bytes: &[u8]) -> Option<FileId> {
        if bytes.len() > MAX_KERNEL_HANDLE {
            return None;
        }
        let mut b = [0u8; MAX_FILE_ID_LEN];
        b[0] = KERNEL;
        b[1..5].copy_from_slice(&handle_type.to_le_bytes());
        b[5..5 + bytes.len()].copy_from_slice(bytes);
        FileId::new(&b[..5 + bytes.len()])
    }

    /// Decodes a [`FileId`]; `None` when it is not one of ours.
    pub fn decode(id: &FileId) -> Option<Self> {
        let b = id.as_bytes();
        match *b.first()? {
            KERNEL if b.len() > 5 => {
                Some(Self::Kernel { handle_type: i32::from_le_bytes(b[1..5].try_into().ok()?), bytes: b[5..].to_vec() })
            }
            INODE if b.len() == 21 => Some(Self::Inode {
                ino: u64::from_le_bytes(b[1..9].try_into().ok()?),
                btime: Timestamp {
                    secs: i64::from_le_bytes(b[9..17].try_into().ok()?),
                    nanos: u32::from_le_bytes(b[17..21].try_into().ok()?),
                },
            }),
            GFID if b.len() == 17 => Some(Self::Gfid(b[1..17].try_into().ok()?)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_round_trip_and_garbage_is_refused() {
        let k = Identity::Kernel { handle_type: 1, bytes: vec![1, 2, 3, 4, 5, 6, 7, 8] };
        assert_eq!(Identity::kernel_id(1, &[1, 2, 3, 4, 5, 6, 7, 8]), k.encode());
        assert_eq!(Identity::decode(&k.encode().unwrap()), Some(k));
        assert_eq!(Identity::kernel_id(1, &[0; 36]), None);
        let i = Identity::Inode { ino: 42, btime: Timestamp { secs: 1_700_000_000, nanos: 5 } };
        assert_eq!(Identity::decode(&i.encode().unwrap()), Some(i));
        assert!(Identity::Kernel { handle_type: 1, bytes: vec![0; 36] }.encode().is_none());
        assert_eq!(Identity::decode(&FileId::new(b"I123").unwrap()), None);
        assert_eq!(Identity::decode(&FileId::new(b"K1234").unwrap()), None);
        assert_eq!(Identity::decode(&FileId::new(b"Zxxxxxxxx").unwrap()), None);
        let g = Identity::Gfid([9; 16]);
        assert_eq!(Identity::decode(&g.encode().unwrap()), Some(g));
        assert_eq!(Identity::decode(&FileId::new(b"G123").unwrap()), None);
    }
}
