//! NTSTATUS codes nasgw answers with (MS-ERREF 2.3), named as clients print them.

/// An NTSTATUS value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NtStatus(pub u32);

#[allow(missing_docs)]
impl NtStatus {
    pub const SUCCESS: Self = Self(0);
    pub const PENDING: Self = Self(0x0000_0103);
    pub const NOTIFY_ENUM_DIR: Self = Self(0x0000_010C);
    pub const NOTIFY_CLEANUP: Self = Self(0x0000_010B);
    pub const BUFFER_OVERFLOW: Self = Self(0x8000_0005);
    pub const NO_MORE_FILES: Self = Self(0x8000_0006);
    pub const NO_MORE_ENTRIES: Self = Self(0x8000_001A);
    pub const UNSUCCESSFUL: Self = Self(0xC000_0001);
    pub const NOT_IMPLEMENTED: Self = Self(0xC000_0002);
    pub const INVALID_INFO_CLASS: Self = Self(0xC000_0003);
    pub const INFO_LENGTH_MISMATCH: Self = Self(0xC000_0004);
    pub const INVALID_HANDLE: Self = Self(0xC000_0008);
    pub const INVALID_PARAMETER: Self = Self(0xC000_000D);
    pub const INVALID_VIEW_SIZE: Self = Self(0xC000_001F);
    pub const NO_SUCH_FILE: Self = Self(0xC000_000F);
    pub const INVALID_DEVICE_REQUEST: Self = Self(0xC000_0010);
    pub const END_OF_FILE: Self = Self(0xC000_0011);
    pub const MORE_PROCESSING_REQUIRED: Self = Self(0xC000_0016);
    pub const NO_MEMORY: Self = Self(0xC000_0017);
    pub const ACCESS_DENIED: Self = Self(0xC000_0022);
    pub const BUFFER_TOO_SMALL: Self = Self(0xC000_0023);
    pub const OBJECT_NAME_INVALID: Self = Self(0xC000_0033);
    pub const OBJECT_NAME_NOT_FOUND: Self = Self(0xC000_0034);
    pub const OBJECT_NAME_COLLISION: Self = Self(0xC000_0035);
    pub const OBJECT_PATH_INVALID: Self = Self(0xC000_0039);
    pub const OBJECT_PATH_NOT_FOUND: Self = Self(0xC000_003A);
    pub const OBJECT_PATH_SYNTAX_BAD: Self = Self(0xC000_003B);
    pub const SHARING_VIOLATION: Self = Self(0xC000_0043);
    pub const EAS_NOT_SUPPORTED: Self = Self(0xC000_004F);
    pub const EA_TOO_LARGE: Self = Self(0xC000_0050);
    pub const INVALID_ACL: Self = Self(0xC000_0077);
    pub const INVALID_SID: Self = Self(0xC000_0078);
    pub const INVALID_SECURITY_DESCR: Self = Self(0xC000_0079);
    pub const INVALID_EA_NAME: Self = Self(0x8000_0013);
    pub const LOCK_NOT_GRANTED: Self = Self(0xC000_0055);
    pub const FILE_LOCK_CONFLICT: Self = Self(0xC000_0054);
    pub const DELETE_PENDING: Self = Self(0xC000_0056);
    pub const PRIVILEGE_NOT_HELD: Self = Self(0xC000_0061);
    pub const LOGON_FAILURE: Self = Self(0xC000_006D);
    pub const RANGE_NOT_LOCKED: Self = Self(0xC000_007E);
    pub const DISK_FULL: Self = Self(0xC000_007F);
    pub const FILE_IS_A_DIRECTORY: Self = Self(0xC000_00BA);
    pub const NOT_SUPPORTED: Self = Self(0xC000_00BB);
    pub const NETWORK_NAME_DELETED: Self = Self(0xC000_00C9);
    pub const BAD_NETWORK_NAME: Self = Self(0xC000_00CC);
    pub const REQUEST_NOT_ACCEPTED: Self = Self(0xC000_00D0);
    /// A binding whose session signs with another algorithm than GMAC-only rules allow.
    pub const REQUEST_OUT_OF_SEQUENCE: Self = Self(0xC000_042A);
    pub const INTERNAL_ERROR: Self = Self(0xC000_00E5);
    pub const DIRECTORY_NOT_EMPTY: Self = Self(0xC000_0101);
    pub const NOT_A_DIRECTORY: Self = Self(0xC000_0103);
    pub const CANCELLED: Self = Self(0xC000_0120);
    pub const CANNOT_DELETE: Self = Self(0xC000_0121);
    pub const FILE_CLOSED: Self = Self(0xC000_0128);
    pub const FILE_NOT_AVAILABLE: Self = Self(0xC000_0467);
    pub const USER_SESSION_DELETED: Self = Self(0xC000_0203);
    pub const NOT_FOUND: Self = Self(0xC000_0225);
    pub const DUPLICATE_OBJECTID: Self = Self(0xC000_022A);
    pub const FS_DRIVER_REQUIRED: Self = Self(0xC000_019C);
    pub const NETWORK_SESSION_EXPIRED: Self = Self(0xC000_035C);
    pub const STOPPED_ON_SYMLINK: Self = Self(0x8000_002D);
    pub const MEDIA_WRITE_PROTECTED: Self = Self(0xC000_00A2);
    pub const NAME_TOO_LONG: Self = Self(0xC000_0106);
    pub const FILE_INVALID: Self = Self(0xC000_0098);
    pub const OBJECT_NAME_EXISTS: Self = Self(0x4000_0000);
    pub const IO_TIMEOUT: Self = Self(0xC000_00B5);
    pub const INVALID_LOCK_RANGE: Self = Self(0xC000_01A1);
    pub const INSUFFICIENT_RESOURCES: Self = Self(0xC000_009A);
    pub const NOT_SAME_DEVICE: Self = Self(0xC000_00D4);
    pub const BAD_IMPERSONATION_LEVEL: Self = Self(0xC000_00A5);
    pub const INVALID_DEVICE_STATE: Self = Self(0xC000_0184);
    pub const NO_EAS_ON_FILE: Self = Self(0xC000_0052);

