//! The process's descriptor budget as arithmetic (pure): from the open-files limit
//! (`RLIMIT_NOFILE`), what is kept for everything but client connections, how many
//! connection sockets may be open, and how many SMB connection threads fit beside them.
//!
//! Every descriptor nasgw holds is one of:
//! - **fixed** ([`FIXED_RESERVE`]): listeners, the control socket, logs, the cluster mesh and
//!   HA's sockets, inotify, the FUSE device, gfapi's connections to the bricks;
//! - **files** ([`files_share`], a third of the limit): the namespace's cache of open files
//!   and directories (the POSIX backend caps its cache at this share) and the files clients
//!   have open;
//! - **connection sockets**: one per client connection (SMB, NFS), at most [`Budget::sockets`];
//!   past it new connections wait in the listeners' backlog;
//! - **connection threads**: an SMB connection at work has a thread with a tokio runtime of
//!   its own, [`THREAD_DESCRIPTORS`] descriptors; a dormant connection has none.
//!
//! Sockets and threads share [`Budget::pool`], what the reserve leaves; sockets may take all
//! of it but [`Budget::min_threads`] threads' worth, so connections waiting for a thread
//! always get one in turn.

use std::time::Duration;

/// Descriptors kept for what does not grow with clients: listeners (SMB, NFS, MOUNT, NLM,
/// portmapper, metrics, DNS: TCP and UDP), the control socket, stdio and logs, the cluster
/// mesh (a link per peer) and HA's sockets (heartbeats, netlink, raw ARP and TCP), inotify,
/// the FUSE mount's threads (4, each with its clone of the device and a runtime: 20), and
/// gfapi's connections to glusterd and each brick.
pub const FIXED_RESERVE: usize = 128;

/// The files share is 1/this of the limit (see [`files_share`]).
pub const FILES_DIVISOR: usize = 3;

/// Descriptors one SMB connection thread holds beyond its connection's socket: its tokio
/// runtime's epoll instance, the clone of it the I/O driver registers through, the eventfd
/// that wakes it, and the signal driver's copy of the process's signal pipe. Measured: a
/// connection that has negotiated holds 5 descriptors while on its thread, 1 once dormant
/// (`smb::conn`'s test counts what a runtime really costs).
pub const THREAD_DESCRIPTORS: usize = 4;

/// At least 1/this of [`Budget::pool`] is left to threads (see [`Budget::min_threads`]).
pub const THREAD_FLOOR_DIVISOR: usize = 8;

/// Highest limit counted: beyond it (or `RLIM_INFINITY`) nothing runs short, and the figures
/// stay well inside what a semaphore can count.
pub const MAX_COUNTED: u64 = 1 << 30;

/// Descriptors for files out of `limit`: the namespace's cache of open files and directories
/// is capped at this many entries.
pub fn files_share(limit: usize) -> usize {
    limit / FILES_DIVISOR
}

/// How the process's descriptors are shared out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// The open-files limit.
    pub limit: usize,
    /// Kept for fixed descriptors and files (never more than half the limit).
    pub reserved: usize,
    /// What connection sockets and connection threads share: `limit - reserved`.
    pub pool: usize,
    /// Most connection sockets open at once.
    pub sockets: usize,
}

impl Budget {
    /// The budget of a process allowed `limit` open files.
    pub fn new(limit: u64) -> Self {
        let limit = limit.min(MAX_COUNTED) as usize;
        let reserved = (FIXED_RESERVE + files_share(limit)).min(limit / 2);
        let pool = limit - reserved;
        // Whole threads, and at least one.
        let floor = (pool / THREAD_FLOOR_DIVISOR / THREAD_DESCRIPTORS).max(1) * THREAD_DESCRIPTORS;
        Budget { limit, reserved, pool, sockets: pool.saturating_sub(floor) }
    }

    /// Connection threads that fit however many sockets are open.
    pub fn min_threads(&self) -> usize {
        (self.pool - self.sockets) / THREAD_DESCRIPTORS
    }

    /// Connection threads that fit beside `sockets` open connection sockets.
    pub fn threads_beside(&self, sockets: usize) -> usize {
        (self.pool - sockets.min(self.sockets)) / THREAD_DESCRIPTORS
    }
}

/// How long to wait before trying again what failed `failures` times in a row for want of a
/// resource (a thread, a runtime, a descriptor for `accept`): 10 ms, doubling, at most 1 s.
/// Short enough that a freed descriptor is soon used, long enough that a process out of
/// descriptors does not spin.
pub fn retry_pause(failures: u32) -> Duration {
    Duration::from_millis(10u64 << failures.saturating_sub(1).min(7)).min(Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_of_some_limits() {
        // limit, reserved, pool, sockets, min threads, threads beside 150 sockets
        let table: &[(u64, usize, usize, usize, usize, usize)] = &[
            (64, 32, 32, 28, 1, 1),
            (512, 256, 256, 224, 8, 26),
            (640, 320, 320, 280, 10, 42),
            (1024, 469, 555, 487, 17, 101),
            (20_000, 6794, 13_206, 11_558, 412, 3264),
            (1 << 20, 349_653, 698_923, 611_559, 21_841, 174_693),
        ];
        for &(limit, reserved, pool, sockets, min, beside) in table {
            let b = Budget::new(limit);
            let got = (b.reserved, b.pool, b.sockets, b.min_threads(), b.threads_beside(150));
            assert_eq!(got, (reserved, pool, sockets, min, beside), "limit {limit}");
        }
        // The bench's 10,000 idle SMB connections under this machine's cap of 20,000.
        let b = Budget::new(20_000);
        assert!(b.sockets > 10_000 + 64);
        assert_eq!(b.threads_beside(10_065), 785);
        assert_eq!(Budget::new(u64::MAX), Budget::new(MAX_COUNTED), "RLIM_INFINITY");
    }

    #[test]
    fn every_limit_leaves_room_for_a_thread_and_keeps_its_reserve() {
        for limit in (64..5000).chain((5000..2_000_000).step_by(997)) {
            let b = Budget::new(limit);
            assert_eq!(b.reserved + b.pool, limit as usize, "limit {limit}");
            assert!(b.reserved >= (limit as usize / 2).min(FIXED_RESERVE), "limit {limit}");
            assert!(b.sockets >= 1 && b.min_threads() >= 1, "limit {limit}: {b:?}");
            // Sockets at their most still leave min_threads whole threads.
            assert!(b.sockets + b.min_threads() * THREAD_DESCRIPTORS <= b.pool, "limit {limit}");
            assert!(b.threads_beside(usize::MAX) == b.min_threads());
            assert!(b.threads_beside(0) * THREAD_DESCRIPTORS <= b.pool);
        }
    }

    #[test]
    fn retries_back_off_to_a_second() {
        let pauses: Vec<u64> = (1..=10).map(|n| retry_pause(n).as_millis() as u64).collect();
        assert_eq!(pauses, [10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000]);
        assert_eq!(retry_pause(0), Duration::from_millis(10));
        assert_eq!(retry_pause(u32::MAX), Duration::from_secs(1));
    }
}
