//! CREATE that takes back a durable open ([`crate::smb::durable`]): a `DHnC`/`DH2C`
//! reconnect, or a `DH2Q` replayed with the replay flag (MS-SMB2 3.3.5.9.7, 3.3.5.9.10,
//! 3.3.5.9.12). The open keeps its lock-service key, so its share mode, byte-range locks and
//! lease are what they were; only its connection, session, tree and volatile id change.

use super::create::{basics, response, response_contexts, Request, FILE_OPENED};
use super::open::{FileOpen, OpenKind};
use super::Reply;
use crate::locks::{caching, LeaseId};
use crate::smb::conn::Connection;
use crate::smb::durable::{self, Durability, Presented, Reconnect};
use crate::smb::fs;
use crate::smb::leases;
use crate::smb::session::Tree;
use crate::smb::signing::dialect;
use crate::smb::wire::header::Header;
use crate::smb::wire::status::NtStatus;

/// How long a reconnect waits for the open's old connection to end (see
/// [`crate::smb::durable::DurableTable::settle`]).
const SETTLE: std::time::Duration = std::time::Duration::from_secs(2);

/// The lease key and version a request's `RqLs` context presents, as the lock service would
/// take them on this dialect. A reconnect's requested oplock level is ignored (smbd checks the
/// context alone).
pub(super) fn presented_lease(conn: &Connection, req: &Request) -> Option<([u8; 16], u8)> {
    if conn.dialect < dialect::SMB210 {
        return None;
    }
    let l = super::create::find_context(&req.contexts, b"RqLs").and_then(|d| leases::parse_lease(d).ok())?;
    Some((l.key, if conn.dialect >= dialect::SMB300 { l.version } else { 1 }))
}

/// Whether `name` (a request's share-relative name) names the open's file.
pub(super) fn same_name(name: &str, f: &FileOpen) -> bool {
    same_path(name, &f.path)
}

/// Whether `name` (a request's share-relative name) names the file at `path`.
pub(super) fn same_path(name: &str, path: &[String]) -> bool {
    match fs::parse_name(name) {
        Ok((comps, None)) => {
            comps.len() == path.len() && comps.iter().zip(path).all(|(a, b)| a.eq_ignore_ascii_case(b))
        }
        _ => false,
    }
}

/// `DHnC` / `DH2C`: the open named must be durable, detached, and pass
/// [`durable::check_reconnect`]; anything else is OBJECT_NAME_NOT_FOUND.
pub async fn reconnect(
    conn: &mut Connection,
    hdr: &Header,
    req: &Request,
    tree: &Tree,
    r: Reconnect,
) -> Result<Reply, NtStatus> {
    let user = conn.session(hdr.session_id)?.identity.clone().ok_or(NtStatus::USER_SESSION_DELETED)?;
    let lease = presented_lease(conn, req);
    let client_guid = conn.client_guid;
    let server = conn.server.clone();
    if server.durable.facts(r.persistent_id()).is_none() {
        if let Some(held) = server.cluster_opens.get(r.persistent_id()) {
            return super::create_persistent::reclaim(conn, hdr, req, tree, r, held, Replayed::Reconnect).await;
        }
    }
    server.durable.settle(r.persistent_id(), &conn.link.notices, SETTLE).await;
    let taken = server
        .durable
        .take(r.persistent_id(), |d, f| {
            let p = Presented {
                reconnect: r,
                client_guid,
                user: &user,
                lease,
                same_name: same_name(&req.name, f),
                same_share: tree.root == Some(f.root),
            };
            let r = durable::check_reconnect(d, &p);
            if let Err(s) = r {
                tracing::debug!(status = ?s, ?p, "SMB: durable reconnect refused");
            }
            r
        })
        .inspect_err(|s| tracing::debug!(status = ?s, "SMB: durable reconnect failed"))?;
    // A reconnect's response carries no DH2Q context (smbd 4.17; smbtorture checks it).
    reattach(conn, hdr, req, tree, taken, false).await
}

/// A replayed CREATE the node's replay cache matched with open `persistent`, made with
/// `action`: that open is answered again, not made twice. `None`: it is not on this connection
/// (a durable one is then taken back by [`replay`]).
pub async fn again(
    conn: &mut Connection,
    hdr: &Header,
    req: &Request,
    persistent: u64,
    action: u32,
) -> Result<Option<Reply>, NtStatus> {
    let Some(vol) = conn.opens.iter().find(|o| o.persistent == persistent).map(|o| o.volatile) else {
        return Ok(None);
    };
    let server = conn.server.clone();
    let facts = server.durable.facts(persistent).map(|(f, _)| f);
    if let Some(facts) = &facts {
        let user = conn.session(hdr.session_id)?.identity.clone().ok_or(NtStatus::USER_SESSION_DELETED)?;
        if facts.user != user {
            return Err(NtStatus::ACCESS_DENIED);
        }
        replay_matches(facts, req, conn.dialect)?;
    }
    let open = conn.opens.get_mut(vol, hdr.session_id, hdr.tree_id)?;
    let f = open.file()?;
    let reply = answer(&server, req, f, (persistent, vol), facts.as_ref(), Replayed::Again(action)).await?;
    conn.compound_fid = Some((persistent, vol));
    Ok(Some(reply))
}

