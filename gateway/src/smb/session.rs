//! A connection's named state: sessions (who), tree connects (which share) and opens (which
//! file or pipe), so commands read `conn.session(id)?.tree(tid)?` instead of juggling maps.

use std::collections::HashMap;
use std::sync::Arc;

use super::auth::{Identity, NtlmExchange};
use super::cmd::open::{Open, OpenKind, PendingOpen};
use super::encryption::Facts;
use super::transform::SessionCipher;
use super::wire::status::NtStatus;
use crate::config::ShareConfig;

/// Where a session stands.
#[derive(Debug, Clone)]
pub enum SessionState {
    /// Between the NTLMSSP legs.
    InProgress(NtlmExchange),
    /// Authenticated.
    Valid,
}

/// One SMB session (a logged-on user on this connection).
#[derive(Debug)]
pub struct Session {
    /// SessionId.
    pub id: u64,
    /// Authentication progress.
    pub state: SessionState,
    /// Who, once valid.
    pub identity: Option<Identity>,
    /// Signing key (users only; guests cannot sign).
    pub signing_key: Option<[u8; 16]>,
    /// Every request must be signed and every response is signed.
    pub signing_required: bool,
    /// SMB 3.1.1 session preauth integrity hash.
    pub preauth: [u8; 64],
    /// Encryption keys (users on SMB 3.x with a negotiated cipher; never guests).
    pub cipher: Option<Arc<SessionCipher>>,
    /// The session was told to encrypt (SESSION_FLAG_ENCRYPT_DATA): every reply is encrypted.
    pub encrypt_data: bool,
    /// Unencrypted requests are refused (`[smb] encryption = "required"`).
    pub require_encryption: bool,
    /// An encrypted request was seen (logged once per session).
    pub seen_encrypted: bool,
    /// A re-authentication in progress: the session stays valid, with its identity and
    /// signing key, until it completes as the same user (MS-SMB2 3.3.5.5.3).
    pub reauth: Option<NtlmExchange>,
    /// Tree connects by TreeId.
    pub trees: HashMap<u32, Tree>,
}

impl Session {
    /// A session at its first SESSION_SETUP leg.
    pub fn new(id: u64, ex: NtlmExchange, preauth: [u8; 64]) -> Self {
        Self {
            id,
            state: SessionState::InProgress(ex),
            identity: None,
            signing_key: None,
            signing_required: false,
            preauth,
            cipher: None,
            encrypt_data: false,
            require_encryption: false,
            seen_encrypted: false,
            reauth: None,
            trees: HashMap::new(),
        }
    }

    /// Authenticated.
    pub fn is_valid(&self) -> bool {
        matches!(self.state, SessionState::Valid)
    }

    /// The tree connect `id`, or `NETWORK_NAME_DELETED`.
    pub fn tree(&self, id: u32) -> Result<&Tree, NtStatus> {
        self.trees.get(&id).ok_or(NtStatus::NETWORK_NAME_DELETED)
    }

    /// Whether any of this session's traffic is encrypted: it was told to, one of its tree
    /// connects was, or the client encrypts of its own accord.
    pub fn encrypts_anything(&self) -> bool {
        self.cipher.is_some()
            && (self.encrypt_data || self.seen_encrypted || self.trees.values().any(|t| t.encrypt_data))
    }

    /// What this session and its tree connect `tree_id` say about encryption.
    pub fn encryption_facts(&self, tree_id: u32) -> Facts {
        let tree = self.trees.get(&tree_id);
        Facts {
            session_encrypts: self.encrypt_data,
            session_requires: self.require_encryption,
            tree_encrypts: tree.is_some_and(|t| t.encrypt_data),
            tree_requires: tree.is_some_and(|t| t.require_encryption),
        }
    }
}

/// This connection as a channel of a session that another connection of the node holds
/// (multichannel session binding, [`super::binding`]). The session's trees and opens stay
/// with that connection, which runs the channel's requests; the channel signs with a key
/// of its own.
#[derive(Debug)]
pub struct Channel {
    /// Between the legs of the binding's authentication: the exchange and this channel's
    /// SMB 3.1.1 preauth hash. `None` once bound.
    pub binding: Option<(NtlmExchange, [u8; 64])>,
    /// This channel's signing key once bound (MS-SMB2 3.3.5.5.3: derived from the binding's
    /// own session key and, on 3.1.1, this channel's preauth hash).
    pub signing_key: Option<[u8; 16]>,
    /// The session's facts: its first channel's key signs the binding legs, its connection
    /// runs the requests.
    pub session: super::node_sessions::SessionFacts,
}

/// What a tree connect reaches.
#[derive(Debug, Clone)]
pub enum TreeKind {
    /// `IPC$`: named pipes (srvsvc).
    Ipc,
    /// A disk share.
    Disk(Box<ShareConfig>),
}

/// One tree connect.
#[derive(Debug, Clone)]
pub struct Tree {
    /// TreeId.
    pub id: u32,
    /// Share reached.
    pub kind: TreeKind,
    /// Writes allowed (share writable).
    pub writable: bool,
    /// Unix uid/gid file access runs as.
    pub uid: u32,
    /// Unix gid.
    pub gid: u32,
    /// The share's folder in the namespace (None for IPC$).
    pub root: Option<crate::vfs::FileId>,
    /// The share asked this tree connect to encrypt (SHI1005_FLAGS_ENCRYPT_DATA).
    pub encrypt_data: bool,
    /// The share requires encryption: unencrypted requests on this tree are refused.
    pub require_encryption: bool,
}

