//! `bench`: the same workloads against nasgw and the servers it replaces (Samba's smbd,
//! NFS-Ganesha, a raw GlusterFS mount), with real clients, interleaved in one run, printed as
//! markdown tables with the ratio nasgw/anchor per row. See README's "Benchmark" section.
//!
//! Everything runs in a private network namespace (servers and clients meet on its own
//! loopback; Ganesha's rpcbind gets port 111 there), so a run never disturbs other daemons on
//! the machine. Needs root.

mod cluster;
mod cpu;
mod ctdb;
mod failover;
mod fixture;
mod fuse_mount;
mod gluster;
mod machine;
mod measure;
mod nasgw;
mod nfs;
mod nfs_client;
mod nfs_reader;
mod nlm;
mod page_cache;
mod scale;
mod scale_smb;
mod smb;
mod smb_kernel;
mod smb_server_side;
mod table;
mod target;

use std::path::PathBuf;

use anyhow::{bail, Context as _, Result};
use clap::{Parser, ValueEnum};

use crate::fixture::{Fixture, Sizes};

/// The workload groups.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Only {
    /// NFSv3: nasgw vs NFS-Ganesha (FSAL_VFS).
    Nfs,
    /// SMB3: nasgw vs Samba smbd.
    Smb,
    /// GlusterFS: raw FUSE mount, nasgw (FUSE, gfapi), Samba on FUSE, Ganesha FSAL_GLUSTER.
    Gluster,
    /// GlusterFS, the listing rows alone: a 10k-entry directory listed through nasgw gfapi and
    /// Ganesha FSAL_GLUSTER (part of `gluster` too).
    GlusterList,
    /// Cluster: 3 nasgw nodes vs Samba + CTDB on 3 nodes: one shared file from two clients, the SMB rows.
    Cluster,
    /// NFS locks (NLM 4): nasgw vs NFS-Ganesha with NLM and rpc.statd.
    Nlm,
    /// Failover: a writer's stall when its node dies (nasgw vs Samba + CTDB, 3 nodes), and
    /// the time an address takes to move with 3, 5 and 7 nasgw nodes.
    Failover,
    /// The Linux kernel's SMB client in a VM: nasgw vs Samba smbd, same boot.
    SmbKernel,
    /// The node's own mount: a local process on the backing directory, nasgw's mount with
    /// and without passthrough, GlusterFS's own FUSE mount and nasgw's mount of that volume.
    Fuse,
    /// Scale: 16 and 64 NFS and SMB clients at once, 10,000 idle connections, a 1M-entry
    /// directory (not in the default set: it makes a million files).
    Scale,
}

