//! The managed FUSE mount (`[volume] backend = "gluster"`, `access = "fuse"`): nasgw mounts the
//! volume itself, watches the client process, mounts again when it dies, and unmounts on stop.
//!
//! - The client is `glusterfs -N` (foreground), a child of nasgw: its death is seen at once
//!   (no polling of a daemonised process), and stop reaps it.
//! - Volfile servers are this node's own first, then the others (what `mount.glusterfs
//!   gluster1:smb` with `backup-volfile-servers` does).
//! - Under the volume sits a **read-only guard**: an empty read-only tmpfs mounted on the mount
//!   point before the volume is mounted on top of it. Whenever the volume is not mounted (start,
//!   client crash, failed mount) the directory refuses writes with EROFS, so no write ever lands
//!   in the empty directory underneath.
//! - A mount counts only when `/proc/self/mountinfo` shows `fuse.glusterfs` as the top mount of
//!   the mount point *and* its root answers a stat.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use super::health::{HealthMonitor, VolumeHealth};

/// Volume options under which the managed mount's GlusterFS client keeps metadata and small
/// files only as long as they are true: the bricks' upcalls (`features.cache-invalidation`)
/// drop md-cache's entries (`performance.cache-invalidation`) and quick-read's
/// (`performance.quick-read-cache-invalidation`), and the client drops the kernel's copy with
/// md-cache's, so an open through nasgw sees another client's change once its upcall arrived
/// (milliseconds, `gluster_fresh_open`), where by default md-cache and quick-read keep what they
/// saw for 1 s. md-cache may then keep
/// an entry as long as the bricks keep telling (both 600 s, GlusterFS's `metadata-cache`
/// group). The appliance sets them on the volumes it makes.
pub const UPCALL_CACHE_OPTIONS: &[(&str, &str)] = &[
    ("features.cache-invalidation", "on"),
    ("features.cache-invalidation-timeout", "600"),
    ("performance.cache-invalidation", "on"),
    ("performance.md-cache-timeout", "600"),
    ("performance.quick-read-cache-invalidation", "on"),
];

/// What to mount where.
#[derive(Debug, Clone)]
pub struct MountSpec {
    /// The GlusterFS volume name.
    pub volume: String,
    /// Volfile servers, this node's own first.
    pub servers: Vec<String>,
    /// The private mount point (created if missing).
    pub mount_point: PathBuf,
    /// The FUSE client's log file.
    pub log_file: PathBuf,
    /// How long one mount attempt may take before it counts as failed.
    pub mount_timeout: Duration,
}

/// Where the mount stands, for the health probe and the control socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountState {
    /// Mounting (first time or again).
    Mounting,
    /// Mounted; `pid` is the glusterfs client.
    Mounted {
        /// The client process.
        pid: u32,
    },
    /// The last attempt failed; retrying after a pause.
    Failed {
        /// Why.
        reason: String,
    },
    /// Unmounted on stop.
    Stopped,
}

/// A supervised GlusterFS FUSE mount; [`ManagedMount::shutdown`] unmounts it.
pub struct ManagedMount {
    spec: MountSpec,
    state: Arc<Mutex<MountState>>,
    stop: CancellationToken,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    mounts: Arc<Mutex<u64>>,
}

impl ManagedMount {
    /// Prepares the mount point and its read-only guard, then starts the supervisor task, which
    /// mounts the volume and keeps it mounted. Returns at once: `state()` and the health watch
    /// say when the volume is there. Fails only when the mount point cannot be prepared.
    pub fn start(spec: MountSpec, health: HealthMonitor) -> Result<Arc<ManagedMount>> {
        // A mount left by a killed nasgw (a watchdog abort, `kill -9`) is cleared first: when
        // its FUSE client died too, the dead mount answers ENOTCONN to every stat, so creating
        // the directory would fail with EEXIST and every restart would fail the same way.
        // (Stacked guards are harmless.)
        detach_stale(&spec.mount_point);
        std::fs::create_dir_all(&spec.mount_point)
            .with_context(|| format!("cannot create mount point {}", spec.mount_point.display()))?;
        mount_guard(&spec.mount_point)?;
        let m = Arc::new(ManagedMount {
            spec,
            state: Arc::new(Mutex::new(MountState::Mounting)),
            stop: CancellationToken::new(),
            task: Mutex::new(None),
            mounts: Arc::new(Mutex::new(0)),
        });
        let task = tokio::spawn(supervise(m.spec.clone(), m.state.clone(), m.mounts.clone(), health, m.stop.clone()));
        *m.task.lock().expect("lock") = Some(task);
        Ok(m)
    }

