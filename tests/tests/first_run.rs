//! The README's first command, as an admin runs it: `nasgw serve` as root in a fresh directory
//! (the embedded default), then the client commands it prints, copied verbatim: an smbclient
//! `put` and an `nfs-cp` must both land in `./nasgw-data`. Also: a `force_user` share on a fresh
//! volume gets its folder owned by the forced user, and `nasgw check` reports an unknown
//! `force_user` and a guest share its guests cannot write.
//!
//! The embedded default listens on fixed loopback ports, so the daemon and the commands run in
//! a network namespace of their own (a fresh loopback), never clashing with other tests.

use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use nasgw_tests::{is_root, nasgw, nasgw_bin, require_tool, run, wait_for, Daemon};

/// A namespace with only `lo`, deleted (with whatever runs in it) on drop.
struct Loopback(String);

impl Loopback {
    fn new(tag: &str) -> Loopback {
        let name = format!("fr{}{tag}", std::process::id());
        run("ip", &["netns", "add", &name]);
        run("ip", &["-n", &name, "link", "set", "lo", "up"]);
        Loopback(name)
    }

    fn sh(&self, cmd: &str) -> std::process::Output {
        Command::new("ip").args(["netns", "exec", &self.0, "sh", "-c", cmd]).output().expect("ip netns exec")
    }
}

