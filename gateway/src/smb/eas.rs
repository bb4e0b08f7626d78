//! Extended attributes (EAs) as SMB clients see them (MS-FSCC 2.4.15 FILE_FULL_EA_INFORMATION),
//! stored as Samba stores them: EA `NAME` is the extended attribute `user.NAME` of the file,
//! so a volume moved from Samba keeps its EAs and local programs see them (`getfattr`).
//! The `user.` attributes nasgw and Samba keep for themselves (`user.DOSATTRIB`, streams in
//! `user.DosStream.*`, Samba's `user.SAMBA_PAI`) are not EAs.
//!
//! - Names are ASCII, 1-255 bytes, without control characters or `"*+,/:;<=>?[\]|`
//!   (INVALID_EA_NAME otherwise), and match ignoring ASCII case (an EA set as `eaone` replaces
//!   `EAONE` and keeps the stored name).
//! - Setting an EA with an empty value removes it.
//! - [`parse`] and [`encode`] are pure and never panic on any input (fuzzed).

use crate::smb::wire::status::NtStatus;
use crate::smb::wire::{Reader, Writer};
use crate::vfs::{Credentials, FileId, Namespace, VfsError};

/// What every EA's attribute name starts with.
pub const PREFIX: &str = "user.";

/// One extended attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ea {
    /// Its name (ASCII, without the `user.` prefix).
    pub name: String,
    /// Its value; empty in a set request means "remove".
    pub value: Vec<u8>,
    /// Flags (FILE_NEED_EA 0x80), kept as sent.
    pub flags: u8,
}

/// Whether `name` is a valid EA name (MS-FSCC 2.4.15; what Windows and Samba refuse).
pub fn valid_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= 255 - PREFIX.len()
        && name.iter().all(|&c| c.is_ascii() && c >= 0x20 && !b"\"*+,/:;<=>?[\\]|".contains(&c))
}

/// Whether the attribute `xattr` holds a client's EA (not one of the attributes nasgw or
/// Samba keep for themselves); returns the EA's name.
pub fn ea_of(xattr: &[u8]) -> Option<&str> {
    let name = std::str::from_utf8(xattr).ok()?.strip_prefix(PREFIX)?;
    let private = name == "DOSATTRIB"
        || name == "SAMBA_PAI"
        || name.starts_with("DosStream.")
        || name.starts_with("nasgw.")
        || !valid_name(name.as_bytes());
    (!private).then_some(name)
}

/// Decodes a FILE_FULL_EA_INFORMATION list (an SMB2 CREATE `ExtA` context, a SET_INFO
/// buffer). A malformed list is INVALID_PARAMETER, a bad name INVALID_EA_NAME.
pub fn parse(buf: &[u8]) -> Result<Vec<Ea>, NtStatus> {
    let bad = |_| NtStatus::INVALID_PARAMETER;
    let mut out = Vec::new();
    let mut off = 0usize;
    loop {
        let entry = buf.get(off..).ok_or(NtStatus::INVALID_PARAMETER)?;
        let mut r = Reader::new(entry);
        let next = r.u32().map_err(bad)? as usize;
        let flags = r.u8().map_err(bad)?;
        let name_len = r.u8().map_err(bad)? as usize;
        let value_len = r.u16().map_err(bad)? as usize;
        let name = r.bytes(name_len).map_err(bad)?;
        if r.u8().map_err(bad)? != 0 {
            return Err(NtStatus::INVALID_PARAMETER);
        }
        let value = r.bytes(value_len).map_err(bad)?;
        if !valid_name(name) {
            return Err(NtStatus::INVALID_EA_NAME);
        }
        out.push(Ea { name: String::from_utf8_lossy(name).into_owned(), value: value.to_vec(), flags });
        if next == 0 {
            return Ok(out);
        }
        // Entries are 4-byte aligned and never overlap the one before.
        if next % 4 != 0 || next < 8 + name_len + 1 + value_len {
            return Err(NtStatus::INVALID_PARAMETER);
        }
        off = off.checked_add(next).ok_or(NtStatus::INVALID_PARAMETER)?;
    }
}

/// The size of `eas` as one FILE_FULL_EA_INFORMATION list (FileEaInformation's EaSize).
pub fn list_size(eas: &[Ea]) -> u32 {
    encode(eas, usize::MAX).0.len() as u32
}

/// Encodes `eas` as a FILE_FULL_EA_INFORMATION list of whole entries fitting in `max` bytes;
/// returns it and whether every entry fitted.
pub fn encode(eas: &[Ea], max: usize) -> (Vec<u8>, bool) {
    let mut w = Writer::with_capacity(64);
    let mut last: Option<usize> = None;
    for ea in eas {
        let start = w.len().next_multiple_of(4);
        let len = 8 + ea.name.len() + 1 + ea.value.len();
        if start + len > max {
            return (w.buf, false);
        }
        w.align(4);
        if let Some(prev) = last {
            w.put_u32(prev, (start - prev) as u32);
        }
        w.u32(0).u8(ea.flags).u8(ea.name.len() as u8).u16(ea.value.len() as u16);
        w.bytes(ea.name.as_bytes()).u8(0).bytes(&ea.value);
        last = Some(start);
    }
    (w.buf, true)
}

