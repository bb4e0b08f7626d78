//! Who a session is: SPNEGO-wrapped NTLMSSP as a two-leg exchange, checked against the users
//! of the config (NT hashes only). Unknown users map to the guest when a share allows guests
//! (Samba's `map to guest = Bad User`); a known user with a wrong password is refused.

pub mod ntlmssp;
pub mod spnego;

use std::collections::HashMap;

use crate::smb::wire::status::NtStatus;

/// The identity a session runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// No credentials at all (`smbclient -N`).
    Anonymous,
    /// An unknown user mapped to the guest.
    Guest,
    /// A configured user who proved the password.
    User(String),
}

impl Identity {
    /// Anonymous and guest sessions have no session key: they cannot sign.
    pub fn is_guest_like(&self) -> bool {
        !matches!(self, Self::User(_))
    }
}

/// Users from `[[smb.user]]`: lower-cased name -> NT hash.
#[derive(Debug, Clone, Default)]
pub struct UserDb {
    users: HashMap<String, [u8; 16]>,
}

impl UserDb {
    /// Builds the table from (name, hex NT hash) pairs; bad hashes were refused by validation.
    pub fn new<'a>(users: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let users = users.into_iter().filter_map(|(n, h)| Some((n.to_lowercase(), parse_hash(h)?))).collect();
        Self { users }
    }

    fn get(&self, name: &str) -> Option<&[u8; 16]> {
        self.users.get(&name.to_lowercase())
    }
}

/// Parses 32 hex digits into an NT hash.
pub fn parse_hash(hex: &str) -> Option<[u8; 16]> {
    if hex.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Hex form of an NT hash, as `nasgw passwd` writes it.
pub fn hash_hex(h: &[u8; 16]) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

/// The server side of one NTLMSSP exchange between its two legs.
#[derive(Debug, Clone)]
pub struct NtlmExchange {
    server_challenge: [u8; 8],
    agreed: u32,
    spnego: bool,
    mech_types: Option<Vec<u8>>,
}

/// The result of a finished exchange.
#[derive(Debug, Clone)]
pub struct Authenticated {
    /// Who the session is.
    pub identity: Identity,
    /// The exported session key (users only).
    pub session_key: Option<[u8; 16]>,
    /// The blob to send back in the final SESSION_SETUP response.
    pub blob: Vec<u8>,
}

/// First leg: the client's NEGOTIATE (raw or in SPNEGO) -> our CHALLENGE blob.
pub fn start(blob: &[u8], computer: &str, filetime: u64) -> Result<(NtlmExchange, Vec<u8>), NtStatus> {
    let tok = spnego::parse_client(blob).map_err(|_| NtStatus::INVALID_PARAMETER)?;
    let Some(inner) = tok.mech_token else {
        // negTokenInit without an optimistic token: the client waits for our mech choice.
        return Err(NtStatus::INVALID_PARAMETER);
    };
    if !tok.raw && !tok.offers_ntlmssp {
        return Err(NtStatus::NOT_SUPPORTED);
    }
    let client_flags = ntlmssp::parse_negotiate(inner).map_err(|_| NtStatus::INVALID_PARAMETER)?;
    let server_challenge: [u8; 8] = rand::random();
    let (chal, agreed) = ntlmssp::challenge(client_flags, server_challenge, computer, filetime);
    let out =
        if tok.raw { chal } else { spnego::server_resp(spnego::NegState::AcceptIncomplete, Some(&chal), None, true) };
    Ok((
        NtlmExchange { server_challenge, agreed, spnego: !tok.raw, mech_types: tok.mech_types.map(<[u8]>::to_vec) },
        out,
    ))
}

/// Second leg: the client's AUTHENTICATE -> who it is, or `LOGON_FAILURE`.
pub fn finish(ex: &NtlmExchange, blob: &[u8], users: &UserDb, guest_allowed: bool) -> Result<Authenticated, NtStatus> {
    let tok = spnego::parse_client(blob).map_err(|_| NtStatus::INVALID_PARAMETER)?;
    let inner = tok.mech_token.ok_or(NtStatus::INVALID_PARAMETER)?;
    let auth = ntlmssp::Authenticate::parse(inner).map_err(|_| NtStatus::INVALID_PARAMETER)?;
    if !ntlmssp::ntlmv2_response_well_formed(&auth.nt_response) {
        tracing::info!(user = %crate::logging::untrusted(&auth.user), "SMB logon refused: malformed NTLMv2 response");
        return Err(NtStatus::INVALID_PARAMETER);
    }
    let (identity, key) = if auth.is_anonymous() {
        if !guest_allowed {
            return Err(NtStatus::LOGON_FAILURE);
        }
        (Identity::Anonymous, None)
    } else if let Some(hash) = users.get(&auth.user) {
        match ntlmssp::verify_ntlmv2(&auth, hash, &ex.server_challenge) {
            Some(k) => (Identity::User(auth.user.to_lowercase()), Some(k)),
            None => {
                tracing::info!(user = %crate::logging::untrusted(&auth.user), "SMB logon refused: wrong password");
                return Err(NtStatus::LOGON_FAILURE);
            }
        }
    } else if guest_allowed {
        (Identity::Guest, None)
    } else {
        tracing::info!(user = %crate::logging::untrusted(&auth.user), "SMB logon refused: unknown user and no guest share");
        return Err(NtStatus::LOGON_FAILURE);
    };
    let mut mic = None;
    if let (Some(k), Some(types)) = (&key, &ex.mech_types) {
        if let Some(client_mic) = tok.mech_list_mic {
            let want = ntlmssp::mic_signature(k, ex.agreed, false, types);
            if !crate::smb::signing::ct_eq(client_mic, &want) {
                tracing::info!(user = %crate::logging::untrusted(&auth.user), "SMB logon refused: SPNEGO mechListMIC mismatch");
                return Err(NtStatus::LOGON_FAILURE);
            }
            mic = Some(ntlmssp::mic_signature(k, ex.agreed, true, types));
        }
    }
    let blob = if ex.spnego {
        spnego::server_resp(spnego::NegState::AcceptCompleted, None, mic.as_ref().map(|m| &m[..]), false)
    } else {
        Vec::new()
    };
    Ok(Authenticated { identity, session_key: key, blob })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_round_trip_through_hex() {
        let h = ntlmssp::nt_hash("secret");
        assert_eq!(parse_hash(&hash_hex(&h)), Some(h));
        assert_eq!(parse_hash("zz"), None);
        assert_eq!(parse_hash(&"g".repeat(32)), None);
    }
}
