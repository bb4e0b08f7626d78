//! Whether this node may cache attributes over libgfapi: proved, not assumed.
//!
//! The bricks tell a client when *another* client changes a file it used (upcalls), but only on
//! volumes with `features.cache-invalidation on` (off by default), and only if the client used
//! the file within `features.cache-invalidation-timeout`. Nothing on the client side says which
//! holds, so a [`Prover`] thread checks it the only sure way: a second, private connection to the
//! volume (the *witness*) writes a file the node's own connection used [`LIFETIME`] + 1 s before,
//! and the node's connection must hear of it within [`PROOF_WAIT`]. It repeats every
//! [`PROOF_EVERY`]: the cache is on ([`Coherence::epoch`] non-zero) only while the last proof
//! held, and every change of state starts a new epoch (entries from before are dropped). The
//! state changes are logged; `Coherence::stats` counts hits, misses and invalidations.
//!
//! What the proof cannot see: a brick connection of the node that drops and comes back misses
//! the upcalls sent meanwhile; entries are then at most [`LIFETIME`] old when their next proof
//! or expiry comes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::attr_cache::LIFETIME;
use super::gfapi::{self, Gfid, Volume};

/// How long the node's connection may take to hear of the witness's write.
pub const PROOF_WAIT: Duration = Duration::from_secs(5);
/// How often the proof is repeated.
pub const PROOF_EVERY: Duration = Duration::from_secs(30);

/// Where invalidated GFIDs go.
pub type GfidSink = dyn Fn(&Gfid) + Send + Sync;

/// The cache's switch and counters, shared by the backend, the upcall callback and the prover.
#[derive(Default)]
pub struct Coherence {
    /// Non-zero while upcalls are proved to reach this node: entries carry it.
    epoch: AtomicU64,
    /// The last epoch handed out.
    last: AtomicU64,
    /// Where invalidations go (the backend's objects), set once by the backend.
    sink: Mutex<Option<Arc<GfidSink>>>,
    /// The GFID the prover waits to hear about, and whether it did.
    probe: Mutex<(Option<Gfid>, bool)>,
    heard: Condvar,
    hits: AtomicU64,
    misses: AtomicU64,
    invalidations: AtomicU64,
    /// Every invalidation, from upcalls or this node's own changes: attributes that came with
    /// a lookup or a listing are cached only if none happened meanwhile ([`Coherence::changes`]).
    changes: AtomicU64,
}

/// Counters of the attribute cache since start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    /// Attributes answered from the cache.
    pub hits: u64,
    /// Attributes fetched from the bricks.
    pub misses: u64,
    /// Upcalls received (each may name up to three files).
    pub invalidations: u64,
}

impl Coherence {
    /// A switch that starts off.
    pub fn new() -> Arc<Coherence> {
        Arc::new(Coherence::default())
    }

    /// The current epoch; 0 while the cache is off.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Drops every cached entry at once (a change whose files this node cannot name, such as a
    /// rename's moved object): a new epoch, if the cache is on.
    pub fn drop_all(&self) {
        self.note_change();
        let e = self.epoch();
        if e != 0 {
            let next = self.last.fetch_add(1, Ordering::AcqRel) + 1;
            let _ = self.epoch.compare_exchange(e, next, Ordering::AcqRel, Ordering::Acquire);
        }
    }

    fn set_on(&self, on: bool) {
        if on && self.epoch() == 0 {
            let next = self.last.fetch_add(1, Ordering::AcqRel) + 1;
            self.epoch.store(next, Ordering::Release);
        } else if !on {
            self.epoch.store(0, Ordering::Release);
        }
    }

