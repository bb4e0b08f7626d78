//! Cluster groups: three nasgw nodes in namespaces on one volume (the test harness's
//! [`SmbCluster`]) against Samba 4.17 + CTDB 4.17 on the same three namespaces and the same
//! directory ([`SambaCtdb`]), with clients in a fourth namespace.
//!
//! - The shared-file table: two SMB clients (Python smbprotocol, `tests/smb/cluster_client.py`)
//!   hammer one file at once through two different nodes (every decision involves the file's
//!   home; no delegation), on nasgw and on Samba + CTDB; and, for nasgw, both through one node
//!   (the file is delegated to that node: no messages between nodes).
//! - The SMB rows again on the 3-node cluster (`smbclient`, as the SMB table runs them), plus
//!   the small files through two nodes at once; beside them the same rows against one nasgw
//!   without `[cluster]` on n1's address and the same directory, so the cluster's own cost is
//!   measured in the same run, network and disk.
//!
//! Before any row, each system must show it is one file-sharing state: B's open through n2 of
//! a file A holds through n1 with no sharing must fail with a sharing violation; a system that
//! grants it gets `n/a` cells instead of figures (fast but wrong is no baseline).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use nasgw_tests::cluster::{SmbClient, SmbCluster, ADDRS, NODES, NODE_DIRS, PUB_SHARE, SMB_PORT};
use serde_json::json;

use crate::cpu::{self, Meter};
use crate::ctdb::{self, Host, SambaCtdb};
use crate::fixture::{Fixture, Sizes};
use crate::measure::{run_row, timed, Done};
use crate::table::{Group, Unit};

/// Columns of the shared-file table: A through n1 and B through n2 on nasgw, the same on
/// Samba + CTDB, and both through n1 on nasgw.
const SHARED_COLUMNS: [&str; 3] = ["nasgw, two nodes", "Samba+CTDB, two nodes", "nasgw, one node"];
/// Columns of the SMB-rows table.
const ROWS_COLUMNS: [&str; 3] = ["nasgw", "Samba+CTDB", "nasgw, single node"];
/// The systems, by column of the SMB-rows table (and the first two of the shared-file table).
const PORTS: [u16; 3] = [SMB_PORT, ctdb::SMB_PORT, SINGLE_PORT];
/// Short names for files and client names.
const LABELS: [&str; 3] = ["nasgw", "samba", "single"];
/// Where the single nasgw (no `[cluster]`) of the SMB-rows table listens on n1.
const SINGLE_PORT: u16 = 4451;

