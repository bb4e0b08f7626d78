//! Per-operation counters for the request hot path: a fixed table of atomics per protocol, one
//! slot per operation code, so recording a request is a handful of relaxed atomic adds (no
//! lock, no allocation, no hashing). The Prometheus collector reads the tables at scrape time.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds of the latency histogram buckets, in nanoseconds (50 µs .. 10 s).
pub const BUCKETS_NS: [u64; 17] = [
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// The index of the first bucket whose bound holds `ns` (`BUCKETS_NS.len()` = only `+Inf`).
pub fn bucket_of(ns: u64) -> usize {
    BUCKETS_NS.iter().position(|b| ns <= *b).unwrap_or(BUCKETS_NS.len())
}

/// Counters of one operation.
#[derive(Debug, Default)]
pub struct OpSlot {
    /// Requests seen.
    pub count: AtomicU64,
    /// Sum of their durations (ns).
    pub sum_ns: AtomicU64,
    /// Per bucket (not cumulative), the last one is `+Inf`.
    pub buckets: [AtomicU64; BUCKETS_NS.len() + 1],
}

impl OpSlot {
    /// Counts one request that took `took`.
    pub fn record(&self, took: Duration) {
        let ns = took.as_nanos().min(u64::MAX as u128) as u64;
        self.count.fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(ns, Relaxed);
        self.buckets[bucket_of(ns)].fetch_add(1, Relaxed);
    }

    /// (sum in seconds, count, cumulative buckets with bounds in seconds) as Prometheus wants.
    pub fn histogram(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut acc = 0;
        let mut out = Vec::with_capacity(BUCKETS_NS.len() + 1);
        for (i, b) in self.buckets.iter().enumerate() {
            acc += b.load(Relaxed);
            let bound = BUCKETS_NS.get(i).map_or(f64::INFINITY, |ns| *ns as f64 / 1e9);
            out.push((bound, acc));
        }
        // Count from the buckets, so count and +Inf agree even while requests are recorded.
        (self.sum_ns.load(Relaxed) as f64 / 1e9, acc, out)
    }
}

/// The operations of one protocol, by operation code.
#[derive(Debug)]
pub struct OpTable {
    /// Operation names by code; codes beyond the list count as `other`.
    pub names: &'static [&'static str],
    slots: Vec<OpSlot>,
}

impl OpTable {
    /// A table for operations `names` (index = code) plus `other`.
    pub fn new(names: &'static [&'static str]) -> Self {
        Self { names, slots: (0..=names.len()).map(|_| OpSlot::default()).collect() }
    }

    /// The slot of operation `code`.
    pub fn slot(&self, code: usize) -> &OpSlot {
        &self.slots[code.min(self.names.len())]
    }

    /// Every operation seen at least once: (name, slot).
    pub fn seen(&self) -> impl Iterator<Item = (&'static str, &OpSlot)> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.count.load(Relaxed) > 0)
            .map(|(i, s)| (self.names.get(i).copied().unwrap_or("other"), s))
    }
}

/// How many distinct status codes one protocol counts (more are summed as `other`).
const STATUS_SLOTS: usize = 64;

/// Replies by status code, lock-free: a small open-addressed table whose keys are claimed
/// with a compare-and-swap the first time a code is seen.
#[derive(Debug)]
pub struct StatusCounts {
    keys: [AtomicU32; STATUS_SLOTS],
    counts: [AtomicU64; STATUS_SLOTS],
    other: AtomicU64,
}

/// Marks a free slot (no protocol uses this status value).
const FREE: u32 = u32::MAX;

impl Default for StatusCounts {
    fn default() -> Self {
        Self {
            keys: std::array::from_fn(|_| AtomicU32::new(FREE)),
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            other: AtomicU64::new(0),
        }
    }
}

