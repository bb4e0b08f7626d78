//! One path component, validated once at the namespace boundary so no backend ever sees `/`,
//! `.`, `..`, an empty name or a NUL byte: the first line of defence against path escapes.

use super::error::VfsError;

/// Longest component accepted (Linux `NAME_MAX`).
pub const NAME_MAX: usize = 255;

/// A single, valid directory-entry name.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Name(Vec<u8>);

impl Name {
    /// Validates `bytes` as one component: non-empty, not `.` or `..`, no `/` or NUL, at most
    /// [`NAME_MAX`] bytes.
    pub fn new(bytes: &[u8]) -> Result<Self, VfsError> {
        if bytes.len() > NAME_MAX {
            return Err(VfsError::NameTooLong);
        }
        if bytes.is_empty() || bytes == b"." || bytes == b".." || bytes.iter().any(|&b| b == b'/' || b == 0) {
            return Err(VfsError::BadName);
        }
        Ok(Self(bytes.to_vec()))
    }

    /// The name's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The name as a C string for `*at` system calls (it has no NUL by construction).
    pub fn to_cstring(&self) -> std::ffi::CString {
        std::ffi::CString::new(self.0.clone()).expect("validated: no NUL")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_components_that_could_escape() {
        for bad in [&b""[..], b".", b"..", b"a/b", b"/etc", b"x\0y", b"../x"] {
            assert!(Name::new(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(Name::new(&[b'a'; 256]), Err(VfsError::NameTooLong));
        assert!(Name::new(&[b'a'; 255]).is_ok());
        assert!(Name::new(b"...").is_ok());
        assert!(Name::new("ünï cødé".as_bytes()).is_ok());
    }
}
