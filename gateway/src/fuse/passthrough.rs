//! Whether an open may be answered with a passthrough backing file (pure).
//!
//! The kernel does not do a passthrough open's I/O on nasgw's descriptor itself: at each open
//! of the FUSE file it opens the backing file again (`backing_file_open`) in the context of the
//! process opening it, with that process's credentials and access mode, and turns any failure
//! of that open into EIO for the program. A local file system's open checks no permission (the
//! check belongs to the path walk, which nasgw's own open did), so the reopen always succeeds.
//! A backing file on a FUSE or network file system (the GlusterFS-FUSE backend: GlusterFS's
//! client asks the bricks, which check the mode bits against the caller's uid and groups) fails
//! wherever the file's mode refuses the caller the access it asks for, although POSIX grants
//! it: the creator of a file made with mode 0 (`open(O_CREAT | O_RDWR, 0)`), and anything the
//! kernel let through on a capability. Such opens are served through nasgw instead.

use crate::vfs::{access, Attr, Credentials};

/// The namespace's access bits a descriptor opened with `open(2)` flags `oflags` uses.
pub fn wanted(oflags: i32) -> u32 {
    match oflags & libc::O_ACCMODE {
        libc::O_RDONLY => access::READ,
        libc::O_WRONLY => access::MODIFY,
        _ => access::READ | access::MODIFY,
    }
}

/// True when the kernel's reopen of the backing file, as `cred` with `oflags`, passes the mode
/// bits of a file with attributes `attr` (the check a permission-checking backing file system
/// makes). A backing file system that checks nothing at open needs no such test.
pub fn reopen_allowed(attr: &Attr, cred: &Credentials, oflags: i32) -> bool {
    let want = wanted(oflags);
    access::granted(attr, cred, want) == want
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vfs::FileType;

    fn file(mode: u32, uid: u32, gid: u32) -> Attr {
        Attr::with_owner(FileType::Regular, mode, uid, gid)
    }

    fn user(uid: u32, gid: u32, groups: &[u32]) -> Credentials {
        Credentials { uid, gid, groups: groups.to_vec() }
    }

    #[test]
    fn the_reopen_passes_where_the_mode_bits_grant_the_open_s_access() {
        let rw = libc::O_RDWR;
        let (ro, wo) = (libc::O_RDONLY, libc::O_WRONLY);
        // (mode, owner uid, group, caller uid, caller gid, caller groups, flags, allowed)
        type Case = (u32, u32, u32, u32, u32, &'static [u32], i32, bool);
        let cases: &[Case] = &[
            // The case pjdfstest's ftruncate/posix_fallocate checks: a creator of a mode-0 file.
            (0o000, 65534, 65534, 65534, 65534, &[], rw | libc::O_CREAT, false),
            (0o000, 65534, 65534, 65534, 65534, &[], ro, false),
            // Root is granted everything (GlusterFS too, without root squash).
            (0o000, 65534, 65534, 0, 0, &[], rw, true),
            (0o600, 1000, 1000, 1000, 1000, &[], rw, true),
            (0o400, 1000, 1000, 1000, 1000, &[], rw, false),
            (0o400, 1000, 1000, 1000, 1000, &[], ro, true),
            (0o200, 1000, 1000, 1000, 1000, &[], wo, true),
            // The group's bits, through a supplementary group; the owner's bits win for the owner.
            (0o060, 1000, 50, 2000, 2000, &[50], rw, true),
            (0o060, 1000, 50, 2000, 2000, &[], rw, false),
            (0o066, 1000, 50, 1000, 1000, &[50], ro, false),
            (0o604, 1000, 1000, 3000, 3000, &[], ro, true),
            (0o604, 1000, 1000, 3000, 3000, &[], wo, false),
        ];
        for &(mode, owner, group, uid, gid, groups, flags, allowed) in cases {
            assert_eq!(
                reopen_allowed(&file(mode, owner, group), &user(uid, gid, groups), flags),
                allowed,
                "mode {mode:o} owner {owner}:{group}, caller {uid}:{gid} {groups:?}, flags {flags:#x}"
            );
        }
    }
}
