//! The real [`Effects`]: public addresses through rtnetlink, gratuitous ARP on an AF_PACKET
//! socket, tickle ACKs on a raw IP socket, datagrams on the cluster UDP socket, the recovery
//! lock on its own thread, the notify script as a child process.
//!
//! It runs on a dedicated thread (see [`crate::runtime`]) so that netlink calls never block the
//! async daemon, and actions are applied strictly in order.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use futures::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;

use crate::connections::TcpConnection;
use crate::effects::Effects;
use crate::machine::{Event, LockOp};
use crate::recovery_lock::ClusterLock;
use crate::wire::arp::{ArpRepr, Operation};
use crate::wire::message::{seal, ClusterKey, Message};
use crate::wire::tickle::TcpSegment;

/// A public address as configured: address, prefix length, interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicAddress {
    /// The floating address.
    pub address: IpAddr,
    /// Its prefix length.
    pub prefix: u8,
    /// The interface it goes on.
    pub interface: String,
}

/// How many gratuitous ARP rounds (request + reply each) and tickle rounds are sent, and their
/// spacing: CTDB sends 3; the first usually suffices, the others cover a lost frame.
const ANNOUNCE_ROUNDS: u32 = 3;
const ANNOUNCE_GAP: Duration = Duration::from_millis(250);

/// Netlink for one thread: a current-thread runtime driving an rtnetlink connection.
struct Netlink {
    rt: tokio::runtime::Runtime,
    handle: rtnetlink::Handle,
}

impl Netlink {
    fn new() -> io::Result<Netlink> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let _guard = rt.enter();
        let (conn, handle, _) = rtnetlink::new_connection()?;
        rt.spawn(conn);
        drop(_guard);
        Ok(Netlink { rt, handle })
    }

    fn add(&self, ifindex: u32, a: &PublicAddress) -> Result<(), String> {
        let mut req = self.handle.address().add(ifindex, a.address, a.prefix);
        if a.address.is_ipv6() {
            // No duplicate address detection: the address moved here from a node that gave it
            // up (or died), and a tentative address would not answer for ~1 s.
            use rtnetlink::packet_route::address::{AddressFlags, AddressHeaderFlags};
            let m = req.message_mut();
            m.header.flags |= AddressHeaderFlags::Nodad;
            m.attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        let r = self.rt.block_on(req.execute());
        match r {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }

    fn remove(&self, a: &IpAddr) -> Result<usize, String> {
        self.rt.block_on(async {
            let mut found = Vec::new();
            let mut s = self.handle.address().get().set_address_filter(*a).execute();
            while let Some(m) = s.try_next().await.map_err(|e| e.to_string())? {
                let matches = m
                    .attributes
                    .iter()
                    .any(|at| matches!(at, AddressAttribute::Address(x) | AddressAttribute::Local(x) if x == a));
                if matches {
                    found.push(m);
                }
            }
            let n = found.len();
            for m in found {
                match self.handle.address().del(m).execute().await {
                    Ok(()) => {}
                    Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EADDRNOTAVAIL => {}
                    Err(e) => return Err(e.to_string()),
                }
            }
            Ok(n)
        })
    }
}

/// The index of network interface `name` in this thread's network namespace.
pub fn ifindex(name: &str) -> io::Result<u32> {
    let c = std::ffi::CString::new(name).map_err(|_| io::Error::other("interface name has a NUL"))?;
    // SAFETY: if_nametoindex reads a NUL-terminated string.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(io::Error::last_os_error()),
        i => Ok(i),
    }
}

