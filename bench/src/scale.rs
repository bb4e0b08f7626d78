//! Scale group (`--only scale`): NFSv3 with many clients at once, nasgw against NFS-Ganesha
//! (FSAL_VFS) serving the same directory: 16 and 64 concurrent clients (aggregate small-file
//! creates and aggregate reads), one active client while 10,000 idle connections are open
//! (and each server's memory per idle connection, from its resident set), and a directory of
//! 1,000,000 entries listed and searched. `--quick` makes everything far smaller. The same
//! nasgw then meets Samba's smbd in a second table (see [`crate::scale_smb`]).
//!
//! The create rows' clients are `nfs3_client` connections of this process, all driven by one
//! thread; each read row's client is a thread of its own with one connection
//! ([`crate::nfs_reader`]: one READ in flight, the data dropped unread but for a checked
//! sample), so the servers, not the bench, bound the aggregate reads. The client side is the
//! same for both servers. Idle connections come from many loopback source addresses (nasgw
//! admits 128 connections per client address), each having made one NULL call, as a mounted
//! but quiet kernel client would have.

use std::cell::RefCell;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context as _, Result};
use nasgw_tests::anchors::{Ganesha, GaneshaFsal, Smbd};
use nasgw_tests::idle_clients::{connect_from, source_address};
use tokio::runtime::Runtime;

use crate::fixture::{Fixture, Pattern, Sizes};
use crate::measure::{run_row, Done};
use crate::nasgw;
use crate::nfs::ganesha_meter;
use crate::nfs_client::{self, NfsEndpoint};
use crate::nfs_reader;
use crate::table::{Group, Unit};

/// How big the scale rows are.
#[derive(Clone, Copy, Debug)]
pub struct Scale {
    /// Concurrent client counts.
    pub clients: [usize; 2],
    /// Files each concurrent client creates.
    pub files_per_client: usize,
    /// Bytes all concurrent clients read together, per round.
    pub read_total: u64,
    /// Idle connections held open during the active client's row.
    pub idle: usize,
    /// Idle connections opened to smbd instead (it forks a process for each).
    pub smbd_idle: usize,
    /// GETATTRs the active client makes.
    pub getattrs: usize,
    /// Entries of the huge directory.
    pub huge_entries: usize,
    /// Names looked up in it (every other one absent).
    pub searches: usize,
}

impl Scale {
    /// What issue 17 asks for.
    pub fn full(s: &Sizes) -> Scale {
        Scale {
            clients: [16, 64],
            files_per_client: 250,
            read_total: 4 * s.bulk_bytes,
            idle: 10_000,
            smbd_idle: 1000,
            getattrs: 20_000,
            huge_entries: 1_000_000,
            searches: 2000,
        }
    }

    /// Plumbing only.
    pub fn quick(s: &Sizes) -> Scale {
        Scale {
            clients: [4, 8],
            files_per_client: 20,
            read_total: 2 * s.bulk_bytes,
            idle: 300,
            smbd_idle: 50,
            getattrs: 500,
            huge_entries: 3000,
            searches: 200,
        }
    }
}

/// The most connections Ganesha 4.3 accepts as its `RPC_Max_Connections` (a larger value is
/// refused as out of range and Ganesha exits at start).
const GANESHA_MAX_CONNECTIONS: usize = 10_000;

/// Idle connections Ganesha gets when `idle` are asked: what its ceiling leaves, less room
/// for the active client's NFS and MOUNT connections.
fn ganesha_idle(idle: usize) -> usize {
    idle.min(GANESHA_MAX_CONNECTIONS - 16)
}

/// The huge directory's entry names.
fn huge_entry(i: usize) -> String {
    format!("h{i:07}")
}

/// Makes `count` empty files in `dir` (once per run, before any server starts).
fn make_huge_dir(dir: &Path, count: usize) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    for i in 0..count {
        std::fs::File::create(dir.join(huge_entry(i))).with_context(|| format!("create entry {i}"))?;
    }
    Ok(())
}

