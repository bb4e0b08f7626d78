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
use std::sync::mpsc;
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

    /// Maps a probe's I/O error to a health state (pure: unit-tested).
    pub fn from_probe_error(e: &io::Error) -> VolumeHealth {
        match e.raw_os_error() {
            Some(libc::EROFS) => VolumeHealth::QuorumLost { reason: e.to_string() },
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

/// Runs a [`Probe`] periodically and publishes the result; stops when `stop` fires.
pub struct HealthMonitor {
    tx: watch::Sender<VolumeHealth>,
}

impl HealthMonitor {
    /// A monitor in state `Starting`, and the watch HA subscribes to.
    pub fn new() -> (HealthMonitor, HealthWatch) {
        let (tx, rx) = watch::channel(VolumeHealth::Starting);
        (HealthMonitor { tx }, rx)
    }

    /// Publishes a state now (the mount supervisor uses it when the client dies, without
    /// waiting for the next probe).
    pub fn publish(&self, h: VolumeHealth) {
        publish(&self.tx, h);
    }

    /// A second handle that publishes to the same watch.
    pub fn publisher(&self) -> HealthMonitor {
        HealthMonitor { tx: self.tx.clone() }
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
        let tx = self.tx;
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
                                    publish(&tx, VolumeHealth::Hung { waited_ms: waited.as_millis() as u64 });
                                }
                            }
                        }
                    };
                    match result {
                        Some(Ok(())) => publish(&tx, VolumeHealth::Healthy),
                        Some(Err(h)) => publish(&tx, h),
                        None => return,
                    }
                    sleep_unless_stopped(&stop, timing.interval);
                }
            })
            .expect("spawn health thread");
    }
}

fn publish(tx: &watch::Sender<VolumeHealth>, h: VolumeHealth) {
    tx.send_if_modified(|cur| {
        // A growing Hung wait is not a change worth waking HA for; entering Hung is.
        let same = match (&*cur, &h) {
            (VolumeHealth::Hung { .. }, VolumeHealth::Hung { .. }) => true,
            (a, b) => a == b,
        };
        if !same {
            tracing::info!(from = %cur, to = %h, "volume health changed");
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
        assert!(VolumeHealth::Healthy.is_healthy());
        assert!(!VolumeHealth::Hung { waited_ms: 1 }.is_healthy());
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