    /// An error (severity bits 11), as opposed to success, information or warning.
    pub fn is_error(self) -> bool {
        self.0 >= 0xC000_0000
    }
}

impl From<std::io::Error> for NtStatus {
    fn from(e: std::io::Error) -> Self {
        match e.raw_os_error() {
            Some(code) => from_errno(code),
            None => match e.kind() {
                std::io::ErrorKind::NotFound => Self::OBJECT_NAME_NOT_FOUND,
                std::io::ErrorKind::PermissionDenied => Self::ACCESS_DENIED,
                std::io::ErrorKind::AlreadyExists => Self::OBJECT_NAME_COLLISION,
                std::io::ErrorKind::InvalidInput => Self::INVALID_PARAMETER,
                _ => Self::UNSUCCESSFUL,
            },
        }
    }
}

/// The NTSTATUS a POSIX errno means to an SMB client.
pub fn from_errno(code: i32) -> NtStatus {
    match code {
        libc::ENOENT => NtStatus::OBJECT_NAME_NOT_FOUND,
        libc::EACCES | libc::EPERM => NtStatus::ACCESS_DENIED,
        libc::EEXIST => NtStatus::OBJECT_NAME_COLLISION,
        libc::ENOTDIR => NtStatus::OBJECT_PATH_NOT_FOUND,
        libc::EISDIR => NtStatus::FILE_IS_A_DIRECTORY,
        libc::ENOTEMPTY => NtStatus::DIRECTORY_NOT_EMPTY,
        libc::ENOSPC | libc::EDQUOT => NtStatus::DISK_FULL,
        libc::EROFS => NtStatus::MEDIA_WRITE_PROTECTED,
        libc::ENAMETOOLONG => NtStatus::NAME_TOO_LONG,
        libc::EINVAL => NtStatus::INVALID_PARAMETER,
        libc::EXDEV => NtStatus::NOT_SAME_DEVICE,
        libc::ELOOP => NtStatus::OBJECT_PATH_NOT_FOUND,
        libc::EBADF => NtStatus::INVALID_HANDLE,
        libc::ENOMEM => NtStatus::NO_MEMORY,
        libc::EFBIG => NtStatus::DISK_FULL,
        _ => NtStatus::UNSUCCESSFUL,
    }
}

impl From<crate::vfs::VfsError> for NtStatus {
    fn from(e: crate::vfs::VfsError) -> Self {
        Self(e.ntstatus())
    }
}