/// The hardware (MAC) address of network interface `name`.
pub fn mac_of(name: &str) -> io::Result<[u8; 6]> {
    // SAFETY: a plain datagram socket used only for the ioctl below, closed at the end.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a zeroed ifreq is valid; the name is copied in bounded below.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(name.bytes().take(libc::IFNAMSIZ - 1)) {
        *d = s as libc::c_char;
    }
    // SAFETY: SIOCGIFHWADDR fills ifr_hwaddr for the named interface.
    let r = unsafe { libc::ioctl(fd, libc::SIOCGIFHWADDR, &mut ifr) };
    let err = io::Error::last_os_error();
    // SAFETY: closing the socket opened above.
    unsafe { libc::close(fd) };
    if r != 0 {
        return Err(err);
    }
    // SAFETY: after SIOCGIFHWADDR the union holds a sockaddr with the hardware address.
    let data = unsafe { ifr.ifr_ifru.ifru_hwaddr.sa_data };
    let mut mac = [0u8; 6];
    for (m, d) in mac.iter_mut().zip(data.iter()) {
        *m = *d as u8;
    }
    Ok(mac)
}

/// Sends gratuitous ARP (request and reply) for `ip` on `interface`.
fn send_garp(interface: &str, ip: std::net::Ipv4Addr) -> io::Result<()> {
    let idx = ifindex(interface)?;
    let mac = mac_of(interface)?;
    let proto = (libc::ETH_P_ARP as u16).to_be();
    // SAFETY: an AF_PACKET raw socket, closed below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: zeroed sockaddr_ll is valid; fields set below.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = idx as i32;
    sll.sll_halen = 6;
    sll.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    let mut result = Ok(());
    for op in [Operation::Request, Operation::Reply] {
        let mut buf = [0u8; 64];
        let n = ArpRepr::gratuitous(op, mac, ip).emit(&mut buf).expect("64 bytes hold an ARP frame");
        // SAFETY: sendto with a valid buffer and sockaddr_ll.
        let r = unsafe {
            libc::sendto(
                fd,
                buf.as_ptr().cast(),
                n,
                0,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if r < 0 {
            result = Err(io::Error::last_os_error());
        }
    }
    // SAFETY: closing the socket opened above.
    unsafe { libc::close(fd) };
    result
}

/// Sends an unsolicited Neighbor Advertisement for `ip` on `interface` to all nodes (IPv6's
/// gratuitous ARP): hosts that knew `ip` at another MAC switch to this interface's.
fn send_na(interface: &str, ip: std::net::Ipv6Addr) -> io::Result<()> {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let idx = ifindex(interface)?;
    let mac = mac_of(interface)?;
    let s = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))?;
    // Hosts accept neighbor discovery only with hop limit 255 (never routed).
    s.set_multicast_hops_v6(255)?;
    s.set_multicast_if_v6(idx)?;
    // From the address itself (bound once it is on the interface; no DAD, see Netlink::add).
    s.bind(&SockAddr::from(std::net::SocketAddrV6::new(ip, 0, 0, 0)))?;
    let all_nodes = std::net::SocketAddrV6::new(std::net::Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1), 0, 0, idx);
    s.send_to(&crate::wire::ndp::unsolicited_na(ip, mac), &SockAddr::from(all_nodes))?;
    Ok(())
}

/// Sends a tickle ACK to each connection (IPv4 and IPv6); returns how many were sent.
pub fn send_tickles(conns: &[TcpConnection]) -> io::Result<usize> {
    let v6: Vec<_> = conns
        .iter()
        .filter_map(|c| match (c.server, c.client) {
            (SocketAddr::V6(s), SocketAddr::V6(c)) => Some((s, c)),
            _ => None,
        })
        .collect();
    let sent = if v6.is_empty() { 0 } else { send_tickles_v6(&v6)? };
    Ok(sent + send_tickles_v4(conns)?)
}

