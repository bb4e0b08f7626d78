//! How a node finds itself in `[cluster] nodes`: the first listed address that one of its own
//! interfaces carries. Every node reads the same list, so the index is a stable node number (pnn).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The node number of this host: the index of the first node address found among `local`.
pub fn find_self(nodes: &[IpAddr], local: &[IpAddr]) -> Option<u32> {
    nodes.iter().position(|n| local.contains(n)).map(|i| i as u32)
}

/// Every address on this host's interfaces (in the current network namespace).
pub fn local_addresses() -> io::Result<Vec<IpAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, valid until freeifaddrs.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points at a sockaddr whose family tells its real type.
            match i32::from(unsafe { (*ifa.ifa_addr).sa_family }) {
                libc::AF_INET => {
                    let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                    out.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))));
                }
                libc::AF_INET6 => {
                    let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                    out.push(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
                }
                _ => {}
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_listed_local_address_wins() {
        let nodes: Vec<IpAddr> = ["10.0.0.1", "10.0.0.2", "10.0.0.3"].iter().map(|s| s.parse().unwrap()).collect();
        let local: Vec<IpAddr> = ["127.0.0.1", "10.0.0.3", "10.0.0.2"].iter().map(|s| s.parse().unwrap()).collect();
        assert_eq!(find_self(&nodes, &local), Some(1));
        assert_eq!(find_self(&nodes, &local[..1]), None);
    }

    #[test]
    fn loopback_is_among_local_addresses() {
        let local = local_addresses().unwrap();
        assert!(local.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)), "{local:?}");
    }
}
