//! Many idle clients on one machine: TCP connections from loopback source addresses
//! 127.1.x.y (a server allows only so many connections per client address), and SMB
//! connections that have negotiated and then say nothing, as a client between NEGOTIATE and
//! logon, or that have gone as far as a guest TREE_CONNECT (raw SMB2, unsigned). Used by the
//! bench's scale rows and by the idle-memory and connection-storm tests.

use std::io::{self, Read as _, Write as _};
use std::net::{Ipv4Addr, TcpStream};
use std::time::Duration;

/// Connections per loopback source address (below nasgw's 128 per client address).
pub const PER_ADDRESS: usize = 100;

/// The loopback source address of idle connection `i`: [`PER_ADDRESS`] connections each
/// from 127.1.0.1, 127.1.0.2...
pub fn source_address(i: usize) -> Ipv4Addr {
    let a = i / PER_ADDRESS;
    Ipv4Addr::new(127, 1, (a / 250) as u8, (a % 250 + 1) as u8)
}

/// A TCP connection to `127.0.0.1:port` from source address `src` (any port), with a 10 s
/// read timeout.
pub fn connect_from(src: Ipv4Addr, port: u16) -> io::Result<TcpStream> {
    // SAFETY: plain socket calls on a descriptor this function owns until it is wrapped.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let s = <TcpStream as std::os::fd::FromRawFd>::from_raw_fd(fd);
        let sin = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr { s_addr: u32::from(ip).to_be() },
            sin_zero: [0; 8],
        };
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let local = sin(src, 0);
        if libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len) != 0 {
            return Err(io::Error::last_os_error());
        }
        let remote = sin(Ipv4Addr::LOCALHOST, port);
        if libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), len) != 0 {
            return Err(io::Error::last_os_error());
        }
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(s)
    }
}

/// An SMB2 NEGOTIATE (dialects 2.0.2 and 2.1, signing enabled), as a client's first request
/// on a new connection; with its NetBIOS session header. `client` makes the ClientGuid: it
/// must differ between connections meant as different clients (smbd hands every connection
/// of one ClientGuid to the same process).
pub fn negotiate_request(message_id: u64, client: u64) -> Vec<u8> {
    let mut smb = Vec::with_capacity(104);
    smb.extend_from_slice(b"\xfeSMB");
    smb.extend_from_slice(&64u16.to_le_bytes()); // StructureSize
    smb.extend_from_slice(&0u16.to_le_bytes()); // CreditCharge
    smb.extend_from_slice(&0u32.to_le_bytes()); // Status
    smb.extend_from_slice(&0u16.to_le_bytes()); // Command: NEGOTIATE
    smb.extend_from_slice(&1u16.to_le_bytes()); // CreditRequest
    smb.extend_from_slice(&0u32.to_le_bytes()); // Flags
    smb.extend_from_slice(&0u32.to_le_bytes()); // NextCommand
    smb.extend_from_slice(&message_id.to_le_bytes());
    smb.extend_from_slice(&[0; 4 + 4 + 8 + 16]); // Reserved, TreeId, SessionId, Signature
    smb.extend_from_slice(&36u16.to_le_bytes()); // StructureSize
    smb.extend_from_slice(&2u16.to_le_bytes()); // DialectCount
    smb.extend_from_slice(&1u16.to_le_bytes()); // SecurityMode: signing enabled
    smb.extend_from_slice(&[0; 2 + 4]); // Reserved, Capabilities
    smb.extend_from_slice(&(0x6e61_7367_7700_0000_0000_0000_0000_0000_u128 | u128::from(client)).to_le_bytes()); // ClientGuid
    smb.extend_from_slice(&[0; 8]); // ClientStartTime
    smb.extend_from_slice(&0x0202u16.to_le_bytes());
    smb.extend_from_slice(&0x0210u16.to_le_bytes());
    let mut out = (smb.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&smb);
    out
}

/// An SMB2 request for `command` with `body`, in its NetBIOS session header: MessageId
/// `message_id`, asking 8 credits, unsigned.
pub fn smb2_request(command: u16, message_id: u64, session_id: u64, tree_id: u32, body: &[u8]) -> Vec<u8> {
    let mut smb = Vec::with_capacity(64 + body.len());
    smb.extend_from_slice(b"\xfeSMB");
    smb.extend_from_slice(&64u16.to_le_bytes()); // StructureSize
    smb.extend_from_slice(&1u16.to_le_bytes()); // CreditCharge
    smb.extend_from_slice(&0u32.to_le_bytes()); // Status
    smb.extend_from_slice(&command.to_le_bytes());
    smb.extend_from_slice(&8u16.to_le_bytes()); // CreditRequest
    smb.extend_from_slice(&[0; 4 + 4]); // Flags, NextCommand
    smb.extend_from_slice(&message_id.to_le_bytes());
    smb.extend_from_slice(&[0; 4]); // Reserved
    smb.extend_from_slice(&tree_id.to_le_bytes());
    smb.extend_from_slice(&session_id.to_le_bytes());
    smb.extend_from_slice(&[0; 16]); // Signature
    smb.extend_from_slice(body);
    let mut out = (smb.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&smb);
    out
}