/// Runs both cluster tables; `work` holds the local sources and the anchor's state.
pub fn run(work: &Path, sizes: Sizes) -> Vec<Group> {
    let mut shared = Group::new(
        "Cluster: one shared file, two SMB clients at once, 3 nodes: nasgw vs Samba 4.17 + CTDB 4.17",
        &SHARED_COLUMNS,
        &[(0, 1), (0, 2)],
    );
    let mut rows = Group::new(
        "Cluster: the SMB rows on 3 nodes: nasgw vs Samba 4.17 + CTDB 4.17 (and one nasgw without a cluster)",
        &ROWS_COLUMNS,
        &[(0, 1), (0, 2)],
    );
    let n = if sizes.small_files >= 1000 { 2000 } else { 100 };
    shared.notes.push(format!(
        "Three nodes in network namespaces on one shared directory (nasgw: local backend; Samba: `clustering = yes`, \
         CTDB 4.17 with its databases per node), clients in a fourth namespace. Each client runs {n} iterations per \
         round with Python smbprotocol, each in its own process (client-side cost included, the same in every \
         column); the figure is the two \
         clients' operations over the wall time of both. \"two nodes\": client A through n1, B through n2; \"one \
         node\": both through n1."
    ));
    rows.notes.push(
        "The same cluster; every row is `smbclient -m SMB3 -O 'SO_RCVBUF=4194304 SO_SNDBUF=4194304'` from the \
         client namespace, timed as a whole (connect included), through n1; the last row runs one such session \
         through n1 and one through n2 at once (the figure: both sessions' files over the wall time of both). \
         \"nasgw, single node\": one nasgw without `[cluster]` in n1's namespace (port 4451) serving the same \
         directory, the same client (its last row: both sessions through it); its CPU is that one daemon's."
            .into(),
    );

    let started = std::panic::catch_unwind(|| {
        let c = SmbCluster::start("");
        // One driver process per client side, so the two clients' Python never shares a GIL.
        let d = [SmbClient::spawn(c.topo.ns("c1")), SmbClient::spawn(c.topo.ns("c1"))];
        (c, d)
    });
    let (cluster, mut d) = match started {
        Ok(x) => x,
        Err(_) => {
            let why = "the 3-node cluster did not start (see the panic above)".to_string();
            na_rows(&mut shared, &mut rows, sizes, &why);
            return vec![shared, rows];
        }
    };
    let fx = match Fixture::create_serving(&work.join("cluster"), &cluster.volume(), sizes) {
        Ok(fx) => fx,
        Err(e) => {
            na_rows(&mut shared, &mut rows, sizes, &format!("the cluster's data could not be made: {e:#}"));
            return vec![shared, rows];
        }
    };

    let hosts: Vec<Host<'_>> = (0..3).map(|i| Host { ns: cluster.topo.ns(NODES[i]), addr: ADDRS[i] }).collect();
    let started = Instant::now();
    let samba = SambaCtdb::start(&hosts, &cluster.volume(), &cluster.volume(), &work.join("ctdb"));
    let mut avail: Vec<Result<(), String>> = vec![Ok(()), Ok(()), Ok(())];
    let single = std::panic::catch_unwind(|| single_node(&cluster));
    if single.is_err() {
        avail[2] = Err("the single nasgw did not start (see the panic above)".into());
    }
    match &samba {
        Ok(_) => eprintln!("bench: Samba + CTDB serving on 3 nodes after {:.1} s", started.elapsed().as_secs_f64()),
        Err(e) => {
            eprintln!("bench: Samba + CTDB did not start: {e:#}");
            avail[1] = Err(format!("Samba + CTDB did not start: {e:#}"));
        }
    }
    // CPU time: the three nasgw nodes together, and the three nodes' ctdbd and smbd (with the
    // smbd children serving the connections) together.
    let sum = |ms: Vec<Meter>| ms.iter().fold(Meter::default(), |a, m| a.plus(m));
    let nasgw_cpu = sum(cluster
        .daemons
        .iter()
        .enumerate()
        .filter_map(|(i, d)| Some(cpu::track(&format!("nasgw-n{}", i + 1), d.as_ref()?.pid())))
        .collect());
    let samba_cpu = match &samba {
        Ok(s) => sum(s.pids().into_iter().map(|(what, pid)| cpu::track(what, pid)).collect()),
        Err(_) => Meter::missing("Samba + CTDB did not start"),
    };
    let single_cpu = match &single {
        Ok(d) => cpu::track("nasgw-single", d.pid()),
        Err(_) => Meter::missing("the single nasgw did not start"),
    };
    shared.meters = vec![nasgw_cpu.clone(), samba_cpu.clone(), nasgw_cpu.clone()];
    rows.meters = vec![nasgw_cpu, samba_cpu, single_cpu];
    // Clients (name, node, driver): A (A0, A1) through n1 and B (B0, B1) through n2 of each
    // system; C0 through n1 of nasgw. A clients run in driver 0, the others in driver 1.
    for s in 0..2 {
        if avail[s].is_err() {
            continue;
        }
        let mut conns = vec![(format!("A{s}"), 0, 0), (format!("B{s}"), 1, 1)];
        if s == 0 {
            conns.push(("C0".to_string(), 0, 1));
        }
        for (c, node, k) in &conns {
            let r = d[*k].call(json!({"op": "connect", "c": c, "host": ADDRS[*node], "port": PORTS[s]}));
            if !r.ok {
                avail[s] = Err(format!("an SMB session through {} failed: {}", NODES[*node], r.v));
                break;
            }
        }
        if avail[s].is_ok() {
            avail[s] = coherent(&mut d, &format!("A{s}"), &format!("B{s}"), &format!("coherence-{}", LABELS[s]));
        }
    }
    let shared_avail = vec![avail[0].clone(), avail[1].clone(), avail[0].clone()];

    run_row(
        &mut shared,
        "open+close of one file",
        Unit::Operations,
        sizes.rounds,
        &shared_avail,
        Box::new(|i, _| {
            let (a, b) = names(i);
            let path = format!("shared-open-{}", LABELS[i % 2]);
            let reqs = [
                json!({"op": "loop", "what": "openclose", "c": a, "path": path, "n": n}),
                json!({"op": "loop", "what": "openclose", "c": b, "path": path, "n": n}),
            ];
            both(&mut d, reqs, 2 * n)
        }),
    );

    // Each column's two clients open the system's lock file before their loops and close it
    // after, so no other column's idle opens are in the file's record while it runs.
    run_row(
        &mut shared,
        "lock+unlock of overlapping ranges",
        Unit::Operations,
        sizes.rounds,
        &shared_avail,
        Box::new(|i, r| {
            let (a, b) = names(i);
            let path = format!("shared-lock-{}", LABELS[i % 2]);
            let handles = [format!("la{i}-{r}"), format!("lb{i}-{r}")];
            for (k, c) in [a, b].into_iter().enumerate() {
                let o = d[k].call(json!({"op": "open", "c": c, "h": handles[k], "path": path, "share": 7}));
                if !o.ok {
                    bail!("open of the lock file failed: {}", o.v);
                }
            }
            let reqs = [
                json!({"op": "loop", "what": "lockunlock", "h": handles[0], "off": 0, "len": 100, "n": n}),
                json!({"op": "loop", "what": "lockunlock", "h": handles[1], "off": 50, "len": 100, "n": n}),
            ];
            let res = both(&mut d, reqs, 2 * n);
            for (k, h) in handles.iter().enumerate() {
                d[k].call(json!({"op": "close", "h": h}));
            }
            res
        }),
    );
    drop(d);

    run_smb_rows(&mut rows, &fx, cluster.topo.ns("c1"), &avail);
    drop(single);
    drop(samba);
    drop(cluster);
    vec![shared, rows]
}

