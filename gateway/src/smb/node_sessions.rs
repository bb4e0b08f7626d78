//! This node's sessions by SessionId, apart from the connections that hold them, so that
//! another connection of the node can reach one:
//!
//! - PreviousSessionId (MS-SMB2 3.3.5.5.3): a client that lost its connection sets up a new
//!   session naming the one it had; the server ends the old session (only that session, as
//!   smbd does: its plain opens close, its durable opens wait for the client's reconnect), so
//!   that what it held does not linger until the old TCP connection times out;
//! - session binding (multichannel, [`super::binding`]): a second connection of the client
//!   asks to become a channel of a session; the table gives the session's dialect, algorithms
//!   and signing key (the binding request is signed with it, and so is a refusal), and the way
//!   to the connection that holds the session's trees and opens, which runs the channel's
//!   requests ([`Inbound::Dispatch`]).
//!
//! A session lives inside its connection's thread; the table holds only what other
//! connections need ([`SessionFacts`]) and the connection's [`ConnectionEnd`]. Only this node's
//! sessions are known: an old session on another node (a dead node, or one whose address
//! moved, which reset the connection) has already ended there, and a client binds channels to
//! the node it is on. The facts are plain data, so a cluster-wide table could carry them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::auth::Identity;
use super::conn::Outcome;
use super::signing::SigningAlgorithm;
use super::transform::{Cipher, SessionCipher};
use super::wire::header::Header;

/// What another connection of this node asks a connection's loop to do. Small (a request
/// is boxed): every connection's inbox allocates room for 32 of these up front.
pub enum Inbound {
    /// End session `id` as lost (a new session named it as its PreviousSessionId); `done`
    /// is dropped once it has ended.
    EndSession {
        /// The session.
        id: u64,
        /// Dropped when done.
        done: oneshot::Sender<()>,
    },
    /// Run one request of a session of this connection that came in on a bound channel
    /// (signature checked there); the outcome goes back to the channel, which answers.
    Dispatch(Box<ChannelRequest>),
    /// Run the rest of one of this connection's own compound chains: a CREATE in it went
    /// async, and its final answer is out.
    Resume(Box<ChainRest>),
}

/// The requests of a compound chain after a CREATE that went async, held until that CREATE's
/// final answer is out, then run as a chain of their own (as smbd does, MS-SMB2 3.3.5.2.7
/// note <206>). Answering them at once, beside the interim response, failed them with
/// FILE_CLOSED, and the Linux kernel client cannot even read responses chained after an
/// interim one: it took the rest of the message for the next transport frame and reconnected.
pub struct ChainRest {
    /// The remaining elements, from the first one after the CREATE to the end of the message
    /// (decrypted, if the message came encrypted).
    pub msg: Vec<u8>,
    /// What a related element inherits: the CREATE's session, tree and final status.
    pub prev: super::compound::Previous,
    /// The FileId the CREATE returned, for related elements.
    pub fid: Option<(u64, u64)>,
    /// The message came encrypted by this session's keys: the replies go out so too.
    pub encrypted: Option<Arc<SessionCipher>>,
}

/// A request of a bound channel, run by the connection holding its session.
pub struct ChannelRequest {
    /// The request's header (related operations already inherited).
    pub hdr: Header,
    /// The request element.
    pub elem: Vec<u8>,
    /// The FileId a CREATE earlier in the channel's compound chain returned.
    pub compound_fid: Option<(u64, u64)>,
    /// Where the outcome goes, with the chain's FileId after the request.
    pub reply: oneshot::Sender<(Outcome, Option<(u64, u64)>)>,
}

/// How to reach one connection: its number on this node, the token that ends it, and its
/// inbox.
#[derive(Debug, Clone)]
pub struct ConnectionEnd {
    /// Unique among this node's connections.
    pub serial: u64,
    /// Cancelled: the connection ends as lost.
    pub token: CancellationToken,
    /// The connection's loop reads this between requests.
    pub inbox: mpsc::UnboundedSender<Inbound>,
}

impl ConnectionEnd {
    /// A fresh one for a new connection, and the inbox its loop reads.
    pub fn new() -> (Self, mpsc::UnboundedReceiver<Inbound>) {
        let (inbox, rx) = mpsc::unbounded_channel();
        (Self { serial: rand::random(), token: CancellationToken::new(), inbox }, rx)
    }
}

