//! The NTFS quota pseudo-file `$Extend\$Quota:$Q:$INDEX_ALLOCATION`. Windows opens it to
//! read and set per-user disk quotas; Samba answers it with a fake handle ("fake file") whose
//! quota queries list nothing. nasgw does the same: it has no per-user quotas to report (the
//! volume's limits are the file-system size classes), so the open succeeds for an admin and
//! answers every quota query with an empty list, as smbd does on a volume without quotas.

use crate::smb::cmd::create::FileBasics;

/// The pseudo-file's name, relative to the share root (compared ignoring ASCII case).
pub const NAME: &str = "$Extend\\$Quota:$Q:$INDEX_ALLOCATION";

/// FILE_ATTRIBUTE_HIDDEN | SYSTEM | DIRECTORY | ARCHIVE: what smbd and Windows report for it.
pub const ATTRIBUTES: u32 = 0x02 | 0x04 | 0x10 | 0x20;

/// Whether a CREATE name (as the client sent it, with or without a leading `\`) names the
/// quota pseudo-file.
pub fn is_quota_file(name: &str) -> bool {
    name.trim_start_matches('\\').eq_ignore_ascii_case(NAME)
}

/// What a CREATE of the pseudo-file answers: its attributes, all times zero, no size.
pub fn basics() -> FileBasics {
    FileBasics { attributes: ATTRIBUTES, ..FileBasics::default() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_name_matches_in_any_case_with_or_without_a_leading_backslash() {
        assert!(is_quota_file("$Extend\\$Quota:$Q:$INDEX_ALLOCATION"));
        assert!(is_quota_file("\\$extend\\$quota:$q:$index_allocation"));
        assert!(!is_quota_file("$Extend\\$Quota"));
        assert!(!is_quota_file("$Extend\\$Quota:$Q:$INDEX_ALLOCATION\\x"));
        assert!(!is_quota_file("dir\\$Extend\\$Quota:$Q:$INDEX_ALLOCATION"));
    }

    #[test]
    fn its_basics_are_smbds() {
        let b = basics();
        assert_eq!(b.attributes, 0x36);
        assert_eq!((b.creation, b.access, b.write, b.change, b.eof), (0, 0, 0, 0, 0));
    }
}
