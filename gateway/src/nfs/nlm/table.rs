//! What this node's lock manager knows about its clients, pure bookkeeping beside the cluster's
//! lock table (which alone decides conflicts): which clients use which server address, which of
//! their lock owners hold locks on which files, their share reservations and their blocked
//! requests. It answers "everything client X holds through address A" when X reboots
//! (SM_NOTIFY, FREE_ALL) or A moves to another node, and "who has been idle long enough to be
//! forgotten" for the monitor list.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use crate::locks::OpenKey;
use crate::vfs::FileId;

/// A client as seen through one server address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientKey {
    /// The server address it talks to (a public address on a cluster).
    pub server: IpAddr,
    /// Its own address.
    pub client: IpAddr,
}

/// A blocked LOCK: which owner waits for which range of which file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WaitKey {
    /// The file.
    pub file: FileId,
    /// The owner.
    pub owner: u128,
    /// First byte.
    pub offset: u64,
    /// Length in the lock table's terms.
    pub len: u64,
    /// Write lock.
    pub exclusive: bool,
}

impl WaitKey {
    fn overlaps(&self, offset: u64, len: u64) -> bool {
        let (a0, a1) = (u128::from(self.offset), u128::from(self.offset) + u128::from(self.len));
        let (b0, b1) = (u128::from(offset), u128::from(offset) + u128::from(len));
        a0 < b1 && b0 < a1
    }
}

#[derive(Debug, Clone)]
struct Client {
    caller: Vec<u8>,
    /// Its entry is on the volume's monitor list.
    recorded: bool,
    last_active: Duration,
    owners: BTreeSet<u128>,
}

#[derive(Debug, Clone)]
struct OwnerInfo {
    client: ClientKey,
    oh: Vec<u8>,
    files: BTreeSet<FileId>,
}

/// Everything one client held, handed out when it is forgotten.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holdings {
    /// (owner, file) pairs with locks.
    pub locks: Vec<(u128, FileId)>,
    /// Share reservations (file, open).
    pub shares: Vec<(FileId, OpenKey)>,
    /// Blocked requests.
    pub waiting: Vec<WaitKey>,
    /// The clients forgotten, with whether they were on the monitor list.
    pub clients: Vec<(ClientKey, bool)>,
}

impl Holdings {
    fn absorb(&mut self, o: Holdings) {
        self.locks.extend(o.locks);
        self.shares.extend(o.shares);
        self.waiting.extend(o.waiting);
        self.clients.extend(o.clients);
    }
}

/// The table.
#[derive(Debug, Clone, Default)]
pub struct Table {
    clients: BTreeMap<ClientKey, Client>,
    owners: BTreeMap<u128, OwnerInfo>,
    shares: BTreeMap<(FileId, u128), (ClientKey, OpenKey)>,
    waiting: BTreeMap<WaitKey, ClientKey>,
}

impl Table {
    /// Client `k` (calling itself `caller`) made a request at `now`.
    pub fn touch(&mut self, k: ClientKey, caller: &[u8], now: Duration) {
        let c = self.clients.entry(k).or_insert_with(|| Client {
            caller: caller.to_vec(),
            recorded: false,
            last_active: now,
            owners: BTreeSet::new(),
        });
        c.last_active = now;
        if c.caller != caller {
            c.caller = caller.to_vec();
        }
    }

    /// Whether `k` is on the volume's monitor list.
    pub fn recorded(&self, k: &ClientKey) -> bool {
        self.clients.get(k).is_some_and(|c| c.recorded)
    }

    /// Marks `k` as on the monitor list (or not).
    pub fn set_recorded(&mut self, k: ClientKey, caller: &[u8], on: bool, now: Duration) {
        self.touch(k, caller, now);
        if let Some(c) = self.clients.get_mut(&k) {
            c.recorded = on;
        }
    }

    /// Owner `owner` of client `k` (owner handle `oh`) now holds locks on `file`.
    pub fn note_lock(&mut self, k: ClientKey, owner: u128, oh: &[u8], file: FileId) {
        if let Some(c) = self.clients.get_mut(&k) {
            c.owners.insert(owner);
        }
        let o = self.owners.entry(owner).or_insert_with(|| OwnerInfo {
            client: k,
            oh: oh.to_vec(),
            files: BTreeSet::new(),
        });
        o.files.insert(file);
    }

