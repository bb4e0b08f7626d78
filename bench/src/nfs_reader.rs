//! A lean NFSv3 READ client for the many-client read rows, so that the servers, not the
//! bench, are what those rows measure.
//!
//! The `nfs3_client` connections the other rows use allocate and zero two buffers per READ
//! reply and copy each reply twice; driven by one thread for 64 clients, that thread was the
//! busiest process of the row (README, "NFS many-client reads"). Here every client is a thread
//! of its own with a blocking socket and one READ in flight, as an application reading a file
//! on a kernel client would be; it checks the reply's RPC and NFS status, the count and the
//! record's length, compares the first [`SAMPLE`] bytes of the data with the file's pattern,
//! and lets the kernel drop the rest unread (`recv` with `MSG_TRUNC`, one call per reply): the
//! server sends every byte, the client does not copy them. The same code reads from every
//! server.
//!
//! The call and the reply's head are XDR through `nfs3_types`; [`ReplyHead::parse`] is pure.

use std::io::{Cursor, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use nfs3_client::nfs3_types::nfs3::{self, nfs_fh3, post_op_attr, READ3args};
use nfs3_client::nfs3_types::rpc::{
    accept_stat_data, auth_unix, call_body, fragment_header, msg_body, opaque_auth, reply_body, rpc_msg,
};
use nfs3_client::nfs3_types::xdr_codec::{Opaque, Pack, Unpack};

use crate::fixture::Pattern;
use crate::nfs_client::{GID, UID};

/// Bytes of each reply's data the client reads and checks against the file's pattern.
pub const SAMPLE: usize = 4096;
/// Room for a READ reply's head before its data (RPC reply, status, attributes, count, eof,
/// length: 128 bytes with an AUTH_NONE verifier; a verifier may add up to 400).
const HEAD_ROOM: usize = 1024;
/// NFSv3 READ.
const NFSPROC3_READ: u32 = 6;
/// NFS's RPC program number.
const NFS_PROGRAM: u32 = 100_003;

/// What the head of a READ reply says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyHead {
    /// The call it answers.
    pub xid: u32,
    /// Where the data starts in the record.
    pub data_at: usize,
    /// Data bytes (without the XDR padding).
    pub len: u32,
    /// The server says the file ends with this data.
    pub eof: bool,
}

impl ReplyHead {
    /// Parses the start of a READ reply record (after the record mark), as far as the first
    /// byte of data: an error for anything but an accepted, successful READ whose count
    /// matches its data length. Pure; never panics.
    pub fn parse(record: &[u8]) -> Result<ReplyHead> {
        let mut c = Cursor::new(record);
        let (msg, _) = rpc_msg::unpack(&mut c).context("RPC reply header")?;
        match msg.body {
            msg_body::REPLY(reply_body::MSG_ACCEPTED(a)) => match a.reply_data {
                accept_stat_data::SUCCESS => {}
                other => bail!("RPC call not executed: {other:?}"),
            },
            msg_body::REPLY(reply_body::MSG_DENIED(d)) => bail!("RPC call denied: {d:?}"),
            msg_body::CALL(_) => bail!("a call where a reply was due"),
        }
        let (status, _) = nfs3::nfsstat3::unpack(&mut c).context("READ status")?;
        if status != nfs3::nfsstat3::NFS3_OK {
            bail!("READ: {status:?}");
        }
        let _ = post_op_attr::unpack(&mut c).context("READ attributes")?;
        let (count, _) = u32::unpack(&mut c).context("READ count")?;
        let (eof, _) = bool::unpack(&mut c).context("READ eof")?;
        let (len, _) = u32::unpack(&mut c).context("READ data length")?;
        if count != len {
            bail!("READ count {count} but {len} bytes of data");
        }
        Ok(ReplyHead { xid: msg.xid, data_at: c.position() as usize, len, eof })
    }
}