/// A SESSION_SETUP request body carrying the raw NTLMSSP `token`.
pub fn session_setup_body(token: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(24 + token.len());
    b.extend_from_slice(&25u16.to_le_bytes()); // StructureSize
    b.extend_from_slice(&[0, 1]); // Flags, SecurityMode: signing enabled
    b.extend_from_slice(&[0; 4 + 4]); // Capabilities, Channel
    b.extend_from_slice(&(64u16 + 24).to_le_bytes()); // SecurityBufferOffset
    b.extend_from_slice(&(token.len() as u16).to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes()); // PreviousSessionId
    b.extend_from_slice(token);
    b
}

/// NTLMSSP flags of the guest logon: Unicode, NTLM, extended session security.
const NTLMSSP_FLAGS: u32 = 0x0000_0001 | 0x0000_0200 | 0x0008_0000;

/// The first leg of an NTLMSSP logon: NEGOTIATE, no domain or workstation.
pub fn ntlmssp_negotiate() -> Vec<u8> {
    let mut t = b"NTLMSSP\0".to_vec();
    t.extend_from_slice(&1u32.to_le_bytes());
    t.extend_from_slice(&(NTLMSSP_FLAGS | 0x0000_0004).to_le_bytes()); // + REQUEST_TARGET
    t.extend_from_slice(&[0; 16]); // DomainName, Workstation fields
    t
}

/// The second leg of a logon as `user`, unknown to the server, so mapped to its guest: an
/// AUTHENTICATE with an empty 24-byte NT response (nothing to prove for a guest).
pub fn ntlmssp_guest_authenticate(user: &str) -> Vec<u8> {
    let user: Vec<u8> = user.encode_utf16().flat_map(u16::to_le_bytes).collect();
    let nt = [0u8; 24];
    let mut t = b"NTLMSSP\0".to_vec();
    t.extend_from_slice(&3u32.to_le_bytes());
    let mut at = 64u32;
    // LmChallengeResponse, NtChallengeResponse, DomainName, UserName, Workstation,
    // EncryptedRandomSessionKey: length, length, offset; the payload follows the header.
    for len in [0, nt.len(), 0, user.len(), 0, 0] {
        t.extend_from_slice(&(len as u16).to_le_bytes());
        t.extend_from_slice(&(len as u16).to_le_bytes());
        t.extend_from_slice(&at.to_le_bytes());
        at += len as u32;
    }
    t.extend_from_slice(&NTLMSSP_FLAGS.to_le_bytes());
    t.extend_from_slice(&nt);
    t.extend_from_slice(&user);
    t
}

/// A TREE_CONNECT request body for UNC `path` (`\\server\share`).
pub fn tree_connect_body(path: &str) -> Vec<u8> {
    let path: Vec<u8> = path.encode_utf16().flat_map(u16::to_le_bytes).collect();
    let mut b = Vec::with_capacity(8 + path.len());
    b.extend_from_slice(&9u16.to_le_bytes()); // StructureSize
    b.extend_from_slice(&0u16.to_le_bytes()); // Flags
    b.extend_from_slice(&(64u16 + 8).to_le_bytes()); // PathOffset
    b.extend_from_slice(&(path.len() as u16).to_le_bytes());
    b.extend_from_slice(&path);
    b
}

/// Reads one SMB2 reply (NetBIOS header stripped).
pub fn read_reply(s: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut head = [0u8; 4];
    s.read_exact(&mut head)?;
    let len = u32::from_be_bytes(head) as usize & 0x00ff_ffff;
    let mut reply = vec![0u8; len.min(1 << 16)];
    s.read_exact(&mut reply)?;
    if reply.len() < 64 || reply[..4] != *b"\xfeSMB" {
        return Err(io::Error::other("not an SMB2 reply"));
    }
    Ok(reply)
}

/// The NTSTATUS of an SMB2 reply (NetBIOS header stripped). Pure.
pub fn reply_status(reply: &[u8]) -> u32 {
    u32::from_le_bytes(reply[8..12].try_into().expect("an SMB2 header"))
}

