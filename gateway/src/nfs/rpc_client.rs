//! The few ONC RPC calls the server makes itself: asking a client's portmapper for a port, the
//! NLM GRANTED callback and `_RES` answers to a client's lock manager, SM_NOTIFY to a client's
//! status monitor, and registering with a host's rpcbind. UDP with retransmission (what every
//! lock manager and status monitor listens on), from a chosen source address: a Linux client
//! accepts a GRANTED callback or an SM_NOTIFY only from the address it sent its locks to, which
//! on a cluster is the public address, not the node's own.
//!
//! Encoding a call and parsing a reply are pure functions ([`encode_call`], [`parse_reply`]),
//! the latter fuzzed like every parser of network input.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::net::UdpSocket;

use super::xdr::{XdrError, XdrReader, XdrWriter};

/// The portmapper's program number and well-known port.
pub const PORTMAP_PROGRAM: u32 = 100_000;
/// The portmapper's port.
pub const PORTMAP_PORT: u16 = 111;
/// IP protocol numbers as the portmapper names them.
pub const IPPROTO_TCP: u32 = 6;
/// UDP.
pub const IPPROTO_UDP: u32 = 17;

/// Why a call got no usable answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// Nothing answered in time (after every retransmission).
    #[error("no answer")]
    Timeout,
    /// The socket failed (address not available, network unreachable...).
    #[error("{0}")]
    Io(String),
    /// An answer that is not a successful RPC reply.
    #[error("{0}")]
    Rejected(ReplyError),
}

/// What is wrong with a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// Not even a reply header.
    #[error("malformed reply: {0}")]
    Malformed(XdrError),
    /// A reply to another call.
    #[error("reply to another call")]
    OtherXid,
    /// Not a REPLY message.
    #[error("not a reply")]
    NotAReply,
    /// MSG_DENIED (RPC version or authentication refused).
    #[error("call denied")]
    Denied,
    /// Accepted, but not SUCCESS (program or procedure unavailable, garbage arguments...).
    #[error("call not executed (accept status {0})")]
    NotExecuted(u32),
}

/// A CALL message (without TCP record marking): AUTH_UNIX as root from `machine`, the way
/// lock managers call each other.
pub fn encode_call(xid: u32, prog: u32, vers: u32, proc_: u32, machine: &str, args: &[u8]) -> Vec<u8> {
    let mut cred = XdrWriter::default();
    cred.u32(0).opaque(&machine.as_bytes()[..machine.len().min(255)]).u32(0).u32(0).u32(0);
    let mut w = XdrWriter::new(Vec::with_capacity(64 + args.len()));
    w.u32(xid).u32(0).u32(2).u32(prog).u32(vers).u32(proc_);
    w.u32(1).opaque(&cred.buf);
    w.u32(0).u32(0);
    w.buf.extend_from_slice(args);
    w.buf
}

/// The result body of a successful reply to call `xid`.
pub fn parse_reply(xid: u32, msg: &[u8]) -> Result<&[u8], ReplyError> {
    let r = &mut XdrReader::new(msg);
    let m = |e| ReplyError::Malformed(e);
    if r.u32().map_err(m)? != xid {
        return Err(ReplyError::OtherXid);
    }
    if r.u32().map_err(m)? != 1 {
        return Err(ReplyError::NotAReply);
    }
    if r.u32().map_err(m)? != 0 {
        return Err(ReplyError::Denied);
    }
    r.u32().map_err(m)?;
    r.opaque(400).map_err(m)?;
    match r.u32().map_err(m)? {
        0 => Ok(&msg[r.position()..]),
        s => Err(ReplyError::NotExecuted(s)),
    }
}

/// Which procedure a call is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proc {
    /// Program number.
    pub prog: u32,
    /// Version.
    pub vers: u32,
    /// Procedure.
    pub proc_: u32,
}

/// One UDP call to `to` from `from` (any local address when `None`), sent `tries` times
/// `wait` apart until a reply comes; returns the result body.
pub async fn call_udp(
    from: Option<IpAddr>,
    to: SocketAddr,
    p: Proc,
    args: &[u8],
    tries: u32,
    wait: Duration,
) -> Result<Vec<u8>, CallError> {
    let local = match from {
        Some(ip) => SocketAddr::new(ip, 0),
        None if to.is_ipv4() => SocketAddr::from(([0, 0, 0, 0], 0)),
        None => SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0)),
    };
    let sock = UdpSocket::bind(local).await.map_err(|e| CallError::Io(format!("bind {local}: {e}")))?;
    call_on(&sock, to, p, args, tries, wait).await
}

/// [`call_udp`] on a socket the caller bound.
async fn call_on(
    sock: &UdpSocket,
    to: SocketAddr,
    p: Proc,
    args: &[u8],
    tries: u32,
    wait: Duration,
) -> Result<Vec<u8>, CallError> {
    let Proc { prog, vers, proc_ } = p;
    let xid: u32 = rand::random();
    let msg = encode_call(xid, prog, vers, proc_, "nasgw", args);
    let mut buf = vec![0u8; 65_536];
    for _ in 0..tries.max(1) {
        if let Err(e) = sock.send_to(&msg, to).await {
            return Err(CallError::Io(format!("send to {to}: {e}")));
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let got = tokio::time::timeout_at(deadline, sock.recv_from(&mut buf)).await;
            let Ok(got) = got else { break };
            let (n, peer) = match got {
                Ok(x) => x,
                // ICMP port unreachable from an earlier datagram: the service is not there.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    return Err(CallError::Io(format!("{to}: connection refused")))
                }
                Err(e) => return Err(CallError::Io(format!("receive from {to}: {e}"))),
            };
            if peer.ip() != to.ip() {
                continue;
            }
            match parse_reply(xid, &buf[..n]) {
                Ok(body) => return Ok(body.to_vec()),
                Err(ReplyError::OtherXid) => continue,
                Err(e) => return Err(CallError::Rejected(e)),
            }
        }
    }
    Err(CallError::Timeout)
}

