//! The cluster change-notification decoders (`vfs::changes::decode` and `decode_attributes`,
//! what another node sends for CHANGE_NOTIFY and for the node's own mount): any bytes decode
//! to a change or an error, never a panic, and a decoded change encodes back to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nasgw::vfs::changes::{decode, decode_attributes, encode, encode_attributes};

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = decode(data) {
        assert_eq!(encode(&c), data, "decode/encode round trip");
    }
    if let Ok(id) = decode_attributes(data) {
        assert_eq!(encode_attributes(&id), data, "attribute change round trip");
    }
});
