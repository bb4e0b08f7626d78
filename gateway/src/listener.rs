//! The accept loop both protocol services share: bounded connections, every connection
//! registered in the HA module's [`ConnectionTable`], and a clean stop.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use ha::connections::{ConnectionTable, TcpConnection};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::daemon::Lifecycle;

/// Most connections one client address may hold on one service: a client uses one or two; a
/// NAT gateway in front of an office may use more. Past it new connections from that address
/// are closed at once, so one host cannot take every slot (and descriptor) of a service.
pub const MAX_PER_CLIENT: usize = 128;

/// Connections per client address, and the decision whether one more is allowed.
#[derive(Debug, Default)]
pub struct PerClient {
    counts: Mutex<HashMap<IpAddr, usize>>,
    limit: usize,
}

impl PerClient {
    /// A table allowing `limit` connections per address.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self { counts: Mutex::new(HashMap::new()), limit })
    }

    /// Counts one more connection from `ip`, or `None` when it already has `limit`; the
    /// returned guard gives the slot back when dropped.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<ClientSlot> {
        let mut m = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(ClientSlot { table: self.clone(), ip })
    }
}

/// One counted connection of a client address (see [`PerClient::admit`]).
#[derive(Debug)]
pub struct ClientSlot {
    table: Arc<PerClient>,
    ip: IpAddr,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut m = self.table.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

/// Accepts on `listener` until the daemon stops, running `handle` for each connection as a
/// tracked task. `service` names the protocol in logs. Beyond `max_connections`, or the
/// sockets the process's descriptor budget allows ([`crate::descriptors`]), new clients wait
/// in the kernel's backlog instead of exhausting memory or descriptors; one address gets at
/// most [`MAX_PER_CLIENT`] of them. An `accept` that fails for want of a resource (the
/// process or the system out of descriptors or memory) is retried after a pause that grows
/// to a second, not at once: the listener stays readable, so retrying at once would spin.
pub async fn accept_loop<F, Fut>(
    service: &'static str,
    listener: TcpListener,
    max_connections: usize,
    connections: Arc<ConnectionTable>,
    life: Lifecycle,
    handle: F,
) where
    F: Fn(TcpStream, TcpConnection) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(max_connections));
    let per_client = PerClient::new(MAX_PER_CLIENT);
    let mut refused_logged: Option<std::time::Instant> = None;
    let mut failed_logged: Option<std::time::Instant> = None;
    let mut failures = 0;
    let descriptors = crate::descriptors::process();
    let handle = Arc::new(handle);
    loop {
        let permit = tokio::select! {
            _ = life.stop.cancelled() => return,
            p = slots.clone().acquire_owned() => p.expect("semaphore never closed"),
        };
        let socket = tokio::select! {
            _ = life.stop.cancelled() => return,
            p = descriptors.socket(service) => p,
        };
        let accepted = tokio::select! {
            _ = life.stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let (stream, client) = match accepted {
            Ok(a) => {
                failures = 0;
                a
            }
            Err(e) => {
                if failed_logged.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(60)) {
                    tracing::warn!(service, error = %e, "accept failed");
                    failed_logged = Some(std::time::Instant::now());
                }
                if out_of_resources(&e) {
                    failures += 1;
                    tokio::select! {
                        _ = life.stop.cancelled() => return,
                        _ = tokio::time::sleep(crate::descriptors::budget::retry_pause(failures)) => {}
                    }
                }
                continue;
            }
        };
        let Some(slot) = per_client.admit(client.ip()) else {
            // Logged at most once a minute: a flood must not flood the log too.
            if refused_logged.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(60)) {
                tracing::warn!(service, client = %client.ip(), limit = MAX_PER_CLIENT, "connection refused: too many from one address");
                refused_logged = Some(std::time::Instant::now());
            }
            drop(stream);
            continue;
        };
        let server = match stream.local_addr() {
            Ok(a) => a,
            Err(_) => continue,
        };
        let _ = stream.set_nodelay(true);
        let conn = TcpConnection::accepted(client, server);
        let client = conn.client;
        let guard = connections.register(conn);
        let counted = crate::metrics::CONNECTIONS.opened(service);
        let listed = crate::clients::CLIENTS.register(service, conn);
        tracing::debug!(service, %client, %server, "connection accepted");
        let handle = handle.clone();
        life.tasks.spawn(async move {
            tokio::select! {
                _ = handle(stream, conn) => {}
                // HA released the public address this connection came in on: drop it.
                _ = guard.reset_requested() => tracing::info!(service, %client, %server, "connection reset: its public address moved"),
            }
            tracing::debug!(service, %client, "connection closed");
            drop(guard);
            drop(counted);
            drop(listed);
            drop((permit, slot, socket));
        });
    }
}

/// `accept` failed for want of a resource (the process's or the system's descriptors, socket
/// buffers, memory) rather than because of one connection (reset before it was accepted).
pub fn out_of_resources(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM))
}

/// For accept loops of fixed, few peers (control socket, metrics, the lock mesh): after a
/// failed `accept`, pauses 100 ms when the process ran out of something, so the loop does not
/// spin on a listener that stays readable.
pub async fn pause_if_out_of_resources(e: &std::io::Error) {
    if out_of_resources(e) {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_address_gets_at_most_its_limit() {
        let t = PerClient::new(2);
        let a: IpAddr = "198.18.0.1".parse().unwrap();
        let b: IpAddr = "198.18.0.2".parse().unwrap();
        let first = t.admit(a).unwrap();
        let _second = t.admit(a).unwrap();
        assert!(t.admit(a).is_none(), "a third connection from one address is refused");
        let _other = t.admit(b).expect("another address is not affected");
        drop(first);
        assert!(t.admit(a).is_some(), "a closed connection frees its slot");
    }

    #[test]
    fn only_running_out_of_something_pauses_accept() {
        let e = std::io::Error::from_raw_os_error;
        for code in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
            assert!(out_of_resources(&e(code)), "{code}");
        }
        for code in [libc::ECONNABORTED, libc::EPROTO, libc::EPERM, libc::EINTR] {
            assert!(!out_of_resources(&e(code)), "{code}");
        }
        assert!(!out_of_resources(&std::io::Error::other("no errno")));
    }
}