/// Asks the portmapper of `host` (over UDP, from `from`) for the port of `prog`/`vers` over
/// `prot` ([`IPPROTO_UDP`] or [`IPPROTO_TCP`]); `Ok(0)` when it is not registered.
pub async fn getport(from: Option<IpAddr>, host: IpAddr, prog: u32, vers: u32, prot: u32) -> Result<u16, CallError> {
    let mut a = XdrWriter::default();
    a.u32(prog).u32(vers).u32(prot).u32(0);
    let to = SocketAddr::new(host, PORTMAP_PORT);
    let body =
        call_udp(from, to, Proc { prog: PORTMAP_PROGRAM, vers: 2, proc_: 3 }, &a.buf, 3, Duration::from_millis(700))
            .await?;
    let port = XdrReader::new(&body).u32().map_err(|e| CallError::Rejected(ReplyError::Malformed(e)))?;
    Ok(u16::try_from(port).unwrap_or(0))
}

/// Registers (`set`) or removes a mapping with the portmapper at `pmap` (a host rpcbind);
/// returns what it answered (false: refused, e.g. already registered by another service).
pub async fn pmap_set(
    pmap: SocketAddr,
    set: bool,
    prog: u32,
    vers: u32,
    prot: u32,
    port: u16,
) -> Result<bool, CallError> {
    let mut a = XdrWriter::default();
    a.u32(prog).u32(vers).u32(prot).u32(u32::from(port));
    let proc_ = if set { 1 } else { 2 };
    // rpcbind takes SET and UNSET only from a reserved port of the host itself.
    let sock = bind_reserved(pmap.ip()).await?;
    let p = Proc { prog: PORTMAP_PROGRAM, vers: 2, proc_ };
    let body = call_on(&sock, pmap, p, &a.buf, 2, Duration::from_millis(500)).await?;
    XdrReader::new(&body).bool().map_err(|e| CallError::Rejected(ReplyError::Malformed(e)))
}

/// A UDP socket on a reserved port (600-1023) of the local address that reaches `to` (needs
/// root), or on any port when none is free or allowed.
async fn bind_reserved(to: IpAddr) -> Result<UdpSocket, CallError> {
    let ip: IpAddr =
        if to.is_ipv4() { std::net::Ipv4Addr::UNSPECIFIED.into() } else { std::net::Ipv6Addr::UNSPECIFIED.into() };
    for port in (600..1024).rev() {
        if let Ok(s) = UdpSocket::bind(SocketAddr::new(ip, port)).await {
            return Ok(s);
        }
    }
    UdpSocket::bind(SocketAddr::new(ip, 0)).await.map_err(|e| CallError::Io(format!("bind: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(xid: u32, accept: u32, body: &[u8]) -> Vec<u8> {
        let mut w = XdrWriter::default();
        w.u32(xid).u32(1).u32(0).u32(0).u32(0).u32(accept);
        w.buf.extend_from_slice(body);
        w.buf
    }

    #[test]
    fn a_call_parses_as_the_server_parses_calls() {
        let msg = encode_call(77, 100_021, 4, 5, "nasgw", b"ARGS");
        let call = crate::nfs::rpc::parse_call(&msg).unwrap();
        assert_eq!((call.xid, call.prog, call.vers, call.proc_), (77, 100_021, 4, 5));
        assert_eq!(call.auth, crate::nfs::rpc::Auth::Unix { uid: 0, gid: 0, gids: vec![] });
        assert_eq!(&msg[call.args_at..], b"ARGS");
    }

    #[test]
    fn replies_are_checked_before_their_body_is_used() {
        assert_eq!(parse_reply(5, &reply(5, 0, b"BODY")), Ok(&b"BODY"[..]));
        assert_eq!(parse_reply(6, &reply(5, 0, b"")), Err(ReplyError::OtherXid));
        assert_eq!(parse_reply(5, &reply(5, 1, b"")), Err(ReplyError::NotExecuted(1)));
        let mut denied = reply(5, 0, b"");
        denied[11] = 1;
        assert_eq!(parse_reply(5, &denied), Err(ReplyError::Denied));
        let mut call = reply(5, 0, b"");
        call[7] = 0;
        assert_eq!(parse_reply(5, &call), Err(ReplyError::NotAReply));
        let full = reply(5, 0, b"");
        for cut in 0..full.len() {
            assert!(parse_reply(5, &full[..cut]).is_err());
        }
    }

    #[tokio::test]
    async fn a_udp_call_is_retransmitted_until_answered() {
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = server.local_addr().unwrap();
        let answer = tokio::spawn(async move {
            let mut buf = [0u8; 512];
            // Drop the first datagram: the client must send it again.
            let _ = server.recv_from(&mut buf).await.unwrap();
            let (n, peer) = server.recv_from(&mut buf).await.unwrap();
            let call = crate::nfs::rpc::parse_call(&buf[..n]).unwrap();
            server.send_to(&reply(call.xid, 0, &[0, 0, 0, 9]), peer).await.unwrap();
        });
        let body = call_udp(None, addr, Proc { prog: 1, vers: 1, proc_: 1 }, b"", 3, Duration::from_millis(200))
            .await
            .unwrap();
        assert_eq!(body, [0, 0, 0, 9]);
        answer.await.unwrap();
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let r = call_udp(
            None,
            silent.local_addr().unwrap(),
            Proc { prog: 1, vers: 1, proc_: 1 },
            b"",
            2,
            Duration::from_millis(50),
        )
        .await;
        assert_eq!(r, Err(CallError::Timeout));
    }
}