/// A kernel client's first call on a new connection: NFSv3 NULL (record-marked, AUTH_NONE).
fn null_call(xid: u32) -> [u8; 44] {
    let words: [u32; 11] = [0x8000_0000 | 40, xid, 0, 2, 100_003, 3, 0, 0, 0, 0, 0];
    let mut out = [0u8; 44];
    for (i, w) in words.iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&w.to_be_bytes());
    }
    out
}

/// Opens `n` connections to `port`, each from `127.0.X.Y` and each answered one NULL call.
fn open_idle(port: u16, n: usize) -> Result<Vec<TcpStream>> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let src = source_address(i);
        let sock = connect_from(src, port).with_context(|| format!("idle connection {i} from {src}"))?;
        let mut s = sock;
        s.write_all(&null_call(i as u32 + 1))?;
        let mut reply = [0u8; 28];
        s.read_exact(&mut reply).with_context(|| format!("NULL reply on idle connection {i}"))?;
        out.push(s);
    }
    Ok(out)
}

/// Resident memory of process `pid` in KiB (`VmRSS`).
fn rss_kib(pid: u32) -> Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:")?.trim().strip_suffix("kB")?.trim().parse().ok())
        .context("no VmRSS")
}

/// Raises this process's open-file limit (inherited by the servers it starts) and returns the
/// limit in force afterwards: raising the hard limit needs CAP_SYS_RESOURCE, which a container
/// may withhold.
fn raise_nofile(want: u64) -> u64 {
    let lim = libc::rlimit { rlim_cur: want, rlim_max: want };
    // SAFETY: setrlimit and getrlimit read and write a valid struct.
    unsafe {
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            let mut now = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut now);
            // Up to the hard limit at least.
            now.rlim_cur = now.rlim_max.min(want);
            libc::setrlimit(libc::RLIMIT_NOFILE, &now);
            return now.rlim_cur;
        }
    }
    want
}

