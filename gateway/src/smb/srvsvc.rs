//! The `srvsvc` named pipe on `IPC$`: DCE/RPC (connection-oriented, NDR32) BIND and the two
//! calls share browsing needs, NetShareEnumAll (opnum 15) and NetShareGetInfo (opnum 16), so
//! `smbclient -L` and Windows Explorer list shares. Pure functions: PDU bytes in, PDU bytes out.

use crate::smb::wire::{from_utf16le, utf16le, Reader, WireError, WireResult, Writer};

const PTYPE_REQUEST: u8 = 0;
const PTYPE_RESPONSE: u8 = 2;
const PTYPE_FAULT: u8 = 3;
const PTYPE_BIND: u8 = 11;
const PTYPE_BIND_ACK: u8 = 12;
const PTYPE_ALTER: u8 = 14;
const PTYPE_ALTER_RESP: u8 = 15;

/// NDR 2.0 transfer syntax 8a885d04-1ceb-11c9-9fe8-08002b104860.
const NDR32: [u8; 16] =
    [0x04, 0x5d, 0x88, 0x8a, 0xeb, 0x1c, 0xc9, 0x11, 0x9f, 0xe8, 0x08, 0x00, 0x2b, 0x10, 0x48, 0x60];
/// srvsvc interface 4b324fc8-1670-01d3-1278-5a47bf6ee188.
const SRVSVC: [u8; 16] =
    [0xc8, 0x4f, 0x32, 0x4b, 0x70, 0x16, 0xd3, 0x01, 0x12, 0x78, 0x5a, 0x47, 0xbf, 0x6e, 0xe1, 0x88];
/// Bind-time feature negotiation syntaxes start with this (6cb71c2c-9812-4540-...).
const BTFN_PREFIX: [u8; 8] = [0x2c, 0x1c, 0xb7, 0x6c, 0x12, 0x98, 0x40, 0x45];

const NCA_OP_RNG_ERROR: u32 = 0x1c01_0002;
const WERR_OK: u32 = 0;
const WERR_UNKNOWN_LEVEL: u32 = 124;
const WERR_NET_NAME_NOT_FOUND: u32 = 2310;

/// Share type: disk tree.
pub const STYPE_DISKTREE: u32 = 0;
/// Share type: IPC, hidden/special.
pub const STYPE_IPC_HIDDEN: u32 = 0x8000_0003;

/// One share as srvsvc lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareInfo {
    /// Share name.
    pub name: String,
    /// STYPE_*.
    pub share_type: u32,
    /// Comment.
    pub comment: String,
}

/// The state of one open srvsvc pipe: bytes written but not yet a whole PDU, and replies
/// waiting to be read.
#[derive(Debug, Default)]
pub struct Pipe {
    input: Vec<u8>,
    /// Reply bytes waiting for READ.
    pub output: Vec<u8>,
}

impl Pipe {
    /// Feeds bytes the client wrote; complete PDUs are answered into `output`.
    pub fn write(&mut self, data: &[u8], shares: &[ShareInfo]) -> WireResult<()> {
        self.input.extend_from_slice(data);
        if self.input.len() > 1 << 20 {
            return Err(WireError::Malformed("RPC PDU too large"));
        }
        while self.input.len() >= 16 {
            let frag = u16::from_le_bytes([self.input[8], self.input[9]]) as usize;
            if frag < 16 {
                return Err(WireError::Malformed("RPC fragment length"));
            }
            if self.input.len() < frag {
                break;
            }
            let pdu: Vec<u8> = self.input.drain(..frag).collect();
            let reply = answer(&pdu, shares)?;
            self.output.extend_from_slice(&reply);
        }
        Ok(())
    }

    /// Takes up to `max` reply bytes.
    pub fn read(&mut self, max: usize) -> Vec<u8> {
        let n = self.output.len().min(max);
        self.output.drain(..n).collect()
    }
}

fn pdu(ptype: u8, call_id: u32, body: &[u8]) -> Vec<u8> {
    let mut w = Writer::with_capacity(16 + body.len());
    w.u8(5).u8(0).u8(ptype).u8(0x03).bytes(&[0x10, 0, 0, 0]);
    w.u16((16 + body.len()) as u16).u16(0).u32(call_id).bytes(body);
    w.buf
}

