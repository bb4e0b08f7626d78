//! The servers' own CPU time (user + system), read around every round: it moves far less than
//! wall-clock time on a busy machine, because it counts what the server did, not how long it
//! waited for a core.
//!
//! Each server's processes (the daemon and every process it forks later, e.g. smbd's child per
//! connection, nasgw's managed GlusterFS client) are moved into a cgroup v2 of their own under
//! `nasgw-bench-PID` below the bench's own cgroup, and `cpu.stat`'s `usage_usec` is read. Where no
//! writable cgroup v2 hierarchy exists, the process tree's `/proc/PID/stat` times are summed
//! instead (the root, its live descendants, and the children it has reaped); that fallback can
//! miss a child that exits between two reads before its parent reaps it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// Where a column's CPU time is read: one or more accounted process groups, summed (a
/// column can be served by several, e.g. smbd plus the FUSE client under its share).
#[derive(Clone, Debug, Default)]
pub struct Meter {
    parts: Vec<Part>,
    /// Why this column has no figure (nothing to measure, or tracking failed).
    missing: Option<String>,
}

#[derive(Clone, Debug)]
enum Part {
    /// A cgroup v2 directory of our own: `cpu.stat` `usage_usec`.
    Cgroup(PathBuf),
    /// A process tree's `/proc` times, rooted at this PID.
    Tree(u32),
}

impl Meter {
    /// A column whose CPU time cannot be read, and why.
    pub fn missing(why: &str) -> Meter {
        Meter { parts: Vec::new(), missing: Some(why.to_string()) }
    }

    /// This meter and `other` summed.
    pub fn plus(&self, other: &Meter) -> Meter {
        let mut parts = self.parts.clone();
        parts.extend(other.parts.iter().cloned());
        Meter { parts, missing: self.missing.clone().or_else(|| other.missing.clone()) }
    }

    /// The CPU time used so far by everything this meter covers.
    pub fn read(&self) -> Result<Duration, String> {
        if let Some(why) = &self.missing {
            return Err(why.clone());
        }
        if self.parts.is_empty() {
            return Err("not measured".into());
        }
        let mut total = Duration::ZERO;
        for p in &self.parts {
            total += match p {
                Part::Cgroup(dir) => cgroup_usage(dir)?,
                Part::Tree(pid) => tree_usage(*pid)?,
            };
        }
        Ok(total)
    }
}

/// Our cgroup v2 directory (`nasgw-bench-PID` below the bench's own cgroup, so the servers stay
/// under whatever limits the bench runs with), made on first use; `None` when the machine has
/// no writable cgroup v2 hierarchy.
fn bench_cgroup() -> Option<&'static Path> {
    static ROOT: OnceLock<Option<PathBuf>> = OnceLock::new();
    ROOT.get_or_init(|| {
        let dir = own_cgroup_dir()?.join(format!("nasgw-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok()?;
        // A cgroup whose cpu.stat is missing cannot account for anything.
        dir.join("cpu.stat").exists().then_some(dir)
    })
    .as_deref()
}

/// How CPU time is measured in this run (for the report's header).
pub fn method() -> &'static str {
    if bench_cgroup().is_some() {
        "cgroup v2 `cpu.stat` of each server's processes"
    } else {
        "`/proc/PID/stat` of each server's process tree (no writable cgroup v2 here)"
    }
}

/// Starts accounting the CPU time of `pid` and its descendants (current and future) as
/// `name`. Never fails: a process that cannot be tracked gives a meter that says why.
pub fn track(name: &str, pid: u32) -> Meter {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    if !Path::new(&format!("/proc/{pid}")).exists() {
        return Meter::missing(&format!("{name}: process {pid} is gone"));
    }
    let Some(root) = bench_cgroup() else {
        return Meter { parts: vec![Part::Tree(pid)], missing: None };
    };
    let dir = root.join(format!("{name}-{}", NEXT.fetch_add(1, Ordering::Relaxed)));
    let moved = std::fs::create_dir(&dir).and_then(|()| {
        // Children before parents would also do; every PID of the tree as it is now: a
        // process forked later is born in its parent's cgroup.
        for p in std::iter::once(pid).chain(descendants(pid)) {
            match std::fs::write(dir.join("cgroup.procs"), p.to_string()) {
                Ok(()) => {}
                // Exited meanwhile.
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    });
    match moved {
        Ok(()) => Meter { parts: vec![Part::Cgroup(dir)], missing: None },
        Err(e) => {
            eprintln!("bench: cannot move {name} ({pid}) into {}: {e}; using /proc", dir.display());
            let _ = std::fs::remove_dir(&dir);
            Meter { parts: vec![Part::Tree(pid)], missing: None }
        }
    }
}

/// Removes the bench's cgroups (once every server has stopped): whatever is still in one is
/// moved back to the bench's own cgroup first, so nothing is left behind.
pub fn cleanup() {
    let Some(root) = bench_cgroup() else { return };
    let home = root.parent().unwrap_or(root);
    let leaves: Vec<PathBuf> = std::fs::read_dir(root)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_dir()).collect())
        .unwrap_or_default();
    for leaf in leaves.iter().map(PathBuf::as_path).chain([root]) {
        let procs = std::fs::read_to_string(leaf.join("cgroup.procs")).unwrap_or_default();
        for p in procs.split_whitespace() {
            let _ = std::fs::write(home.join("cgroup.procs"), p);
        }
        if let Err(e) = std::fs::remove_dir(leaf) {
            eprintln!("bench: cannot remove cgroup {}: {e}", leaf.display());
        }
    }
}

