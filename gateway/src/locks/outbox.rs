//! The sending side of the lock mesh's links, written by whoever produced the message.
//!
//! The machine's outputs are queued per peer while the caller still holds the service's lock
//! (so the queue has the machine's order), and written once the lock is released by that same
//! caller: a connection task asking a remote home, or the link's reader answering a request,
//! writes its own frames with a non-blocking `send`, with no hand-off to another task. Only
//! bytes the socket does not take at once (or a failed write) wake the link's task, which waits
//! for the socket and writes the rest. Whoever writes takes everything queued so far, in order,
//! into one `send`: messages produced meanwhile by other callers ride along.
//!
//! Frames are sealed ([`super::mesh`]: length, postcard payload, tag over the sequence number
//! and payload) when written, under the writing lock, so sequence numbers follow the queue's
//! order. A peer whose link is down drops what is queued for it: messages of a link that
//! failed may be lost, which the machine learns through `LinkDown` and repairs with a new view.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::Notify;

use super::machine::Msg;
use super::mesh::{seal_into, FrameMac, MAX_FRAME};
use crate::vfs::FileId;

/// Every peer's sending side (one slot per node number; none for this node).
pub struct Outbox {
    peers: Vec<Option<PeerOut>>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox").field("peers", &self.peers.len()).finish()
    }
}

/// One peer's queue and link.
#[derive(Default)]
struct PeerOut {
    /// Messages in the machine's order, not sealed yet (held only for a push or a take).
    queue: Mutex<Vec<Msg<FileId>>>,
    /// The link and the sealed bytes it has not taken yet; held while writing, so writes keep
    /// the queue's order.
    wire: Mutex<Wire>,
    /// Wakes the link's task: bytes are left over, or a write failed.
    wake: Notify,
}

#[derive(Default)]
struct Wire {
    link: Option<Sending>,
    /// Sealed bytes the socket has not taken, from `at` on.
    pending: Vec<u8>,
    at: usize,
    failed: Option<io::ErrorKind>,
}

/// The authenticated sending direction of a link.
struct Sending {
    wr: Arc<OwnedWriteHalf>,
    mac: FrameMac,
    seq: u64,
}

/// Peers with messages queued by one call, to write once the service's lock is released.
#[derive(Debug, Default, Clone, Copy)]
pub struct Dirty(u64);

impl Dirty {
    fn mark(&mut self, peer: u16) {
        self.0 |= 1u64 << (peer.min(63));
    }

    /// Whether nothing was queued.
    pub fn is_empty(&self) -> bool {
        self.0 == 0
    }
}

/// What a write attempt left behind.
enum Written {
    /// Everything queued is in the socket (or dropped: no link).
    All,
    /// The socket is full: the rest waits for it.
    Blocked,
}

impl Outbox {
    /// Queues for a cluster of `nodes` nodes seen from node `me`.
    pub fn new(me: u16, nodes: u16) -> Arc<Outbox> {
        Arc::new(Outbox { peers: (0..nodes).map(|p| (p != me).then(PeerOut::default)).collect() })
    }

    fn peer(&self, p: u16) -> Option<&PeerOut> {
        self.peers.get(p as usize).and_then(Option::as_ref)
    }

    /// Queues `msg` for `to` (call in the machine's order) and marks `to` in `dirty`.
    pub fn queue(&self, to: u16, msg: Msg<FileId>, dirty: &mut Dirty) {
        if let Some(p) = self.peer(to) {
            lock(&p.queue).push(msg);
            dirty.mark(to);
        }
    }

    /// Writes what [`Outbox::queue`] left for the peers in `dirty`, as far as their sockets
    /// take it now; the links' tasks write the rest.
    pub fn flush(&self, dirty: Dirty) {
        if dirty.is_empty() {
            return;
        }
        for (i, p) in self.peers.iter().enumerate() {
            let Some(p) = p else { continue };
            if dirty.0 & (1u64 << i.min(63)) == 0 {
                continue;
            }
            if !matches!(p.write_out(), Ok(Written::All)) {
                p.wake.notify_one();
            }
        }
    }

    /// A link to `peer` is authenticated: frames go out on `wr`, sealed with `mac` from
    /// sequence number `seq`. What was queued while there was no link is dropped (it belongs
    /// to a view that is over).
    pub fn attach(&self, peer: u16, wr: Arc<OwnedWriteHalf>, mac: FrameMac, seq: u64) {
        let Some(p) = self.peer(peer) else { return };
        let mut w = lock(&p.wire);
        lock(&p.queue).clear();
        *w = Wire { link: Some(Sending { wr, mac, seq }), ..Wire::default() };
    }

    /// The link to `peer` is down: nothing is sent to it until the next [`Outbox::attach`].
    pub fn detach(&self, peer: u16) {
        let Some(p) = self.peer(peer) else { return };
        *lock(&p.wire) = Wire::default();
        lock(&p.queue).clear();
    }

    /// The link task's part: writes what callers left over whenever they ask, waiting for the
    /// socket `wr` to take it; ends with the first failed write.
    pub async fn drive(&self, peer: u16, wr: &OwnedWriteHalf) -> io::Result<()> {
        let Some(p) = self.peer(peer) else { return std::future::pending().await };
        loop {
            p.wake.notified().await;
            loop {
                match p.write_out()? {
                    Written::All => break,
                    Written::Blocked => wr.writable().await?,
                }
            }
        }
    }
}

