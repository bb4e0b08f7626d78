//! The mount point: what `nasgw check` says about it and what `nasgw serve` does with it.
//!
//! [`inspect`] gathers the facts (one `stat`, the mount table, one directory read) and the pure
//! [`problem`] decides: a missing path, a file, a non-empty directory, a live mount, or a
//! place inside the volume (the mount would show itself) is refused with a hint. A mount left
//! by a nasgw that died ("Transport endpoint is not connected") is no problem: `serve`
//! detaches it ([`prepare`]) and mounts again.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

/// What is at the configured mount point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    /// Nothing: the path does not exist.
    Missing,
    /// Something other than a directory.
    NotDir,
    /// A directory with entries.
    NotEmpty,
    /// An empty directory: ready.
    Empty,
    /// A FUSE mount whose server is gone (`ENOTCONN`): a nasgw that crashed.
    Stale,
    /// A live mount of this type (another nasgw, or anything else).
    Mounted(String),
    /// `stat` failed otherwise (errno).
    Unreadable(i32),
}

/// Looks at `path` (never blocks on a dead FUSE server: `stat` of a dead mount answers
/// `ENOTCONN` at once).
pub fn inspect(path: &Path) -> State {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) => {
            return match e.raw_os_error() {
                Some(libc::ENOENT) => State::Missing,
                Some(libc::ENOTCONN) => State::Stale,
                Some(libc::ENOTDIR) => State::NotDir,
                Some(errno) => State::Unreadable(errno),
                None => State::Unreadable(libc::EIO),
            }
        }
    };
    if let Some(top) = crate::gluster::mount::mount_stack(path).last() {
        return State::Mounted(top.clone());
    }
    if !meta.is_dir() {
        return State::NotDir;
    }
    match std::fs::read_dir(path) {
        Ok(mut d) => {
            if d.next().is_none() {
                State::Empty
            } else {
                State::NotEmpty
            }
        }
        Err(e) => State::Unreadable(e.raw_os_error().unwrap_or(libc::EIO)),
    }
}

/// The absolute, symlink-free form of `path`, even when its last components do not exist.
pub fn resolved(path: &Path) -> PathBuf {
    let mut missing = Vec::new();
    let mut p = path.to_path_buf();
    loop {
        if let Ok(c) = p.canonicalize() {
            return missing.iter().rev().fold(c, |acc: PathBuf, n| acc.join(n));
        }
        match (p.parent(), p.file_name()) {
            (Some(parent), Some(name)) => {
                missing.push(name.to_os_string());
                p = parent.to_path_buf();
            }
            _ => return path.to_path_buf(),
        }
    }
}

/// True when one of the two directories contains the other (or they are the same).
pub fn overlaps(mountpoint: &Path, volume_dir: &Path) -> bool {
    mountpoint.starts_with(volume_dir) || volume_dir.starts_with(mountpoint)
}

/// What is wrong with a mount point in `state` (`inside`: it overlaps the volume's directory):
/// (message, hint), or `None` when `serve` can mount there.
pub fn problem(state: &State, inside: Option<&Path>) -> Option<(String, String)> {
    if let Some(v) = inside {
        return Some((
            format!("the mount point overlaps the volume's own directory {}", v.display()),
            "mount the volume outside the directory it is served from, e.g. mountpoint = \"/srv/data\"".into(),
        ));
    }
    let (m, h) = match state {
        State::Empty | State::Stale => return None,
        State::Missing => ("does not exist", "create it: `mkdir -p` the path (an empty directory)".to_string()),
        State::NotDir => ("is not a directory", "point mountpoint at an empty directory".to_string()),
        State::NotEmpty => (
            "is not empty (the mount would hide its files)",
            "move its entries away or choose an empty directory".to_string(),
        ),
        State::Mounted(t) => {
            return Some((
                format!("something is already mounted there ({t})"),
                "unmount it (`umount PATH`), or stop the nasgw that serves it".into(),
            ))
        }
        State::Unreadable(e) => {
            return Some((
                format!("cannot be read: {}", std::io::Error::from_raw_os_error(*e)),
                "check the path and its parents' permissions".into(),
            ))
        }
    };
    Some((m.to_string(), h))
}

