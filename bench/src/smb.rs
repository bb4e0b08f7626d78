//! SMB group: nasgw against Samba's smbd serving the same directory of the same disk as the
//! seed's guest share `[pub]`, driven by `smbclient` (SMB3, one session per workload); and the
//! same directory as `[sealed]`, which requires encryption, for the encrypted rows (a user's
//! session, AES-128-GCM).

use std::cell::RefCell;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Result};
use nasgw_tests::anchors::Smbd;

use crate::cpu::{self, Meter};
use crate::fixture::{self, Fixture, Sizes};
use crate::measure::{children_cpu, run_row, timed, ClientRounds, Done};
use crate::page_cache::{self, VmEvents};
use crate::table::{Group, Unit};
use crate::target::{self, Rows, Target};

/// The user of the encrypted rows (guests cannot encrypt): smbd maps it to a Unix account,
/// so it is one that exists everywhere.
pub const SEALED_USER: &str = "root";
/// Its password on both servers (each bench run sets it afresh, in their private state).
pub const SEALED_PASSWORD: &str = "bench-Sealed-7";

/// One encrypted smbclient session as [`SEALED_USER`] on `[sealed]` (SMB 3.1.1, AES-128-GCM
/// only) against `port`, running `commands`.
fn smbclient_sealed(port: u16, commands: &str) -> Command {
    let mut c = Command::new("smbclient");
    c.args(["//127.0.0.1/sealed", "-U", &format!("{SEALED_USER}%{SEALED_PASSWORD}"), "-m", "SMB3"])
        .args(["--client-protection=encrypt", "--option=client smb3 encryption algorithms = AES-128-GCM"])
        .args(["-O", "SO_RCVBUF=4194304 SO_SNDBUF=4194304", "-p", &port.to_string(), "-c", commands]);
    c
}

/// The encrypted rows: bulk upload and download through `[sealed]`.
fn run_encrypted_rows(
    group: &mut Group,
    fx: &Fixture,
    labels: &[&str],
    targets: &[Target],
    avail: &[Result<(), String>],
) {
    let s = fx.sizes;
    let port = |i: usize| targets[i].smb_port();
    let met = RefCell::new(vec![VmEvents::default(); labels.len()]);
    let put = format!("{} upload, encrypted AES-128-GCM (put)", s.bulk_label());
    run_row(
        group,
        &put,
        Unit::Megabytes,
        s.rounds,
        avail,
        Box::new(|i, r| {
            let name = format!("e-{}-{r}", labels[i]);
            let cmd = format!("put \"{}\" {name}", fx.big_source.display());
            upload(fx, &name, smbclient_sealed(port(i)?, &cmd), &mut met.borrow_mut()[i])
        }),
    );
    note_upload_memory(group, &put, labels, &met.borrow());
    run_row(
        group,
        &format!("{} download, encrypted AES-128-GCM (get)", s.bulk_label()),
        Unit::Megabytes,
        s.rounds,
        avail,
        Box::new(|i, _| {
            // From the page cache, as the plain download row.
            fixture::preload(&fx.data.join(fx.read_name))?;
            let (elapsed, out) = timed(&mut smbclient_sealed(port(i)?, &format!("get {} /dev/null", fx.read_name)))?;
            let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            if !text.contains(&format!("of size {} as", s.bulk_bytes)) {
                bail!("unexpected get output: {}", text.trim());
            }
            Ok(Done { amount: s.bulk_bytes, elapsed })
        }),
    );
}

/// One upload round: `client` (an smbclient `put` of the bulk source as `name`) timed from
/// the memory state of [`page_cache::settle_for_upload`], the file checked and removed;
/// the direct reclaim and compaction stalls of the timed part are added to `met`.
fn upload(fx: &Fixture, name: &str, mut client: Command, met: &mut VmEvents) -> Result<Done> {
    fx.remove(name);
    page_cache::settle_for_upload(&fx.big_source)?;
    let before = VmEvents::now();
    let res = timed(&mut client);
    let during = VmEvents::now().since(&before);
    met.reclaim_stalls += during.reclaim_stalls;
    met.compaction_stalls += during.compaction_stalls;
    let got = std::fs::metadata(fx.data.join(name)).map(|m| m.len()).unwrap_or(0);
    fx.remove(name);
    let (elapsed, _) = res?;
    if got != fx.sizes.bulk_bytes {
        bail!("uploaded {got} bytes of {}", fx.sizes.bulk_bytes);
    }
    Ok(Done { amount: fx.sizes.bulk_bytes, elapsed })
}

