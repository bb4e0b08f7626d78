//! The lock manager against a real lock table and a real directory (no network: callbacks to
//! the loopback clients below find no portmapper and fail, as a client that went away would).

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::wire::{procs, Stat, Version};
use super::*;
use crate::nfs::xdr::{XdrReader, XdrWriter};
use crate::vfs::posix::{PosixBackend, PosixOptions};
use crate::vfs::{CreateHow, Credentials, SetAttr};

struct Rig {
    nlm: Arc<NlmService>,
    locks: Arc<LockService>,
    fh: Vec<u8>,
    file: FileId,
    ns: Namespace,
    _dir: tempfile::TempDir,
    stop: CancellationToken,
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn rig_with(public: Vec<IpAddr>, grace: Duration, before: impl AsyncFnOnce(&Namespace)) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let ns = Namespace::new(Arc::new(PosixBackend::open(dir.path(), PosixOptions::new("t")).unwrap()));
    let (file, _) = ns
        .create(&Credentials::root(), ns.root(), b"f", 0o644, CreateHow::Unchecked(SetAttr::default()))
        .await
        .unwrap();
    before(&ns).await;
    let codec = HandleCodec::new(b"test key", ns.volume_id());
    let locks = LockService::single();
    let stop = CancellationToken::new();
    let nlm = NlmService::new(locks.clone(), codec.clone(), ns.clone(), public, grace, stop.clone());
    nlm.start();
    Rig { nlm, locks, fh: codec.encode(&file), file, ns, _dir: dir, stop }
}

async fn rig() -> Rig {
    rig_with(Vec::new(), Duration::from_secs(5), async |_| {}).await
}

fn peer(client: &str) -> Peer {
    Peer { client: SocketAddr::new(client.parse().unwrap(), 1000), server: "127.0.0.1".parse().unwrap() }
}

/// A client's lock owner.
#[derive(Clone, Copy)]
struct Who {
    client: &'static str,
    svid: i32,
}

impl Who {
    fn caller(&self) -> Vec<u8> {
        format!("host-{}", self.client).into_bytes()
    }
    fn oh(&self) -> Vec<u8> {
        format!("{}@{}", self.svid, self.client).into_bytes()
    }
}

fn lock_body(w: &mut XdrWriter, v: Version, who: Who, fh: &[u8], offset: u64, len: u64) {
    w.opaque(&who.caller()).opaque(fh).opaque(&who.oh()).u32(who.svid as u32);
    if v == Version::V4 {
        w.u64(offset).u64(len);
    } else {
        w.u32(offset as u32).u32(len as u32);
    }
}

fn stat_of(a: Answer) -> Stat {
    let Answer::Body(b) = a else { panic!("no body: {a:?}") };
    let r = &mut XdrReader::new(&b);
    r.opaque(1024).unwrap();
    Stat::from_code(r.u32().unwrap())
}

impl Rig {
    #[allow(clippy::too_many_arguments)]
    async fn lock_on(&self, p: Peer, who: Who, ex: bool, off: u64, len: u64, block: bool, reclaim: bool) -> Stat {
        let mut w = XdrWriter::default();
        w.opaque(b"ck").bool(block).bool(ex);
        lock_body(&mut w, Version::V4, who, &self.fh, off, len);
        w.bool(reclaim).u32(1);
        stat_of(self.nlm.call(p, 4, procs::LOCK, &w.buf).await)
    }

    async fn lock(&self, who: Who, ex: bool, off: u64, len: u64) -> Stat {
        self.lock_on(peer(who.client), who, ex, off, len, false, false).await
    }

    async fn unlock(&self, who: Who, off: u64, len: u64) -> Stat {
        let mut w = XdrWriter::default();
        w.opaque(b"ck");
        lock_body(&mut w, Version::V4, who, &self.fh, off, len);
        stat_of(self.nlm.call(peer(who.client), 4, procs::UNLOCK, &w.buf).await)
    }

    /// TEST: the status and the holder's (svid, exclusive, offset, len).
    async fn test(&self, who: Who, ex: bool, off: u64, len: u64) -> (Stat, Option<(i32, bool, u64, u64)>) {
        let mut w = XdrWriter::default();
        w.opaque(b"ck").bool(ex);
        lock_body(&mut w, Version::V4, who, &self.fh, off, len);
        let Answer::Body(b) = self.nlm.call(peer(who.client), 4, procs::TEST, &w.buf).await else { panic!() };
        let r = &mut XdrReader::new(&b);
        r.opaque(1024).unwrap();
        let s = Stat::from_code(r.u32().unwrap());
        if s != Stat::Denied {
            return (s, None);
        }
        let ex = r.bool().unwrap();
        let svid = r.u32().unwrap() as i32;
        r.opaque(1024).unwrap();
        (s, Some((svid, ex, r.u64().unwrap(), r.u64().unwrap())))
    }