/// Runs the scale group under `work`: the NFS table, then the SMB one.
pub fn run(work: &Path, sizes: Sizes, scale: Scale, rt: &Runtime) -> Result<Vec<Group>> {
    let want = (scale.idle as u64 * 2 + 4096).max(65_536);
    let nofile = raise_nofile(want);
    if nofile < want {
        eprintln!("bench: scale: open files limited to {nofile} (wanted {want}): servers may run out of descriptors");
    }
    let root = work.join("scale");
    let fx = Fixture::create(&root, sizes)?;
    let huge = "huge";
    let label = crate::fixture::Sizes::count_label(scale.huge_entries);
    let list_row = format!("list a {label}-entry directory (READDIRPLUS)");
    let search_row = format!("search a {label}-entry directory: LOOKUP {} names, half absent", scale.searches);
    // Making it takes minutes at full size: only when a row that reads it runs.
    if crate::measure::selected(&list_row) || crate::measure::selected(&search_row) {
        eprintln!("bench: scale: making a directory of {} entries", scale.huge_entries);
        make_huge_dir(&fx.data.join(huge), scale.huge_entries)?;
    }
    let max = scale.idle + 1024;
    let caps = format!("max_connections = {max}\n");
    let server = nasgw::start_with_keys(&root.join("nasgw"), &nasgw::local_volume(&fx.data), &caps, &caps);
    let ganesha = Ganesha::start_with_core(
        &root.join("ganesha"),
        GaneshaFsal::Vfs(&fx.data),
        &format!("RPC_Max_Connections = {};", max.min(GANESHA_MAX_CONNECTIONS)),
    );
    let mut group = Group::new(
        "Scale (NFSv3): nasgw vs NFS-Ganesha 4.3 (FSAL_VFS), many clients",
        &["nasgw", "Ganesha"],
        &[(0, 1)],
    );
    group.meters = vec![server.cpu.clone(), ganesha_meter(&ganesha)];
    let anchor = NfsEndpoint {
        export: ganesha.export_path.clone(),
        nfs_port: ganesha.nfs_port,
        mount_port: ganesha.mount_port,
        metrics_port: None,
    };
    let eps: Vec<Result<NfsEndpoint, String>> = vec![server.nfs.clone(), Ok(anchor)];
    let pids: Vec<Option<u32>> = vec![server.daemon.as_ref().map(|d| d.pid()), ganesha.pid()];
    let avail: Vec<Result<(), String>> = eps.iter().map(|e| e.as_ref().map(|_| ()).map_err(Clone::clone)).collect();
    let ep = |i: usize| eps[i].as_ref().map_err(|e| anyhow::anyhow!("{e}"));
    let s = sizes;

    // The idle rows first: on a machine whose open-file ceiling is low, Ganesha's cache of
    // descriptors of the files the many-client rows write would leave no room for the sockets.
    let memory = RefCell::new(Vec::<String>::new());
    for asked in [0, scale.idle] {
        let label = crate::fixture::Sizes::count_label(asked);
        let title = if ganesha_idle(asked) < asked {
            format!("1 client: GETATTR, {label} idle connections open (Ganesha: {})", ganesha_idle(asked))
        } else {
            format!("1 client: GETATTR, {label} idle connections open")
        };
        run_row(
            &mut group,
            &title,
            Unit::Operations,
            s.rounds,
            &avail,
            Box::new(|i, _| {
                let ep = ep(i)?;
                let pid = pids[i].context("no server process")?;
                let idle = if i == 1 { ganesha_idle(asked) } else { asked };
                let before = rss_kib(pid)?;
                let conns = open_idle(ep.nfs_port, idle)?;
                let after = rss_kib(pid)?;
                if idle > 0 {
                    let per = (after.saturating_sub(before)) as f64 / idle as f64;
                    memory.borrow_mut().push(format!(
                        "{}: resident set {} MiB -> {} MiB with {idle} idle connections: {per:.1} KiB per connection",
                        ["nasgw", "Ganesha"][i],
                        before / 1024,
                        after / 1024
                    ));
                }
                let done = rt.block_on(async {
                    let mut sess = nfs_client::connect(ep).await?;
                    let root = sess.root();
                    let start = Instant::now();
                    for _ in 0..scale.getattrs {
                        sess.getattr(&root).await?;
                    }
                    let elapsed = start.elapsed();
                    sess.close().await?;
                    anyhow::Ok(Done { amount: scale.getattrs as u64, elapsed })
                });
                drop(conns);
                done
            }),
        );
    }
    group.notes.extend(memory.into_inner());
    let jukebox = RefCell::new(Vec::<String>::new());
    let read_paths = RefCell::new(Vec::<String>::new());
    for n in scale.clients {
        run_row(
            &mut group,
            &format!("{n} clients: 4 KiB creates, {} each", scale.files_per_client),
            Unit::Files,
            s.rounds,
            &avail,
            Box::new(|i, r| {
                let ep = ep(i)?.clone();
                let dirs: Vec<String> = (0..n).map(|c| format!("s{n}-{i}-{r}-{c}")).collect();
                let out = rt.block_on(concurrent_creates(&ep, &dirs, scale.files_per_client, s.small_size));
                for d in &dirs {
                    fx.remove(d);
                }
                let (done, waits) = out?;
                if waits > 0 {
                    jukebox.borrow_mut().push(format!(
                        "{n} clients' creates, round {}: {} answered NFS3ERR_JUKEBOX {waits} time(s); each time the client \
                         waited {} s and sent the call again, as the Linux client does (the row's time includes it).",
                        r + 1,
                        ["nasgw", "Ganesha"][i],
                        nfs_client::JUKEBOX_WAIT.as_secs()
                    ));
                }
                Ok(done)
            }),
        );
        run_row(
            &mut group,
            &format!("{n} clients: read {} MiB together (1 MiB READs)", scale.read_total >> 20),
            Unit::Megabytes,
            s.rounds,
            &avail,
            Box::new(|i, r| {
                crate::fixture::preload(&fx.data.join(fx.read_name))?;
                let ep = ep(i)?;
                let before = ep.metrics_port.map(nasgw::nfs_read_counters);
                let done = concurrent_reads(rt, ep, fx.read_name, n, scale.read_total, s.bulk_bytes)?;
                if let (Some(port), Some(before)) = (ep.metrics_port, before) {
                    let paths = before.and_then(|b| Ok(nasgw::nfs_read_counters(port)?.paths_since(&b)));
                    read_paths.borrow_mut().push(format!(
                        "{n} clients' reads, round {}: nasgw's READ bytes {}.",
                        r + 1,
                        paths.unwrap_or_else(|e| format!("took an unknown path ({e:#})"))
                    ));
                }
                Ok(done)
            }),
        );
    }

    group.notes.extend(jukebox.into_inner());
    group.notes.extend(read_paths.into_inner());

    run_row(
        &mut group,
        &list_row,
        Unit::Entries,
        s.rounds,
        &avail,
        Box::new(|i, _| {
            rt.block_on(async {
                let mut sess = nfs_client::connect(ep(i)?).await?;
                let root = sess.root();
                let d = sess.lookup(&root, huge).await?;
                let start = Instant::now();
                let names = sess.list(&d).await?;
                let elapsed = start.elapsed();
                sess.close().await?;
                if names.len() != scale.huge_entries {
                    bail!("listed {} of {} entries", names.len(), scale.huge_entries);
                }
                Ok(Done { amount: names.len() as u64, elapsed })
            })
        }),
    );
    run_row(
        &mut group,
        &search_row,
        Unit::Operations,
        s.rounds,
        &avail,
        Box::new(|i, r| {
            rt.block_on(async {
                let mut sess = nfs_client::connect(ep(i)?).await?;
                let root = sess.root();
                let d = sess.lookup(&root, huge).await?;
                let start = Instant::now();
                let mut found = 0;
                for k in 0..scale.searches {
                    // Spread over the directory; odd ones name nothing.
                    let idx = (k * 7919 + r * 104_729) % scale.huge_entries;
                    let name = if k % 2 == 0 { huge_entry(idx) } else { format!("{}-absent", huge_entry(idx)) };
                    found += usize::from(sess.exists(&d, &name).await?);
                }
                let elapsed = start.elapsed();
                sess.close().await?;
                if found != scale.searches.div_ceil(2) {
                    bail!("found {found} of {} present names", scale.searches.div_ceil(2));
                }
                Ok(Done { amount: scale.searches as u64, elapsed })
            })
        }),
    );
    ganesha.stop();

    let smbd = Smbd::start(&root.join("smbd"), &fx.data);
    let mut smb_group =
        Group::new("Scale (SMB3): nasgw vs Samba smbd 4.17, many clients", &["nasgw", "smbd"], &[(0, 1)]);
    smb_group.meters = vec![server.cpu.clone(), crate::cpu::track("smbd", smbd.pid())];
    let smb_pids = [server.daemon.as_ref().map(|d| d.pid()), Some(smbd.pid())];
    let smb_rows =
        crate::scale_smb::run_rows(&mut smb_group, &fx, scale, [server.smb.clone(), Ok(smbd.port)], smb_pids);
    smbd.stop();
    if let Some(d) = server.daemon {
        d.stop();
    }
    smb_rows?;
    if nofile < want {
        group.notes.push(format!(
            "Open files: the bench could not raise its limit to {want} (no CAP_SYS_RESOURCE here); it and every server \
             ran with {nofile}, counting sockets and open files together."
        ));
    }
    group.notes.push(
        "Clients use AUTH_UNIX uid 1000, one request in flight per connection. The create rows' clients are \
         `nfs3_client` connections driven by one thread of the bench (with many clients that thread may bound both \
         servers alike); each read row's client is a thread of its own with one connection, which checks every \
         reply's status, length and first 4 KiB against the file's pattern and lets the kernel drop the rest \
         unread (`recv` with `MSG_TRUNC`), so the servers send every byte and the clients cost little. Idle connections each made one NULL call, from loopback source addresses 127.1.x.y \
         (100 per address). Memory per idle connection is the growth of the server's resident set (VmRSS) \
         after opening them, divided by their number."
            .into(),
    );
    Ok(vec![group, smb_group])
}