/// Answers one complete PDU.
pub fn answer(pdu_bytes: &[u8], shares: &[ShareInfo]) -> WireResult<Vec<u8>> {
    let mut r = Reader::new(pdu_bytes);
    if r.u8()? != 5 {
        return Err(WireError::Malformed("RPC version"));
    }
    r.skip(1)?;
    let ptype = r.u8()?;
    let _flags = r.u8()?;
    let drep = r.array::<4>()?;
    if drep[0] & 0xf0 != 0x10 {
        return Err(WireError::Malformed("RPC big-endian data representation"));
    }
    let _frag = r.u16()?;
    let _auth = r.u16()?;
    let call_id = r.u32()?;
    match ptype {
        PTYPE_BIND | PTYPE_ALTER => {
            let max_xmit = r.u16()?;
            let max_recv = r.u16()?;
            let _assoc = r.u32()?;
            let n = r.u8()?;
            r.skip(3)?;
            let mut results = Writer::new();
            for _ in 0..n {
                let _ctx = r.u16()?;
                let nts = r.u8()?;
                r.skip(1)?;
                let abs = r.array::<16>()?;
                let _abs_ver = r.u32()?;
                let mut accepted = false;
                let mut btfn = false;
                for _ in 0..nts {
                    let ts = r.array::<16>()?;
                    let _v = r.u32()?;
                    if ts == NDR32 {
                        accepted = true;
                    }
                    if ts[..8] == BTFN_PREFIX {
                        btfn = true;
                    }
                }
                if accepted && abs == SRVSVC {
                    results.u16(0).u16(0).bytes(&NDR32).u32(2);
                } else if btfn {
                    // negotiate_ack, no features
                    results.u16(3).u16(0).zeros(20);
                } else {
                    // provider rejection: abstract/transfer syntax not supported
                    results.u16(2).u16(if abs == SRVSVC { 2 } else { 1 }).zeros(20);
                }
            }
            let mut body = Writer::new();
            body.u16(max_xmit.min(4280)).u16(max_recv.min(4280)).u32(0x12345);
            if ptype == PTYPE_BIND {
                let port = b"\\PIPE\\srvsvc\0";
                body.u16(port.len() as u16).bytes(port);
            } else {
                body.u16(0);
            }
            // results start 4-byte aligned from the PDU start (16-byte header)
            while (16 + body.len()) % 4 != 0 {
                body.u8(0);
            }
            body.u8(n).zeros(3).bytes(&results.buf);
            Ok(pdu(if ptype == PTYPE_BIND { PTYPE_BIND_ACK } else { PTYPE_ALTER_RESP }, call_id, &body.buf))
        }
        PTYPE_REQUEST => {
            let _alloc = r.u32()?;
            let ctx = r.u16()?;
            let opnum = r.u16()?;
            let stub = &pdu_bytes[r.pos()..];
            let out = match opnum {
                15 => share_enum_all(stub, shares)?,
                16 => share_get_info(stub, shares)?,
                _ => {
                    let mut f = Writer::new();
                    f.u32(0).u16(ctx).u8(0).u8(0).u32(NCA_OP_RNG_ERROR).u32(0);
                    return Ok(pdu(PTYPE_FAULT, call_id, &f.buf));
                }
            };
            let mut body = Writer::with_capacity(8 + out.len());
            body.u32(out.len() as u32).u16(ctx).u8(0).u8(0).bytes(&out);
            Ok(pdu(PTYPE_RESPONSE, call_id, &body.buf))
        }
        _ => Err(WireError::Malformed("RPC packet type")),
    }
}

/// Skips a [unique] wide string pointer and its deferred data.
fn skip_unique_string(r: &mut Reader<'_>) -> WireResult<()> {
    if r.u32()? != 0 {
        read_conformant_string(r)?;
    }
    Ok(())
}

fn read_conformant_string(r: &mut Reader<'_>) -> WireResult<String> {
    let _max = r.u32()?;
    let _off = r.u32()?;
    let actual = r.u32()? as usize;
    if actual > 4096 {
        return Err(WireError::Malformed("NDR string length"));
    }
    let b = r.bytes(actual * 2)?;
    let pad = (4 - (actual * 2) % 4) % 4;
    r.skip(pad.min(r_remaining(r)))?;
    Ok(from_utf16le(b)?.trim_end_matches('\0').to_string())
}

fn r_remaining(r: &Reader<'_>) -> usize {
    let mut c = r.clone();
    let mut n = 0;
    while n < 4 && c.u8().is_ok() {
        n += 1;
    }
    n
}

fn put_string(w: &mut Writer, s: &str) {
    let chars = s.encode_utf16().count() + 1;
    w.u32(chars as u32).u32(0).u32(chars as u32);
    w.bytes(&utf16le(s)).u16(0);
    w.align(4);
}

/// Referent ids only need to be unique and non-zero.
struct Referents(u32);
impl Referents {
    fn next(&mut self) -> u32 {
        self.0 += 4;
        self.0
    }
}

