//! GlusterFS group (issue 6): on one real replica-3 volume (three glusterd in namespaces, built
//! by the test harness), the raw FUSE mount (`dd`: what any FUSE-based server can reach at
//! best), nasgw over its own FUSE mount, nasgw over libgfapi, Samba's smbd sharing the FUSE
//! mount and NFS-Ganesha with FSAL_GLUSTER, in one run. A third table lists a directory of
//! `Sizes::list_entries` (10k) entries through the two gfapi servers (issue 17's listing goal);
//! its files are made through a nasgw gfapi of its own, many NFS connections at once, since
//! one FUSE create at a time on replica 3 is too slow for it.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use nasgw_tests::anchors::{self, Ganesha, GaneshaFsal, Smbd};
use nasgw_tests::gluster::{GlusterCluster, GlusterSpec};
use tokio::runtime::Runtime;

use crate::cpu::{self, Meter};
use crate::fixture::{list_entry, Fixture, Sizes};
use crate::measure::{run_row, Done};
use crate::nasgw;
use crate::nfs_client::{self, NfsEndpoint};
use crate::table::{Group, Unit};
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
/// The replica-3 volume and its client host `c1`.
fn start_cluster() -> GlusterCluster {
    // Upcalls on, as the README tells admins and the appliance sets it: nasgw's gfapi attribute
    // cache and Ganesha's cache invalidation both use them.
    GlusterCluster::start(GlusterSpec {
        clients: vec![("c1".into(), "198.18.0.10".into())],
        options: vec![("features.cache-invalidation".into(), "on".into())],
        ..Default::default()
    })
}

/// Ganesha with FSAL_GLUSTER on the cluster's volume, every setting but the export's at its
/// default; the reason when it did not start.
fn start_ganesha(work: &Path, cluster: &GlusterCluster) -> Result<Ganesha, String> {
    nasgw::quietly(|| {
        Ganesha::start(
            &work.join("ganesha-gluster"),
            GaneshaFsal::Gluster { server: &cluster.nodes[0].addr, volume: &cluster.volume },
        )
    })
}

pub fn run(work: &Path, sizes: Sizes, rt: &Runtime) -> Result<Vec<Group>> {
    let cluster = start_cluster();
    // The big listed directory is made fast (not through FUSE), so it keeps the full size.
    let listed_entries = sizes.list_entries;
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
    let made = make_listed(work, &servers, listed_entries, rt).map_err(|e| format!("{e:#}"));
    eprintln!("bench: the {listed_entries}-entry directory: {made:?}");
    let fuse = nasgw::start(&work.join("nasgw-fuse"), &volume(&servers, "fuse"));
    let gfapi = nasgw::start(&work.join("nasgw-gfapi"), &volume(&servers, "gfapi"));
    let ganesha = start_ganesha(work, &cluster);
    let smbd = Smbd::start(&work.join("smbd-gluster"), &mnt);

    let mut nfs_group = Group::new(
        "GlusterFS replica 3 over NFSv3",
        &["raw FUSE (dd)", "nasgw FUSE", "nasgw gfapi", "Ganesha GLUSTER"],
        &[(2, 0), (2, 3), (1, 0)],
    );
    let ganesha_target = match ganesha_endpoint(&ganesha) {
        Ok(ep) => Target::Nfs(ep),
        Err(why) => Target::Absent(why),
    };
    let fuse_client = match cluster.mount_pid(&mnt) {
        Some(pid) => cpu::track("fuse-client", pid),
        None => Meter::missing("no FUSE client process"),
    };
    let ganesha_cpu = ganesha.as_ref().map_or_else(|_| Meter::missing("Ganesha did not start"), nfs::ganesha_meter);
    nfs_group.meters = vec![fuse_client.clone(), fuse.cpu.clone(), gfapi.cpu.clone(), ganesha_cpu];
    // nasgw gfapi caches only once it proved that the volume's upcalls reach it: rows measured
    // before that would measure a server with its cache off.
    let cache_on = wait_cache_on(&gfapi);
    eprintln!("bench: nasgw gfapi's attribute cache: {cache_on:?}");
    let gfapi_target = |t: Target| match &cache_on {
        Ok(_) => t,
        Err(why) => Target::Absent(why.clone()),
    };
    nfs::run_rows(
        &mut nfs_group,
        &fx,
        rt,
        &["raw", "fuse", "gfapi", "ganesha"],
        &[Target::Local, nfs_target(&fuse), gfapi_target(nfs_target(&gfapi)), ganesha_target],
        Rows::Gluster,
    );
    let listing = listing_group(listed_entries, sizes.rounds, &made, &gfapi, &ganesha, rt);
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
        &[Target::Local, smb_target(&fuse), gfapi_target(smb_target(&gfapi)), Target::Smb(smbd.port)],
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
    Ok(vec![nfs_group, listing, smb_group])
}

