//! What the cluster answers for its own name: a pure function from the zone, what is served
//! right now and the question to the answer's sections. No I/O, so every rule is a table test.
//!
//! Rules (the zone is `[dns] name`, e.g. `data.example.com`):
//! - a name outside the zone: REFUSED (we are authoritative for this zone only);
//! - no quorum on the answering node: SERVFAIL, so a resolver asks another server of the
//!   delegation (a cut-off node must not hand out addresses it cannot vouch for);
//! - the apex, A/AAAA: the public addresses of that family whose owner is OK right now, in
//!   the configured order (rotated per query, or fewest connections first); none: NODATA;
//! - the apex, NS: one name per public address, `ns1.ZONE`.., with their addresses as glue
//!   (the site DNS delegates to them; an address answers wherever it floats);
//!   SOA: `ns1.ZONE`, the hostmaster mailbox, the cluster generation as serial;
//! - `nsK.ZONE`, A/AAAA: its public address;
//! - any other type of an existing name: NODATA; any other name in the zone: NXDOMAIN; both
//!   with the SOA in the authority section (negative caching for `ttl`).

use std::net::IpAddr;

use hickory_server::proto::op::ResponseCode;
use hickory_server::proto::rr::rdata::{A, AAAA, NS, SOA};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};

use crate::config::DnsOrder;

/// The zone as configured.
#[derive(Debug, Clone)]
pub struct Zone {
    /// The cluster's name (the zone apex), lowercase, fully qualified.
    pub apex: Name,
    /// Seconds resolvers may cache answers (also the SOA minimum).
    pub ttl: u32,
    /// SOA mailbox.
    pub hostmaster: Name,
    /// Name server names and the public address each stands for (`ns1.ZONE` = first address).
    pub servers: Vec<(Name, IpAddr)>,
    /// Order of addresses in A/AAAA answers.
    pub order: DnsOrder,
}

impl Zone {
    /// The zone for `name` served by `public` addresses.
    pub fn new(
        name: &str,
        ttl: u32,
        hostmaster: Option<&str>,
        public: &[IpAddr],
        order: DnsOrder,
    ) -> Result<Zone, String> {
        let fqdn = |s: &str| -> Result<Name, String> {
            let mut n = Name::from_ascii(s).map_err(|e| format!("`{s}` is not a DNS name: {e}"))?;
            n.set_fqdn(true);
            Ok(n.to_lowercase())
        };
        let apex = fqdn(name)?;
        let hostmaster = match hostmaster {
            Some(h) => fqdn(h)?,
            None => fqdn(&format!("hostmaster.{}", name.trim_end_matches('.')))?,
        };
        let servers = public
            .iter()
            .enumerate()
            .map(|(i, a)| Ok((fqdn(&format!("ns{}.{}", i + 1, name.trim_end_matches('.')))?, *a)))
            .collect::<Result<_, String>>()?;
        Ok(Zone { apex, ttl, hostmaster, servers, order })
    }
}

/// What is served right now, as the answering node sees it.
#[derive(Debug, Clone, Default)]
pub struct Served {
    /// The answering node holds quorum.
    pub quorum: bool,
    /// Public addresses held by an OK node, each with its client connections (cluster-wide).
    pub addresses: Vec<(IpAddr, usize)>,
    /// The SOA serial (the cluster generation).
    pub serial: u32,
}

/// The sections of a response.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// Response code.
    pub code: ResponseCode,
    /// Whether we are authoritative for the name (the AA bit).
    pub authoritative: bool,
    /// Answer section.
    pub answers: Vec<Record>,
    /// Authority section (NS for a referral-like NS answer, SOA for negative answers).
    pub authority: Vec<Record>,
    /// Additional section (glue).
    pub additionals: Vec<Record>,
}

impl Answer {
    fn code(code: ResponseCode) -> Answer {
        Answer { code, authoritative: false, answers: vec![], authority: vec![], additionals: vec![] }
    }
}

fn address_record(name: &Name, ttl: u32, a: IpAddr) -> Record {
    let data = match a {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    };
    Record::from_rdata(name.clone(), ttl, data)
}

fn family(t: RecordType, a: &IpAddr) -> bool {
    matches!((t, a), (RecordType::A, IpAddr::V4(_)) | (RecordType::AAAA, IpAddr::V6(_)))
}

