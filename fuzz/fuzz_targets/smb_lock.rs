//! The SMB2 LOCK request decoder alone: any bytes (a header, then the body at offset 64)
//! decode to a request or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nasgw::smb::cmd::Request;
use nasgw::smb::wire::header::command;

fuzz_target!(|data: &[u8]| {
    let _ = Request::parse(command::LOCK, data);
    // The lock sequence a durable open's replay detection reads from the same message.
    let _ = nasgw::smb::durable_replay::lock_sequence(data);
});
