//! Test-only: N [`Machine`]s on a simulated network (per-link FIFO delivery with random delay;
//! links cut and healed; nodes crashed and restarted with a new incarnation), a simulated HA
//! (majority side, lowest node leads, with HA's own delays), and random clients opening, locking,
//! leasing and acknowledging breaks (or not). After every step the invariant is checked: what the
//! clients of all licensed nodes hold never conflicts. At the end, with the network healed, every
//! request is answered.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use super::machine::{Answer, Config, HaInput, Input, Machine, Msg, Op, Output, RecordKey};
use super::record::{flags, CachingRequest, CloseOutcome, FileName, FileRecord, OpenRequest};
use super::types::{access, caching, share, LeaseId, OpenKey, Owner, RangeLock};

/// A file of the simulation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SimKey(pub [u8; 1]);

impl RecordKey for SimKey {
    fn key_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// A deterministic random source (xorshift).
pub struct Rng(u64);

impl Rng {
    /// Seeded.
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    /// Next value.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    /// 0..n.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    /// True with probability p/1000.
    pub fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

struct Node {
    m: Machine<SimKey>,
    alive: bool,
    incarnation: u64,
    /// When this node's HA view last saw a majority with it / lost it.
    ha_ok_since: Option<Duration>,
    ha_lost_since: Option<Duration>,
    leader_seen: Option<(u16, Duration)>,
}

/// Messages in flight on one directed link, with when each arrives.
type Wire = VecDeque<(Duration, Msg<SimKey>)>;

/// What a client asked and waits for.
#[derive(Debug, Clone)]
struct Asked {
    node: u16,
    op: Op,
    file: SimKey,
}

/// The world.
pub struct World {
    /// Simulated time.
    pub now: Duration,
    nodes: Vec<Node>,
    /// Links (a < b) up.
    up: BTreeSet<(u16, u16)>,
    /// In flight per ordered pair.
    wire: BTreeMap<(u16, u16), Wire>,
    /// Lease breaks clients will acknowledge at a time (or never).
    acks: Vec<(Duration, u16, SimKey, LeaseId, u8)>,
    asked: BTreeMap<u64, Asked>,
    next_rid: u64,
    next_seq: u64,
    /// Opens each node's clients got (file, key, lease).
    opens: BTreeMap<u16, Vec<(SimKey, OpenKey, Option<LeaseId>)>>,
    /// Opens made durable (their clients may reclaim them through any node once theirs is gone).
    durable: BTreeMap<OpenKey, (SimKey, Option<LeaseId>)>,
    /// Durable opens whose node died or was left out: candidates for a reclaim.
    orphaned: Vec<(SimKey, OpenKey, Option<LeaseId>)>,
    /// POSIX locks outlive their node this long (NLM's grace); zero: they do not.
    posix_grace: Duration,
    /// Statistics.
    pub stats: Stats,
    /// Every close answered: node, file, outcome (what the closer deletes, and by which name).
    pub closes: Vec<(u16, SimKey, CloseOutcome)>,
    cfg: Config,
    /// The latest interest number each node's peers acknowledged.
    pub interest_acked: BTreeMap<u16, u64>,
    /// The recovery lock: holder and since when.
    lock: Option<(u16, Duration)>,
    lock_free_since: Option<Duration>,
}

/// Counts of what happened.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    /// Requests answered with success.
    pub granted: u64,
    /// Requests refused for a conflict.
    pub refused: u64,
    /// Requests that failed as unavailable.
    pub unavailable: u64,
    /// Breaks delivered to clients.
    pub breaks: u64,
    /// Messages delivered.
    pub messages: u64,
    /// Of those, messages about files (all but pings, pongs and events).
    pub file_messages: u64,
    /// Events delivered to nodes (change notifications and broadcasts).
    pub events: u64,
    /// Views adopted (summed over nodes).
    pub evictions: u64,
    /// Durable opens reclaimed after their node was gone.
    pub reclaimed: u64,
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

impl World {
    /// `n` nodes, all linked, none started yet.
    pub fn new(n: u16) -> World {
        let cfg = Config {
            me: 0,
            nodes: n,
            incarnation: 1,
            heartbeat: ms(100),
            dead: ms(1000),
            license: ms(800),
            break_timeout: ms(400),
            request_timeout: ms(3000),
            max_idle_delegations: 8,
        };
        let mut w = World {
            now: Duration::ZERO,
            nodes: Vec::new(),
            up: BTreeSet::new(),
            wire: BTreeMap::new(),
            acks: Vec::new(),
            asked: BTreeMap::new(),
            next_rid: 1,
            next_seq: 1,
            opens: BTreeMap::new(),
            durable: BTreeMap::new(),
            orphaned: Vec::new(),
            posix_grace: Duration::ZERO,
            stats: Stats::default(),
            closes: Vec::new(),
            cfg,
            interest_acked: BTreeMap::new(),
            lock: None,
            lock_free_since: None,
        };
        for i in 0..n {
            w.nodes.push(Node {
                m: Machine::new(Config { me: i, incarnation: 1, ..cfg }),
                alive: true,
                incarnation: 1,
                ha_ok_since: None,
                ha_lost_since: None,
                leader_seen: None,
            });
        }
        for a in 0..n {
            for b in a + 1..n {
                w.link_up(a, b);
            }
        }
        w
    }

