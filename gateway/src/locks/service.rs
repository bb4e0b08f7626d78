//! The file-sharing state as a service: the one interface SMB, NFS (and later NLM and the node's
//! own mount) call, asynchronous and fallible because a decision may be made on another node. It
//! wraps one [`Machine`] behind a mutex: a request runs the machine in place, so when this node
//! decides (a single node, a file whose home is here, a file delegated here) the answer is ready
//! before the call returns, with no hand-off to another task; otherwise the call writes its
//! request to the home's link itself ([`super::outbox`]) and waits for the answer the mesh
//! brings back (the home's link reader decides and writes the answer the same way). A background task ticks the machine (break timeouts, pings,
//! views) and feeds it what HA says.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{oneshot, watch, Notify};
use tokio_util::sync::CancellationToken;

use super::machine::{Answer, Config, HaInput, Input, Machine, Msg, Op, OpenEntry, Outcome, Output};
use super::outbox::{Dirty, Outbox};
use super::record::{BreakNotice, CloseOutcome, FileName, FileRecord, Granted, OpenRequest};
use super::types::{Conflict, LeaseId, OpenKey, Owner, RangeLock};
use crate::vfs::FileId;

/// Where breaks and evictions go: the SMB server (lease and oplock holders are its clients).
pub trait Holders: Send + Sync {
    /// Tell the client holding `notice.lease` on `file`.
    fn deliver_break(&self, file: FileId, notice: BreakNotice);
    /// This node was left out of a view: what its clients held is gone cluster-wide; their
    /// handles must go too (close their connections).
    fn evicted(&self);
}

/// Where events broadcast by other nodes go (see [`LockService::broadcast`]). Every sink gets
/// every event; each takes the payloads whose first byte is its own tag and ignores the rest.
pub type EventSink = Box<dyn Fn(&[u8]) + Send + Sync>;

/// Gets the numbers of this node's interest changes once every other member knows them (see
/// [`LockService::set_interest`]).
pub type InterestAckSink = Box<dyn Fn(u64) + Send + Sync>;

/// Holders of the leases of one client GUID (see [`LockService::add_lease_holder`]).
type LeaseHolder = ([u8; 16], Arc<dyn Holders>);

/// What a call does once it has released the machine's lock.
#[derive(Default)]
struct Later {
    /// Peers to write to.
    dirty: Dirty,
    /// Answers for the callers waiting on them. Sent once the lock is released: a caller woken
    /// under it would find the lock held and sleep again (a futex wait and wake, and a context
    /// switch, per remote answer).
    replies: Vec<(oneshot::Sender<Outcome>, Outcome)>,
    /// Waiters to wake (files whose state changed), for the same reason after the lock.
    wake: Vec<Arc<Notify>>,
    /// Breaks, evictions and events to hand on.
    outputs: Vec<Output<FileId>>,
}

struct State {
    m: Machine<FileId>,
    next_rid: u64,
    waiting: HashMap<u64, oneshot::Sender<Outcome>>,
    changes: HashMap<FileId, Arc<Notify>>,
}

/// The cluster-wide (or, without `[cluster]`, this node's) table of opens, share modes,
/// byte-range locks, leases and oplocks.
pub struct LockService {
    state: Mutex<State>,
    t0: Instant,
    me: u16,
    next_seq: AtomicU64,
    net: Option<Arc<Outbox>>,
    licensed: watch::Sender<bool>,
    /// Whether this node is cut off from the cluster (set by `cluster.rs` from HA and the
    /// license; never on a single node).
    cut_off: watch::Sender<Option<crate::cut_off::CutOff>>,
    /// The node was licensed at some time since it started.
    was_licensed: AtomicBool,
    holders: OnceLock<Arc<dyn Holders>>,
    /// Holders of leases whose client GUID is the key (the node's own mount), besides SMB's.
    lease_holders: Mutex<Vec<LeaseHolder>>,
    events: Mutex<Vec<Arc<EventSink>>>,
    /// The highest interest of the other members in this node's change events (see
    /// [`super::interest`]), stored in the order of the machine's outputs: before the
    /// acknowledgement that lets a watcher elsewhere rely on it is sent.
    remote_interest: Arc<AtomicU8>,
    interest_acked: OnceLock<InterestAckSink>,
}