/// Benchmarks nasgw against its anchors with real clients and prints markdown tables.
#[derive(Parser, Debug)]
#[command(name = "bench")]
struct Args {
    /// Small sizes (32 MiB bulk, 200 files, 1000 entries, one round): checks the plumbing.
    #[arg(long)]
    quick: bool,
    /// Run only these groups (repeat or comma-separate); default: nfs, smb, smb-kernel,
    /// cluster, nlm, failover and fuse.
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Only>,
    /// Run only the rows whose name contains one of these (repeat or comma-separate), e.g.
    /// `--only smb --rows encrypted` for the encrypted put and get; the groups' set-up still runs.
    #[arg(long, value_delimiter = ',')]
    rows: Vec<String>,
    /// Rounds per workload (the median is reported); default 5, or 1 with --quick.
    #[arg(long)]
    rounds: Option<usize>,
    /// Work directory for served data (must be on the disk under test); default: a new
    /// directory under /var/tmp, removed afterwards.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Where results are saved (one markdown file per run).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/results"))]
    out: PathBuf,
    /// Idle connections of the scale group's idle rows (default 10,000, or 300 with --quick):
    /// each SMB connection costs nasgw several file descriptors, so a machine whose open-file
    /// limit cannot be raised may hold fewer.
    #[arg(long)]
    scale_idle: Option<usize>,
    /// A line added to the `[nfs]` table of the nasgw that serves the nfs, smb, smb-kernel
    /// and nlm groups (repeat for more), e.g. `--nasgw-nfs 'zero_copy_reads = false'`; the
    /// report's command line records it.
    #[arg(long)]
    nasgw_nfs: Vec<String>,
    /// The nasgw binary; default: $NASGW_BIN, else `nasgw` next to this binary, else built.
    #[arg(long)]
    nasgw: Option<PathBuf>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("bench needs root (private network namespace, rpcbind for Ganesha)");
    }
    select_nasgw_binary(args.nasgw.clone());
    measure::select_rows(args.rows.clone());
    // Before any thread or child exists: everything started from here on inherits it.
    nasgw_tests::anchors::isolate_network().context("private network namespace")?;

    let mut sizes = if args.quick { Sizes::quick() } else { Sizes::full() };
    if let Some(r) = args.rounds {
        sizes.rounds = r.max(1);
    }
    let only = if args.only.is_empty() {
        vec![Only::Nfs, Only::Smb, Only::SmbKernel, Only::Cluster, Only::Nlm, Only::Failover, Only::Fuse]
    } else {
        args.only.clone()
    };

    let (_keep, work) = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            (None, d.clone())
        }
        None => {
            let t = tempfile::Builder::new().prefix("nasgw-bench-").tempdir_in("/var/tmp")?;
            let p = t.path().to_path_buf();
            (Some(t), p)
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;

    let mut groups = Vec::new();
    if [Only::Nfs, Only::Smb, Only::SmbKernel, Only::Nlm].iter().any(|o| only.contains(o)) {
        eprintln!("bench: preparing data under {}", work.display());
        let fx = Fixture::create(&work, sizes)?;
        let server = nasgw::start_with(&work.join("nasgw"), &nasgw::local_volume(&fx.data), &args.nasgw_nfs.join("\n"));
        if only.contains(&Only::Nfs) {
            groups.push(nfs::run(&fx, &work, &rt, &server.nfs, &server.cpu));
        }
        if only.contains(&Only::Smb) {
            groups.push(smb::run(&fx, &work, &server.smb, &server.cpu));
        }
        if only.contains(&Only::SmbKernel) {
            groups.push(smb_kernel::run(&fx, &work, &server.smb, &server.cpu));
        }
        if only.contains(&Only::Nlm) {
            groups.push(nlm::run(&fx, &work, &server.nfs, &server.cpu));
        }
        if let Some(d) = server.daemon {
            d.stop();
        }
    }
    if only.contains(&Only::Gluster) {
        groups.extend(gluster::run(&work, sizes, &rt)?);
    }
    if only.contains(&Only::GlusterList) && !only.contains(&Only::Gluster) {
        groups.extend(gluster::run_listing(&work, sizes, &rt)?);
    }
    if only.contains(&Only::Cluster) {
        groups.extend(cluster::run(&work, sizes));
    }
    if only.contains(&Only::Failover) {
        groups.extend(failover::run(&work, sizes));
    }
    if only.contains(&Only::Fuse) {
        groups.extend(fuse_mount::run(&work, sizes)?);
    }
    if only.contains(&Only::Scale) {
        let mut scale = if args.quick { scale::Scale::quick(&sizes) } else { scale::Scale::full(&sizes) };
        if let Some(n) = args.scale_idle {
            scale.idle = n;
        }
        groups.extend(scale::run(&work, sizes, scale, &rt)?);
    }

    cpu::cleanup();

    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let mut report = format!("{}\nCommand: `{command}`\n", machine::describe(&work, sizes));
    for g in &groups {
        report.push('\n');
        report.push_str(&g.markdown());
    }
    println!("{report}");
    std::fs::create_dir_all(&args.out)?;
    let file = args.out.join(format!("{}-{}.md", machine::stamp(), if args.quick { "quick" } else { "full" }));
    std::fs::write(&file, &report)?;
    eprintln!("bench: saved {}", file.display());
    Ok(())
}

/// Points the harness at the nasgw binary to run (it reads `NASGW_BIN`).
fn select_nasgw_binary(explicit: Option<PathBuf>) {
    let chosen = explicit.or_else(|| std::env::var_os("NASGW_BIN").map(PathBuf::from)).or_else(|| {
        let sibling = std::env::current_exe().ok()?.parent()?.join("nasgw");
        sibling.is_file().then_some(sibling)
    });
    if let Some(p) = chosen {
        // Called before any other thread exists.
        std::env::set_var("NASGW_BIN", p);
    }
}
