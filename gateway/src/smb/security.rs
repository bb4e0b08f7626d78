//! NT security descriptors (MS-DTYP 2.4.6), kept as far as nasgw honours them.
//!
//! Without one set by a client, a file's descriptor is made up from its Unix owner and group
//! (Samba's `S-1-22-1-uid` / `S-1-22-2-gid`) with a DACL granting Everyone full access: the
//! Unix mode bits decide. A client may set a descriptor (SET_INFO, security): nasgw validates
//! it and keeps the parts it set (owner, group, DACL; a SACL needs a privilege nobody holds
//! here) in the file's `user.nasgw.NTACL` extended attribute, and answers it back as set.
//!
//! What a kept DACL decides (a deliberately small design, not Windows' full access check):
//! an open of the file asking for DELETE (or delete-on-close) is refused with ACCESS_DENIED
//! when the DACL grants DELETE to none of the caller's SIDs (its Unix user and group SIDs and
//! Everyone); a MAXIMUM_ALLOWED open is granted without DELETE instead. Root is never held
//! back (smbd does not hold root back either; the seed's share forces its clients to one
//! user, which may be root). Other rights still
//! follow the Unix mode, ACEs are not inherited by new files, and the parent's
//! FILE_DELETE_CHILD is not consulted. (Samba keeps descriptors in `security.NTACL`, which
//! needs CAP_SYS_ADMIN on every protocol path; this one works through the volume's `user.`
//! namespace on FUSE and gfapi alike.)
//!
//! [`parse`] and [`encode`] are pure and never panic on any input (fuzzed).

use crate::smb::wire::status::NtStatus;
use crate::smb::wire::{Reader, Writer};
use crate::vfs::{Credentials, FileId, Namespace};

/// Where a client's descriptor is kept.
pub const XATTR_NAME: &[u8] = b"user.nasgw.NTACL";

/// AdditionalInformation / SecurityInformation bits.
pub mod part {
    /// OWNER_SECURITY_INFORMATION.
    pub const OWNER: u32 = 1;
    /// GROUP_SECURITY_INFORMATION.
    pub const GROUP: u32 = 2;
    /// DACL_SECURITY_INFORMATION.
    pub const DACL: u32 = 4;
    /// SACL_SECURITY_INFORMATION.
    pub const SACL: u32 = 8;
}

/// ACE types nasgw evaluates (others are kept but grant nothing).
const ACCESS_ALLOWED: u8 = 0;
const ACCESS_DENIED: u8 = 1;
/// ACE flag: inherit-only (applies to children, not to this object).
const INHERIT_ONLY: u8 = 0x08;
/// SE_DACL_PRESENT and SE_SELF_RELATIVE.
const DACL_PRESENT: u16 = 0x0004;
const SELF_RELATIVE: u16 = 0x8000;

/// One access control entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ace {
    /// AceType.
    pub kind: u8,
    /// AceFlags.
    pub flags: u8,
    /// AccessMask.
    pub mask: u32,
    /// The trustee's SID (wire form).
    pub sid: Vec<u8>,
}

/// A security descriptor's parts nasgw keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Descriptor {
    /// Owner SID (wire form).
    pub owner: Option<Vec<u8>>,
    /// Group SID (wire form).
    pub group: Option<Vec<u8>>,
    /// The DACL: `None` when absent or NULL (everyone may do anything).
    pub dacl: Option<Vec<Ace>>,
}

/// A SID in wire form: revision 1, authority, sub-authorities.
pub fn sid(authority: u8, subs: &[u32]) -> Vec<u8> {
    let mut w = Writer::with_capacity(8 + 4 * subs.len());
    w.u8(1).u8(subs.len() as u8).bytes(&[0, 0, 0, 0, 0, authority]);
    for s in subs {
        w.u32(*s);
    }
    w.buf
}

/// The SIDs a caller with these Unix credentials holds.
pub fn caller_sids(cred: &Credentials) -> Vec<Vec<u8>> {
    vec![sid(22, &[1, cred.uid]), sid(22, &[2, cred.gid]), sid(1, &[0])]
}

fn read_sid(buf: &[u8], off: usize) -> Result<Vec<u8>, NtStatus> {
    let bad = |_| NtStatus::INVALID_SECURITY_DESCR;
    let mut r = Reader::at(buf, off);
    let rev = r.u8().map_err(bad)?;
    let n = r.u8().map_err(bad)? as usize;
    if rev != 1 || n > 15 {
        return Err(NtStatus::INVALID_SID);
    }
    Ok(buf.get(off..off + 8 + 4 * n).ok_or(NtStatus::INVALID_SECURITY_DESCR)?.to_vec())
}