impl std::fmt::Debug for LockService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockService").field("me", &self.me).finish()
    }
}

/// Turns "nothing held" into the error callers expect.
fn answer<T>(o: Outcome, f: impl FnOnce(Answer) -> Option<T>) -> Result<T, Conflict> {
    match o {
        Ok(a) => f(a).ok_or(Conflict::Unavailable),
        Err(c) => Err(c),
    }
}

impl LockService {
    /// One node on its own: every decision is made here, at once.
    pub fn single() -> Arc<LockService> {
        let s = Self::new(Config::single(), None);
        s.feed(Input::Ha(HaInput { leader: Some(0), ok: true }));
        s.feed(Input::Tick);
        s
    }

    /// A node of a cluster: `net` takes the messages for peers (the mesh, which calls
    /// [`LockService::receive`] and [`LockService::link`] with what arrives); a call writes
    /// its own messages once it has released the machine.
    pub fn clustered(cfg: Config, net: Arc<Outbox>) -> Arc<LockService> {
        Self::new(cfg, Some(net))
    }

    fn new(cfg: Config, net: Option<Arc<Outbox>>) -> Arc<LockService> {
        let clustered = net.is_some();
        // Open keys start at this run's start time in microseconds: a restarted node never
        // reuses one its previous run handed out.
        let start = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_micros() as u64;
        Arc::new(LockService {
            me: cfg.me,
            state: Mutex::new(State {
                m: Machine::new(cfg),
                next_rid: 1,
                waiting: HashMap::new(),
                changes: HashMap::new(),
            }),
            t0: Instant::now(),
            next_seq: AtomicU64::new(start),
            net,
            licensed: watch::channel(false).0,
            cut_off: watch::channel(None).0,
            was_licensed: AtomicBool::new(false),
            holders: OnceLock::new(),
            lease_holders: Mutex::new(Vec::new()),
            events: Mutex::new(Vec::new()),
            // Until the others tell, they want everything.
            remote_interest: Arc::new(AtomicU8::new(if clustered { super::interest::PATHS } else { 0 })),
            interest_acked: OnceLock::new(),
        })
    }

    /// Registers where breaks and evictions go (once).
    pub fn set_holders(&self, h: Arc<dyn Holders>) {
        let _ = self.holders.set(h);
    }

    /// Sends the breaks of leases whose client GUID is `client` to `h` instead of the holders
    /// of [`LockService::set_holders`], and tells `h` of evictions too (the node's own mount
    /// holds leases under a client GUID of its own).
    pub fn add_lease_holder(&self, client: [u8; 16], h: Arc<dyn Holders>) {
        self.lease_holders.lock().unwrap_or_else(|p| p.into_inner()).push((client, h));
    }

    /// Adds a sink for the events from other nodes (change notifications, persistent opens).
    pub fn add_events(&self, sink: EventSink) {
        self.events.lock().unwrap_or_else(|p| p.into_inner()).push(Arc::new(sink));
    }

    /// Sends `payload` to every other node of the current view, whose event sink gets it; best
    /// effort (nothing is sent without a view, nothing is resent after a link failure).
    pub fn broadcast(&self, payload: Vec<u8>) {
        if self.net.is_some() {
            self.feed(Input::Broadcast(payload));
        }
    }

    /// Sends a change event to the other members that want them (see [`super::interest`]);
    /// best effort, as [`LockService::broadcast`].
    pub fn notify(&self, payload: Vec<u8>) {
        if self.net.is_some() {
            self.feed(Input::Notify(payload));
        }
    }

    /// Tells the other members how much of their change events this node wants now (`seq`
    /// grows with every change); `acked` (registered once) gets `seq` when every one of them
    /// knows it.
    pub fn set_interest(&self, level: super::interest::Level, seq: u64) {
        self.feed(Input::Interest { level, seq });
    }

