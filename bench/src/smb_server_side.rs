//! SMB rows where the server does the work for the client (issue 11): a server-side copy of
//! the bulk file inside the share (`smbclient`'s `scopy`: FSCTL_SRV_REQUEST_RESUME_KEY, then
//! FSCTL_SRV_COPYCHUNK_WRITE, the data never crosses the network), and CREATEs of names that
//! are missing from the listed directory (10k entries in the full run) on a case-insensitive
//! share: the server must show no entry matches in any case, which smbd does by scanning the
//! directory and nasgw from its folded per-directory index.

use std::io::Read as _;
use std::process::Command;

use anyhow::{bail, Context as _, Result};

use crate::fixture::{self, Fixture, Sizes};
use crate::measure::{run_row, timed, Done};
use crate::smb::smbclient;
use crate::table::{Group, Unit};
use crate::target::Target;

/// The lookup client: one smbprotocol session, N timed misses (see its docstring).
const CASE_MISS_CLIENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/smb/case_miss.py");

/// Runs the server-side copy and case-insensitive miss rows against the SMB `targets`.
pub fn run_rows(group: &mut Group, fx: &Fixture, labels: &[&str], targets: &[Target], avail: &[Result<(), String>]) {
    let s = fx.sizes;
    let port = |i: usize| targets[i].smb_port();
    run_row(
        group,
        &format!("{} server-side copy (scopy, FSCTL_SRV_COPYCHUNK)", s.bulk_label()),
        Unit::Megabytes,
        s.rounds,
        avail,
        Box::new(|i, r| {
            // The source comes from the page cache, as in the download rows.
            fixture::preload(&fx.data.join(fx.read_name))?;
            let name = format!("c-{}-{r}", labels[i]);
            let res = timed(&mut smbclient(port(i)?, &format!("scopy {} {name}", fx.read_name)));
            let same = same_samples(fx, &name);
            fx.remove(&name);
            let (elapsed, _) = res?;
            same?;
            Ok(Done { amount: s.bulk_bytes, elapsed })
        }),
    );
    if s.list_entries == 0 {
        return;
    }
    let misses = (s.list_entries / 10).max(10);
    run_row(
        group,
        &format!(
            "{} x CREATE of a missing name, {}-entry directory, case-insensitive (smbprotocol)",
            misses,
            Sizes::count_label(s.list_entries)
        ),
        Unit::Operations,
        s.rounds,
        avail,
        Box::new(|i, _| {
            let probe = fixture::list_entry(0).to_uppercase();
            let (_, out) = timed(Command::new("python3").arg(CASE_MISS_CLIENT).args([
                "127.0.0.1",
                &port(i)?.to_string(),
                "pub",
                fx.list_name,
                &probe,
                &misses.to_string(),
            ]))?;
            let v: serde_json::Value =
                serde_json::from_slice(&out.stdout).context("the lookup client's answer (one JSON line)")?;
            let (Some(n), Some(secs)) = (v["n"].as_u64(), v["elapsed"].as_f64()) else {
                bail!("unexpected answer of the lookup client: {v}");
            };
            Ok(Done { amount: n, elapsed: std::time::Duration::from_secs_f64(secs) })
        }),
    );
    group.notes.push(format!(
        "Server-side copy: one `smbclient -c 'scopy {read} COPY'` session per round (connect included), the \
         source in the page cache; the copy's size and first and last MiB are checked. Missing-name row: one \
         smbprotocol guest session first opens `{probe}` (an entry of `{list}/` in another case: a case-sensitive \
         server gets n/a), then the timed part sends {misses} CREATEs of `MISS-NNNNNN`, which match no entry in any \
         case, each answered OBJECT_NAME_NOT_FOUND.",
        read = fx.read_name,
        probe = fixture::list_entry(0).to_uppercase(),
        list = fx.list_name,
    ));
}

/// Checks that `data/copy` has the bulk file's size and its first and last MiB (each MiB of
/// the fixture starts with its own counter, so a misplaced chunk shows).
fn same_samples(fx: &Fixture, copy: &str) -> Result<()> {
    let (a, b) = (fx.data.join(fx.read_name), fx.data.join(copy));
    let len = std::fs::metadata(&b).with_context(|| format!("the copy {copy}"))?.len();
    if len != fx.sizes.bulk_bytes {
        bail!("the copy has {len} bytes of {}", fx.sizes.bulk_bytes);
    }
    let mib = 1u64 << 20;
    for off in [0, len.saturating_sub(mib)] {
        if sample(&a, off)? != sample(&b, off)? {
            bail!("the copy differs from its source in the MiB at {off}");
        }
    }
    Ok(())
}

fn sample(path: &std::path::Path, off: u64) -> Result<Vec<u8>> {
    use std::io::Seek as _;
    let mut f = std::fs::File::open(path)?;
    f.seek(std::io::SeekFrom::Start(off))?;
    let mut buf = Vec::new();
    f.take(1 << 20).read_to_end(&mut buf)?;
    Ok(buf)
}
