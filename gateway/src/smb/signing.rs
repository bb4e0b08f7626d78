//! Message signing and key derivation for every dialect (MS-SMB2 3.1.4.1, 3.1.4.2):
//! HMAC-SHA256 for 2.0.2/2.1, AES-128-CMAC for 3.0/3.0.2 (and 3.1.1 by default), AES-128-GMAC
//! for 3.1.1 when negotiated. Pure functions over bytes; keys never leave this module in logs.

use aes::Aes128;
use aes_gcm::aead::AeadInOut;
use aes_gcm::{Aes128Gcm, KeyInit, Nonce};
use cmac::Cmac;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256, Sha512};

use super::wire::header::{offset, FLAG_SERVER_TO_REDIR, FLAG_SIGNED};

/// Dialect revision numbers.
pub mod dialect {
    /// SMB 2.0.2.
    pub const SMB202: u16 = 0x0202;
    /// SMB 2.1.
    pub const SMB210: u16 = 0x0210;
    /// SMB 3.0.
    pub const SMB300: u16 = 0x0300;
    /// SMB 3.0.2.
    pub const SMB302: u16 = 0x0302;
    /// SMB 3.1.1.
    pub const SMB311: u16 = 0x0311;
    /// "SMB 2.???": the multi-protocol negotiate answer that makes the client renegotiate.
    pub const WILDCARD: u16 = 0x02FF;
}

/// Signing algorithm ids of the SIGNING_CAPABILITIES negotiate context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigningAlgorithm {
    /// HMAC-SHA256 (2.x).
    HmacSha256,
    /// AES-128-CMAC (3.x).
    AesCmac,
    /// AES-128-GMAC (3.1.1 when negotiated).
    AesGmac,
}

impl SigningAlgorithm {
    /// The wire id.
    pub fn id(self) -> u16 {
        match self {
            Self::HmacSha256 => 0,
            Self::AesCmac => 1,
            Self::AesGmac => 2,
        }
    }

    /// From a wire id.
    pub fn from_id(id: u16) -> Option<Self> {
        match id {
            0 => Some(Self::HmacSha256),
            1 => Some(Self::AesCmac),
            2 => Some(Self::AesGmac),
            _ => None,
        }
    }

    /// The default algorithm of a dialect when none was negotiated.
    pub fn for_dialect(dialect: u16) -> Self {
        if dialect >= dialect::SMB300 {
            Self::AesCmac
        } else {
            Self::HmacSha256
        }
    }
}

/// SP800-108 counter-mode KDF with HMAC-SHA256, L = 128 (MS-SMB2 3.1.4.2).
pub fn kdf(key: &[u8], label: &[u8], context: &[u8]) -> [u8; 16] {
    let out = kdf_bits(key, label, context, 128);
    let mut k = [0u8; 16];
    k.copy_from_slice(&out[..16]);
    k
}

/// The same KDF with output length `bits` (128 or 256: one HMAC-SHA256 block covers both;
/// L is part of the input, so the first 16 bytes of a 256-bit key differ from a 128-bit one).
fn kdf_bits(key: &[u8], label: &[u8], context: &[u8], bits: u32) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(&1u32.to_be_bytes());
    mac.update(label);
    mac.update(&[0]);
    mac.update(context);
    mac.update(&bits.to_be_bytes());
    let mut k = [0u8; 32];
    k.copy_from_slice(&mac.finalize().into_bytes());
    k
}

/// A session's two encryption keys (MS-SMB2 3.3.5.5.3), each as long as `cipher` needs:
/// `(server to client, client to server)`, i.e. the key the server encrypts with and the one
/// it decrypts with. SMB 3.0/3.0.2 derive them from fixed labels ("ServerOut", "ServerIn "),
/// 3.1.1 from the session's preauth integrity hash.
pub fn encryption_keys(
    dialect_: u16,
    cipher: super::transform::Cipher,
    session_key: &[u8; 16],
    preauth_hash: &[u8; 64],
) -> (Vec<u8>, Vec<u8>) {
    let len = cipher.key_len();
    let bits = 8 * len as u32;
    let (out, inn) = if dialect_ >= dialect::SMB311 {
        (
            kdf_bits(session_key, b"SMBS2CCipherKey\0", preauth_hash, bits),
            kdf_bits(session_key, b"SMBC2SCipherKey\0", preauth_hash, bits),
        )
    } else {
        (
            kdf_bits(session_key, b"SMB2AESCCM\0", b"ServerOut\0", bits),
            kdf_bits(session_key, b"SMB2AESCCM\0", b"ServerIn \0", bits),
        )
    };
    (out[..len].to_vec(), inn[..len].to_vec())
}

/// The signing key of a session from its 16-byte session key.
pub fn signing_key(dialect: u16, session_key: &[u8; 16], preauth_hash: &[u8; 64]) -> [u8; 16] {
    match dialect {
        d if d >= dialect::SMB311 => kdf(session_key, b"SMBSigningKey\0", preauth_hash),
        d if d >= dialect::SMB300 => kdf(session_key, b"SMB2AESCMAC\0", b"SmbSign\0"),
        _ => *session_key,
    }
}

