//! The bench's plumbing, end to end: `bench --quick` starts the real anchors (smbd, Ganesha
//! with its rpcbind) and nasgw, drives real clients against each, and prints a table per group
//! in which nasgw and the anchor both have a figure on every row, with their ratio.
//! A test of plumbing: no figure is compared with anything.

use std::process::Command;

/// The cells of every data row of the table under `heading`.
fn rows(report: &str, heading: &str) -> Vec<Vec<String>> {
    let start = report.find(heading).unwrap_or_else(|| panic!("no table `{heading}` in:\n{report}"));
    report[start..]
        .lines()
        .skip(1)
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .filter(|l| !l.starts_with("| workload") && !l.starts_with("|---"))
        .map(|l| l.trim_matches('|').split(" | ").map(|c| c.trim().to_string()).collect())
        .collect()
}

fn is_figure(cell: &str) -> bool {
    cell.parse::<f64>().is_ok_and(|v| v > 0.0)
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
        let rows = rows(&report, heading);
        assert_eq!(rows.len(), rows_wanted, "{heading}: {rows:?}");
        for r in &rows {
            assert_eq!(r.len(), 5, "workload, unit, nasgw, anchor, ratio: {r:?}");
            assert!(is_figure(&r[3]), "{heading}: the anchor has no figure for `{}`: {r:?}\n{log}", r[0]);
            // nasgw serves both protocols: every row has its figure and a ratio.
            assert!(is_figure(&r[2]), "{heading}: nasgw has no figure for `{}`: {r:?}\n{log}", r[0]);
            assert!(r[4].ends_with('x') && is_figure(r[4].trim_end_matches('x')), "{heading}: no ratio: {r:?}");
        }
    }
    assert!(report.contains("Measured ") && report.contains(" cores"), "the machine is described:\n{report}");
    let saved: Vec<_> = std::fs::read_dir(out_dir.path()).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(saved.len(), 1, "one result file: {saved:?}");
    assert_eq!(std::fs::read_to_string(&saved[0]).unwrap().trim(), report.trim(), "the file holds the printed report");
}
