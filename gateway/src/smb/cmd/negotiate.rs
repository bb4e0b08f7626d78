//! NEGOTIATE (MS-SMB2 2.2.3/2.2.4): pick the highest common dialect (2.0.2 to 3.1.1), answer
//! our GUID, limits and SPNEGO hint, and for 3.1.1 the preauth-integrity (SHA-512) and
//! signing-algorithm contexts. Encryption (unless `[smb] encryption = "off"`): the
//! ENCRYPTION capability for 3.0/3.0.2 clients that announce it (AES-128-CCM), and for 3.1.1
//! the ENCRYPTION_CAPABILITIES context with the first cipher of the client's list nasgw
//! speaks (all four do), so a client gets the cipher it prefers.

use super::Reply;
use crate::config::SmbEncryption;
use crate::smb::auth::spnego;
use crate::smb::conn::Connection;
use crate::smb::filetime_now;
use crate::smb::signing::{dialect, SigningAlgorithm};
use crate::smb::transform::Cipher;
use crate::smb::wire::status::NtStatus;
use crate::smb::wire::{slice_at, Reader, WireError, WireResult, Writer};

/// Dialects we speak, best first.
const OURS: [u16; 5] = [dialect::SMB311, dialect::SMB302, dialect::SMB300, dialect::SMB210, dialect::SMB202];
/// Largest READ/transact with large MTU.
pub const MAX_IO: u32 = 8 * 1024 * 1024;
/// Largest WRITE we ask clients for with large MTU (MaxWriteSize). Smaller than reads on
/// purpose: a 1 MiB write is received into a buffer that stays in the CPU cache until
/// `pwrite` copies it on (an 8 MiB one goes through memory twice), and a client then keeps
/// more, smaller writes in flight (smbclient: 16 MiB / MaxWriteSize), so sending and
/// writing overlap. Measured on uploads: about a quarter less server CPU per byte. Larger
/// writes that a client sends anyway are still served (up to the frame limit).
pub const MAX_WRITE: u32 = 1024 * 1024;
/// Largest READ/WRITE for 2.0.2.
pub const MAX_IO_202: u32 = 64 * 1024;

/// Capability: large MTU (multi-credit).
pub const CAP_LARGE_MTU: u32 = 0x4;
/// Capability: leases (SMB 2.1 and later).
pub const CAP_LEASING: u32 = 0x2;
/// Capability: encryption (SMB 3.0/3.0.2; 3.1.1 negotiates a cipher in a context instead).
pub const CAP_ENCRYPTION: u32 = 0x40;
/// Global capability: persistent handles (offered on SMB 3.0+ when a share is continuously
/// available; clients ask for them only then).
pub const CAP_PERSISTENT_HANDLES: u32 = 0x10;
/// Global capability: multichannel (SMB 3.x with `[smb] multichannel`).
pub const CAP_MULTI_CHANNEL: u32 = 0x8;
/// SecurityMode: signing enabled.
pub const SIGNING_ENABLED: u16 = 1;
/// SecurityMode: signing required.
pub const SIGNING_REQUIRED: u16 = 2;

const CTX_PREAUTH: u16 = 1;
const CTX_ENCRYPTION: u16 = 2;
const CTX_SIGNING: u16 = 8;
const SHA512: u16 = 1;

/// A decoded NEGOTIATE request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Client SecurityMode.
    pub security_mode: u16,
    /// Client Capabilities.
    pub capabilities: u32,
    /// ClientGuid.
    pub client_guid: [u8; 16],
    /// Offered dialects.
    pub dialects: Vec<u16>,
    /// 3.1.1: the client offered SHA-512 preauth integrity.
    pub preauth_sha512: bool,
    /// 3.1.1: signing algorithms offered, in the client's order.
    pub signing_algs: Vec<u16>,
    /// 3.1.1: the ciphers of the client's ENCRYPTION_CAPABILITIES context, in its order of
    /// preference (`None`: it sent no such context).
    pub ciphers: Option<Vec<u16>>,
}

