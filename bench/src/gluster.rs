//! GlusterFS group (issue 6): on one real replica-3 volume (three glusterd in namespaces, built
//! by the test harness), the raw FUSE mount (`dd`: what any FUSE-based server can reach at
//! best), nasgw over its own FUSE mount, nasgw over libgfapi, Samba's smbd sharing the FUSE
//! mount and NFS-Ganesha with FSAL_GLUSTER, in one run.

use std::path::Path;

use anyhow::{Context as _, Result};
use nasgw_tests::anchors::{self, Ganesha, GaneshaFsal, Smbd};
use nasgw_tests::gluster::{GlusterCluster, GlusterSpec};
use tokio::runtime::Runtime;

use crate::cpu::{self, Meter};
use crate::fixture::{Fixture, Sizes};
use crate::nasgw;
use crate::nfs_client::NfsEndpoint;
use crate::table::Group;
use crate::target::{Rows, Target};
use crate::{nfs, smb};

fn volume(servers: &[String], access: &str) -> String {
    let list: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    format!("[volume]\nname = \"smb\"\nbackend = \"gluster\"\nservers = [{}]\naccess = \"{access}\"\n", list.join(", "))
}

fn nfs_target(n: &nasgw::Nasgw) -> Target {
    match &n.nfs {
        Ok(ep) => Target::Nfs(ep.clone()),
        Err(why) => Target::Absent(why.clone()),
    }
}

fn smb_target(n: &nasgw::Nasgw) -> Target {
    match &n.smb {
        Ok(p) => Target::Smb(*p),
        Err(why) => Target::Absent(why.clone()),
    }
}

/// Builds the volume, runs both tables, tears everything down. Moves the calling thread into
/// the cluster's client namespace for the run, and back.
pub fn run(work: &Path, sizes: Sizes, rt: &Runtime) -> Result<Vec<Group>> {
    // Upcalls on, as the README tells admins and the appliance sets it: nasgw's gfapi attribute
    // cache and Ganesha's cache invalidation both use them.
    let cluster = GlusterCluster::start(GlusterSpec {
        clients: vec![("c1".into(), "198.18.0.10".into())],
        options: vec![("features.cache-invalidation".into(), "on".into())],
        ..Default::default()
    });
    let client_ns = anchors::enter_netns(cluster.topo().ns("c1")).context("enter the client namespace")?;
    let mnt = cluster.mount("c1", &work.join("gluster-mnt"));
    // Replica 3 on one disk is slow (tens of small files per second through FUSE): at most 500
    // small files, a listed directory of at most 2000 entries, no deltree, at most 3 rounds.
    let sizes = Sizes {
        list_entries: sizes.list_entries.min(2000),
        deltree_files: 0,
        small_files: sizes.small_files.min(500),
        rounds: sizes.rounds.min(3),
        ..sizes
    };
    eprintln!("bench: preparing data on the GlusterFS volume");
    let fx = Fixture::create_serving(&work.join("gluster-src"), &mnt, sizes)?;

    let servers = cluster.servers();
    let fuse = nasgw::start(&work.join("nasgw-fuse"), &volume(&servers, "fuse"));
    let gfapi = nasgw::start(&work.join("nasgw-gfapi"), &volume(&servers, "gfapi"));
    let ganesha = nasgw::quietly(|| {
        Ganesha::start(
            &work.join("ganesha-gluster"),
            GaneshaFsal::Gluster { server: &cluster.nodes[0].addr, volume: &cluster.volume },
        )
    });
    let smbd = Smbd::start(&work.join("smbd-gluster"), &mnt);

    let mut nfs_group = Group::new(
        "GlusterFS replica 3 over NFSv3",
        &["raw FUSE (dd)", "nasgw FUSE", "nasgw gfapi", "Ganesha GLUSTER"],
        &[(2, 0), (2, 3), (1, 0)],
    );
    let ganesha_target = match &ganesha {
        Ok(g) => Target::Nfs(NfsEndpoint {
            export: g.export_path.clone(),
            nfs_port: g.nfs_port,
            mount_port: g.mount_port,
            metrics_port: None,
        }),
        Err(e) => Target::Absent(format!("Ganesha did not start: {}", e.lines().next().unwrap_or(""))),
    };
    let fuse_client = match cluster.mount_pid(&mnt) {
        Some(pid) => cpu::track("fuse-client", pid),
        None => Meter::missing("no FUSE client process"),
    };
    let ganesha_cpu = ganesha.as_ref().map_or_else(|_| Meter::missing("Ganesha did not start"), nfs::ganesha_meter);
    nfs_group.meters = vec![fuse_client.clone(), fuse.cpu.clone(), gfapi.cpu.clone(), ganesha_cpu];
    nfs::run_rows(
        &mut nfs_group,
        &fx,
        rt,
        &["raw", "fuse", "gfapi", "ganesha"],
        &[Target::Local, nfs_target(&fuse), nfs_target(&gfapi), ganesha_target],
        Rows::Gluster,
    );
    let mut smb_group = Group::new(
        "GlusterFS replica 3 over SMB3",
        &["raw FUSE (dd)", "nasgw FUSE", "nasgw gfapi", "smbd on FUSE"],
        &[(2, 0), (2, 3), (1, 0)],
    );
    // smbd serves the FUSE mount: its column counts the FUSE client too.
    smb_group.meters = vec![
        fuse_client.clone(),
        fuse.cpu.clone(),
        gfapi.cpu.clone(),
        cpu::track("smbd", smbd.pid()).plus(&fuse_client),
    ];
    smb::run_rows(
        &mut smb_group,
        &fx,
        &["raw", "fuse", "gfapi", "smbd"],
        &[Target::Local, smb_target(&fuse), smb_target(&gfapi), Target::Smb(smbd.port)],
        Rows::Gluster,
    );
    let note = format!(
        "One replica-3 volume (`features.cache-invalidation on`, so nasgw caches gfapi attributes): three glusterd with their bricks on the same disk, in network namespaces; clients, \
         nasgw, smbd and Ganesha run on a client host. The raw column is `dd bs=1M` (write with `conv=fsync`) and \
         small files written from one process through the FUSE mount; its list and stat rows are `readdir` + `lstat` \
         of each entry, and `lstat` of each name, through the FUSE mount. Plain reads through a FUSE mount (raw `dd`, \
         smbd, nasgw FUSE) may come from the kernel's page cache of that mount (the file was written through \
         it), Ganesha always fetches from the bricks, and nasgw gfapi from its own data cache once it read the \
         file (while the volume's upcalls reach it); the \"caches dropped\" rows empty every cache first \
         (`sync; echo 3 > /proc/sys/vm/drop_caches`, after setting the file's times again through the FUSE mount so \
         that nasgw gfapi's data cache hears of a change), so every reader fetches from the bricks' disk. CPU time: the raw column counts the FUSE client process, nasgw's columns the daemon \
         with its children (its own FUSE client), smbd's column smbd and the FUSE client it serves from, Ganesha's \
         ganesha.nfsd (libgfapi runs inside it); the bricks (glusterfsd) are in no column. {} round(s) per row.",
        sizes.rounds
    );
    nfs_group.notes.push(note.clone());
    smb_group.notes.push(note);

    smbd.stop();
    if let Ok(g) = ganesha {
        g.stop();
    }
    for n in [fuse, gfapi] {
        if let Some(d) = n.daemon {
            d.stop();
        }
    }
    drop(fx);
    cluster.unmount(&mnt);
    // Out of the client namespace before the cluster's teardown kills what is left in it.
    drop(client_ns);
    cluster.teardown();
    Ok(vec![nfs_group, smb_group])
}
