//! Alternate data streams (`file.txt:stream`), stored as Samba's `vfs_streams_xattr` stores
//! them: one extended attribute per stream, `user.DosStream.NAME:$DATA`, whose value is the
//! stream's bytes followed by one NUL byte. A volume moved from Samba keeps its streams (macOS
//! Finder's `AFP_AfpInfo` and `AFP_Resource`, Windows' `Zone.Identifier`), and they go with
//! the file: copied by a copy that keeps extended attributes, deleted with it.
//!
//! - Names: `file:name` and `file:name:$DATA` open stream `name`; `file::$DATA` is the file
//!   itself. Any other type, an empty name with no type, or a `:` elsewhere is
//!   OBJECT_NAME_INVALID. Stream names match ignoring case on a case-insensitive share and
//!   keep the case they were created with.
//! - Size: a file system stores at most one extended attribute value of a bounded size (ext4:
//!   about a block for all of a file's attributes; XFS: 64 KiB; Linux: 64 KiB). A write that
//!   would go past it fails with DISK_FULL and changes nothing.
//! - Share modes and byte-range locks are per stream: each stream has its own lock-table key
//!   ([`lock_id`]).

use sha2::{Digest, Sha256};

use crate::smb::fs::Case;
use crate::smb::wire::status::NtStatus;
use crate::vfs::{Credentials, FileId, Namespace, VfsError, VfsResult};

/// What every stream attribute's name starts with.
pub const PREFIX: &str = "user.DosStream.";
/// What every stream attribute's name ends with (the stream type).
pub const SUFFIX: &str = ":$DATA";

/// What a name's part after its first `:` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamPart {
    /// `file::$DATA`: the file's own (unnamed) data stream.
    Unnamed,
    /// `file:name` or `file:name:$DATA`.
    Named(String),
}

/// The stream part of a name like `file:name:$DATA` (everything after the first `:`). Stream
/// names may hold any character but `\`, `/`, `:` and NUL (control characters, `?` and `*`
/// included, as on NTFS).
pub fn parse_part(part: &str) -> Result<StreamPart, NtStatus> {
    Ok(match parse(part)? {
        Some(n) => StreamPart::Named(n),
        None => StreamPart::Unnamed,
    })
}

/// Like [`parse_part`]: `Ok(None)` for the unnamed stream, `Ok(Some(name))` for a named one.
pub fn parse(part: &str) -> Result<Option<String>, NtStatus> {
    let (name, kind) = match part.split_once(':') {
        Some((n, k)) => (n, Some(k)),
        None => (part, None),
    };
    if let Some(k) = kind {
        if !k.eq_ignore_ascii_case("$DATA") {
            return Err(NtStatus::OBJECT_NAME_INVALID);
        }
    }
    if name.is_empty() {
        return if kind.is_some() { Ok(None) } else { Err(NtStatus::OBJECT_NAME_INVALID) };
    }
    if name.chars().any(|c| matches!(c, '\\' | '/' | ':' | '\0')) {
        return Err(NtStatus::OBJECT_NAME_INVALID);
    }
    // The attribute name (prefix + name + suffix) must fit Linux's 255 bytes.
    if PREFIX.len() + name.len() + SUFFIX.len() > 255 {
        return Err(NtStatus::OBJECT_NAME_INVALID);
    }
    Ok(Some(name.to_string()))
}

/// The extended attribute holding stream `name`.
pub fn xattr_name(name: &str) -> Vec<u8> {
    format!("{PREFIX}{name}{SUFFIX}").into_bytes()
}

/// The stream name an attribute name holds, if it is one of ours.
pub fn stream_of(xattr: &[u8]) -> Option<&str> {
    let s = std::str::from_utf8(xattr).ok()?;
    let n = s.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    (!n.is_empty()).then_some(n)
}

/// The lock-table key of stream `name` of file `base`: its own share modes and byte-range
/// locks, the same on every node (derived from the file's identity and the folded name).
pub fn lock_id(base: &FileId, name: &str) -> FileId {
    let mut h = Sha256::new();
    h.update(b"nasgw-stream\0");
    h.update(base.as_bytes());
    h.update([0]);
    h.update(crate::vfs::folding::fold(name).as_bytes());
    let d = h.finalize();
    let mut id = vec![b'S'];
    id.extend_from_slice(&d[..24]);
    FileId::new(&id).expect("25 bytes fit a FileId")
}

/// An open stream: the file it belongs to and its name as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamOpen {
    /// The file (the namespace's identity; the open's own id is [`lock_id`]).
    pub base: FileId,
    /// The stream's name as stored (its case on the volume).
    pub name: String,
}

impl StreamOpen {
    /// Its extended attribute's name.
    pub fn xattr(&self) -> Vec<u8> {
        xattr_name(&self.name)
    }
}

