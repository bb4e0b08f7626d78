//! Conversions between the namespace's attribute types and NFSv3's wire types.

use nfs3_types::nfs3::{
    fattr3, ftype3, nfsstat3, nfstime3, post_op_attr, pre_op_attr, specdata3, wcc_attr, wcc_data, Nfs3Option,
};

use super::args::{Sattr, SetTime as WireTime};
use crate::vfs::{Attr, FileType, SetAttr, SetTime, Timestamp, VfsError};

/// NFS time from a namespace time (clamped to the 32-bit seconds NFSv3 carries).
pub fn time(t: Timestamp) -> nfstime3 {
    nfstime3 { seconds: t.secs.clamp(0, i64::from(u32::MAX)) as u32, nseconds: t.nanos }
}

/// `fattr3` of a file.
pub fn fattr(a: &Attr) -> fattr3 {
    fattr3 {
        type_: match a.ftype {
            FileType::Regular => ftype3::NF3REG,
            FileType::Directory => ftype3::NF3DIR,
            FileType::Symlink => ftype3::NF3LNK,
            FileType::BlockDevice => ftype3::NF3BLK,
            FileType::CharDevice => ftype3::NF3CHR,
            FileType::Fifo => ftype3::NF3FIFO,
            FileType::Socket => ftype3::NF3SOCK,
        },
        mode: a.mode,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        size: a.size,
        used: a.used,
        rdev: specdata3 { specdata1: a.rdev.0, specdata2: a.rdev.1 },
        fsid: a.fsid,
        fileid: a.fileid,
        atime: time(a.atime),
        mtime: time(a.mtime),
        ctime: time(a.ctime),
    }
}

/// Appends the XDR of [`fattr`]`(a)` to `out` in one go (READDIRPLUS writes one per entry).
pub fn put_fattr(out: &mut Vec<u8>, a: &Attr) {
    let f = fattr(a);
    let mut b = [0u8; 84];
    let words: [u32; 5] = [f.type_ as u32, f.mode, f.nlink, f.uid, f.gid];
    for (i, w) in words.iter().enumerate() {
        b[i * 4..i * 4 + 4].copy_from_slice(&w.to_be_bytes());
    }
    b[20..28].copy_from_slice(&f.size.to_be_bytes());
    b[28..36].copy_from_slice(&f.used.to_be_bytes());
    b[36..40].copy_from_slice(&f.rdev.specdata1.to_be_bytes());
    b[40..44].copy_from_slice(&f.rdev.specdata2.to_be_bytes());
    b[44..52].copy_from_slice(&f.fsid.to_be_bytes());
    b[52..60].copy_from_slice(&f.fileid.to_be_bytes());
    for (i, t) in [f.atime, f.mtime, f.ctime].iter().enumerate() {
        b[60 + i * 8..64 + i * 8].copy_from_slice(&t.seconds.to_be_bytes());
        b[64 + i * 8..68 + i * 8].copy_from_slice(&t.nseconds.to_be_bytes());
    }
    out.extend_from_slice(&b);
}

/// `post_op_attr` from an optional attribute.
pub fn post_op(a: Option<&Attr>) -> post_op_attr {
    a.map_or(Nfs3Option::None, |a| Nfs3Option::Some(fattr(a)))
}

/// `pre_op_attr` from an optional attribute.
pub fn pre_op(a: Option<&Attr>) -> pre_op_attr {
    a.map_or(Nfs3Option::None, |a| {
        Nfs3Option::Some(wcc_attr { size: a.size, mtime: time(a.mtime), ctime: time(a.ctime) })
    })
}

/// `wcc_data` from before/after attributes.
pub fn wcc(before: Option<&Attr>, after: Option<&Attr>) -> wcc_data {
    wcc_data { before: pre_op(before), after: post_op(after) }
}

/// The namespace's attribute change for a wire `sattr3` (the mode is kept: callers decide).
pub fn set_attr(s: &Sattr) -> SetAttr {
    let t = |w: WireTime| match w {
        WireTime::Keep => SetTime::DontChange,
        WireTime::Server => SetTime::ServerNow,
        WireTime::Client(secs, nanos) => {
            SetTime::Client(Timestamp { secs: i64::from(secs), nanos: nanos.min(999_999_999) })
        }
    };
    SetAttr {
        mode: s.mode.map(|m| m & 0o7777),
        uid: s.uid,
        gid: s.gid,
        size: s.size,
        atime: t(s.atime),
        mtime: t(s.mtime),
    }
}

/// `nfsstat3` of a namespace error.
pub fn status(e: VfsError) -> nfsstat3 {
    match e.nfs3_status() {
        1 => nfsstat3::NFS3ERR_PERM,
        2 => nfsstat3::NFS3ERR_NOENT,
        13 => nfsstat3::NFS3ERR_ACCES,
        17 => nfsstat3::NFS3ERR_EXIST,
        18 => nfsstat3::NFS3ERR_XDEV,
        20 => nfsstat3::NFS3ERR_NOTDIR,
        21 => nfsstat3::NFS3ERR_ISDIR,
        22 => nfsstat3::NFS3ERR_INVAL,
        27 => nfsstat3::NFS3ERR_FBIG,
        28 => nfsstat3::NFS3ERR_NOSPC,
        30 => nfsstat3::NFS3ERR_ROFS,
        31 => nfsstat3::NFS3ERR_MLINK,
        63 => nfsstat3::NFS3ERR_NAMETOOLONG,
        66 => nfsstat3::NFS3ERR_NOTEMPTY,
        69 => nfsstat3::NFS3ERR_DQUOT,
        70 => nfsstat3::NFS3ERR_STALE,
        10001 => nfsstat3::NFS3ERR_BADHANDLE,
        10003 => nfsstat3::NFS3ERR_BAD_COOKIE,
        10004 => nfsstat3::NFS3ERR_NOTSUPP,
        _ => nfsstat3::NFS3ERR_IO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fattr_written_by_hand_is_what_nfs3_types_packs() {
        use nfs3_types::xdr_codec::Pack;
        let t = |s| Timestamp { secs: s, nanos: 999_999_999 };
        for (ftype, rdev) in [(FileType::Regular, (0, 0)), (FileType::CharDevice, (4, 64)), (FileType::Socket, (1, 2))]
        {
            let a = Attr {
                ftype,
                mode: 0o4755,
                nlink: 3,
                uid: 1000,
                gid: 4_000_000_000,
                size: 1 << 40,
                used: 12288,
                rdev,
                fsid: 0x0102_0304_0506_0708,
                fileid: u64::MAX,
                atime: t(1),
                mtime: t(1 << 40),
                ctime: t(-5),
                btime: None,
            };
            let (mut mine, mut theirs) = (vec![7], vec![7]);
            put_fattr(&mut mine, &a);
            fattr(&a).pack(&mut theirs).unwrap();
            assert_eq!(mine, theirs);
        }
    }

    #[test]
    fn every_error_maps_to_its_nfs_code() {
        for e in [
            VfsError::NotFound,
            VfsError::Stale,
            VfsError::BadCookie,
            VfsError::Escape,
            VfsError::Io(5),
            VfsError::NotEmpty,
        ] {
            assert_eq!(status(e) as u32, e.nfs3_status(), "{e:?}");
        }
    }
}