    /// `owner` holds nothing on `file` any more.
    pub fn forget_file(&mut self, owner: u128, file: &FileId) {
        let Some(o) = self.owners.get_mut(&owner) else { return };
        o.files.remove(file);
        if o.files.is_empty() {
            let k = o.client;
            self.owners.remove(&owner);
            if let Some(c) = self.clients.get_mut(&k) {
                c.owners.remove(&owner);
            }
        }
    }

    /// The owner handle of `owner`, if it is one of this node's clients' owners.
    pub fn oh_of(&self, owner: u128) -> Option<&[u8]> {
        self.owners.get(&owner).map(|o| o.oh.as_slice())
    }

    /// Records a share reservation; returns the one it replaces.
    pub fn add_share(&mut self, k: ClientKey, file: FileId, owner: u128, open: OpenKey) -> Option<OpenKey> {
        self.shares.insert((file, owner), (k, open)).map(|(_, o)| o)
    }

    /// Removes a share reservation.
    pub fn remove_share(&mut self, file: FileId, owner: u128) -> Option<OpenKey> {
        self.shares.remove(&(file, owner)).map(|(_, o)| o)
    }

    /// A blocked request of client `k`.
    pub fn add_waiter(&mut self, k: ClientKey, w: WaitKey) -> bool {
        self.waiting.insert(w, k).is_none()
    }

    /// The request is no longer blocked (granted, cancelled, dropped).
    pub fn remove_waiter(&mut self, w: &WaitKey) -> bool {
        self.waiting.remove(w).is_some()
    }

    /// Whether `w` is blocked.
    pub fn is_waiting(&self, w: &WaitKey) -> bool {
        self.waiting.contains_key(w)
    }

    /// Blocked requests of `owner` on `file` that overlap the range (an UNLOCK cancels them).
    pub fn waiters_overlapping(&self, file: &FileId, owner: u128, offset: u64, len: u64) -> Vec<WaitKey> {
        self.waiting
            .keys()
            .filter(|w| w.file == *file && w.owner == owner && w.overlaps(offset, len))
            .copied()
            .collect()
    }

    /// Blocked requests in total.
    pub fn waiting_count(&self) -> usize {
        self.waiting.len()
    }

    fn take_client(&mut self, k: ClientKey) -> Holdings {
        let mut h = Holdings::default();
        let Some(c) = self.clients.remove(&k) else { return h };
        for owner in c.owners {
            if let Some(o) = self.owners.remove(&owner) {
                h.locks.extend(o.files.into_iter().map(|f| (owner, f)));
            }
        }
        let shares: Vec<(FileId, u128)> = self.shares.iter().filter(|(_, (ck, _))| *ck == k).map(|(x, _)| *x).collect();
        for s in shares {
            if let Some((_, open)) = self.shares.remove(&s) {
                h.shares.push((s.0, open));
            }
        }
        let waits: Vec<WaitKey> = self.waiting.iter().filter(|(_, ck)| **ck == k).map(|(w, _)| *w).collect();
        for w in waits {
            self.waiting.remove(&w);
            h.waiting.push(w);
        }
        h.clients.push((k, c.recorded));
        h
    }

    /// Forgets every client through `server` (this node no longer serves that address).
    pub fn take_server(&mut self, server: IpAddr) -> Holdings {
        let keys: Vec<ClientKey> = self.clients.keys().filter(|k| k.server == server).copied().collect();
        let mut h = Holdings::default();
        for k in keys {
            h.absorb(self.take_client(k));
        }
        h
    }

    /// Forgets the clients a restarted host was (SM_NOTIFY or FREE_ALL from `from` about host
    /// `name`): those at address `from` if `by_address`, and those calling themselves `name`.
    pub fn take_rebooted(&mut self, from: IpAddr, name: &[u8], by_address: bool) -> Holdings {
        let keys: Vec<ClientKey> = self
            .clients
            .iter()
            .filter(|(k, c)| (by_address && k.client == from) || (c.caller == name && (by_address || k.client == from)))
            .map(|(k, _)| *k)
            .collect();
        let mut h = Holdings::default();
        for k in keys {
            h.absorb(self.take_client(k));
        }
        h
    }

    /// Clients that hold nothing and made no request since `since`.
    pub fn idle(&self, since: Duration) -> Vec<ClientKey> {
        self.clients
            .iter()
            .filter(|(k, c)| {
                c.owners.is_empty()
                    && c.last_active < since
                    && !self.shares.values().any(|(ck, _)| ck == *k)
                    && !self.waiting.values().any(|ck| ck == *k)
            })
            .map(|(k, _)| *k)
            .collect()
    }

