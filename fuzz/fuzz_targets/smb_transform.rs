//! SMB 3 TRANSFORM messages (MS-SMB2 2.2.41) as a client could send them: the header parser,
//! then decryption with a session's keys for each cipher. Any bytes must give a header or an
//! error, never a panic; whatever is sealed must open to the same bytes with the peer's keys.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nasgw::smb::transform::{Cipher, SessionCipher, TransformHeader, HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    let _ = TransformHeader::parse(data);
    for cipher in Cipher::ALL {
        let (a, b) = (vec![7u8; cipher.key_len()], vec![9u8; cipher.key_len()]);
        // The server of session 1 seals with `a` and opens with `b`; the client is its mirror.
        let server = SessionCipher::new(1, cipher, &a, &b).expect("key lengths fit");
        let client = SessionCipher::new(1, cipher, &b, &a).expect("key lengths fit");
        let _ = server.open(&mut data.to_vec());
        let mut body = data.to_vec();
        if let Ok(th) = client.seal(&mut body) {
            let mut msg = th.to_vec();
            msg.extend_from_slice(&body);
            if data.is_empty() {
                // An empty message is no transform (nothing follows the header).
                assert!(server.open(&mut msg).is_err());
            } else {
                server.open(&mut msg).expect("a sealed message opens");
                assert_eq!(&msg[HEADER_LEN..], data);
            }
        }
    }
});
