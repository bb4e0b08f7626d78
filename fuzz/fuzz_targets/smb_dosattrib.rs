//! Samba's `user.DOSATTRIB` xattr decoder (read from volumes other servers wrote): any bytes
//! decode to DOS attributes or nothing, never a panic, and what decodes encodes to bytes that
//! decode to the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nasgw::smb::dosattrib::{decode, encode};

fuzz_target!(|data: &[u8]| {
    if let Some(info) = decode(data) {
        assert_eq!(decode(&encode(&info)), Some(info), "encode/decode round trip");
    }
});
