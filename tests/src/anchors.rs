//! The anchors nasgw is judged against, as real child processes: Samba's `smbd` serving the
//! seed's guest share `[pub]`, and NFS-Ganesha (FSAL_VFS on a directory, or FSAL_GLUSTER on a
//! volume) with its own `rpcbind`. Each is started in the foreground with every directory it
//! writes private under the caller's directory, polled until it answers, and stopped by PID.
//!
//! Ganesha needs `rpcbind` on port 111, a machine-wide singleton that nasgw's own portmapper
//! may also want. So Ganesha runs only in a private network namespace (see
//! [`isolate_network`]), and it and its `rpcbind` share a private `/run` in a private mount
//! namespace; both are stopped by PID. (Not in a private PID namespace: there Ganesha 4.3 with
//! FSAL_GLUSTER crashes at start, in liburcu's threads.)

use std::fs::File;
use std::io::Write as _;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use crate::{free_port, run, wait_for};

/// How long an anchor may take to answer after start (Ganesha takes ~1-2 s here).
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Moves the calling thread into a fresh network namespace: loopback up, plus one veth pair
/// addressed in 198.18.255.0/30 (Ganesha resolves `Bind_addr` with `AI_ADDRCONFIG`, which
/// fails on a namespace that has nothing but loopback). Every process and thread started from
/// this thread afterwards inherits it, so servers and clients meet on a private `127.0.0.1`
/// where port 111 is free. Needs root.
pub fn isolate_network() -> std::io::Result<()> {
    // SAFETY: unshare(2) with a valid flag; it changes only the calling thread's namespace.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    run("ip", &["link", "set", "lo", "up"]);
    run("ip", &["link", "add", "bench0", "type", "veth", "peer", "name", "bench1"]);
    run("ip", &["addr", "add", "198.18.255.1/30", "dev", "bench0"]);
    run("ip", &["link", "set", "bench0", "up"]);
    run("ip", &["link", "set", "bench1", "up"]);
    let _ = ISOLATED.set(thread_netns().unwrap_or_default());
    Ok(())
}

/// Moves the calling thread into the named network namespace (`/run/netns/NAME`, e.g. a
/// GlusterFS client host of [`crate::Topology`]), so anchors started afterwards reach that
/// host's peers and its clients reach them; it then counts as isolated for [`Ganesha`] (the
/// namespace is private to the caller's topology, so its port 111 is free). Dropping the
/// guard moves the thread back: do so before the topology is torn down, since tearing down
/// kills every process left in its namespaces.
pub fn enter_netns(name: &str) -> std::io::Result<NetnsGuard> {
    let prev = File::open("/proc/thread-self/ns/net")?;
    let f = File::open(format!("/run/netns/{name}"))?;
    setns(&f)?;
    let _ = ENTERED.set(thread_netns().unwrap_or_default());
    Ok(NetnsGuard { prev })
}

fn setns(f: &File) -> std::io::Result<()> {
    // SAFETY: setns(2) on an open namespace file; it changes only the calling thread.
    if unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(f), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Returns the thread to the namespace it was in before [`enter_netns`] when dropped.
pub struct NetnsGuard {
    prev: File,
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        if let Err(e) = setns(&self.prev) {
            eprintln!("cannot return to the previous network namespace: {e}");
        }
    }
}

/// The namespace [`enter_netns`] entered (`net:[inode]`).
static ENTERED: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The namespace [`isolate_network`] made (`net:[inode]`).
static ISOLATED: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn thread_netns() -> Option<String> {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) };
    Some(std::fs::read_link(format!("/proc/self/task/{tid}/ns/net")).ok()?.display().to_string())
}

/// Is the calling thread in the namespace [`isolate_network`] made or [`enter_netns`] entered?
pub fn network_is_isolated() -> bool {
    let Some(mine) = thread_netns() else { return false };
    [ISOLATED.get(), ENTERED.get()].into_iter().flatten().any(|ns| !ns.is_empty() && *ns == mine)
}