/// IPv6 tickles: a raw IPv6 socket takes the TCP header only, from the public address it is
/// bound to (one socket per address).
fn send_tickles_v6(conns: &[(std::net::SocketAddrV6, std::net::SocketAddrV6)]) -> io::Result<usize> {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let mut sent = 0;
    let mut by_vip: BTreeMap<std::net::Ipv6Addr, Vec<_>> = BTreeMap::new();
    for (s, c) in conns {
        by_vip.entry(*s.ip()).or_default().push((*s, *c));
    }
    for (vip, conns) in by_vip {
        let s = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::TCP))?;
        s.bind(&SockAddr::from(std::net::SocketAddrV6::new(vip, 0, 0, 0)))?;
        for (server, client) in conns {
            let segment = crate::wire::tickle::tickle_v6(server, client);
            // The port of a raw socket's destination must be 0 (or the protocol number).
            let to = std::net::SocketAddrV6::new(*client.ip(), 0, 0, client.scope_id());
            if s.send_to(&segment, &SockAddr::from(to)).is_ok() {
                sent += 1;
            }
        }
    }
    Ok(sent)
}

/// IPv4 tickles: a raw IPv4 socket with the whole packet; returns how many were sent.
fn send_tickles_v4(conns: &[TcpConnection]) -> io::Result<usize> {
    if !conns.iter().any(|c| matches!((c.server, c.client), (SocketAddr::V4(_), SocketAddr::V4(_)))) {
        return Ok(0);
    }
    // SAFETY: a raw IPv4 socket (IPPROTO_RAW implies IP_HDRINCL), closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut sent = 0;
    for c in conns {
        let (SocketAddr::V4(server), SocketAddr::V4(client)) = (c.server, c.client) else {
            continue; // IPv6: send_tickles_v6
        };
        let mut buf = [0u8; 64];
        let n = TcpSegment::tickle(server, client).emit(&mut buf).expect("64 bytes hold a tickle");
        // SAFETY: zeroed sockaddr_in is valid; fields set below.
        let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        sin.sin_family = libc::AF_INET as u16;
        sin.sin_addr.s_addr = u32::from(*client.ip()).to_be();
        // SAFETY: sendto with a valid buffer and sockaddr_in.
        let r = unsafe {
            libc::sendto(
                fd,
                buf.as_ptr().cast(),
                n,
                0,
                (&sin as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as u32,
            )
        };
        if r >= 0 {
            sent += 1;
        }
    }
    // SAFETY: closing the socket opened above.
    unsafe { libc::close(fd) };
    Ok(sent)
}

/// Runs `script EVENT DETAILS...` without waiting; logs a failure or non-zero exit.
pub fn run_notify(script: &PathBuf, event: &str, details: &[String]) {
    let mut cmd = std::process::Command::new(script);
    cmd.arg(event).args(details).stdin(std::process::Stdio::null());
    match cmd.spawn() {
        Ok(mut child) => {
            let script = script.clone();
            let event = event.to_string();
            std::thread::spawn(move || match child.wait() {
                Ok(s) if s.success() => {}
                Ok(s) => tracing::warn!(script = %script.display(), event, status = %s, "notify script failed"),
                Err(e) => tracing::warn!(script = %script.display(), event, error = %e, "notify script failed"),
            });
        }
        Err(e) => tracing::warn!(script = %script.display(), event, error = %e, "cannot run notify script"),
    }
}

/// The daemon's side effects.
pub struct SystemEffects {
    socket: UdpSocket,
    key: ClusterKey,
    peers: Vec<SocketAddr>,
    public: BTreeMap<IpAddr, PublicAddress>,
    netlink: Netlink,
    lock_ops: mpsc::Sender<LockOp>,
    notify_script: Option<PathBuf>,
    connections: std::sync::Arc<crate::connections::ConnectionTable>,
}

impl SystemEffects {
    /// Effects for a node: `socket` to send on, `peers` the other nodes' cluster addresses,
    /// outcomes of lock operations go to `events`.
    // Each argument is one distinct resource the effects own; a builder would add nothing.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        socket: UdpSocket,
        key: ClusterKey,
        peers: Vec<SocketAddr>,
        public: &[PublicAddress],
        lock: Box<dyn ClusterLock>,
        events: tokio::sync::mpsc::UnboundedSender<Event>,
        notify_script: Option<PathBuf>,
        connections: std::sync::Arc<crate::connections::ConnectionTable>,
    ) -> io::Result<SystemEffects> {
        let (tx, rx) = mpsc::channel::<LockOp>();
        std::thread::Builder::new().name("ha-lock".into()).spawn(move || {
            let mut lock = lock;
            for op in rx {
                let outcome = match op {
                    LockOp::Take => Some(lock.take()),
                    LockOp::Check => Some(lock.check()),
                    LockOp::Release => {
                        lock.release();
                        None
                    }
                };
                if let Some(o) = outcome {
                    if events.send(Event::Lock(o)).is_err() {
                        break;
                    }
                }
            }
            lock.release();
        })?;
        Ok(SystemEffects {
            socket,
            key,
            peers,
            public: public.iter().map(|p| (p.address, p.clone())).collect(),
            netlink: Netlink::new()?,
            lock_ops: tx,
            notify_script,
            connections,
        })
    }

    /// Removes every configured public address found on this host (left by a crashed run).
    pub fn release_leftovers(&mut self) {
        let local = crate::self_id::local_addresses().unwrap_or_default();
        let leftovers: Vec<IpAddr> = self.public.keys().filter(|a| local.contains(a)).copied().collect();
        for a in leftovers {
            tracing::info!(address = %a, "removing public address left over from an earlier run");
            self.release_address(a, &[]);
        }
    }
}

