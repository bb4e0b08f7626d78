//! The links that carry [`Msg`]s between nodes: one TCP connection per pair of nodes on
//! `[cluster] port` (the lower-numbered node dials), authenticated with a key derived from the
//! cluster secret, in order (the machine relies on per-link FIFO), and reported up or down to
//! the [`LockService`] (a link that went down may have lost messages: the machine rebuilds the view).
//!
//! ```text
//! hello   = "NGL1" | from u16 | to u16 | incarnation u64 | nonce [16] | tag [32]
//!           dialer's tag:   HMAC(key, "hello1" | fields)
//!           acceptor's tag: HMAC(key, "hello2" | fields | dialer's nonce)   (no replayed hello works)
//! frame   = len u32 | payload (postcard Msg) | tag [16]
//!           tag = HMAC(direction key, seq u64 | payload), seq counting frames per direction
//! ```
//! Direction keys come from HMAC(key, "session" | dialer hello | acceptor hello). A connection
//! whose first frame does not verify is dropped before it replaces a working one. Decoding never
//! panics (fuzzed through [`decode_hello`] and [`open_frame`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hmac::{KeyInit, Mac};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::machine::Msg;
use super::outbox::Outbox;
use super::service::LockService;
use crate::vfs::FileId;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

const MAGIC: [u8; 4] = *b"NGL1";
/// Bytes in a hello.
pub const HELLO_LEN: usize = 4 + 2 + 2 + 8 + 16 + 32;
const TAG: usize = 16;
/// An idle link is probed by TCP keepalive after HA's dead interval, and no sooner than this.
/// Only the lower-numbered node dials, so when the higher one vanishes without closing its
/// connections (a power cut) and comes back with the same address, the dialer's link looks up
/// until it sends something; and nothing may be sent to a node that is not in sync (it pings
/// the leader, over the link that is missing): the new node waited for ever, out of sync and so
/// unhealthy (seen in image_cluster's blank replacement of node 3). The first probe draws the
/// new kernel's RST. Not sooner than the dead interval: a link must not be given up on a peer
/// that HA still counts alive (a stalled VM on a slow LAN with `dead_interval_ms = 10000`).
const KEEPALIVE_MIN_IDLE: Duration = Duration::from_secs(3);
/// Between keepalive probes, and how many go unanswered before a silent peer's link is down.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
const KEEPALIVE_PROBES: u32 = 3;

/// How long a link is idle before its first keepalive probe, for HA's dead interval `dead`
/// (whole seconds: what the kernel counts in).
fn keepalive_idle(dead: Duration) -> Duration {
    Duration::from_secs(dead.as_millis().div_ceil(1000) as u64).max(KEEPALIVE_MIN_IDLE)
}

/// Turns on the keepalive probes of a link: the first after [`keepalive_idle`], then every
/// [`KEEPALIVE_INTERVAL`], [`KEEPALIVE_PROBES`] unanswered ones ending it.
fn keep_alive(stream: &TcpStream, dead: Duration) -> std::io::Result<()> {
    let ka = socket2::TcpKeepalive::new()
        .with_time(keepalive_idle(dead))
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_PROBES);
    socket2::SockRef::from(stream).set_tcp_keepalive(&ka)
}

/// Largest frame payload accepted.
pub const MAX_FRAME: usize = 16 << 20;

/// One side's hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    /// Sender's node number.
    pub from: u16,
    /// Node it wants.
    pub to: u16,
    /// Sender's run.
    pub incarnation: u64,
    /// Fresh random bytes.
    pub nonce: [u8; 16],
}

fn mac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut m = <HmacSha256 as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

impl Hello {
    fn fields(&self) -> [u8; HELLO_LEN - 32] {
        let mut b = [0u8; HELLO_LEN - 32];
        b[..4].copy_from_slice(&MAGIC);
        b[4..6].copy_from_slice(&self.from.to_le_bytes());
        b[6..8].copy_from_slice(&self.to.to_le_bytes());
        b[8..16].copy_from_slice(&self.incarnation.to_le_bytes());
        b[16..32].copy_from_slice(&self.nonce);
        b
    }

