//! Case-insensitive names on a local volume while a folder is being filled (smbprotocol): each
//! file made through SMB is found in another case, and a name a local program makes, renames or
//! removes in the backing folder counts for the very next open, even right after one of nasgw's
//! own creates. The checks live in `tests/smb/case_names.py`.

mod smb_common;

use std::process::Command;

use smb_common::start;

#[test]
fn a_folder_being_filled_finds_every_name_in_any_case() {
    nasgw_tests::require_tool("python3");
    let s = start("casenames", "");
    let script = nasgw_tests::workspace_root().join("tests/smb/case_names.py");
    let out = Command::new("python3")
        .arg(&script)
        .args(["127.0.0.1", &s.port.to_string(), "pub"])
        .arg(&s.data)
        .output()
        .expect("run python3");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{text}");
    assert!(
        out.status.success() && text.contains("ALL OK"),
        "case checks failed:\n{text}\n--- server log:\n{}",
        s.daemon.logs()
    );
}
