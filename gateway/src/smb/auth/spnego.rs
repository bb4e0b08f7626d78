//! The SPNEGO (RFC 4178) wrapping of NTLMSSP tokens: just enough DER to read a client's
//! negTokenInit/negTokenResp and write ours. Pure functions; any malformed input is an error.

use crate::smb::wire::{WireError, WireResult};

/// DER of OID 1.3.6.1.5.5.2 (SPNEGO).
const SPNEGO_OID: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x02];
/// DER of OID 1.3.6.1.4.1.311.2.2.10 (NTLMSSP).
const NTLMSSP_OID: &[u8] = &[0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0x37, 0x02, 0x02, 0x0a];

/// negState of a negTokenResp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NegState {
    /// Authentication done.
    AcceptCompleted = 0,
    /// Another leg follows.
    AcceptIncomplete = 1,
    /// Refused.
    Reject = 2,
}

/// What a client's security blob carried.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientToken<'a> {
    /// The inner mechanism token (NTLMSSP message), if any.
    pub mech_token: Option<&'a [u8]>,
    /// DER of the MechTypeList the client offered (what mechListMIC covers).
    pub mech_types: Option<&'a [u8]>,
    /// The client offered NTLMSSP among its mechanisms (negTokenInit only).
    pub offers_ntlmssp: bool,
    /// mechListMIC the client sent.
    pub mech_list_mic: Option<&'a [u8]>,
    /// The blob was raw NTLMSSP, not SPNEGO.
    pub raw: bool,
}

/// One DER TLV: (tag, content, whole element including header, what follows).
type Tlv<'a> = (u8, &'a [u8], &'a [u8], &'a [u8]);
/// One element of a constructed value: (tag, content, whole element).
type Element<'a> = (u8, &'a [u8], &'a [u8]);

fn tlv(buf: &[u8]) -> WireResult<Tlv<'_>> {
    let tag = *buf.first().ok_or(WireError::Malformed("DER tag"))?;
    let first = *buf.get(1).ok_or(WireError::Malformed("DER length"))?;
    let (len, hdr) = if first < 0x80 {
        (first as usize, 2)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 {
            return Err(WireError::Malformed("DER length"));
        }
        let bytes = buf.get(2..2 + n).ok_or(WireError::Malformed("DER length"))?;
        (bytes.iter().fold(0usize, |a, b| (a << 8) | *b as usize), 2 + n)
    };
    let end = hdr.checked_add(len).ok_or(WireError::Malformed("DER length"))?;
    let content = buf.get(hdr..end).ok_or(WireError::Malformed("DER truncated"))?;
    Ok((tag, content, &buf[..end], &buf[end..]))
}

/// Iterates the elements of a constructed value.
fn elements(mut buf: &[u8]) -> WireResult<Vec<Element<'_>>> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        let (t, c, whole, rest) = tlv(buf)?;
        out.push((t, c, whole));
        buf = rest;
        if out.len() > 64 {
            return Err(WireError::Malformed("DER too many elements"));
        }
    }
    Ok(out)
}

/// Decodes a client's SESSION_SETUP security blob.
pub fn parse_client(blob: &[u8]) -> WireResult<ClientToken<'_>> {
    if blob.starts_with(b"NTLMSSP\0") {
        return Ok(ClientToken { mech_token: Some(blob), raw: true, ..Default::default() });
    }
    let (tag, content, _, _) = tlv(blob)?;
    match tag {
        0x60 => {
            let (t, oid, _, rest) = tlv(content)?;
            if t != 0x06 || oid != SPNEGO_OID {
                return Err(WireError::Malformed("SPNEGO OID"));
            }
            let (t, init, _, _) = tlv(rest)?;
            if t != 0xa0 {
                return Err(WireError::Malformed("negTokenInit"));
            }
            let (t, seq, _, _) = tlv(init)?;
            if t != 0x30 {
                return Err(WireError::Malformed("negTokenInit sequence"));
            }
            let mut tok = ClientToken::default();
            for (t, c, _) in elements(seq)? {
                match t {
                    0xa0 => {
                        let (st, list, whole, _) = tlv(c)?;
                        if st != 0x30 {
                            return Err(WireError::Malformed("mechTypes"));
                        }
                        tok.mech_types = Some(whole);
                        tok.offers_ntlmssp =
                            elements(list)?.iter().any(|(t, oid, _)| *t == 0x06 && *oid == NTLMSSP_OID);
                    }
                    0xa2 => tok.mech_token = Some(octet_string(c)?),
                    0xa3 => tok.mech_list_mic = Some(octet_string(c)?),
                    _ => {}
                }
            }
            Ok(tok)
        }
        0xa1 => {
            let (t, seq, _, _) = tlv(content)?;
            if t != 0x30 {
                return Err(WireError::Malformed("negTokenResp sequence"));
            }
            let mut tok = ClientToken::default();
            for (t, c, _) in elements(seq)? {
                match t {
                    0xa2 => tok.mech_token = Some(octet_string(c)?),
                    0xa3 => tok.mech_list_mic = Some(octet_string(c)?),
                    _ => {}
                }
            }
            Ok(tok)
        }
        _ => Err(WireError::Malformed("SPNEGO token")),
    }
}

