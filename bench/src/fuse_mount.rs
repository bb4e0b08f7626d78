//! The node's own mount (issue 19, Benchmark): the same workloads, run by a local process, on
//! the backing directory, on nasgw's mount of it with FUSE passthrough and without, on
//! GlusterFS's own FUSE mount of a one-brick volume whose brick is on the same disk, and on
//! nasgw's mount of that volume (GlusterFS-FUSE backend with passthrough, and gfapi). fio for the data rows
//! (sequential write with a final fsync, sequential read, 4 KiB random reads with every cache
//! dropped first and warm), plain system calls for the metadata rows (create, stat, readdir
//! of `list_entries` files). CPU time: nasgw with its children (its own GlusterFS client),
//! the GlusterFS client of the raw mount; the backing directory has no server.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context as _, Result};
use nasgw_tests::gluster::{GlusterCluster, GlusterSpec};
use nasgw_tests::Daemon;

use crate::cpu::{self, Meter};
use crate::fixture::Sizes;
use crate::measure::{run_row, timed, Done};
use crate::nasgw::quietly;
use crate::table::{Group, Unit};
use crate::target::drop_caches;

/// A nasgw whose mount is at `dir/mnt`, or why there is none.
struct Mounted {
    daemon: Option<Daemon>,
    at: Result<PathBuf, String>,
    cpu: Meter,
}

fn start(dir: &Path, volume: &str, passthrough: bool, netns: Option<&str>) -> Mounted {
    let mnt = dir.join("mnt");
    if let Err(e) = std::fs::create_dir_all(&mnt) {
        return Mounted { daemon: None, at: Err(e.to_string()), cpu: Meter::missing("no mount point") };
    }
    let config = format!(
        "{volume}\n[nfs]\nenabled = false\n[smb]\nenabled = false\n[fuse]\nmountpoint = \"{}\"\npassthrough = {passthrough}\n\
         [node]\ncontrol_socket = \"{{dir}}/ctl.sock\"\nstate_dir = \"{{dir}}/state\"\n",
        mnt.display()
    );
    let started = quietly(|| match netns {
        Some(ns) => Daemon::start_sharing_mounts("nasgw-fuse", dir, &config, ns),
        None => Daemon::start("nasgw-fuse", dir, &config, None),
    });
    match started {
        Ok(d) => {
            let cpu = cpu::track("nasgw", d.pid());
            Mounted { daemon: Some(d), at: Ok(mnt), cpu }
        }
        Err(e) => {
            let why = format!("nasgw did not start: {}", crate::nasgw::last_error_line(&e));
            Mounted { daemon: None, at: Err(why.clone()), cpu: Meter::missing(&why) }
        }
    }
}

fn fio(dir: &Path, args: &[&str]) -> Result<()> {
    let mut cmd = Command::new("fio");
    cmd.args(["--name=bench", "--ioengine=psync", "--group_reporting", "--output-format=terse"])
        .arg(format!("--filename={}", dir.join("fio.dat").display()))
        .args(args);
    timed(&mut cmd).map(drop)
}

