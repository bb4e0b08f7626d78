//! IOCTL (MS-SMB2 2.2.31/2.2.32): FSCTL_VALIDATE_NEGOTIATE_INFO (answered signed, so a
//! man in the middle cannot downgrade the dialect or strip signing), pipe transceive for
//! srvsvc, server-side copy ([`crate::smb::copychunk`]), file object ids
//! ([`crate::smb::object_id`]), this node's interfaces for multichannel clients
//! ([`crate::smb::interfaces`], with `[smb] multichannel`), and a clean "not supported" for
//! the rest.

use super::open::{access, read_file_id, OpenKind};
use super::Reply;
use crate::smb::conn::Connection;
use crate::smb::copychunk::{self, CopyRequest, Refused, Source};
use crate::smb::interfaces;
use crate::smb::object_id;
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
        copychunk::FSCTL_SRV_REQUEST_RESUME_KEY => resume_key(conn, hdr, &req),
        copychunk::FSCTL_SRV_COPYCHUNK | copychunk::FSCTL_SRV_COPYCHUNK_WRITE => copy_chunks(conn, hdr, &req).await,
        object_id::FSCTL_CREATE_OR_GET_OBJECT_ID => get_object_id(conn, hdr, &req),
        interfaces::FSCTL_QUERY_NETWORK_INTERFACE_INFO if conn.server.multichannel => {
            let listen = conn.server.listen;
            let out = interfaces::encode(&interfaces::local(listen), listen.port());
            if out.len() > req.max_output as usize {
                return Err(NtStatus::BUFFER_TOO_SMALL);
            }
            Ok(Reply::ok(response(req.ctl_code, req.file_id, &out)))
        }
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

/// FSCTL_CREATE_OR_GET_OBJECT_ID: the file's object id ([`object_id`]), the same on every node.
fn get_object_id(conn: &mut Connection, hdr: &Header, req: &Request<'_>) -> Result<Reply, NtStatus> {
    if (req.max_output as usize) < object_id::BUFFER_LEN {
        return Err(NtStatus::BUFFER_TOO_SMALL);
    }
    let vol = conn.file_id(req.file_id.0, req.file_id.1)?;
    let volume = conn.server.ns.volume_id();
    let f = conn.opens.get_mut(vol, hdr.session_id, hdr.tree_id)?.file()?;
    if f.state.stream.is_some() {
        return Err(NtStatus::INVALID_PARAMETER);
    }
    Ok(Reply::ok(response(req.ctl_code, req.file_id, &object_id::buffer(volume, &f.id))))
}

/// FSCTL_SRV_REQUEST_RESUME_KEY: a key for this handle as the source of a server-side copy.
fn resume_key(conn: &mut Connection, hdr: &Header, req: &Request<'_>) -> Result<Reply, NtStatus> {
    if req.max_output < 32 {
        return Err(NtStatus::INVALID_PARAMETER);
    }
    let vol = conn.file_id(req.file_id.0, req.file_id.1)?;
    let server = conn.server.clone();
    let f = conn.opens.get_mut(vol, hdr.session_id, hdr.tree_id)?.file()?;
    if f.state.stream.is_some() {
        return Err(NtStatus::NOT_SUPPORTED);
    }
    let key = server.resume_keys.issue(Source {
        id: f.id,
        open: f.key,
        access: f.access,
        cred: f.cred.clone(),
        is_dir: f.is_dir,
    });
    // SRV_REQUEST_RESUME_KEY: the key, ContextLength 0, 4 bytes of (empty) context.
    let mut out = key.to_vec();
    out.extend_from_slice(&[0; 8]);
    Ok(Reply::ok(response(req.ctl_code, req.file_id, &out)))
}

/// FSCTL_SRV_COPYCHUNK(_WRITE): copies the requested ranges of the key's source into this
/// handle's file, inside the volume.
async fn copy_chunks(conn: &mut Connection, hdr: &Header, req: &Request<'_>) -> Result<Reply, NtStatus> {
    if req.max_output < 12 {
        return Err(NtStatus::INVALID_PARAMETER);
    }
    let limits = || {
        Ok(Reply::with(NtStatus::INVALID_PARAMETER, response(req.ctl_code, req.file_id, &copychunk::limits_response())))
    };
    let copy = match CopyRequest::parse(req.input) {
        Ok(c) => c,
        Err(Refused::Limits) => return limits(),
        Err(Refused::Malformed) => return Err(NtStatus::INVALID_PARAMETER),
    };
    if copychunk::check_limits(&copy).is_err() {
        return limits();
    }
    let vol = conn.file_id(req.file_id.0, req.file_id.1)?;
    let server = conn.server.clone();
    let f = conn.opens.get_mut(vol, hdr.session_id, hdr.tree_id)?.file()?;
    let src = server.resume_keys.find(&copy.key).ok_or(NtStatus::OBJECT_NAME_NOT_FOUND)?;
    if f.is_dir || src.is_dir || f.state.stream.is_some() {
        return Err(NtStatus::INVALID_DEVICE_REQUEST);
    }
    // MS-SMB2 3.3.5.15.6: the source must have been opened for reading or executing.
    if src.access & (access::READ_DATA | access::EXECUTE) == 0 {
        return Err(NtStatus::ACCESS_DENIED);
    }
    f.require(access::WRITE_DATA)?;
    if req.ctl_code == copychunk::FSCTL_SRV_COPYCHUNK {
        f.require(access::READ_DATA)?;
    }
    let ns = &server.ns;
    let src_size = ns.getattr(src.id).await?.size;
    server.locks.contend_if_needed(&f.id, f.lease).await?;
    // Chunk by chunk: a refused chunk ends the copy, answered with what was written before it.
    let (mut chunks, mut total) = (0u32, 0u32);
    let mut refused = None;
    for c in &copy.chunks {
        let len = u64::from(c.len);
        if c.src.checked_add(len).is_none_or(|end| end > src_size) {
            refused = Some(NtStatus::INVALID_VIEW_SIZE);
            break;
        }
        if c.dst.checked_add(len).is_none_or(|end| end > i64::MAX as u64) {
            refused = Some(NtStatus::INVALID_PARAMETER);
            break;
        }
        if !server.locks.io_allowed(&src.id, Some(src.open), c.src, len, false).await?
            || !server.locks.io_allowed(&f.id, Some(f.key), c.dst, len, true).await?
        {
            refused = Some(NtStatus::FILE_LOCK_CONFLICT);
            break;
        }
        let done = match ns.copy_range(&f.cred, src.id, c.src, f.id, c.dst, len).await {
            Ok(n) if n == len => n,
            // Overlapping ranges of one file, or a backend without a copy call: through
            // this server's memory, still without crossing the network.
            Ok(_) | Err(crate::vfs::VfsError::Invalid | crate::vfs::VfsError::NotSupported) => {
                let (data, _, _) = ns.read(&src.cred, src.id, c.src, c.len).await?;
                let (n, _, _) = ns.write(&f.cred, f.id, c.dst, data, crate::vfs::Stability::Unstable).await?;
                u64::from(n)
            }
            Err(e) => return Err(e.into()),
        };
        f.wrote = true;
        total += done as u32;
        if done < len {
            break;
        }
        chunks += 1;
    }
    if f.wrote {
        crate::smb::fs::keep_sticky_times(ns, f).await;
    }
    let out = response(req.ctl_code, req.file_id, &copychunk::response(chunks, 0, total));
    Ok(Reply::with(refused.unwrap_or(NtStatus::SUCCESS), out))
}
