//! The scale group's SMB rows: nasgw against Samba's smbd serving the same directory as the
//! guest share `[pub]`, with 16 and 64 `smbclient` processes at once (aggregate small-file
//! uploads and aggregate downloads), and one active client while thousands of idle SMB
//! connections are open (plus each server's memory per idle connection).
//!
//! smbd forks one process per connection, so its idle row opens only [`Scale::smbd_idle`]
//! connections: 10,000 smbd processes would take more memory than a bench machine should
//! give. Memory is the proportional set size (`Pss` of `/proc/PID/smaps_rollup`) summed over
//! each server's process tree, so smbd's shared pages are not counted once per process.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use nasgw_tests::idle_clients::{closed, open_smb};

use crate::fixture::Fixture;
use crate::measure::{run_row, Done};
use crate::scale::Scale;
use crate::table::{Group, Unit};

/// Proportional set size of `pid` and all its descendants, in KiB.
fn pss_tree_kib(pid: u32) -> Result<u64> {
    let mut total = 0;
    for p in std::iter::once(pid).chain(crate::cpu::descendants(pid)) {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{p}/smaps_rollup")) else {
            continue; // exited meanwhile
        };
        total += text
            .lines()
            .find_map(|l| l.strip_prefix("Pss:")?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
            .context("no Pss in smaps_rollup")?;
    }
    Ok(total)
}

/// [`pss_tree_kib`] once it has not fallen for a second (polled every 250 ms, at most 10 s).
fn settled_pss_kib(pid: u32) -> Result<u64> {
    let start = Instant::now();
    let mut low = pss_tree_kib(pid)?;
    let mut since = Instant::now();
    while since.elapsed() < Duration::from_secs(1) && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(250));
        let now = pss_tree_kib(pid)?;
        // A fall of more than 1% (or 256 KiB) is still settling.
        if now + (low / 100).max(256) < low {
            since = Instant::now();
        }
        low = low.min(now);
    }
    Ok(low)
}

