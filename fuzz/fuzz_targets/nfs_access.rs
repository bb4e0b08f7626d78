//! The NFSv3 ACCESS argument decoder alone: any bytes decode to arguments or an error, never
//! a panic, and never allocate more than the input bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nasgw::nfs::args::{self, procs};

fuzz_target!(|data: &[u8]| {
    let _ = args::decode_nfs(procs::ACCESS, data);
});