impl StatusCounts {
    /// Counts one reply with status `code`.
    pub fn record(&self, code: u32) {
        if code == FREE {
            self.other.fetch_add(1, Relaxed);
            return;
        }
        let start = (code.wrapping_mul(0x9E37_79B1) >> 26) as usize % STATUS_SLOTS;
        for i in 0..STATUS_SLOTS {
            let at = (start + i) % STATUS_SLOTS;
            let k = self.keys[at].load(Relaxed);
            if k == code {
                self.counts[at].fetch_add(1, Relaxed);
                return;
            }
            if k == FREE {
                match self.keys[at].compare_exchange(FREE, code, Relaxed, Relaxed) {
                    Ok(_) => {
                        self.counts[at].fetch_add(1, Relaxed);
                        return;
                    }
                    Err(now) if now == code => {
                        self.counts[at].fetch_add(1, Relaxed);
                        return;
                    }
                    Err(_) => {}
                }
            }
        }
        self.other.fetch_add(1, Relaxed);
    }

    /// Every code seen with its count, and the count of codes that did not fit (`None`).
    pub fn snapshot(&self) -> Vec<(Option<u32>, u64)> {
        let mut out: Vec<(Option<u32>, u64)> = self
            .keys
            .iter()
            .zip(&self.counts)
            .filter_map(|(k, c)| {
                let k = k.load(Relaxed);
                (k != FREE).then(|| (Some(k), c.load(Relaxed)))
            })
            .collect();
        out.sort();
        let other = self.other.load(Relaxed);
        if other > 0 {
            out.push((None, other));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_land_in_the_first_bucket_that_holds_them() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(50_000), 0);
        assert_eq!(bucket_of(50_001), 1);
        assert_eq!(bucket_of(10_000_000_000), BUCKETS_NS.len() - 1);
        assert_eq!(bucket_of(u64::MAX), BUCKETS_NS.len());
        let s = OpSlot::default();
        s.record(Duration::from_micros(30));
        s.record(Duration::from_millis(3));
        s.record(Duration::from_secs(60));
        let (sum, count, buckets) = s.histogram();
        assert_eq!(count, 3);
        assert!((sum - 60.00303).abs() < 1e-6, "{sum}");
        assert_eq!(buckets[0], (0.00005, 1));
        assert_eq!(buckets[6], (0.005, 2), "cumulative");
        assert_eq!(*buckets.last().unwrap(), (f64::INFINITY, 3));
    }

    #[test]
    fn unknown_codes_count_as_other_and_unseen_ones_are_not_listed() {
        let t = OpTable::new(&["null", "getattr"]);
        t.slot(1).record(Duration::from_micros(1));
        t.slot(99).record(Duration::from_micros(1));
        let seen: Vec<&str> = t.seen().map(|(n, _)| n).collect();
        assert_eq!(seen, ["getattr", "other"]);
    }

    #[test]
    fn status_codes_are_counted_until_the_table_is_full() {
        let s = StatusCounts::default();
        for code in 0..100u32 {
            s.record(0xC000_0000 | code);
            s.record(0xC000_0000 | code);
        }
        s.record(FREE);
        let snap = s.snapshot();
        assert_eq!(snap.iter().filter(|(k, _)| k.is_some()).count(), STATUS_SLOTS);
        assert!(snap.iter().filter(|(k, _)| k.is_some()).all(|(_, c)| *c == 2));
        assert_eq!(snap.last(), Some(&(None, 2 * (100 - STATUS_SLOTS as u64) + 1)));
    }

    #[test]
    fn recording_a_request_costs_nanoseconds() {
        // The hot path's whole cost: one Instant::now at dispatch and one record per request.
        let slot = OpSlot::default();
        let statuses = StatusCounts::default();
        let n = 200_000u32;
        let t = std::time::Instant::now();
        for i in 0..n {
            let started = std::time::Instant::now();
            slot.record(started.elapsed());
            if i % 16 == 0 {
                statuses.record(0xC000_0034);
            }
        }
        let per = t.elapsed() / n;
        println!("one request recorded in {per:?} (clock reads included, debug build: {})", cfg!(debug_assertions));
        // A small SMB or NFS request takes tens of microseconds; this must stay far below
        // (a release build measured ~0.2 µs on the loaded CI machine; debug code is ~20x slower).
        let limit = if cfg!(debug_assertions) { Duration::from_micros(40) } else { Duration::from_micros(2) };
        assert!(per < limit, "{per:?}");
    }

    #[test]
    fn concurrent_recording_loses_nothing() {
        let s = std::sync::Arc::new(StatusCounts::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000u32 {
                        s.record(i % 10);
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        let total: u64 = s.snapshot().iter().map(|(_, c)| c).sum();
        assert_eq!(total, 40_000);
    }
}