    /// Makes POSIX locks outlive their node for `d` on every node (as NLM does).
    pub fn set_posix_grace(&mut self, d: Duration) {
        self.posix_grace = d;
        for n in &mut self.nodes {
            n.m.set_posix_grace(d);
        }
    }

    /// Sets every node's break timeout (also for nodes restarted later).
    pub fn set_break_timeout(&mut self, d: Duration) {
        self.cfg.break_timeout = d;
        for n in &mut self.nodes {
            n.m.set_break_timeout(d);
        }
    }

    /// What node `n`'s clients held durably becomes reclaimable (their node is gone for them).
    fn orphan_opens_of(&mut self, n: u16) {
        for (f, k, l) in self.opens.remove(&n).unwrap_or_default() {
            if self.durable.contains_key(&k) {
                self.orphaned.push((f, k, l));
            }
        }
    }

    fn pair(a: u16, b: u16) -> (u16, u16) {
        (a.min(b), a.max(b))
    }

    fn linked(&self, a: u16, b: u16) -> bool {
        a == b || self.up.contains(&Self::pair(a, b))
    }

    /// Connects a and b.
    pub fn link_up(&mut self, a: u16, b: u16) {
        if self.up.insert(Self::pair(a, b)) {
            for (x, y) in [(a, b), (b, a)] {
                if self.nodes[x as usize].alive && self.nodes[y as usize].alive {
                    self.feed(x, Input::LinkUp(y));
                }
            }
        }
    }

    /// Cuts a from b: what was in flight is lost.
    pub fn link_down(&mut self, a: u16, b: u16) {
        if self.up.remove(&Self::pair(a, b)) {
            self.wire.remove(&(a, b));
            self.wire.remove(&(b, a));
            for (x, y) in [(a, b), (b, a)] {
                if self.nodes[x as usize].alive {
                    self.feed(x, Input::LinkDown(y));
                }
            }
        }
    }

    /// Cuts `n` from everyone.
    pub fn isolate(&mut self, n: u16) {
        for p in 0..self.nodes.len() as u16 {
            if p != n {
                self.link_down(n, p);
            }
        }
    }

    /// Reconnects everyone to everyone.
    pub fn heal(&mut self) {
        let n = self.nodes.len() as u16;
        for a in 0..n {
            for b in a + 1..n {
                self.link_up(a, b);
            }
        }
    }

