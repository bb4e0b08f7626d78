//! SMB 3 encryption: the TRANSFORM header (MS-SMB2 2.2.41) and the sealing and opening of
//! whole messages with a session's keys (3.1.4.3, 3.3.5.2.1.1).
//!
//! An encrypted message is `TRANSFORM_HEADER (52 bytes) || ciphertext`: the header carries the
//! AEAD tag (Signature), the nonce, the plaintext's length and the SessionId whose keys
//! encrypted it; the header from the nonce on is the authenticated data. The plaintext is an
//! ordinary SMB2 message (a compound chain included).
//!
//! Everything here is pure: [`TransformHeader::parse`] takes any bytes and returns a header
//! or an error, never panics (fuzzed by `fuzz/fuzz_targets/smb_transform.rs`);
//! [`SessionCipher`] seals and opens buffers in place (no copy of READ or WRITE data). GCM is
//! `ring`'s: its stitched AES + GHASH code (AES-NI or VAES with carry-less multiply, picked at
//! run time) costs a quarter of the CPU per byte of RustCrypto's `aes-gcm`, whose separate
//! AES-CTR and POLYVAL passes made half of an encrypted download's server time. CCM stays
//! RustCrypto's (`ring` has none). Keys never appear in `Debug` output or logs.

use std::sync::atomic::{AtomicU64, Ordering};

use aes::{Aes128, Aes256};
use aes_gcm::aead::{AeadInOut, KeyInit};
use ccm::consts::{U11, U16};
use ccm::Ccm;
use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, AES_128_GCM, AES_256_GCM};

/// ProtocolId of a TRANSFORM header: 0xFD 'S' 'M' 'B'.
pub const PROTOCOL_ID: [u8; 4] = super::wire::header::TRANSFORM_PROTOCOL_ID;
/// Length of the TRANSFORM header.
pub const HEADER_LEN: usize = 52;
/// Where the authenticated part of the header starts (after ProtocolId and Signature).
const AAD_START: usize = 20;
/// Flags/EncryptionAlgorithm: the message is encrypted (the only value defined).
pub const FLAG_ENCRYPTED: u16 = 1;
/// Most plaintext one message may carry: nothing the server accepts or sends is larger
/// than a transport frame (24 bits).
pub const MAX_MESSAGE: usize = 0x00FF_FFFF;

/// The AES-128-CCM cipher type of SMB (16-byte tag, 11-byte nonce).
type Aes128Ccm = Ccm<Aes128, U16, U11>;
/// The AES-256-CCM cipher type of SMB (16-byte tag, 11-byte nonce).
type Aes256Ccm = Ccm<Aes256, U16, U11>;

/// The ciphers of SMB 3 (the ENCRYPTION_CAPABILITIES ids). SMB 3.0 and 3.0.2 know only
/// AES-128-CCM; SMB 3.1.1 negotiates one of the four.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cipher {
    /// AES-128-CCM (id 1).
    Aes128Ccm,
    /// AES-128-GCM (id 2).
    Aes128Gcm,
    /// AES-256-CCM (id 3).
    Aes256Ccm,
    /// AES-256-GCM (id 4).
    Aes256Gcm,
}

impl Cipher {
    /// Every cipher nasgw speaks.
    pub const ALL: [Cipher; 4] = [Cipher::Aes128Gcm, Cipher::Aes128Ccm, Cipher::Aes256Gcm, Cipher::Aes256Ccm];

    /// The wire id.
    pub fn id(self) -> u16 {
        match self {
            Self::Aes128Ccm => 1,
            Self::Aes128Gcm => 2,
            Self::Aes256Ccm => 3,
            Self::Aes256Gcm => 4,
        }
    }

    /// From a wire id (unknown ids are `None`).
    pub fn from_id(id: u16) -> Option<Self> {
        match id {
            1 => Some(Self::Aes128Ccm),
            2 => Some(Self::Aes128Gcm),
            3 => Some(Self::Aes256Ccm),
            4 => Some(Self::Aes256Gcm),
            _ => None,
        }
    }

    /// The name logs and docs use.
    pub fn name(self) -> &'static str {
        match self {
            Self::Aes128Ccm => "AES-128-CCM",
            Self::Aes128Gcm => "AES-128-GCM",
            Self::Aes256Ccm => "AES-256-CCM",
            Self::Aes256Gcm => "AES-256-GCM",
        }
    }

    /// Key length in bytes (the KDF's L is 8 times it).
    pub fn key_len(self) -> usize {
        match self {
            Self::Aes128Ccm | Self::Aes128Gcm => 16,
            Self::Aes256Ccm | Self::Aes256Gcm => 32,
        }
    }

    /// Bytes of the 16-byte Nonce field the cipher uses (CCM 11, GCM 12); the rest is zero.
    pub fn nonce_len(self) -> usize {
        match self {
            Self::Aes128Ccm | Self::Aes256Ccm => 11,
            Self::Aes128Gcm | Self::Aes256Gcm => 12,
        }
    }
}

