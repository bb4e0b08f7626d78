//! NTLMSSP (MS-NLMP) as a server: the CHALLENGE we send and the checks on the client's
//! AUTHENTICATE (NTLMv2 only; LM and NTLMv1 are refused). Pure functions over bytes and keys.

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use rc4::{KeyInit, Rc4, StreamCipher};

use crate::smb::wire::{from_utf16le, slice_at, utf16le, Reader, WireError, WireResult, Writer};

const SIGNATURE: &[u8; 8] = b"NTLMSSP\0";

/// NTLMSSP negotiate flags (MS-NLMP 2.2.2.5).
#[allow(missing_docs)]
pub mod flags {
    pub const UNICODE: u32 = 0x0000_0001;
    pub const REQUEST_TARGET: u32 = 0x0000_0004;
    pub const SIGN: u32 = 0x0000_0010;
    pub const SEAL: u32 = 0x0000_0020;
    pub const NTLM: u32 = 0x0000_0200;
    pub const ANONYMOUS: u32 = 0x0000_0800;
    pub const ALWAYS_SIGN: u32 = 0x0000_8000;
    pub const TARGET_TYPE_SERVER: u32 = 0x0002_0000;
    pub const EXTENDED_SESSIONSECURITY: u32 = 0x0008_0000;
    pub const TARGET_INFO: u32 = 0x0080_0000;
    pub const VERSION: u32 = 0x0200_0000;
    pub const N128: u32 = 0x2000_0000;
    pub const KEY_EXCH: u32 = 0x4000_0000;
    pub const N56: u32 = 0x8000_0000;
}

/// Flags nasgw agrees to when the client asks for them.
const SUPPORTED: u32 = flags::UNICODE
    | flags::REQUEST_TARGET
    | flags::SIGN
    | flags::SEAL
    | flags::NTLM
    | flags::ALWAYS_SIGN
    | flags::EXTENDED_SESSIONSECURITY
    | flags::VERSION
    | flags::N128
    | flags::KEY_EXCH
    | flags::N56;

/// Message type of an NTLMSSP token, or an error when it is not one.
pub fn message_type(token: &[u8]) -> WireResult<u32> {
    let mut r = Reader::new(token);
    if r.bytes(8)? != SIGNATURE {
        return Err(WireError::Malformed("NTLMSSP signature"));
    }
    r.u32()
}

/// Flags of a client's NEGOTIATE message.
pub fn parse_negotiate(token: &[u8]) -> WireResult<u32> {
    if message_type(token)? != 1 {
        return Err(WireError::Malformed("NTLMSSP message type (want NEGOTIATE)"));
    }
    Reader::at(token, 12).u32()
}

/// Builds our CHALLENGE for a client that sent `client_flags`; returns (message, agreed flags).
pub fn challenge(client_flags: u32, server_challenge: [u8; 8], computer: &str, filetime: u64) -> (Vec<u8>, u32) {
    let agreed =
        (client_flags & SUPPORTED) | flags::UNICODE | flags::NTLM | flags::TARGET_INFO | flags::TARGET_TYPE_SERVER;
    let name = utf16le(&computer.to_uppercase());
    let mut info = Writer::new();
    for (id, v) in [(2u16, &name), (1, &name), (4, &name), (3, &name)] {
        info.u16(id).u16(v.len() as u16).bytes(v);
    }
    info.u16(7).u16(8).u64(filetime);
    info.u16(0).u16(0);
    let mut w = Writer::new();
    let name_off = 56u32;
    let info_off = name_off + name.len() as u32;
    w.bytes(SIGNATURE).u32(2);
    w.u16(name.len() as u16).u16(name.len() as u16).u32(name_off);
    w.u32(agreed).bytes(&server_challenge).zeros(8);
    w.u16(info.len() as u16).u16(info.len() as u16).u32(info_off);
    w.bytes(&[6, 1, 0x80, 0x25, 0, 0, 0, 15]); // version 6.1 build 9600, NTLM revision 15
    w.bytes(&name).bytes(&info.buf);
    (w.buf, agreed)
}

/// A client's AUTHENTICATE message, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticate {
    /// LmChallengeResponse.
    pub lm_response: Vec<u8>,
    /// NtChallengeResponse (NTProofStr || blob for NTLMv2).
    pub nt_response: Vec<u8>,
    /// Domain the client named.
    pub domain: String,
    /// User name.
    pub user: String,
    /// Workstation.
    pub workstation: String,
    /// EncryptedRandomSessionKey (KEY_EXCH).
    pub encrypted_session_key: Vec<u8>,
    /// Flags the client settled on.
    pub flags: u32,
}