    /// Registers where acknowledged interest numbers go (once).
    pub fn on_interest_acked(&self, acked: InterestAckSink) {
        let _ = self.interest_acked.set(acked);
    }

    /// The highest interest of the other members in this node's change events, kept current.
    pub fn remote_interest(&self) -> Arc<AtomicU8> {
        self.remote_interest.clone()
    }

    /// This node's number.
    pub fn node(&self) -> u16 {
        self.me
    }

    /// A fresh open key, unique in the cluster.
    pub fn new_key(&self) -> OpenKey {
        OpenKey { node: self.me, seq: self.next_seq.fetch_add(1, Ordering::Relaxed) }
    }

    /// Whether this node may act now, and its changes.
    pub fn licensed(&self) -> watch::Receiver<bool> {
        self.licensed.subscribe()
    }

    /// Whether this node is cut off from the cluster (`crate::cut_off`), and its changes:
    /// what it still lets through must not reach the volume.
    pub fn cut_off(&self) -> watch::Receiver<Option<crate::cut_off::CutOff>> {
        self.cut_off.subscribe()
    }

    /// Whether this node was licensed at any time since it started (a license shorter than
    /// anyone's look at [`LockService::licensed`] counts too).
    pub fn was_licensed(&self) -> bool {
        self.was_licensed.load(Ordering::SeqCst)
    }

