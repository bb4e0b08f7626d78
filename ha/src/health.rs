//! Health monitoring: a node is UNHEALTHY (and holds no public address) when the volume stops
//! answering a stat + write probe within the timeout, or when a protocol listener is down.
//! The probe runs on its own thread, so a hung volume never blocks the daemon; a probe that
//! does not come back in time counts as a failure.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The write step of a volume probe, judged: a volume that answers but is full (ENOSPC,
/// EDQUOT; GlusterFS bricks refuse writes below `storage.reserve`) passes. Every node shares the
/// volume, so calling it unhealthy would take every public address down, reads included,
/// instead of failing writes with a disk-full error. Remembers the state, so that filling up
/// and having room again are each logged once.
#[derive(Debug, Default)]
pub struct FullVolume(bool);

impl FullVolume {
    /// `written` (the probe's write) as the probe's verdict: a full volume's error becomes Ok.
    pub fn check(&mut self, written: std::io::Result<()>) -> std::io::Result<()> {
        let full = matches!(&written, Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)));
        if full != self.0 {
            self.0 = full;
            match &written {
                Err(e) if full => {
                    tracing::warn!(error = %e, "the volume is full: writes fail with disk-full errors (the node stays healthy)")
                }
                _ => tracing::info!("the volume has room again"),
            }
        }
        if full {
            Ok(())
        } else {
            written
        }
    }
}

/// One probe of the volume: stat its root, then write a small file next to the recovery lock
/// (a full volume passes, see [`FullVolume`]).
pub fn probe_volume(root: &Path, probe_file: &Path, full: &mut FullVolume) -> Result<(), String> {
    let meta = std::fs::metadata(root).map_err(|e| format!("volume {} does not answer: {e}", root.display()))?;
    if !meta.is_dir() {
        return Err(format!("volume {} is not a directory", root.display()));
    }
    if let Some(dir) = probe_file.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis();
    full.check(std::fs::write(probe_file, format!("{stamp}\n")))
        .map_err(|e| format!("cannot write probe {}: {e}", probe_file.display()))
}

/// Where each node writes its probe: beside the recovery lock, one file per node.
pub fn probe_path(lock_path: &Path, pnn: u32) -> PathBuf {
    lock_path.parent().unwrap_or(lock_path).join(format!(".health.{pnn}"))
}

/// Protocol listeners report here whether they are up; any down makes the node UNHEALTHY.
#[derive(Debug, Clone, Default)]
pub struct ListenerHealth(Arc<Mutex<BTreeMap<String, Option<String>>>>);

impl ListenerHealth {
    /// An empty registry (no listeners: healthy).
    pub fn new() -> Self {
        Self::default()
    }

    /// `name` is accepting connections.
    pub fn up(&self, name: &str) {
        self.0.lock().expect("listener health").insert(name.to_string(), None);
    }

    /// `name` stopped accepting, for `reason`.
    pub fn down(&self, name: &str, reason: &str) {
        self.0.lock().expect("listener health").insert(name.to_string(), Some(reason.to_string()));
    }

    /// The first listener that is down and why.
    pub fn problem(&self) -> Option<String> {
        self.0
            .lock()
            .expect("listener health")
            .iter()
            .find_map(|(n, r)| r.as_ref().map(|r| format!("listener {n} is down: {r}")))
    }
}

/// Combines the last probe result, its age and the listeners into a verdict.
pub fn verdict(
    last_probe: Option<(Duration, Result<(), String>)>,
    now: Duration,
    interval: Duration,
    timeout: Duration,
    listeners: &ListenerHealth,
) -> Result<(), String> {
    if let Some(p) = listeners.problem() {
        return Err(p);
    }
    match last_probe {
        // Before the first probe returns, give it the timeout to do so.
        None if now < timeout => Ok(()),
        None => Err(format!("volume probe did not answer within {} ms", timeout.as_millis())),
        Some((at, _)) if now.saturating_sub(at) > interval + timeout => {
            Err(format!("volume probe did not answer within {} ms", timeout.as_millis()))
        }
        Some((_, r)) => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts() {
        let l = ListenerHealth::new();
        let ms = Duration::from_millis;
        assert!(verdict(None, ms(10), ms(500), ms(2000), &l).is_ok());
        assert!(verdict(None, ms(2500), ms(500), ms(2000), &l).is_err());
        assert!(verdict(Some((ms(0), Ok(()))), ms(1000), ms(500), ms(2000), &l).is_ok());
        assert!(verdict(Some((ms(0), Ok(()))), ms(3000), ms(500), ms(2000), &l).is_err(), "stale probe = hung volume");
        assert!(verdict(Some((ms(0), Err("x".into()))), ms(10), ms(500), ms(2000), &l).is_err());
        l.up("smb");
        assert!(verdict(Some((ms(0), Ok(()))), ms(10), ms(500), ms(2000), &l).is_ok());
        l.down("smb", "accept failed");
        assert!(verdict(Some((ms(0), Ok(()))), ms(10), ms(500), ms(2000), &l).unwrap_err().contains("smb"));
    }

    #[test]
    fn a_full_volume_passes_the_write_probe_and_other_errors_do_not() {
        use std::io::Error;
        let mut f = FullVolume::default();
        assert!(f.check(Ok(())).is_ok());
        assert!(f.check(Err(Error::from_raw_os_error(libc::ENOSPC))).is_ok(), "full is not unhealthy");
        assert!(f.0, "remembered, so the warning is logged once");
        assert!(f.check(Err(Error::from_raw_os_error(libc::EDQUOT))).is_ok());
        assert_eq!(f.check(Err(Error::from_raw_os_error(libc::EIO))).unwrap_err().raw_os_error(), Some(libc::EIO));
        assert!(!f.0);
    }

    #[test]
    fn probe_fails_on_a_missing_volume() {
        let d = std::env::temp_dir().join(format!("nasgw-probe-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let mut full = FullVolume::default();
        assert!(probe_volume(&d, &d.join("lock/.health.0"), &mut full).is_ok());
        assert!(probe_volume(&d.join("nope"), &d.join("nope/lock/.health.0"), &mut full).is_err());
        assert!(!full.0);
        let _ = std::fs::remove_dir_all(d);
    }
}
