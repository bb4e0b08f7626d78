//! DOS attributes and creation time, stored on the file as Samba stores them: the extended
//! attribute `user.DOSATTRIB`, an NDR blob (Samba's `xattr_DOSATTRIB`), so a volume moved from
//! Samba keeps its HIDDEN/SYSTEM/READONLY/ARCHIVE bits and creation times, and one moved to
//! Samba keeps ours.
//!
//! Layout (little-endian NDR, alignment counted from the blob's start): a NUL-terminated ASCII
//! string (`"0x20"` in old versions, empty since Samba 4.9), padded to 2; `u16` version; the
//! union's `u16` discriminant (the version again), padded to 4; then the version's fields
//! (`u32` at 4, `udlong` at 4, `NTTIME` at 8):
//!
//! | version | fields |
//! |---|---|
//! | 1 | attrib, ea_size, size, alloc_size, create_time, change_time |
//! | 2 | flags, attrib, ea_size, size, alloc_size, create_time, change_time, write_time, name |
//! | 3 | valid_flags, attrib, ea_size, size, alloc_size, create_time, change_time |
//! | 4 | valid_flags, attrib, itime, create_time |
//! | 5 | valid_flags, attrib, create_time (what Samba 4.17 writes, and we write) |
//!
//! A blob holding only the string is the oldest form (`"0x22"`: the attributes in hex).
//! Decoding is pure and total: garbage gives `None` (the file then has the attributes its mode
//! implies), never a panic.

/// The attribute's name.
pub const XATTR_NAME: &[u8] = b"user.DOSATTRIB";

/// `valid_flags`: the attributes are valid.
const VALID_ATTRIB: u32 = 0x1;
/// `valid_flags`: the creation time is valid.
const VALID_CREATE_TIME: u32 = 0x10;

/// What a file's `user.DOSATTRIB` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DosInfo {
    /// FILE_ATTRIBUTE_* bits as stored (DIRECTORY included for directories, as Samba stores it).
    pub attributes: Option<u32>,
    /// Creation time as a FILETIME, when stored (never 0).
    pub create_time: Option<u64>,
}

/// Little-endian NDR reader with alignment relative to the blob's start.
struct Ndr<'a> {
    b: &'a [u8],
    at: usize,
}

impl Ndr<'_> {
    fn align(&mut self, n: usize) -> Option<()> {
        self.at = self.at.checked_add(n - 1)? / n * n;
        (self.at <= self.b.len()).then_some(())
    }

    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let end = self.at.checked_add(N)?;
        let v = self.b.get(self.at..end)?.try_into().ok()?;
        self.at = end;
        Some(v)
    }

    fn u16(&mut self) -> Option<u16> {
        self.align(2)?;
        self.take::<2>().map(u16::from_le_bytes)
    }

    fn u32(&mut self) -> Option<u32> {
        self.align(4)?;
        self.take::<4>().map(u32::from_le_bytes)
    }

    /// `udlong`: two u32, 4-aligned.
    fn udlong(&mut self) -> Option<u64> {
        let lo = self.u32()? as u64;
        let hi = self.u32()? as u64;
        Some(lo | hi << 32)
    }

    /// `NTTIME` (hyper): 8-aligned.
    fn nttime(&mut self) -> Option<u64> {
        self.align(8)?;
        self.take::<8>().map(u64::from_le_bytes)
    }
}

fn hex_attributes(s: &[u8]) -> Option<u32> {
    let s = std::str::from_utf8(s).ok()?;
    let h = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X"))?;
    u32::from_str_radix(h, 16).ok()
}

/// Decodes a `user.DOSATTRIB` value; `None` when it is not one.
pub fn decode(blob: &[u8]) -> Option<DosInfo> {
    let nul = blob.iter().position(|&b| b == 0)?;
    let hex = &blob[..nul];
    let mut r = Ndr { b: blob, at: nul + 1 };
    if r.align(2).is_none() || blob.len() - r.at < 2 {
        // Only the string: the oldest form.
        return Some(DosInfo { attributes: Some(hex_attributes(hex)?), create_time: None });
    }
    let version = r.u16()?;
    let discriminant = r.u16()?;
    if discriminant != version {
        return None;
    }
    r.align(4)?;
    let nonzero = |t: u64| (t != 0).then_some(t);
    let info = match version {
        1 => {
            let attributes = r.u32()?;
            let _ea_size = r.u32()?;
            let _size = r.udlong()?;
            let _alloc = r.udlong()?;
            let create = r.nttime()?;
            DosInfo { attributes: Some(attributes), create_time: nonzero(create) }
        }
        2 => {
            let _flags = r.u32()?;
            let attributes = r.u32()?;
            let _ea_size = r.u32()?;
            let _size = r.udlong()?;
            let _alloc = r.udlong()?;
            let create = r.nttime()?;
            DosInfo { attributes: Some(attributes), create_time: nonzero(create) }
        }
        3..=5 => {
            let valid = r.u32()?;
            let attributes = r.u32()?;
            if version == 3 {
                let _ea_size = r.u32()?;
                let _size = r.udlong()?;
                let _alloc = r.udlong()?;
            } else if version == 4 {
                let _itime = r.nttime()?;
            }
            let create = r.nttime()?;
            DosInfo {
                attributes: (valid & VALID_ATTRIB != 0).then_some(attributes),
                create_time: if valid & VALID_CREATE_TIME != 0 { nonzero(create) } else { None },
            }
        }
        0xFFFF => DosInfo { attributes: Some(hex_attributes(hex)?), create_time: None },
        _ => return None,
    };
    Some(info)
}