    /// Encodes and authenticates: `answering` is the dialer's nonce when the acceptor answers.
    pub fn encode(&self, key: &[u8], answering: Option<&[u8; 16]>) -> [u8; HELLO_LEN] {
        let f = self.fields();
        let tag = match answering {
            None => mac(key, &[b"hello1", &f]),
            Some(n) => mac(key, &[b"hello2", &f, n]),
        };
        let mut b = [0u8; HELLO_LEN];
        b[..HELLO_LEN - 32].copy_from_slice(&f);
        b[HELLO_LEN - 32..].copy_from_slice(&tag);
        b
    }
}

/// Decodes a hello and checks its tag (constant time).
pub fn decode_hello(b: &[u8], key: &[u8], answering: Option<&[u8; 16]>) -> Option<Hello> {
    if b.len() != HELLO_LEN || b[..4] != MAGIC {
        return None;
    }
    let h = Hello {
        from: u16::from_le_bytes([b[4], b[5]]),
        to: u16::from_le_bytes([b[6], b[7]]),
        incarnation: u64::from_le_bytes(b[8..16].try_into().ok()?),
        nonce: b[16..32].try_into().ok()?,
    };
    let mut m = <HmacSha256 as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    match answering {
        None => m.update(b"hello1"),
        Some(_) => m.update(b"hello2"),
    }
    m.update(&b[..HELLO_LEN - 32]);
    if let Some(n) = answering {
        m.update(n);
    }
    m.verify_slice(&b[HELLO_LEN - 32..]).ok()?;
    Some(h)
}

/// The two direction keys of a connection: (dialer to acceptor, acceptor to dialer).
pub fn session_keys(key: &[u8], dialer: &[u8; HELLO_LEN], acceptor: &[u8; HELLO_LEN]) -> ([u8; 32], [u8; 32]) {
    let k = mac(key, &[b"session", dialer, acceptor]);
    (mac(&k, &[b"dialer->acceptor"]), mac(&k, &[b"acceptor->dialer"]))
}

/// A direction key made ready for tagging frames (the key's HMAC blocks computed once, cloned
/// for each frame).
#[derive(Clone)]
pub struct FrameMac(HmacSha256);

impl FrameMac {
    /// For direction key `key`.
    pub fn new(key: &[u8; 32]) -> FrameMac {
        FrameMac(<HmacSha256 as KeyInit>::new_from_slice(key).expect("HMAC takes any key length"))
    }

    fn tagger(&self, seq: u64, payload: &[u8]) -> HmacSha256 {
        let mut m = self.0.clone();
        m.update(&seq.to_le_bytes());
        m.update(payload);
        m
    }
}

/// Frames `payload` as the `seq`th frame of a direction.
pub fn seal_frame(key: &[u8; 32], seq: u64, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + payload.len() + TAG);
    seal_into(&mut v, &FrameMac::new(key), seq, payload);
    v
}

/// Appends `payload` to `out` framed as the `seq`th frame of a direction.
pub fn seal_into(out: &mut Vec<u8>, mac: &FrameMac, seq: u64, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(&mac.tagger(seq, payload).finalize().into_bytes()[..TAG]);
}

/// Checks the tag of the `seq`th frame's `payload` (constant time).
pub fn open_frame(key: &[u8; 32], seq: u64, payload: &[u8], tag: &[u8]) -> bool {
    open_frame_with(&FrameMac::new(key), seq, payload, tag)
}

/// [`open_frame`] with the key made ready once.
pub fn open_frame_with(mac: &FrameMac, seq: u64, payload: &[u8], tag: &[u8]) -> bool {
    mac.tagger(seq, payload).verify_truncated_left(tag).is_ok()
}

