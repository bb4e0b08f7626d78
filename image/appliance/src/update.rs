//! `nasgw-appliance update IMAGE` (also installed as `nasgw-update`): writes a new appliance
//! image into the root slot that is not running and makes it the boot default, keeping the
//! config partition, the state partition (`/persist`) and the data disks untouched.
//!
//! The system disk has two root slots, `nasgw-root-a` and `nasgw-root-b` (GPT partition names),
//! and one ESP holding a kernel and initrd per slot (`/a/`, `/b/`) plus both boot loaders'
//! menus (syslinux for BIOS, systemd-boot for UEFI). An update:
//! 1. reads the new image's partition table (`sfdisk --json`) and checks that its root
//!    partition holds the appliance's ext4 root file system and fits the slot;
//! 2. copies that partition into the other slot, and syncs it;
//! 3. copies the new slot's kernel and initrd (its own `/boot`) into the ESP's slot folder;
//! 4. makes that slot the default of both menus.
//!
//! The running slot stays as it was: at the boot prompt `a` or `b` boots either, and
//! `nasgw-update --rollback` makes the other slot the default again. Parsing and the menu
//! edits are pure functions, tested here.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

/// One of the two root slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// `nasgw-root-a`, the slot an image is built with.
    A,
    /// `nasgw-root-b`, added on first boot.
    B,
}

impl Slot {
    /// The letter the ESP folder, the menus and the partition name use.
    pub fn letter(self) -> char {
        match self {
            Slot::A => 'a',
            Slot::B => 'b',
        }
    }

    /// The other slot.
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    /// The slot's GPT partition name.
    pub fn partlabel(self) -> String {
        format!("nasgw-root-{}", self.letter())
    }
}

/// The slot the running system booted from: `root=PARTLABEL=nasgw-root-X` on the kernel
/// command line.
pub fn running_slot(cmdline: &str) -> Option<Slot> {
    cmdline.split_whitespace().find_map(|w| match w.strip_prefix("root=PARTLABEL=")? {
        "nasgw-root-a" => Some(Slot::A),
        "nasgw-root-b" => Some(Slot::B),
        _ => None,
    })
}

/// Where a partition is inside an image file (bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Offset from the start of the image.
    pub offset: u64,
    /// Length.
    pub len: u64,
}

#[derive(Deserialize)]
struct SfdiskDump {
    partitiontable: SfdiskTable,
}

#[derive(Deserialize)]
struct SfdiskTable {
    #[serde(default)]
    sectorsize: Option<u64>,
    #[serde(default)]
    partitions: Vec<SfdiskPart>,
}

#[derive(Deserialize)]
struct SfdiskPart {
    start: u64,
    size: u64,
    #[serde(default)]
    name: Option<String>,
}

/// Pure: the root file system's place in an appliance image, from `sfdisk --json IMAGE`. An
/// image is built with its root in slot a.
pub fn image_root(sfdisk_json: &str) -> Result<Extent> {
    let dump: SfdiskDump = serde_json::from_str(sfdisk_json).context("sfdisk answered unexpected JSON")?;
    let sector = dump.partitiontable.sectorsize.unwrap_or(512);
    let root = dump
        .partitiontable
        .partitions
        .iter()
        .find(|p| p.name.as_deref() == Some("nasgw-root-a"))
        .context("the file has no partition named nasgw-root-a: not a nasgw appliance image")?;
    Ok(Extent { offset: root.start * sector, len: root.size * sector })
}

/// The label every appliance root file system carries (`image/build`).
pub const ROOT_LABEL: &str = "nasgw-root";

/// Pure: whether `sb` (the 1024 bytes at offset 1024 of a partition) is an ext4 superblock
/// labelled [`ROOT_LABEL`].
pub fn is_appliance_root(sb: &[u8]) -> bool {
    if sb.len() < 136 || sb[56..58] != [0x53, 0xEF] {
        return false;
    }
    let label = &sb[120..136];
    let end = label.iter().position(|&b| b == 0).unwrap_or(label.len());
    &label[..end] == ROOT_LABEL.as_bytes()
}

