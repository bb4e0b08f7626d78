//! What the rest of nasgw learns from the SMB engine, gathered in one call per request
//! ([`account`], from `cmd::dispatch`): the request's metrics (command, latency, status, bytes)
//! and, after commands that change sessions, trees or opens, the connection's users and open
//! files for `nasgw connections`.

use std::time::Instant;

use super::auth::Identity;
use super::cmd::open::OpenKind;
use super::conn::{Connection, Outcome};
use super::session::TreeKind;
use super::wire::header::{command, Header};
use crate::metrics::SMB;

/// Counts one request and refreshes the connection's facts when they may have changed.
pub fn account(conn: &Connection, hdr: &Header, msg: &[u8], out: &Outcome, started: Instant) {
    let status = match out {
        Outcome::Now(r) => r.status.0,
        // The final answer comes later; the interim STATUS_PENDING is not an error.
        Outcome::Later(_) => 0,
    };
    SMB.request(usize::from(hdr.command), started, status);
    if status != 0 {
        return;
    }
    match hdr.command {
        command::READ => {
            if let Outcome::Now(r) = out {
                SMB.read(r.tail.len());
            }
        }
        // WRITE request: Length is the u32 at body offset 4.
        command::WRITE => {
            if let Some(b) = msg.get(68..72) {
                SMB.written(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
            }
        }
        command::SESSION_SETUP
        | command::LOGOFF
        | command::TREE_CONNECT
        | command::TREE_DISCONNECT
        | command::CREATE
        | command::CLOSE => refresh(conn),
        _ => {}
    }
}

/// Rewrites the connection's entry in the client registry from its sessions and opens.
pub fn refresh(conn: &Connection) {
    let mut users: Vec<String> = conn
        .sessions
        .values()
        .filter_map(|s| s.identity.as_ref())
        .map(|i| match i {
            Identity::Anonymous => "anonymous".to_string(),
            Identity::Guest => "guest".to_string(),
            Identity::User(n) => n.clone(),
        })
        .collect();
    users.sort();
    users.dedup();
    let mut files: Vec<String> = conn
        .opens
        .iter()
        .filter_map(|o| {
            let OpenKind::File(f) = &o.kind else { return None };
            let share = conn.sessions.get(&o.session_id)?.trees.get(&o.tree_id).and_then(|t| match &t.kind {
                TreeKind::Disk(s) => Some(s.name.clone()),
                TreeKind::Ipc => None,
            })?;
            Some(format!("{share}/{}", f.path.join("/")))
        })
        .collect();
    files.sort();
    let sessions = conn.sessions.len();
    crate::clients::CLIENTS.update(&conn.tcp, |c| {
        c.users = users;
        c.sessions = sessions;
        c.files = files;
    });
}