/// The note of upload row `row` (when it ran) on how its rounds started and what memory work
/// the servers still met while timed (per column, summed over rounds).
fn note_upload_memory(group: &mut Group, row: &str, labels: &[&str], met: &[VmEvents]) {
    if !group.rows.iter().any(|r| r.workload == row) {
        return;
    }
    let per: Vec<String> = labels
        .iter()
        .zip(met)
        .map(|(l, m)| format!("{l} {} reclaim, {} compaction", m.reclaim_stalls, m.compaction_stalls))
        .collect();
    group.notes.push(format!(
        "{row}: before every round the bench syncs, drops the clean page cache, compacts free memory and \
         reads the source back in (outside the timed part), and it truncates each uploaded file before removing it; \
         direct reclaim/compaction stalls still met while timed, all rounds: {}.",
        per.join("; ")
    ));
}

/// One smbclient session against `port` running `commands` (a `-c` list).
pub fn smbclient(port: u16, commands: &str) -> Command {
    let mut c = Command::new("smbclient");
    c.args(["//127.0.0.1/pub", "-N", "-m", "SMB3", "-O", "SO_RCVBUF=4194304 SO_SNDBUF=4194304"]).args([
        "-p",
        &port.to_string(),
        "-c",
        commands,
    ]);
    c
}

/// Runs the SMB rows against `targets` (one per column; `Local` for the raw directory):
/// upload, download and small files, plus listing and deltree on a directory, plus a download
/// with cold caches on GlusterFS.
pub fn run_rows(group: &mut Group, fx: &Fixture, labels: &[&str], targets: &[Target], rows: Rows) {
    let s = fx.sizes;
    let avail: Vec<Result<(), String>> = targets.iter().map(Target::available).collect();
    let port = |i: usize| targets[i].smb_port();
    let local = |i: usize| matches!(targets[i], Target::Local);
    let met = RefCell::new(vec![VmEvents::default(); labels.len()]);

    let put = format!("{} upload (put)", s.bulk_label());
    run_row(
        group,
        &put,
        Unit::Megabytes,
        s.rounds,
        &avail,
        Box::new(|i, r| {
            let name = format!("u-{}-{r}", labels[i]);
            if local(i) {
                return target::local_write(fx, &name);
            }
            let cmd = format!("put \"{}\" {name}", fx.big_source.display());
            upload(fx, &name, smbclient(port(i)?, &cmd), &mut met.borrow_mut()[i])
        }),
    );
    note_upload_memory(group, &put, labels, &met.borrow());
    // The least share of the file found in the page cache before a warm download round.
    let resident = std::cell::Cell::new(None::<f64>);
    let clients = std::cell::RefCell::new(ClientRounds::default());
    let download = |i: usize, cold: bool| {
        if cold {
            target::drop_caches_of(fx)?;
        } else if rows == Rows::Directory {
            // The rows before may have evicted it: every server starts from the page cache.
            let share = fixture::preload(&fx.data.join(fx.read_name))?;
            resident.set(Some(resident.get().map_or(share, |r: f64| r.min(share))));
        }
        if local(i) {
            return target::local_read(fx);
        }
        let client_before = children_cpu();
        let (elapsed, out) = timed(&mut smbclient(port(i)?, &format!("get {} /dev/null", fx.read_name)))?;
        let label = format!("{} {}", labels[i], if cold { "cold" } else { "warm" });
        clients.borrow_mut().push(&label, elapsed, children_cpu().saturating_sub(client_before));
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        if !text.contains(&format!("of size {} as", s.bulk_bytes)) {
            bail!("unexpected get output: {}", text.trim());
        }
        Ok(Done { amount: s.bulk_bytes, elapsed })
    };
    // On GlusterFS also with every cache dropped first (see `Rows::Gluster`).
    for cold in [false, true].into_iter().filter(|c| !c || rows == Rows::Gluster) {
        let label = if cold { "download, caches dropped" } else { "download" };
        run_row(
            group,
            &format!("{} {label} (get)", s.bulk_label()),
            Unit::Megabytes,
            s.rounds,
            &avail,
            Box::new(move |i, _| download(i, cold)),
        );
    }
    group.notes.extend(clients.into_inner().notes("download", "smbclient"));
    if let Some(r) = resident.get() {
        group.notes.push(format!(
            "Download rows: before every round the bench reads the file once locally, so each server starts with it \
             in the page cache; then at least {:.1}% of its pages were resident (mincore).",
            r * 100.0
        ));
    }
    run_row(
        group,
        &format!("{} x 4 KiB files (mput, one session)", Sizes::count_label(s.small_files)),
        Unit::Files,
        s.rounds,
        &avail,
        Box::new(|i, r| {
            let dir = format!("m-{}-{r}", labels[i]);
            if local(i) {
                return target::local_small_files(fx, &dir);
            }
            let cmd = format!("mkdir {dir}; cd {dir}; lcd \"{}\"; prompt off; mput *", fx.small_source.display());
            let res = timed(&mut smbclient(port(i)?, &cmd));
            let made = std::fs::read_dir(fx.data.join(&dir)).map(|d| d.count()).unwrap_or(0);
            fx.remove(&dir);
            let (elapsed, _) = res?;
            if made != s.small_files {
                bail!("{made} of {} files are on disk", s.small_files);
            }
            Ok(Done { amount: made as u64, elapsed })
        }),
    );
    if s.list_entries == 0 {
        return;
    }
    run_row(
        group,
        &format!("list {} entries (ls)", Sizes::count_label(s.list_entries)),
        Unit::Entries,
        s.rounds,
        &avail,
        Box::new(|i, _| {
            if local(i) {
                return target::local_list(fx);
            }
            let (elapsed, out) = timed(&mut smbclient(port(i)?, &format!("cd {}; ls", fx.list_name)))?;
            let n = String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.trim_start().starts_with('f')).count();
            if n != s.list_entries {
                bail!("listed {n} of {} entries", s.list_entries);
            }
            Ok(Done { amount: n as u64, elapsed })
        }),
    );
    if s.deltree_files == 0 {
        return;
    }
    run_row(
        group,
        &format!("deltree of {} files", Sizes::count_label(s.deltree_files)),
        Unit::Files,
        s.rounds,
        &avail,
        Box::new(|i, r| {
            let dir = format!("t-{}-{r}", labels[i]);
            fx.make_tree(&dir)?;
            crate::fixture::sync();
            let res = timed(&mut smbclient(port(i)?, &format!("deltree {dir}")));
            let left = fx.data.join(&dir).exists();
            fx.remove(&dir);
            let (elapsed, _) = res?;
            if left {
                bail!("the tree is still there after deltree");
            }
            Ok(Done { amount: s.deltree_files as u64, elapsed })
        }),
    );
}

