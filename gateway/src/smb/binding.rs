//! Session binding (multichannel, MS-SMB2 3.3.5.5.2): whether a SESSION_SETUP with
//! SMB2_SESSION_FLAG_BINDING may add the connection it came on as a channel of an existing
//! session of this node. Pure: the facts of the session and of the new connection in, the
//! refusal status out, checked in the order smbd 4.17 checks them (`smb2_sesssetup.c`), which
//! is the order smbtorture `smb2.session.bind_negative_*` tells apart.
//!
//! A binding is per node: the session lives on the connection that set it up on this node
//! ([`super::node_sessions`]), so a client binds channels to the node it is on; a session of
//! another node is unknown here (USER_SESSION_DELETED), as smbd answers a cross-node bind.

use super::signing::{dialect, SigningAlgorithm};
use super::transform::Cipher;
use super::wire::status::NtStatus;

/// What the existing session was set up with (on its first channel).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionSide {
    /// Dialect of the session's first connection.
    pub dialect: u16,
    /// Its signing algorithm.
    pub signing_alg: SigningAlgorithm,
    /// Its cipher.
    pub cipher: Option<Cipher>,
    /// A guest or anonymous session (no key: it cannot bind).
    pub guest_like: bool,
}

/// What the connection asking to bind negotiated, and what its request carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelSide {
    /// Dialect of the new connection.
    pub dialect: u16,
    /// Its signing algorithm.
    pub signing_alg: SigningAlgorithm,
    /// Its cipher.
    pub cipher: Option<Cipher>,
    /// `[smb] multichannel` is on.
    pub multichannel: bool,
    /// The request was signed (and its signature verified with the session's key).
    pub signed: bool,
    /// The connection is already a channel of the session (bound, or binding).
    pub already_bound: bool,
}

/// Why a binding is refused, or `None`: it may go on to authenticate.
pub fn refusal(session: SessionSide, channel: ChannelSide) -> Option<NtStatus> {
    let gmac = |a: SigningAlgorithm| a == SigningAlgorithm::AesGmac;
    // A session signing with GMAC cannot get a channel that signs otherwise, nor the reverse;
    // MS-SMB2 3.3.5.2.4 asks for these two statuses, which let a client tell them apart.
    if gmac(session.signing_alg) && channel.signing_alg != session.signing_alg {
        return Some(NtStatus::REQUEST_OUT_OF_SEQUENCE);
    }
    if gmac(channel.signing_alg) && session.signing_alg != channel.signing_alg {
        return Some(NtStatus::NOT_SUPPORTED);
    }
    if channel.dialect < dialect::SMB300 || channel.dialect == dialect::WILDCARD || !channel.multichannel {
        return Some(NtStatus::REQUEST_NOT_ACCEPTED);
    }
    if !channel.signed || session.dialect != channel.dialect || session.cipher != channel.cipher {
        return Some(NtStatus::INVALID_PARAMETER);
    }
    if channel.already_bound {
        return Some(NtStatus::REQUEST_NOT_ACCEPTED);
    }
    if session.guest_like {
        return Some(NtStatus::NOT_SUPPORTED);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use SigningAlgorithm::{AesCmac as C, AesGmac as G, HmacSha256 as H};

    const CCM: Option<Cipher> = Some(Cipher::Aes128Ccm);
    const GCM: Option<Cipher> = Some(Cipher::Aes128Gcm);

    fn s(dialect: u16, signing_alg: SigningAlgorithm, cipher: Option<Cipher>) -> SessionSide {
        SessionSide { dialect, signing_alg, cipher, guest_like: false }
    }

    fn c(dialect: u16, signing_alg: SigningAlgorithm, cipher: Option<Cipher>) -> ChannelSide {
        ChannelSide { dialect, signing_alg, cipher, multichannel: true, signed: true, already_bound: false }
    }

    #[test]
    fn bindings_are_refused_as_smbd_refuses_them() {
        use dialect::{SMB202, SMB210, SMB300, SMB302, SMB311};
        // One row per smbtorture bind_negative case (its name), then the other rules.
        let table: [(&str, SessionSide, ChannelSide, Option<NtStatus>); 14] = [
            ("smb202", s(SMB202, H, None), c(SMB202, H, None), Some(NtStatus::REQUEST_NOT_ACCEPTED)),
            ("smb210", s(SMB210, H, None), c(SMB210, H, None), Some(NtStatus::REQUEST_NOT_ACCEPTED)),
            ("smb2to3", s(SMB210, H, None), c(SMB311, C, GCM), Some(NtStatus::INVALID_PARAMETER)),
            ("smb3to2", s(SMB311, C, GCM), c(SMB210, H, None), Some(NtStatus::REQUEST_NOT_ACCEPTED)),
            ("smb3to3", s(SMB302, C, CCM), c(SMB311, C, GCM), Some(NtStatus::INVALID_PARAMETER)),
            ("smb3encGtoC", s(SMB311, C, GCM), c(SMB311, C, CCM), Some(NtStatus::INVALID_PARAMETER)),
            ("smb3signCtoH", s(SMB311, C, GCM), c(SMB311, H, GCM), None),
            ("smb3signHtoC", s(SMB311, H, GCM), c(SMB311, C, GCM), None),
            ("smb3signCtoG", s(SMB311, C, GCM), c(SMB311, G, GCM), Some(NtStatus::NOT_SUPPORTED)),
            ("smb3signGtoC", s(SMB311, G, GCM), c(SMB311, C, GCM), Some(NtStatus::REQUEST_OUT_OF_SEQUENCE)),
            ("smb3signC30toG", s(SMB300, C, CCM), c(SMB311, G, GCM), Some(NtStatus::NOT_SUPPORTED)),
            ("smb3signGtoC30", s(SMB311, G, GCM), c(SMB300, C, CCM), Some(NtStatus::REQUEST_OUT_OF_SEQUENCE)),
            ("same", s(SMB311, G, GCM), c(SMB311, G, GCM), None),
            ("same 3.0", s(SMB300, C, CCM), c(SMB300, C, CCM), None),
        ];
        for (name, session, channel, want) in table {
            assert_eq!(refusal(session, channel), want, "{name}");
        }
        let (session, ok) = (s(SMB311, G, GCM), c(SMB311, G, GCM));
        let rules = [
            (ChannelSide { multichannel: false, ..ok }, NtStatus::REQUEST_NOT_ACCEPTED),
            (ChannelSide { signed: false, ..ok }, NtStatus::INVALID_PARAMETER),
            (ChannelSide { already_bound: true, ..ok }, NtStatus::REQUEST_NOT_ACCEPTED),
        ];
        for (channel, want) in rules {
            assert_eq!(refusal(session, channel), Some(want), "{channel:?}");
        }
        let guest = SessionSide { guest_like: true, ..session };
        assert_eq!(refusal(guest, ok), Some(NtStatus::NOT_SUPPORTED));
    }
}
