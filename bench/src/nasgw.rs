//! nasgw as the bench runs it: the real binary through the test harness's `Daemon`, serving
//! the bench's directory over NFS and SMB on private loopback ports.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use nasgw_tests::{free_port, Daemon};

use crate::cpu::{self, Meter};
use crate::nfs_client::NfsEndpoint;

/// A running nasgw and what it serves; a protocol it does not serve carries the reason.
pub struct Nasgw {
    /// The daemon (stopped by PID on drop).
    pub daemon: Option<Daemon>,
    /// Its NFS endpoint, or why there is none.
    pub nfs: Result<NfsEndpoint, String>,
    /// Its SMB port, or why there is none.
    pub smb: Result<u16, String>,
    /// Its CPU time (the daemon and its children, e.g. a managed GlusterFS client).
    pub cpu: Meter,
}

/// The `[volume]` table for a local directory.
pub fn local_volume(path: &Path) -> String {
    format!("[volume]\nname = \"smb\"\nbackend = \"local\"\npath = \"{}\"\n", path.display())
}

fn listens(port: u16, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_millis(200)).is_ok() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts nasgw under `dir` with `volume` (a `[volume]` table), the seed's guest share `[pub]`
/// and, on the same folder, `[sealed]` (`encryption = "required"`) for user
/// [`crate::smb::SEALED_USER`]; never panics: a nasgw that fails to start yields reasons
/// instead of endpoints.
pub fn start(dir: &Path, volume: &str) -> Nasgw {
    start_with(dir, volume, "")
}

/// [`start`] with more keys in `[nfs]` (one per line), e.g. `max_connections`.
pub fn start_with(dir: &Path, volume: &str, nfs_extra: &str) -> Nasgw {
    start_with_keys(dir, volume, nfs_extra, "")
}

/// [`start`] with more keys in `[nfs]` and in `[smb]` (one per line each).
pub fn start_with_keys(dir: &Path, volume: &str, nfs_extra: &str, smb_extra: &str) -> Nasgw {
    let (nfs_port, smb_port, metrics_port) = (free_port(), free_port(), free_port());
    let config = format!(
        "{volume}\n[nfs]\nlisten = \"127.0.0.1:{nfs_port}\"\n{nfs_extra}\n[smb]\nlisten = \"127.0.0.1:{smb_port}\"\n{smb_extra}\n\
         [[smb.share]]\nname = \"pub\"\nwritable = true\nguest_ok = true\nguest_only = true\nforce_user = \"root\"\n\n\
         [[smb.share]]\nname = \"sealed\"\nwritable = true\nforce_user = \"root\"\nencryption = \"required\"\n\n\
         [metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n\n\
         [node]\ncontrol_socket = \"{{dir}}/ctl.sock\"\nstate_dir = \"{{dir}}/state\"\n"
    );
    let config = match with_password(dir, &config, crate::smb::SEALED_USER, crate::smb::SEALED_PASSWORD) {
        Ok(c) => c,
        Err(why) => return Nasgw { daemon: None, nfs: Err(why.clone()), cpu: Meter::missing(&why), smb: Err(why) },
    };
    let started = quietly(|| Daemon::start("nasgw", dir, &config, None));
    let daemon = match started {
        Ok(d) => d,
        Err(e) => {
            let why = format!("nasgw did not start: {}", last_error_line(&e));
            return Nasgw { daemon: None, nfs: Err(why.clone()), cpu: Meter::missing(&why), smb: Err(why) };
        }
    };
    let nfs = if listens(nfs_port, Duration::from_secs(5)) {
        Ok(NfsEndpoint { export: "/smb".into(), nfs_port, mount_port: nfs_port, metrics_port: Some(metrics_port) })
    } else {
        Err(not_served(&daemon, "NFS"))
    };
    let smb = if listens(smb_port, Duration::from_secs(1)) { Ok(smb_port) } else { Err(not_served(&daemon, "SMB")) };
    let cpu = cpu::track("nasgw", daemon.pid());
    Nasgw { daemon: Some(daemon), nfs, smb, cpu }
}

/// Runs `f`, turning a panic (the harness's way to report a failed start) into its message,
/// without printing a backtrace into the bench's output.
pub fn quietly<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(hook);
    r.map_err(|e| {
        e.downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic".into())
    })
}

