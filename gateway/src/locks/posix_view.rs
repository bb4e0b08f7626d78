//! An SMB open's Windows byte-range locks as the one POSIX lock owner the volume sees (Samba's
//! `posix locking = yes`): other clients of the volume (a GlusterFS FUSE mount elsewhere, a local
//! process) must respect them, and the volume only knows POSIX locks, which merge and split per
//! owner where Windows locks stack. So the open's locks are mirrored as their *coverage*: write
//! where any of them is exclusive, read where they are all shared, nothing elsewhere; each
//! change of the open's locks becomes the few POSIX calls that turn the old coverage into the new
//! one. Pure: the caller (`smb/volume_locks.rs`) makes the calls.

/// One Windows lock (zero-length locks lock no byte and are not mirrored).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WinLock {
    /// First byte.
    pub offset: u64,
    /// Length.
    pub len: u64,
    /// Exclusive.
    pub exclusive: bool,
}

/// One POSIX call on the owner's descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// `Some(exclusive)`: take (or convert to) a write or read lock; `None`: unlock.
    pub set: Option<bool>,
    /// First byte.
    pub start: u64,
    /// Length (never 0; a range reaching past `u64::MAX` ends there).
    pub len: u64,
}

/// Disjoint, sorted segments `[start, end)` with their kind (true: write).
fn coverage(locks: &[WinLock]) -> Vec<(u128, u128, bool)> {
    let mut cuts: Vec<u128> = Vec::with_capacity(locks.len() * 2);
    for l in locks.iter().filter(|l| l.len > 0) {
        cuts.push(u128::from(l.offset));
        cuts.push(u128::from(l.offset) + u128::from(l.len));
    }
    cuts.sort_unstable();
    cuts.dedup();
    let mut out: Vec<(u128, u128, bool)> = Vec::new();
    for w in cuts.windows(2) {
        let (s, e) = (w[0], w[1]);
        let covering = locks
            .iter()
            .filter(|l| l.len > 0 && u128::from(l.offset) <= s && u128::from(l.offset) + u128::from(l.len) >= e);
        let mut any = false;
        let mut write = false;
        for l in covering {
            any = true;
            write |= l.exclusive;
        }
        if !any {
            continue;
        }
        match out.last_mut() {
            Some(last) if last.1 == s && last.2 == write => last.1 = e,
            _ => out.push((s, e, write)),
        }
    }
    out
}

fn kind_at(cov: &[(u128, u128, bool)], s: u128) -> Option<bool> {
    cov.iter().find(|(a, b, _)| *a <= s && s < *b).map(|(_, _, w)| *w)
}

/// The calls that turn the coverage of `old` into that of `new`: every take or conversion
/// first (the only calls another volume client can make fail), then the unlocks, so a refused
/// take leaves the owner holding at least what it held (undo with `plan(new, old)`).
pub fn plan(old: &[WinLock], new: &[WinLock]) -> Vec<Step> {
    let (a, b) = (coverage(old), coverage(new));
    let mut cuts: Vec<u128> = a.iter().chain(b.iter()).flat_map(|(s, e, _)| [*s, *e]).collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut sets: Vec<Step> = Vec::new();
    let mut unlocks: Vec<Step> = Vec::new();
    for w in cuts.windows(2) {
        let (s, e) = (w[0], w[1]);
        let (was, now) = (kind_at(&a, s), kind_at(&b, s));
        if was == now {
            continue;
        }
        let list = if now.is_some() { &mut sets } else { &mut unlocks };
        let end = e.min(u128::from(u64::MAX));
        if end <= s {
            continue;
        }
        match list.last_mut() {
            Some(last) if last.set == now && u128::from(last.start) + u128::from(last.len) == s => {
                last.len = (end - u128::from(last.start)) as u64;
            }
            _ => list.push(Step { set: now, start: s as u64, len: (end - s) as u64 }),
        }
    }
    sets.extend(unlocks);
    sets
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(offset: u64, len: u64, exclusive: bool) -> WinLock {
        WinLock { offset, len, exclusive }
    }

    fn st(set: Option<bool>, start: u64, len: u64) -> Step {
        Step { set, start, len }
    }

    #[test]
    fn a_first_lock_is_one_take_and_its_unlock_one_unlock() {
        assert_eq!(plan(&[], &[w(10, 5, true)]), vec![st(Some(true), 10, 5)]);
        assert_eq!(plan(&[w(10, 5, true)], &[]), vec![st(None, 10, 5)]);
        assert_eq!(plan(&[], &[w(10, 0, true)]), vec![], "a zero-length lock locks no byte");
    }

    #[test]
    fn stacked_locks_keep_the_bytes_until_the_last_goes() {
        // Windows: the same shared range locked twice, unlocked once: still locked.
        let one = [w(0, 10, false)];
        let two = [w(0, 10, false), w(0, 10, false)];
        assert_eq!(plan(&one, &two), vec![]);
        assert_eq!(plan(&two, &one), vec![]);
        assert_eq!(plan(&one, &[]), vec![st(None, 0, 10)]);
    }

    #[test]
    fn exclusive_wins_where_locks_of_both_kinds_overlap() {
        // A shared lock stacked on the owner's own exclusive one does not downgrade it.
        let ex = [w(0, 10, true)];
        let both = [w(0, 10, true), w(5, 10, false)];
        assert_eq!(plan(&ex, &both), vec![st(Some(false), 10, 5)]);
        // Releasing the exclusive one leaves a read lock where the shared one is.
        assert_eq!(plan(&both, &[w(5, 10, false)]), vec![st(Some(false), 5, 5), st(None, 0, 5)]);
    }

    #[test]
    fn takes_come_before_unlocks_and_undo_is_the_reverse_plan() {
        let old = [w(0, 4, true)];
        let new = [w(100, 4, true)];
        let p = plan(&old, &new);
        assert_eq!(p, vec![st(Some(true), 100, 4), st(None, 0, 4)]);
        assert_eq!(plan(&new, &old), vec![st(Some(true), 0, 4), st(None, 100, 4)]);
    }

    #[test]
    fn a_range_to_the_end_of_the_offsets_stays_within_them() {
        let p = plan(&[], &[w(u64::MAX - 1, 1, true), w(0, u64::MAX, false)]);
        assert_eq!(p, vec![st(Some(false), 0, u64::MAX - 1), st(Some(true), u64::MAX - 1, 1)]);
    }
}
