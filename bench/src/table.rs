//! Results and their markdown form. Pure: samples in, medians, spreads, ratios and text out.
//! Each group prints two tables with the same rows: the work done per second, and the
//! servers' CPU time per unit of work (median over rounds, with the min-max spread).

use std::fmt::Write as _;

use crate::cpu::Meter;

/// What a row's figure counts, per second.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// Megabytes (10^6 bytes) per second.
    Megabytes,
    /// Files created, statted or deleted per second.
    Files,
    /// Directory entries listed per second.
    Entries,
    /// Operation pairs (open+close, lock+unlock) per second.
    Operations,
    /// A duration in seconds, not a rate (failover: a stall, the time an address takes to
    /// move); lower is better.
    Seconds,
    /// A plain count, not a rate (failover: application errors); lower is better.
    Count,
}

impl Unit {
    /// The label printed after the figure.
    pub fn label(self) -> &'static str {
        match self {
            Unit::Megabytes => "MB/s",
            Unit::Files => "files/s",
            Unit::Entries => "entries/s",
            Unit::Operations => "ops/s",
            Unit::Seconds => "s",
            Unit::Count => "count",
        }
    }

    /// The label of the CPU-time figure: seconds per GiB moved, or milliseconds per 1000 items.
    pub fn cpu_label(self) -> &'static str {
        match self {
            Unit::Megabytes => "CPU s/GiB",
            Unit::Files => "CPU ms/1k files",
            Unit::Entries => "CPU ms/1k entries",
            Unit::Operations => "CPU ms/1k ops",
            Unit::Seconds | Unit::Count => "n/a",
        }
    }

    /// `cpu_secs` of server CPU time spent on `amount` (bytes or items) in this row's CPU unit;
    /// `None` when nothing was done.
    pub fn cpu_figure(self, cpu_secs: f64, amount: u64) -> Option<f64> {
        if amount == 0 || matches!(self, Unit::Seconds | Unit::Count) {
            return None;
        }
        Some(match self {
            Unit::Megabytes => cpu_secs / (amount as f64 / (1u64 << 30) as f64),
            Unit::Files | Unit::Entries | Unit::Operations => cpu_secs * 1000.0 / (amount as f64 / 1000.0),
            Unit::Seconds | Unit::Count => return None,
        })
    }
}

/// One server's results for one row: the figure of every round, or why it has none.
#[derive(Clone, Debug, Default)]
pub struct Cell {
    /// One figure per round that ran.
    pub samples: Vec<f64>,
    /// Why a round failed (the first reason seen); a failed cell shows `n/a: reason`.
    pub failure: Option<String>,
    /// The servers' CPU time per unit of work (see [`Unit::cpu_figure`]), one per round.
    pub cpu: Vec<f64>,
    /// Why a round has no CPU figure (the first reason seen).
    pub cpu_failure: Option<String>,
}

impl Cell {
    /// Records one round's outcome.
    pub fn record(&mut self, outcome: Result<f64, String>) {
        match outcome {
            Ok(v) => self.samples.push(v),
            Err(e) => {
                if self.failure.is_none() {
                    self.failure = Some(e);
                }
            }
        }
    }

    /// Records one round's CPU figure, or why it has none.
    pub fn record_cpu(&mut self, outcome: Result<f64, String>) {
        match outcome {
            Ok(v) => self.cpu.push(v),
            Err(e) => {
                if self.cpu_failure.is_none() {
                    self.cpu_failure = Some(e);
                }
            }
        }
    }

    /// The median of the rounds, if every round succeeded.
    pub fn median(&self) -> Option<f64> {
        if self.failure.is_some() {
            return None;
        }
        median(&self.samples)
    }

    /// The median CPU figure, if every round has one.
    pub fn cpu_median(&self) -> Option<f64> {
        if self.failure.is_some() || self.cpu_failure.is_some() {
            return None;
        }
        median(&self.cpu)
    }

    fn text(&self) -> String {
        match &self.failure {
            Some(e) => format!("n/a: {}", one_line(e)),
            None => spread_text(&self.samples),
        }
    }

    fn cpu_text(&self) -> String {
        match (&self.failure, &self.cpu_failure) {
            (Some(_), _) => "n/a".to_string(),
            (None, Some(e)) => format!("n/a: {}", one_line(e)),
            (None, None) => spread_text(&self.cpu),
        }
    }
}

/// "median (min-max)" of the samples; "n/a: not run" when there are none.
pub fn spread_text(xs: &[f64]) -> String {
    let Some(m) = median(xs) else { return "n/a: not run".to_string() };
    let lo = xs.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{} ({}-{})", format_figure(m), format_figure(lo), format_figure(hi))
}