    /// Forgets an idle client (after its monitor entry was removed).
    pub fn forget_idle(&mut self, k: &ClientKey) {
        if self.clients.get(k).is_some_and(|c| c.owners.is_empty()) {
            self.clients.remove(k);
        }
    }

    /// Clients known (for status and tests).
    pub fn client_count(&self) -> usize {
        self.clients.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    fn fid(n: u8) -> FileId {
        FileId::new(&[n]).unwrap()
    }
    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn a_released_address_hands_back_everything_of_its_clients_only() {
        let a = ClientKey { server: ip("198.18.1.1"), client: ip("198.18.0.20") };
        let b = ClientKey { server: ip("198.18.1.2"), client: ip("198.18.0.20") };
        let mut t = Table::default();
        t.touch(a, b"vm", s(1));
        t.touch(b, b"vm", s(1));
        t.note_lock(a, 7, b"7@vm", fid(1));
        t.note_lock(a, 7, b"7@vm", fid(2));
        t.note_lock(b, 8, b"8@vm", fid(1));
        let open = OpenKey { node: 0, seq: 1 };
        assert_eq!(t.add_share(a, fid(3), 9, open), None);
        let w = WaitKey { file: fid(4), owner: 7, offset: 0, len: 10, exclusive: true };
        assert!(t.add_waiter(a, w));
        assert!(!t.add_waiter(a, w), "a re-poll does not queue twice");
        let h = t.take_server(a.server);
        assert_eq!(h.locks, vec![(7, fid(1)), (7, fid(2))]);
        assert_eq!(h.shares, vec![(fid(3), open)]);
        assert_eq!(h.waiting, vec![w]);
        assert_eq!(h.clients, vec![(a, false)]);
        assert_eq!(t.oh_of(8), Some(&b"8@vm"[..]), "the other address's owner stays");
        assert_eq!(t.oh_of(7), None);
        assert_eq!(t.client_count(), 1);
    }

    #[test]
    fn a_rebooted_client_is_found_by_address_or_by_name() {
        let k1 = ClientKey { server: ip("198.18.1.1"), client: ip("198.18.0.20") };
        let k2 = ClientKey { server: ip("198.18.1.1"), client: ip("198.18.0.21") };
        let mut t = Table::default();
        t.touch(k1, b"vm1", s(0));
        t.touch(k2, b"vm2", s(0));
        t.note_lock(k1, 1, b"", fid(1));
        t.note_lock(k2, 2, b"", fid(1));
        // FREE_ALL: the name must come from its own address.
        assert!(t.take_rebooted(ip("198.18.0.99"), b"vm1", false).locks.is_empty());
        // SM_NOTIFY: by name (it rebooted with another address)...
        assert_eq!(t.take_rebooted(ip("198.18.0.99"), b"vm1", true).locks, vec![(1, fid(1))]);
        // ...or by the address it comes from.
        assert_eq!(t.take_rebooted(ip("198.18.0.21"), b"renamed", true).locks, vec![(2, fid(1))]);
        assert_eq!(t.client_count(), 0);
    }

    #[test]
    fn owners_and_idle_clients() {
        let k = ClientKey { server: ip("10.0.0.1"), client: ip("10.0.0.2") };
        let mut t = Table::default();
        t.set_recorded(k, b"c", true, s(10));
        assert!(t.recorded(&k));
        t.note_lock(k, 5, b"oh", fid(1));
        assert!(t.idle(s(100)).is_empty(), "holds a lock");
        t.forget_file(5, &fid(1));
        assert_eq!(t.oh_of(5), None);
        assert_eq!(t.idle(s(10)), vec![], "active at 10");
        assert_eq!(t.idle(s(11)), vec![k]);
        let w = WaitKey { file: fid(1), owner: 5, offset: 100, len: 50, exclusive: false };
        t.add_waiter(k, w);
        assert!(t.idle(s(11)).is_empty(), "waits for a lock");
        assert_eq!(t.waiters_overlapping(&fid(1), 5, 0, 101), vec![w]);
        assert!(t.waiters_overlapping(&fid(1), 5, 0, 100).is_empty());
        assert!(t.waiters_overlapping(&fid(1), 6, 0, 1000).is_empty());
        assert!(t.remove_waiter(&w) && !t.is_waiting(&w));
        t.forget_idle(&k);
        assert_eq!(t.client_count(), 0);
    }
}