/// The record (mark included) of a READ call of `count` bytes at `offset` of `fh`.
pub fn read_call(xid: u32, cred: &opaque_auth<'static>, fh: &nfs_fh3, offset: u64, count: u32) -> Vec<u8> {
    let msg = rpc_msg {
        xid,
        body: msg_body::CALL(call_body {
            rpcvers: 2,
            prog: NFS_PROGRAM,
            vers: 3,
            proc: NFSPROC3_READ,
            cred: cred.borrow(),
            verf: opaque_auth::default(),
        }),
    };
    let args = READ3args { file: fh.clone(), offset, count };
    let mut out = vec![0; 4];
    // Writing into a Vec cannot fail.
    let _ = msg.pack(&mut out);
    let _ = args.pack(&mut out);
    let mark = fragment_header::new((out.len() - 4) as u32, true).into_xdr_buf();
    out[..4].copy_from_slice(&mark);
    out
}

/// The credential every bench client sends: AUTH_UNIX [`UID`]/[`GID`].
pub fn credential() -> opaque_auth<'static> {
    opaque_auth::auth_unix(&auth_unix {
        stamp: 0,
        machinename: Opaque::borrowed(b"bench"),
        uid: UID,
        gid: GID,
        gids: vec![],
    })
}

/// One client's connection to an NFS server, reading one file.
pub struct Reader {
    sock: TcpStream,
    cred: opaque_auth<'static>,
    xid: u32,
    head: Vec<u8>,
}

