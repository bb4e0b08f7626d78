//! Who an NLM lock belongs to, as the cluster's lock table names it, and what range it covers.
//!
//! The protocol names a lock owner by its client (`caller_name`), the owner handle `oh` and the
//! `svid`. nasgw adds the client's address, so two clients that call themselves the same
//! (`localhost`, a cloned VM) never share locks. The 128-bit id is a hash of those, computed
//! the same way on every node, so a client that reclaims its locks through another node after
//! a failover is the same owner there. Its low 32 bits are the `svid` itself, so a TEST on any
//! node can report the holder's svid (what `F_GETLK` shows as the holder's pid).

use std::net::IpAddr;

use sha2::{Digest, Sha256};

use crate::locks::Owner;

/// The cluster-wide id of NLM lock owner (`caller`, `client`, `oh`, `svid`).
pub fn owner_id(caller: &[u8], client: IpAddr, oh: &[u8], svid: i32) -> u128 {
    let mut h = Sha256::new();
    h.update(b"nasgw nlm owner v1\0");
    for part in [caller, client.to_canonical().to_string().as_bytes(), oh] {
        h.update((part.len() as u32).to_be_bytes());
        h.update(part);
    }
    let d = h.finalize();
    let high = u128::from_be_bytes(d[..16].try_into().expect("16 bytes"));
    (high & !0xffff_ffff) | u128::from(svid as u32)
}

/// The svid inside an owner id.
pub fn svid_of(id: u128) -> i32 {
    id as u32 as i32
}

/// The svid to report for the holder of a lock: an NLM owner's own, 0 for anyone else (an SMB
/// open).
pub fn holder_svid(owner: &Owner) -> i32 {
    match owner {
        Owner::Posix { id, .. } => svid_of(*id),
        Owner::Open(_) => 0,
    }
}

/// The lock table's length for an NLM range: `len` 0 (and any range running past the last
/// byte) means "to the end of the file, whatever it becomes", which POSIX owners store as
/// `u64::MAX - offset`.
pub fn table_len(offset: u64, len: u64) -> u64 {
    if len == 0 || offset.checked_add(len).is_none() {
        u64::MAX - offset
    } else {
        len
    }
}

/// The NLM length of a range of the lock table (0 for "to the end").
pub fn wire_len(offset: u64, len: u64) -> u64 {
    if offset.saturating_add(len) == u64::MAX {
        0
    } else {
        len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_distinct_and_carry_the_svid() {
        let a: IpAddr = "198.18.0.20".parse().unwrap();
        let b: IpAddr = "198.18.0.21".parse().unwrap();
        let id = owner_id(b"kclient", a, b"12@kclient", 12);
        assert_eq!(id, owner_id(b"kclient", a, b"12@kclient", 12), "the same on every call (and node)");
        assert_eq!(svid_of(id), 12);
        assert_ne!(id, owner_id(b"kclient", b, b"12@kclient", 12), "same name, another client");
        assert_ne!(id, owner_id(b"kclient", a, b"13@kclient", 12));
        assert_ne!(id, owner_id(b"kclient", a, b"12@kclient", 13));
        // Length-prefixed parts: moving bytes between fields changes the id.
        assert_ne!(owner_id(b"ab", a, b"c", 1), owner_id(b"a", a, b"bc", 1));
        let mapped: IpAddr = "::ffff:198.18.0.20".parse().unwrap();
        assert_eq!(id, owner_id(b"kclient", mapped, b"12@kclient", 12), "IPv4-mapped is IPv4");
        assert_eq!(svid_of(owner_id(b"x", a, b"", -1)), -1);
    }

    #[test]
    fn ranges_to_the_end_round_trip() {
        assert_eq!(table_len(10, 0), u64::MAX - 10);
        assert_eq!(table_len(10, u64::MAX), u64::MAX - 10, "overflowing ranges run to the end");
        assert_eq!(table_len(10, 5), 5);
        assert_eq!(wire_len(10, u64::MAX - 10), 0);
        assert_eq!(wire_len(10, 5), 5);
        assert_eq!(wire_len(0, table_len(0, 0)), 0);
    }
}
