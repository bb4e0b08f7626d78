//! The cluster change-notification decoder (`vfs::changes::decode`, what another node sends
//! for CHANGE_NOTIFY): any bytes decode to a change or an error, never a panic, and a decoded
//! change encodes back to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nasgw::vfs::changes::{decode, encode};

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = decode(data) {
        assert_eq!(encode(&c), data, "decode/encode round trip");
    }
});