fn share_enum_all(stub: &[u8], shares: &[ShareInfo]) -> WireResult<Vec<u8>> {
    let mut r = Reader::new(stub);
    skip_unique_string(&mut r)?;
    let level = r.u32()?;
    let _switch = r.u32()?;
    let _container_ptr = r.u32()?;
    let _entries = r.u32()?;
    let _buffer = r.u32()?;
    let _pref = r.u32()?;
    let resume = r.u32().unwrap_or(0);
    let mut w = Writer::new();
    let mut refs = Referents(0x20000);
    w.u32(level).u32(level);
    match level {
        0 | 1 => {
            w.u32(refs.next());
            w.u32(shares.len() as u32).u32(refs.next()).u32(shares.len() as u32);
            for _ in shares {
                w.u32(refs.next());
                if level == 1 {
                    w.u32(0); // type, patched below
                    w.u32(refs.next());
                }
            }
            // patch types (fixed part: 3 words per entry for level 1)
            if level == 1 {
                let base = w.len() - shares.len() * 12;
                for (i, s) in shares.iter().enumerate() {
                    w.put_u32(base + i * 12 + 4, s.share_type);
                }
            }
            for s in shares {
                put_string(&mut w, &s.name);
                if level == 1 {
                    put_string(&mut w, &s.comment);
                }
            }
            w.u32(shares.len() as u32);
            if resume != 0 {
                w.u32(refs.next()).u32(0);
            } else {
                w.u32(0);
            }
            w.u32(WERR_OK);
        }
        _ => {
            w.u32(0).u32(0).u32(0).u32(WERR_UNKNOWN_LEVEL);
        }
    }
    Ok(w.buf)
}

fn share_get_info(stub: &[u8], shares: &[ShareInfo]) -> WireResult<Vec<u8>> {
    let mut r = Reader::new(stub);
    skip_unique_string(&mut r)?;
    let name = read_conformant_string(&mut r)?;
    let level = r.u32()?;
    let mut w = Writer::new();
    let mut refs = Referents(0x20000);
    let Some(s) = shares.iter().find(|s| s.name.eq_ignore_ascii_case(&name)) else {
        w.u32(level).u32(0).u32(WERR_NET_NAME_NOT_FOUND);
        return Ok(w.buf);
    };
    w.u32(level);
    match level {
        0 => {
            w.u32(refs.next()).u32(refs.next());
            put_string(&mut w, &s.name);
        }
        1 => {
            w.u32(refs.next()).u32(refs.next()).u32(s.share_type).u32(refs.next());
            put_string(&mut w, &s.name);
            put_string(&mut w, &s.comment);
        }
        2 => {
            w.u32(refs.next());
            w.u32(refs.next()).u32(s.share_type).u32(refs.next());
            w.u32(0).u32(u32::MAX).u32(0).u32(refs.next()).u32(0);
            put_string(&mut w, &s.name);
            put_string(&mut w, &s.comment);
            put_string(&mut w, "C:\\");
        }
        _ => {
            w.u32(0).u32(WERR_UNKNOWN_LEVEL);
            return Ok(w.buf);
        }
    }
    w.u32(WERR_OK);
    Ok(w.buf)
}

/// The shares srvsvc lists: every browseable share, then `IPC$`.
pub fn listed_shares(shares: &[crate::config::ShareConfig]) -> Vec<ShareInfo> {
    let mut v: Vec<ShareInfo> = shares
        .iter()
        .filter(|s| s.browseable)
        .map(|s| ShareInfo { name: s.name.clone(), share_type: STYPE_DISKTREE, comment: s.comment.clone() })
        .collect();
    v.push(ShareInfo { name: "IPC$".into(), share_type: STYPE_IPC_HIDDEN, comment: "IPC Service (nasgw)".into() });
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bind() -> Vec<u8> {
        let mut b = Writer::new();
        b.u16(4280).u16(4280).u32(0).u8(1).zeros(3);
        b.u16(0).u8(1).u8(0).bytes(&SRVSVC).u32(3).bytes(&NDR32).u32(2);
        pdu(PTYPE_BIND, 1, &b.buf)
    }

    #[test]
    fn bind_is_acknowledged_and_enum_lists_shares() {
        let shares = vec![ShareInfo { name: "pub".into(), share_type: 0, comment: "c".into() }];
        let mut p = Pipe::default();
        p.write(&bind(), &shares).unwrap();
        let ack = p.read(4096);
        assert_eq!(ack[2], PTYPE_BIND_ACK);
        let mut stub = Writer::new();
        stub.u32(0).u32(1).u32(1).u32(4).u32(0).u32(0).u32(u32::MAX).u32(0);
        let mut req = Writer::new();
        req.u32(0).u16(0).u16(15).bytes(&stub.buf);
        p.write(&pdu(PTYPE_REQUEST, 2, &req.buf), &shares).unwrap();
        let resp = p.read(4096);
        assert_eq!(resp[2], PTYPE_RESPONSE);
        assert!(resp.windows(6).any(|w| w == utf16le("pub")), "the share name is in the answer");
    }

    #[test]
    fn garbage_pdus_are_errors() {
        let shares = vec![];
        assert!(answer(&[5, 0, 0, 3, 0, 0, 0, 0, 16, 0, 0, 0, 1, 0, 0, 0], &shares).is_err());
        let mut p = Pipe::default();
        assert!(p.write(&[5, 0, 11, 3, 0x10, 0, 0, 0, 3, 0, 0, 0, 1, 0, 0, 0], &shares).is_err());
    }
}
