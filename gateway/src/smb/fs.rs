//! Between SMB names and the namespace: share-relative names checked and split (no `..`,
//! no streams, no reserved characters), resolved to [`FileId`]s under the share root, and
//! namespace attributes turned into SMB times and file attributes.

use crate::smb::dosattrib::{self, DosInfo};
use crate::smb::streams::StreamPart;
use crate::smb::unix_to_filetime;
use crate::smb::wire::status::NtStatus;
use crate::vfs::{Attr, Credentials, FileId, FileType, Namespace, Timestamp, VfsError};

/// FILE_ATTRIBUTE_READONLY.
pub const ATTR_READONLY: u32 = 0x1;
/// FILE_ATTRIBUTE_HIDDEN.
pub const ATTR_HIDDEN: u32 = 0x2;
/// FILE_ATTRIBUTE_DIRECTORY.
pub const ATTR_DIRECTORY: u32 = 0x10;
/// FILE_ATTRIBUTE_ARCHIVE.
pub const ATTR_ARCHIVE: u32 = 0x20;
/// FILE_ATTRIBUTE_TEMPORARY.
pub const ATTR_TEMPORARY: u32 = 0x100;
/// FILE_ATTRIBUTE_NORMAL.
pub const ATTR_NORMAL: u32 = 0x80;
/// FILE_ATTRIBUTE_SYSTEM.
pub const ATTR_SYSTEM: u32 = 0x4;
/// FILE_ATTRIBUTE_SPARSE_FILE.
pub const ATTR_SPARSE: u32 = 0x200;
/// FILE_ATTRIBUTE_OFFLINE.
pub const ATTR_OFFLINE: u32 = 0x1000;
/// FILE_ATTRIBUTE_NOT_CONTENT_INDEXED.
pub const ATTR_NOT_CONTENT_INDEXED: u32 = 0x2000;
/// The attributes a client may set, kept in `user.DOSATTRIB` ([`crate::smb::dosattrib`]).
pub const ATTR_SETTABLE: u32 =
    ATTR_READONLY | ATTR_HIDDEN | ATTR_SYSTEM | ATTR_ARCHIVE | ATTR_TEMPORARY | ATTR_OFFLINE | ATTR_NOT_CONTENT_INDEXED;

/// Splits a share-relative SMB name (`a\\b\\c`; `/` separates too, as Samba accepts it) into
/// validated components. `.` components are dropped and `..` removes the component before it,
/// by the name alone, as Windows resolves `dir\\sub\\..` (never through the volume: a `..`
/// that would climb above the share root is refused with OBJECT_PATH_SYNTAX_BAD). Refuses what
/// nasgw does not serve: `:` (streams are split off first by [`parse_name`]), wildcard and
/// reserved characters, control characters, empty components.
pub fn split_name(name: &str) -> Result<Vec<String>, NtStatus> {
    if name.is_empty() {
        return Ok(Vec::new());
    }
    if name.starts_with('\\') || name.starts_with('/') {
        return Err(NtStatus::INVALID_PARAMETER);
    }
    let trimmed = name.strip_suffix(['\\', '/']).unwrap_or(name);
    let mut out = Vec::new();
    for c in trimmed.split(['\\', '/']) {
        if c.is_empty() {
            return Err(NtStatus::OBJECT_NAME_INVALID);
        }
        if c == "." {
            continue;
        }
        if c == ".." {
            out.pop().ok_or(NtStatus::OBJECT_PATH_SYNTAX_BAD)?;
            continue;
        }
        if c.contains(':') {
            return Err(NtStatus::OBJECT_NAME_INVALID);
        }
        if c.chars().any(|ch| ch < ' ' || matches!(ch, '<' | '>' | '"' | '|' | '?' | '*' | '/')) {
            return Err(NtStatus::OBJECT_NAME_INVALID);
        }
        if c.len() > 255 {
            return Err(NtStatus::NAME_TOO_LONG);
        }
        out.push(c.to_string());
    }
    Ok(out)
}