    async fn share(&self, who: Who, mode: u32, access: u32, unshare: bool) -> Stat {
        let mut w = XdrWriter::default();
        w.opaque(b"ck").opaque(&who.caller()).opaque(&self.fh).opaque(&who.oh()).u32(mode).u32(access).bool(false);
        let proc_ = if unshare { procs::UNSHARE } else { procs::SHARE };
        stat_of(self.nlm.call(peer(who.client), 4, proc_, &w.buf).await)
    }
}

const A: Who = Who { client: "127.0.0.2", svid: 11 };
const A2: Who = Who { client: "127.0.0.2", svid: 12 };
const B: Who = Who { client: "127.0.0.3", svid: 11 };
const C: Who = Who { client: "127.0.0.4", svid: 5 };

#[tokio::test]
async fn posix_locks_conflict_between_owners_split_merge_and_upgrade() {
    let r = rig().await;
    assert_eq!(r.lock(A, true, 0, 100).await, Stat::Granted);
    assert_eq!(r.lock(A, true, 50, 100).await, Stat::Granted, "an owner's own locks never conflict");
    assert_eq!(r.lock(A2, false, 10, 1).await, Stat::Denied, "another process of the same client");
    assert_eq!(r.lock(B, false, 149, 1).await, Stat::Denied);
    assert_eq!(r.lock(B, false, 150, 0).await, Stat::Granted, "after A's merged range, to the end");
    assert_eq!(r.test(C, false, 0, 1).await, (Stat::Denied, Some((11, true, 0, 150))), "A merged 0..150");
    // Unlocking the middle splits A's lock.
    assert_eq!(r.unlock(A, 20, 10).await, Stat::Granted);
    assert_eq!(r.lock(C, true, 20, 10).await, Stat::Granted);
    assert_eq!(r.test(B, true, 0, 20).await.0, Stat::Denied);
    // Downgrade to shared: others may share it, nobody may write.
    assert_eq!(r.lock(A, false, 0, 20).await, Stat::Granted);
    assert_eq!(r.lock(B, false, 0, 5).await, Stat::Granted);
    assert_eq!(r.lock(B, true, 0, 5).await, Stat::Denied, "A still reads 0..20");
    assert_eq!(r.test(C, true, 150, 1).await, (Stat::Denied, Some((11, false, 150, 0))), "B's to-the-end lock");
    assert_eq!(r.unlock(Who { client: "127.0.0.9", svid: 1 }, 0, 0).await, Stat::Granted, "unlock of nothing");
    // Everything released: the table forgets the file.
    for who in [A, B, C] {
        assert_eq!(r.unlock(who, 0, 0).await, Stat::Granted);
    }
    assert!(r.locks.record(&r.file).await.unwrap().ranges.is_empty());
    assert_eq!(r.nlm.volume.open_count(), 0, "no volume descriptor left behind");
}

#[tokio::test]
async fn nlm_and_smb_locks_exclude_each_other() {
    let r = rig().await;
    let smb = Owner::Open(r.locks.new_key());
    r.locks.lock_range(&r.file, RangeLock { owner: smb, offset: 0, len: 10, exclusive: true }).await.unwrap();
    assert_eq!(r.lock(A, false, 5, 10).await, Stat::Denied);
    assert_eq!(r.test(A, false, 9, 1).await, (Stat::Denied, Some((0, true, 0, 10))), "an SMB holder has svid 0");
    assert_eq!(r.lock(A, true, 10, 10).await, Stat::Granted);
    let smb2 = Owner::Open(r.locks.new_key());
    let clash = r.locks.lock_range(&r.file, RangeLock { owner: smb2, offset: 15, len: 1, exclusive: false }).await;
    assert_eq!(clash, Err(Conflict::Locked), "the NLM lock keeps SMB out");
}

