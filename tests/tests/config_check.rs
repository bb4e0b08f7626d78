//! `nasgw check`: the shipped example is valid; each kind of mistake is refused with
//! file:line:col and a hint, and nothing is started.

use nasgw_tests::{nasgw, workspace_root};

fn check(text: &str) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("nasgw.toml");
    std::fs::write(&f, text).unwrap();
    let out = nasgw(&["check", "--config", f.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr).replace(f.to_str().unwrap(), "FILE");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), err)
}

const GOOD: &str = "[volume]\nname = \"smb\"\nbackend = \"local\"\npath = \"/srv/nasgw\"\n\n[[smb.share]]\nname = \"pub\"\npath = \"/\"\n";

#[test]
fn the_two_node_example_is_valid_and_printed_with_defaults() {
    let ex = workspace_root().join("examples/two-nodes.toml");
    let out = nasgw(&["check", "--config", ex.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for key in [
        "recovery_lock = \"/lock/lockfile\"",
        "192.168.122.200/24",
        "force_user = \"smbcli\"",
        "port = 4379",
        "state_dir",
    ] {
        assert!(stdout.contains(key), "effective config lacks {key}:\n{stdout}");
    }
}

#[test]
fn a_minimal_config_is_valid() {
    let (ok, out, err) = check(GOOD);
    assert!(ok, "{err}");
    assert!(out.contains("listen = \"0.0.0.0:2049\""), "defaults filled in:\n{out}");
}

#[test]
fn a_typo_in_a_key_is_refused_with_place_and_suggestion() {
    let (ok, _, err) =
        check(&GOOD.replace("browseable", "x").replace("path = \"/\"", "path = \"/\"\nwriteable = true"));
    assert!(!ok);
    assert!(err.contains("FILE:9:1: smb.share[0].writeable: unknown field `writeable`\n"), "{err}");
    assert!(err.contains("hint: did you mean `writable`?"), "{err}");
}

#[test]
fn a_bad_address_is_refused_with_place_and_hint() {
    let text = format!("{GOOD}\n[cluster]\nnodes = [\"198.18.0.1\", \"198.18.0.2\"]\nrecovery_lock = \"/lock\"\nsecret_file = \"/k\"\npublic_addresses = [{{ address = \"198.18.1.300/24\", interface = \"eth0\" }}]\n");
    let (ok, _, err) = check(&text);
    assert!(!ok);
    assert!(err.contains("FILE:14:33: cluster.public_addresses[0].address: invalid IP address syntax"), "{err}");
    assert!(err.contains("hint: write an address with its prefix length"), "{err}");
    let (ok, _, err) = check(&text.replace("198.18.0.2\"", "198.18.0\""));
    assert!(!ok);
    assert!(err.contains("FILE:11:24: cluster.nodes[1]"), "{err}");
}

#[test]
fn a_share_path_outside_the_volume_is_refused() {
    let (ok, _, err) = check(&GOOD.replace("path = \"/\"", "path = \"/pub/../../etc\""));
    assert!(!ok);
    assert!(err.contains("FILE:8:8: smb.share[0].path: share path is outside the volume"), "{err}");
    assert!(err.contains("hint: share paths are inside the volume"), "{err}");
}

#[test]
fn a_missing_file_says_so() {
    let out = nasgw(&["check", "--config", "/nonexistent/nasgw.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read the config file"));
}
