//! The AAPL create context macOS sends on its first CREATE (Apple's SMB extensions, as Samba's
//! `vfs_fruit` answers them): a SERVER_QUERY for server capabilities, volume capabilities and
//! the server's model string. nasgw answers as a Unix server without the optional extensions
//! whose semantics it does not implement (READDIR_ATTR's repurposed directory fields, the
//! whole-file COPYFILE, NFS ACEs), so macOS falls back to standard SMB for them; AFP_AfpInfo and
//! AFP_Resource are ordinary named streams ([`crate::smb::streams`]).

/// SERVER_QUERY, the one command.
pub const SERVER_QUERY: u32 = 1;
/// Request bitmap: server capabilities.
pub const SERVER_CAPS: u64 = 1;
/// Request bitmap: volume capabilities.
pub const VOLUME_CAPS: u64 = 2;
/// Request bitmap: model string.
pub const MODEL_INFO: u64 = 4;
/// Server capability: the server is Unix based.
pub const UNIX_BASED: u64 = 4;
/// Volume capability: names are case-sensitive.
pub const CASE_SENSITIVE: u64 = 2;

/// The model string Finder shows.
pub const MODEL: &str = "nasgw";

/// The AAPL response to request `data`, for a share whose names are case-sensitive or not;
/// `None` (no AAPL answered, as from a server without the extension) for anything but a
/// well-formed SERVER_QUERY. Pure; never panics.
pub fn answer(data: &[u8], case_sensitive: bool) -> Option<Vec<u8>> {
    if data.len() != 24 {
        return None;
    }
    let cmd = u32::from_le_bytes(data[0..4].try_into().ok()?);
    if cmd != SERVER_QUERY {
        return None;
    }
    let asked = u64::from_le_bytes(data[8..16].try_into().ok()?) & (SERVER_CAPS | VOLUME_CAPS | MODEL_INFO);
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&SERVER_QUERY.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&asked.to_le_bytes());
    if asked & SERVER_CAPS != 0 {
        out.extend_from_slice(&UNIX_BASED.to_le_bytes());
    }
    if asked & VOLUME_CAPS != 0 {
        out.extend_from_slice(&(if case_sensitive { CASE_SENSITIVE } else { 0 }).to_le_bytes());
    }
    if asked & MODEL_INFO != 0 {
        let model: Vec<u8> = MODEL.encode_utf16().flat_map(u16::to_le_bytes).collect();
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&(model.len() as u32).to_le_bytes());
        out.extend_from_slice(&model);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(bitmap: u64) -> Vec<u8> {
        let mut d = SERVER_QUERY.to_le_bytes().to_vec();
        d.extend_from_slice(&[0; 4]);
        d.extend_from_slice(&bitmap.to_le_bytes());
        d.extend_from_slice(&7u64.to_le_bytes());
        d
    }

    #[test]
    fn answers_what_macos_asks() {
        let a = answer(&query(7), false).unwrap();
        assert_eq!(u32::from_le_bytes(a[0..4].try_into().unwrap()), 1);
        assert_eq!(u64::from_le_bytes(a[8..16].try_into().unwrap()), 7);
        assert_eq!(u64::from_le_bytes(a[16..24].try_into().unwrap()), UNIX_BASED);
        assert_eq!(u64::from_le_bytes(a[24..32].try_into().unwrap()), 0);
        assert_eq!(u32::from_le_bytes(a[36..40].try_into().unwrap()), 10);
        assert_eq!(&a[40..], "nasgw".encode_utf16().flat_map(u16::to_le_bytes).collect::<Vec<_>>().as_slice());
        let v = answer(&query(VOLUME_CAPS), true).unwrap();
        assert_eq!(v.len(), 24);
        assert_eq!(u64::from_le_bytes(v[16..24].try_into().unwrap()), CASE_SENSITIVE);
        assert_eq!(answer(&query(7)[..23], false), None);
        let mut other = query(7);
        other[0] = 2;
        assert_eq!(answer(&other, false), None);
    }
}
