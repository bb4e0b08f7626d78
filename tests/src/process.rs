//! One nasgw daemon under test: its directory, config, process and logs.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::Duration;

use crate::{nasgw_bin, wait_for};

/// A running nasgw daemon, stopped by PID when dropped.
pub struct Daemon {
    /// Its name in test output.
    pub name: String,
    /// Its private directory: config, data, state, logs.
    pub dir: PathBuf,
    /// The config file it was started with.
    pub config: PathBuf,
    /// The network namespace it runs in, if any.
    pub netns: Option<String>,
    child: Option<Child>,
}

impl Daemon {
    /// Writes `config_toml` to `dir/nasgw.toml` and starts `nasgw serve` on it (inside `netns`
    /// when given), then waits until its control socket answers. `{dir}` in the text is replaced
    /// by the daemon's directory, so each daemon gets its own data, state and socket.
    pub fn start(name: &str, dir: &Path, config_toml: &str, netns: Option<&str>) -> Daemon {
        let cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(nasgw_bin());
                c
            }
            None => Command::new(nasgw_bin()),
        };
        Self::spawn(name, dir, config_toml, netns, cmd)
    }

    /// [`Daemon::start`] (in no namespace) with an open-files limit of `nofile`, soft and hard,
    /// as on a machine that allows a process no more.
    pub fn start_with_open_files(name: &str, dir: &Path, config_toml: &str, nofile: u64) -> Daemon {
        use std::os::unix::process::CommandExt as _;
        let mut cmd = Command::new(nasgw_bin());
        let limit = libc::rlimit { rlim_cur: nofile, rlim_max: nofile };
        // SAFETY: runs in the child between fork and exec: setrlimit is async-signal-safe and
        // the closure touches nothing but its copy of `limit`.
        unsafe {
            cmd.pre_exec(move || match libc::setrlimit(libc::RLIMIT_NOFILE, &limit) {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            });
        }
        Self::spawn(name, dir, config_toml, None, cmd)
    }

    /// [`Daemon::start`] in network namespace `netns` but in the test's own mount namespace
    /// (`nsenter --net`, not `ip netns exec`, which gives each process a fresh one): mounts
    /// nasgw makes outlive it, as under systemd on a node.
    pub fn start_sharing_mounts(name: &str, dir: &Path, config_toml: &str, netns: &str) -> Daemon {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{netns}")).arg(nasgw_bin());
        Self::spawn(name, dir, config_toml, Some(netns), cmd)
    }

    fn spawn(name: &str, dir: &Path, config_toml: &str, netns: Option<&str>, mut cmd: Command) -> Daemon {
        std::fs::create_dir_all(dir).expect("create daemon dir");
        let config = dir.join("nasgw.toml");
        write_private(&config, &config_toml.replace("{dir}", &dir.display().to_string()));
        cmd.arg("--config").arg(&config).arg("serve").current_dir(dir);
        cmd.stdout(File::create(dir.join("stdout.log")).expect("log file"));
        cmd.stderr(File::create(dir.join("stderr.log")).expect("log file"));
        let child = cmd.spawn().expect("spawn nasgw");
        let mut d = Daemon {
            name: name.to_string(),
            dir: dir.to_path_buf(),
            config,
            netns: netns.map(str::to_string),
            child: Some(child),
        };
        d.wait_ready();
        d
    }

    /// The daemon's PID (`ip netns exec` execs nasgw, so it is nasgw's own).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    fn wait_ready(&mut self) {
        let name = self.name.clone();
        wait_for(
            &format!("{name} to answer on its control socket"),
            Duration::from_secs(30),
            Duration::from_millis(50),
            || {
                if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                    panic!("{name} exited during start-up ({status}):\n{}", self.logs());
                }
                self.ctl(&["status"]).status.success().then_some(())
            },
        );
    }

    /// Runs `nasgw --config CONFIG ARGS` (in the daemon's namespace) and returns its output.
    pub fn ctl(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(nasgw_bin());
                c
            }
            None => Command::new(nasgw_bin()),
        };
        cmd.arg("--config").arg(&self.config).args(args).output().expect("run nasgw ctl")
    }

    /// stdout and stderr so far, for failure messages.
    pub fn logs(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
        format!(
            "--- {} stdout ---\n{}--- {} stderr ---\n{}",
            self.name,
            read("stdout.log"),
            self.name,
            read("stderr.log")
        )
    }

    /// Sends `signal` to the daemon's PID.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's PID.
        unsafe { libc::kill(self.pid() as i32, signal) };
    }

    /// This node's state as `nasgw status --json` shows it ("OK", "UNHEALTHY", ...; empty when
    /// it cannot tell yet).
    pub fn this_node_state(&self) -> String {
        let out = self.ctl(&["status", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["nodes"]
            .as_array()
            .and_then(|n| n.iter().find(|n| n["this_node"] == true))
            .map_or(String::new(), |n| n["state"].as_str().unwrap_or_default().to_string())
    }

    /// Waits (polling) until this node is OK: its volume answers and its listeners are up.
    pub fn wait_ok(&self, timeout: Duration) {
        crate::wait_for(&format!("{} healthy", self.name), timeout, Duration::from_millis(50), || {
            (self.this_node_state() == "OK").then_some(())
        });
    }

    /// SIGTERM, then waits for the exit (fails the test after 40 s; the drop then kills it).
    pub fn stop(mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.reap(Duration::from_secs(40))
    }

    /// SIGKILL: a crash, no clean-up.
    pub fn kill(mut self) -> ExitStatus {
        self.signal(libc::SIGKILL);
        self.reap(Duration::from_secs(10))
    }

    fn reap(&mut self, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let status = wait_for(&format!("{} to exit", self.name), timeout, Duration::from_millis(20), || {
            child.try_wait().ok().flatten()
        });
        status
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Writes a config file the way an admin keeps one: mode 0600 (it may hold NT hashes), whatever
/// the umask and whatever mode an earlier file at `path` had, so `nasgw` does not warn about it.
pub fn write_private(path: &Path, text: &str) {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    f.set_permissions(std::fs::Permissions::from_mode(0o600)).expect("chmod 600 config");
    f.write_all(text.as_bytes()).expect("write config");
}
