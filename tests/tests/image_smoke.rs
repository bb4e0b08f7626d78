//! CI smoke boot of the appliance: `image/build` builds the image, and two qemu VMs (TCG) boot
//! it side by side with the default nasgw.toml on their NASGW partition, one under BIOS
//! (SeaBIOS, syslinux) and one under UEFI (OVMF, systemd-boot). The host reaches each guest
//! share with smbclient through qemu's user-mode network (host forwards); on the BIOS one it
//! writes a file over SMB and reads it back over NFS (`nfs-ls`, `nfs-cat`), and waits for the
//! console's login banner to show the node OK. Prints the image's size and each VM's time from
//! power-on to serving.

use std::process::Command;
use std::time::{Duration, Instant};

use nasgw_tests::vm::{image, tail, Firmware, Vm, VmSpec};

fn smbclient(port: u16, cmd: &str) -> Option<String> {
    let o = Command::new("smbclient")
        .args(["//127.0.0.1/pub", "-N", "-p", &port.to_string(), "-m", "SMB3", "-t", "10", "-c", cmd])
        .output()
        .ok()?;
    o.status.success().then(|| String::from_utf8_lossy(&o.stdout).into_owned())
}

/// One VM with host forwards to its SMB and NFS ports.
struct Booted {
    vm: Vm,
    smb: u16,
    nfs: u16,
    serving: Option<Duration>,
}

fn boot(dir: &std::path::Path, name: &str, firmware: Firmware, mac: &str) -> Booted {
    let smb = nasgw_tests::free_port();
    let nfs = nasgw_tests::free_port();
    let spec = VmSpec {
        name: name.into(),
        dir: dir.to_path_buf(),
        firmware,
        netdev: format!(
            "user,id=n0,net=10.0.2.0/24,ipv6=off,hostfwd=tcp:127.0.0.1:{smb}-:445,hostfwd=tcp:127.0.0.1:{nfs}-:2049"
        ),
        mac: mac.into(),
        data_disk_mib: None,
        mem_mib: 1024,
        smp: 1,
        netns: None,
        config_files: Vec::new(),
        extra_drives: Vec::new(),
    };
    Booted { vm: Vm::boot(&spec), smb, nfs, serving: None }
}

#[test]
fn the_image_boots_under_bios_and_uefi_and_serves_its_default_config() {
    assert!(nasgw_tests::is_root(), "image tests need root (image/build, qemu)");
    let img = image();
    let dir = tempfile::tempdir().unwrap();
    let mut vms = [
        boot(dir.path(), "bios", Firmware::Bios, "52:54:00:4e:41:01"),
        boot(dir.path(), "uefi", Firmware::Uefi, "52:54:00:4e:41:02"),
    ];
    // Both boot at once (one vCPU each on the 2-core machine); poll both until each serves.
    let limit = Duration::from_secs(480);
    let t = Instant::now();
    while vms.iter().any(|b| b.serving.is_none()) {
        for b in vms.iter_mut().filter(|b| b.serving.is_none()) {
            if smbclient(b.smb, "ls").is_some() {
                b.serving = Some(b.vm.started.elapsed());
            } else if !b.vm.running() {
                panic!("qemu exited; console:\n{}", tail(&b.vm.console_text(), 60));
            }
        }
        if t.elapsed() > limit {
            let late: String = vms
                .iter()
                .filter(|b| b.serving.is_none())
                .map(|b| format!("--- {} console:\n{}\n", b.vm.console.display(), tail(&b.vm.console_text(), 60)))
                .collect();
            panic!("not serving within {} s:\n{late}", limit.as_secs());
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let [bios, uefi] = &mut vms;
    // The UEFI VM served; the rest runs on the BIOS one alone.
    uefi.vm.kill();

    // Write through SMB, read back through NFS: the one volume, both protocols.
    let src = dir.path().join("hello.txt");
    std::fs::write(&src, b"hello from the host\n").unwrap();
    let put = smbclient(bios.smb, &format!("put {} hello.txt", src.display()));
    assert!(put.is_some(), "smbclient put failed; console:\n{}", tail(&bios.vm.console_text(), 40));
    let nfs = bios.nfs;
    let url = format!("nfs://127.0.0.1/smb/?version=3&nfsport={nfs}&mountport={nfs}");
    let ls = Command::new("nfs-ls").arg(&url).output().unwrap();
    let listing = String::from_utf8_lossy(&ls.stdout);
    assert!(
        ls.status.success() && listing.contains("hello.txt"),
        "nfs-ls {url}: {listing}{}",
        String::from_utf8_lossy(&ls.stderr)
    );
    let cat = Command::new("nfs-cat")
        .arg(format!("nfs://127.0.0.1/smb/hello.txt?version=3&nfsport={nfs}&mountport={nfs}"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&cat.stdout), "hello from the host\n");
    // The console shows the node's state at the login prompt.
    let console = bios.vm.console.clone();
    let banner = bios.vm.wait_for("the console banner with nasgw status", Duration::from_secs(120), || {
        let c = String::from_utf8_lossy(&std::fs::read(&console).unwrap_or_default()).into_owned();
        c.contains("--- nasgw status") && c.lines().any(|l| l.starts_with("pnn:0") && l.contains(" OK"))
    });
    eprintln!(
        "image smoke: {}; build {:.0} s; power-on to serving (TCG, both at once, 1 vCPU each): BIOS {:.1} s, UEFI {:.1} s; banner at {:.1} s",
        img.summary,
        img.build_time.as_secs_f64(),
        bios.serving.unwrap().as_secs_f64(),
        uefi.serving.unwrap().as_secs_f64(),
        banner.as_secs_f64()
    );
}
