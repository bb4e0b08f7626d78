//! The node's own mount of the volume (`[fuse] mountpoint`): local programs (backup agents,
//! rsync, the admin's shell) reach the same namespace, through the same [`Namespace`], with the
//! same name rules, inode numbers and permission checks as SMB and NFS clients.
//!
//! - `mountpoint.rs`: the mount point's checks (`nasgw check`) and the stale mount a crash
//!   leaves, replaced at the next start.
//! - `inodes.rs`: FUSE node ids = the files' inode numbers (NFS `fileid`), with lookup counts.
//! - `convert.rs`: attributes, errors and attribute changes between FUSE and the namespace.
//! - `dir_stream.rs`: an open directory's entries, read in large batches without attributes
//!   and handed to the kernel a page at a time.
//! - `passthrough.rs`: whether an open may get a passthrough backing file (the kernel reopens
//!   it as the opener; a backing file system that checks permissions may refuse that).
//! - `sharing.rs`: the mount in the cluster's file-sharing state (share modes, lease breaks both
//!   ways) and the kernel told of changes made elsewhere (`notify_inval_*`).
//! - `fs.rs`: the file system: one namespace call per kernel request, as the calling process,
//!   on the session's own threads; regular files opened with a passthrough backing file where
//!   the kernel and backend allow it.
//!
//! The FUSE session runs on [`THREADS`] threads of its own (`fuser`, one cloned `/dev/fuse`
//! descriptor each): a FUSE request never occupies a runtime worker that SMB, NFS or HA use.

pub mod convert;
pub mod dir_stream;
pub mod fs;
pub mod inodes;
pub mod mountpoint;
pub mod passthrough;
pub mod sharing;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use fuser::{BackgroundSession, MountOption, SessionACL};

use crate::config::FuseConfig;
use crate::vfs::Namespace;

/// Threads serving the mount's requests.
pub const THREADS: usize = 4;

/// How long a stop waits for the session's threads to end.
pub const STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The mounted volume; unmounted by [`FuseMount::stop`] (or at process exit, when the kernel
/// drops the connection; the next start replaces what is left).
pub struct FuseMount {
    path: PathBuf,
    session: Option<BackgroundSession>,
    passthrough: Arc<AtomicBool>,
}

impl FuseMount {
    /// Mounts `ns` at `cfg.mountpoint` (replacing a stale mount from a crash first).
    pub async fn start(
        cfg: &FuseConfig,
        ns: Namespace,
        locks: Arc<crate::locks::LockService>,
        volume: &str,
    ) -> Result<Self> {
        let path = cfg.mountpoint.clone();
        mountpoint::prepare(&path)?;
        // The root's own inode number (GlusterFS: 1, from its GFID); the volume may not answer
        // yet (GlusterFS still mounting), and then its root is the GlusterFS one.
        let root_fileid = ns.getattr(ns.root()).await.map_or(1, |a| a.fileid);
        let (fs, passthrough) = fs::VolumeFs::new(
            ns,
            root_fileid,
            cfg.passthrough,
            Some(locks),
            std::time::Duration::from_millis(cfg.timeout_ms),
        );
        let mut options = fuser::Config::default();
        options.mount_options = vec![
            MountOption::FSName(format!("nasgw:{volume}")),
            MountOption::Subtype("nasgw".into()),
            MountOption::DefaultPermissions,
            MountOption::Dev,
            MountOption::Suid,
        ];
        options.acl = SessionACL::All;
        options.n_threads = Some(THREADS);
        options.clone_fd = true;
        let notifier = fs.notifier_cell();
        let p = path.clone();
        let session = tokio::task::spawn_blocking(move || fuser::Session::new(fs, &p, &options)?.spawn())
            .await
            .context("the FUSE mount task failed")?
            .with_context(|| format!("cannot mount the volume at [fuse] mountpoint {}", path.display()))?;
        let _ = notifier.set(session.notifier());
        let pt = if passthrough.load(Ordering::Relaxed) { "on" } else { "off" };
        tracing::info!(mountpoint = %path.display(), passthrough = pt, "volume mounted for local programs");
        Ok(Self { path, session: Some(session), passthrough })
    }

    /// Whether reads and writes of regular files go straight to their backing files now.
    pub fn passthrough(&self) -> bool {
        self.passthrough.load(Ordering::Relaxed)
    }

    /// Unmounts: at once when nothing uses the mount, else lazily (programs that still hold
    /// files there keep them until they close them, new lookups no longer reach it). Waits at
    /// most [`STOP_WAIT`] for the session's threads: a copy of the mount in another mount
    /// namespace (a process started with `unshare -m` or `ip netns exec` where `/` is not a
    /// shared mount) keeps the connection open; it ends when nasgw exits.
    pub async fn stop(mut self) {
        let Some(session) = self.session.take() else { return };
        let path = self.path.clone();
        let shown = path.clone();
        let (done, joined) = tokio::sync::oneshot::channel::<()>();
        // A thread of its own (not the runtime's blocking pool, which the runtime waits for
        // at exit): if the join never ends, the process still does.
        let spawned = std::thread::Builder::new().name("nasgw-fuse-stop".into()).spawn(move || {
            // A clean unmount ends the connection and every session thread returns.
            if let Err(e) = session.umount_and_join() {
                tracing::warn!(mountpoint = %path.display(), error = %e, "mount busy: detaching it lazily");
                // Its threads end when the last program using it lets go (or at exit).
                mountpoint::detach(&path);
            }
            tracing::info!(mountpoint = %path.display(), "volume unmounted");
            let _ = done.send(());
        });
        if spawned.is_err() {
            tracing::warn!(mountpoint = %shown.display(), "cannot start the unmount; the mount ends when nasgw exits");
            return;
        }
        let join = joined;
        if tokio::time::timeout(STOP_WAIT, join).await.is_err() {
            tracing::warn!(
                mountpoint = %shown.display(),
                "the mount's connection is still held (a copy of the mount in another mount namespace?); it ends when nasgw exits"
            );
        }
    }
}