impl Drop for Loopback {
    fn drop(&mut self) {
        if let Ok(out) = Command::new("ip").args(["netns", "pids", &self.0]).output() {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
                // SAFETY: kill(2) on a process of a namespace this test created.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn the_printed_commands_work_as_root_on_the_embedded_default() {
    assert!(is_root(), "this test runs nasgw as root, as the README's first command is most often run");
    for tool in ["smbclient", "nfs-cp"] {
        require_tool(tool);
    }
    let net = Loopback::new("a");
    let cwd = tempfile::tempdir().unwrap();
    let banner_path = cwd.path().join("banner.txt");
    let mut child = Command::new("ip")
        .args(["netns", "exec", &net.0])
        .arg(nasgw_bin())
        .arg("serve")
        .env_remove("NASGW_CONFIG")
        .current_dir(cwd.path())
        .stdout(std::fs::File::create(&banner_path).unwrap())
        .stderr(std::fs::File::create(cwd.path().join("log.txt")).unwrap())
        .spawn()
        .unwrap();
    let banner = wait_for("the banner's commands", Duration::from_secs(30), Duration::from_millis(50), || {
        let b = std::fs::read_to_string(&banner_path).ok()?;
        b.contains("control socket").then_some(b)
    });
    println!("{banner}");
    // The indented lines under "try it:" are what the admin copies.
    let cmds: Vec<&str> = banner
        .lines()
        .skip_while(|l| !l.contains("try it:"))
        .skip(1)
        .take_while(|l| l.starts_with("    "))
        .map(str::trim)
        .collect();
    assert!(
        cmds.iter().any(|c| c.starts_with("smbclient ") && c.contains("put"))
            && cmds.iter().any(|c| c.starts_with("nfs-cp ")),
        "the banner prints an SMB put and an NFS copy:\n{banner}"
    );
    let _ = std::fs::remove_file("/tmp/nasgw-hello.txt");
    for cmd in &cmds {
        let out = net.sh(cmd);
        assert!(
            out.status.success(),
            "`{cmd}` failed ({}):\n{}{}\nnasgw log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(cwd.path().join("log.txt")).unwrap_or_default()
        );
    }
    let data = cwd.path().join("nasgw-data");
    for f in ["hello-smb.txt", "hello-nfs.txt"] {
        assert_eq!(std::fs::read_to_string(data.join(f)).unwrap(), "hello\n", "{f} landed in ./nasgw-data");
    }
    let root = std::fs::metadata(&data).unwrap();
    assert_eq!((root.uid(), root.gid()), (65534, 65534), "the fresh data directory belongs to the guest identity");
    // `nasgw check` in the same directory finds nothing to report.
    let check =
        Command::new(nasgw_bin()).arg("check").current_dir(cwd.path()).env_remove("NASGW_CONFIG").output().unwrap();
    assert!(check.status.success());
    assert!(!String::from_utf8_lossy(&check.stderr).contains("warning"), "{}", String::from_utf8_lossy(&check.stderr));
    // SAFETY: signalling our own child (`ip netns exec` execs nasgw).
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let st = wait_for("exit", Duration::from_secs(40), Duration::from_millis(20), || child.try_wait().unwrap());
    assert!(st.success(), "{st}");
}

#[test]
fn a_force_user_share_gets_its_folder_on_a_fresh_volume() {
    assert!(is_root(), "creating folders for another user needs root");
    require_tool("smbclient");
    let dir = tempfile::tempdir().unwrap();
    let port = nasgw_tests::free_port();
    // `daemon` (uid 1) exists on every Debian system; the recipe's smbcli would be created by the admin.
    let cfg = format!(
        "[volume]\nname = \"smb\"\nbackend = \"local\"\npath = \"{{dir}}/data\"\n\n[nfs]\nenabled = false\n\n\
         [smb]\nlisten = \"127.0.0.1:{port}\"\n\n\
         [[smb.share]]\nname = \"pub\"\npath = \"/pub\"\nwritable = true\nguest_ok = true\nguest_only = true\nforce_user = \"daemon\"\n\n\
         [node]\ncontrol_socket = \"{{dir}}/ctl.sock\"\nstate_dir = \"{{dir}}/state\"\n"
    );
    let d = Daemon::start("fu", dir.path(), &cfg, None);
    let folder = dir.path().join("data/pub");
    let meta = std::fs::metadata(&folder).expect("the share folder is created");
    assert_eq!((meta.uid(), meta.gid()), (1, 1), "owned by the forced user and its group");
    let src = dir.path().join("src.txt");
    std::fs::write(&src, "x").unwrap();
    let out = Command::new("smbclient")
        .args(["//127.0.0.1/pub", "-p", &port.to_string(), "-N", "-m", "SMB3", "-c"])
        .arg(format!("put {} f.txt", src.display()))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        d.logs()
    );
    assert_eq!(std::fs::metadata(folder.join("f.txt")).unwrap().uid(), 1, "written as the forced user");
    drop(d);
}

#[test]
fn check_reports_an_unknown_force_user_and_a_folder_guests_cannot_write() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("pub")).unwrap();
    std::fs::write(data.join("in-use.txt"), "data").unwrap();
    let cfg = dir.path().join("nasgw.toml");
    std::fs::write(
        &cfg,
        format!(
            "[volume]\nname = \"smb\"\nbackend = \"local\"\npath = \"{}\"\n\n\
             [[smb.share]]\nname = \"pub\"\npath = \"/pub\"\nwritable = true\nguest_ok = true\n\n\
             [[smb.share]]\nname = \"team\"\npath = \"/team\"\nwritable = true\nforce_user = \"smbcli-nasgw-test\"\n",
            data.display()
        ),
    )
    .unwrap();
    let out = nasgw(&["check", "--quiet", "--config", cfg.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    println!("{err}");
    assert!(out.status.success(), "the file itself is valid: warnings only\n{err}");
    assert!(err.contains("smb.share[1].force_user: `smbcli-nasgw-test` is not a user on this node"), "{err}");
    assert!(err.contains("hint: create it on every node"), "{err}");
    if is_root() {
        // The guests of `pub` write as nobody, and /pub is root's 0755 folder.
        assert!(err.contains("smb.share[0]: share `pub`: its guests write as nobody"), "{err}");
        assert!(err.contains(&format!("hint: `chown 65534:65534 {}/pub`", data.display())), "{err}");
    }
}
