//! Which messages are encrypted and which unencrypted requests are refused (MS-SMB2 3.3.4.1.4,
//! 3.3.5.2.9, 3.3.5.2.11), as pure functions of a request's command and what its session and
//! tree connect say. [`super::conn`] gathers the facts and applies the answers.
//!
//! - A session is told to encrypt (SESSION_FLAG_ENCRYPT_DATA) when `[smb] encryption` is
//!   `desired` or `required` and it has keys (a user on SMB 3.x with a negotiated cipher); a
//!   tree connect (SHI1005_FLAGS_ENCRYPT_DATA) when its share's setting is.
//! - `required` refuses what cannot encrypt at SESSION_SETUP (session) or TREE_CONNECT
//!   (share), and any unencrypted request on such a session or tree with ACCESS_DENIED.
//! - Every reply to an encrypted request is encrypted, and so is every reply of an
//!   encrypting session (but NEGOTIATE and SESSION_SETUP) or tree (but also TREE_CONNECT).

use super::wire::header::command;

/// What a request's session and tree connect say about encryption.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Facts {
    /// The session was told to encrypt all its traffic.
    pub session_encrypts: bool,
    /// The session must encrypt: unencrypted requests are refused.
    pub session_requires: bool,
    /// The tree connect was told to encrypt its traffic.
    pub tree_encrypts: bool,
    /// The tree connect must encrypt.
    pub tree_requires: bool,
}

/// Commands that set a session up: never refused for being unencrypted, and their replies
/// are encrypted only when the request was.
fn session_setup_phase(cmd: u16) -> bool {
    cmd == command::NEGOTIATE || cmd == command::SESSION_SETUP
}

/// Whether an unencrypted request must be refused with ACCESS_DENIED.
pub fn refuse_unencrypted(cmd: u16, encrypted: bool, f: Facts) -> bool {
    if encrypted || session_setup_phase(cmd) {
        return false;
    }
    f.session_requires || (f.tree_requires && cmd != command::TREE_CONNECT)
}

/// Whether the reply to a request is encrypted.
pub fn seal_reply(cmd: u16, encrypted: bool, f: Facts) -> bool {
    if encrypted {
        return true;
    }
    if session_setup_phase(cmd) {
        return false;
    }
    f.session_encrypts || (f.tree_encrypts && cmd != command::TREE_CONNECT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rules_as_a_table() {
        let none = Facts::default();
        let sess = Facts { session_encrypts: true, ..none };
        let sess_req = Facts { session_encrypts: true, session_requires: true, ..none };
        let tree = Facts { tree_encrypts: true, ..none };
        let tree_req = Facts { tree_encrypts: true, tree_requires: true, ..none };
        use command::*;
        // (command, request encrypted, facts, refused, reply sealed)
        let table = [
            (READ, false, none, false, false),
            (READ, true, none, false, true),
            (READ, false, sess, false, true),
            (READ, false, sess_req, true, true),
            (READ, true, sess_req, false, true),
            (READ, false, tree, false, true),
            (READ, false, tree_req, true, true),
            (TREE_CONNECT, false, tree_req, false, false),
            (TREE_CONNECT, false, sess, false, true),
            (TREE_CONNECT, false, sess_req, true, true),
            (SESSION_SETUP, false, sess_req, false, false),
            (SESSION_SETUP, true, sess_req, false, true),
            (NEGOTIATE, false, sess_req, false, false),
            (LOGOFF, false, sess_req, true, true),
            (ECHO, false, tree, false, true),
        ];
        for (cmd, enc, f, refused, sealed) in table {
            assert_eq!(refuse_unencrypted(cmd, enc, f), refused, "refuse {cmd} {enc} {f:?}");
            assert_eq!(seal_reply(cmd, enc, f), sealed, "seal {cmd} {enc} {f:?}");
        }
    }
}
