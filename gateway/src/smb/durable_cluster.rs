//! Durable and persistent handles across nodes: what lets a node that never saw an open take
//! it back when its client reconnects there after the open's node died (or gave up the
//! client's address).
//!
//! Two halves make a durable open (v1 `DHnQ`, v2 `DH2Q`, or persistent) valid on another node:
//! - the **lock service** keeps the open itself (share mode, byte-range locks, lease) as an
//!   orphan for the open's timeout when its node dies
//!   ([`crate::locks::LockService::set_durable`]), conflicting as before, so nobody else can
//!   take it meanwhile; [`crate::locks::LockService::reclaim_open`] moves it to the reclaiming
//!   node under a new key;
//! - **this registry** answers what a reconnect names: a `DHnC`/`DH2C` carries only the 16-byte
//!   FileId (and the CreateGuid), so every node must map the persistent id to the file, the
//!   open's lock-service key and the facts a reconnect is checked against (user, client GUID,
//!   lease key, CreateGuid). The node holding the open broadcasts a [`Held`] record over the
//!   lock mesh when the open is made durable (and again after each reclaim, with the new key),
//!   and [`Event::Gone`] when it is closed; every other node keeps the records it heard.
//!
//! A node that joins (or rejoins) the cluster asks for the records ([`Event::Ask`]) as soon as
//! it is in sync with the cluster; every node answers with the records it knows
//! ([`Event::Known`]), its own and those it heard, so the records of a dead node's opens
//! survive as long as one node knows them.
//!
//! A record heard from another node lives as long as its open does in the lock service: every
//! node checks the records it heard there ([`ClusterOpens::sweep`], every [`SWEEP_EVERY`]) and
//! drops those whose open is gone (its timeout ended after its node died, or it was closed
//! and the `Gone` never arrived), so a stale record never sends a reconnect after an open
//! that no longer exists, nor outlives it in memory.
//!
//! While the open's node is alive (its client moved because the address did, `nasgw
//! disable`), the reclaiming node asks it to let the open go ([`Event::Release`]): the holder
//! drops its client's old connection if it still has it, and hands the open over
//! ([`crate::locks::LockService::hand_over`]) instead of keeping it for a connection that
//! will never come back.

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
    /// 1 (`DHnQ`) or 2 (`DH2Q`).
    pub version: u8,
    /// A persistent handle (continuously available share), not only a durable one.
    pub is_persistent: bool,
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
            version: d.version,
            is_persistent: d.persistent,
        }
    }

    /// The durability a reconnect is checked against.
    pub fn durability(&self) -> Durability {
        Durability {
            version: self.version,
            timeout: Duration::from_millis(u64::from(self.timeout_ms)),
            persistent: self.is_persistent,
            create_guid: self.create_guid,
            client_guid: self.client_guid,
            user: Identity::from(&self.user),
            lease_key: self.lease_key,
            lease_version: self.lease_version,
            action: self.action,
        }
    }
}

/// How often a node checks the records it heard against the lock service.
pub const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// The most records one sweep checks (each is one lock-service read); the next sweep goes on
/// from there.
pub const SWEEP_BATCH: usize = 512;

/// The most records one [`Event::Known`] carries (a bound on one mesh message).
pub const KNOWN_CHUNK: usize = 128;

/// What nodes tell each other about durable opens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// The open is held (made durable, or reclaimed) through the sending node.
    Held(Box<Held>),
    /// The open with this persistent id was closed (or expired).
    Gone(u64),
    /// A node that just joined asks every node for the records it knows.
    Ask,
    /// The answer to [`Event::Ask`]: records the sender knows (its own and those it heard).
    Known(Vec<Held>),
    /// A client reconnected through another node and presented this open (checked there):
    /// its node, still alive, must let it go (see the module doc).
    Release(u64),
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

/// What a received event asks this node to do (beyond updating the registry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Nothing.
    None,
    /// Broadcast the records this node knows ([`Event::Ask`]).
    Tell,
    /// Let the open with this persistent id go, if this node holds it ([`Event::Release`]).
    Release(u64),
    /// The open with this persistent id is held through another node now: if it was this
    /// node's, forget it here (its new node has it).
    Moved(u64),
}

