//! The tickle ACK: an IPv4 + TCP segment from `VIP:port` to a client, flags ACK, seq 0, ack 0.
//!
//! The new owner of a public address does not know the sequence numbers of the connections the
//! old owner had. The client, seeing an out-of-window ACK, answers with its own correct ACK; that
//! reaches our kernel, which has no such connection and answers RST; the client's connection
//! breaks at once and it reconnects, instead of waiting for TCP retransmission timeouts.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};

use super::{checksum_add, checksum_finish, WireError};

/// IPv4 header (20) + TCP header (20).
pub const FRAME_LEN: usize = 40;
/// The window the tickle advertises (CTDB uses 1234 too; any value works).
pub const WINDOW: u16 = 1234;

/// A bare TCP segment over IPv4 (no options, no payload).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpSegment {
    /// Source address and port (the public address and service port).
    pub src: SocketAddrV4,
    /// Destination (the client).
    pub dst: SocketAddrV4,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgement number.
    pub ack: u32,
    /// TCP flags (ACK = 0x10, RST = 0x04).
    pub flags: u8,
    /// Receive window.
    pub window: u16,
}

/// TCP ACK flag.
pub const FLAG_ACK: u8 = 0x10;
/// TCP RST flag.
pub const FLAG_RST: u8 = 0x04;

impl TcpSegment {
    /// The tickle ACK from `vip` to `client`.
    pub fn tickle(vip: SocketAddrV4, client: SocketAddrV4) -> TcpSegment {
        TcpSegment { src: vip, dst: client, seq: 0, ack: 0, flags: FLAG_ACK, window: WINDOW }
    }

    /// Writes the IPv4 packet (header + TCP) into `buf`; returns its length.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, WireError> {
        let b = buf.get_mut(..FRAME_LEN).ok_or(WireError::Truncated)?;
        b.fill(0);
        b[0] = 0x45;
        b[2..4].copy_from_slice(&(FRAME_LEN as u16).to_be_bytes());
        b[6] = 0x40; // don't fragment
        b[8] = 64;
        b[9] = 6;
        b[12..16].copy_from_slice(&self.src.ip().octets());
        b[16..20].copy_from_slice(&self.dst.ip().octets());
        let ip_sum = checksum_finish(checksum_add(0, &b[..20]));
        b[10..12].copy_from_slice(&ip_sum.to_be_bytes());
        let t = &mut b[20..40];
        t[0..2].copy_from_slice(&self.src.port().to_be_bytes());
        t[2..4].copy_from_slice(&self.dst.port().to_be_bytes());
        t[4..8].copy_from_slice(&self.seq.to_be_bytes());
        t[8..12].copy_from_slice(&self.ack.to_be_bytes());
        t[12] = 5 << 4;
        t[13] = self.flags;
        t[14..16].copy_from_slice(&self.window.to_be_bytes());
        let sum = tcp_checksum(*self.src.ip(), *self.dst.ip(), &b[20..40]);
        b[36..38].copy_from_slice(&sum.to_be_bytes());
        Ok(FRAME_LEN)
    }

    /// Reads an IPv4 packet carrying TCP; checks both checksums. Options are skipped.
    pub fn parse(b: &[u8]) -> Result<TcpSegment, WireError> {
        if b.len() < 20 {
            return Err(WireError::Truncated);
        }
        if b[0] >> 4 != 4 {
            return Err(WireError::Malformed("ip version"));
        }
        let ihl = usize::from(b[0] & 0x0f) * 4;
        let total = usize::from(u16::from_be_bytes([b[2], b[3]]));
        if ihl < 20 || total < ihl + 20 || b.len() < total {
            return Err(WireError::Truncated);
        }
        if b[9] != 6 {
            return Err(WireError::Malformed("not tcp"));
        }
        if checksum_finish(checksum_add(0, &b[..ihl])) != 0 {
            return Err(WireError::Malformed("ip checksum"));
        }
        let src_ip = Ipv4Addr::new(b[12], b[13], b[14], b[15]);
        let dst_ip = Ipv4Addr::new(b[16], b[17], b[18], b[19]);
        let t = &b[ihl..total];
        let doff = usize::from(t[12] >> 4) * 4;
        if doff < 20 || doff > t.len() {
            return Err(WireError::Malformed("tcp data offset"));
        }
        if tcp_checksum(src_ip, dst_ip, t) != 0 {
            return Err(WireError::Malformed("tcp checksum"));
        }
        let u16at = |i: usize| u16::from_be_bytes([t[i], t[i + 1]]);
        let u32at = |i: usize| u32::from_be_bytes([t[i], t[i + 1], t[i + 2], t[i + 3]]);
        Ok(TcpSegment {
            src: SocketAddrV4::new(src_ip, u16at(0)),
            dst: SocketAddrV4::new(dst_ip, u16at(2)),
            seq: u32at(4),
            ack: u32at(8),
            flags: t[13],
            window: u16at(14),
        })
    }
}