/// A workload measured against every server of its group.
#[derive(Clone, Debug)]
pub struct Row {
    /// What was done, e.g. "1 GiB write".
    pub workload: String,
    /// What the figures count.
    pub unit: Unit,
    /// One cell per server, in the group's server order.
    pub cells: Vec<Cell>,
}

/// A table: one subject (nasgw, possibly in several variants) against its anchors.
#[derive(Clone, Debug)]
pub struct Group {
    /// Heading, e.g. "NFSv3: nasgw vs NFS-Ganesha (FSAL_VFS)".
    pub title: String,
    /// Column names, in cell order.
    pub servers: Vec<String>,
    /// Ratios printed per row: (numerator column, denominator column).
    pub ratios: Vec<(usize, usize)>,
    /// The rows, in run order.
    pub rows: Vec<Row>,
    /// Notes printed under the table (set-up facts a reader needs).
    pub notes: Vec<String>,
    /// Where each column's server CPU time is read (in column order; a column without one
    /// shows `n/a`). Data only: [`crate::measure::run_row`] reads them.
    pub meters: Vec<Meter>,
    /// Whether the CPU-time table is printed (not for durations and counts: the failover
    /// groups).
    pub cpu_table: bool,
}

impl Group {
    /// An empty group over `servers`, with `ratios` between columns.
    pub fn new(title: &str, servers: &[&str], ratios: &[(usize, usize)]) -> Group {
        Group {
            title: title.to_string(),
            servers: servers.iter().map(|s| s.to_string()).collect(),
            ratios: ratios.to_vec(),
            rows: Vec::new(),
            notes: Vec::new(),
            meters: Vec::new(),
            cpu_table: true,
        }
    }

    /// Adds a row with an empty cell per server and returns its index.
    pub fn add_row(&mut self, workload: &str, unit: Unit) -> usize {
        self.rows.push(Row { workload: workload.to_string(), unit, cells: vec![Cell::default(); self.servers.len()] });
        self.rows.len() - 1
    }

    /// The markdown tables (figures, then CPU time) with their heading and notes.
    pub fn markdown(&self) -> String {
        let mut out = format!("### {}\n\n", self.title);
        self.table(&mut out, "unit", |r| r.unit.label(), Cell::text, Cell::median);
        if !self.cpu_table {
            for n in &self.notes {
                let _ = write!(out, "\n{n}\n");
            }
            return out;
        }
        let _ = write!(
            out,
            "\nServers' CPU time (user+sys of their processes) per GiB or per 1000 items, median (min-max) over \
             rounds; a ratio below 1 means the first server of the pair spent less CPU:\n\n"
        );
        self.table(&mut out, "CPU unit", |r| r.unit.cpu_label(), Cell::cpu_text, Cell::cpu_median);
        for n in &self.notes {
            let _ = write!(out, "\n{n}\n");
        }
        out
    }

    fn table(
        &self,
        out: &mut String,
        unit_header: &str,
        unit: impl Fn(&Row) -> &'static str,
        text: impl Fn(&Cell) -> String,
        figure: impl Fn(&Cell) -> Option<f64>,
    ) {
        let _ = write!(out, "| workload | {unit_header} |");
        for s in &self.servers {
            let _ = write!(out, " {s} |");
        }
        for (a, b) in &self.ratios {
            let _ = write!(out, " {} / {} |", self.servers[*a], self.servers[*b]);
        }
        out.push_str("\n|---|---|");
        for _ in 0..self.servers.len() + self.ratios.len() {
            out.push_str("---:|");
        }
        out.push('\n');
        for row in &self.rows {
            let _ = write!(out, "| {} | {} |", row.workload, unit(row));
            for c in &row.cells {
                let _ = write!(out, " {} |", text(c));
            }
            for (a, b) in &self.ratios {
                let r = ratio(figure(&row.cells[*a]), figure(&row.cells[*b]));
                let _ = write!(out, " {} |", r.map_or_else(|| "n/a".to_string(), |r| format!("{r:.2}x")));
            }
            out.push('\n');
        }
    }
}

/// The median of `xs` (mean of the middle two for an even count); `None` when empty.
pub fn median(xs: &[f64]) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 })
}

/// `a / b` when both exist and `b` is positive.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// Three significant-ish digits: 1234 -> "1234", 98.76 -> "98.8", 1.234 -> "1.23", 0.01234 -> "0.0123".
pub fn format_figure(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else if v >= 1.0 || v <= 0.0 {
        format!("{v:.2}")
    } else {
        // Three significant digits below 1 (CPU figures can be small): 0.0123 -> "0.0123".
        let decimals = (2.0 - v.log10().floor()).clamp(2.0, 9.0) as usize;
        format!("{v:.decimals$}")
    }
}