/// Decodes a message payload (bounded by the frame limit; never panics).
pub fn decode_msg(payload: &[u8]) -> Option<Msg<FileId>> {
    postcard::from_bytes(payload).ok()
}

/// Where this node's mesh listens and whom it links to.
#[derive(Debug, Clone)]
pub struct MeshConfig {
    /// This node.
    pub me: u16,
    /// Every node's cluster address, by node number.
    pub nodes: Vec<IpAddr>,
    /// TCP port (the same number as HA's UDP `[cluster] port`).
    pub port: u16,
    /// Key derived from the cluster secret for the mesh.
    pub key: [u8; 32],
    /// This run.
    pub incarnation: u64,
    /// HA's dead interval: an idle link is probed no sooner (and after 3 s at least).
    pub dead: Duration,
}

/// Starts the mesh: listens, dials the higher-numbered nodes, and sends what the service
/// queues in `outbox`.
pub async fn start(
    cfg: MeshConfig,
    service: Arc<LockService>,
    outbox: Arc<Outbox>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let me_addr = SocketAddr::new(cfg.nodes[cfg.me as usize], cfg.port);
    let listener = TcpListener::bind(me_addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for the lock mesh on {me_addr} (TCP): {e}"))?;
    let cfg = Arc::new(cfg);
    let n = cfg.nodes.len();
    let mut inbound: Vec<Option<mpsc::UnboundedSender<Inbound>>> = vec![None; n];
    for p in 0..n as u16 {
        if p == cfg.me {
            continue;
        }
        let (itx, irx) = mpsc::unbounded_channel();
        inbound[p as usize] = Some(itx);
        tokio::spawn(peer_loop(cfg.clone(), p, service.clone(), outbox.clone(), irx, stop.clone()));
    }
    // Accept: identify the peer by its hello and address, hand the stream to its loop.
    tokio::spawn(async move {
        loop {
            let (mut s, from) = tokio::select! {
                _ = stop.cancelled() => return,
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        crate::listener::pause_if_out_of_resources(&e).await;
                        continue;
                    }
                },
            };
            let cfg = cfg.clone();
            let inbound = inbound.clone();
            tokio::spawn(async move {
                let mut b = [0u8; HELLO_LEN];
                let read = tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut b)).await;
                if !matches!(read, Ok(Ok(_))) {
                    return;
                }
                let Some(h) = decode_hello(&b, &cfg.key, None) else {
                    tracing::warn!(%from, "lock mesh: connection with a bad hello refused (wrong cluster secret?)");
                    return;
                };
                let known = cfg.nodes.get(h.from as usize).is_some_and(|a| *a == from.ip());
                if h.to != cfg.me || h.from >= cfg.me || !known {
                    tracing::warn!(%from, claimed = h.from, "lock mesh: hello from an address that is not that node's; refused");
                    return;
                }
                if let Some(Some(tx)) = inbound.get(h.from as usize) {
                    let _ = tx.send((s, b));
                }
            });
        }
    });
    Ok(())
}

/// An accepted connection and the hello it opened with, on its way to its peer's loop.
type Inbound = (TcpStream, [u8; HELLO_LEN]);

/// An authenticated connection: the stream, the key and first sequence number of each direction.
struct Link {
    stream: TcpStream,
    send_key: [u8; 32],
    send_seq: u64,
    recv_key: [u8; 32],
    recv_seq: u64,
}

