//! NLM with the Linux kernel client (kclient VM on the test bridge, its own rpcbind and
//! rpc.statd), mounting with the seed recipe's exact options (`mount -o mountproto=tcp,async -t
//! nfs SERVER:smb`, no port options: nasgw's portmapper answers on 111):
//! fcntl and flock locks from two processes (the second waits and gets the lock on release,
//! fast: a GRANTED callback, not the client's 30 s re-poll), byte ranges, another client (the
//! host's NLM client) refused while the VM holds a lock and the reverse, and a server restart
//! while the VM holds a lock: the VM is told (SM_NOTIFY), reclaims it, and the other client is
//! refused throughout (grace period, then the reclaimed lock).

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use nasgw_tests::nlm::{file_handle, stat, NlmClient};
use nasgw_tests::{is_root, kclient, netns, run, Daemon, Topology};

const SERVER: &str = "198.18.0.1";
const GRACE_MS: u64 = 10_000;

fn config() -> String {
    format!(
        r#"[volume]
name = "smb"
backend = "local"
path = "{{dir}}/vol"
[nfs]
listen = "0.0.0.0:2049"
portmap_listen = "0.0.0.0:111"
grace_period_ms = {GRACE_MS}
[smb]
enabled = false
[node]
control_socket = "{{dir}}/ctl.sock"
state_dir = "{{dir}}/state"
"#
    )
}

/// Runs `f` on a thread inside network namespace `ns` (its sockets live there).
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        netns::enter(&ns);
        f()
    })
    .join()
    .expect("namespace thread")
}