/// The TCP header (20 bytes) of a tickle ACK from `vip` to `client` over IPv6, checksum set:
/// a raw IPv6 socket adds the IP header itself (IPv6 raw sockets never take one).
pub fn tickle_v6(vip: SocketAddrV6, client: SocketAddrV6) -> [u8; TCP_LEN] {
    let mut t = [0u8; TCP_LEN];
    t[0..2].copy_from_slice(&vip.port().to_be_bytes());
    t[2..4].copy_from_slice(&client.port().to_be_bytes());
    t[12] = 5 << 4;
    t[13] = FLAG_ACK;
    t[14..16].copy_from_slice(&WINDOW.to_be_bytes());
    let sum = tcp_checksum_v6(*vip.ip(), *client.ip(), &t);
    t[16..18].copy_from_slice(&sum.to_be_bytes());
    t
}

/// A TCP header without options.
pub const TCP_LEN: usize = 20;

/// TCP checksum with the IPv6 pseudo header (RFC 8200 8.1): over a segment whose checksum field
/// is zero it is the value to store, over a complete segment it is 0 when valid.
pub fn tcp_checksum_v6(src: Ipv6Addr, dst: Ipv6Addr, segment: &[u8]) -> u16 {
    let mut sum = checksum_add(0, &src.octets());
    sum = checksum_add(sum, &dst.octets());
    sum += segment.len() as u32 + 6;
    checksum_finish(checksum_add(sum, segment))
}

/// TCP checksum with the IPv4 pseudo header; over a segment whose checksum field is zero it is
/// the value to store, over a complete segment it is 0 when valid.
fn tcp_checksum(src: Ipv4Addr, dst: Ipv4Addr, segment: &[u8]) -> u16 {
    let mut sum = checksum_add(0, &src.octets());
    sum = checksum_add(sum, &dst.octets());
    sum += 6 + segment.len() as u32;
    checksum_finish(checksum_add(sum, segment))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickle_round_trips_with_valid_checksums() {
        let t = TcpSegment::tickle("198.18.1.1:445".parse().unwrap(), "198.18.0.10:51000".parse().unwrap());
        let mut buf = [0u8; 60];
        let n = t.emit(&mut buf).unwrap();
        assert_eq!(n, FRAME_LEN);
        assert_eq!(TcpSegment::parse(&buf[..n]).unwrap(), t);
        assert_eq!((t.seq, t.ack, t.flags), (0, 0, FLAG_ACK));
        let mut bad = buf;
        bad[30] ^= 1;
        assert!(TcpSegment::parse(&bad[..n]).is_err());
        for k in 0..n {
            assert!(TcpSegment::parse(&buf[..k]).is_err());
        }
    }

    #[test]
    fn ipv6_tickle_is_an_ack_from_the_vip_with_a_valid_checksum() {
        let (vip, client): (SocketAddrV6, SocketAddrV6) =
            ("[fd18::101]:445".parse().unwrap(), "[fd18::10]:51000".parse().unwrap());
        let t = tickle_v6(vip, client);
        assert_eq!(u16::from_be_bytes([t[0], t[1]]), 445);
        assert_eq!(u16::from_be_bytes([t[2], t[3]]), 51000);
        assert_eq!(&t[4..12], &[0; 8], "seq 0, ack 0");
        assert_eq!((t[12], t[13]), (5 << 4, FLAG_ACK));
        assert_eq!(tcp_checksum_v6(*vip.ip(), *client.ip(), &t), 0, "a valid segment sums to 0");
        assert_ne!(tcp_checksum_v6(*client.ip(), "fd18::102".parse().unwrap(), &t), 0, "bound to its addresses");
    }

    #[test]
    fn known_ip_header_checksum() {
        // Example header from RFC 1071 discussions (Wikipedia's IPv4 header checksum example).
        let h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0, 0, 0xc0, 0xa8, 0x00, 0x01, 0xc0, 0xa8, 0x00,
            0xc7,
        ];
        assert_eq!(checksum_finish(checksum_add(0, &h)), 0xb861);
    }
}