/// Builds the volumes and mounts, runs every row, tears everything down.
pub fn run(work: &Path, sizes: Sizes) -> Result<Vec<Group>> {
    let bulk = sizes.bulk_bytes;
    let size = format!("--size={bulk}");
    // Random reads: a sixteenth of the file, 4 KiB at a time.
    let random = (bulk / 16).max(1 << 20);
    let io_size = format!("--io_size={random}");
    let files = sizes.list_entries;

    let backing = work.join("fuse-backing");
    std::fs::create_dir_all(&backing)?;
    let local = crate::nasgw::local_volume(&backing);
    let pt = start(&work.join("fuse-pt"), &local, true, None);
    let plain = start(&work.join("fuse-plain"), &local, false, None);
    // The upcall options the appliance sets on its volumes: nasgw's gfapi access caches only
    // under upcalls, and the GlusterFS client (GlusterFS's own mount and nasgw's managed one)
    // keeps metadata as long as the bricks keep telling it (md-cache 600 s).
    let cluster = GlusterCluster::start(GlusterSpec {
        nodes: 1,
        replica: 1,
        options: nasgw::gluster::mount::UPCALL_CACHE_OPTIONS
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    });
    let raw = cluster.mount("n1", &work.join("fuse-gluster-raw"));
    let on_gluster = start(
        &work.join("fuse-gluster-nasgw"),
        &cluster.nasgw_volume_toml(0, "fuse"),
        true,
        Some(cluster.topo().ns("n1")),
    );
    let on_gfapi = start(
        &work.join("fuse-gluster-gfapi"),
        &cluster.nasgw_volume_toml(0, "gfapi"),
        true,
        Some(cluster.topo().ns("n1")),
    );
    let raw_cpu = cluster.mount_pid(&raw).map_or_else(|| Meter::missing("no FUSE client"), |p| cpu::track("fuse", p));

    // Each column's directory for the workloads (a sub-directory of each mount's root).
    let places: Vec<Result<PathBuf, String>> = vec![
        Ok(backing.clone()),
        pt.at.clone(),
        plain.at.clone(),
        Ok(raw.clone()),
        on_gluster.at.clone(),
        on_gfapi.at.clone(),
    ];
    let places: Vec<Result<PathBuf, String>> = places
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            p.and_then(|p| {
                let d = p.join(format!("bench-{i}"));
                std::fs::create_dir_all(&d).map_err(|e| format!("{}: {e}", d.display()))?;
                Ok(d)
            })
        })
        .collect();
    let available: Vec<Result<(), String>> =
        places.iter().map(|p| p.as_ref().map(drop).map_err(Clone::clone)).collect();
    let dir = |i: usize| places[i].clone().map_err(|e| anyhow::anyhow!(e));

    let mut g = Group::new(
        "The node's own mount (local process)",
        &[
            "backing dir",
            "nasgw mount passthrough",
            "nasgw mount no passthrough",
            "GlusterFS FUSE",
            "nasgw mount on GlusterFS",
            "nasgw mount on GlusterFS gfapi",
        ],
        &[(1, 0), (2, 0), (4, 3), (5, 3)],
    );
    g.meters = vec![
        Meter::missing("no server"),
        pt.cpu.clone(),
        plain.cpu.clone(),
        raw_cpu,
        on_gluster.cpu.clone(),
        on_gfapi.cpu.clone(),
    ];
    let label = sizes.bulk_label();
    run_row(&mut g, &format!("sequential write {label} (fsync)"), Unit::Megabytes, sizes.rounds, &available, {
        let size = size.clone();
        Box::new(move |i, _| {
            let d = dir(i)?;
            let t = Instant::now();
            fio(&d, &["--rw=write", "--bs=1M", &size, "--end_fsync=1"])?;
            Ok(Done { amount: bulk, elapsed: t.elapsed() })
        })
    });
    run_row(&mut g, &format!("sequential read {label} (caches dropped)"), Unit::Megabytes, sizes.rounds, &available, {
        let size = size.clone();
        Box::new(move |i, _| {
            let d = dir(i)?;
            drop_caches()?;
            let t = Instant::now();
            fio(&d, &["--rw=read", "--bs=1M", &size])?;
            Ok(Done { amount: bulk, elapsed: t.elapsed() })
        })
    });
    for (name, cold) in [("4 KiB random read (caches dropped)", true), ("4 KiB random read (warm)", false)] {
        let (size, io_size) = (size.clone(), io_size.clone());
        run_row(&mut g, name, Unit::Megabytes, sizes.rounds, &available, {
            Box::new(move |i, _| {
                let d = dir(i)?;
                if cold {
                    drop_caches()?;
                } else {
                    // Warm: the same reads once before.
                    fio(&d, &["--rw=randread", "--bs=4k", &size, &io_size, "--randseed=7"])?;
                }
                let t = Instant::now();
                fio(&d, &["--rw=randread", "--bs=4k", &size, &io_size, "--randseed=7"])?;
                Ok(Done { amount: random, elapsed: t.elapsed() })
            })
        });
    }
    let tree = |i: usize, r: usize| dir(i).map(|d| d.join(format!("tree-{r}")));
    run_row(&mut g, &format!("create {files} files"), Unit::Files, sizes.rounds, &available, {
        Box::new(move |i, r| {
            let t = tree(i, r)?;
            std::fs::create_dir_all(&t)?;
            let start = Instant::now();
            for n in 0..files {
                std::fs::File::create(t.join(format!("f{n:06}")))
                    .with_context(|| format!("create in {}", t.display()))?;
            }
            Ok(Done { amount: files as u64, elapsed: start.elapsed() })
        })
    });
    run_row(&mut g, &format!("stat {files} files"), Unit::Files, sizes.rounds, &available, {
        Box::new(move |i, r| {
            let t = tree(i, r)?;
            drop_caches()?;
            let start = Instant::now();
            for n in 0..files {
                std::fs::symlink_metadata(t.join(format!("f{n:06}")))?;
            }
            Ok(Done { amount: files as u64, elapsed: start.elapsed() })
        })
    });
    run_row(&mut g, &format!("readdir {files} entries"), Unit::Entries, sizes.rounds, &available, {
        Box::new(move |i, r| {
            let t = tree(i, r)?;
            drop_caches()?;
            let start = Instant::now();
            let n = std::fs::read_dir(&t)?.count();
            anyhow::ensure!(n == files, "{n} entries listed, {files} made");
            Ok(Done { amount: n as u64, elapsed: start.elapsed() })
        })
    });
    g.notes.push(format!(
        "A local process on the node: fio (psync; writes end with fsync) for the data rows, create/lstat/readdir \
         system calls for the metadata rows; \"caches dropped\" = `sync; echo 3 > /proc/sys/vm/drop_caches` first. \
         The backing directory is the local backend's folder; GlusterFS is a one-brick volume with its brick on \
         the same disk (the appliance's upcall options: `features.cache-invalidation on`, md-cache and quick-read dropped by upcalls, md-cache 600 s), mounted by its own FUSE client, and served by nasgw \
         through its managed FUSE mount (passthrough) and through libgfapi (no passthrough). \
         Targets (issue 19): passthrough >= 0.95x the backing directory for data, metadata >= 1.0x GlusterFS's \
         own mount. {} round(s) per row.",
        sizes.rounds
    ));

    for m in [pt, plain, on_gluster, on_gfapi] {
        if let Some(d) = m.daemon {
            d.stop();
        }
    }
    cluster.unmount(&raw);
    cluster.teardown();
    Ok(vec![g])
}
