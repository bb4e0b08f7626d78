//! The portmapper (program 100000): where stock clients find MOUNT, NFS, NLM and NSM. nasgw
//! answers it itself (`[nfs] portmap_listen`, TCP and UDP) for its own programs only, in the
//! three versions clients use: 2 (GETPORT, DUMP: `mount.nfs`, the kernel's lock manager over
//! IPv4, `rpcinfo -p`) and rpcbind 3 and 4 (GETADDR, DUMP, GETTIME: the kernel over IPv6,
//! `rpcinfo` without `-p`). SET and UNSET are refused: no other service registers here.
//!
//! Answers are a pure function of the table, the call and the address the call came to (a
//! universal address names the public address the client used). Where a host rpcbind already
//! owns port 111, [`register_with_host`] puts nasgw's programs in its table instead.

use std::net::{IpAddr, SocketAddr};

use super::rpc::ReplyStatus;
use super::rpc_client::{IPPROTO_TCP, IPPROTO_UDP, PORTMAP_PROGRAM};
use super::xdr::{XdrError, XdrReader, XdrWriter};

/// One registered program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    /// Program number.
    pub prog: u32,
    /// Version.
    pub vers: u32,
    /// [`IPPROTO_TCP`] or [`IPPROTO_UDP`].
    pub prot: u32,
    /// Port.
    pub port: u16,
}

/// What this portmapper knows.
#[derive(Debug, Clone, Default)]
pub struct Portmap {
    /// The table.
    pub maps: Vec<Mapping>,
}

/// Program numbers (for names in DUMP answers and tables).
pub mod programs {
    /// NFS.
    pub const NFS: u32 = 100_003;
    /// MOUNT.
    pub const MOUNT: u32 = 100_005;
    /// NLM.
    pub const NLM: u32 = super::super::nlm::wire::PROGRAM;
    /// NSM.
    pub const NSM: u32 = super::super::nsm::PROGRAM;
}

impl Portmap {
    /// nasgw's programs: NFS 3 over TCP on `nfs_port`, MOUNT 3, NLM 1/3/4 and NSM 1 over TCP and
    /// UDP on the same port, and the portmapper itself (2, 3, 4) on `portmap_port` if it runs.
    pub fn nasgw(nfs_port: u16, portmap_port: Option<u16>) -> Portmap {
        let mut maps = vec![Mapping { prog: programs::NFS, vers: 3, prot: IPPROTO_TCP, port: nfs_port }];
        for prot in [IPPROTO_TCP, IPPROTO_UDP] {
            maps.push(Mapping { prog: programs::MOUNT, vers: 3, prot, port: nfs_port });
            for vers in [1, 3, 4] {
                maps.push(Mapping { prog: programs::NLM, vers, prot, port: nfs_port });
            }
            maps.push(Mapping { prog: programs::NSM, vers: 1, prot, port: nfs_port });
            if let Some(p) = portmap_port {
                for vers in [2, 3, 4] {
                    maps.push(Mapping { prog: PORTMAP_PROGRAM, vers, prot, port: p });
                }
            }
        }
        Portmap { maps }
    }

    fn port_of(&self, prog: u32, vers: u32, prot: u32) -> u16 {
        self.maps.iter().find(|m| (m.prog, m.vers, m.prot) == (prog, vers, prot)).map_or(0, |m| m.port)
    }

