//! The rules of an SMB2 message around its commands, as pure functions (MS-SMB2 3.3.5.2):
//! splitting a compound chain into elements, what a related element inherits, which requests
//! must be signed and which signatures are checked, which responses are signed, the response
//! header, and assembling the responses into one chained, padded, signed reply.
//!
//! Nothing here does I/O or touches connection state: [`super::conn`] feeds it headers,
//! session signing facts and reply bodies, and sends what it returns. Every function is total:
//! any bytes give a value or an error, never a panic.

use std::ops::Range;

use super::signing::{self, dialect, SigningAlgorithm};
use super::wire::header::{command, offset, Header, FLAG_RELATED_OPERATIONS, FLAG_SERVER_TO_REDIR, HEADER_LEN};
use super::wire::status::NtStatus;

/// Most credits granted in one response: as many as a connection may hold
/// ([`super::sequence::MAX_OUTSTANDING`]), as Windows Server and smbd grant (smbtorture
/// `smb2.credits` asks for 65535 in one request and wants at least 8192 back).
pub const MAX_GRANT: u16 = super::sequence::MAX_OUTSTANDING as u16;

/// Most requests in one compound chain. Clients chain a handful (CREATE, QUERY_INFO, CLOSE);
/// without a cap one 8 MiB message could chain ~70,000 READs.
pub const MAX_CHAIN: usize = 128;

/// Most bytes of one chained reply: one full 8 MiB READ and 1 MiB for everything else. An
/// element whose response would go past it fails with INSUFFICIENT_RESOURCES instead, so a
/// reply never outgrows memory or the 24-bit transport length.
pub const MAX_REPLY: usize = 9 * 1024 * 1024;

// A reply's length always fits the 24-bit transport header.
const _: () = assert!(MAX_REPLY <= crate::smb::wire::header::MAX_FRAME_LEN);

/// Whether a response of `next` bytes still fits after `sofar` bytes of its chain.
pub fn fits(sofar: usize, next: usize) -> bool {
    sofar.saturating_add(next) <= MAX_REPLY
}

/// Why a message cannot be split into elements; the connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// An element's header does not decode.
    #[error("malformed SMB2 header")]
    Header,
    /// NextCommand is too small, unaligned, or points past the message.
    #[error("bad NextCommand offset")]
    NextCommand,
    /// More than [`MAX_CHAIN`] requests.
    #[error("compound chain too long")]
    TooLong,
}

impl ChainError {
    /// The reason logged when the connection is closed for it.
    pub fn why(self) -> &'static str {
        match self {
            Self::Header => "malformed SMB2 header",
            Self::NextCommand => "bad NextCommand offset",
            Self::TooLong => "compound chain too long",
        }
    }
}

/// One request of a compound chain: its header and where its bytes (header included) are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    /// The decoded header, as sent (before related-operation inheritance).
    pub header: Header,
    /// Its bytes in the message, from its header to the next element (or the end).
    pub range: Range<usize>,
}

/// Splits `msg` (one transport message starting with an SMB2 header) into its chained
/// requests. Each NextCommand must be at least a header long, 8-byte aligned, and inside the
/// message.
pub fn split(msg: &[u8]) -> Result<Vec<Element>, ChainError> {
    let mut out = Vec::new();
    let mut off = 0usize;
    loop {
        let header = Header::parse(&msg[off..]).map_err(|_| ChainError::Header)?;
        let end = if header.next_command == 0 {
            msg.len()
        } else {
            let n = header.next_command as usize;
            if n < HEADER_LEN || n % 8 != 0 || n > msg.len() - off {
                return Err(ChainError::NextCommand);
            }
            off + n
        };
        let last = header.next_command == 0;
        if out.len() == MAX_CHAIN {
            return Err(ChainError::TooLong);
        }
        out.push(Element { header, range: off..end });
        if last {
            return Ok(out);
        }
        off = end;
    }
}

/// What a related element takes from the element before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Previous {
    /// SessionId the previous response carried.
    pub session_id: u64,
    /// TreeId the previous response carried.
    pub tree_id: u32,
    /// Its status: a related element after a failure fails the same way.
    pub status: NtStatus,
}

/// Applies related-operation inheritance to `header`: a related element with all-ones
/// SessionId or TreeId uses the previous element's. Returns whether the element is related
/// (the first element never is).
pub fn inherit(header: &mut Header, prev: Option<&Previous>) -> bool {
    let Some(p) = prev.filter(|_| header.flags & FLAG_RELATED_OPERATIONS != 0) else { return false };
    if header.session_id == u64::MAX {
        header.session_id = p.session_id;
    }
    if header.tree_id == u32::MAX {
        header.tree_id = p.tree_id;
    }
    true
}

