//! File I/O over SMB with real smbclient on SMB3 and SMB 2.0.2: ls, put/get (1 GiB with a
//! checksum on SMB3), mkdir, rename, rm, deltree, allinfo, setmode; and names that would
//! escape the share are refused.

mod smb_common;

use std::io::Write;

use smb_common::start;

fn sha(path: &std::path::Path) -> String {
    let out = nasgw_tests::run("sha256sum", &[path.to_str().unwrap()]);
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().to_string()
}

#[test]
fn smbclient_file_operations_on_smb3_and_smb2_02() {
    let s = start("files", "");
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src.bin");
    let mut f = std::fs::File::create(&src).unwrap();
    let block: Vec<u8> = (0..1_000_003u32).map(|i| (i * 7 % 251) as u8).collect();
    f.write_all(&block).unwrap();
    drop(f);
    for m in ["SMB3", "SMB2_02"] {
        let back = tmp.path().join(format!("back-{m}"));
        let script = format!(
            "mkdir d-{m}; put {src} d-{m}\\a.bin; get d-{m}\\a.bin {back}; rename d-{m}\\a.bin d-{m}\\b.bin; \
             allinfo d-{m}\\b.bin; setmode d-{m}\\b.bin +r; ls d-{m}\\*",
            src = src.display(),
            back = back.display()
        );
        let out = s.smbclient_ok("pub", &["-N", "-m", m, "-c", &script]);
        assert_eq!(sha(&src), sha(&back), "{m}: get returns what put sent");
        assert!(out.contains("stream: [::$DATA], 1000003 bytes"), "{m} allinfo: {out}");
        assert!(out.contains("b.bin") && out.contains("AR"), "{m}: setmode +r shows: {out}");
        let on_disk = s.data.join(format!("d-{m}/b.bin"));
        assert_eq!(std::fs::metadata(&on_disk).unwrap().len(), 1_000_003);
        assert!(std::fs::metadata(&on_disk).unwrap().permissions().readonly(), "+r clears the write bits");
        // rm of a read-only file is refused; after -r it works; deltree removes the rest.
        let out = s.smbclient("pub", &["-N", "-m", m, "-c", &format!("rm d-{m}\\b.bin")]);
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        assert!(text.contains("NT_STATUS_CANNOT_DELETE") || text.contains("NT_STATUS_ACCESS_DENIED"), "{m}: {text}");
        s.smbclient_ok("pub", &["-N", "-m", m, "-c", &format!("setmode d-{m}\\b.bin -r; rm d-{m}\\b.bin")]);
        assert!(!on_disk.exists());
        s.smbclient_ok(
            "pub",
            &[
                "-N",
                "-m",
                m,
                "-c",
                &format!("mkdir d-{m}\\x; mkdir d-{m}\\x\\y; put {} d-{m}\\x\\y\\f; deltree d-{m}", src.display()),
            ],
        );
        assert!(!s.data.join(format!("d-{m}")).exists(), "{m}: deltree removed the tree");
    }
}

#[test]
fn one_gib_put_and_get_keep_every_byte() {
    let s = start("gib", "");
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("big");
    nasgw_tests::run(
        "dd",
        &["if=/dev/urandom", &format!("of={}", src.display()), "bs=1M", "count=1024", "status=none"],
    );
    let back = tmp.path().join("big.back");
    let t = std::time::Instant::now();
    let out = s.smbclient_ok(
        "pub",
        &["-N", "-m", "SMB3", "-c", &format!("put {} big; get big {}", src.display(), back.display())],
    );
    println!("1 GiB put+get over SMB3 took {:?}\n{out}", t.elapsed());
    assert_eq!(sha(&src), sha(&back));
    assert_eq!(sha(&src), sha(&s.data.join("big")));
}

#[test]
fn names_that_escape_the_share_are_refused() {
    let s = start("escape", "");
    std::fs::write(s.data.join("secret"), b"x").unwrap();
    // A symlink inside `priv` pointing outside the volume, and `..` in names.
    std::os::unix::fs::symlink("/etc", s.data.join("priv/etc")).unwrap();
    let cred = format!("alice%{}", smb_common::ALICE_PASSWORD);
    for cmd in ["get ..\\secret /dev/null", "get etc\\passwd /dev/null", "get priv:stream /dev/null"] {
        let out = s.smbclient("priv", &["-U", &cred, "-m", "SMB3", "-c", cmd]);
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        assert!(text.contains("NT_STATUS_"), "{cmd}: refused with a status: {text}");
    }
    // Listing the parent of the share root shows the share root, never the volume root.
    let out = s.smbclient_ok("priv", &["-U", &cred, "-m", "SMB3", "-c", "ls ..\\*"]);
    assert!(!out.contains("secret"), "{out}");
}
