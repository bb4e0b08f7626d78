//! The namespace layer's one error type, with its mapping to NFSv3 status codes (RFC 1813
//! `nfsstat3`) and SMB `NTSTATUS` values, so both protocols answer the same failure alike.

use std::io;

/// Result of a namespace or backend operation.
pub type VfsResult<T> = Result<T, VfsError>;

/// Why an operation failed, in terms both protocols can express.
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
pub enum VfsError {
    /// Not permitted for this caller (not the owner, not root): `EPERM`.
    #[error("operation not permitted")]
    Perm,
    /// Permission bits deny the access: `EACCES`.
    #[error("permission denied")]
    Access,
    /// The name does not exist: `ENOENT`.
    #[error("no such file or directory")]
    NotFound,
    /// The name already exists: `EEXIST`.
    #[error("file exists")]
    Exists,
    /// A directory was needed: `ENOTDIR`.
    #[error("not a directory")]
    NotDir,
    /// A non-directory was needed: `EISDIR`.
    #[error("is a directory")]
    IsDir,
    /// The directory is not empty: `ENOTEMPTY`.
    #[error("directory not empty")]
    NotEmpty,
    /// A bad argument (e.g. a rename into its own subtree, a symlink read on a file): `EINVAL`.
    #[error("invalid argument")]
    Invalid,
    /// A name that can never be valid: empty, `.`/`..`, contains `/` or NUL.
    #[error("invalid name")]
    BadName,
    /// A name longer than the file system allows: `ENAMETOOLONG`.
    #[error("name too long")]
    NameTooLong,
    /// The file system is full: `ENOSPC`.
    #[error("no space left on device")]
    NoSpace,
    /// Quota exceeded: `EDQUOT`.
    #[error("quota exceeded")]
    Quota,
    /// Read-only file system or export: `EROFS`.
    #[error("read-only file system")]
    ReadOnly,
    /// Too many hard links: `EMLINK`.
    #[error("too many links")]
    TooManyLinks,
    /// File too large: `EFBIG`.
    #[error("file too large")]
    TooBig,
    /// Crossing file systems or volumes: `EXDEV`.
    #[error("cross-device link")]
    CrossDevice,
    /// Too many symlinks, or a symlink where none may be followed: `ELOOP`.
    #[error("too many levels of symbolic links")]
    Loop,
    /// A path left the root (`..` above it, a symlink pointing outside).
    #[error("path escapes the volume root")]
    Escape,
    /// The identity names a file that no longer exists: `ESTALE`.
    #[error("stale file identity")]
    Stale,
    /// The identity is malformed or belongs to another volume.
    #[error("bad file identity")]
    BadHandle,
    /// A directory cookie no longer applies.
    #[error("bad directory cookie")]
    BadCookie,
    /// The backend does not support this operation or file type.
    #[error("operation not supported")]
    NotSupported,
    /// The backend failed for another reason (`EIO` and everything unexpected).
    #[error("I/O error (errno {0})")]
    Io(i32),
}

impl VfsError {
    /// Maps an errno value from a system call.
    pub fn from_errno(errno: i32) -> Self {
        match errno {
            libc::EPERM => Self::Perm,
            libc::EACCES => Self::Access,
            libc::ENOENT => Self::NotFound,
            libc::EEXIST => Self::Exists,
            libc::ENOTDIR => Self::NotDir,
            libc::EISDIR => Self::IsDir,
            libc::ENOTEMPTY => Self::NotEmpty,
            libc::EINVAL => Self::Invalid,
            libc::ENAMETOOLONG => Self::NameTooLong,
            libc::ENOSPC => Self::NoSpace,
            libc::EDQUOT => Self::Quota,
            libc::EROFS => Self::ReadOnly,
            libc::EMLINK => Self::TooManyLinks,
            libc::EFBIG => Self::TooBig,
            libc::EXDEV => Self::CrossDevice,
            libc::ELOOP => Self::Loop,
            libc::ESTALE => Self::Stale,
            libc::EOPNOTSUPP | libc::ENOSYS | libc::ENOTTY => Self::NotSupported,
            e => Self::Io(e),
        }
    }

