//! A deterministic simulated cluster for the state machines: N [`Machine`]s, a network that can
//! lose, duplicate, delay and partition datagrams, a shared recovery lock, and an "interfaces"
//! table that records which node holds which address at every instant. Tests drive it through
//! crashes, partitions and admin requests and assert that no address is ever held twice, that
//! every address is served when a majority is healthy, and how long takeovers take.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::connections::TcpConnection;
use crate::effects::{apply, Effects};
use crate::machine::{Event, LockOp, LockOutcome, Machine, MachineConfig, Timings};
use crate::wire::message::{open, seal, ClusterKey, Message};

/// The tick of simulated time.
pub const STEP: Duration = Duration::from_millis(10);

struct Rng(u64);
impl Rng {
    fn chance(&mut self, p: f64) -> bool {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 11) as f64 / (1u64 << 53) as f64) < p
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n.max(1)
    }
}

/// The shared world the nodes act on.
pub struct World {
    /// Simulated time.
    pub now: Duration,
    /// Which nodes have each address on their interface (the invariant: at most one).
    pub interfaces: BTreeMap<IpAddr, BTreeSet<usize>>,
    /// Holder of the recovery lock.
    pub lock_holder: Option<usize>,
    /// A node whose link is down neither sends nor receives.
    pub link_up: Vec<bool>,
    /// Probability a datagram is lost.
    pub loss: f64,
    /// Probability a datagram is delivered twice.
    pub duplicate: f64,
    /// (deliver at, to, event), in send order.
    queue: Vec<(Duration, usize, Event)>,
    rng: Rng,
    key: ClusterKey,
    /// Every (time, node, address) takeover, for timing assertions.
    pub takeovers: Vec<(Duration, usize, IpAddr)>,
    /// Tickles sent: (node, connection).
    pub tickles: Vec<(usize, TcpConnection)>,
    /// Notify script runs: (node, event).
    pub notifications: Vec<(usize, String)>,
    /// Largest number of nodes that ever held one address at once.
    pub worst_overlap: usize,
    /// While true, every datagram sent is copied into `recorded` (an attacker's capture).
    pub record: bool,
    /// Captured datagrams: (time sent, sealed bytes).
    pub recorded: Vec<(Duration, Vec<u8>)>,
    /// Datagrams an attacker on a node's own wire delivers: (at, to, bytes); links do not stop them.
    injected: Vec<(Duration, usize, Vec<u8>)>,
}

struct NodeEffects<'a> {
    world: &'a mut World,
    me: usize,
    nodes: usize,
}

impl Effects for NodeEffects<'_> {
    fn send(&mut self, msg: &Message) {
        let w = &mut *self.world;
        let datagram = seal(&w.key, msg);
        if w.record {
            w.recorded.push((w.now, datagram.clone()));
        }
        for to in 0..self.nodes {
            if to == self.me || !w.link_up[self.me] || !w.link_up[to] || w.rng.chance(w.loss) {
                continue;
            }
            let copies = if w.rng.chance(w.duplicate) { 2 } else { 1 };
            for _ in 0..copies {
                let at = w.now + Duration::from_millis(1 + w.rng.below(5));
                let msg = open(&w.key, &datagram).expect("own datagram opens");
                w.queue.push((at, to, Event::Received(msg)));
            }
        }
    }
    fn take_address(&mut self, address: IpAddr, tickle: &[TcpConnection]) {
        let w = &mut *self.world;
        let set = w.interfaces.entry(address).or_default();
        set.insert(self.me);
        w.worst_overlap = w.worst_overlap.max(set.len());
        w.takeovers.push((w.now, self.me, address));
        w.tickles.extend(tickle.iter().map(|c| (self.me, *c)));
    }
    fn release_address(&mut self, address: IpAddr, _reset: &[TcpConnection]) {
        if let Some(s) = self.world.interfaces.get_mut(&address) {
            s.remove(&self.me);
        }
    }
    fn lock(&mut self, op: LockOp) {
        let w = &mut *self.world;
        let outcome = match op {
            LockOp::Take if w.lock_holder.is_none() || w.lock_holder == Some(self.me) => {
                w.lock_holder = Some(self.me);
                Some(LockOutcome::Taken)
            }
            LockOp::Take => Some(LockOutcome::Busy("contention".into())),
            LockOp::Check if w.lock_holder == Some(self.me) => Some(LockOutcome::StillHeld),
            LockOp::Check => Some(LockOutcome::Lost("not held".into())),
            LockOp::Release => {
                if w.lock_holder == Some(self.me) {
                    w.lock_holder = None;
                }
                None
            }
        };
        if let Some(o) = outcome {
            w.queue.push((w.now + Duration::from_millis(1), self.me, Event::Lock(o)));
        }
    }
    fn notify(&mut self, event: &str, _details: &[String]) {
        self.world.notifications.push((self.me, event.to_string()));
    }
}

