//! ONC RPC over UDP: the portmapper, MOUNT, NLM and NSM answer datagrams too (NFS itself stays
//! on TCP). Lock managers and status monitors call each other over UDP by default, and
//! `rpcinfo` and `mount.nfs` ask the portmapper over UDP first.
//!
//! One socket per port, bound to the listen address (usually every address). Each datagram
//! says which local address it was sent to (`IP_PKTINFO` / `IPV6_PKTINFO`), and its reply goes
//! out *from* that address: a client that sent a call to a public address drops an answer from
//! the node's own address. At most [`MAX_IN_FLIGHT`] calls run at once; more are dropped (the
//! client retransmits).

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::Semaphore;

/// Largest datagram read.
const MAX_DATAGRAM: usize = 65_536;
/// Calls of all clients running at once over UDP.
pub const MAX_IN_FLIGHT: usize = 256;

/// A UDP socket that knows each datagram's destination address.
pub struct PktSocket {
    sock: UdpSocket,
}

/// One datagram.
pub struct Datagram {
    /// The bytes.
    pub data: Vec<u8>,
    /// Who sent it.
    pub from: SocketAddr,
    /// The local address it was sent to (the public address a client used), when known.
    pub to: Option<IpAddr>,
}

impl PktSocket {
    /// Binds `addr` and asks the kernel for each datagram's destination address.
    pub fn bind(addr: SocketAddr) -> io::Result<PktSocket> {
        let domain = if addr.is_ipv4() { socket2::Domain::IPV4 } else { socket2::Domain::IPV6 };
        let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
        let on: libc::c_int = 1;
        let set = |level, name| {
            // SAFETY: setsockopt on our socket with a valid int.
            unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    level,
                    name,
                    (&on as *const libc::c_int).cast(),
                    size_of::<libc::c_int>() as libc::socklen_t,
                )
            }
        };
        if addr.is_ipv4() {
            if set(libc::IPPROTO_IP, libc::IP_PKTINFO) != 0 {
                return Err(io::Error::last_os_error());
            }
        } else {
            if set(libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO) != 0 {
                return Err(io::Error::last_os_error());
            }
            // IPv4 clients of a dual-stack socket.
            let _ = set(libc::IPPROTO_IP, libc::IP_PKTINFO);
        }
        s.set_reuse_address(true)?;
        s.bind(&addr.into())?;
        s.set_nonblocking(true)?;
        let sock = UdpSocket::from_std(s.into())?;
        Ok(PktSocket { sock })
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock.local_addr()
    }

    /// The next datagram.
    pub async fn recv(&self) -> io::Result<Datagram> {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let fd = self.sock.as_raw_fd();
        let (n, from, to) = self.sock.async_io(Interest::READABLE, || recv_pkt(fd, &mut buf)).await?;
        buf.truncate(n);
        Ok(Datagram { data: buf, from, to })
    }

    /// Sends `data` to `to` from local address `from` (any when `None`).
    pub async fn send(&self, data: &[u8], to: SocketAddr, from: Option<IpAddr>) -> io::Result<()> {
        let fd = self.sock.as_raw_fd();
        let v6 = self.sock.local_addr()?.is_ipv6();
        self.sock.async_io(Interest::WRITABLE, || send_pkt(fd, v6, data, to, from)).await.map(|_| ())
    }
}

fn recv_pkt(fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, Option<IpAddr>)> {
    // SAFETY: zeroed C structs are valid; every pointer below points into locals that outlive
    // the call, with their true lengths.
    unsafe {
        let mut from: libc::sockaddr_storage = zeroed();
        let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
        let mut control = [0u64; 16];
        let mut msg: libc::msghdr = zeroed();
        msg.msg_name = (&mut from as *mut libc::sockaddr_storage).cast();
        msg.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = size_of::<[u64; 16]>();
        let n = libc::recvmsg(fd, &mut msg, 0);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let src = sockaddr_to(&from).ok_or_else(|| io::Error::other("datagram from an unknown address family"))?;
        let mut dst = None;
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            let h = &*c;
            if h.cmsg_level == libc::IPPROTO_IP && h.cmsg_type == libc::IP_PKTINFO {
                let info = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::in_pktinfo);
                dst = Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(info.ipi_addr.s_addr))));
            } else if h.cmsg_level == libc::IPPROTO_IPV6 && h.cmsg_type == libc::IPV6_PKTINFO {
                let info = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::in6_pktinfo);
                dst = Some(IpAddr::V6(Ipv6Addr::from(info.ipi6_addr.s6_addr)).to_canonical());
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
        Ok((n as usize, src, dst))
    }
}

fn sockaddr_to(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    // SAFETY: the family says which struct the storage holds.
    unsafe {
        match i32::from(s.ss_family) {
            libc::AF_INET => {
                let a = &*(s as *const libc::sockaddr_storage as *const libc::sockaddr_in);
                Some(SocketAddr::V4(SocketAddrV4::new(
                    Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                    u16::from_be(a.sin_port),
                )))
            }
            libc::AF_INET6 => {
                let a = &*(s as *const libc::sockaddr_storage as *const libc::sockaddr_in6);
                let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
                Some(SocketAddr::new(IpAddr::V6(ip).to_canonical(), u16::from_be(a.sin6_port)))
            }
            _ => None,
        }
    }
}

