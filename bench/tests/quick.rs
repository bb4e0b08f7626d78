//! The bench's plumbing, end to end: `bench --quick` starts the real anchors (smbd, Ganesha
//! with its rpcbind) and nasgw, drives real clients against each, and prints a table per group
//! in which nasgw and the anchor both have a figure on every row, with their ratio.
//! A test of plumbing: no figure is compared with anything.

use std::process::Command;

/// The cells of every data row of each table under `heading`, up to the next heading: the
/// figures table, then the servers' CPU-time table.
fn tables(report: &str, heading: &str) -> Vec<Vec<Vec<String>>> {
    let start = report.find(heading).unwrap_or_else(|| panic!("no table `{heading}` in:\n{report}"));
    let section = &report[start + heading.len()..];
    let section = &section[..section.find("\n### ").unwrap_or(section.len())];
    let mut tables: Vec<Vec<Vec<String>>> = Vec::new();
    let mut in_table = false;
    for l in section.lines() {
        if !l.starts_with('|') {
            in_table = false;
            continue;
        }
        if !in_table {
            tables.push(Vec::new());
            in_table = true;
        }
        if !l.starts_with("| workload") && !l.starts_with("|---") {
            tables.last_mut().unwrap().push(l.trim_matches('|').split(" | ").map(|c| c.trim().to_string()).collect());
        }
    }
    tables
}

fn is_figure(cell: &str) -> bool {
    cell.parse::<f64>().is_ok_and(|v| v > 0.0)
}

/// A median with its spread over rounds: "1234 (1100-1300)", min <= median <= max.
fn is_figure_with_spread(cell: &str) -> bool {
    let Some((m, rest)) = cell.split_once(" (") else { return false };
    let Some((lo, hi)) = rest.strip_suffix(')').and_then(|r| r.split_once('-')) else { return false };
    let [m, lo, hi] = [m, lo, hi].map(|v| v.parse::<f64>().unwrap_or(-1.0));
    lo >= 0.0 && lo <= m && m <= hi && m > 0.0
}

#[test]
fn quick_run_prints_a_table_per_group_with_figures() {
    assert!(nasgw_tests::is_root(), "the bench needs root (network namespace, rpcbind): run as scripts/test does");
    let out_dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(["--quick", "--only", "nfs,smb,cluster", "--out"])
        .arg(out_dir.path())
        .env("NASGW_BIN", nasgw_tests::nasgw_bin())
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed ({}):\n{report}\n{log}", out.status);
    println!("{report}");
    // The cluster table's columns are nasgw through two nodes and through one.
    for (heading, rows_wanted) in [
        ("### NFSv3: nasgw vs NFS-Ganesha", 5),
        ("### SMB3: nasgw vs Samba smbd", 7), // five plain rows, upload and download encrypted
        ("### Cluster: one shared file", 2),
    ] {
        let tables = tables(&report, heading);
        assert_eq!(tables.len(), 2, "{heading}: a figures table and a CPU-time table: {tables:?}");
        for (t, rows) in tables.iter().enumerate() {
            let what = ["figure", "CPU time"][t];
            assert_eq!(rows.len(), rows_wanted, "{heading}: {rows:?}");
            for r in rows {
                assert_eq!(r.len(), 5, "workload, unit, nasgw, anchor, ratio: {r:?}");
                assert!(
                    is_figure_with_spread(&r[3]),
                    "{heading}: the anchor has no {what} with its spread for `{}`: {r:?}\n{log}",
                    r[0]
                );
                // nasgw serves both protocols: every row has its figure and a ratio.
                assert!(
                    is_figure_with_spread(&r[2]),
                    "{heading}: nasgw has no {what} with its spread for `{}`: {r:?}\n{log}",
                    r[0]
                );
                assert!(r[4].ends_with('x') && is_figure(r[4].trim_end_matches('x')), "{heading}: no ratio: {r:?}");
            }
        }
        assert!(tables[1].iter().all(|r| r[1].starts_with("CPU ")), "{heading}: CPU units: {:?}", tables[1]);
    }
    assert!(report.contains("Measured ") && report.contains(" cores"), "the machine is described:\n{report}");
    let saved: Vec<_> = std::fs::read_dir(out_dir.path()).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(saved.len(), 1, "one result file: {saved:?}");
    assert_eq!(std::fs::read_to_string(&saved[0]).unwrap().trim(), report.trim(), "the file holds the printed report");
}