/// Pure: syslinux's menu with `slot` as its default.
pub fn syslinux_default(cfg: &str, slot: Slot) -> String {
    set_key_line(cfg, "DEFAULT ", &format!("DEFAULT {}", slot.letter()))
}

/// Pure: systemd-boot's `loader.conf` with `slot`'s entry as its default.
pub fn loader_default(conf: &str, slot: Slot) -> String {
    set_key_line(conf, "default ", &format!("default {}.conf", slot.letter()))
}

/// Replaces the first line starting with `key` by `line` (or adds it first).
fn set_key_line(text: &str, key: &str, line: &str) -> String {
    let mut done = false;
    let mut out: Vec<String> = text
        .lines()
        .map(|l| {
            if !done && l.starts_with(key) {
                done = true;
                line.to_string()
            } else {
                l.to_string()
            }
        })
        .collect();
    if !done {
        out.insert(0, line.to_string());
    }
    out.join("\n") + "\n"
}

/// Pure: the default slot a syslinux menu names.
pub fn syslinux_current(cfg: &str) -> Option<Slot> {
    cfg.lines().find_map(|l| match l.strip_prefix("DEFAULT ")?.trim() {
        "a" => Some(Slot::A),
        "b" => Some(Slot::B),
        _ => None,
    })
}

#[derive(Deserialize)]
struct LsblkList {
    blockdevices: Vec<LsblkDev>,
}

#[derive(Deserialize)]
struct LsblkDev {
    name: String,
    #[serde(default)]
    pkname: Option<String>,
    #[serde(default)]
    partlabel: Option<String>,
}

/// Pure: the partition named `label` on the disk that holds `root` (the running root's device),
/// from `lsblk --json --list --paths -o NAME,PKNAME,PARTLABEL`. Only the system disk counts: a
/// USB stick with an appliance image written to it carries partitions of the same names, and
/// writing its ESP or its slots instead of the node's own would update the wrong disk.
pub fn system_partition(lsblk_json: &str, root: &str, label: &str) -> Result<PathBuf> {
    let list: LsblkList = serde_json::from_str(lsblk_json).context("lsblk answered unexpected JSON")?;
    let disk = list
        .blockdevices
        .iter()
        .find(|d| d.name == root)
        .and_then(|d| d.pkname.clone())
        .with_context(|| format!("cannot find the disk that holds the running root {root}"))?;
    list.blockdevices
        .iter()
        .find(|d| d.pkname.as_deref() == Some(disk.as_str()) && d.partlabel.as_deref() == Some(label))
        .map(|d| PathBuf::from(&d.name))
        .with_context(|| {
            format!("no partition named {label} on the system disk {disk} (first boot adds nasgw-root-b; is the disk large enough?)")
        })
}

