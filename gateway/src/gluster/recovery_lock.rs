//! The recovery lock through libgfapi (`access = "gfapi"`): a POSIX write lock on the lock file,
//! held by the bricks' locks translator, so it excludes every other node whether it reaches the
//! volume through gfapi or a FUSE mount. Like the fcntl lock of `ha::recovery_lock`, a held lock
//! is re-checked: the path must still name the same file (GFID) and the lock must still be ours.

use std::ffi::OsString;
use std::io;
use std::sync::{Arc, Mutex};

use ha::machine::LockOutcome;
use ha::recovery_lock::ClusterLock;

use super::gfapi::{Credentials, File, Gfid, Object, Volume};

/// The recovery lock file on a gfapi volume.
pub struct GfapiLock {
    slot: Arc<Mutex<Option<Volume>>>,
    /// Path components from the volume root (validated by the config: no `..`, no empty part).
    path: Vec<OsString>,
    /// Lock owner: unique to this process start, so a restarted daemon never inherits a lock.
    owner: Vec<u8>,
    held: Option<(File, Gfid)>,
}

impl GfapiLock {
    /// The lock at `path` (`[cluster] recovery_lock`, `/`-rooted inside the volume) on the
    /// volume `slot` will hold once connected.
    pub fn new(slot: Arc<Mutex<Option<Volume>>>, path: &str) -> GfapiLock {
        let path = path.split('/').filter(|c| !c.is_empty()).map(OsString::from).collect();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let owner = format!("nasgw-recovery-{}-{}", std::process::id(), now.as_nanos()).into_bytes();
        GfapiLock { slot, path, owner, held: None }
    }

    fn volume(&self) -> io::Result<Volume> {
        self.slot
            .lock()
            .expect("gfapi slot")
            .clone()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "not connected to the volume yet"))
    }

    /// Resolves the lock file, creating its directories and itself when missing.
    fn resolve(&self, vol: &Volume, create: bool) -> io::Result<Object> {
        let (mut obj, _) = vol.root()?;
        let Some((file, dirs)) = self.path.split_last() else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty recovery lock path"));
        };
        for d in dirs {
            obj = match vol.lookup(&obj, d) {
                Ok((o, _)) => o,
                Err(e) if create && e.raw_os_error() == Some(libc::ENOENT) => match vol.mkdir(&obj, d, 0o755) {
                    Ok((o, _)) => o,
                    Err(e) if e.raw_os_error() == Some(libc::EEXIST) => vol.lookup(&obj, d)?.0,
                    Err(e) => return Err(e),
                },
                Err(e) => return Err(e),
            };
        }
        match vol.lookup(&obj, file) {
            Ok((o, _)) => Ok(o),
            Err(e) if create && e.raw_os_error() == Some(libc::ENOENT) => {
                match vol.create(&obj, file, libc::O_RDWR | libc::O_CREAT, 0o644) {
                    Ok((o, _)) => Ok(o),
                    Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(vol.lookup(&obj, file)?.0),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    fn try_take(&mut self) -> Result<(), String> {
        let vol = self.volume().map_err(|e| e.to_string())?;
        Credentials::root().apply().map_err(|e| e.to_string())?;
        let obj = self.resolve(&vol, true).map_err(|e| format!("cannot open the recovery lock: {e}"))?;
        let gfid = obj.gfid().map_err(|e| e.to_string())?;
        let f = vol.open(&obj, libc::O_RDWR).map_err(|e| format!("cannot open the recovery lock: {e}"))?;
        f.set_lock_owner(&self.owner).map_err(|e| format!("cannot set the lock owner: {e}"))?;
        set_write_lock(&f).map_err(|e| match e.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EACCES) => "contention: another node holds the recovery lock".to_string(),
            _ => format!("cannot lock the recovery lock: {e}"),
        })?;
        self.held = Some((f, gfid));
        Ok(())
    }

    /// Why the held lock is no longer ours, if it is not.
    fn lost(&self) -> Option<String> {
        let Some((f, gfid)) = &self.held else {
            return Some("not held".into());
        };
        let vol = match self.volume() {
            Ok(v) => v,
            Err(e) => return Some(e.to_string()),
        };
        if let Err(e) = Credentials::root().apply() {
            return Some(e.to_string());
        }
        match self.resolve(&vol, false).and_then(|o| o.gfid()) {
            Err(e) => Some(format!("the recovery lock file is gone: {e}")),
            Ok(g) if g != *gfid => Some("the recovery lock file was replaced".into()),
            // Re-asserting a lock this owner holds succeeds; a brick that lost it (a client
            // reconnect drops its locks) refuses while another node holds it.
            Ok(_) => set_write_lock(f).err().map(|e| format!("lock no longer held: {e}")),
        }
    }
}

fn set_write_lock(f: &File) -> io::Result<()> {
    whole_file_lock(f, libc::F_WRLCK)
}

fn whole_file_lock(f: &File, kind: i32) -> io::Result<()> {
    // SAFETY: a zeroed flock is a valid value; the fields that matter are set below.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as _;
    fl.l_whence = libc::SEEK_SET as _;
    fl.l_start = 0;
    fl.l_len = 0;
    f.posix_lock(libc::F_SETLK, &mut fl)
}

impl ClusterLock for GfapiLock {
    fn take(&mut self) -> LockOutcome {
        if self.held.is_none() {
            if let Err(why) = self.try_take() {
                return LockOutcome::Busy(why);
            }
        }
        match self.lost() {
            None => LockOutcome::Taken,
            Some(why) => {
                self.held = None;
                LockOutcome::Busy(why)
            }
        }
    }

    fn check(&mut self) -> LockOutcome {
        match self.lost() {
            None => LockOutcome::StillHeld,
            Some(why) => {
                self.held = None;
                LockOutcome::Lost(why)
            }
        }
    }

    fn release(&mut self) {
        if let Some((f, _)) = self.held.take() {
            // Unlock explicitly; closing the fd (its release on the bricks) drops it anyway.
            let _ = Credentials::root().apply().and_then(|()| whole_file_lock(&f, libc::F_UNLCK));
        }
    }
}