    /// Kills node `n`: its state is gone, its links drop.
    pub fn crash(&mut self, n: u16) {
        for p in 0..self.nodes.len() as u16 {
            if p != n && self.up.contains(&Self::pair(n, p)) {
                self.wire.remove(&(n, p));
                self.wire.remove(&(p, n));
                if self.nodes[p as usize].alive {
                    self.feed(p, Input::LinkDown(n));
                }
            }
        }
        let node = &mut self.nodes[n as usize];
        node.alive = false;
        self.orphan_opens_of(n);
        self.asked.retain(|_, a| a.node != n);
        self.acks.retain(|a| a.1 != n);
    }

    /// Restarts node `n` with a new incarnation and no state.
    pub fn restart(&mut self, n: u16) {
        let inc = self.nodes[n as usize].incarnation + 1;
        let cfg = Config { me: n, incarnation: inc, ..self.cfg };
        let mut m = Machine::new(cfg);
        m.set_posix_grace(self.posix_grace);
        self.nodes[n as usize] =
            Node { m, alive: true, incarnation: inc, ha_ok_since: None, ha_lost_since: None, leader_seen: None };
        for p in 0..self.nodes.len() as u16 {
            if p != n && self.up.contains(&Self::pair(n, p)) && self.nodes[p as usize].alive {
                self.feed(n, Input::LinkUp(p));
                self.feed(p, Input::LinkDown(n));
                self.feed(p, Input::LinkUp(n));
            }
        }
    }

    fn feed(&mut self, n: u16, input: Input<SimKey>) {
        if !self.nodes[n as usize].alive {
            return;
        }
        let now = self.now;
        let trace = std::env::var("NASGW_SIM_TRACE").ok();
        let show = |s: &str| trace.as_deref().is_some_and(|t| s.contains(t));
        let line = format!("{input:?}");
        if show(&line) {
            eprintln!("{:?} n{n} <- {line}", self.now);
        }
        let outs = self.nodes[n as usize].m.handle(now, input);
        for o in &outs {
            let line = format!("{o:?}");
            if show(&line) {
                eprintln!("{:?} n{n} -> {line}", self.now);
            }
        }
        self.apply(n, outs);
    }

    fn apply(&mut self, n: u16, outs: Vec<Output<SimKey>>) {
        for o in outs {
            match o {
                Output::Send { to, msg } => {
                    if self.linked(n, to) && self.nodes[to as usize].alive {
                        let q = self.wire.entry((n, to)).or_default();
                        // FIFO: never deliver before the message ahead of it.
                        let after = q.back().map_or(self.now, |(t, _)| *t);
                        let delay = ms(1 + (self.next_seq * 7919 + u64::from(n) * 31 + u64::from(to)) % 4);
                        self.next_seq += 1;
                        q.push_back(((self.now + delay).max(after), msg));
                    }
                }
                Output::Reply { rid, outcome } => {
                    let Some(a) = self.asked.remove(&rid) else { continue };
                    match outcome {
                        Ok(ans) => {
                            self.stats.granted += 1;
                            if let (Op::Open(req), Answer::Opened(_)) = (&a.op, &ans) {
                                let lease = match req.caching {
                                    CachingRequest::Lease { id, .. } => Some(id),
                                    CachingRequest::Oplock(_) => Some(LeaseId::oplock(req.key)),
                                    CachingRequest::None => None,
                                };
                                self.opens.entry(n).or_default().push((a.file.clone(), req.key, lease));
                            }
                            if let Answer::Closed(c) = &ans {
                                self.closes.push((n, a.file.clone(), c.clone()));
                            }
                            if let Op::SetDurable { key, ms } = &a.op {
                                let lease = self
                                    .opens
                                    .get(&n)
                                    .and_then(|v| v.iter().find(|(_, k, _)| k == key))
                                    .map(|(_, _, l)| *l);
                                match lease {
                                    Some(l) if *ms > 0 => {
                                        self.durable.insert(*key, (a.file.clone(), l));
                                    }
                                    _ => {
                                        self.durable.remove(key);
                                    }
                                }
                            }
                            if let (Op::Reclaim { new, .. }, Answer::Reclaimed(e)) = (&a.op, &ans) {
                                self.stats.reclaimed += 1;
                                let lease = e.open.lease;
                                self.opens.entry(n).or_default().push((a.file.clone(), *new, lease));
                                if e.open.durable_ms > 0 {
                                    self.durable.insert(*new, (a.file.clone(), lease));
                                }
                            }
                        }
                        Err(super::types::Conflict::Unavailable) => self.stats.unavailable += 1,
                        Err(_) => self.stats.refused += 1,
                    }
                    let _ = a.node;
                }
                Output::Break { file, notice } => {
                    self.stats.breaks += 1;
                    if notice.ack_required {
                        // Most clients answer soon; some never do (the break times out).
                        let r = (self.next_seq * 2654435761) % 10;
                        self.next_seq += 1;
                        if r < 8 {
                            let at = self.now + ms(1 + r * 7);
                            self.acks.push((at, n, file, notice.lease, notice.to));
                        }
                    }
                }
                Output::Event(_) => self.stats.events += 1,
                Output::InterestAcked(seq) => {
                    self.interest_acked.insert(n, seq);
                }
                Output::Changed(_) | Output::Licensed(_) | Output::RemoteInterest(_) => {}
                Output::Evicted => {
                    self.stats.evictions += 1;
                    self.orphan_opens_of(n);
                }
            }
        }
    }

