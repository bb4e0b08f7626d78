//! [`DiskPool`]: threads of their own for backend calls that wait for the disk, so that they
//! hold neither a runtime worker nor a lock of the caller's: [`SYNCS`] runs the `fsync` of an
//! NFS COMMIT or an SMB FLUSH, [`CLOSES`] the last close of a cached descriptor (where the
//! file system frees a removed file: on ext4 mounted with `discard`, a synchronous discard).
//!
//! Why not `block_in_place`: it hands the worker's core to another thread through tokio's
//! blocking pool on every call, under that pool's one lock, which spins with `sched_yield`
//! when contended (parking_lot's lock, which tokio's `full` feature selects). Sixteen NFS
//! clients each creating and committing files (issue 17) made nasgw call `sched_yield` about
//! once per file, 0.7 ms each at load 8, against 3.5 ms per `fsync`: each yield gave the core
//! away for a time slice while the worker's other clients waited. Here a call is queued under
//! a std mutex (which parks a waiter, never yields), one of at most `max` threads runs it, and
//! its caller awaits the answer without blocking its worker. Threads start when a call finds
//! none idle and leave after `keep_alive` without work.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Condvar, LazyLock, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

type Job = Box<dyn FnOnce() + Send>;

/// Syncs (`fsync`) of every volume: at most this many at once, more than a disk or a
/// GlusterFS volume serves in parallel.
pub static SYNCS: LazyLock<DiskPool> = LazyLock::new(|| DiskPool::new("nasgw-sync", 64, KEEP_ALIVE));

/// Last closes of descriptors the backends' caches let go: a few threads, as the closes of
/// removed files queue at the disk anyway.
pub static CLOSES: LazyLock<DiskPool> = LazyLock::new(|| DiskPool::new("nasgw-close", 4, KEEP_ALIVE));

/// Lets go of what a backend's cache dropped (a cached node, a descriptor), away from the
/// cache's lock and from the calling request: a descriptor's last close is where the file
/// system frees a removed file (on ext4 mounted with `discard`, a synchronous discard,
/// milliseconds), and through a network mount or libgfapi where the close waits for the
/// file's written data to reach the servers. A thread serving one client closes it after its
/// reply; others leave it to [`CLOSES`].
pub fn retire<T: Send + 'static>(held: T) {
    if super::in_place::calls_run_in_place() {
        super::in_place::drop_after_reply(held);
    } else {
        CLOSES.detach(move || drop(held));
    }
}

/// How long an idle thread of [`SYNCS`] or [`CLOSES`] stays.
const KEEP_ALIVE: Duration = Duration::from_secs(10);

/// A pool of threads running blocking calls that wait for the disk. Cheap to share (`&self`).
pub struct DiskPool {
    shared: Arc<Shared>,
    name: &'static str,
    max: usize,
    keep_alive: Duration,
}

struct Shared {
    state: Mutex<State>,
    work: Condvar,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Job>,
    /// Threads waiting for work (counted until they wake, so a call queued meanwhile starts
    /// another thread instead of waiting behind the one already woken).
    idle: usize,
    threads: usize,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    // No code panics while holding it (calls run unlocked), so a poisoned lock is still sound.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl DiskPool {
    /// A pool of at most `max` threads named `name`, each leaving after `keep_alive` idle.
    pub fn new(name: &'static str, max: usize, keep_alive: Duration) -> Self {
        let shared = Arc::new(Shared { state: Mutex::new(State::default()), work: Condvar::new() });
        Self { shared, name, max: max.max(1), keep_alive }
    }

