//! SMB path names (a CREATE's or a rename's name: components, `.`/`..`, streams): any string
//! splits into components or is refused, never a panic, and no component it yields is empty,
//! `.`, `..` or holds a separator.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nasgw::smb::fs::parse_name;

fuzz_target!(|data: &[u8]| {
    let Ok(name) = std::str::from_utf8(data) else { return };
    if let Ok((comps, _stream)) = parse_name(name) {
        for c in comps {
            assert!(!c.is_empty() && c != "." && c != ".." && !c.contains(['\\', '/']), "{c:?}");
        }
    }
    let _ = nasgw::smb::streams::parse(name);
});
