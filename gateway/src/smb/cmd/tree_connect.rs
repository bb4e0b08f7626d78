//! TREE_CONNECT (MS-SMB2 2.2.9/2.2.10): `\\server\share` to a tree. `IPC$` reaches the
//! srvsvc pipe; disk shares check guest rules and fix the Unix identity file access runs as,
//! and a share that wants encryption says so (SHI1005_FLAGS_ENCRYPT_DATA) or, when it
//! requires it, refuses sessions that cannot encrypt.

use super::Reply;
use crate::config::{ShareConfig, SmbEncryption};
use crate::smb::auth::Identity;
use crate::smb::conn::Connection;
use crate::smb::session::{Tree, TreeKind};
use crate::smb::wire::header::Header;
use crate::smb::wire::status::NtStatus;
use crate::smb::wire::{from_utf16le, slice_at, Reader, WireError, WireResult, Writer};
use crate::vfs::{Credentials, FileType};

/// Share type: disk.
const TYPE_DISK: u8 = 1;
/// Share type: named pipes.
const TYPE_PIPE: u8 = 2;
/// Full access mask for writable shares.
pub const FULL_ACCESS: u32 = 0x001F_01FF;
/// Read/execute access mask for read-only shares.
pub const READ_ACCESS: u32 = 0x0012_00A9;
/// Share flag: no client caching of offline files.
const SHI1005_FLAGS_NO_CACHING: u32 = 0x30;
/// Share flag: the client must encrypt the tree connect's traffic.
pub const SHI1005_FLAGS_ENCRYPT_DATA: u32 = 0x8000;
/// Share capability: continuously available (persistent handles are granted).
pub const SHARE_CAP_CONTINUOUS_AVAILABILITY: u32 = 0x10;
/// Share capability: scale-out (every node serves the share at once; a durable open is
/// reclaimed on whichever node the client reaches).
pub const SHARE_CAP_SCALEOUT: u32 = 0x20;

/// The share capabilities a disk share answers: CONTINUOUS_AVAILABILITY for a continuously
/// available share on SMB 3.0 or later (persistent handles need DH2Q), with SCALEOUT in a
/// cluster. Not CLUSTER: that one promises a Witness service (MS-SWN), which nasgw lacks. Pure.
pub fn share_capabilities(continuously_available: bool, clustered: bool, dialect: u16) -> u32 {
    if !continuously_available || dialect < crate::smb::signing::dialect::SMB300 {
        return 0;
    }
    SHARE_CAP_CONTINUOUS_AVAILABILITY | if clustered { SHARE_CAP_SCALEOUT } else { 0 }
}

/// A decoded TREE_CONNECT request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The share name of the path (`\\server\share` -> `share`).
    pub share: String,
}

impl Request {
    /// Decodes the body of `msg`.
    pub fn parse(msg: &[u8]) -> WireResult<Self> {
        parse(msg).map(|share| Self { share })
    }
}

/// The share name of a TREE_CONNECT path (`\\server\share` -> `share`).
pub fn parse(msg: &[u8]) -> WireResult<String> {
    let mut r = Reader::at(msg, 64);
    if r.u16()? != 9 {
        return Err(WireError::Malformed("TREE_CONNECT structure size"));
    }
    r.skip(2)?;
    let off = r.u16()? as usize;
    let len = r.u16()? as usize;
    let path = from_utf16le(slice_at(msg, off, len)?)?;
    let share = path.trim_start_matches('\\').split('\\').nth(1).ok_or(WireError::Malformed("share path"))?;
    if share.is_empty() {
        return Err(WireError::Malformed("share path"));
    }
    Ok(share.to_string())
}

/// Looks a Unix user or numeric uid up: (uid, primary gid).
pub fn unix_user(name: &str) -> Option<(u32, u32)> {
    if let Ok(uid) = name.parse::<u32>() {
        return Some((uid, uid));
    }
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 3 && f[0] == name).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}

/// Looks a Unix group or numeric gid up.
pub fn unix_group(name: &str) -> Option<u32> {
    if let Ok(gid) = name.parse::<u32>() {
        return Some(gid);
    }
    let group = std::fs::read_to_string("/etc/group").ok()?;
    group.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 2 && f[0] == name).then(|| f[2].parse().ok())?
    })
}

/// The Unix identity a session's file access runs as on `share`, or `None` when the share
/// forces a user or group this node does not have (the tree connect is refused rather than run
/// as somebody else; `nasgw check` reports it).
pub fn identity_on(conn: &Connection, who: &Identity, share: &ShareConfig) -> Option<(u32, u32)> {
    const NOBODY: (u32, u32) = crate::accounts::GUEST;
    let mut id = if let Some(u) = &share.force_user {
        let u = crate::accounts::user(u)?;
        (u.uid, u.gid)
    } else {
        match who {
            Identity::User(name) if !share.guest_only => {
                conn.server.unix_users.get(name).and_then(|u| unix_user(u)).unwrap_or(NOBODY)
            }
            _ => NOBODY,
        }
    };
    if let Some(g) = share.force_group.as_deref() {
        id.1 = crate::accounts::group(g)?;
    }
    Some(id)
}

