//! Calls the lock manager makes to clients, always from the server address the client used
//! (a Linux client matches a GRANTED callback to its blocked lock by the sender's address, and
//! its statd an SM_NOTIFY by the sender's name or address): the GRANTED callback when a blocked
//! lock is granted, the `_RES` answer to a `_MSG` request, and SM_NOTIFY after a takeover or a
//! restart. Each finds the client's service through the client's portmapper, over UDP.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::wire::{self, OwnedLock, Stat, Version};
use crate::nfs::nsm;
use crate::nfs::rpc_client::{call_udp, getport, CallError, Proc, IPPROTO_UDP};
use crate::nfs::xdr::XdrWriter;

async fn port_of(from: IpAddr, client: IpAddr, prog: u32, vers: u32) -> Result<u16, CallError> {
    match getport(Some(from), client, prog, vers, IPPROTO_UDP).await? {
        0 => Err(CallError::Io(format!("program {prog} version {vers} is not registered at {client}"))),
        p => Ok(p),
    }
}

/// NLM GRANTED to `client`: its blocked lock `l` is now held. Returns the client's answer
/// (GRANTED: it takes the lock; anything else: it no longer waits).
pub async fn granted(
    from: IpAddr,
    client: IpAddr,
    v: Version,
    cookie: &[u8],
    exclusive: bool,
    l: &OwnedLock,
) -> Result<Stat, CallError> {
    let port = port_of(from, client, wire::PROGRAM, v.number()).await?;
    let mut a = XdrWriter::default();
    wire::put_granted_args(&mut a, v, cookie, exclusive, l);
    let body = call_udp(
        Some(from),
        SocketAddr::new(client, port),
        Proc { prog: wire::PROGRAM, vers: v.number(), proc_: wire::procs::GRANTED },
        &a.buf,
        3,
        Duration::from_secs(1),
    )
    .await?;
    wire::decode_res(&body).map_err(|e| CallError::Rejected(crate::nfs::rpc_client::ReplyError::Malformed(e)))
}

/// The `_RES` call answering a client's `_MSG` request (`body`: its result, e.g. an `nlm4_res`).
/// Its reply carries nothing; it is waited for briefly only so a lost datagram is sent again.
pub async fn send_res(from: IpAddr, client: IpAddr, v: Version, proc_: u32, body: &[u8]) -> Result<(), CallError> {
    let port = port_of(from, client, wire::PROGRAM, v.number()).await?;
    call_udp(
        Some(from),
        SocketAddr::new(client, port),
        Proc { prog: wire::PROGRAM, vers: v.number(), proc_ },
        body,
        2,
        Duration::from_millis(500),
    )
    .await
    .map(|_| ())
}

/// SM_NOTIFY to `client`'s status monitor: the server known as `mon_name` restarted with state
/// `state` (its lock manager then reclaims its locks).
pub async fn notify(from: IpAddr, client: IpAddr, mon_name: &str, state: u32) -> Result<(), CallError> {
    let port = port_of(from, client, nsm::PROGRAM, 1).await?;
    let args = nsm::notify_args(mon_name, state);
    call_udp(
        Some(from),
        SocketAddr::new(client, port),
        Proc { prog: nsm::PROGRAM, vers: 1, proc_: nsm::procs::NOTIFY },
        &args,
        3,
        Duration::from_secs(1),
    )
    .await
    .map(|_| ())
}