/// The EAs of `id`, in the order the volume lists them.
pub async fn load(ns: &Namespace, cred: &Credentials, id: FileId) -> Result<Vec<Ea>, NtStatus> {
    let mut out = Vec::new();
    for x in ns.list_xattrs(cred, id).await? {
        let Some(name) = ea_of(&x) else { continue };
        // Removed meanwhile: not an EA any more.
        if let Some(value) = ns.get_xattr(cred, id, &x).await? {
            out.push(Ea { name: name.to_string(), value, flags: 0 });
        }
    }
    Ok(out)
}

/// Applies `eas` to `id`: sets each (keeping the stored case of a name that exists in another
/// case), removes those with an empty value. A value longer than an EA can hold (64 KiB) is
/// EA_TOO_LARGE; what the volume refuses for lack of room is DISK_FULL.
pub async fn store(ns: &Namespace, cred: &Credentials, id: FileId, eas: &[Ea]) -> Result<(), NtStatus> {
    if eas.iter().any(|e| e.value.len() > u16::MAX as usize) {
        return Err(NtStatus::EA_TOO_LARGE);
    }
    let existing: Vec<String> =
        ns.list_xattrs(cred, id).await?.iter().filter_map(|x| ea_of(x).map(str::to_string)).collect();
    for ea in eas {
        let name = existing.iter().find(|n| n.eq_ignore_ascii_case(&ea.name)).unwrap_or(&ea.name);
        let xattr = format!("{PREFIX}{name}");
        if ea.value.is_empty() {
            match ns.remove_xattr(cred, id, xattr.as_bytes()).await {
                Ok(()) | Err(VfsError::NotFound) => {}
                Err(e) => return Err(e.into()),
            }
        } else {
            ns.set_xattr(cred, id, xattr.as_bytes(), &ea.value).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ea(name: &str, value: &[u8]) -> Ea {
        Ea { name: name.into(), value: value.to_vec(), flags: 0 }
    }

    #[test]
    fn a_list_round_trips_with_aligned_entries() {
        let eas = vec![ea("EAONE", b"VALUE1"), ea("SECONDEA", b"ValueTwo"), ea("X", b"")];
        let (buf, all) = encode(&eas, usize::MAX);
        assert!(all);
        // 8 + 5 + 1 + 6 = 20 (aligned 20), 8 + 8 + 1 + 8 = 25 (aligned 28), 8 + 1 + 1 = 10.
        assert_eq!(buf.len(), 20 + 28 + 10);
        assert_eq!(&buf[..4], &20u32.to_le_bytes());
        assert_eq!(&buf[20..24], &28u32.to_le_bytes());
        assert_eq!(&buf[48..52], &0u32.to_le_bytes());
        assert_eq!(parse(&buf).unwrap(), eas);
        assert_eq!(list_size(&eas), 58);
    }

    #[test]
    fn encoding_stops_at_the_last_whole_entry_that_fits() {
        let eas = vec![ea("A", b"1"), ea("B", b"2")];
        let (buf, all) = encode(&eas, 15);
        assert!(!all);
        assert_eq!(buf.len(), 11);
        assert_eq!(&buf[..4], &0u32.to_le_bytes(), "the last entry returned ends the list");
        assert_eq!(encode(&eas, 5), (Vec::new(), false));
    }

    #[test]
    fn bad_lists_and_names_are_refused() {
        assert_eq!(parse(&[]), Err(NtStatus::INVALID_PARAMETER));
        let (mut buf, _) = encode(&[ea("A", b"1")], usize::MAX);
        buf[5] = 200; // name longer than the buffer
        assert_eq!(parse(&buf), Err(NtStatus::INVALID_PARAMETER));
        let (buf, _) = encode(&[ea("A:B", b"1")], usize::MAX);
        assert_eq!(parse(&buf), Err(NtStatus::INVALID_EA_NAME));
        let (mut buf, _) = encode(&[ea("A", b"1"), ea("B", b"2")], usize::MAX);
        buf[0] = 2; // NextEntryOffset into its own entry
        assert_eq!(parse(&buf), Err(NtStatus::INVALID_PARAMETER));
        buf[0] = 0xfc;
        buf[1] = 0xff;
        buf[2] = 0xff;
        buf[3] = 0xff; // past the end
        assert_eq!(parse(&buf), Err(NtStatus::INVALID_PARAMETER));
    }

    #[test]
    fn private_attributes_are_not_eas() {
        assert_eq!(ea_of(b"user.EAONE"), Some("EAONE"));
        for private in [&b"user.DOSATTRIB"[..], b"user.DosStream.s:$DATA", b"user.SAMBA_PAI", b"trusted.x", b"user."] {
            assert_eq!(ea_of(private), None, "{}", String::from_utf8_lossy(private));
        }
    }
}
