//! Pure conversions between the namespace layer's types and FUSE's: attributes, errors,
//! attribute changes, the caller's groups.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{Errno, FileAttr, FileType as FuseType, INodeNo, TimeOrNow};

use crate::vfs::{Attr, FileType, SetAttr, SetTime, Timestamp, VfsError};

/// The errno a local program sees for a namespace error.
pub fn errno(e: VfsError) -> Errno {
    let code = match e {
        VfsError::Perm => libc::EPERM,
        VfsError::Access => libc::EACCES,
        VfsError::NotFound => libc::ENOENT,
        VfsError::Exists => libc::EEXIST,
        VfsError::NotDir => libc::ENOTDIR,
        VfsError::IsDir => libc::EISDIR,
        VfsError::NotEmpty => libc::ENOTEMPTY,
        VfsError::Invalid | VfsError::BadCookie => libc::EINVAL,
        // A name the volume cannot hold (NUL, `/`): what Linux answers for an unusable name.
        VfsError::BadName => libc::EINVAL,
        VfsError::NameTooLong => libc::ENAMETOOLONG,
        VfsError::NoSpace => libc::ENOSPC,
        VfsError::Quota => libc::EDQUOT,
        VfsError::ReadOnly => libc::EROFS,
        VfsError::TooManyLinks => libc::EMLINK,
        VfsError::TooBig => libc::EFBIG,
        VfsError::CrossDevice => libc::EXDEV,
        VfsError::Loop => libc::ELOOP,
        VfsError::Escape => libc::EACCES,
        // The file went away under the kernel's cached inode: to the program it is gone.
        VfsError::Stale => libc::ENOENT,
        VfsError::BadHandle => libc::EIO,
        VfsError::NotSupported => libc::EOPNOTSUPP,
        VfsError::Io(0) => libc::EIO,
        VfsError::Io(e) => e,
    };
    Errno::from_i32(code)
}

fn time(t: Timestamp) -> SystemTime {
    if t.secs >= 0 {
        UNIX_EPOCH + Duration::new(t.secs as u64, t.nanos)
    } else {
        UNIX_EPOCH - Duration::from_secs(t.secs.unsigned_abs()) + Duration::from_nanos(u64::from(t.nanos))
    }
}

fn timestamp(t: SystemTime) -> Timestamp {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => Timestamp { secs: d.as_secs() as i64, nanos: d.subsec_nanos() },
        Err(e) => {
            let d = e.duration();
            let (mut secs, mut nanos) = (-(d.as_secs() as i64), d.subsec_nanos());
            if nanos > 0 {
                secs -= 1;
                nanos = 1_000_000_000 - nanos;
            }
            Timestamp { secs, nanos }
        }
    }
}

/// FUSE's file type of a namespace one.
pub fn kind(t: FileType) -> FuseType {
    match t {
        FileType::Regular => FuseType::RegularFile,
        FileType::Directory => FuseType::Directory,
        FileType::Symlink => FuseType::Symlink,
        FileType::BlockDevice => FuseType::BlockDevice,
        FileType::CharDevice => FuseType::CharDevice,
        FileType::Fifo => FuseType::NamedPipe,
        FileType::Socket => FuseType::Socket,
    }
}

/// The attributes the kernel gets, under node id `ino`.
pub fn attr(a: &Attr, ino: u64) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: a.size,
        blocks: a.used.div_ceil(512),
        atime: time(a.atime),
        mtime: time(a.mtime),
        ctime: time(a.ctime),
        crtime: a.btime.map_or(UNIX_EPOCH, time),
        kind: kind(a.ftype),
        perm: (a.mode & 0o7777) as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: libc::makedev(a.rdev.0, a.rdev.1) as u32,
        blksize: 4096,
        flags: 0,
    }
}

/// The attributes of an open descriptor's file (`fstat`), under node id `ino`: for a file
/// removed while open, which the namespace no longer resolves.
pub fn attr_of_metadata(m: &std::fs::Metadata, ino: u64) -> FileAttr {
    use std::os::unix::fs::MetadataExt;
    let ts = |secs: i64, nanos: i64| time(Timestamp { secs, nanos: nanos as u32 });
    FileAttr {
        ino: INodeNo(ino),
        size: m.size(),
        blocks: m.blocks(),
        atime: ts(m.atime(), m.atime_nsec()),
        mtime: ts(m.mtime(), m.mtime_nsec()),
        ctime: ts(m.ctime(), m.ctime_nsec()),
        crtime: m.created().unwrap_or(UNIX_EPOCH),
        kind: kind(FileType::from_mode(m.mode())),
        perm: (m.mode() & 0o7777) as u16,
        nlink: m.nlink() as u32,
        uid: m.uid(),
        gid: m.gid(),
        rdev: m.rdev() as u32,
        blksize: 4096,
        flags: 0,
    }
}