/// One nasgw without `[cluster]` in n1's namespace on [`SINGLE_PORT`], serving the cluster's
/// directory: the single-node column of the SMB-rows table.
fn single_node(cluster: &SmbCluster) -> nasgw_tests::Daemon {
    let config = format!(
        r#"[volume]
name = "smb"
backend = "local"
path = "{vol}"
[nfs]
enabled = false
[smb]
listen = "0.0.0.0:{SINGLE_PORT}"
{PUB_SHARE}{NODE_DIRS}"#,
        vol = cluster.volume().display()
    );
    nasgw_tests::Daemon::start("single", &cluster.root.path().join("single"), &config, Some(cluster.topo.ns(NODES[0])))
}

/// The clients (A, B) of shared-table column `i`.
fn names(i: usize) -> (&'static str, &'static str) {
    match i {
        0 => ("A0", "B0"),
        1 => ("A1", "B1"),
        _ => ("A0", "C0"),
    }
}

/// Checks that the system is one file-sharing state: `a` (driver 0, through n1) opens `path`
/// sharing nothing; `b` (driver 1, through n2) must then get a sharing violation.
fn coherent(d: &mut [SmbClient; 2], a: &str, b: &str, path: &str) -> Result<(), String> {
    let held = d[0].call(json!({"op": "open", "c": a, "h": "coh-a", "path": path, "share": 0}));
    if !held.ok {
        return Err(format!("the coherence check's first open failed: {}", held.v));
    }
    let second = d[1].call(json!({"op": "open", "c": b, "h": "coh-b", "path": path, "share": 7}));
    d[0].call(json!({"op": "close", "h": "coh-a"}));
    if second.ok {
        d[1].call(json!({"op": "close", "h": "coh-b"}));
        return Err("not one state: an open through n2 was granted beside a no-sharing open through n1".into());
    }
    if second.status != "STATUS_SHARING_VIOLATION" {
        return Err(format!("the coherence check's second open failed oddly: {}", second.v));
    }
    Ok(())
}

/// Runs both loops at once, `reqs[k]` in driver `k`; the figure is `ops` (open+close or
/// lock+unlock pairs) over the span from the first start to the last end (both drivers read
/// the same CLOCK_MONOTONIC).
fn both(d: &mut [SmbClient; 2], reqs: [serde_json::Value; 2], ops: u64) -> Result<Done> {
    let [ra, rb] = reqs;
    let ids = [d[0].start(ra), d[1].start(rb)];
    let mut span = (f64::MAX, 0f64);
    for (k, id) in ids.into_iter().enumerate() {
        let r = d[k].wait(id, Duration::from_secs(600));
        if !r.ok {
            bail!("{}", r.v);
        }
        let start = r.v["start"].as_f64().unwrap_or_default();
        span = (span.0.min(start), span.1.max(start + r.v["elapsed"].as_f64().unwrap_or_default()));
    }
    Ok(Done { amount: ops, elapsed: Duration::from_secs_f64((span.1 - span.0).max(1e-9)) })
}

/// The row names of both tables, for cells that cannot run.
fn na_rows(shared: &mut Group, rows: &mut Group, sizes: Sizes, why: &str) {
    for row in ["open+close of one file", "lock+unlock of overlapping ranges"] {
        let avail = vec![Err(why.to_string()); shared.servers.len()];
        run_row(shared, row, Unit::Operations, sizes.rounds, &avail, Box::new(|_, _| unreachable!()));
    }
    let avail = vec![Err(why.to_string()); rows.servers.len()];
    for (row, unit) in smb_row_names(sizes) {
        run_row(rows, &row, unit, sizes.rounds, &avail, Box::new(|_, _| unreachable!()));
    }
}