fn octet_string(buf: &[u8]) -> WireResult<&[u8]> {
    let (t, c, _, _) = tlv(buf)?;
    if t != 0x04 {
        return Err(WireError::Malformed("OCTET STRING"));
    }
    Ok(c)
}

/// Appends a DER TLV.
fn put(out: &mut Vec<u8>, tag: u8, content: &[u8]) {
    out.push(tag);
    let n = content.len();
    if n < 0x80 {
        out.push(n as u8);
    } else if n < 0x100 {
        out.extend_from_slice(&[0x81, n as u8]);
    } else if n < 0x10000 {
        out.extend_from_slice(&[0x82, (n >> 8) as u8, n as u8]);
    } else {
        out.extend_from_slice(&[0x83, (n >> 16) as u8, (n >> 8) as u8, n as u8]);
    }
    out.extend_from_slice(content);
}

fn wrap(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(content.len() + 6);
    put(&mut v, tag, content);
    v
}

/// The server's negTokenInit for the NEGOTIATE response: "I speak NTLMSSP".
pub fn server_init() -> Vec<u8> {
    let mech_list = wrap(0x30, &wrap(0x06, NTLMSSP_OID));
    let seq = wrap(0x30, &wrap(0xa0, &mech_list));
    let mut inner = wrap(0x06, SPNEGO_OID);
    inner.extend_from_slice(&wrap(0xa0, &seq));
    wrap(0x60, &inner)
}

/// A negTokenResp carrying `token` and/or a mechListMIC.
pub fn server_resp(state: NegState, token: Option<&[u8]>, mic: Option<&[u8]>, with_mech: bool) -> Vec<u8> {
    let mut seq = Vec::new();
    put(&mut seq, 0xa0, &wrap(0x0a, &[state as u8]));
    if with_mech {
        put(&mut seq, 0xa1, &wrap(0x06, NTLMSSP_OID));
    }
    if let Some(t) = token {
        put(&mut seq, 0xa2, &wrap(0x04, t));
    }
    if let Some(m) = mic {
        put(&mut seq, 0xa3, &wrap(0x04, m));
    }
    wrap(0xa1, &wrap(0x30, &seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_init_with_ntlmssp_is_understood() {
        let mech_list = wrap(0x30, &wrap(0x06, NTLMSSP_OID));
        let mut seq = wrap(0xa0, &mech_list);
        seq.extend(wrap(0xa2, &wrap(0x04, b"NTLMSSP\0\x01\0\0\0")));
        let mut inner = wrap(0x06, SPNEGO_OID);
        inner.extend(wrap(0xa0, &wrap(0x30, &seq)));
        let blob = wrap(0x60, &inner);
        let t = parse_client(&blob).unwrap();
        assert!(t.offers_ntlmssp);
        assert_eq!(t.mech_token.unwrap(), b"NTLMSSP\0\x01\0\0\0");
        assert_eq!(t.mech_types.unwrap(), &mech_list[..]);
    }

    #[test]
    fn our_resp_parses_back_and_garbage_fails() {
        let r = server_resp(NegState::AcceptIncomplete, Some(&[9; 300]), Some(&[1; 16]), true);
        let t = parse_client(&r).unwrap();
        assert_eq!(t.mech_token.unwrap(), &[9; 300][..]);
        assert_eq!(t.mech_list_mic.unwrap(), &[1; 16][..]);
        assert!(parse_client(&[0x60, 0x84, 0xff]).is_err());
        assert!(parse_client(&[0xa1, 0x05, 0x30, 0x10]).is_err());
        let blob = server_init();
        let init = parse_client(&blob).unwrap();
        assert!(init.offers_ntlmssp && init.mech_token.is_none());
    }
}
