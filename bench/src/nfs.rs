//! NFSv3 group: nasgw against NFS-Ganesha (FSAL_VFS) serving the same directory of the same
//! disk. Bulk rows use libnfs `nfs-cp`; the many-file rows use one connection (`nfs_client`).

use std::cell::RefCell;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Result};
use nasgw_tests::anchors::{Ganesha, GaneshaFsal};
use tokio::runtime::Runtime;

use crate::cpu::{self, Meter};
use crate::fixture::{self, list_entry, Fixture, Sizes};
use crate::measure::{children_cpu, run_row, timed, ClientRounds, Done};
use crate::nasgw;
use crate::nfs_client::{self, NfsEndpoint};
use crate::table::{Group, Unit};
use crate::target::{self, Rows, Target};

/// What the read rows observed about the path that served them.
#[derive(Default)]
struct ReadPaths {
    /// The share of the file in the page cache after the preload of each warm round.
    resident: Vec<f64>,
    /// Per nasgw read round: "label warm|cold" and the paths its READ bytes took
    /// ([`nasgw::ReadCounters::paths_since`]), or why they are unknown.
    paths: Vec<(String, Result<String, String>)>,
    /// Per read round of any server ("label warm|cold"): wall-clock and `nfs-cat` CPU time.
    client: ClientRounds,
}

impl ReadPaths {
    /// Notes for the report (none when no read ran).
    fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if !self.resident.is_empty() {
            let min = self.resident.iter().copied().fold(1.0, f64::min);
            notes.push(format!(
                "Read rows: before every round the bench reads the file once locally, so each server starts with it \
                 in the page cache; then at least {:.1}% of its pages were resident (mincore).",
                min * 100.0
            ));
        }
        notes.extend(self.client.notes("read", "nfs-cat"));
        let mut labels: Vec<&str> = self.paths.iter().map(|(l, _)| l.as_str()).collect();
        labels.dedup();
        for l in labels {
            let shares: Vec<String> = self
                .paths
                .iter()
                .filter(|(x, _)| x == l)
                .enumerate()
                .map(|(r, (_, v))| match v {
                    Ok(v) => format!("round {}: {v}", r + 1),
                    Err(e) => format!("round {}: unknown ({e})", r + 1),
                })
                .collect();
            notes.push(format!(
                "{l} read: how nasgw's READ bytes went out (spliced through a 1 MiB pipe, sendfile when no pipe was free, or copied when not all in the page cache or with zero_copy_reads = false): {}.",
                shares.join("; ")
            ));
        }
        notes
    }
}