#[tokio::test]
async fn a_blocked_lock_is_taken_when_it_frees() {
    let r = rig().await;
    assert_eq!(r.lock(A, true, 0, 10).await, Stat::Granted);
    assert_eq!(r.lock_on(peer(B.client), B, true, 5, 1, true, false).await, Stat::Blocked);
    assert_eq!(r.lock_on(peer(B.client), B, true, 5, 1, true, false).await, Stat::Blocked, "a re-poll");
    assert_eq!(r.unlock(A, 0, 10).await, Stat::Granted);
    // The waiter takes it (its callback finds no client to answer: the lock stays granted and
    // the client's next poll would find it).
    for _ in 0..200 {
        if r.test(C, false, 5, 1).await.0 == Stat::Denied {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(r.test(C, false, 5, 1).await, (Stat::Denied, Some((11, true, 5, 1))));
    assert_eq!(r.lock_on(peer(B.client), B, true, 5, 1, true, false).await, Stat::Granted, "the poll finds it");
    // A cancelled wait takes nothing.
    assert_eq!(r.lock_on(peer(C.client), C, true, 0, 0, true, false).await, Stat::Blocked);
    let mut w = XdrWriter::default();
    w.opaque(b"ck").bool(true).bool(true);
    lock_body(&mut w, Version::V4, C, &r.fh, 0, 0);
    assert_eq!(stat_of(r.nlm.call(peer(C.client), 4, procs::CANCEL, &w.buf).await), Stat::Granted);
    assert_eq!(r.unlock(B, 0, 0).await, Stat::Granted);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(r.test(A, true, 0, 0).await.0, Stat::Granted, "the cancelled waiter did not take it");
}

#[tokio::test]
async fn share_reservations_are_opens_with_share_modes() {
    let r = rig().await;
    // A reads and writes, denying writers.
    assert_eq!(r.share(A, 2, 3, false).await, Stat::Granted);
    assert_eq!(r.share(B, 0, 2, false).await, Stat::Denied);
    assert_eq!(r.share(B, 0, 1, false).await, Stat::Granted, "readers are welcome");
    assert_eq!(r.share(A, 2, 3, true).await, Stat::Granted);
    assert_eq!(r.share(C, 0, 2, false).await, Stat::Granted);
}

#[tokio::test]
async fn a_restarted_client_loses_its_locks() {
    let r = rig().await;
    assert_eq!(r.lock(A, true, 0, 10).await, Stat::Granted);
    assert_eq!(r.lock(B, true, 20, 10).await, Stat::Granted);
    let notify = crate::nfs::nsm::notify_args("renamed-after-reboot", 5);
    let a = r.nlm.nsm_call(peer(A.client), 1, crate::nfs::nsm::procs::NOTIFY, &notify).await;
    assert_eq!(a, Answer::Body(Vec::new()));
    assert_eq!(r.test(C, true, 0, 10).await.0, Stat::Granted, "A's lock is gone");
    assert_eq!(r.test(C, true, 20, 1).await.0, Stat::Denied, "B's stays");
    // FREE_ALL names the client, from its own address only.
    let mut w = XdrWriter::default();
    w.opaque(&B.caller()).u32(3);
    r.nlm.call(peer(C.client), 4, procs::FREE_ALL, &w.buf).await;
    assert_eq!(r.test(C, true, 20, 1).await.0, Stat::Denied, "not from another client");
    r.nlm.call(peer(B.client), 4, procs::FREE_ALL, &w.buf).await;
    assert_eq!(r.test(C, true, 20, 1).await.0, Stat::Granted);
    // The monitor list forgot it too.
    let left = MonitorStore::new(r.ns.clone()).clients("127.0.0.1".parse().unwrap()).await.unwrap();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn after_a_restart_only_reclaims_are_served_until_grace_ends() {
    let server: IpAddr = "127.0.0.1".parse().unwrap();
    let r = rig_with(Vec::new(), Duration::from_millis(1500), async |ns: &Namespace| {
        MonitorStore::new(ns.clone()).add(server, "127.0.0.2".parse().unwrap(), b"host-127.0.0.2").await.unwrap();
    })
    .await;
    let p = peer(A.client);
    assert_eq!(r.lock(B, true, 0, 10).await, Stat::DeniedGracePeriod);
    assert_eq!(r.test(B, true, 0, 10).await.0, Stat::DeniedGracePeriod);
    assert_eq!(r.lock_on(p, A, true, 0, 10, false, true).await, Stat::Granted, "the reclaim");
    assert_eq!(r.unlock(B, 0, 10).await, Stat::Granted, "releases are always served");
    assert_eq!(r.nlm.in_grace(), vec![server]);
    assert_eq!(MonitorStore::new(r.ns.clone()).state(server).await.unwrap(), 3, "a new NSM state number");
    let t = std::time::Instant::now();
    while r.lock(B, true, 0, 10).await == Stat::DeniedGracePeriod {
        assert!(t.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(r.lock(B, true, 0, 10).await, Stat::Denied, "the reclaimed lock holds");
    assert_eq!(r.lock_on(p, A, true, 20, 10, false, true).await, Stat::DeniedGracePeriod, "no reclaim after grace");
}

#[tokio::test]
async fn an_address_that_moves_away_takes_its_clients_locks_with_it() {
    let vip: IpAddr = "198.18.1.1".parse().unwrap();
    let r = rig_with(vec![vip], Duration::from_secs(5), async |_| {}).await;
    let owned = Arc::new(Mutex::new(vec![vip]));
    let o = owned.clone();
    r.nlm.follow(Box::new(move || o.lock().unwrap().clone()));
    let p = Peer { client: "198.18.0.20:800".parse().unwrap(), server: vip };
    assert_eq!(r.lock_on(p, A, true, 0, 10, false, false).await, Stat::Granted, "no clients recorded: no grace");
    assert!(r.nlm.in_grace().is_empty());
    owned.lock().unwrap().clear();
    let t = std::time::Instant::now();
    while !r.locks.record(&r.file).await.unwrap().ranges.is_empty() {
        assert!(t.elapsed() < Duration::from_secs(5), "the lock was not released");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut w = XdrWriter::default();
    w.opaque(b"ck").bool(false).bool(true);
    lock_body(&mut w, Version::V4, A, &r.fh, 0, 1);
    w.bool(false).u32(1);
    assert_eq!(r.nlm.call(p, 4, procs::LOCK, &w.buf).await, Answer::Silent, "not this node's address any more");
    // It comes back: its recorded client is told to reclaim, and the address is in grace.
    owned.lock().unwrap().push(vip);
    assert_eq!(r.lock_on(p, B, true, 0, 10, false, false).await, Stat::DeniedGracePeriod);
    assert_eq!(r.nlm.in_grace(), vec![vip]);
    assert_eq!(r.lock_on(p, A, true, 0, 10, false, true).await, Stat::Granted);
}

#[tokio::test]
async fn old_versions_async_forms_and_garbage() {
    let r = rig().await;
    let mut w = XdrWriter::default();
    w.opaque(b"ck").bool(false).bool(true);
    lock_body(&mut w, Version::V1, A, &r.fh, 0, 10);
    w.bool(false).u32(1);
    assert_eq!(stat_of(r.nlm.call(peer(A.client), 1, procs::LOCK, &w.buf).await), Stat::Granted);
    assert_eq!(r.test(B, false, 9, 1).await.0, Stat::Denied, "a v1 lock is the same lock");
    // LOCK_MSG: the answer goes back as a LOCK_RES call; the reply itself is empty.
    let mut m = XdrWriter::default();
    m.opaque(b"ck").bool(false).bool(true);
    lock_body(&mut m, Version::V4, B, &r.fh, 50, 10);
    m.bool(false).u32(1);
    assert_eq!(r.nlm.call(peer(B.client), 4, procs::LOCK_MSG, &m.buf).await, Answer::Body(Vec::new()));
    assert_eq!(r.test(C, false, 55, 1).await.0, Stat::Denied, "the _MSG lock was taken");
    assert_eq!(
        r.nlm.call(peer(B.client), 2, procs::LOCK, &m.buf).await,
        Answer::Status(ReplyStatus::ProgMismatch(1, 4))
    );
    assert_eq!(r.nlm.call(peer(B.client), 4, procs::LOCK, &m.buf[..9]).await, Answer::Status(ReplyStatus::GarbageArgs));
    assert_eq!(r.nlm.call(peer(B.client), 4, 30, &[]).await, Answer::Status(ReplyStatus::ProcUnavail));
    // A handle of another volume is stale.
    let other = HandleCodec::new(b"other key", crate::vfs::VolumeId(*b"othervol")).encode(&r.file);
    let mut s = XdrWriter::default();
    s.opaque(b"ck").bool(false).bool(true);
    lock_body(&mut s, Version::V4, A, &other, 0, 1);
    s.bool(false).u32(1);
    assert_eq!(stat_of(r.nlm.call(peer(A.client), 4, procs::LOCK, &s.buf).await), Stat::StaleFh);
}

/// A node out of sync (cut off, or taking over leadership) gives its NLM clients' locks back
/// on the volume at once; in sync again, it sets those the cluster's table still holds again.
#[tokio::test]
async fn volume_locks_follow_the_nodes_standing_in_the_cluster() {
    use crate::locks::machine::{HaInput, Input};
    let r = rig().await;
    assert_eq!(r.lock(A, true, 0, 100).await, Stat::Granted);
    // Another client of the volume (its own owner) sees the lock.
    let seen = async || r.nlm.volume.test(r.file, 0x4242, true, 10, 1).await.is_some();
    assert!(seen().await, "set on the volume after the grant");
    let wait = async |want: bool, what: &str| {
        for _ in 0..500 {
            if seen().await == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{what}");
    };
    r.locks.feed(Input::Ha(HaInput { leader: None, ok: false }));
    r.locks.feed(Input::Tick);
    wait(false, "the lock stayed on the volume of a node out of sync").await;
    r.locks.feed(Input::Ha(HaInput { leader: Some(0), ok: true }));
    r.locks.feed(Input::Tick);
    wait(true, "the lock was not set on the volume again once in sync").await;
    assert_eq!(r.unlock(A, 0, 100).await, Stat::Granted);
    assert!(!seen().await, "released on the volume by the unlock");
}