/// Waits for the guest's marker file `name` on the volume; if it never comes, stops the VM and
/// fails with what the guest printed.
fn wait_marker(vol: &Path, name: &str, guest: &mut Option<std::process::Child>, logs: &str) {
    let start = Instant::now();
    loop {
        if vol.join(name).exists() {
            return;
        }
        let ended = guest.as_mut().expect("guest running").try_wait().ok().flatten();
        if ended.is_some() || start.elapsed() > Duration::from_secs(240) {
            let mut g = guest.take().unwrap();
            let _ = g.kill();
            let out = g.wait_with_output().unwrap();
            panic!(
                "no marker {name} from the guest ({ended:?})\n{}\n{}\n{logs}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn kernel_client_locks_hand_off_and_survive_a_restart() {
    assert!(is_root(), "network namespace tests need root");
    let topo = Topology::new(&[("n1", SERVER), ("c1", "198.18.0.10")]);
    let tap = "tapnlm";
    run("ip", &["-n", &topo.switch, "tuntap", "add", "dev", tap, "mode", "tap"]);
    run("ip", &["-n", &topo.switch, "link", "set", tap, "master", "br0", "up"]);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("n1");
    let mut daemon = Some(Daemon::start("n1", &dir, &config(), Some(topo.ns("n1"))));
    let vol = dir.join("vol");
    // The export's root is root's; the VM's root is squashed (the default): let anyone write.
    std::fs::set_permissions(&vol, std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
    let lockbin = kclient::static_binary(
        &nasgw_tests::workspace_root().join("tests/kclient/nlmlock.rs"),
        &tmp.path().join("nlmlock"),
    );
    let script = std::fs::read_to_string(nasgw_tests::workspace_root().join("tests/kclient/nlm-locks.sh")).unwrap();
    let t0 = Instant::now();
    let (_job, guest) = kclient::spawn_on_tap(
        tap,
        &topo.switch,
        &script,
        &[("KC_SERVER", SERVER), ("KC_ADDR", "198.18.0.20"), ("KC_NAME", "kvm-nlm")],
        &[&lockbin, &nasgw_tests::workspace_root().join("tests/kclient/nlm-lib.sh")],
        600,
    );
    let mut guest = Some(guest);
    let nlm: SocketAddr = format!("{SERVER}:2049").parse().unwrap();
    let c1 = topo.ns("c1").to_string();
    let other = NlmClient::new(nlm, "host-client", 4242);

    // 4. The VM holds a whole-file write lock: the host's client is refused, sees it in TEST.
    wait_marker(&vol, "held", &mut guest, &logs(&dir));
    let fh = in_ns(&c1, move || file_handle(nlm, "smb", "locked.db"));
    let (o, f) = (other.clone(), fh.clone());
    let (lock, test) = in_ns(&c1, move || (o.lock(&f, true, 0, 1, false), o.test(&f, false, 100, 1)));
    assert_eq!((lock, test), (Some(stat::DENIED), Some(stat::DENIED)), "{}", logs(&dir));
    std::fs::write(vol.join("host-checked"), b"").unwrap();
    // Then the host holds a lock and the VM is refused, waits, and gets it when the host lets go.
    wait_marker(&vol, "released", &mut guest, &logs(&dir));
    let (o, f) = (other.clone(), fh.clone());
    assert_eq!(in_ns(&c1, move || o.lock(&f, true, 0, 0, false)), Some(stat::GRANTED));
    std::fs::write(vol.join("host-holds"), b"").unwrap();
    wait_marker(&vol, "waiting", &mut guest, &logs(&dir));
    std::thread::sleep(Duration::from_secs(1));
    let (o, f) = (other.clone(), fh.clone());
    assert_eq!(in_ns(&c1, move || o.unlock(&f, 0, 0)), Some(stat::GRANTED));

    // 5. Restart the server (kill -9) while the VM holds a lock.
    wait_marker(&vol, "held2", &mut guest, &logs(&dir));
    daemon.take().unwrap().kill();
    let killed = Instant::now();
    daemon = Some(Daemon::start("n1", &dir, &config(), Some(topo.ns("n1"))));
    let restarted = killed.elapsed();
    // Nobody else gets the lock: refused for the grace period, then held by the reclaim.
    let (o, f) = (other.clone(), fh.clone());
    let seen = in_ns(&c1, move || {
        let mut seen = Vec::new();
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(GRACE_MS + 3000) {
            let s = o.lock(&f, true, 0, 0, false);
            if seen.last().map(|(_, l)| *l) != Some(s) {
                seen.push((start.elapsed(), s));
            }
            assert_ne!(s, Some(stat::GRANTED), "another client got the lock the VM holds: {seen:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
        seen
    });
    println!("restart took {:.2} s; the other client saw {seen:?}", restarted.as_secs_f64());
    assert_eq!(seen.first().map(|(_, s)| *s), Some(Some(stat::DENIED_GRACE_PERIOD)), "{seen:?}\n{}", logs(&dir));
    assert_eq!(seen.last().map(|(_, s)| *s), Some(Some(stat::DENIED)), "the VM reclaimed it: {seen:?}\n{}", logs(&dir));
    std::fs::write(vol.join("host-checked2"), b"").unwrap();
    wait_marker(&vol, "released2", &mut guest, &logs(&dir));
    let (o, f) = (other.clone(), fh.clone());
    assert_eq!(in_ns(&c1, move || o.lock(&f, true, 0, 0, false)), Some(stat::GRANTED), "free once the VM let go");

    let out = guest.take().unwrap().wait_with_output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{stdout}\n--- stderr ---\n{stderr}\nVM run took {:.1?}", t0.elapsed());
    let failed: Vec<&str> = stdout.lines().filter(|l| l.starts_with("CHECK ") && !l.ends_with(" ok")).collect();
    let passed = stdout.lines().filter(|l| l.starts_with("CHECK ") && l.ends_with(" ok")).count();
    assert!(
        out.status.success() && failed.is_empty() && passed == 11 && stdout.contains("GUEST DONE"),
        "guest checks failed: {failed:?} ({passed} passed)\n{}",
        logs(&dir)
    );
    let log = logs(&dir);
    assert!(log.contains("client told to reclaim"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    drop(daemon);
}

fn logs(dir: &Path) -> String {
    let mut s = String::new();
    for f in ["stdout.log", "stderr.log"] {
        s.push_str(&std::fs::read_to_string(dir.join(f)).unwrap_or_default());
    }
    s
}
