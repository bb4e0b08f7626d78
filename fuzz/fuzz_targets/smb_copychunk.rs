//! The server-side copy request decoder (FSCTL_SRV_COPYCHUNK input, `CopyRequest::parse`) and
//! its limit check: any bytes give a request or a refusal, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nasgw::smb::copychunk::{check_limits, CopyRequest, MAX_CHUNKS};

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = CopyRequest::parse(data) {
        assert!(req.chunks.len() <= MAX_CHUNKS as usize);
        let _ = check_limits(&req);
    }
});