/// The SMB-rows table's rows, in order.
fn smb_row_names(s: Sizes) -> [(String, Unit); 4] {
    let files = Sizes::count_label(s.small_files);
    [
        (format!("{} upload (put)", s.bulk_label()), Unit::Megabytes),
        (format!("{} download (get)", s.bulk_label()), Unit::Megabytes),
        (format!("{files} x 4 KiB files (mput, one session)"), Unit::Files),
        (format!("{files} x 4 KiB files through each of two nodes at once (mput)"), Unit::Files),
    ]
}

/// One smbclient session from namespace `ns` to node `node` of system `s`, running `commands`.
fn smbclient(ns: &str, s: usize, node: usize, commands: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, "smbclient", &format!("//{}/pub", ADDRS[node]), "-N", "-m", "SMB3"]).args([
        "-O",
        "SO_RCVBUF=4194304 SO_SNDBUF=4194304",
        "-p",
        &PORTS[s].to_string(),
        "-c",
        commands,
    ]);
    c
}

/// mput of the small files into a new directory `dir` through `node`; returns the session's
/// time and how many files landed.
fn mput(fx: &Fixture, ns: &str, s: usize, node: usize, dir: &str) -> Result<Duration> {
    let cmd = format!("mkdir {dir}; cd {dir}; lcd \"{}\"; prompt off; mput *", fx.small_source.display());
    let res = timed(&mut smbclient(ns, s, node, &cmd));
    let made = std::fs::read_dir(fx.data.join(dir)).map(|d| d.count()).unwrap_or(0);
    fx.remove(dir);
    let (elapsed, _) = res?;
    if made != fx.sizes.small_files {
        bail!("{made} of {} files are on disk", fx.sizes.small_files);
    }
    Ok(elapsed)
}

/// The SMB rows through the cluster's nodes, from the client namespace `ns`.
fn run_smb_rows(group: &mut Group, fx: &Fixture, ns: &str, avail: &[Result<(), String>]) {
    let s = fx.sizes;
    let [put, get, one, two] = smb_row_names(s);
    run_row(
        group,
        &put.0,
        put.1,
        s.rounds,
        avail,
        Box::new(|i, r| {
            let name = format!("cu-{}-{r}", LABELS[i]);
            let cmd = format!("put \"{}\" {name}", fx.big_source.display());
            let res = timed(&mut smbclient(ns, i, 0, &cmd));
            let got = std::fs::metadata(fx.data.join(&name)).map(|m| m.len()).unwrap_or(0);
            fx.remove(&name);
            let (elapsed, _) = res?;
            if got != s.bulk_bytes {
                bail!("uploaded {got} bytes of {}", s.bulk_bytes);
            }
            Ok(Done { amount: s.bulk_bytes, elapsed })
        }),
    );
    run_row(
        group,
        &get.0,
        get.1,
        s.rounds,
        avail,
        Box::new(|i, _| {
            let (elapsed, out) = timed(&mut smbclient(ns, i, 0, &format!("get {} /dev/null", fx.read_name)))?;
            let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            if !text.contains(&format!("of size {} as", s.bulk_bytes)) {
                bail!("unexpected get output: {}", text.trim());
            }
            Ok(Done { amount: s.bulk_bytes, elapsed })
        }),
    );
    run_row(
        group,
        &one.0,
        one.1,
        s.rounds,
        avail,
        Box::new(|i, r| {
            let elapsed = mput(fx, ns, i, 0, &format!("cm-{}-{r}", LABELS[i]))?;
            Ok(Done { amount: s.small_files as u64, elapsed })
        }),
    );
    run_row(
        group,
        &two.0,
        two.1,
        s.rounds,
        avail,
        Box::new(|i, r| {
            // The single node has no second node: both sessions go to it.
            let node_b = if i == 2 { 0 } else { 1 };
            let start = Instant::now();
            let (first, second) = std::thread::scope(|scope| {
                let a = scope.spawn(|| mput(fx, ns, i, 0, &format!("c2-{}-{r}-n1", LABELS[i])));
                let b = scope.spawn(|| mput(fx, ns, i, node_b, &format!("c2-{}-{r}-n2", LABELS[i])));
                (a.join(), b.join())
            });
            let elapsed = start.elapsed();
            for res in [first, second] {
                match res {
                    Ok(r) => {
                        r?;
                    }
                    Err(_) => bail!("an mput thread panicked"),
                }
            }
            Ok(Done { amount: 2 * s.small_files as u64, elapsed })
        }),
    );
}