impl Authenticate {
    /// Decodes an AUTHENTICATE message.
    pub fn parse(token: &[u8]) -> WireResult<Self> {
        if message_type(token)? != 3 {
            return Err(WireError::Malformed("NTLMSSP message type (want AUTHENTICATE)"));
        }
        let mut r = Reader::at(token, 12);
        let mut field = || -> WireResult<&[u8]> {
            let len = r.u16()? as usize;
            let _max = r.u16()?;
            let off = r.u32()? as usize;
            slice_at(token, off, len)
        };
        let lm = field()?.to_vec();
        let nt = field()?.to_vec();
        let domain = field()?;
        let user = field()?;
        let ws = field()?;
        let key = field()?.to_vec();
        let flags = Reader::at(token, 60).u32()?;
        let text = |b: &[u8]| -> WireResult<String> {
            if flags & flags::UNICODE != 0 {
                from_utf16le(b)
            } else {
                Ok(String::from_utf8_lossy(b).into_owned())
            }
        };
        Ok(Self {
            lm_response: lm,
            nt_response: nt,
            domain: text(domain)?,
            user: text(user)?,
            workstation: text(ws)?,
            encrypted_session_key: key,
            flags,
        })
    }

    /// An anonymous logon: no user and no NT response.
    pub fn is_anonymous(&self) -> bool {
        self.user.is_empty() && self.nt_response.is_empty()
    }
}