/// On `s`, a fresh connection: NEGOTIATE, a guest logon as `user` (SESSION_SETUP twice) and
/// a TREE_CONNECT to `unc`, as a client does before its first file; each step must succeed.
/// Returns the session's id and the tree's.
pub fn guest_tree_connect(s: &mut TcpStream, client: u64, user: &str, unc: &str) -> io::Result<(u64, u32)> {
    let step = |s: &mut TcpStream, what: &str, req: Vec<u8>, want: u32| -> io::Result<Vec<u8>> {
        let fail = |e: io::Error| io::Error::new(e.kind(), format!("{what}: {e}"));
        s.write_all(&req).map_err(fail)?;
        let reply = read_reply(s).map_err(fail)?;
        match reply_status(&reply) {
            got if got == want => Ok(reply),
            got => Err(io::Error::other(format!("{what}: status {got:#010x}"))),
        }
    };
    step(s, "NEGOTIATE", negotiate_request(0, client), 0)?;
    const MORE_PROCESSING_REQUIRED: u32 = 0xc000_0016;
    let challenge = step(
        s,
        "SESSION_SETUP (NEGOTIATE)",
        smb2_request(1, 1, 0, 0, &session_setup_body(&ntlmssp_negotiate())),
        MORE_PROCESSING_REQUIRED,
    )?;
    let session = u64::from_le_bytes(challenge[40..48].try_into().expect("an SMB2 header"));
    let auth = session_setup_body(&ntlmssp_guest_authenticate(user));
    step(s, "SESSION_SETUP (AUTHENTICATE)", smb2_request(1, 2, session, 0, &auth), 0)?;
    let tree = step(s, "TREE_CONNECT", smb2_request(3, 3, session, 0, &tree_connect_body(unc)), 0)?;
    Ok((session, u32::from_le_bytes(tree[36..40].try_into().expect("an SMB2 header"))))
}

/// Checks a NEGOTIATE response (NetBIOS header stripped): an SMB2 header with status 0.
/// Pure.
pub fn negotiate_succeeded(reply: &[u8]) -> bool {
    reply.len() >= 64 && reply[..4] == *b"\xfeSMB" && reply[8..12] == [0, 0, 0, 0] && reply[12..14] == [0, 0]
}

/// Opens `n` connections to SMB `port`, each having negotiated (what a client does before it
/// logs on), from loopback source addresses 127.1.x.y.
pub fn open_smb(port: u16, n: usize) -> io::Result<Vec<TcpStream>> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let src = source_address(i);
        let fail =
            |what: &str, e: io::Error| io::Error::new(e.kind(), format!("idle connection {i} from {src}: {what}: {e}"));
        let mut s = connect_from(src, port).map_err(|e| fail("connect", e))?;
        s.write_all(&negotiate_request(0, i as u64)).map_err(|e| fail("send NEGOTIATE", e))?;
        let mut head = [0u8; 4];
        s.read_exact(&mut head).map_err(|e| fail("NEGOTIATE reply", e))?;
        let len = u32::from_be_bytes(head) as usize & 0x00ff_ffff;
        let mut reply = vec![0u8; len.min(1 << 16)];
        s.read_exact(&mut reply).map_err(|e| fail("NEGOTIATE reply", e))?;
        if !negotiate_succeeded(&reply) {
            return Err(io::Error::other(format!("NEGOTIATE refused on idle connection {i}")));
        }
        out.push(s);
    }
    Ok(out)
}

/// How many of `conns` the server has closed (end of stream or an error where a read would
/// otherwise block).
pub fn closed(conns: &[TcpStream]) -> usize {
    let mut buf = [0u8; 1];
    conns
        .iter()
        .filter(|s| {
            let _ = s.set_nonblocking(true);
            let r = s.peek(&mut buf);
            let _ = s.set_nonblocking(false);
            match r {
                Ok(0) => true,
                Ok(_) => false,
                Err(e) => e.kind() != io::ErrorKind::WouldBlock,
            }
        })
        .count()
}

/// Proportional set size of process `pid` in KiB (`Pss` of `/proc/PID/smaps_rollup`).
pub fn pss_kib(pid: u32) -> io::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("Pss:")?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
        .ok_or_else(|| io::Error::other("no Pss in smaps_rollup"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiate_request_is_a_well_formed_smb2_negotiate() {
        let r = negotiate_request(7, 1);
        assert_ne!(r[80..96], negotiate_request(7, 2)[80..96], "one ClientGuid per client");
        assert_eq!(u32::from_be_bytes(r[..4].try_into().unwrap()) as usize, r.len() - 4);
        assert_eq!(&r[4..8], b"\xfeSMB");
        assert_eq!(r.len() - 4, 64 + 36 + 4);
        assert_eq!(u64::from_le_bytes(r[28..36].try_into().unwrap()), 7);
        let mut ok = vec![0u8; 64];
        ok[..4].copy_from_slice(b"\xfeSMB");
        assert!(negotiate_succeeded(&ok));
        ok[8] = 0x22; // STATUS_ACCESS_DENIED's low byte
        assert!(!negotiate_succeeded(&ok));
        assert!(!negotiate_succeeded(&ok[..10]));
    }

    #[test]
    fn source_addresses_change_every_per_address_connections() {
        assert_eq!(source_address(0), Ipv4Addr::new(127, 1, 0, 1));
        assert_eq!(source_address(PER_ADDRESS - 1), Ipv4Addr::new(127, 1, 0, 1));
        assert_eq!(source_address(PER_ADDRESS), Ipv4Addr::new(127, 1, 0, 2));
        assert_eq!(source_address(250 * PER_ADDRESS), Ipv4Addr::new(127, 1, 1, 1));
    }
}
