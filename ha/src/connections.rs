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

/// The live connection list, shared between listeners and the HA module.
#[derive(Debug, Default)]
pub struct ConnectionTable {
    live: Mutex<HashMap<u64, TcpConnection>>,
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
        self.live.lock().expect("connection table lock").insert(id, conn);
        self.changes.fetch_add(1, Ordering::Relaxed);
        ConnectionGuard { table: self.clone(), id }
    }

    /// Every live connection.
    pub fn snapshot(&self) -> Vec<TcpConnection> {
        self.live.lock().expect("connection table lock").values().copied().collect()
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
}
