//! Persistent handles across nodes: what lets a node that never saw an open take it back when
//! its client reconnects there after the open's node died.
//!
//! Two halves make a persistent open valid on another node:
//! - the **lock service** keeps the open itself (share mode, byte-range locks, lease) as an
//!   orphan for the open's timeout when its node dies
//!   ([`crate::locks::LockService::set_durable`]), conflicting as before, so nobody else can
//!   take it meanwhile; [`crate::locks::LockService::reclaim_open`] moves it to the reclaiming
//!   node under a new key;
//! - **this registry** answers what a reconnect names: a `DH2C` carries only the 16-byte FileId
//!   (and the CreateGuid), so every node must map the persistent id to the file, the open's
//!   lock-service key and the facts a reconnect is checked against (user, client GUID, lease
//!   key, CreateGuid). The node holding the open broadcasts a [`Held`] record over the lock
//!   mesh when the open is made persistent (and again after each reclaim, with the new key),
//!   and [`Event::Gone`] when it is closed; every other node keeps the records it heard.
//!
//! The broadcast is best effort: a node that joins (or rejoins) the cluster after an open was
//! made persistent has no record of it, and a reconnect reaching that node fails with
//! OBJECT_NAME_NOT_FOUND (the client then reopens by name, as after any lost handle).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::auth::Identity;
use super::cmd::open::FileOpen;
use super::durable::Durability;
use crate::locks::{LeaseId, LockService, OpenKey};
use crate::vfs::FileId;

/// First byte of an encoded event on the cluster broadcast (change notifications use `N`).
pub const TAG: u8 = b'D';

/// The most records a node keeps (a bound on what peers can make it hold).
pub const MAX_RECORDS: usize = 1 << 18;

/// Who opened it, as sent between nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum User {
    /// [`Identity::Anonymous`].
    Anonymous,
    /// [`Identity::Guest`].
    Guest,
    /// [`Identity::User`].
    User(String),
}

impl From<&Identity> for User {
    fn from(i: &Identity) -> Self {
        match i {
            Identity::Anonymous => User::Anonymous,
            Identity::Guest => User::Guest,
            Identity::User(n) => User::User(n.clone()),
        }
    }
}

impl From<&User> for Identity {
    fn from(u: &User) -> Self {
        match u {
            User::Anonymous => Identity::Anonymous,
            User::Guest => Identity::Guest,
            User::User(n) => Identity::User(n.clone()),
        }
    }
}

/// A persistent open as every node knows it: enough to check a reconnect and rebuild the
/// handle on another node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    /// The persistent half of its FileId (what a `DH2C` names).
    pub persistent: u64,
    /// The file (the lock table's key).
    pub file: FileId,
    /// Its directory.
    pub parent: FileId,
    /// The share's root (a reconnect must come through the same share).
    pub root: FileId,
    /// Share-relative components.
    pub path: Vec<String>,
    /// The open in the lock service now.
    pub key: OpenKey,
    /// The lease (or the oplock's own lease) it caches through.
    pub lease: Option<LeaseId>,
    /// How long it outlives its connection or node, in ms.
    pub timeout_ms: u32,
    /// Its CreateGuid.
    pub create_guid: Option<[u8; 16]>,
    /// The ClientGuid of the connection that opened it.
    pub client_guid: [u8; 16],
    /// Who opened it.
    pub user: User,
    /// The client's lease key (`None` for an oplock or no caching).
    pub lease_key: Option<[u8; 16]>,
    /// That lease's version.
    pub lease_version: u8,
    /// The CreateAction first answered.
    pub action: u32,
}

impl Held {
    /// The record of the persistent open `f` at persistent id `persistent`.
    pub fn of(persistent: u64, f: &FileOpen, d: &Durability) -> Held {
        Held {
            persistent,
            file: f.id,
            parent: f.parent,
            root: f.root,
            path: f.path.clone(),
            key: f.key,
            lease: f.lease,
            timeout_ms: u32::try_from(d.timeout.as_millis()).unwrap_or(u32::MAX),
            create_guid: d.create_guid,
            client_guid: d.client_guid,
            user: User::from(&d.user),
            lease_key: d.lease_key,
            lease_version: d.lease_version,
            action: d.action,
        }
    }

    /// The durability a reconnect is checked against.
    pub fn durability(&self) -> Durability {
        Durability {
            version: 2,
            timeout: Duration::from_millis(u64::from(self.timeout_ms)),
            persistent: true,
            create_guid: self.create_guid,
            client_guid: self.client_guid,
            user: Identity::from(&self.user),
            lease_key: self.lease_key,
            lease_version: self.lease_version,
            action: self.action,
        }
    }
}