/// A guest `smbclient` session on `[pub]` at `port` running `commands`.
fn smbclient(port: u16, commands: &str) -> Command {
    let mut c = Command::new("smbclient");
    c.args(["//127.0.0.1/pub", "-N", "-m", "SMB3", "-p", &port.to_string(), "-c", commands])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// Runs `cmds` as concurrent smbclient sessions against `port`; fails if any fails.
fn concurrent(port: u16, cmds: &[String]) -> Result<Duration> {
    let start = Instant::now();
    let children: Vec<Child> =
        cmds.iter().map(|c| smbclient(port, c).spawn().context("start smbclient")).collect::<Result<_>>()?;
    for child in children {
        let out = child.wait_with_output()?;
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        if !out.status.success() || text.contains("NT_STATUS_") {
            let last = text.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string();
            bail!("smbclient failed ({}): {last}", out.status);
        }
    }
    Ok(start.elapsed())
}

/// The SMB rows of the scale group, added to `group` (servers: nasgw, smbd at `ports`;
/// `pids` their main processes).
pub fn run_rows(
    group: &mut Group,
    fx: &Fixture,
    scale: Scale,
    ports: [Result<u16, String>; 2],
    pids: [Option<u32>; 2],
) -> Result<()> {
    let s = fx.sizes;
    let avail: Vec<Result<(), String>> = ports.iter().map(|p| p.as_ref().map(|_| ()).map_err(Clone::clone)).collect();
    let port = |i: usize| ports[i].clone().map_err(|e| anyhow::anyhow!("{e}"));
    // Each client uploads its own copy of this directory's files.
    let src = fx.data.parent().context("fixture root")?.join("smb-scale-src");
    std::fs::create_dir_all(&src)?;
    let block = vec![0x5a_u8; s.small_size];
    for f in 0..scale.files_per_client {
        std::fs::write(src.join(format!("u{f:05}")), &block)?;
    }
    for n in scale.clients {
        run_row(
            group,
            &format!("SMB {n} clients: 4 KiB uploads, {} each (mput)", scale.files_per_client),
            Unit::Files,
            s.rounds,
            &avail,
            Box::new(|i, r| {
                let dirs: Vec<String> = (0..n).map(|c| format!("m{n}-{i}-{r}-{c}")).collect();
                let cmds: Vec<String> = dirs
                    .iter()
                    .map(|d| format!("prompt OFF; lcd \"{}\"; mkdir {d}; cd {d}; mput *", src.display()))
                    .collect();
                let out = concurrent(port(i)?, &cmds);
                let made: usize =
                    dirs.iter().map(|d| std::fs::read_dir(fx.data.join(d)).map(|e| e.count()).unwrap_or(0)).sum();
                for d in &dirs {
                    fx.remove(d);
                }
                let elapsed = out?;
                let want = n * scale.files_per_client;
                if made != want {
                    bail!("{made} of {want} files are on disk");
                }
                Ok(Done { amount: want as u64, elapsed })
            }),
        );
        let each = scale.read_total / n as u64;
        let name = format!("smb-read-{n}");
        let file = fx.data.join(&name);
        crate::fixture::write_pattern(&file, each, n as u64)?;
        run_row(
            group,
            &format!("SMB {n} clients: download {} MiB together (get)", scale.read_total >> 20),
            Unit::Megabytes,
            s.rounds,
            &avail,
            Box::new(|i, _| {
                crate::fixture::preload(&file)?;
                let cmds = vec![format!("get {name} /dev/null"); n];
                let elapsed = concurrent(port(i)?, &cmds)?;
                Ok(Done { amount: each * n as u64, elapsed })
            }),
        );
        fx.remove(&name);
    }

    let memory = std::cell::RefCell::new(Vec::<String>::new());
    for idle in [0, scale.idle] {
        let label = crate::fixture::Sizes::count_label(idle);
        let smbd_idle = idle.min(scale.smbd_idle);
        let title = if smbd_idle < idle {
            format!("SMB 1 client: 4 KiB uploads, {label} idle connections open (smbd: {smbd_idle})")
        } else {
            format!("SMB 1 client: 4 KiB uploads, {label} idle connections open")
        };
        run_row(
            group,
            &title,
            Unit::Files,
            s.rounds,
            &avail,
            Box::new(|i, r| {
                let port = port(i)?;
                let pid = pids[i].context("no server process")?;
                let count = if i == 1 { smbd_idle } else { idle };
                let before = pss_tree_kib(pid)?;
                let conns = open_smb(port, count)?;
                let after = pss_tree_kib(pid)?;
                let dir = format!("i{idle}-{i}-{r}");
                let cmd = format!("prompt OFF; lcd \"{}\"; mkdir {dir}; cd {dir}; mput *", src.display());
                let out = concurrent(port, &[cmd]);
                let made = std::fs::read_dir(fx.data.join(&dir)).map(|e| e.count()).unwrap_or(0);
                fx.remove(&dir);
                let elapsed = out?;
                // Again once they have been idle for the whole row and the server's memory
                // has stopped falling: a server may shed what an idle connection does not
                // need only after a while (nasgw's dormant connections give their threads back
                // after a second, and the heap is trimmed within the next), and a short row
                // can end before that.
                let settled = settled_pss_kib(pid)?;
                let lost = closed(&conns);
                drop(conns);
                if lost > 0 {
                    bail!("the server closed {lost} of {count} idle connections during the row");
                }
                if made != scale.files_per_client {
                    bail!("{made} of {} files are on disk", scale.files_per_client);
                }
                if count > 0 {
                    let per = after.saturating_sub(before) as f64 / count as f64;
                    let per_settled = settled.saturating_sub(before) as f64 / count as f64;
                    memory.borrow_mut().push(format!(
                        "SMB {}: memory (Pss of its processes) {} MiB -> {} MiB with {count} idle connections: {per:.1} KiB per connection just after opening them; {} MiB, {per_settled:.1} KiB per connection, after the row once it stopped falling",
                        ["nasgw", "smbd"][i],
                        before / 1024,
                        after / 1024,
                        settled / 1024
                    ));
                }
                Ok(Done { amount: scale.files_per_client as u64, elapsed })
            }),
        );
    }
    group.notes.extend(memory.into_inner());
    group.notes.push(format!(
        "SMB rows: every client is one `smbclient -m SMB3` process (guest, share `[pub]`), timed from the start of \
         the first to the end of the last (connect and logon included); downloads go to /dev/null from a file in \
         the page cache. An idle SMB connection has negotiated (SMB 2.1) and sits there, as a client between \
         NEGOTIATE and logon; nasgw closes such connections after 60 s (its `IDLE_WITHOUT_SESSION`), so the row \
         fails if any was closed before its end. smbd forks a process per connection: its idle row opens at most \
         {} (the row's title says so). The idle rows' CPU time also counts accepting and negotiating the idle \
         connections (opened inside the measured round), so it says what they cost, not what a file costs.",
        scale.smbd_idle
    ));
    Ok(())
}