/// The served addresses in answer order: rotated by `turn`; with least-connections, the
/// fewest connections first (ties keep the rotated order, so they still take turns).
pub fn ordered(served: &[(IpAddr, usize)], order: DnsOrder, turn: usize) -> Vec<IpAddr> {
    let mut v: Vec<(IpAddr, usize)> = served.to_vec();
    if !v.is_empty() {
        let k = turn % v.len();
        v.rotate_left(k);
    }
    if order == DnsOrder::LeastConnections {
        v.sort_by_key(|(_, c)| *c);
    }
    v.into_iter().map(|(a, _)| a).collect()
}

/// Answers `qtype` for `qname`. `turn` counts queries (rotation).
pub fn answer(zone: &Zone, served: &Served, qname: &Name, qtype: RecordType, turn: usize) -> Answer {
    let mut qname = qname.to_lowercase();
    qname.set_fqdn(true); // names on the wire are absolute; so are ours
    if !zone.apex.zone_of(&qname) {
        return Answer::code(ResponseCode::Refused);
    }
    if !served.quorum {
        return Answer::code(ResponseCode::ServFail);
    }
    let ttl = zone.ttl;
    let soa = Record::from_rdata(
        zone.apex.clone(),
        ttl,
        RData::SOA(SOA::new(
            zone.servers.first().map_or_else(|| zone.apex.clone(), |(n, _)| n.clone()),
            zone.hostmaster.clone(),
            served.serial,
            3600,
            600,
            86_400,
            ttl,
        )),
    );
    let mut out = Answer {
        code: ResponseCode::NoError,
        authoritative: true,
        answers: vec![],
        authority: vec![],
        additionals: vec![],
    };
    let glue = |out: &mut Vec<Record>| {
        for (n, a) in &zone.servers {
            out.push(address_record(n, ttl, *a));
        }
    };
    let ns_records = || -> Vec<Record> {
        zone.servers.iter().map(|(n, _)| Record::from_rdata(zone.apex.clone(), ttl, RData::NS(NS(n.clone())))).collect()
    };
    if qname == zone.apex {
        let addresses = ordered(&served.addresses, zone.order, turn);
        match qtype {
            RecordType::A | RecordType::AAAA => {
                out.answers = addresses
                    .iter()
                    .filter(|a| family(qtype, a))
                    .map(|a| address_record(&zone.apex, ttl, *a))
                    .collect();
            }
            RecordType::NS => {
                out.answers = ns_records();
                glue(&mut out.additionals);
            }
            RecordType::SOA => out.answers.push(soa.clone()),
            RecordType::ANY => {
                out.answers = addresses.iter().map(|a| address_record(&zone.apex, ttl, *a)).collect();
                out.answers.extend(ns_records());
                out.answers.push(soa.clone());
            }
            _ => {}
        }
        if out.answers.is_empty() {
            out.authority.push(soa);
        }
        return out;
    }
    if let Some((name, addr)) = zone.servers.iter().find(|(n, _)| *n == qname) {
        if qtype == RecordType::ANY || family(qtype, addr) {
            out.answers.push(address_record(name, ttl, *addr));
        } else {
            out.authority.push(soa);
        }
        return out;
    }
    out.code = ResponseCode::NXDomain;
    out.authority.push(soa);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone(order: DnsOrder) -> Zone {
        let public: Vec<IpAddr> =
            ["198.18.1.1", "198.18.1.2", "198.18.1.3", "fd18::1"].iter().map(|a| a.parse().unwrap()).collect();
        Zone::new("Data.Example.com", 1, None, &public, order).unwrap()
    }

    fn served(addrs: &[(&str, usize)]) -> Served {
        Served { quorum: true, addresses: addrs.iter().map(|(a, c)| (a.parse().unwrap(), *c)).collect(), serial: 7 }
    }

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn addresses(a: &Answer) -> Vec<String> {
        a.answers
            .iter()
            .map(|r| match r.data {
                RData::A(A(v4)) => v4.to_string(),
                RData::AAAA(AAAA(v6)) => v6.to_string(),
                ref other => format!("{other}"),
            })
            .collect()
    }

    #[test]
    fn the_apex_answers_the_served_addresses_of_the_asked_family() {
        let z = zone(DnsOrder::RoundRobin);
        let s = served(&[("198.18.1.1", 0), ("198.18.1.3", 0), ("fd18::1", 0)]);
        let a = answer(&z, &s, &name("data.example.com."), RecordType::A, 0);
        assert_eq!((a.code, a.authoritative), (ResponseCode::NoError, true));
        assert_eq!(addresses(&a), ["198.18.1.1", "198.18.1.3"], "198.18.1.2 is not served");
        assert!(a.answers.iter().all(|r| r.ttl == 1 && r.name == name("data.example.com.")));
        let a = answer(&z, &s, &name("DATA.example.COM"), RecordType::AAAA, 0);
        assert_eq!(addresses(&a), ["fd18::1"], "names compare without case");
        let none = answer(&z, &served(&[("fd18::1", 0)]), &name("data.example.com."), RecordType::A, 0);
        assert_eq!(
            (none.code, none.answers.len(), none.authority.len()),
            (ResponseCode::NoError, 0, 1),
            "NODATA + SOA"
        );
    }

    #[test]
    fn round_robin_rotates_and_least_connections_puts_the_idlest_first() {
        let s = [
            ("198.18.1.1".parse().unwrap(), 5),
            ("198.18.1.2".parse().unwrap(), 0),
            ("198.18.1.3".parse().unwrap(), 0),
        ];
        let first = |order, turn| ordered(&s, order, turn)[0].to_string();
        let rr: Vec<String> = (0..4).map(|t| first(DnsOrder::RoundRobin, t)).collect();
        assert_eq!(rr, ["198.18.1.1", "198.18.1.2", "198.18.1.3", "198.18.1.1"]);
        let lc: Vec<String> = (0..4).map(|t| first(DnsOrder::LeastConnections, t)).collect();
        assert_eq!(
            lc,
            ["198.18.1.2", "198.18.1.2", "198.18.1.3", "198.18.1.2"],
            "ties take turns, the busy one never leads"
        );
        assert_eq!(ordered(&s, DnsOrder::LeastConnections, 0).last().unwrap().to_string(), "198.18.1.1");
        assert!(ordered(&[], DnsOrder::RoundRobin, 3).is_empty());
    }

    #[test]
    fn ns_soa_and_glue_support_delegation() {
        let z = zone(DnsOrder::RoundRobin);
        let s = served(&[("198.18.1.1", 0)]);
        let ns = answer(&z, &s, &name("data.example.com."), RecordType::NS, 0);
        assert_eq!(ns.answers.len(), 4);
        assert_eq!(format!("{}", ns.answers[0].data), "ns1.data.example.com.");
        assert_eq!(ns.additionals.len(), 4, "glue for every name server");
        let soa = answer(&z, &s, &name("data.example.com."), RecordType::SOA, 0);
        let RData::SOA(ref rec) = soa.answers[0].data else { panic!("SOA") };
        assert_eq!(
            (rec.serial, rec.mname.to_string(), rec.rname.to_string()),
            (7, "ns1.data.example.com.".into(), "hostmaster.data.example.com.".into())
        );
        let glue = answer(&z, &s, &name("ns2.data.example.com."), RecordType::A, 0);
        assert_eq!(addresses(&glue), ["198.18.1.2"], "a name server's address answers wherever it floats");
        let v6 = answer(&z, &s, &name("ns4.data.example.com."), RecordType::A, 0);
        assert_eq!((v6.answers.len(), v6.authority.len()), (0, 1), "NODATA for the other family");
    }

    #[test]
    fn other_names_types_and_zones() {
        let z = zone(DnsOrder::RoundRobin);
        let s = served(&[("198.18.1.1", 0)]);
        let nx = answer(&z, &s, &name("www.data.example.com."), RecordType::A, 0);
        assert_eq!((nx.code, nx.authority.len()), (ResponseCode::NXDomain, 1));
        let mx = answer(&z, &s, &name("data.example.com."), RecordType::MX, 0);
        assert_eq!((mx.code, mx.answers.len(), mx.authority.len()), (ResponseCode::NoError, 0, 1));
        let out = answer(&z, &s, &name("example.com."), RecordType::A, 0);
        assert_eq!((out.code, out.authoritative), (ResponseCode::Refused, false));
        let any = answer(&z, &s, &name("data.example.com."), RecordType::ANY, 0);
        assert_eq!(any.answers.len(), 1 + 4 + 1);
    }

    #[test]
    fn without_quorum_nothing_is_answered() {
        let z = zone(DnsOrder::RoundRobin);
        let s = Served { quorum: false, ..served(&[("198.18.1.1", 0)]) };
        let a = answer(&z, &s, &name("data.example.com."), RecordType::A, 0);
        assert_eq!((a.code, a.answers.len()), (ResponseCode::ServFail, 0));
    }
}
