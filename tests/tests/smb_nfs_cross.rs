//! One namespace, two protocols: a file written over SMB reads back byte-identical over NFS
//! (libnfs `nfs-cp`), and a file written over NFS reads back byte-identical over SMB.

use std::process::Command;

use nasgw_tests::{free_port, require_tool, run, Daemon};

fn sha(path: &std::path::Path) -> String {
    let out = run("sha256sum", &[path.to_str().unwrap()]);
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().to_string()
}

#[test]
fn smb_writes_are_read_over_nfs_and_nfs_writes_over_smb() {
    require_tool("smbclient");
    require_tool("nfs-cp");
    let dir = tempfile::tempdir().unwrap();
    let (nfs, smb) = (free_port(), free_port());
    let cfg = format!(
        "[volume]\nname = \"smb\"\nbackend = \"local\"\npath = \"{{dir}}/data\"\n\n[nfs]\nlisten = \"127.0.0.1:{nfs}\"\nroot_squash = false\n\n\
         [smb]\nlisten = \"127.0.0.1:{smb}\"\n\n\
         [[smb.share]]\nname = \"pub\"\nwritable = true\nguest_ok = true\nguest_only = true\nforce_user = \"root\"\n\n\
         [node]\ncontrol_socket = \"{{dir}}/ctl.sock\"\nstate_dir = \"{{dir}}/state\"\n"
    );
    let d = Daemon::start("cross", &dir.path().join("d"), &cfg, None);
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    run("dd", &["if=/dev/urandom", &format!("of={}", src.display()), "bs=1M", "count=24", "status=none"]);
    let url = |p: &str| format!("nfs://127.0.0.1/smb/{p}?version=3&nfsport={nfs}&mountport={nfs}");
    let smbclient = |cmd: &str| {
        let out = Command::new("smbclient")
            .args(["//127.0.0.1/pub", "-p", &smb.to_string(), "-N", "-m", "SMB3", "-c", cmd])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "smbclient {cmd}: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            d.logs()
        );
    };

    // SMB -> NFS
    smbclient(&format!("put {} from-smb.bin", src.display()));
    let via_nfs = tmp.path().join("via-nfs");
    run("nfs-cp", &[&url("from-smb.bin"), via_nfs.to_str().unwrap()]);
    assert_eq!(sha(&src), sha(&via_nfs), "written over SMB, read over NFS");

    // NFS -> SMB
    run("nfs-cp", &[src.to_str().unwrap(), &url("from-nfs.bin")]);
    let via_smb = tmp.path().join("via-smb");
    smbclient(&format!("get from-nfs.bin {}", via_smb.display()));
    assert_eq!(sha(&src), sha(&via_smb), "written over NFS, read over SMB");

    // A rename over SMB is seen over NFS at once.
    smbclient("rename from-nfs.bin renamed.bin");
    let renamed = tmp.path().join("renamed");
    run("nfs-cp", &[&url("renamed.bin"), renamed.to_str().unwrap()]);
    assert_eq!(sha(&src), sha(&renamed));
}
