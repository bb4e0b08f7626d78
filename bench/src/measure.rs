//! Timing and the interleaving of servers: every workload runs against every server of its
//! group in each round (A, B, then B, A next round...), so drift of the machine hits all alike.

use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::fixture;
use crate::table::{Group, Unit};

/// A workload's outcome in one round: how much was done (bytes or items) and how long it took.
pub struct Done {
    /// Bytes moved (MB/s rows) or items handled (files/entries rows).
    pub amount: u64,
    /// Wall time of the measured part.
    pub elapsed: Duration,
}

impl Done {
    /// The figure in `unit`.
    pub fn rate(&self, unit: Unit) -> f64 {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        match unit {
            Unit::Megabytes => self.amount as f64 / 1e6 / secs,
            Unit::Files | Unit::Entries | Unit::Operations => self.amount as f64 / secs,
            Unit::Seconds => self.elapsed.as_secs_f64(),
            Unit::Count => self.amount as f64,
        }
    }
}

/// One row: what to run against server `i` in round `r`.
pub type Workload<'a> = Box<dyn FnMut(usize, usize) -> Result<Done> + 'a>;

/// The `--rows` patterns: a row runs when its name contains one of them (all when empty).
static ROWS: OnceLock<Vec<String>> = OnceLock::new();

/// Runs only the rows whose name contains one of `patterns` (`--rows`; empty: every row).
/// Set once, before any row runs.
pub fn select_rows(patterns: Vec<String>) {
    let _ = ROWS.set(patterns);
}

/// Whether row `name` runs under `--rows` (a group skips set-up that only unselected rows need).
pub fn selected(name: &str) -> bool {
    ROWS.get().is_none_or(|p| matches(p, name))
}

/// Whether `name` contains one of `patterns` (any name when there are none).
fn matches(patterns: &[String], name: &str) -> bool {
    patterns.is_empty() || patterns.iter().any(|p| name.contains(p.as_str()))
}

/// Runs `workload` for every round, interleaving the servers, and records each figure and the
/// CPU time the server of the column spent meanwhile (read from `group.meters`).
/// `available[i]` is `Err(reason)` for a server that cannot run this row at all. A row that
/// `--rows` leaves out is neither run nor shown.
pub fn run_row(
    group: &mut Group,
    name: &str,
    unit: Unit,
    rounds: usize,
    available: &[Result<(), String>],
    mut workload: Workload<'_>,
) {
    if !selected(name) {
        return;
    }
    let row = group.add_row(name, unit);
    let n = group.servers.len();
    for r in 0..rounds {
        let order: Vec<usize> = if r % 2 == 0 { (0..n).collect() } else { (0..n).rev().collect() };
        for i in order {
            let meter = group.meters.get(i).cloned().unwrap_or_default();
            let (outcome, cpu) = match &available[i] {
                Err(why) => (Err(why.clone()), Err(why.clone())),
                Ok(()) => {
                    fixture::sync();
                    let before = meter.read();
                    let done = workload(i, r).map_err(|e| format!("{e:#}"));
                    let after = meter.read();
                    let cpu = match (&done, before, after) {
                        (Ok(d), Ok(b), Ok(a)) => unit
                            .cpu_figure(a.saturating_sub(b).as_secs_f64(), d.amount)
                            .ok_or_else(|| "nothing done".to_string()),
                        (Err(e), _, _) => Err(e.clone()),
                        (_, Err(e), _) | (_, _, Err(e)) => Err(e),
                    };
                    (done.map(|d| d.rate(unit)), cpu)
                }
            };
            match (&outcome, &cpu) {
                (Ok(v), Ok(c)) => eprintln!(
                    "bench: {name} [{}] round {}: {v:.1} {}, {c:.3} {}",
                    group.servers[i],
                    r + 1,
                    unit.label(),
                    unit.cpu_label()
                ),
                (Ok(v), Err(e)) => {
                    eprintln!(
                        "bench: {name} [{}] round {}: {v:.1} {} (CPU: {e})",
                        group.servers[i],
                        r + 1,
                        unit.label()
                    )
                }
                (Err(e), _) => eprintln!("bench: {name} [{}] round {}: FAILED: {e}", group.servers[i], r + 1),
            }
            group.rows[row].cells[i].record(outcome);
            group.rows[row].cells[i].record_cpu(cpu);
        }
    }
}

