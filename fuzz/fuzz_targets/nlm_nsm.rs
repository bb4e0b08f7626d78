//! Every byte string a client could send to the lock manager, the status monitor or the
//! portmapper, and every reply a client could send back to the server's own calls (GRANTED
//! callbacks, SM_NOTIFY, GETPORT): decoding must return a value or an error, never panic, and
//! never allocate more than the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nasgw::nfs::nlm::wire::{self, Version};
use nasgw::nfs::portmap::Portmap;
use nasgw::nfs::{nsm, rpc, rpc_client};

fuzz_target!(|data: &[u8]| {
    // A whole call, as it arrives over UDP.
    if let Ok(call) = rpc::parse_call(data) {
        let a = &data[call.args_at..];
        if let Some(v) = Version::from_rpc(call.vers) {
            let _ = wire::decode(v, call.proc_, a);
        }
        let _ = nsm::decode(call.proc_, a);
        let _ = Portmap::nasgw(2049, Some(111)).answer(call.vers, call.proc_, a, "198.18.1.2".parse().unwrap());
    }
    // Arguments alone: the first byte picks version and procedure.
    if let Some((&p, rest)) = data.split_first() {
        let v = [Version::V1, Version::V3, Version::V4][usize::from(p >> 6) % 3];
        let _ = wire::decode(v, u32::from(p & 31), rest);
        let _ = nsm::decode(u32::from(p & 7), rest);
        let _ = Portmap::nasgw(2049, None).answer(u32::from(p >> 6) + 1, u32::from(p & 15), rest, "fd18::1".parse().unwrap());
        let _ = wire::decode_res(rest);
    }
    // Replies to the server's own calls.
    let xid = data.get(..4).map_or(0, |b| u32::from_be_bytes(b.try_into().expect("4 bytes")));
    let _ = rpc_client::parse_reply(xid, data);
});
