//! Case-insensitive names on a local volume while a folder is being filled (smbprotocol): each
//! file made through SMB is found in another case, and a name a local program makes, renames or
//! removes in the backing folder counts for the very next open, even right after one of nasgw's
//! own creates. The checks live in `tests/smb/case_names.py`.

mod smb_common;

use smb_common::start;

#[test]
fn a_folder_being_filled_finds_every_name_in_any_case() {
    nasgw_tests::require_tool("python3");
    let s = start("casenames", "");
    s.python_checks("case_names.py", &["pub", &s.data.to_string_lossy()], "case checks");
}