    /// The count of invalidations so far: taken before a lookup or listing whose attributes may
    /// be cached, compared after.
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::Acquire)
    }

    /// Notes an invalidation (see [`Coherence::changes`]).
    pub fn note_change(&self) {
        self.changes.fetch_add(1, Ordering::AcqRel);
    }

    /// Counts an answer from the cache (`true`) or from the bricks.
    pub fn count(&self, hit: bool) {
        if hit {
            self.hits.fetch_add(1, Ordering::Relaxed);
        } else {
            self.misses.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The counters.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            invalidations: self.invalidations.load(Ordering::Relaxed),
        }
    }

    /// Where each invalidated GFID goes from now on.
    pub fn set_sink(&self, sink: Arc<GfidSink>) {
        *self.sink.lock().expect("lock") = Some(sink);
    }

    /// An upcall named these GFIDs (called on libgfapi's threads).
    pub fn upcall(&self, gfids: &[Gfid]) {
        self.invalidations.fetch_add(1, Ordering::Relaxed);
        self.note_change();
        let sink = self.sink.lock().expect("lock").clone();
        if let Some(sink) = sink {
            for g in gfids {
                sink(g);
            }
        }
        let mut p = self.probe.lock().expect("lock");
        if p.0.is_some_and(|want| gfids.contains(&want)) {
            p.1 = true;
            self.heard.notify_all();
        }
    }

    fn await_probe(&self, gfid: Gfid) {
        *self.probe.lock().expect("lock") = (Some(gfid), false);
    }

    /// Waits until the awaited GFID was heard of, at most `wait` or until `stop`.
    fn heard(&self, wait: Duration, stop: &CancellationToken) -> bool {
        let end = Instant::now() + wait;
        let mut p = self.probe.lock().expect("lock");
        while !p.1 && !stop.is_cancelled() {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            p = self.heard.wait_timeout(p, left.min(Duration::from_millis(200))).expect("lock").0;
        }
        let got = p.1;
        *p = (None, false);
        got
    }
}

/// Sleeps `d`, or less if `stop` is cancelled; returns whether to go on.
fn pause(d: Duration, stop: &CancellationToken) -> bool {
    let end = Instant::now() + d;
    while !stop.is_cancelled() {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        std::thread::sleep(left.min(Duration::from_millis(200)));
    }
    false
}

/// Proves, again and again, that upcalls reach the node's connection (see the module doc).
pub struct Prover {
    /// The node's own connection (the one the backend serves).
    pub vol: Volume,
    /// Volume name and volfile servers, for the witness connection.
    pub volume: String,
    /// Volfile servers.
    pub servers: Vec<String>,
    /// The witness's libgfapi log.
    pub log: std::path::PathBuf,
    /// The probe file's name in the reserved directory (one per node).
    pub file: String,
    /// The switch.
    pub coherence: Arc<Coherence>,
    /// Ends the thread.
    pub stop: CancellationToken,
}

