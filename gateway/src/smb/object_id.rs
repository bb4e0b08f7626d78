//! File object ids (MS-FSCC 2.3.7, FSCTL_CREATE_OR_GET_OBJECT_ID; 2.1.3 FILE_OBJECTID_BUFFER):
//! a 16-byte id a client can keep to find a file again (Windows' link tracking; smbtorture's
//! `smb2.replay` uses the FSCTL as a plain IOCTL on an open).
//!
//! nasgw derives the id from the file's persistent identity ([`FileId`]: a GlusterFS GFID, an
//! inode number plus birth time) and the volume's id, instead of storing one: it is the same on
//! every node and across restarts, never changes while the file exists, costs no write to the
//! volume, and two nodes answering at once cannot hand out different ids. The birth volume id
//! is derived from the volume id the same way; the domain id is zero (no domain-wide tracking).
//! Pure.

use sha2::{Digest, Sha256};

use crate::vfs::{FileId, VolumeId};

/// FSCTL_CREATE_OR_GET_OBJECT_ID.
pub const FSCTL_CREATE_OR_GET_OBJECT_ID: u32 = 0x0009_00C0;

/// Length of FILE_OBJECTID_BUFFER.
pub const BUFFER_LEN: usize = 64;

/// The first 16 bytes of SHA-256 over a label and `parts`.
fn digest16(label: &[u8], parts: &[&[u8]]) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(label);
    for p in parts {
        h.update((p.len() as u32).to_le_bytes());
        h.update(p);
    }
    let d = h.finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(&d[..16]);
    out
}

/// The object id of `file` on `volume`.
pub fn object_id(volume: VolumeId, file: &FileId) -> [u8; 16] {
    digest16(b"nasgw-object-id", &[&volume.0, file.as_bytes()])
}

/// FILE_OBJECTID_BUFFER for `file` on `volume`: ObjectId, BirthVolumeId, BirthObjectId (the
/// object id: files are never moved between volumes), DomainId (zero).
pub fn buffer(volume: VolumeId, file: &FileId) -> [u8; BUFFER_LEN] {
    let id = object_id(volume, file);
    let mut out = [0u8; BUFFER_LEN];
    out[..16].copy_from_slice(&id);
    out[16..32].copy_from_slice(&digest16(b"nasgw-birth-volume-id", &[&volume.0]));
    out[32..48].copy_from_slice(&id);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_per_file_and_differ_between_files_and_volumes() {
        let v1 = VolumeId(*b"volume-1");
        let v2 = VolumeId(*b"volume-2");
        let a = FileId::new(&[1, 2, 3, 4]).unwrap();
        let b = FileId::new(&[1, 2, 3, 5]).unwrap();
        assert_eq!(object_id(v1, &a), object_id(v1, &a), "same file, same id (on every node)");
        assert_ne!(object_id(v1, &a), object_id(v1, &b));
        assert_ne!(object_id(v1, &a), object_id(v2, &a));
        let buf = buffer(v1, &a);
        assert_eq!(buf[..16], object_id(v1, &a));
        assert_eq!(buf[32..48], buf[..16], "birth object id is the object id");
        assert_eq!(buf[16..32], buffer(v1, &b)[16..32], "birth volume id is per volume");
        assert_eq!(buf[48..], [0u8; 16], "no domain id");
    }
}