    /// The directory the POSIX backend serves (the volume when mounted; the read-only guard
    /// otherwise).
    pub fn path(&self) -> &Path {
        &self.spec.mount_point
    }

    /// The current state.
    pub fn state(&self) -> MountState {
        self.state.lock().expect("lock").clone()
    }

    /// How many times the volume was mounted (1 after start, +1 per remount).
    pub fn mount_count(&self) -> u64 {
        *self.mounts.lock().expect("lock")
    }

    /// Ends the mount's FUSE connection at once, for `reason` (logged): the client is killed,
    /// and the kernel aborts the connection when the client's `/dev/fuse` closes, so every
    /// descriptor on the mount fails from then on (ENOTCONN), the kernel's passthrough backing
    /// files of the node's own mount too, and nothing the client still buffered (write-behind)
    /// is sent. The supervisor mounts again (~0.2 s) for new operations. Returns once the
    /// client has exited (at most 2 s); false when no client was mounted.
    pub fn abort(&self, reason: &str) -> bool {
        let MountState::Mounted { pid } = self.state() else { return false };
        let t = Instant::now();
        // SAFETY: kill(2) on our own child. Its PID cannot be reused before the supervisor
        // reaps it, which it does only on seeing it exit, microseconds before leaving state
        // Mounted; a client that exited by itself in that window is what we want dead anyway.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        // Its descriptors close as it exits; a zombie (or a reaped child) has none.
        while t.elapsed() < Duration::from_secs(2) && !exited(pid) {
            std::thread::sleep(Duration::from_millis(1));
        }
        tracing::warn!(
            %reason,
            pid,
            took_ms = t.elapsed().as_millis() as u64,
            exited = exited(pid),
            "killed the volume's FUSE client: its descriptors (and local programs' passthrough files) fail from now on"
        );
        true
    }

    /// Unmounts the volume and the guard and reaps the client. Call after in-flight requests
    /// have finished.
    pub async fn shutdown(&self) {
        self.stop.cancel();
        let task = self.task.lock().expect("lock").take();
        if let Some(t) = task {
            let _ = t.await;
        }
        unmount_all(&self.spec.mount_point);
        *self.state.lock().expect("lock") = MountState::Stopped;
    }
}

/// The supervisor: mount, wait for the client to die or stop, repeat.
async fn supervise(
    spec: MountSpec,
    state: Arc<Mutex<MountState>>,
    count: Arc<Mutex<u64>>,
    health: HealthMonitor,
    stop: CancellationToken,
) {
    let mut backoff = Duration::from_millis(200);
    loop {
        *state.lock().expect("lock") = MountState::Mounting;
        match mount_once(&spec, &stop).await {
            Ok(mut child) => {
                let pid = child.id().unwrap_or(0);
                *count.lock().expect("lock") += 1;
                *state.lock().expect("lock") = MountState::Mounted { pid };
                tracing::info!(volume = %spec.volume, mount_point = %spec.mount_point.display(), pid, "volume mounted");
                backoff = Duration::from_millis(200);
                tokio::select! {
                    status = child.wait() => {
                        let reason = match status {
                            Ok(s) => format!("glusterfs client {pid} exited ({s})"),
                            Err(e) => format!("glusterfs client {pid} lost: {e}"),
                        };
                        tracing::warn!(%reason, "FUSE client died: mounting the volume again");
                        health.publish(VolumeHealth::Remounting { reason });
                        // The dead FUSE mount answers ENOTCONN; detach it so the guard shows.
                        detach_top_fuse(&spec.mount_point);
                    }
                    _ = stop.cancelled() => {
                        stop_client(&spec.mount_point, child).await;
                        return;
                    }
                }
            }
            Err(e) => {
                let reason = format!("{e:#}");
                tracing::error!(volume = %spec.volume, %reason, retry_in_ms = backoff.as_millis() as u64, "mount failed");
                health.publish(VolumeHealth::Unreachable { reason: reason.clone() });
                *state.lock().expect("lock") = MountState::Failed { reason };
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.cancelled() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
        if stop.is_cancelled() {
            return;
        }
    }
}

/// One mount attempt: start the client, wait until the mount is really there.
async fn mount_once(spec: &MountSpec, stop: &CancellationToken) -> Result<Child> {
    let mut cmd = Command::new(glusterfs_binary());
    cmd.args(["-N", "--process-name", "fuse"]);
    for s in &spec.servers {
        cmd.arg(format!("--volfile-server={s}"));
    }
    cmd.arg(format!("--volfile-id={}", spec.volume))
        .arg(format!("--log-file={}", spec.log_file.display()))
        // /.gfid/<uuid> opens any file by its GFID (the identity NFS handles carry).
        .arg("--aux-gfid-mount")
        .arg(&spec.mount_point)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let mut child = cmd.spawn().with_context(|| format!("cannot run {}", glusterfs_binary().display()))?;
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("glusterfs exited ({status}) before mounting; see {}", spec.log_file.display());
        }
        if top_mount_is_glusterfs(&spec.mount_point) {
            // The kernel has the mount. Wait for the volume to answer, but keep the client even
            // if it does not: see `first_answer`.
            match first_answer(spec, &mut child, start, stop).await {
                FirstAnswer::Answered => {}
                FirstAnswer::NotYet(why) => tracing::warn!(
                    volume = %spec.volume,
                    reason = %why,
                    "mounted; the volume does not answer yet: keeping the client, which connects to the bricks by itself"
                ),
                FirstAnswer::Exited(status) => {
                    detach_top_fuse(&spec.mount_point);
                    bail!("glusterfs exited ({status}) after mounting; see {}", spec.log_file.display());
                }
                FirstAnswer::Stopping => {
                    stop_client(&spec.mount_point, child).await;
                    bail!("stopping");
                }
            }
            return Ok(child);
        }
        if start.elapsed() > spec.mount_timeout {
            stop_client(&spec.mount_point, child).await;
            bail!("mount did not appear within {:?}; see {}", spec.mount_timeout, spec.log_file.display());
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            _ = stop.cancelled() => {
                stop_client(&spec.mount_point, child).await;
                bail!("stopping");
            }
        }
    }
}

