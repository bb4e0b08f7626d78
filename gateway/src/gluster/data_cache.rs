//! File data kept in memory over libgfapi, and the rule that keeps it true (pure).
//!
//! A FUSE mount serves a re-read from the kernel's page cache; libgfapi has none, so without
//! this every read goes to a brick. The data is kept on the attribute cache's terms
//! (`attr_cache.rs`, `coherence.rs`): only while the volume's upcalls are proved to reach this
//! node (an *epoch*, 0 while off), and per file:
//!
//! - data is kept in [`CHUNK`]-sized pieces, with the file's [`Stamp`] (size, mtime, ctime) and
//!   the epoch it was read in: a chunk is served only while both still hold (the stamp comes
//!   from the attribute cache or a fresh stat, so any change the bricks report also turns the
//!   data away, and a new epoch drops everything);
//! - an invalidation (an upcall naming the file, or a change this node made, before it is
//!   answered) drops the file's chunks and refuses every fill whose brick read began before it:
//!   a fill is a [`Ticket`] taken before the read, checked when the data is stored;
//! - the whole is bounded in bytes; the least recently used chunk goes first.

use std::collections::BTreeSet;
use std::hash::Hash;
use std::num::NonZeroUsize;
use std::sync::Arc;

use lru::LruCache;

/// Bytes per cached piece of a file (the last piece of a file may be shorter).
pub const CHUNK: u64 = 1 << 20;

/// At most this many files have state here (their chunks, or only the mark of their last
/// invalidation); the least recently used goes first, with its chunks.
const MAX_FILES: usize = 65_536;

/// What a file's cached data is checked against: its size and change times (nanoseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Size in bytes.
    pub size: u64,
    /// Last data change (`st_mtime`, ns since the epoch).
    pub mtime: i128,
    /// Last change of anything (`st_ctime`, ns since the epoch).
    pub ctime: i128,
}

/// A fill permit: the cache's invalidation count when the brick read began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket(u64);

/// Counters since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DataStats {
    /// Chunks served from memory.
    pub hits: u64,
    /// Chunks read from the bricks and stored.
    pub fills: u64,
    /// Files whose chunks were dropped by an invalidation.
    pub invalidations: u64,
    /// Bytes held now.
    pub bytes: u64,
}

struct FileState {
    /// The invalidation count at this file's last invalidation.
    changed: u64,
    /// The epoch and stamp its chunks were read under.
    valid: Option<(u64, Stamp)>,
    /// Indexes of its chunks held.
    chunks: BTreeSet<u64>,
}

/// Chunks of files keyed by `K` (the file's id), at most `limit` bytes.
pub struct DataCache<K: Hash + Eq + Copy> {
    limit: u64,
    bytes: u64,
    /// Invalidations so far.
    seq: u64,
    /// The latest invalidation of any file whose state was dropped: its fills in flight are
    /// refused as if it had just been invalidated.
    floor: u64,
    files: LruCache<K, FileState>,
    chunks: LruCache<(K, u64), Arc<Vec<u8>>>,
    stats: DataStats,
}

impl<K: Hash + Eq + Copy> DataCache<K> {
    /// A cache of at most `limit` bytes (0: nothing is ever stored).
    pub fn new(limit: u64) -> Self {
        Self {
            limit,
            bytes: 0,
            seq: 0,
            floor: 0,
            files: LruCache::new(NonZeroUsize::new(MAX_FILES).expect("non-zero")),
            chunks: LruCache::unbounded(),
            stats: DataStats::default(),
        }
    }

    /// Whether anything may be stored.
    pub fn enabled(&self) -> bool {
        self.limit > 0
    }

    /// Taken before reading from the bricks data that may be stored.
    pub fn ticket(&self) -> Ticket {
        Ticket(self.seq)
    }