    /// Runs `f` on a pool thread and returns its value; `None` when it panicked or no thread
    /// could be started. Calls beyond `max` at once wait for a thread in the order they came.
    pub async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(Box::new(move || {
            let _ = tx.send(f());
        }));
        rx.await.ok()
    }

    /// Runs `f` on a pool thread without waiting for it (a value to drop there, say).
    pub fn detach(&self, f: impl FnOnce() + Send + 'static) {
        self.submit(Box::new(f));
    }

    /// Threads the pool has now (running or idle).
    pub fn threads(&self) -> usize {
        lock(&self.shared.state).threads
    }

    fn submit(&self, job: Job) {
        let mut st = lock(&self.shared.state);
        st.queue.push_back(job);
        if st.queue.len() <= st.idle {
            drop(st);
            self.shared.work.notify_one();
            return;
        }
        if st.threads >= self.max {
            // A busy thread takes it when done.
            return;
        }
        let (shared, keep_alive) = (self.shared.clone(), self.keep_alive);
        match std::thread::Builder::new().name(self.name.into()).spawn(move || serve(&shared, keep_alive)) {
            Ok(_) => st.threads += 1,
            Err(e) if st.threads == 0 => {
                // Nothing would ever run it: dropping it answers its caller `None`.
                tracing::warn!(pool = self.name, error = %e, "cannot start a thread for a sync");
                st.queue.pop_back();
            }
            // A running thread takes it when done.
            Err(_) => {}
        }
    }
}

/// A pool thread: runs queued calls until none came for `keep_alive`.
fn serve(shared: &Shared, keep_alive: Duration) {
    let mut st = lock(&shared.state);
    loop {
        if let Some(job) = st.queue.pop_front() {
            drop(st);
            // A panicking call drops its answer's sender (its caller sees `None`); the thread
            // goes on.
            let _ = std::panic::catch_unwind(AssertUnwindSafe(job));
            st = lock(&shared.state);
            continue;
        }
        st.idle += 1;
        let (next, waited) = shared.work.wait_timeout(st, keep_alive).unwrap_or_else(PoisonError::into_inner);
        st = next;
        st.idle -= 1;
        if waited.timed_out() && st.queue.is_empty() {
            st.threads -= 1;
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Barrier;
    use std::time::Instant;

    use super::*;

    /// Polls `cond` until it holds or `limit` passes.
    fn eventually(limit: Duration, cond: impl Fn() -> bool) -> bool {
        let start = Instant::now();
        while start.elapsed() < limit {
            if cond() {
                return true;
            }
            std::thread::yield_now();
        }
        cond()
    }

    #[tokio::test]
    async fn a_call_returns_its_value() {
        let pool = DiskPool::new("t-sync", 2, Duration::from_secs(10));
        assert_eq!(pool.run(|| 6 * 7).await, Some(42));
        assert_eq!(pool.threads(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calls_waiting_on_each_other_run_at_once_up_to_the_limit() {
        // Four calls that each wait for all four: they finish only if four threads run them.
        let pool = Arc::new(DiskPool::new("t-sync", 4, Duration::from_secs(10)));
        let meet = Arc::new(Barrier::new(4));
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..4 {
            let (pool, meet) = (pool.clone(), meet.clone());
            set.spawn(async move { pool.run(move || usize::from(meet.wait().is_leader())).await });
        }
        let mut leaders = 0;
        while let Some(r) = set.join_next().await {
            leaders += r.unwrap().expect("answered");
        }
        assert_eq!(leaders, 1);
        assert_eq!(pool.threads(), 4);
        // Beyond the limit calls queue instead of starting threads, and still all run.
        let answers: Vec<_> = (0..40u32).map(|i| pool.run(move || i)).collect();
        let mut got = Vec::new();
        for a in answers {
            got.push(a.await.expect("answered"));
        }
        assert_eq!(got, (0..40).collect::<Vec<_>>());
        assert!(pool.threads() <= 4, "{} threads", pool.threads());
    }

    #[tokio::test]
    async fn a_panicking_call_answers_none_and_the_thread_serves_on() {
        let pool = DiskPool::new("t-sync", 1, Duration::from_secs(10));
        assert_eq!(pool.run(|| -> u8 { panic!("backend bug") }).await, None);
        assert_eq!(pool.run(|| 7u8).await, Some(7));
        assert_eq!(pool.threads(), 1);
    }

    #[tokio::test]
    async fn idle_threads_leave_after_keep_alive() {
        let pool = DiskPool::new("t-sync", 2, Duration::from_millis(20));
        assert_eq!(pool.run(|| ()).await, Some(()));
        assert!(eventually(Duration::from_secs(10), || pool.threads() == 0), "{} threads stayed", pool.threads());
        // And a later call starts one again.
        assert_eq!(pool.run(|| 1).await, Some(1));
    }
}
