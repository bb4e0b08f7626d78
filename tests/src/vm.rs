//! Appliance VMs: builds the image once (`image/build`), boots copies of it in qemu on
//! copy-on-write overlays, and stops them by PID.
//!
//! qemu runs under TCG (software emulation). These machines have a `/dev/kvm`, but it is
//! `kvm_pvm` (a nested "PVM" KVM, no vmx flag in cpuinfo), which runs only guests built for PVM:
//! the image under `-accel kvm` stops in SeaBIOS's 32-bit code ("KVM internal error. Suberror: 1,
//! emulation failure" at an `iret`), and Debian 12's kernel booted directly prints nothing.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::workspace_root;

/// The built image: `target/image/nasgw.qcow2`, built once per test process.
pub struct Image {
    /// The qcow2 file VMs boot (through an overlay each).
    pub qcow2: PathBuf,
    /// What `image/build` printed last (sizes, versions, time).
    pub summary: String,
    /// How long the build took.
    pub build_time: Duration,
}

/// Builds the appliance image with `image/build` (cached base, so ~1 min after the first build).
/// With `NASGW_IMAGE_REUSE=1` an image already in `target/image` is used as it is (for
/// re-running a slow VM test against the image just built; the summary says so).
pub fn image() -> &'static Image {
    static IMG: OnceLock<Image> = OnceLock::new();
    IMG.get_or_init(|| {
        let root = workspace_root();
        let out = root.join("target/image");
        let qcow2 = out.join("nasgw.qcow2");
        if std::env::var_os("NASGW_IMAGE_REUSE").is_some_and(|v| v == "1")
            && qcow2.exists()
            && out.join("nasgw.img").exists()
        {
            let mib = |f: &str| std::fs::metadata(out.join(f)).map_or(0, |m| m.len() / 1048576);
            let summary = format!(
                "image: reused {} (NASGW_IMAGE_REUSE=1, not rebuilt): raw {} MiB, qcow2 {} MiB",
                qcow2.display(),
                mib("nasgw.img"),
                mib("nasgw.qcow2")
            );
            eprintln!("{summary}");
            return Image { qcow2, summary, build_time: Duration::ZERO };
        }
        let t = Instant::now();
        let o = Command::new(root.join("image/build"))
            .args(["--out", &out.to_string_lossy()])
            .current_dir(&root)
            .stderr(Stdio::inherit())
            .output()
            .expect("run image/build");
        let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(o.status.success(), "image/build failed:\n{stdout}");
        let summary = stdout.lines().last().unwrap_or("").to_string();
        eprintln!("{summary}");
        Image { qcow2, summary, build_time: t.elapsed() }
    })
}

/// Firmware a VM boots with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    /// SeaBIOS: syslinux through the GPT's protective MBR.
    Bios,
    /// OVMF: systemd-boot from the ESP.
    Uefi,
}

/// One qemu VM booted from the image.
pub struct Vm {
    child: Child,
    /// Its serial console, as a file.
    pub console: PathBuf,
    /// When qemu was started (power-on).
    pub started: Instant,
    dir: PathBuf,
}

/// How to boot a VM.
pub struct VmSpec {
    /// Name (files under `dir`).
    pub name: String,
    /// Working directory for its disks and console.
    pub dir: PathBuf,
    /// BIOS or UEFI.
    pub firmware: Firmware,
    /// qemu `-netdev` arguments (e.g. user-mode net with host forwards, or a tap).
    pub netdev: String,
    /// The NIC's MAC.
    pub mac: String,
    /// Size of a blank data disk to attach, if any (MiB).
    pub data_disk_mib: Option<u64>,
    /// Memory (MiB).
    pub mem_mib: u64,
    /// Virtual CPUs (TCG runs one host thread per vCPU: several VMs on a 2-core host get 1).
    pub smp: u32,
    /// More disks, attached read-only after the data disk (raw files).
    pub extra_drives: Vec<PathBuf>,
    /// Run qemu under `ip netns exec NS`.
    pub netns: Option<String>,
    /// Replace the NASGW partition's nasgw.toml (and add files beside it) before booting.
    pub config_files: Vec<(String, Vec<u8>)>,
}

