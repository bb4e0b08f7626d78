//! The Network Lock Manager (NLM versions 1, 3 and 4) and the server side of the status monitor
//! (NSM), on the cluster's lock table: an NLM lock is a byte-range lock of POSIX owner
//! [`owner::owner_id`] in [`LockService`], so it conflicts with SMB locks and with NLM locks
//! taken through any node, and it is mirrored onto the volume ([`crate::locks::volume`]) for every other
//! client of it.
//!
//! Flows:
//! - **LOCK**: admitted by the grace rules of the address the client used ([`grace`]), its
//!   client recorded on the shared volume's monitor list ([`store`]) before the first grant,
//!   then taken in the lock table (and on the volume). A blocking LOCK that conflicts answers
//!   BLOCKED; a task retries whenever the file's state changes (and every half second), takes
//!   the lock when it frees and calls the client back (GRANTED, `callback.rs`). A client that
//!   no longer waits answers the callback with DENIED and the lock is given back.
//! - **Takeover / restart**: when this node starts serving an address whose monitor list names
//!   clients, the address enters its grace period, its NSM state number moves on, and each
//!   client is told (SM_NOTIFY, from that address) to reclaim. Reclaims are granted once the
//!   lock table no longer has the dead node's locks (a reclaim waits for that, up to the end
//!   of grace); everything else is refused with DENIED_GRACE_PERIOD until grace ends.
//! - **Release**: when HA moves an address away from this node, the locks its clients held
//!   through it are released here; the new owner's grace period lets them reclaim there.
//! - **Client reboot**: SM_NOTIFY from a client (or FREE_ALL) drops everything it held.
//!
//! The bookkeeping of clients, owners, shares and blocked requests is [`table`] (pure);
//! decoding is [`wire`] (pure, fuzzed).

mod callback;
pub mod grace;
pub mod owner;
#[cfg(test)]
mod sim;
pub mod store;
pub mod table;
pub mod wire;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use self::grace::{Grace, Kind, Served};
use self::owner::{holder_svid, owner_id, table_len, wire_len};
use self::store::MonitorStore;
use self::table::{ClientKey, Holdings, Table, WaitKey};
use self::wire::{Args, Holder, Lock, OwnedLock, Share, Stat, Version};
use super::handle::HandleCodec;
use super::nsm;
use super::rpc::ReplyStatus;
use super::xdr::XdrWriter;
use crate::locks::volume::VolumeLocks;
use crate::locks::{
    access, flags, share, CachingRequest, Conflict, FileRecord, LockService, OpenRequest, Owner, RangeLock,
};
use crate::vfs::{FileId, Namespace};

/// A client with nothing held for this long leaves the monitor list.
const IDLE_FORGET: Duration = Duration::from_secs(120);
/// How often idle clients are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(30);
/// A blocked lock is retried at least this often (besides every change of the file's state).
const WAIT_POLL: Duration = Duration::from_millis(500);
/// Most blocked requests at once (more are refused with DENIED_NOLOCKS).
const MAX_WAITERS: usize = 4096;
/// How often HA's assignment of public addresses is looked at.
const FOLLOW_EVERY: Duration = Duration::from_millis(100);

/// Where a call came from, and which of this node's addresses it was sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// The client.
    pub client: SocketAddr,
    /// The server address it used (a public address on a cluster).
    pub server: IpAddr,
}

impl Peer {
    fn key(&self) -> ClientKey {
        ClientKey { server: self.server.to_canonical(), client: self.client.ip().to_canonical() }
    }
}

/// How an NLM or NSM call is answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A successful reply with this result body.
    Body(Vec<u8>),
    /// An RPC-level refusal.
    Status(ReplyStatus),
    /// No reply at all: the call came to an address this node no longer serves (the client
    /// sends it again and reaches the address's new owner).
    Silent,
}

/// A blocked request's controls.
struct Waiter {
    cancel: CancellationToken,
    granted: bool,
}

struct Inner {
    grace: Grace,
    served: Served,
    /// NSM state number per address.
    states: HashMap<IpAddr, u32>,
    /// Takeovers whose monitor list is being read: calls to those addresses wait.
    loading: HashMap<IpAddr, watch::Receiver<bool>>,
    table: Table,
    waiters: HashMap<WaitKey, Waiter>,
}

/// A function saying which public addresses this node holds now.
pub type OwnedAddresses = Box<dyn Fn() -> Vec<IpAddr> + Send + Sync>;

/// The lock manager of one node.
pub struct NlmService {
    me: u16,
    locks: Arc<LockService>,
    handles: HandleCodec,
    store: MonitorStore,
    volume: VolumeLocks,
    t0: Instant,
    inner: Mutex<Inner>,
    /// Serializes changes of the volume's monitor list (an idle client's removal never races
    /// its next lock's addition).
    store_writes: tokio::sync::Mutex<()>,
    owned: OnceLock<OwnedAddresses>,
    /// Until the monitor list was read at start, calls to this node's own addresses wait.
    started: watch::Receiver<bool>,
    started_tx: watch::Sender<bool>,
    stop: CancellationToken,
}