impl PeerOut {
    /// Seals what is queued and writes as much as the socket takes without waiting.
    fn write_out(&self) -> io::Result<Written> {
        let mut w = lock(&self.wire);
        let w = &mut *w;
        if let Some(kind) = w.failed {
            return Err(kind.into());
        }
        let Some(link) = w.link.as_mut() else {
            lock(&self.queue).clear();
            return Ok(Written::All);
        };
        let msgs = std::mem::take(&mut *lock(&self.queue));
        if w.at == w.pending.len() {
            w.pending.clear();
            w.at = 0;
        }
        for msg in &msgs {
            match postcard::to_allocvec(msg) {
                Ok(b) if b.len() <= MAX_FRAME => {
                    seal_into(&mut w.pending, &link.mac, link.seq, &b);
                    link.seq += 1;
                }
                _ => tracing::error!("lock mesh: message too large to send; dropped"),
            }
        }
        while w.at < w.pending.len() {
            match link.wr.try_write(&w.pending[w.at..]) {
                Ok(0) => {
                    w.failed = Some(io::ErrorKind::WriteZero);
                    return Err(io::ErrorKind::WriteZero.into());
                }
                Ok(n) => w.at += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Written::Blocked),
                Err(e) => {
                    w.failed = Some(e.kind());
                    return Err(e);
                }
            }
        }
        Ok(Written::All)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::locks::mesh::{decode_msg, open_frame};
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpSocket, TcpStream};

    /// Reads `n` frames sealed with `key` from `seq` 0 and returns their views, in order.
    async fn read_views(rd: &mut TcpStream, key: &[u8; 32], n: usize) -> Vec<u64> {
        let mut views = Vec::new();
        for seq in 0..n as u64 {
            let mut len = [0u8; 4];
            rd.read_exact(&mut len).await.unwrap();
            let len = u32::from_le_bytes(len) as usize;
            let mut buf = vec![0u8; len + 16];
            rd.read_exact(&mut buf).await.unwrap();
            assert!(open_frame(key, seq, &buf[..len], &buf[len..]), "frame {seq} authenticates in order");
            match decode_msg(&buf[..len]) {
                Some(Msg::Event { view, .. }) => views.push(view),
                other => panic!("unexpected frame {other:?}"),
            }
        }
        views
    }

    /// A connected pair on loopback with small buffers, so a few hundred KiB fill them.
    async fn pair() -> (TcpStream, TcpStream) {
        let ls = TcpSocket::new_v4().unwrap();
        ls.set_recv_buffer_size(4096).unwrap();
        ls.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let l = ls.listen(8).unwrap();
        let s = TcpSocket::new_v4().unwrap();
        s.set_send_buffer_size(4096).unwrap();
        let a = s.connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn frames_keep_the_queue_order_when_the_socket_is_full_and_many_threads_write() {
        let key = [9u8; 32];
        let (a, mut b) = pair().await;
        let out = Outbox::new(0, 2);
        let (_rd, wr) = a.into_split();
        let wr = Arc::new(wr);
        out.attach(1, wr.clone(), FrameMac::new(&key), 0);
        let driver = {
            let out = out.clone();
            let wr = wr.clone();
            tokio::spawn(async move { out.drive(1, &wr).await })
        };
        // Four threads queue under one lock (the service's), as the machine's outputs are, and
        // write after releasing it; 8 KiB payloads fill the small socket buffers long before
        // the reader starts, so most bytes go out through the link's task.
        let order = Arc::new(Mutex::new(0u64));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (out, order) = (out.clone(), order.clone());
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        let mut dirty = Dirty::default();
                        {
                            let mut n = order.lock().unwrap();
                            out.queue(1, Msg::Event { view: *n, payload: vec![7; 8 << 10] }, &mut dirty);
                            *n += 1;
                        }
                        out.flush(dirty);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let views = read_views(&mut b, &key, 200).await;
        assert_eq!(views, (0..200).collect::<Vec<_>>(), "every frame once, in the order queued");
        assert!(!driver.is_finished(), "the link's task waits for more");
        driver.abort();
    }

    #[tokio::test]
    async fn nothing_queued_without_a_link_reaches_the_next_one() {
        let key = [3u8; 32];
        let out = Outbox::new(1, 3);
        let mut dirty = Dirty::default();
        out.queue(0, Msg::Event { view: 1, payload: vec![] }, &mut dirty);
        out.queue(1, Msg::Event { view: 2, payload: vec![] }, &mut dirty);
        out.flush(dirty);
        let (a, mut b) = pair().await;
        let (_rd, wr) = a.into_split();
        out.attach(0, Arc::new(wr), FrameMac::new(&key), 0);
        let mut dirty = Dirty::default();
        out.queue(0, Msg::Event { view: 3, payload: vec![] }, &mut dirty);
        out.flush(dirty);
        assert_eq!(read_views(&mut b, &key, 1).await, vec![3], "the message queued while down was dropped");
        out.detach(0);
        let mut dirty = Dirty::default();
        out.queue(0, Msg::Event { view: 4, payload: vec![] }, &mut dirty);
        out.flush(dirty);
        let mut rest = Vec::new();
        drop(out);
        let n =
            tokio::time::timeout(std::time::Duration::from_secs(5), b.read_to_end(&mut rest)).await.unwrap().unwrap();
        assert_eq!(n, 0, "nothing is written after the link was detached");
    }
}