    /// A client on node `n` asks `op` on `file`.
    pub fn ask(&mut self, n: u16, file: SimKey, op: Op) {
        if !self.nodes[n as usize].alive {
            return;
        }
        if let Op::Close(k) = &op {
            // The client's handle is gone as it asks, whatever the answer.
            if let Some(v) = self.opens.get_mut(&n) {
                v.retain(|(_, key, _)| key != k);
            }
            self.durable.remove(k);
        }
        let rid = self.next_rid;
        self.next_rid += 1;
        self.asked.insert(rid, Asked { node: n, op: op.clone(), file: file.clone() });
        self.feed(n, Input::Request { rid, file, op });
    }

    /// Node `n`'s HA says for a moment that it leads no more, then that it leads again.
    pub fn flap_leadership(&mut self, n: u16) {
        self.feed(n, Input::Ha(HaInput { leader: None, ok: true }));
        self.feed(n, Input::Ha(HaInput { leader: Some(n), ok: true }));
    }

    /// Node `n`'s watchers want `level` of the others' change events now (number `seq`).
    pub fn interest(&mut self, n: u16, level: u8, seq: u64) {
        self.feed(n, Input::Interest { level, seq });
    }

    /// Node `n` publishes a change event.
    pub fn notify(&mut self, n: u16, payload: Vec<u8>) {
        self.feed(n, Input::Notify(payload));
    }

    /// Node `n` says the POSIX grace ended.
    pub fn end_grace_on(&mut self, n: u16) {
        self.feed(n, Input::EndGrace);
    }

    /// A fresh open key for node `n`.
    pub fn key(&mut self, n: u16) -> OpenKey {
        self.next_seq += 1;
        OpenKey { node: n, seq: self.next_seq }
    }

