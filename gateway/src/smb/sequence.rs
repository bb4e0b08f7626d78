//! The command sequence window of a connection (MS-SMB2 3.3.1.1): every MessageId the client
//! may use was granted by a credit, and is used once. A replayed request (a captured signed
//! WRITE sent again, the same AES-GMAC nonce) or one past the credits granted is refused, and
//! the connection closed.
//!
//! Pure state: [`SequenceWindow::take`] for each request, [`SequenceWindow::grant`] for the
//! credits of each response. [`charge_covers`] is the multi-credit rule: a request moving
//! more than 64 KiB must have paid one credit per 64 KiB.

use std::collections::BTreeSet;

/// Most MessageIds granted and not yet used at once; grants stop there.
pub const MAX_OUTSTANDING: u64 = 8192;

/// Bytes one credit pays for (MS-SMB2 3.1.5.2).
pub const CREDIT_BYTES: u64 = 65536;

/// Whether a request's CreditCharge pays for its payload (MS-SMB2 3.3.5.2.5): `payload` is
/// the larger of the bytes it sends and the most it asks back (READ length, WRITE data,
/// IOCTL input or output, QUERY_DIRECTORY / QUERY_INFO / CHANGE_NOTIFY output buffer).
/// Without multi-credit (SMB 2.0.2, where CreditCharge is reserved) no request moves more
/// than one credit's worth; with it, a charge of 0 counts as 1 and each credit pays 64 KiB.
/// A request that fails this gets INVALID_PARAMETER, as from Windows and smbd.
pub fn charge_covers(multi_credit: bool, charge: u16, payload: u64) -> bool {
    let paid = if multi_credit { u64::from(charge.max(1)) } else { 1 };
    payload <= paid * CREDIT_BYTES
}

/// Why a MessageId is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SequenceError {
    /// Used before (a replay), or below the window.
    #[error("MessageId already used")]
    Replayed,
    /// Not granted yet.
    #[error("MessageId not granted")]
    NotGranted,
}

/// The MessageIds a connection's client may use next.
#[derive(Debug, Clone)]
pub struct SequenceWindow {
    /// Every id below this one is used.
    low: u64,
    /// First id not granted.
    high: u64,
    /// Ids in `low..high` already used.
    used: BTreeSet<u64>,
}

impl Default for SequenceWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl SequenceWindow {
    /// A fresh connection's window: MessageId 0 (the first NEGOTIATE) only.
    pub fn new() -> Self {
        Self { low: 0, high: 1, used: BTreeSet::new() }
    }

    /// Uses the ids `id .. id + charge` of a request (a charge of 0 counts as 1).
    pub fn take(&mut self, id: u64, charge: u16) -> Result<(), SequenceError> {
        let n = u64::from(charge.max(1));
        let end = id.checked_add(n).ok_or(SequenceError::NotGranted)?;
        if id < self.low {
            return Err(SequenceError::Replayed);
        }
        if end > self.high {
            return Err(SequenceError::NotGranted);
        }
        if self.used.range(id..end).next().is_some() {
            return Err(SequenceError::Replayed);
        }
        self.used.extend(id..end);
        while self.used.remove(&self.low) {
            self.low += 1;
        }
        Ok(())
    }

    /// Grants up to `credits` more ids; returns how many were granted (fewer once
    /// [`MAX_OUTSTANDING`] ids are outstanding, or the window spans twice that because the
    /// client leaves a low id unused: the set of used ids stays bounded).
    pub fn grant(&mut self, credits: u16) -> u16 {
        let n = u64::from(credits)
            .min(MAX_OUTSTANDING.saturating_sub(self.outstanding()))
            .min((2 * MAX_OUTSTANDING).saturating_sub(self.high - self.low));
        self.high += n;
        n as u16
    }

    /// Ids granted and not used yet (the client's credits).
    pub fn outstanding(&self) -> u64 {
        self.high - self.low - self.used.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_used_once_and_only_when_granted() {
        let mut w = SequenceWindow::new();
        assert_eq!(w.take(1, 1), Err(SequenceError::NotGranted));
        assert_eq!(w.take(0, 0), Ok(()));
        assert_eq!(w.take(0, 0), Err(SequenceError::Replayed));
        assert_eq!(w.grant(10), 10);
        // Out of order within the window is fine; each id once.
        assert_eq!(w.take(5, 1), Ok(()));
        assert_eq!(w.take(1, 1), Ok(()));
        assert_eq!(w.take(5, 1), Err(SequenceError::Replayed));
        assert_eq!(w.take(1, 1), Err(SequenceError::Replayed));
        // A multi-credit request uses a range; an overlap with a used id is a replay.
        assert_eq!(w.take(2, 3), Ok(()));
        assert_eq!(w.take(4, 2), Err(SequenceError::Replayed));
        assert_eq!(w.take(6, 5), Ok(()));
        assert_eq!(w.take(11, 1), Err(SequenceError::NotGranted));
        assert_eq!(w.outstanding(), 0);
        assert_eq!(w.take(u64::MAX, 2), Err(SequenceError::NotGranted));
    }

    #[test]
    fn a_charge_pays_64k_per_credit() {
        for (multi, charge, payload, ok) in [
            (true, 0, 0, true),
            (true, 0, 65536, true),
            (true, 0, 65537, false),
            (true, 1, 65537, false),
            (true, 2, 65537, true),
            (true, 2, 131072, true),
            (true, 2, 131073, false),
            (true, 128, 8 << 20, true),
            (true, 127, 8 << 20, false),
            (true, u16::MAX, u64::from(u16::MAX) * 65536, true),
            (true, u16::MAX, u64::MAX, false),
            // SMB 2.0.2: the charge field is reserved, 64 KiB at most whatever it says.
            (false, 0, 65536, true),
            (false, 4, 65537, false),
        ] {
            assert_eq!(charge_covers(multi, charge, payload), ok, "{multi} {charge} {payload}");
        }
    }

    #[test]
    fn the_window_stays_bounded() {
        let mut w = SequenceWindow::new();
        w.take(0, 1).unwrap();
        let mut granted = 0u64;
        for _ in 0..100 {
            granted += u64::from(w.grant(512));
        }
        assert_eq!(granted, MAX_OUTSTANDING);
        assert_eq!(w.outstanding(), MAX_OUTSTANDING);
        // A client that skips the lowest id keeps at most MAX_OUTSTANDING ids in the set.
        for id in 2..=MAX_OUTSTANDING {
            w.take(id, 1).unwrap();
        }
        assert_eq!(w.grant(512), 512, "used ids free room for new grants");
        for _ in 0..100 {
            let from = w.high;
            let n = u64::from(w.grant(512));
            for id in from..from + n {
                w.take(id, 1).unwrap();
            }
        }
        assert!(w.high - w.low <= 2 * MAX_OUTSTANDING, "id 1 never used: the window stops growing");
        assert!(w.used.len() as u64 <= 2 * MAX_OUTSTANDING);
        w.take(1, 1).unwrap();
        assert_eq!(w.low, MAX_OUTSTANDING + 1, "once id 1 comes, the window moves up to the next unused id");
    }
}
