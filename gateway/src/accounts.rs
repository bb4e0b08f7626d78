//! Unix accounts of this node, looked up through the C library's name service switch (so
//! `/etc/passwd`, LDAP or SSSD users alike), and the guest identity every protocol maps
//! anonymous callers to.

use std::ffi::{CStr, CString};

/// The identity guests and squashed NFS callers run as when nothing forces another one:
/// `nobody:nogroup` on Debian (65534:65534), the same numbers NFS `anon_uid`/`anon_gid` default to.
pub const GUEST: (u32, u32) = (65534, 65534);

/// A Unix user: its uid and primary gid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnixUser {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
}

/// Looks a user name or numeric uid up. A number is taken as a uid as it is (its primary group
/// comes from the account if one exists, else the same number).
pub fn user(name: &str) -> Option<UnixUser> {
    if let Ok(uid) = name.parse::<u32>() {
        let gid = getpw(|pw, buf, out| unsafe { libc::getpwuid_r(uid, pw, buf.as_mut_ptr(), buf.len(), out) })
            .map_or(uid, |u| u.gid);
        return Some(UnixUser { uid, gid });
    }
    let c = CString::new(name).ok()?;
    getpw(|pw, buf, out| unsafe { libc::getpwnam_r(c.as_ptr(), pw, buf.as_mut_ptr(), buf.len(), out) })
}

/// Looks a group name or numeric gid up.
pub fn group(name: &str) -> Option<u32> {
    if let Ok(gid) = name.parse::<u32>() {
        return Some(gid);
    }
    let c = CString::new(name).ok()?;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: an all-zero `group` is a valid out-parameter; the buffer outlives the call.
    let mut gr: libc::group = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::group = std::ptr::null_mut();
    let rc = unsafe { libc::getgrnam_r(c.as_ptr(), &mut gr, buf.as_mut_ptr(), buf.len(), &mut out) };
    (rc == 0 && !out.is_null()).then_some(gr.gr_gid)
}

/// The name of uid `uid`, if the account exists (for messages).
pub fn user_name(uid: u32) -> Option<String> {
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: as in `getpw`.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    let rc = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut out) };
    if rc != 0 || out.is_null() {
        return None;
    }
    // SAFETY: on success pw_name points into `buf`, NUL-terminated.
    Some(unsafe { CStr::from_ptr(pw.pw_name) }.to_string_lossy().into_owned())
}

/// Runs one `getpw*_r` call with a buffer and returns the account it found.
fn getpw(
    call: impl FnOnce(&mut libc::passwd, &mut [libc::c_char], &mut *mut libc::passwd) -> libc::c_int,
) -> Option<UnixUser> {
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: an all-zero `passwd` is a valid out-parameter; the buffer outlives the call.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    let rc = call(&mut pw, &mut buf, &mut out);
    (rc == 0 && !out.is_null()).then_some(UnixUser { uid: pw.pw_uid, gid: pw.pw_gid })
}

/// Whether this process may switch file-access identities (it runs as root).
pub fn privileged() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_numbers_resolve_unknown_names_do_not() {
        assert_eq!(user("root"), Some(UnixUser { uid: 0, gid: 0 }));
        assert_eq!(user("0"), Some(UnixUser { uid: 0, gid: 0 }));
        assert_eq!(user("4242").map(|u| u.uid), Some(4242));
        assert_eq!(user("no-such-user-nasgw"), None);
        assert_eq!(user("bad\0name"), None);
        assert_eq!(group("root"), Some(0));
        assert_eq!(group("7"), Some(7));
        assert_eq!(group("no-such-group-nasgw"), None);
        assert_eq!(user_name(0).as_deref(), Some("root"));
    }
}