/// N nodes and their world.
pub struct Cluster {
    /// The shared world.
    pub world: World,
    /// Each node's machine; `None` while crashed.
    pub nodes: Vec<Option<Machine>>,
    /// The public addresses.
    pub addresses: Vec<IpAddr>,
    timings: Timings,
    failback: bool,
    incarnation: u64,
}

impl Cluster {
    /// `n` nodes, `addresses` public addresses, all started at time 0.
    pub fn new(n: usize, addresses: usize, failback: bool, seed: u64) -> Cluster {
        let addresses: Vec<IpAddr> = (0..addresses).map(|i| format!("198.18.1.{}", i + 1).parse().unwrap()).collect();
        let world = World {
            now: Duration::ZERO,
            interfaces: BTreeMap::new(),
            lock_holder: None,
            link_up: vec![true; n],
            loss: 0.0,
            duplicate: 0.0,
            queue: Vec::new(),
            rng: Rng(seed),
            key: ClusterKey::from_secret(b"simulated-cluster-secret").unwrap(),
            takeovers: Vec::new(),
            tickles: Vec::new(),
            notifications: Vec::new(),
            worst_overlap: 0,
            record: false,
            recorded: Vec::new(),
            injected: Vec::new(),
        };
        let mut c =
            Cluster { world, nodes: Vec::new(), addresses, timings: Timings::default(), failback, incarnation: 0 };
        for i in 0..n {
            let m = c.machine(i);
            c.nodes.push(Some(m));
        }
        c
    }

    fn machine(&mut self, me: usize) -> Machine {
        self.incarnation += 1;
        Machine::new(MachineConfig {
            me: me as u32,
            nodes: self.nodes.len().max(self.world.link_up.len()) as u32,
            addresses: self.addresses.clone(),
            failback: self.failback,
            timings: self.timings,
            incarnation: self.incarnation,
        })
    }

    /// Feeds `event` to node `i` now.
    pub fn feed(&mut self, i: usize, event: Event) {
        let n = self.nodes.len();
        let now = self.world.now;
        if let Some(m) = self.nodes[i].as_mut() {
            let actions = m.handle(now, event);
            apply(&mut NodeEffects { world: &mut self.world, me: i, nodes: n }, &actions);
        }
    }

    /// Advances time by `d`, delivering datagrams and ticking every node every [`STEP`].
    pub fn run(&mut self, d: Duration) {
        let end = self.world.now + d;
        while self.world.now < end {
            self.world.now += STEP;
            let now = self.world.now;
            let mut due = Vec::new();
            let mut rest = Vec::new();
            for e in std::mem::take(&mut self.world.queue) {
                if e.0 <= now {
                    due.push(e)
                } else {
                    rest.push(e)
                }
            }
            self.world.queue = rest;
            for (_, to, ev) in due {
                // A datagram in flight when the link went down is lost.
                if matches!(ev, Event::Received(_)) && !self.world.link_up[to] {
                    continue;
                }
                self.feed(to, ev);
            }
            let (injected, later): (Vec<_>, Vec<_>) =
                std::mem::take(&mut self.world.injected).into_iter().partition(|e| e.0 <= now);
            self.world.injected = later;
            for (_, to, datagram) in injected {
                // Replayed bytes still pass the authentication: they were sealed with the key.
                let msg = open(&self.world.key, &datagram).expect("recorded datagram opens");
                self.feed(to, Event::Received(msg));
            }
            for i in 0..self.nodes.len() {
                self.feed(i, Event::Tick);
            }
        }
    }

