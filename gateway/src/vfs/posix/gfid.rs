//! GlusterFS GFID identities for the POSIX backend serving a Gluster FUSE mount
//! ([`super::identity::IdentityKind::Gfid`]).
//!
//! A GFID is the volume's own identity of a file: the same on every brick and every client, kept
//! across renames and restarts. The FUSE client exposes it as the virtual xattr
//! `glusterfs.gfid.string`, and a mount made with `--aux-gfid-mount` (nasgw's managed mount
//! always is) opens any file by it as `<mount>/.gfid/<uuid>`: resolving an id costs one lookup on
//! any node, with no path and no table.
//!
//! A directory opened through `.gfid/` can be looked into but not listed (`opendir` answers
//! EOPNOTSUPP) and its `..` is the virtual `.gfid` directory, so directories are reopened at their
//! real path, which the volume reports as `glusterfs.ancestry.path`.

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use super::sys;
use crate::vfs::error::{VfsError, VfsResult};

/// A GFID (a UUID), 16 bytes.
pub type Gfid = [u8; 16];

/// Formats a GFID as GlusterFS writes it (`8-4-4-4-12` lowercase hex).
pub fn format(g: &Gfid) -> String {
    let h: String = g.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// The inode number GlusterFS's FUSE client reports for a file with GFID `g` (its last 8 bytes,
/// big-endian, as `gfid_to_ino` computes it; the root's is 1). A mount made with
/// `enable-ino32` reports others: [`super::PosixBackend`] checks this before relying on it.
pub fn ino_of(g: &Gfid) -> u64 {
    u64::from_be_bytes(g[8..16].try_into().expect("8 bytes"))
}

/// Parses `8-4-4-4-12` hex (surrounding NULs or whitespace ignored); `None` if malformed.
pub fn parse(s: &[u8]) -> Option<Gfid> {
    let s = std::str::from_utf8(s).ok()?.trim_matches(|c: char| c == '\0' || c.is_whitespace());
    let groups: Vec<&str> = s.split('-').collect();
    if groups.iter().map(|g| g.len()).collect::<Vec<_>>() != [8, 4, 4, 4, 12] {
        return None;
    }
    let hex: String = groups.concat();
    let mut g = [0u8; 16];
    for (i, b) in g.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(g)
}

fn getxattr(path: &CStr, name: &CStr, follow: bool) -> VfsResult<Vec<u8>> {
    let mut buf = vec![0u8; 4096];
    // SAFETY: valid NUL-terminated strings; buf is writable for its length.
    let n = unsafe {
        if follow {
            libc::getxattr(path.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
        } else {
            libc::lgetxattr(path.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
        }
    };
    if n < 0 {
        return Err(VfsError::from(std::io::Error::last_os_error()));
    }
    buf.truncate(n as usize);
    Ok(buf)
}

/// The GFID of `dir/name` (`name` empty: `dir` itself), symlinks not followed.
pub fn gfid_of(dir: BorrowedFd<'_>, name: &CStr) -> VfsResult<Gfid> {
    let base = sys::proc_path(dir);
    // The magic link itself resolves to the object (even an O_PATH symlink); a name below it is
    // read without following.
    let (path, follow) = if name.is_empty() {
        (base, true)
    } else {
        let mut p = base.into_bytes();
        p.push(b'/');
        p.extend_from_slice(name.to_bytes());
        (CString::new(p).map_err(|_| VfsError::BadName)?, false)
    };
    let v = getxattr(&path, c"glusterfs.gfid.string", follow)?;
    parse(&v).ok_or(VfsError::Io(libc::EIO))
}

/// Opens the object with GFID `g` (`O_PATH`): regular files and symlinks through
/// `.gfid/<uuid>`, directories at their real path (checked to be the same GFID). A GFID the
/// volume no longer has is [`VfsError::Stale`].
pub fn open(root: BorrowedFd<'_>, g: &Gfid, open_rel: impl Fn(&[u8]) -> VfsResult<OwnedFd>) -> VfsResult<OwnedFd> {
    let rel = CString::new(format!(".gfid/{}", format(g))).expect("no NUL");
    let fd = sys::openat(root, &rel, libc::O_PATH | libc::O_NOFOLLOW, 0).map_err(|e| match e {
        VfsError::NotFound | VfsError::Stale | VfsError::Invalid => VfsError::Stale,
        e => e,
    })?;
    let stx = sys::fstatx(fd.as_fd())?;
    if stx.stx_nlink == 0 {
        return Err(VfsError::Stale);
    }
    if u32::from(stx.stx_mode) & libc::S_IFMT != libc::S_IFDIR {
        return Ok(fd);
    }
    let path = getxattr(&sys::proc_path(fd.as_fd()), c"glusterfs.ancestry.path", true)?;
    let path: Vec<u8> = path.into_iter().take_while(|&b| b != 0).collect();
    let rel = path.trim_ascii().strip_prefix(b"/").unwrap_or(path.trim_ascii()).to_vec();
    // Renamed meanwhile, or not reachable beneath the root: keep the .gfid descriptor (lookups
    // work; listing fails) rather than fail.
    match open_rel(&rel) {
        Ok(real) if gfid_of(real.as_fd(), c"").ok() == Some(*g) => Ok(real),
        _ => Ok(fd),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gfid_strings_round_trip_and_garbage_is_refused() {
        let s = "532de1d3-f251-460d-b4b1-92c190d58087";
        let g = parse(s.as_bytes()).unwrap();
        assert_eq!(format(&g), s);
        assert_eq!(parse(b"00000000-0000-0000-0000-000000000001\0").unwrap()[15], 1);
        assert_eq!(ino_of(&parse(b"00000000-0000-0000-0000-000000000001").unwrap()), 1, "the root");
        assert_eq!(ino_of(&g), 0xb4b1_92c1_90d5_8087);
        for bad in ["", "xyz", "532de1d3f251460db4b192c190d58087", "532de1d3-f251-460d-b4b1-92c190d5808g", "é"] {
            assert_eq!(parse(bad.as_bytes()), None, "{bad}");
        }
    }
}