impl Vm {
    /// Creates the VM's disks (an overlay over the image, larger than it, so first boot adds
    /// the update slot and the state partition) unless they exist, then powers it on.
    pub fn boot(spec: &VmSpec) -> Vm {
        let img = image();
        std::fs::create_dir_all(&spec.dir).expect("vm dir");
        let disk = spec.dir.join(format!("{}.qcow2", spec.name));
        if !disk.exists() {
            crate::run(
                "qemu-img",
                &[
                    "create",
                    "-q",
                    "-f",
                    "qcow2",
                    "-F",
                    "qcow2",
                    "-b",
                    &img.qcow2.to_string_lossy(),
                    &disk.to_string_lossy(),
                    "6G",
                ],
            );
            if !spec.config_files.is_empty() {
                write_config(&disk, &spec.config_files);
            }
        }
        let mut args: Vec<String> =
            ["-nodefaults", "-no-user-config", "-display", "none", "-machine", "q35,accel=tcg", "-cpu", "max"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        args.extend(["-smp".into(), spec.smp.max(1).to_string()]);
        args.extend(["-m".into(), spec.mem_mib.to_string()]);
        args.extend(["-drive".into(), format!("file={},if=virtio,format=qcow2,discard=unmap", disk.display())]);
        if let Some(mib) = spec.data_disk_mib {
            let data = spec.dir.join(format!("{}-data.qcow2", spec.name));
            if !data.exists() {
                crate::run("qemu-img", &["create", "-q", "-f", "qcow2", &data.to_string_lossy(), &format!("{mib}M")]);
            }
            args.extend(["-drive".into(), format!("file={},if=virtio,format=qcow2", data.display())]);
        }
        for d in &spec.extra_drives {
            args.extend(["-drive".into(), format!("file={},if=virtio,format=raw,readonly=on", d.display())]);
        }
        if spec.firmware == Firmware::Uefi {
            let vars = spec.dir.join(format!("{}-vars.fd", spec.name));
            if !vars.exists() {
                std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &vars).expect("copy OVMF vars");
            }
            args.extend([
                "-drive".into(),
                "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd".into(),
                "-drive".into(),
                format!("if=pflash,format=raw,unit=1,file={}", vars.display()),
            ]);
        }
        args.extend(["-netdev".into(), spec.netdev.clone()]);
        args.extend(["-device".into(), format!("virtio-net-pci,netdev=n0,mac={},romfile=", spec.mac)]);
        let console = spec.dir.join(format!("{}-console.log", spec.name));
        args.extend(["-serial".into(), format!("file:{}", console.display())]);
        let mut cmd = match &spec.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "qemu-system-x86_64"]);
                c
            }
            None => Command::new("qemu-system-x86_64"),
        };
        let log = std::fs::File::create(spec.dir.join(format!("{}-qemu.log", spec.name))).expect("qemu log");
        let child = cmd
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .expect("start qemu-system-x86_64");
        Vm { child, console, started: Instant::now(), dir: spec.dir.clone() }
    }

    /// The serial console so far.
    pub fn console_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.console).unwrap_or_default()).into_owned()
    }

    /// Polls `check` every second until it returns true or `limit` passes; on timeout panics
    /// with the console's tail.
    pub fn wait_for(&mut self, what: &str, limit: Duration, mut check: impl FnMut() -> bool) -> Duration {
        let t = Instant::now();
        while t.elapsed() < limit {
            if check() {
                return self.started.elapsed();
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("qemu exited ({st}) while waiting for {what}; console:\n{}", tail(&self.console_text(), 60));
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        panic!("{what}: not within {} s; console:\n{}", limit.as_secs(), tail(&self.console_text(), 80));
    }

    /// qemu's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether qemu still runs (a guest that powered off or rebooted into nothing ends it).
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Kills the VM at once (power cut).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The VM's working directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Writes files onto the NASGW partition of a VM's overlay disk: the partition is copied out
/// of the raw image, edited with mtools, and written into the overlay with qemu-io.
fn write_config(disk: &Path, files: &[(String, Vec<u8>)]) {
    let dir = disk.parent().expect("disk dir");
    let raw = image().qcow2.with_extension("img");
    let (start, size) = CONFIG_PARTITION_MIB;
    let part = dir.join(format!("{}-cfg.fat", disk.file_stem().unwrap_or_default().to_string_lossy()));
    crate::run(
        "dd",
        &[
            &format!("if={}", raw.display()),
            &format!("of={}", part.display()),
            "bs=1M",
            &format!("skip={start}"),
            &format!("count={size}"),
            "status=none",
        ],
    );
    for (name, data) in files {
        let f = dir.join(format!("cfg-edit-{name}"));
        std::fs::write(&f, data).expect("write config file");
        crate::run("mcopy", &["-o", "-i", &part.to_string_lossy(), &f.to_string_lossy(), &format!("::/{name}")]);
        let _ = std::fs::remove_file(f);
    }
    crate::run(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            &format!("write -s {} {} {}", part.display(), start * 1048576, size * 1048576),
            &disk.to_string_lossy(),
        ],
    );
    let _ = std::fs::remove_file(part);
}

/// Where the NASGW partition is on the image (MiB): after 1 MiB of GPT and the 256 MiB ESP,
/// 32 MiB long (image/build).
pub const CONFIG_PARTITION_MIB: (u64, u64) = (257, 32);

/// A TCP port on the host's loopback that is free now.
pub fn host_port() -> u16 {
    crate::free_port()
}
