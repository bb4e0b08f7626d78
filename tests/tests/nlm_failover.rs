//! NLM across a failover, with the Linux kernel client in a VM on the cluster's bridge: three
//! nodes on a shared directory, the VM mounts a public address with the seed recipe's options
//! and holds a write lock; the node serving that address is killed (link down, kill -9). The
//! survivor that takes the address over enters a grace period for it (for that address only),
//! tells the VM (SM_NOTIFY, from the public address) and the VM reclaims its lock there. A
//! second client (the host's NLM client) tries the lock throughout: through the taken-over
//! address it is refused (DENIED_GRACE_PERIOD, then DENIED: the VM reclaimed it); through
//! another node it is never granted either. SMB clients (smbprotocol, through a third address)
//! and the VM's NFS locks exclude each other. Prints the timeline and the reclaim time.

mod ha_support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use ha_support::{in_netns, wait_connection_known, Cluster, NODES, VIPS};
use nasgw_tests::nlm::{file_handle, stat, NlmClient};
use nasgw_tests::smb_locker::SmbLocker;
use nasgw_tests::{kclient, run, wait_for};

const GRACE_MS: u64 = 15_000;

fn wait_marker(vol: &Path, name: &str, guest: &mut Option<Child>, logs: &dyn Fn() -> String) {
    let start = Instant::now();
    loop {
        if vol.join(name).exists() {
            return;
        }
        let ended = guest.as_mut().expect("guest running").try_wait().ok().flatten();
        if ended.is_some() || start.elapsed() > Duration::from_secs(300) {
            let mut g = guest.take().unwrap();
            let _ = g.kill();
            let out = g.wait_with_output().unwrap();
            panic!(
                "no marker {name} from the guest ({ended:?})\n{}\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                logs()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Seconds of the time of day in a log line's timestamp (`2026-12-06T11:42:19.011118Z ...`).
fn log_time(line: &str) -> Option<f64> {
    let t = line.split_whitespace().next()?.split('T').nth(1)?.trim_end_matches('Z');
    let mut p = t.split(':');
    let (h, m, s) = (p.next()?.parse::<f64>().ok()?, p.next()?.parse::<f64>().ok()?, p.next()?.parse::<f64>().ok()?);
    Some(h * 3600.0 + m * 60.0 + s)
}

/// From the daemons' logs: how long after the last grace period of `vip` began its first
/// reclaim was granted.
fn reclaim_after_grace(logs: &str, vip: &str) -> Option<f64> {
    let addr = format!("address={vip} ");
    let mut began = None;
    let mut best = None;
    for l in logs.lines() {
        if !l.contains(&addr) && !l.ends_with(&format!("address={vip}")) {
            continue;
        }
        if l.contains("NLM: grace period begins") {
            began = log_time(l);
        } else if l.contains("NLM: lock reclaimed") {
            if let (Some(b), Some(t)) = (began, log_time(l)) {
                best = Some(t - b);
                break;
            }
        }
    }
    best
}

/// The status sequence one poller saw: (time since the kill, status) at each change.
type Seen = Vec<(Duration, Option<u32>)>;

fn record(seen: &mut Seen, at: Duration, s: Option<u32>) {
    if seen.last().map(|(_, x)| *x) != Some(s) {
        seen.push((at, s));
    }
}

fn failover(strict_everywhere: bool) {
    let c = Cluster::start_nfs(
        &format!("listen = \"0.0.0.0:2049\"\nportmap_listen = \"0.0.0.0:111\"\ngrace_period_ms = {GRACE_MS}"),
        "",
    );
    let mut c = c;
    std::fs::set_permissions(c.volume(), std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
    // The victim serves `vip` and is not the leader (pnn 0): a plain node death.
    let holders = c.holders();
    let vip = *VIPS.iter().find(|v| holders[**v][0] != 0).expect("an address off the leader");
    let victim = holders[vip][0];
    let others: Vec<&str> = VIPS.iter().copied().filter(|v| *v != vip).collect();
    let (nlm_vip, smb_vip) = (others[0], others[1]);
    println!("VM mounts {vip} on {}; the other client uses {nlm_vip}, SMB {smb_vip}", NODES[victim]);

    let tap = "tapnlmf";
    run("ip", &["-n", &c.topo.switch, "tuntap", "add", "dev", tap, "mode", "tap"]);
    run("ip", &["-n", &c.topo.switch, "link", "set", tap, "master", "br0", "up"]);
    let tmp = tempfile::tempdir().unwrap();
    let root = nasgw_tests::workspace_root();
    let lockbin = kclient::static_binary(&root.join("tests/kclient/nlmlock.rs"), &tmp.path().join("nlmlock"));
    let script = std::fs::read_to_string(root.join("tests/kclient/nlm-failover.sh")).unwrap();
    let t_vm = Instant::now();
    let (_job, guest) = kclient::spawn_on_tap(
        tap,
        &c.topo.switch,
        &script,
        &[("KC_SERVER", vip), ("KC_ADDR", "198.18.0.20"), ("KC_NAME", "kvm-failover")],
        &[&lockbin, &root.join("tests/kclient/nlm-lib.sh")],
        600,
    );
    let mut guest = Some(guest);
    let vol = c.volume();
    let c1 = c.topo.ns("c1").to_string();

    wait_marker(&vol, "held", &mut guest, &|| c.logs());
    let via = |v: &str| NlmClient::new(format!("{v}:2049").parse::<SocketAddr>().unwrap(), "host-client", 4242);
    let (other, taken_over) = (via(nlm_vip), via(vip));
    let nfs: SocketAddr = format!("{nlm_vip}:2049").parse().unwrap();
    let fh = in_netns(&c1, move || file_handle(nfs, "smb", "db"));
    // Held cluster-wide: refused through another node, to NLM and to SMB.
    // (DENIED_GRACE_PERIOD if HA moved that address meanwhile, as a loaded machine makes it do:
    // the host client is on its list once it asked for a lock.)
    let (o, f) = (other.clone(), fh.clone());
    let first = in_netns(&c1, move || {
        let start = Instant::now();
        loop {
            let s = o.lock(&f, true, 0, 0, false);
            if s != Some(stat::DENIED_GRACE_PERIOD) || start.elapsed() > Duration::from_millis(2 * GRACE_MS) {
                return s;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    assert_eq!(first, Some(stat::DENIED), "{}", c.logs());
    let mut smb = SmbLocker::open(&c1, smb_vip, 4445, "pub", "db");
    assert!(smb.cmd("lock 0 1").starts_with("denied"), "SMB sees the NFS lock");
    // The survivors know the VM's connections to the address (whom to tickle).
    for i in (0..3).filter(|i| *i != victim) {
        wait_connection_known(c.daemon(i), vip);
    }

    // Kill the node serving the VM's address.
    let t0 = Instant::now();
    c.topo.cut(NODES[victim]);
    c.daemons[victim].take().unwrap().kill();
    c.dead[victim] = true;
    let (o1, o2, f) = (taken_over.clone(), other.clone(), fh.clone());
    let vip_s = vip.to_string();
    // Poll through the taken-over address (LOCK) and through another node (TEST, which takes
    // nothing) until grace is over and the reclaim is seen.
    let (lock_seen, test_seen, takeover) = {
        let (tx, rx) = std::sync::mpsc::channel();
        let survivors: Vec<String> = (0..3).filter(|i| *i != victim).map(|i| c.topo.ns(NODES[i]).to_string()).collect();
        let holders_thread = {
            let vip = vip_s.clone();
            std::thread::spawn(move || {
                let at = wait_for(
                    "a survivor to serve the address",
                    Duration::from_secs(15),
                    Duration::from_millis(10),
                    || survivors.iter().any(|ns| ha_support::held_in(ns).contains(&vip)).then(|| t0.elapsed()),
                );
                let _ = tx.send(at);
            })
        };
        let polled = in_netns(&c1, move || {
            let (mut lock_seen, mut test_seen) = (Seen::new(), Seen::new());
            // Until grace is over and the reclaimed lock refuses the second client (an address
            // moved again by HA on a loaded machine means another grace period: wait it out).
            while t0.elapsed() < Duration::from_millis(3 * GRACE_MS + 10_000) {
                let at = t0.elapsed();
                let l = o1.lock(&f, true, 0, 0, false);
                record(&mut lock_seen, at, l);
                let t = o2.test(&f, true, 0, 0);
                record(&mut test_seen, at, t);
                let after_grace = lock_seen.iter().any(|(_, s)| *s == Some(stat::DENIED_GRACE_PERIOD))
                    && l == Some(stat::DENIED)
                    && t == Some(stat::DENIED);
                if l == Some(stat::GRANTED) || (after_grace && at > Duration::from_millis(GRACE_MS)) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            (lock_seen, test_seen)
        });
        holders_thread.join().unwrap();
        (polled.0, polled.1, rx.recv().unwrap())
    };
    // The reclaim, as the new owner logged it: seconds after its grace period began.
    let reclaimed = reclaim_after_grace(&c.logs(), vip);
    let free: Vec<&(Duration, Option<u32>)> = test_seen.iter().filter(|(_, s)| *s == Some(stat::GRANTED)).collect();
    println!("timeline (kill -9 + link down of {} serving {vip}):", NODES[victim]);
    println!("  {:>7.3} s  {vip} served by a survivor", takeover.as_secs_f64());
    println!("  LOCK through {vip}: {lock_seen:?}");
    println!("  TEST through {nlm_vip}: {test_seen:?}");
    match reclaimed {
        Some(r) => println!("  the VM's reclaim was granted {r:.3} s after the new owner's grace period began"),
        None => panic!("no reclaim logged for {vip}\n{}", c.logs()),
    }
    assert!(
        lock_seen.iter().all(|(_, s)| *s != Some(stat::GRANTED)),
        "the second client got the lock through the taken-over address: {lock_seen:?}\n{}",
        c.logs()
    );
    assert!(
        lock_seen.iter().any(|(_, s)| *s == Some(stat::DENIED_GRACE_PERIOD)),
        "the taken-over address was in grace: {lock_seen:?}\n{}",
        c.logs()
    );
    assert_eq!(
        lock_seen.last().map(|(_, s)| *s),
        Some(Some(stat::DENIED)),
        "after grace, the reclaimed lock holds: {lock_seen:?}\n{}",
        c.logs()
    );
    assert_eq!(
        test_seen.last().map(|(_, s)| *s),
        Some(Some(stat::DENIED)),
        "the VM reclaimed: {test_seen:?}\n{}",
        c.logs()
    );
    if strict_everywhere {
        assert!(
            free.is_empty(),
            "the lock was free cluster-wide during the failover: {free:?} (of {test_seen:?})\n{}",
            c.logs()
        );
    } else if !free.is_empty() {
        println!(
            "  NOTE: the lock was free through other nodes at {free:?} (the dead node's locks went before the reclaim)"
        );
    }
    std::fs::write(vol.join("host-checked"), b"").unwrap();

    // SMB and NFS after the failover.
    wait_marker(&vol, "released", &mut guest, &|| c.logs());
    let (o, f) = (other.clone(), fh.clone());
    assert_eq!(in_netns(&c1, move || o.lock(&f, true, 0, 0, false)), Some(stat::GRANTED), "free once the VM let go");
    assert!(smb.cmd("lock 0 1").starts_with("denied"), "SMB sees the NLM lock");
    let (o, f) = (other.clone(), fh.clone());
    assert_eq!(in_netns(&c1, move || o.unlock(&f, 0, 0)), Some(stat::GRANTED));
    assert_eq!(smb.cmd("lock 0 1"), "granted");
    std::fs::write(vol.join("smb-holds"), b"").unwrap();
    wait_marker(&vol, "smb-seen", &mut guest, &|| c.logs());
    assert_eq!(smb.cmd("unlock 0 1"), "unlocked");
    std::fs::write(vol.join("smb-released"), b"").unwrap();
    wait_marker(&vol, "held3", &mut guest, &|| c.logs());
    let answer = smb.cmd("lock 50 1");
    assert!(answer.starts_with("denied"), "SMB sees the VM's range lock: {answer}\n{}", c.logs());
    assert_eq!(smb.cmd("lock 100 1"), "granted", "but not past it");
    let (o, f) = (other.clone(), fh.clone());
    assert_eq!(in_netns(&c1, move || o.test(&f, false, 99, 1)), Some(stat::DENIED));
    std::fs::write(vol.join("host-checked3"), b"").unwrap();

    let out = guest.take().unwrap().wait_with_output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{stdout}\n--- stderr ---\n{stderr}\nVM run took {:.1?}", t_vm.elapsed());
    let failed: Vec<&str> = stdout.lines().filter(|l| l.starts_with("CHECK ") && !l.ends_with(" ok")).collect();
    let passed = stdout.lines().filter(|l| l.starts_with("CHECK ") && l.ends_with(" ok")).count();
    assert!(
        out.status.success() && failed.is_empty() && passed == 4 && stdout.contains("GUEST DONE"),
        "guest checks failed: {failed:?} ({passed} passed)\n{}",
        c.logs()
    );
    let logs = c.logs();
    assert!(logs.contains("client told to reclaim"), "{logs}");
    assert!(!logs.contains("panicked"), "{logs}");
    drop(smb);
    for d in c.daemons.iter_mut().filter_map(Option::take) {
        assert!(d.stop().success());
    }
}

/// The lock is reclaimed through the new owner of the address, refused to the other client
/// through it throughout grace, and never free through *any* node while the VM has not
/// reclaimed it: the dead node's NLM locks stay in the lock table as orphans of their owner
/// (`LockService::set_posix_grace`) until the reclaim adopts them.
#[test]
fn a_kernel_clients_lock_is_reclaimed_on_the_new_owner_and_never_free_meanwhile() {
    failover(true);
}
