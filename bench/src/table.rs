//! Results and their markdown form. Pure: samples in, medians, ratios and text out.

use std::fmt::Write as _;

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
}

impl Unit {
    /// The label printed after the figure.
    pub fn label(self) -> &'static str {
        match self {
            Unit::Megabytes => "MB/s",
            Unit::Files => "files/s",
            Unit::Entries => "entries/s",
            Unit::Operations => "ops/s",
        }
    }
}

/// One server's results for one row: the figure of every round, or why it has none.
#[derive(Clone, Debug, Default)]
pub struct Cell {
    /// One figure per round that ran.
    pub samples: Vec<f64>,
    /// Why a round failed (the first reason seen); a failed cell shows `n/a: reason`.
    pub failure: Option<String>,
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

    /// The median of the rounds, if every round succeeded.
    pub fn median(&self) -> Option<f64> {
        if self.failure.is_some() {
            return None;
        }
        median(&self.samples)
    }

    fn text(&self) -> String {
        match (&self.failure, self.median()) {
            (Some(e), _) => format!("n/a: {}", one_line(e)),
            (None, Some(m)) => format_figure(m),
            (None, None) => "n/a: not run".to_string(),
        }
    }
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
        }
    }

    /// Adds a row with an empty cell per server and returns its index.
    pub fn add_row(&mut self, workload: &str, unit: Unit) -> usize {
        self.rows.push(Row { workload: workload.to_string(), unit, cells: vec![Cell::default(); self.servers.len()] });
        self.rows.len() - 1
    }

    /// The markdown table with its heading and notes.
    pub fn markdown(&self) -> String {
        let mut out = format!("### {}\n\n| workload | unit |", self.title);
        for s in &self.servers {
            let _ = write!(out, " {s} |");
        }
        for (a, b) in &self.ratios {
            let _ = write!(out, " {} / {} |", self.servers[*a], self.servers[*b]);
        }
        out.push_str("\n|---|---|");
        for _ in 0..self.servers.len() {
            out.push_str("---:|");
        }
        for _ in &self.ratios {
            out.push_str("---:|");
        }
        out.push('\n');
        for row in &self.rows {
            let _ = write!(out, "| {} | {} |", row.workload, row.unit.label());
            for c in &row.cells {
                let _ = write!(out, " {} |", c.text());
            }
            for (a, b) in &self.ratios {
                let r = ratio(row.cells[*a].median(), row.cells[*b].median());
                let _ = write!(out, " {} |", r.map_or_else(|| "n/a".to_string(), |r| format!("{r:.2}x")));
            }
            out.push('\n');
        }
        for n in &self.notes {
            let _ = write!(out, "\n{n}\n");
        }
        out
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

/// Three significant-ish digits: 1234 -> "1234", 98.76 -> "98.8", 1.234 -> "1.23".
pub fn format_figure(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
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
    fn table_has_figures_and_ratios() {
        let mut g = Group::new("NFS", &["nasgw", "Ganesha"], &[(0, 1)]);
        let r = g.add_row("1 GiB write", Unit::Megabytes);
        g.rows[r].cells[0].record(Ok(900.0));
        g.rows[r].cells[1].record(Ok(600.0));
        let r = g.add_row("list 10k", Unit::Entries);
        g.rows[r].cells[0].record(Err("READDIRPLUS | unsupported".into()));
        g.rows[r].cells[1].record(Ok(50_000.0));
        let md = g.markdown();
        assert!(md.contains("| workload | unit | nasgw | Ganesha | nasgw / Ganesha |"), "{md}");
        assert!(md.contains("| 1 GiB write | MB/s | 900 | 600 | 1.50x |"), "{md}");
        assert!(md.contains("| list 10k | entries/s | n/a: READDIRPLUS / unsupported | 50000 | n/a |"), "{md}");
    }

    #[test]
    fn figures_are_rounded_by_size() {
        assert_eq!(format_figure(1234.4), "1234");
        assert_eq!(format_figure(98.76), "98.8");
        assert_eq!(format_figure(1.234), "1.23");
    }
}
