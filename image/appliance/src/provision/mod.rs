//! `nasgw-appliance provision`: forms the GlusterFS trusted pool and creates, starts and tunes
//! the volume `[volume] bricks` describes, idempotently. A reconcile loop: observe (this node's
//! glusterd, the other brick hosts' glusterd through `--remote-host`, the local brick
//! directories), [`plan::plan`] (pure), run the steps, observe again.

pub mod gluster;
pub mod plan;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::net::{IpAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nasgw::config::Config;

use plan::{host_of, path_of, BrickDir, Desired, Observed, Step};

/// The volume options fast failover needs (README, "HA on GlusterFS"), and the upcalls that
/// let nasgw cache attributes over gfapi and keep its managed mount's caches true
/// ([`nasgw::gluster::mount::UPCALL_CACHE_OPTIONS`]); the file's `[volume] options` override
/// them.
pub fn failover_options() -> BTreeMap<String, String> {
    [
        ("network.ping-timeout", "5"),
        ("server.keepalive-time", "1"),
        ("server.keepalive-interval", "1"),
        ("server.keepalive-count", "2"),
        ("server.tcp-user-timeout", "3"),
        ("cluster.quorum-type", "auto"),
    ]
    .into_iter()
    .chain(nasgw::gluster::mount::UPCALL_CACHE_OPTIONS.iter().copied())
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// What the file asks of this node; `None` when the file lists no bricks.
pub fn desired(cfg: &Config, local: &[IpAddr]) -> Option<Desired> {
    let v = &cfg.volume;
    if v.bricks.is_empty() {
        return None;
    }
    let mut options = failover_options();
    options.extend(root_owner(cfg));
    options.extend(v.options.clone());
    let me = v.bricks.iter().map(|b| host_of(b)).find(|h| is_local(h, local)).map(str::to_string);
    Some(Desired {
        volume: v.gluster_volume.clone().unwrap_or_else(|| v.name.clone()),
        bricks: v.bricks.clone(),
        replica: v.replica.unwrap_or(3),
        arbiter: v.arbiter,
        options,
        me,
    })
}

/// The volume root's owner (`storage.owner-uid`/`-gid`): the `force_user` (and `force_group`)
/// of a share of the whole volume, so that share is writable as the recipe's `chown smbcli` made
/// it; none when no such share forces a user.
pub fn root_owner(cfg: &Config) -> BTreeMap<String, String> {
    let id = |name: &str| match name.parse::<u32>() {
        Ok(n) => n,
        Err(_) if name == "root" => 0,
        Err(_) => crate::system::account_id(name),
    };
    let Some(share) = cfg.smb.shares.iter().find(|s| s.path == "/" && s.force_user.is_some()) else {
        return BTreeMap::new();
    };
    let uid = id(share.force_user.as_deref().expect("found with a force_user"));
    let gid = share.force_group.as_deref().map_or(uid, id);
    [("storage.owner-uid".to_string(), uid.to_string()), ("storage.owner-gid".to_string(), gid.to_string())].into()
}

/// Whether `host` (an address or a name) is one of this node's addresses.
fn is_local(host: &str, local: &[IpAddr]) -> bool {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return local.contains(&ip);
    }
    (host, 0).to_socket_addrs().is_ok_and(|mut a| a.any(|a| local.contains(&a.ip())))
}

/// Where glusterd keeps its state.
const GLUSTERD_DIR: &str = "/var/lib/glusterd";

/// Looks at everything the plan needs.
pub fn observe(want: &Desired) -> Observed {
    let mut seen = Observed::default();
    match gluster::pool_list(None) {
        Ok((me, peers)) => {
            seen.glusterd_up = true;
            seen.my_uuid = me;
            seen.peers = peers;
        }
        Err(e) => {
            eprintln!("provision: this node's glusterd: {e:#}");
            return seen;
        }
    }
    match gluster::volume_info(None, &want.volume) {
        Ok(v) => seen.volume = v,
        Err(e) => {
            eprintln!("provision: volume info: {e:#}");
            seen.glusterd_up = false;
            return seen;
        }
    }
    for h in plan::hosts_to_ask(want) {
        if !gluster::answers(&h) {
            continue;
        }
        match gluster::volume_info(Some(&h), &want.volume) {
            Ok(v) => {
                seen.remote.insert(h, v);
            }
            Err(e) => eprintln!("provision: asking {h}: {e:#}"),
        }
    }
    let vol_id = volume_id(&want.volume);
    for b in want.my_bricks() {
        seen.local_bricks.insert(b.to_string(), brick_dir(Path::new(path_of(b)), vol_id.as_deref()));
    }
    seen
}

/// The volume's id as this node's glusterd stores it (hex, no dashes).
fn volume_id(volume: &str) -> Option<String> {
    let info = std::fs::read_to_string(Path::new(GLUSTERD_DIR).join("vols").join(volume).join("info")).ok()?;
    info.lines().find_map(|l| l.strip_prefix("volume-id=")).map(|id| id.replace('-', "").to_ascii_lowercase())
}

/// The state of a local brick directory: its parent must be a mount point (the brick's disk).
pub fn brick_dir(path: &Path, volume_id: Option<&str>) -> BrickDir {
    let Some(parent) = path.parent() else { return BrickDir::NotMounted };
    if !is_mount_point(parent) {
        return BrickDir::NotMounted;
    }
    match read_volume_id(path) {
        Some(id) if volume_id.is_none_or(|v| v == id) => BrickDir::Ours,
        Some(_) => BrickDir::Foreign,
        None => {
            let empty = std::fs::read_dir(path).map_or(true, |mut d| d.next().is_none());
            if empty {
                BrickDir::Blank
            } else {
                BrickDir::Foreign
            }
        }
    }
}

/// `trusted.glusterfs.volume-id` of a brick directory, as hex.
fn read_volume_id(path: &Path) -> Option<String> {
    let p = CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    let name = c"trusted.glusterfs.volume-id";
    let mut buf = [0u8; 64];
    // SAFETY: p and name are NUL-terminated; buf is writable for its length.
    let n = unsafe { libc::getxattr(p.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (n > 0).then(|| buf[..n as usize].iter().map(|b| format!("{b:02x}")).collect())
}

/// Whether `dir` is a mount point (listed in this process's mountinfo).
pub fn is_mount_point(dir: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else { return false };
    let want = dir.to_string_lossy();
    info.lines().filter_map(|l| l.split(' ').nth(4)).any(|m| unescape_mount(m) == want)
}

/// mountinfo escapes spaces and a few other bytes as `\NNN` (octal).
fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            if let Ok(v) = u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 4]).unwrap_or("x"), 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Runs one step.
pub fn execute(want: &Desired, step: &Step) -> Result<()> {
    let vol = want.volume.as_str();
    match step {
        Step::Probe(h) => {
            gluster::run(&["peer", "probe", h])?;
        }
        Step::Create => {
            for b in want.my_bricks() {
                std::fs::create_dir_all(path_of(b)).with_context(|| format!("cannot create brick directory {b}"))?;
            }
            let mut args = vec!["volume".to_string(), "create".into(), vol.into()];
            args.extend(layout_args(want));
            args.extend(want.bricks.iter().cloned());
            gluster::run(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
        }
        Step::Start => {
            gluster::run(&["volume", "start", vol])?;
        }
        Step::SetOption(k, v) => {
            gluster::run(&["volume", "set", vol, k, v])?;
        }
        Step::AddBricks(bricks) => {
            let mut args = vec!["volume".to_string(), "add-brick".into(), vol.into()];
            args.extend(layout_args(want));
            args.extend(bricks.iter().cloned());
            gluster::run(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
        }
        Step::ResetBrick(b) => reset_brick(&mut Systemd, vol, b, POOL_WAIT)?,
        Step::AdoptUuid { uuid, from } => adopt_uuid(&mut Systemd, Path::new(GLUSTERD_DIR), uuid, from)?,
        Step::Wait(_) | Step::Conflict(_) | Step::Done => {}
    }
    Ok(())
}

/// `replica N [arbiter 1]` as GlusterFS's CLI spells the layout.
fn layout_args(want: &Desired) -> Vec<String> {
    let mut args = vec!["replica".to_string(), want.set_size().to_string()];
    if want.arbiter {
        args.extend(["arbiter".to_string(), "1".to_string()]);
    }
    args
}

/// How long a restarted glusterd may take to answer and see its pool again.
const POOL_WAIT: Duration = Duration::from_secs(300);

/// This node's glusterd: how its CLI is run and how it is stopped and started. The appliance's
/// is the local `gluster` CLI and systemd ([`Systemd`]); a test drives a namespaced one.
pub trait Glusterd {
    /// Runs `gluster --mode=script ARGS` on this node (against `remote`'s glusterd when given).
    fn cli(&self, remote: Option<&str>, args: &[&str]) -> Result<gluster::Answer>;
    /// Stops glusterd (its bricks may run on, as with systemd's `KillMode=process`).
    fn stop(&mut self) -> Result<()>;
    /// Starts glusterd; it may not answer yet when this returns.
    fn start(&mut self) -> Result<()>;
    /// Restarts glusterd.
    fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.start()
    }
}

/// The appliance's own glusterd: the `gluster` CLI on this host and `glusterd.service`.
#[derive(Debug)]
pub struct Systemd;

impl Glusterd for Systemd {
    fn cli(&self, remote: Option<&str>, args: &[&str]) -> Result<gluster::Answer> {
        gluster::cli(remote, args)
    }
    fn stop(&mut self) -> Result<()> {
        systemctl("stop", "glusterd.service")
    }
    fn start(&mut self) -> Result<()> {
        systemctl("start", "glusterd.service")
    }
    fn restart(&mut self) -> Result<()> {
        systemctl("restart", "glusterd.service")
    }
}

/// Runs a changing command on `node`; an error carries gluster's own words.
fn run_on(node: &dyn Glusterd, args: &[&str]) -> Result<String> {
    let a = node.cli(None, args)?;
    if !a.ok {
        bail!("gluster {}: {}{}", args.join(" "), a.stdout.trim(), a.stderr.trim());
    }
    Ok(a.stdout)
}

/// `Step::AdoptUuid`: a blank node at a dead node's address takes the UUID the pool knows that
/// address by, and the pool's members as its peers (`from` is one of them); glusterd in `dir`
/// is stopped for the rewrite and started again, and then takes the volume from the pool.
pub fn adopt_uuid(node: &mut dyn Glusterd, dir: &Path, uuid: &str, from: &str) -> Result<()> {
    let (their_uuid, peers) = gluster::pool_answer(&node.cli(Some(from), &["pool", "list", "--xml"])?)?;
    let mut files = vec![(their_uuid, from.to_string())];
    for p in peers {
        if let Some(h) = p.hostnames.first() {
            files.push((p.uuid, h.clone()));
        }
    }
    node.stop()?;
    gluster::write_identity(dir, uuid, &files)?;
    node.start()
}

/// `Step::ResetBrick`: rebuilds this node's blank brick `brick` of `vol` (reset-brick, then a
/// full heal), waiting up to `pool_wait` for the pool after glusterd's restart.
pub fn reset_brick(node: &mut dyn Glusterd, vol: &str, brick: &str, pool_wait: Duration) -> Result<()> {
    std::fs::create_dir_all(path_of(brick)).with_context(|| format!("cannot create brick directory {brick}"))?;
    // A replaced node's glusterd took the volume from the pool before this directory existed,
    // and holds no real path for its own brick: reset-brick's check then takes the brick for a
    // new one ("When destination brick is new, please use ... replace-brick"), on every retry.
    // Restarted, glusterd reads the brick back from its store with the directory there (seen
    // on the appliance's replaced node 3; tests/tests/gluster_replace.rs).
    node.restart()?;
    wait_for_pool(node, pool_wait)?;
    run_on(node, &["volume", "reset-brick", vol, brick, "start"])?;
    run_on(node, &["volume", "reset-brick", vol, brick, brick, "commit", "force"])?;
    // Copy everything onto the rebuilt brick, not only what changed while it was away.
    run_on(node, &["volume", "heal", vol, "full"])?;
    Ok(())
}

/// Waits until `node`'s glusterd answers, sees every pool member connected, and every member
/// sees it connected: the others notice a restarted glusterd later than it notices them, and a
/// reset-brick commit in between fails ("Pre Validation failed on ... not connected").
fn wait_for_pool(node: &dyn Glusterd, bound: Duration) -> Result<()> {
    let deadline = std::time::Instant::now() + bound;
    loop {
        let seen = node.cli(None, &["pool", "list", "--xml"]).and_then(|a| gluster::pool_answer(&a));
        match seen {
            Ok((me, peers)) if !peers.is_empty() && peers.iter().all(|p| p.connected) => {
                if peers.iter().all(|p| sees_connected(node, p, &me)) {
                    return Ok(());
                }
                if std::time::Instant::now() >= deadline {
                    bail!("glusterd restarted, but not every pool member saw it after {} s", bound.as_secs());
                }
                std::thread::sleep(Duration::from_secs(2));
            }
            Ok(_) | Err(_) if std::time::Instant::now() < deadline => std::thread::sleep(Duration::from_secs(2)),
            Ok(_) => bail!("glusterd restarted, but the pool was not all connected after {} s", bound.as_secs()),
            Err(e) => {
                return Err(e.context(format!("glusterd did not answer within {} s of its restart", bound.as_secs())))
            }
        }
    }
}

/// Whether pool member `peer`'s glusterd sees the member `uuid` connected.
fn sees_connected(node: &dyn Glusterd, peer: &plan::Peer, uuid: &str) -> bool {
    let Some(host) = peer.hostnames.first() else { return false };
    let seen = node.cli(Some(host), &["pool", "list", "--xml"]).and_then(|a| gluster::pool_answer(&a));
    seen.is_ok_and(|(_, theirs)| theirs.iter().any(|p| p.uuid == uuid && p.connected))
}

fn systemctl(verb: &str, unit: &str) -> Result<()> {
    let st = Command::new("systemctl").args([verb, unit]).status().context("cannot run systemctl")?;
    if !st.success() {
        bail!("systemctl {verb} {unit} failed");
    }
    Ok(())
}

/// Where the loop reports its state for the console and `nasgw-appliance issue`.
pub const STATUS_FILE: &str = "/run/nasgw/provision";

/// Runs the reconcile loop: once (`watch = false`: until done, a conflict, or an error), or
/// for ever, re-checking every 30 s once the volume matches the file.
pub fn run(cfg: &Config, watch: bool, status_file: &Path) -> Result<()> {
    let local = ha::self_id::local_addresses().context("cannot list this node's addresses")?;
    let Some(want) = desired(cfg, &local) else {
        report(status_file, "no [volume] bricks: nothing to provision");
        return Ok(());
    };
    if want.me.is_none() {
        report(status_file, "no brick on this node: nothing to provision");
        return Ok(());
    }
    let mut last = String::new();
    loop {
        let seen = observe(&want);
        let steps = plan::plan(&want, &seen);
        let mut pause = Duration::from_secs(3);
        let mut finished = false;
        for step in &steps {
            let line = describe(step);
            if !step.is_terminal() || line != last {
                println!("provision: {line}");
            }
            match step {
                Step::Done => {
                    report(status_file, &format!("volume {} matches the file", want.volume));
                    pause = Duration::from_secs(30);
                    finished = true;
                }
                Step::Conflict(why) => {
                    report(status_file, &format!("CONFLICT: {why}"));
                    eprintln!("provision: conflict, nothing changed: {why}");
                    pause = Duration::from_secs(60);
                    finished = true;
                }
                Step::Wait(why) => report(status_file, &format!("waiting: {why}")),
                _ => {
                    // The console banner shows this while a slow CLI call runs (a create and
                    // the options took minutes on an emulated node), not the last wait.
                    report(status_file, &format!("running: {line}"));
                    if let Err(e) = execute(&want, step) {
                        eprintln!("provision: {line} failed: {e:#}");
                        report(status_file, &format!("retrying: {line} failed: {e:#}"));
                        pause = Duration::from_secs(5);
                        break;
                    }
                    // Something changed: look again at once.
                    pause = Duration::from_millis(500);
                }
            }
            if step.is_terminal() {
                last = line;
            }
        }
        if finished && !watch {
            return Ok(());
        }
        std::thread::sleep(pause);
    }
}

fn describe(step: &Step) -> String {
    match step {
        Step::Wait(why) => format!("waiting: {why}"),
        Step::Probe(h) => format!("gluster peer probe {h}"),
        Step::Create => "creating the volume".into(),
        Step::Start => "starting the volume".into(),
        Step::SetOption(k, v) => format!("setting {k} = {v}"),
        Step::AddBricks(b) => format!("adding bricks {b:?}"),
        Step::ResetBrick(b) => format!("rebuilding blank brick {b} (reset-brick, then a full heal)"),
        Step::AdoptUuid { uuid, from } => format!("taking UUID {uuid}, which {from}'s pool knows this node by"),
        Step::Conflict(why) => format!("conflict: {why}"),
        Step::Done => "the volume matches the file".into(),
    }
}

fn report(path: &Path, line: &str) {
    if let Some(d) = path.parent() {
        let _ = std::fs::create_dir_all(d);
    }
    let _ = std::fs::write(path, format!("{line}\n"));
}

/// The default status file path.
pub fn status_file() -> PathBuf {
    PathBuf::from(STATUS_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mount("/data/my\\040disk"), "/data/my disk");
        assert_eq!(unescape_mount("/plain"), "/plain");
    }

    #[test]
    fn this_node_is_found_among_brick_hosts() {
        let cfg = nasgw::config::parse(
            "[volume]\nname = \"smb\"\nbackend = \"gluster\"\nreplica = 3\nbricks = [\"10.9.0.1:/d/b\", \"127.0.0.1:/d/b\", \"10.9.0.3:/d/b\"]\n",
            "t",
            Path::new("/"),
        )
        .unwrap();
        let d = desired(&cfg, &["127.0.0.1".parse().unwrap()]).unwrap();
        assert_eq!(d.me.as_deref(), Some("127.0.0.1"));
        assert_eq!(d.options["network.ping-timeout"], "5");
        assert_eq!(d.options["features.cache-invalidation"], "on");
        assert_eq!(d.options["performance.cache-invalidation"], "on");
        assert_eq!(cfg.volume.servers, vec!["10.9.0.1", "127.0.0.1", "10.9.0.3"]);
        assert_eq!(layout_args(&d), vec!["replica", "3"]);
        assert!(!d.options.contains_key("storage.owner-uid"));
    }

    #[test]
    fn a_share_of_the_whole_volume_owns_its_root() {
        let text = |share: &str, opts: &str| {
            format!(
                "[volume]\nname = \"smb\"\nbackend = \"gluster\"\nreplica = 3\n\
                 bricks = [\"10.9.0.1:/d/b\", \"10.9.0.2:/d/b\", \"10.9.0.3:/d/b\"]\n{opts}\n[[smb.share]]\nname = \"pub\"\n{share}\n"
            )
        };
        let d = |share: &str, opts: &str| {
            let cfg = nasgw::config::parse(&text(share, opts), "t", Path::new("/")).unwrap();
            desired(&cfg, &[]).unwrap().options
        };
        let id = crate::system::account_id("smbcli").to_string();
        let o = d("force_user = \"smbcli\"", "");
        assert_eq!((o["storage.owner-uid"].as_str(), o["storage.owner-gid"].as_str()), (id.as_str(), id.as_str()));
        let o = d("force_user = \"1001\"\nforce_group = \"100\"", "");
        assert_eq!((o["storage.owner-uid"].as_str(), o["storage.owner-gid"].as_str()), ("1001", "100"));
        // A share of a folder, or no forced user: the root stays as GlusterFS makes it.
        assert!(!d("path = \"/x\"\nforce_user = \"smbcli\"", "").contains_key("storage.owner-uid"));
        assert!(!d("", "").contains_key("storage.owner-uid"));
        // The file's own options win.
        let o = d("force_user = \"smbcli\"", "options = { \"storage.owner-uid\" = \"0\" }");
        assert_eq!(o["storage.owner-uid"], "0");
    }
}
