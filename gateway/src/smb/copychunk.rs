//! Server-side copy (MS-SMB2 2.2.31.1, 2.2.32.1, 3.3.5.15.6): FSCTL_SRV_REQUEST_RESUME_KEY hands
//! a client an opaque key for a source handle; FSCTL_SRV_COPYCHUNK(_WRITE) on a target handle
//! copies ranges of that source inside the volume (`copy_file_range`, or
//! `glfs_copy_file_range` over gfapi), so a copy inside a share never crosses the network.
//!
//! The request decoder and the limit rules are pure functions ([`CopyRequest::parse`],
//! [`check_limits`]); [`ResumeKeys`] maps keys to the opens that handed them out.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::locks::OpenKey;
use crate::vfs::{Credentials, FileId};

/// FSCTL_SRV_REQUEST_RESUME_KEY.
pub const FSCTL_SRV_REQUEST_RESUME_KEY: u32 = 0x0014_0078;
/// FSCTL_SRV_COPYCHUNK (the target handle needs read access too).
pub const FSCTL_SRV_COPYCHUNK: u32 = 0x0014_40F2;
/// FSCTL_SRV_COPYCHUNK_WRITE.
pub const FSCTL_SRV_COPYCHUNK_WRITE: u32 = 0x0014_80F2;

/// Most chunks in one request (Windows' ServerSideCopyMaxNumberofChunks).
pub const MAX_CHUNKS: u32 = 256;
/// Largest chunk (ServerSideCopyMaxChunkSize).
pub const MAX_CHUNK_SIZE: u32 = 1024 * 1024;
/// Most bytes in one request (ServerSideCopyMaxDataSize).
pub const MAX_TOTAL: u32 = 16 * 1024 * 1024;

/// One range to copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    /// SourceOffset.
    pub src: u64,
    /// TargetOffset.
    pub dst: u64,
    /// Length.
    pub len: u32,
}

/// A decoded SRV_COPYCHUNK_COPY.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyRequest {
    /// SourceKey (from FSCTL_SRV_REQUEST_RESUME_KEY).
    pub key: [u8; 24],
    /// The chunks (at most [`MAX_CHUNKS`] are decoded; see `count`).
    pub chunks: Vec<Chunk>,
    /// ChunkCount as sent.
    pub count: u32,
}

/// Why a copy request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The input buffer is not a SRV_COPYCHUNK_COPY.
    Malformed,
    /// Over the limits (or an empty chunk): answered with the limits.
    Limits,
}

impl CopyRequest {
    /// Decodes an IOCTL input buffer; never panics.
    pub fn parse(input: &[u8]) -> Result<Self, Refused> {
        if input.len() < 32 {
            return Err(Refused::Malformed);
        }
        let mut key = [0u8; 24];
        key.copy_from_slice(&input[..24]);
        let count = u32::from_le_bytes([input[24], input[25], input[26], input[27]]);
        if count > MAX_CHUNKS {
            return Err(Refused::Limits);
        }
        let body = &input[32..];
        if body.len() < count as usize * 24 {
            return Err(Refused::Malformed);
        }
        let chunks = body
            .chunks_exact(24)
            .take(count as usize)
            .map(|c| Chunk {
                src: u64::from_le_bytes(c[0..8].try_into().unwrap_or_default()),
                dst: u64::from_le_bytes(c[8..16].try_into().unwrap_or_default()),
                len: u32::from_le_bytes(c[16..20].try_into().unwrap_or_default()),
            })
            .collect();
        Ok(Self { key, chunks, count })
    }
}

/// MS-SMB2 3.3.5.15.6's limits: chunk count, each chunk's size (and not zero), the total.
pub fn check_limits(req: &CopyRequest) -> Result<(), Refused> {
    if req.count > MAX_CHUNKS {
        return Err(Refused::Limits);
    }
    let mut total: u64 = 0;
    for c in &req.chunks {
        if c.len == 0 || c.len > MAX_CHUNK_SIZE {
            return Err(Refused::Limits);
        }
        total += u64::from(c.len);
    }
    if total > u64::from(MAX_TOTAL) {
        return Err(Refused::Limits);
    }
    Ok(())
}