    /// Records whether this node is cut off (the cluster's watcher calls it).
    pub fn set_cut_off(&self, c: Option<crate::cut_off::CutOff>) {
        self.cut_off.send_if_modified(|old| std::mem::replace(old, c) != c);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Feeds one input and carries out what it produced.
    pub fn feed(&self, input: Input<FileId>) {
        let now = self.t0.elapsed();
        let mut st = self.lock();
        let outs = st.m.handle(now, input);
        let later = self.apply(&mut st, outs);
        drop(st);
        self.after(later);
    }

    /// A message from peer `from` (the mesh calls this).
    pub fn receive(&self, from: u16, msg: Msg<FileId>) {
        self.feed(Input::Message { from, msg });
    }

    /// The mesh link to `peer` came up or went down.
    pub fn link(&self, peer: u16, up: bool) {
        self.feed(if up { Input::LinkUp(peer) } else { Input::LinkDown(peer) });
    }

    /// Carries out what must happen under the machine's lock (answers, queuing messages in the
    /// machine's order); the rest, and writing the queued messages, is for [`Self::after`].
    fn apply(&self, st: &mut State, outs: Vec<Output<FileId>>) -> Later {
        let mut later = Later::default();
        for o in outs {
            match o {
                Output::Reply { rid, outcome } => {
                    if let Some(tx) = st.waiting.remove(&rid) {
                        later.replies.push((tx, outcome));
                    }
                }
                Output::Send { to, msg } => {
                    if let Some(net) = &self.net {
                        net.queue(to, msg, &mut later.dirty);
                    }
                }
                Output::Changed(f) => {
                    if let Some(n) = st.changes.get(&f) {
                        if Arc::strong_count(n) == 1 {
                            // Nobody waits on it: nothing to wake.
                            st.changes.remove(&f);
                        } else {
                            later.wake.push(n.clone());
                        }
                    }
                }
                Output::Licensed(on) => {
                    if on {
                        self.was_licensed.store(true, Ordering::SeqCst);
                    }
                    self.licensed.send_replace(on);
                    if on {
                        tracing::info!("file-sharing state: this node is in sync with the cluster");
                    } else {
                        tracing::warn!("file-sharing state: this node is not in sync with the cluster; requests wait");
                    }
                }
                Output::RemoteInterest(level) => self.remote_interest.store(level, Ordering::SeqCst),
                other @ (Output::Break { .. } | Output::Evicted | Output::Event(_) | Output::InterestAcked(_)) => {
                    later.outputs.push(other)
                }
            }
        }
        later
    }

    fn after(&self, later: Later) {
        for (tx, outcome) in later.replies {
            let _ = tx.send(outcome);
        }
        for n in later.wake {
            n.notify_waiters();
        }
        if let Some(net) = &self.net {
            net.flush(later.dirty);
        }
        for o in later.outputs {
            if let Output::InterestAcked(seq) = &o {
                if let Some(sink) = self.interest_acked.get() {
                    sink(*seq);
                }
                continue;
            }
            if let Output::Event(p) = &o {
                // Called outside the lock: a sink may broadcast in turn.
                let sinks = self.events.lock().unwrap_or_else(|p| p.into_inner()).clone();
                for sink in sinks {
                    sink(p);
                }
                continue;
            }
            let extra: Vec<LeaseHolder> = self.lease_holders.lock().unwrap_or_else(|p| p.into_inner()).clone();
            if let Output::Break { file, notice } = &o {
                if let Some((_, h)) = extra.iter().find(|(c, _)| *c == notice.lease.client) {
                    h.deliver_break(*file, *notice);
                    continue;
                }
            }
            if matches!(o, Output::Evicted) {
                for (_, h) in &extra {
                    h.evicted();
                }
            }
            let Some(h) = self.holders.get() else { continue };
            match o {
                Output::Break { file, notice } => h.deliver_break(file, notice),
                Output::Evicted => {
                    tracing::warn!(
                        "file-sharing state: this node was left out of the cluster view; closing its clients' handles"
                    );
                    h.evicted();
                }
                _ => {}
            }
        }
    }

    async fn call(&self, file: &FileId, op: Op) -> Outcome {
        let (tx, rx) = oneshot::channel();
        {
            let now = self.t0.elapsed();
            let mut st = self.lock();
            let rid = st.next_rid;
            st.next_rid += 1;
            st.waiting.insert(rid, tx);
            let outs = st.m.handle(now, Input::Request { rid, file: *file, op });
            let later = self.apply(&mut st, outs);
            drop(st);
            self.after(later);
        }
        rx.await.unwrap_or(Err(Conflict::Unavailable))
    }

    /// Opens: share modes, delete-pending, lease and oplock breaks (waiting for them).
    pub async fn open(&self, file: &FileId, req: OpenRequest) -> Result<Granted, Conflict> {
        // An open that timed out here may still be granted later: the machine gives it back
        // then (`Op::undo`), so nothing is left behind for a handle nobody has.
        answer(self.call(file, Op::Open(req)).await, |a| match a {
            Answer::Opened(g) => Some(g),
            _ => None,
        })
    }

    /// Closes an open without waiting for the answer (an open abandoned on an error path).
    pub fn close_detached(&self, file: &FileId, key: OpenKey) {
        let (tx, _rx) = oneshot::channel();
        let now = self.t0.elapsed();
        let mut st = self.lock();
        let rid = st.next_rid;
        st.next_rid += 1;
        st.waiting.insert(rid, tx);
        let outs = st.m.handle(now, Input::Request { rid, file: *file, op: Op::Close(key) });
        let later = self.apply(&mut st, outs);
        drop(st);
        self.after(later);
    }

    /// Closes an open (its locks and, if unused, its lease go with it).
    pub async fn close(&self, file: &FileId, key: OpenKey) -> Result<CloseOutcome, Conflict> {
        let r = answer(self.call(file, Op::Close(key)).await, |a| match a {
            Answer::Closed(c) => Some(c),
            _ => None,
        });
        if r.is_ok() {
            self.released(file);
        }
        r
    }

    /// Wakes this node's waiters on `file` (see [`LockService::changes`]) after a release made
    /// through this node. A release decided here has woken them already; one decided by a
    /// remote home comes back only as the answer to this node's request (the home updates the
    /// copies of the *other* nodes holding the file, and the requester's copy with its answer),
    /// which wakes nobody: a blocking lock of another client of this node would otherwise wait
    /// for its one-second retry.
    fn released(&self, file: &FileId) {
        let n = self.lock().changes.get(file).cloned();
        if let Some(n) = n {
            n.notify_waiters();
        }
    }

    async fn done(&self, file: &FileId, op: Op) -> Result<(), Conflict> {
        answer(self.call(file, op).await, |a| matches!(a, Answer::Done).then_some(()))
    }

    /// Takes a byte-range lock (breaking other opens' read caching).
    pub async fn lock_range(&self, file: &FileId, lock: RangeLock) -> Result<(), Conflict> {
        self.done(file, Op::Lock(lock)).await
    }

    /// Releases one.
    pub async fn unlock(&self, file: &FileId, owner: Owner, offset: u64, len: u64) -> Result<(), Conflict> {
        let r = self.done(file, Op::Unlock { owner, offset, len }).await;
        if r.is_ok() {
            self.released(file);
        }
        r
    }

    /// Releases every lock of a POSIX owner on the file.
    pub async fn unlock_all(&self, file: &FileId, owner: Owner) -> Result<(), Conflict> {
        let r = self.done(file, Op::UnlockAll(owner)).await;
        if r.is_ok() {
            self.released(file);
        }
        r
    }

    /// Marks an open delete-on-close.
    pub async fn set_delete_on_close(&self, file: &FileId, key: OpenKey, on: bool) -> Result<(), Conflict> {
        self.done(file, Op::SetDeleteOnClose { key, on }).await
    }

    /// Makes open `key` (with its byte-range locks and lease) outlive its node: if the node dies
    /// or is left out of the view, the open stays in the cluster as an orphan for `timeout`,
    /// conflicting as before, until it is reclaimed ([`LockService::reclaim_open`]) or its time
    /// runs out. Zero makes it ordinary again. The file's record then always has a second copy
    /// on another node and is never delegated (every request on it costs a round trip).
    pub async fn set_durable(&self, file: &FileId, key: OpenKey, timeout: Duration) -> Result<(), Conflict> {
        let ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX).min(super::record::HAND_OVER_MS - 1);
        self.done(file, Op::SetDurable { key, ms }).await
    }