    /// Chunk `index` of file `key`, if it was read in `epoch` (0 = cache off) while the file's
    /// stamp was `stamp`, and nothing invalidated it since.
    pub fn get(&mut self, key: K, index: u64, epoch: u64, stamp: Stamp) -> Option<Arc<Vec<u8>>> {
        if epoch == 0 {
            return None;
        }
        let f = self.files.get(&key)?;
        if f.valid != Some((epoch, stamp)) {
            return None;
        }
        let c = self.chunks.get(&(key, index)).cloned()?;
        self.stats.hits += 1;
        Some(c)
    }

    /// Stores chunk `index` of `key` read under `ticket` in `epoch` while the file's stamp
    /// was `stamp`, unless an invalidation came since the ticket, the cache is off, or `data`
    /// is not the whole chunk (up to the file's end by `stamp`). A different stamp or epoch
    /// than the file's other chunks drops those. Returns whether it was stored.
    pub fn fill(&mut self, key: K, ticket: Ticket, epoch: u64, stamp: Stamp, index: u64, data: Arc<Vec<u8>>) -> bool {
        let start = index.saturating_mul(CHUNK);
        let whole = CHUNK.min(stamp.size.saturating_sub(start));
        if epoch == 0
            || !self.enabled()
            || whole == 0
            || data.len() as u64 != whole
            || data.capacity() as u64 > self.limit
        {
            return false;
        }
        let changed = self.files.peek(&key).map_or(self.floor, |f| f.changed);
        if ticket.0 < changed {
            return false;
        }
        if !self.files.contains(&key) {
            let fresh = FileState { changed: self.floor, valid: None, chunks: BTreeSet::new() };
            if let Some((old, gone)) = self.files.push(key, fresh) {
                self.dropped(old, gone);
            }
        }
        let f = self.files.get_mut(&key).expect("just put");
        if f.valid != Some((epoch, stamp)) {
            f.valid = Some((epoch, stamp));
            let stale = std::mem::take(&mut f.chunks);
            self.remove_chunks(key, stale);
        }
        let f = self.files.get_mut(&key).expect("still there");
        f.chunks.insert(index);
        self.bytes += data.capacity() as u64;
        if let Some(old) = self.chunks.put((key, index), data) {
            self.bytes -= old.capacity() as u64;
        }
        self.stats.fills += 1;
        self.shrink();
        true
    }

    /// File `key` changed (or may have): its chunks go, and fills begun before now are
    /// refused.
    pub fn invalidate(&mut self, key: K) {
        if !self.enabled() {
            return; // nothing is stored, nothing to refuse
        }
        self.seq += 1;
        let seq = self.seq;
        let stale = match self.files.get_mut(&key) {
            Some(f) => {
                f.changed = seq;
                f.valid = None;
                std::mem::take(&mut f.chunks)
            }
            None => {
                // Remembered so that a fill in flight for it is refused, without refusing
                // every other file's.
                let fresh = FileState { changed: seq, valid: None, chunks: BTreeSet::new() };
                if let Some((old, gone)) = self.files.push(key, fresh) {
                    self.dropped(old, gone);
                }
                BTreeSet::new()
            }
        };
        if !stale.is_empty() {
            self.stats.invalidations += 1;
        }
        self.remove_chunks(key, stale);
    }

    /// Everything goes; fills in flight are refused.
    pub fn clear(&mut self) {
        self.seq += 1;
        self.floor = self.seq;
        self.files.clear();
        self.chunks.clear();
        self.bytes = 0;
    }

    /// The counters, and the bytes held now.
    pub fn stats(&self) -> DataStats {
        DataStats { bytes: self.bytes, ..self.stats }
    }

    /// A file's state left (too many files): its chunks go, and its fills in flight are
    /// refused through the floor.
    fn dropped(&mut self, key: K, state: FileState) {
        self.floor = self.floor.max(state.changed);
        self.remove_chunks(key, state.chunks);
    }

    fn remove_chunks(&mut self, key: K, indexes: BTreeSet<u64>) {
        for i in indexes {
            if let Some(c) = self.chunks.pop(&(key, i)) {
                self.bytes -= c.capacity() as u64;
            }
        }
    }