/// A `DH2Q` with the replay flag the replay cache did not match: a durable open with its
/// CreateGuid whose connection was lost is taken back instead of a second one being made.
/// `None`: there is none (the CREATE runs as new).
pub async fn replay(
    conn: &mut Connection,
    hdr: &Header,
    req: &Request,
    tree: &Tree,
    create_guid: [u8; 16],
) -> Result<Option<Reply>, NtStatus> {
    let server = conn.server.clone();
    let Some((pid, here)) = server.durable.by_create_guid(conn.client_guid, create_guid, &conn.link.notices) else {
        return replay_from_cluster(conn, hdr, req, tree, create_guid).await;
    };
    if here.is_some() {
        // Attached to this connection but not in the replay cache: the client used the open
        // since, so this is a new CREATE.
        return Ok(None);
    }
    let user = conn.session(hdr.session_id)?.identity.clone().ok_or(NtStatus::USER_SESSION_DELETED)?;
    let client_guid = conn.client_guid;
    let lease = presented_lease(conn, req);
    server.durable.settle(pid, &conn.link.notices, SETTLE).await;
    let dialect = conn.dialect;
    let taken = server.durable.take(pid, |d, f| {
        let p = Presented {
            reconnect: Reconnect::V2 { fid: (pid, 0), create_guid, persistent: d.persistent },
            client_guid,
            user: &user,
            lease,
            same_name: same_name(&req.name, f),
            same_share: tree.root == Some(f.root),
        };
        replay_matches(d, req, dialect)?;
        durable::check_reconnect(d, &p)
    });
    match taken {
        Ok(t) => {
            let action = t.facts.action;
            let reply = reattach(conn, hdr, req, tree, t, true).await?;
            server.replay_cache.begin(client_guid, create_guid).done(pid, action);
            Ok(Some(reply))
        }
        Err(NtStatus::ACCESS_DENIED) => Err(NtStatus::ACCESS_DENIED),
        Err(_) => Ok(None),
    }
}

/// A replayed `DH2Q` whose open is held through another node (its client reconnected here
/// after that node died or gave the address up, and sends the CREATE it never got an answer
/// to again): the open is reclaimed here, as a `DH2C` would, and answered as the original.
/// `None`: the cluster knows no such open, or it cannot be reclaimed (the CREATE runs as new).
async fn replay_from_cluster(
    conn: &mut Connection,
    hdr: &Header,
    req: &Request,
    tree: &Tree,
    create_guid: [u8; 16],
) -> Result<Option<Reply>, NtStatus> {
    let server = conn.server.clone();
    if !server.clustered {
        return Ok(None);
    }
    let Some(held) = server.cluster_opens.by_create_guid(conn.client_guid, create_guid) else { return Ok(None) };
    replay_matches(&held.durability(), req, conn.dialect)?;
    let (pid, action) = (held.persistent, held.action);
    let r = Reconnect::V2 { fid: (pid, 0), create_guid, persistent: held.is_persistent };
    match super::create_persistent::reclaim(conn, hdr, req, tree, r, held, Replayed::Again(action)).await {
        Ok(reply) => {
            // Replayed once more before the client uses it, it is answered again.
            server.replay_cache.begin(conn.client_guid, create_guid).done(pid, action);
            Ok(Some(reply))
        }
        Err(NtStatus::ACCESS_DENIED) => Err(NtStatus::ACCESS_DENIED),
        Err(s) => {
            tracing::debug!(status = ?s, "SMB: a replayed CREATE's open could not be reclaimed; it runs as new");
            Ok(None)
        }
    }
}

