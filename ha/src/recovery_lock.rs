//! The recovery lock: an fcntl write lock on a file inside the shared volume. Only its holder
//! leads. Like CTDB's `ctdb_mutex_fcntl_helper`, the holder re-checks it periodically: the path
//! must still name the same inode (a replaced or deleted file means another node can lock the
//! new one) and the lock must still be ours. Every call may block on a hung volume, so the
//! runtime calls them from a dedicated thread with a timeout.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use crate::machine::LockOutcome;

/// The recovery lock as the HA node uses it. The volume's backend supplies it: an fcntl lock on
/// a path ([`RecoveryLock`], for a shared directory or a FUSE mount) or a lock taken through a
/// client library (libgfapi). Every call may block on a hung volume; the runtime calls them on
/// their own thread and treats a late answer as a failure.
pub trait ClusterLock: Send + 'static {
    /// Tries to take the lock without waiting: `Taken`, or `Busy` with the reason.
    fn take(&mut self) -> LockOutcome;
    /// Verifies a held lock is still ours (same file, lock still held): `StillHeld` or `Lost`.
    fn check(&mut self) -> LockOutcome;
    /// Gives the lock up.
    fn release(&mut self);
}

/// The lock file and, while held, the open descriptor carrying the lock.
#[derive(Debug)]
pub struct RecoveryLock {
    path: PathBuf,
    held: Option<(File, u64, u64)>,
}

fn set_write_lock(f: &File) -> std::io::Result<()> {
    // SAFETY: a zeroed flock is a valid value; the fields we need are set below.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as _;
    fl.l_whence = libc::SEEK_SET as _;
    fl.l_start = 0;
    fl.l_len = 0;
    // SAFETY: fcntl(F_SETLK) with a valid fd and a pointer to an initialised flock.
    if unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETLK, &fl) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

impl RecoveryLock {
    /// The lock at `path` (the volume root joined with `[cluster] recovery_lock`).
    pub fn new(path: PathBuf) -> RecoveryLock {
        RecoveryLock { path, held: None }
    }

    /// Tries to take the lock without waiting.
    fn take_now(&mut self) -> LockOutcome {
        if self.held.is_some() {
            return self.check_as(LockOutcome::Taken);
        }
        if let Some(dir) = self.path.parent() {
            if let Err(e) = std::fs::create_dir_all(dir) {
                return LockOutcome::Busy(format!("cannot create {}: {e}", dir.display()));
            }
        }
        let f = match OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&self.path) {
            Ok(f) => f,
            Err(e) => return LockOutcome::Busy(format!("cannot open {}: {e}", self.path.display())),
        };
        match set_write_lock(&f) {
            Ok(()) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EACCES)) => {
                return LockOutcome::Busy("contention: another node holds the recovery lock".into())
            }
            Err(e) => return LockOutcome::Busy(format!("cannot lock {}: {e}", self.path.display())),
        }
        let meta = match f.metadata() {
            Ok(m) => m,
            Err(e) => return LockOutcome::Busy(format!("cannot stat the lock: {e}")),
        };
        let mut f = f;
        let _ = f.set_len(0);
        let _ = writeln!(f, "nasgw recovery lock held by pid {}", std::process::id());
        self.held = Some((f, meta.dev(), meta.ino()));
        // The file may have been replaced between open and lock: verify.
        self.check_as(LockOutcome::Taken)
    }

    fn check_as(&mut self, ok: LockOutcome) -> LockOutcome {
        let Some((f, dev, ino)) = &self.held else {
            return LockOutcome::Lost("not held".into());
        };
        let lost = match std::fs::metadata(&self.path) {
            Err(e) => Some(format!("lock file {} is gone: {e}", self.path.display())),
            Ok(m) if (m.dev(), m.ino()) != (*dev, *ino) => {
                Some(format!("lock file {} was replaced", self.path.display()))
            }
            Ok(_) => set_write_lock(f).err().map(|e| format!("lock no longer held: {e}")),
        };
        match lost {
            Some(why) => {
                self.held = None;
                if ok == LockOutcome::Taken {
                    LockOutcome::Busy(why)
                } else {
                    LockOutcome::Lost(why)
                }
            }
            None => ok,
        }
    }

    /// Is the lock held by this process (as far as it knows)?
    pub fn is_held(&self) -> bool {
        self.held.is_some()
    }
}

impl ClusterLock for RecoveryLock {
    fn take(&mut self) -> LockOutcome {
        self.take_now()
    }

    /// Same inode at the path, lock still ours.
    fn check(&mut self) -> LockOutcome {
        self.check_as(LockOutcome::StillHeld)
    }

    /// Closing the descriptor drops the fcntl lock.
    fn release(&mut self) {
        self.held = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_check_replace_release() {
        let dir = std::env::temp_dir().join(format!("nasgw-lock-{}", std::process::id()));
        let path = dir.join("lock/lockfile");
        let mut l = RecoveryLock::new(path.clone());
        assert_eq!(l.take(), LockOutcome::Taken);
        assert_eq!(l.check(), LockOutcome::StillHeld);
        // Another process cannot take it (python's lockf is an fcntl lock too).
        let other = std::process::Command::new("python3")
            .args(["-c", "import fcntl,sys; f=open(sys.argv[1],'r+'); fcntl.lockf(f, fcntl.LOCK_EX|fcntl.LOCK_NB)"])
            .arg(&path)
            .output()
            .expect("python3 runs");
        assert!(!other.status.success(), "another process took a held lock");
        assert!(String::from_utf8_lossy(&other.stderr).contains("Errno"), "{other:?}");
        // Replacing the file loses the lock.
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"").unwrap();
        assert!(matches!(l.check(), LockOutcome::Lost(_)));
        assert!(!l.is_held());
        assert_eq!(l.take(), LockOutcome::Taken);
        l.release();
        assert!(!l.is_held());
        let _ = std::fs::remove_dir_all(dir);
    }
}