impl Prover {
    /// Registers the node's connection for upcalls, then proves on a thread of its own.
    pub fn start(self) {
        let c = self.coherence.clone();
        if let Err(e) = self.vol.watch_invalidations(Box::new(move |g: &[Gfid]| c.upcall(g))) {
            tracing::warn!(volume = %self.volume, error = %e, "attribute cache off: cannot register for upcalls");
            return;
        }
        let spawned = std::thread::Builder::new().name("gfapi-coherence".into()).spawn(move || self.run());
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "attribute cache off: no thread for its proof");
        }
    }

    fn run(self) {
        let mut witness: Option<Volume> = None;
        let mut was: Option<bool> = None;
        while !self.stop.is_cancelled() {
            let outcome = self.round(&mut witness);
            if self.stop.is_cancelled() {
                break;
            }
            let on = outcome.is_ok();
            self.coherence.set_on(on);
            if was != Some(on) {
                match &outcome {
                    Ok(()) => tracing::info!(
                        volume = %self.volume,
                        lifetime_s = LIFETIME.as_secs(),
                        "attribute cache on: the volume's upcalls reach this node (features.cache-invalidation)"
                    ),
                    Err(why) => tracing::warn!(
                        volume = %self.volume,
                        reason = %why,
                        "attribute cache off: every GETATTR asks the bricks; to cache, run `gluster volume set {} \
                         features.cache-invalidation on` (timeout above {} s)",
                        self.volume,
                        LIFETIME.as_secs() + 1
                    ),
                }
                was = Some(on);
            }
            if outcome.is_err() {
                witness = None; // reconnect next time, in case it was the witness that broke
            }
            if !pause(PROOF_EVERY, &self.stop) {
                break;
            }
        }
        self.coherence.set_on(false);
        // glfs_fini of the witness may block on an unreachable volume: it is this thread's.
        drop(witness);
    }

    /// One proof: Ok when the node's connection heard of the witness's write.
    fn round(&self, witness: &mut Option<Volume>) -> Result<(), String> {
        gfapi::Credentials::root().apply().map_err(|e| e.to_string())?;
        let (root, _) = self.vol.root().map_err(|e| format!("root: {e}"))?;
        let dir = match self.vol.lookup(&root, super::RESERVED_DIR.as_ref()) {
            Ok((d, _)) => d,
            Err(_) => match self.vol.mkdir(&root, super::RESERVED_DIR.as_ref(), 0o755) {
                Ok((d, _)) => d,
                Err(_) => self.vol.lookup(&root, super::RESERVED_DIR.as_ref()).map_err(|e| e.to_string())?.0,
            },
        };
        // The node's connection uses the file (and keeps its object: libgfapi passes upcalls on
        // only for files it holds).
        let (obj, _) =
            self.vol.create(&dir, self.file.as_ref(), libc::O_RDWR, 0o644).map_err(|e| format!("probe file: {e}"))?;
        let gfid = obj.gfid().map_err(|e| e.to_string())?;
        self.vol.stat(&obj).map_err(|e| e.to_string())?;
        let used = Instant::now();
        if witness.is_none() {
            let v = Volume::connect(&self.volume, &self.servers, &self.log)
                .map_err(|e| format!("witness connection: {e}"))?;
            *witness = Some(v);
        }
        let w = witness.as_ref().expect("set");
        // The volume must still tell a client that used the file LIFETIME ago.
        if !pause((LIFETIME + Duration::from_secs(1)).saturating_sub(used.elapsed()), &self.stop) {
            return Err("stopping".into());
        }
        self.coherence.await_probe(gfid);
        let (wroot, _) = w.root().map_err(|e| e.to_string())?;
        let (wdir, _) = w.lookup(&wroot, super::RESERVED_DIR.as_ref()).map_err(|e| e.to_string())?;
        let (wobj, _) = w.lookup(&wdir, self.file.as_ref()).map_err(|e| e.to_string())?;
        let f = w.open(&wobj, libc::O_WRONLY).map_err(|e| e.to_string())?;
        let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        f.write_all_at(&stamp.as_nanos().to_le_bytes(), 0).map_err(|e| e.to_string())?;
        f.close().map_err(|e| e.to_string())?;
        if self.coherence.heard(PROOF_WAIT, &self.stop) {
            drop(obj);
            Ok(())
        } else {
            Err(format!("no upcall within {} s of another client's write", PROOF_WAIT.as_secs()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_start_off_and_change_with_every_switch_and_drop() {
        let c = Coherence::new();
        assert_eq!(c.epoch(), 0, "off until proved");
        c.drop_all();
        assert_eq!(c.epoch(), 0, "dropping while off leaves it off");
        c.set_on(true);
        let e1 = c.epoch();
        assert_ne!(e1, 0);
        c.set_on(true);
        assert_eq!(c.epoch(), e1, "a repeated proof keeps the entries");
        c.drop_all();
        let e2 = c.epoch();
        assert!(e2 != 0 && e2 != e1, "a rename starts a new epoch");
        c.set_on(false);
        assert_eq!(c.epoch(), 0);
        c.set_on(true);
        assert!(![0, e1, e2].contains(&c.epoch()), "back on: nothing from before counts");
    }

    #[test]
    fn upcalls_reach_the_sink_count_as_changes_and_answer_the_probe() {
        let c = Coherence::new();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        c.set_sink(Arc::new(move |g: &Gfid| s.lock().unwrap().push(*g)));
        let before = c.changes();
        c.await_probe([7; 16]);
        c.upcall(&[[1; 16], [2; 16]]);
        assert_eq!(*seen.lock().unwrap(), vec![[1; 16], [2; 16]]);
        assert!(c.changes() > before);
        let stop = CancellationToken::new();
        assert!(!c.heard(Duration::from_millis(20), &stop), "not the probe's file");
        c.await_probe([7; 16]);
        c.upcall(&[[7; 16]]);
        assert!(c.heard(Duration::from_millis(20), &stop));
        assert_eq!(c.stats().invalidations, 2);
    }
}