fn hmac_md5(key: &[u8], parts: &[&[u8]]) -> [u8; 16] {
    let mut mac = Hmac::<Md5>::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// The NT hash (MD4 of the UTF-16LE password): what `nasgw passwd` stores.
pub fn nt_hash(password: &str) -> [u8; 16] {
    use md4::Md4;
    let mut h = Md4::new();
    h.update(utf16le(password));
    h.finalize().into()
}

/// Whether an NTLMv2 NtChallengeResponse is well formed (MS-NLMP 2.2.2.7): a 16-byte
/// NTProofStr, then an NTLMv2_CLIENT_CHALLENGE (RespType and HiRespType 1, times, the client
/// challenge) whose AV pairs stay inside it and end with MsvAvEOL. Responses of 24 bytes or
/// less (NTLMv1, LM) are not NTLMv2 and pass here (the password check refuses them). Samba
/// answers a malformed one INVALID_PARAMETER, not LOGON_FAILURE (its bug 14932, smbtorture
/// `smb2.session.ntlmssp_bug14932`). Pure; never panics on any input.
pub fn ntlmv2_response_well_formed(nt_response: &[u8]) -> bool {
    if nt_response.len() <= 24 {
        return true;
    }
    let Some(blob) = nt_response.get(16..) else { return false };
    if blob.len() < 28 || blob[0] != 1 || blob[1] != 1 {
        return false;
    }
    let mut at = 28;
    loop {
        let (Some(id), Some(len)) = (blob.get(at..at + 2), blob.get(at + 2..at + 4)) else { return false };
        let (id, len) = (u16::from_le_bytes([id[0], id[1]]), u16::from_le_bytes([len[0], len[1]]) as usize);
        if id == 0 {
            return true; // MsvAvEOL
        }
        at += 4 + len;
        if at > blob.len() {
            return false;
        }
    }
}

/// Checks an NTLMv2 response against the user's NT hash; returns the exported session key.
/// `None` means the password is wrong (or the response is not NTLMv2).
pub fn verify_ntlmv2(auth: &Authenticate, nt_hash: &[u8; 16], server_challenge: &[u8; 8]) -> Option<[u8; 16]> {
    if auth.nt_response.len() < 16 + 28 {
        return None; // NTLMv1 or garbage: refused
    }
    let (proof, blob) = auth.nt_response.split_at(16);
    // Clients differ on the domain's case; Samba tries the given domain, then none.
    for domain in [auth.domain.clone(), auth.domain.to_uppercase(), String::new()] {
        let identity = utf16le(&(auth.user.to_uppercase() + &domain));
        let owf = hmac_md5(nt_hash, &[&identity]);
        let want = hmac_md5(&owf, &[server_challenge, blob]);
        if crate::smb::signing::ct_eq(&want, proof) {
            let base = hmac_md5(&owf, &[proof]);
            if auth.flags & flags::KEY_EXCH != 0 && auth.encrypted_session_key.len() == 16 {
                let mut k = [0u8; 16];
                k.copy_from_slice(&auth.encrypted_session_key);
                let mut rc4 = Rc4::new_from_slice(&base).expect("16-byte key");
                rc4.apply_keystream(&mut k);
                return Some(k);
            }
            return Some(base);
        }
    }
    None
}

#[cfg(test)]
mod well_formed_tests {
    use super::ntlmv2_response_well_formed as ok;

    fn response(av_pairs: &[u8]) -> Vec<u8> {
        let mut r = vec![0xab; 16];
        r.extend_from_slice(&[1, 1, 0, 0, 0, 0, 0, 0]);
        r.extend_from_slice(&[0x3f; 8]);
        r.extend_from_slice(&[0x11; 8]);
        r.extend_from_slice(&[0; 4]);
        r.extend_from_slice(av_pairs);
        r
    }

    #[test]
    fn av_pairs_must_end_with_eol_inside_the_response() {
        // MsvAvNbDomainName "A", then MsvAvEOL.
        assert!(ok(&response(&[2, 0, 2, 0, b'A', 0, 0, 0, 0, 0])));
        assert!(!ok(&response(&[2, 0, 2, 0, b'A', 0])), "no EOL");
        assert!(!ok(&response(&[0x11, 0xa2, 0x08, 0x81, 0x50, 0x38])), "a pair longer than the response (bug 14932)");
        assert!(!ok(&response(&[])), "nothing after the header");
        let mut bad_type = response(&[0, 0, 0, 0]);
        bad_type[16] = 2;
        assert!(!ok(&bad_type));
        assert!(ok(&[0u8; 24]), "NTLMv1 sizes are left to the password check");
        assert!(!ok(&[1u8; 30]));
    }
}

fn md5(parts: &[&[u8]]) -> [u8; 16] {
    let mut h = Md5::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// The NTLMSSP signature of `msg` with sequence number 0 in one direction: what SPNEGO's
/// mechListMIC is (MS-NLMP 3.4.4.2, extended session security).
pub fn mic_signature(session_key: &[u8; 16], agreed: u32, server_to_client: bool, msg: &[u8]) -> [u8; 16] {
    let (sign_magic, seal_magic): (&[u8], &[u8]) = if server_to_client {
        (
            b"session key to server-to-client signing key magic constant\0",
            b"session key to server-to-client sealing key magic constant\0",
        )
    } else {
        (
            b"session key to client-to-server signing key magic constant\0",
            b"session key to client-to-server sealing key magic constant\0",
        )
    };
    let sign_key = md5(&[session_key, sign_magic]);
    let seq = 0u32.to_le_bytes();
    let mac = hmac_md5(&sign_key, &[&seq, msg]);
    let mut checksum = [0u8; 8];
    checksum.copy_from_slice(&mac[..8]);
    if agreed & flags::KEY_EXCH != 0 {
        let seal_key = md5(&[session_key, seal_magic]);
        let mut rc4 = Rc4::new_from_slice(&seal_key).expect("16-byte key");
        rc4.apply_keystream(&mut checksum);
    }
    let mut out = [0u8; 16];
    out[..4].copy_from_slice(&1u32.to_le_bytes());
    out[4..12].copy_from_slice(&checksum);
    out[12..].copy_from_slice(&seq);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nt_hash_matches_the_ms_nlmp_example() {
        // MS-NLMP 4.2.4.1.1: NTOWFv1("Password")
        let h = nt_hash("Password");
        assert_eq!(h, [0xa4, 0xf4, 0x9c, 0x40, 0x65, 0x10, 0xbd, 0xca, 0xb6, 0x82, 0x4e, 0xe7, 0xc3, 0x0f, 0xd8, 0x52]);
    }

    #[test]
    fn ntlmv2_proof_matches_the_ms_nlmp_example() {
        // MS-NLMP 4.2.4: user "User", domain "Domain", password "Password".
        let owf = hmac_md5(&nt_hash("Password"), &[&utf16le("USERDomain")]);
        assert_eq!(
            owf,
            [0x0c, 0x86, 0x8a, 0x40, 0x3b, 0xfd, 0x7a, 0x93, 0xa3, 0x00, 0x1e, 0xf2, 0x2e, 0xf0, 0x2e, 0x3f]
        );
    }

    #[test]
    fn garbage_tokens_are_errors() {
        assert!(Authenticate::parse(b"NTLMSSP\0\x03\0\0\0").is_err());
        assert!(parse_negotiate(b"NTLMSSQ\0\x01\0\0\0\0\0\0\0").is_err());
        let (c, agreed) = challenge(flags::KEY_EXCH | 0x4, [1; 8], "nasgw", 0);
        assert_eq!(message_type(&c).unwrap(), 2);
        assert!(agreed & flags::KEY_EXCH != 0 && agreed & flags::TARGET_INFO != 0);
    }
}
