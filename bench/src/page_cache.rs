//! The memory an upload round starts from. A 1 GiB upload puts 1 GiB of new pages into the
//! page cache, and the kernel charges what it takes to find them to the writing server: on a
//! machine whose free memory is short or fragmented (other work filled the cache), the server
//! reclaims and compacts memory itself while it writes (ext4 allocates large folios; perf of
//! an upload showed up to a fifth of the server's CPU in direct compaction). How much that is
//! depends on what ran before, not on the server, and swung an upload's CPU time 3-4x from
//! round to round. So every upload round starts the same way for every server:
//! [`settle_for_upload`] writes dirty pages out, drops the clean page cache, compacts free
//! memory and reads the client's source file back in, all outside the timed part; and
//! [`Fixture::remove`](crate::fixture::Fixture::remove) truncates an uploaded file before
//! unlinking it, so the teardown of its pages is the bench's work, never that of a server
//! which still holds the file open (nasgw keeps descriptors of recently used files).
//! [`VmEvents`] counts the direct reclaim and compaction a round still met, for the report.

use std::path::Path;

use anyhow::{Context as _, Result};

use crate::fixture;

/// Prepares an upload round of `source` (the local file the client sends): dirty pages
/// written out, the clean page cache dropped, free memory compacted, `source` read back into
/// the cache (the client reads it from memory, as in every round).
pub fn settle_for_upload(source: &Path) -> Result<()> {
    fixture::sync();
    std::fs::write("/proc/sys/vm/drop_caches", "1\n").context("drop_caches")?;
    // Without CONFIG_COMPACTION there is nothing to compact (and no such file).
    let _ = std::fs::write("/proc/sys/vm/compact_memory", "1\n");
    fixture::preload(source)?;
    Ok(())
}

/// Counters of `/proc/vmstat` that say a writer had to find memory itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VmEvents {
    /// Allocations that stalled for direct reclaim (`allocstall_*` summed).
    pub reclaim_stalls: u64,
    /// Allocations that stalled for direct compaction (`compact_stall`).
    pub compaction_stalls: u64,
}

impl VmEvents {
    /// The counters now (zero where the kernel has none).
    pub fn now() -> VmEvents {
        std::fs::read_to_string("/proc/vmstat").map(|t| VmEvents::parse(&t)).unwrap_or_default()
    }

    /// The counters in the text of `/proc/vmstat`.
    pub fn parse(text: &str) -> VmEvents {
        let mut e = VmEvents::default();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            let (Some(name), Some(Ok(v))) = (words.next(), words.next().map(str::parse::<u64>)) else {
                continue;
            };
            if name.starts_with("allocstall_") {
                e.reclaim_stalls += v;
            } else if name == "compact_stall" {
                e.compaction_stalls += v;
            }
        }
        e
    }

    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &VmEvents) -> VmEvents {
        VmEvents {
            reclaim_stalls: self.reclaim_stalls.saturating_sub(earlier.reclaim_stalls),
            compaction_stalls: self.compaction_stalls.saturating_sub(earlier.compaction_stalls),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::VmEvents;

    #[test]
    fn vmstat_stalls_are_summed_and_differenced() {
        let text = "nr_free_pages 100\nallocstall_dma 1\nallocstall_normal 2\nallocstall_movable 40\n\
                    compact_stall 7\ncompact_fail 3\nbroken\npgscan_direct x\n";
        let e = VmEvents::parse(text);
        assert_eq!(e, VmEvents { reclaim_stalls: 43, compaction_stalls: 7 });
        let later = VmEvents { reclaim_stalls: 50, compaction_stalls: 7 };
        assert_eq!(later.since(&e), VmEvents { reclaim_stalls: 7, compaction_stalls: 0 });
        assert_eq!(e.since(&later).reclaim_stalls, 0, "a counter never goes below zero");
        assert_eq!(VmEvents::parse(""), VmEvents::default());
    }
}
