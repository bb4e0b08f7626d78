//! The entry lists of READDIR and READDIRPLUS replies (RFC 1813 3.3.16, 3.3.17), written as
//! XDR straight into the reply within the client's byte budget: no per-entry wire structs, and
//! names and handles are copied once, into the reply.

use super::attr::put_fattr;
use super::handle::HandleCodec;
use crate::vfs::{Attr, FileId};

/// Bytes of a READDIR/READDIRPLUS result around its entries: status, directory attributes,
/// cookie verifier, list terminator and eof flag.
pub const OVERHEAD: usize = 4 + 4 + 84 + 8 + 4 + 4;

fn padded(n: usize) -> usize {
    n.div_ceil(4) * 4
}

/// Appends entries to a reply body while they fit in `budget` bytes.
pub struct EntryList<'a> {
    out: &'a mut Vec<u8>,
    left: usize,
    count: usize,
}

impl<'a> EntryList<'a> {
    /// A list appended to `out`, whose entries may take `budget` bytes.
    pub fn new(out: &'a mut Vec<u8>, budget: usize) -> Self {
        Self { out, left: budget, count: 0 }
    }

    /// Entries written so far.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Appends an `entry3` (READDIR); false, writing nothing, when it does not fit.
    pub fn push(&mut self, fileid: u64, name: &[u8], cookie: u64) -> bool {
        let size = 4 + 8 + 4 + padded(name.len()) + 8;
        if !self.take(size) {
            return false;
        }
        self.head(fileid, name, cookie);
        true
    }

    /// Appends an `entryplus3` (READDIRPLUS) with the entry's handle and attributes when
    /// known; false, writing nothing, when it does not fit.
    pub fn push_plus(
        &mut self,
        fileid: u64,
        name: &[u8],
        cookie: u64,
        plus: Option<(&FileId, &Attr)>,
        handles: &HandleCodec,
    ) -> bool {
        let tail = match plus {
            Some((id, _)) => 4 + 84 + 4 + 4 + padded(HandleCodec::len_of(id)),
            None => 4 + 4,
        };
        if !self.take(4 + 8 + 4 + padded(name.len()) + 8 + tail) {
            return false;
        }
        self.head(fileid, name, cookie);
        match plus {
            Some((id, a)) => {
                self.u32(1);
                put_fattr(self.out, a);
                self.u32(1);
                self.u32(HandleCodec::len_of(id) as u32);
                handles.encode_into(id, self.out);
                self.pad(HandleCodec::len_of(id));
            }
            None => {
                self.u32(0);
                self.u32(0);
            }
        }
        true
    }

    /// Gives the reply back without ending the list (to replace it by a failure).
    pub fn into_out(self) -> &'a mut Vec<u8> {
        self.out
    }

    /// Ends the list: terminator and eof flag.
    pub fn finish(self, eof: bool) {
        self.out.extend_from_slice(&0u32.to_be_bytes());
        self.out.extend_from_slice(&u32::from(eof).to_be_bytes());
    }

    fn take(&mut self, size: usize) -> bool {
        if size > self.left {
            return false;
        }
        self.left -= size;
        self.count += 1;
        true
    }

    fn head(&mut self, fileid: u64, name: &[u8], cookie: u64) {
        self.u32(1);
        self.out.extend_from_slice(&fileid.to_be_bytes());
        self.u32(name.len() as u32);
        self.out.extend_from_slice(name);
        self.pad(name.len());
        self.out.extend_from_slice(&cookie.to_be_bytes());
    }

    fn u32(&mut self, v: u32) {
        self.out.extend_from_slice(&v.to_be_bytes());
    }

    fn pad(&mut self, n: usize) {
        self.out.extend_from_slice(&[0; 3][..padded(n) - n]);
    }
}

#[cfg(test)]
mod tests {
    use nfs3_types::nfs3::{
        cookieverf3, dirlist3, dirlistplus3, entry3, entryplus3, filename3, nfs_fh3, Nfs3Option, READDIR3resok,
        READDIRPLUS3resok,
    };
    use nfs3_types::xdr_codec::{List, Opaque, Pack};

    use super::*;
    use crate::nfs::attr::post_op;
    use crate::vfs::{FileType, Timestamp, VolumeId};

    fn attr(n: u64) -> Attr {
        let t = Timestamp { secs: 1_700_000_000 + n as i64, nanos: 5 };
        Attr {
            ftype: FileType::Regular,
            mode: 0o644,
            nlink: 1,
            uid: 1000,
            gid: 100,
            size: n * 10,
            used: 4096,
            rdev: (0, 0),
            fsid: 9,
            fileid: n,
            atime: t,
            mtime: t,
            ctime: t,
            btime: None,
        }
    }

    #[test]
    fn entries_encode_as_nfs3_types_would() {
        let codec = HandleCodec::new(b"key", VolumeId(*b"volume01"));
        let ids: Vec<FileId> =
            (0..3u8).map(|i| FileId::new(&[b'K', i, 2, 3, 4, 5][..3 + i as usize]).unwrap()).collect();
        let names: [&[u8]; 3] = [b"a", b"four", b"seven.."];
        let mut out = Vec::new();
        let mut list = EntryList::new(&mut out, 10_000);
        for (i, n) in names.iter().enumerate() {
            let a = attr(i as u64);
            let plus = (i != 1).then_some((&ids[i], &a));
            assert!(list.push_plus(i as u64, n, 100 + i as u64, plus, &codec));
        }
        assert_eq!(list.count(), 3);
        list.finish(true);
        let entries: Vec<entryplus3> = (0..3)
            .map(|i| entryplus3 {
                fileid: i as u64,
                name: filename3(Opaque::borrowed(names[i])),
                cookie: 100 + i as u64,
                name_attributes: if i == 1 { Nfs3Option::None } else { post_op(Some(&attr(i as u64))) },
                name_handle: if i == 1 {
                    Nfs3Option::None
                } else {
                    Nfs3Option::Some(nfs_fh3 { data: Opaque::owned(codec.encode(&ids[i])) })
                },
            })
            .collect();
        let want = READDIRPLUS3resok {
            dir_attributes: Nfs3Option::None,
            cookieverf: cookieverf3::default(),
            reply: dirlistplus3 { entries: List(entries), eof: true },
        };
        let mut expect = Vec::new();
        want.pack(&mut expect).unwrap();
        // The resok starts with dir attributes (4) and the verifier (8).
        assert_eq!(out, expect[12..]);

        let mut out = Vec::new();
        let mut list = EntryList::new(&mut out, 10_000);
        assert!(list.push(7, b"xyz", 8));
        list.finish(false);
        let want = READDIR3resok {
            dir_attributes: Nfs3Option::None,
            cookieverf: cookieverf3::default(),
            reply: dirlist3 {
                entries: List(vec![entry3 { fileid: 7, name: filename3(Opaque::borrowed(b"xyz")), cookie: 8 }]),
                eof: false,
            },
        };
        let mut expect = Vec::new();
        want.pack(&mut expect).unwrap();
        assert_eq!(out, expect[12..]);
    }

    #[test]
    fn entries_stop_at_the_budget() {
        let mut out = Vec::new();
        // Each entry3 with a 1-byte name takes 4 + 8 + 4 + 4 + 8 = 28 bytes.
        let mut list = EntryList::new(&mut out, 60);
        assert!(list.push(1, b"a", 1));
        assert!(list.push(2, b"b", 2));
        assert!(!list.push(3, b"c", 3));
        assert_eq!(list.count(), 2);
        list.finish(false);
        assert_eq!(out.len(), 56 + 8);
    }
}
