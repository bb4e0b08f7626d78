//! A small NLM client for the lock tests: the "second client" that tries a lock while another
//! holds it (or reclaims it), from the host or from a test namespace. MOUNT and LOOKUP find
//! the file handle; NLM 4 calls go over UDP (as lock managers call each other) or TCP. Written
//! by hand on std sockets (no lock manager of its own: it never waits for a GRANTED callback,
//! it polls), so it runs on any thread, including one inside a network namespace.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

/// NLM 4 status codes.
pub mod stat {
    /// Granted.
    pub const GRANTED: u32 = 0;
    /// Another owner holds a conflicting lock.
    pub const DENIED: u32 = 1;
    /// Out of resources, retry.
    pub const DENIED_NOLOCKS: u32 = 2;
    /// Queued; a GRANTED callback follows.
    pub const BLOCKED: u32 = 3;
    /// The server is in its grace period.
    pub const DENIED_GRACE_PERIOD: u32 = 4;
}

struct W(Vec<u8>);

impl W {
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn opaque(&mut self, b: &[u8]) -> &mut Self {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
        self.0.resize(self.0.len().div_ceil(4) * 4, 0);
        self
    }
}

struct R<'a>(&'a [u8]);

impl R<'_> {
    fn u32(&mut self) -> u32 {
        let (h, t) = self.0.split_at(4);
        self.0 = t;
        u32::from_be_bytes(h.try_into().unwrap())
    }
    fn opaque(&mut self) -> Vec<u8> {
        let n = self.u32() as usize;
        let v = self.0[..n].to_vec();
        self.0 = &self.0[n.div_ceil(4) * 4..];
        v
    }
}

fn call_msg(xid: u32, prog: u32, vers: u32, proc_: u32, args: &[u8]) -> Vec<u8> {
    let mut cred = W(Vec::new());
    cred.u32(1).opaque(b"nlm-test").u32(0).u32(0).u32(0);
    let mut w = W(Vec::new());
    w.u32(xid).u32(0).u32(2).u32(prog).u32(vers).u32(proc_).u32(1).opaque(&cred.0).u32(0).u32(0);
    w.0.extend_from_slice(args);
    w.0
}

/// The result body of a successful reply (panics on anything else: a test failure).
fn body(xid: u32, msg: &[u8]) -> Vec<u8> {
    let mut r = R(msg);
    assert_eq!(r.u32(), xid, "reply to another call");
    assert_eq!(r.u32(), 1, "not a reply");
    assert_eq!(r.u32(), 0, "call denied");
    r.u32();
    r.opaque();
    assert_eq!(r.u32(), 0, "call not executed");
    r.0.to_vec()
}

/// One RPC call over a fresh TCP connection (record marking), as root.
pub fn call_tcp(to: SocketAddr, prog: u32, vers: u32, proc_: u32, args: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5)).unwrap_or_else(|e| panic!("connect {to}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let xid = std::process::id() ^ rand_u32();
    let msg = call_msg(xid, prog, vers, proc_, args);
    let mut rec = ((msg.len() as u32) | 0x8000_0000).to_be_bytes().to_vec();
    rec.extend_from_slice(&msg);
    s.write_all(&rec).unwrap();
    let mut hdr = [0u8; 4];
    s.read_exact(&mut hdr).unwrap();
    let len = (u32::from_be_bytes(hdr) & 0x7fff_ffff) as usize;
    let mut reply = vec![0; len];
    s.read_exact(&mut reply).unwrap();
    body(xid, &reply)
}

/// One RPC call over UDP, retransmitted every second up to `tries` times; `None` if nothing
/// answered.
pub fn call_udp(to: SocketAddr, prog: u32, vers: u32, proc_: u32, args: &[u8], tries: u32) -> Option<Vec<u8>> {
    let local: SocketAddr = if to.is_ipv4() { "0.0.0.0:0".parse().unwrap() } else { "[::]:0".parse().unwrap() };
    let s = UdpSocket::bind(local).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let xid = rand_u32();
    let msg = call_msg(xid, prog, vers, proc_, args);
    let mut buf = vec![0u8; 65536];
    for _ in 0..tries {
        s.send_to(&msg, to).unwrap();
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            assert_eq!(from, to, "the answer comes from the address asked");
            if buf[..4] == xid.to_be_bytes() {
                return Some(body(xid, &buf[..n]));
            }
        }
    }
    None
}

