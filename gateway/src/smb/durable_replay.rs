//! Replay detection for durable opens (MS-SMB2 3.3.5.2.10, "Verifying the Channel
//! Sequence Number"): on SMB 3.x a client that lost its connection may send a WRITE, SET_INFO
//! or IOCTL again on a new one, with the replay flag and the session's channel sequence, which
//! it raises after every reconnect. Each open remembers the newest channel sequence it saw; a
//! request carrying an older one comes from a connection the client has given up on and must not
//! be applied (FILE_NOT_AVAILABLE), so a stale write cannot land after a newer one.
//!
//! A CREATE with a `DH2Q` CreateGuid is remembered in the node's [`ReplayCache`] (smbd's replay
//! cache, MS-SMB2 3.3.5.9.10): while it waits (for a break), a replay of it is answered
//! FILE_NOT_AVAILABLE and not run a second time; once it succeeded, a replay gets the same open
//! back, and the same CreateGuid without the replay flag is DUPLICATE_OBJECTID. The first other
//! request on the open ends that (the client has seen the answer): a replay after it runs as a
//! new CREATE.
//!
//! LOCK has its own rule (MS-SMB2 3.3.5.14): a durable open keeps 64 lock-sequence buckets; a
//! LOCK naming bucket 1-64 with the sequence number its bucket already holds is a replay of
//! one that succeeded, answered with success and not applied again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::wire::status::NtStatus;

/// What the replay cache holds for one (ClientGuid, CreateGuid).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cached {
    /// The CREATE is still running (waiting for a break or a share-mode answer).
    Pending,
    /// It made the open with this persistent FileId, answered with `action`.
    Open {
        /// The open's persistent FileId.
        persistent: u64,
        /// Its CreateAction.
        action: u32,
    },
}

/// Key of the cache: the client's ClientGuid and the request's CreateGuid.
type Key = ([u8; 16], [u8; 16]);

/// The node's replay cache of CREATEs with a CreateGuid (see the module doc). Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct ReplayCache {
    map: Arc<Mutex<HashMap<Key, Cached>>>,
}

/// How a CREATE with CreateGuid must be handled, from [`ReplayCache::check`]. Pure decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Run it as a new CREATE (and [`ReplayCache::begin`] it).
    Run,
    /// A replay of the open that succeeded: answer that open again.
    Again {
        /// The open's persistent FileId.
        persistent: u64,
        /// Its CreateAction.
        action: u32,
    },
    /// Refuse it with this status.
    Refuse(NtStatus),
}

/// What a CREATE with CreateGuid meets: `cached` is the cache entry, `replay` the request's
/// replay flag. Pure.
pub fn decide(cached: Option<Cached>, replay: bool) -> Decision {
    match (cached, replay) {
        (None, _) => Decision::Run,
        // The original is still running: never run it twice (Samba bug 14449's "sane" answer).
        (Some(Cached::Pending), _) => Decision::Refuse(NtStatus::FILE_NOT_AVAILABLE),
        (Some(Cached::Open { persistent, action }), true) => Decision::Again { persistent, action },
        (Some(Cached::Open { .. }), false) => Decision::Refuse(NtStatus::DUPLICATE_OBJECTID),
    }
}

/// A CREATE marked pending in the cache; dropped without [`PendingCreate::done`], the mark goes.
#[derive(Debug)]
pub struct PendingCreate {
    cache: ReplayCache,
    key: Key,
    finished: bool,
}

impl PendingCreate {
    /// The CREATE made open `persistent` with `action`: replays now get it back.
    pub fn done(mut self, persistent: u64, action: u32) {
        self.finished = true;
        self.cache.lock().insert(self.key, Cached::Open { persistent, action });
    }
}

impl Drop for PendingCreate {
    fn drop(&mut self) {
        if !self.finished {
            let mut m = self.cache.lock();
            if m.get(&self.key) == Some(&Cached::Pending) {
                m.remove(&self.key);
            }
        }
    }
}

impl ReplayCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Cached>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How the CREATE with `create_guid` from `client` is handled ([`decide`]).
    pub fn check(&self, client: [u8; 16], create_guid: [u8; 16], replay: bool) -> Decision {
        decide(self.lock().get(&(client, create_guid)).copied(), replay)
    }

    /// Marks the CREATE with `create_guid` from `client` running.
    pub fn begin(&self, client: [u8; 16], create_guid: [u8; 16]) -> PendingCreate {
        let key = (client, create_guid);
        self.lock().insert(key, Cached::Pending);
        PendingCreate { cache: self.clone(), key, finished: false }
    }

    /// The open `persistent` served another request or was closed: replays of its CREATE are
    /// new CREATEs from now on.
    pub fn purge(&self, persistent: u64) {
        let mut m = self.lock();
        if m.is_empty() {
            return;
        }
        m.retain(|_, c| !matches!(c, Cached::Open { persistent: p, .. } if *p == persistent));
    }

    /// Entries held (for tests and status).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether the cache holds nothing.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