fn read_acl(buf: &[u8], off: usize) -> Result<Vec<Ace>, NtStatus> {
    let bad = |_| NtStatus::INVALID_ACL;
    let mut r = Reader::at(buf, off);
    let rev = r.u8().map_err(bad)?;
    r.u8().map_err(bad)?;
    let size = r.u16().map_err(bad)? as usize;
    let count = r.u16().map_err(bad)? as usize;
    r.u16().map_err(bad)?;
    if !(2..=4).contains(&rev) || size < 8 || off + size > buf.len() {
        return Err(NtStatus::INVALID_ACL);
    }
    let acl = &buf[off..off + size];
    let mut aces = Vec::with_capacity(count.min(64));
    let mut at = 8usize;
    for _ in 0..count {
        let mut r = Reader::at(acl, at);
        let kind = r.u8().map_err(bad)?;
        let flags = r.u8().map_err(bad)?;
        let len = r.u16().map_err(bad)? as usize;
        let mask = r.u32().map_err(bad)?;
        if len < 8 + 8 || at + len > acl.len() {
            return Err(NtStatus::INVALID_ACL);
        }
        let sid = read_sid(&acl[..at + len], at + 8).map_err(|_| NtStatus::INVALID_ACL)?;
        aces.push(Ace { kind, flags, mask, sid });
        at += len;
    }
    Ok(aces)
}

/// Decodes a self-relative security descriptor; returns it and which parts it carries.
pub fn parse(buf: &[u8]) -> Result<(Descriptor, u32), NtStatus> {
    let bad = |_| NtStatus::INVALID_SECURITY_DESCR;
    let mut r = Reader::new(buf);
    if r.u8().map_err(bad)? != 1 {
        return Err(NtStatus::INVALID_SECURITY_DESCR);
    }
    r.u8().map_err(bad)?;
    let control = r.u16().map_err(bad)?;
    let [owner, group, _sacl, dacl] = [0; 4].map(|_| r.u32().unwrap_or(0) as usize);
    if buf.len() < 20 || control & SELF_RELATIVE == 0 {
        return Err(NtStatus::INVALID_SECURITY_DESCR);
    }
    let mut d = Descriptor::default();
    let mut parts = 0;
    if owner != 0 {
        d.owner = Some(read_sid(buf, owner)?);
        parts |= part::OWNER;
    }
    if group != 0 {
        d.group = Some(read_sid(buf, group)?);
        parts |= part::GROUP;
    }
    if control & DACL_PRESENT != 0 {
        parts |= part::DACL;
        if dacl != 0 {
            d.dacl = Some(read_acl(buf, dacl)?);
        }
    }
    Ok((d, parts))
}

/// Encodes the `parts` of `d` as a self-relative descriptor.
pub fn encode(d: &Descriptor, parts: u32) -> Vec<u8> {
    let mut w = Writer::with_capacity(128);
    let dacl = parts & part::DACL != 0;
    // DACL_PRESENT always, as nasgw has answered since its first release (a reader asking
    // for no DACL ignores it).
    w.u8(1).u8(0).u16(SELF_RELATIVE | DACL_PRESENT).u32(0).u32(0).u32(0).u32(0);
    if let (true, Some(o)) = (parts & part::OWNER != 0, &d.owner) {
        w.put_u32(4, w.len() as u32);
        w.bytes(o);
    }
    if let (true, Some(g)) = (parts & part::GROUP != 0, &d.group) {
        w.put_u32(8, w.len() as u32);
        w.bytes(g);
    }
    if let (true, Some(aces)) = (dacl, &d.dacl) {
        w.put_u32(16, w.len() as u32);
        let size = 8 + aces.iter().map(|a| 8 + a.sid.len()).sum::<usize>();
        w.u8(2).u8(0).u16(size as u16).u16(aces.len() as u16).u16(0);
        for a in aces {
            w.u8(a.kind).u8(a.flags).u16((8 + a.sid.len()) as u16).u32(a.mask).bytes(&a.sid);
        }
    }
    w.buf
}

/// The descriptor nasgw shows for a file no client gave one: Unix owner and group, Everyone
/// full access.
pub fn made_up(uid: u32, gid: u32) -> Descriptor {
    Descriptor {
        owner: Some(sid(22, &[1, uid])),
        group: Some(sid(22, &[2, gid])),
        dacl: Some(vec![Ace { kind: ACCESS_ALLOWED, flags: 0, mask: 0x001F_01FF, sid: sid(1, &[0]) }]),
    }
}

/// `stored` with the `parts` of `new` put in.
pub fn merge(mut stored: Descriptor, new: Descriptor, parts: u32) -> Descriptor {
    if parts & part::OWNER != 0 {
        stored.owner = new.owner;
    }
    if parts & part::GROUP != 0 {
        stored.group = new.group;
    }
    if parts & part::DACL != 0 {
        stored.dacl = new.dacl;
    }
    stored
}