impl Request {
    /// Decodes the body of `msg` (which starts at the SMB2 header).
    pub fn parse(msg: &[u8]) -> WireResult<Self> {
        let mut r = Reader::at(msg, 64);
        if r.u16()? != 36 {
            return Err(WireError::Malformed("NEGOTIATE structure size"));
        }
        let count = r.u16()? as usize;
        let security_mode = r.u16()?;
        r.skip(2)?;
        let capabilities = r.u32()?;
        let client_guid = r.array::<16>()?;
        let ctx_offset = r.u32()? as usize;
        let ctx_count = r.u16()? as usize;
        r.skip(2)?;
        if count == 0 || count > 64 {
            return Err(WireError::Malformed("dialect count"));
        }
        let dialects = (0..count).map(|_| r.u16()).collect::<WireResult<Vec<_>>>()?;
        let mut req = Self {
            security_mode,
            capabilities,
            client_guid,
            dialects,
            preauth_sha512: false,
            signing_algs: Vec::new(),
            ciphers: None,
        };
        if req.dialects.contains(&dialect::SMB311) && ctx_count > 0 {
            let mut off = ctx_offset;
            for _ in 0..ctx_count.min(32) {
                off = (off + 7) & !7;
                let mut c = Reader::at(msg, off);
                let ty = c.u16()?;
                let len = c.u16()? as usize;
                c.skip(4)?;
                let data = slice_at(msg, off + 8, len)?;
                let mut d = Reader::new(data);
                match ty {
                    CTX_PREAUTH => {
                        let n = d.u16()?;
                        let _salt = d.u16()?;
                        for _ in 0..n {
                            if d.u16()? == SHA512 {
                                req.preauth_sha512 = true;
                            }
                        }
                    }
                    CTX_SIGNING => {
                        let n = d.u16()?;
                        for _ in 0..n.min(16) {
                            req.signing_algs.push(d.u16()?);
                        }
                    }
                    CTX_ENCRYPTION => {
                        let n = d.u16()?;
                        let list = (0..n.min(16)).map(|_| d.u16()).collect::<WireResult<Vec<_>>>()?;
                        req.ciphers = Some(list);
                    }
                    _ => {}
                }
                off += 8 + len;
            }
        }
        Ok(req)
    }
}

/// The cipher a connection uses, if any: `None` when encryption is off, the dialect has none
/// (2.x), a 3.0/3.0.2 client did not announce the capability, or a 3.1.1 client offered no
/// cipher nasgw speaks. 3.1.1 takes the first of the client's ciphers nasgw speaks.
pub fn choose_cipher(setting: SmbEncryption, chosen: u16, client_caps: u32, offered: Option<&[u16]>) -> Option<Cipher> {
    if setting == SmbEncryption::Off {
        return None;
    }
    match chosen {
        dialect::SMB311 => offered?.iter().find_map(|id| Cipher::from_id(*id)),
        dialect::SMB300 | dialect::SMB302 if client_caps & CAP_ENCRYPTION != 0 => Some(Cipher::Aes128Ccm),
        _ => None,
    }
}

/// What the response says about encryption.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EncryptionAnswer {
    /// Set CAP_ENCRYPTION (3.0/3.0.2).
    pub capability: bool,
    /// The 3.1.1 ENCRYPTION_CAPABILITIES context with this cipher id (0: none in common).
    pub context: Option<u16>,
}

/// The response body for `chosen` (also used for the SMB1 upgrade, where `signing` is None).
pub fn response_body(
    conn: &mut Connection,
    chosen: u16,
    signing: Option<SigningAlgorithm>,
    encryption: EncryptionAnswer,
) -> Vec<u8> {
    let security_mode = SIGNING_ENABLED | if conn.server.require_signing { SIGNING_REQUIRED } else { 0 };
    let mut caps =
        if chosen >= dialect::SMB210 && chosen != dialect::WILDCARD { CAP_LARGE_MTU | CAP_LEASING } else { 0 };
    if encryption.capability {
        caps |= CAP_ENCRYPTION;
    }
    if chosen >= dialect::SMB300
        && chosen != dialect::WILDCARD
        && conn.server.shares.iter().any(|s| s.continuously_available)
    {
        caps |= CAP_PERSISTENT_HANDLES;
    }
    if chosen >= dialect::SMB300 && chosen != dialect::WILDCARD && conn.server.multichannel {
        caps |= CAP_MULTI_CHANNEL;
    }
    let (max, max_write) = if chosen >= dialect::SMB210 { (MAX_IO, MAX_WRITE) } else { (MAX_IO_202, MAX_IO_202) };
    conn.server_capabilities = caps;
    conn.server_security_mode = security_mode;
    let blob = spnego::server_init();
    let mut w = Writer::with_capacity(256);
    let ctx_count_at = 6;
    w.u16(65).u16(security_mode).u16(chosen).u16(0);
    w.bytes(&conn.server.guid).u32(caps).u32(max).u32(max).u32(max_write);
    w.u64(filetime_now()).u64(0);
    w.u16(128).u16(blob.len() as u16);
    let ctx_off_at = w.len();
    w.u32(0);
    w.bytes(&blob);
    if chosen == dialect::SMB311 {
        w.align(8);
        let ctx_start = 64 + w.len();
        w.put_u32(ctx_off_at, ctx_start as u32);
        let salt: [u8; 32] = rand::random();
        w.u16(CTX_PREAUTH).u16(38).u32(0).u16(1).u16(32).u16(SHA512).bytes(&salt);
        let mut n = 1;
        if let Some(alg) = signing {
            w.align(8);
            w.u16(CTX_SIGNING).u16(4).u32(0).u16(1).u16(alg.id());
            n += 1;
        }
        if let Some(id) = encryption.context {
            w.align(8);
            w.u16(CTX_ENCRYPTION).u16(4).u32(0).u16(1).u16(id);
            n += 1;
        }
        w.put_u16(ctx_count_at, n);
    }
    w.buf
}