    /// The error of the last failed system call on this thread.
    pub fn last_os() -> Self {
        Self::from_errno(io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO))
    }

    /// The RFC 1813 `nfsstat3` value that reports this error.
    pub fn nfs3_status(self) -> u32 {
        match self {
            Self::Perm => 1,
            Self::NotFound => 2,
            Self::Io(_) => 5,
            Self::Access | Self::Escape => 13,
            Self::Exists => 17,
            Self::CrossDevice => 18,
            Self::NotDir => 20,
            Self::IsDir => 21,
            Self::Invalid | Self::Loop => 22,
            Self::TooBig => 27,
            Self::NoSpace => 28,
            Self::ReadOnly => 30,
            Self::TooManyLinks => 31,
            Self::NameTooLong => 63,
            Self::NotEmpty => 66,
            Self::Quota => 69,
            Self::Stale => 70,
            Self::BadHandle => 10001,
            Self::BadCookie => 10003,
            Self::NotSupported => 10004,
            // NFS3ERR_ACCES for names like "a/b": the name is refused, not malformed XDR.
            Self::BadName => 13,
        }
    }

    /// The SMB `NTSTATUS` value that reports this error.
    pub fn ntstatus(self) -> u32 {
        match self {
            Self::Perm | Self::Access | Self::Escape => 0xC000_0022, // STATUS_ACCESS_DENIED
            Self::NotFound => 0xC000_0034,                           // STATUS_OBJECT_NAME_NOT_FOUND
            Self::Exists => 0xC000_0035,                             // STATUS_OBJECT_NAME_COLLISION
            Self::NotDir => 0xC000_0103,                             // STATUS_NOT_A_DIRECTORY
            Self::IsDir => 0xC000_00BA,                              // STATUS_FILE_IS_A_DIRECTORY
            Self::NotEmpty => 0xC000_0101,                           // STATUS_DIRECTORY_NOT_EMPTY
            Self::Invalid => 0xC000_000D,                            // STATUS_INVALID_PARAMETER
            Self::BadName => 0xC000_0033,                            // STATUS_OBJECT_NAME_INVALID
            Self::NameTooLong => 0xC000_0106,                        // STATUS_NAME_TOO_LONG
            Self::NoSpace => 0xC000_007F,                            // STATUS_DISK_FULL
            Self::Quota => 0xC000_0044,                              // STATUS_QUOTA_EXCEEDED
            Self::ReadOnly => 0xC000_00A2,                           // STATUS_MEDIA_WRITE_PROTECTED
            Self::TooManyLinks => 0xC000_0265,                       // STATUS_TOO_MANY_LINKS
            Self::TooBig => 0xC000_0904,                             // STATUS_FILE_TOO_LARGE
            Self::CrossDevice => 0xC000_00D4,                        // STATUS_NOT_SAME_DEVICE
            Self::Loop => 0xC000_003A,                               // STATUS_OBJECT_PATH_NOT_FOUND
            Self::Stale => 0xC000_0098,                              // STATUS_FILE_INVALID
            Self::BadHandle => 0xC000_0008,                          // STATUS_INVALID_HANDLE
            Self::BadCookie => 0xC000_000D,                          // STATUS_INVALID_PARAMETER
            Self::NotSupported => 0xC000_00BB,                       // STATUS_NOT_SUPPORTED
            Self::Io(_) => 0xC000_00E9,                              // STATUS_UNEXPECTED_IO_ERROR
        }
    }
}

impl From<io::Error> for VfsError {
    fn from(e: io::Error) -> Self {
        Self::from_errno(e.raw_os_error().unwrap_or(libc::EIO))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_round_trips_to_both_protocols() {
        assert_eq!(VfsError::from_errno(libc::ENOENT).nfs3_status(), 2);
        assert_eq!(VfsError::from_errno(libc::ENOENT).ntstatus(), 0xC000_0034);
        assert_eq!(VfsError::from_errno(libc::ESTALE).nfs3_status(), 70);
        assert_eq!(VfsError::from_errno(libc::ENOTEMPTY).nfs3_status(), 66);
        assert_eq!(VfsError::from_errno(libc::EIO), VfsError::Io(libc::EIO));
        assert_eq!(VfsError::Io(libc::EIO).nfs3_status(), 5);
    }
}
