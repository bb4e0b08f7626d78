//! One node's HA decisions as a pure state machine: events in (heartbeat seen, timer fired, lock
//! taken or lost, health changed, admin request), actions out (send a datagram, take or release
//! an address, take/check/release the recovery lock, run the notify script). No I/O, no clock:
//! the caller passes `now`, so the same code runs in the daemon and in simulated clusters.
//!
//! # How split brain is prevented
//! - **Quorum**: a node counts itself and the peers heard within the *fence interval*
//!   (`dead / 2`). Without a strict majority (or exactly half plus the recovery lock) it holds
//!   no address and gives up the lock, so a cut-off minority fences itself.
//! - **Leader = lock holder**: only a node holding the recovery lock leads and publishes
//!   placement. A follower that has not heard the leader for `dead - 2 * heartbeat` releases
//!   every address (it "cannot see the leader and cannot take the lock").
//! - **Timing order**: a cut-off node drops its addresses (at most `dead - 2 * heartbeat` after
//!   it last heard the others) strictly before the leader declares it DISCONNECTED (`dead`
//!   after it last heard from it) and gives its addresses to someone else.
//! - **Release before take**: the leader publishes an address as owned by nobody until no
//!   connected node other than the new owner reports holding it (heartbeats carry each node's
//!   held addresses), so moves between live nodes never overlap either.
//! - Datagrams carry `(incarnation, seq)`: duplicates and reordered stale ones are dropped.
//! - **Freshness across restarts**: a node believes a peer's heartbeat only when it echoes the
//!   node's own current incarnation (the peer heard this run), and the peer's other datagrams
//!   only once such a heartbeat arrived. A restarted node has no sequence numbers to compare,
//!   so without this, heartbeats recorded before its restart could be replayed to it and show
//!   a dead (or cut-off) node as alive, or an old leader's placement as current.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use crate::connections::TcpConnection;
use crate::placement::{place, Assignment, PlacementInput};
use crate::status::{NodeState, RecoveryMode};
use crate::wire::message::{chunk_connections, Body, Heartbeat, Message, MoveRequest};

/// The timing knobs (`[cluster] heartbeat_interval_ms`, `dead_interval_ms`, `lock_check_interval_ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    /// How often a node announces itself.
    pub heartbeat: Duration,
    /// A node not heard from for this long is DISCONNECTED and its addresses move.
    pub dead: Duration,
    /// How often the leader re-checks that it still holds the recovery lock.
    pub lock_check: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            heartbeat: Duration::from_millis(100),
            dead: Duration::from_millis(1000),
            lock_check: Duration::from_millis(500),
        }
    }
}

impl Timings {
    /// Peers count towards quorum only if heard within this.
    pub fn fence(&self) -> Duration {
        self.dead / 2
    }
    /// A follower keeps its addresses at most this long after it last heard the leader.
    pub fn hold_limit(&self) -> Duration {
        self.dead.saturating_sub(self.heartbeat * 2).max(self.fence())
    }
    /// How often the connection list is re-sent even when unchanged.
    fn connection_resend(&self) -> Duration {
        Duration::from_secs(1)
    }
}

/// What the machine needs to know about the cluster (the same on every node except `me`).
#[derive(Debug, Clone)]
pub struct MachineConfig {
    /// This node's number.
    pub me: u32,
    /// How many nodes are configured.
    pub nodes: u32,
    /// Every public address, in config order.
    pub addresses: Vec<IpAddr>,
    /// `[cluster] failback`.
    pub failback: bool,
    /// Timings.
    pub timings: Timings,
    /// This run's identity (start time in ns): peers detect restarts by it.
    pub incarnation: u64,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The timer fired.
    Tick,
    /// An authenticated datagram arrived.
    Received(Message),
    /// Outcome of a lock operation the machine asked for.
    Lock(LockOutcome),
    /// The health monitor's verdict (volume probe, listeners).
    Health {
        /// Everything answers.
        healthy: bool,
        /// Why not, for logs and the notify script.
        reason: String,
    },
    /// `nasgw disable`.
    Disable,
    /// `nasgw enable`.
    Enable,
    /// `nasgw ip move ADDR NODE` typed on this node.
    Move {
        /// The public address.
        address: IpAddr,
        /// Where it should go.
        node: u32,
    },
    /// This node's live client connections changed.
    LocalConnections(Vec<TcpConnection>),
    /// The daemon is stopping: release everything.
    Stop,
}

