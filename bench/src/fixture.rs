//! The data every workload starts from, made once per run before any server starts, so every
//! server sees the same files on the same disk.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

/// How much each workload moves. `full` is what the README reports; `quick` checks the plumbing.
#[derive(Clone, Copy, Debug)]
pub struct Sizes {
    /// Bytes of each bulk write and read.
    pub bulk_bytes: u64,
    /// Number of small files created in one session/connection.
    pub small_files: usize,
    /// Size of each small file.
    pub small_size: usize,
    /// Entries of the directory that is listed and statted.
    pub list_entries: usize,
    /// Files in each tree removed by `deltree`.
    pub deltree_files: usize,
    /// Rounds per workload (the table shows the median).
    pub rounds: usize,
}

impl Sizes {
    /// The sizes the issues ask for.
    pub fn full() -> Sizes {
        Sizes {
            bulk_bytes: 1 << 30,
            small_files: 2000,
            small_size: 4096,
            list_entries: 10_000,
            deltree_files: 2000,
            rounds: 5,
        }
    }

    /// Small sizes that finish in seconds.
    pub fn quick() -> Sizes {
        Sizes {
            bulk_bytes: 32 << 20,
            small_files: 200,
            small_size: 4096,
            list_entries: 1000,
            deltree_files: 200,
            rounds: 1,
        }
    }

    /// "1 GiB", "32 MiB": the bulk size for row names.
    pub fn bulk_label(&self) -> String {
        if self.bulk_bytes >= 1 << 30 && self.bulk_bytes % (1 << 30) == 0 {
            format!("{} GiB", self.bulk_bytes >> 30)
        } else {
            format!("{} MiB", self.bulk_bytes >> 20)
        }
    }

    /// "10k", "1000": a count for row names.
    pub fn count_label(n: usize) -> String {
        if n >= 1000 && n % 1000 == 0 {
            format!("{}k", n / 1000)
        } else {
            n.to_string()
        }
    }
}

/// The bench's directories: `data/` is what every server serves; `src/` holds local sources.
pub struct Fixture {
    /// The served directory (every server of a group serves this same directory).
    pub data: PathBuf,
    /// A local file of `bulk_bytes` that uploads read from.
    pub big_source: PathBuf,
    /// A local directory of `small_files` files of `small_size` bytes each.
    pub small_source: PathBuf,
    /// The name (inside `data`) of the file downloads read.
    pub read_name: &'static str,
    /// The name (inside `data`) of the directory of `list_entries` files that is listed and statted.
    pub list_name: &'static str,
    /// The sizes in force.
    pub sizes: Sizes,
}

impl Fixture {
    /// Creates everything under `root` (which must be empty or new), served data in `root/data`.
    pub fn create(root: &Path, sizes: Sizes) -> Result<Fixture> {
        Fixture::create_serving(root, &root.join("data"), sizes)
    }

    /// Creates the local sources under `root` and the served files in `data` (e.g. the root of
    /// a GlusterFS FUSE mount).
    pub fn create_serving(root: &Path, data: &Path, sizes: Sizes) -> Result<Fixture> {
        let data = data.to_path_buf();
        let src = root.join("src");
        fs::create_dir_all(&data)?;
        fs::create_dir_all(&src)?;
        // Servers act as the client's uid (NFS AUTH_UNIX 1000) on paths below this root.
        for d in [root, &data] {
            fs::set_permissions(d, fs::Permissions::from_mode(0o777)).context("chmod")?;
        }
        let fx = Fixture {
            data,
            big_source: src.join("big"),
            small_source: src.join("small"),
            read_name: "read-big",
            list_name: "list",
            sizes,
        };
        write_pattern(&fx.big_source, sizes.bulk_bytes, 1)?;
        write_pattern(&fx.data.join(fx.read_name), sizes.bulk_bytes, READ_SEED)?;
        fs::create_dir_all(&fx.small_source)?;
        let block = pattern_block(sizes.small_size, 3);
        for i in 0..sizes.small_files {
            fs::write(fx.small_source.join(format!("s{i:05}")), &block)?;
        }
        let list = fx.data.join(fx.list_name);
        fs::create_dir_all(&list)?;
        for i in 0..sizes.list_entries {
            fs::write(list.join(list_entry(i)), b"")?;
        }
        sync();
        Ok(fx)
    }

    /// Creates `data/name` holding `deltree_files` small files, for one deltree run.
    pub fn make_tree(&self, name: &str) -> Result<PathBuf> {
        let dir = self.data.join(name);
        fs::create_dir_all(&dir)?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777))?;
        let block = pattern_block(self.sizes.small_size, 4);
        for i in 0..self.sizes.deltree_files {
            fs::write(dir.join(format!("d{i:05}")), &block)?;
        }
        Ok(dir)
    }

    /// Removes `data/name` (file or tree) after a round, so the disk does not fill up. A file
    /// is truncated first: its pages are then freed here, not by a server that still holds it
    /// open when it lets go of it later (see [`crate::page_cache`]).
    pub fn remove(&self, name: &str) {
        let p = self.data.join(name);
        match fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => {
                let _ = fs::remove_dir_all(&p);
            }
            Ok(m) => {
                if m.is_file() {
                    let _ = fs::OpenOptions::new().write(true).open(&p).and_then(|f| f.set_len(0));
                }
                let _ = fs::remove_file(&p);
            }
            Err(_) => {}
        }
    }
}