/// Handles TREE_CONNECT.
pub async fn handle(conn: &mut Connection, hdr: &Header, req: Request) -> Result<Reply, NtStatus> {
    let name = req.share;
    let who = conn.session(hdr.session_id)?.identity.clone().ok_or(NtStatus::USER_SESSION_DELETED)?;
    let mut root = None;
    let can_encrypt = conn.session(hdr.session_id)?.cipher.is_some();
    let mut encrypt_data = false;
    let mut require_encryption = false;
    let mut caps = 0;
    let (kind, writable, uid, gid, share_type, access) = if name.eq_ignore_ascii_case("IPC$") {
        (TreeKind::Ipc, false, 65534, 65534, TYPE_PIPE, FULL_ACCESS)
    } else {
        let share = conn.server.share(&name).ok_or(NtStatus::BAD_NETWORK_NAME)?.clone();
        if who.is_guest_like() && !share.guest_ok {
            tracing::info!(client = %conn.tcp.client, share = %share.name, "SMB: guest refused on a non-guest share");
            return Err(NtStatus::ACCESS_DENIED);
        }
        let mode = conn.server.share_encryption(&share);
        if mode == SmbEncryption::Required && !can_encrypt {
            let why = if who.is_guest_like() {
                "guest and anonymous sessions have no keys and cannot encrypt"
            } else if conn.dialect < crate::smb::signing::dialect::SMB300 {
                "the client negotiated SMB 2.x, which has no encryption"
            } else {
                "the client negotiated no cipher"
            };
            tracing::info!(client = %conn.tcp.client, share = %share.name, why, "SMB: tree connect refused: the share requires encryption");
            return Err(NtStatus::ACCESS_DENIED);
        }
        encrypt_data = mode >= SmbEncryption::Desired && can_encrypt;
        require_encryption = mode == SmbEncryption::Required;
        let Some((uid, gid)) = identity_on(conn, &who, &share) else {
            tracing::warn!(share = %share.name, force_user = ?share.force_user, force_group = ?share.force_group, "SMB: the share forces a user or group this node does not have; tree connect refused");
            return Err(NtStatus::ACCESS_DENIED);
        };
        let ns = &conn.server.ns;
        match ns.walk(&Credentials::root(), ns.root(), share.path.as_bytes(), true).await {
            Ok((id, a)) if a.ftype == FileType::Directory => root = Some(id),
            other => {
                tracing::warn!(share = %share.name, path = %share.path, result = ?other.map(|_| "not a directory"), "SMB: share folder unusable");
                return Err(NtStatus::BAD_NETWORK_NAME);
            }
        }
        let access = if share.writable { FULL_ACCESS } else { READ_ACCESS };
        let writable = share.writable;
        caps = share_capabilities(share.continuously_available, conn.server.clustered, conn.dialect);
        (TreeKind::Disk(Box::new(share)), writable, uid, gid, TYPE_DISK, access)
    };
    let id = conn.new_tree_id();
    let s = conn.sessions.get_mut(&hdr.session_id).ok_or(NtStatus::USER_SESSION_DELETED)?;
    s.trees.insert(id, Tree { id, kind, writable, uid, gid, root, encrypt_data, require_encryption });
    let flags = SHI1005_FLAGS_NO_CACHING | if encrypt_data { SHI1005_FLAGS_ENCRYPT_DATA } else { 0 };
    let mut w = Writer::with_capacity(16);
    w.u16(16).u8(share_type).u8(0).u32(flags).u32(caps).u32(access);
    let mut r = Reply::ok(w.buf);
    r.session_id = Some(hdr.session_id);
    // The response carries the new TreeId in its header.
    r.tree_id = Some(id);
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smb::wire::utf16le;

    #[test]
    fn only_continuously_available_shares_on_smb3_announce_ca() {
        use crate::smb::signing::dialect::{SMB210, SMB300, SMB311};
        let ca = SHARE_CAP_CONTINUOUS_AVAILABILITY;
        // (CA share, clustered, dialect) -> capabilities
        let table = [
            (false, true, SMB311, 0),
            (true, false, SMB210, 0),
            (true, false, SMB300, ca),
            (true, true, SMB311, ca | SHARE_CAP_SCALEOUT),
        ];
        for (share, clustered, d, want) in table {
            assert_eq!(share_capabilities(share, clustered, d), want, "{share} {clustered} {d:#x}");
        }
    }

    #[test]
    fn share_names_come_from_unc_paths() {
        let mut w = Writer::new();
        w.zeros(64);
        let path = utf16le("\\\\127.0.0.1\\pub");
        w.u16(9).u16(0).u16(72).u16(path.len() as u16).bytes(&path);
        assert_eq!(parse(&w.buf).unwrap(), "pub");
        assert!(parse(&w.buf[..70]).is_err());
    }

    #[test]
    fn root_is_a_unix_user() {
        assert_eq!(unix_user("root"), Some((0, 0)));
        assert_eq!(unix_user("1234"), Some((1234, 1234)));
        assert_eq!(unix_group("0"), Some(0));
    }
}
