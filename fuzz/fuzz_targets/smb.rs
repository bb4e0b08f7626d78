//! Every byte string a client could send over SMB: the SMB2 header, each command's request
//! body, SPNEGO/NTLMSSP security blobs, srvsvc DCE/RPC PDUs, and share-relative names and
//! search patterns. Decoding must return a value or an error, never panic or hang.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nasgw::smb::auth::{ntlmssp, spnego};
use nasgw::smb::cmd::Request;
use nasgw::smb::compound;
use nasgw::smb::wire::header::{frame_len, Header};
use nasgw::smb::{fs, srvsvc};

fuzz_target!(|data: &[u8]| {
    if let Some(h) = data.get(..4) {
        let _ = frame_len(h.try_into().expect("4 bytes"));
    }
    let _ = Header::parse(data);
    // The compound layer, then every command's decoder on every element. Request bodies are
    // read at offset 64 of the element; any bytes may sit there.
    if let Ok(elements) = compound::split(data) {
        for e in elements {
            let _ = Request::parse(e.header.command, &data[e.range]);
        }
    }
    for command in 0..=0x12u16 {
        let _ = Request::parse(command, data);
    }
    let _ = spnego::parse_client(data);
    let _ = ntlmssp::parse_negotiate(data);
    let _ = ntlmssp::Authenticate::parse(data);
    let _ = ntlmssp::ntlmv2_response_well_formed(data);
    let _ = nasgw::smb::quota_fake::is_quota_file(&String::from_utf8_lossy(data));
    let shares = [srvsvc::ShareInfo { name: "pub".into(), share_type: 0, comment: String::new() }];
    let mut pipe = srvsvc::Pipe::default();
    let _ = pipe.write(data, &shares);
    let text = String::from_utf8_lossy(data);
    let _ = fs::split_name(&text);
    if let Some((pat, name)) = text.split_once('\0') {
        let _ = fs::wildcard_match(pat, name, fs::Case::Insensitive);
        let _ = fs::wildcard_match(pat, name, fs::Case::Sensitive);
    }
});