impl std::fmt::Debug for NlmService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NlmService").field("me", &self.me).finish()
    }
}

/// The ranges of `owner` within `offset..offset + len` in `r`, cut to that range.
fn own_ranges(r: &FileRecord, owner: Owner, offset: u64, len: u64) -> Vec<RangeLock> {
    let (s, e) = (u128::from(offset), u128::from(offset) + u128::from(len));
    r.ranges
        .iter()
        .filter(|x| x.owner == owner)
        .filter_map(|x| {
            let (xs, xe) = (u128::from(x.offset), u128::from(x.offset) + u128::from(x.len));
            let (cs, ce) = (xs.max(s), xe.min(e));
            (cs < ce).then(|| RangeLock { offset: cs as u64, len: (ce - cs) as u64, ..*x })
        })
        .collect()
}

/// The POSIX (NLM) locks node `me`'s clients hold in `held` (this node's holdings), with the
/// volume owner of each: what is set on the volume again once the node is back in sync.
fn own_posix_locks(me: u16, held: &std::collections::BTreeMap<FileId, FileRecord>) -> Vec<(FileId, u128, RangeLock)> {
    held.iter()
        .flat_map(|(f, r)| {
            r.ranges.iter().filter_map(move |l| match l.owner {
                Owner::Posix { node, id } if node == me => Some((*f, id, *l)),
                _ => None,
            })
        })
        .collect()
}

/// The share mode and access of an NLM share reservation as an open of the lock table.
fn share_open(s: &Share<'_>) -> (u32, u32) {
    let mut acc = 0;
    if s.access & 1 != 0 {
        acc |= access::READ_DATA;
    }
    if s.access & 2 != 0 {
        acc |= access::WRITE_DATA | access::APPEND_DATA;
    }
    let mut sh = share::DELETE;
    if s.mode & 1 == 0 {
        sh |= share::READ;
    }
    if s.mode & 2 == 0 {
        sh |= share::WRITE;
    }
    (acc, sh)
}

impl NlmService {
    /// A lock manager for the files of `ns` (handles checked with `handles`), deciding in
    /// `locks`; `public` are the cluster's public addresses (empty on a single node) and
    /// `grace` the length of a grace period.
    pub fn new(
        locks: Arc<LockService>,
        handles: HandleCodec,
        ns: Namespace,
        public: Vec<IpAddr>,
        grace: Duration,
        stop: CancellationToken,
    ) -> Arc<NlmService> {
        let (started_tx, started) = watch::channel(false);
        Arc::new(NlmService {
            me: locks.node(),
            locks,
            handles,
            store: MonitorStore::new(ns.clone()),
            volume: VolumeLocks::new(ns),
            t0: Instant::now(),
            inner: Mutex::new(Inner {
                grace: Grace::new(grace),
                served: Served::new(public),
                states: HashMap::new(),
                loading: HashMap::new(),
                table: Table::default(),
                waiters: HashMap::new(),
            }),
            store_writes: tokio::sync::Mutex::new(()),
            owned: OnceLock::new(),
            started,
            started_tx,
            stop,
        })
    }

