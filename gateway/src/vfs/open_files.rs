//! Which cached files keep a data descriptor open on the volume's servers, and which one to
//! close when too many do.
//!
//! On GlusterFS every open descriptor of a node (through its managed FUSE mount or libgfapi) is
//! an open file on each brick holding the file, and a brick's open-files limit is shared by
//! every client of the volume (65536 under the packaged `glusterd.service`). A node caching one
//! for every file it touched (thousands after a create-heavy workload, on every node) could
//! exhaust it and make the volume refuse opens to everyone, itself included. So the backends
//! keep at most `[volume] open_files` data descriptors and close the least recently used one
//! beyond that; the next I/O to that file opens it again.
//!
//! The list may also name files whose descriptor is already gone (their cache entry was
//! dropped): such an entry only holds a place until it ages out, so the cache never holds more
//! descriptors than the limit. One it let go still open in a request or an open of the node's
//! own mount closes when that lets go of it.

use std::hash::Hash;
use std::num::NonZeroUsize;
use std::sync::Mutex;

use lru::LruCache;

/// The default of `[volume] open_files`: with 7 nodes, 28672 of a brick's 65536.
pub const DEFAULT_OPEN_FILES: usize = 4096;

/// The files holding a data descriptor, least recently used last out.
pub struct OpenFiles<K: Hash + Eq> {
    lru: Mutex<LruCache<K, ()>>,
}

impl<K: Hash + Eq + Copy> OpenFiles<K> {
    /// At most `limit` files (at least one).
    pub fn new(limit: usize) -> Self {
        let cap = NonZeroUsize::new(limit.max(1)).expect("at least one");
        Self { lru: Mutex::new(LruCache::new(cap)) }
    }

    /// Records that `id` holds a descriptor now (or used it again). Returns the file whose
    /// descriptor must be closed to stay within the limit, if any.
    fn opened(&self, id: K) -> Option<K> {
        let mut lru = self.lru.lock().expect("open files lock");
        match lru.push(id, ()) {
            Some((old, ())) if old != id => Some(old),
            _ => None,
        }
    }

    /// Marks `id` as just used: it is the last to be closed.
    pub fn used(&self, id: &K) {
        self.lru.lock().expect("open files lock").promote(id);
    }

    /// Records that `id` holds a descriptor now, and closes the least recently used one beyond
    /// the limit: `take` takes that file's descriptor out of its cache entry (if it still has
    /// one), and its last close runs off the request path ([`super::disk_pool::retire`]: through
    /// a network mount or libgfapi, a close waits for the file's written data to reach the
    /// servers).
    pub fn keep<T: Send + 'static>(&self, id: K, take: impl FnOnce(K) -> Option<T>) {
        if let Some(held) = self.opened(id).and_then(take) {
            super::disk_pool::retire(held);
        }
    }

    /// Records that `id`'s descriptor was closed.
    pub fn closed(&self, id: &K) {
        self.lru.lock().expect("open files lock").pop(id);
    }

    /// How many files are listed (an upper bound of the descriptors the cache holds).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lru.lock().expect("open files lock").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_recently_used_file_is_closed_beyond_the_limit() {
        let open = OpenFiles::new(3);
        assert_eq!(open.opened(1), None);
        assert_eq!(open.opened(2), None);
        assert_eq!(open.opened(3), None);
        open.used(&1);
        assert_eq!(open.opened(4), Some(2), "2 was used least recently");
        assert_eq!(open.opened(5), Some(3));
        assert_eq!(open.len(), 3);
    }

    #[test]
    fn opening_a_listed_file_again_closes_nothing() {
        let open = OpenFiles::new(2);
        open.opened(1);
        open.opened(2);
        assert_eq!(open.opened(1), None);
        assert_eq!(open.opened(3), Some(2));
    }

    #[test]
    fn a_closed_file_frees_its_place() {
        let open = OpenFiles::new(2);
        open.opened(1);
        open.opened(2);
        open.closed(&1);
        assert_eq!(open.opened(3), None);
        assert_eq!(open.len(), 2);
    }
}
