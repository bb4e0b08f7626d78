//! Every client connection of this node with what `nasgw connections` shows about it (like
//! `smbstatus`): protocol, addresses, since when, and for SMB the logged-on users and the open
//! files. Listeners register a connection when they accept it; the SMB engine refreshes its
//! entry after the commands that change sessions, trees or opens. Read by the control socket
//! and the metrics (session and open counts) only, never on the request path.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{LazyLock, Mutex};

use ha::connections::TcpConnection;
use serde::{Deserialize, Serialize};

/// One client connection as `nasgw connections` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientConnection {
    /// `smb`, `nfs` (or a test service).
    pub protocol: String,
    /// The client's address.
    pub client: SocketAddr,
    /// The address it reached (a public address, usually).
    pub server: SocketAddr,
    /// When it was accepted (seconds since the Unix epoch).
    pub since: u64,
    /// SMB: the users of its sessions (`guest`, `anonymous` or the account name).
    #[serde(default)]
    pub users: Vec<String>,
    /// SMB: sessions on it.
    #[serde(default)]
    pub sessions: usize,
    /// SMB: open files, as `share/path`.
    #[serde(default)]
    pub files: Vec<String>,
}

/// The live connections of this node.
#[derive(Debug, Default)]
pub struct ClientRegistry {
    live: Mutex<HashMap<(SocketAddr, SocketAddr), ClientConnection>>,
}

/// This node's client connections.
pub static CLIENTS: LazyLock<ClientRegistry> = LazyLock::new(ClientRegistry::default);

impl ClientRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(SocketAddr, SocketAddr), ClientConnection>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lists `conn` (accepted by `service`) until the guard drops.
    pub fn register(&'static self, service: &str, conn: TcpConnection) -> Registered {
        let entry = ClientConnection {
            protocol: service.to_string(),
            client: conn.client,
            server: conn.server,
            since: crate::daemon::unix_secs(std::time::SystemTime::now()),
            users: Vec::new(),
            sessions: 0,
            files: Vec::new(),
        };
        self.lock().insert((conn.client, conn.server), entry);
        Registered { registry: self, key: (conn.client, conn.server) }
    }

    /// Changes the entry of `conn`, if it is still listed.
    pub fn update(&self, conn: &TcpConnection, f: impl FnOnce(&mut ClientConnection)) {
        if let Some(e) = self.lock().get_mut(&(conn.client, conn.server)) {
            f(e);
        }
    }

    /// Every connection, by protocol then client.
    pub fn snapshot(&self) -> Vec<ClientConnection> {
        let mut v: Vec<ClientConnection> = self.lock().values().cloned().collect();
        v.sort_by(|a, b| (&a.protocol, a.client).cmp(&(&b.protocol, b.client)));
        v
    }

    /// (SMB sessions, SMB open files) over every connection.
    pub fn smb_totals(&self) -> (usize, usize) {
        self.lock().values().fold((0, 0), |(s, f), c| (s + c.sessions, f + c.files.len()))
    }
}

/// Keeps a connection listed; removes it when dropped.
#[derive(Debug)]
pub struct Registered {
    registry: &'static ClientRegistry,
    key: (SocketAddr, SocketAddr),
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.key);
    }
}

/// The `nasgw connections` table.
pub fn render(conns: &[ClientConnection], now: u64) -> String {
    let mut out =
        format!("{:<5} {:<22} {:<22} {:<8} {:<16} {}\n", "PROTO", "CLIENT", "SERVER", "UP", "USERS", "OPEN FILES");
    if conns.is_empty() {
        out.push_str("(no client connections)\n");
    }
    for c in conns {
        let users = if c.users.is_empty() { "-".to_string() } else { c.users.join(",") };
        let up = ha::status::short_duration(now.saturating_sub(c.since));
        out.push_str(&format!(
            "{:<5} {:<22} {:<22} {:<8} {:<16} {}\n",
            c.protocol,
            c.client.to_string(),
            c.server.to_string(),
            up,
            users,
            c.files.len()
        ));
        for f in &c.files {
            out.push_str(&format!("      {f}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_is_listed_while_registered_and_rendered_like_smbstatus() {
        let conn =
            TcpConnection { client: "198.18.0.10:50000".parse().unwrap(), server: "198.18.1.1:445".parse().unwrap() };
        let g = CLIENTS.register("smb", conn);
        CLIENTS.update(&conn, |c| {
            c.users = vec!["alice".into()];
            c.sessions = 1;
            c.files = vec!["pub/a.txt".into()];
        });
        let mine: Vec<ClientConnection> = CLIENTS.snapshot().into_iter().filter(|c| c.client == conn.client).collect();
        assert_eq!(mine.len(), 1);
        let text = render(&mine, mine[0].since + 65);
        assert!(
            text.contains(
                "smb   198.18.0.10:50000      198.18.1.1:445         1m 5s    alice            1\n      pub/a.txt\n"
            ),
            "{text}"
        );
        drop(g);
        assert!(CLIENTS.snapshot().iter().all(|c| c.client != conn.client));
    }
}