/// `dirs.len()` clients at once, each creating `per` files of `size` bytes in its own directory;
/// also returns how many calls the server answered NFS3ERR_JUKEBOX (each waited out).
async fn concurrent_creates(ep: &NfsEndpoint, dirs: &[String], per: usize, size: usize) -> Result<(Done, u64)> {
    let mut sessions = Vec::new();
    for d in dirs {
        let mut sess = nfs_client::connect(ep).await?;
        let root = sess.root();
        let fh = sess.mkdir(&root, d).await?;
        sessions.push((sess, fh));
    }
    let block = std::sync::Arc::new(vec![0x5a_u8; size]);
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for (mut sess, fh) in sessions {
        let block = block.clone();
        set.spawn(async move {
            let n = sess.create_files(&fh, per, &block).await?;
            let waits = sess.jukebox_waits();
            sess.close().await?;
            anyhow::Ok((n, waits))
        });
    }
    let (mut total, mut waits) = (0, 0);
    while let Some(r) = set.join_next().await {
        let (n, w) = r??;
        total += n;
        waits += w;
    }
    Ok((Done { amount: total, elapsed: start.elapsed() }, waits))
}

/// `n` clients at once reading `total` bytes of `file` together (each its share, from its own
/// offset, wrapping at the file's end `size`), each a thread of its own with one connection
/// ([`nfs_reader`]): the handle comes from one mounted session, then every client connects,
/// and the clock runs from when all may start to when the last is done.
fn concurrent_reads(rt: &Runtime, ep: &NfsEndpoint, file: &str, n: usize, total: u64, size: u64) -> Result<Done> {
    let fh = rt.block_on(async {
        let mut sess = nfs_client::connect(ep).await?;
        let root = sess.root();
        let fh = sess.lookup(&root, file).await?;
        sess.close().await?;
        anyhow::Ok(fh)
    })?;
    let readers: Vec<nfs_reader::Reader> =
        (0..n).map(|c| nfs_reader::Reader::connect(ep.nfs_port, (c as u32) << 24)).collect::<Result<_>>()?;
    let pattern = Pattern::new(crate::fixture::READ_SEED);
    let share = total / n as u64;
    let go = std::sync::Barrier::new(n + 1);
    let (start, results) = std::thread::scope(|s| {
        let workers: Vec<_> = readers
            .into_iter()
            .enumerate()
            .map(|(c, mut reader)| {
                let (fh, pattern, go) = (&fh, &pattern, &go);
                s.spawn(move || {
                    let from = (c as u64 * size / n as u64) & !((1 << 20) - 1);
                    go.wait();
                    let mut done = 0;
                    let mut at = from;
                    while done < share {
                        let want = (share - done).min(size - at);
                        let got = reader.read_range(fh, at, want, 1 << 20, pattern)?;
                        if got == 0 {
                            bail!("READ at {at} returned nothing");
                        }
                        done += got;
                        at = (at + got) % size;
                    }
                    anyhow::Ok(done)
                })
            })
            .collect();
        go.wait();
        let start = Instant::now();
        let results: Vec<Result<u64>> =
            workers.into_iter().map(|w| w.join().unwrap_or_else(|_| Err(anyhow::anyhow!("client panicked")))).collect();
        (start, results)
    });
    let elapsed = start.elapsed();
    let mut bytes = 0;
    for r in results {
        bytes += r?;
    }
    if bytes != share * n as u64 {
        bail!("read {bytes} of {} bytes", share * n as u64);
    }
    Ok(Done { amount: bytes, elapsed })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ganesha_gets_what_its_connection_ceiling_leaves() {
        assert_eq!(ganesha_idle(300), 300);
        assert_eq!(ganesha_idle(10_000), GANESHA_MAX_CONNECTIONS - 16);
        // Room for the active client's NFS and MOUNT connections below the ceiling.
        assert!(ganesha_idle(1_000_000) + 2 <= GANESHA_MAX_CONNECTIONS);
    }
}