/// A FUSE SETATTR as a namespace attribute change.
pub fn set_attr(
    mode: Option<u32>,
    uid: Option<u32>,
    gid: Option<u32>,
    size: Option<u64>,
    atime: Option<TimeOrNow>,
    mtime: Option<TimeOrNow>,
) -> SetAttr {
    let t = |t: Option<TimeOrNow>| match t {
        None => SetTime::DontChange,
        Some(TimeOrNow::Now) => SetTime::ServerNow,
        Some(TimeOrNow::SpecificTime(t)) => SetTime::Client(timestamp(t)),
    };
    SetAttr { mode: mode.map(|m| m & 0o7777), uid, gid, size, atime: t(atime), mtime: t(mtime) }
}

/// The supplementary groups on a `/proc/PID/status` `Groups:` line.
pub fn groups_of_status(status: &str) -> Vec<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| g.split_whitespace().filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_default()
}

/// Whether the thread a `/proc/TID/status` describes has given up waiting: it is exiting
/// (a zombie, or dead) or a signal it does not block is pending for it (SIGKILL can never be
/// blocked). The kernel has sent FUSE an INTERRUPT then, which `fuser` does not pass on; a
/// killed process waits for the answer uninterruptibly, so only an answer frees it.
pub fn gave_up_waiting(status: &str) -> bool {
    let field = |name: &str| {
        status.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
    };
    let state = status.lines().find_map(|l| l.strip_prefix("State:")).map(str::trim).unwrap_or("");
    if state.starts_with('Z') || state.starts_with('X') {
        return true;
    }
    const SIGKILL: u64 = 1 << (libc::SIGKILL - 1);
    let pending = field("SigPnd:").unwrap_or(0) | field("ShdPnd:").unwrap_or(0);
    let blocked = field("SigBlk:").unwrap_or(0) & !SIGKILL;
    pending & !blocked != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_waiter_gave_up_when_killed_or_signalled_or_gone() {
        let status = |state: &str, pnd: &str, shd: &str, blk: &str| {
            format!("Name:\tflock\nState:\t{state}\nSigQ:\t0/1\nSigPnd:\t{pnd}\nShdPnd:\t{shd}\nSigBlk:\t{blk}\n")
        };
        let table = [
            (status("S (sleeping)", "0000000000000000", "0000000000000000", "0000000000000000"), false),
            // kill -9: SIGKILL pending for the thread, even with every signal blocked.
            (status("D (disk sleep)", "0000000000000100", "0000000000000100", "fffffffffffffeff"), true),
            (status("D (disk sleep)", "0000000000000000", "0000000000000100", "ffffffffffffffff"), true),
            // SIGINT (2) pending, not blocked: the caller would be interrupted.
            (status("D (disk sleep)", "0000000000000000", "0000000000000002", "0000000000000000"), true),
            // SIGINT pending but blocked: it still waits.
            (status("D (disk sleep)", "0000000000000002", "0000000000000000", "0000000000000002"), false),
            (status("Z (zombie)", "0000000000000000", "0000000000000000", "0000000000000000"), true),
            (String::new(), false),
        ];
        for (s, gave_up) in table {
            assert_eq!(gave_up_waiting(&s), gave_up, "{s}");
        }
    }

    #[test]
    fn times_round_trip_before_and_after_the_epoch() {
        for t in [
            Timestamp { secs: 0, nanos: 0 },
            Timestamp { secs: 1_700_000_000, nanos: 123 },
            Timestamp { secs: -5, nanos: 250_000_000 },
        ] {
            assert_eq!(timestamp(time(t)), t);
        }
    }

    #[test]
    fn groups_come_from_the_status_line_and_errors_keep_their_errno() {
        let s = "Name:\tcat\nUid:\t1000\t1000\t1000\t1000\nGroups:\t4 24 1000 \nNgid:\t0\n";
        assert_eq!(groups_of_status(s), vec![4, 24, 1000]);
        assert!(groups_of_status("Name: x\n").is_empty());
        assert_eq!(errno(VfsError::Io(libc::EAGAIN)).code(), libc::EAGAIN);
        assert_eq!(errno(VfsError::Stale).code(), libc::ENOENT);
        assert_eq!(errno(VfsError::NotEmpty).code(), libc::ENOTEMPTY);
    }

    #[test]
    fn setattr_maps_now_and_specific_times() {
        let s = set_attr(Some(0o104755), None, Some(5), Some(0), Some(TimeOrNow::Now), None);
        assert_eq!(s.mode, Some(0o4755));
        assert_eq!(s.atime, SetTime::ServerNow);
        assert_eq!(s.mtime, SetTime::DontChange);
        assert_eq!((s.gid, s.size), (Some(5), Some(0)));
    }
}
