//! CHANGE_NOTIFY and server-side copy with real clients (Python smbprotocol; checks in
//! `tests/smb/notify_copy_check.py`): changes made through SMB and NFS reach a watcher with
//! the right actions and names (recursive watches, overflow, cancel), and so do names changed
//! directly in the local volume's folder (inotify); a change made through
//! another node of a 2-node cluster in network namespaces reaches a watcher on the first;
//! FSCTL_SRV_COPYCHUNK_WRITE copies inside the volume within MS-SMB2's limits.

use std::process::Command;
use std::time::Duration;

use nasgw_tests::{free_port, is_root, require_tool, wait_for, Daemon, Topology};

fn script() -> std::path::PathBuf {
    nasgw_tests::workspace_root().join("tests/smb/notify_copy_check.py")
}

fn assert_all_ok(out: std::process::Output, logs: &str) {
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{text}");
    assert!(out.status.success() && text.contains("ALL OK"), "checks failed:\n{text}\n--- server log:\n{logs}");
}

#[test]
fn notify_reports_smb_and_nfs_changes_and_copychunk_copies_inside_the_volume() {
    require_tool("python3");
    require_tool("nfs-cp");
    let dir = tempfile::tempdir().unwrap();
    let (smb, nfs) = (free_port(), free_port());
    std::fs::create_dir_all(dir.path().join("data/priv")).unwrap();
    let cfg = format!(
        "[volume]\nname = \"smb\"\nbackend = \"local\"\npath = \"{{dir}}/data\"\n\n\
         [nfs]\nlisten = \"127.0.0.1:{nfs}\"\nroot_squash = false\n\n\
         [smb]\nlisten = \"127.0.0.1:{smb}\"\n\n\
         [[smb.share]]\nname = \"pub\"\nwritable = true\nguest_ok = true\nguest_only = true\nforce_user = \"root\"\n\n\
         [node]\ncontrol_socket = \"{{dir}}/ctl.sock\"\nstate_dir = \"{{dir}}/state\"\n"
    );
    let d = Daemon::start("notify", dir.path(), &cfg, None);
    wait_for("SMB port", Duration::from_secs(20), Duration::from_millis(20), || {
        std::net::TcpStream::connect(("127.0.0.1", smb)).ok()
    });
    let url = format!("nfs://127.0.0.1/smb/notify/{{name}}?version=3&nfsport={nfs}&mountport={nfs}");
    let out = Command::new("python3")
        .arg(script())
        .args(["127.0.0.1", &smb.to_string(), "pub", "--nfs", &url])
        .args(["--local", &dir.path().join("data").display().to_string()])
        .output()
        .expect("run python3");
    assert_all_ok(out, &d.logs());
}

#[test]
fn notify_reports_a_change_made_through_another_node() {
    require_tool("python3");
    assert!(is_root(), "network namespace tests need root (the README's test command runs as root)");
    let topo = Topology::new(&[("n1", "198.18.0.1"), ("n2", "198.18.0.2")]);
    let root = tempfile::tempdir().unwrap();
    let shared = root.path().join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    let cfg = format!(
        "[volume]\nname = \"smb\"\nbackend = \"local\"\npath = \"{}\"\n[nfs]\nenabled = false\n\
         [smb]\nlisten = \"0.0.0.0:445\"\n\
         [[smb.share]]\nname = \"pub\"\nwritable = true\nguest_ok = true\nguest_only = true\nforce_user = \"root\"\n\
         [cluster]\nnodes = [\"198.18.0.1\", \"198.18.0.2\"]\nrecovery_lock = \"/.lock\"\nsecret_file = \"{{dir}}/key\"\n\
         [node]\ncontrol_socket = \"{{dir}}/ctl.sock\"\nstate_dir = \"{{dir}}/state\"\n",
        shared.display()
    );
    let mut nodes = Vec::new();
    for n in ["n1", "n2"] {
        std::fs::create_dir_all(root.path().join(n)).unwrap();
        std::fs::write(root.path().join(n).join("key"), "notify-cluster-secret-0123456789").unwrap();
        nodes.push(Daemon::start(n, &root.path().join(n), &cfg, Some(topo.ns(n))));
    }
    // Both nodes OK in each other's view.
    for d in &nodes {
        wait_for("both nodes OK", Duration::from_secs(30), Duration::from_millis(100), || {
            let out = d.ctl(&["status", "--json"]);
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            let nodes = v["nodes"].as_array()?;
            (nodes.len() == 2 && nodes.iter().all(|n| n["state"] == "OK")).then_some(())
        });
    }
    // No wait for the file-sharing state: the client starts while the nodes may still be coming
    // in sync, as real clients do (a CREATE that went async inside a CREATE + CLOSE compound
    // then left its open behind; the next open met SHARING_VIOLATION).
    let out = topo.exec(
        "n1",
        "python3",
        &[script().to_str().unwrap(), "198.18.0.1", "445", "pub", "--other", "198.18.0.2", "445"],
    );
    let logs = nodes.iter().map(Daemon::logs).collect::<Vec<_>>().join("\n--- n2:\n");
    assert_all_ok(out, &logs);
}