/// The cgroup v2 mount point, from `/proc/self/mountinfo` (`/sys/fs/cgroup` on a pure v2
/// host, `/sys/fs/cgroup/unified` on a hybrid one).
fn cgroup2_mount() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let mount_point = left.split_whitespace().nth(4)?;
        (right.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount_point))
    })
}

/// This process's own cgroup v2 directory (`0::/path` in `/proc/self/cgroup`).
fn own_cgroup_dir() -> Option<PathBuf> {
    let mount = cgroup2_mount()?;
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let rel = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some(mount.join(rel.trim_start_matches('/')))
}

fn cgroup_usage(dir: &Path) -> Result<Duration, String> {
    let text = std::fs::read_to_string(dir.join("cpu.stat")).map_err(|e| format!("{}: {e}", dir.display()))?;
    usage_usec(&text).map(Duration::from_micros).ok_or_else(|| format!("{}: no usage_usec", dir.display()))
}

/// `usage_usec` of a cgroup v2 `cpu.stat`. Pure.
pub fn usage_usec(cpu_stat: &str) -> Option<u64> {
    cpu_stat.lines().find_map(|l| l.strip_prefix("usage_usec ")?.trim().parse().ok())
}

fn tree_usage(pid: u32) -> Result<Duration, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| format!("process {pid}: {e}"))?;
    let mut ticks = stat_ticks(&stat, true).ok_or_else(|| format!("process {pid}: unreadable stat"))?;
    for d in descendants(pid) {
        // Each live descendant's own time, and its reaped children's.
        ticks +=
            std::fs::read_to_string(format!("/proc/{d}/stat")).ok().and_then(|s| stat_ticks(&s, true)).unwrap_or(0);
    }
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(Duration::from_micros(ticks * 1_000_000 / hz))
}

/// utime + stime (+ cutime + cstime when `children`) of a `/proc/PID/stat` line, in clock
/// ticks. Pure. The command name (field 2) may hold spaces and parentheses: fields are counted
/// after its last `)`.
pub fn stat_ticks(stat: &str, children: bool) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // rest starts at field 3 (state): utime is field 14, stime 15, cutime 16, cstime 17.
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| f.get(n - 3).and_then(|v| v.parse::<i64>().ok()).map(|v| v.max(0) as u64);
    let own = field(14)? + field(15)?;
    Some(if children { own + field(16)? + field(17)? } else { own })
}

/// The parent PID in a `/proc/PID/stat` line. Pure.
pub fn stat_ppid(stat: &str) -> Option<u32> {
    stat[stat.rfind(')')? + 1..].split_whitespace().nth(1)?.parse().ok()
}

/// Every live descendant of `pid` (children, their children...), without `pid` itself.
pub fn descendants(pid: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
                .filter_map(|p| Some((p, stat_ppid(&std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?)?)))
                .collect()
        })
        .unwrap_or_default();
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(parents.iter().filter(|(_, pp)| *pp == parent).map(|(p, _)| *p));
        i += 1;
    }
    found.remove(0);
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        // A command name with a space and a parenthesis.
        let line = "4242 (smbd (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 7 3 20 0 1 0 100 0 0";
        assert_eq!(stat_ticks(line, false), Some(300));
        assert_eq!(stat_ticks(line, true), Some(310));
        assert_eq!(stat_ppid(line), Some(1));
        assert_eq!(stat_ticks("garbage", true), None);
    }

    #[test]
    fn usage_is_read_from_cpu_stat() {
        assert_eq!(usage_usec("usage_usec 1234\nuser_usec 1000\nsystem_usec 234\n"), Some(1234));
        assert_eq!(usage_usec("user_usec 1\n"), None);
    }

    #[test]
    fn this_process_is_measured() {
        // The fallback path needs nothing but /proc; spin until a tick of CPU time shows.
        let m = Meter { parts: vec![Part::Tree(std::process::id())], missing: None };
        let before = m.read().unwrap();
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while m.read().unwrap() <= before && start.elapsed() < Duration::from_secs(20) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(m.read().unwrap() > before, "no CPU time seen after {:?} of spinning ({x})", start.elapsed());
        assert_eq!(Meter::missing("gone").read(), Err("gone".into()));
        assert_eq!(Meter::default().read(), Err("not measured".into()));
    }
}
