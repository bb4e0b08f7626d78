//! PreviousSessionId (MS-SMB2 3.3.5.5.3): a client that lost its connection sets up a new
//! session naming the one it had; the server ends the old one, so that what it held without
//! durability (plain opens, their share modes and locks) does not linger until the old TCP
//! connection times out, while its durable opens wait for the client's reconnect.
//!
//! [`SessionDirectory`] is this node's index of valid sessions by SessionId: who they belong
//! to and how to end the connection that holds them. Sessions live inside their connection's
//! thread, so ending one from another connection ends its whole connection as lost (its
//! durable opens are kept, the others closed), which is what a client that reconnects wants
//! (its old connection is dead; a connection carries one session per user in practice). Only
//! this node's sessions are known: an old session on another node (a dead node, or one whose
//! address moved, which reset the connection) has already ended there.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio_util::sync::CancellationToken;

use super::auth::Identity;

/// How to end one connection: its number on this node and the token its command loop
/// watches.
#[derive(Debug, Clone)]
pub struct ConnectionEnd {
    /// Unique among this node's connections.
    pub serial: u64,
    /// Cancelled: the connection ends as lost.
    pub token: CancellationToken,
}

impl ConnectionEnd {
    /// A fresh one for a new connection.
    pub fn new() -> Self {
        Self { serial: rand::random(), token: CancellationToken::new() }
    }
}

impl Default for ConnectionEnd {
    fn default() -> Self {
        Self::new()
    }
}

struct Registered {
    identity: Identity,
    client_guid: [u8; 16],
    connection: ConnectionEnd,
}

/// This node's valid sessions (see the module doc).
#[derive(Default)]
pub struct SessionDirectory {
    map: Mutex<HashMap<u64, Registered>>,
}

impl std::fmt::Debug for SessionDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionDirectory").field("sessions", &self.map().len()).finish()
    }
}

/// Whether a new session of `identity` from client `client_guid` may end the old session of
/// `old` from `old_guid`: the same user (MS-SMB2: the same security context); a guest only
/// from the same client (every guest is the same "user"); never an anonymous one. Pure.
pub fn may_end(old: &Identity, old_guid: [u8; 16], identity: &Identity, client_guid: [u8; 16]) -> bool {
    match (old, identity) {
        (Identity::User(a), Identity::User(b)) => a.eq_ignore_ascii_case(b),
        (Identity::Guest, Identity::Guest) => old_guid == client_guid,
        _ => false,
    }
}

impl SessionDirectory {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Registered>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Session `id` of `identity` is valid on the connection that `connection` ends.
    pub fn register(&self, id: u64, identity: Identity, client_guid: [u8; 16], connection: ConnectionEnd) {
        self.map().insert(id, Registered { identity, client_guid, connection });
    }

    /// Session `id` ended.
    pub fn unregister(&self, id: u64) {
        self.map().remove(&id);
    }

    /// A new session of `identity` from `client_guid` on the connection `mine` names `previous`:
    /// ends the connection holding it, if [`may_end`] allows and it is another connection.
    /// Returns whether it did.
    pub fn end_previous(&self, previous: u64, identity: &Identity, client_guid: [u8; 16], mine: u64) -> bool {
        let m = self.map();
        let Some(old) = m.get(&previous) else { return false };
        if !may_end(&old.identity, old.client_guid, identity, client_guid) || old.connection.token.is_cancelled() {
            return false;
        }
        // Same connection: nothing to end (MS-SMB2 leaves it to the client).
        if old.connection.serial == mine {
            return false;
        }
        old.connection.token.cancel();
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_same_user_ends_a_previous_session_of_another_connection() {
        let alice = Identity::User("alice".into());
        let bob = Identity::User("bob".into());
        // (old, old guid, new, new guid) -> may end
        let table = [
            (&alice, 1, &Identity::User("ALICE".into()), 2, true),
            (&alice, 1, &bob, 1, false),
            (&Identity::Guest, 1, &Identity::Guest, 1, true),
            (&Identity::Guest, 1, &Identity::Guest, 2, false),
            (&Identity::Anonymous, 1, &Identity::Anonymous, 1, false),
            (&Identity::Guest, 1, &alice, 1, false),
        ];
        for (old, og, new, ng, want) in table {
            assert_eq!(may_end(old, [og; 16], new, [ng; 16]), want, "{old:?} {og} {new:?} {ng}");
        }
        let d = SessionDirectory::default();
        let (a, b) = (ConnectionEnd::new(), ConnectionEnd::new());
        d.register(7, alice.clone(), [1; 16], a.clone());
        assert!(!d.end_previous(7, &bob, [1; 16], b.serial));
        assert!(!d.end_previous(7, &alice, [1; 16], a.serial), "its own connection");
        assert!(!d.end_previous(8, &alice, [1; 16], b.serial), "no such session");
        assert!(!a.token.is_cancelled());
        assert!(d.end_previous(7, &alice, [1; 16], b.serial));
        assert!(a.token.is_cancelled());
        d.unregister(7);
        assert!(!d.end_previous(7, &alice, [1; 16], b.serial));
    }
}