/// Checks the channel sequence `request` of a WRITE, SET_INFO or IOCTL against the open's
/// `current` one, in 16-bit circular arithmetic: equal or up to 0x7FFF newer is accepted (and
/// becomes the open's), anything else is FILE_NOT_AVAILABLE. Returns the open's new value. Pure.
pub fn check(current: u16, request: u16) -> Result<u16, NtStatus> {
    if request.wrapping_sub(current) > 0x7fff {
        Err(NtStatus::FILE_NOT_AVAILABLE)
    } else {
        Ok(request)
    }
}

/// The lock-sequence bucket (0-63) and number of a LOCK request `msg` (header included), or
/// `None` when the bucket is outside 1-64 (no replay detection). Pure.
pub fn lock_sequence(msg: &[u8]) -> Option<(usize, u8)> {
    let v = u32::from_le_bytes(msg.get(64 + 4..64 + 8)?.try_into().ok()?);
    let bucket = (v >> 4) as usize;
    (1..=64).contains(&bucket).then(|| (bucket - 1, (v & 0xf) as u8))
}

/// A durable open's lock-sequence buckets (each the number of the last LOCK that succeeded in
/// it, or none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockSequences([u8; 64]);

/// A bucket holding no valid number.
const INVALID: u8 = 0xff;

impl Default for LockSequences {
    fn default() -> Self {
        Self([INVALID; 64])
    }
}

impl LockSequences {
    /// Before a LOCK with `(bucket, number)`: `true` when it is a replay (answer success, do
    /// nothing); otherwise the bucket is invalidated until the LOCK succeeds.
    pub fn replayed(&mut self, (bucket, number): (usize, u8)) -> bool {
        let Some(b) = self.0.get_mut(bucket) else { return false };
        if *b == number {
            return true;
        }
        *b = INVALID;
        false
    }

    /// The LOCK with `(bucket, number)` succeeded.
    pub fn succeeded(&mut self, (bucket, number): (usize, u8)) {
        if let Some(b) = self.0.get_mut(bucket) {
            *b = number;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_sequences_detect_replays_of_successful_locks_only() {
        let lock = |v: u32| {
            let mut m = vec![0u8; 64];
            m.extend_from_slice(&[48, 0, 1, 0]);
            m.extend_from_slice(&v.to_le_bytes());
            m
        };
        assert_eq!(lock_sequence(&lock(0x001)), None, "bucket 0 is not checked");
        assert_eq!(lock_sequence(&lock(0x411)), None, "bucket 65 is not checked");
        assert_eq!(lock_sequence(&lock(0x011)), Some((0, 1)));
        assert_eq!(lock_sequence(&lock(0x402)), Some((63, 2)));
        assert_eq!(lock_sequence(&[0u8; 66]), None);
        let mut s = LockSequences::default();
        assert!(!s.replayed((0, 1)));
        s.succeeded((0, 1));
        assert!(s.replayed((0, 1)), "the same number again is a replay");
        assert!(!s.replayed((0, 2)), "a new number is not");
        assert!(!s.replayed((0, 1)), "and it invalidated the bucket");
        assert!(!s.replayed((1, 1)), "buckets are separate");
    }

    #[test]
    fn the_replay_cache_answers_replays_once_and_refuses_duplicates() {
        let c = ReplayCache::default();
        let (client, guid) = ([1; 16], [2; 16]);
        assert_eq!(c.check(client, guid, true), Decision::Run, "nothing cached: a replay runs as new");
        let p = c.begin(client, guid);
        let na = Decision::Refuse(NtStatus::FILE_NOT_AVAILABLE);
        assert_eq!(c.check(client, guid, true), na, "the original is pending");
        assert_eq!(c.check(client, guid, false), na);
        assert_eq!(c.check([9; 16], guid, true), Decision::Run, "another client's CreateGuid is its own");
        p.done(7, 2);
        assert_eq!(c.check(client, guid, true), Decision::Again { persistent: 7, action: 2 });
        assert_eq!(c.check(client, guid, false), Decision::Refuse(NtStatus::DUPLICATE_OBJECTID));
        c.purge(8);
        assert_eq!(c.len(), 1, "another open's purge leaves it");
        c.purge(7);
        assert_eq!(c.check(client, guid, true), Decision::Run, "used once: a replay is a new CREATE");
        drop(c.begin(client, guid));
        assert!(c.is_empty(), "a CREATE that failed leaves nothing");
    }

    #[test]
    fn newer_or_equal_sequences_pass_older_ones_are_refused() {
        let na = Err(NtStatus::FILE_NOT_AVAILABLE);
        // smbtorture smb2.replay.channel-sequence's table: (request, result); the open's value
        // carries from one row to the next.
        let table = [
            (0, Ok(0)),
            (0x8000, na),
            (0x8001, na),
            (0xffff, na),
            (0x7fff, Ok(0x7fff)),
            (0x7ffe, na),
            (0, na),
            (0x1234, na),
            (0x8000, Ok(0x8000)),
            (0xffff, Ok(0xffff)),
            (0, Ok(0)),
            (1, Ok(1)),
            (0, na),
            (1, Ok(1)),
            (0xffff, na),
        ];
        let mut open = 0;
        for (req, want) in table {
            let got = check(open, req);
            assert_eq!(got, want, "open {open:#x}, request {req:#x}");
            if let Ok(v) = got {
                open = v;
            }
        }
    }
}
