//! The caller's identity, passed to every operation so files get the caller's owner and the
//! file system checks the caller's permissions, whatever protocol the caller came in on.

/// Unix identity of the caller (NFS AUTH_UNIX after squashing, or an SMB session's mapped user).
#[derive(Clone, PartialEq, Eq, Debug, Hash)]
pub struct Credentials {
    /// Effective user id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups (AUTH_UNIX carries at most 16).
    pub groups: Vec<u32>,
}

impl Credentials {
    /// The superuser, for server-internal work (never for a squashed client).
    pub fn root() -> Self {
        Self { uid: 0, gid: 0, groups: Vec::new() }
    }

    /// A caller with no supplementary groups.
    pub fn new(uid: u32, gid: u32) -> Self {
        Self { uid, gid, groups: Vec::new() }
    }

    /// True when the caller is uid 0.
    pub fn is_root(&self) -> bool {
        self.uid == 0
    }

    /// True when `gid` is the caller's primary or a supplementary group.
    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }
}