/// The name of entry `i` of the listed directory.
pub fn list_entry(i: usize) -> String {
    format!("f{i:06}")
}

/// Flushes dirty pages so a workload does not pay for the previous one's writeback.
pub fn sync() {
    // SAFETY: sync(2) has no preconditions.
    unsafe { libc::sync() };
}

fn pattern_block(len: usize, seed: u64) -> Vec<u8> {
    // xorshift64: incompressible enough, deterministic, no dependency.
    let mut x = 0x9E37_79B9_7F4A_7C15_u64 ^ seed;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// The pattern seed of the read rows' file (`Fixture::read_name`).
pub const READ_SEED: u64 = 2;

/// What [`write_pattern`] wrote, to check bytes read back from any offset of such a file.
pub struct Pattern {
    block: Vec<u8>,
}

impl Pattern {
    /// The pattern of seed `seed`.
    pub fn new(seed: u64) -> Pattern {
        Pattern { block: pattern_block(PATTERN_BLOCK, seed) }
    }

    /// Whether `bytes` are what a file of this pattern holds at `offset`. Pure.
    pub fn matches(&self, offset: u64, bytes: &[u8]) -> bool {
        let block = PATTERN_BLOCK as u64;
        bytes.iter().enumerate().all(|(k, b)| {
            let at = offset + k as u64;
            let want = if at % block == 0 { (at / block) as u8 } else { self.block[(at % block) as usize] };
            *b == want
        })
    }
}

/// The pattern repeats every this many bytes (the first byte of each repeat counts them).
const PATTERN_BLOCK: usize = 1 << 20;

/// Writes `bytes` of a deterministic pattern (from `seed`) to a new file at `path`.
pub fn write_pattern(path: &Path, bytes: u64, seed: u64) -> Result<()> {
    let mut block = pattern_block(PATTERN_BLOCK, seed);
    let mut f = fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
    let mut left = bytes;
    let mut i = 0u8;
    while left > 0 {
        block[0] = i;
        i = i.wrapping_add(1);
        let n = left.min(block.len() as u64) as usize;
        f.write_all(&block[..n])?;
        left -= n as u64;
    }
    fs::set_permissions(path, fs::Permissions::from_mode(0o644))?;
    Ok(())
}

/// Reads `path` once through the page cache (so a warm read row starts from memory, whatever
/// the rows before it evicted) and returns the share of its pages resident afterwards (0..=1):
/// below 1 when the machine is short of memory, which the report then says.
pub fn preload(path: &Path) -> Result<f64> {
    use std::io::Read as _;
    let mut f = fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    while f.read(&mut buf)? > 0 {}
    resident_share(&f)
}

/// The share of `f`'s pages in the page cache now (`mincore` over a mapping of it).
pub fn resident_share(f: &fs::File) -> Result<f64> {
    use std::os::fd::AsRawFd as _;
    let len = f.metadata()?.len() as usize;
    if len == 0 {
        return Ok(1.0);
    }
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as usize;
    // SAFETY: a fresh shared read-only mapping of an open file; unmapped below, never read.
    let addr = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, f.as_raw_fd(), 0) };
    if addr == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error()).context("mmap");
    }
    let mut vec = vec![0u8; len.div_ceil(page)];
    // SAFETY: addr..addr+len is our mapping; vec has one byte per page of it.
    let rc = unsafe { libc::mincore(addr, len, vec.as_mut_ptr()) };
    let err = std::io::Error::last_os_error();
    // SAFETY: the mapping made above, unmapped once.
    unsafe { libc::munmap(addr, len) };
    if rc != 0 {
        return Err(err).context("mincore");
    }
    Ok(vec.iter().filter(|b| **b & 1 == 1).count() as f64 / vec.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pattern_file_matches_its_pattern_at_every_offset_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p");
        let size = 3 * PATTERN_BLOCK as u64 + 100;
        write_pattern(&path, size, 7).unwrap();
        let data = fs::read(&path).unwrap();
        let p = Pattern::new(7);
        for at in [0u64, 1, 4095, PATTERN_BLOCK as u64 - 10, PATTERN_BLOCK as u64, 2 * PATTERN_BLOCK as u64 + 3] {
            let end = (at as usize + 4096).min(data.len());
            assert!(p.matches(at, &data[at as usize..end]), "offset {at}");
        }
        // Another offset, another seed, or one changed byte do not match.
        assert!(!p.matches(PATTERN_BLOCK as u64, &data[..4096]));
        assert!(!Pattern::new(8).matches(0, &data[..4096]));
        let mut bad = data[..4096].to_vec();
        bad[100] ^= 1;
        assert!(!p.matches(0, &bad));
    }
}