fn send_pkt(fd: RawFd, v6_socket: bool, data: &[u8], to: SocketAddr, from: Option<IpAddr>) -> io::Result<usize> {
    // SAFETY: as in recv_pkt; the control buffer is large enough for one pktinfo message.
    unsafe {
        let mut dest: libc::sockaddr_storage = zeroed();
        let dest_len = match (to, v6_socket) {
            (SocketAddr::V4(a), false) => {
                let d = &mut *(&mut dest as *mut libc::sockaddr_storage as *mut libc::sockaddr_in);
                d.sin_family = libc::AF_INET as libc::sa_family_t;
                d.sin_port = a.port().to_be();
                d.sin_addr.s_addr = u32::from(*a.ip()).to_be();
                size_of::<libc::sockaddr_in>()
            }
            (a, _) => {
                let ip = match a.ip() {
                    IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                    IpAddr::V6(v6) => v6,
                };
                let d = &mut *(&mut dest as *mut libc::sockaddr_storage as *mut libc::sockaddr_in6);
                d.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                d.sin6_port = a.port().to_be();
                d.sin6_addr.s6_addr = ip.octets();
                size_of::<libc::sockaddr_in6>()
            }
        };
        let mut iov = libc::iovec { iov_base: data.as_ptr() as *mut libc::c_void, iov_len: data.len() };
        let mut control = [0u64; 16];
        let mut msg: libc::msghdr = zeroed();
        msg.msg_name = (&mut dest as *mut libc::sockaddr_storage).cast();
        msg.msg_namelen = dest_len as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if let Some(src) = from.filter(|s| !s.is_unspecified()) {
            msg.msg_control = control.as_mut_ptr().cast();
            match src {
                IpAddr::V4(s) => {
                    msg.msg_controllen = libc::CMSG_SPACE(size_of::<libc::in_pktinfo>() as u32) as usize;
                    let c = libc::CMSG_FIRSTHDR(&msg);
                    (*c).cmsg_level = libc::IPPROTO_IP;
                    (*c).cmsg_type = libc::IP_PKTINFO;
                    (*c).cmsg_len = libc::CMSG_LEN(size_of::<libc::in_pktinfo>() as u32) as usize;
                    let mut info: libc::in_pktinfo = zeroed();
                    info.ipi_spec_dst.s_addr = u32::from(s).to_be();
                    std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut libc::in_pktinfo, info);
                }
                IpAddr::V6(s) => {
                    msg.msg_controllen = libc::CMSG_SPACE(size_of::<libc::in6_pktinfo>() as u32) as usize;
                    let c = libc::CMSG_FIRSTHDR(&msg);
                    (*c).cmsg_level = libc::IPPROTO_IPV6;
                    (*c).cmsg_type = libc::IPV6_PKTINFO;
                    (*c).cmsg_len = libc::CMSG_LEN(size_of::<libc::in6_pktinfo>() as u32) as usize;
                    let mut info: libc::in6_pktinfo = zeroed();
                    info.ipi6_addr.s6_addr = s.octets();
                    std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut libc::in6_pktinfo, info);
                }
            }
        }
        let n = libc::sendmsg(fd, &msg, 0);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

/// Answers datagrams on `sock` with `answer` (call bytes, client, local address -> reply
/// message without record marking, or nothing) until `stop`.
pub async fn serve<F, Fut>(
    sock: Arc<PktSocket>,
    name: &'static str,
    stop: tokio_util::sync::CancellationToken,
    answer: F,
) where
    F: Fn(Vec<u8>, SocketAddr, IpAddr) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Option<Vec<u8>>> + Send + 'static,
{
    let answer = Arc::new(answer);
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let local = sock.local_addr().map(|a| a.ip()).unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    loop {
        let d = tokio::select! {
            _ = stop.cancelled() => return,
            d = sock.recv() => d,
        };
        let d = match d {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(service = name, error = %e, "UDP receive failed");
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::debug!(service = name, client = %d.from, "UDP: too many calls in flight, datagram dropped");
            continue;
        };
        let (sock, answer) = (sock.clone(), answer.clone());
        let to = d.to.unwrap_or(local);
        tokio::spawn(async move {
            if let Some(reply) = answer(d.data, d.from, to).await {
                if let Err(e) = sock.send(&reply, d.from, d.to).await {
                    tracing::debug!(service = name, client = %d.from, error = %e, "UDP reply not sent");
                }
            }
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn replies_come_from_the_address_the_datagram_was_sent_to() {
        // Bound to every address, a datagram to 127.0.0.2 is answered from 127.0.0.2.
        let s = Arc::new(PktSocket::bind("0.0.0.0:0".parse().unwrap()).unwrap());
        let port = s.local_addr().unwrap().port();
        let stop = tokio_util::sync::CancellationToken::new();
        tokio::spawn(serve(s, "test", stop.clone(), |data, _from, to| async move {
            let mut r = data;
            r.extend_from_slice(to.to_string().as_bytes());
            Some(r)
        }));
        let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        for dst in ["127.0.0.1", "127.0.0.2"] {
            let to: SocketAddr = format!("{dst}:{port}").parse().unwrap();
            c.send_to(b"hi ", to).await.unwrap();
            let mut buf = [0u8; 64];
            let (n, from) = c.recv_from(&mut buf).await.unwrap();
            assert_eq!(from, to, "answered from the address asked");
            assert_eq!(&buf[..n], format!("hi {dst}").as_bytes());
        }
        stop.cancel();
    }
}
