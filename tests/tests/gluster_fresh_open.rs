//! Close-to-open on the GlusterFS-FUSE backend: an SMB open through a nasgw node sees a write
//! another GlusterFS client of the volume (another node) finished just before, although the
//! node's own GlusterFS mount had read the file's attributes a moment earlier.
//!
//! nasgw's managed mount reads through GlusterFS's own client, whose md-cache and quick-read
//! keep what they saw for 1 s by default: an open (and its reads) within that second of the
//! node's last look answered the old size, so the client read the file short (seen in
//! `fuse_fence` after a failover: 139 of 298 records). On a volume with the upcall options the
//! appliance sets (`gluster::mount::UPCALL_CACHE_OPTIONS`: md-cache and quick-read dropped by
//! the bricks' upcalls, which also drop the kernel's copy through the FUSE client) the change
//! is seen at once. Each round here: the SMB client reads the file (the node's mount now holds
//! its attributes), a plain GlusterFS FUSE client appends a record and closes (the record is on
//! the brick), and the SMB client at once opens and reads the file again: every record must be
//! there. With only `features.cache-invalidation on` the node read short in 8 of 8 rounds, 3-4
//! ms after the append (measured 2026-12-08; the count is printed).
//!
//! ~10 s (a one-brick volume, one nasgw).

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use nasgw_tests::gluster::{GlusterCluster, GlusterSpec};
use nasgw_tests::Daemon;

/// Reads whole files over SMB (Python smbprotocol, guest), one per line of stdin (`NAME`),
/// answering the bytes in hex: every line a new CREATE, READs to the end, CLOSE.
const READER: &str = r#"
import ntpath, sys
import smbclient
host, port, share = sys.argv[1], int(sys.argv[2]), sys.argv[3]
smbclient.ClientConfig(require_secure_negotiate=False)
smbclient.register_session(host, port=port, username="guest", password="guest", require_signing=False, auth_protocol="ntlm")
print("ready", flush=True)
for line in sys.stdin:
    name = line.strip()
    if not name:
        break
    with smbclient.open_file(ntpath.join("\\\\" + host, share, name), mode="rb", share_access="rwd", port=port) as f:
        print(f.read().hex(), flush=True)
"#;

/// The SMB reader process.
struct SmbReader {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl SmbReader {
    fn start(ns: &str, port: u16) -> SmbReader {
        nasgw_tests::require_tool("python3");
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, "python3", "-c", READER, "127.0.0.1", &port.to_string(), "pub"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let stdin = child.stdin.take().expect("stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("reader");
        assert_eq!(line.trim(), "ready", "the SMB reader did not start");
        SmbReader { child, stdin, stdout }
    }

    /// The whole file as an SMB open and read see it now.
    fn read(&mut self, name: &str) -> Vec<u8> {
        writeln!(self.stdin, "{name}").expect("to the reader");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("from the reader");
        let line = line.trim();
        assert!(line.len() % 2 == 0 && line.bytes().all(|b| b.is_ascii_hexdigit()), "reader said: {line:?}");
        (0..line.len()).step_by(2).map(|i| u8::from_str_radix(&line[i..i + 2], 16).expect("hex")).collect()
    }
}

impl Drop for SmbReader {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin);
        let _ = self.child.wait();
    }
}

/// Record `i`: 16 bytes that say which record they are.
fn record(i: usize) -> Vec<u8> {
    format!("record {i:08}\n").into_bytes()
}

#[test]
fn an_smb_open_sees_what_another_client_wrote_just_before() {
    const ROUNDS: usize = 8;
    let cluster = GlusterCluster::start(GlusterSpec {
        nodes: 1,
        replica: 1,
        options: nasgw::gluster::mount::UPCALL_CACHE_OPTIONS
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..GlusterSpec::default()
    });
    let other = cluster.mount("n1", &cluster.dir().join("other"));
    let ns = cluster.topo().ns("n1").to_string();
    let port = nasgw_tests::free_port();
    let config = format!(
        "{}[nfs]\nenabled = false\n[smb]\nlisten = \"127.0.0.1:{port}\"\n[[smb.share]]\nname = \"pub\"\n\
         writable = true\nguest_ok = true\nguest_only = true\nforce_user = \"root\"\n[node]\n\
         control_socket = \"{{dir}}/ctl.sock\"\nstate_dir = \"{{dir}}/state\"\n",
        cluster.nasgw_volume_toml(0, "fuse")
    );
    let node = Daemon::start("fresh", &cluster.dir().join("node"), &config, Some(&ns));
    node.wait_ok(Duration::from_secs(60));
    std::fs::write(other.join("log.txt"), record(0)).unwrap();
    let mut smb = SmbReader::start(&ns, port);
    let mut want = record(0);
    let mut stale = Vec::new();
    for i in 1..=ROUNDS {
        // The node reads the file: its mount holds these attributes for a while now. (Before
        // the fix this read was stale too, from the round before: only `after` is counted.)
        smb.read("log.txt");
        // Another client appends and closes: the record is on the brick.
        let t = Instant::now();
        let mut f = std::fs::OpenOptions::new().append(true).open(other.join("log.txt")).unwrap();
        f.write_all(&record(i)).unwrap();
        drop(f);
        want.extend(record(i));
        let on_brick = std::fs::read(cluster.dir().join("n1/brick/log.txt")).unwrap();
        assert_eq!(on_brick, want, "round {i}: the brick holds every record (the writer's close flushed it)");
        // At once, a new SMB open through the node.
        let after = smb.read("log.txt");
        let gap = t.elapsed();
        if after != want {
            stale.push((i, after.len() / 16, want.len() / 16, gap));
        }
    }
    let mut lines = String::new();
    for (i, got, want, gap) in &stale {
        lines.push_str(&format!("  round {i}: {got} of {want} records, {} ms after the append\n", gap.as_millis()));
    }
    eprintln!("stale opens: {} of {ROUNDS}\n{lines}", stale.len());
    assert!(stale.is_empty(), "an SMB open right after another client's write read the file short:\n{lines}");
    drop(smb);
    assert!(node.stop().success(), "nasgw did not stop cleanly");
}