/// Why a transform message is refused; the connection is closed for any of them
/// (MS-SMB2 3.3.5.2.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TransformError {
    /// Not longer than a TRANSFORM header.
    #[error("transform message too short")]
    Short,
    /// ProtocolId is not 0xFD 'S' 'M' 'B'.
    #[error("not a transform header")]
    NotTransform,
    /// Flags/EncryptionAlgorithm is not 1 (encrypted).
    #[error("transform flags are not 'encrypted'")]
    Flags,
    /// OriginalMessageSize differs from the bytes that follow the header.
    #[error("transform OriginalMessageSize does not match the message")]
    Size,
    /// The tag does not authenticate the message (wrong key, or tampered).
    #[error("decryption failed")]
    Decrypt,
    /// The session's nonce counter is exhausted (2^64 messages): never reuse one.
    #[error("nonces exhausted")]
    Exhausted,
}

/// A decoded TRANSFORM header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransformHeader {
    /// The AEAD tag.
    pub signature: [u8; 16],
    /// The nonce (the cipher uses its first 11 or 12 bytes).
    pub nonce: [u8; 16],
    /// Length of the plaintext message.
    pub original_size: u32,
    /// Flags/EncryptionAlgorithm.
    pub flags: u16,
    /// The session whose keys encrypted the message.
    pub session_id: u64,
}

impl TransformHeader {
    /// Decodes and checks the header of `msg` (a whole transport message): the ProtocolId,
    /// the encrypted flag, and OriginalMessageSize equal to what follows the header.
    pub fn parse(msg: &[u8]) -> Result<Self, TransformError> {
        if msg.len() < 4 || msg[..4] != PROTOCOL_ID {
            return Err(TransformError::NotTransform);
        }
        let Some(h) = msg.get(..HEADER_LEN).filter(|_| msg.len() > HEADER_LEN) else {
            return Err(TransformError::Short);
        };
        let mut signature = [0u8; 16];
        signature.copy_from_slice(&h[4..20]);
        let mut nonce = [0u8; 16];
        nonce.copy_from_slice(&h[20..36]);
        let original_size = u32::from_le_bytes([h[36], h[37], h[38], h[39]]);
        let flags = u16::from_le_bytes([h[42], h[43]]);
        let mut sid = [0u8; 8];
        sid.copy_from_slice(&h[44..52]);
        let hdr = Self { signature, nonce, original_size, flags, session_id: u64::from_le_bytes(sid) };
        if hdr.flags != FLAG_ENCRYPTED {
            return Err(TransformError::Flags);
        }
        if hdr.original_size as usize != msg.len() - HEADER_LEN {
            return Err(TransformError::Size);
        }
        Ok(hdr)
    }

    /// The header's 52 bytes.
    pub fn emit(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[..4].copy_from_slice(&PROTOCOL_ID);
        h[4..20].copy_from_slice(&self.signature);
        h[20..36].copy_from_slice(&self.nonce);
        h[36..40].copy_from_slice(&self.original_size.to_le_bytes());
        h[42..44].copy_from_slice(&self.flags.to_le_bytes());
        h[44..52].copy_from_slice(&self.session_id.to_le_bytes());
        h
    }
}

/// One direction's key, its AES key schedule expanded once per session.
enum AeadKey {
    Aes128Ccm(Box<Aes128Ccm>),
    Aes256Ccm(Box<Aes256Ccm>),
    /// AES-128-GCM or AES-256-GCM (the key says which).
    Gcm(Box<LessSafeKey>),
}

/// Seals `buf` in place with `$c`, returning the tag.
macro_rules! seal_with {
    ($c:expr, $n:expr, $aad:expr, $buf:expr) => {
        $c.encrypt_inout_detached($n.try_into().map_err(|_| TransformError::Decrypt)?, $aad, $buf.into())
            .map(|t| {
                let mut tag = [0u8; 16];
                tag.copy_from_slice(&t);
                tag
            })
            .map_err(|_| TransformError::Decrypt)
    };
}

