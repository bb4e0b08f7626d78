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
    // (heading, rows, server columns, ratio columns): every server column has a figure on every
    // row, every ratio a value. The cluster tables set nasgw on 3 nodes against Samba + CTDB on
    // the same 3 nodes (the shared-file table also has nasgw with both clients through one node).
    for (heading, rows_wanted, servers, ratios) in [
        ("### NFSv3: nasgw vs NFS-Ganesha", 5, 2, 1),
        ("### SMB3: nasgw vs Samba smbd", 7, 2, 1), // five plain rows, upload and download encrypted
        ("### Cluster: one shared file", 2, 3, 2),
        ("### Cluster: the SMB rows on 3 nodes", 4, 2, 1),
    ] {
        let rows = rows(&report, heading);
        assert_eq!(rows.len(), rows_wanted, "{heading}: {rows:?}");
        for r in &rows {
            assert_eq!(r.len(), 2 + servers + ratios, "workload, unit, {servers} servers, {ratios} ratio(s): {r:?}");
            // nasgw serves both protocols and the anchors run everywhere: every cell has a figure.
            for (i, cell) in r[2..2 + servers].iter().enumerate() {
                assert!(is_figure(cell), "{heading}: column {i} has no figure for `{}`: {r:?}\n{log}", r[0]);
            }
            for ratio in &r[2 + servers..] {
                assert!(ratio.ends_with('x') && is_figure(ratio.trim_end_matches('x')), "{heading}: no ratio: {r:?}");
            }
        }
    }
    assert!(
        report.contains("| nasgw, two nodes | Samba+CTDB, two nodes | nasgw, one node |")
            && report.contains("| nasgw | Samba+CTDB | nasgw / Samba+CTDB |"),
        "the cluster tables have their Samba + CTDB column:\n{report}"
    );
    assert!(report.contains("Measured ") && report.contains(" cores"), "the machine is described:\n{report}");
    let saved: Vec<_> = std::fs::read_dir(out_dir.path()).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(saved.len(), 1, "one result file: {saved:?}");
    assert_eq!(std::fs::read_to_string(&saved[0]).unwrap().trim(), report.trim(), "the file holds the printed report");
}
