//! Gives the heap's free pages back to the kernel after connection threads end.
//!
//! A working SMB connection has a thread of its own (its runtime, its receive buffer), which
//! ends when the connection goes dormant or closes. glibc's malloc keeps what such a thread
//! freed in its arena, resident: `free` hands memory back to the kernel only from the top of
//! an arena, and the state of the connections that stay (allocated on their threads, spread
//! over the same arenas) sits above it. Measured on a fresh nasgw with 3,000 dormant SMB
//! connections: 395 MB of arena memory of which 353 MB free, 80 KiB of Pss per connection;
//! `malloc_trim(0)`, which also releases the free pages inside an arena, brought that to
//! 22 KiB. So a thread's end marks the heap as worth trimming ([`thread_ended`]), and
//! [`trim_when_due`] trims at most once per [`TRIM_EVERY`], off the async workers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How often the heap may be trimmed: a trim walks every arena under its lock, so a server
/// whose connections come and go all the time trims once per period, not once per thread.
pub const TRIM_EVERY: Duration = Duration::from_secs(1);

/// A thread ended since the last trim.
static DUE: AtomicBool = AtomicBool::new(false);

/// Notes that a thread ended, leaving freed memory in its arena; cheap (one store).
pub fn thread_ended() {
    DUE.store(true, Ordering::Relaxed);
}

/// Trims the heap within [`TRIM_EVERY`] of a thread's end, until `stop`.
pub async fn trim_when_due(stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(TRIM_EVERY) => {}
        }
        if DUE.swap(false, Ordering::Relaxed) {
            let _ = tokio::task::spawn_blocking(trim).await;
        }
    }
}

/// Gives the free pages of every malloc arena back to the kernel; `true` if any were.
pub fn trim() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let start = std::time::Instant::now();
        // SAFETY: malloc_trim works on glibc's own arenas, each under its lock.
        let released = unsafe { libc::malloc_trim(0) } == 1;
        tracing::debug!(released, took_us = start.elapsed().as_micros() as u64, "heap trimmed");
        released
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Resident pages of this process, from `/proc/self/statm`.
    fn resident_pages() -> u64 {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        statm.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// Set in the child process that [`trimming_returns_what_an_ended_thread_freed_inside_its_arena`]
    /// runs itself in.
    const ALONE: &str = "NASGW_HEAP_TEST_ALONE";

    #[test]
    fn trimming_returns_what_an_ended_thread_freed_inside_its_arena() {
        // Other tests' threads share the arenas and leave holes in them, so whether a freed
        // block stays resident depends on them. The test runs itself again in a process of its
        // own, as nextest runs every test.
        if std::env::var_os(ALONE).is_none() {
            let name = "heap::tests::trimming_returns_what_an_ended_thread_freed_inside_its_arena";
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", name, "--nocapture", "--test-threads=1"])
                .env(ALONE, "1")
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            println!("{text}{}", String::from_utf8_lossy(&out.stderr));
            assert!(out.status.success(), "the test failed in its own process");
            assert!(text.contains("1 passed"), "the child ran the test");
            return;
        }
        // A thread fills its arena with 32 MiB of touched blocks and keeps one small block
        // above them, as a dormant connection's state does; then it ends.
        let kept = std::thread::spawn(|| {
            let blocks: Vec<Vec<u8>> = (0..256).map(|_| vec![1u8; 128 * 1024 - 64]).collect();
            let pin = vec![2u8; 64];
            drop(blocks);
            pin
        })
        .join()
        .unwrap();
        let page = 4096;
        let before = resident_pages();
        assert!(trim(), "free pages were given back");
        let after = resident_pages();
        println!("resident {} MiB -> {} MiB", (before * page) >> 20, (after * page) >> 20);
        // Other tests run alongside and allocate too: half of what was freed is enough.
        assert!(before.saturating_sub(after) * page >= 16 << 20, "{before} -> {after} pages");
        assert_eq!(kept, vec![2u8; 64]);
    }
}