/// Opens `buf` in place with `$c`, checking the tag.
macro_rules! open_with {
    ($c:expr, $n:expr, $aad:expr, $buf:expr, $tag:expr) => {
        $c.decrypt_inout_detached($n.try_into().map_err(|_| TransformError::Decrypt)?, $aad, $buf.into(), $tag.into())
            .map_err(|_| TransformError::Decrypt)
    };
}

impl AeadKey {
    /// The key of `cipher`; `None` when `key` has the wrong length.
    fn new(cipher: Cipher, key: &[u8]) -> Option<Self> {
        let gcm = |alg| UnboundKey::new(alg, key).ok().map(|k| Self::Gcm(Box::new(LessSafeKey::new(k))));
        match cipher {
            Cipher::Aes128Ccm => Some(Self::Aes128Ccm(Box::new(Aes128Ccm::new_from_slice(key).ok()?))),
            Cipher::Aes256Ccm => Some(Self::Aes256Ccm(Box::new(Aes256Ccm::new_from_slice(key).ok()?))),
            Cipher::Aes128Gcm => gcm(&AES_128_GCM),
            Cipher::Aes256Gcm => gcm(&AES_256_GCM),
        }
    }

    fn seal(&self, nonce: &[u8], aad: &[u8], buf: &mut [u8]) -> Result<[u8; 16], TransformError> {
        match self {
            Self::Aes128Ccm(c) => seal_with!(c, nonce, aad, buf),
            Self::Aes256Ccm(c) => seal_with!(c, nonce, aad, buf),
            Self::Gcm(k) => {
                let tag = k
                    .seal_in_place_separate_tag(gcm_nonce(nonce)?, Aad::from(aad), buf)
                    .map_err(|_| TransformError::Decrypt)?;
                let mut out = [0u8; 16];
                out.copy_from_slice(tag.as_ref());
                Ok(out)
            }
        }
    }

    fn open(&self, nonce: &[u8], aad: &[u8], buf: &mut [u8], tag: &[u8; 16]) -> Result<(), TransformError> {
        match self {
            Self::Aes128Ccm(c) => open_with!(c, nonce, aad, buf, tag),
            Self::Aes256Ccm(c) => open_with!(c, nonce, aad, buf, tag),
            Self::Gcm(k) => k
                .open_in_place_separate_tag(gcm_nonce(nonce)?, Aad::from(aad), Tag::from(*tag), buf, 0..)
                .map(|_| ())
                .map_err(|_| TransformError::Decrypt),
        }
    }
}

/// The 12-byte nonce of GCM.
fn gcm_nonce(nonce: &[u8]) -> Result<Nonce, TransformError> {
    Nonce::try_assume_unique_for_key(nonce).map_err(|_| TransformError::Decrypt)
}

/// A session's encryption state: the cipher the connection negotiated, the key the server
/// encrypts with (ServerToClient / ServerOut), the key it decrypts with (ClientToServer /
/// ServerIn), and the nonce counter. Shared (`Arc`) by the command loop and the tasks that
/// send async replies and break notifications, so every message of the session takes the
/// next nonce from one counter: a nonce is never used twice under a key.
pub struct SessionCipher {
    session_id: u64,
    cipher: Cipher,
    seal_key: AeadKey,
    open_key: AeadKey,
    /// Fixed random bytes after the counter in every nonce this session sends.
    salt: [u8; 4],
    counter: AtomicU64,
}

impl std::fmt::Debug for SessionCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys.
        f.debug_struct("SessionCipher").field("session_id", &self.session_id).field("cipher", &self.cipher).finish()
    }
}

impl SessionCipher {
    /// The state of session `session_id` with `cipher`, encrypting with `seal_key` and
    /// decrypting with `open_key`; `None` when a key's length does not fit the cipher.
    pub fn new(session_id: u64, cipher: Cipher, seal_key: &[u8], open_key: &[u8]) -> Option<Self> {
        Some(Self {
            session_id,
            cipher,
            seal_key: AeadKey::new(cipher, seal_key)?,
            open_key: AeadKey::new(cipher, open_key)?,
            salt: rand::random(),
            counter: AtomicU64::new(0),
        })
    }

    /// The session these keys belong to.
    pub fn session_id(&self) -> u64 {
        self.session_id
    }

    /// The cipher.
    pub fn cipher(&self) -> Cipher {
        self.cipher
    }

