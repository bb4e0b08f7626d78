//! NFS locks: nasgw's lock manager against NFS-Ganesha 4.3's (FSAL_VFS, NLM 4 with its
//! rpcbind and rpc.statd) on the same directory. One lock owner on one kept TCP connection
//! takes and releases an exclusive whole-file lock, one call at a time, as a kernel client's
//! lockd does for an application that locks and unlocks a file in a loop.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Instant;

use anyhow::{anyhow, bail, Result};
use nasgw_tests::anchors::{Ganesha, GaneshaFsal};
use nasgw_tests::nlm::{file_handle_at, stat, NlmConn};

use crate::cpu::Meter;
use crate::fixture::Fixture;
use crate::measure::{run_row, Done};
use crate::nasgw::quietly;
use crate::nfs_client::NfsEndpoint;
use crate::table::{Group, Unit};

/// The file both servers lock.
const LOCKED: &str = "nlm-locked";

/// Where one server's lock manager is, and the locked file's handle there.
struct LockTarget {
    nlm: SocketAddr,
    fh: Vec<u8>,
}

fn target(ep: &NfsEndpoint, nlm_port: u16) -> Result<LockTarget, String> {
    let at = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
    let fh = quietly(|| file_handle_at(at(ep.nfs_port), at(ep.mount_port), &ep.export, LOCKED))?;
    Ok(LockTarget { nlm: at(nlm_port), fh })
}

/// `pairs` LOCK+UNLOCK pairs from one owner on one connection.
fn lock_unlock(t: &LockTarget, pairs: u64, round: usize) -> Result<Done> {
    let mut c = NlmConn::connect(t.nlm, "bench-client", 100 + round as i32)?;
    // The first lock of a client also records it for the status monitor: not timed.
    let warm = c.lock(&t.fh, 0, 0)?;
    if warm != stat::GRANTED {
        bail!("the first LOCK answered status {warm}");
    }
    c.unlock(&t.fh, 0, 0)?;
    let start = Instant::now();
    for _ in 0..pairs {
        let l = c.lock(&t.fh, 0, 0)?;
        if l != stat::GRANTED {
            bail!("LOCK answered status {l}");
        }
        let u = c.unlock(&t.fh, 0, 0)?;
        if u != stat::GRANTED {
            bail!("UNLOCK answered status {u}");
        }
    }
    Ok(Done { amount: pairs, elapsed: start.elapsed() })
}

/// The NLM group: starts Ganesha with NLM on `fx.data`, runs the rows against `nasgw` (whose
/// lock manager shares its NFS port) and it, stops it.
pub fn run(fx: &Fixture, work: &Path, nasgw: &Result<NfsEndpoint, String>, nasgw_cpu: &Meter) -> Group {
    let mut group =
        Group::new("NFS locks (NLM 4): nasgw vs NFS-Ganesha 4.3 with NLM", &["nasgw", "Ganesha"], &[(0, 1)]);
    let pairs = fx.sizes.small_files as u64 * 5;
    let created = std::fs::write(fx.data.join(LOCKED), b"locked by the bench\n");
    let ganesha = quietly(|| Ganesha::start_with_nlm(&work.join("ganesha-nlm"), GaneshaFsal::Vfs(&fx.data)));
    group.meters = vec![
        nasgw_cpu.clone(),
        ganesha.as_ref().map_or_else(|_| Meter::missing("Ganesha did not start"), crate::nfs::ganesha_meter),
    ];
    let targets: Vec<Result<LockTarget, String>> = vec![
        match (&created, nasgw) {
            (Err(e), _) => Err(format!("cannot create {LOCKED}: {e}")),
            (_, Err(why)) => Err(why.clone()),
            (Ok(()), Ok(ep)) => target(ep, ep.nfs_port),
        },
        match &ganesha {
            Err(why) => Err(format!("Ganesha did not start: {}", crate::nasgw::last_error_line(why))),
            Ok(g) => {
                let ep = NfsEndpoint {
                    export: g.export_path.clone(),
                    nfs_port: g.nfs_port,
                    mount_port: g.mount_port,
                    metrics_port: None,
                };
                g.nlm_port.ok_or_else(|| "no NLM port".to_string()).and_then(|p| target(&ep, p))
            }
        },
    ];
    let avail: Vec<Result<(), String>> = targets.iter().map(|t| t.as_ref().map(|_| ()).map_err(Clone::clone)).collect();
    run_row(
        &mut group,
        &format!("{pairs} lock+unlock pairs (one owner, TCP)"),
        Unit::Operations,
        fx.sizes.rounds,
        &avail,
        Box::new(|i, r| {
            let t = targets[i].as_ref().map_err(|e| anyhow!("{e}"))?;
            lock_unlock(t, pairs, r)
        }),
    );
    if let Ok(g) = ganesha {
        g.stop();
    }
    fx.remove(LOCKED);
    group.notes.push(
        "One NLM 4 owner on one TCP connection on loopback: a non-blocking exclusive whole-file LOCK, then its UNLOCK, one \
         call at a time; the owner's first lock (which records the client for the status monitor) is not timed. Ganesha \
         runs with its rpcbind and rpc.statd. Not yet measured: a lock handed between two clients through two nodes."
            .into(),
    );
    group
}
