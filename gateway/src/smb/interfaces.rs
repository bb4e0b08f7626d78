//! FSCTL_QUERY_NETWORK_INTERFACE_INFO (MS-SMB2 2.2.32.5): the addresses of this node a
//! multichannel client may open further connections to, as channels of its session. A binding
//! is per node ([`super::binding`]), so only this node's own addresses are listed: those of the
//! SMB listener (every up, non-loopback address of the node when it listens on a wildcard
//! address; the address itself otherwise). [`encode`] is pure; [`local`] reads the interfaces.

use std::net::{IpAddr, SocketAddr};

/// FSCTL_QUERY_NETWORK_INTERFACE_INFO.
pub const FSCTL_QUERY_NETWORK_INTERFACE_INFO: u32 = 0x0014_01FC;

/// Link speed reported when the kernel does not know one (a veth, a bridge): 1 Gbit/s, as
/// smbd reports by default.
const DEFAULT_SPEED: u64 = 1_000_000_000;

/// One address of one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// The interface's index (clients group addresses of one interface by it).
    pub index: u32,
    /// Link speed in bits per second.
    pub speed: u64,
    /// The address.
    pub addr: IpAddr,
}

/// The NETWORK_INTERFACE_INFO entries for `ifs`, chained by their Next fields.
pub fn encode(ifs: &[Interface], port: u16) -> Vec<u8> {
    const ENTRY: usize = 152;
    let mut out = Vec::with_capacity(ifs.len() * ENTRY);
    for (i, f) in ifs.iter().enumerate() {
        let next = if i + 1 < ifs.len() { ENTRY as u32 } else { 0 };
        let mut e = [0u8; ENTRY];
        e[0..4].copy_from_slice(&next.to_le_bytes());
        e[4..8].copy_from_slice(&f.index.to_le_bytes());
        // Capability (RSS, RDMA): neither; Reserved.
        e[16..24].copy_from_slice(&f.speed.to_le_bytes());
        // SOCKADDR_STORAGE: family little-endian, then the port and address in network order.
        match f.addr {
            IpAddr::V4(a) => {
                e[24..26].copy_from_slice(&0x0002u16.to_le_bytes());
                e[26..28].copy_from_slice(&port.to_be_bytes());
                e[28..32].copy_from_slice(&a.octets());
            }
            IpAddr::V6(a) => {
                e[24..26].copy_from_slice(&0x0017u16.to_le_bytes());
                e[26..28].copy_from_slice(&port.to_be_bytes());
                e[32..48].copy_from_slice(&a.octets());
            }
        }
        out.extend_from_slice(&e);
    }
    out
}

/// Which of the node's addresses (`(index, address, loopback)`) a listener on `listen`
/// offers. Pure.
pub fn offered(listen: SocketAddr, node: &[(u32, IpAddr, bool)]) -> Vec<(u32, IpAddr)> {
    let ip = listen.ip();
    if !ip.is_unspecified() {
        let index = node.iter().find(|(_, a, _)| *a == ip).map_or(1, |(i, _, _)| *i);
        return vec![(index, ip)];
    }
    node.iter()
        .filter(|(_, a, loopback)| {
            !loopback
                && match a {
                    // An IPv4 wildcard listener takes no IPv6 connection.
                    IpAddr::V6(v6) => ip.is_ipv6() && (v6.segments()[0] & 0xffc0) != 0xfe80,
                    IpAddr::V4(_) => true,
                }
        })
        .map(|(i, a, _)| (*i, *a))
        .collect()
}

/// This node's interfaces a listener on `listen` offers, with their link speeds.
pub fn local(listen: SocketAddr) -> Vec<Interface> {
    let node = addresses();
    offered(listen, &node.iter().map(|(_, i, a, l)| (*i, *a, *l)).collect::<Vec<_>>())
        .into_iter()
        .map(|(index, addr)| {
            let name = node.iter().find(|(_, i, _, _)| *i == index).map(|(n, _, _, _)| n.as_str()).unwrap_or("");
            Interface { index, speed: speed(name), addr }
        })
        .collect()
}

