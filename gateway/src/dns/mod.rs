//! The cluster answers for its own name (`[dns]`): an authoritative DNS service, as Isilon's
//! SmartConnect does, so the site DNS delegates `data.example.com` to the public addresses
//! instead of an admin keeping a round-robin zone by hand.
//!
//! `hickory-server` (the maintained Rust DNS server library) does the protocol: UDP and TCP,
//! message parsing and encoding, truncation. Our part is [`answer`] (pure: which records for
//! which question) and [`DnsHandler`], which feeds it what this node sees right now through the
//! same [`Handler`] the control socket answers from (node states, quorum, owners and
//! connections per public address). The HA module knows nothing of DNS.
//!
//! Every address is bound on its own socket (with `IP_FREEBIND`, so a public address this node
//! does not hold yet can be bound too): a UDP answer must leave from the address the query was
//! sent to, which a socket on the wildcard address does not guarantee.

pub mod answer;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Header, HeaderCounts, Metadata, OpCode, ResponseCode};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use socket2::{Domain, Protocol, Socket, Type};

use self::answer::{Served, Zone};
use crate::config::{Config, DnsConfig};
use crate::control::{Handler, Request as ControlRequest, Response as ControlResponse};
use crate::daemon::Lifecycle;

/// How long a TCP client may stay idle between queries.
const TCP_IDLE: Duration = Duration::from_secs(10);

/// Answers DNS queries for the zone from the node's live view.
pub struct DnsHandler {
    zone: Zone,
    node: Arc<dyn Handler>,
    turn: AtomicUsize,
}

impl DnsHandler {
    /// A handler for `zone` asking `node` what is served.
    pub fn new(zone: Zone, node: Arc<dyn Handler>) -> Self {
        Self { zone, node, turn: AtomicUsize::new(0) }
    }