/// What nodes tell each other about persistent opens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// The open is held (made persistent, or reclaimed) through the sending node.
    Held(Box<Held>),
    /// The open with this persistent id was closed (or expired).
    Gone(u64),
}

/// Encodes an event for [`LockService::broadcast`].
pub fn encode(e: &Event) -> Vec<u8> {
    let mut out = vec![TAG];
    out.extend(postcard::to_allocvec(e).unwrap_or_default());
    out
}

/// Decodes a broadcast payload; `None` for anything else (another tag, bad bytes). Pure,
/// never panics.
pub fn decode(b: &[u8]) -> Option<Event> {
    match b.split_first() {
        Some((&TAG, rest)) => postcard::from_bytes(rest).ok(),
        _ => None,
    }
}

/// The persistent opens held through other nodes, by persistent id (see the module doc).
#[derive(Debug, Default)]
pub struct ClusterOpens {
    map: Mutex<HashMap<u64, Held>>,
}

impl ClusterOpens {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Held>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes in a broadcast payload (ignored unless it is one of ours).
    pub fn receive(&self, payload: &[u8]) {
        match decode(payload) {
            Some(Event::Held(h)) => {
                let mut m = self.map();
                if m.len() >= MAX_RECORDS && !m.contains_key(&h.persistent) {
                    tracing::warn!("SMB: too many persistent opens announced by other nodes; one is not recorded");
                    return;
                }
                m.insert(h.persistent, *h);
            }
            Some(Event::Gone(p)) => {
                self.map().remove(&p);
            }
            None => {}
        }
    }

    /// The record of persistent id `p`.
    pub fn get(&self, p: u64) -> Option<Held> {
        self.map().get(&p).cloned()
    }

    /// Forgets persistent id `p` (reclaimed here, or no longer in the cluster).
    pub fn remove(&self, p: u64) {
        self.map().remove(&p);
    }

    /// Records known (status and tests).
    pub fn len(&self) -> usize {
        self.map().len()
    }

    /// Whether no record is known.
    pub fn is_empty(&self) -> bool {
        self.map().is_empty()
    }
}

/// Tells the other nodes that `h` is held through this node.
pub fn announce(locks: &LockService, h: Held) {
    locks.broadcast(encode(&Event::Held(Box::new(h))));
}

/// Tells the other nodes that persistent open `p` is closed.
pub fn announce_gone(locks: &LockService, p: u64) {
    locks.broadcast(encode(&Event::Gone(p)));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(p: u64) -> Held {
        let d = Durability {
            version: 2,
            timeout: Duration::from_secs(60),
            persistent: true,
            create_guid: Some([3; 16]),
            client_guid: [4; 16],
            user: Identity::User("alice".into()),
            lease_key: None,
            lease_version: 0,
            action: 2,
        };
        let f = FileId::new(&[1, 2, 3]).unwrap();
        Held {
            persistent: p,
            file: f,
            parent: f,
            root: f,
            path: vec!["a".into(), "b".into()],
            key: OpenKey { node: 2, seq: 99 },
            lease: None,
            timeout_ms: 60_000,
            create_guid: d.create_guid,
            client_guid: d.client_guid,
            user: User::from(&d.user),
            lease_key: None,
            lease_version: 0,
            action: 2,
        }
    }

    #[test]
    fn events_round_trip_and_anything_else_is_ignored() {
        let e = Event::Held(Box::new(held(7)));
        assert_eq!(decode(&encode(&e)), Some(e));
        assert_eq!(decode(&encode(&Event::Gone(9))), Some(Event::Gone(9)));
        let good = encode(&Event::Held(Box::new(held(7))));
        for n in 0..good.len() {
            assert_eq!(decode(&good[..n]), None, "truncated at {n}");
        }
        let mut other = good.clone();
        other[0] = b'N';
        assert_eq!(decode(&other), None);
        let mut x: u64 = 1;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut b = good.clone();
            let i = (x as usize) % b.len();
            b[i] ^= (x >> 32) as u8;
            let _ = decode(&b);
        }
    }

    #[test]
    fn the_registry_follows_held_and_gone() {
        let r = ClusterOpens::default();
        r.receive(&encode(&Event::Held(Box::new(held(7)))));
        r.receive(b"Nsomething else");
        assert_eq!(r.get(7).map(|h| h.key.seq), Some(99));
        let d = r.get(7).unwrap().durability();
        assert_eq!((d.persistent, d.user, d.create_guid), (true, Identity::User("alice".into()), Some([3; 16])));
        r.receive(&encode(&Event::Gone(7)));
        assert!(r.get(7).is_none() && r.is_empty());
    }
}