    /// Answers procedure `proc_` of portmapper version `vers` called on address `server`: the
    /// result body, or how to refuse the call.
    pub fn answer(&self, vers: u32, proc_: u32, args: &[u8], server: IpAddr) -> Result<Vec<u8>, ReplyStatus> {
        let mut w = XdrWriter::default();
        let garbage = |_: XdrError| ReplyStatus::GarbageArgs;
        match (vers, proc_) {
            (2..=4, 0) => {}
            // SET / UNSET: only nasgw's own programs live here.
            (2..=4, 1 | 2) => {
                w.bool(false);
            }
            (2, 3) => {
                let r = &mut XdrReader::new(args);
                let (prog, v, prot) = (r.u32().map_err(garbage)?, r.u32().map_err(garbage)?, r.u32().map_err(garbage)?);
                w.u32(u32::from(self.port_of(prog, v, prot)));
            }
            (2, 4) => {
                for m in &self.maps {
                    w.bool(true).u32(m.prog).u32(m.vers).u32(m.prot).u32(u32::from(m.port));
                }
                w.bool(false);
            }
            // GETADDR (3, 4) and GETVERSADDR (4).
            (3 | 4, 3) | (4, 9) => {
                let (prog, v, netid) = decode_rpcb(args).map_err(garbage)?;
                let uaddr = match prot_of(netid) {
                    Some(prot) => match self.port_of(prog, v, prot) {
                        0 => String::new(),
                        port => universal_address(SocketAddr::new(server, port)),
                    },
                    None => String::new(),
                };
                w.opaque(uaddr.as_bytes());
            }
            (3 | 4, 4) => {
                for m in &self.maps {
                    let netid = netid_of(m.prot, server);
                    let uaddr = universal_address(SocketAddr::new(server, m.port));
                    w.bool(true).u32(m.prog).u32(m.vers).opaque(netid.as_bytes()).opaque(uaddr.as_bytes());
                    w.opaque(b"superuser");
                }
                w.bool(false);
            }
            (3 | 4, 6) => {
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                w.u32(now.as_secs() as u32);
            }
            (2..=4, _) => return Err(ReplyStatus::ProcUnavail),
            _ => return Err(ReplyStatus::ProgMismatch(2, 4)),
        }
        Ok(w.buf)
    }
}

/// `rpcb` arguments: program, version, netid (the address and owner are not used).
fn decode_rpcb(args: &[u8]) -> Result<(u32, u32, &[u8]), XdrError> {
    let r = &mut XdrReader::new(args);
    let prog = r.u32()?;
    let vers = r.u32()?;
    let netid = r.opaque(64)?;
    r.opaque(256)?;
    r.opaque(256)?;
    Ok((prog, vers, netid))
}

fn prot_of(netid: &[u8]) -> Option<u32> {
    match netid {
        b"tcp" | b"tcp6" => Some(IPPROTO_TCP),
        b"udp" | b"udp6" => Some(IPPROTO_UDP),
        _ => None,
    }
}

fn netid_of(prot: u32, server: IpAddr) -> &'static str {
    match (prot, server.is_ipv6()) {
        (IPPROTO_TCP, false) => "tcp",
        (IPPROTO_TCP, true) => "tcp6",
        (_, false) => "udp",
        (_, true) => "udp6",
    }
}

/// An RPC universal address: `h1.h2.h3.h4.p1.p2` (IPv4) or `v6addr.p1.p2`.
pub fn universal_address(a: SocketAddr) -> String {
    format!("{}.{}.{}", a.ip().to_canonical(), a.port() >> 8, a.port() & 0xff)
}

