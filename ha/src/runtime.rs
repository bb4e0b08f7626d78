//! The HA node inside `nasgw serve`: drives the [`Machine`] with real time, the cluster UDP
//! socket, the lock and health threads and admin commands, and applies its actions through
//! [`SystemEffects`] on a dedicated thread. It publishes a [`HaView`] for the control socket.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};
use tokio_util::sync::CancellationToken;

use crate::connections::ConnectionTable;
use crate::effects::apply;
use crate::health::{probe_path, probe_volume, verdict, ListenerHealth};
use crate::machine::{Action, Event, LockOp, LockOutcome, Machine, MachineConfig, Timings};
use crate::recovery_lock::{ClusterLock, RecoveryLock};
use crate::status::{AddressMove, ClusterStatus, HaCounters, IpReport, NodeState, NodeStatus, PublicIpStatus};
use crate::system::{PublicAddress, SystemEffects};
use crate::wire::message::{open, seal, Body, ClusterKey, Message, NodeInfo, MAX_DATAGRAM};

/// Everything the HA node needs, resolved from `[cluster]`.
#[derive(Debug, Clone)]
pub struct HaSettings {
    /// This node's number.
    pub me: u32,
    /// Every node's cluster address.
    pub nodes: Vec<IpAddr>,
    /// Cluster UDP port.
    pub port: u16,
    /// The shared secret.
    pub key: ClusterKey,
    /// Public addresses.
    pub public: Vec<PublicAddress>,
    /// Move addresses back to a returning node.
    pub failback: bool,
    /// Heartbeat, dead interval, lock check.
    pub timings: Timings,
    /// How often the volume is probed.
    pub health_interval: Duration,
    /// A probe slower than this makes the node UNHEALTHY.
    pub health_timeout: Duration,
    /// `[cluster] notify_script`.
    pub notify_script: Option<PathBuf>,
    /// This node's software version, shown by `nasgw status` on every node.
    pub version: String,
}

/// How often a node tells the others its [`NodeInfo`] when nothing changed.
const INFO_EVERY: Duration = Duration::from_secs(1);

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

/// What the view shows beyond the machine's decisions: the nodes' facts, counters, and the
/// owner changes this node saw.
struct Facts {
    /// Each node's last [`NodeInfo`] (this node's own included).
    infos: Vec<Option<NodeInfo>>,
    counters: HaCounters,
    owners: std::collections::BTreeMap<IpAddr, Option<u32>>,
    moves: std::collections::BTreeMap<IpAddr, AddressMove>,
}

impl Facts {
    /// Counts what the machine just decided.
    fn count(&mut self, actions: &[Action]) {
        for a in actions {
            match a {
                Action::Take { .. } => self.counters.takeovers += 1,
                Action::Release { .. } => self.counters.releases += 1,
                Action::Notify { event, .. } if event == "leader" => self.counters.leader_changes += 1,
                _ => {}
            }
        }
    }
}

/// Why node `i` is not OK, as this node knows it.
fn reason_of(m: &Machine, s: &HaSettings, facts: &Facts, now: Duration, i: usize, state: NodeState) -> String {
    if i as u32 == s.me {
        return match state {
            NodeState::Ok => String::new(),
            NodeState::Unhealthy => m.health_reason().to_string(),
            NodeState::Disabled => "disabled by an admin (nasgw disable)".to_string(),
            NodeState::Stopped => "stopping".to_string(),
            NodeState::Disconnected => String::new(),
        };
    }
    match state {
        NodeState::Ok => String::new(),
        NodeState::Disconnected => match m.last_heard(i as u32) {
            Some(t) => format!("not heard for {} ms", now.saturating_sub(t).as_millis()),
            None => "never heard since this node started".to_string(),
        },
        _ => facts.infos[i].as_ref().map(|f| f.reason.clone()).unwrap_or_default(),
    }
}

/// A volume health probe: `Ok` while the shared volume serves, else why not. Called on its own
/// thread every `health_interval`; one that does not return within `health_timeout` counts as a
/// failure.
pub type VolumeProbe = Box<dyn FnMut() -> Result<(), String> + Send>;

/// How the HA node reaches the shared volume: the recovery lock and the health probe.
pub struct SharedVolume {
    /// The recovery lock on the volume.
    pub lock: Box<dyn ClusterLock>,
    /// The health probe.
    pub probe: VolumeProbe,
    /// A lock operation not answered within this fails (a take is `Busy`, a check `Lost`).
    pub lock_timeout: Duration,
}