/// SRV_COPYCHUNK_RESPONSE: chunks written, bytes of the last partial chunk, total bytes.
pub fn response(chunks: u32, chunk_bytes: u32, total: u32) -> [u8; 12] {
    let mut out = [0u8; 12];
    out[0..4].copy_from_slice(&chunks.to_le_bytes());
    out[4..8].copy_from_slice(&chunk_bytes.to_le_bytes());
    out[8..12].copy_from_slice(&total.to_le_bytes());
    out
}

/// The limits, as answered to a request over them.
pub fn limits_response() -> [u8; 12] {
    response(MAX_CHUNKS, MAX_CHUNK_SIZE, MAX_TOTAL)
}

/// The source a resume key stands for.
#[derive(Debug, Clone)]
pub struct Source {
    /// The file.
    pub id: FileId,
    /// The open that handed the key out (its locks are its own).
    pub open: OpenKey,
    /// That open's granted access.
    pub access: u32,
    /// Identity that open reads as.
    pub cred: Credentials,
    /// A directory (cannot be a source).
    pub is_dir: bool,
}

/// Resume keys handed out, until their open closes.
#[derive(Debug, Default)]
pub struct ResumeKeys {
    keys: Mutex<HashMap<[u8; 24], Source>>,
}

impl ResumeKeys {
    /// A fresh key for `src` (random: keys cannot be guessed across sessions).
    pub fn issue(&self, src: Source) -> [u8; 24] {
        let key: [u8; 24] = rand::random();
        let mut k = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        k.retain(|_, s| s.open != src.open);
        k.insert(key, src);
        key
    }

    /// The source of `key`, if its open is still there.
    pub fn find(&self, key: &[u8; 24]) -> Option<Source> {
        self.keys.lock().unwrap_or_else(|e| e.into_inner()).get(key).cloned()
    }

    /// Open `open` closed: its key goes.
    pub fn forget(&self, open: OpenKey) {
        self.keys.lock().unwrap_or_else(|e| e.into_inner()).retain(|_, s| s.open != open);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(count: u32, chunks: &[(u64, u64, u32)]) -> Vec<u8> {
        let mut b = vec![7u8; 24];
        b.extend_from_slice(&count.to_le_bytes());
        b.extend_from_slice(&[0; 4]);
        for &(s, d, l) in chunks {
            b.extend_from_slice(&s.to_le_bytes());
            b.extend_from_slice(&d.to_le_bytes());
            b.extend_from_slice(&l.to_le_bytes());
            b.extend_from_slice(&[0; 4]);
        }
        b
    }

    #[test]
    fn parse_and_limits() {
        let r = CopyRequest::parse(&req(2, &[(0, 10, 5), (5, 15, 1)])).unwrap();
        assert_eq!(r.chunks, vec![Chunk { src: 0, dst: 10, len: 5 }, Chunk { src: 5, dst: 15, len: 1 }]);
        assert_eq!(check_limits(&r), Ok(()));
        assert_eq!(CopyRequest::parse(&req(3, &[(0, 0, 1)])), Err(Refused::Malformed));
        assert_eq!(CopyRequest::parse(&req(MAX_CHUNKS + 1, &[])), Err(Refused::Limits));
        assert_eq!(CopyRequest::parse(&[0; 31]), Err(Refused::Malformed));
        let zero = CopyRequest::parse(&req(1, &[(0, 0, 0)])).unwrap();
        assert_eq!(check_limits(&zero), Err(Refused::Limits));
        let big = CopyRequest::parse(&req(1, &[(0, 0, MAX_CHUNK_SIZE + 1)])).unwrap();
        assert_eq!(check_limits(&big), Err(Refused::Limits));
        let many: Vec<(u64, u64, u32)> = (0..17).map(|i| (0, i * MAX_CHUNK_SIZE as u64, MAX_CHUNK_SIZE)).collect();
        let total = CopyRequest::parse(&req(17, &many)).unwrap();
        assert_eq!(check_limits(&total), Err(Refused::Limits));
        let empty = CopyRequest::parse(&req(0, &[])).unwrap();
        assert_eq!(check_limits(&empty), Ok(()));
    }

    #[test]
    fn parse_never_panics() {
        let mut x: u64 = 3;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 128) as usize;
            let mut b: Vec<u8> = (0..len).map(|i| (x >> (i % 8 * 8)) as u8).collect();
            if b.len() >= 28 {
                b[24..28].copy_from_slice(&((x % 4) as u32).to_le_bytes());
            }
            if let Ok(r) = CopyRequest::parse(&b) {
                let _ = check_limits(&r);
            }
        }
    }
}