/// CPU time (user + system) of this process's children that have ended and been waited for:
/// the difference around a [`timed`] client command is that client's CPU time.
pub fn children_cpu() -> Duration {
    // SAFETY: getrusage writes a valid struct.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Per round of a bulk row: each server's wall-clock time and its client's CPU time, so a
/// slow round says whether it waited for a core (CPU well under the wall-clock time) or did
/// more work.
#[derive(Default)]
pub struct ClientRounds {
    rounds: Vec<(String, f64, f64)>,
}

impl ClientRounds {
    /// Records one round of `label`: `wall` and client `cpu` seconds.
    pub fn push(&mut self, label: &str, wall: Duration, cpu: Duration) {
        self.rounds.push((label.to_string(), wall.as_secs_f64(), cpu.as_secs_f64()));
    }

    /// One note per label: "{label} {what}, per round, wall-clock / {client} CPU seconds: ...". Pure.
    pub fn notes(&self, what: &str, client: &str) -> Vec<String> {
        let mut labels: Vec<&str> = Vec::new();
        for (l, _, _) in &self.rounds {
            if !labels.contains(&l.as_str()) {
                labels.push(l);
            }
        }
        labels
            .into_iter()
            .map(|l| {
                let rounds: Vec<String> = self
                    .rounds
                    .iter()
                    .filter(|(x, _, _)| x == l)
                    .map(|(_, wall, cpu)| format!("{wall:.2}/{cpu:.2}"))
                    .collect();
                format!(
                    "{l} {what}, per round, wall-clock / {client} CPU seconds (the server's CPU is in the CPU table): {}.",
                    rounds.join(", ")
                )
            })
            .collect()
    }
}

/// Runs a client command to completion, timing it; fails with its output when it fails or
/// prints an NT_STATUS error (smbclient exits 0 after some failed commands).
pub fn timed(cmd: &mut Command) -> Result<(Duration, Output)> {
    cmd.stdin(Stdio::null());
    let start = Instant::now();
    let out = cmd.output()?;
    let elapsed = start.elapsed();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() || text.contains("NT_STATUS_") {
        let tail: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let tail = tail[tail.len().saturating_sub(3)..].join(" / ");
        bail!("{} failed ({}): {tail}", cmd.get_program().to_string_lossy(), out.status);
    }
    Ok((elapsed, out))
}

#[cfg(test)]
mod tests {
    use super::{matches, ClientRounds, Duration};

    #[test]
    fn client_rounds_are_noted_per_label_in_round_order() {
        let mut c = ClientRounds::default();
        c.push("nasgw warm", Duration::from_millis(500), Duration::from_millis(250));
        c.push("ganesha warm", Duration::from_secs(1), Duration::from_millis(300));
        c.push("nasgw warm", Duration::from_millis(2000), Duration::from_millis(260));
        assert_eq!(
            c.notes("read", "nfs-cat"),
            [
                "nasgw warm read, per round, wall-clock / nfs-cat CPU seconds (the server's CPU is in the CPU table): 0.50/0.25, 2.00/0.26.",
                "ganesha warm read, per round, wall-clock / nfs-cat CPU seconds (the server's CPU is in the CPU table): 1.00/0.30."
            ]
        );
        assert!(ClientRounds::default().notes("read", "x").is_empty());
    }

    #[test]
    fn rows_run_when_their_name_contains_a_pattern() {
        let rows = ["1 GiB download (get)", "1 GiB download, encrypted AES-128-GCM (get)"];
        let pick = |p: &[&str]| {
            let p: Vec<String> = p.iter().map(|s| s.to_string()).collect();
            rows.iter().filter(|r| matches(&p, r)).count()
        };
        assert_eq!(pick(&[]), 2);
        assert_eq!(pick(&["encrypted"]), 1);
        assert_eq!(pick(&["nothing", "download"]), 2);
        assert_eq!(pick(&["nothing"]), 0);
    }
}
