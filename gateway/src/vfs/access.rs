//! Access decisions from mode bits, as a pure function: NFS ACCESS answers from it, and the
//! POSIX backend checks cached open files with it (it cannot reopen per request as the caller).

use super::cred::Credentials;
use super::types::{Attr, FileType};

/// Read data / list a directory.
pub const READ: u32 = 0x1;
/// Look up names in a directory.
pub const LOOKUP: u32 = 0x2;
/// Write data to a file / change it.
pub const MODIFY: u32 = 0x4;
/// Extend a file / add entries to a directory.
pub const EXTEND: u32 = 0x8;
/// Remove entries from a directory.
pub const DELETE: u32 = 0x10;
/// Execute a file.
pub const EXECUTE: u32 = 0x20;

/// The mode a regular file must get after `cred` wrote to it, when it changes: a write by a
/// caller other than root clears set-user-ID, and set-group-ID when group execute is set (a
/// set-group-ID file without it marks mandatory locking), as the kernel does for writers
/// without CAP_FSETID. The server writes through its own descriptor, so it applies this
/// itself; otherwise anyone allowed to write could plant code in a set-user-ID program.
pub fn mode_after_write(mode: u32, cred: &Credentials) -> Option<u32> {
    if cred.is_root() {
        return None;
    }
    let mut clear = 0o4000;
    if mode & 0o010 != 0 {
        clear |= 0o2000;
    }
    (mode & clear != 0).then_some(mode & 0o7777 & !clear)
}

/// Which of `wanted` (a mask of the constants above, the NFSv3 ACCESS bits) the caller is granted
/// on a file with attributes `attr`. Root is granted everything except executing a file with no
/// execute bit at all. POSIX ACLs are not consulted.
pub fn granted(attr: &Attr, cred: &Credentials, wanted: u32) -> u32 {
    let is_dir = attr.ftype == FileType::Directory;
    if cred.is_root() {
        let mut all = wanted;
        if !is_dir && attr.mode & 0o111 == 0 {
            all &= !EXECUTE;
        }
        return all;
    }
    let bits = if cred.uid == attr.uid {
        (attr.mode >> 6) & 7
    } else if cred.in_group(attr.gid) {
        (attr.mode >> 3) & 7
    } else {
        attr.mode & 7
    };
    let (r, w, x) = (bits & 4 != 0, bits & 2 != 0, bits & 1 != 0);
    let mut got = 0;
    if r {
        got |= READ;
    }
    if w {
        got |= MODIFY | EXTEND;
        if is_dir {
            got |= DELETE;
        }
    }
    if x {
        got |= if is_dir { LOOKUP } else { EXECUTE };
    }
    got & wanted
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(ftype: FileType, mode: u32, uid: u32, gid: u32) -> Attr {
        Attr::with_owner(ftype, mode, uid, gid)
    }

    const ALL: u32 = READ | LOOKUP | MODIFY | EXTEND | DELETE | EXECUTE;

    #[test]
    fn owner_group_other_bits_apply_in_order() {
        let f = attr(FileType::Regular, 0o640, 10, 20);
        assert_eq!(granted(&f, &Credentials::new(10, 99), ALL), READ | MODIFY | EXTEND);
        assert_eq!(granted(&f, &Credentials::new(11, 20), ALL), READ);
        let mut supp = Credentials::new(11, 99);
        supp.groups.push(20);
        assert_eq!(granted(&f, &supp, ALL), READ);
        assert_eq!(granted(&f, &Credentials::new(11, 21), ALL), 0);
        // Owner bits win even when they grant less than the group's.
        let g = attr(FileType::Regular, 0o070, 10, 20);
        assert_eq!(granted(&g, &Credentials::new(10, 20), ALL), 0);
    }

    #[test]
    fn directories_map_x_to_lookup_and_w_to_delete() {
        let d = attr(FileType::Directory, 0o755, 10, 20);
        assert_eq!(granted(&d, &Credentials::new(10, 20), ALL), READ | LOOKUP | MODIFY | EXTEND | DELETE);
        assert_eq!(granted(&d, &Credentials::new(11, 21), ALL), READ | LOOKUP);
    }

    #[test]
    fn root_gets_all_but_exec_of_non_executables() {
        let f = attr(FileType::Regular, 0o600, 10, 20);
        assert_eq!(granted(&f, &Credentials::root(), ALL), ALL & !EXECUTE);
        let x = attr(FileType::Regular, 0o700, 10, 20);
        assert_eq!(granted(&x, &Credentials::root(), ALL), ALL);
    }

    #[test]
    fn writes_by_anyone_but_root_clear_setuid_and_setgid() {
        let user = Credentials::new(10, 20);
        assert_eq!(mode_after_write(0o4755, &user), Some(0o755));
        assert_eq!(mode_after_write(0o6755, &user), Some(0o755));
        assert_eq!(mode_after_write(0o6745, &user), Some(0o2745), "setgid without group exec stays");
        assert_eq!(mode_after_write(0o2775, &user), Some(0o775));
        assert_eq!(mode_after_write(0o0644, &user), None);
        assert_eq!(mode_after_write(0o1777, &user), None, "sticky is not touched");
        assert_eq!(mode_after_write(0o6755, &Credentials::root()), None);
    }
}