fn answers(port: u16) -> bool {
    TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_millis(200)).is_ok()
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Samba's smbd serving one directory as the seed's guest share `[pub]` (browseable, writable,
/// guest ok, guest only, force user root) on `127.0.0.1:port`.
pub struct Smbd {
    /// The SMB port it listens on.
    pub port: u16,
    /// Its private directory (config, state, log).
    pub dir: PathBuf,
    child: Option<Child>,
}

impl Smbd {
    /// Writes a config under `dir` and starts `smbd -F` serving `share` as `[pub]`; returns
    /// once the port accepts connections.
    pub fn start(dir: &Path, share: &Path) -> Smbd {
        Self::start_with(dir, share, "")
    }

    /// [`Smbd::start`] with `extra` appended to smb.conf (more shares, e.g. one with
    /// `smb encrypt = required`).
    pub fn start_with(dir: &Path, share: &Path, extra: &str) -> Smbd {
        crate::require_tool("smbd");
        let port = free_port();
        let mut global = format!("[global]\nsmb ports = {port}\ninterfaces = 127.0.0.1\nbind interfaces only = yes\n");
        for (key, sub) in [
            ("private dir", "private"),
            ("lock directory", "lock"),
            ("state directory", "state"),
            ("cache directory", "cache"),
            ("pid directory", "pid"),
            ("ncalrpc dir", "ncalrpc"),
        ] {
            let p = dir.join(sub);
            std::fs::create_dir_all(&p).expect("create smbd dir");
            global.push_str(&format!("{key} = {}\n", p.display()));
        }
        global.push_str(
            "map to guest = Bad User\ndisable netbios = yes\nload printers = no\nprinting = bsd\nprintcap name = /dev/null\nlog level = 0\n",
        );
        let conf = format!(
            "{global}\n[pub]\npath = {}\nbrowseable = yes\nwritable = yes\nguest ok = yes\nguest only = yes\nforce user = root\n{extra}",
            share.display()
        );
        let conf_path = dir.join("smb.conf");
        std::fs::write(&conf_path, conf).expect("write smb.conf");
        let log = dir.join("smbd.log");
        let child = Command::new("smbd")
            .args(["-F", "--no-process-group", "--debug-stdout", "-s"])
            .arg(&conf_path)
            // smbd signals its whole process group when it stops: give it its own.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(File::create(&log).expect("smbd log"))
            .stderr(Stdio::from(File::options().append(true).open(&log).expect("smbd log")))
            .spawn()
            .expect("spawn smbd");
        let mut smbd = Smbd { port, dir: dir.to_path_buf(), child: Some(child) };
        wait_for("smbd to accept connections", START_TIMEOUT, Duration::from_millis(50), || {
            if let Some(s) = smbd.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("smbd exited during start-up ({s}):\n{}", log_tail(&log));
            }
            answers(port).then_some(())
        });
        smbd
    }

    /// Adds `user` (an existing Unix account) with `password` to smbd's own passdb
    /// (`smbpasswd -a`), for shares that need a signed-in user.
    pub fn add_user(&self, user: &str, password: &str) -> std::io::Result<()> {
        use std::io::Write;
        let mut child = Command::new("smbpasswd")
            .args(["-c"])
            .arg(self.dir.join("smb.conf"))
            .args(["-s", "-a", user])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        write!(child.stdin.take().expect("piped"), "{password}\n{password}\n")?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            return Err(std::io::Error::other(format!(
                "smbpasswd -a {user}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }

    /// The UNC name smbclient takes (`//127.0.0.1/pub`; add `-p port`).
    pub fn unc(&self) -> String {
        "//127.0.0.1/pub".to_string()
    }

    /// smbd's PID.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGTERM, then SIGKILL after 10 s; returns once it has exited.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child's PID.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            if wait_exit(&mut c, Duration::from_secs(10)).is_none() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

impl Drop for Smbd {
    fn drop(&mut self) {
        self.halt();
    }
}

/// What a Ganesha export serves.
pub enum GaneshaFsal<'a> {
    /// FSAL_VFS on a local directory (also a FUSE mount).
    Vfs(&'a Path),
    /// FSAL_GLUSTER on a volume: volfile server address and volume name.
    Gluster {
        /// A volfile server (host or address).
        server: &'a str,
        /// The GlusterFS volume name.
        volume: &'a str,
    },
}

/// NFS-Ganesha serving one NFSv3 export over TCP on `127.0.0.1`, with its own rpcbind.
/// Root is not squashed (`No_Root_Squash`), as an admin benchmarking it would configure it.
pub struct Ganesha {
    /// NFS port.
    pub nfs_port: u16,
    /// MOUNT port.
    pub mount_port: u16,
    /// The export's path as NFSv3 clients mount it (Ganesha's v3 mounts use the real `Path`).
    pub export_path: String,
    /// NLM 4 port (TCP) when started with [`Ganesha::start_with_nlm`].
    pub nlm_port: Option<u16>,
    /// Its private directory (config, log, recovery root).
    pub dir: PathBuf,
    /// `unshare` exec'd into the shell that exec'd Ganesha: this child is Ganesha.
    launcher: Option<Child>,
}

impl Ganesha {
    /// Starts `ganesha.nfsd -F` and its `rpcbind` (see the module doc); returns once NFS and
    /// MOUNT accept connections. The caller must have called [`isolate_network`].
    pub fn start(dir: &Path, fsal: GaneshaFsal<'_>) -> Ganesha {
        Self::launch(dir, fsal, false, "")
    }

    /// [`Ganesha::start`] with more `NFS_CORE_PARAM` settings (`Key = value;` each), e.g.
    /// `RPC_Max_Connections = 20000;` for the bench's idle-connection rows.
    pub fn start_with_core(dir: &Path, fsal: GaneshaFsal<'_>, core_extra: &str) -> Ganesha {
        Self::launch(dir, fsal, false, core_extra)
    }

    /// [`Ganesha::start`] with its lock manager (NLM 4 over TCP on [`Ganesha::nlm_port`]) and an
    /// `rpc.statd` beside its rpcbind (state under `dir`, no notifications), as an admin runs it
    /// for clients that lock.
    pub fn start_with_nlm(dir: &Path, fsal: GaneshaFsal<'_>) -> Ganesha {
        Self::launch(dir, fsal, true, "")
    }

    fn launch(dir: &Path, fsal: GaneshaFsal<'_>, nlm: bool, core_extra: &str) -> Ganesha {
        crate::require_tool("ganesha.nfsd");
        if nlm {
            crate::require_tool("rpc.statd");
        }
        crate::require_tool("rpcbind");
        assert!(
            network_is_isolated(),
            "Ganesha needs rpcbind on port 111: call anchors::isolate_network() first so it gets a private one"
        );
        std::fs::create_dir_all(dir.join("recovery")).expect("create ganesha dir");
        let (nfs_port, mount_port) = (free_port(), free_port());
        let nlm_port = nlm.then(free_port);
        let nlm_conf = match nlm_port {
            Some(p) => format!("Enable_NLM = true; NLM_Port = {p};"),
            None => "Enable_NLM = false;".to_string(),
        };
        let (path, fsal_block) = match fsal {
            GaneshaFsal::Vfs(p) => (p.display().to_string(), "FSAL { Name = VFS; }".to_string()),
            GaneshaFsal::Gluster { server, volume } => (
                format!("/{volume}"),
                format!(
                    "FSAL {{ Name = GLUSTER; Hostname = \"{server}\"; Volume = \"{volume}\"; glfs_log = \"{}\"; }}",
                    dir.join("gfapi.log").display()
                ),
            ),
        };
        let conf = format!(
            "NFS_CORE_PARAM {{ Bind_addr = 127.0.0.1; NFS_Port = {nfs_port}; MNT_Port = {mount_port}; Protocols = 3,4; \
             {nlm_conf} Enable_RQUOTA = false; Enable_UDP = false; {core_extra} \
             Plugins_Dir = \"/usr/lib/x86_64-linux-gnu/ganesha\"; }}\n\
             NFSv4 {{ RecoveryRoot = \"{rec}\"; Graceless = true; }}\n\
             EXPORT {{ Export_Id = 1; Path = \"{path}\"; Pseudo = /x; Access_Type = RW; Squash = No_Root_Squash; \
             SecType = sys; Transports = TCP; Protocols = 3; {fsal_block} }}\n",
            rec = dir.join("recovery").display()
        );
        let conf_path = dir.join("ganesha.conf");
        std::fs::write(&conf_path, conf).expect("write ganesha.conf");
        let log = dir.join("ganesha.log");
        let script = dir.join("launch.sh");
        let mut f = File::create(&script).expect("write launch.sh");
        // A private /run for rpcbind's socket and lock; Ganesha registers through that socket.
        let statd = if nlm {
            let sd = dir.join("statd");
            for sub in ["sm", "sm.bak"] {
                std::fs::create_dir_all(sd.join(sub)).expect("create statd dir");
            }
            format!(
                "rpc.statd -F --no-notify -P '{}' &\necho $! > '{}'\n\
                 for i in $(seq 200); do rpcinfo -p 127.0.0.1 2>/dev/null | grep -q status && break; sleep 0.025; done\n",
                sd.display(),
                dir.join("statd.pid").display()
            )
        } else {
            String::new()
        };
        write!(
            f,
            "set -e\nmount -t tmpfs tmpfs /run\nmkdir -p /run/gluster /run/ganesha\nrpcbind -f -w &\n\
             echo $! > '{}'\n\
             for i in $(seq 200); do [ -S /run/rpcbind.sock ] && break; sleep 0.025; done\n\
             {statd}exec ganesha.nfsd -F -L '{}' -f '{}' -p /run/ganesha.pid\n",
            dir.join("rpcbind.pid").display(),
            log.display(),
            conf_path.display()
        )
        .expect("write launch.sh");
        drop(f);
        let launcher = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh"])
            .arg(&script)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(File::create(dir.join("launch.log")).expect("launch log"))
            .stderr(Stdio::from(File::create(dir.join("launch.err")).expect("launch log")))
            .spawn()
            .expect("spawn unshare");
        let mut g = Ganesha {
            nfs_port,
            mount_port,
            export_path: path,
            nlm_port,
            dir: dir.to_path_buf(),
            launcher: Some(launcher),
        };
        wait_for("Ganesha to accept NFS and MOUNT connections", START_TIMEOUT, Duration::from_millis(50), || {
            if let Some(s) = g.launcher.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!(
                    "Ganesha exited during start-up ({s}):\n{}\n{}",
                    log_tail(&log),
                    log_tail(&dir.join("launch.err"))
                );
            }
            let up = std::fs::read_to_string(&log).unwrap_or_default().contains("NFS SERVER INITIALIZED");
            (up && answers(nfs_port) && answers(mount_port) && nlm_port.is_none_or(answers)).then_some(())
        });
        g
    }

    /// A libnfs URL for `file` (relative to the export) with the ports and, if given, the
    /// AUTH_UNIX uid/gid to use.
    pub fn url(&self, file: &str, ids: Option<(u32, u32)>) -> String {
        let ids = ids.map(|(u, g)| format!("&uid={u}&gid={g}")).unwrap_or_default();
        format!(
            "nfs://127.0.0.1{}/{file}?version=3&nfsport={}&mountport={}{ids}",
            self.export_path, self.nfs_port, self.mount_port
        )
    }

    /// Ganesha's PID.
    pub fn pid(&self) -> Option<u32> {
        self.launcher.as_ref().map(Child::id)
    }

    /// Kills Ganesha (SIGKILL: an anchor's shutdown is not under test) and its rpcbind by PID.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        if let Some(mut c) = self.launcher.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for (file, comm) in [("rpcbind.pid", "rpcbind"), ("statd.pid", "rpc.statd")] {
            let pid = std::fs::read_to_string(self.dir.join(file)).unwrap_or_default();
            if let Ok(pid) = pid.trim().parse::<i32>() {
                // Only if that PID is still ours (not reused since).
                if std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm) {
                    // SAFETY: kill(2) on a daemon our launcher started.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
                let _ = std::fs::remove_file(self.dir.join(file));
            }
        }
    }
}

impl Drop for Ganesha {
    fn drop(&mut self) {
        self.halt();
    }
}
