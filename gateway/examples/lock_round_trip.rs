//! What one remote decision of the lock service costs, in isolation: two nodes' lock services in
//! this process, linked by the real mesh over loopback (127.0.0.1 and 127.0.0.2), each on a
//! multi-thread runtime of two workers as the daemon has; a "connection" thread with its own
//! single-thread runtime (as an SMB connection's) opens and closes N new files through node 0
//! whose home is node 1 (the common case of a cluster mput: the open is a round trip that hands
//! the record over, the close is decided in place). The same is done for two anchors: a TCP
//! ping-pong of two small messages between blocking threads, and the same ping-pong with the
//! answer read by a runtime task (the service's hops). HA is not running: each node's tick feeds
//! it a fixed verdict (node 0 leads).
//!
//! Prints, per round trip: CPU time (`/proc/self/task/*/schedstat`, nanoseconds) and context
//! switches (`voluntary_ctxt_switches` + `nonvoluntary_ctxt_switches`) by thread group, and the
//! wall time. Run as root or not (loopback only):
//! `nice -n 19 cargo run --release -p nasgw --example lock_round_trip -- 20000`

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nasgw::locks::machine::{home_of, Config, HaInput};
use nasgw::locks::mesh::MeshConfig;
use nasgw::locks::outbox::Outbox;
use nasgw::locks::record::{flags, CachingRequest, OpenRequest};
use nasgw::locks::types::{access, share};
use nasgw::locks::LockService;
use nasgw::vfs::FileId;
use tokio_util::sync::CancellationToken;

/// CPU nanoseconds and context switches per thread-name group.
type Sample = BTreeMap<String, (u64, u64)>;

fn sample() -> Sample {
    let mut out = Sample::new();
    for t in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let p = t.path();
        let name = std::fs::read_to_string(p.join("comm")).unwrap_or_default().trim().to_string();
        let cpu: u64 = std::fs::read_to_string(p.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        let status = std::fs::read_to_string(p.join("status")).unwrap_or_default();
        let cs: u64 = status
            .lines()
            .filter(|l| l.starts_with("voluntary_ctxt_switches") || l.starts_with("nonvoluntary_ctxt_switches"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum();
        let e = out.entry(name).or_default();
        e.0 += cpu;
        e.1 += cs;
    }
    out
}

/// Prints what changed between two samples, per operation.
fn report(what: &str, n: u64, wall: Duration, a: &Sample, b: &Sample) {
    let mut total = (0.0, 0.0);
    let mut parts = Vec::new();
    for (name, (cpu, cs)) in b {
        let (c0, s0) = a.get(name).copied().unwrap_or_default();
        let dc = cpu.saturating_sub(c0) as f64 / n as f64 / 1000.0;
        let ds = cs.saturating_sub(s0) as f64 / n as f64;
        if dc >= 0.05 || ds >= 0.01 {
            parts.push(format!("{name} {dc:.1} us {ds:.2} cs"));
        }
        total.0 += dc;
        total.1 += ds;
    }
    println!(
        "{what}: {n} in {:.2} s ({:.1} us each); CPU {:.1} us, {:.2} context switches per op [{}]",
        wall.as_secs_f64(),
        wall.as_secs_f64() * 1e6 / n as f64,
        total.0,
        total.1,
        parts.join("; ")
    );
}

/// A node's runtime: two workers as the daemon has on this machine (`WORKERS` to try others).
fn runtime(name: &str) -> tokio::runtime::Runtime {
    let workers = std::env::var("WORKERS").ok().and_then(|w| w.parse().ok()).unwrap_or(2);
    tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().thread_name(name).build().unwrap()
}

fn conn_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// Two blocking threads, 64-byte messages.
fn ping_pong_blocking(n: u64) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let server = std::thread::Builder::new()
        .name("pp-server".into())
        .spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            s.set_nodelay(true).unwrap();
            let mut b = [0u8; 64];
            while s.read_exact(&mut b).is_ok() {
                s.write_all(&b).unwrap();
            }
        })
        .unwrap();
    let client = std::thread::Builder::new()
        .name("pp-client".into())
        .spawn(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_nodelay(true).unwrap();
            let mut b = [7u8; 64];
            let (a, t) = (sample(), Instant::now());
            for _ in 0..n {
                s.write_all(&b).unwrap();
                s.read_exact(&mut b).unwrap();
            }
            report("ping-pong, blocking threads", n, t.elapsed(), &a, &sample());
        })
        .unwrap();
    client.join().unwrap();
    server.join().unwrap();
}