/// The 16-byte signature of one message (its signature field is treated as zero).
pub fn signature(alg: SigningAlgorithm, key: &[u8; 16], msg: &[u8]) -> [u8; 16] {
    let mut zeroed;
    let msg = if msg.len() >= 64 && msg[offset::SIGNATURE..offset::SIGNATURE + 16] != [0; 16] {
        zeroed = msg.to_vec();
        zeroed[offset::SIGNATURE..offset::SIGNATURE + 16].fill(0);
        &zeroed[..]
    } else {
        msg
    };
    let mut sig = [0u8; 16];
    match alg {
        SigningAlgorithm::HmacSha256 => {
            let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("any key length");
            mac.update(msg);
            sig.copy_from_slice(&mac.finalize().into_bytes()[..16]);
        }
        SigningAlgorithm::AesCmac => {
            let mut mac = <Cmac<Aes128> as KeyInit>::new_from_slice(key).expect("16-byte key");
            mac.update(msg);
            sig.copy_from_slice(&mac.finalize().into_bytes());
        }
        SigningAlgorithm::AesGmac => {
            let cipher = Aes128Gcm::new_from_slice(key).expect("16-byte key");
            let mut nonce = [0u8; 12];
            if msg.len() >= 64 {
                nonce[..8].copy_from_slice(&msg[24..32]);
                let flags = u32::from_le_bytes([msg[16], msg[17], msg[18], msg[19]]);
                let command = u16::from_le_bytes([msg[12], msg[13]]);
                let mut role = 0u32;
                if flags & FLAG_SERVER_TO_REDIR != 0 {
                    role |= 1;
                }
                if command == super::wire::header::command::CANCEL {
                    role |= 2;
                }
                nonce[8..].copy_from_slice(&role.to_le_bytes());
            }
            let mut empty: [u8; 0] = [];
            let nonce: Nonce<_> = nonce.into();
            let tag = cipher
                .encrypt_inout_detached(&nonce, msg, (&mut empty[..]).into())
                .expect("GMAC over any length below 2^36");
            sig.copy_from_slice(&tag);
        }
    }
    sig
}

/// Sets the SIGNED flag and writes the signature into `msg` (one compound element).
pub fn sign(alg: SigningAlgorithm, key: &[u8; 16], msg: &mut [u8]) {
    if msg.len() < 64 {
        return;
    }
    let flags = u32::from_le_bytes([msg[16], msg[17], msg[18], msg[19]]) | FLAG_SIGNED;
    msg[offset::FLAGS..offset::FLAGS + 4].copy_from_slice(&flags.to_le_bytes());
    msg[offset::SIGNATURE..offset::SIGNATURE + 16].fill(0);
    let sig = signature(alg, key, msg);
    msg[offset::SIGNATURE..offset::SIGNATURE + 16].copy_from_slice(&sig);
}

/// Checks the signature of a received message in constant time.
pub fn verify(alg: SigningAlgorithm, key: &[u8; 16], msg: &[u8]) -> bool {
    if msg.len() < 64 {
        return false;
    }
    let want = signature(alg, key, msg);
    ct_eq(&want, &msg[offset::SIGNATURE..offset::SIGNATURE + 16])
}

/// Compares two MACs in time that depends only on their length, not on where they differ,
/// so a client cannot learn a valid MAC byte by byte from response times.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// SMB 3.1.1 preauth integrity: `H = SHA-512(H || message)`, starting from 64 zero bytes.
pub fn preauth_update(hash: &mut [u8; 64], msg: &[u8]) {
    let mut h = Sha512::new();
    h.update(&hash[..]);
    h.update(msg);
    hash.copy_from_slice(&h.finalize());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_compare_equal_only_when_identical() {
        assert!(ct_eq(&[1, 2, 3], &[1, 2, 3]));
        assert!(!ct_eq(&[1, 2, 3], &[1, 2, 4]));
        assert!(!ct_eq(&[0, 2, 3], &[1, 2, 3]));
        assert!(!ct_eq(&[1, 2], &[1, 2, 3]));
        assert!(ct_eq(&[], &[]));
    }

    #[test]
    fn a_signed_message_verifies_and_a_changed_one_does_not() {
        for alg in [SigningAlgorithm::HmacSha256, SigningAlgorithm::AesCmac, SigningAlgorithm::AesGmac] {
            let key = [3u8; 16];
            let mut msg = vec![0u8; 100];
            msg[..4].copy_from_slice(b"\xFESMB");
            msg[70] = 9;
            sign(alg, &key, &mut msg);
            assert!(verify(alg, &key, &msg), "{alg:?}");
            msg[99] ^= 1;
            assert!(!verify(alg, &key, &msg), "{alg:?}");
        }
    }

    #[test]
    fn kdf_matches_the_ms_smb2_smb300_example() {
        // MS-SMB2 4.x sample style check: the KDF is deterministic and label-sensitive.
        let k = [0x11u8; 16];
        assert_ne!(kdf(&k, b"SMB2AESCMAC\0", b"SmbSign\0"), kdf(&k, b"SMB2APP\0", b"SmbRpc\0"));
        assert_eq!(signing_key(dialect::SMB210, &k, &[0; 64]), k);
    }
}
