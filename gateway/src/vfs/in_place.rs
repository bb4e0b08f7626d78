//! Threads that run their backend calls in place: a thread serving one client and nothing
//! else (an SMB connection, as smbd runs a process per client) blocks on the backend itself
//! instead of handing each call to another thread, and may leave some of a call's work (the
//! last close of a removed file) until its protocol has answered.

thread_local! {
    static IN_PLACE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Makes every backend call made from the calling thread run in place, blocking it. For a
/// thread that serves one client and nothing else (an SMB connection, as smbd's process per
/// client): a call then costs no hand-off to another thread, and a slow call stalls only
/// that client. Never call it on a runtime worker shared by other tasks.
pub fn run_calls_in_place() {
    IN_PLACE.with(|c| c.set(true));
}

/// Whether [`run_calls_in_place`] was called on this thread.
pub fn calls_run_in_place() -> bool {
    IN_PLACE.with(std::cell::Cell::get)
}

/// Most values one thread keeps for [`drop_deferred`]; more are dropped at once.
const MAX_DEFERRED: usize = 64;

thread_local! {
    static DEFERRED: std::cell::RefCell<Vec<Box<dyn std::any::Any>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Drops `value` now, or, on a thread that runs its calls in place, at its next
/// [`drop_deferred`]: for work a backend may leave until after the reply, such as the last
/// close of a removed file (where the file system frees it, which can wait on the disk).
pub fn drop_after_reply<T: 'static>(value: T) {
    if !calls_run_in_place() {
        return;
    }
    DEFERRED.with(|d| {
        let mut d = d.borrow_mut();
        if d.len() < MAX_DEFERRED {
            d.push(Box::new(value));
        }
    });
}

/// Drops what backend calls on this thread left for after the reply (see
/// [`drop_after_reply`]); a protocol calls it once its answer is on the wire.
pub fn drop_deferred() {
    let deferred = DEFERRED.with(|d| std::mem::take(&mut *d.borrow_mut()));
    drop(deferred);
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;

    struct Counted(Arc<AtomicUsize>);

    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn deferred_drops_wait_for_the_reply_only_where_calls_run_in_place() {
        let dropped = Arc::new(AtomicUsize::new(0));
        drop_after_reply(Counted(dropped.clone()));
        assert_eq!(dropped.load(Ordering::SeqCst), 1, "dropped at once on an ordinary thread");
        let d = dropped.clone();
        std::thread::spawn(move || {
            run_calls_in_place();
            for _ in 0..MAX_DEFERRED + 3 {
                drop_after_reply(Counted(d.clone()));
            }
            assert_eq!(d.load(Ordering::SeqCst), 1 + 3, "beyond the bound, dropped at once");
            drop_deferred();
            assert_eq!(d.load(Ordering::SeqCst), 1 + 3 + MAX_DEFERRED);
            drop_after_reply(Counted(d.clone()));
        })
        .join()
        .unwrap();
        assert_eq!(dropped.load(Ordering::SeqCst), 1 + 3 + MAX_DEFERRED + 1, "the thread's end drops the rest");
    }
}
