//! The GlusterFS side of provisioning: the `gluster` CLI (local, or another node's glusterd
//! through `--remote-host`), its XML answers parsed by pure functions, and the few files of
//! `/var/lib/glusterd` a replaced node rewrites.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::plan::{Peer, VolumeInfo};

/// glusterd's management port.
pub const GLUSTERD_PORT: u16 = 24007;

/// How long one CLI call may take: longer than the CLI's own 120 s, so glusterd's answer (or
/// the CLI's own timeout) comes first; a `volume create` on a slow machine took over 60 s.
const CLI_TIMEOUT: Duration = Duration::from_secs(150);

/// What one `gluster` call answered.
#[derive(Debug)]
pub struct Answer {
    /// Exit status was 0.
    pub ok: bool,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Runs `gluster --mode=script ARGS` (against `remote`'s glusterd when given).
pub fn cli(remote: Option<&str>, args: &[&str]) -> Result<Answer> {
    let mut cmd = Command::new("gluster");
    cmd.arg("--mode=script");
    if let Some(r) = remote {
        cmd.arg(format!("--remote-host={r}"));
    }
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().context("cannot run the gluster CLI")?;
    let deadline = Instant::now() + CLI_TIMEOUT;
    // Outputs are small (a volume's info is a few KiB), so waiting before reading cannot block.
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("gluster {} took more than {} s", args.join(" "), CLI_TIMEOUT.as_secs());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    child.stdout.take().map(|mut o| o.read_to_string(&mut stdout));
    child.stderr.take().map(|mut e| e.read_to_string(&mut stderr));
    Ok(Answer { ok: status.success(), stdout, stderr })
}

/// Runs a changing command; an error carries gluster's own words.
pub fn run(args: &[&str]) -> Result<String> {
    let a = cli(None, args)?;
    if !a.ok {
        bail!("gluster {}: {}{}", args.join(" "), a.stdout.trim(), a.stderr.trim());
    }
    Ok(a.stdout)
}

/// Whether `host`'s glusterd accepts a TCP connection within a second.
pub fn answers(host: &str) -> bool {
    let Ok(addrs) = (host, GLUSTERD_PORT).to_socket_addrs() else { return false };
    addrs.into_iter().any(|a| TcpStream::connect_timeout(&a, Duration::from_secs(1)).is_ok())
}

/// The volume `name` as `remote`'s (or this node's) glusterd knows it; `None` when it has none.
pub fn volume_info(remote: Option<&str>, name: &str) -> Result<Option<VolumeInfo>> {
    let a = cli(remote, &["volume", "info", name, "--xml"])?;
    parse_volume_info(&a.stdout, name)
}

/// This node's UUID and its pool's other members.
pub fn pool_list(remote: Option<&str>) -> Result<(String, Vec<Peer>)> {
    pool_answer(&cli(remote, &["pool", "list", "--xml"])?)
}

/// What `gluster pool list --xml` answered: the asked glusterd's UUID and its peers.
pub fn pool_answer(a: &Answer) -> Result<(String, Vec<Peer>)> {
    if !a.ok && a.stdout.is_empty() {
        bail!("gluster pool list: {}", a.stderr.trim());
    }
    parse_pool_list(&a.stdout)
}

fn doc(xml: &str) -> Result<roxmltree::Document<'_>> {
    roxmltree::Document::parse(xml).with_context(|| format!("gluster answered no XML: {:.200}", xml.trim()))
}

fn child_text<'a>(n: roxmltree::Node<'a, '_>, tag: &str) -> Option<&'a str> {
    n.children().find(|c| c.has_tag_name(tag)).and_then(|c| c.text())
}

fn op_ret(d: &roxmltree::Document<'_>) -> (i64, String) {
    let root = d.root_element();
    let ret = child_text(root, "opRet").and_then(|t| t.trim().parse().ok()).unwrap_or(-1);
    (ret, child_text(root, "opErrstr").unwrap_or("").to_string())
}

/// Parses `gluster volume info NAME --xml`.
pub fn parse_volume_info(xml: &str, name: &str) -> Result<Option<VolumeInfo>> {
    let d = doc(xml)?;
    let (ret, err) = op_ret(&d);
    if ret != 0 {
        if err.contains("does not exist") {
            return Ok(None);
        }
        bail!("gluster volume info {name}: {err}");
    }
    let Some(v) = d.descendants().find(|n| n.has_tag_name("volume") && child_text(*n, "name") == Some(name)) else {
        return Ok(None);
    };
    let num = |tag: &str| child_text(v, tag).and_then(|t| t.trim().parse::<u32>().ok()).unwrap_or(0);
    let mut bricks = Vec::new();
    for b in v.descendants().filter(|n| n.has_tag_name("brick")) {
        let name = child_text(b, "name").unwrap_or("").to_string();
        let uuid = child_text(b, "hostUuid").or_else(|| b.attribute("uuid")).unwrap_or("").to_string();
        bricks.push((name, uuid));
    }
    let mut options = BTreeMap::new();
    for o in v.descendants().filter(|n| n.has_tag_name("option")) {
        if let (Some(k), Some(val)) = (child_text(o, "name"), child_text(o, "value")) {
            options.insert(k.to_string(), val.to_string());
        }
    }
    Ok(Some(VolumeInfo {
        started: child_text(v, "statusStr") == Some("Started"),
        bricks,
        replica_count: num("replicaCount"),
        arbiter_count: num("arbiterCount"),
        options,
    }))
}

/// Parses `gluster pool list --xml`: the asked glusterd's UUID (its `localhost` entry) and its
/// peers.
pub fn parse_pool_list(xml: &str) -> Result<(String, Vec<Peer>)> {
    let d = doc(xml)?;
    let (ret, err) = op_ret(&d);
    if ret != 0 {
        bail!("gluster pool list: {err}");
    }
    let mut me = String::new();
    let mut peers = Vec::new();
    for p in d.descendants().filter(|n| n.has_tag_name("peer")) {
        let uuid = child_text(p, "uuid").unwrap_or("").to_string();
        let hostname = child_text(p, "hostname").unwrap_or("").to_string();
        if hostname == "localhost" {
            me = uuid;
            continue;
        }
        let mut hostnames: Vec<String> = p
            .descendants()
            .filter(|n| n.has_tag_name("hostname") && n.parent().is_some_and(|q| q.has_tag_name("hostnames")))
            .filter_map(|n| n.text().map(str::to_string))
            .collect();
        if !hostnames.contains(&hostname) {
            hostnames.insert(0, hostname);
        }
        let connected = child_text(p, "connected").map(str::trim) == Some("1");
        peers.push(Peer { hostnames, uuid, connected });
    }
    if me.is_empty() {
        bail!("gluster pool list names no localhost entry");
    }
    Ok((me, peers))
}

/// Rewrites glusterd's identity (`glusterd.info`) to `uuid` and its peer files to `peers`
/// (`(uuid, hostname)`), as GlusterFS documents for a host replaced under the same name.
/// glusterd must be stopped.
pub fn write_identity(dir: &Path, uuid: &str, peers: &[(String, String)]) -> Result<()> {
    let info = dir.join("glusterd.info");
    let old = std::fs::read_to_string(&info).unwrap_or_default();
    let mut lines: Vec<String> = old.lines().filter(|l| !l.starts_with("UUID=")).map(str::to_string).collect();
    lines.insert(0, format!("UUID={uuid}"));
    std::fs::write(&info, lines.join("\n") + "\n").with_context(|| format!("cannot write {}", info.display()))?;
    let pdir = dir.join("peers");
    std::fs::create_dir_all(&pdir)?;
    for (u, host) in peers {
        if u == uuid {
            continue;
        }
        std::fs::write(pdir.join(u), format!("uuid={u}\nstate=3\nhostname1={host}\n"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const VOLUME: &str = r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<cliOutput><opRet>0</opRet><opErrno>0</opErrno><opErrstr/><volInfo><volumes><volume>
<name>smb</name><id>7277bbcb</id><status>1</status><statusStr>Started</statusStr>
<brickCount>3</brickCount><distCount>1</distCount><replicaCount>3</replicaCount><arbiterCount>1</arbiterCount>
<bricks>
<brick uuid="u1">10.0.0.1:/data/b<name>10.0.0.1:/data/b</name><hostUuid>u1</hostUuid><isArbiter>0</isArbiter></brick>
<brick uuid="u2">10.0.0.2:/data/b<name>10.0.0.2:/data/b</name><hostUuid>u2</hostUuid><isArbiter>0</isArbiter></brick>
<brick uuid="u3">10.0.0.3:/data/b<name>10.0.0.3:/data/b</name><hostUuid>u3</hostUuid><isArbiter>1</isArbiter></brick>
</bricks><optCount>1</optCount><options><option><name>network.ping-timeout</name><value>5</value></option></options>
</volume><count>1</count></volumes></volInfo></cliOutput>"#;

    #[test]
    fn volume_info_is_parsed() {
        let v = parse_volume_info(VOLUME, "smb").unwrap().unwrap();
        assert!(v.started);
        assert_eq!(v.replica_count, 3);
        assert_eq!(v.arbiter_count, 1);
        assert_eq!(v.bricks[2], ("10.0.0.3:/data/b".to_string(), "u3".to_string()));
        assert_eq!(v.options["network.ping-timeout"], "5");
        assert_eq!(parse_volume_info(VOLUME, "other").unwrap(), None);
    }

    #[test]
    fn a_missing_volume_is_none_and_other_errors_are_errors() {
        let missing = "<cliOutput><opRet>-1</opRet><opErrno>30806</opErrno><opErrstr>Volume smb does not exist</opErrstr></cliOutput>";
        assert_eq!(parse_volume_info(missing, "smb").unwrap(), None);
        let other = "<cliOutput><opRet>-1</opRet><opErrno>1</opErrno><opErrstr>Locking failed</opErrstr></cliOutput>";
        assert!(parse_volume_info(other, "smb").is_err());
        assert!(parse_volume_info("Connection failed.", "smb").is_err());
    }

    #[test]
    fn pool_list_is_parsed() {
        let xml = r#"<cliOutput><opRet>0</opRet><opErrno>0</opErrno><opErrstr/><peerStatus>
<peer><uuid>u2</uuid><hostname>10.0.0.2</hostname><hostnames><hostname>10.0.0.2</hostname><hostname>n2</hostname></hostnames><connected>1</connected><state>3</state></peer>
<peer><uuid>u3</uuid><hostname>10.0.0.3</hostname><hostnames><hostname>10.0.0.3</hostname></hostnames><connected>0</connected></peer>
<peer><uuid>u1</uuid><hostname>localhost</hostname><connected>1</connected></peer>
</peerStatus></cliOutput>"#;
        let (me, peers) = parse_pool_list(xml).unwrap();
        assert_eq!(me, "u1");
        assert_eq!(peers.len(), 2);
        assert_eq!(peers[0].hostnames, vec!["10.0.0.2", "n2"]);
        assert!(peers[0].connected && !peers[1].connected);
    }

    #[test]
    fn identity_files_are_rewritten() {
        let d = std::env::temp_dir().join(format!("nasgw-ident-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("glusterd.info"), "UUID=new\noperating-version=100000\n").unwrap();
        write_identity(&d, "old", &[("old".into(), "10.0.0.3".into()), ("u1".into(), "10.0.0.1".into())]).unwrap();
        let info = std::fs::read_to_string(d.join("glusterd.info")).unwrap();
        assert_eq!(info, "UUID=old\noperating-version=100000\n");
        assert_eq!(std::fs::read_to_string(d.join("peers/u1")).unwrap(), "uuid=u1\nstate=3\nhostname1=10.0.0.1\n");
        assert!(!d.join("peers/old").exists());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