/// The most telling line of a start-up failure: the daemon's last `error:` line, else the first.
pub fn last_error_line(msg: &str) -> String {
    msg.lines()
        .rev()
        .find(|l| l.trim_start().starts_with("error:"))
        .or_else(|| msg.lines().next())
        .unwrap_or("")
        .trim()
        .to_string()
}

/// Why `protocol` does not listen: nasgw's own log line saying so, else the plain fact.
fn not_served(daemon: &Daemon, protocol: &str) -> String {
    let logs = daemon.logs();
    let said = logs.lines().find(|l| l.contains(protocol) && l.contains("not served"));
    match said.and_then(|l| l.split("WARN").nth(1)) {
        Some(msg) => format!("nasgw: {}", msg.split_once(": ").map_or(msg, |(_, m)| m).trim()),
        None => format!("nasgw does not serve {protocol} (nothing listens on its port)"),
    }
}

/// `config` with `user`'s password set the way an admin does it: `nasgw passwd USER` on a file.
fn with_password(dir: &Path, config: &str, user: &str, password: &str) -> Result<String, String> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let file = dir.join("passwd.toml");
    std::fs::write(&file, config).map_err(|e| e.to_string())?;
    let mut child = Command::new(nasgw_tests::nasgw_bin())
        .arg("--config")
        .arg(&file)
        .args(["passwd", user])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("nasgw passwd: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        writeln!(stdin, "{password}").map_err(|e| e.to_string())?;
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("nasgw passwd {user} failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    std::fs::read_to_string(&file).map_err(|e| e.to_string())
}

/// nasgw's NFS read counters at one moment: which path its READ bytes took.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadCounters {
    /// Bytes read for clients.
    pub read: u64,
    /// Of which sent from the page cache without a copy (spliced or `sendfile`).
    pub zero_copy: u64,
    /// Of which spliced through a pooled pipe (`None`: an older nasgw without the counter).
    pub spliced: Option<u64>,
}

impl ReadCounters {
    /// The shares of the bytes read between `before` and `self`, as "spliced 97%, sendfile
    /// 3%, copied 0%" (or "no bytes read"). Pure.
    pub fn paths_since(&self, before: &ReadCounters) -> String {
        let read = self.read.saturating_sub(before.read);
        if read == 0 {
            return "no bytes read".into();
        }
        let pct = |n: u64| n as f64 * 100.0 / read as f64;
        let zero_copy = self.zero_copy.saturating_sub(before.zero_copy);
        let copied = read.saturating_sub(zero_copy);
        match (self.spliced, before.spliced) {
            (Some(now), Some(then)) => {
                let spliced = now.saturating_sub(then).min(zero_copy);
                format!(
                    "spliced {:.0}%, sendfile {:.0}%, copied {:.0}%",
                    pct(spliced),
                    pct(zero_copy - spliced),
                    pct(copied)
                )
            }
            _ => format!("without a copy {:.0}%, copied {:.0}%", pct(zero_copy), pct(copied)),
        }
    }
}

/// nasgw's NFS read counters, from its `GET /metrics` on `port`.
pub fn nfs_read_counters(port: u16) -> anyhow::Result<ReadCounters> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let value = |name: &str| {
        let key = format!("{name}{{protocol=\"nfs\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&key)?.trim().parse::<u64>().ok())
            .ok_or_else(|| anyhow::anyhow!("no {name} for NFS in nasgw's metrics"))
    };
    Ok(ReadCounters {
        read: value("nasgw_read_bytes_total")?,
        zero_copy: value("nasgw_read_sendfile_bytes_total")?,
        // An older nasgw (a comparison run with --nasgw) lacks it.
        spliced: value("nasgw_read_spliced_bytes_total").ok(),
    })
}

#[cfg(test)]
mod tests {
    use super::ReadCounters;

    #[test]
    fn read_paths_are_shares_of_the_bytes_read_between_two_readings() {
        let before = ReadCounters { read: 100, zero_copy: 50, spliced: Some(40) };
        let after = ReadCounters { read: 300, zero_copy: 240, spliced: Some(200) };
        assert_eq!(after.paths_since(&before), "spliced 80%, sendfile 15%, copied 5%");
        let old = ReadCounters { spliced: None, ..after };
        assert_eq!(old.paths_since(&before), "without a copy 95%, copied 5%");
        assert_eq!(before.paths_since(&before), "no bytes read");
    }
}
