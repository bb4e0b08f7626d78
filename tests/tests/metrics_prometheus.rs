//! `[metrics] listen`: a real Prometheus server (Debian's `prometheus`) scrapes nasgw every
//! second while real clients (libnfs `nfs-cp`/`nfs-ls`, `smbclient`) work; then the test asks
//! Prometheus's own query API for request rates, bytes and the endpoint's health, so the
//! format, the names and the counters are judged by the consumer they are made for.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nasgw_tests::{free_port, require_tool, wait_for, Daemon};

/// One HTTP GET on loopback; returns the body (Connection: close keeps it simple).
fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| {
        // Prometheus answers with chunked encoding: keep only the JSON object.
        match (body.find('{'), body.rfind('}')) {
            (Some(a), Some(b)) if path.starts_with("/api") => body[a..=b].to_string(),
            _ => body.to_string(),
        }
    })
}

/// The value of a Prometheus instant query with one result, if it has one.
fn query(prom: u16, q: &str) -> Option<f64> {
    let enc: String = q
        .bytes()
        .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect();
    let body = http_get(prom, &format!("/api/v1/query?query={enc}"))?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    let r = v["data"]["result"].as_array()?.first()?.clone();
    r["value"][1].as_str()?.parse().ok()
}

struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn prometheus_scrapes_request_rates_bytes_and_connections() {
    for tool in ["prometheus", "nfs-cp", "nfs-ls", "smbclient"] {
        require_tool(tool);
    }
    let dir = tempfile::tempdir().unwrap();
    let (nfs, smb, metrics, prom) = (free_port(), free_port(), free_port(), free_port());
    let cfg = format!(
        "[volume]\nname = \"smb\"\nbackend = \"local\"\npath = \"{{dir}}/data\"\n\n\
         [nfs]\nlisten = \"127.0.0.1:{nfs}\"\nroot_squash = false\n\n[smb]\nlisten = \"127.0.0.1:{smb}\"\n\n\
         [[smb.share]]\nname = \"pub\"\nwritable = true\nguest_ok = true\nguest_only = true\nforce_user = \"root\"\n\n\
         [metrics]\nlisten = \"127.0.0.1:{metrics}\"\n\n\
         [node]\ncontrol_socket = \"{{dir}}/ctl.sock\"\nstate_dir = \"{{dir}}/state\"\n"
    );
    let d = Daemon::start("m", &dir.path().join("n"), &cfg, None);
    let text = http_get(metrics, "/metrics").expect("the endpoint answers");
    assert!(text.contains("nasgw_build_info{version=") && text.ends_with("# EOF\n"), "{text}");

    let pdir = dir.path().join("prom");
    std::fs::create_dir_all(&pdir).unwrap();
    let pcfg = pdir.join("prometheus.yml");
    std::fs::write(
        &pcfg,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: nasgw\n    static_configs:\n      - targets: ['127.0.0.1:{metrics}']\n"
        ),
    )
    .unwrap();
    let _prom = Prometheus(
        Command::new("prometheus")
            .arg(format!("--config.file={}", pcfg.display()))
            .arg(format!("--storage.tsdb.path={}", pdir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{prom}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(pdir.join("prometheus.log")).unwrap())
            .spawn()
            .expect("start prometheus"),
    );

    // Traffic while Prometheus scrapes: NFS copies and listings, SMB puts.
    let src = dir.path().join("src.bin");
    std::fs::write(&src, vec![7u8; 256 * 1024]).unwrap();
    let url = |p: &str| format!("nfs://127.0.0.1/smb/{p}?version=3&nfsport={nfs}&mountport={nfs}");
    let started = std::time::Instant::now();
    let mut round = 0;
    let up = wait_for(
        "Prometheus to see NFS and SMB request rates",
        Duration::from_secs(60),
        Duration::from_millis(100),
        || {
            round += 1;
            let cp = Command::new("nfs-cp").arg(&src).arg(url(&format!("f{round}.bin"))).output().unwrap();
            assert!(cp.status.success(), "nfs-cp: {}", String::from_utf8_lossy(&cp.stderr));
            let _ = Command::new("nfs-ls").arg(url("")).output();
            let put = Command::new("smbclient")
                .args(["//127.0.0.1/pub", "-p", &smb.to_string(), "-N", "-m", "SMB3", "-c"])
                .arg(format!("put {} s{round}.bin", src.display()))
                .stdin(Stdio::null())
                .output()
                .unwrap();
            assert!(put.status.success(), "smbclient: {}", String::from_utf8_lossy(&put.stderr));
            let nfs_rate = query(prom, "sum(rate(nasgw_requests_total{protocol=\"nfs\",op=\"write\"}[10s]))")?;
            let smb_rate = query(prom, "sum(rate(nasgw_requests_total{protocol=\"smb\",op=\"write\"}[10s]))")?;
            (nfs_rate > 0.0 && smb_rate > 0.0).then_some((nfs_rate, smb_rate))
        },
    );
    println!(
        "Prometheus saw NFS WRITE at {:.2}/s and SMB WRITE at {:.2}/s after {:.1?} ({round} rounds)",
        up.0,
        up.1,
        started.elapsed()
    );
    assert_eq!(query(prom, "up{job=\"nasgw\"}"), Some(1.0), "the scrape itself is healthy");
    let written = query(prom, "sum(nasgw_written_bytes_total)").expect("bytes written");
    assert!(written >= (2 * 256 * 1024) as f64, "at least one NFS and one SMB file counted: {written}");
    let lat = query(
        prom,
        "histogram_quantile(0.5, sum by (le) (rate(nasgw_request_duration_seconds_bucket{protocol=\"nfs\"}[10s])))",
    )
    .expect("a latency quantile");
    println!("median NFS request latency per Prometheus: {:.6} s", lat);
    assert!(lat > 0.0 && lat < 10.0, "{lat}");
    let accepted = query(prom, "sum(nasgw_connections_accepted_total)").expect("connections counted");
    assert!(accepted >= 2.0, "{accepted}");

    // Every metric the shipped Grafana dashboard graphs exists (cluster-only and volume-probe
    // families need [cluster] or a probed volume, which this single node has not).
    let dash = std::fs::read_to_string(nasgw_tests::workspace_root().join("examples/grafana-nasgw.json")).unwrap();
    let scraped = http_get(metrics, "/metrics").unwrap();
    let mut names: Vec<&str> = dash
        .match_indices("nasgw_")
        .map(|(i, _)| {
            let rest = &dash[i..];
            &rest[..rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len())]
        })
        .collect();
    names.sort();
    names.dedup();
    for n in names.iter().filter(|n| !n.starts_with("nasgw_public_address_") && !n.starts_with("nasgw_volume_")) {
        assert!(scraped.contains(n), "the dashboard graphs {n}, which nasgw does not export");
    }
    println!("dashboard metrics checked: {names:?}");
    drop(d);
}
