//! How much memory NFS calls may hold while they run and while their replies wait for the
//! client: a server-wide budget (1 GiB), a share per client address (256 MiB) and a share per
//! connection (64 MiB), in 64 KiB units.
//!
//! A call's request bytes are counted when its record is read (connection, then server). A
//! READ's reply is counted only after its handle was checked (a forged or stale handle holds
//! nothing), by the client address and the server, and shrunk to what the reply really keeps
//! in memory once the data is read: nothing for a file slice spliced from the page cache, the bytes
//! read otherwise, none at all when the read failed (permission denied, not a file). A
//! connection holds at most [`super::server::MAX_IN_FLIGHT`] replies of at most
//! [`super::args::MAX_IO`] each. Waiters queue on their own connection's and address's share
//! first, so a client that pipelines READs and never reads the replies stalls itself, not the
//! others: it cannot reach the server-wide budget beyond its address's share.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Accounting unit.
pub const UNIT: usize = 64 * 1024;
/// Units all connections together may hold (1 GiB).
pub const SERVER_UNITS: usize = 16384;
/// Units the calls of one client address may hold for READ replies (256 MiB).
pub const CLIENT_UNITS: usize = 4096;
/// Units one connection may hold for its requests (64 MiB).
pub const CONNECTION_UNITS: usize = 1024;

/// Units that hold `bytes` (at least one: every call costs something).
pub fn units(bytes: usize) -> u32 {
    (bytes / UNIT + 1).min(CONNECTION_UNITS) as u32
}

/// The server-wide budget and each client address's share of it.
#[derive(Debug)]
pub struct ReplyBudget {
    server: Arc<Semaphore>,
    client_units: usize,
    /// A client's share lives while some call of it holds units.
    clients: Mutex<HashMap<IpAddr, Weak<Semaphore>>>,
}

impl Default for ReplyBudget {
    fn default() -> Self {
        Self::new(SERVER_UNITS, CLIENT_UNITS)
    }
}

/// Units held by one call; released when dropped.
#[derive(Debug)]
pub struct Reservation {
    permits: Vec<OwnedSemaphorePermit>,
}

impl Reservation {
    /// Units held.
    pub fn units(&self) -> usize {
        self.permits.first().map_or(0, OwnedSemaphorePermit::num_permits)
    }

    /// Keeps only what `bytes` need (nothing for zero bytes) and gives the rest back.
    pub fn shrink_to(&mut self, bytes: usize) {
        let keep = if bytes == 0 { 0 } else { units(bytes) as usize };
        for p in &mut self.permits {
            if p.num_permits() > keep {
                drop(p.split(p.num_permits() - keep));
            }
        }
    }
}

impl ReplyBudget {
    /// A budget of `server_units`, of which one client address may hold `client_units`.
    pub fn new(server_units: usize, client_units: usize) -> Self {
        Self { server: Arc::new(Semaphore::new(server_units)), client_units, clients: Mutex::default() }
    }

    /// Reserves `bytes` for a call of a connection whose own share is `connection`: that share
    /// first, then the server's (a connection waits on itself before it queues with others).
    pub async fn request(&self, connection: &Arc<Semaphore>, bytes: usize) -> Option<Reservation> {
        let n = units(bytes);
        let own = connection.clone().acquire_many_owned(n).await.ok()?;
        let server = self.server.clone().acquire_many_owned(n).await.ok()?;
        Some(Reservation { permits: vec![own, server] })
    }

    /// Reserves a reply of `bytes` for `client`: its address's share first, then the server's.
    pub async fn reply(&self, client: IpAddr, bytes: usize) -> Option<Reservation> {
        let n = units(bytes);
        let share = self.share(client);
        let own = share.acquire_many_owned(n).await.ok()?;
        let server = self.server.clone().acquire_many_owned(n).await.ok()?;
        Some(Reservation { permits: vec![own, server] })
    }

    /// Units free in the server-wide budget.
    pub fn available(&self) -> usize {
        self.server.available_permits()
    }

    fn share(&self, client: IpAddr) -> Arc<Semaphore> {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = clients.get(&client).and_then(Weak::upgrade) {
            return s;
        }
        if clients.len() >= 1024 {
            clients.retain(|_, w| w.strong_count() > 0);
        }
        let s = Arc::new(Semaphore::new(self.client_units));
        clients.insert(client, Arc::downgrade(&s));
        s
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[tokio::test]
    async fn one_address_cannot_take_more_than_its_share() {
        let b = ReplyBudget::new(100, 40);
        let mut held = Vec::new();
        for _ in 0..40 {
            held.push(b.reply(ip("198.18.0.10"), 1000).await.unwrap());
        }
        // The 41st reply of that address waits on its share...
        let more = tokio::time::timeout(Duration::from_millis(50), b.reply(ip("198.18.0.10"), 1000)).await;
        assert!(more.is_err(), "an address went past its share");
        // ...while another address and small requests still get through at once.
        let other = tokio::time::timeout(Duration::from_millis(500), b.reply(ip("198.18.0.11"), 1000)).await;
        let _other = other.expect("another address waited").expect("budget closed");
        let conn = Arc::new(Semaphore::new(CONNECTION_UNITS));
        let small = tokio::time::timeout(Duration::from_millis(500), b.request(&conn, 100)).await;
        let _small = small.expect("a small request waited").expect("budget closed");
        assert_eq!(b.available(), 100 - 40 - 1 - 1);
        held.clear();
        assert_eq!(b.available(), 100 - 1 - 1);
    }

    #[tokio::test]
    async fn a_reservation_shrinks_to_what_the_reply_keeps() {
        let b = ReplyBudget::new(100, 100);
        let mut r = b.reply(ip("198.18.0.10"), 1 << 20).await.unwrap();
        assert_eq!(r.units(), 17);
        assert_eq!(b.available(), 83);
        r.shrink_to(100_000); // bytes actually read
        assert_eq!((r.units(), b.available()), (2, 98));
        r.shrink_to(0); // a file slice: nothing in memory
        assert_eq!((r.units(), b.available()), (0, 100));
        drop(r);
        assert_eq!(b.available(), 100);
    }

    #[tokio::test]
    async fn a_connection_waits_on_its_own_share_first() {
        let b = ReplyBudget::new(100, 100);
        let conn = Arc::new(Semaphore::new(10));
        let r = b.request(&conn, 9 * UNIT).await.unwrap();
        assert_eq!(r.units(), 10);
        let blocked = tokio::time::timeout(Duration::from_millis(50), b.request(&conn, 1)).await;
        assert!(blocked.is_err());
        assert_eq!(b.available(), 90, "the waiter took nothing from the server's budget");
    }
}