/// The directories the volume is served from on this node that a mount point must stay out of:
/// a local volume's path, the GlusterFS FUSE client's mount point.
pub fn volume_dirs(cfg: &crate::config::Config) -> Vec<PathBuf> {
    use crate::config::BackendKind;
    match cfg.volume.backend {
        BackendKind::Local => cfg.volume.path.iter().map(|p| resolved(p)).collect(),
        BackendKind::Gluster => {
            vec![resolved(&cfg.volume.mount_point.clone().unwrap_or_else(|| cfg.node.state_dir.join("mnt")))]
        }
    }
}

/// `nasgw check`'s view of `[fuse] mountpoint`: (message, hint) when `serve` would refuse it.
pub fn check(cfg: &crate::config::Config) -> Option<(String, String)> {
    let f = cfg.fuse.as_ref()?;
    let mp = resolved(&f.mountpoint);
    let dirs = volume_dirs(cfg);
    let inside = dirs.iter().find(|d| overlaps(&mp, d));
    problem(&inspect(&f.mountpoint), inside.map(PathBuf::as_path))
}

/// Makes `path` ready for a mount: detaches a stale nasgw mount left by a crash, then insists
/// on an empty directory.
pub fn prepare(path: &Path) -> Result<()> {
    let mut state = inspect(path);
    for _ in 0..8 {
        if state != State::Stale {
            break;
        }
        tracing::warn!(mountpoint = %path.display(), "replacing a stale FUSE mount left by a previous run");
        detach(path);
        state = inspect(path);
    }
    if let Some((m, h)) = problem(&state, None) {
        bail!("[fuse] mountpoint {}: {m} (hint: {h})", path.display());
    }
    Ok(())
}

/// Lazily unmounts whatever is mounted at `path` (never blocks on a dead server).
pub fn detach(path: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(p) = std::ffi::CString::new(path.as_os_str().as_bytes()) else { return };
    // SAFETY: umount2 with a valid NUL-terminated path.
    if unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) } != 0 {
        tracing::debug!(path = %path.display(), error = %std::io::Error::last_os_error(), "detach failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_empty_directory_or_a_stale_mount_outside_the_volume_is_usable() {
        assert_eq!(problem(&State::Empty, None), None);
        assert_eq!(problem(&State::Stale, None), None, "replaced at start");
        for s in [
            State::Missing,
            State::NotDir,
            State::NotEmpty,
            State::Mounted("fuse.nasgw".into()),
            State::Unreadable(libc::EACCES),
        ] {
            assert!(problem(&s, None).is_some(), "{s:?}");
        }
        let (m, _) = problem(&State::Empty, Some(Path::new("/data"))).unwrap();
        assert!(m.contains("/data"), "{m}");
    }

    #[test]
    fn overlap_is_either_way_and_by_whole_components() {
        assert!(overlaps(Path::new("/data/mnt"), Path::new("/data")));
        assert!(overlaps(Path::new("/srv"), Path::new("/srv/vol")));
        assert!(overlaps(Path::new("/srv"), Path::new("/srv")));
        assert!(!overlaps(Path::new("/srv/data2"), Path::new("/srv/data")));
    }

    #[test]
    fn inspect_tells_missing_files_full_and_empty_directories_apart() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(inspect(&d.path().join("nope")), State::Missing);
        std::fs::write(d.path().join("f"), b"x").unwrap();
        assert_eq!(inspect(&d.path().join("f")), State::NotDir);
        assert_eq!(inspect(d.path()), State::NotEmpty);
        std::fs::create_dir(d.path().join("e")).unwrap();
        assert_eq!(inspect(&d.path().join("e")), State::Empty);
        assert_eq!(resolved(&d.path().join("e/x/y")), d.path().canonicalize().unwrap().join("e/x/y"));
    }
}