/// Splits a CREATE's name into its components and, when it names a stream (`dir\\file:s`,
/// `file:s:$DATA`, or `file::$DATA` for the file's own data), the stream
/// ([`crate::smb::streams::parse_part`]).
pub fn parse_name(name: &str) -> Result<(Vec<String>, Option<StreamPart>), NtStatus> {
    let last_start = name.rfind(['\\', '/']).map_or(0, |i| i + 1);
    match name[last_start..].find(':') {
        None => Ok((split_name(name)?, None)),
        Some(i) => {
            let at = last_start + i;
            let stream = crate::smb::streams::parse_part(&name[at + 1..])?;
            Ok((split_name(&name[..at])?, Some(stream)))
        }
    }
}

/// How a share matches the names clients send against the names on the volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Case {
    /// As Windows and Samba's default: a name is found in any case, and keeps the case it was
    /// created with; two names differing only in case are never created.
    Insensitive,
    /// `case_sensitive = true`: names match exactly, as on the volume.
    Sensitive,
}

impl Case {
    /// The rule of `share`.
    pub fn of(share: &crate::config::ShareConfig) -> Self {
        if share.case_sensitive {
            Self::Sensitive
        } else {
            Self::Insensitive
        }
    }
}

/// Looks up one component of a client's name in `dir` by the share's case rule; returns the
/// entry's own name (its case on the volume) with it.
pub async fn lookup(
    ns: &Namespace,
    cred: &Credentials,
    dir: FileId,
    name: &str,
    case: Case,
) -> Result<(String, FileId, Attr), VfsError> {
    match case {
        Case::Sensitive => ns.lookup(cred, dir, name.as_bytes()).await.map(|(id, a)| (name.to_string(), id, a)),
        Case::Insensitive => {
            let (real, id, a) = ns.lookup_nocase(cred, dir, name).await?;
            // Folded names are UTF-8 (others never match), so this is the client's name only
            // when the exact lookup found it.
            Ok((String::from_utf8(real).unwrap_or_else(|_| name.to_string()), id, a))
        }
    }
}

