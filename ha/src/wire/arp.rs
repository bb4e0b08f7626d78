//! Ethernet + ARP frames for gratuitous ARP: after adding a public address, the new owner
//! broadcasts "VIP is at my MAC" as a request and as a reply (CTDB sends both, since some
//! hosts only update their caches from one kind), so clients and switches forget the old owner.

use std::net::Ipv4Addr;

use super::WireError;

/// Ethernet header + ARP for IPv4 over Ethernet.
pub const FRAME_LEN: usize = 14 + 28;
/// EtherType of ARP.
pub const ETHERTYPE_ARP: u16 = 0x0806;

/// ARP operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Who has?
    Request,
    /// Is at.
    Reply,
}

/// An Ethernet/IPv4 ARP frame's meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpRepr {
    /// Request or reply.
    pub operation: Operation,
    /// Sender hardware (MAC) address.
    pub source_mac: [u8; 6],
    /// Sender protocol address.
    pub source_ip: Ipv4Addr,
    /// Target hardware address.
    pub target_mac: [u8; 6],
    /// Target protocol address.
    pub target_ip: Ipv4Addr,
    /// Ethernet destination.
    pub eth_dst: [u8; 6],
}

impl ArpRepr {
    /// The gratuitous announcement of `ip` at `mac`: broadcast, sender = target = `ip`.
    pub fn gratuitous(operation: Operation, mac: [u8; 6], ip: Ipv4Addr) -> ArpRepr {
        let target_mac = match operation {
            Operation::Request => [0; 6],
            Operation::Reply => mac,
        };
        ArpRepr { operation, source_mac: mac, source_ip: ip, target_mac, target_ip: ip, eth_dst: [0xff; 6] }
    }

    /// Writes the frame into `buf` (at least [`FRAME_LEN`] bytes); returns its length.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, WireError> {
        let b = buf.get_mut(..FRAME_LEN).ok_or(WireError::Truncated)?;
        b[0..6].copy_from_slice(&self.eth_dst);
        b[6..12].copy_from_slice(&self.source_mac);
        b[12..14].copy_from_slice(&ETHERTYPE_ARP.to_be_bytes());
        b[14..16].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
        b[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
        b[18] = 6;
        b[19] = 4;
        let op: u16 = match self.operation {
            Operation::Request => 1,
            Operation::Reply => 2,
        };
        b[20..22].copy_from_slice(&op.to_be_bytes());
        b[22..28].copy_from_slice(&self.source_mac);
        b[28..32].copy_from_slice(&self.source_ip.octets());
        b[32..38].copy_from_slice(&self.target_mac);
        b[38..42].copy_from_slice(&self.target_ip.octets());
        Ok(FRAME_LEN)
    }

    /// Reads an Ethernet/IPv4 ARP frame (tests use it to watch who answers for an address).
    pub fn parse(b: &[u8]) -> Result<ArpRepr, WireError> {
        if b.len() < FRAME_LEN {
            return Err(WireError::Truncated);
        }
        if b[12..14] != ETHERTYPE_ARP.to_be_bytes() {
            return Err(WireError::Malformed("ethertype"));
        }
        if b[14..16] != [0, 1] || b[16..18] != [8, 0] || b[18] != 6 || b[19] != 4 {
            return Err(WireError::Malformed("arp hardware/protocol"));
        }
        let operation = match u16::from_be_bytes([b[20], b[21]]) {
            1 => Operation::Request,
            2 => Operation::Reply,
            _ => return Err(WireError::Malformed("arp operation")),
        };
        let mac = |r: std::ops::Range<usize>| {
            let mut m = [0u8; 6];
            m.copy_from_slice(&b[r]);
            m
        };
        let ip = |i: usize| Ipv4Addr::new(b[i], b[i + 1], b[i + 2], b[i + 3]);
        Ok(ArpRepr {
            operation,
            eth_dst: mac(0..6),
            source_mac: mac(22..28),
            source_ip: ip(28),
            target_mac: mac(32..38),
            target_ip: ip(38),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gratuitous_request_and_reply_round_trip() {
        let mac = [2, 0, 0, 0, 0, 9];
        let ip = Ipv4Addr::new(198, 18, 1, 1);
        for op in [Operation::Request, Operation::Reply] {
            let r = ArpRepr::gratuitous(op, mac, ip);
            let mut buf = [0u8; 64];
            let n = r.emit(&mut buf).unwrap();
            assert_eq!(n, FRAME_LEN);
            assert_eq!(ArpRepr::parse(&buf[..n]).unwrap(), r);
            assert_eq!(&buf[0..6], &[0xff; 6], "broadcast");
        }
        for n in 0..FRAME_LEN {
            assert!(ArpRepr::parse(&[0u8; FRAME_LEN][..n]).is_err());
        }
        assert!(ArpRepr::gratuitous(Operation::Reply, mac, ip).emit(&mut [0u8; 10]).is_err());
    }
}