/// What other connections need of a valid session. Its signing key is a secret: `Debug`
/// leaves it out.
#[derive(Clone)]
pub struct SessionFacts {
    /// Who.
    pub identity: Identity,
    /// The client's GUID from its first connection's NEGOTIATE.
    pub client_guid: [u8; 16],
    /// Dialect of that connection.
    pub dialect: u16,
    /// Its signing algorithm.
    pub signing_alg: SigningAlgorithm,
    /// Its cipher.
    pub cipher: Option<Cipher>,
    /// The session's signing key (its first channel's): binding requests are signed with it.
    pub signing_key: Option<[u8; 16]>,
    /// The session requires signing.
    pub signing_required: bool,
    /// The session's encryption keys and nonce counter (one for all its channels: a nonce
    /// is used once per key).
    pub session_cipher: Option<Arc<SessionCipher>>,
    /// The session was told to encrypt everything.
    pub encrypt_data: bool,
    /// The session refuses unencrypted requests.
    pub require_encryption: bool,
    /// The connection holding the session.
    pub connection: ConnectionEnd,
}

impl std::fmt::Debug for SessionFacts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionFacts")
            .field("identity", &self.identity)
            .field("dialect", &self.dialect)
            .field("signing_alg", &self.signing_alg)
            .field("cipher", &self.cipher)
            .field("connection", &self.connection.serial)
            .finish_non_exhaustive()
    }
}

/// This node's valid sessions (see the module doc).
#[derive(Default)]
pub struct SessionDirectory {
    map: Mutex<HashMap<u64, SessionFacts>>,
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
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<u64, SessionFacts>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Session `id` is valid with these facts.
    pub fn register(&self, id: u64, facts: SessionFacts) {
        self.map().insert(id, facts);
    }

    /// Session `id` was re-authenticated as `identity`.
    pub fn set_identity(&self, id: u64, identity: Identity) {
        if let Some(f) = self.map().get_mut(&id) {
            f.identity = identity;
        }
    }

    /// Session `id` ended.
    pub fn unregister(&self, id: u64) {
        self.map().remove(&id);
    }

    /// The facts of session `id`, if it is valid on this node.
    pub fn lookup(&self, id: u64) -> Option<SessionFacts> {
        self.map().get(&id).cloned()
    }

    /// The connection holding session `previous`, which a new session of `identity` from
    /// `client_guid` names as its PreviousSessionId, if [`may_end`] allows ending it.
    pub fn previous(&self, previous: u64, identity: &Identity, client_guid: [u8; 16]) -> Option<ConnectionEnd> {
        let m = self.map();
        let old = m.get(&previous)?;
        if !may_end(&old.identity, old.client_guid, identity, client_guid) || old.connection.token.is_cancelled() {
            return None;
        }
        Some(old.connection.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(identity: &Identity, guid: u8, connection: &ConnectionEnd) -> SessionFacts {
        SessionFacts {
            identity: identity.clone(),
            client_guid: [guid; 16],
            dialect: super::super::signing::dialect::SMB311,
            signing_alg: SigningAlgorithm::AesCmac,
            cipher: None,
            signing_key: Some([9; 16]),
            signing_required: true,
            session_cipher: None,
            encrypt_data: false,
            require_encryption: false,
            connection: connection.clone(),
        }
    }

    #[test]
    fn an_inbox_message_stays_small() {
        // Every connection's inbox allocates room for 32 messages when it is made, and an idle
        // connection keeps it: 3.9 KiB with the request inline, under 1 KiB boxed.
        assert!(std::mem::size_of::<Inbound>() <= 24, "{} bytes", std::mem::size_of::<Inbound>());
    }

    #[test]
    fn only_the_same_user_ends_a_previous_session() {
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
        let (a, _inbox) = ConnectionEnd::new();
        d.register(7, facts(&alice, 1, &a));
        assert!(d.previous(7, &bob, [1; 16]).is_none());
        assert!(d.previous(8, &alice, [1; 16]).is_none(), "no such session");
        assert_eq!(d.previous(7, &alice, [1; 16]).map(|c| c.serial), Some(a.serial));
        d.set_identity(7, bob.clone());
        assert!(d.previous(7, &alice, [1; 16]).is_none(), "re-authenticated as bob");
        assert!(d.previous(7, &bob, [1; 16]).is_some());
        let shown = format!("{:?}", d.lookup(7).unwrap());
        assert!(!shown.contains("[9, 9"), "the key stays out of logs: {shown}");
        d.unregister(7);
        assert!(d.lookup(7).is_none());
    }
}