    fn now(&self) -> Duration {
        self.t0.elapsed()
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn owner(&self, id: u128) -> Owner {
        Owner::Posix { node: self.me, id }
    }

    /// Starts the background work: reading the monitor list of this node's own addresses
    /// (a restart: their clients are told to reclaim), ending grace periods, forgetting idle
    /// clients.
    pub fn start(self: &Arc<Self>) {
        let me = self.clone();
        tokio::spawn(async move { me.restart_notify().await });
        self.follow_license();
        let me = self.clone();
        tokio::spawn(async move {
            let mut last_sweep = Instant::now();
            loop {
                tokio::select! {
                    _ = me.stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                let over = me.inner().grace.expire(me.now());
                for a in over {
                    tracing::info!(address = %a, "NLM: grace period over; new locks are granted again");
                }
                if last_sweep.elapsed() >= SWEEP_EVERY {
                    last_sweep = Instant::now();
                    me.sweep_idle().await;
                }
            }
        });
    }

    /// Mirrors the node's standing in the cluster onto the volume: a node that falls out of
    /// sync (cut off, or for the moment it takes over leadership) gives its NLM clients' locks
    /// back on the volume at once, as SMB's are (the others release them and may grant the
    /// ranges to clients the volume must then not refuse); once it is in sync again, the locks
    /// the cluster's table still holds for its clients are set on the volume again, so other
    /// clients of the volume see them again.
    fn follow_license(self: &Arc<Self>) {
        let me = Arc::downgrade(self);
        let mut licensed = self.locks.licensed();
        let stop = self.stop.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    r = licensed.changed() => if r.is_err() { return },
                }
                let on = *licensed.borrow_and_update();
                let Some(me) = me.upgrade() else { return };
                if !on {
                    me.volume.release_all();
                    continue;
                }
                let held = own_posix_locks(me.me, &me.locks.holdings());
                let n = held.len();
                let mut refused = 0;
                for (file, id, l) in held {
                    if me.volume.lock(file, id, l.exclusive, l.offset, wire_len(l.offset, l.len)).await.is_err() {
                        refused += 1;
                    }
                }
                if n > 0 {
                    tracing::info!(locks = n, refused, "NLM: in sync again: clients' locks set on the volume again");
                }
            }
        });
    }

    /// Follows HA's assignment of public addresses (`owned`): a takeover starts the address's
    /// grace period and notifies its clients; a release drops the locks held through it.
    pub fn follow(self: &Arc<Self>, owned: OwnedAddresses) {
        if self.owned.set(owned).is_err() {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                me.refresh();
                tokio::select! {
                    _ = me.stop.cancelled() => return,
                    _ = tokio::time::sleep(FOLLOW_EVERY) => {}
                }
            }
        });
    }

    /// Applies HA's current assignment at once (also called by a request to an address this
    /// node did not know it holds yet, so no request is served before its grace decision).
    fn refresh(self: &Arc<Self>) {
        let Some(owned) = self.owned.get() else { return };
        let now_owned = owned();
        let change = self.inner().served.update(now_owned);
        for a in change.lost {
            self.release(a);
        }
        for a in change.gained {
            self.takeover(a, "takeover");
        }
    }

    async fn restart_notify(self: &Arc<Self>) {
        // The volume may not answer yet (a GlusterFS mount in progress): keep trying.
        let mut delay = Duration::from_millis(200);
        let servers = loop {
            match self.store.servers().await {
                Ok(s) => break s,
                Err(e) => {
                    tracing::debug!(error = %e, "NLM: the monitor list is not readable yet");
                    tokio::select! {
                        _ = self.stop.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        };
        let local = ha::self_id::local_addresses().unwrap_or_default();
        for a in servers {
            let mine = local.iter().any(|l| l.to_canonical() == a) && !self.inner().served.is_public(a);
            if mine {
                self.takeover(a, "restart");
            }
        }
        let _ = self.started_tx.send(true);
    }

    /// This node starts serving `a`: read its monitor list; if it names clients, begin grace
    /// and tell them to reclaim. Calls to `a` wait until that is decided.
    fn takeover(self: &Arc<Self>, a: IpAddr, why: &'static str) {
        let (tx, rx) = watch::channel(false);
        self.inner().loading.insert(a, rx);
        let me = self.clone();
        tokio::spawn(async move {
            let mut clients = None;
            for attempt in 0..5 {
                match me.store.clients(a).await {
                    Ok(c) => {
                        clients = Some(c);
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(address = %a, error = %e, attempt, "NLM: cannot read the monitor list");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
            match clients {
                Some(list) if list.is_empty() => {
                    let state = me.store.state(a).await.unwrap_or(1);
                    me.inner().states.insert(a, state);
                }
                Some(list) => {
                    let state = match me.store.next_state(a).await {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::warn!(address = %a, error = %e, "NLM: cannot record the new NSM state number");
                            store::next_odd(me.inner().states.get(&a).copied().unwrap_or(1))
                        }
                    };
                    let now = me.now();
                    let period = {
                        let mut i = me.inner();
                        i.grace.begin(a, now);
                        i.states.insert(a, state);
                        for m in &list {
                            i.table.set_recorded(ClientKey { server: a, client: m.client }, &m.caller, true, now);
                        }
                        i.grace.period()
                    };
                    tracing::info!(
                        address = %a, clients = list.len(), state, grace_s = period.as_secs(), why,
                        "NLM: grace period begins; telling clients to reclaim their locks"
                    );
                    for m in list {
                        let me = me.clone();
                        tokio::spawn(async move { me.notify_client(a, state, m.client).await });
                    }
                }
                None => {
                    // Whom to notify is unknown; refuse new locks for a grace period anyway, so
                    // nothing is granted that a client may still come to reclaim.
                    let now = me.now();
                    me.inner().grace.begin(a, now);
                    tracing::error!(address = %a, "NLM: the monitor list is unreadable; grace period without notifications");
                }
            }
            me.inner().loading.remove(&a);
            let _ = tx.send(true);
        });
    }

    async fn notify_client(&self, a: IpAddr, state: u32, client: IpAddr) {
        let mut delay = Duration::from_secs(1);
        let started = self.now();
        let last = loop {
            let e = match callback::notify(a, client, &a.to_string(), state).await {
                Ok(()) => {
                    tracing::info!(address = %a, %client, state, "NLM: client told to reclaim (SM_NOTIFY)");
                    return;
                }
                Err(e) => e.to_string(),
            };
            let in_grace = self.inner().grace.in_grace(a, self.now());
            if !in_grace || self.now() - started > self.inner().grace.period() || self.stop.is_cancelled() {
                break e;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(15));
        };
        tracing::warn!(address = %a, %client, error = %last, "NLM: could not tell a client to reclaim its locks");
    }

    /// This node no longer serves `a`: its clients' locks held through this node go (the new
    /// owner's grace period lets them reclaim there).
    fn release(self: &Arc<Self>, a: IpAddr) {
        let h = {
            let mut i = self.inner();
            i.grace.end(a);
            let h = i.table.take_server(a);
            for w in &h.waiting {
                if let Some(c) = i.waiters.remove(w) {
                    c.cancel.cancel();
                }
            }
            h
        };
        if h.locks.is_empty() && h.shares.is_empty() {
            return;
        }
        tracing::info!(address = %a, locks = h.locks.len(), shares = h.shares.len(), "NLM: address moved away; its clients' locks on this node are released");
        let me = self.clone();
        tokio::spawn(async move { me.drop_holdings(h).await });
    }

    async fn drop_holdings(&self, h: Holdings) {
        for (owner, file) in h.locks {
            let _ = self.locks.unlock_all(&file, self.owner(owner)).await;
            self.volume.release(file, owner);
        }
        for (file, key) in h.shares {
            let _ = self.locks.close(&file, key).await;
        }
    }

    /// A client restarted: everything it held goes, and it leaves the monitor list.
    async fn forget_rebooted(&self, from: IpAddr, name: &[u8], by_address: bool) {
        let h = {
            let mut i = self.inner();
            let h = i.table.take_rebooted(from.to_canonical(), name, by_address);
            for w in &h.waiting {
                if let Some(c) = i.waiters.remove(w) {
                    c.cancel.cancel();
                }
            }
            h
        };
        if h.clients.is_empty() {
            return;
        }
        tracing::info!(client = %from, name = %crate::logging::untrusted(name), locks = h.locks.len(), "NLM: client restarted; its locks are released");
        let recorded: Vec<ClientKey> = h.clients.iter().filter(|(_, r)| *r).map(|(k, _)| *k).collect();
        self.drop_holdings(h).await;
        let _w = self.store_writes.lock().await;
        for k in recorded {
            if !self.inner().table.recorded(&k) {
                let _ = self.store.remove(k.server, k.client).await;
            }
        }
    }

    async fn sweep_idle(&self) {
        let since = self.now().saturating_sub(IDLE_FORGET);
        let idle = self.inner().table.idle(since);
        for k in idle {
            let _w = self.store_writes.lock().await;
            let recorded = {
                let mut i = self.inner();
                if !i.table.idle(since).contains(&k) {
                    continue;
                }
                let r = i.table.recorded(&k);
                i.table.forget_idle(&k);
                r
            };
            if !recorded {
                continue;
            }
            if let Err(e) = self.store.remove(k.server, k.client).await {
                tracing::debug!(client = %k.client, error = %e, "NLM: cannot remove an idle client from the monitor list");
            }
        }
    }

    /// Records client `k` on the volume's monitor list before it is granted anything.
    async fn ensure_recorded(&self, k: ClientKey, caller: &[u8]) -> bool {
        if self.inner().table.recorded(&k) {
            return true;
        }
        let _w = self.store_writes.lock().await;
        if self.inner().table.recorded(&k) {
            return true;
        }
        match self.store.add(k.server, k.client, caller).await {
            Ok(()) => {
                let now = self.now();
                self.inner().table.set_recorded(k, caller, true, now);
                true
            }
            Err(e) => {
                tracing::warn!(client = %k.client, error = %e, "NLM: cannot record a client on the volume's monitor list; lock refused");
                false
            }
        }
    }

    /// Waits until the grace decision for `server` is made; false when this node does not
    /// serve it.
    async fn settle(self: &Arc<Self>, server: IpAddr) -> bool {
        let server = server.to_canonical();
        let (public, served) = {
            let i = self.inner();
            (i.served.is_public(server), i.served.serves(server))
        };
        if public && !served {
            self.refresh();
        } else if !public {
            let mut s = self.started.clone();
            let _ = s.wait_for(|d| *d).await;
        }
        let rx = self.inner().loading.get(&server).cloned();
        if let Some(mut rx) = rx {
            let _ = rx.wait_for(|d| *d).await;
        }
        self.inner().served.serves(server)
    }

    async fn admit(self: &Arc<Self>, peer: &Peer, kind: Kind) -> Result<(), Option<Stat>> {
        if !self.settle(peer.server).await {
            return Err(None);
        }
        let in_grace = self.inner().grace.in_grace(peer.server.to_canonical(), self.now());
        match grace::admit(in_grace, kind) {
            grace::Admit::Serve => Ok(()),
            grace::Admit::DeniedGrace => Err(Some(Stat::DeniedGracePeriod)),
        }
    }

    /// What a LOCK or SHARE does before taking anything: the file, the grace rules for
    /// `reclaim`, the caller's liveness, and (when `monitored`) its place in the monitor list.
    /// `Err` carries the answer (`None`: no answer, as [`Self::admit`] decides).
    async fn begin_take(
        self: &Arc<Self>,
        peer: &Peer,
        fh: &[u8],
        caller: &[u8],
        reclaim: bool,
        monitored: bool,
    ) -> Result<FileId, Option<Stat>> {
        let file = self.file(fh).map_err(Some)?;
        self.admit(peer, Kind::Take { reclaim }).await?;
        let k = peer.key();
        self.inner().table.touch(k, caller, self.now());
        if monitored && !self.ensure_recorded(k, caller).await {
            return Err(Some(Stat::DeniedNoLocks));
        }
        Ok(file)
    }

    fn file(&self, fh: &[u8]) -> Result<FileId, Stat> {
        self.handles.decode(fh).map_err(|_| Stat::StaleFh)
    }

    fn holds(&self, file: &FileId, owner: Owner) -> bool {
        self.locks.local(file, |r| r.ranges.iter().any(|x| x.owner == owner)).unwrap_or(false)
    }

    /// `owner` may hold nothing more on `file`: then its bookkeeping and volume descriptor go.
    fn settle_owner(&self, file: FileId, id: u128) {
        if !self.holds(&file, self.owner(id)) {
            self.inner().table.forget_file(id, &file);
            self.volume.release(file, id);
        }
    }

    /// Takes `rl` in the lock table, then on the volume. With `strict`, a lock another client
    /// of the volume holds is refused (and the table put back as it was); without (reclaims),
    /// the volume lock is retried in the background: the table is what nasgw's clients obey.
    async fn take(self: &Arc<Self>, file: FileId, rl: RangeLock, strict: bool) -> Result<(), Conflict> {
        let Owner::Posix { id, .. } = rl.owner else { return Err(Conflict::Unavailable) };
        let before = self.locks.local(&file, |r| own_ranges(r, rl.owner, rl.offset, rl.len)).unwrap_or_default();
        self.locks.lock_range(&file, rl).await?;
        let vlen = wire_len(rl.offset, rl.len);
        if self.volume.lock(file, id, rl.exclusive, rl.offset, vlen).await.is_ok() {
            return Ok(());
        }
        if strict {
            let _ = self.locks.unlock(&file, rl.owner, rl.offset, rl.len).await;
            self.volume.unlock(file, id, rl.offset, vlen).await;
            for b in before {
                let _ = self.locks.lock_range(&file, b).await;
                let _ = self.volume.lock(file, id, b.exclusive, b.offset, wire_len(b.offset, b.len)).await;
            }
            return Err(Conflict::Locked);
        }
        let me = self.clone();
        tokio::spawn(async move {
            for _ in 0..60 {
                tokio::time::sleep(Duration::from_secs(2)).await;
                if !me.holds(&file, rl.owner) || me.volume.lock(file, id, rl.exclusive, rl.offset, vlen).await.is_ok() {
                    return;
                }
            }
            tracing::warn!("NLM: a reclaimed lock is still held on the volume by someone else (a dead node's client?)");
        });
        Ok(())
    }

    /// Releases `rl`'s range for its owner (a grant the client did not take).
    async fn give_back(&self, file: FileId, rl: RangeLock) {
        let Owner::Posix { id, .. } = rl.owner else { return };
        let _ = self.locks.unlock(&file, rl.owner, rl.offset, rl.len).await;
        self.volume.unlock(file, id, rl.offset, wire_len(rl.offset, rl.len)).await;
        self.settle_owner(file, id);
    }

    /// A reclaim: the lock table may still hold the dead node's locks for a moment (until its
    /// new view), so a conflict is retried until it clears or grace ends.
    async fn take_reclaim(self: &Arc<Self>, server: IpAddr, file: FileId, rl: RangeLock) -> Result<(), Conflict> {
        loop {
            let changes = self.locks.changes(&file);
            let n = changes.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            match self.take(file, rl, false).await {
                Err(Conflict::Locked | Conflict::Unavailable) => {}
                r => return r,
            }
            let left = self.inner().grace.remaining(server.to_canonical(), self.now());
            let Some(left) = left else { return self.take(file, rl, false).await };
            tokio::select! {
                _ = n => {}
                _ = tokio::time::sleep(left.min(Duration::from_millis(250))) => {}
                _ = self.stop.cancelled() => return Err(Conflict::Unavailable),
            }
        }
    }

    /// Answers one NLM call.
    pub async fn call(self: &Arc<Self>, peer: Peer, vers: u32, proc_: u32, args: &[u8]) -> Answer {
        let Some(v) = Version::from_rpc(vers) else { return Answer::Status(ReplyStatus::ProgMismatch(1, 4)) };
        let a = match wire::decode(v, proc_, args) {
            Ok(Some(a)) => a,
            Ok(None) => return Answer::Status(ReplyStatus::ProcUnavail),
            Err(e) => {
                tracing::debug!(client = %peer.client, proc_, error = %e, "NLM: garbage arguments");
                return Answer::Status(ReplyStatus::GarbageArgs);
            }
        };
        use wire::procs;
        let mut w = XdrWriter::default();
        let msg = wire::res_proc_for(proc_);
        match a {
            Args::Null => {}
            Args::Test { cookie, lock, .. } if matches!(proc_, procs::GRANTED | procs::GRANTED_MSG) => {
                // A server's callback: nasgw is no lock client.
                let _ = lock;
                wire::put_res(&mut w, v, cookie, Stat::Denied);
            }
            Args::Test { cookie, exclusive, lock } => {
                let (stat, holder) = match self.test(&peer, exclusive, &lock).await {
                    Some(r) => r,
                    None => return Answer::Silent,
                };
                wire::put_testres(&mut w, v, cookie, stat, holder.as_ref());
            }
            Args::Lock { cookie, block, exclusive, lock, reclaim, .. } => {
                let monitored = proc_ != procs::NM_LOCK;
                let block = block && monitored;
                let Some(stat) = self.lock(&peer, v, cookie, block, exclusive, &lock, reclaim, monitored).await else {
                    return Answer::Silent;
                };
                wire::put_res(&mut w, v, cookie, stat);
            }
            Args::Cancel { cookie, exclusive, lock, .. } => {
                let Some(stat) = self.cancel(&peer, exclusive, &lock).await else { return Answer::Silent };
                wire::put_res(&mut w, v, cookie, stat);
            }
            Args::Unlock { cookie, lock } => {
                let Some(stat) = self.unlock(&peer, &lock).await else { return Answer::Silent };
                wire::put_res(&mut w, v, cookie, stat);
            }
            Args::Res { .. } | Args::TestRes { .. } => {}
            Args::Share { cookie, share, reclaim } => {
                let stat = if proc_ == procs::SHARE {
                    self.share(&peer, &share, reclaim).await
                } else {
                    self.unshare(&peer, &share).await
                };
                let Some(stat) = stat else { return Answer::Silent };
                wire::put_shareres(&mut w, v, cookie, stat);
            }
            Args::FreeAll { name, .. } => {
                self.forget_rebooted(peer.client.ip(), name, false).await;
            }
        }
        if let Some(res) = msg {
            // A _MSG request: the result goes back as a call of its own; this reply is empty.
            let body = w.into_inner();
            let from = peer.server;
            let client = peer.client.ip();
            tokio::spawn(async move {
                if let Err(e) = callback::send_res(from, client, v, res, &body).await {
                    tracing::debug!(%client, error = %e, "NLM: _RES answer not delivered");
                }
            });
            return Answer::Body(Vec::new());
        }
        Answer::Body(w.into_inner())
    }

    async fn test(self: &Arc<Self>, peer: &Peer, exclusive: bool, l: &Lock<'_>) -> Option<(Stat, Option<Holder>)> {
        let file = match self.file(l.fh) {
            Ok(f) => f,
            Err(s) => return Some((s, None)),
        };
        match self.admit(peer, Kind::Test).await {
            Ok(()) => {}
            Err(None) => return None,
            Err(Some(s)) => return Some((s, None)),
        }
        let id = owner_id(l.caller, peer.client.ip(), l.oh, l.svid);
        let probe = RangeLock { owner: self.owner(id), offset: l.offset, len: table_len(l.offset, l.len), exclusive };
        let record = match self.locks.record(&file).await {
            Ok(r) => r,
            Err(_) => return Some((Stat::DeniedNoLocks, None)),
        };
        if let Some(c) = record.conflicting(&probe) {
            let oh = match c.owner {
                Owner::Posix { id, .. } => self.inner().table.oh_of(id).map(<[u8]>::to_vec).unwrap_or_default(),
                Owner::Open(_) => Vec::new(),
            };
            let h = Holder {
                exclusive: c.exclusive,
                svid: holder_svid(&c.owner),
                oh,
                offset: c.offset,
                len: wire_len(c.offset, c.len),
            };
            return Some((Stat::Denied, Some(h)));
        }
        if let Some((ex, offset, len)) =
            self.volume.test(file, id, exclusive, l.offset, wire_len(l.offset, probe.len)).await
        {
            let h = Holder { exclusive: ex, svid: 0, oh: Vec::new(), offset, len };
            self.settle_owner(file, id);
            return Some((Stat::Denied, Some(h)));
        }
        self.settle_owner(file, id);
        Some((Stat::Granted, None))
    }

    #[allow(clippy::too_many_arguments)]
    async fn lock(
        self: &Arc<Self>,
        peer: &Peer,
        v: Version,
        cookie: &[u8],
        block: bool,
        exclusive: bool,
        l: &Lock<'_>,
        reclaim: bool,
        monitored: bool,
    ) -> Option<Stat> {
        let file = match self.begin_take(peer, l.fh, l.caller, reclaim, monitored).await {
            Ok(f) => f,
            Err(s) => return s,
        };
        let k = peer.key();
        let id = owner_id(l.caller, peer.client.ip(), l.oh, l.svid);
        let rl = RangeLock { owner: self.owner(id), offset: l.offset, len: table_len(l.offset, l.len), exclusive };
        let key = WaitKey { file, owner: id, offset: rl.offset, len: rl.len, exclusive };
        if block {
            let waiting = self.inner().waiters.get(&key).map(|w| w.granted);
            if waiting == Some(false) {
                // A re-poll of a request still blocked.
                return Some(Stat::Blocked);
            }
        }
        let r = if reclaim { self.take_reclaim(peer.server, file, rl).await } else { self.take(file, rl, true).await };
        match r {
            Ok(()) => {
                if reclaim {
                    tracing::info!(address = %peer.server, client = %peer.client.ip(), "NLM: lock reclaimed");
                }
                let mut i = self.inner();
                i.table.note_lock(k, id, l.oh, file);
                if i.waiters.remove(&key).is_some() {
                    i.table.remove_waiter(&key);
                }
                Some(Stat::Granted)
            }
            Err(Conflict::Locked) if block => Some(self.enqueue(*peer, v, cookie.to_vec(), key, rl, OwnedLock::of(l))),
            Err(Conflict::Locked) => {
                self.settle_owner(file, id);
                Some(Stat::Denied)
            }
            Err(_) => {
                self.settle_owner(file, id);
                Some(Stat::DeniedNoLocks)
            }
        }
    }

    fn enqueue(
        self: &Arc<Self>,
        peer: Peer,
        v: Version,
        cookie: Vec<u8>,
        key: WaitKey,
        rl: RangeLock,
        lock: OwnedLock,
    ) -> Stat {
        let cancel = CancellationToken::new();
        {
            let mut i = self.inner();
            if i.waiters.contains_key(&key) {
                return Stat::Blocked;
            }
            if i.waiters.len() >= MAX_WAITERS {
                return Stat::DeniedNoLocks;
            }
            i.waiters.insert(key, Waiter { cancel: cancel.clone(), granted: false });
            i.table.add_waiter(peer.key(), key);
        }
        let me = self.clone();
        tokio::spawn(async move { me.wait_and_grant(peer, v, cookie, key, rl, lock, cancel).await });
        Stat::Blocked
    }

    fn drop_waiter(&self, key: &WaitKey) {
        let mut i = self.inner();
        i.waiters.remove(key);
        i.table.remove_waiter(key);
    }

    #[allow(clippy::too_many_arguments)]
    async fn wait_and_grant(
        self: Arc<Self>,
        peer: Peer,
        v: Version,
        cookie: Vec<u8>,
        key: WaitKey,
        rl: RangeLock,
        lock: OwnedLock,
        cancel: CancellationToken,
    ) {
        loop {
            let changes = self.locks.changes(&key.file);
            let n = changes.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if cancel.is_cancelled() || self.stop.is_cancelled() {
                return self.drop_waiter(&key);
            }
            match self.take(key.file, rl, true).await {
                Ok(()) => break,
                Err(Conflict::Locked | Conflict::Unavailable) => {}
                Err(_) => return self.drop_waiter(&key),
            }
            tokio::select! {
                _ = n => {}
                _ = tokio::time::sleep(WAIT_POLL) => {}
                _ = cancel.cancelled() => return self.drop_waiter(&key),
                _ = self.stop.cancelled() => return,
            }
        }
        {
            let mut i = self.inner();
            if cancel.is_cancelled() {
                drop(i);
                self.give_back(key.file, rl).await;
                return self.drop_waiter(&key);
            }
            if let Some(w) = i.waiters.get_mut(&key) {
                w.granted = true;
            }
            i.table.note_lock(peer.key(), key.owner, &lock.oh, key.file);
        }
        let started = Instant::now();
        let mut delay = Duration::from_secs(2);
        loop {
            match callback::granted(peer.server, peer.client.ip(), v, &cookie, key.exclusive, &lock).await {
                Ok(Stat::Granted) => break,
                Ok(other) => {
                    tracing::debug!(client = %peer.client, stat = ?other, "NLM: client no longer waits; lock given back");
                    self.give_back(key.file, rl).await;
                    break;
                }
                Err(e) => {
                    tracing::debug!(client = %peer.client, error = %e, "NLM: GRANTED callback not answered");
                    if started.elapsed() > Duration::from_secs(60) || cancel.is_cancelled() {
                        // Kept: the client's next poll of the same LOCK finds it granted.
                        break;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = cancel.cancelled() => {}
                        _ = self.stop.cancelled() => return,
                    }
                    delay = (delay * 2).min(Duration::from_secs(15));
                }
            }
        }
        self.drop_waiter(&key);
    }

    async fn cancel(self: &Arc<Self>, peer: &Peer, exclusive: bool, l: &Lock<'_>) -> Option<Stat> {
        let Ok(file) = self.file(l.fh) else { return Some(Stat::Granted) };
        if self.admit(peer, Kind::Release).await.is_err() {
            return None;
        }
        let id = owner_id(l.caller, peer.client.ip(), l.oh, l.svid);
        let len = table_len(l.offset, l.len);
        let key = WaitKey { file, owner: id, offset: l.offset, len, exclusive };
        let w = self.inner().waiters.remove(&key);
        if let Some(w) = w {
            w.cancel.cancel();
            self.inner().table.remove_waiter(&key);
            if w.granted {
                let rl = RangeLock { owner: self.owner(id), offset: l.offset, len, exclusive };
                self.give_back(file, rl).await;
            }
        }
        Some(Stat::Granted)
    }

    async fn unlock(self: &Arc<Self>, peer: &Peer, l: &Lock<'_>) -> Option<Stat> {
        let Ok(file) = self.file(l.fh) else { return Some(Stat::Granted) };
        if self.admit(peer, Kind::Release).await.is_err() {
            return None;
        }
        let id = owner_id(l.caller, peer.client.ip(), l.oh, l.svid);
        let len = table_len(l.offset, l.len);
        {
            let mut i = self.inner();
            i.table.touch(peer.key(), l.caller, self.now());
            for w in i.table.waiters_overlapping(&file, id, l.offset, len) {
                if let Some(c) = i.waiters.get(&w) {
                    if !c.granted {
                        c.cancel.cancel();
                    }
                }
            }
        }
        match self.locks.unlock(&file, self.owner(id), l.offset, len).await {
            Ok(()) | Err(Conflict::NotLocked) => {}
            Err(_) => return Some(Stat::DeniedNoLocks),
        }
        self.volume.unlock(file, id, l.offset, l.len).await;
        self.settle_owner(file, id);
        Some(Stat::Granted)
    }

    async fn share(self: &Arc<Self>, peer: &Peer, s: &Share<'_>, reclaim: bool) -> Option<Stat> {
        let file = match self.begin_take(peer, s.fh, s.caller, reclaim, true).await {
            Ok(f) => f,
            Err(st) => return st,
        };
        let k = peer.key();
        let id = owner_id(s.caller, peer.client.ip(), s.oh, 0);
        let old = self.inner().table.remove_share(file, id);
        if let Some(old) = old {
            let _ = self.locks.close(&file, old).await;
        }
        let (acc, sh) = share_open(s);
        let req = OpenRequest {
            key: self.locks.new_key(),
            access: acc,
            share: sh,
            caching: CachingRequest::None,
            overwrite: false,
            is_dir: false,
            flags: flags::SHARE_MODES,
        };
        let key = req.key;
        match self.locks.open(&file, req).await {
            Ok(_) => {
                self.inner().table.add_share(k, file, id, key);
                Some(Stat::Granted)
            }
            Err(Conflict::Sharing | Conflict::DeletePending) => Some(Stat::Denied),
            Err(_) => Some(Stat::DeniedNoLocks),
        }
    }

    async fn unshare(self: &Arc<Self>, peer: &Peer, s: &Share<'_>) -> Option<Stat> {
        let Ok(file) = self.file(s.fh) else { return Some(Stat::Granted) };
        if self.admit(peer, Kind::Release).await.is_err() {
            return None;
        }
        let id = owner_id(s.caller, peer.client.ip(), s.oh, 0);
        let old = self.inner().table.remove_share(file, id);
        if let Some(old) = old {
            let _ = self.locks.close(&file, old).await;
        }
        Some(Stat::Granted)
    }

    /// Answers one NSM call (SM_NOTIFY from a restarted client frees its locks).
    pub async fn nsm_call(self: &Arc<Self>, peer: Peer, vers: u32, proc_: u32, args: &[u8]) -> Answer {
        if vers != 1 {
            return Answer::Status(ReplyStatus::ProgMismatch(1, 1));
        }
        let a = match nsm::decode(proc_, args) {
            Ok(Some(a)) => a,
            Ok(None) => return Answer::Status(ReplyStatus::ProcUnavail),
            Err(_) => return Answer::Status(ReplyStatus::GarbageArgs),
        };
        let state = self.inner().states.get(&peer.server.to_canonical()).copied().unwrap_or(1);
        let mut w = XdrWriter::default();
        match a {
            nsm::Args::Null | nsm::Args::SimuCrash => {}
            nsm::Args::Stat { .. } => nsm::put_stat_res(&mut w, nsm::STAT_SUCC, state),
            // A lock manager's requests to its own monitor: nasgw keeps its own list.
            nsm::Args::Mon { .. } => nsm::put_stat_res(&mut w, nsm::STAT_FAIL, state),
            nsm::Args::Unmon { .. } | nsm::Args::UnmonAll => nsm::put_stat(&mut w, state),
            nsm::Args::Notify { name, state } => {
                tracing::info!(client = %peer.client.ip(), name = %crate::logging::untrusted(name), state, "NSM: a client restarted");
                self.forget_rebooted(peer.client.ip(), name, true).await;
            }
        }
        Answer::Body(w.into_inner())
    }

    /// Addresses in grace now (for status and tests).
    pub fn in_grace(&self) -> Vec<IpAddr> {
        let now = self.now();
        self.inner().grace.active(now)
    }
}

#[cfg(test)]
mod tests;