    fn shrink(&mut self) {
        while self.bytes > self.limit {
            let Some(((key, index), c)) = self.chunks.pop_lru() else { break };
            self.bytes -= c.capacity() as u64;
            if let Some(f) = self.files.peek_mut(&key) {
                f.chunks.remove(&index);
            }
        }
    }
}

/// The chunk indexes holding bytes `offset..offset + len` of a file.
pub fn chunks_of(offset: u64, len: u64) -> std::ops::Range<u64> {
    if len == 0 {
        return 0..0;
    }
    offset / CHUNK..(offset.saturating_add(len) - 1) / CHUNK + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: u32 = 1;

    fn stamp(size: u64) -> Stamp {
        Stamp { size, mtime: 10, ctime: 20 }
    }

    fn chunk(len: u64, byte: u8) -> Arc<Vec<u8>> {
        Arc::new(vec![byte; len as usize])
    }

    #[test]
    fn a_chunk_is_served_under_its_epoch_and_stamp_only() {
        let mut c = DataCache::<u32>::new(8 * CHUNK);
        let s = stamp(3 * CHUNK);
        let t = c.ticket();
        assert!(c.fill(K, t, 1, s, 0, chunk(CHUNK, 7)));
        assert_eq!(c.get(K, 0, 1, s).unwrap()[0], 7);
        assert!(c.get(K, 1, 1, s).is_none(), "not filled");
        assert!(c.get(K, 0, 2, s).is_none(), "another epoch");
        assert!(c.get(K, 0, 0, s).is_none(), "cache off");
        assert!(c.get(K, 0, 1, Stamp { ctime: 21, ..s }).is_none(), "changed ctime");
        assert!(c.get(K, 0, 1, stamp(3 * CHUNK + 1)).is_none(), "changed size");
        assert!(c.get(2, 0, 1, s).is_none(), "another file");
        assert_eq!(c.stats().hits, 1);
    }

    #[test]
    fn only_whole_chunks_are_stored() {
        let mut c = DataCache::<u32>::new(8 * CHUNK);
        let s = stamp(CHUNK + 100);
        let t = c.ticket();
        assert!(!c.fill(K, t, 1, s, 0, chunk(CHUNK - 1, 1)), "short of the chunk");
        assert!(!c.fill(K, t, 1, s, 1, chunk(99, 1)), "short of the file's end");
        assert!(c.fill(K, t, 1, s, 1, chunk(100, 1)), "the file's last chunk");
        assert!(!c.fill(K, t, 1, s, 2, chunk(0, 1)), "past the end");
        assert!(!c.fill(K, t, 0, s, 0, chunk(CHUNK, 1)), "cache off");
        assert!(!DataCache::<u32>::new(0).fill(K, t, 1, s, 0, chunk(CHUNK, 1)), "size 0: off");
    }

    #[test]
    fn an_invalidation_drops_the_file_and_refuses_fills_begun_before_it() {
        let mut c = DataCache::<u32>::new(8 * CHUNK);
        let s = stamp(2 * CHUNK);
        let t = c.ticket();
        assert!(c.fill(K, t, 1, s, 0, chunk(CHUNK, 1)));
        assert!(c.fill(2, t, 1, s, 0, chunk(CHUNK, 1)));
        c.invalidate(K);
        assert!(c.get(K, 0, 1, s).is_none());
        assert!(c.get(2, 0, 1, s).is_some(), "another file keeps its data");
        assert!(!c.fill(K, t, 1, s, 1, chunk(CHUNK, 1)), "read before the change");
        assert!(c.fill(2, t, 1, s, 1, chunk(CHUNK, 1)), "another file's fill is not refused");
        // A file with nothing cached yet: the invalidation still refuses its fills in flight.
        let t = c.ticket();
        c.invalidate(3);
        assert!(!c.fill(3, t, 1, s, 0, chunk(CHUNK, 1)));
        let t = c.ticket();
        assert!(c.fill(K, t, 1, s, 0, chunk(CHUNK, 2)));
        assert_eq!(c.get(K, 0, 1, s).unwrap()[0], 2);
        assert_eq!(c.stats().bytes, 3 * CHUNK);
        c.clear();
        assert!(c.get(2, 0, 1, s).is_none());
        assert!(!c.fill(2, t, 1, s, 0, chunk(CHUNK, 1)), "begun before the clear");
        assert_eq!(c.stats().bytes, 0);
    }

    #[test]
    fn a_new_stamp_replaces_the_old_chunks() {
        let mut c = DataCache::<u32>::new(8 * CHUNK);
        let t = c.ticket();
        assert!(c.fill(K, t, 1, stamp(2 * CHUNK), 0, chunk(CHUNK, 1)));
        assert!(c.fill(K, t, 1, stamp(2 * CHUNK), 1, chunk(CHUNK, 1)));
        assert!(c.fill(K, t, 1, stamp(CHUNK), 0, chunk(CHUNK, 2)));
        assert_eq!(c.stats().bytes, CHUNK, "the chunks of the old stamp went");
        assert!(c.get(K, 1, 1, stamp(2 * CHUNK)).is_none());
        assert!(c.fill(K, t, 2, stamp(CHUNK), 0, chunk(CHUNK, 3)), "a new epoch");
        assert!(c.get(K, 0, 1, stamp(CHUNK)).is_none());
        assert_eq!(c.get(K, 0, 2, stamp(CHUNK)).unwrap()[0], 3);
    }

    #[test]
    fn bytes_stay_under_the_limit_least_recently_used_out() {
        let mut c = DataCache::<u32>::new(3 * CHUNK);
        let s = stamp(8 * CHUNK);
        let t = c.ticket();
        for i in 0..3 {
            assert!(c.fill(K, t, 1, s, i, chunk(CHUNK, i as u8)));
        }
        assert!(c.get(K, 0, 1, s).is_some()); // 0 is now the most recent
        assert!(c.fill(K, t, 1, s, 3, chunk(CHUNK, 3)));
        assert_eq!(c.stats().bytes, 3 * CHUNK);
        assert!(c.get(K, 1, 1, s).is_none(), "the least recently used went");
        for i in [0, 2, 3] {
            assert!(c.get(K, i, 1, s).is_some(), "chunk {i}");
        }
        // An invalidation after an eviction drops what is left, no more (no underflow).
        c.invalidate(K);
        assert_eq!(c.stats().bytes, 0);
    }

    #[test]
    fn chunk_ranges() {
        assert_eq!(chunks_of(0, 0), 0..0);
        assert_eq!(chunks_of(0, 1), 0..1);
        assert_eq!(chunks_of(0, CHUNK), 0..1);
        assert_eq!(chunks_of(CHUNK - 1, 2), 0..2);
        assert_eq!(chunks_of(3 * CHUNK, 8 * CHUNK), 3..11);
        assert_eq!(chunks_of(u64::MAX - 1, 5), (u64::MAX - 1) / CHUNK..u64::MAX / CHUNK + 1);
    }

    #[test]
    fn tickets_interleave_like_the_backend_threads() {
        // Random interleavings of read-begin, fill, change (invalidate) over two files and a
        // tiny cache: a chunk served is never one read before the file's last change.
        let mut seed = 0x9E3779B97F4A7C15u64;
        for _ in 0..1000 {
            let mut c = DataCache::<u32>::new(2 * CHUNK);
            let mut version = [0u8; 2];
            let mut inflight: Vec<(u32, Ticket, u8)> = Vec::new();
            let s = stamp(CHUNK);
            for _ in 0..30 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let k = (seed >> 8) as u32 % 2;
                match seed % 4 {
                    0 | 1 => inflight.push((k, c.ticket(), version[k as usize])),
                    2 => {
                        if let Some((k, t, v)) = inflight.pop() {
                            c.fill(k, t, 1, s, 0, chunk(CHUNK, v));
                        }
                    }
                    _ => {
                        version[k as usize] += 1;
                        c.invalidate(k);
                    }
                }
                for k in 0..2u32 {
                    if let Some(d) = c.get(k, 0, 1, s) {
                        assert_eq!(d[0], version[k as usize], "stale data served for file {k}");
                    }
                }
            }
        }
    }
}