/// The big listed directory's name, beside the fixture's.
const LISTED: &str = "list-big";
/// Connections making it at once: the bricks answer several clients' creates in parallel,
/// where one FUSE create at a time is what makes a big directory slow to build on replica 3.
const MAKERS: usize = 16;
/// How long nasgw gfapi may take to prove the volume's upcalls (its cache is off until then).
const CACHE_ON_WITHIN: Duration = Duration::from_secs(90);

/// Makes [`LISTED`] with `entries` empty files through a nasgw gfapi of its own ([`MAKERS`]
/// NFS connections at once), killed before the measured servers start, so neither has seen
/// the files before its first listing. Returns how long it took.
fn make_listed(work: &Path, servers: &[String], entries: usize, rt: &Runtime) -> Result<Duration> {
    let maker = nasgw::start(&work.join("nasgw-maker"), &volume(servers, "gfapi"));
    let made = match &maker.nfs {
        Ok(ep) => rt.block_on(make_entries(ep, entries)),
        Err(why) => Err(anyhow!("nasgw (maker) does not serve NFS: {why}")),
    };
    // Killed, not stopped: its creates were answered (on the bricks), and its clean stop once
    // took over the harness's 40 s under load 50 (the bench then died there).
    if let Some(d) = maker.daemon {
        d.kill();
    }
    made
}

async fn make_entries(ep: &NfsEndpoint, entries: usize) -> Result<Duration> {
    let start = Instant::now();
    let mut s = nfs_client::connect(ep).await?;
    let root = s.root();
    let dir = s.mkdir(&root, LISTED).await?;
    s.close().await?;
    let mut set = tokio::task::JoinSet::new();
    for m in 0..MAKERS {
        let (ep, dir) = (ep.clone(), dir.clone());
        let names: Vec<String> = (m..entries).step_by(MAKERS).map(list_entry).collect();
        set.spawn(async move {
            let mut s = nfs_client::connect(&ep).await?;
            let n = s.create_empty(&dir, &names).await?;
            s.close().await?;
            anyhow::Ok(n)
        });
    }
    let mut made = 0;
    while let Some(r) = set.join_next().await {
        made += r??;
    }
    if made != entries as u64 {
        bail!("made {made} of {entries} entries");
    }
    Ok(start.elapsed())
}

/// Whether nasgw's log `text` says its gfapi attribute cache is on now: the last of its
/// "attribute cache on" and "attribute cache off" lines decides (`None`: neither yet).
fn cache_state(text: &str) -> Option<bool> {
    match (text.rfind("attribute cache on"), text.rfind("attribute cache off")) {
        (Some(on), Some(off)) => Some(on > off),
        (on, off) => on.map(|_| true).or(off.map(|_| false)),
    }
}