/// Keeps one link up: dials (or waits for) the peer, authenticates, carries frames both ways,
/// and reports the link up and down.
async fn peer_loop(
    cfg: Arc<MeshConfig>,
    peer: u16,
    service: Arc<LockService>,
    outbox: Arc<Outbox>,
    mut inbound: mpsc::UnboundedReceiver<Inbound>,
    stop: CancellationToken,
) {
    let dial = cfg.me < peer;
    let addr = SocketAddr::new(cfg.nodes[peer as usize], cfg.port);
    let mut next: Option<Link> = None;
    loop {
        let link = match next.take() {
            Some(l) => Some(l),
            None if dial => tokio::select! {
                _ = stop.cancelled() => return,
                l = dial_peer(&cfg, peer, addr) => l,
            },
            None => tokio::select! {
                _ = stop.cancelled() => return,
                a = inbound.recv() => match a {
                    Some((s, hello)) => answer_peer(&cfg, s, hello).await,
                    None => return,
                },
            },
        };
        let Some(Link { stream, send_key, send_seq, recv_key, recv_seq }) = link else {
            if dial {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        if let Err(e) = keep_alive(&stream, cfg.dead) {
            tracing::warn!(peer, error = %e, "lock mesh: cannot turn on keepalive probes");
        }
        let (rd, wr) = stream.into_split();
        let wr = Arc::new(wr);
        // From here on callers write their frames themselves (see `outbox`); what was queued
        // while the link was down belongs to a view that is over and is dropped.
        outbox.attach(peer, wr.clone(), FrameMac::new(&send_key), send_seq);
        // Frames come in bursts (a request and the update or delegation behind it): read them
        // from a buffer, not two system calls each.
        let mut rd = tokio::io::BufReader::with_capacity(64 << 10, rd);
        service.link(peer, true);
        tracing::info!(peer, "lock mesh: link up");
        let svc = service.clone();
        let recv_mac = FrameMac::new(&recv_key);
        let reader = async move {
            let mut seq = recv_seq;
            loop {
                let mut len = [0u8; 4];
                rd.read_exact(&mut len).await?;
                let len = u32::from_le_bytes(len) as usize;
                if len > MAX_FRAME {
                    anyhow::bail!("frame of {len} bytes");
                }
                let mut buf = vec![0u8; len + TAG];
                rd.read_exact(&mut buf).await?;
                if !open_frame_with(&recv_mac, seq, &buf[..len], &buf[len..]) {
                    anyhow::bail!("frame failed authentication");
                }
                seq += 1;
                let Some(msg) = decode_msg(&buf[..len]) else { anyhow::bail!("undecodable frame") };
                svc.receive(peer, msg);
            }
            #[allow(unreachable_code)]
            Ok::<(), anyhow::Error>(())
        };
        // What callers could not write at once (a full socket) is written here.
        let writer = outbox.drive(peer, &wr);
        let why: Option<anyhow::Error> = tokio::select! {
            _ = stop.cancelled() => None,
            r = reader => Some(r.err().unwrap_or_else(|| anyhow::anyhow!("closed"))),
            r = writer => Some(r.err().map_or_else(|| anyhow::anyhow!("closed"), anyhow::Error::from)),
            // A peer that restarted dials again: once its new connection authenticates, it
            // replaces this one.
            a = inbound.recv(), if !dial => match a {
                Some((s, hello)) => {
                    next = answer_peer(&cfg, s, hello).await;
                    Some(anyhow::anyhow!("replaced by a new connection"))
                }
                None => None,
            },
        };
        outbox.detach(peer);
        service.link(peer, false);
        match why {
            None => return,
            Some(e) => tracing::info!(peer, reason = %e, "lock mesh: link down"),
        }
    }
}

async fn dial_peer(cfg: &MeshConfig, peer: u16, addr: SocketAddr) -> Option<Link> {
    let local = SocketAddr::new(cfg.nodes[cfg.me as usize], 0);
    let sock = if local.is_ipv4() { tokio::net::TcpSocket::new_v4() } else { tokio::net::TcpSocket::new_v6() }.ok()?;
    sock.bind(local).ok()?;
    let mut s = tokio::time::timeout(Duration::from_secs(2), sock.connect(addr)).await.ok()?.ok()?;
    let hello = Hello { from: cfg.me, to: peer, incarnation: cfg.incarnation, nonce: rand::random() };
    let mine = hello.encode(&cfg.key, None);
    s.write_all(&mine).await.ok()?;
    let mut theirs = [0u8; HELLO_LEN];
    tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut theirs)).await.ok()?.ok()?;
    let h = decode_hello(&theirs, &cfg.key, Some(&hello.nonce))?;
    if h.from != peer || h.to != cfg.me {
        return None;
    }
    let (d2a, a2d) = session_keys(&cfg.key, &mine, &theirs);
    // Frame 0 proves this side holds the session keys before the acceptor trusts the link.
    s.write_all(&seal_frame(&d2a, 0, b"")).await.ok()?;
    Some(Link { stream: s, send_key: d2a, send_seq: 1, recv_key: a2d, recv_seq: 0 })
}

