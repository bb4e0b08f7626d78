//! The lock service's mesh decoders: a peer's hello (both the dialer's and the acceptor's form,
//! checked against the cluster key), a frame's tag, a frame's payload (a postcard `Msg`), and
//! the SMB persistent-open events carried by its broadcasts.
//! Any bytes give a value or a refusal, never a panic or an allocation beyond the input. A hello
//! built from the input and encoded with the key must decode back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nasgw::locks::mesh::{decode_hello, decode_msg, open_frame, Hello, HELLO_LEN};

const KEY: &[u8] = b"fuzzing-cluster-secret-0123456789";

fuzz_target!(|data: &[u8]| {
    let nonce = [7u8; 16];
    let _ = decode_hello(data, KEY, None);
    let _ = decode_hello(data, KEY, Some(&nonce));
    if data.len() >= HELLO_LEN - 32 {
        let h = Hello {
            from: u16::from_le_bytes([data[0], data[1]]),
            to: u16::from_le_bytes([data[2], data[3]]),
            incarnation: u64::from_le_bytes(data[4..12].try_into().expect("8 bytes")),
            nonce: data[12..28].try_into().expect("16 bytes"),
        };
        let answering = (data[28] & 1 == 1).then_some(&nonce);
        let wire = h.encode(KEY, answering);
        assert_eq!(decode_hello(&wire, KEY, answering), Some(h), "hello round trip");
    }
    if data.len() >= 16 {
        let (tag, payload) = data.split_at(16);
        let _ = open_frame(&[1u8; 32], 0, payload, tag);
    }
    let _ = decode_msg(data);
    let _ = nasgw::smb::durable_cluster::decode(data);
});