/// Runs the NFS rows against `targets` (one per column; `Local` for the raw directory):
/// bulk write, bulk read and small files, plus listing and stats on a directory, plus a read
/// with cold caches on GlusterFS.
pub fn run_rows(group: &mut Group, fx: &Fixture, rt: &Runtime, labels: &[&str], targets: &[Target], rows: Rows) {
    let s = fx.sizes;
    let avail: Vec<Result<(), String>> = targets.iter().map(Target::available).collect();
    let ep = |i: usize| match &targets[i] {
        Target::Nfs(ep) => Ok(ep),
        _ => Err(anyhow::anyhow!("not an NFS server")),
    };
    let local = |i: usize| matches!(targets[i], Target::Local);

    run_row(
        group,
        &format!("{} write (nfs-cp)", s.bulk_label()),
        Unit::Megabytes,
        s.rounds,
        &avail,
        Box::new(|i, r| {
            let name = format!("w-{}-{r}", labels[i]);
            // Every round starts from the same memory state, as the SMB upload rows do: the
            // rows before leave GiBs of dirty and cached pages, and whichever server met their
            // writeback paid 3-7x the CPU per GiB of the next round (both servers, 12-07 16:00).
            fx.remove(&name);
            crate::page_cache::settle_for_upload(&fx.big_source)?;
            if local(i) {
                return target::local_write(fx, &name);
            }
            let (elapsed, _) = timed(Command::new("nfs-cp").arg(&fx.big_source).arg(ep(i)?.url(&name)))?;
            let got = std::fs::metadata(fx.data.join(&name)).map(|m| m.len()).unwrap_or(0);
            fx.remove(&name);
            if got != s.bulk_bytes {
                bail!("wrote {got} bytes of {}", s.bulk_bytes);
            }
            Ok(Done { amount: s.bulk_bytes, elapsed })
        }),
    );
    // What served each read round: the file's page-cache state before it, and how nasgw's
    // READ bytes went out (from its metrics).
    let seen = RefCell::new(ReadPaths::default());
    let read = |i: usize, cold: bool| {
        if cold {
            target::drop_caches_of(fx)?;
        } else if rows == Rows::Directory {
            // The rows before may have evicted it: every server starts from the page cache.
            seen.borrow_mut().resident.push(fixture::preload(&fx.data.join(fx.read_name))?);
        }
        if local(i) {
            return target::local_read(fx);
        }
        let ep = ep(i)?;
        let before = ep.metrics_port.map(nasgw::nfs_read_counters);
        let sink = std::fs::File::create("/dev/null")?;
        let client_before = children_cpu();
        let (elapsed, _) = timed(Command::new("nfs-cat").arg(ep.url(fx.read_name)).stdout(sink))?;
        let client = children_cpu().saturating_sub(client_before);
        let label = format!("{} {}", labels[i], if cold { "cold" } else { "warm" });
        seen.borrow_mut().client.push(&label, elapsed, client);
        if let (Some(port), Some(before)) = (ep.metrics_port, before) {
            let paths = before.and_then(|b| Ok(nasgw::nfs_read_counters(port)?.paths_since(&b)));
            seen.borrow_mut().paths.push((label, paths.map_err(|e| format!("{e:#}"))));
        }
        Ok(Done { amount: s.bulk_bytes, elapsed })
    };
    // On GlusterFS also with every cache dropped first (see `Rows::Gluster`).
    for cold in [false, true].into_iter().filter(|c| !c || rows == Rows::Gluster) {
        let label = if cold { "read, caches dropped" } else { "read" };
        run_row(
            group,
            &format!("{} {label} (nfs-cat)", s.bulk_label()),
            Unit::Megabytes,
            s.rounds,
            &avail,
            Box::new(move |i, _| read(i, cold)),
        );
    }
    group.notes.extend(seen.into_inner().notes());
    run_row(
        group,
        &format!("{} x 4 KiB creates (one connection)", Sizes::count_label(s.small_files)),
        Unit::Files,
        s.rounds,
        &avail,
        Box::new(|i, r| {
            let dir = format!("c-{}-{r}", labels[i]);
            if local(i) {
                return target::local_small_files(fx, &dir);
            }
            let block = vec![0x5a_u8; s.small_size];
            let out = rt.block_on(async {
                let mut sess = nfs_client::connect(ep(i)?).await?;
                let root = sess.root();
                let d = sess.mkdir(&root, &dir).await?;
                let start = Instant::now();
                let n = sess.create_files(&d, s.small_files, &block).await?;
                let elapsed = start.elapsed();
                sess.close().await?;
                anyhow::Ok(Done { amount: n, elapsed })
            });
            let made = std::fs::read_dir(fx.data.join(&dir)).map(|d| d.count()).unwrap_or(0);
            fx.remove(&dir);
            let out = out?;
            if made != s.small_files {
                bail!("{made} of {} files are on disk", s.small_files);
            }
            Ok(out)
        }),
    );
    if s.list_entries == 0 {
        return;
    }
    run_row(
        group,
        &format!("list {} entries (READDIRPLUS)", Sizes::count_label(s.list_entries)),
        Unit::Entries,
        s.rounds,
        &avail,
        Box::new(|i, _| {
            if local(i) {
                return target::local_list(fx);
            }
            rt.block_on(async {
                let mut sess = nfs_client::connect(ep(i)?).await?;
                let root = sess.root();
                let d = sess.lookup(&root, fx.list_name).await?;
                let start = Instant::now();
                let names = sess.list(&d).await?;
                let elapsed = start.elapsed();
                sess.close().await?;
                if names.len() != s.list_entries {
                    bail!("listed {} of {} entries", names.len(), s.list_entries);
                }
                Ok(Done { amount: names.len() as u64, elapsed })
            })
        }),
    );
    run_row(
        group,
        &format!("stat {} files (LOOKUP+GETATTR)", Sizes::count_label(s.list_entries)),
        Unit::Files,
        s.rounds,
        &avail,
        Box::new(|i, _| {
            let names: Vec<String> = (0..s.list_entries).map(list_entry).collect();
            if local(i) {
                return target::local_stat(fx, &names);
            }
            rt.block_on(async {
                let mut sess = nfs_client::connect(ep(i)?).await?;
                let root = sess.root();
                let d = sess.lookup(&root, fx.list_name).await?;
                let start = Instant::now();
                let n = sess.stat_all(&d, &names).await?;
                let elapsed = start.elapsed();
                sess.close().await?;
                Ok(Done { amount: n, elapsed })
            })
        }),
    );
}

/// The NFS group: starts Ganesha on `fx.data`, runs the rows against `nasgw` and it, stops it.
pub fn run(fx: &Fixture, work: &Path, rt: &Runtime, nasgw: &Result<NfsEndpoint, String>, nasgw_cpu: &Meter) -> Group {
    let mut group = Group::new("NFSv3: nasgw vs NFS-Ganesha 4.3 (FSAL_VFS)", &["nasgw", "Ganesha"], &[(0, 1)]);
    let ganesha = Ganesha::start(&work.join("ganesha"), GaneshaFsal::Vfs(&fx.data));
    group.meters = vec![nasgw_cpu.clone(), ganesha_meter(&ganesha)];
    let anchor = NfsEndpoint {
        export: ganesha.export_path.clone(),
        nfs_port: ganesha.nfs_port,
        mount_port: ganesha.mount_port,
        metrics_port: None,
    };
    let subject = match nasgw {
        Ok(ep) => Target::Nfs(ep.clone()),
        Err(why) => Target::Absent(why.clone()),
    };
    run_rows(&mut group, fx, rt, &["nasgw", "ganesha"], &[subject, Target::Nfs(anchor)], Rows::Directory);
    ganesha.stop();
    group.notes.push(
        "Both serve the same directory; clients use AUTH_UNIX uid 1000 over TCP on loopback. Bulk rows time a whole \
         `nfs-cp`/`nfs-cat` process (mount included); the other rows time the operations on one mounted connection, one request \
         at a time. Before every write round the bench syncs, drops the clean page cache, compacts free memory and reads \
         the source back in (outside the timed part)."
            .into(),
    );
    group
}

/// Ganesha's CPU time (with the rpcbind and rpc.statd it starts).
pub fn ganesha_meter(g: &Ganesha) -> Meter {
    match g.pid() {
        Some(pid) => cpu::track("ganesha", pid),
        None => Meter::missing("Ganesha is not running"),
    }
}