/// The device of the partition named `label` on this node's system disk.
fn partition(label: &str) -> Result<PathBuf> {
    let root = Command::new("findmnt").args(["-n", "-o", "SOURCE", "/"]).output().context("cannot run findmnt")?;
    let root = String::from_utf8_lossy(&root.stdout).trim().to_string();
    let out = Command::new("lsblk")
        .args(["--json", "--list", "--paths", "-o", "NAME,PKNAME,PARTLABEL"])
        .output()
        .context("cannot run lsblk")?;
    if !out.status.success() {
        bail!("lsblk failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    system_partition(&String::from_utf8_lossy(&out.stdout), &root, label)
}

/// Where the update mounts things.
const WORK: &str = "/run/nasgw/update";

/// Writes `image` into the other slot and boots it next time.
pub fn update(image: &Path) -> Result<()> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").context("cannot read /proc/cmdline")?;
    let running = running_slot(&cmdline).context("the kernel command line names no nasgw root slot")?;
    let target = running.other();
    let dev = partition(&target.partlabel())?;

    let json = Command::new("sfdisk").arg("--json").arg(image).output().context("cannot run sfdisk")?;
    if !json.status.success() {
        bail!("{} has no partition table: {}", image.display(), String::from_utf8_lossy(&json.stderr).trim());
    }
    let root = image_root(&String::from_utf8_lossy(&json.stdout))?;
    let mut src = File::open(image).with_context(|| format!("cannot open {}", image.display()))?;
    let mut sb = vec![0u8; 1024];
    src.seek(SeekFrom::Start(root.offset + 1024))?;
    src.read_exact(&mut sb).context("the image ends inside its root partition")?;
    if !is_appliance_root(&sb) {
        bail!("the root partition of {} is not a nasgw appliance root file system", image.display());
    }
    let mut dst =
        OpenOptions::new().write(true).open(&dev).with_context(|| format!("cannot open {}", dev.display()))?;
    let slot_len = dst.seek(SeekFrom::End(0))?;
    if root.len > slot_len {
        bail!(
            "the image's root ({} MiB) is larger than slot {} ({} MiB)",
            root.len >> 20,
            target.letter(),
            slot_len >> 20
        );
    }

    println!(
        "nasgw-update: running slot {}; writing the image's root ({} MiB) into slot {} ({})",
        running.letter(),
        root.len >> 20,
        target.letter(),
        dev.display()
    );
    dst.seek(SeekFrom::Start(0))?;
    src.seek(SeekFrom::Start(root.offset))?;
    let mut left = root.len;
    let mut buf = vec![0u8; 4 << 20];
    while left > 0 {
        let n = buf.len().min(left as usize);
        src.read_exact(&mut buf[..n]).context("the image ends inside its root partition")?;
        dst.write_all(&buf[..n]).with_context(|| format!("cannot write {}", dev.display()))?;
        left -= n as u64;
    }
    dst.sync_all()?;
    drop(dst);

    // The new slot's own kernel and initrd go into its ESP folder.
    let new_root = Path::new(WORK).join("root");
    let esp = Path::new(WORK).join("esp");
    std::fs::create_dir_all(&new_root)?;
    std::fs::create_dir_all(&esp)?;
    run("mount", &["-o", "ro", &dev.to_string_lossy(), &new_root.to_string_lossy()])?;
    let result = (|| -> Result<String> {
        let boot = new_root.join("boot");
        let (kernel, initrd) = newest_kernel(&boot)?;
        let version = std::fs::read_to_string(new_root.join("etc/nasgw-image")).unwrap_or_default();
        run("mount", &[&partition("nasgw-boot")?.to_string_lossy(), &esp.to_string_lossy()])?;
        let r = (|| -> Result<()> {
            let dir = esp.join(target.letter().to_string());
            std::fs::create_dir_all(&dir)?;
            copy_replace(&boot.join(&kernel), &dir.join("vmlinuz"))?;
            copy_replace(&boot.join(&initrd), &dir.join("initrd.img"))?;
            let sys = esp.join("syslinux/syslinux.cfg");
            let text = std::fs::read_to_string(&sys).with_context(|| format!("cannot read {}", sys.display()))?;
            write_replace(&sys, &syslinux_default(&text, target))?;
            let loader = esp.join("loader/loader.conf");
            let text = std::fs::read_to_string(&loader).unwrap_or_default();
            write_replace(&loader, &loader_default(&text, target))?;
            Ok(())
        })();
        let _ = Command::new("sync").status();
        let _ = Command::new("umount").arg(&esp).status();
        r?;
        Ok(version)
    })();
    let _ = Command::new("umount").arg(&new_root).status();
    let version = result?;
    println!(
        "nasgw-update: slot {} now holds {}; it boots next (reboot to run it). Slot {} stays bootable: `b`/`a` at the boot prompt, or nasgw-update --rollback",
        target.letter(),
        version.trim(),
        running.letter()
    );
    Ok(())
}

/// Makes the slot that is not running the boot default again (undoes an update, or switches
/// back to an updated slot).
pub fn rollback() -> Result<()> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").context("cannot read /proc/cmdline")?;
    let running = running_slot(&cmdline).context("the kernel command line names no nasgw root slot")?;
    let target = running.other();
    let esp = Path::new(WORK).join("esp");
    std::fs::create_dir_all(&esp)?;
    run("mount", &[&partition("nasgw-boot")?.to_string_lossy(), &esp.to_string_lossy()])?;
    let r = (|| -> Result<()> {
        let sys = esp.join("syslinux/syslinux.cfg");
        let text = std::fs::read_to_string(&sys)?;
        if syslinux_current(&text) == Some(target) {
            println!("nasgw-update: slot {} is already the default", target.letter());
            return Ok(());
        }
        if !esp.join(target.letter().to_string()).join("vmlinuz").exists() {
            bail!("slot {} has no kernel: it was never written", target.letter());
        }
        write_replace(&sys, &syslinux_default(&text, target))?;
        let loader = esp.join("loader/loader.conf");
        let text = std::fs::read_to_string(&loader).unwrap_or_default();
        write_replace(&loader, &loader_default(&text, target))?;
        Ok(())
    })();
    let _ = Command::new("sync").status();
    let _ = Command::new("umount").arg(&esp).status();
    r?;
    println!("nasgw-update: slot {} boots next (reboot to run it)", target.letter());
    Ok(())
}

