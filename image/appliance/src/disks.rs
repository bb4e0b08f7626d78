//! `nasgw-appliance disks`: gives each of this node's bricks a disk. Brick number *i* of this
//! node (in `[volume] bricks` order) lives on the XFS file system labelled `nasgw-b<i>`, mounted
//! at the brick's parent directory. When no disk carries that label, the first **blank** disk
//! (no partition table, no file system signature, no partitions, not the boot disk) is
//! formatted with it. A disk with anything on it is never formatted.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

/// One block device as `lsblk --json` lists it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct BlockDev {
    /// Device path (`/dev/vdb`).
    pub path: String,
    /// `disk`, `part`, `rom`, `loop`...
    #[serde(rename = "type")]
    pub kind: String,
    /// File system type, if a signature was found.
    pub fstype: Option<String>,
    /// File system label.
    pub label: Option<String>,
    /// Partition table type.
    pub pttype: Option<String>,
    /// Read-only.
    #[serde(default)]
    pub ro: bool,
    /// Partitions.
    #[serde(default)]
    pub children: Vec<BlockDev>,
}

/// What to do for one brick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskStep {
    /// Mount the file system labelled `label` (already formatted) at `at`.
    Mount {
        /// File system label.
        label: String,
        /// Mount point: the brick's parent directory.
        at: String,
    },
    /// Format blank `device` as XFS labelled `label`, then mount it at `at`.
    Format {
        /// The blank disk.
        device: String,
        /// File system label.
        label: String,
        /// Mount point.
        at: String,
    },
    /// No disk for this brick.
    Missing {
        /// The label looked for.
        label: String,
        /// The brick's mount point.
        at: String,
    },
}

/// Label of this node's brick number `i`.
pub fn label(i: usize) -> String {
    format!("nasgw-b{i}")
}

/// Whether a disk is blank: no partition table, no file system, no partitions, writable.
fn blank(d: &BlockDev) -> bool {
    d.kind == "disk" && !d.ro && d.fstype.is_none() && d.pttype.is_none() && d.children.is_empty()
}

/// Pure: the step for each of this node's brick mount points (in order), given the devices.
pub fn plan(mount_points: &[String], devices: &[BlockDev]) -> Vec<DiskStep> {
    let labelled = |l: &str| {
        devices.iter().flat_map(|d| std::iter::once(d).chain(d.children.iter())).any(|d| d.label.as_deref() == Some(l))
    };
    let mut blanks = devices.iter().filter(|d| blank(d)).map(|d| d.path.clone()).collect::<Vec<_>>().into_iter();
    mount_points
        .iter()
        .enumerate()
        .map(|(i, at)| {
            let label = label(i);
            let at = at.clone();
            if labelled(&label) {
                DiskStep::Mount { label, at }
            } else if let Some(device) = blanks.next() {
                DiskStep::Format { device, label, at }
            } else {
                DiskStep::Missing { label, at }
            }
        })
        .collect()
}

#[derive(Deserialize)]
struct Lsblk {
    blockdevices: Vec<BlockDev>,
}

/// Block devices now.
pub fn devices() -> Result<Vec<BlockDev>> {
    let out = Command::new("lsblk")
        .args(["--json", "-o", "PATH,TYPE,FSTYPE,LABEL,PTTYPE,RO"])
        .output()
        .context("cannot run lsblk")?;
    if !out.status.success() {
        bail!("lsblk failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(serde_json::from_slice::<Lsblk>(&out.stdout).context("lsblk answered unexpected JSON")?.blockdevices)
}

/// Formats and mounts what `plan` says; returns the bricks left without a disk.
pub fn apply(steps: &[DiskStep]) -> Result<Vec<String>> {
    let mut missing = Vec::new();
    for s in steps {
        match s {
            DiskStep::Missing { label, at } => {
                eprintln!("nasgw-appliance: no disk for the brick under {at}: no file system labelled {label} and no blank disk");
                missing.push(at.clone());
            }
            DiskStep::Format { device, label, at } => {
                // Re-check with blkid's low-level probe right before formatting: exit 2 = nothing found.
                let probe = Command::new("blkid").args(["-p", device]).status().context("cannot run blkid")?;
                if probe.code() != Some(2) {
                    bail!("{device} is not blank after all (blkid found a signature); not formatting it");
                }
                println!("nasgw-appliance: formatting blank disk {device} as XFS `{label}` for the brick under {at}");
                run("mkfs.xfs", &["-q", "-i", "size=512", "-L", label, device])?;
                mount(label, at)?;
            }
            DiskStep::Mount { label, at } => mount(label, at)?,
        }
    }
    Ok(missing)
}

fn mount(label: &str, at: &str) -> Result<()> {
    if crate::provision::is_mount_point(Path::new(at)) {
        return Ok(());
    }
    std::fs::create_dir_all(at).with_context(|| format!("cannot create {at}"))?;
    // udev may not have made the by-label link yet right after mkfs: mount by label through blkid.
    run("mount", &["-o", "noatime,inode64", &format!("LABEL={label}"), at])?;
    println!("nasgw-appliance: mounted {label} at {at}");
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

    fn dev(path: &str, fstype: Option<&str>, label: Option<&str>, pttype: Option<&str>) -> BlockDev {
        BlockDev {
            path: path.into(),
            kind: "disk".into(),
            fstype: fstype.map(Into::into),
            label: label.map(Into::into),
            pttype: pttype.map(Into::into),
            ro: false,
            children: Vec::new(),
        }
    }

    #[test]
    fn only_blank_disks_are_formatted_and_labelled_ones_are_reused() {
        let boot = dev("/dev/vda", None, None, Some("gpt"));
        let ext4 = dev("/dev/vdb", Some("ext4"), Some("backup"), None);
        let blank = dev("/dev/vdc", None, None, None);
        let ours = dev("/dev/vdd", Some("xfs"), Some("nasgw-b0"), None);
        let at = vec!["/data/b0".to_string(), "/data/b1".to_string(), "/data/b2".to_string()];
        let p = plan(&at, &[boot, ext4, blank, ours]);
        assert_eq!(p[0], DiskStep::Mount { label: "nasgw-b0".into(), at: "/data/b0".into() });
        assert_eq!(
            p[1],
            DiskStep::Format { device: "/dev/vdc".into(), label: "nasgw-b1".into(), at: "/data/b1".into() }
        );
        assert_eq!(p[2], DiskStep::Missing { label: "nasgw-b2".into(), at: "/data/b2".into() });
    }

    #[test]
    fn lsblk_json_is_read() {
        let j = r#"{"blockdevices":[{"path":"/dev/vda","type":"disk","fstype":null,"label":null,"pttype":"gpt","ro":false,
            "children":[{"path":"/dev/vda1","type":"part","fstype":"vfat","label":"NASGW","pttype":"gpt","ro":false}]},
            {"path":"/dev/vdb","type":"disk","fstype":null,"label":null,"pttype":null,"ro":false}]}"#;
        let l: Lsblk = serde_json::from_str(j).unwrap();
        let p = plan(&["/data".to_string()], &l.blockdevices);
        assert_eq!(
            p,
            vec![DiskStep::Format { device: "/dev/vdb".into(), label: "nasgw-b0".into(), at: "/data".into() }]
        );
    }
}
