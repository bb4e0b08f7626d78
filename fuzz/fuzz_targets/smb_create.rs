//! The SMB2 CREATE request decoder alone, and the create contexts it carries as the durable
//! handle decoder reads them: any bytes (a header, then the body at offset 64) decode to a
//! request or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nasgw::smb::cmd::Request;
use nasgw::smb::durable;
use nasgw::smb::wire::header::command;

fuzz_target!(|data: &[u8]| {
    if let Ok(Request::Create(c)) = Request::parse(command::CREATE, data) {
        let _ = durable::parse(&c.contexts, true);
    }
    let _ = durable::parse(data, true);
    let _ = durable::parse(data, false);
    let _ = durable::break_target(data);
});
