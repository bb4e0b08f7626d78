//! The unsolicited Neighbor Advertisement (RFC 4861 4.4, 7.2.6) a new owner of an IPv6 public
//! address sends to all nodes: IPv6's gratuitous ARP. With the Override flag set, every host
//! that had the address in its neighbor cache (pointing at the old owner's MAC) takes the new
//! MAC at once, so a client's next segment, its answer to a tickle ACK, reaches the new owner.

use std::net::Ipv6Addr;

/// ICMPv6 type of a Neighbor Advertisement.
pub const NEIGHBOR_ADVERTISEMENT: u8 = 136;
/// NA flag: the advertisement overrides an existing cache entry.
pub const FLAG_OVERRIDE: u8 = 0x20;
/// ICMPv6 header (4) + flags (4) + target (16) + target link-layer address option (8).
pub const NA_LEN: usize = 32;

/// The ICMPv6 message (no IP header: a raw ICMPv6 socket adds it, and the kernel fills in the
/// checksum) announcing that `target` is at `mac`. Send it to ff02::1 with hop limit 255.
pub fn unsolicited_na(target: Ipv6Addr, mac: [u8; 6]) -> [u8; NA_LEN] {
    let mut m = [0u8; NA_LEN];
    m[0] = NEIGHBOR_ADVERTISEMENT;
    m[4] = FLAG_OVERRIDE; // not Solicited, not Router
    m[8..24].copy_from_slice(&target.octets());
    m[24] = 2; // option: target link-layer address
    m[25] = 1; // its length in units of 8 bytes
    m[26..32].copy_from_slice(&mac);
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unsolicited_advertisement_overrides_and_carries_the_mac() {
        let mac = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
        let m = unsolicited_na("fd18::101".parse().unwrap(), mac);
        assert_eq!((m[0], m[1]), (136, 0), "type and code");
        assert_eq!(&m[2..4], &[0, 0], "checksum left to the kernel");
        assert_eq!(m[4] & 0xe0, FLAG_OVERRIDE, "Override, not Solicited, not Router");
        assert_eq!(Ipv6Addr::from(<[u8; 16]>::try_from(&m[8..24]).unwrap()), "fd18::101".parse::<Ipv6Addr>().unwrap());
        assert_eq!(&m[24..26], &[2, 1]);
        assert_eq!(&m[26..], &mac);
    }
}