    /// HA as each node sees it, as `ha::machine` behaves: leadership is the recovery lock, held
    /// by one node at a time; its holder gives it up once it has not seen a majority for 500 ms
    /// (and loses it at once when it dies); a node of a majority side takes it 700 ms after it
    /// was free. A node is OK while it sees a majority (noticed lost after 500 ms, regained after
    /// 100 ms) and knows a leader it can reach (or reached less than 1 s ago).
    fn ha(&mut self) {
        let n = self.nodes.len() as u16;
        let now = self.now;
        let side_of = |w: &World, i: u16| -> Vec<u16> {
            (0..n).filter(|p| w.nodes[*p as usize].alive && w.linked(i, *p)).collect()
        };
        // The lock.
        if let Some((h, _)) = self.lock {
            let node = &self.nodes[h as usize];
            let lost = node.ha_lost_since.is_some_and(|t| now.saturating_sub(t) >= ms(500));
            if !node.alive || lost {
                self.lock = None;
                self.lock_free_since = Some(now);
            }
        }
        if self.lock.is_none() {
            let free = *self.lock_free_since.get_or_insert(now);
            if now.saturating_sub(free) >= ms(700) {
                let c = (0..n).find(|i| self.nodes[*i as usize].alive && side_of(self, *i).len() * 2 > usize::from(n));
                if let Some(c) = c {
                    self.lock = Some((c, now));
                    self.lock_free_since = None;
                }
            }
        }
        for i in 0..n {
            if !self.nodes[i as usize].alive {
                continue;
            }
            let side = side_of(self, i);
            let majority = side.len() * 2 > usize::from(n);
            let holder = self.lock.map(|(h, _)| h);
            let node = &mut self.nodes[i as usize];
            if majority {
                node.ha_lost_since = None;
                node.ha_ok_since.get_or_insert(now);
            } else {
                node.ha_ok_since = None;
                node.ha_lost_since.get_or_insert(now);
            }
            match holder {
                Some(h) if side.contains(&h) => node.leader_seen = Some((h, now)),
                _ => {
                    if node.leader_seen.is_some_and(|(_, t)| now.saturating_sub(t) >= ms(1000)) {
                        node.leader_seen = None;
                    }
                }
            }
            let quorum = match (node.ha_ok_since, node.ha_lost_since) {
                (Some(t), _) => now.saturating_sub(t) >= ms(100),
                (None, Some(t)) => now.saturating_sub(t) < ms(500),
                _ => false,
            };
            let leader = node.leader_seen.map(|(l, _)| l);
            let input = HaInput { leader, ok: quorum && leader.is_some() };
            self.feed(i, Input::Ha(input));
        }
    }

    /// Advances time by `dt`, delivering messages and acknowledgements due, ticking every node.
    pub fn step(&mut self, dt: Duration) {
        let end = self.now + dt;
        loop {
            // Earliest message or acknowledgement due.
            let next_msg = self.wire.iter().filter_map(|(k, q)| q.front().map(|(t, _)| (*t, *k))).min();
            let next_ack = self.acks.iter().map(|a| a.0).min();
            let t = match (next_msg.map(|m| m.0), next_ack) {
                (Some(a), Some(b)) => a.min(b),
                (Some(a), None) => a,
                (None, Some(b)) => b,
                (None, None) => break,
            };
            if t > end {
                break;
            }
            self.now = self.now.max(t);
            if next_ack == Some(t) {
                let i = self.acks.iter().position(|a| a.0 == t).expect("found");
                let (_, n, file, lease, to) = self.acks.remove(i);
                self.ask(n, file, Op::AckBreak { lease, state: to });
            } else if let Some((_, (from, to))) = next_msg {
                let (_, msg) = self.wire.get_mut(&(from, to)).and_then(|q| q.pop_front()).expect("front");
                self.stats.messages += 1;
                if !matches!(msg, Msg::Ping { .. } | Msg::Pong { .. } | Msg::Event { .. }) {
                    self.stats.file_messages += 1;
                }
                self.feed(to, Input::Message { from, msg });
            }
            self.check();
        }
        self.now = end;
        self.ha();
        for i in 0..self.nodes.len() as u16 {
            self.feed(i, Input::Tick);
        }
        self.check();
    }

