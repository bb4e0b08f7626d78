//! The compound layer: a message split into chained requests (NextCommand offsets, the chain
//! cap), related-operation inheritance, and each element's body through the command decoders.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nasgw::smb::cmd::Request;
use nasgw::smb::compound;

fuzz_target!(|data: &[u8]| {
    if let Ok(elements) = compound::split(data) {
        let mut prev = None;
        for e in elements {
            let mut h = e.header;
            let _ = compound::inherit(&mut h, prev.as_ref());
            let _ = Request::parse(h.command, &data[e.range]);
            prev = Some(compound::Previous { session_id: h.session_id, tree_id: h.tree_id, status: nasgw::smb::wire::status::NtStatus::SUCCESS });
        }
    }
});