/// nasgw's program versions in `map` (not the portmapper itself), each once.
fn versions(map: &Portmap) -> Vec<(u32, u32)> {
    let mut v: Vec<(u32, u32)> =
        map.maps.iter().filter(|m| m.prog != PORTMAP_PROGRAM).map(|m| (m.prog, m.vers)).collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// Whether the host rpcbind at `pmap` maps `prog`/`vers` on some protocol (`.0`) and whether
/// any of those mappings is another service's, not on a port of `map` (`.1`).
async fn registered(pmap: SocketAddr, map: &Portmap, prog: u32, vers: u32) -> Result<(bool, bool), String> {
    let (mut any, mut foreign) = (false, false);
    for prot in [IPPROTO_TCP, IPPROTO_UDP] {
        let port = super::rpc_client::getport(None, pmap.ip(), prog, vers, prot).await.map_err(|e| e.to_string())?;
        any |= port != 0;
        foreign |= port != 0 && !map.maps.iter().any(|m| m.prog == prog && m.vers == vers && m.port == port);
    }
    Ok((any, foreign))
}

/// Puts nasgw's programs (`map`, except the portmapper itself) in the table of the host's
/// rpcbind at `pmap`, replacing what an earlier run left there (mappings on nasgw's own ports).
/// Returns the programs it refused (another service, e.g. a host rpc.statd, already holds
/// them: left alone); `Err` when no portmapper answers.
pub async fn register_with_host(pmap: SocketAddr, map: &Portmap) -> Result<Vec<Mapping>, String> {
    use super::rpc_client::pmap_set;
    // UNSET drops a program version on every protocol at once: clear each stale version first,
    // then register every protocol.
    for (prog, vers) in versions(map) {
        if let (true, false) = registered(pmap, map, prog, vers).await? {
            pmap_set(pmap, false, prog, vers, 0, 0).await.map_err(|e| e.to_string())?;
        }
    }
    let mut refused = Vec::new();
    for m in map.maps.iter().filter(|m| m.prog != PORTMAP_PROGRAM) {
        if !pmap_set(pmap, true, m.prog, m.vers, m.prot, m.port).await.map_err(|e| e.to_string())? {
            refused.push(*m);
        }
    }
    Ok(refused)
}

/// Removes nasgw's programs from the host rpcbind's table (at a clean stop); another
/// service's registrations of the same programs stay.
pub async fn unregister_from_host(pmap: SocketAddr, map: &Portmap) {
    for (prog, vers) in versions(map) {
        if let Ok((true, false)) = registered(pmap, map, prog, vers).await {
            let _ = super::rpc_client::pmap_set(pmap, false, prog, vers, 0, 0).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> IpAddr {
        "198.18.1.2".parse().unwrap()
    }

    #[test]
    fn getport_knows_every_program_on_each_protocol() {
        let p = Portmap::nasgw(2049, Some(111));
        let ask = |prog: u32, vers: u32, prot: u32| {
            let mut a = XdrWriter::default();
            a.u32(prog).u32(vers).u32(prot).u32(0);
            let body = p.answer(2, 3, &a.buf, server()).unwrap();
            XdrReader::new(&body).u32().unwrap()
        };
        assert_eq!(ask(programs::NFS, 3, IPPROTO_TCP), 2049);
        assert_eq!(ask(programs::NFS, 3, IPPROTO_UDP), 0, "no NFS over UDP");
        assert_eq!(ask(programs::NLM, 4, IPPROTO_UDP), 2049);
        assert_eq!(ask(programs::NLM, 1, IPPROTO_TCP), 2049);
        assert_eq!(ask(programs::NLM, 2, IPPROTO_TCP), 0);
        assert_eq!(ask(programs::NSM, 1, IPPROTO_UDP), 2049);
        assert_eq!(ask(PORTMAP_PROGRAM, 2, IPPROTO_UDP), 111);
        assert_eq!(p.answer(2, 3, &[0, 0], server()), Err(ReplyStatus::GarbageArgs));
        assert_eq!(p.answer(2, 5, &[], server()), Err(ReplyStatus::ProcUnavail), "no CALLIT");
        assert_eq!(p.answer(5, 0, &[], server()), Err(ReplyStatus::ProgMismatch(2, 4)));
    }

    #[test]
    fn rpcbind_getaddr_names_the_address_the_client_used() {
        let p = Portmap::nasgw(2049, None);
        let mut a = XdrWriter::default();
        a.u32(programs::NLM).u32(4).opaque(b"tcp").opaque(b"").opaque(b"");
        let body = p.answer(4, 3, &a.buf, server()).unwrap();
        assert_eq!(XdrReader::new(&body).opaque(64).unwrap(), b"198.18.1.2.8.1");
        let v6: IpAddr = "fd18::101".parse().unwrap();
        let mut a6 = XdrWriter::default();
        a6.u32(programs::NSM).u32(1).opaque(b"udp6").opaque(b"").opaque(b"");
        let body = p.answer(3, 3, &a6.buf, v6).unwrap();
        assert_eq!(XdrReader::new(&body).opaque(64).unwrap(), b"fd18::101.8.1");
        let mut none = XdrWriter::default();
        none.u32(programs::NFS).u32(3).opaque(b"udp").opaque(b"").opaque(b"");
        assert_eq!(p.answer(4, 3, &none.buf, server()).unwrap(), [0, 0, 0, 0]);
    }

    #[test]
    fn dumps_list_every_mapping_once() {
        let p = Portmap::nasgw(2049, Some(111));
        let body = p.answer(2, 4, &[], server()).unwrap();
        let r = &mut XdrReader::new(&body);
        let mut n = 0;
        while r.bool().unwrap() {
            for _ in 0..4 {
                r.u32().unwrap();
            }
            n += 1;
        }
        assert_eq!(n, p.maps.len());
        assert_eq!(r.remaining(), 0);
        let body = p.answer(3, 4, &[], server()).unwrap();
        let r = &mut XdrReader::new(&body);
        let mut n = 0;
        while r.bool().unwrap() {
            r.u32().unwrap();
            r.u32().unwrap();
            let netid = r.opaque(64).unwrap().to_vec();
            assert!(netid == b"tcp" || netid == b"udp");
            r.opaque(64).unwrap();
            assert_eq!(r.opaque(64).unwrap(), b"superuser");
            n += 1;
        }
        assert_eq!(n, p.maps.len());
    }
}
