//! The Linux kernel's SMB client (`mount -t cifs`, Debian 12's kernel in a kclient VM) against
//! nasgw: as the guest on the seed's `pub` share and as a password user on `priv`, dialects 2.0
//! to 3.1.1, `cache=strict` (the default) and `cache=none`, with and without signing. In each
//! combination the guest script (`tests/kclient/cifs-checks.sh`) copies a large and many small
//! files and reads them back after a remount, runs `ls -l`, `stat`, `mv`, `touch -d`,
//! `truncate`, a file open in two processes at once, `df` and `rm -r`.
//!
//! `KC_BIG_MB` (default 4) sizes the large file; a longer run is the README's
//! `KC_BIG_MB=256 cargo nextest run -p nasgw-tests --test smb_kclient`.

mod smb_common;

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use nasgw_tests::kclient::run_guest;
use smb_common::{start, ALICE_PASSWORD};

#[test]
fn the_linux_kernel_mounts_and_uses_shares() {
    let s = start("kclient", "");
    let combos = [
        "guest,2.0,strict",
        "guest,2.1,none",
        "guest,3.0,strict",
        "user,3.0,none",
        "user,3.1.1,strict,sign",
        "guest,3.1.1,none",
        "guest,3.1.1,strict",
    ];
    let env = [
        ("KC_SMB_PORT", s.port.to_string()),
        ("KC_SHARE", "pub".to_string()),
        ("KC_USER_SHARE", "priv".to_string()),
        ("KC_USER", "alice".to_string()),
        ("KC_PASS", ALICE_PASSWORD.to_string()),
        ("KC_COMBOS", combos.join(" ")),
        ("KC_BIG_MB", std::env::var("KC_BIG_MB").unwrap_or_else(|_| "4".into())),
    ];
    let run = run_guest("tests/kclient/cifs-checks.sh", &env, Duration::from_secs(600));
    println!("{}", run.stdout);
    println!("kernel client run: {:.1} s, boot included", run.elapsed.as_secs_f64());
    assert!(
        run.ok() && run.stdout.contains("ALL PASSED"),
        "the kernel client failed (exit {:?}):\n{}\n{}\n--- server log:\n{}",
        run.code,
        run.stdout,
        run.stderr,
        s.daemon.logs()
    );
    for c in combos {
        let (who, rest) = c.split_once(',').unwrap();
        let words: Vec<&str> = rest.split(',').collect();
        let mut line = format!("PASS {who} vers={} cache={}", words[0], words[1]);
        if words.len() > 2 {
            line += &format!(" {}", words[2..].join(" "));
        }
        assert!(run.stdout.contains(&line), "no `{line}` in the guest's output");
    }
    // What the guest left is on the volume itself, with the time `touch -d` set.
    let touched = s.data.join("kc-touched");
    let text = std::fs::read_to_string(&touched).expect("kc-touched on the volume");
    assert_eq!(text, "written by the kernel client\n");
    assert_eq!(std::fs::metadata(&touched).unwrap().mtime(), 981_173_106, "touch -d reached the volume");
    let left: Vec<_> =
        std::fs::read_dir(&s.data).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(!left.iter().any(|n| n.starts_with("kc-3") || n.starts_with("kc-2")), "rm -r left {left:?}");
}