/// How a fresh mount's first stat of the volume root went.
enum FirstAnswer {
    /// The root answered.
    Answered,
    /// The client lives but the volume has not answered by the mount timeout (why).
    NotYet(String),
    /// The client exited (no such volume, bad volfile): a failed mount.
    Exited(std::process::ExitStatus),
    /// nasgw is stopping.
    Stopping,
}

/// Stats the new mount's root until it answers, the client exits, or `spec.mount_timeout`
/// (counted from `start`) passes.
///
/// A client that has just mounted answers ENOTCONN until it has connected to enough bricks for
/// quorum, and a stat can hang meanwhile: on a node coming back from a power cut its own brick
/// starts after glusterd answers and the other nodes' bricks are busy healing it, and on a slow
/// machine connecting takes many seconds. That is the volume's health, which the probe reports,
/// not a failed mount: GlusterFS reconnects by itself, while killing the client would only start
/// its connecting over (on a slow node, every attempt could be killed before it had connected).
async fn first_answer(spec: &MountSpec, child: &mut Child, start: Instant, stop: &CancellationToken) -> FirstAnswer {
    let mut last = String::from("no answer yet");
    loop {
        let left = spec.mount_timeout.saturating_sub(start.elapsed());
        if left.is_zero() {
            return FirstAnswer::NotYet(last);
        }
        let p = spec.mount_point.clone();
        // On a blocking thread with a timeout: a stat may hang in the client.
        let stat = tokio::time::timeout(left, tokio::task::spawn_blocking(move || std::fs::metadata(&p).map(|_| ())));
        tokio::select! {
            r = stat => match r {
                Ok(Ok(Ok(()))) => return FirstAnswer::Answered,
                Ok(Ok(Err(e))) => last = e.to_string(),
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => return FirstAnswer::NotYet(format!("a stat of the root hung for {left:?}")),
            },
            _ = stop.cancelled() => return FirstAnswer::Stopping,
        }
        if let Ok(Some(status)) = child.try_wait() {
            return FirstAnswer::Exited(status);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = stop.cancelled() => return FirstAnswer::Stopping,
        }
    }
}

/// Unmounts the FUSE mount (if it is the top one) and reaps the client: SIGTERM, then SIGKILL.
async fn stop_client(mount_point: &Path, mut child: Child) {
    detach_top_fuse(mount_point);
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    }
    if tokio::time::timeout(Duration::from_secs(5), child.wait()).await.is_err() {
        let _ = child.kill().await;
    }
}

/// Whether process `pid` has exited: gone, or a zombie (whose descriptors are closed).
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name's closing parenthesis.
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => true,
    }
}

