//! Decoding of NFSv3 (RFC 1813) and MOUNT v3 procedure arguments: one pure function from the
//! argument bytes of a call to a typed value borrowing from them, with every length bounded.

use super::xdr::{XdrError, XdrReader};

/// Largest READ/WRITE payload (advertised as rtmax/wtmax).
pub const MAX_IO: u32 = 1024 * 1024;
/// Largest file handle (NFS3_FHSIZE).
pub const MAX_FH: usize = 64;
/// Longest name accepted on the wire (longer than any file system's; the namespace answers
/// NAMETOOLONG for what its file system refuses).
pub const MAX_NAME: usize = 1024;
/// Longest symlink target or mount path.
pub const MAX_PATH: usize = 4096;

/// NFSv3 procedure numbers.
#[allow(missing_docs)]
pub mod procs {
    pub const NULL: u32 = 0;
    pub const GETATTR: u32 = 1;
    pub const SETATTR: u32 = 2;
    pub const LOOKUP: u32 = 3;
    pub const ACCESS: u32 = 4;
    pub const READLINK: u32 = 5;
    pub const READ: u32 = 6;
    pub const WRITE: u32 = 7;
    pub const CREATE: u32 = 8;
    pub const MKDIR: u32 = 9;
    pub const SYMLINK: u32 = 10;
    pub const MKNOD: u32 = 11;
    pub const REMOVE: u32 = 12;
    pub const RMDIR: u32 = 13;
    pub const RENAME: u32 = 14;
    pub const LINK: u32 = 15;
    pub const READDIR: u32 = 16;
    pub const READDIRPLUS: u32 = 17;
    pub const FSSTAT: u32 = 18;
    pub const FSINFO: u32 = 19;
    pub const PATHCONF: u32 = 20;
    pub const COMMIT: u32 = 21;
}

/// A time to set (`set_atime` / `set_mtime`).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum SetTime {
    /// DONT_CHANGE.
    #[default]
    Keep,
    /// SET_TO_SERVER_TIME.
    Server,
    /// SET_TO_CLIENT_TIME (seconds, nanoseconds).
    Client(u32, u32),
}

/// `sattr3`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Sattr {
    /// New mode bits.
    pub mode: Option<u32>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New size.
    pub size: Option<u64>,
    /// New access time.
    pub atime: SetTime,
    /// New modification time.
    pub mtime: SetTime,
}

/// `createhow3`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum CreateMode {
    /// UNCHECKED.
    Unchecked(Sattr),
    /// GUARDED.
    Guarded(Sattr),
    /// EXCLUSIVE with its verifier.
    Exclusive([u8; 8]),
}

/// `mknoddata3`: what MKNOD makes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum MknodData {
    /// NF3CHR: attributes and (major, minor).
    CharDevice(Sattr, (u32, u32)),
    /// NF3BLK: attributes and (major, minor).
    BlockDevice(Sattr, (u32, u32)),
    /// NF3SOCK with its attributes.
    Socket(Sattr),
    /// NF3FIFO with its attributes.
    Fifo(Sattr),
    /// Any other type (regular, directory, symlink, or no type at all): NFS3ERR_BADTYPE.
    BadType(u32),
}

/// `stable_how`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum StableHow {
    /// UNSTABLE.
    Unstable,
    /// DATA_SYNC.
    DataSync,
    /// FILE_SYNC.
    FileSync,
}

/// `diropargs3`: a directory handle and a name in it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct DirOp<'a> {
    /// Directory handle bytes.
    pub dir: &'a [u8],
    /// Entry name bytes (not yet validated as a component).
    pub name: &'a [u8],
}