async fn answer_peer(cfg: &MeshConfig, mut s: TcpStream, dialer: [u8; HELLO_LEN]) -> Option<Link> {
    let d = decode_hello(&dialer, &cfg.key, None)?;
    let hello = Hello { from: cfg.me, to: d.from, incarnation: cfg.incarnation, nonce: rand::random() };
    let mine = hello.encode(&cfg.key, Some(&d.nonce));
    s.write_all(&mine).await.ok()?;
    let (d2a, a2d) = session_keys(&cfg.key, &dialer, &mine);
    let mut first = [0u8; 4 + TAG];
    tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut first)).await.ok()?.ok()?;
    if first[..4] != [0; 4] || !open_frame(&d2a, 0, b"", &first[4..]) {
        return None;
    }
    Some(Link { stream: s, send_key: a2d, send_seq: 0, recv_key: d2a, recv_seq: 1 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_link_probes_its_peer_once_idle() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let s = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        keep_alive(&s, Duration::from_millis(1000)).unwrap();
        let r = socket2::SockRef::from(&s);
        assert!(r.keepalive().unwrap());
        assert_eq!(r.tcp_keepalive_time().unwrap(), KEEPALIVE_MIN_IDLE);
        // A slow LAN's dead interval: not given up sooner.
        keep_alive(&s, Duration::from_millis(10_500)).unwrap();
        assert_eq!(r.tcp_keepalive_time().unwrap(), Duration::from_secs(11));
        assert_eq!(r.tcp_keepalive_interval().unwrap(), KEEPALIVE_INTERVAL);
        assert_eq!(r.tcp_keepalive_retries().unwrap(), KEEPALIVE_PROBES);
    }

    #[test]
    fn hellos_and_frames_authenticate_and_refuse_tampering() {
        let key = [7u8; 32];
        let h = Hello { from: 1, to: 2, incarnation: 9, nonce: [3; 16] };
        let b = h.encode(&key, None);
        assert_eq!(decode_hello(&b, &key, None), Some(h));
        assert_eq!(decode_hello(&b, &[8u8; 32], None), None, "another secret");
        let mut bad = b;
        bad[5] ^= 1;
        assert_eq!(decode_hello(&bad, &key, None), None, "a changed field");
        // The answer binds the dialer's nonce: replaying an old answer fails.
        let a = Hello { from: 2, to: 1, incarnation: 4, nonce: [5; 16] }.encode(&key, Some(&h.nonce));
        assert!(decode_hello(&a, &key, Some(&h.nonce)).is_some());
        assert!(decode_hello(&a, &key, Some(&[0; 16])).is_none());
        let (k1, k2) = session_keys(&key, &b, &a);
        assert_ne!(k1, k2);
        let f = seal_frame(&k1, 5, b"hello");
        let (len, body) = (u32::from_le_bytes(f[..4].try_into().unwrap()) as usize, &f[4..]);
        assert!(open_frame(&k1, 5, &body[..len], &body[len..]));
        assert!(!open_frame(&k1, 6, &body[..len], &body[len..]), "replayed out of order");
        assert!(!open_frame(&k2, 5, &body[..len], &body[len..]), "reflected to its sender");
        assert!(decode_msg(&[0xff; 40]).is_none());
    }
}
