//! Every byte string a client could send over NFS: record-marking header, RPC call header and
//! credential, NFSv3 / MOUNT / portmapper arguments, and file handles. Parsing must return a
//! value or an error, never panic, and never allocate more than the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nasgw::nfs::{args, handle, rpc};
use nasgw::vfs::VolumeId;

fuzz_target!(|data: &[u8]| {
    if let Some(h) = data.get(..4) {
        let _ = rpc::fragment_header(h.try_into().expect("4 bytes"));
    }
    if let Ok(call) = rpc::parse_call(data) {
        let a = &data[call.args_at..];
        let _ = args::decode_nfs(call.proc_, a);
        let _ = args::decode_mount(call.proc_, a);
        let _ = args::decode_pmap_mapping(a);
    }
    // Arguments alone, for every procedure number (the first byte picks it).
    if let Some((&p, rest)) = data.split_first() {
        let _ = args::decode_nfs(u32::from(p % 24), rest);
        let _ = args::decode_mount(u32::from(p % 8), rest);
    }
    let codec = handle::HandleCodec::new(b"fuzz key", VolumeId(*b"fuzz-vol"));
    let _ = codec.decode(data);
});