/// The highest-versioned `vmlinuz-*` in `boot` and its `initrd.img-*`.
fn newest_kernel(boot: &Path) -> Result<(String, String)> {
    let mut versions: Vec<String> = std::fs::read_dir(boot)
        .with_context(|| format!("cannot list {}", boot.display()))?
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().strip_prefix("vmlinuz-").map(str::to_string))
        .filter(|v| boot.join(format!("initrd.img-{v}")).exists())
        .collect();
    versions.sort_by_key(|v| version_key(v));
    let v = versions.pop().context("the new root has no kernel with an initrd in /boot")?;
    Ok((format!("vmlinuz-{v}"), format!("initrd.img-{v}")))
}

/// Orders `6.1.0-50-amd64` numerically by its numbers.
fn version_key(v: &str) -> Vec<u64> {
    v.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse().ok()).collect()
}

/// Copies to a temporary name beside `to`, then renames over it.
fn copy_replace(from: &Path, to: &Path) -> Result<()> {
    let tmp = to.with_extension("new");
    std::fs::copy(from, &tmp).with_context(|| format!("cannot copy {} to {}", from.display(), tmp.display()))?;
    File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, to)?;
    Ok(())
}

fn write_replace(to: &Path, text: &str) -> Result<()> {
    let tmp = to.with_extension("new");
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, to)?;
    Ok(())
}