/// The status a related element fails with at once because the element before it failed
/// (MS-SMB2 3.3.5.2.7.2); `None` when it runs.
pub fn inherited_failure(header: &Header, related: bool, prev: Option<&Previous>) -> Option<NtStatus> {
    let p = prev?;
    (related && p.status.is_error() && header.command != command::NEGOTIATE).then_some(p.status)
}

/// What signing facts a session has, as far as message checks care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionSigning {
    /// The session's signing key (users only).
    pub key: Option<[u8; 16]>,
    /// Every request must be signed.
    pub required: bool,
    /// The session is authenticated.
    pub valid: bool,
}

/// What to do about a request's signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureCheck {
    /// Run it as it is.
    Accept,
    /// Verify its signature with this key first; refuse it if it does not match.
    Verify([u8; 16]),
    /// Refuse it: unsigned where signing is required.
    Refuse,
}

/// The signature rule for a request on a session with `session`'s facts (`None`: no such
/// session on this connection; the command itself answers that).
///
/// A re-authentication (SESSION_SETUP on a valid session) follows the session's rule: it must
/// be signed when the session requires signing, else an attacker on the path could swap the
/// session's identity or drop its signing; on a session that does not sign (none of its
/// traffic is protected), an unsigned one is accepted, as Windows and smbd accept it
/// (smbtorture `smb2.session.reauth*`), and must still prove the session's user.
pub fn signature_check(header: &Header, session: Option<SessionSigning>) -> SignatureCheck {
    if header.command == command::NEGOTIATE && !header.is_signed() {
        return SignatureCheck::Accept;
    }
    let Some(s) = session else { return SignatureCheck::Accept };
    match s.key {
        Some(key) if header.is_signed() => SignatureCheck::Verify(key),
        _ if s.required && s.valid && header.command != command::CANCEL => SignatureCheck::Refuse,
        _ => SignatureCheck::Accept,
    }
}

/// Checks `elem` (one request) against [`signature_check`]: `Err(ACCESS_DENIED)` for a bad
/// signature or a missing required one.
pub fn verify(
    alg: SigningAlgorithm,
    header: &Header,
    elem: &[u8],
    session: Option<SessionSigning>,
) -> Result<(), NtStatus> {
    match signature_check(header, session) {
        SignatureCheck::Accept => Ok(()),
        SignatureCheck::Verify(key) if signing::verify(alg, &key, elem) => Ok(()),
        SignatureCheck::Verify(_) | SignatureCheck::Refuse => Err(NtStatus::ACCESS_DENIED),
    }
}

/// The key a response must be signed with, if any: when the request was signed, when the
/// session requires signing, and (SMB 3.x) the final SESSION_SETUP response.
pub fn response_key(
    session: Option<SessionSigning>,
    signed_in: bool,
    final_setup: bool,
    dialect_: u16,
) -> Option<[u8; 16]> {
    let s = session?;
    let key = s.key?;
    (signed_in || s.required || (final_setup && dialect_ >= dialect::SMB300)).then_some(key)
}

/// The synchronous response header for `req`: same command, MessageId and CreditCharge, the
/// credits asked for within `[1, MAX_GRANT]`, the related flag kept.
pub fn response_header(req: &Header, status: NtStatus, session_id: u64, tree_id: u32) -> Header {
    Header {
        credit_charge: req.credit_charge,
        status: status.0,
        command: req.command,
        credits: req.credits.clamp(1, MAX_GRANT),
        flags: FLAG_SERVER_TO_REDIR | (req.flags & FLAG_RELATED_OPERATIONS),
        next_command: 0,
        message_id: req.message_id,
        async_id: 0,
        tree_id,
        session_id,
        signature: [0; 16],
    }
}

/// Pads `v` with zeros to a multiple of 8 bytes (compound elements are 8-byte aligned).
pub fn pad8(v: &mut Vec<u8>) {
    v.resize(v.len().next_multiple_of(8), 0);
}

/// One response of a chain: its bytes, the key that signs it, and the algorithm when not
/// the chain's.
type Part = (Vec<u8>, Option<[u8; 16]>, Option<SigningAlgorithm>);

/// The responses of one compound chain, assembled into one message: each but the last is
/// padded to 8 bytes and gets its NextCommand, and signed ones are signed once their bytes
/// are final.
#[derive(Debug, Default)]
pub struct ReplyChain {
    parts: Vec<Part>,
}

