//! The scale group's SMB rows: nasgw against Samba's smbd serving the same directory as the
//! guest share `[pub]`, with 16 and 64 `smbclient` processes at once (aggregate small-file
//! uploads and aggregate downloads), and one active client while thousands of idle SMB
//! connections are open (plus each server's memory per idle connection).
//!
//! smbd forks one process per connection, so its idle row opens only [`Scale::smbd_idle`]
//! connections: 10,000 smbd processes would take more memory than a bench machine should
//! give. Memory is the proportional set size (`Pss` of `/proc/PID/smaps_rollup`) summed over
//! each server's process tree, so smbd's shared pages are not counted once per process.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use crate::fixture::Fixture;
use crate::measure::{run_row, Done};
use crate::scale::{socket2_connect_from, source_address, Scale};
use crate::table::{Group, Unit};

/// An SMB2 NEGOTIATE (dialects 2.0.2 and 2.1, signing enabled), as a client's first request
/// on a new connection; with its NetBIOS session header. `client` makes the ClientGuid: it
/// must differ between connections meant as different clients (smbd hands every connection
/// of one ClientGuid to the same process).
pub fn negotiate_request(message_id: u64, client: u64) -> Vec<u8> {
    let mut smb = Vec::with_capacity(104);
    smb.extend_from_slice(b"\xfeSMB");
    smb.extend_from_slice(&64u16.to_le_bytes()); // StructureSize
    smb.extend_from_slice(&0u16.to_le_bytes()); // CreditCharge
    smb.extend_from_slice(&0u32.to_le_bytes()); // Status
    smb.extend_from_slice(&0u16.to_le_bytes()); // Command: NEGOTIATE
    smb.extend_from_slice(&1u16.to_le_bytes()); // CreditRequest
    smb.extend_from_slice(&0u32.to_le_bytes()); // Flags
    smb.extend_from_slice(&0u32.to_le_bytes()); // NextCommand
    smb.extend_from_slice(&message_id.to_le_bytes());
    smb.extend_from_slice(&[0; 4 + 4 + 8 + 16]); // Reserved, TreeId, SessionId, Signature
    smb.extend_from_slice(&36u16.to_le_bytes()); // StructureSize
    smb.extend_from_slice(&2u16.to_le_bytes()); // DialectCount
    smb.extend_from_slice(&1u16.to_le_bytes()); // SecurityMode: signing enabled
    smb.extend_from_slice(&[0; 2 + 4]); // Reserved, Capabilities
    smb.extend_from_slice(&(0x6e61_7367_7700_0000_0000_0000_0000_0000_u128 | u128::from(client)).to_le_bytes()); // ClientGuid
    smb.extend_from_slice(&[0; 8]); // ClientStartTime
    smb.extend_from_slice(&0x0202u16.to_le_bytes());
    smb.extend_from_slice(&0x0210u16.to_le_bytes());
    let mut out = (smb.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&smb);
    out
}

/// Checks a NEGOTIATE response (NetBIOS header stripped): an SMB2 header with status 0.
/// Pure.
pub fn negotiate_succeeded(reply: &[u8]) -> bool {
    reply.len() >= 64 && reply[..4] == *b"\xfeSMB" && reply[8..12] == [0, 0, 0, 0] && reply[12..14] == [0, 0]
}

/// Opens `n` connections to SMB `port`, each having negotiated (what a client does before it
/// logs on), from loopback source addresses 127.1.x.y.
fn open_idle(port: u16, n: usize) -> Result<Vec<TcpStream>> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let src = source_address(i);
        let mut s = socket2_connect_from(src, port).with_context(|| format!("idle connection {i} from {src}"))?;
        s.write_all(&negotiate_request(0, i as u64)).context("send NEGOTIATE")?;
        let mut head = [0u8; 4];
        s.read_exact(&mut head).with_context(|| format!("NEGOTIATE reply on idle connection {i}"))?;
        let len = u32::from_be_bytes(head) as usize & 0x00ff_ffff;
        let mut reply = vec![0u8; len.min(1 << 16)];
        s.read_exact(&mut reply)?;
        if !negotiate_succeeded(&reply) {
            bail!("NEGOTIATE refused on idle connection {i}");
        }
        out.push(s);
    }
    Ok(out)
}

/// How many of `conns` the server has closed (end of stream or an error where a read would
/// otherwise block).
fn closed(conns: &[TcpStream]) -> usize {
    let mut buf = [0u8; 1];
    conns
        .iter()
        .filter(|s| {
            let _ = s.set_nonblocking(true);
            let r = s.peek(&mut buf);
            let _ = s.set_nonblocking(false);
            match r {
                Ok(0) => true,
                Ok(_) => false,
                Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
            }
        })
        .count()
}

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
                let conns = open_idle(port, count)?;
                let after = pss_tree_kib(pid)?;
                let dir = format!("i{idle}-{i}-{r}");
                let cmd = format!("prompt OFF; lcd \"{}\"; mkdir {dir}; cd {dir}; mput *", src.display());
                let out = concurrent(port, &[cmd]);
                let made = std::fs::read_dir(fx.data.join(&dir)).map(|e| e.count()).unwrap_or(0);
                fx.remove(&dir);
                let elapsed = out?;
                // Again once they have been idle for the whole row: a server may shed what
                // an idle connection does not need only after a while (nasgw's dormant
                // connections give their threads back after a second).
                let settled = pss_tree_kib(pid)?;
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
                        "SMB {}: memory (Pss of its processes) {} MiB -> {} MiB with {count} idle connections: {per:.1} KiB per connection just after opening them; {} MiB, {per_settled:.1} KiB per connection, after the row",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiate_request_is_a_well_formed_smb2_negotiate() {
        let r = negotiate_request(7, 1);
        assert_ne!(r[80..96], negotiate_request(7, 2)[80..96], "one ClientGuid per client");
        assert_eq!(u32::from_be_bytes(r[..4].try_into().unwrap()) as usize, r.len() - 4);
        assert_eq!(&r[4..8], b"\xfeSMB");
        assert_eq!(r.len() - 4, 64 + 36 + 4);
        assert_eq!(u64::from_le_bytes(r[28..36].try_into().unwrap()), 7);
        let mut ok = vec![0u8; 64];
        ok[..4].copy_from_slice(b"\xfeSMB");
        assert!(negotiate_succeeded(&ok));
        ok[8] = 0x22; // STATUS_ACCESS_DENIED's low byte
        assert!(!negotiate_succeeded(&ok));
        assert!(!negotiate_succeeded(&ok[..10]));
    }
}