/// Encodes `info` as Samba 4.17 does (version 5, empty string).
pub fn encode(info: &DosInfo) -> Vec<u8> {
    let mut valid = 0;
    if info.attributes.is_some() {
        valid |= VALID_ATTRIB;
    }
    if info.create_time.is_some() {
        valid |= VALID_CREATE_TIME;
    }
    let mut v = Vec::with_capacity(24);
    v.extend_from_slice(&[0, 0]); // "" and its padding
    v.extend_from_slice(&5u16.to_le_bytes());
    v.extend_from_slice(&5u16.to_le_bytes());
    v.extend_from_slice(&[0, 0]); // to 4
    v.extend_from_slice(&valid.to_le_bytes());
    v.extend_from_slice(&info.attributes.unwrap_or(0).to_le_bytes());
    v.extend_from_slice(&info.create_time.unwrap_or(0).to_le_bytes());
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    #[test]
    fn reads_and_writes_what_samba_4_17_writes() {
        // smbd 4.17 with streams_xattr, after `setmode f.txt +hsr` (getfattr -e hex).
        let blob = hex("00000500050000001100000027000000f6f704a85785dd01");
        let info = decode(&blob).unwrap();
        assert_eq!(info, DosInfo { attributes: Some(0x27), create_time: Some(0x01dd_8557_a804_f7f6) });
        assert_eq!(encode(&info), blob);
        // A directory with HIDDEN.
        let dir = decode(&hex("000005000500000011000000120000002d4f06a85785dd01")).unwrap();
        assert_eq!(dir.attributes, Some(0x12));
    }

    #[test]
    fn reads_older_versions() {
        // Version 3 as Samba 4.0-4.8 wrote it: "0x20" first.
        let mut v3 = b"0x20\0\0".to_vec();
        v3.extend_from_slice(&3u16.to_le_bytes());
        v3.extend_from_slice(&3u16.to_le_bytes());
        v3.extend_from_slice(&[0, 0]); // the union at 4 (10 -> 12)
        v3.extend_from_slice(&0x11u32.to_le_bytes());
        v3.extend_from_slice(&0x20u32.to_le_bytes());
        v3.extend_from_slice(&[0; 4 + 8 + 8]); // ea_size, size, alloc_size: 20..40
        v3.extend_from_slice(&77u64.to_le_bytes());
        v3.extend_from_slice(&0u64.to_le_bytes());
        assert_eq!(decode(&v3), Some(DosInfo { attributes: Some(0x20), create_time: Some(77) }));
        // Version 4 (ksmbd, Samba 4.9-4.10): itime before the creation time.
        let mut v4 = vec![0, 0];
        v4.extend_from_slice(&4u16.to_le_bytes());
        v4.extend_from_slice(&4u16.to_le_bytes());
        v4.extend_from_slice(&[0, 0]);
        v4.extend_from_slice(&0x51u32.to_le_bytes());
        v4.extend_from_slice(&0x2u32.to_le_bytes());
        v4.extend_from_slice(&5u64.to_le_bytes());
        v4.extend_from_slice(&9u64.to_le_bytes());
        assert_eq!(decode(&v4), Some(DosInfo { attributes: Some(2), create_time: Some(9) }));
        // The oldest form: only the hex string.
        assert_eq!(decode(b"0x22\0"), Some(DosInfo { attributes: Some(0x22), create_time: None }));
        // Valid flags say what is there.
        let only_time = encode(&DosInfo { attributes: None, create_time: Some(3) });
        assert_eq!(decode(&only_time), Some(DosInfo { attributes: None, create_time: Some(3) }));
    }

    #[test]
    fn garbage_is_refused_without_panicking() {
        for bad in [&b""[..], b"\0", b"no nul", b"\0\0\x05\0\x04\0\0\0", b"\0\0\x09\0\x09\0\0\0\0\0\0\0", b"0xZZ\0"] {
            assert_eq!(decode(bad), None, "{bad:?}");
        }
        let mut x = 0x1234_5678_9abc_def0u64;
        for len in 0..64 {
            let blob: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let _ = decode(&blob);
        }
    }
}
