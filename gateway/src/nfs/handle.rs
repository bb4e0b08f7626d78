//! NFS file handles: `version | volume id | file identity | MAC`, at most 64 bytes.
//!
//! A handle carries everything needed to find the file on any node after any restart (the
//! volume id and the backend's persistent identity), so no server keeps a handle table. The
//! 8-byte HMAC-SHA256 tag, keyed by a secret every node of the cluster shares, means a client
//! cannot forge an identity (a kernel file handle of a file outside the export, say): a handle
//! that fails the tag is BADHANDLE before any backend sees it.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::vfs::{FileId, VolumeId, MAX_FILE_ID_LEN};

const VERSION: u8 = 1;
const TAG: usize = 8;

/// Why a handle was refused.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum HandleError {
    /// Malformed, wrong version or bad tag: NFS3ERR_BADHANDLE.
    Bad,
    /// A well-formed handle of another volume: NFS3ERR_STALE.
    OtherVolume,
}

/// Mints and checks handles with one key.
#[derive(Clone)]
pub struct HandleCodec {
    mac: Hmac<Sha256>,
    volume: VolumeId,
}

impl HandleCodec {
    /// A codec for `volume` keyed by `key` (32 random bytes, or derived from the cluster secret).
    pub fn new(key: &[u8], volume: VolumeId) -> Self {
        Self { mac: Hmac::new_from_slice(key).expect("HMAC takes any key length"), volume }
    }

    fn tag(&self, body: &[u8]) -> [u8; TAG] {
        let mut m = self.mac.clone();
        m.update(body);
        m.finalize().into_bytes()[..TAG].try_into().expect("8 bytes")
    }

    /// The length of the handle of `id`.
    pub fn len_of(id: &FileId) -> usize {
        10 + id.as_bytes().len() + TAG
    }

    /// The handle of `id`.
    pub fn encode(&self, id: &FileId) -> Vec<u8> {
        let mut h = Vec::with_capacity(Self::len_of(id));
        self.encode_into(id, &mut h);
        h
    }

    /// Appends the handle of `id` to `out` (a reply being built).
    pub fn encode_into(&self, id: &FileId, out: &mut Vec<u8>) {
        let bytes = id.as_bytes();
        let start = out.len();
        out.push(VERSION);
        out.extend_from_slice(&self.volume.0);
        out.push(bytes.len() as u8);
        out.extend_from_slice(bytes);
        let tag = self.tag(&out[start..]);
        out.extend_from_slice(&tag);
    }

    /// The identity inside a handle a client sent, if the handle is genuine and of this volume.
    pub fn decode(&self, h: &[u8]) -> Result<FileId, HandleError> {
        if h.len() < 10 + 1 + TAG || h[0] != VERSION {
            return Err(HandleError::Bad);
        }
        let n = h[9] as usize;
        if n == 0 || n > MAX_FILE_ID_LEN || h.len() != 10 + n + TAG {
            return Err(HandleError::Bad);
        }
        let (body, tag) = h.split_at(10 + n);
        let mut m = self.mac.clone();
        m.update(body);
        m.verify_truncated_left(tag).map_err(|_| HandleError::Bad)?;
        if h[1..9] != self.volume.0 {
            return Err(HandleError::OtherVolume);
        }
        FileId::new(&body[10..]).ok_or(HandleError::Bad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_round_trip_and_resist_forgery() {
        let vol = VolumeId(*b"volume01");
        let c = HandleCodec::new(b"secret key", vol);
        let id = FileId::new(b"K\x01\x00\x00\x00abcdefgh").unwrap();
        let h = c.encode(&id);
        assert!(h.len() <= 64);
        assert_eq!(c.decode(&h), Ok(id));
        assert_eq!(h.len(), HandleCodec::len_of(&id));
        let mut appended = b"xy".to_vec();
        c.encode_into(&id, &mut appended);
        assert_eq!(appended[2..], h[..]);
        let mut forged = h.clone();
        forged[12] ^= 1;
        assert_eq!(c.decode(&forged), Err(HandleError::Bad));
        assert_eq!(HandleCodec::new(b"other key", vol).decode(&h), Err(HandleError::Bad));
        let other_vol = HandleCodec::new(b"secret key", VolumeId(*b"volume02"));
        assert_eq!(other_vol.decode(&h), Err(HandleError::OtherVolume));
        assert_eq!(c.decode(&h[..h.len() - 1]), Err(HandleError::Bad));
        assert_eq!(c.decode(&[]), Err(HandleError::Bad));
        let max = FileId::new(&[7; MAX_FILE_ID_LEN]).unwrap();
        assert!(c.encode(&max).len() <= 64);
    }
}