/// Result of a recovery lock operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockOutcome {
    /// The lock is ours.
    Taken,
    /// Someone else holds it, or the volume did not answer.
    Busy(String),
    /// A check found the lock gone (file replaced, lock lost, volume gone).
    Lost(String),
    /// A check found the lock still ours.
    StillHeld,
}

/// A recovery lock operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockOp {
    /// Try to take it without waiting.
    Take,
    /// Verify it is still held (same inode, lock still ours).
    Check,
    /// Give it up.
    Release,
}

/// What the machine wants done; [`crate::effects::Effects`] does it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send to every other node.
    Send(Message),
    /// Add the address, announce it (gratuitous ARP), tickle the connections others had on it.
    Take {
        /// The public address.
        address: IpAddr,
        /// Client connections to reset.
        tickle: Vec<TcpConnection>,
    },
    /// Remove the address and reset this node's connections on it.
    Release {
        /// The public address.
        address: IpAddr,
        /// This node's client connections on it.
        reset: Vec<TcpConnection>,
    },
    /// A recovery lock operation; its outcome comes back as [`Event::Lock`].
    Lock(LockOp),
    /// Run the notify script: `SCRIPT EVENT DETAILS...`.
    Notify {
        /// Event name.
        event: String,
        /// `key=value` details.
        details: Vec<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LockState {
    Free,
    Taking,
    Held,
}

#[derive(Debug, Clone, Default)]
struct Peer {
    /// The newest run of this peer heard in any authenticated datagram (echoed in heartbeats).
    heard: u64,
    /// The run believed: set by a heartbeat that echoed this node's run; 0 until then.
    incarnation: u64,
    seq: u64,
    last_seen: Option<Duration>,
    state: Option<NodeState>,
    leader: bool,
    recovering: bool,
    generation: u64,
    epoch: u64,
    held: BTreeSet<IpAddr>,
    assignment: Assignment,
    conns: Vec<TcpConnection>,
    /// Connections that left this peer's table recently (closed because it released their
    /// address, or racing with the release): still tickled by a new owner for a while.
    gone: Vec<(TcpConnection, Duration)>,
    pending: Option<(u64, Vec<Option<Vec<TcpConnection>>>)>,
}

/// How long a connection that left a peer's table is still tickled on takeover.
const GONE_GRACE: Duration = Duration::from_secs(5);

/// One node's HA state machine.
#[derive(Debug)]
pub struct Machine {
    cfg: MachineConfig,
    started: Option<Duration>,
    seq: u64,
    peers: Vec<Peer>,
    admin_disabled: bool,
    healthy: bool,
    health_reason: String,
    stopping: bool,
    lock: LockState,
    lock_tried: Option<Duration>,
    lock_checked: Option<Duration>,
    lock_checking: bool,
    leading: bool,
    leader: Option<u32>,
    leader_heard: Option<Duration>,
    generation: u64,
    max_generation: u64,
    desired: BTreeMap<IpAddr, u32>,
    pins: BTreeMap<IpAddr, u32>,
    published: Assignment,
    epoch: u64,
    max_epoch: u64,
    none_since: BTreeMap<IpAddr, u64>,
    acked: u64,
    held: BTreeSet<IpAddr>,
    published_changed: bool,
    own_conns: Vec<TcpConnection>,
    conn_snapshot: u64,
    conns_sent: Option<Duration>,
    hb_sent: Option<Duration>,
    last_states: Vec<NodeState>,
    last_membership: Vec<NodeState>,
}

impl Machine {
    /// A node that has heard nobody yet, holds nothing and is healthy until told otherwise.
    pub fn new(cfg: MachineConfig) -> Machine {
        let n = cfg.nodes as usize;
        Machine {
            peers: vec![Peer::default(); n],
            started: None,
            seq: 0,
            admin_disabled: false,
            healthy: true,
            health_reason: String::new(),
            stopping: false,
            lock: LockState::Free,
            lock_tried: None,
            lock_checked: None,
            lock_checking: false,
            leading: false,
            leader: None,
            leader_heard: None,
            generation: 0,
            max_generation: 0,
            desired: BTreeMap::new(),
            pins: BTreeMap::new(),
            published: BTreeMap::new(),
            epoch: 0,
            max_epoch: 0,
            none_since: BTreeMap::new(),
            acked: 0,
            held: BTreeSet::new(),
            published_changed: false,
            own_conns: Vec::new(),
            conn_snapshot: 0,
            conns_sent: None,
            hb_sent: None,
            last_states: vec![NodeState::Disconnected; n],
            last_membership: Vec::new(),
            cfg,
        }
    }

    /// Feeds one event; returns what must be done, in order.
    pub fn handle(&mut self, now: Duration, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        self.started.get_or_insert(now);
        let mut eager = false;
        match event {
            Event::Tick => {}
            Event::Received(msg) => eager |= self.receive(now, msg, &mut out),
            Event::Lock(outcome) => self.lock_outcome(now, outcome, &mut out),
            Event::Health { healthy, reason } => {
                if healthy != self.healthy {
                    let event = if healthy { "healthy" } else { "unhealthy" };
                    out.push(self.notify(event, vec![format!("reason={reason}")]));
                    eager = true;
                }
                self.healthy = healthy;
                self.health_reason = reason;
            }
            Event::Disable => {
                eager |= !self.admin_disabled;
                self.admin_disabled = true;
            }
            Event::Enable => {
                eager |= self.admin_disabled;
                self.admin_disabled = false;
            }
            Event::Move { address, node } => {
                if self.leading {
                    self.pin(address, node);
                } else {
                    out.push(Action::Send(self.message(Body::Move(MoveRequest { address, node }))));
                }
            }
            Event::LocalConnections(conns) => {
                self.own_conns = conns;
                self.send_connections(now, &mut out);
            }
            Event::Stop => {
                eager |= !self.stopping;
                self.stopping = true;
            }
        }
        self.evaluate(now, eager, &mut out);
        out
    }

    fn message(&mut self, body: Body) -> Message {
        self.seq += 1;
        Message { from: self.cfg.me, incarnation: self.cfg.incarnation, seq: self.seq, body }
    }

    fn notify(&self, event: &str, mut details: Vec<String>) -> Action {
        details.insert(0, format!("pnn={}", self.cfg.me));
        Action::Notify { event: event.to_string(), details }
    }

    fn pin(&mut self, address: IpAddr, node: u32) {
        if self.cfg.addresses.contains(&address) && node < self.cfg.nodes {
            self.pins.insert(address, node);
        }
    }

    fn send_connections(&mut self, now: Duration, out: &mut Vec<Action>) {
        self.conn_snapshot += 1;
        for chunk in chunk_connections(self.conn_snapshot, &self.own_conns) {
            out.push(Action::Send(self.message(Body::Connections(chunk))));
        }
        self.conns_sent = Some(now);
    }

    /// Returns whether the news deserves an immediate heartbeat.
    fn receive(&mut self, now: Duration, msg: Message, out: &mut Vec<Action>) -> bool {
        let from = msg.from as usize;
        if msg.from == self.cfg.me || from >= self.peers.len() {
            return false;
        }
        let me = (self.cfg.me, self.cfg.incarnation);
        let peer = &mut self.peers[from];
        peer.heard = peer.heard.max(msg.incarnation);
        if msg.incarnation < peer.incarnation || (msg.incarnation == peer.incarnation && msg.seq <= peer.seq) {
            return false; // stale run, duplicate or reordered
        }
        let fresh = match &msg.body {
            Body::Heartbeat(h) => h.seen.contains(&me),
            _ => msg.incarnation == peer.incarnation,
        };
        if !fresh {
            return false; // sent before this node's run started (or replayed): not proof of life
        }
        if msg.incarnation > peer.incarnation {
            *peer = Peer { heard: peer.heard, incarnation: msg.incarnation, ..Peer::default() };
        }
        peer.seq = msg.seq;
        peer.last_seen = Some(now);
        match msg.body {
            Body::Heartbeat(h) => {
                let news = peer.state != Some(h.state) || peer.held.len() != h.held.len();
                peer.state = Some(h.state);
                peer.leader = h.leader;
                peer.recovering = h.recovering;
                peer.generation = h.generation;
                peer.epoch = h.epoch;
                self.max_epoch = self.max_epoch.max(h.epoch);
                peer.held = h.held.into_iter().collect();
                peer.assignment = h.assignment.into_iter().collect();
                self.max_generation = self.max_generation.max(h.generation);
                if h.leader && !self.leading {
                    if self.leader != Some(msg.from) {
                        self.leader = Some(msg.from);
                        out.push(self.notify("leader", vec![format!("leader={}", msg.from)]));
                    }
                    self.leader_heard = Some(now);
                    return true;
                }
                news
            }
            Body::Connections(c) => {
                let pending = match &mut peer.pending {
                    Some((snap, parts)) if *snap == c.snapshot && parts.len() == usize::from(c.count) => parts,
                    _ => &mut peer.pending.insert((c.snapshot, vec![None; usize::from(c.count)])).1,
                };
                pending[usize::from(c.index)] = Some(c.conns);
                if pending.iter().all(Option::is_some) {
                    let new: Vec<TcpConnection> = pending.drain(..).flatten().flatten().collect();
                    for c in std::mem::take(&mut peer.conns) {
                        if !new.contains(&c) {
                            peer.gone.push((c, now));
                        }
                    }
                    peer.gone.retain(|(c, t)| now.saturating_sub(*t) < GONE_GRACE && !new.contains(c));
                    peer.conns = new;
                    peer.pending = None;
                }
                false
            }
            Body::Move(m) => {
                if self.leading {
                    self.pin(m.address, m.node);
                    return true;
                }
                false
            }
            // Facts for `nasgw status`, kept by the runtime; nothing to decide.
            Body::Info(_) => false,
        }
    }

    fn lock_outcome(&mut self, now: Duration, outcome: LockOutcome, out: &mut Vec<Action>) {
        match outcome {
            LockOutcome::Taken => {
                if self.lock != LockState::Taking || !self.may_lead(now) {
                    out.push(Action::Lock(LockOp::Release));
                    self.lock = LockState::Free;
                    return;
                }
                self.lock = LockState::Held;
                self.lock_checked = Some(now);
                self.leading = true;
                self.leader = Some(self.cfg.me);
                self.leader_heard = Some(now);
                self.generation = self.max_generation.max(self.generation) + 1;
                self.max_generation = self.generation;
                self.epoch = self.max_epoch.max(self.epoch) + 1;
                self.max_epoch = self.epoch;
                self.none_since.clear();
                self.last_membership.clear();
                // Start from what is actually held, so nothing moves needlessly.
                self.desired.clear();
                for a in self.held.clone() {
                    self.desired.insert(a, self.cfg.me);
                }
                for (i, p) in self.peers.iter().enumerate() {
                    if self.connected(now, p) {
                        for a in &p.held {
                            self.desired.entry(*a).or_insert(i as u32);
                        }
                    }
                }
                out.push(self.notify(
                    "leader",
                    vec![format!("leader={}", self.cfg.me), format!("generation={}", self.generation)],
                ));
            }
            LockOutcome::Busy(_) => {
                if self.lock == LockState::Taking {
                    self.lock = LockState::Free;
                }
            }
            LockOutcome::StillHeld => {
                self.lock_checking = false;
            }
            LockOutcome::Lost(reason) => {
                self.lock_checking = false;
                if self.lock == LockState::Held {
                    out.push(self.notify("lock_lost", vec![format!("reason={reason}")]));
                    out.push(Action::Lock(LockOp::Release));
                    self.step_down(now);
                    // Losing the lock means another node may lead now: hold nothing.
                    for a in std::mem::take(&mut self.held) {
                        out.push(self.release_action(a));
                    }
                }
            }
        }
    }

    fn step_down(&mut self, now: Duration) {
        self.lock = LockState::Free;
        self.leading = false;
        self.leader = None;
        self.leader_heard = None;
        self.started = Some(now); // restart the election wait from now
        self.published.clear();
        self.desired.clear();
    }

    fn connected(&self, now: Duration, p: &Peer) -> bool {
        p.last_seen.is_some_and(|t| now.saturating_sub(t) < self.cfg.timings.dead)
            && p.state != Some(NodeState::Stopped)
    }

    fn fresh(&self, now: Duration, p: &Peer) -> bool {
        p.last_seen.is_some_and(|t| now.saturating_sub(t) < self.cfg.timings.fence())
            && p.state != Some(NodeState::Stopped)
    }

    /// This node's own state.
    pub fn own_state(&self) -> NodeState {
        if self.stopping {
            NodeState::Stopped
        } else if self.admin_disabled {
            NodeState::Disabled
        } else if !self.healthy {
            NodeState::Unhealthy
        } else {
            NodeState::Ok
        }
    }

    /// Every node's state as this node sees it.
    pub fn states(&self, now: Duration) -> Vec<NodeState> {
        (0..self.peers.len())
            .map(|i| {
                if i as u32 == self.cfg.me {
                    self.own_state()
                } else {
                    let p = &self.peers[i];
                    match p.state {
                        Some(NodeState::Stopped) => NodeState::Stopped,
                        Some(s) if self.connected(now, p) => s,
                        _ => NodeState::Disconnected,
                    }
                }
            })
            .collect()
    }

    /// (strict majority, exactly half) of the nodes heard within the fence interval.
    fn quorum(&self, now: Duration) -> (bool, bool) {
        let count =
            1 + self.peers.iter().enumerate().filter(|(i, p)| *i as u32 != self.cfg.me && self.fresh(now, p)).count();
        let n = self.peers.len();
        (count * 2 > n, count * 2 == n)
    }

    fn may_lead(&self, now: Duration) -> bool {
        let (majority, tie) = self.quorum(now);
        !self.stopping && (majority || tie)
    }

    fn since_leader(&self, now: Duration) -> Duration {
        now.saturating_sub(self.leader_heard.or(self.started).unwrap_or(now))
    }

    fn release_action(&self, address: IpAddr) -> Action {
        let reset = self.own_conns.iter().filter(|c| c.server.ip() == address).copied().collect();
        Action::Release { address, reset }
    }

    fn evaluate(&mut self, now: Duration, mut eager: bool, out: &mut Vec<Action>) {
        let t = self.cfg.timings;
        let states = self.states(now);
        for (i, (old, new)) in self.last_states.iter().zip(&states).enumerate() {
            if old != new {
                out.push(self.notify("node", vec![format!("node={i}"), format!("from={old}"), format!("to={new}")]));
            }
        }
        self.last_states = states.clone();

        // Leadership: keep it only with quorum; otherwise release the lock so the majority can lead.
        if self.lock == LockState::Held && !self.may_lead(now) {
            out.push(self.notify("leader_lost", vec!["reason=no quorum or stopping".to_string()]));
            out.push(Action::Lock(LockOp::Release));
            self.step_down(now);
            eager = true;
        }
        if self.lock == LockState::Held
            && !self.lock_checking
            && self.lock_checked.is_none_or(|c| now.saturating_sub(c) >= t.lock_check)
        {
            self.lock_checking = true;
            self.lock_checked = Some(now);
            out.push(Action::Lock(LockOp::Check));
        }
        if self.lock == LockState::Free && !self.stopping && self.may_lead(now) {
            let since = self.since_leader(now);
            let candidate = (0..self.peers.len() as u32)
                .find(|i| *i == self.cfg.me || self.fresh(now, &self.peers[*i as usize]))
                .unwrap_or(self.cfg.me);
            let wait = if candidate == self.cfg.me { t.fence() } else { t.fence() + t.heartbeat * 2 };
            let retry_due = self.lock_tried.is_none_or(|l| now.saturating_sub(l) >= t.heartbeat);
            if since >= wait && retry_due {
                self.lock = LockState::Taking;
                self.lock_tried = Some(now);
                out.push(Action::Lock(LockOp::Take));
            }
        }

        // Leader duties: membership generation and placement.
        if self.leading {
            if self.last_membership != states {
                if !self.last_membership.is_empty() {
                    self.generation += 1;
                    self.max_generation = self.generation;
                }
                self.last_membership = states.clone();
                out.push(self.notify("generation", vec![format!("generation={}", self.generation)]));
                eager = true;
            }
            let eligible: BTreeSet<u32> =
                states.iter().enumerate().filter(|(_, s)| **s == NodeState::Ok).map(|(i, _)| i as u32).collect();
            self.pins.retain(|_, n| eligible.contains(n));
            let assignment = place(&PlacementInput {
                nodes: self.cfg.nodes,
                eligible: &eligible,
                addresses: &self.cfg.addresses,
                current: &self.desired,
                pins: &self.pins,
                failback: self.cfg.failback,
            });
            self.desired = assignment.iter().filter_map(|(a, o)| o.map(|o| (*a, o))).collect();
            self.publish(now, &assignment);
            if self.published_changed {
                self.published_changed = false;
                eager = true;
            }
        }

        // Which addresses this node must hold now.
        let allowed = self.own_state() == NodeState::Ok && self.in_quorum(now);
        let target: BTreeSet<IpAddr> = if !allowed {
            BTreeSet::new()
        } else if self.leading {
            self.published.iter().filter(|(_, o)| **o == Some(self.cfg.me)).map(|(a, _)| *a).collect()
        } else {
            let l = self.leader.expect("leader_ok") as usize;
            self.peers[l].assignment.iter().filter(|(_, o)| **o == Some(self.cfg.me)).map(|(a, _)| *a).collect()
        };
        for a in self.held.difference(&target).copied().collect::<Vec<_>>() {
            out.push(self.release_action(a));
            out.push(self.notify("releaseip", vec![format!("address={a}")]));
            self.held.remove(&a);
            eager = true;
        }
        for a in target.difference(&self.held).copied().collect::<Vec<_>>() {
            let tickle = self
                .peers
                .iter()
                .enumerate()
                .filter(|(i, _)| *i as u32 != self.cfg.me)
                .flat_map(|(_, p)| {
                    let recent = p.gone.iter().filter(|(_, t)| now.saturating_sub(*t) < GONE_GRACE).map(|(c, _)| c);
                    p.conns.iter().chain(recent).filter(|c| c.server.ip() == a).copied()
                })
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            out.push(Action::Take { address: a, tickle });
            out.push(self.notify("takeip", vec![format!("address={a}")]));
            self.held.insert(a);
            eager = true;
        }

        // Everything the leader's latest assignment asked of this node is done now: acknowledge it.
        if let Some(l) = self.leader.filter(|l| *l != self.cfg.me) {
            self.acked = self.peers[l as usize].epoch;
        }
        if eager || self.hb_sent.is_none_or(|s| now.saturating_sub(s) >= t.heartbeat) {
            self.hb_sent = Some(now);
            let hb = Heartbeat {
                state: self.own_state(),
                leader: self.leading,
                generation: self.generation.max(self.max_generation),
                recovering: self.leading && self.recovering(),
                epoch: if self.leading { self.epoch } else { self.acked },
                held: self.held.iter().copied().collect(),
                assignment: if self.leading {
                    self.published.iter().map(|(a, o)| (*a, *o)).collect()
                } else {
                    Vec::new()
                },
                seen: self
                    .peers
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| p.heard != 0)
                    .map(|(i, p)| (i as u32, p.heard))
                    .collect(),
            };
            out.push(Action::Send(self.message(Body::Heartbeat(hb))));
        }
        if self.conns_sent.is_some_and(|s| now.saturating_sub(s) >= t.connection_resend()) {
            self.send_connections(now, out);
        }
    }

    /// Publishes `assignment`, but an address moves in two steps: first to nobody (new epoch),
    /// then to its new owner once every other connected node has acknowledged that epoch and
    /// does not report holding it. So two nodes never hold one address, even with reordered or
    /// stale heartbeats in flight.
    fn publish(&mut self, now: Duration, assignment: &Assignment) {
        let before = self.published.clone();
        let mut bumped = false;
        for (a, o) in assignment {
            let cur = self.published.get(a).copied().flatten();
            if cur.is_some() && cur != *o {
                if !bumped {
                    self.epoch += 1;
                    self.max_epoch = self.max_epoch.max(self.epoch);
                    bumped = true;
                }
                self.published.insert(*a, None);
                self.none_since.insert(*a, self.epoch);
            }
        }
        let holders = self.holders(now);
        for (a, o) in assignment {
            if self.published.get(a).copied().flatten() == *o {
                continue;
            }
            let Some(o) = o else { continue };
            let since = self.none_since.get(a).copied();
            let clear = (0..self.peers.len() as u32).filter(|n| n != o).all(|n| {
                let holds = holders.get(a).is_some_and(|h| h.contains(&n));
                if n == self.cfg.me {
                    return !holds;
                }
                let p = &self.peers[n as usize];
                !self.connected(now, p) || (!holds && since.is_none_or(|e| p.epoch >= e))
            });
            if clear {
                if !bumped {
                    self.epoch += 1;
                    self.max_epoch = self.max_epoch.max(self.epoch);
                    bumped = true;
                }
                self.published.insert(*a, Some(*o));
                self.none_since.remove(a);
            }
        }
        for a in assignment.keys() {
            self.published.entry(*a).or_insert(None);
        }
        if self.published != before {
            self.published_changed = true;
        }
    }

    /// Which nodes hold each address now: this node, and connected peers by their heartbeats.
    fn holders(&self, now: Duration) -> BTreeMap<IpAddr, BTreeSet<u32>> {
        let mut h: BTreeMap<IpAddr, BTreeSet<u32>> = BTreeMap::new();
        for a in &self.held {
            h.entry(*a).or_default().insert(self.cfg.me);
        }
        for (i, p) in self.peers.iter().enumerate() {
            if i as u32 != self.cfg.me && self.connected(now, p) {
                for a in &p.held {
                    h.entry(*a).or_default().insert(i as u32);
                }
            }
        }
        h
    }

    fn recovering(&self) -> bool {
        self.cfg.addresses.iter().any(|a| self.published.get(a).copied().flatten() != self.desired.get(a).copied())
    }

    /// This node sees quorum and a leader heard recently (or leads): what a node needs, besides
    /// being OK, to hold addresses, and what the file-sharing state layer needs to act at all.
    pub fn in_quorum(&self, now: Duration) -> bool {
        let (majority, tie) = self.quorum(now);
        let since = self.since_leader(now);
        let leader_ok = self.leading
            || (self.leader.is_some() && self.leader_heard.is_some() && since < self.cfg.timings.hold_limit());
        (majority || tie) && leader_ok
    }

    /// This node heard a strict majority of the nodes (itself included) within the fence
    /// interval: what tells a node cut off from the others (which hears none) from one whose
    /// leader died (which still hears the majority electing the next one).
    pub fn hears_majority(&self, now: Duration) -> bool {
        self.quorum(now).0
    }

    /// Addresses this node holds.
    pub fn held(&self) -> &BTreeSet<IpAddr> {
        &self.held
    }

    /// Does this node lead (hold the recovery lock)?
    pub fn is_leader(&self) -> bool {
        self.leading
    }

    /// The leader this node follows (itself when leading), if heard recently.
    pub fn leader(&self, now: Duration) -> Option<u32> {
        if self.leading {
            return Some(self.cfg.me);
        }
        self.leader.filter(|_| self.leader_heard.is_some() && self.since_leader(now) < self.cfg.timings.hold_limit())
    }

    /// The cluster generation as this node knows it.
    pub fn generation(&self) -> u64 {
        self.generation.max(self.max_generation)
    }

    /// Settled, or placement being changed / no leader.
    pub fn recovery_mode(&self, now: Duration) -> RecoveryMode {
        let busy = match self.leader(now) {
            None => true,
            Some(l) if l == self.cfg.me => self.recovering(),
            Some(l) => self.peers[l as usize].recovering,
        };
        if busy {
            RecoveryMode::Active
        } else {
            RecoveryMode::Normal
        }
    }

    /// Who holds each public address now, as far as this node knows.
    pub fn owners(&self, now: Duration) -> BTreeMap<IpAddr, Option<u32>> {
        let h = self.holders(now);
        self.cfg.addresses.iter().map(|a| (*a, h.get(a).and_then(|s| s.iter().next().copied()))).collect()
    }

    /// Client connections on `address` known from every node's replicated table (and this one's).
    pub fn known_connections(&self, address: IpAddr) -> usize {
        let mut all: BTreeSet<TcpConnection> = BTreeSet::new();
        for (i, p) in self.peers.iter().enumerate() {
            if i as u32 != self.cfg.me {
                all.extend(p.conns.iter().filter(|c| c.server.ip() == address));
            }
        }
        all.extend(self.own_conns.iter().filter(|c| c.server.ip() == address));
        all.len()
    }

    /// The health monitor's last reason, empty when healthy.
    pub fn health_reason(&self) -> &str {
        &self.health_reason
    }

    /// Whether this node holds quorum now: a majority of the nodes heard within the fence
    /// interval, or exactly half with a live leader on its side. Without it the node holds no
    /// public address (and answers no DNS query for the cluster).
    pub fn has_quorum(&self, now: Duration) -> bool {
        let (majority, tie) = self.quorum(now);
        majority || (tie && self.leader(now).is_some())
    }

    /// When this node last heard from node `n` (`None`: never, or `n` is this node).
    pub fn last_heard(&self, n: u32) -> Option<Duration> {
        if n == self.cfg.me {
            return None;
        }
        self.peers.get(n as usize).and_then(|p| p.last_seen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::message::ConnectionChunk;

    fn machine(me: u32, incarnation: u64) -> Machine {
        Machine::new(MachineConfig {
            me,
            nodes: 3,
            addresses: vec!["198.18.1.1".parse().unwrap()],
            failback: true,
            timings: Timings::default(),
            incarnation,
        })
    }

    fn heartbeat(from: u32, incarnation: u64, seq: u64, seen: Vec<(u32, u64)>) -> Event {
        Event::Received(Message {
            from,
            incarnation,
            seq,
            body: Body::Heartbeat(Heartbeat {
                state: NodeState::Ok,
                leader: false,
                generation: 1,
                recovering: false,
                epoch: 0,
                held: Vec::new(),
                assignment: Vec::new(),
                seen,
            }),
        })
    }

    #[test]
    fn a_majority_is_heard_only_within_the_fence_interval() {
        let ms = Duration::from_millis;
        let mut m = machine(0, 500);
        // Alone: 1 of 3.
        assert!(!m.hears_majority(ms(0)));
        m.handle(ms(10), heartbeat(1, 7, 100, vec![(0, 500)]));
        // Itself and node 1: 2 of 3, while node 1 was heard within the fence (500 ms).
        assert!(m.hears_majority(ms(10)));
        assert!(m.hears_majority(ms(509)));
        // Cut off: node 1 not heard for the fence interval.
        assert!(!m.hears_majority(ms(510)));
    }

    #[test]
    fn a_heartbeat_counts_only_when_it_echoes_this_run() {
        let ms = Duration::from_millis;
        let mut m = machine(0, 500);
        // Recorded during node 0's previous run (incarnation 400): not proof that node 1 lives.
        let sent = m.handle(ms(10), heartbeat(1, 7, 100, vec![(0, 400), (2, 9)]));
        assert_eq!(m.states(ms(10))[1], NodeState::Disconnected);
        assert_eq!(m.last_heard(1), None);
        // Node 0 still echoes the run it heard, so node 1 can prove it heard node 0's run.
        let echoed = sent
            .iter()
            .any(|a| matches!(a, Action::Send(Message { body: Body::Heartbeat(h), .. }) if h.seen == vec![(1, 7)]));
        assert!(echoed, "{sent:?}");
        // A non-heartbeat of that run before any believed heartbeat: ignored too.
        let conns = Event::Received(Message {
            from: 1,
            incarnation: 7,
            seq: 101,
            body: Body::Connections(ConnectionChunk { snapshot: 1, index: 0, count: 1, conns: Vec::new() }),
        });
        m.handle(ms(25), conns);
        assert_eq!(m.last_heard(1), None);
        // Node 1's next heartbeat echoes run 500: believed (its seq is newer than anything seen).
        m.handle(ms(30), heartbeat(1, 7, 102, vec![(0, 500)]));
        assert_eq!(m.states(ms(30))[1], NodeState::Ok);
        assert_eq!(m.last_heard(1), Some(ms(30)));
        // A replay of the stale-run heartbeat is a duplicate now as well.
        m.handle(ms(40), heartbeat(1, 7, 100, vec![(0, 400)]));
        assert_eq!(m.last_heard(1), Some(ms(30)));
    }
}
