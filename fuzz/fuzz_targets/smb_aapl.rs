//! The AAPL create context (macOS SERVER_QUERY, `aapl::answer`): any bytes give an answer or
//! none, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = nasgw::smb::aapl::answer(data, false);
    let _ = nasgw::smb::aapl::answer(data, true);
});
