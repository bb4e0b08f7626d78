//! IOCTL (MS-SMB2 2.2.31/2.2.32): FSCTL_VALIDATE_NEGOTIATE_INFO (answered signed, so a
//! man in the middle cannot downgrade the dialect or strip signing), pipe transceive for
//! srvsvc, and a clean "not supported" for the rest.

use super::open::{read_file_id, OpenKind};
use super::Reply;
use crate::smb::conn::Connection;
use crate::smb::srvsvc;
use crate::smb::wire::header::Header;
use crate::smb::wire::status::NtStatus;
use crate::smb::wire::{slice_at, Reader, WireError, WireResult, Writer};

/// FSCTL_VALIDATE_NEGOTIATE_INFO.
pub const FSCTL_VALIDATE_NEGOTIATE_INFO: u32 = 0x0014_0204;
/// FSCTL_PIPE_TRANSCEIVE.
pub const FSCTL_PIPE_TRANSCEIVE: u32 = 0x0011_C017;
/// FSCTL_DFS_GET_REFERRALS.
pub const FSCTL_DFS_GET_REFERRALS: u32 = 0x0006_0194;
/// FSCTL_DFS_GET_REFERRALS_EX.
pub const FSCTL_DFS_GET_REFERRALS_EX: u32 = 0x0006_01B0;

/// A decoded IOCTL request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    /// CtlCode.
    pub ctl_code: u32,
    /// FileId.
    pub file_id: (u64, u64),
    /// Input buffer.
    pub input: &'a [u8],
    /// MaxOutputResponse.
    pub max_output: u32,
    /// Flags (1 = FSCTL).
    pub flags: u32,
}

impl<'a> Request<'a> {
    /// Decodes the body of `msg`.
    pub fn parse(msg: &'a [u8]) -> WireResult<Self> {
        let mut r = Reader::at(msg, 64);
        if r.u16()? != 57 {
            return Err(WireError::Malformed("IOCTL structure size"));
        }
        r.skip(2)?;
        let ctl_code = r.u32()?;
        let file_id = read_file_id(&mut r)?;
        let in_off = r.u32()? as usize;
        let in_len = r.u32()? as usize;
        let _max_in = r.u32()?;
        let _out_off = r.u32()?;
        let _out_len = r.u32()?;
        let max_output = r.u32()?;
        let flags = r.u32()?;
        Ok(Self { ctl_code, file_id, input: slice_at(msg, in_off, in_len)?, max_output, flags })
    }
}

/// Encodes an IOCTL response carrying `output`.
pub fn response(ctl_code: u32, file_id: (u64, u64), output: &[u8]) -> Vec<u8> {
    let mut w = Writer::with_capacity(48 + output.len());
    w.u16(49).u16(0).u32(ctl_code).u64(file_id.0).u64(file_id.1);
    w.u32(112).u32(0).u32(112).u32(output.len() as u32).u32(0).u32(0).bytes(output);
    w.buf
}

/// Handles IOCTL.
pub async fn handle(conn: &mut Connection, hdr: &Header, req: Request<'_>) -> Result<Reply, NtStatus> {
    conn.session(hdr.session_id)?.tree(hdr.tree_id)?;
    match req.ctl_code {
        FSCTL_VALIDATE_NEGOTIATE_INFO => validate_negotiate(conn, &req),
        FSCTL_PIPE_TRANSCEIVE => {
            let vol = conn.file_id(req.file_id.0, req.file_id.1)?;
            let shares = srvsvc::listed_shares(&conn.server.shares);
            let open = conn.opens.get_mut(vol, hdr.session_id, hdr.tree_id)?;
            #[allow(irrefutable_let_patterns)]
            let OpenKind::Pipe(p) = &mut open.kind
            else {
                return Err(NtStatus::INVALID_DEVICE_REQUEST);
            };
            p.write(req.input, &shares).map_err(|_| NtStatus::INVALID_PARAMETER)?;
            let max = req.max_output as usize;
            let out = p.read(max);
            let status = if p.output.is_empty() { NtStatus::SUCCESS } else { NtStatus::BUFFER_OVERFLOW };
            Ok(Reply::with(status, response(req.ctl_code, req.file_id, &out)))
        }
        FSCTL_DFS_GET_REFERRALS | FSCTL_DFS_GET_REFERRALS_EX => Err(NtStatus::NOT_FOUND),
        _ => Err(NtStatus::NOT_SUPPORTED),
    }
}

fn validate_negotiate(conn: &Connection, req: &Request<'_>) -> Result<Reply, NtStatus> {
    let mut r = Reader::new(req.input);
    let parsed = (|| -> WireResult<(u32, [u8; 16], u16, Vec<u16>)> {
        let caps = r.u32()?;
        let guid = r.array::<16>()?;
        let mode = r.u16()?;
        let n = r.u16()? as usize;
        let d = (0..n.min(64)).map(|_| r.u16()).collect::<WireResult<Vec<_>>>()?;
        Ok((caps, guid, mode, d))
    })();
    let Ok((caps, guid, mode, dialects)) = parsed else { return Err(NtStatus::INVALID_PARAMETER) };
    if caps != conn.client_capabilities
        || guid != conn.client_guid
        || mode != conn.client_security_mode
        || dialects != conn.client_dialects
    {
        tracing::warn!(client = %conn.tcp.client, "SMB: VALIDATE_NEGOTIATE_INFO mismatch (possible downgrade attack)");
        return Err(NtStatus::ACCESS_DENIED);
    }
    let mut w = Writer::with_capacity(24);
    w.u32(conn.server_capabilities).bytes(&conn.server.guid).u16(conn.server_security_mode).u16(conn.dialect);
    Ok(Reply::ok(response(req.ctl_code, req.file_id, &w.buf)))
}
