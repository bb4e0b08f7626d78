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
use crate::status::{ClusterStatus, IpReport, NodeStatus, PublicIpStatus};
use crate::system::{PublicAddress, SystemEffects};
use crate::wire::message::{open, ClusterKey, MAX_DATAGRAM};

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
    /// A local directory answers lock calls at once, so one slower than a fifth of `dead` means
    /// the volume is gone.
    pub fn directory(root: PathBuf, lock_path: PathBuf, me: u32, dead: Duration) -> SharedVolume {
        let file = probe_path(&lock_path, me);
        let mut full = crate::health::FullVolume::default();
        SharedVolume {
            lock: Box::new(RecoveryLock::new(lock_path)),
            probe: Box::new(move || probe_volume(&root, &file, &mut full)),
            lock_timeout: (dead / 5).max(Duration::from_millis(150)),
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

fn view_of(m: &Machine, s: &HaSettings, now: Duration) -> HaView {
    let states = m.states(now);
    let nodes = s
        .nodes
        .iter()
        .enumerate()
        .map(|(i, a)| NodeStatus { pnn: i as u32, address: *a, state: states[i], this_node: i as u32 == s.me })
        .collect();
    let status =
        ClusterStatus { nodes, generation: m.generation(), leader: m.leader(now), recovery_mode: m.recovery_mode(now) };
    let owners = m.owners(now);
    let addresses = s
        .public
        .iter()
        .map(|p| PublicIpStatus {
            address: p.address,
            prefix: p.prefix,
            interface: p.interface.clone(),
            owner: owners.get(&p.address).copied().flatten(),
            connections: m.known_connections(p.address),
        })
        .collect();
    HaView { status, ip: IpReport { this_node: s.me, addresses }, in_quorum: m.in_quorum(now) }
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
    let peers: Vec<SocketAddr> = s
        .nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i as u32 != s.me)
        .map(|(_, a)| SocketAddr::new(*a, s.port))
        .collect();
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
    let view = Arc::new(Mutex::new(view_of(&machine, &s, Duration::ZERO)));
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
        let mut healthy: Option<bool> = None;
        let mut lock_pending: Option<(LockOp, Duration)> = None;
        let mut refused_logged: Option<Instant> = None;
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
                    if healthy != Some(v.is_ok()) {
                        healthy = Some(v.is_ok());
                        match &v {
                            Ok(()) => tracing::info!("node healthy"),
                            Err(why) => tracing::warn!(reason = %why, "node unhealthy: releasing public addresses"),
                        }
                        events.push(Event::Health { healthy: v.is_ok(), reason: v.err().unwrap_or_default() });
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
                }
                r = socket.recv_from(&mut buf) => {
                    if let Ok((n, from)) = r {
                        match open(&s.key, &buf[..n]) {
                            Ok(msg) if s.nodes.get(msg.from as usize) == Some(&from.ip()) => events.push(Event::Received(msg)),
                            Ok(msg) => tracing::warn!(%from, claimed = msg.from, "cluster datagram from an address that is not that node's; ignored"),
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
            if !actions.is_empty() {
                let _ = act_tx.send((actions, None));
            }
            *view.lock().expect("ha view") = view_of(&machine, &s, now);
        }
        // Clean stop: release everything, tell the others, wait until done.
        let now = t0.elapsed();
        let mut actions = machine.handle(now, Event::Stop);
        actions.push(Action::Notify { event: "shutdown".into(), details: vec![format!("pnn={}", s.me)] });
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let _ = act_tx.send((actions, Some(done_tx)));
        let _ = tokio::task::spawn_blocking(move || done_rx.recv_timeout(Duration::from_secs(5))).await;
        *view.lock().expect("ha view") = view_of(&machine, &s, now);
        tracing::info!("HA node stopped: public addresses and recovery lock released");
    });
    Ok((handle, task))
}