fn run(prog: &str, args: &[&str]) -> Result<()> {
    let st = Command::new(prog).args(args).status().with_context(|| format!("cannot run {prog}"))?;
    if !st.success() {
        bail!("{prog} {} failed ({st})", args.join(" "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_running_slot_comes_from_the_command_line() {
        let a = "BOOT_IMAGE=/a/vmlinuz root=PARTLABEL=nasgw-root-a console=ttyS0,115200 rw quiet";
        assert_eq!(running_slot(a), Some(Slot::A));
        assert_eq!(running_slot("root=PARTLABEL=nasgw-root-b quiet"), Some(Slot::B));
        assert_eq!(running_slot("root=/dev/sda1"), None);
        assert_eq!(Slot::A.other().partlabel(), "nasgw-root-b");
    }

    #[test]
    fn the_image_root_is_found_by_its_partition_name() {
        let json = r#"{"partitiontable": {"label": "gpt", "unit": "sectors", "sectorsize": 512, "partitions": [
            {"node": "x1", "start": 2048, "size": 524288, "type": "C12A7328-F81F-11D2-BA4B-00A0C93EC93B", "name": "nasgw-boot"},
            {"node": "x2", "start": 526336, "size": 65536, "type": "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7", "name": "NASGW"},
            {"node": "x3", "start": 591872, "size": 3145728, "type": "0FC63DAF-8483-4772-8E79-3D69D8477DE4", "name": "nasgw-root-a"}]}}"#;
        assert_eq!(image_root(json).unwrap(), Extent { offset: 591872 * 512, len: 3145728 * 512 });
        let other = r#"{"partitiontable": {"label": "dos", "partitions": [{"start": 2048, "size": 100}]}}"#;
        assert!(image_root(other).is_err());
        assert!(image_root("not json").is_err());
    }

    #[test]
    fn slots_and_the_esp_are_taken_from_the_system_disk_only() {
        // A stick with the image written to it (vdc) has partitions of the same names.
        let json = r#"{"blockdevices": [
            {"name": "/dev/vda", "pkname": null, "partlabel": null},
            {"name": "/dev/vda1", "pkname": "/dev/vda", "partlabel": "nasgw-boot"},
            {"name": "/dev/vda3", "pkname": "/dev/vda", "partlabel": "nasgw-root-a"},
            {"name": "/dev/vda4", "pkname": "/dev/vda", "partlabel": "nasgw-root-b"},
            {"name": "/dev/vdc", "pkname": null, "partlabel": null},
            {"name": "/dev/vdc1", "pkname": "/dev/vdc", "partlabel": "nasgw-boot"},
            {"name": "/dev/vdc3", "pkname": "/dev/vdc", "partlabel": "nasgw-root-a"}]}"#;
        let p = |root: &str, label: &str| system_partition(json, root, label).map_err(|e| e.to_string());
        assert_eq!(p("/dev/vda3", "nasgw-boot"), Ok(PathBuf::from("/dev/vda1")));
        assert_eq!(p("/dev/vda4", "nasgw-root-a"), Ok(PathBuf::from("/dev/vda3")));
        assert_eq!(p("/dev/vda3", "nasgw-root-b"), Ok(PathBuf::from("/dev/vda4")));
        // Booted from the stick: its own partitions, never the disk's.
        assert_eq!(p("/dev/vdc3", "nasgw-boot"), Ok(PathBuf::from("/dev/vdc1")));
        assert!(p("/dev/vdc3", "nasgw-root-b").unwrap_err().contains("no partition named nasgw-root-b"));
        assert!(p("/dev/sdz1", "nasgw-boot").unwrap_err().contains("cannot find the disk"));
        assert!(system_partition("[]", "/dev/vda3", "nasgw-boot").is_err());
    }

    #[test]
    fn only_an_appliance_root_superblock_is_accepted() {
        let mut sb = vec![0u8; 1024];
        assert!(!is_appliance_root(&sb));
        sb[56] = 0x53;
        sb[57] = 0xEF;
        sb[120..130].copy_from_slice(b"nasgw-root");
        assert!(is_appliance_root(&sb));
        sb[120..130].copy_from_slice(b"other-root");
        assert!(!is_appliance_root(&sb));
        assert!(!is_appliance_root(&sb[..100]));
    }

    #[test]
    fn both_menus_switch_their_default() {
        let sys = "SERIAL 0 115200\nPROMPT 1\nTIMEOUT 10\nDEFAULT a\nLABEL a\n  LINUX /a/vmlinuz\nLABEL b\n  LINUX /b/vmlinuz\n";
        let b = syslinux_default(sys, Slot::B);
        assert_eq!(syslinux_current(&b), Some(Slot::B));
        assert!(b.contains("LABEL a\n  LINUX /a/vmlinuz\n") && b.contains("TIMEOUT 10\nDEFAULT b\nLABEL a"), "{b}");
        assert_eq!(syslinux_current(&syslinux_default(&b, Slot::A)), Some(Slot::A));
        let loader = "default a.conf\ntimeout 1\nconsole-mode keep\n";
        assert_eq!(loader_default(loader, Slot::B), "default b.conf\ntimeout 1\nconsole-mode keep\n");
        assert_eq!(loader_default("timeout 1\n", Slot::A), "default a.conf\ntimeout 1\n");
    }

    #[test]
    fn kernels_are_ordered_by_their_numbers() {
        assert!(version_key("6.1.0-50-amd64") > version_key("6.1.0-9-amd64"));
        assert!(version_key("6.10.0-1-amd64") > version_key("6.9.0-1-amd64"));
    }
}
