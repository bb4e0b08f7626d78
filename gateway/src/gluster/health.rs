//! Volume health as the HA module sees it: is the volume reachable, does it have quorum, does it
//! answer in time?
//!
//! Each backend supplies a [`Probe`] (one small read and one small write on the volume). A
//! [`HealthMonitor`] runs it periodically on **its own thread** and waits at most
//! `timeout` for it: a probe stuck in a hung FUSE mount or an unreachable brick is reported as
//! [`VolumeHealth::Hung`] while it stays stuck, and no server thread ever waits on it. Results go
//! out on a `tokio::sync::watch` channel ([`HealthWatch`]): HA reads the latest value or awaits
//! changes; `nasgw status` shows the node UNHEALTHY while it is not [`VolumeHealth::Healthy`].

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What the last probe of the volume found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum VolumeHealth {
    /// Not probed yet (the mount or connection is being set up).
    Starting,
    /// A read and a write reached the volume within the timeout.
    Healthy,
    /// The volume cannot be reached: no volfile server or brick answers, the mount failed or is
    /// gone (`reason` says which).
    Unreachable {
        /// What failed, for logs and `nasgw status`.
        reason: String,
    },
    /// Bricks answer but too few for the volume's quorum: writes are refused (EROFS).
    QuorumLost {
        /// The error the write probe got.
        reason: String,
    },
    /// A probe has not returned for `waited_ms`: the mount or the connection hangs.
    Hung {
        /// How long the stuck probe has been waiting.
        waited_ms: u64,
    },
    /// The FUSE client died; nasgw is mounting the volume again.
    Remounting {
        /// How the client ended.
        reason: String,
    },
}

impl VolumeHealth {
    /// May this node serve clients and hold public addresses?
    pub fn is_healthy(&self) -> bool {
        matches!(self, VolumeHealth::Healthy)
    }

    /// Maps a probe's I/O error on the *read* step to a health state (pure: unit-tested).
    pub fn from_probe_error(e: &io::Error) -> VolumeHealth {
        match e.raw_os_error() {
            Some(libc::EROFS) => VolumeHealth::QuorumLost { reason: e.to_string() },
            _ => VolumeHealth::Unreachable { reason: e.to_string() },
        }
    }

    /// Maps an error of the *write* step, after the read step succeeded: the volume answers but
    /// refuses writes. GlusterFS 10 replicas below client quorum answer ENOTCONN (EROFS on some
    /// versions and volume types), so both mean quorum lost here.
    pub fn from_write_error(e: &io::Error) -> VolumeHealth {
        match e.raw_os_error() {
            Some(libc::EROFS) | Some(libc::ENOTCONN) | Some(libc::EIO) => {
                VolumeHealth::QuorumLost { reason: format!("reads work, writes refused: {e}") }
            }
            _ => VolumeHealth::Unreachable { reason: e.to_string() },
        }
    }
}

impl std::fmt::Display for VolumeHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VolumeHealth::Starting => write!(f, "starting"),
            VolumeHealth::Healthy => write!(f, "healthy"),
            VolumeHealth::Unreachable { reason } => write!(f, "volume unreachable: {reason}"),
            VolumeHealth::QuorumLost { reason } => write!(f, "quorum lost: {reason}"),
            VolumeHealth::Hung { waited_ms } => write!(f, "volume hung: probe waiting for {waited_ms} ms"),
            VolumeHealth::Remounting { reason } => write!(f, "remounting: {reason}"),
        }
    }
}

/// The receiving end HA and the control socket hold: `borrow()` is the latest state, `changed()`
/// wakes on every change.
pub type HealthWatch = watch::Receiver<VolumeHealth>;

/// One health check of a backend: a small read and write on the volume. Runs on the monitor's
/// probe thread; may block (that is what the timeout is for).
pub trait Probe: Send + 'static {
    /// `Ok(())` when the volume is usable; otherwise the state it is in.
    fn probe(&mut self) -> Result<(), VolumeHealth>;
}

impl<F: FnMut() -> Result<(), VolumeHealth> + Send + 'static> Probe for F {
    fn probe(&mut self) -> Result<(), VolumeHealth> {
        self()
    }
}

