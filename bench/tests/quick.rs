//! The bench's plumbing, end to end: `bench --quick` starts the real anchors (smbd, Ganesha
//! with its rpcbind) and nasgw, drives real clients against each, and prints a table per group
//! in which nasgw and the anchor both have a figure on every row, with their ratio.
//! A test of plumbing: no figure is compared with anything. Afterwards nothing the run started
//! is left: no process using its directory, no network namespace of its cluster.

use std::path::Path;
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

/// Processes whose command line or an open file names a path under `dir`, as "pid: command".
fn users_of(dir: &Path) -> Vec<String> {
    let name = dir.to_string_lossy().to_string();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if !e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        let open_inside = std::fs::read_dir(e.path().join("fd"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|f| std::fs::read_link(f.path()).is_ok_and(|t| t.starts_with(dir)));
        if cmd.contains(&name) || open_inside {
            out.push(format!("{}: {cmd}", e.file_name().to_string_lossy()));
        }
    }
    out
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
    let work = tempfile::Builder::new().prefix("nasgw-bench-quick-").tempdir_in("/var/tmp").unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(["--quick", "--only", "nfs,smb,cluster,scale", "--out"])
        .arg(out_dir.path())
        .arg("--dir")
        .arg(work.path())
        .env("NASGW_BIN", nasgw_tests::nasgw_bin())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let bench_pid = child.id();
    let out = child.wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed ({}):\n{report}\n{log}", out.status);
    println!("{report}");
    // (heading, rows, server columns, ratio columns): every server column has a figure on every
    // row, every ratio a value. The cluster tables set nasgw on 3 nodes against Samba + CTDB on
    // the same 3 nodes (the shared-file table also has nasgw with both clients through one node).
    for (heading, rows_wanted, servers, ratios) in [
        ("### NFSv3: nasgw vs NFS-Ganesha", 5, 2, 1),
        // five plain rows, server-side copy, case-insensitive misses, upload and download
        // encrypted (the kernel-client group, `--only smb-kernel`, is not in this run)
        ("### SMB3: nasgw vs Samba smbd", 9, 2, 1),
        ("### Cluster: one shared file", 2, 3, 2),
        // nasgw, Samba + CTDB, and one nasgw without a cluster on the same node and directory.
        ("### Cluster: the SMB rows on 3 nodes", 4, 3, 2),
        // 2 client counts x (creates, reads), GETATTR with and without idle connections, list
        // and search of the huge directory.
        ("### Scale (NFSv3): nasgw vs NFS-Ganesha", 8, 2, 1),
        // 2 client counts x (uploads, downloads), uploads with and without idle connections.
        ("### Scale (SMB3): nasgw vs Samba smbd", 6, 2, 1),
    ] {
        let tables = tables(&report, heading);
        assert_eq!(tables.len(), 2, "{heading}: a figures table and a CPU-time table: {tables:?}");
        for (t, rows) in tables.iter().enumerate() {
            let what = ["figure", "CPU time"][t];
            assert_eq!(rows.len(), rows_wanted, "{heading}: {rows:?}");
            for r in rows {
                assert_eq!(
                    r.len(),
                    2 + servers + ratios,
                    "workload, unit, {servers} servers, {ratios} ratio(s): {r:?}"
                );
                // nasgw serves both protocols and the anchors run everywhere: every cell has a
                // figure (median and min-max spread over rounds), every ratio a value.
                for (i, cell) in r[2..2 + servers].iter().enumerate() {
                    assert!(
                        is_figure_with_spread(cell),
                        "{heading}: column {i} has no {what} with its spread for `{}`: {r:?}\n{log}",
                        r[0]
                    );
                }
                for ratio in &r[2 + servers..] {
                    assert!(
                        ratio.ends_with('x') && is_figure(ratio.trim_end_matches('x')),
                        "{heading}: no ratio: {r:?}"
                    );
                }
            }
        }
        assert!(tables[1].iter().all(|r| r[1].starts_with("CPU ")), "{heading}: CPU units: {:?}", tables[1]);
    }
    assert!(
        report.contains("| nasgw, two nodes | Samba+CTDB, two nodes | nasgw, one node |")
            && report.contains("| nasgw | Samba+CTDB | nasgw, single node | nasgw / Samba+CTDB |"),
        "the cluster tables have their Samba + CTDB column:\n{report}"
    );
    // Torn down: every daemon (smbd, Ganesha, rpcbind, nasgw, each ctdbd and its helpers) held
    // files in the work directory; the cluster's namespaces carry the bench's pid.
    let left = users_of(work.path());
    assert!(left.is_empty(), "processes of the run are left:\n{}", left.join("\n"));
    let netns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let netns = String::from_utf8_lossy(&netns.stdout);
    let ours: Vec<&str> = netns.lines().filter(|l| l.starts_with(&format!("t{bench_pid}x"))).collect();
    assert!(ours.is_empty(), "network namespaces of the run are left: {ours:?}");
    assert!(report.contains("Measured ") && report.contains(" cores"), "the machine is described:\n{report}");
    // Which path served nasgw's NFS reads, and each read round's client CPU (issue 17).
    assert!(
        report.contains("clients' reads, round 1: nasgw's READ bytes spliced ")
            && report.contains("nasgw warm read: how nasgw's READ bytes went out")
            && report.contains("warm read, per round, wall-clock / nfs-cat CPU seconds")
            && report.contains("warm download, per round, wall-clock / smbclient CPU seconds"),
        "the read rows say which path served them and what the client spent:\n{report}"
    );
    for server in ["nasgw", "Ganesha"] {
        assert!(
            report.contains(&format!("{server}: resident set ")) && report.contains("KiB per connection"),
            "the memory per idle connection of {server} is reported:\n{report}"
        );
    }
    let saved: Vec<_> = std::fs::read_dir(out_dir.path()).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(saved.len(), 1, "one result file: {saved:?}");
    assert_eq!(std::fs::read_to_string(&saved[0]).unwrap().trim(), report.trim(), "the file holds the printed report");
}
