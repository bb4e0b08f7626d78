//! The MOUNT v3 MNT and UMNT argument decoders (a path), and the portmapper GETPORT mapping.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nasgw::nfs::args;

fuzz_target!(|data: &[u8]| {
    let _ = args::decode_mount(1, data);
    let _ = args::decode_mount(3, data);
    let _ = args::decode_pmap_mapping(data);
});
