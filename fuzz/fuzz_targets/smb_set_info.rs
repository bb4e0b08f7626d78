//! The SMB2 SET_INFO request decoder, then the two buffers it carries that nasgw decodes
//! further: a FILE_FULL_EA_INFORMATION list and a security descriptor. Any bytes decode to a
//! value or an error, never a panic; what decodes encodes to bytes that decode to the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nasgw::smb::cmd::Request;
use nasgw::smb::wire::header::command;
use nasgw::smb::{eas, security};

fuzz_target!(|data: &[u8]| {
    let _ = Request::parse(command::SET_INFO, data);
    if let Ok(list) = eas::parse(data) {
        let (bytes, whole) = eas::encode(&list, usize::MAX);
        assert!(whole);
        assert_eq!(eas::parse(&bytes).as_ref(), Ok(&list), "EA list round trip");
    }
    if let Ok((sd, parts)) = security::parse(data) {
        assert_eq!(security::parse(&security::encode(&sd, parts)).map(|(d, _)| d), Ok(sd), "descriptor round trip");
    }
});