fn rand_u32() -> u32 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    (t.subsec_nanos() ^ (t.as_secs() as u32).rotate_left(13)).wrapping_mul(2_654_435_761)
}

/// The NFS handle of `path` (components separated by `/`) in export `export` at `server`
/// (MOUNT and NFS on its port).
pub fn file_handle(server: SocketAddr, export: &str, path: &str) -> Vec<u8> {
    file_handle_at(server, server, export, path)
}

/// One lock owner of a client.
#[derive(Debug, Clone)]
pub struct NlmClient {
    /// The server's NLM address (the portmapper says where).
    pub server: SocketAddr,
    /// Over TCP rather than UDP.
    pub tcp: bool,
    /// The client's name.
    pub caller: String,
    /// The owner's id.
    pub svid: i32,
}

impl NlmClient {
    /// An owner calling itself `caller` with `svid`, talking to `server` over UDP.
    pub fn new(server: SocketAddr, caller: &str, svid: i32) -> NlmClient {
        NlmClient { server, tcp: false, caller: caller.to_string(), svid }
    }

    fn lock_args(&self, w: &mut W, fh: &[u8], offset: u64, len: u64) {
        let oh = format!("{}@{}", self.svid, self.caller);
        w.opaque(self.caller.as_bytes()).opaque(fh).opaque(oh.as_bytes()).u32(self.svid as u32).u64(offset).u64(len);
    }

    fn call(&self, proc_: u32, args: &[u8]) -> Option<u32> {
        let b = if self.tcp {
            Some(call_tcp(self.server, 100_021, 4, proc_, args))
        } else {
            call_udp(self.server, 100_021, 4, proc_, args, 5)
        }?;
        let mut r = R(&b);
        r.opaque();
        Some(r.u32())
    }

    /// LOCK (no waiting unless `block`); the status, `None` if the server did not answer.
    pub fn lock(&self, fh: &[u8], exclusive: bool, offset: u64, len: u64, reclaim: bool) -> Option<u32> {
        let mut w = W(Vec::new());
        w.opaque(b"c").u32(0).u32(u32::from(exclusive));
        self.lock_args(&mut w, fh, offset, len);
        w.u32(u32::from(reclaim)).u32(1);
        self.call(2, &w.0)
    }

    /// TEST.
    pub fn test(&self, fh: &[u8], exclusive: bool, offset: u64, len: u64) -> Option<u32> {
        let mut w = W(Vec::new());
        w.opaque(b"c").u32(u32::from(exclusive));
        self.lock_args(&mut w, fh, offset, len);
        self.call(1, &w.0)
    }

    /// UNLOCK.
    pub fn unlock(&self, fh: &[u8], offset: u64, len: u64) -> Option<u32> {
        let mut w = W(Vec::new());
        w.opaque(b"c");
        self.lock_args(&mut w, fh, offset, len);
        self.call(4, &w.0)
    }
}

/// A portmapper's answer to GETPORT (version 2) over UDP or TCP.
pub fn getport(pmap: IpAddr, prog: u32, vers: u32, prot: u32, tcp: bool) -> u32 {
    let mut a = W(Vec::new());
    a.u32(prog).u32(vers).u32(prot).u32(0);
    let to = SocketAddr::new(pmap, 111);
    let b = if tcp {
        call_tcp(to, 100_000, 2, 3, &a.0)
    } else {
        call_udp(to, 100_000, 2, 3, &a.0, 3).expect("portmapper answers")
    };
    R(&b).u32()
}

