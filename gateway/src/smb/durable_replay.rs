//! Replay detection for durable opens (MS-SMB2 3.3.5.2.10, "Verifying the Channel
//! Sequence Number"): on SMB 3.x a client that lost its connection may send a WRITE, SET_INFO
//! or IOCTL again on a new one, with the replay flag and the session's channel sequence, which
//! it raises after every reconnect. Each open remembers the newest channel sequence it saw; a
//! request carrying an older one comes from a connection the client has given up on and must not
//! be applied (FILE_NOT_AVAILABLE), so a stale write cannot land after a newer one.
//!
//! LOCK has its own rule (MS-SMB2 3.3.5.14): a durable open keeps 64 lock-sequence buckets; a
//! LOCK naming bucket 1-64 with the sequence number its bucket already holds is a replay of
//! one that succeeded, answered with success and not applied again.

use super::wire::status::NtStatus;

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
