//! Prometheus metrics (`[metrics] listen`): what an admin graphs and alerts on.
//!
//! The request hot path only touches process-wide atomic tables ([`SMB`], [`NFS`], [`MOUNT`],
//! [`CONNECTIONS`]): one [`ProtocolStats::request`] call per request,
//! a handful of relaxed atomic adds, no lock. Everything else (cluster state, public address
//! owners, locks, volume health) is read only when Prometheus scrapes, through the same
//! [`crate::control::Handler`] the control socket answers from. The text is encoded by the
//! maintained `prometheus-client` crate (OpenMetrics text format) and served by `hyper`.
//!
//! Names follow the Prometheus conventions: `nasgw_` prefix, base units (seconds, bytes),
//! `_total` for counters; see the README's metrics table.

pub mod collect;
pub mod ops;
pub mod serve;

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::LazyLock;
use std::time::Instant;

pub use ops::{OpSlot, OpTable, StatusCounts};

/// Counters of one protocol.
#[derive(Debug)]
pub struct ProtocolStats {
    /// `protocol` label value.
    pub name: &'static str,
    /// Requests and latency by operation.
    pub ops: OpTable,
    /// Replies by status code (success not counted).
    pub statuses: StatusCounts,
    /// File data read for clients (bytes).
    pub read_bytes: AtomicU64,
    /// File data written by clients (bytes).
    pub written_bytes: AtomicU64,
    /// The part of `read_bytes` sent with `sendfile`, from the page cache straight to the
    /// socket (the rest was copied through memory): says which path served a read workload.
    pub sendfile_bytes: AtomicU64,
    /// The part of `sendfile_bytes` that went through a pooled 1 MiB pipe in one piece (the
    /// rest of it, by `sendfile`, reached TCP 64 KiB at a time): says whether the pool ran dry.
    pub spliced_bytes: AtomicU64,
}