    /// Runs until `f` holds, at most `limit`; returns the time it took.
    pub fn run_until(&mut self, limit: Duration, mut f: impl FnMut(&Cluster) -> bool) -> Option<Duration> {
        let start = self.world.now;
        while self.world.now - start < limit {
            if f(self) {
                return Some(self.world.now - start);
            }
            self.run(STEP);
        }
        f(self).then(|| self.world.now - start)
    }

    /// kill -9 and link down: the process and its addresses vanish, the kernel drops its lock.
    pub fn crash(&mut self, i: usize) {
        self.nodes[i] = None;
        for s in self.world.interfaces.values_mut() {
            s.remove(&i);
        }
        if self.world.lock_holder == Some(i) {
            self.world.lock_holder = None;
        }
        self.world.link_up[i] = false;
    }

    /// Starts a crashed node again (new incarnation, link up).
    pub fn restart(&mut self, i: usize) {
        self.world.link_up[i] = true;
        let m = self.machine(i);
        self.nodes[i] = Some(m);
    }

    /// Replays `datagrams` (captured with [`World::record`]) to node `to`, keeping their
    /// original spacing, starting now: what an attacker on `to`'s network segment can do.
    pub fn replay(&mut self, to: usize, datagrams: &[(Duration, Vec<u8>)]) {
        let Some(first) = datagrams.first().map(|d| d.0) else { return };
        let now = self.world.now;
        for (t, d) in datagrams {
            self.world.injected.push((now + (*t - first), to, d.clone()));
        }
    }

    /// Who holds `a` on its interface.
    pub fn holders(&self, a: &IpAddr) -> BTreeSet<usize> {
        self.world.interfaces.get(a).cloned().unwrap_or_default()
    }

    /// Every address held by exactly one node, each of them in `allowed`.
    pub fn all_served_by(&self, allowed: &[usize]) -> bool {
        self.addresses.iter().all(|a| {
            let h = self.holders(a);
            h.len() == 1 && allowed.contains(h.iter().next().unwrap())
        })
    }

    /// How many addresses node `i` holds.
    pub fn load(&self, i: usize) -> usize {
        self.addresses.iter().filter(|a| self.holders(a).contains(&i)).count()
    }