/// Probe timing (`[volume] health_interval_ms`, `health_timeout_ms`).
#[derive(Debug, Clone, Copy)]
pub struct ProbeTiming {
    /// Time between two probes.
    pub interval: Duration,
    /// A probe taking longer than this makes the volume `Hung`.
    pub timeout: Duration,
}

/// Counts the volume's lapses (each change to a state that is not healthy) and keeps the last
/// one's reason, so a reader that looks at the health now and then (HA) still learns of a lapse
/// shorter than its interval, such as a FUSE client that died and was mounted again at once.
#[derive(Debug, Clone, Default)]
pub struct Lapses(Arc<(AtomicU64, Mutex<String>)>);

impl Lapses {
    fn record(&self, h: &VolumeHealth) {
        *self.0 .1.lock().expect("lapse reason") = h.to_string();
        self.0 .0.fetch_add(1, Ordering::SeqCst);
    }

    /// How many lapses so far, and the last one's reason.
    pub fn get(&self) -> (u64, String) {
        let reason = self.0 .1.lock().expect("lapse reason").clone();
        (self.0 .0.load(Ordering::SeqCst), reason)
    }
}

/// Runs a [`Probe`] periodically and publishes the result; stops when `stop` fires.
pub struct HealthMonitor {
    tx: watch::Sender<VolumeHealth>,
    lapses: Lapses,
}

impl HealthMonitor {
    /// A monitor in state `Starting`, and the watch HA subscribes to.
    pub fn new() -> (HealthMonitor, HealthWatch) {
        let (tx, rx) = watch::channel(VolumeHealth::Starting);
        (HealthMonitor { tx, lapses: Lapses::default() }, rx)
    }

    /// Publishes a state now (the mount supervisor uses it when the client dies, without
    /// waiting for the next probe).
    pub fn publish(&self, h: VolumeHealth) {
        publish(&self.tx, &self.lapses, h);
    }

    /// A second handle that publishes to the same watch.
    pub fn publisher(&self) -> HealthMonitor {
        HealthMonitor { tx: self.tx.clone(), lapses: self.lapses.clone() }
    }

    /// The lapse counter of this monitor's volume.
    pub fn lapses(&self) -> Lapses {
        self.lapses.clone()
    }

    /// Starts the probe loop on two threads of its own: the prober (may block in the volume) and
    /// the timer that publishes `Hung` when the prober is late. Returns at once.
    pub fn run(self, mut probe: impl Probe, timing: ProbeTiming, stop: CancellationToken) {
        let (req_tx, req_rx) = mpsc::channel::<()>();
        let (res_tx, res_rx) = mpsc::channel::<Result<(), VolumeHealth>>();
        // The prober: one probe per request. If it hangs in the kernel it hangs alone.
        std::thread::Builder::new()
            .name("nasgw-probe".into())
            .spawn(move || {
                while req_rx.recv().is_ok() {
                    if res_tx.send(probe.probe()).is_err() {
                        return;
                    }
                }
            })
            .expect("spawn probe thread");
        let (tx, lapses) = (self.tx, self.lapses);
        std::thread::Builder::new()
            .name("nasgw-health".into())
            .spawn(move || {
                while !stop.is_cancelled() {
                    if req_tx.send(()).is_err() {
                        return;
                    }
                    let start = Instant::now();
                    // Wait for the answer; past the timeout keep waiting (never queue a second
                    // probe behind a stuck one), reporting Hung with the growing wait.
                    let result = loop {
                        match res_rx.recv_timeout(Duration::from_millis(200)) {
                            Ok(r) => break Some(r),
                            Err(mpsc::RecvTimeoutError::Disconnected) => return,
                            Err(mpsc::RecvTimeoutError::Timeout) => {
                                if stop.is_cancelled() {
                                    break None;
                                }
                                let waited = start.elapsed();
                                if waited >= timing.timeout {
                                    let hung = VolumeHealth::Hung { waited_ms: waited.as_millis() as u64 };
                                    publish(&tx, &lapses, hung);
                                }
                            }
                        }
                    };
                    if let Some(r) = &result {
                        crate::metrics::VOLUME.record(start.elapsed(), r.is_ok());
                    }
                    match result {
                        Some(Ok(())) => publish(&tx, &lapses, VolumeHealth::Healthy),
                        Some(Err(h)) => publish(&tx, &lapses, h),
                        None => return,
                    }
                    sleep_unless_stopped(&stop, timing.interval);
                }
            })
            .expect("spawn health thread");
    }
}