/// Puts a taken-back open into this connection's table under a new volatile id, points its
/// lease's breaks here, and answers the CREATE.
async fn reattach(
    conn: &mut Connection,
    hdr: &Header,
    req: &Request,
    tree: &Tree,
    taken: durable::Taken,
    with_dh2q: bool,
) -> Result<Reply, NtStatus> {
    let durable::Taken { open, facts, lock_sequences } = taken;
    let mut open = *open;
    let server = conn.server.clone();
    let vol = conn.opens.reserve();
    let pid = open.persistent;
    open.volatile = vol;
    open.session_id = hdr.session_id;
    open.channel_sequence = hdr.status as u16;
    open.tree_id = tree.id;
    let OpenKind::File(f) = &open.kind else { return Err(NtStatus::INTERNAL_ERROR) };
    if let Some(l) = &f.lease {
        server.breaks.redirect(l, conn.link.notices.clone(), Some((pid, vol)));
    }
    tracing::info!(file = %crate::logging::untrusted(f.name()), "SMB: durable open reconnected");
    let how = if with_dh2q { Replayed::Again(facts.action) } else { Replayed::Reconnect };
    let reply = answer(&server, req, f, (pid, vol), Some(&facts), how).await;
    server.durable.attach_with(pid, facts, conn.link.notices.clone(), vol, lock_sequences);
    conn.opens.insert_at(vol, open);
    let reply = reply?;
    conn.compound_fid = Some((pid, vol));
    Ok(reply)
}

/// Why an existing open is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Replayed {
    /// A DHnC/DH2C reconnect: FILE_OPENED, no DH2Q context.
    Reconnect,
    /// A replayed CREATE: the original CreateAction, and the oplock and DH2Q context as the
    /// replayed request asks (smbd's replay cache: a replay asking for no oplock gets none).
    Again(u32),
}

/// A replayed CREATE must ask for the same kind of caching as the open has: a lease for a
/// lease (with its key), an oplock for an oplock; anything else is ACCESS_DENIED (smbd).
fn replay_matches(facts: &Durability, req: &Request, dialect: u16) -> Result<(), NtStatus> {
    let asks_lease = req.oplock == leases::level::LEASE && dialect >= dialect::SMB210;
    let key =
        super::create::find_context(&req.contexts, b"RqLs").and_then(|d| leases::parse_lease(d).ok()).map(|l| l.key);
    match (facts.lease_key, asks_lease) {
        (Some(k), true) if key == Some(k) => Ok(()),
        (None, false) => Ok(()),
        _ => Err(NtStatus::ACCESS_DENIED),
    }
}

/// The CREATE response for an existing open `f` at FileId `fid`: its attributes now, the
/// caching it holds now, and for a replay the original CreateAction and the `DH2Q` response.
pub(super) async fn answer(
    server: &crate::smb::SmbServer,
    req: &Request,
    f: &FileOpen,
    fid: (u64, u64),
    facts: Option<&Durability>,
    how: Replayed,
) -> Result<Reply, NtStatus> {
    let file = fs::file_of(f);
    let attr = server.ns.getattr(file).await?;
    let dos = fs::dos_of(&server.ns, &f.cred, file).await;
    let mut b = basics(&attr, &dos, f.name());
    b.allocation = b.allocation.max(f.state.initial_allocation);
    let record = server.locks.record(&f.id).await.ok();
    let held = |id: &LeaseId| record.as_ref().and_then(|r| r.lease(id).map(|l| (l.state, l.epoch, l.told.is_some())));
    let (oplock, lease_ctx) = match (&f.lease, super::create::find_context(&req.contexts, b"RqLs")) {
        (Some(l), Some(d)) if !leases::is_oplock(l) => {
            // A reconnect's RqLs matched the open's lease key: answer in the open's terms.
            let (state, epoch, breaking) = held(l).unwrap_or((0, 0, false));
            let r = leases::parse_lease(d).map_err(|_| NtStatus::INVALID_PARAMETER)?;
            (leases::level::LEASE, Some(leases::lease_response(&r, state, epoch, breaking)))
        }
        (Some(l), _) if leases::is_oplock(l) => {
            let held = leases::state_level(held(l).map_or(0, |(s, _, _)| s));
            match how {
                Replayed::Again(_) => (held.min(req.oplock), None),
                Replayed::Reconnect => (held, None),
            }
        }
        _ => (leases::level::NONE, None),
    };
    let (action, dh) = match how {
        Replayed::Reconnect => (FILE_OPENED, None),
        // The DH2Q answer only where the replayed request could have been granted it.
        Replayed::Again(action) => {
            let state = match oplock {
                leases::level::LEASE => caching::H,
                o => leases::oplock_state(o),
            };
            let dh = facts.filter(|_| durable::grant(durable::Ask::V1, state, f.is_dir, false).is_some());
            (action, dh.map(durable::response))
        }
    };
    let contexts = response_contexts(&req.contexts, f.access, &attr, lease_ctx, dh);
    Ok(Reply::ok(response(action, &b, fid, &contexts, oplock)))
}