    /// The current leader by lock and claim.
    pub fn leader(&self) -> Option<usize> {
        self.nodes.iter().position(|m| m.as_ref().is_some_and(Machine::is_leader))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::NodeState;

    const S: fn(u64) -> Duration = Duration::from_millis;

    fn started(n: usize, addrs: usize, failback: bool, seed: u64) -> Cluster {
        let mut c = Cluster::new(n, addrs, failback, seed);
        let all: Vec<usize> = (0..n).collect();
        let t = c.run_until(S(3000), |c| c.all_served_by(&all) && c.leader().is_some()).expect("cluster converges");
        assert!(t < S(2000), "start-up took {t:?}");
        c
    }

    #[test]
    fn a_fresh_cluster_serves_every_address_balanced() {
        let mut c = started(3, 6, true, 1);
        c.run(S(1000));
        assert_eq!((c.load(0), c.load(1), c.load(2)), (2, 2, 2));
        assert_eq!(c.leader(), Some(0));
        assert_eq!(c.world.worst_overlap, 1);
    }

    #[test]
    fn a_crashed_node_is_replaced_within_3s_and_tickles_reach_its_clients() {
        for victim in [1, 0] {
            let mut c = started(3, 6, true, 2);
            let conn = TcpConnection {
                client: "198.18.0.10:40000".parse().unwrap(),
                server: "198.18.1.2:445".parse().unwrap(),
            };
            let owner = *c.holders(&conn.server.ip()).iter().next().unwrap();
            c.feed(owner, Event::LocalConnections(vec![conn]));
            c.run(S(200));
            let victim = if victim == 0 { owner } else { (owner + 1) % 3 };
            let survivors: Vec<usize> = (0..3).filter(|i| *i != victim).collect();
            c.crash(victim);
            let t = c.run_until(S(5000), |c| c.all_served_by(&survivors)).expect("survivors serve everything");
            assert!(t <= S(1500), "takeover after crash of node {victim} took {t:?}");
            assert!(c.leader().is_some_and(|l| l != victim));
            if victim == owner {
                assert!(c.world.tickles.iter().any(|(_, k)| *k == conn), "the client of the dead node was tickled");
            }
            assert_eq!(c.world.worst_overlap, 1);
        }
    }

    #[test]
    fn a_partitioned_node_fences_itself_before_anyone_takes_its_addresses() {
        for victim in [0, 2] {
            let mut c = started(3, 6, true, 3);
            let survivors: Vec<usize> = (0..3).filter(|i| *i != victim).collect();
            c.world.link_up[victim] = false;
            let fenced = c.run_until(S(3000), |c| c.load(victim) == 0).expect("the cut-off node releases");
            let t = c.run_until(S(3000), |c| c.all_served_by(&survivors)).expect("majority serves all");
            assert!(fenced + t <= S(2000), "fenced after {fenced:?}, served after {:?}", fenced + t);
            assert_eq!(c.world.worst_overlap, 1, "two nodes held one address at once");
            assert!(!c.nodes[victim].as_ref().unwrap().is_leader());
            // Heal: it rejoins, failback gives it addresses back, still never two holders.
            c.world.link_up[victim] = true;
            c.run_until(S(3000), |c| c.load(victim) == 2 && c.all_served_by(&[0, 1, 2])).expect("failback after heal");
            assert_eq!(c.world.worst_overlap, 1);
        }
    }

    #[test]
    fn without_failback_a_returning_node_gets_nothing_back() {
        let mut c = started(3, 3, false, 4);
        c.world.link_up[2] = false;
        c.run_until(S(3000), |c| c.all_served_by(&[0, 1])).unwrap();
        c.world.link_up[2] = true;
        c.run(S(3000));
        assert_eq!(c.load(2), 0);
        assert!(c.all_served_by(&[0, 1]));
    }

    #[test]
    fn lossy_duplicating_network_never_double_holds_and_still_converges() {
        for seed in 0..8 {
            let mut c = Cluster::new(3, 5, true, 100 + seed);
            c.world.loss = 0.2;
            c.world.duplicate = 0.2;
            c.run_until(S(5000), |c| c.all_served_by(&[0, 1, 2])).expect("converges despite loss");
            c.run(S(5000));
            assert!(c.all_served_by(&[0, 1, 2]), "stable under loss (seed {seed})");
            c.crash(1);
            c.run_until(S(4000), |c| c.all_served_by(&[0, 2])).expect("failover despite loss");
            assert_eq!(c.world.worst_overlap, 1, "seed {seed}");
        }
    }

    #[test]
    fn flapping_partitions_never_double_hold() {
        let mut c = started(3, 6, true, 5);
        for round in 0..20u64 {
            let victim = (round % 3) as usize;
            c.world.link_up[victim] = false;
            c.run(S(200 + 150 * (round % 7)));
            c.world.link_up[victim] = true;
            c.run(S(100 + 100 * (round % 5)));
        }
        assert_eq!(c.world.worst_overlap, 1);
        c.run_until(S(5000), |c| c.all_served_by(&[0, 1, 2])).expect("settles after flapping");
    }

    #[test]
    fn leader_crash_elects_a_new_leader_and_restart_serves_again_quickly() {
        let mut c = started(3, 3, true, 6);
        assert_eq!(c.leader(), Some(0));
        c.crash(0);
        c.run_until(S(3000), |c| c.leader().is_some() && c.all_served_by(&[1, 2])).expect("new leader");
        assert_eq!(c.leader(), Some(1));
        c.restart(0);
        let t = c.run_until(S(5000), |c| c.load(0) == 1 && c.all_served_by(&[0, 1, 2])).expect("restarted node serves");
        assert!(t < S(2000), "restarted node served after {t:?}");
        assert_eq!(c.leader(), Some(1), "leadership does not flap back");
        assert_eq!(c.world.worst_overlap, 1);
    }

    #[test]
    fn losing_the_recovery_lock_releases_everything_then_recovers() {
        let mut c = started(3, 3, true, 7);
        let leader = c.leader().unwrap();
        c.world.lock_holder = None; // the lock file was replaced under the leader
        c.run_until(S(2000), |c| c.world.notifications.iter().any(|(n, e)| *n == leader && e == "lock_lost"))
            .expect("the leader notices");
        c.run_until(S(3000), |c| c.leader().is_some() && c.all_served_by(&[0, 1, 2])).expect("recovers");
        assert_eq!(c.world.worst_overlap, 1);
    }

    #[test]
    fn another_node_holding_the_lock_keeps_a_lone_node_from_serving() {
        // Two-node cluster, the survivor cannot take the lock (the other side holds it).
        let mut c = started(2, 2, true, 8);
        let leader = c.leader().unwrap();
        let other = 1 - leader;
        c.world.link_up[leader] = false;
        c.run(S(3000));
        // Exactly half each: the lock holder serves, the other releases everything.
        assert_eq!(c.load(other), 0);
        assert_eq!(c.load(leader), 2);
        assert_eq!(c.world.worst_overlap, 1);
    }

    #[test]
    fn disable_unhealthy_and_ip_move_move_addresses_without_overlap() {
        let mut c = started(3, 3, true, 9);
        c.feed(1, Event::Disable);
        c.run_until(S(2000), |c| c.load(1) == 0 && c.all_served_by(&[0, 2])).expect("disabled node drained");
        assert_eq!(c.nodes[0].as_ref().unwrap().states(c.world.now)[1], NodeState::Disabled);
        assert_eq!(c.world.worst_overlap, 1, "disable");
        c.feed(1, Event::Enable);
        c.run_until(S(2000), |c| c.load(1) == 1).expect("enabled node serves again");
        assert_eq!(c.world.worst_overlap, 1, "enable");
        c.feed(2, Event::Health { healthy: false, reason: "volume probe timed out".into() });
        c.run_until(S(2000), |c| c.load(2) == 0 && c.all_served_by(&[0, 1])).expect("unhealthy node drained");
        // Still unhealthy for another reason: the node says the new one and stays drained.
        c.feed(2, Event::Health { healthy: false, reason: "listener down: file-state".into() });
        c.run(S(500));
        assert_eq!(c.nodes[2].as_ref().unwrap().health_reason(), "listener down: file-state");
        assert_eq!(c.load(2), 0);
        c.feed(2, Event::Health { healthy: true, reason: String::new() });
        c.run_until(S(2000), |c| c.load(2) == 1).expect("healthy again");
        assert_eq!(c.world.worst_overlap, 1, "health");
        // ip move typed on a follower reaches the leader.
        let a = c.addresses[0];
        c.feed(2, Event::Move { address: a, node: 2 });
        c.run_until(S(2000), |c| c.holders(&a) == BTreeSet::from([2])).expect("moved");
        assert_eq!(c.world.worst_overlap, 1);
    }

    #[test]
    fn generation_changes_on_every_membership_change() {
        let mut c = started(3, 3, true, 10);
        let g0 = c.nodes[1].as_ref().unwrap().generation();
        c.crash(2);
        c.run(S(2000));
        let g1 = c.nodes[1].as_ref().unwrap().generation();
        assert!(g1 > g0, "{g0} -> {g1}");
        c.restart(2);
        c.run(S(2000));
        let g2 = c.nodes[1].as_ref().unwrap().generation();
        assert!(g2 > g1, "{g1} -> {g2}");
        assert_eq!(c.nodes[2].as_ref().unwrap().generation(), g2, "the restarted node learns it");
    }

    #[test]
    fn a_clean_stop_hands_addresses_over_at_once() {
        let mut c = started(3, 3, true, 11);
        c.feed(2, Event::Stop);
        let t = c.run_until(S(2000), |c| c.all_served_by(&[0, 1])).expect("handed over");
        assert!(t < S(300), "clean stop hand-over took {t:?}");
    }

    #[test]
    fn random_faults_never_double_hold() {
        for seed in 0..24u64 {
            let mut c = started(3, 6, seed % 2 == 0, 1000 + seed);
            c.world.loss = 0.1;
            c.world.duplicate = 0.1;
            let mut r = Rng(seed);
            for _ in 0..30 {
                let victim = r.below(3) as usize;
                match r.below(5) {
                    0 if c.nodes[victim].is_some() => c.crash(victim),
                    1 if c.nodes[victim].is_none() => c.restart(victim),
                    2 => c.world.link_up[victim] = !c.world.link_up[victim] || c.nodes[victim].is_none(),
                    3 => c.feed(victim, Event::Disable),
                    _ => c.feed(victim, Event::Enable),
                }
                c.run(S(50 + r.below(1500)));
                assert_eq!(c.world.worst_overlap, 1, "seed {seed}");
            }
            for i in 0..3 {
                if c.nodes[i].is_none() {
                    c.restart(i);
                }
                c.world.link_up[i] = true;
                c.feed(i, Event::Enable);
            }
            c.run_until(S(5000), |c| c.all_served_by(&[0, 1, 2])).unwrap_or_else(|| panic!("seed {seed} settles"));
            assert_eq!(c.world.worst_overlap, 1, "seed {seed}");
        }
    }

    #[test]
    fn heartbeats_recorded_before_a_restart_cannot_be_replayed_to_the_restarted_node() {
        // An attacker records the leader's and a follower's heartbeats while node 2 is in the
        // cluster, node 2 is cut off (the others take its address over), then restarts there
        // and the attacker replays the recordings to it. It must not believe them: they show
        // a majority and a leader assigning it an address the others now serve.
        let mut c = started(3, 3, true, 13);
        c.world.record = true;
        c.run(S(2000));
        c.world.record = false;
        let recorded: Vec<_> = std::mem::take(&mut c.world.recorded)
            .into_iter()
            .filter(|(_, d)| open(&c.world.key, d).is_ok_and(|m| m.from != 2))
            .collect();
        assert!(recorded.len() > 20, "{} datagrams captured", recorded.len());
        c.world.link_up[2] = false;
        c.run_until(S(3000), |c| c.all_served_by(&[0, 1])).expect("the majority serves node 2's address");
        c.crash(2);
        c.restart(2);
        c.world.link_up[2] = false; // still cut off: only the attacker reaches it
        c.replay(2, &recorded);
        c.run(S(2000));
        let now = c.world.now;
        let states = c.nodes[2].as_ref().unwrap().states(now);
        assert_eq!(states[0], NodeState::Disconnected, "replayed heartbeats show node 0 alive: {states:?}");
        assert_eq!(states[1], NodeState::Disconnected, "{states:?}");
        assert_eq!(c.load(2), 0, "the restarted node took an address on replayed heartbeats");
        assert_eq!(c.world.worst_overlap, 1, "two nodes held one address at once");
        // Healed, it joins for real (the others' heartbeats now echo its new run).
        c.world.link_up[2] = true;
        c.run_until(S(3000), |c| c.load(2) == 1 && c.all_served_by(&[0, 1, 2])).expect("rejoins after heal");
        assert_eq!(c.world.worst_overlap, 1);
    }

    #[test]
    fn a_connection_closed_by_the_release_is_still_tickled_by_the_new_owner() {
        let mut c = started(3, 3, true, 12);
        let a = c.addresses[1];
        let owner = *c.holders(&a).iter().next().unwrap();
        let conn = TcpConnection { client: "198.18.0.10:40001".parse().unwrap(), server: SocketAddr::new(a, 445) };
        c.feed(owner, Event::LocalConnections(vec![conn]));
        c.run(S(100));
        // Disable: the owner releases and its listener closes the connection at once, so its
        // table (now empty) races the takeover.
        c.feed(owner, Event::Disable);
        c.feed(owner, Event::LocalConnections(vec![]));
        c.run_until(S(2000), |c| c.holders(&a).len() == 1 && !c.holders(&a).contains(&owner)).expect("moved");
        assert!(c.world.tickles.iter().any(|(n, k)| *n != owner && *k == conn), "{:?}", c.world.tickles);
    }
}