    /// What is served right now: public addresses held by an OK node, and quorum.
    pub fn served(&self) -> Served {
        let (ControlResponse::Status(st), ControlResponse::Ip(ip)) =
            (self.node.handle(ControlRequest::Status), self.node.handle(ControlRequest::Ip))
        else {
            return Served::default();
        };
        let ok = |n: u32| st.nodes.iter().any(|s| s.pnn == n && s.state == ha::status::NodeState::Ok);
        Served {
            quorum: st.quorum,
            addresses: ip
                .addresses
                .iter()
                .filter(|a| a.owner.is_some_and(ok))
                .map(|a| (a.address, a.connections))
                .collect(),
            serial: st.generation as u32,
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for DnsHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(&self, request: &Request, mut response: R) -> ResponseInfo {
        let base = Metadata::response_from_request(&request.metadata);
        let builder = MessageResponseBuilder::from_message_request(request);
        let failed = move |code: ResponseCode| {
            let mut m = base;
            m.response_code = code;
            ResponseInfo::from(Header { metadata: m, counts: HeaderCounts::default() })
        };
        let info = match request.request_info() {
            Ok(i) if request.metadata.op_code == OpCode::Query => i,
            Ok(_) => {
                let r = builder.error_msg(&request.metadata, ResponseCode::NotImp);
                return response.send_response(r).await.unwrap_or_else(|_| failed(ResponseCode::NotImp));
            }
            Err(_) => {
                let r = builder.error_msg(&request.metadata, ResponseCode::FormErr);
                return response.send_response(r).await.unwrap_or_else(|_| failed(ResponseCode::FormErr));
            }
        };
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        let a = answer::answer(&self.zone, &self.served(), info.query.name(), info.query.query_type(), turn);
        tracing::debug!(client = %request.src(), name = %info.query.name(), qtype = %info.query.query_type(), code = %a.code, answers = a.answers.len(), "DNS query");
        let mut meta = base;
        meta.response_code = a.code;
        meta.authoritative = a.authoritative;
        let r = builder.build(meta, a.answers.iter(), a.authority.iter(), std::iter::empty(), a.additionals.iter());
        match response.send_response(r).await {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!(error = %e, "DNS: sending an answer failed");
                failed(ResponseCode::ServFail)
            }
        }
    }
}

/// The addresses `[dns] listen` means on this node: the one given, or for an unspecified
/// address every public address plus this node's own cluster addresses (the ones a resolver
/// may be pointed at), each on its own socket.
pub fn bind_addresses(dns: &DnsConfig, public: &[IpAddr], own: &[IpAddr]) -> Vec<SocketAddr> {
    let port = dns.listen.port();
    if !dns.listen.ip().is_unspecified() {
        return vec![dns.listen];
    }
    let mut out: Vec<SocketAddr> = Vec::new();
    for a in public.iter().chain(own) {
        let s = SocketAddr::new(*a, port);
        if !out.contains(&s) {
            out.push(s);
        }
    }
    out
}

fn socket(addr: SocketAddr, ty: Type) -> std::io::Result<Socket> {
    let domain = if addr.is_ipv4() { Domain::IPV4 } else { Domain::IPV6 };
    let proto = if ty == Type::STREAM { Protocol::TCP } else { Protocol::UDP };
    let s = Socket::new(domain, ty, Some(proto))?;
    s.set_reuse_address(true)?;
    if addr.is_ipv4() {
        s.set_freebind_v4(true)?;
    } else {
        s.set_only_v6(true)?;
        s.set_freebind_v6(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(s)
}

/// Starts the DNS service for `[dns]` as a task of `life`.
pub async fn start(
    cfg: &Config,
    dns: &DnsConfig,
    node: Arc<dyn Handler>,
    own: &[IpAddr],
    life: &Lifecycle,
) -> Result<()> {
    let public: Vec<IpAddr> =
        cfg.cluster.as_ref().map(|c| c.public_addresses.iter().map(|p| p.address.addr()).collect()).unwrap_or_default();
    let zone =
        Zone::new(&dns.name, dns.ttl, dns.hostmaster.as_deref(), &public, dns.order).map_err(anyhow::Error::msg)?;
    let mut server = hickory_server::Server::new(DnsHandler::new(zone, node));
    let addrs = bind_addresses(dns, &public, own);
    for addr in &addrs {
        let udp = socket(*addr, Type::DGRAM).with_context(|| format!("cannot bind DNS (UDP) on {addr}"))?;
        server.register_socket(tokio::net::UdpSocket::from_std(udp.into())?);
        let tcp = socket(*addr, Type::STREAM).with_context(|| format!("cannot bind DNS (TCP) on {addr}"))?;
        tcp.listen(128)?;
        server.register_listener(tokio::net::TcpListener::from_std(tcp.into())?, TCP_IDLE, 64 * 1024);
    }
    tracing::info!(name = %dns.name, listen = ?addrs, ttl = dns.ttl, order = ?dns.order, "DNS service answering for the cluster's name");
    let stop = life.stop.clone();
    life.tasks.spawn(async move {
        stop.cancelled().await;
        if let Err(e) = server.shutdown_gracefully().await {
            tracing::debug!(error = %e, "DNS service stopped with an error");
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unspecified_listen_binds_every_public_and_own_address() {
        let dns: DnsConfig = toml::from_str("name = \"data.example.com\"\nlisten = \"0.0.0.0:5353\"\n").unwrap();
        let public: Vec<IpAddr> = vec!["198.18.1.1".parse().unwrap(), "198.18.1.2".parse().unwrap()];
        let own: Vec<IpAddr> = vec!["198.18.0.1".parse().unwrap(), "198.18.1.1".parse().unwrap()];
        let got: Vec<String> = bind_addresses(&dns, &public, &own).iter().map(ToString::to_string).collect();
        assert_eq!(got, ["198.18.1.1:5353", "198.18.1.2:5353", "198.18.0.1:5353"]);
        let one: DnsConfig = toml::from_str("name = \"d.e\"\nlisten = \"127.0.0.1:53\"\n").unwrap();
        assert_eq!(bind_addresses(&one, &public, &own), vec!["127.0.0.1:53".parse().unwrap()]);
    }
}
