//! The harness runs daemons inside real network namespaces: each node finds itself in
//! `[cluster] nodes` by its own address.

use nasgw_tests::{is_root, Daemon, Topology};

#[test]
fn each_node_in_its_namespace_finds_itself() {
    assert!(is_root(), "network namespace tests need root (the README's test command runs as root)");
    let topo = Topology::new(&[("n1", "198.18.0.1"), ("n2", "198.18.0.2")]);
    let root = tempfile::tempdir().unwrap();
    let cfg = "[volume]\nname = \"smb\"\nbackend = \"local\"\npath = \"{dir}/data\"\n[nfs]\nlisten = \"0.0.0.0:2049\"\n[smb]\nlisten = \"0.0.0.0:445\"\n[cluster]\nnodes = [\"198.18.0.1\", \"198.18.0.2\"]\nrecovery_lock = \"/lock/lockfile\"\nsecret_file = \"{dir}/key\"\npublic_addresses = [{ address = \"198.18.1.1/16\", interface = \"eth0\" }]\n[node]\ncontrol_socket = \"{dir}/ctl.sock\"\nstate_dir = \"{dir}/state\"\n";
    for n in ["n1", "n2"] {
        std::fs::create_dir_all(root.path().join(n)).unwrap();
        std::fs::write(root.path().join(n).join("key"), "harness-cluster-secret-0123456789").unwrap();
    }
    let n1 = Daemon::start("n1", &root.path().join("n1"), cfg, Some(topo.ns("n1")));
    let n2 = Daemon::start("n2", &root.path().join("n2"), cfg, Some(topo.ns("n2")));
    for (d, me) in [(&n1, 0), (&n2, 1)] {
        let out = d.ctl(&["status", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let nodes = v["nodes"].as_array().unwrap();
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes[me]["this_node"], true, "{v}");
        assert_eq!(nodes[me]["state"], "OK", "{v}");
        let text = String::from_utf8_lossy(&d.ctl(&["status"]).stdout).into_owned();
        assert!(text.contains(&format!("pnn:{me}")) && text.contains("(THIS NODE)"), "{text}");
        let ip = String::from_utf8_lossy(&d.ctl(&["ip", "-v"]).stdout).into_owned();
        assert!(ip.contains("198.18.1.1/16") && ip.contains("interface[eth0]"), "{ip}");
    }
    assert!(n1.stop().success());
    assert!(n2.stop().success());
}
