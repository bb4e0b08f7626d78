//! Cluster group: the cost of the cluster-wide file-sharing state. Three nasgw nodes in
//! namespaces on one volume (the test harness's [`SmbCluster`]); two SMB clients (Python
//! smbprotocol, `tests/smb/cluster_client.py`) hammer one shared file at once, either through
//! two different nodes (every decision needs the file's home; no delegation) or both through
//! the same node (the file is delegated to that node: no messages between nodes).
//!
//! There is no Samba + CTDB column: the bench has no CTDB plumbing yet (see the README).

use std::time::Duration;

use anyhow::{bail, Result};
use nasgw_tests::cluster::{SmbClient, SmbCluster};
use serde_json::json;

use crate::fixture::Sizes;
use crate::measure::{run_row, Done};
use crate::table::{Group, Unit};

/// Columns: 0 = A through n1 and B through n2; 1 = both through n1.
const COLUMNS: [&str; 2] = ["two nodes", "one node"];

/// Runs the cluster rows.
pub fn run(sizes: Sizes) -> Group {
    let mut group = Group::new(
        "Cluster: one shared file, two SMB clients at once, through two nodes vs one node (3 nasgw nodes)",
        &COLUMNS,
        &[(0, 1)],
    );
    let n = if sizes.small_files >= 1000 { 2000 } else { 100 };
    group.notes.push(format!(
        "Three nasgw nodes in network namespaces on one shared directory (local backend), clients in a fourth; \
         each client runs {n} iterations per round with Python smbprotocol (client-side cost included, the same \
         in both columns); the figure is the two clients' operations over the wall time of both. No Samba + CTDB \
         column yet."
    ));
    let started = std::panic::catch_unwind(|| {
        let c = SmbCluster::start("");
        let d = SmbClient::spawn(c.topo.ns("c1"));
        (c, d)
    });
    let (cluster, mut d) = match started {
        Ok(x) => x,
        Err(_) => {
            let why = "the 3-node cluster did not start (see the panic above)".to_string();
            let avail = vec![Err(why.clone()), Err(why)];
            for row in ["open+close of one file", "lock+unlock of overlapping ranges"] {
                run_row(&mut group, row, Unit::Operations, sizes.rounds, &avail, Box::new(|_, _| unreachable!()));
            }
            return group;
        }
    };
    d.connect("A", 0);
    d.connect("B2", 1);
    d.connect("B1", 0);
    let avail = vec![Ok(()), Ok(())];
    let b = |i: usize| if i == 0 { "B2" } else { "B1" };

    run_row(
        &mut group,
        "open+close of one file",
        Unit::Operations,
        sizes.rounds,
        &avail,
        Box::new(|i, _| {
            let reqs = [
                json!({"op": "loop", "what": "openclose", "c": "A", "path": "shared-open", "n": n}),
                json!({"op": "loop", "what": "openclose", "c": b(i), "path": "shared-open", "n": n}),
            ];
            both(&mut d, reqs, 2 * n)
        }),
    );

    for (c, h) in [("A", "la"), ("B2", "lb2"), ("B1", "lb1")] {
        let r = d.call(json!({"op": "open", "c": c, "h": h, "path": "shared-lock", "share": 7}));
        if !r.ok {
            group.notes.push(format!("lock rows: open failed: {}", r.v));
        }
    }
    run_row(
        &mut group,
        "lock+unlock of overlapping ranges",
        Unit::Operations,
        sizes.rounds,
        &avail,
        Box::new(|i, _| {
            let hb = if i == 0 { "lb2" } else { "lb1" };
            let reqs = [
                json!({"op": "loop", "what": "lockunlock", "h": "la", "off": 0, "len": 100, "n": n}),
                json!({"op": "loop", "what": "lockunlock", "h": hb, "off": 50, "len": 100, "n": n}),
            ];
            both(&mut d, reqs, 2 * n)
        }),
    );
    drop(d);
    drop(cluster);
    group
}

/// Runs both loops at once; the figure is `ops` (open+close or lock+unlock pairs) over the span from the first start to the
/// last end.
fn both(d: &mut SmbClient, reqs: [serde_json::Value; 2], ops: u64) -> Result<Done> {
    let ids: Vec<u64> = reqs.into_iter().map(|r| d.start(r)).collect();
    let mut span = (f64::MAX, 0f64);
    for id in ids {
        let r = d.wait(id, Duration::from_secs(600));
        if !r.ok {
            bail!("{}", r.v);
        }
        let start = r.v["start"].as_f64().unwrap_or_default();
        span = (span.0.min(start), span.1.max(start + r.v["elapsed"].as_f64().unwrap_or_default()));
    }
    Ok(Done { amount: ops, elapsed: Duration::from_secs_f64((span.1 - span.0).max(1e-9)) })
}