fn publish(tx: &watch::Sender<VolumeHealth>, lapses: &Lapses, h: VolumeHealth) {
    tx.send_if_modified(|cur| {
        // Only a change of state wakes HA and is logged; a new reason or a growing Hung wait
        // within the same state only updates the value.
        let same = std::mem::discriminant(&*cur) == std::mem::discriminant(&h);
        if !same {
            tracing::info!(from = %cur, to = %h, "volume health changed");
            if !h.is_healthy() && cur.is_healthy() {
                lapses.record(&h);
            }
        }
        *cur = h;
        !same
    });
}

fn sleep_unless_stopped(stop: &CancellationToken, d: Duration) {
    let end = Instant::now() + d;
    while !stop.is_cancelled() {
        let now = Instant::now();
        if now >= end {
            return;
        }
        std::thread::sleep((end - now).min(Duration::from_millis(100)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_states() {
        let rofs = io::Error::from_raw_os_error(libc::EROFS);
        assert!(matches!(VolumeHealth::from_probe_error(&rofs), VolumeHealth::QuorumLost { .. }));
        let notconn = io::Error::from_raw_os_error(libc::ENOTCONN);
        assert!(matches!(VolumeHealth::from_probe_error(&notconn), VolumeHealth::Unreachable { .. }));
        assert!(matches!(VolumeHealth::from_write_error(&notconn), VolumeHealth::QuorumLost { .. }));
        let nospc = io::Error::from_raw_os_error(libc::ENOSPC);
        assert!(matches!(VolumeHealth::from_write_error(&nospc), VolumeHealth::Unreachable { .. }));
        assert!(VolumeHealth::Healthy.is_healthy());
        assert!(!VolumeHealth::Hung { waited_ms: 1 }.is_healthy());
    }

    #[test]
    fn a_short_lapse_is_counted_even_when_over() {
        let (mon, rx) = HealthMonitor::new();
        let lapses = mon.lapses();
        mon.publish(VolumeHealth::Healthy);
        assert_eq!(lapses.get().0, 0, "starting up is not a lapse");
        mon.publish(VolumeHealth::Remounting { reason: "client died".into() });
        mon.publish(VolumeHealth::Unreachable { reason: "not mounted".into() });
        mon.publish(VolumeHealth::Healthy);
        assert!(rx.borrow().is_healthy());
        let (n, reason) = lapses.get();
        assert_eq!(n, 1, "one lapse: healthy -> not healthy -> healthy");
        assert!(reason.contains("client died"), "{reason}");
    }

    #[test]
    fn a_stuck_probe_is_reported_hung_then_recovers() {
        let (mon, mut rx) = HealthMonitor::new();
        let (gate_tx, gate_rx) = mpsc::channel::<()>();
        let mut first = true;
        let probe = move || {
            if first {
                first = false;
                let _ = gate_rx.recv(); // stuck until the test releases it
            }
            Ok(())
        };
        let stop = CancellationToken::new();
        let timing = ProbeTiming { interval: Duration::from_millis(50), timeout: Duration::from_millis(300) };
        mon.run(probe, timing, stop.clone());
        let t0 = Instant::now();
        while !matches!(*rx.borrow_and_update(), VolumeHealth::Hung { .. }) {
            assert!(t0.elapsed() < Duration::from_secs(5), "never reported hung");
            std::thread::sleep(Duration::from_millis(20));
        }
        let hung_after = t0.elapsed();
        eprintln!("reported hung after {hung_after:?}");
        assert!(hung_after >= Duration::from_millis(250));
        gate_tx.send(()).unwrap();
        while !rx.borrow_and_update().is_healthy() {
            assert!(t0.elapsed() < Duration::from_secs(5), "never recovered");
            std::thread::sleep(Duration::from_millis(20));
        }
        stop.cancel();
    }
}