impl Effects for SystemEffects {
    fn send(&mut self, msg: &Message) {
        let d = seal(&self.key, msg);
        for p in &self.peers {
            // Loss is normal (a peer down); heartbeats repeat.
            let _ = self.socket.send_to(&d, p);
        }
    }

    fn take_address(&mut self, address: IpAddr, tickle: &[TcpConnection]) {
        let Some(p) = self.public.get(&address).cloned() else { return };
        let idx = match ifindex(&p.interface) {
            Ok(i) => i,
            Err(e) => {
                tracing::error!(%address, interface = %p.interface, error = %e, "cannot take public address: no such interface");
                return;
            }
        };
        if let Err(e) = self.netlink.add(idx, &p) {
            tracing::error!(%address, error = %e, "cannot add public address");
            return;
        }
        tracing::info!(%address, interface = %p.interface, tickles = tickle.len(), "took public address");
        let tickle = tickle.to_vec();
        std::thread::spawn(move || {
            for round in 0..ANNOUNCE_ROUNDS {
                let announced = match address {
                    IpAddr::V4(v4) => send_garp(&p.interface, v4),
                    IpAddr::V6(v6) => send_na(&p.interface, v6),
                };
                if let Err(e) = announced {
                    tracing::warn!(%address, error = %e, "announcing the address (ARP/NDP) failed");
                }
                match send_tickles(&tickle) {
                    Ok(n) if round == 0 && n > 0 => tracing::info!(%address, sent = n, "tickle ACKs sent"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(%address, error = %e, "tickle ACKs failed"),
                }
                std::thread::sleep(ANNOUNCE_GAP);
            }
        });
    }

    fn release_address(&mut self, address: IpAddr, reset: &[TcpConnection]) {
        match self.netlink.remove(&address) {
            Ok(_) => tracing::info!(%address, connections = reset.len(), "released public address"),
            Err(e) => tracing::error!(%address, error = %e, "cannot remove public address"),
        }
        // Close our side of every connection on it; the clients are reset by the new owner's
        // tickle (it knows them from our replicated table) and reconnect there.
        let n = self.connections.reset(address);
        if n > 0 {
            tracing::info!(%address, connections = n, "connections on the released address closed");
        }
    }

    fn lock(&mut self, op: LockOp) {
        let _ = self.lock_ops.send(op);
    }

    fn notify(&mut self, event: &str, details: &[String]) {
        tracing::info!(event, details = %details.join(" "), "cluster event");
        if let Some(s) = &self.notify_script {
            run_notify(s, event, details);
        }
    }
}