    /// Lets another node reclaim durable open `key` of this node ([`LockService::reclaim_open`])
    /// although this node lives: its client came back through that node (the address moved).
    /// The open keeps conflicting as before until it is reclaimed; [`Conflict::NotFound`] when
    /// it is not durable.
    pub async fn hand_over(&self, file: &FileId, key: OpenKey) -> Result<(), Conflict> {
        self.done(file, Op::SetDurable { key, ms: super::record::HAND_OVER_MS }).await
    }

    /// Takes over durable open `old` through this node as open `new` (rekeying its locks and
    /// moving its lease here): an orphan, an open of this node whose connection is gone, or
    /// one its node handed over ([`LockService::hand_over`]). [`Conflict::NotFound`] when
    /// there is no such open; [`Conflict::Sharing`] when it is a live open of another node.
    /// Asking again with the same `new` gives the same answer.
    pub async fn reclaim_open(&self, file: &FileId, old: OpenKey, new: OpenKey) -> Result<OpenEntry, Conflict> {
        answer(self.call(file, Op::Reclaim { old, new }).await, |a| match a {
            Answer::Reclaimed(e) => Some(e),
            _ => None,
        })
    }

    /// How long POSIX-owner locks (`Owner::Posix`) outlive their node as orphans that a lock of
    /// the same owner id through any node adopts (NLM reclaim); zero, the default, releases
    /// them with their node. Set the same value on every node, before serving.
    pub fn set_posix_grace(&self, d: Duration) {
        self.lock().m.set_posix_grace(d);
    }

    /// The grace for reclaiming POSIX locks is over: every node drops their orphans now.
    pub fn end_grace(&self) {
        self.feed(Input::EndGrace);
    }