    /// The invariant: the holdings of all licensed nodes, put together, never conflict.
    pub fn check(&self) {
        let mut all: BTreeMap<SimKey, Vec<(u16, FileRecord)>> = BTreeMap::new();
        // Orphans are held by the cluster, not by a node: several nodes may show the same one.
        let mut orphans: BTreeMap<SimKey, FileRecord> = BTreeMap::new();
        for (i, node) in self.nodes.iter().enumerate() {
            if node.alive {
                node.m.check_timed();
            }
            if !node.alive || !node.m.is_licensed() {
                continue;
            }
            for (f, r) in node.m.holdings() {
                all.entry(f).or_default().push((i as u16, r));
            }
            for (f, r) in node.m.orphans_here() {
                let o = orphans.entry(f).or_default();
                for x in r.opens {
                    if !o.opens.iter().any(|y| y.key == x.key) {
                        o.opens.push(x);
                    }
                }
                for x in r.ranges {
                    if !o.ranges.contains(&x) {
                        o.ranges.push(x);
                    }
                }
                for x in r.leases {
                    if !o.leases.iter().any(|y| y.id == x.id) {
                        o.leases.push(x);
                    }
                }
            }
        }
        for (f, o) in orphans {
            all.entry(f).or_default().push((super::types::ORPHAN, o));
        }
        for (f, parts) in all {
            let mut merged = FileRecord::default();
            for (_, p) in &parts {
                merged.merge(p.clone());
            }
            if let Err(why) = conflicts(&merged) {
                panic!("t={:?} file {f:?}: {why}\nholdings by node: {parts:#?}", self.now);
            }
        }
    }

    /// No phantom opens: once no request is pending, the opens the cluster's records give each
    /// licensed, ready node are exactly those its clients were granted and have not closed.
    /// (An open the cluster keeps for a client that never learned of it would refuse others
    /// for ever.)
    pub fn check_opens_match(&self) {
        for (i, node) in self.nodes.iter().enumerate() {
            if !node.alive || !node.m.is_licensed() || !node.m.is_ready() {
                continue;
            }
            let n = i as u16;
            let mut recorded: Vec<(SimKey, OpenKey)> = node
                .m
                .holdings()
                .into_iter()
                .flat_map(|(f, r)| r.opens.into_iter().filter(|o| !o.orphan).map(move |o| (f.clone(), o.key)))
                .collect();
            let mut granted: Vec<(SimKey, OpenKey)> = self.opens_of(n).into_iter().map(|(f, k, _)| (f, k)).collect();
            recorded.sort();
            granted.sort();
            assert_eq!(
                recorded, granted,
                "t={:?} node {n}: opens in the cluster's records vs opens its clients hold",
                self.now
            );
        }
        // And every node holding something on a file knows it by the name its home has (a
        // rename reached every holder, through view changes too).
        let mut named: BTreeMap<SimKey, Option<Box<FileName>>> = BTreeMap::new();
        for node in self.nodes.iter().filter(|n| n.alive) {
            for (f, r) in node.m.decided() {
                named.insert(f, r.name);
            }
        }
        for (i, node) in self.nodes.iter().enumerate() {
            if !node.alive || !node.m.is_licensed() || !node.m.is_ready() {
                continue;
            }
            for (f, r) in node.m.holdings() {
                if let Some(home) = named.get(&f) {
                    assert_eq!(
                        &r.name, home,
                        "t={:?} node {i}, file {f:?}: its name differs from its home's",
                        self.now
                    );
                }
            }
        }
        // And the homes keep no open that no client holds (nor waits to reclaim).
        let held: BTreeSet<OpenKey> =
            self.opens.values().flatten().map(|(_, k, _)| *k).chain(self.orphaned.iter().map(|(_, k, _)| *k)).collect();
        for (i, node) in self.nodes.iter().enumerate() {
            if !node.alive {
                continue;
            }
            for (f, r) in node.m.decided() {
                for o in r.opens.iter().filter(|o| !o.orphan) {
                    assert!(
                        held.contains(&o.key),
                        "t={:?} home {i}, file {f:?}: open {:?} held by no client",
                        self.now,
                        o.key
                    );
                }
            }
        }
    }