/// Whether the DACL of `d` grants every bit of `want` to a holder of `sids` (in ACE order: a
/// deny for a bit not yet granted refuses it). A NULL DACL grants everything.
pub fn grants(d: &Descriptor, sids: &[Vec<u8>], want: u32) -> bool {
    let Some(aces) = &d.dacl else { return true };
    let mut granted = 0u32;
    for a in aces.iter().filter(|a| a.flags & INHERIT_ONLY == 0 && sids.contains(&a.sid)) {
        match a.kind {
            ACCESS_ALLOWED => granted |= a.mask,
            ACCESS_DENIED if a.mask & want & !granted != 0 => return false,
            _ => {}
        }
        if granted & want == want {
            return true;
        }
    }
    false
}

/// The descriptor a client set on `id`, if any (an unreadable one counts as none).
pub async fn load(ns: &Namespace, cred: &Credentials, id: FileId) -> Option<Descriptor> {
    let raw = ns.get_xattr(cred, id, XATTR_NAME).await.ok()??;
    parse(&raw).ok().map(|(d, _)| d)
}

/// Keeps `d` as the descriptor of `id`.
pub async fn store(ns: &Namespace, cred: &Credentials, id: FileId, d: &Descriptor) -> Result<(), NtStatus> {
    let all = part::OWNER | part::GROUP | part::DACL;
    ns.set_xattr(cred, id, XATTR_NAME, &encode(d, all)).await.map_err(NtStatus::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> Vec<Vec<u8>> {
        caller_sids(&Credentials::new(1000, 100))
    }

    #[test]
    fn a_descriptor_round_trips_part_by_part() {
        let d = made_up(1000, 100);
        let all = part::OWNER | part::GROUP | part::DACL;
        assert_eq!(parse(&encode(&d, all)).unwrap(), (d.clone(), all));
        let (owner_only, parts) = parse(&encode(&d, part::OWNER)).unwrap();
        assert_eq!(parts & (part::OWNER | part::GROUP), part::OWNER);
        assert_eq!(owner_only.owner, d.owner);
        assert_eq!(owner_only.dacl, None);
        // The made-up descriptor is what nasgw answered before descriptors were kept.
        assert_eq!(encode(&d, all).len(), 20 + 16 + 16 + 28);
    }

    #[test]
    fn delete_is_granted_only_by_an_ace_for_the_caller() {
        let owner = sid(22, &[1, 1000]);
        let allow = |mask, sid: &Vec<u8>| Ace { kind: ACCESS_ALLOWED, flags: 0, mask, sid: sid.clone() };
        let no_delete = Descriptor { dacl: Some(vec![allow(0x1e01bf, &owner)]), ..Default::default() };
        assert!(!grants(&no_delete, &me(), 0x1_0000));
        assert!(grants(&no_delete, &me(), 0x1));
        let with_delete = Descriptor { dacl: Some(vec![allow(0x1f01ff, &owner)]), ..Default::default() };
        assert!(grants(&with_delete, &me(), 0x1_0000));
        let someone_else = Descriptor { dacl: Some(vec![allow(0x1f01ff, &sid(22, &[1, 7]))]), ..Default::default() };
        assert!(!grants(&someone_else, &me(), 0x1_0000));
        let deny_first = Descriptor {
            dacl: Some(vec![
                Ace { kind: ACCESS_DENIED, flags: 0, mask: 0x1_0000, sid: sid(1, &[0]) },
                allow(0x1f01ff, &owner),
            ]),
            ..Default::default()
        };
        assert!(!grants(&deny_first, &me(), 0x1_0000));
        let inherit_only = Descriptor {
            dacl: Some(vec![Ace { kind: ACCESS_ALLOWED, flags: INHERIT_ONLY, mask: 0x1f01ff, sid: owner.clone() }]),
            ..Default::default()
        };
        assert!(!grants(&inherit_only, &me(), 0x1_0000));
        assert!(grants(&Descriptor::default(), &me(), 0x1_0000), "a NULL DACL grants everything");
    }

    #[test]
    fn malformed_descriptors_are_refused() {
        assert_eq!(parse(&[]), Err(NtStatus::INVALID_SECURITY_DESCR));
        let mut b = encode(&made_up(0, 0), part::OWNER | part::DACL);
        b[4] = 0xf0; // owner offset past the end
        assert!(parse(&b).is_err());
        let mut b = encode(&made_up(0, 0), part::DACL);
        let n = b.len();
        b[22] = 0xff; // ACL size past the end
        assert!(parse(&b).is_err());
        b.truncate(n - 3);
        assert!(parse(&b).is_err());
    }
}