/// The durable opens of the cluster by persistent id (see the module doc): those held
/// through other nodes (what a reconnect here may reclaim), and this node's own (what it
/// tells a joining node).
#[derive(Debug, Default)]
pub struct ClusterOpens {
    map: Mutex<HashMap<u64, Held>>,
    mine: Mutex<HashMap<u64, Held>>,
    /// Where the next sweep starts (records in persistent-id order).
    sweep_from: Mutex<u64>,
}

impl ClusterOpens {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Held>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn mine(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Held>> {
        self.mine.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `h` is held through this node now (made durable, or reclaimed here): tells the other
    /// nodes.
    pub fn hold(&self, locks: &LockService, h: Held) {
        self.map().remove(&h.persistent);
        self.mine().insert(h.persistent, h.clone());
        locks.broadcast(encode(&Event::Held(Box::new(h))));
    }

    /// This node's durable open `p` is closed (or handed to another node, with `tell` false:
    /// that node announces it): forgets it, and with `tell` tells the other nodes.
    pub fn drop_mine(&self, locks: &LockService, p: u64, tell: bool) {
        self.mine().remove(&p);
        if tell {
            locks.broadcast(encode(&Event::Gone(p)));
        }
    }

    /// Takes in a broadcast payload (ignored unless it is one of ours); returns what the
    /// event asks of this node.
    pub fn receive(&self, payload: &[u8]) -> Request {
        match decode(payload) {
            Some(Event::Held(h)) => {
                let p = h.persistent;
                self.insert(*h);
                Request::Moved(p)
            }
            Some(Event::Known(all)) => {
                for h in all.into_iter().take(KNOWN_CHUNK) {
                    self.insert(h);
                }
                Request::None
            }
            Some(Event::Gone(p)) => {
                self.map().remove(&p);
                Request::None
            }
            Some(Event::Ask) => Request::Tell,
            Some(Event::Release(p)) => Request::Release(p),
            None => Request::None,
        }
    }

    fn insert(&self, h: Held) {
        self.mine().remove(&h.persistent);
        let mut m = self.map();
        if m.len() >= MAX_RECORDS && !m.contains_key(&h.persistent) {
            tracing::warn!("SMB: too many durable opens announced by other nodes; one is not recorded");
            return;
        }
        m.insert(h.persistent, h);
    }

    /// Every record known, this node's own first (for [`Event::Known`]).
    pub fn all(&self) -> Vec<Held> {
        let mut all: Vec<Held> = self.mine().values().cloned().collect();
        all.extend(self.map().values().cloned());
        all
    }

    /// The record of persistent id `p`.
    pub fn get(&self, p: u64) -> Option<Held> {
        self.map().get(&p).cloned()
    }

    /// The record, held through another node, of the open client `client` made with CreateGuid
    /// `guid` (what a replayed `DH2Q` names).
    pub fn by_create_guid(&self, client: [u8; 16], guid: [u8; 16]) -> Option<Held> {
        self.map().values().find(|h| h.client_guid == client && h.create_guid == Some(guid)).cloned()
    }

    /// Forgets persistent id `p` (reclaimed here, or no longer in the cluster).
    pub fn remove(&self, p: u64) {
        self.map().remove(&p);
    }

    /// Drops up to [`SWEEP_BATCH`] records heard from other nodes whose open the lock service
    /// no longer holds under the recorded key (see the module doc); returns how many it
    /// dropped. A record the lock service cannot answer for now (a partition) is kept.
    pub async fn sweep(&self, locks: &LockService) -> usize {
        let from = *self.sweep_from.lock().unwrap_or_else(|p| p.into_inner());
        let mut heard: Vec<(u64, FileId, OpenKey)> =
            self.map().values().map(|h| (h.persistent, h.file, h.key)).collect();
        heard.sort_unstable_by_key(|h| h.0);
        let start = heard.partition_point(|h| h.0 < from);
        let batch: Vec<_> = heard[start..].iter().chain(&heard[..start]).take(SWEEP_BATCH).copied().collect();
        let next = heard.get(start + batch.len()).map_or(0, |h| h.0);
        *self.sweep_from.lock().unwrap_or_else(|p| p.into_inner()) = next;
        let mut dropped = 0;
        for (p, file, key) in batch {
            let Ok(record) = locks.record(&file).await else { continue };
            if record.open_of(key).is_some() {
                continue;
            }
            let mut m = self.map();
            // Unless a newer record (a reclaim, under a new key) came in meanwhile.
            if m.get(&p).is_some_and(|h| h.key == key) {
                m.remove(&p);
                dropped += 1;
                tracing::info!(
                    persistent = p,
                    "SMB: a durable open's record dropped: its open is gone from the cluster"
                );
            }
        }
        dropped
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

/// Tells the other nodes the records `all` (in chunks of [`KNOWN_CHUNK`]).
pub fn tell(locks: &LockService, all: Vec<Held>) {
    for chunk in all.chunks(KNOWN_CHUNK) {
        locks.broadcast(encode(&Event::Known(chunk.to_vec())));
    }
}

/// Asks every node for the records it knows.
pub fn ask(locks: &LockService) {
    locks.broadcast(encode(&Event::Ask));
}

/// Asks the node holding durable open `p` to let it go.
pub fn ask_release(locks: &LockService, p: u64) {
    locks.broadcast(encode(&Event::Release(p)));
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
            version: 2,
            is_persistent: true,
        }
    }

    #[test]
    fn events_round_trip_and_anything_else_is_ignored() {
        let e = Event::Held(Box::new(held(7)));
        assert_eq!(decode(&encode(&e)), Some(e));
        assert_eq!(decode(&encode(&Event::Gone(9))), Some(Event::Gone(9)));
        for e in [Event::Ask, Event::Release(5), Event::Known(vec![held(1), held(2)])] {
            assert_eq!(decode(&encode(&e)), Some(e));
        }
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
        assert_eq!(r.receive(&encode(&Event::Held(Box::new(held(7))))), Request::Moved(7));
        assert_eq!(r.receive(b"Nsomething else"), Request::None);
        assert_eq!(r.get(7).map(|h| h.key.seq), Some(99));
        let d = r.get(7).unwrap().durability();
        assert_eq!((d.persistent, d.user, d.create_guid), (true, Identity::User("alice".into()), Some([3; 16])));
        r.receive(&encode(&Event::Gone(7)));
        assert!(r.get(7).is_none() && r.is_empty());
        // A joining node's question, and the answers it gets.
        assert_eq!(r.receive(&encode(&Event::Ask)), Request::Tell);
        assert_eq!(r.receive(&encode(&Event::Release(3))), Request::Release(3));
        let v1 = Held { version: 1, is_persistent: false, create_guid: None, ..held(8) };
        assert_eq!(r.receive(&encode(&Event::Known(vec![held(7), v1.clone()]))), Request::None);
        assert_eq!(r.len(), 2);
        // This node's own records are told too, and are not what a reconnect here looks up.
        let locks = LockService::single();
        r.hold(&locks, held(9));
        assert!(r.get(9).is_none());
        assert_eq!(r.all().first(), Some(&held(9)));
        // Another node announcing it (it reclaimed it) makes it that node's.
        assert_eq!(r.receive(&encode(&Event::Held(Box::new(held(9))))), Request::Moved(9));
        assert_eq!(r.get(9), Some(held(9)));
        assert!(r.by_create_guid([4; 16], [3; 16]).is_some());
        assert!(r.by_create_guid([5; 16], [3; 16]).is_none(), "another client's CreateGuid");
        r.remove(9);
        let d = r.get(8).unwrap().durability();
        assert_eq!((d.version, d.persistent, d.create_guid), (1, false, None));
        let mut all = r.all();
        all.sort_by_key(|h| h.persistent);
        assert_eq!(all, vec![held(7), v1]);
        r.hold(&locks, held(10));
        r.drop_mine(&locks, 10, true);
        assert_eq!(r.all().len(), 2);
    }
}