impl ProtocolStats {
    fn new(name: &'static str, ops: &'static [&'static str]) -> Self {
        Self {
            name,
            ops: OpTable::new(ops),
            statuses: StatusCounts::default(),
            read_bytes: AtomicU64::new(0),
            written_bytes: AtomicU64::new(0),
            sendfile_bytes: AtomicU64::new(0),
            spliced_bytes: AtomicU64::new(0),
        }
    }

    /// Counts one request of operation `op` started at `started`, answered with `status`
    /// (0 = success, not counted as an error).
    #[inline]
    pub fn request(&self, op: usize, started: Instant, status: u32) {
        self.ops.slot(op).record(started.elapsed());
        if status != 0 {
            self.statuses.record(status);
        }
    }

    /// Counts file data read for a client.
    #[inline]
    pub fn read(&self, bytes: usize) {
        self.read_bytes.fetch_add(bytes as u64, Relaxed);
    }

    /// Counts file data read for a client that goes out with `sendfile` (also counted by
    /// [`ProtocolStats::read`]).
    #[inline]
    pub fn read_by_sendfile(&self, bytes: usize) {
        self.sendfile_bytes.fetch_add(bytes as u64, Relaxed);
    }

    /// Counts file data read for a client that went out through a pooled pipe (also counted
    /// by [`ProtocolStats::read_by_sendfile`]).
    #[inline]
    pub fn read_by_splice(&self, bytes: usize) {
        self.spliced_bytes.fetch_add(bytes as u64, Relaxed);
    }

    /// Counts file data a client wrote.
    #[inline]
    pub fn written(&self, bytes: usize) {
        self.written_bytes.fetch_add(bytes as u64, Relaxed);
    }
}

/// Status codes of RPC-level failures (no procedure result), beyond every nfsstat3 value.
pub const RPC_FAILURE_BASE: u32 = 1_000_000;

/// The status of an ONC RPC reply record (record mark first): the procedure's status word
/// (nfsstat3 / mountstat3) of an accepted, successful call, `RPC_FAILURE_BASE + accept_stat`
/// for an accepted call that failed at the RPC level, `RPC_FAILURE_BASE + 100` for a denied
/// one. Pure; never panics on a short buffer (counted as an RPC failure).
pub fn rpc_reply_status(reply: &[u8]) -> u32 {
    let word = |at: usize| reply.get(at..at + 4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
    // mark | xid | msg_type | reply_stat | verifier flavor | verifier length (0) | accept_stat | result
    match (word(12), word(24)) {
        (Some(0), Some(0)) => word(28).unwrap_or(0),
        (Some(0), Some(accept)) => RPC_FAILURE_BASE + accept.min(99),
        _ => RPC_FAILURE_BASE + 100,
    }
}

/// SMB2 command names by command code (MS-SMB2 2.2.1).
pub const SMB_OPS: &[&str] = &[
    "negotiate",
    "session_setup",
    "logoff",
    "tree_connect",
    "tree_disconnect",
    "create",
    "close",
    "flush",
    "read",
    "write",
    "lock",
    "ioctl",
    "cancel",
    "echo",
    "query_directory",
    "change_notify",
    "query_info",
    "set_info",
    "oplock_break",
];

/// NFSv3 procedure names by number (RFC 1813).
pub const NFS_OPS: &[&str] = &[
    "null",
    "getattr",
    "setattr",
    "lookup",
    "access",
    "readlink",
    "read",
    "write",
    "create",
    "mkdir",
    "symlink",
    "mknod",
    "remove",
    "rmdir",
    "rename",
    "link",
    "readdir",
    "readdirplus",
    "fsstat",
    "fsinfo",
    "pathconf",
    "commit",
];

/// MOUNT v3 procedure names by number.
pub const MOUNT_OPS: &[&str] = &["null", "mnt", "dump", "umnt", "umntall", "export"];

/// SMB 2/3 requests.
pub static SMB: LazyLock<ProtocolStats> = LazyLock::new(|| ProtocolStats::new("smb", SMB_OPS));
/// NFSv3 requests.
pub static NFS: LazyLock<ProtocolStats> = LazyLock::new(|| ProtocolStats::new("nfs", NFS_OPS));
/// MOUNT v3 requests.
pub static MOUNT: LazyLock<ProtocolStats> = LazyLock::new(|| ProtocolStats::new("mount", MOUNT_OPS));

/// Services whose client connections are counted (the `protocol` label of the connection
/// metrics); anything else counts as `other`.
const SERVICES: [&str; 3] = ["smb", "nfs", "echo"];

/// Client connections per service: open now and accepted since start.
#[derive(Debug, Default)]
pub struct ConnectionStats {
    open: [AtomicI64; SERVICES.len() + 1],
    accepted: [AtomicU64; SERVICES.len() + 1],
}

impl ConnectionStats {
    fn index(service: &str) -> usize {
        SERVICES.iter().position(|s| *s == service).unwrap_or(SERVICES.len())
    }

    /// Counts a connection accepted by `service`; it counts as open until the guard drops.
    pub fn opened(&'static self, service: &str) -> OpenConnection {
        let i = Self::index(service);
        self.open[i].fetch_add(1, Relaxed);
        self.accepted[i].fetch_add(1, Relaxed);
        OpenConnection { stats: self, index: i }
    }

    /// (service, open now, accepted since start) for every service that ever had one.
    pub fn snapshot(&self) -> Vec<(&'static str, i64, u64)> {
        (0..=SERVICES.len())
            .filter(|i| self.accepted[*i].load(Relaxed) > 0)
            .map(|i| {
                (
                    SERVICES.get(i).copied().unwrap_or("other"),
                    self.open[i].load(Relaxed),
                    self.accepted[i].load(Relaxed),
                )
            })
            .collect()
    }
}

/// Keeps one connection counted as open.
#[derive(Debug)]
pub struct OpenConnection {
    stats: &'static ConnectionStats,
    index: usize,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.stats.open[self.index].fetch_sub(1, Relaxed);
    }
}

/// Client connections of every service.
pub static CONNECTIONS: LazyLock<ConnectionStats> = LazyLock::new(ConnectionStats::default);

/// Volume health probes: latency and verdict.
#[derive(Debug, Default)]
pub struct VolumeProbes {
    /// Probe durations.
    pub latency: OpSlot,
    /// Probes that failed (unreachable, hung, quorum lost).
    pub failures: AtomicU64,
    /// Last verdict: 1 healthy, 0 not, -1 never probed.
    pub healthy: AtomicI64,
}

impl VolumeProbes {
    /// Records one probe.
    pub fn record(&self, took: std::time::Duration, ok: bool) {
        self.latency.record(took);
        if !ok {
            self.failures.fetch_add(1, Relaxed);
        }
        self.healthy.store(i64::from(ok), Relaxed);
    }
}

/// The volume's health probes (GlusterFS backend probe, or HA's probe of a shared directory).
pub static VOLUME: LazyLock<VolumeProbes> =
    LazyLock::new(|| VolumeProbes { healthy: AtomicI64::new(-1), ..VolumeProbes::default() });

/// When this process started (for uptime and `nasgw_start_time_seconds`).
pub static STARTED: LazyLock<std::time::SystemTime> = LazyLock::new(std::time::SystemTime::now);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nfs::rpc::{begin_reply, finish_reply, AuthFailure, ReplyStatus};

    #[test]
    fn rpc_reply_statuses_are_read_from_the_reply_record() {
        let mut ok = begin_reply(7, ReplyStatus::Success, 8);
        ok.extend_from_slice(&70u32.to_be_bytes()); // NFS3ERR_STALE
        assert_eq!(rpc_reply_status(&finish_reply(ok)), 70);
        let mut fine = begin_reply(7, ReplyStatus::Success, 8);
        fine.extend_from_slice(&0u32.to_be_bytes());
        assert_eq!(rpc_reply_status(&finish_reply(fine)), 0);
        assert_eq!(rpc_reply_status(&finish_reply(begin_reply(7, ReplyStatus::GarbageArgs, 0))), RPC_FAILURE_BASE + 4);
        let denied = begin_reply(7, ReplyStatus::AuthError(AuthFailure::TooWeak), 0);
        assert_eq!(rpc_reply_status(&finish_reply(denied)), RPC_FAILURE_BASE + 100);
        for n in 0..40 {
            rpc_reply_status(&vec![0; n]);
        }
    }
}
