//! Every client TCP connection this node serves, so the HA module knows whom to tickle when a
//! public address moves. SMB and NFS listeners register each accepted connection and the entry
//! disappears when the connection ends (the guard is dropped).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// One client connection: the client's address and the (public) address it reached us on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TcpConnection {
    /// The client's end.
    pub client: SocketAddr,
    /// Our end: a public address and a service port.
    pub server: SocketAddr,
}

impl TcpConnection {
    /// A connection as an accept returned it, with IPv4-mapped IPv6 addresses (a listener on
    /// `[::]` accepting an IPv4 client) written as the IPv4 addresses they are: the public
    /// address it came in on must match the configured one, and its tickle go out over IPv4.
    pub fn accepted(client: SocketAddr, server: SocketAddr) -> TcpConnection {
        let plain = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
        TcpConnection { client: plain(client), server: plain(server) }
    }
}

/// The live connection list, shared between listeners and the HA module.
#[derive(Debug, Default)]
pub struct ConnectionTable {
    live: Mutex<HashMap<u64, (TcpConnection, Arc<tokio::sync::Notify>)>>,
    next_id: AtomicU64,
    changes: AtomicU64,
}

impl ConnectionTable {
    /// An empty table.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Records `conn` until the returned guard is dropped.
    pub fn register(self: &Arc<Self>, conn: TcpConnection) -> ConnectionGuard {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let reset = Arc::new(tokio::sync::Notify::new());
        self.live.lock().expect("connection table lock").insert(id, (conn, reset.clone()));
        self.changes.fetch_add(1, Ordering::Relaxed);
        ConnectionGuard { table: self.clone(), id, reset }
    }

    /// Every live connection.
    pub fn snapshot(&self) -> Vec<TcpConnection> {
        self.live.lock().expect("connection table lock").values().map(|(c, _)| *c).collect()
    }

    /// Asks every connection served on `address` to close (its public address was released);
    /// returns how many were asked. Their guards' [`ConnectionGuard::reset_requested`] resolves.
    pub fn reset(&self, address: std::net::IpAddr) -> usize {
        let live = self.live.lock().expect("connection table lock");
        let mut n = 0;
        for (c, r) in live.values() {
            if c.server.ip() == address {
                r.notify_one();
                n += 1;
            }
        }
        n
    }

    /// Counts registrations and removals, so a replicator can tell when to resend.
    pub fn change_count(&self) -> u64 {
        self.changes.load(Ordering::Relaxed)
    }
}

/// Removes its connection from the table when dropped.
#[derive(Debug)]
pub struct ConnectionGuard {
    table: Arc<ConnectionTable>,
    id: u64,
    reset: Arc<tokio::sync::Notify>,
}

impl ConnectionGuard {
    /// Resolves when HA released this connection's public address: the service should drop
    /// the connection (the client is reset and reconnects to the address's new owner).
    pub async fn reset_requested(&self) {
        self.reset.notified().await
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.table.live.lock().expect("connection table lock").remove(&self.id);
        self.table.changes.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_clients_of_a_dual_stack_listener_are_ipv4_connections() {
        let c = TcpConnection::accepted(
            "[::ffff:10.0.0.9]:5000".parse().unwrap(),
            "[::ffff:10.0.0.200]:445".parse().unwrap(),
        );
        assert_eq!(
            c,
            TcpConnection { client: "10.0.0.9:5000".parse().unwrap(), server: "10.0.0.200:445".parse().unwrap() }
        );
        let v6 = TcpConnection::accepted("[fd18::10]:5000".parse().unwrap(), "[fd18::101]:445".parse().unwrap());
        assert_eq!(v6.server, "[fd18::101]:445".parse().unwrap(), "real IPv6 stays IPv6");
    }

    #[test]
    fn a_connection_is_listed_while_its_guard_lives() {
        let t = ConnectionTable::new();
        let c = TcpConnection { client: "10.0.0.9:5000".parse().unwrap(), server: "10.0.0.200:445".parse().unwrap() };
        let g = t.register(c);
        assert_eq!(t.snapshot(), vec![c]);
        let before = t.change_count();
        drop(g);
        assert!(t.snapshot().is_empty());
        assert!(t.change_count() > before);
    }

    #[tokio::test]
    async fn reset_wakes_only_connections_on_that_address() {
        let t = ConnectionTable::new();
        let a = t.register(TcpConnection {
            client: "10.0.0.9:1".parse().unwrap(),
            server: "10.0.0.200:445".parse().unwrap(),
        });
        let b = t.register(TcpConnection {
            client: "10.0.0.9:2".parse().unwrap(),
            server: "10.0.0.201:445".parse().unwrap(),
        });
        assert_eq!(t.reset("10.0.0.200".parse().unwrap()), 1);
        tokio::time::timeout(std::time::Duration::from_secs(1), a.reset_requested()).await.expect("a is reset");
        assert!(tokio::time::timeout(std::time::Duration::from_millis(50), b.reset_requested()).await.is_err());
    }
}