/// Waits until `n`'s log says its gfapi attribute cache is on (upcalls proved); how long that
/// took, or why not within [`CACHE_ON_WITHIN`].
fn wait_cache_on(n: &nasgw::Nasgw) -> Result<Duration, String> {
    let Some(d) = &n.daemon else { return Err("nasgw gfapi did not start".into()) };
    let start = Instant::now();
    loop {
        if cache_state(&d.logs()) == Some(true) {
            return Ok(start.elapsed());
        }
        if start.elapsed() > CACHE_ON_WITHIN {
            return Err(format!(
                "nasgw gfapi's attribute cache was not on {} s after the rows were due (its log: {}): its rows \
                 would measure a cache-off server",
                CACHE_ON_WITHIN.as_secs(),
                match cache_state(&d.logs()) {
                    Some(_) => "\"attribute cache off\"",
                    None => "neither \"attribute cache on\" nor \"off\"",
                }
            ));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Issue 17's listing goal: the [`LISTED`] directory listed with READDIRPLUS through nasgw
/// gfapi and through Ganesha FSAL_GLUSTER (its cache settings left at their defaults): the
/// first listing of each (nothing cached), then listed again `rounds` times.
fn listing_group(
    entries: usize,
    rounds: usize,
    made: &Result<Duration, String>,
    gfapi: &nasgw::Nasgw,
    ganesha: &Result<Ganesha, String>,
    rt: &Runtime,
) -> Group {
    let label = Sizes::count_label(entries);
    let mut group = Group::new(
        &format!("GlusterFS replica 3: a {label}-entry directory over NFSv3"),
        &["nasgw gfapi", "Ganesha GLUSTER"],
        &[(0, 1)],
    );
    group.meters = vec![
        gfapi.cpu.clone(),
        ganesha.as_ref().map_or_else(|_| Meter::missing("Ganesha did not start"), nfs::ganesha_meter),
    ];
    let eps: Vec<Result<NfsEndpoint, String>> = vec![gfapi.nfs.clone(), ganesha_endpoint(ganesha)];
    let avail: Vec<Result<(), String>> = eps
        .iter()
        .map(|e| match (made, e) {
            (Err(why), _) => Err(format!("the directory was not made: {why}")),
            (_, Err(why)) => Err(why.clone()),
            _ => Ok(()),
        })
        .collect();
    let cache_on = wait_cache_on(gfapi);
    let list = |i: usize| -> Result<Done> {
        let ep = eps[i].as_ref().map_err(|e| anyhow!("{e}"))?;
        rt.block_on(async {
            let mut sess = nfs_client::connect(ep).await?;
            let root = sess.root();
            let d = sess.lookup(&root, LISTED).await?;
            let start = Instant::now();
            let names = sess.list(&d).await?;
            let elapsed = start.elapsed();
            sess.close().await?;
            if names.len() != entries {
                bail!("listed {} of {entries} entries", names.len());
            }
            Ok(Done { amount: names.len() as u64, elapsed })
        })
    };
    run_row(
        &mut group,
        &format!("list {label} entries, first time (READDIRPLUS)"),
        Unit::Entries,
        1,
        &avail,
        Box::new(|i, _| list(i)),
    );
    run_row(
        &mut group,
        &format!("list {label} entries again (READDIRPLUS)"),
        Unit::Entries,
        rounds,
        &avail,
        Box::new(|i, _| list(i)),
    );
    let made = match made {
        Ok(t) => format!("in {:.1} s", t.as_secs_f64()),
        Err(why) => format!("(failed: {why})"),
    };
    group.notes.push(format!(
        "The directory's {entries} empty files were made {made} by a nasgw gfapi of its own ({MAKERS} NFS connections \
         creating at once), killed before the measured servers started: neither had seen them. Ganesha runs \
         with its cache settings at their defaults (no MDCACHE block, no Attr_Expiration_Time: attributes kept 60 s, \
         Dir_Chunk 128, Entries_HWMark 100000) and the volume's `features.cache-invalidation on`; nasgw's gfapi cache \
         was {} when the rows began. Each listing is one connection's READDIRPLUS in 64 KiB pages (a cold client); \
         the first row is one listing per server, the second {rounds} round(s), interleaved.",
        match cache_on {
            Ok(_) => "on (upcalls proved)".to_string(),
            Err(why) => format!("NOT on ({why})"),
        }
    ));
    group
}

/// Ganesha's NFS endpoint, or why there is none.
fn ganesha_endpoint(g: &Result<Ganesha, String>) -> Result<NfsEndpoint, String> {
    match g {
        Ok(g) => Ok(NfsEndpoint {
            export: g.export_path.clone(),
            nfs_port: g.nfs_port,
            mount_port: g.mount_port,
            metrics_port: None,
        }),
        Err(e) => Err(format!("Ganesha did not start: {}", e.lines().next().unwrap_or(""))),
    }
}

/// `--only gluster-list`: the volume, the big directory and the listing rows alone (a few
/// minutes, where the whole GlusterFS group takes about ten).
pub fn run_listing(work: &Path, sizes: Sizes, rt: &Runtime) -> Result<Vec<Group>> {
    let cluster = start_cluster();
    let client_ns = anchors::enter_netns(cluster.topo().ns("c1")).context("enter the client namespace")?;
    let mnt = cluster.mount("c1", &work.join("gluster-mnt"));
    // The bench's NFS clients are uid 1000: they make the directory in the volume's root.
    let opened =
        std::fs::set_permissions(&mnt, std::fs::Permissions::from_mode(0o777)).context("chmod the volume root");
    let servers = cluster.servers();
    let made = opened.and_then(|()| make_listed(work, &servers, sizes.list_entries, rt)).map_err(|e| format!("{e:#}"));
    eprintln!("bench: the {}-entry directory: {made:?}", sizes.list_entries);
    let gfapi = nasgw::start(&work.join("nasgw-gfapi"), &volume(&servers, "gfapi"));
    let ganesha = start_ganesha(work, &cluster);
    let group = listing_group(sizes.list_entries, sizes.rounds, &made, &gfapi, &ganesha, rt);
    if let Ok(g) = ganesha {
        g.stop();
    }
    if let Some(d) = gfapi.daemon {
        d.stop();
    }
    cluster.unmount(&mnt);
    drop(client_ns);
    cluster.teardown();
    Ok(vec![group])
}

#[cfg(test)]
mod tests {
    use super::cache_state;

    #[test]
    fn the_last_cache_line_of_the_log_decides() {
        assert_eq!(cache_state("starting\nNFS listening"), None);
        assert_eq!(cache_state("x attribute cache off: every GETATTR asks the bricks"), Some(false));
        let on = "attribute cache off: ... run `gluster volume set smb features.cache-invalidation on`\n\
                  attribute cache on: the volume's upcalls reach this node";
        assert_eq!(cache_state(on), Some(true));
        assert_eq!(cache_state(&format!("{on}\nattribute cache off: lost")), Some(false));
    }
}
