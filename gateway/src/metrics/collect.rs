//! The Prometheus collector: reads the hot-path tables and asks the node for its cluster view
//! at scrape time, and encodes both with `prometheus-client`.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::{ProtocolStats, CONNECTIONS, MOUNT, NFS, SMB, STARTED, VOLUME};
use crate::control::{Handler, Request, Response};

/// What the collector asks the running node at scrape time.
pub struct NodeSource {
    /// The control socket's handler: `status` and `ip`.
    pub node: Arc<dyn Handler>,
    /// Files with opens or byte-range locks in the lock table now.
    pub lock_files: Box<dyn Fn() -> usize + Send + Sync>,
}

impl std::fmt::Debug for NodeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeSource")
    }
}

/// A registry holding nasgw's collector.
pub fn registry(source: NodeSource) -> Registry {
    let mut r = Registry::default();
    r.register_collector(Box::new(NodeCollector(source)));
    r
}

/// Encodes every nasgw metric on each scrape.
#[derive(Debug)]
struct NodeCollector(NodeSource);

type Labels<'a> = Vec<(&'a str, String)>;

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, rows: &[(Labels<'_>, u64)]) -> std::fmt::Result {
    if rows.is_empty() {
        return Ok(());
    }
    let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in rows {
        ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, rows: &[(Labels<'_>, i64)]) -> std::fmt::Result {
    if rows.is_empty() {
        return Ok(());
    }
    let mut m = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in rows {
        ConstGauge::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge_f(e: &mut DescriptorEncoder, name: &str, help: &str, v: f64) -> std::fmt::Result {
    let m = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(v).encode(m)
}

/// The status label of a reply: NFS3ERR_* names, SMB NTSTATUS in hex.
fn status_label(p: &ProtocolStats, code: Option<u32>) -> String {
    match code {
        None => "other".to_string(),
        Some(c) if p.name == "smb" => format!("0x{c:08X}"),
        Some(c) => nfs_status_name(c).map_or_else(|| c.to_string(), str::to_string),
    }
}

/// RFC 1813 names of nfsstat3 values (MOUNT's mountstat3 values share the low ones).
pub fn nfs_status_name(code: u32) -> Option<&'static str> {
    Some(match code {
        1 => "NFS3ERR_PERM",
        2 => "NFS3ERR_NOENT",
        5 => "NFS3ERR_IO",
        6 => "NFS3ERR_NXIO",
        13 => "NFS3ERR_ACCES",
        17 => "NFS3ERR_EXIST",
        18 => "NFS3ERR_XDEV",
        19 => "NFS3ERR_NODEV",
        20 => "NFS3ERR_NOTDIR",
        21 => "NFS3ERR_ISDIR",
        22 => "NFS3ERR_INVAL",
        27 => "NFS3ERR_FBIG",
        28 => "NFS3ERR_NOSPC",
        30 => "NFS3ERR_ROFS",
        31 => "NFS3ERR_MLINK",
        63 => "NFS3ERR_NAMETOOLONG",
        66 => "NFS3ERR_NOTEMPTY",
        69 => "NFS3ERR_DQUOT",
        70 => "NFS3ERR_STALE",
        71 => "NFS3ERR_REMOTE",
        10001 => "NFS3ERR_BADHANDLE",
        10002 => "NFS3ERR_NOT_SYNC",
        10003 => "NFS3ERR_BAD_COOKIE",
        10004 => "NFS3ERR_NOTSUPP",
        10005 => "NFS3ERR_TOOSMALL",
        10006 => "NFS3ERR_SERVERFAULT",
        10007 => "NFS3ERR_BADTYPE",
        10008 => "NFS3ERR_JUKEBOX",
        1_000_001 => "RPC_PROG_UNAVAIL",
        1_000_002 => "RPC_PROG_MISMATCH",
        1_000_003 => "RPC_PROC_UNAVAIL",
        1_000_004 => "RPC_GARBAGE_ARGS",
        1_000_005 => "RPC_SYSTEM_ERR",
        1_000_100 => "RPC_DENIED",
        _ => return None,
    })
}

fn protocols() -> [&'static ProtocolStats; 3] {
    [&SMB, &NFS, &MOUNT]
}

fn requests(e: &mut DescriptorEncoder) -> std::fmt::Result {
    let mut rows = Vec::new();
    for p in protocols() {
        for (op, slot) in p.ops.seen() {
            rows.push((vec![("protocol", p.name.to_string()), ("op", op.to_string())], slot.count.load(Relaxed)));
        }
    }
    counter(e, "nasgw_requests", "Requests answered, by protocol and operation.", &rows)?;
    let mut m = e.encode_descriptor(
        "nasgw_request_duration_seconds",
        "Time from a request's decoding to its answer, by protocol and operation.",
        None,
        MetricType::Histogram,
    )?;
    for p in protocols() {
        for (op, slot) in p.ops.seen() {
            let (sum, count, buckets) = slot.histogram();
            let labels = vec![("protocol", p.name.to_string()), ("op", op.to_string())];
            m.encode_family(&labels)?.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
        }
    }
    let mut rows = Vec::new();
    for p in protocols() {
        for (code, n) in p.statuses.snapshot() {
            rows.push((vec![("protocol", p.name.to_string()), ("status", status_label(p, code))], n));
        }
    }
    counter(
        e,
        "nasgw_request_errors",
        "Replies with a status other than success, by protocol and status code.",
        &rows,
    )?;
    let bytes = |f: fn(&ProtocolStats) -> u64| -> Vec<(Labels<'static>, u64)> {
        [&*SMB, &*NFS].into_iter().map(|p| (vec![("protocol", p.name.to_string())], f(p))).collect()
    };
    counter(e, "nasgw_read_bytes", "File data read by clients.", &bytes(|p| p.read_bytes.load(Relaxed)))?;
    counter(
        e,
        "nasgw_read_sendfile_bytes",
        "File data read by clients sent with sendfile, from the page cache straight to the socket (the rest of \
         nasgw_read_bytes was copied through memory).",
        &bytes(|p| p.sendfile_bytes.load(Relaxed)),
    )?;
    counter(
        e,
        "nasgw_read_spliced_bytes",
        "The part of nasgw_read_sendfile_bytes spliced through a pooled 1 MiB pipe, so TCP took each reply whole \
         (the rest went by sendfile, 64 KiB at a time, when no pipe was free).",
        &bytes(|p| p.spliced_bytes.load(Relaxed)),
    )?;
    counter(e, "nasgw_written_bytes", "File data written by clients.", &bytes(|p| p.written_bytes.load(Relaxed)))?;
    Ok(())
}

fn sessions(e: &mut DescriptorEncoder, src: &NodeSource) -> std::fmt::Result {
    let conns = CONNECTIONS.snapshot();
    let open: Vec<_> = conns.iter().map(|(s, o, _)| (vec![("protocol", s.to_string())], *o)).collect();
    let accepted: Vec<_> = conns.iter().map(|(s, _, a)| (vec![("protocol", s.to_string())], *a)).collect();
    gauge(e, "nasgw_connections", "Client TCP connections open now, by protocol.", &open)?;
    counter(e, "nasgw_connections_accepted", "Client TCP connections accepted since start.", &accepted)?;
    let (sessions, opens) = crate::clients::CLIENTS.smb_totals();
    gauge(e, "nasgw_smb_sessions", "SMB sessions (logged on or logging on).", &[(vec![], sessions as i64)])?;
    gauge(e, "nasgw_smb_opens", "Open SMB files.", &[(vec![], opens as i64)])?;
    let files = (src.lock_files)() as i64;
    gauge(
        e,
        "nasgw_lock_table_files",
        "Files with opens, share modes or byte-range locks in the lock table.",
        &[(vec![], files)],
    )
}

fn cluster(e: &mut DescriptorEncoder, src: &NodeSource) -> std::fmt::Result {
    let Response::Status(st) = src.node.handle(Request::Status) else { return Ok(()) };
    let states = ["OK", "DISCONNECTED", "UNHEALTHY", "DISABLED", "STOPPED"];
    let mut rows = Vec::new();
    for n in &st.nodes {
        let now = n.state.to_string();
        for s in states {
            rows.push((vec![("node", n.pnn.to_string()), ("state", s.to_string())], i64::from(now == s)));
        }
    }
    gauge(e, "nasgw_node_state", "Each node's state as this node sees it (1 for the current state).", &rows)?;
    let me = st.nodes.iter().find(|n| n.this_node).map_or(0, |n| n.pnn);
    gauge(e, "nasgw_node_number", "This node's number (pnn).", &[(vec![], i64::from(me))])?;
    gauge(
        e,
        "nasgw_cluster_generation",
        "Cluster generation (changes with membership).",
        &[(vec![], st.generation as i64)],
    )?;
    let leader = st.leader.map_or(-1, i64::from);
    gauge(e, "nasgw_cluster_leader", "Node number of the leader, -1 when none is known.", &[(vec![], leader)])?;
    gauge(e, "nasgw_cluster_quorum", "1 while this node holds quorum.", &[(vec![], i64::from(st.quorum))])?;
    let recovering = i64::from(st.recovery_mode != ha::status::RecoveryMode::Normal);
    gauge(
        e,
        "nasgw_cluster_recovering",
        "1 while placement is being changed or no leader is known.",
        &[(vec![], recovering)],
    )?;
    let c = st.counters;
    counter(e, "nasgw_takeovers", "Public addresses this node took over.", &[(vec![], c.takeovers)])?;
    counter(e, "nasgw_releases", "Public addresses this node released.", &[(vec![], c.releases)])?;
    counter(e, "nasgw_leader_changes", "Leader changes this node saw.", &[(vec![], c.leader_changes)])?;
    let Response::Ip(ip) = src.node.handle(Request::Ip) else { return Ok(()) };
    let owners: Vec<_> = ip
        .addresses
        .iter()
        .map(|a| (vec![("address", a.address.to_string())], a.owner.map_or(-1, i64::from)))
        .collect();
    gauge(e, "nasgw_public_address_owner", "Node holding each public address, -1 for none.", &owners)?;
    let conns: Vec<_> =
        ip.addresses.iter().map(|a| (vec![("address", a.address.to_string())], a.connections as i64)).collect();
    gauge(e, "nasgw_public_address_connections", "Client connections on each public address, cluster-wide.", &conns)
}

fn volume(e: &mut DescriptorEncoder) -> std::fmt::Result {
    let healthy = VOLUME.healthy.load(Relaxed);
    if healthy < 0 {
        return Ok(());
    }
    gauge(e, "nasgw_volume_healthy", "1 while the last volume health probe succeeded.", &[(vec![], healthy)])?;
    counter(
        e,
        "nasgw_volume_probe_failures",
        "Volume health probes that failed.",
        &[(vec![], VOLUME.failures.load(Relaxed))],
    )?;
    let m = e.encode_descriptor(
        "nasgw_volume_probe_duration_seconds",
        "Time a volume health probe took.",
        None,
        MetricType::Histogram,
    )?;
    let (sum, count, buckets) = VOLUME.latency.histogram();
    let mut m = m;
    m.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
}

impl Collector for NodeCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let m = e.encode_descriptor("nasgw_build", "nasgw's version.", None, MetricType::Info)?;
        let mut m = m;
        m.encode_info(&[("version", crate::VERSION)])?;
        let started = STARTED.duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs_f64();
        gauge_f(&mut e, "nasgw_start_time_seconds", "When this process started (Unix time).", started)?;
        requests(&mut e)?;
        sessions(&mut e, &self.0)?;
        cluster(&mut e, &self.0)?;
        volume(&mut e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    struct Standalone;
    impl Handler for Standalone {
        fn handle(&self, _: Request) -> Response {
            Response::Error { message: "no".into() }
        }
    }

    #[test]
    fn a_scrape_names_every_family_by_the_conventions() {
        SMB.request(8, Instant::now(), 0);
        SMB.read(4096);
        SMB.request(5, Instant::now(), 0xC000_0034);
        NFS.request(1, Instant::now(), 70);
        let _c = CONNECTIONS.opened("nfs");
        let r = registry(NodeSource { node: Arc::new(Standalone), lock_files: Box::new(|| 3) });
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &r).unwrap();
        for want in [
            "nasgw_requests_total{protocol=\"smb\",op=\"read\"}",
            "nasgw_request_duration_seconds_bucket{le=\"0.00005\",protocol=\"smb\",op=\"read\"}",
            "nasgw_request_errors_total{protocol=\"smb\",status=\"0xC0000034\"}",
            "nasgw_request_errors_total{protocol=\"nfs\",status=\"NFS3ERR_STALE\"}",
            "nasgw_read_bytes_total{protocol=\"smb\"}",
            "nasgw_read_sendfile_bytes_total{protocol=\"nfs\"}",
            "nasgw_read_spliced_bytes_total{protocol=\"nfs\"}",
            "nasgw_connections{protocol=\"nfs\"} 1",
            "nasgw_lock_table_files 3",
            "nasgw_build_info{version=",
            "# EOF",
        ] {
            assert!(text.contains(want), "missing {want} in:\n{text}");
        }
    }
}