    /// Whether nothing but pings is in flight (no state is on its way to any node).
    pub fn quiet(&self) -> bool {
        self.wire.values().flatten().all(|(_, m)| matches!(m, Msg::Ping { .. } | Msg::Pong { .. }))
    }

    /// Requests not answered yet.
    pub fn pending(&self) -> usize {
        self.asked.len()
    }

    /// Whether node `n` is licensed.
    pub fn licensed(&self, n: u16) -> bool {
        self.nodes[n as usize].alive && self.nodes[n as usize].m.is_licensed()
    }

    /// Opens node `n`'s clients hold.
    pub fn opens_of(&self, n: u16) -> Vec<(SimKey, OpenKey, Option<LeaseId>)> {
        self.opens.get(&n).cloned().unwrap_or_default()
    }

    /// Whether node `n` is alive.
    pub fn alive(&self, n: u16) -> bool {
        self.nodes[n as usize].alive
    }

    /// The node's machine (tests).
    pub fn machine(&self, n: u16) -> &Machine<SimKey> {
        &self.nodes[n as usize].m
    }

    /// Number of nodes.
    pub fn nodes(&self) -> u16 {
        self.nodes.len() as u16
    }

    /// A random client action on a random live node.
    pub fn random_op(&mut self, rng: &mut Rng, files: u8) {
        let n = rng.below(u64::from(self.nodes())) as u16;
        if !self.alive(n) {
            return;
        }
        let file = SimKey([rng.below(u64::from(files)) as u8]);
        let mine: Vec<(SimKey, OpenKey, Option<LeaseId>)> =
            self.opens_of(n).into_iter().filter(|(f, _, _)| *f == file).collect();
        if !self.orphaned.is_empty() && rng.chance(50) {
            // A client whose node is gone comes back through this one.
            let i = rng.below(self.orphaned.len() as u64) as usize;
            let (f, old, _) = self.orphaned.remove(i);
            let new = self.key(n);
            self.ask(n, f, Op::Reclaim { old, new });
            return;
        }
        match rng.below(10) {
            0..=3 => {
                let key = self.key(n);
                let acc =
                    [access::READ_DATA, access::WRITE_DATA, access::READ_DATA | access::WRITE_DATA, access::DELETE]
                        [rng.below(4) as usize];
                let sh = rng.below(8) as u32 & share::ALL;
                let caching_req = match rng.below(3) {
                    0 => CachingRequest::None,
                    1 => CachingRequest::Oplock(caching::RWH),
                    _ => {
                        let c = rng.below(3) as u8;
                        CachingRequest::Lease {
                            id: LeaseId { client: [n as u8; 16], key: [c; 16] },
                            state: [caching::R, caching::R | caching::H, caching::RWH][rng.below(3) as usize],
                            version: 2,
                            epoch: 0,
                            parent: None,
                        }
                    }
                };
                let req = OpenRequest {
                    key,
                    access: acc,
                    share: sh,
                    caching: caching_req,
                    overwrite: rng.chance(100),
                    is_dir: false,
                    flags: if rng.chance(100) { 0 } else { flags::HANDLE },
                };
                self.ask(n, file, Op::Open(req));
            }
            4..=5 => {
                if let Some((_, k, _)) = mine.get(rng.below(mine.len() as u64) as usize).cloned() {
                    self.ask(n, file, Op::Close(k));
                }
            }
            6..=7 => {
                let off = rng.below(8) * 10;
                let len = 1 + rng.below(20);
                let ex = rng.chance(500);
                if let Some((_, k, _)) = mine.first().cloned() {
                    self.ask(
                        n,
                        file.clone(),
                        Op::Lock(RangeLock { owner: Owner::Open(k), offset: off, len, exclusive: ex }),
                    );
                } else {
                    let owner = Owner::Posix { node: n, id: u128::from(n) * 100 + rng.below(3) as u128 };
                    if rng.chance(500) {
                        self.ask(n, file, Op::Lock(RangeLock { owner, offset: off, len, exclusive: ex }));
                    } else {
                        self.ask(n, file, Op::Unlock { owner, offset: off, len });
                    }
                }
            }
            8 if rng.chance(600) => {
                if let Some((_, k, _)) = mine.first().cloned() {
                    let ms = [0, 300, 2000][rng.below(3) as usize];
                    self.ask(n, file, Op::SetDurable { key: k, ms });
                } else if !self.orphaned.is_empty() {
                    let i = rng.below(self.orphaned.len() as u64) as usize;
                    let (f, old, _) = self.orphaned.remove(i);
                    let new = self.key(n);
                    self.ask(n, f, Op::Reclaim { old, new });
                }
            }
            8 => {
                if let Some((_, k, _)) = mine.first().cloned() {
                    self.ask(
                        n,
                        file,
                        Op::Unlock { owner: Owner::Open(k), offset: rng.below(8) * 10, len: 1 + rng.below(20) },
                    );
                }
            }
            _ => {
                let lease = mine.first().and_then(|m| m.2);
                self.ask(
                    n,
                    file.clone(),
                    Op::MayAlso { key: mine.first().map(|m| m.1), access: access::DELETE, handle_breaks: true, lease },
                );
                // Then renames it (the answer to the check is not waited for: a rename through
                // another client may race it).
                let to = sim_name(&file, self.next_seq);
                self.ask(n, file, Op::Renamed(Box::new(to)));
            }
        }
    }
}

/// A name for a rename of `file` in the simulation: generation `g` in directory `file`.
pub fn sim_name(file: &SimKey, g: u64) -> FileName {
    FileName { parent: file.0.to_vec(), name: g.to_be_bytes().to_vec(), root: Vec::new(), path: Vec::new(), renames: 0 }
}

/// Whether a record (all nodes' holdings together) breaks a rule: two opens whose share modes
/// clash, overlapping byte-range locks of different owners where one is exclusive, or a lease
/// caching writes beside another open.
pub fn conflicts(r: &FileRecord) -> Result<(), String> {
    let data = |o: &super::record::OpenRecord| o.flags & flags::SHARE_MODES != 0 && o.access & access::DATA != 0;
    for (i, a) in r.opens.iter().enumerate() {
        for b in &r.opens[i + 1..] {
            if a.key == b.key {
                return Err(format!("open {:?} granted twice", a.key));
            }
            if data(a) && data(b) && share_clash(a, b) {
                return Err(format!("share modes clash: {a:?} / {b:?}"));
            }
        }
    }
    for (i, a) in r.ranges.iter().enumerate() {
        for b in &r.ranges[i + 1..] {
            if a.owner != b.owner && a.overlaps(b.offset, b.len) && (a.exclusive || b.exclusive) {
                return Err(format!("locks clash: {a:?} / {b:?}"));
            }
        }
    }
    for l in &r.leases {
        if l.state & caching::W != 0 {
            let others = r
                .opens
                .iter()
                .filter(|o| o.lease != Some(l.id) && o.access & !(access::STAT | access::READ_CONTROL) != 0)
                .collect::<Vec<_>>();
            if !others.is_empty() {
                return Err(format!("lease {:?} caches writes beside {others:?}", l.id));
            }
        }
    }
    let ids: BTreeSet<LeaseId> = r.leases.iter().map(|l| l.id).collect();
    if ids.len() != r.leases.len() {
        return Err("a lease is held twice".into());
    }
    Ok(())
}

fn share_clash(a: &super::record::OpenRecord, b: &super::record::OpenRecord) -> bool {
    let needs = |acc: u32, s: u32| {
        (acc & (access::READ_DATA | access::EXECUTE) != 0 && s & share::READ == 0)
            || (acc & (access::WRITE_DATA | access::APPEND_DATA) != 0 && s & share::WRITE == 0)
            || (acc & access::DELETE != 0 && s & share::DELETE == 0)
    };
    needs(b.access, a.share) || needs(a.access, b.share)
}
