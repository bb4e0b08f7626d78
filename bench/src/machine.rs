//! What the figures were measured on: date, CPU, memory, kernel, the disk, tool versions.

use std::path::Path;
use std::process::Command;

use crate::fixture::Sizes;

fn sh(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// The UTC time as `YYYYMMDD-HHMMSS`, for result file names.
pub fn stamp() -> String {
    sh("date", &["-u", "+%Y%m%d-%H%M%S"])
}

/// A markdown paragraph describing the machine and the run.
pub fn describe(work: &Path, sizes: Sizes) -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("?")
        .trim()
        .to_string();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let mem_kib: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let disk = sh("df", &["--output=source,fstype", &work.display().to_string()]);
    let disk = disk.lines().nth(1).unwrap_or("?").split_whitespace().collect::<Vec<_>>().join(" ");
    let smbd = sh("smbd", &["--version"]).replace("Version ", "");
    let libnfs = sh("dpkg-query", &["-W", "-f=${Version}", "libnfs-utils"]);
    let ganesha = sh("dpkg-query", &["-W", "-f=${Version}", "nfs-ganesha"]);
    format!(
        "Measured {} on {cpu}, {cores} cores, {} GiB RAM, Linux {}; data on {disk} (reads come from the page \
         cache; NFS writes end with COMMIT, so reach the disk; smbclient never flushes); loopback in a private network namespace. Clients: smbclient {smbd}, \
         libnfs-utils {libnfs} and nfs3_client; anchors: Samba smbd {smbd}, NFS-Ganesha {ganesha}. {} round(s) per row, median \
         shown with the min-max spread over rounds; servers interleaved within each round. Servers' CPU time \
         (user+sys) measured around each round from {}.\n",
        sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        mem_kib / (1 << 20),
        sh("uname", &["-r"]),
        sizes.rounds,
        crate::cpu::method()
    )
}