/// The kernel's speed of interface `name` (Mbit/s in sysfs), or [`DEFAULT_SPEED`].
fn speed(name: &str) -> u64 {
    std::fs::read_to_string(format!("/sys/class/net/{name}/speed"))
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .filter(|m| *m > 0)
        .map_or(DEFAULT_SPEED, |m| m as u64 * 1_000_000)
}

/// Every address of an up interface: (name, index, address, loopback).
fn addresses() -> Vec<(String, u32, IpAddr, bool)> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list freed below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, valid until freeifaddrs.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_flags & libc::IFF_UP as u32 == 0 {
            continue;
        }
        // SAFETY: ifa_addr points at a sockaddr whose family tells its real type.
        let addr = match i32::from(unsafe { (*ifa.ifa_addr).sa_family }) {
            libc::AF_INET => {
                // SAFETY: an AF_INET address is a sockaddr_in.
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                IpAddr::from(u32::from_be(sin.sin_addr.s_addr).to_be_bytes())
            }
            libc::AF_INET6 => {
                // SAFETY: an AF_INET6 address is a sockaddr_in6.
                let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                IpAddr::from(sin6.sin6_addr.s6_addr)
            }
            _ => continue,
        };
        // SAFETY: ifa_name is a NUL-terminated name, valid until freeifaddrs.
        let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) };
        // SAFETY: a NUL-terminated name.
        let index = unsafe { libc::if_nametoindex(ifa.ifa_name) };
        let loopback = ifa.ifa_flags & libc::IFF_LOOPBACK as u32 != 0;
        out.push((name.to_string_lossy().into_owned(), index, addr, loopback));
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_follow_ms_smb2_layout() {
        let ifs = [
            Interface { index: 2, speed: 10_000_000_000, addr: "198.18.0.1".parse().unwrap() },
            Interface { index: 3, speed: DEFAULT_SPEED, addr: "2001:db8::1".parse().unwrap() },
        ];
        let b = encode(&ifs, 445);
        assert_eq!(b.len(), 2 * 152);
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        assert_eq!((u32_at(0), u32_at(4), u32_at(152), u32_at(156)), (152, 2, 0, 3), "Next, IfIndex");
        assert_eq!(u64::from_le_bytes(b[16..24].try_into().unwrap()), 10_000_000_000);
        assert_eq!(&b[24..32], &[2, 0, 0x01, 0xbd, 198, 18, 0, 1], "AF_INET, port 445, address");
        assert_eq!(&b[152 + 24..152 + 26], &[0x17, 0], "AF_INET6");
        assert_eq!(&b[152 + 32..152 + 34], &[0x20, 0x01]);
    }

    #[test]
    fn a_wildcard_listener_offers_the_nodes_outside_addresses() {
        let node = [
            (1, "127.0.0.1".parse().unwrap(), true),
            (2, "198.18.0.1".parse().unwrap(), false),
            (2, "fe80::1".parse().unwrap(), false),
            (3, "2001:db8::1".parse().unwrap(), false),
        ];
        let v4: Vec<_> =
            offered("0.0.0.0:445".parse().unwrap(), &node).into_iter().map(|(_, a)| a.to_string()).collect();
        assert_eq!(v4, ["198.18.0.1"]);
        let any: Vec<_> = offered("[::]:445".parse().unwrap(), &node).into_iter().map(|(_, a)| a.to_string()).collect();
        assert_eq!(any, ["198.18.0.1", "2001:db8::1"]);
        assert_eq!(offered("127.0.0.1:445".parse().unwrap(), &node), [(1, "127.0.0.1".parse().unwrap())]);
        assert_eq!(offered("198.18.9.9:445".parse().unwrap(), &node), [(1, "198.18.9.9".parse().unwrap())]);
        assert!(local("127.0.0.1:445".parse().unwrap()).iter().all(|i| i.speed > 0));
    }
}