/// The SMB group: starts smbd on `fx.data`, runs the rows against `nasgw` and it, stops it.
pub fn run(fx: &Fixture, work: &Path, nasgw: &Result<u16, String>, nasgw_cpu: &Meter) -> Group {
    let mut group = Group::new("SMB3: nasgw vs Samba smbd 4.17", &["nasgw", "smbd"], &[(0, 1)]);
    let sealed = format!(
        "\n[sealed]\npath = {}\nwritable = yes\nforce user = root\nsmb encrypt = required\n",
        fx.data.display()
    );
    let smbd = Smbd::start_with(&work.join("smbd"), &fx.data, &sealed);
    group.meters = vec![nasgw_cpu.clone(), cpu::track("smbd", smbd.pid())];
    let subject = match nasgw {
        Ok(p) => Target::Smb(*p),
        Err(why) => Target::Absent(why.clone()),
    };
    let targets = [subject, Target::Smb(smbd.port)];
    run_rows(&mut group, fx, &["nasgw", "smbd"], &targets, Rows::Directory);
    let plain: Vec<Result<(), String>> = targets.iter().map(Target::available).collect();
    crate::smb_server_side::run_rows(&mut group, fx, &["nasgw", "smbd"], &targets, &plain);
    let mut avail: Vec<Result<(), String>> = targets.iter().map(Target::available).collect();
    if let Err(e) = smbd.add_user(SEALED_USER, SEALED_PASSWORD) {
        avail[1] = Err(format!("smbd has no user for the encrypted rows: {e}"));
    }
    run_encrypted_rows(&mut group, fx, &["nasgw", "smbd"], &targets, &avail);
    smbd.stop();
    group.notes.push(
        "Both serve the same directory as the guest share `[pub]`; every row is one `smbclient -m SMB3 -O \
         'SO_RCVBUF=4194304 SO_SNDBUF=4194304'` session, timed as a whole (connect included); downloads go to /dev/null."
            .into(),
    );
    group.notes.push(
        "The encrypted rows use `[sealed]` on the same directory (nasgw `encryption = \"required\"`, smbd \
         `smb encrypt = required`) as a user, with `--client-protection=encrypt` and only AES-128-GCM offered."
            .into(),
    );
    group
}