/// Opens one connection may hold (Samba's default `max open files` is about as many): each
/// holds memory, and a directory open a listing window. A CREATE past it fails with
/// STATUS_INSUFFICIENT_RESOURCES.
pub const MAX_OPENS: usize = 16384;

/// The opens of a connection, by volatile file id.
#[derive(Debug, Default)]
pub struct OpenTable {
    opens: HashMap<u64, Open>,
    next: u64,
}

impl OpenTable {
    /// True when the connection holds [`MAX_OPENS`] opens: no CREATE may add one.
    pub fn is_full(&self) -> bool {
        self.opens.len() >= MAX_OPENS
    }

    /// Stores an open of `kind` under a fresh volatile id, which is also its persistent id
    /// (a pipe, a pseudo-file, a stream: nothing a durable handle names), and returns it.
    pub fn insert(&mut self, session_id: u64, tree_id: u32, channel_sequence: u16, kind: OpenKind) -> u64 {
        self.next += 1;
        let id = self.next;
        self.opens.insert(id, Open { volatile: id, persistent: id, session_id, tree_id, channel_sequence, kind });
        id
    }

    /// A fresh volatile id, for an open stored later with [`OpenTable::insert_at`].
    pub fn reserve(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    /// Stores `open` under id `id` (from [`OpenTable::reserve`]).
    pub fn insert_at(&mut self, id: u64, open: Open) {
        self.opens.insert(id, open);
    }

    /// Closes open `id` if it is a CREATE still waiting for its answer: it leaves the table, and
    /// the CREATE gives back what it is granted when the answer comes. `false` if it is not one.
    pub fn close_waiting(&mut self, id: u64, session: u64, tree: u32) -> bool {
        let waiting = match self.opens.get(&id) {
            Some(o) if o.session_id == session && o.tree_id == tree => match &o.kind {
                OpenKind::Pending(slot) => {
                    let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
                    let w = matches!(*slot, PendingOpen::Waiting);
                    if w {
                        *slot = PendingOpen::Failed;
                    }
                    w
                }
                _ => false,
            },
            _ => false,
        };
        if waiting {
            self.opens.remove(&id);
        }
        waiting
    }

    /// The open `id` if it belongs to `session`/`tree`. A CREATE that finished while waiting
    /// becomes an ordinary open here; one that failed is forgotten.
    pub fn get_mut(&mut self, id: u64, session: u64, tree: u32) -> Result<&mut Open, NtStatus> {
        let settled = match self.opens.get(&id) {
            Some(o) if o.session_id == session && o.tree_id == tree => match &o.kind {
                OpenKind::Pending(slot) => {
                    let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
                    match std::mem::replace(&mut *slot, PendingOpen::Waiting) {
                        PendingOpen::Ready(f) => Some(Some(f)),
                        PendingOpen::Failed => Some(None),
                        PendingOpen::Waiting => return Err(NtStatus::FILE_CLOSED),
                    }
                }
                _ => None,
            },
            _ => return Err(NtStatus::FILE_CLOSED),
        };
        match settled {
            Some(Some(f)) => {
                if let Some(o) = self.opens.get_mut(&id) {
                    o.kind = OpenKind::File(f);
                }
            }
            Some(None) => {
                self.opens.remove(&id);
                return Err(NtStatus::FILE_CLOSED);
            }
            None => {}
        }
        self.opens.get_mut(&id).ok_or(NtStatus::FILE_CLOSED)
    }

    /// Open `id`, whoever's it is (for updates its connection's async work made, see
    /// [`crate::smb::open_updates`]).
    pub fn any_mut(&mut self, id: u64) -> Option<&mut Open> {
        self.opens.get_mut(&id)
    }

    /// The persistent FileId of open `id`.
    pub fn persistent_of(&self, id: u64) -> Option<u64> {
        self.opens.get(&id).map(|o| o.persistent)
    }

    /// Removes and returns open `id`.
    pub fn remove(&mut self, id: u64) -> Option<Open> {
        self.opens.remove(&id)
    }

    /// Volatile ids of the opens of `session` (and `tree` when given).
    pub fn ids_of(&self, session: u64, tree: Option<u32>) -> Vec<u64> {
        self.opens
            .values()
            .filter(|o| o.session_id == session && tree.is_none_or(|t| o.tree_id == t))
            .map(|o| o.volatile)
            .collect()
    }

    /// Every volatile id.
    pub fn all_ids(&self) -> Vec<u64> {
        self.opens.keys().copied().collect()
    }

    /// Every open (for `nasgw connections`).
    pub fn iter(&self) -> impl Iterator<Item = &Open> {
        self.opens.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smb::cmd::open::{Open, OpenKind};

    #[test]
    fn a_table_is_full_at_max_opens_and_frees_a_slot_on_close() {
        let mut t = OpenTable::default();
        let pipe = |v| Open {
            volatile: v,
            persistent: v,
            session_id: 1,
            tree_id: 1,
            channel_sequence: 0,
            kind: OpenKind::Pipe(Default::default()),
        };
        for _ in 0..MAX_OPENS {
            assert!(!t.is_full());
            t.insert(1, 1, 0, OpenKind::Pipe(Default::default()));
        }
        assert!(t.is_full(), "{} opens", MAX_OPENS);
        let first = t.all_ids().into_iter().min().unwrap();
        assert!(t.remove(first).is_some());
        assert!(!t.is_full(), "a close makes room");
        let id = t.reserve();
        t.insert_at(id, pipe(id));
        assert!(t.is_full());
    }
}