    /// The file was renamed on the volume to `to`: every node holding something on it has the
    /// new name when this returns (an open's delete-on-close or rename by handle then acts on
    /// it, wherever the open is). Call it after every successful rename of a file, before its
    /// client hears of it; it is carried out even if the caller stops waiting.
    pub async fn renamed(&self, file: &FileId, to: FileName) -> Result<(), Conflict> {
        self.done(file, Op::Renamed(Box::new(to))).await
    }

    /// Where the file is, as the last rename through nasgw left it, when this node has the
    /// record at hand (it holds something on the file); `None` otherwise or if never renamed.
    pub fn current_name(&self, file: &FileId) -> Option<FileName> {
        self.local(file, |r| r.name.as_deref().cloned()).flatten()
    }

    /// Sets or clears the file's delete-pending state.
    pub async fn set_delete_pending(&self, file: &FileId, on: bool) -> Result<(), Conflict> {
        self.done(file, Op::SetDeletePending(on)).await
    }

    /// Whether `key` (or a client without an open) may also do what `access` stands for; with
    /// `handle_breaks` (a rename or delete) other leases' handle caching is broken first.
    pub async fn may_also(
        &self,
        file: &FileId,
        key: Option<OpenKey>,
        access: u32,
        handle_breaks: bool,
        lease: Option<LeaseId>,
    ) -> Result<(), Conflict> {
        self.done(file, Op::MayAlso { key, access, handle_breaks, lease }).await
    }

    /// A write, truncate or lock through `by`: other opens' read caching is broken (no wait,
    /// except for the node mounts' [`SYNC_BREAKS`](super::record::SYNC_BREAKS) leases, whose
    /// kernel caches are gone when this returns).
    pub async fn contend(&self, file: &FileId, by: Option<LeaseId>) -> Result<(), Conflict> {
        self.done(file, Op::Contend { by }).await
    }

    /// A write or truncate through `by`: breaks other opens' read caching, asking the node that
    /// decides only when this node's copy shows some (or it has none).
    pub async fn contend_if_needed(&self, file: &FileId, by: Option<LeaseId>) -> Result<(), Conflict> {
        if self.local(file, |r| r.contend(by.as_ref()).is_empty()) == Some(true) {
            return Ok(());
        }
        self.contend(file, by).await
    }

    /// A client acknowledged a break.
    pub async fn ack_break(&self, file: &FileId, lease: LeaseId, state: u8) -> Result<(), Conflict> {
        self.done(file, Op::AckBreak { lease, state }).await
    }

    /// `f` of the record when this node has it at hand (it decides the file or holds something
    /// on it); `None` otherwise.
    pub fn local<R>(&self, file: &FileId, f: impl FnOnce(&FileRecord) -> R) -> Option<R> {
        self.lock().m.local_record(file).map(f)
    }

    /// The file's record, from here or from the node that decides it.
    pub async fn record(&self, file: &FileId) -> Result<FileRecord, Conflict> {
        if let Some(r) = self.local(file, Clone::clone) {
            return Ok(r);
        }
        answer(self.call(file, Op::Read).await, |a| match a {
            Answer::Record(r) => Some(r),
            _ => None,
        })
    }

    /// Whether `who` (an open; `None` for NFS) may read or write the range: byte-range locks are
    /// mandatory for everyone but their owner.
    pub async fn io_allowed(
        &self,
        file: &FileId,
        who: Option<OpenKey>,
        offset: u64,
        len: u64,
        write: bool,
    ) -> Result<bool, Conflict> {
        if let Some(ok) = self.local(file, |r| r.io_allowed(who, offset, len, write)) {
            return Ok(ok);
        }
        Ok(self.record(file).await?.io_allowed(who, offset, len, write))
    }

    /// A notifier that fires when the file's state changes here (a lock or open released, a
    /// break acknowledged): waiters subscribe (`notified()`, then `enable()`) before they retry,
    /// so no wake-up is lost.
    pub fn changes(&self, file: &FileId) -> Arc<Notify> {
        self.lock().changes.entry(*file).or_default().clone()
    }

