//! The process's descriptors, shared out so that a storm of new connections (thousands of
//! clients reconnecting to the node that took over their address) waits instead of running
//! the process out of them: past the budget, `accept` would fail, and so would every file a
//! working client opens.
//!
//! [`budget`] is the arithmetic. [`Descriptors`] holds it as two fair (FIFO) semaphores
//! counting descriptors: the accept loop takes one for each connection's socket before it
//! accepts ([`Descriptors::socket`]), an SMB connection takes
//! [`budget::THREAD_DESCRIPTORS`] for its thread before starting it
//! ([`Descriptors::thread`]), waiting on the daemon's runtime meanwhile (its client's bytes
//! wait in the socket).

pub mod budget;

use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use budget::Budget;

/// How often, at most, running short is logged: a storm must not flood the log too.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// The descriptors connections may use, handed out in turn.
#[derive(Debug)]
pub struct Descriptors {
    budget: Budget,
    /// Connection sockets ([`Budget::sockets`]).
    sockets: Arc<Semaphore>,
    /// What sockets and threads share ([`Budget::pool`]).
    pool: Arc<Semaphore>,
    /// When sockets, and threads, last ran short in the log.
    logged: [Mutex<Option<Instant>>; 2],
}

/// A connection's socket counted in the budget; given back when dropped.
#[derive(Debug)]
pub struct SocketPermit {
    _socket: OwnedSemaphorePermit,
    _pool: OwnedSemaphorePermit,
}

/// An SMB connection thread's descriptors counted in the budget; given back when dropped
/// (after the thread's runtime, which holds them, is gone).
#[derive(Debug)]
pub struct ThreadPermit(#[allow(dead_code)] OwnedSemaphorePermit);

impl Descriptors {
    /// Hands out `budget`.
    pub fn new(budget: Budget) -> Self {
        Descriptors {
            budget,
            sockets: Arc::new(Semaphore::new(budget.sockets)),
            pool: Arc::new(Semaphore::new(budget.pool)),
            logged: [Mutex::new(None), Mutex::new(None)],
        }
    }

    /// The budget handed out.
    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// Waits until one more connection socket fits, and counts it.
    pub async fn socket(&self, service: &str) -> SocketPermit {
        let socket = match self.sockets.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                self.short(0, service, "connection sockets at their most: new connections wait in the backlog");
                self.sockets.clone().acquire_owned().await.expect("never closed")
            }
        };
        let pool = self.pool.clone().acquire_owned().await.expect("never closed");
        SocketPermit { _socket: socket, _pool: pool }
    }

    /// Waits until one more connection thread fits, and counts it.
    pub async fn thread(&self) -> ThreadPermit {
        let n = budget::THREAD_DESCRIPTORS as u32;
        match self.pool.clone().try_acquire_many_owned(n) {
            Ok(p) => ThreadPermit(p),
            Err(_) => {
                self.short(
                    1,
                    "smb",
                    "every connection thread the descriptors allow is taken: connections wait for one",
                );
                ThreadPermit(self.pool.clone().acquire_many_owned(n).await.expect("never closed"))
            }
        }
    }

    /// Logs (at most once per [`LOG_EVERY`] for each `kind`) that connections wait: `what`.
    fn short(&self, kind: usize, service: &str, what: &str) {
        let mut last = self.logged[kind].lock().unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
            *last = Some(Instant::now());
            let b = &self.budget;
            tracing::warn!(
                service,
                open_files_limit = b.limit,
                reserved = b.reserved,
                sockets = b.sockets,
                "{what} (raise the open-files limit, LimitNOFILE, to serve more at once)"
            );
        }
    }
}

/// The process's descriptors: its open-files limit raised to the hard limit, then shared
/// out by [`Budget::new`]. Made on first use.
pub fn process() -> &'static Arc<Descriptors> {
    static PROCESS: LazyLock<Arc<Descriptors>> =
        LazyLock::new(|| Arc::new(Descriptors::new(Budget::new(raise_nofile()))));
    &PROCESS
}

/// `RLIMIT_NOFILE` raised to its hard limit; returns the new soft limit.
pub fn raise_nofile() -> u64 {
    // SAFETY: getrlimit and setrlimit read and write a valid struct.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                return want.rlim_cur;
            }
        }
        lim.rlim_cur
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn threads_wait_for_descriptors_in_turn_and_sockets_leave_them_some() {
        // 64: a pool of 32, 28 of them for sockets, a thread (4) always left.
        let d = Arc::new(Descriptors::new(Budget::new(64)));
        let mut sockets = Vec::new();
        for _ in 0..28 {
            sockets.push(d.socket("test").await);
        }
        let thread =
            tokio::time::timeout(Duration::from_secs(5), d.thread()).await.expect("a thread beside the most sockets");
        assert_eq!((d.sockets.available_permits(), d.pool.available_permits()), (0, 0));
        let more = tokio::spawn({
            let d = d.clone();
            async move { d.socket("test").await }
        });
        let second = tokio::spawn({
            let d = d.clone();
            async move { d.thread().await }
        });
        drop(thread);
        let second = tokio::time::timeout(Duration::from_secs(5), second).await.expect("the waiter's turn").unwrap();
        drop(sockets.pop());
        let _more = tokio::time::timeout(Duration::from_secs(5), more).await.expect("a freed socket").unwrap();
        drop(second);
    }
}