/// Handles NEGOTIATE.
pub fn handle(conn: &mut Connection, req: Request) -> Result<Reply, NtStatus> {
    if conn.dialect != 0 && conn.dialect != dialect::WILDCARD && conn.dialect != dialect::SMB202 {
        return Err(NtStatus::INVALID_PARAMETER);
    }
    let Some(chosen) = OURS.iter().copied().find(|d| req.dialects.contains(d)) else {
        return Err(NtStatus::NOT_SUPPORTED);
    };
    if chosen == dialect::SMB311 && !req.preauth_sha512 {
        return Err(NtStatus::INVALID_PARAMETER);
    }
    let signing = if chosen == dialect::SMB311 && !req.signing_algs.is_empty() {
        let pick = req
            .signing_algs
            .iter()
            .filter_map(|id| SigningAlgorithm::from_id(*id))
            .next()
            .unwrap_or(SigningAlgorithm::AesCmac);
        Some(pick)
    } else {
        None
    };
    conn.dialect = chosen;
    conn.signing_alg = signing.unwrap_or_else(|| SigningAlgorithm::for_dialect(chosen));
    conn.client_guid = req.client_guid;
    conn.client_security_mode = req.security_mode;
    conn.client_capabilities = req.capabilities;
    conn.client_dialects = req.dialects.clone();
    let setting = conn.server.encryption;
    conn.cipher = choose_cipher(setting, chosen, req.capabilities, req.ciphers.as_deref());
    let answer = EncryptionAnswer {
        capability: chosen < dialect::SMB311 && conn.cipher.is_some(),
        context: match &req.ciphers {
            Some(_) if chosen == dialect::SMB311 && setting != SmbEncryption::Off => {
                Some(conn.cipher.map_or(0, Cipher::id))
            }
            _ => None,
        },
    };
    Ok(Reply::ok(response_body(conn, chosen, signing, answer)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(dialects: &[u16], contexts: bool) -> Vec<u8> {
        let mut w = Writer::new();
        w.zeros(64);
        w.u16(36).u16(dialects.len() as u16).u16(1).u16(0).u32(0x7f).bytes(&[5; 16]);
        let ctx_at = w.len();
        w.u32(0).u16(if contexts { 2 } else { 0 }).u16(0);
        for d in dialects {
            w.u16(*d);
        }
        if contexts {
            w.align(8);
            w.put_u32(ctx_at, w.len() as u32);
            w.u16(1).u16(38).u32(0).u16(1).u16(32).u16(1).zeros(32);
            w.align(8);
            w.u16(8).u16(6).u32(0).u16(2).u16(2).u16(1);
        }
        w.buf
    }

    #[test]
    fn a_311_request_with_contexts_parses() {
        let r = Request::parse(&request(&[0x202, 0x311], true)).unwrap();
        assert!(r.preauth_sha512);
        assert_eq!(r.signing_algs, vec![2, 1]);
        assert_eq!(r.dialects, vec![0x202, 0x311]);
    }

    #[test]
    fn the_client_order_picks_the_cipher_and_off_offers_none() {
        use SmbEncryption::*;
        let both = Some(&[4u16, 2][..]);
        assert_eq!(choose_cipher(Allowed, dialect::SMB311, 0, both), Some(Cipher::Aes256Gcm));
        assert_eq!(choose_cipher(Required, dialect::SMB311, 0, Some(&[9, 1, 2])), Some(Cipher::Aes128Ccm));
        assert_eq!(choose_cipher(Allowed, dialect::SMB311, 0, Some(&[9])), None);
        assert_eq!(choose_cipher(Allowed, dialect::SMB311, CAP_ENCRYPTION, None), None);
        assert_eq!(choose_cipher(Off, dialect::SMB311, 0, both), None);
        assert_eq!(choose_cipher(Desired, dialect::SMB302, CAP_ENCRYPTION, None), Some(Cipher::Aes128Ccm));
        assert_eq!(choose_cipher(Desired, dialect::SMB300, 0, None), None);
        assert_eq!(choose_cipher(Off, dialect::SMB300, CAP_ENCRYPTION, None), None);
        assert_eq!(choose_cipher(Required, dialect::SMB210, CAP_ENCRYPTION, None), None);
    }

    #[test]
    fn encryption_contexts_parse() {
        let mut msg = request(&[0x311], true);
        let count_at = 64 + 32;
        msg[count_at..count_at + 2].copy_from_slice(&3u16.to_le_bytes());
        msg.resize(msg.len().next_multiple_of(8), 0);
        msg.extend_from_slice(&[2, 0, 6, 0, 0, 0, 0, 0, 2, 0, 2, 0, 1, 0]);
        let r = Request::parse(&msg).unwrap();
        assert_eq!(r.ciphers, Some(vec![2, 1]));
        assert_eq!(Request::parse(&request(&[0x311], true)).unwrap().ciphers, None);
    }

    #[test]
    fn truncated_requests_are_errors() {
        let full = request(&[0x202, 0x311], true);
        for n in 0..full.len() {
            let _ = Request::parse(&full[..n]);
        }
        assert!(Request::parse(&full[..70]).is_err());
    }
}