impl Reader {
    /// Connects to the NFS port `port` on loopback (no MOUNT needed: the handle comes from
    /// a mounted session).
    pub fn connect(port: u16, first_xid: u32) -> Result<Reader> {
        let sock = TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_secs(10))
            .with_context(|| format!("connect to NFS port {port}"))?;
        sock.set_nodelay(true)?;
        sock.set_read_timeout(Some(Duration::from_secs(60)))?;
        Ok(Reader { sock, cred: credential(), xid: first_xid, head: vec![0; HEAD_ROOM + SAMPLE] })
    }

    /// READs `len` bytes of `fh` from `offset` on in `chunk`-byte calls, one at a time, checking
    /// each reply's first bytes against `pattern`; returns the bytes read (less only at the
    /// end of the file).
    pub fn read_range(&mut self, fh: &nfs_fh3, offset: u64, len: u64, chunk: u32, pattern: &Pattern) -> Result<u64> {
        let mut done = 0;
        while done < len {
            let count = (len - done).min(u64::from(chunk)) as u32;
            let at = offset + done;
            self.xid = self.xid.wrapping_add(1);
            self.sock.write_all(&read_call(self.xid, &self.cred, fh, at, count)).context("send READ")?;
            let head = self.reply(at, pattern).with_context(|| format!("READ {count} at {at}"))?;
            if head.len > count {
                bail!("READ {count} at {at}: {} bytes came", head.len);
            }
            done += u64::from(head.len);
            if head.eof || head.len == 0 {
                break;
            }
        }
        Ok(done)
    }

    /// Takes one READ reply record off the socket: its head and sample read and checked, the
    /// rest of its data dropped unread.
    fn reply(&mut self, at: u64, pattern: &Pattern) -> Result<ReplyHead> {
        let mut mark = [0u8; 4];
        self.sock.read_exact(&mut mark).context("record mark")?;
        let frag = fragment_header::from(mark);
        let first = (frag.fragment_length() as usize).min(self.head.len());
        self.sock.read_exact(&mut self.head[..first]).context("reply head")?;
        let head = ReplyHead::parse(&self.head[..first])?;
        if head.xid != self.xid {
            bail!("reply to xid {} where {} was due", head.xid, self.xid);
        }
        let sample = &self.head[head.data_at.min(first)..first];
        let sample = &sample[..sample.len().min(head.len as usize)];
        if !pattern.matches(at, sample) {
            bail!("data differs from the file's");
        }
        // The record holds the head, the data and its XDR padding, nothing more.
        let record = head.data_at as u64 + u64::from(head.len).next_multiple_of(4);
        let mut got = first as u64 + self.drop_bytes(frag.fragment_length() as usize - first)? as u64;
        let mut last = frag.eof();
        while !last {
            self.sock.read_exact(&mut mark).context("record mark")?;
            let frag = fragment_header::from(mark);
            got += self.drop_bytes(frag.fragment_length() as usize)? as u64;
            last = frag.eof();
        }
        if got != record {
            bail!("reply record of {got} bytes, its head says {record}");
        }
        Ok(head)
    }

    /// Drops the next `n` bytes of the stream without copying them (`MSG_TRUNC` on TCP).
    fn drop_bytes(&mut self, n: usize) -> Result<usize> {
        let mut left = n;
        while left > 0 {
            // SAFETY: with MSG_TRUNC a TCP socket writes nothing to the buffer (a null one is
            // allowed), it discards up to `left` bytes of the stream.
            let r = unsafe {
                libc::recv(self.sock.as_raw_fd(), std::ptr::null_mut(), left, libc::MSG_TRUNC | libc::MSG_WAITALL)
            };
            match r {
                0 => bail!("connection closed inside a reply"),
                r if r > 0 => left -= r as usize,
                _ => {
                    let e = std::io::Error::last_os_error();
                    if e.kind() != std::io::ErrorKind::Interrupted {
                        return Err(e).context("drop reply data");
                    }
                }
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A READ reply record as a server sends it (without the mark): AUTH_NONE verifier,
    /// attributes present, `data` and its padding.
    fn reply(xid: u32, status: u32, count: u32, eof: bool, data: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        for w in [xid, 1, 0, 0, 0, 0, status] {
            v.extend_from_slice(&w.to_be_bytes());
        }
        if status == 0 {
            v.extend_from_slice(&1u32.to_be_bytes());
            let mut fattr = [0u8; 84];
            fattr[3] = 1; // NF3REG
            v.extend_from_slice(&fattr);
            for w in [count, u32::from(eof), data.len() as u32] {
                v.extend_from_slice(&w.to_be_bytes());
            }
            v.extend_from_slice(data);
            v.resize(v.len().next_multiple_of(4), 0);
        } else {
            v.extend_from_slice(&0u32.to_be_bytes());
        }
        v
    }

    #[test]
    fn a_read_reply_head_says_where_its_data_is() {
        let r = reply(9, 0, 5, true, b"hello");
        let h = ReplyHead::parse(&r).unwrap();
        assert_eq!(h, ReplyHead { xid: 9, data_at: 128, len: 5, eof: true });
        assert_eq!(&r[h.data_at..h.data_at + 5], b"hello");
        // Only the head is needed.
        assert_eq!(ReplyHead::parse(&r[..128]).unwrap(), h);
    }

    #[test]
    fn anything_but_a_whole_successful_read_head_is_an_error() {
        assert!(ReplyHead::parse(&reply(9, 13, 0, false, b"")).unwrap_err().to_string().contains("NFS3ERR_ACCES"));
        assert!(ReplyHead::parse(&reply(9, 0, 4, false, b"hello")).is_err(), "count differs from the data");
        let good = reply(9, 0, 5, true, b"hello");
        for cut in 0..128 {
            assert!(ReplyHead::parse(&good[..cut]).is_err(), "cut at {cut}");
        }
        // A denied call (RPC_MISMATCH) and a call instead of a reply.
        let denied: Vec<u8> = [9u32, 1, 1, 0, 2, 2].iter().flat_map(|w| w.to_be_bytes()).collect();
        assert!(ReplyHead::parse(&denied).is_err());
        let cred = credential();
        let call = read_call(9, &cred, &nfs_fh3::default(), 0, 1);
        assert!(ReplyHead::parse(&call[4..]).is_err());
    }

    #[test]
    fn a_read_call_is_one_record_of_an_nfs3_read() {
        let fh = nfs_fh3 { data: Opaque::owned(vec![1, 2, 3, 4, 5, 6, 7, 8]) };
        let call = read_call(77, &credential(), &fh, 1 << 40, 1 << 20);
        let mark = fragment_header::from(<[u8; 4]>::try_from(&call[..4]).unwrap());
        assert!(mark.eof());
        assert_eq!(mark.fragment_length() as usize, call.len() - 4);
        let mut c = Cursor::new(&call[4..]);
        let (msg, _) = rpc_msg::unpack(&mut c).unwrap();
        assert_eq!(msg.xid, 77);
        let msg_body::CALL(body) = msg.body else { panic!("not a call") };
        assert_eq!((body.prog, body.vers, body.proc), (NFS_PROGRAM, 3, NFSPROC3_READ));
        let (args, _) = READ3args::unpack(&mut c).unwrap();
        assert_eq!((args.offset, args.count, args.file.data.as_ref()), (1 << 40, 1 << 20, fh.data.as_ref()));
        assert_eq!(c.position() as usize, call.len() - 4, "nothing after the arguments");
    }
}