/// The service's hops with plain TCP: the client thread writes; a runtime task on the server
/// side answers; a runtime task on the client side reads the answer and wakes the client
/// thread through a oneshot channel.
fn ping_pong_runtime(n: u64) {
    let (srv, cli) = (runtime("srv-rt"), runtime("cli-rt"));
    let l = srv.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = l.local_addr().unwrap();
    srv.spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut s, _) = l.accept().await.unwrap();
        s.set_nodelay(true).unwrap();
        let mut b = [0u8; 64];
        while s.read_exact(&mut b).await.is_ok() {
            s.write_all(&b).await.unwrap();
        }
    });
    let s = cli.block_on(tokio::net::TcpStream::connect(addr)).unwrap();
    s.set_nodelay(true).unwrap();
    let (mut rd, wr) = s.into_split();
    let wr = Arc::new(wr);
    type Waiter = std::sync::Mutex<Option<tokio::sync::oneshot::Sender<()>>>;
    let waiter: Arc<Waiter> = Arc::new(std::sync::Mutex::new(None));
    let w2 = waiter.clone();
    cli.spawn(async move {
        use tokio::io::AsyncReadExt;
        let mut b = [0u8; 64];
        while rd.read_exact(&mut b).await.is_ok() {
            // Taken out of the lock before it is woken, as the service does.
            let tx = w2.lock().unwrap().take();
            if let Some(tx) = tx {
                let _ = tx.send(());
            }
        }
    });
    let h = std::thread::Builder::new()
        .name("conn".into())
        .spawn(move || {
            let rt = conn_runtime();
            rt.block_on(async {
                let (a, t) = (sample(), Instant::now());
                for _ in 0..n {
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    *waiter.lock().unwrap() = Some(tx);
                    let mut sent = 0;
                    let b = [7u8; 64];
                    while sent < b.len() {
                        match wr.try_write(&b[sent..]) {
                            Ok(k) => sent += k,
                            Err(_) => wr.writable().await.unwrap(),
                        }
                    }
                    rx.await.unwrap();
                }
                report("ping-pong, answer read by a runtime task (the service's hops)", n, t.elapsed(), &a, &sample());
            });
        })
        .unwrap();
    h.join().unwrap();
    drop(cli);
    drop(srv);
}

fn node(me: u16, port: u16, stop: &CancellationToken) -> (tokio::runtime::Runtime, Arc<LockService>) {
    let rt = runtime(&format!("n{me}-rt"));
    // The daemon's timings (as a single node has them), for one node of two.
    let cfg = Config { me, nodes: 2, incarnation: 1 + u64::from(me), ..Config::single() };
    let outbox = Outbox::new(me, 2);
    let svc = LockService::clustered(cfg, outbox.clone());
    let mesh = MeshConfig {
        me,
        nodes: vec![IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)), IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))],
        port,
        key: [5; 32],
        incarnation: 1 + u64::from(me),
        dead: cfg.dead,
    };
    let s2 = svc.clone();
    let stop2 = stop.clone();
    rt.block_on(async move { nasgw::locks::mesh::start(mesh, s2, outbox, stop2).await }).unwrap();
    let verdict = Box::new(|| HaInput { leader: Some(0), ok: true });
    rt.spawn(svc.clone().run(Duration::from_millis(25), Some(verdict), stop.clone()));
    (rt, svc)
}

fn lock_service(n: u64, idle_secs: u64) {
    let stop = CancellationToken::new();
    let port = 20000 + (std::process::id() % 20000) as u16;
    let (rt0, s0) = node(0, port, &stop);
    let (rt1, s1) = node(1, port, &stop);
    let t = Instant::now();
    while !(*s0.licensed().borrow() && *s1.licensed().borrow()) {
        assert!(t.elapsed() < Duration::from_secs(10), "the two nodes never got in sync");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Idle: what ticks and pings cost with no request at all.
    let (a, t) = (sample(), Instant::now());
    std::thread::sleep(Duration::from_secs(idle_secs));
    report("idle two-node lock service, per second", idle_secs, t.elapsed(), &a, &sample());
    // Files homed on node 1, opened and closed through node 0.
    let files: Vec<FileId> = (0u64..)
        .map(|i| FileId::new(&i.to_le_bytes()).unwrap())
        .filter(|f| home_of(f, &[0, 1]) == Some(1))
        .take(n as usize)
        .collect();
    let svc = s0.clone();
    let h = std::thread::Builder::new()
        .name("conn".into())
        .spawn(move || {
            let rt = conn_runtime();
            rt.block_on(async {
                let (a, t) = (sample(), Instant::now());
                for f in &files {
                    let key = svc.new_key();
                    let req = OpenRequest {
                        key,
                        access: access::READ_DATA | access::WRITE_DATA,
                        share: share::ALL,
                        caching: CachingRequest::None,
                        overwrite: false,
                        is_dir: false,
                        flags: flags::HANDLE,
                    };
                    svc.open(f, req).await.unwrap();
                    svc.close(f, key).await.unwrap();
                }
                report("lock service: open (remote home) + close, new files", n, t.elapsed(), &a, &sample());
            });
        })
        .unwrap();
    h.join().unwrap();
    println!("records: node 0 {:?}, node 1 {:?} (decided, kept)", s0.record_count(), s1.record_count());
    stop.cancel();
    drop(rt0);
    drop(rt1);
}

fn main() {
    let n: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let idle: u64 = std::env::args().nth(2).and_then(|a| a.parse().ok()).unwrap_or(3);
    ping_pong_blocking(n);
    ping_pong_runtime(n);
    lock_service(n, idle);
}