    /// The next nonce: an 8-byte counter, then the session's salt, zero-padded to 16 bytes.
    fn next_nonce(&self) -> Result<[u8; 16], TransformError> {
        let n = self
            .counter
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| c.checked_add(1))
            .map_err(|_| TransformError::Exhausted)?;
        let mut nonce = [0u8; 16];
        nonce[..8].copy_from_slice(&n.to_le_bytes());
        let used = self.cipher.nonce_len();
        nonce[8..used].copy_from_slice(&self.salt[..used - 8]);
        Ok(nonce)
    }

    /// Encrypts `msg` (a whole SMB2 message, chain included) in place and returns the
    /// TRANSFORM header that goes before it.
    pub fn seal(&self, msg: &mut [u8]) -> Result<[u8; HEADER_LEN], TransformError> {
        if msg.len() > MAX_MESSAGE {
            return Err(TransformError::Size);
        }
        let mut hdr = TransformHeader {
            signature: [0; 16],
            nonce: self.next_nonce()?,
            original_size: msg.len() as u32,
            flags: FLAG_ENCRYPTED,
            session_id: self.session_id,
        };
        let bytes = hdr.emit();
        let used = self.cipher.nonce_len();
        hdr.signature = self.seal_key.seal(&hdr.nonce[..used], &bytes[AAD_START..], msg)?;
        Ok(hdr.emit())
    }

    /// Decrypts the transform message `msg` (header included) in place. On success the
    /// plaintext SMB2 message is `msg[HEADER_LEN..]`. The header must name this session.
    pub fn open(&self, msg: &mut [u8]) -> Result<(), TransformError> {
        let hdr = TransformHeader::parse(msg)?;
        if hdr.session_id != self.session_id {
            return Err(TransformError::Decrypt);
        }
        let (head, body) = msg.split_at_mut(HEADER_LEN);
        let used = self.cipher.nonce_len();
        self.open_key.open(&hdr.nonce[..used], &head[AAD_START..], body, &hdr.signature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(cipher: Cipher) -> (SessionCipher, SessionCipher) {
        let a = vec![7u8; cipher.key_len()];
        let b = vec![9u8; cipher.key_len()];
        // The server seals with a and opens with b; the client is the mirror image.
        (SessionCipher::new(42, cipher, &a, &b).unwrap(), SessionCipher::new(42, cipher, &b, &a).unwrap())
    }

    fn sealed(by: &SessionCipher, plain: &[u8]) -> Vec<u8> {
        let mut body = plain.to_vec();
        let hdr = by.seal(&mut body).unwrap();
        let mut msg = hdr.to_vec();
        msg.extend_from_slice(&body);
        msg
    }

    #[test]
    fn every_cipher_round_trips_and_refuses_tampering() {
        for cipher in Cipher::ALL {
            let (server, client) = pair(cipher);
            let plain = b"\xfeSMB and then a body of some length".repeat(100);
            let msg = sealed(&server, &plain);
            assert_eq!(msg.len(), HEADER_LEN + plain.len());
            assert_ne!(&msg[HEADER_LEN..], &plain[..], "{cipher:?} encrypts");
            let mut ok = msg.clone();
            client.open(&mut ok).unwrap();
            assert_eq!(&ok[HEADER_LEN..], &plain[..], "{cipher:?}");
            // The wrong direction's key does not open it.
            assert_eq!(server.open(&mut msg.clone()), Err(TransformError::Decrypt), "{cipher:?}");
            // Any flipped bit of the ciphertext, tag, nonce, size or session fails.
            for at in [4, 19, 20, 31, 44, HEADER_LEN, msg.len() - 1] {
                let mut bad = msg.clone();
                bad[at] ^= 1;
                assert!(client.open(&mut bad).is_err(), "{cipher:?}: flipped byte {at} accepted");
            }
        }
    }

    #[test]
    fn nonces_are_never_reused_and_fit_the_cipher() {
        for cipher in Cipher::ALL {
            let (server, _) = pair(cipher);
            let mut seen = std::collections::HashSet::new();
            for _ in 0..1000 {
                let h = TransformHeader::parse(&sealed(&server, b"\xfeSMBxxxx")).unwrap();
                assert!(h.nonce[cipher.nonce_len()..].iter().all(|b| *b == 0), "{cipher:?}: nonce padding");
                assert!(seen.insert(h.nonce), "{cipher:?}: nonce reused");
                assert_eq!((h.session_id, h.flags, h.original_size), (42, FLAG_ENCRYPTED, 8));
            }
        }
        let (server, _) = pair(Cipher::Aes128Gcm);
        server.counter.store(u64::MAX, Ordering::Relaxed);
        assert_eq!(server.seal(&mut [0u8; 8]), Err(TransformError::Exhausted));
    }

    #[test]
    fn bad_headers_are_refused() {
        let (server, client) = pair(Cipher::Aes128Ccm);
        let msg = sealed(&server, b"\xfeSMB0123456789");
        assert_eq!(TransformHeader::parse(&msg[..HEADER_LEN]), Err(TransformError::Short));
        assert_eq!(TransformHeader::parse(b"\xfeSMB"), Err(TransformError::NotTransform));
        assert_eq!(TransformHeader::parse(&[]), Err(TransformError::NotTransform));
        let mut flags = msg.clone();
        flags[42] = 2;
        assert_eq!(TransformHeader::parse(&flags), Err(TransformError::Flags));
        let mut longer = msg.clone();
        longer.push(0);
        assert_eq!(TransformHeader::parse(&longer), Err(TransformError::Size));
        assert_eq!(client.open(&mut longer), Err(TransformError::Size));
        let other = SessionCipher::new(43, Cipher::Aes128Ccm, &[9; 16], &[7; 16]).unwrap();
        assert_eq!(other.open(&mut msg.clone()), Err(TransformError::Decrypt), "another session's message");
        // Truncations never panic.
        for n in 0..msg.len() {
            let _ = client.open(&mut msg[..n].to_vec());
        }
    }

    #[test]
    fn messages_sealed_by_another_implementation_open() {
        // Sealed by Python `cryptography` (fuzz/seeds/smb_transform), session 1, key 9s.
        let seeds: [(Cipher, &[u8]); 4] = [
            (Cipher::Aes128Gcm, include_bytes!("../../../fuzz/seeds/smb_transform/gcm128")),
            (Cipher::Aes128Ccm, include_bytes!("../../../fuzz/seeds/smb_transform/ccm128")),
            (Cipher::Aes256Gcm, include_bytes!("../../../fuzz/seeds/smb_transform/gcm256")),
            (Cipher::Aes256Ccm, include_bytes!("../../../fuzz/seeds/smb_transform/ccm256")),
        ];
        for (cipher, msg) in seeds {
            let k = vec![9u8; cipher.key_len()];
            let server = SessionCipher::new(1, cipher, &k, &k).unwrap();
            let mut m = msg.to_vec();
            server.open(&mut m).unwrap_or_else(|e| panic!("{cipher:?}: {e}"));
            assert_eq!(&m[HEADER_LEN..HEADER_LEN + 4], b"\xfeSMB", "{cipher:?}");
        }
    }

    #[test]
    fn gcm_seals_what_another_implementation_opens() {
        // RustCrypto's aes-gcm (which signs with GMAC) opens what `ring` sealed.
        use aes_gcm::{Aes128Gcm, Aes256Gcm};
        for cipher in [Cipher::Aes128Gcm, Cipher::Aes256Gcm] {
            let (server, _) = pair(cipher);
            let plain = b"\xfeSMB a READ reply".repeat(3000);
            let mut msg = sealed(&server, &plain);
            let hdr = TransformHeader::parse(&msg).unwrap();
            let (head, body) = msg.split_at_mut(HEADER_LEN);
            let (nonce, aad, tag) = (&hdr.nonce[..12], &head[AAD_START..], &hdr.signature);
            let key = vec![7u8; cipher.key_len()];
            let r = match cipher {
                Cipher::Aes128Gcm => Aes128Gcm::new_from_slice(&key).unwrap().decrypt_inout_detached(
                    nonce.try_into().unwrap(),
                    aad,
                    body.into(),
                    tag.into(),
                ),
                _ => Aes256Gcm::new_from_slice(&key).unwrap().decrypt_inout_detached(
                    nonce.try_into().unwrap(),
                    aad,
                    body.into(),
                    tag.into(),
                ),
            };
            r.unwrap_or_else(|_| panic!("{cipher:?}: RustCrypto refuses the tag"));
            assert_eq!(body, &plain[..], "{cipher:?}");
        }
    }

    #[test]
    fn debug_output_shows_no_key() {
        let (server, _) = pair(Cipher::Aes256Gcm);
        let text = format!("{server:?}");
        assert!(text.contains("Aes256Gcm") && !text.contains("7, 7"), "{text}");
    }

    #[test]
    fn keys_of_the_wrong_length_are_refused() {
        assert!(SessionCipher::new(1, Cipher::Aes256Ccm, &[0; 16], &[0; 32]).is_none());
        assert!(SessionCipher::new(1, Cipher::Aes128Gcm, &[0; 16], &[0; 15]).is_none());
    }
}
