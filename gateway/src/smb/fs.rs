//! Between SMB names and the namespace: share-relative names checked and split (no `..`,
//! no streams, no reserved characters), resolved to [`FileId`]s under the share root, and
//! namespace attributes turned into SMB times and file attributes.

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

/// Splits a share-relative SMB name (`a\b\c`) into validated components. Refuses what could
/// escape the share or that nasgw does not serve: `.`/`..`, alternate data streams (`:`),
/// wildcard and reserved characters, control characters, empty components.
pub fn split_name(name: &str) -> Result<Vec<String>, NtStatus> {
    let name = name.strip_suffix("::$DATA").unwrap_or(name);
    if name.is_empty() {
        return Ok(Vec::new());
    }
    if name.starts_with('\\') || name.starts_with('/') {
        return Err(NtStatus::INVALID_PARAMETER);
    }
    let trimmed = name.strip_suffix('\\').unwrap_or(name);
    let mut out = Vec::new();
    for c in trimmed.split('\\') {
        if c.is_empty() {
            return Err(NtStatus::OBJECT_NAME_INVALID);
        }
        if c == "." || c == ".." {
            return Err(NtStatus::OBJECT_NAME_INVALID);
        }
        if c.contains(':') {
            // Alternate data streams are not served.
            return Err(NtStatus::OBJECT_NAME_NOT_FOUND);
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

/// Resolves the directory holding the last component of `comps` (all but the last, from the
/// share root). Symlinks are followed only while they stay inside the volume.
pub async fn parent_of(ns: &Namespace, cred: &Credentials, root: FileId, comps: &[String]) -> Result<FileId, NtStatus> {
    let Some((_, dirs)) = comps.split_last() else { return Ok(root) };
    // One lookup per component (the components are validated: no `.`, `..` or `/`); only a
    // symlink on the way needs `walk_beneath`, which follows it while it stays inside the share.
    let mut dir = root;
    for c in dirs {
        match ns.lookup(cred, dir, c.as_bytes()).await {
            Ok((id, a)) if a.ftype == FileType::Directory => dir = id,
            Ok((_, a)) if a.ftype == FileType::Symlink => return walk_dir(ns, cred, root, dirs).await,
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

/// SMB file attributes of a file named `name`.
pub fn attributes(attr: &Attr, name: &str) -> u32 {
    let mut a = if attr.ftype == FileType::Directory { ATTR_DIRECTORY } else { ATTR_ARCHIVE };
    if attr.ftype != FileType::Directory && attr.mode & 0o222 == 0 {
        a |= ATTR_READONLY;
    }
    if name.starts_with('.') && name != "." && name != ".." {
        a |= ATTR_HIDDEN;
    }
    a
}

/// The four SMB times: creation, last access, last write, change.
pub fn times(attr: &Attr) -> [u64; 4] {
    let birth = attr.btime.unwrap_or(std::cmp::min(attr.mtime, attr.ctime));
    [filetime(birth), filetime(attr.atime), filetime(attr.mtime), filetime(attr.ctime)]
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

/// Case-insensitive match of `name` against an SMB search pattern (`*`, `?`, and the DOS
/// wildcards `<`, `>`, `"`).
pub fn wildcard_match(pattern: &str, name: &str) -> bool {
    if pattern == "*" || pattern == "*.*" || pattern.is_empty() {
        return true;
    }
    let p: Vec<char> = pattern.chars().flat_map(char::to_lowercase).collect();
    let n: Vec<char> = name.chars().flat_map(char::to_lowercase).collect();
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
            let comps = split_name(name).unwrap();
            async move { parent_of(&ns, &cred, root, &comps).await }
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
        for bad in ["..\\etc", "a\\..\\..", "\\abs", "a\\\\b", "a/b", "a\\.", "x*", "f\u{1}"] {
            assert!(split_name(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(split_name("file:stream"), Err(NtStatus::OBJECT_NAME_NOT_FOUND));
        assert_eq!(split_name("file::$DATA").unwrap(), vec!["file"]);
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
        assert!(wildcard_match("*", "x"));
        assert!(wildcard_match("*.TXT", "a.txt"));
        assert!(!wildcard_match("*.txt", "a.txd"));
        assert!(wildcard_match("a?c", "abc"));
        assert!(wildcard_match("ABC", "abc"));
        assert!(!wildcard_match("abc", "abcd"));
        assert!(wildcard_match("*a*b*", "xxaxxbxx"));
        let evil = "*a".repeat(200);
        assert!(!wildcard_match(&evil, &"a".repeat(199)), "no exponential blow-up");
    }

    #[test]
    fn filetimes_round_trip() {
        let t = Timestamp { secs: 1_700_000_000, nanos: 123_456_700 };
        assert_eq!(from_filetime(filetime(t)), t);
        assert_eq!(from_filetime(filetime(Timestamp { secs: -5, nanos: 100 })), Timestamp { secs: -5, nanos: 100 });
    }
}