/// A reason fit for a table cell: one line, no pipes, at most 80 characters.
pub fn one_line(s: &str) -> String {
    let flat: String = s.split_whitespace().collect::<Vec<_>>().join(" ").replace('|', "/");
    if flat.chars().count() > 80 {
        let cut: String = flat.chars().take(77).collect();
        format!("{cut}...")
    } else {
        flat
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn a_failed_round_makes_the_cell_na_with_its_reason() {
        let mut c = Cell::default();
        c.record(Ok(10.0));
        c.record(Err("connection refused\n(port 1)".into()));
        assert_eq!(c.median(), None);
        assert_eq!(c.text(), "n/a: connection refused (port 1)");
    }

    #[test]
    fn table_has_figures_spreads_and_ratios() {
        let mut g = Group::new("NFS", &["nasgw", "Ganesha"], &[(0, 1)]);
        let r = g.add_row("1 GiB write", Unit::Megabytes);
        for (v, cpu) in [(900.0, 1.5), (800.0, 1.25), (950.0, 2.0)] {
            g.rows[r].cells[0].record(Ok(v));
            g.rows[r].cells[0].record_cpu(Ok(cpu));
        }
        g.rows[r].cells[1].record(Ok(600.0));
        g.rows[r].cells[1].record_cpu(Ok(3.0));
        let r = g.add_row("list 10k", Unit::Entries);
        g.rows[r].cells[0].record(Err("READDIRPLUS | unsupported".into()));
        g.rows[r].cells[1].record(Ok(50_000.0));
        g.rows[r].cells[1].record_cpu(Err("not measured".into()));
        let md = g.markdown();
        assert!(md.contains("| workload | unit | nasgw | Ganesha | nasgw / Ganesha |"), "{md}");
        assert!(md.contains("| 1 GiB write | MB/s | 900 (800-950) | 600 (600-600) | 1.50x |"), "{md}");
        assert!(
            md.contains("| list 10k | entries/s | n/a: READDIRPLUS / unsupported | 50000 (50000-50000) | n/a |"),
            "{md}"
        );
        assert!(md.contains("| workload | CPU unit | nasgw | Ganesha | nasgw / Ganesha |"), "{md}");
        assert!(md.contains("| 1 GiB write | CPU s/GiB | 1.50 (1.25-2.00) | 3.00 (3.00-3.00) | 0.50x |"), "{md}");
        assert!(md.contains("| list 10k | CPU ms/1k entries | n/a | n/a: not measured | n/a |"), "{md}");
    }

    #[test]
    fn durations_and_counts_print_without_a_cpu_table() {
        let mut g = Group::new("Failover", &["nasgw", "Samba+CTDB"], &[(0, 1)]);
        g.cpu_table = false;
        g.notes.push("how it is measured".into());
        let gap = g.add_row("longest gap", Unit::Seconds);
        let errors = g.add_row("application errors", Unit::Count);
        g.rows[gap].cells[0].record(Ok(1.25));
        g.rows[gap].cells[1].record(Ok(5.0));
        g.rows[errors].cells[0].record(Ok(0.0));
        g.rows[errors].cells[1].record(Ok(1.0));
        let md = g.markdown();
        assert!(md.contains("| longest gap | s | 1.25 (1.25-1.25) | 5.00 (5.00-5.00) | 0.25x |"), "{md}");
        assert!(md.contains("| application errors | count | 0.00 (0.00-0.00) | 1.00 (1.00-1.00) | 0.00x |"), "{md}");
        assert!(!md.contains("CPU"), "no CPU table: {md}");
        assert!(md.ends_with("\nhow it is measured\n"), "{md}");
        assert_eq!(Unit::Seconds.cpu_figure(1.0, 10), None);
    }

    #[test]
    fn cpu_figures_are_per_gib_or_per_thousand_items() {
        assert_eq!(Unit::Megabytes.cpu_figure(3.0, 2 << 30), Some(1.5));
        // 0.5 s for 10,000 entries: 50 ms per 1000.
        assert_eq!(Unit::Entries.cpu_figure(0.5, 10_000), Some(50.0));
        assert_eq!(Unit::Files.cpu_figure(1.0, 0), None);
    }

    #[test]
    fn figures_are_rounded_by_size() {
        assert_eq!(format_figure(1234.4), "1234");
        assert_eq!(format_figure(98.76), "98.8");
        assert_eq!(format_figure(1.234), "1.23");
        assert_eq!(format_figure(0.5), "0.500");
        assert_eq!(format_figure(0.01234), "0.0123");
        assert_eq!(format_figure(0.0), "0.00");
    }
}
