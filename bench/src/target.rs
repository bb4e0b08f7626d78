//! What a table column runs its workloads against.

use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Result};

use crate::fixture::Fixture;
use crate::measure::{timed, Done};
use crate::nfs_client::NfsEndpoint;

/// One column of a table.
pub enum Target {
    /// An NFSv3 server.
    Nfs(NfsEndpoint),
    /// An SMB server on this loopback port, serving `[pub]`.
    Smb(u16),
    /// The served directory itself, through the local filesystem (the raw FUSE mount row).
    Local,
    /// Not measurable, and why (e.g. nasgw does not serve this protocol yet).
    Absent(String),
}

impl Target {
    /// `Ok` when rows can run against it.
    pub fn available(&self) -> Result<(), String> {
        match self {
            Target::Absent(why) => Err(why.clone()),
            _ => Ok(()),
        }
    }

    /// The loopback port of an SMB server; an error for any other target.
    pub fn smb_port(&self) -> anyhow::Result<u16> {
        match self {
            Target::Smb(p) => Ok(*p),
            _ => Err(anyhow::anyhow!("not an SMB server")),
        }
    }
}

/// `dd` of the bulk source into `data/name`, flushed (`conv=fsync`) as an NFS COMMIT would be.
pub fn local_write(fx: &Fixture, name: &str) -> Result<Done> {
    let of = format!("of={}", fx.data.join(name).display());
    let (elapsed, _) =
        timed(Command::new("dd").arg(format!("if={}", fx.big_source.display())).args([&of, "bs=1M", "conv=fsync"]))?;
    let got = std::fs::metadata(fx.data.join(name)).map(|m| m.len()).unwrap_or(0);
    fx.remove(name);
    if got != fx.sizes.bulk_bytes {
        bail!("wrote {got} bytes of {}", fx.sizes.bulk_bytes);
    }
    Ok(Done { amount: fx.sizes.bulk_bytes, elapsed })
}

/// `dd` of the bulk file to /dev/null.
/// Which rows a group runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rows {
    /// A directory on one disk: bulk, small files, listing and the other many-file rows.
    Directory,
    /// A GlusterFS volume: bulk (the read also with every cache dropped first), small files,
    /// and the listing and stat rows when the sizes have a listed directory.
    Gluster,
}

/// Writes dirty pages out and empties the kernel's page, dentry and inode caches, so the next
/// read comes from the disk through every layer (the FUSE mount's cache, the bricks' cache).
pub fn drop_caches() -> Result<()> {
    // SAFETY: sync(2) has no preconditions.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3\n")?;
    Ok(())
}

/// Empties every cache of the read file before a "caches dropped" round: the kernel's
/// ([`drop_caches`]) and that of a server which keeps file data itself while the volume tells
/// it of changes (nasgw over libgfapi): the file's times are set again to their own values
/// through the served directory, which changes its ctime, so a GlusterFS volume's upcalls tell
/// every client that read it. This runs before the sync, which gives the upcall time to land.
pub fn drop_caches_of(fx: &Fixture) -> Result<()> {
    let f = std::fs::File::open(fx.data.join(fx.read_name))?;
    let m = f.metadata()?;
    f.set_times(std::fs::FileTimes::new().set_accessed(m.accessed()?).set_modified(m.modified()?))?;
    drop(f);
    drop_caches()
}

pub fn local_read(fx: &Fixture) -> Result<Done> {
    let input = format!("if={}", fx.data.join(fx.read_name).display());
    let (elapsed, _) = timed(Command::new("dd").args([&input, "of=/dev/null", "bs=1M"]))?;
    Ok(Done { amount: fx.sizes.bulk_bytes, elapsed })
}

/// Lists the listed directory with every entry's attributes (what a READDIRPLUS gives):
/// `readdir` + `lstat` of each entry.
pub fn local_list(fx: &Fixture) -> Result<Done> {
    let start = Instant::now();
    let mut n = 0u64;
    for e in std::fs::read_dir(fx.data.join(fx.list_name))? {
        std::fs::symlink_metadata(e?.path())?;
        n += 1;
    }
    let elapsed = start.elapsed();
    if n != fx.sizes.list_entries as u64 {
        bail!("listed {n} of {} entries", fx.sizes.list_entries);
    }
    Ok(Done { amount: n, elapsed })
}

/// `lstat` of each of `names` in the listed directory (LOOKUP + GETATTR).
pub fn local_stat(fx: &Fixture, names: &[String]) -> Result<Done> {
    let dir = fx.data.join(fx.list_name);
    let start = Instant::now();
    for n in names {
        std::fs::symlink_metadata(dir.join(n))?;
    }
    Ok(Done { amount: names.len() as u64, elapsed: start.elapsed() })
}

/// Creates the small files in `data/dir` from this process (open, write, close each; no fsync).
pub fn local_small_files(fx: &Fixture, dir: &str) -> Result<Done> {
    let d = fx.data.join(dir);
    let block = vec![0x5a_u8; fx.sizes.small_size];
    let start = Instant::now();
    std::fs::create_dir(&d)?;
    for i in 0..fx.sizes.small_files {
        std::fs::write(d.join(format!("c{i:05}")), &block)?;
    }
    let elapsed = start.elapsed();
    fx.remove(dir);
    Ok(Done { amount: fx.sizes.small_files as u64, elapsed })
}