/// Resolves the directory holding the last component of `comps` (all but the last, from the
/// share root) by the share's case rule, and rewrites those components to their names on the
/// volume. Symlinks are followed only while they stay inside the volume.
pub async fn parent_of(
    ns: &Namespace,
    cred: &Credentials,
    root: FileId,
    comps: &mut [String],
    case: Case,
) -> Result<FileId, NtStatus> {
    let n = comps.len().saturating_sub(1);
    // One lookup per component (the components are validated: no `.`, `..` or `/`); only a
    // symlink on the way needs `walk_beneath`, which follows it while it stays inside the share.
    let mut dir = root;
    for i in 0..n {
        match lookup(ns, cred, dir, &comps[i], case).await {
            Ok((real, id, a)) if a.ftype == FileType::Directory => {
                comps[i] = real;
                dir = id;
            }
            Ok((real, _, a)) if a.ftype == FileType::Symlink => {
                comps[i] = real;
                return walk_dir(ns, cred, root, &comps[..n]).await;
            }
            Ok(_) => return Err(NtStatus::OBJECT_PATH_NOT_FOUND),
            Err(VfsError::NotFound | VfsError::NotDir) => return Err(NtStatus::OBJECT_PATH_NOT_FOUND),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(dir)
}

/// Resolves the directory `dirs` from the share root, following symlinks inside the share.
async fn walk_dir(ns: &Namespace, cred: &Credentials, root: FileId, dirs: &[String]) -> Result<FileId, NtStatus> {
    match ns.walk_beneath(cred, root, root, dirs.join("/").as_bytes(), true).await {
        Ok((id, a)) if a.ftype == FileType::Directory => Ok(id),
        Ok(_) => Err(NtStatus::OBJECT_PATH_NOT_FOUND),
        Err(VfsError::NotFound | VfsError::NotDir) => Err(NtStatus::OBJECT_PATH_NOT_FOUND),
        Err(e) => Err(e.into()),
    }
}

/// A FILETIME of -1 in a set request: keep this time through the handle's later writes.
pub const TIME_FREEZE: u64 = u64::MAX;
/// A FILETIME of -2 in a set request: let the handle's writes move this time again.
pub const TIME_THAW: u64 = u64::MAX - 1;

/// What a FileBasicInformation set asks (FILETIMEs as sent; ChangeTime cannot be set on Linux).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BasicInfo {
    /// CreationTime.
    pub create: u64,
    /// LastAccessTime.
    pub atime: u64,
    /// LastWriteTime.
    pub mtime: u64,
    /// FileAttributes (0: leave them).
    pub attributes: u32,
}

/// The file in the namespace an open refers to: the file itself, or the file whose alternate
/// data stream it opened (the open's own `id` is then the stream's lock key).
pub fn file_of(f: &crate::smb::cmd::open::FileOpen) -> FileId {
    f.state.stream.as_ref().map_or(f.id, |s| s.base)
}

/// Puts back the times a handle's client fixed, after a write through it moved them.
pub async fn keep_sticky_times(ns: &Namespace, f: &crate::smb::cmd::open::FileOpen) {
    let (m, a) = (f.state.sticky_write_time, f.state.sticky_access_time);
    if m.is_none() && a.is_none() {
        return;
    }
    let set = crate::vfs::SetAttr {
        mtime: m.map_or(crate::vfs::SetTime::DontChange, crate::vfs::SetTime::Client),
        atime: a.map_or(crate::vfs::SetTime::DontChange, crate::vfs::SetTime::Client),
        ..Default::default()
    };
    if let Err(e) = ns.setattr(&f.cred, file_of(f), set).await {
        tracing::debug!(error = %e, "SMB: cannot keep the times a client set");
    }
}

/// A timestamp as a FILETIME.
pub fn filetime(t: Timestamp) -> u64 {
    unix_to_filetime(t.secs, t.nanos)
}

/// A FILETIME as a timestamp.
pub fn from_filetime(ft: u64) -> Timestamp {
    let ticks = ft as i128 - 116_444_736_000_000_000;
    let secs = ticks.div_euclid(10_000_000) as i64;
    let nanos = (ticks.rem_euclid(10_000_000) * 100) as u32;
    Timestamp { secs, nanos }
}

/// SMB file attributes of a file named `name`: what its `user.DOSATTRIB` stores (ARCHIVE for
/// a file without one), DIRECTORY for a directory, READONLY also when no write bit is set (so a
/// `chmod a-w` through NFS shows), HIDDEN for dot names (Samba's `hide dot files`), NORMAL
/// when nothing else is set.
pub fn attributes(attr: &Attr, dos: &DosInfo, name: &str) -> u32 {
    let dir = attr.ftype == FileType::Directory;
    let mut a = match dos.attributes {
        Some(stored) => stored & ATTR_SETTABLE,
        None if dir => 0,
        None => ATTR_ARCHIVE,
    };
    if dir {
        a |= ATTR_DIRECTORY;
        a &= !ATTR_TEMPORARY;
    } else if attr.mode & 0o222 == 0 {
        a |= ATTR_READONLY;
    }
    if name.starts_with('.') && name != "." && name != ".." {
        a |= ATTR_HIDDEN;
    }
    if a == 0 {
        a = ATTR_NORMAL;
    }
    a
}

/// The attributes a CREATE gives a new file (`dir`: directory) from the FileAttributes it
/// asked for: the settable ones, plus ARCHIVE for a file and DIRECTORY for a directory, as
/// Samba stores them.
pub fn new_attributes(requested: u32, dir: bool) -> u32 {
    if dir {
        (requested & ATTR_SETTABLE & !ATTR_TEMPORARY) | ATTR_DIRECTORY
    } else {
        (requested & ATTR_SETTABLE) | ATTR_ARCHIVE
    }
}

/// The attributes a file gets when a CREATE overwrites or supersedes it (MS-FSA 2.1.5.1.2.1):
/// the requested ones plus ARCHIVE; a HIDDEN (SYSTEM) file only by a request that asks for
/// HIDDEN (SYSTEM) too, else ACCESS_DENIED.
pub fn overwrite_attributes(existing: u32, requested: u32) -> Result<u32, NtStatus> {
    for bit in [ATTR_HIDDEN, ATTR_SYSTEM] {
        if existing & bit != 0 && requested & bit == 0 {
            return Err(NtStatus::ACCESS_DENIED);
        }
    }
    Ok((requested & ATTR_SETTABLE) | ATTR_ARCHIVE)
}

/// The four SMB times: creation (stored in `user.DOSATTRIB`, else the birth time the volume
/// reports, else the older of mtime and ctime), last access, last write, and change, which is
/// the last write time as Samba answers it: a client sets a file's times (a copy keeping its
/// dates) and reads them back, and Linux's ctime cannot be set.
pub fn times(attr: &Attr, dos: &DosInfo) -> [u64; 4] {
    let birth = match dos.create_time {
        Some(t) => t,
        None => filetime(attr.btime.unwrap_or(std::cmp::min(attr.mtime, attr.ctime))),
    };
    [birth, filetime(attr.atime), filetime(attr.mtime), filetime(attr.mtime)]
}

/// What `user.DOSATTRIB` of `id` says (nothing when it has none, cannot have one, or the caller
/// may not read it).
pub async fn dos_of(ns: &Namespace, cred: &Credentials, id: FileId) -> DosInfo {
    match ns.get_xattr(cred, id, dosattrib::XATTR_NAME).await {
        Ok(Some(v)) => dosattrib::decode(&v).unwrap_or_default(),
        _ => DosInfo::default(),
    }
}

/// What `user.DOSATTRIB` of the entry `name` of `dir` says (for listings).
pub async fn dos_at(ns: &Namespace, cred: &Credentials, dir: FileId, name: &str) -> DosInfo {
    match ns.get_xattr_at(cred, dir, name.as_bytes(), dosattrib::XATTR_NAME).await {
        Ok(Some(v)) => dosattrib::decode(&v).unwrap_or_default(),
        _ => DosInfo::default(),
    }
}

/// Stores `info` as `user.DOSATTRIB` of `id`.
pub async fn store_dos(ns: &Namespace, cred: &Credentials, id: FileId, info: &DosInfo) -> Result<(), NtStatus> {
    ns.set_xattr(cred, id, dosattrib::XATTR_NAME, &dosattrib::encode(info)).await.map_err(NtStatus::from)
}

/// AllocationSize as clients expect it: bytes on disk, at least the size rounded to 4 KiB.
pub fn allocation(attr: &Attr) -> u64 {
    if attr.ftype == FileType::Directory {
        return 0;
    }
    attr.used.max(attr.size.div_ceil(4096) * 4096)
}

/// EndOfFile (0 for directories).
pub fn end_of_file(attr: &Attr) -> u64 {
    if attr.ftype == FileType::Directory {
        0
    } else {
        attr.size
    }
}

/// The 8.3 name clients see for `name`: the name itself when it already fits 8.3 (upper
/// case), else a stable mangled form `PREFIX~H.EXT` derived from a hash of the long name.
pub fn short_name(name: &str) -> String {
    let upper = name.to_uppercase();
    let (stem, ext) = match upper.rfind('.') {
        Some(i) if i > 0 => (&upper[..i], &upper[i + 1..]),
        _ => (&upper[..], ""),
    };
    let legal = |s: &str| s.chars().all(|c| c.is_ascii_alphanumeric() || "$%'-_@~`!(){}^#&".contains(c));
    if !stem.is_empty() && stem.len() <= 8 && ext.len() <= 3 && legal(stem) && legal(ext) && !ext.contains('.') {
        return upper;
    }
    let hash = name.bytes().fold(5381u32, |h, b| h.wrapping_mul(33) ^ b as u32);
    let clean = |s: &str, n: usize| s.chars().filter(|c| c.is_ascii_alphanumeric()).take(n).collect::<String>();
    let prefix = clean(stem, 5);
    let ext = clean(ext, 3);
    let mut out = format!("{}~{:02X}", if prefix.is_empty() { "X".into() } else { prefix }, hash % 256);
    if !ext.is_empty() {
        out.push('.');
        out.push_str(&ext);
    }
    out
}

/// True when an SMB search pattern has a wildcard (`*`, `?`, or a DOS wildcard `<`, `>`, `"`);
/// a pattern without one names one entry.
pub fn has_wildcard(pattern: &str) -> bool {
    pattern.contains(['*', '?', '<', '>', '"'])
}

/// Match of `name` against an SMB search pattern (`*`, `?`, and the DOS wildcards `<`, `>`,
/// `"`), ignoring case as Windows does unless the share is case-sensitive.
pub fn wildcard_match(pattern: &str, name: &str, case: Case) -> bool {
    if pattern == "*" || pattern == "*.*" || pattern.is_empty() {
        return true;
    }
    let fold = |s: &str| -> Vec<char> {
        match case {
            Case::Insensitive => crate::vfs::folding::fold(s).chars().collect(),
            Case::Sensitive => s.chars().collect(),
        }
    };
    let (p, n) = (fold(pattern), fold(name));
    if p.len() > 1024 || n.len() > 1024 {
        return false;
    }
    // Dynamic programming over (pattern position, name position): linear memory and
    // O(len(p) * len(n)) time whatever the client sends (no exponential backtracking).
    // reach[j] = the pattern prefix consumed so far can match name[..j].
    let mut reach = vec![false; n.len() + 1];
    reach[0] = true;
    for &c in &p {
        let mut next = vec![false; n.len() + 1];
        match c {
            '*' | '<' => {
                let mut any = false;
                for j in 0..=n.len() {
                    any |= reach[j];
                    next[j] = any;
                }
            }
            '?' | '>' => {
                for j in 0..n.len() {
                    if reach[j] {
                        next[j + 1] = true;
                    }
                }
                if c == '>' {
                    // DOS_QM also matches nothing at the end of the name.
                    next[n.len()] |= reach[n.len()];
                }
            }
            '"' => {
                for j in 0..=n.len() {
                    if reach[j] {
                        if j < n.len() && n[j] == '.' {
                            next[j + 1] = true;
                        }
                        if j == n.len() {
                            next[j] = true;
                        }
                    }
                }
            }
            c => {
                for j in 0..n.len() {
                    if reach[j] && n[j] == c {
                        next[j + 1] = true;
                    }
                }
            }
        }
        reach = next;
    }
    reach[n.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn parents_resolve_inside_the_volume_only() {
        use std::os::unix::fs::symlink;
        let tmp = tempfile::tempdir().unwrap();
        let vol = tmp.path().join("vol");
        std::fs::create_dir_all(vol.join("a/b")).unwrap();
        std::fs::write(vol.join("a/file"), b"x").unwrap();
        symlink("a/b", vol.join("inside")).unwrap();
        symlink("../..", vol.join("a/up")).unwrap();
        symlink(tmp.path(), vol.join("abs")).unwrap();
        let backend = crate::vfs::posix::PosixBackend::open(&vol, crate::vfs::posix::PosixOptions::new("smb")).unwrap();
        let ns = Namespace::new(std::sync::Arc::new(backend));
        let (cred, root) = (Credentials::root(), ns.root());
        let parent = |name: &str| {
            let (ns, cred) = (ns.clone(), cred.clone());
            let mut comps = split_name(name).unwrap();
            async move { parent_of(&ns, &cred, root, &mut comps, Case::Sensitive).await }
        };
        let b = ns.walk(&cred, root, b"a/b", false).await.unwrap().0;
        assert_eq!(parent("top.txt").await, Ok(root));
        assert_eq!(parent("a\\b\\new.txt").await, Ok(b));
        assert_eq!(parent("inside\\new.txt").await, Ok(b), "a symlink inside the volume is followed");
        assert_eq!(parent("a\\up\\x").await, Err(NtStatus::ACCESS_DENIED), "above the root");
        assert_eq!(parent("abs\\x").await, Err(NtStatus::ACCESS_DENIED), "absolute target");
        assert_eq!(parent("a\\nope\\x").await, Err(NtStatus::OBJECT_PATH_NOT_FOUND));
        assert_eq!(parent("a\\file\\x").await, Err(NtStatus::OBJECT_PATH_NOT_FOUND));
    }

    #[test]
    fn names_that_could_escape_are_refused() {
        assert_eq!(split_name("a\\b\\c.txt").unwrap(), vec!["a", "b", "c.txt"]);
        assert!(split_name("").unwrap().is_empty());
        for bad in ["..\\etc", "a\\..\\..", "a\\..\\..\\a", "\\abs", "a\\\\b", "a//b", "/abs", "..", "x*", "f\u{1}"] {
            assert!(split_name(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(split_name("..\\etc"), Err(NtStatus::OBJECT_PATH_SYNTAX_BAD));
        // `.` and `..` resolve by name, inside the share (smbtorture notify.tree opens `d\\zqy\\..`).
        assert_eq!(split_name("d\\zqy\\..").unwrap(), vec!["d"]);
        assert!(split_name("a/..").unwrap().is_empty(), "the share root");
        assert_eq!(split_name("a\\.\\b\\.").unwrap(), vec!["a", "b"]);
        assert_eq!(split_name("a\\b\\..\\..\\c").unwrap(), vec!["c"]);
        assert_eq!(split_name("file:stream"), Err(NtStatus::OBJECT_NAME_INVALID));
        let named = |s: &str| Some(StreamPart::Named(s.into()));
        assert_eq!(
            parse_name("d\\file::$DATA").unwrap(),
            (vec!["d".to_string(), "file".to_string()], Some(StreamPart::Unnamed))
        );
        assert_eq!(parse_name("d\\f.txt:s1").unwrap(), (vec!["d".to_string(), "f.txt".to_string()], named("s1")));
        assert_eq!(parse_name("f.txt:s1:$DATA").unwrap().1, named("s1"));
        assert_eq!(parse_name("plain").unwrap().1, None);
        assert_eq!(parse_name(":s").unwrap(), (vec![], named("s")), "a stream of the share root");
        assert_eq!(parse_name("d:x\\f"), Err(NtStatus::OBJECT_NAME_INVALID));
        assert_eq!(parse_name("f:s:$FOO"), Err(NtStatus::OBJECT_NAME_INVALID));
        assert_eq!(split_name("a/b\\c").unwrap(), vec!["a", "b", "c"], "Samba accepts / too");
    }

    #[test]
    fn short_names_fit_8_3() {
        assert_eq!(short_name("abc.txt"), "ABC.TXT");
        let s = short_name("a long file name.text");
        assert!(s.len() <= 12 && s.contains('~') && s.ends_with(".TEX"), "{s}");
        assert_eq!(short_name("a long file name.text"), s, "stable");
    }

    #[test]
    fn wildcards_match_like_windows() {
        let m = |p: &str, n: &str| wildcard_match(p, n, Case::Insensitive);
        assert!(m("*", "x"));
        assert!(m("*.TXT", "a.txt"));
        assert!(!m("*.txt", "a.txd"));
        assert!(m("a?c", "abc"));
        assert!(m("ABC", "abc"));
        assert!(m("ÄRGER", "ärger"));
        assert!(!m("abc", "abcd"));
        assert!(m("*a*b*", "xxaxxbxx"));
        assert!(!wildcard_match("ABC", "abc", Case::Sensitive));
        assert!(wildcard_match("a*", "abc", Case::Sensitive));
        let evil = "*a".repeat(200);
        assert!(!m(&evil, &"a".repeat(199)), "no exponential blow-up");
        assert!(has_wildcard("a*") && has_wildcard("<") && !has_wildcard("plain.txt"));
    }

    #[test]
    fn filetimes_round_trip() {
        let t = Timestamp { secs: 1_700_000_000, nanos: 123_456_700 };
        assert_eq!(from_filetime(filetime(t)), t);
        assert_eq!(from_filetime(filetime(Timestamp { secs: -5, nanos: 100 })), Timestamp { secs: -5, nanos: 100 });
    }
}