/// Arguments of one NFSv3 procedure.
#[derive(Clone, PartialEq, Eq, Debug)]
#[allow(missing_docs)]
pub enum NfsArgs<'a> {
    Null,
    Getattr { fh: &'a [u8] },
    Setattr { fh: &'a [u8], set: Sattr, guard: Option<(u32, u32)> },
    Lookup(DirOp<'a>),
    Access { fh: &'a [u8], mask: u32 },
    Readlink { fh: &'a [u8] },
    Read { fh: &'a [u8], offset: u64, count: u32 },
    Write { fh: &'a [u8], offset: u64, stable: StableHow, data: &'a [u8] },
    Create { at: DirOp<'a>, how: CreateMode },
    Mkdir { at: DirOp<'a>, set: Sattr },
    Symlink { at: DirOp<'a>, set: Sattr, target: &'a [u8] },
    Mknod { at: DirOp<'a>, what: MknodData },
    Remove(DirOp<'a>),
    Rmdir(DirOp<'a>),
    Rename { from: DirOp<'a>, to: DirOp<'a> },
    Link { fh: &'a [u8], at: DirOp<'a> },
    Readdir { dir: &'a [u8], cookie: u64, verf: [u8; 8], count: u32 },
    Readdirplus { dir: &'a [u8], cookie: u64, verf: [u8; 8], dircount: u32, maxcount: u32 },
    Fsstat { fh: &'a [u8] },
    Fsinfo { fh: &'a [u8] },
    Pathconf { fh: &'a [u8] },
    Commit { fh: &'a [u8], offset: u64, count: u32 },
}

fn fh<'a>(r: &mut XdrReader<'a>) -> Result<&'a [u8], XdrError> {
    r.opaque(MAX_FH)
}

fn dirop<'a>(r: &mut XdrReader<'a>) -> Result<DirOp<'a>, XdrError> {
    Ok(DirOp { dir: fh(r)?, name: r.opaque(MAX_NAME)? })
}

fn opt_u32(r: &mut XdrReader<'_>) -> Result<Option<u32>, XdrError> {
    Ok(if r.bool()? { Some(r.u32()?) } else { None })
}

fn set_time(r: &mut XdrReader<'_>) -> Result<SetTime, XdrError> {
    match r.u32()? {
        0 => Ok(SetTime::Keep),
        1 => Ok(SetTime::Server),
        2 => Ok(SetTime::Client(r.u32()?, r.u32()?)),
        v => Err(XdrError::BadValue(v)),
    }
}

fn sattr(r: &mut XdrReader<'_>) -> Result<Sattr, XdrError> {
    Ok(Sattr {
        mode: opt_u32(r)?,
        uid: opt_u32(r)?,
        gid: opt_u32(r)?,
        size: if r.bool()? { Some(r.u64()?) } else { None },
        atime: set_time(r)?,
        mtime: set_time(r)?,
    })
}

fn verf(r: &mut XdrReader<'_>) -> Result<[u8; 8], XdrError> {
    Ok(r.fixed(8)?.try_into().expect("8 bytes"))
}

/// Decodes the arguments of NFSv3 procedure `proc_`; `Ok(None)` for an unknown procedure.
pub fn decode_nfs(proc_: u32, args: &[u8]) -> Result<Option<NfsArgs<'_>>, XdrError> {
    use procs::*;
    let r = &mut XdrReader::new(args);
    let a = match proc_ {
        NULL => NfsArgs::Null,
        GETATTR => NfsArgs::Getattr { fh: fh(r)? },
        SETATTR => {
            let fh = fh(r)?;
            let set = sattr(r)?;
            let guard = if r.bool()? { Some((r.u32()?, r.u32()?)) } else { None };
            NfsArgs::Setattr { fh, set, guard }
        }
        LOOKUP => NfsArgs::Lookup(dirop(r)?),
        ACCESS => NfsArgs::Access { fh: fh(r)?, mask: r.u32()? },
        READLINK => NfsArgs::Readlink { fh: fh(r)? },
        READ => NfsArgs::Read { fh: fh(r)?, offset: r.u64()?, count: r.u32()? },
        WRITE => {
            let fh = fh(r)?;
            let offset = r.u64()?;
            let count = r.u32()?;
            let stable = match r.u32()? {
                0 => StableHow::Unstable,
                1 => StableHow::DataSync,
                2 => StableHow::FileSync,
                v => return Err(XdrError::BadValue(v)),
            };
            let data = r.opaque(MAX_IO as usize)?;
            let data = &data[..data.len().min(count as usize)];
            NfsArgs::Write { fh, offset, stable, data }
        }
        CREATE => {
            let at = dirop(r)?;
            let how = match r.u32()? {
                0 => CreateMode::Unchecked(sattr(r)?),
                1 => CreateMode::Guarded(sattr(r)?),
                2 => CreateMode::Exclusive(verf(r)?),
                v => return Err(XdrError::BadValue(v)),
            };
            NfsArgs::Create { at, how }
        }
        MKDIR => NfsArgs::Mkdir { at: dirop(r)?, set: sattr(r)? },
        SYMLINK => NfsArgs::Symlink { at: dirop(r)?, set: sattr(r)?, target: r.opaque(MAX_PATH)? },
        MKNOD => {
            let at = dirop(r)?;
            let what = match r.u32()? {
                3 => MknodData::BlockDevice(sattr(r)?, (r.u32()?, r.u32()?)),
                4 => MknodData::CharDevice(sattr(r)?, (r.u32()?, r.u32()?)),
                6 => MknodData::Socket(sattr(r)?),
                7 => MknodData::Fifo(sattr(r)?),
                t => MknodData::BadType(t),
            };
            NfsArgs::Mknod { at, what }
        }
        REMOVE => NfsArgs::Remove(dirop(r)?),
        RMDIR => NfsArgs::Rmdir(dirop(r)?),
        RENAME => NfsArgs::Rename { from: dirop(r)?, to: dirop(r)? },
        LINK => NfsArgs::Link { fh: fh(r)?, at: dirop(r)? },
        READDIR => NfsArgs::Readdir { dir: fh(r)?, cookie: r.u64()?, verf: verf(r)?, count: r.u32()? },
        READDIRPLUS => NfsArgs::Readdirplus {
            dir: fh(r)?,
            cookie: r.u64()?,
            verf: verf(r)?,
            dircount: r.u32()?,
            maxcount: r.u32()?,
        },
        FSSTAT => NfsArgs::Fsstat { fh: fh(r)? },
        FSINFO => NfsArgs::Fsinfo { fh: fh(r)? },
        PATHCONF => NfsArgs::Pathconf { fh: fh(r)? },
        COMMIT => NfsArgs::Commit { fh: fh(r)?, offset: r.u64()?, count: r.u32()? },
        _ => return Ok(None),
    };
    Ok(Some(a))
}

/// Arguments of one MOUNT v3 procedure.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum MountArgs<'a> {
    /// NULL.
    Null,
    /// MNT of a path.
    Mnt(&'a [u8]),
    /// DUMP.
    Dump,
    /// UMNT of a path.
    Umnt(&'a [u8]),
    /// UMNTALL.
    Umntall,
    /// EXPORT.
    Export,
}

/// Decodes the arguments of MOUNT v3 procedure `proc_`; `Ok(None)` for an unknown procedure.
pub fn decode_mount(proc_: u32, args: &[u8]) -> Result<Option<MountArgs<'_>>, XdrError> {
    let r = &mut XdrReader::new(args);
    Ok(Some(match proc_ {
        0 => MountArgs::Null,
        1 => MountArgs::Mnt(r.opaque(MAX_PATH)?),
        2 => MountArgs::Dump,
        3 => MountArgs::Umnt(r.opaque(MAX_PATH)?),
        4 => MountArgs::Umntall,
        5 => MountArgs::Export,
        _ => return Ok(None),
    }))
}

/// Portmapper (v2) GETPORT argument: `mapping` (prog, vers, prot, port).
pub fn decode_pmap_mapping(args: &[u8]) -> Result<(u32, u32, u32, u32), XdrError> {
    let r = &mut XdrReader::new(args);
    Ok((r.u32()?, r.u32()?, r.u32()?, r.u32()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn be(v: &[u32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_be_bytes()).collect()
    }

    #[test]
    fn decodes_write_and_caps_data_to_count() {
        let mut a = be(&[4]);
        a.extend_from_slice(b"FHFH");
        a.extend_from_slice(&7u64.to_be_bytes());
        a.extend(be(&[3, 2, 5]));
        a.extend_from_slice(b"hello\0\0\0");
        let Some(NfsArgs::Write { fh, offset, stable, data }) = decode_nfs(procs::WRITE, &a).unwrap() else {
            panic!("not a write")
        };
        assert_eq!((fh, offset, stable, data), (&b"FHFH"[..], 7, StableHow::FileSync, &b"hel"[..]));
    }

    #[test]
    fn decodes_mknod_of_every_type() {
        let head = |t: u32| {
            let mut a = be(&[4]);
            a.extend_from_slice(b"FHFH");
            a.extend(be(&[1]));
            a.extend_from_slice(b"p\0\0\0");
            a.extend(be(&[t]));
            a
        };
        let set = be(&[1, 0o640, 1, 1000, 0, 0, 0, 0]);
        let s = Sattr { mode: Some(0o640), uid: Some(1000), ..Sattr::default() };
        let what = |a: &[u8]| match decode_nfs(procs::MKNOD, a) {
            Ok(Some(NfsArgs::Mknod { at, what })) => {
                assert_eq!((at.dir, at.name), (&b"FHFH"[..], &b"p"[..]));
                Ok(what)
            }
            Ok(other) => panic!("not a mknod: {other:?}"),
            Err(e) => Err(e),
        };
        let mut chr = head(4);
        chr.extend(&set);
        chr.extend(be(&[1, 3]));
        assert_eq!(what(&chr), Ok(MknodData::CharDevice(s, (1, 3))));
        let mut blk = head(3);
        blk.extend(&set);
        blk.extend(be(&[8, 0]));
        assert_eq!(what(&blk), Ok(MknodData::BlockDevice(s, (8, 0))));
        for (t, want) in [(6, MknodData::Socket(s)), (7, MknodData::Fifo(s))] {
            let mut a = head(t);
            a.extend(&set);
            assert_eq!(what(&a), Ok(want));
        }
        // A regular file, a directory, a symlink or no type: nothing follows, BADTYPE later.
        for t in [1, 2, 5, 0, 99] {
            assert_eq!(what(&head(t)), Ok(MknodData::BadType(t)));
        }
        // A device without its numbers is truncated.
        let mut short = head(4);
        short.extend(&set);
        assert_eq!(what(&short), Err(XdrError::Truncated));
    }

    #[test]
    fn decodes_create_modes_and_rejects_garbage() {
        let mut a = be(&[4]);
        a.extend_from_slice(b"FHFH");
        a.extend(be(&[1]));
        a.extend_from_slice(b"x\0\0\0");
        a.extend(be(&[1, 1, 0o640, 0, 0, 0, 0, 0]));
        let Some(NfsArgs::Create { at, how }) = decode_nfs(procs::CREATE, &a).unwrap() else { panic!() };
        assert_eq!(at.name, b"x");
        assert_eq!(how, CreateMode::Guarded(Sattr { mode: Some(0o640), ..Sattr::default() }));
        assert_eq!(decode_nfs(procs::CREATE, &a[..a.len() - 4]), Err(XdrError::Truncated));
        assert_eq!(decode_nfs(99, &a), Ok(None));
        // A handle longer than NFS3_FHSIZE.
        assert_eq!(decode_nfs(procs::GETATTR, &be(&[65])), Err(XdrError::TooLong(65)));
    }
}