/// The handle of `path` at an NFS server whose MOUNT listens on `mount` (Ganesha's own port)
/// and NFS on `nfs`.
pub fn file_handle_at(nfs: SocketAddr, mount: SocketAddr, export: &str, path: &str) -> Vec<u8> {
    let mut a = W(Vec::new());
    a.opaque(export.as_bytes());
    let b = call_tcp(mount, 100_005, 3, 1, &a.0);
    let mut r = R(&b);
    assert_eq!(r.u32(), 0, "MOUNT of {export} refused");
    let mut fh = r.opaque();
    for name in path.split('/').filter(|n| !n.is_empty()) {
        let mut a = W(Vec::new());
        a.opaque(&fh).opaque(name.as_bytes());
        let b = call_tcp(nfs, 100_003, 3, 3, &a.0);
        let mut r = R(&b);
        assert_eq!(r.u32(), 0, "LOOKUP {name} failed");
        fh = r.opaque();
    }
    fh
}

/// One NLM 4 lock owner on one kept TCP connection, one call at a time (the bench's client):
/// errors are returned, never panics.
pub struct NlmConn {
    stream: TcpStream,
    owner: NlmClient,
    xid: u32,
}

impl NlmConn {
    /// Connects to the lock manager at `server` as owner `caller`/`svid`.
    pub fn connect(server: SocketAddr, caller: &str, svid: i32) -> std::io::Result<NlmConn> {
        let stream = TcpStream::connect_timeout(&server, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        stream.set_nodelay(true)?;
        Ok(NlmConn { stream, owner: NlmClient::new(server, caller, svid), xid: rand_u32() })
    }

    fn call(&mut self, proc_: u32, args: &[u8]) -> std::io::Result<u32> {
        use std::io::{Error, ErrorKind};
        self.xid = self.xid.wrapping_add(1);
        let msg = call_msg(self.xid, 100_021, 4, proc_, args);
        let mut rec = ((msg.len() as u32) | 0x8000_0000).to_be_bytes().to_vec();
        rec.extend_from_slice(&msg);
        self.stream.write_all(&rec)?;
        let mut hdr = [0u8; 4];
        self.stream.read_exact(&mut hdr)?;
        let len = (u32::from_be_bytes(hdr) & 0x7fff_ffff) as usize;
        if len > 65_536 {
            return Err(Error::new(ErrorKind::InvalidData, "reply too long"));
        }
        let mut reply = vec![0; len];
        self.stream.read_exact(&mut reply)?;
        // xid, REPLY, MSG_ACCEPTED, verifier (flavor, empty body), SUCCESS, cookie, stat.
        let word = |i: usize| reply.get(i * 4..i * 4 + 4).map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")));
        let bad = || Error::new(ErrorKind::InvalidData, "not a successful NLM reply");
        if word(0) != Some(self.xid) || word(1) != Some(1) || word(2) != Some(0) || word(4) != Some(0) {
            return Err(bad());
        }
        if word(5) != Some(0) {
            return Err(bad());
        }
        let cookie = word(6).ok_or_else(bad)? as usize;
        word(7 + cookie.div_ceil(4)).ok_or_else(bad)
    }

    /// A non-blocking exclusive LOCK of `offset`/`len`; the NLM status.
    pub fn lock(&mut self, fh: &[u8], offset: u64, len: u64) -> std::io::Result<u32> {
        let mut w = W(Vec::new());
        w.opaque(b"c").u32(0).u32(1);
        self.owner.lock_args(&mut w, fh, offset, len);
        w.u32(0).u32(1);
        self.call(2, &w.0)
    }

    /// UNLOCK of `offset`/`len`; the NLM status.
    pub fn unlock(&mut self, fh: &[u8], offset: u64, len: u64) -> std::io::Result<u32> {
        let mut w = W(Vec::new());
        w.opaque(b"c");
        self.owner.lock_args(&mut w, fh, offset, len);
        self.call(4, &w.0)
    }
}
