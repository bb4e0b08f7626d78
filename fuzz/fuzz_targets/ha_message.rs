//! Fuzzes the HA cluster datagram decoder (heartbeat, connection list, move request): any bytes
//! must decode to a message or an error, never panic. Both the raw parser (what runs after the
//! HMAC check) and the authenticated `open` are exercised; a decoded message must re-encode to
//! the same bytes.
#![no_main]

use ha::wire::message::{open, ClusterKey, Message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Message::parse(data) {
        let mut again = Vec::new();
        m.emit(&mut again);
        assert_eq!(again, data, "decode/encode round trip");
    }
    let key = ClusterKey::from_secret(b"fuzzing-cluster-secret-0123456789").expect("long enough");
    let _ = open(&key, data);
});