impl ReplyChain {
    /// An empty chain.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends one response (header and body); `key` signs it; `more` says another follows.
    pub fn push(&mut self, part: Vec<u8>, key: Option<[u8; 16]>, more: bool) {
        self.push_with(part, key, None, more);
    }

    /// [`ReplyChain::push`], signed with `alg` rather than the chain's algorithm when given
    /// (a refused channel binding is signed as its session signs, on another connection).
    pub fn push_with(&mut self, mut part: Vec<u8>, key: Option<[u8; 16]>, alg: Option<SigningAlgorithm>, more: bool) {
        if more {
            pad8(&mut part);
        }
        self.parts.push((part, key, alg));
    }

    /// No response (a lone CANCEL).
    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// How many responses.
    pub fn len(&self) -> usize {
        self.parts.len()
    }

    /// Bytes of the assembled message so far.
    pub fn bytes(&self) -> usize {
        self.parts.iter().map(|(p, _, _)| p.len()).sum()
    }

    /// The assembled message: NextCommand set on every part but the last, then each signed
    /// part signed over its final bytes (padding included). `sign: None` signs nothing: the
    /// message goes out encrypted, and the cipher's tag authenticates all of it. A lone
    /// response is returned as it is, not copied (an encrypted 8 MiB READ).
    pub fn finish(self, sign: Option<SigningAlgorithm>) -> Vec<u8> {
        let n = self.parts.len();
        let mut all = Vec::with_capacity(if n == 1 { 0 } else { self.bytes() });
        for (i, (mut part, key, own)) in self.parts.into_iter().enumerate() {
            if i + 1 < n && part.len() >= HEADER_LEN {
                let at = offset::NEXT_COMMAND;
                let len = part.len() as u32;
                part[at..at + 4].copy_from_slice(&len.to_le_bytes());
            }
            if let (Some(alg), Some(k)) = (sign.map(|a| own.unwrap_or(a)), key) {
                signing::sign(alg, &k, &mut part);
            }
            if n == 1 {
                return part;
            }
            all.extend_from_slice(&part);
        }
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smb::wire::header::FLAG_SIGNED;
    use crate::smb::wire::Writer;

    fn elem(cmd: u16, flags: u32, next: u32, sid: u64, tid: u32, body: usize) -> Vec<u8> {
        let mut w = Writer::new();
        Header { command: cmd, flags, next_command: next, session_id: sid, tree_id: tid, ..Default::default() }
            .emit(&mut w);
        w.zeros(body);
        w.buf
    }

    #[test]
    fn a_chain_splits_at_each_next_command() {
        let mut msg = elem(command::CREATE, 0, 80, 1, 2, 16);
        msg.extend(elem(command::READ, FLAG_RELATED_OPERATIONS, 72, u64::MAX, u32::MAX, 8));
        msg.extend(elem(command::CLOSE, FLAG_RELATED_OPERATIONS, 0, u64::MAX, u32::MAX, 24));
        let parts = split(&msg).unwrap();
        let got: Vec<(u16, Range<usize>)> = parts.iter().map(|e| (e.header.command, e.range.clone())).collect();
        assert_eq!(got, vec![(command::CREATE, 0..80), (command::READ, 80..152), (command::CLOSE, 152..240)]);
    }

    #[test]
    fn bad_next_commands_are_refused() {
        for next in [8u32, 63, 65, 70, 1 << 20, u32::MAX] {
            let mut msg = elem(command::ECHO, 0, next, 0, 0, 8);
            msg.extend(elem(command::ECHO, 0, 0, 0, 0, 8));
            assert_eq!(split(&msg), Err(ChainError::NextCommand), "NextCommand {next}");
        }
        let mut msg = elem(command::ECHO, 0, 72, 0, 0, 8);
        msg.extend([0u8; 40]);
        assert_eq!(split(&msg), Err(ChainError::Header));
        assert_eq!(split(b"\xfeSMB"), Err(ChainError::Header));
        assert_eq!(split(&[]), Err(ChainError::Header));
    }

    #[test]
    fn chains_are_capped_and_replies_bounded() {
        let chain = |n: usize| {
            let mut msg = Vec::new();
            for i in 0..n {
                msg.extend(elem(command::ECHO, 0, if i + 1 < n { 72 } else { 0 }, 0, 0, 8));
            }
            msg
        };
        assert_eq!(split(&chain(MAX_CHAIN)).unwrap().len(), MAX_CHAIN);
        assert_eq!(split(&chain(MAX_CHAIN + 1)), Err(ChainError::TooLong));
        assert!(fits(0, MAX_REPLY));
        assert!(fits(MAX_REPLY - 100, 100));
        assert!(!fits(MAX_REPLY - 100, 101));
        assert!(!fits(usize::MAX, 1));
    }

    #[test]
    fn related_elements_inherit_ids_and_failures() {
        let prev = Previous { session_id: 5, tree_id: 6, status: NtStatus::SUCCESS };
        let mut h =
            Header { flags: FLAG_RELATED_OPERATIONS, session_id: u64::MAX, tree_id: u32::MAX, ..Default::default() };
        assert!(inherit(&mut h, Some(&prev)));
        assert_eq!((h.session_id, h.tree_id), (5, 6));
        // Explicit ids stay; an unrelated element or the first element inherits nothing.
        let mut h = Header { flags: FLAG_RELATED_OPERATIONS, session_id: 9, tree_id: u32::MAX, ..Default::default() };
        assert!(inherit(&mut h, Some(&prev)));
        assert_eq!((h.session_id, h.tree_id), (9, 6));
        let mut h = Header { session_id: u64::MAX, ..Default::default() };
        assert!(!inherit(&mut h, Some(&prev)));
        assert_eq!(h.session_id, u64::MAX);
        let mut h = Header { flags: FLAG_RELATED_OPERATIONS, ..Default::default() };
        assert!(!inherit(&mut h, None));

        let failed = Previous { status: NtStatus::OBJECT_NAME_NOT_FOUND, ..prev };
        let read = Header { command: command::READ, ..Default::default() };
        assert_eq!(inherited_failure(&read, true, Some(&failed)), Some(NtStatus::OBJECT_NAME_NOT_FOUND));
        assert_eq!(inherited_failure(&read, false, Some(&failed)), None);
        assert_eq!(inherited_failure(&read, true, Some(&prev)), None);
        assert_eq!(inherited_failure(&read, true, None), None);
    }

    #[test]
    fn signature_rules() {
        use SignatureCheck::*;
        let key = [3u8; 16];
        let user = |required| Some(SessionSigning { key: Some(key), required, valid: true });
        let guest = Some(SessionSigning { key: None, required: false, valid: true });
        let h = |cmd: u16, signed: bool| Header {
            command: cmd,
            flags: if signed { FLAG_SIGNED } else { 0 },
            ..Default::default()
        };
        // (command, signed, session) -> rule
        let table = [
            (command::NEGOTIATE, false, user(true), Accept),
            (command::SESSION_SETUP, false, None, Accept),
            (command::SESSION_SETUP, false, Some(SessionSigning { key: None, required: false, valid: false }), Accept),
            (command::SESSION_SETUP, false, guest, Accept),
            // Re-authentication of a session that signs must be signed; of one that does not,
            // need not be.
            (command::SESSION_SETUP, false, user(true), Refuse),
            (command::SESSION_SETUP, false, user(false), Accept),
            (command::SESSION_SETUP, true, user(true), Verify(key)),
            (command::READ, true, user(false), Verify(key)),
            (command::READ, false, user(false), Accept),
            (command::READ, false, user(true), Refuse),
            (command::CANCEL, false, user(true), Accept),
            (command::READ, true, guest, Accept),
            (command::READ, false, None, Accept),
        ];
        for (cmd, signed, session, want) in table {
            assert_eq!(signature_check(&h(cmd, signed), session), want, "{cmd:#x} signed={signed} {session:?}");
        }
    }

    #[test]
    fn a_signed_request_verifies_and_a_tampered_one_does_not() {
        let key = [7u8; 16];
        let s = Some(SessionSigning { key: Some(key), required: true, valid: true });
        let mut msg = elem(command::WRITE, FLAG_SIGNED, 0, 1, 1, 32);
        signing::sign(SigningAlgorithm::AesCmac, &key, &mut msg);
        let h = Header::parse(&msg).unwrap();
        assert_eq!(verify(SigningAlgorithm::AesCmac, &h, &msg, s), Ok(()));
        msg[HEADER_LEN + 3] ^= 1;
        assert_eq!(verify(SigningAlgorithm::AesCmac, &h, &msg, s), Err(NtStatus::ACCESS_DENIED));
    }

    #[test]
    fn responses_are_signed_when_asked_required_or_final_setup() {
        let key = [1u8; 16];
        let s = |required| Some(SessionSigning { key: Some(key), required, valid: true });
        assert_eq!(response_key(s(false), true, false, dialect::SMB210), Some(key));
        assert_eq!(response_key(s(true), false, false, dialect::SMB210), Some(key));
        assert_eq!(response_key(s(false), false, false, dialect::SMB311), None);
        assert_eq!(response_key(s(false), false, true, dialect::SMB300), Some(key));
        assert_eq!(response_key(s(false), false, true, dialect::SMB210), None);
        assert_eq!(
            response_key(Some(SessionSigning { key: None, required: true, valid: true }), true, true, 0x311),
            None
        );
        assert_eq!(response_key(None, true, true, dialect::SMB311), None);
    }

    #[test]
    fn response_headers_clamp_credits_and_keep_the_related_flag() {
        let req = Header {
            command: command::READ,
            credits: 9000,
            flags: FLAG_RELATED_OPERATIONS | FLAG_SIGNED,
            message_id: 4,
            credit_charge: 2,
            ..Default::default()
        };
        let h = response_header(&req, NtStatus::SUCCESS, 7, 8);
        assert_eq!(
            (h.credits, h.flags, h.message_id, h.credit_charge),
            (MAX_GRANT, FLAG_SERVER_TO_REDIR | FLAG_RELATED_OPERATIONS, 4, 2)
        );
        assert_eq!((h.session_id, h.tree_id), (7, 8));
        assert_eq!(response_header(&Header::default(), NtStatus::SUCCESS, 0, 0).credits, 1);
    }

    #[test]
    fn a_reply_chain_is_padded_linked_and_signed_over_its_final_bytes() {
        let key = [9u8; 16];
        let mut chain = ReplyChain::new();
        chain.push(elem(command::CREATE, FLAG_SERVER_TO_REDIR, 0, 1, 1, 89), Some(key), true);
        chain.push(elem(command::READ, FLAG_SERVER_TO_REDIR, 0, 1, 1, 17), None, true);
        chain.push(elem(command::CLOSE, FLAG_SERVER_TO_REDIR, 0, 1, 1, 60), Some(key), false);
        assert_eq!(chain.len(), 3);
        let all = chain.finish(Some(SigningAlgorithm::AesCmac));
        let parts = split(&all).unwrap();
        let lens: Vec<usize> = parts.iter().map(|e| e.range.len()).collect();
        assert_eq!(lens, vec![(64 + 89usize).next_multiple_of(8), (64 + 17usize).next_multiple_of(8), 64 + 60]);
        for (e, signed) in parts.iter().zip([true, false, true]) {
            assert_eq!(e.header.is_signed(), signed);
            if signed {
                assert!(signing::verify(SigningAlgorithm::AesCmac, &key, &all[e.range.clone()]));
            }
        }
    }

    #[test]
    fn a_part_pushed_with_its_own_algorithm_is_signed_with_it() {
        // A refused binding answered on a CMAC connection for a session that signs with GMAC.
        let key = [3u8; 16];
        let mut chain = ReplyChain::new();
        let part = elem(command::SESSION_SETUP, FLAG_SERVER_TO_REDIR, 0, 1, 0, 9);
        chain.push_with(part.clone(), Some(key), Some(SigningAlgorithm::AesGmac), false);
        let all = chain.finish(Some(SigningAlgorithm::AesCmac));
        assert!(signing::verify(SigningAlgorithm::AesGmac, &key, &all));
        assert!(!signing::verify(SigningAlgorithm::AesCmac, &key, &all));
        let mut chain = ReplyChain::new();
        chain.push_with(part, Some(key), Some(SigningAlgorithm::AesGmac), false);
        assert!(!Header::parse(&chain.finish(None)).unwrap().is_signed(), "encrypted: nothing signed");
    }

    #[test]
    fn a_chain_that_goes_out_encrypted_is_not_signed() {
        let key = [9u8; 16];
        let mut chain = ReplyChain::new();
        chain.push(elem(command::CREATE, FLAG_SERVER_TO_REDIR, 0, 1, 1, 89), Some(key), true);
        chain.push(elem(command::CLOSE, FLAG_SERVER_TO_REDIR, 0, 1, 1, 60), Some(key), false);
        let all = chain.finish(None);
        let parts = split(&all).unwrap();
        assert_eq!(parts.len(), 2);
        assert!(parts.iter().all(|e| !e.header.is_signed() && e.header.signature == [0; 16]));
        let mut one = ReplyChain::new();
        let lone = elem(command::READ, FLAG_SERVER_TO_REDIR, 0, 1, 1, 1000);
        one.push(lone.clone(), None, false);
        assert_eq!(one.finish(None), lone, "a lone response is returned as it is");
    }
}
