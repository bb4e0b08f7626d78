//! CREATE that takes back, through this node, a durable or persistent open held through
//! another node (a dead one: its client reconnected to the address this node took over; or a
//! live one that gave the address up). The open is found by its persistent id in
//! [`crate::smb::durable_cluster::ClusterOpens`], checked as any durable reconnect
//! ([`durable::check_reconnect`]), then reclaimed in the lock service
//! ([`crate::locks::LockService::reclaim_open`]) with its share mode, byte-range locks and
//! lease, and rebuilt here under the same persistent id. While its node is alive the reclaim
//! is refused; this node then asks that node to let the open go
//! ([`durable_cluster::ask_release`]) and tries again. The reclaimed open's byte-range locks
//! are then set on the volume again under its new key.

use std::time::Duration;

use super::create_durable::{answer, presented_lease, same_path, Replayed};
use super::open::{FileOpen, Open, OpenKind};
use super::Reply;
use crate::locks::posix_view::WinLock;
use crate::locks::{Conflict, LeaseId, OpenKey, RangeLock};
use crate::smb::conn::Connection;
use crate::smb::durable::{self, Presented, Reconnect};
use crate::smb::durable_cluster::{self, Held};
use crate::smb::leases;
use crate::smb::session::Tree;
use crate::smb::wire::header::Header;
use crate::smb::wire::status::NtStatus;
use crate::vfs::Credentials;

/// How long a reclaim waits while the lock service still counts the open as live on its old
/// node (that node has not yet been dropped from the view: about one license, ~1 s, after it
/// died; more on a loaded machine).
pub const RECLAIM_WAIT: Duration = Duration::from_secs(10);

/// How often it asks again meanwhile.
const RETRY_EVERY: Duration = Duration::from_millis(100);

/// How often it asks a live holder again to let the open go.
const ASK_AGAIN: Duration = Duration::from_secs(1);

/// How long a reclaimed open's lock waits for the volume to let it go: a live node that
/// handed the open over releases its own copy on the volume right after the hand-over.
const VOLUME_WAIT: Duration = Duration::from_secs(3);

/// Sets a reclaimed open's byte-range locks on the volume again, as its POSIX owner (its new
/// key), as a fresh grant does: the bricks dropped them with the dead node's connection (or
/// the node that handed the open over released them), and clients nasgw does not serve must
/// see them again. A range another client of the volume took meanwhile stays in the cluster's
/// table only (nasgw's own clients are still refused it), logged.
async fn restore_volume_locks(
    server: &crate::smb::SmbServer,
    file: crate::vfs::FileId,
    key: OpenKey,
    locks: &[RangeLock],
) {
    let deadline = tokio::time::Instant::now() + VOLUME_WAIT;
    for l in locks {
        let w = WinLock { offset: l.offset, len: l.len, exclusive: l.exclusive };
        while server.volume_locks.lock(file, key, w).await.is_err() {
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    offset = l.offset,
                    len = l.len,
                    "SMB: a reclaimed open's lock is held on the volume by another client; kept in the cluster only"
                );
                break;
            }
            tokio::time::sleep(RETRY_EVERY).await;
        }
    }
}

/// Takes back the durable open `held` for the reconnect `r` (a `DHnC`/`DH2C`, or a replayed
/// `DH2Q`: `how` says which answer it gets).
pub(super) async fn reclaim(
    conn: &mut Connection,
    hdr: &Header,
    req: &super::create::Request,
    tree: &Tree,
    r: Reconnect,
    held: Held,
    how: Replayed,
) -> Result<Reply, NtStatus> {
    let server = conn.server.clone();
    let user = conn.session(hdr.session_id)?.identity.clone().ok_or(NtStatus::USER_SESSION_DELETED)?;
    let facts = held.durability();
    let p = Presented {
        reconnect: r,
        client_guid: conn.client_guid,
        user: &user,
        lease: presented_lease(conn, req),
        same_name: same_path(&req.name, &held.path),
        same_share: tree.root == Some(held.root),
    };
    if let Err(s) = durable::check_reconnect(&facts, &p) {
        tracing::debug!(status = ?s, ?p, "SMB: persistent reconnect refused");
        return Err(s);
    }
    let pid = held.persistent;
    let new = server.open_key();
    let deadline = tokio::time::Instant::now() + RECLAIM_WAIT;
    let mut asked: Option<tokio::time::Instant> = None;
    let entry = loop {
        match server.locks.reclaim_open(&held.file, held.key, new).await {
            Ok(e) => break e,
            // Its old node is still in the view (or this node is not in sync yet): ask it to
            // let the open go (again every second: a broadcast is best effort), and wait.
            Err(c @ (Conflict::Sharing | Conflict::Unavailable)) if tokio::time::Instant::now() < deadline => {
                if c == Conflict::Sharing && asked.is_none_or(|t| t.elapsed() >= ASK_AGAIN) {
                    durable_cluster::ask_release(&server.locks, pid);
                    asked = Some(tokio::time::Instant::now());
                }
                tokio::time::sleep(RETRY_EVERY).await;
            }
            Err(Conflict::NotFound) => {
                // Expired, or closed without this node hearing of it.
                server.cluster_opens.remove(pid);
                return Err(NtStatus::OBJECT_NAME_NOT_FOUND);
            }
            Err(c) => {
                tracing::info!(conflict = %c, file = %crate::logging::untrusted(held.path.last().map_or("", String::as_str)), "SMB: a durable open could not be reclaimed");
                return Err(match c {
                    Conflict::Sharing => NtStatus::OBJECT_NAME_NOT_FOUND,
                    c => c.into(),
                });
            }
        }
    };
    server.cluster_opens.remove(pid);
    restore_volume_locks(&server, held.file, new, &entry.locks).await;
    let lease: Option<LeaseId> = entry.open.lease;
    let vol = conn.opens.reserve();
    if let Some(l) = lease {
        let oplock_fid = leases::is_oplock(&l).then_some((pid, vol));
        server.breaks.hold(l, held.file, oplock_fid, conn.link.notices.clone());
    }
    server.track_path(
        new,
        Some(crate::smb::OpenPath { file: held.file, root: held.root, parent: held.parent, path: held.path.clone() }),
    );
    let file = FileOpen {
        id: held.file,
        parent: held.parent,
        path: held.path.clone(),
        is_dir: false,
        access: entry.open.access,
        key: new,
        lease,
        cred: Credentials::new(tree.uid, tree.gid),
        root: held.root,
        position: 0,
        write_through: facts.persistent,
        wrote: false,
        listing: None,
        state: Default::default(),
    };
    tracing::info!(
        file = %crate::logging::untrusted(file.name()),
        from_node = held.key.node,
        locks = entry.locks.len(),
        persistent = facts.persistent,
        "SMB: durable open reclaimed from another node"
    );
    let reply = answer(&server, req, &file, (pid, vol), Some(&facts), how).await;
    server.durable.attach(pid, facts, conn.link.notices.clone(), vol);
    server.cluster_opens.hold(&server.locks, Held { key: new, lease, ..held });
    conn.opens.insert_at(
        vol,
        Open {
            volatile: vol,
            persistent: pid,
            session_id: hdr.session_id,
            tree_id: tree.id,
            channel_sequence: hdr.status as u16,
            kind: OpenKind::File(Box::new(file)),
        },
    );
    let reply = reply?;
    conn.compound_fid = Some((pid, vol));
    Ok(reply)
}