impl SharedVolume {
    /// A volume every node sees as a directory (a local backend on a shared mount): an fcntl lock
    /// on `lock_path`, and a probe that stats `root` and writes a small file beside the lock.
    /// A local directory answers lock calls at once, so one slower than half of `dead` means the
    /// volume is gone. (A fifth was too tight: on a loaded 2-core machine the lock thread was
    /// starved past 200 ms every few minutes, and each time the leader gave up leadership.) The
    /// timeout only decides when a hung call counts as failed: exclusion is the fcntl lock's.
    pub fn directory(root: PathBuf, lock_path: PathBuf, me: u32, dead: Duration) -> SharedVolume {
        let file = probe_path(&lock_path, me);
        let mut full = crate::health::FullVolume::default();
        SharedVolume {
            lock: Box::new(RecoveryLock::new(lock_path)),
            probe: Box::new(move || probe_volume(&root, &file, &mut full)),
            lock_timeout: (dead / 2).max(Duration::from_millis(300)),
        }
    }
}

/// What `nasgw status` and `nasgw ip` show, refreshed after every event.
#[derive(Debug, Clone)]
pub struct HaView {
    /// `nasgw status`.
    pub status: ClusterStatus,
    /// `nasgw ip`.
    pub ip: IpReport,
    /// This node sees quorum and a fresh leader ([`Machine::in_quorum`]).
    pub in_quorum: bool,
    /// This node hears a strict majority of the nodes ([`Machine::hears_majority`]): false on
    /// the minority side of a partition, true on the majority side while it elects a leader.
    pub majority: bool,
}

/// A running HA node: admin requests in, its view out.
#[derive(Clone)]
pub struct HaHandle {
    events: UnboundedSender<Event>,
    view: Arc<Mutex<HaView>>,
    pulse: Arc<Pulse>,
}

/// When the HA loop last went round: the service watchdog's proof that decisions still run.
struct Pulse {
    start: Instant,
    last_ms: std::sync::atomic::AtomicU64,
}

impl Pulse {
    fn beat(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, std::sync::atomic::Ordering::Relaxed);
    }
}

impl HaHandle {
    /// The current view.
    pub fn view(&self) -> HaView {
        self.view.lock().expect("ha view").clone()
    }

    /// How long ago the HA loop last went round (it ticks every few milliseconds).
    pub fn since_last_turn(&self) -> Duration {
        let last = Duration::from_millis(self.pulse.last_ms.load(std::sync::atomic::Ordering::Relaxed));
        self.pulse.start.elapsed().saturating_sub(last)
    }

    /// Feeds an admin event (`Disable`, `Enable`, `Move`).
    pub fn request(&self, e: Event) -> Result<(), String> {
        self.events.send(e).map_err(|_| "the HA node has stopped".to_string())
    }
}

fn view_of(m: &Machine, s: &HaSettings, now: Duration, facts: &mut Facts) -> HaView {
    let states = m.states(now);
    let wall = unix_now();
    let nodes = s
        .nodes
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let info = facts.infos[i].clone().unwrap_or_default();
            NodeStatus {
                pnn: i as u32,
                address: *a,
                state: states[i],
                this_node: i as u32 == s.me,
                reason: reason_of(m, s, facts, now, i, states[i]),
                version: info.version,
                started: info.started,
            }
        })
        .collect();
    let status = ClusterStatus {
        nodes,
        generation: m.generation(),
        leader: m.leader(now),
        recovery_mode: m.recovery_mode(now),
        quorum: m.has_quorum(now),
        counters: facts.counters,
        now: wall,
    };
    let owners = m.owners(now);
    for (a, o) in &owners {
        let before = facts.owners.insert(*a, *o);
        if let Some(before) = before.filter(|b| b != o) {
            // A move between two nodes passes through "nobody": report it from the last holder.
            let from = before.or_else(|| facts.moves.get(a).and_then(|m| m.from.filter(|_| m.to.is_none())));
            facts.moves.insert(*a, AddressMove { at: wall, from, to: *o });
        }
    }
    let addresses = s
        .public
        .iter()
        .map(|p| PublicIpStatus {
            address: p.address,
            prefix: p.prefix,
            interface: p.interface.clone(),
            owner: owners.get(&p.address).copied().flatten(),
            connections: m.known_connections(p.address),
            last_move: facts.moves.get(&p.address).copied(),
        })
        .collect();
    HaView {
        status,
        ip: IpReport { this_node: s.me, addresses, now: wall },
        in_quorum: m.in_quorum(now),
        majority: m.hears_majority(now),
    }
}