    /// What this node's own clients hold, file by file (the truth it reports at a view
    /// change): what its volume locks are set again from once it is back in sync.
    pub fn holdings(&self) -> std::collections::BTreeMap<FileId, FileRecord> {
        self.lock().m.holdings()
    }

    /// Records decided here and copies kept here (status and tests).
    pub fn record_count(&self) -> (usize, usize) {
        self.lock().m.record_count()
    }

    /// Ticks the machine every `every` and feeds it HA's verdict from `ha` (none for a single
    /// node), until `stop`.
    pub async fn run(
        self: Arc<Self>,
        every: Duration,
        ha: Option<Box<dyn Fn() -> HaInput + Send>>,
        stop: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = None;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Some(ha) = &ha {
                let h = ha();
                if last != Some(h) {
                    last = Some(h);
                    self.feed(Input::Ha(h));
                }
            }
            self.feed(Input::Tick);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    use super::*;
    use crate::locks::record::{flags, CachingRequest};
    use crate::locks::types::{access, caching, share};

    fn fid(n: u8) -> FileId {
        FileId::new(&[n]).unwrap()
    }

    struct Sink(Mutex<Vec<BreakNotice>>);
    impl Holders for Sink {
        fn deliver_break(&self, _file: FileId, notice: BreakNotice) {
            self.0.lock().unwrap().push(notice);
        }
        fn evicted(&self) {}
    }

    #[test]
    fn answers_and_wake_ups_go_out_only_once_the_lock_is_released() {
        let s = LockService::single();
        let (tx, mut rx) = oneshot::channel();
        let waiter = s.changes(&fid(3));
        let notified = waiter.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let mut st = s.lock();
        st.waiting.insert(99, tx);
        let outs = vec![Output::Reply { rid: 99, outcome: Ok(Answer::Done) }, Output::Changed(fid(3))];
        let later = s.apply(&mut st, outs);
        // Still under the lock: a caller woken now would only find it held and sleep again.
        assert!(rx.try_recv().is_err(), "no answer while the lock is held");
        let cx = &mut std::task::Context::from_waker(std::task::Waker::noop());
        assert!(notified.as_mut().poll(cx).is_pending(), "no wake-up while the lock is held");
        drop(st);
        s.after(later);
        assert_eq!(rx.try_recv().unwrap(), Ok(Answer::Done));
        assert!(notified.as_mut().poll(cx).is_ready());
    }

    #[tokio::test]
    async fn a_single_node_answers_in_place_and_breaks_reach_the_holder() {
        let s = LockService::single();
        let sink = Arc::new(Sink(Mutex::new(Vec::new())));
        s.set_holders(sink.clone());
        let lease = LeaseId { client: [1; 16], key: [2; 16] };
        let a = OpenRequest {
            key: s.new_key(),
            access: access::READ_DATA | access::WRITE_DATA,
            share: share::ALL,
            caching: CachingRequest::Lease { id: lease, state: caching::RWH, version: 2, epoch: 0, parent: None },
            overwrite: false,
            is_dir: false,
            flags: flags::HANDLE,
        };
        assert_eq!(s.open(&fid(1), a).await.unwrap().state, caching::RWH);
        let b = OpenRequest {
            key: s.new_key(),
            access: access::READ_DATA,
            share: share::ALL,
            caching: CachingRequest::None,
            overwrite: false,
            is_dir: false,
            flags: flags::HANDLE,
        };
        let s2 = s.clone();
        let second = tokio::spawn(async move { s2.open(&fid(1), b).await });
        // The break reaches the holder; the second open waits for its acknowledgement.
        for _ in 0..100 {
            if !sink.0.lock().unwrap().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let n = sink.0.lock().unwrap()[0];
        assert_eq!((n.from, n.to), (caching::RWH, caching::R | caching::H));
        assert!(!second.is_finished());
        s.ack_break(&fid(1), lease, caching::R | caching::H).await.unwrap();
        let g = second.await.unwrap().unwrap();
        assert_eq!(g.state, 0);
        assert!(s.io_allowed(&fid(1), None, 0, 10, true).await.unwrap());
    }
}