/// The glusterfs client binary (`/usr/sbin` is not on every PATH).
fn glusterfs_binary() -> PathBuf {
    let mut dirs: Vec<PathBuf> =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    dirs.extend(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from));
    dirs.into_iter().map(|d| d.join("glusterfs")).find(|p| p.is_file()).unwrap_or_else(|| "glusterfs".into())
}

/// The file-system types mounted at `path`, bottom to top, in this process's mount namespace.
pub fn mount_stack(path: &Path) -> Vec<String> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else { return Vec::new() };
    parse_mount_stack(&info, path)
}

/// Pure part of [`mount_stack`]: mountinfo text -> fs types at `path` in mount order.
pub fn parse_mount_stack(mountinfo: &str, path: &Path) -> Vec<String> {
    let want = escape_mountinfo(&path.to_string_lossy());
    mountinfo
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let sep = f.iter().position(|x| *x == "-")?;
            (f.get(4)? == &want).then(|| f.get(sep + 1).map(|t| t.to_string())).flatten()
        })
        .collect()
}

fn escape_mountinfo(p: &str) -> String {
    p.replace('\\', "\\134").replace(' ', "\\040").replace('\t', "\\011").replace('\n', "\\012")
}

/// Is the volume (not the guard, not nothing) what `path` shows right now?
pub fn top_mount_is_glusterfs(path: &Path) -> bool {
    mount_stack(path).last().is_some_and(|t| t == "fuse.glusterfs")
}

fn mount_guard(path: &Path) -> Result<()> {
    if mount_stack(path).last().is_some_and(|t| t == "tmpfs") {
        return Ok(());
    }
    let target = cstring(path)?;
    // SAFETY: plain mount(2) with valid NUL-terminated strings.
    let rc = unsafe {
        libc::mount(
            c"nasgw-guard".as_ptr(),
            target.as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            c"size=4k,mode=0555".as_ptr().cast(),
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        bail!("cannot mount the read-only guard on {} (nasgw needs root for a managed mount): {e}", path.display());
    }
    Ok(())
}

/// Detaches the top mount at `path` when it is a GlusterFS FUSE mount (dead or alive).
fn detach_top_fuse(path: &Path) {
    if top_mount_is_glusterfs(path) {
        detach(path);
    }
}

/// Clears mounts a crashed nasgw left (dead FUSE mounts answer ENOTCONN and would hide the guard).
fn detach_stale(path: &Path) {
    // Bounded: a detach that fails (no privilege) must not spin.
    for _ in 0..mount_stack(path).len() {
        if !top_mount_is_glusterfs(path) {
            break;
        }
        detach(path);
    }
}

/// Unmounts everything nasgw stacked at `path` (volume, guard).
fn unmount_all(path: &Path) {
    for _ in 0..mount_stack(path).len() {
        if matches!(mount_stack(path).last().map(String::as_str), Some("fuse.glusterfs") | Some("tmpfs")) {
            detach(path);
        }
    }
}

fn detach(path: &Path) {
    if let Ok(p) = cstring(path) {
        // SAFETY: umount2 with a valid path; MNT_DETACH never blocks on a hung mount.
        let rc = unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) };
        if rc != 0 {
            tracing::warn!(path = %path.display(), error = %std::io::Error::last_os_error(), "unmount failed");
        }
    }
}

fn cstring(path: &Path) -> Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    Ok(std::ffi::CString::new(path.as_os_str().as_bytes())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_stack_reads_types_in_order() {
        let info = "\
22 1 8:1 / / rw - ext4 /dev/vda rw
100 22 0:50 / /var/lib/nasgw/mnt rw - tmpfs nasgw-guard ro
101 100 0:51 / /var/lib/nasgw/mnt rw - fuse.glusterfs 198.18.0.1:smb rw
102 22 0:52 / /var/lib/nasgw/mnt2 rw - tmpfs x rw
103 22 0:53 / /a\\040b rw,relatime shared:5 - fuse.glusterfs h:v rw
";
        let p = Path::new("/var/lib/nasgw/mnt");
        assert_eq!(parse_mount_stack(info, p), vec!["tmpfs", "fuse.glusterfs"]);
        assert_eq!(parse_mount_stack(info, Path::new("/a b")), vec!["fuse.glusterfs"]);
        assert!(parse_mount_stack(info, Path::new("/nope")).is_empty());
        assert!(parse_mount_stack("garbage line\n\n- -", p).is_empty());
    }
}