/// The other nodes' cluster sockets.
fn peer_addresses(s: &HaSettings) -> Vec<SocketAddr> {
    s.nodes.iter().enumerate().filter(|(i, _)| *i as u32 != s.me).map(|(_, a)| SocketAddr::new(*a, s.port)).collect()
}

/// Starts the HA node; it runs until `stop` fires, then releases its addresses and the lock.
/// Returns a handle and the task to await for a clean shutdown.
pub fn start(
    settings: HaSettings,
    volume: SharedVolume,
    connections: Arc<ConnectionTable>,
    listeners: ListenerHealth,
    stop: CancellationToken,
) -> std::io::Result<(HaHandle, tokio::task::JoinHandle<()>)> {
    let s = settings;
    let me_addr = s.nodes[s.me as usize];
    let socket = UdpSocket::bind(SocketAddr::new(me_addr, s.port)).map_err(|e| {
        std::io::Error::new(e.kind(), format!("cannot bind the cluster port {me_addr}:{}: {e}", s.port))
    })?;
    let peers = peer_addresses(&s);
    let lock_timeout = volume.lock_timeout;
    let (ev_tx, mut ev_rx) = unbounded_channel::<Event>();
    let mut effects = SystemEffects::new(
        socket.try_clone()?,
        s.key.clone(),
        peers,
        &s.public,
        volume.lock,
        ev_tx.clone(),
        s.notify_script.clone(),
        connections.clone(),
    )?;

    // Effects run on their own thread, in order.
    let (act_tx, act_rx) = mpsc::channel::<(Vec<Action>, Option<std::sync::mpsc::Sender<()>>)>();
    std::thread::Builder::new().name("ha-effects".into()).spawn(move || {
        effects.release_leftovers();
        for (actions, done) in act_rx {
            apply(&mut effects, &actions);
            if let Some(d) = done {
                let _ = d.send(());
            }
        }
    })?;

    // Health probes on their own thread.
    let (probe_tx, mut probe_rx) = unbounded_channel::<Result<(), String>>();
    {
        let (mut probe, every, stop) = (volume.probe, s.health_interval, stop.clone());
        std::thread::Builder::new().name("ha-health".into()).spawn(move || {
            while !stop.is_cancelled() {
                if probe_tx.send(probe()).is_err() {
                    break;
                }
                std::thread::sleep(every);
            }
        })?;
    }

    let incarnation = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as u64;
    let mut machine = Machine::new(MachineConfig {
        me: s.me,
        nodes: s.nodes.len() as u32,
        addresses: s.public.iter().map(|p| p.address).collect(),
        failback: s.failback,
        timings: s.timings,
        incarnation,
    });
    let t0 = Instant::now();
    let mut facts = Facts {
        infos: vec![None; s.nodes.len()],
        counters: HaCounters::default(),
        owners: Default::default(),
        moves: Default::default(),
    };
    let started = unix_now();
    facts.infos[s.me as usize] = Some(NodeInfo { version: s.version.clone(), started, reason: String::new() });
    let view = Arc::new(Mutex::new(view_of(&machine, &s, Duration::ZERO, &mut facts)));
    let info_peers = peer_addresses(&s);
    let pulse = Arc::new(Pulse { start: t0, last_ms: Default::default() });
    let handle = HaHandle { events: ev_tx, view: view.clone(), pulse: pulse.clone() };
    socket.set_nonblocking(true)?;
    let socket = tokio::net::UdpSocket::from_std(socket)?;

    let task = tokio::spawn(async move {
        let tick_every = (s.timings.heartbeat / 4).clamp(Duration::from_millis(5), Duration::from_millis(25));
        let mut tick = tokio::time::interval(tick_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut buf = vec![0u8; MAX_DATAGRAM + 1];
        let mut conn_changes = u64::MAX;
        let mut last_probe: Option<(Duration, Result<(), String>)> = None;
        let mut health: Option<Result<(), String>> = None;
        let mut lock_pending: Option<(LockOp, Duration)> = None;
        let mut refused_logged: Option<Instant> = None;
        let mut info_sent: Option<(Instant, String)> = None;
        let notify_start = Action::Notify { event: "startup".into(), details: vec![format!("pnn={}", s.me)] };
        let _ = act_tx.send((vec![notify_start], None));
        loop {
            let now = t0.elapsed();
            pulse.beat();
            let mut events = Vec::new();
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {
                    let c = connections.change_count();
                    if c != conn_changes {
                        conn_changes = c;
                        events.push(Event::LocalConnections(connections.snapshot()));
                    }
                    let v = verdict(last_probe.clone(), now, s.health_interval, s.health_timeout, &listeners);
                    // A new reason while still unhealthy is passed on too: `nasgw status` shows
                    // why the node is unhealthy now, not why it first was.
                    if health.as_ref() != Some(&v) {
                        match &v {
                            Ok(()) => tracing::info!("node healthy"),
                            Err(why) if health.as_ref().is_some_and(Result::is_err) => {
                                tracing::warn!(reason = %why, "node still unhealthy, for another reason")
                            }
                            Err(why) => tracing::warn!(reason = %why, "node unhealthy: releasing public addresses"),
                        }
                        events.push(Event::Health { healthy: v.is_ok(), reason: v.clone().err().unwrap_or_default() });
                        health = Some(v);
                    }
                    if let Some((op, at)) = lock_pending {
                        if now.saturating_sub(at) > lock_timeout {
                            lock_pending = None;
                            let why = format!("recovery lock did not answer within {} ms", lock_timeout.as_millis());
                            tracing::warn!(reason = %why, "recovery lock operation timed out");
                            events.push(Event::Lock(match op {
                                LockOp::Take => LockOutcome::Busy(why),
                                _ => LockOutcome::Lost(why),
                            }));
                        }
                    }
                    events.push(Event::Tick);
                    // Tell the others this node's facts for their `nasgw status`.
                    let reason = reason_of(&machine, &s, &facts, now, s.me as usize, machine.own_state());
                    if info_sent.as_ref().is_none_or(|(at, r)| at.elapsed() >= INFO_EVERY || *r != reason) {
                        let info = NodeInfo { version: s.version.clone(), started, reason: reason.clone() };
                        facts.infos[s.me as usize] = Some(info.clone());
                        let msg = Message { from: s.me, incarnation, seq: 0, body: Body::Info(info) };
                        let datagram = seal(&s.key, &msg);
                        for p in &info_peers {
                            let _ = socket.try_send_to(&datagram, *p);
                        }
                        info_sent = Some((Instant::now(), reason));
                    }
                }
                r = socket.recv_from(&mut buf) => {
                    if let Ok((n, from)) = r {
                        match open(&s.key, &buf[..n]) {
                            Ok(Message { from: n, body: Body::Info(info), .. }) if s.nodes.get(n as usize) == Some(&from.ip()) => {
                                facts.infos[n as usize] = Some(info);
                            }
                            Ok(msg) if s.nodes.get(msg.from as usize) == Some(&from.ip()) => events.push(Event::Received(msg)),
                            Ok(msg) => {
                                // Validly signed but replayed or relayed from elsewhere: rate
                                // limited like refused ones, so a flood cannot flood the log.
                                if refused_logged.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                                    refused_logged = Some(Instant::now());
                                    tracing::warn!(%from, claimed = msg.from, "cluster datagram from an address that is not that node's; ignored (logged once per 10 s)");
                                }
                            }
                            Err(e) => {
                                if refused_logged.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                                    refused_logged = Some(Instant::now());
                                    tracing::warn!(%from, error = %e, hint = e.hint(), "cluster datagram refused (logged once per 10 s)");
                                }
                            }
                        }
                    }
                }
                Some(r) = probe_rx.recv() => {
                    if let Err(why) = &r {
                        tracing::debug!(reason = %why, "volume probe failed");
                    }
                    last_probe = Some((now, r));
                }
                Some(e) = ev_rx.recv() => {
                    // A late lock answer after a timeout is still fed: the machine releases a late Taken.
                    if let Event::Lock(_) = &e {
                        lock_pending = None;
                    }
                    events.push(e);
                }
            }
            let mut actions = Vec::new();
            for e in events {
                actions.extend(machine.handle(now, e));
            }
            for a in &actions {
                if let Action::Lock(op @ (LockOp::Take | LockOp::Check)) = a {
                    lock_pending = Some((*op, now));
                }
            }
            facts.count(&actions);
            if !actions.is_empty() {
                let _ = act_tx.send((actions, None));
            }
            *view.lock().expect("ha view") = view_of(&machine, &s, now, &mut facts);
        }
        // Clean stop: release everything, tell the others, wait until done.
        let now = t0.elapsed();
        let mut actions = machine.handle(now, Event::Stop);
        actions.push(Action::Notify { event: "shutdown".into(), details: vec![format!("pnn={}", s.me)] });
        facts.count(&actions);
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let _ = act_tx.send((actions, Some(done_tx)));
        let _ = tokio::task::spawn_blocking(move || done_rx.recv_timeout(Duration::from_secs(5))).await;
        *view.lock().expect("ha view") = view_of(&machine, &s, now, &mut facts);
        tracing::info!("HA node stopped: public addresses and recovery lock released");
    });
    Ok((handle, task))
}