/// A file whose deletion waits until its open streams are closed.
#[derive(Debug, Clone)]
pub struct DeferredDelete {
    /// Its directory.
    pub parent: FileId,
    /// Its name there.
    pub name: String,
    /// Who deletes it.
    pub cred: Credentials,
}

#[derive(Debug, Default)]
struct Uses {
    /// Open streams by lock key, with how many opens each.
    keys: std::collections::HashMap<FileId, usize>,
    deferred: Option<DeferredDelete>,
}

/// The streams open on this node, per file: a file opened for deletion must not be deleted
/// under a stream opened without FILE_SHARE_DELETE (SHARING_VIOLATION), a file deleted while
/// one of its streams is open goes only when the last of them closes, and meanwhile every
/// open of it or its streams is DELETE_PENDING (as NTFS and Samba do).
#[derive(Debug, Default)]
pub struct OpenStreams {
    files: std::sync::Mutex<std::collections::HashMap<FileId, Uses>>,
}

impl OpenStreams {
    fn map(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<FileId, Uses>> {
        self.files.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A stream of `base` with lock key `key` was opened.
    pub fn opened(&self, base: FileId, key: FileId) {
        *self.map().entry(base).or_default().keys.entry(key).or_insert(0) += 1;
    }

    /// A stream was closed; returns the file's deletion to do now when it was the last open
    /// stream and the file was deleted meanwhile.
    pub fn closed(&self, base: &FileId, key: &FileId) -> Option<DeferredDelete> {
        let mut m = self.map();
        let uses = m.get_mut(base)?;
        if let Some(n) = uses.keys.get_mut(key) {
            *n -= 1;
            if *n == 0 {
                uses.keys.remove(key);
            }
        }
        if uses.keys.is_empty() {
            return m.remove(base).and_then(|u| u.deferred);
        }
        None
    }

    /// The lock keys of `base`'s open streams.
    pub fn keys(&self, base: &FileId) -> Vec<FileId> {
        self.map().get(base).map(|u| u.keys.keys().copied().collect()).unwrap_or_default()
    }

    /// Defers the deletion of `base` until its last open stream closes; `false` when none is
    /// open (delete it now).
    pub fn defer_delete(&self, base: &FileId, d: DeferredDelete) -> bool {
        match self.map().get_mut(base) {
            Some(u) if !u.keys.is_empty() => {
                u.deferred = Some(d);
                true
            }
            _ => false,
        }
    }

    /// Whether `base` was deleted and waits for its streams to close.
    pub fn delete_pending(&self, base: &FileId) -> bool {
        self.map().get(base).is_some_and(|u| u.deferred.is_some())
    }
}

/// The stored name of stream `name` of `base` by the share's case rule, if it exists.
pub async fn find(
    ns: &Namespace,
    cred: &Credentials,
    base: FileId,
    name: &str,
    case: Case,
) -> VfsResult<Option<String>> {
    let names = ns.list_xattrs(cred, base).await?;
    let want = crate::vfs::folding::fold(name);
    Ok(names
        .iter()
        .filter_map(|x| stream_of(x))
        .find(|s| *s == name || (case == Case::Insensitive && crate::vfs::folding::fold(s) == want))
        .map(str::to_string))
}

/// Every stream of `base` with its size, in the order the file system lists them.
pub async fn list(ns: &Namespace, cred: &Credentials, base: FileId) -> VfsResult<Vec<(String, u64)>> {
    let mut out = Vec::new();
    for x in ns.list_xattrs(cred, base).await? {
        if let Some(name) = stream_of(&x) {
            if let Some(v) = ns.get_xattr(cred, base, &x).await? {
                out.push((name.to_string(), v.len().saturating_sub(1) as u64));
            }
        }
    }
    Ok(out)
}

/// The bytes of an open stream (its stored value without the trailing NUL).
pub async fn read_all(ns: &Namespace, cred: &Credentials, s: &StreamOpen) -> VfsResult<Vec<u8>> {
    let mut v = ns.get_xattr(cred, s.base, &s.xattr()).await?.ok_or(VfsError::NotFound)?;
    v.pop();
    Ok(v)
}

/// Replaces the bytes of an open stream (stored with a trailing NUL, as Samba does).
pub async fn write_all(ns: &Namespace, cred: &Credentials, s: &StreamOpen, mut data: Vec<u8>) -> VfsResult<()> {
    data.push(0);
    ns.set_xattr(cred, s.base, &s.xattr(), &data).await
}

/// Up to `len` bytes of an open stream from `offset` (fewer at its end).
pub async fn read_at(ns: &Namespace, cred: &Credentials, s: &StreamOpen, offset: u64, len: u32) -> VfsResult<Vec<u8>> {
    let v = read_all(ns, cred, s).await?;
    let start = (offset.min(v.len() as u64)) as usize;
    let end = (start + len as usize).min(v.len());
    Ok(v[start..end].to_vec())
}

/// Writes `data` at `offset` of an open stream (zeros fill a gap); returns the new size.
/// A stream larger than the file system stores fails with [`VfsError::NoSpace`], unchanged.
pub async fn write_at(ns: &Namespace, cred: &Credentials, s: &StreamOpen, offset: u64, data: &[u8]) -> VfsResult<u64> {
    let end = offset.checked_add(data.len() as u64).ok_or(VfsError::TooBig)?;
    if end > crate::vfs::namespace::XATTR_VALUE_MAX as u64 {
        return Err(VfsError::NoSpace);
    }
    let mut v = read_all(ns, cred, s).await?;
    if (v.len() as u64) < end {
        v.resize(end as usize, 0);
    }
    v[offset as usize..end as usize].copy_from_slice(data);
    let len = v.len() as u64;
    write_all(ns, cred, s, v).await?;
    Ok(len)
}

/// Cuts or extends an open stream to `size` bytes.
pub async fn set_size(ns: &Namespace, cred: &Credentials, s: &StreamOpen, size: u64) -> VfsResult<()> {
    if size > crate::vfs::namespace::XATTR_VALUE_MAX as u64 {
        return Err(VfsError::NoSpace);
    }
    let mut v = read_all(ns, cred, s).await?;
    v.resize(size as usize, 0);
    write_all(ns, cred, s, v).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_parse_like_windows() {
        assert_eq!(parse("s1"), Ok(Some("s1".into())));
        assert_eq!(parse("s1:$DATA"), Ok(Some("s1".into())));
        assert_eq!(parse("S1:$data"), Ok(Some("S1".into())));
        assert_eq!(parse(":$DATA"), Ok(None), "the file itself");
        assert_eq!(parse(""), Err(NtStatus::OBJECT_NAME_INVALID));
        assert_eq!(parse("s:$INDEX_ALLOCATION"), Err(NtStatus::OBJECT_NAME_INVALID));
        assert_eq!(parse("s:$DATA:x"), Err(NtStatus::OBJECT_NAME_INVALID));
        assert_eq!(parse("a\\b"), Err(NtStatus::OBJECT_NAME_INVALID));
        assert_eq!(parse(&"x".repeat(250)), Err(NtStatus::OBJECT_NAME_INVALID));
        assert_eq!(parse("Zone.Identifier"), Ok(Some("Zone.Identifier".into())));
        assert_eq!(parse("\u{5}Stream\n One"), Ok(Some("\u{5}Stream\n One".into())), "control characters");
        assert_eq!(parse("?Stream*"), Ok(Some("?Stream*".into())), "wildcards");
        assert_eq!(parse("a/b"), Err(NtStatus::OBJECT_NAME_INVALID));
    }

    #[test]
    fn attribute_names_are_streams_xattrs() {
        assert_eq!(xattr_name("AFP_AfpInfo"), b"user.DosStream.AFP_AfpInfo:$DATA");
        assert_eq!(stream_of(b"user.DosStream.s1:$DATA"), Some("s1"));
        assert_eq!(stream_of(b"user.DOSATTRIB"), None);
        assert_eq!(stream_of(b"user.DosStream.:$DATA"), None);
    }

    #[test]
    fn a_file_deleted_under_open_streams_goes_with_the_last_of_them() {
        let base = FileId::new(b"Kf").unwrap();
        let (a, b) = (lock_id(&base, "a"), lock_id(&base, "b"));
        let s = OpenStreams::default();
        let d = DeferredDelete { parent: base, name: "f".into(), cred: Credentials::root() };
        assert!(!s.defer_delete(&base, d.clone()), "no stream open: delete now");
        s.opened(base, a);
        s.opened(base, a);
        s.opened(base, b);
        assert_eq!(s.keys(&base).len(), 2);
        assert!(s.defer_delete(&base, d));
        assert!(s.delete_pending(&base));
        assert!(s.closed(&base, &a).is_none());
        assert!(s.closed(&base, &b).is_none());
        assert_eq!(s.closed(&base, &a).map(|d| d.name), Some("f".into()), "the last one deletes");
        assert!(!s.delete_pending(&base));
    }

    #[test]
    fn each_stream_has_its_own_lock_key() {
        let f = FileId::new(b"Kfile").unwrap();
        let g = FileId::new(b"Kother").unwrap();
        assert_eq!(lock_id(&f, "Stream"), lock_id(&f, "STREAM"), "names fold");
        assert_ne!(lock_id(&f, "a"), lock_id(&f, "b"));
        assert_ne!(lock_id(&f, "a"), lock_id(&g, "a"));
        assert_ne!(lock_id(&f, "a"), f);
    }
}
