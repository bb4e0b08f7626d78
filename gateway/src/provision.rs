//! Share folders that work on a fresh volume: when one identity writes into a writable share
//! (its `force_user`, or the guest of a guest-only share), nasgw creates the share's folder
//! owned by that identity, and hands a *fresh* volume root (owned by root, holding nothing but
//! nasgw's own entries) to it. So the seed recipe's `force user = smbcli` share and the
//! embedded default's guest share work without an admin's `chown`, which an admin cannot even
//! do on a volume nasgw mounts privately. A folder that already holds data is never touched:
//! its guests' access is only checked (`nasgw check`, and a warning when serving starts).
//!
//! The decisions ([`writer`], [`is_fresh_root`], [`guest_write_problem`]) are pure; the
//! functions that touch the volume go through the [`Namespace`], so the local, FUSE and gfapi
//! backends behave alike.

use crate::accounts::{self, UnixUser};
use crate::config::{Config, ShareConfig};
use crate::vfs::access::{self, EXTEND, LOOKUP, MODIFY};
use crate::vfs::{Attr, Credentials, FileType, Namespace, VfsError};

/// Mode of a folder nasgw creates for a share: its writer may write, everybody may read.
const FOLDER_MODE: u32 = 0o755;

/// The one identity that writes into `share`'s folder, if there is one: `force_user` (with
/// `force_group`), else the guest for a guest-only share. `Ok(None)` for read-only shares and
/// shares whose users each write as themselves. An unknown `force_user`/`force_group` is an error.
pub fn writer(share: &ShareConfig) -> Result<Option<UnixUser>, String> {
    if !share.writable {
        return Ok(None);
    }
    let group = match share.force_group.as_deref() {
        Some(g) => Some(accounts::group(g).ok_or_else(|| format!("force_group `{g}` is not a group on this node"))?),
        None => None,
    };
    let user = match share.force_user.as_deref() {
        Some(u) => accounts::user(u).ok_or_else(|| format!("force_user `{u}` is not a user on this node"))?,
        None if share.guest_only => UnixUser { uid: accounts::GUEST.0, gid: accounts::GUEST.1 },
        None => return Ok(None),
    };
    Ok(Some(UnixUser { uid: user.uid, gid: group.unwrap_or(user.gid) }))
}

/// The identity a guest of `share` writes as when nasgw runs privileged: the forced user (and
/// group), else the guest identity.
pub fn guest_identity(share: &ShareConfig) -> Result<UnixUser, String> {
    let mut id = match share.force_user.as_deref() {
        Some(u) => accounts::user(u).ok_or_else(|| format!("force_user `{u}` is not a user on this node"))?,
        None => UnixUser { uid: accounts::GUEST.0, gid: accounts::GUEST.1 },
    };
    if let Some(g) = share.force_group.as_deref() {
        id.gid = accounts::group(g).ok_or_else(|| format!("force_group `{g}` is not a group on this node"))?;
    }
    Ok(id)
}

/// A volume root nobody has used yet: owned by root and holding nothing but `reserved` entries
/// (nasgw's own `.nasgw`, the recovery lock's folder). Only such a root is handed to a share's
/// writer; anything else is the admin's.
pub fn is_fresh_root(attr: &Attr, names: &[Vec<u8>], reserved: &[String]) -> bool {
    attr.ftype == FileType::Directory
        && attr.uid == 0
        && attr.gid == 0
        && names.iter().all(|n| n == b"." || n == b".." || reserved.iter().any(|r| r.as_bytes() == n.as_slice()))
}

/// Why the guests of a writable guest share could not create files in its folder (`folder`),
/// or `None` when they can. `as_whom` is the identity file access runs as: the share's guest
/// identity when nasgw runs as root, else nasgw's own user (it cannot switch identities).
pub fn guest_write_problem(share: &ShareConfig, folder: &Attr, as_whom: UnixUser) -> Option<String> {
    if !share.writable || !share.guest_ok {
        return None;
    }
    let cred = Credentials::new(as_whom.uid, as_whom.gid);
    let wanted = MODIFY | EXTEND | LOOKUP;
    if access::granted(folder, &cred, wanted) == wanted {
        return None;
    }
    let who = accounts::user_name(as_whom.uid).unwrap_or_else(|| as_whom.uid.to_string());
    Some(format!(
        "share `{}`: its guests write as {who} ({}:{}), who cannot create files in its folder `{}` (owner {}:{}, mode {:04o})",
        share.name, as_whom.uid, as_whom.gid, share.path, folder.uid, folder.gid, folder.mode
    ))
}

/// The identity a guest's file access runs as in this process.
pub fn effective_guest(share: &ShareConfig) -> Result<UnixUser, String> {
    if accounts::privileged() {
        guest_identity(share)
    } else {
        // SAFETY: getuid/getgid have no preconditions.
        Ok(UnixUser { uid: unsafe { libc::geteuid() }, gid: unsafe { libc::getegid() } })
    }
}

/// nasgw's own entries at the volume root, which do not make a root "used".
fn reserved_names(cfg: &Config) -> Vec<String> {
    let mut r = vec![".nasgw".to_string()];
    if let Some(c) = &cfg.cluster {
        if let Some(first) = c.recovery_lock.trim_start_matches('/').split('/').next() {
            r.push(first.to_string());
        }
    }
    r
}

/// Every name in directory `dir` (a small root: a fresh one has a handful).
async fn names_in(ns: &Namespace, dir: crate::vfs::FileId) -> Result<Vec<Vec<u8>>, VfsError> {
    let mut names = Vec::new();
    let mut cookie = 0;
    loop {
        let page = ns.readdir(&Credentials::root(), dir, cookie, 256, false).await?;
        for e in &page.entries {
            names.push(e.name.clone());
            cookie = e.cookie;
        }
        if page.eof || page.entries.is_empty() || names.len() > 4096 {
            return Ok(names);
        }
    }
}

/// Creates missing share folders for their writers and hands a fresh volume root to the one
/// identity that writes into it; then warns about guest shares whose guests cannot write.
/// Returns one line per change made or problem seen (each is also logged).
pub async fn share_folders(cfg: &Config, ns: &Namespace) -> Vec<String> {
    let mut report = Vec::new();
    let privileged = accounts::privileged();
    let root_cred = Credentials::root();
    // Writers of writable shares at the volume root: the root is handed over only if they agree.
    let mut root_writers: Vec<UnixUser> = Vec::new();
    for share in &cfg.smb.shares {
        let who = match writer(share) {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(share = %share.name, "{e}; its tree connects are refused");
                report.push(format!("share `{}`: {e}", share.name));
                continue;
            }
        };
        if share.path == "/" {
            if let Some(w) = who {
                root_writers.push(w);
            }
            continue;
        }
        match ensure_folder(ns, &share.path, who.filter(|_| privileged)).await {
            Ok(Some(line)) => {
                tracing::info!(share = %share.name, "{line}");
                report.push(line);
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(share = %share.name, path = %share.path, error = %e, "cannot prepare the share folder");
                report.push(format!("share `{}`: cannot prepare folder {}: {e}", share.name, share.path));
            }
        }
    }
    root_writers.dedup();
    if privileged && root_writers.len() == 1 {
        let w = root_writers[0];
        if let Ok(attr) = ns.getattr(ns.root()).await {
            let names = names_in(ns, ns.root()).await.unwrap_or_default();
            if is_fresh_root(&attr, &names, &reserved_names(cfg)) {
                let set = crate::vfs::SetAttr { uid: Some(w.uid), gid: Some(w.gid), ..Default::default() };
                match ns.setattr(&root_cred, ns.root(), set).await {
                    Ok(_) => {
                        let line = format!("volume root handed to its share writer {}:{} (it was fresh)", w.uid, w.gid);
                        tracing::info!("{line}");
                        report.push(line);
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot hand the fresh volume root to its share writer"),
                }
            }
        }
    } else if root_writers.len() > 1 {
        tracing::warn!(
            "several writable shares at the volume root force different identities; its owner is left alone"
        );
    }
    for share in &cfg.smb.shares {
        if let Some(p) = check_guest_write(ns, share).await {
            tracing::warn!("{p}");
            report.push(p);
        }
    }
    report
}

/// Whether `share`'s guests can write its folder, read through the namespace.
pub async fn check_guest_write(ns: &Namespace, share: &ShareConfig) -> Option<String> {
    if !share.writable || !share.guest_ok {
        return None;
    }
    let as_whom = effective_guest(share).ok()?;
    match ns.walk(&Credentials::root(), ns.root(), share.path.as_bytes(), true).await {
        Ok((_, attr)) => guest_write_problem(share, &attr, as_whom),
        Err(e) => Some(format!("share `{}`: its folder `{}` cannot be reached: {e}", share.name, share.path)),
    }
}

/// Creates the missing components of `path` (mode 0755, as root), the last one owned by
/// `owner` when given. `Ok(Some(what))` when something was created.
async fn ensure_folder(ns: &Namespace, path: &str, owner: Option<UnixUser>) -> Result<Option<String>, VfsError> {
    let cred = Credentials::root();
    let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let mut dir = ns.root();
    let mut created = false;
    for (i, comp) in comps.iter().enumerate() {
        let last = i + 1 == comps.len();
        dir = match ns.lookup(&cred, dir, comp.as_bytes()).await {
            Ok((id, a)) if a.ftype == FileType::Directory => id,
            Ok(_) => return Err(VfsError::NotDir),
            Err(VfsError::NotFound) => {
                let (id, _) = match ns.mkdir(&cred, dir, comp.as_bytes(), FOLDER_MODE).await {
                    Ok(made) => made,
                    // Another node made it at the same moment.
                    Err(VfsError::Exists) => ns.lookup(&cred, dir, comp.as_bytes()).await?,
                    Err(e) => return Err(e),
                };
                created = true;
                if last {
                    if let Some(w) = owner {
                        let set = crate::vfs::SetAttr { uid: Some(w.uid), gid: Some(w.gid), ..Default::default() };
                        ns.setattr(&cred, id, set).await?;
                    }
                }
                id
            }
            Err(e) => return Err(e),
        };
    }
    Ok(created.then(|| match owner {
        Some(w) => format!("created share folder {path} owned by {}:{}", w.uid, w.gid),
        None => format!("created share folder {path}"),
    }))
}

/// What `nasgw check` adds to a valid config's verdict about this node: a `force_user` or
/// `force_group` that does not exist here (its tree connects are refused), and, for a local
/// volume, a share folder its guests cannot write that `nasgw serve` would not fix (a folder
/// that is missing is created for its writer, a fresh volume root handed to it). A GlusterFS
/// volume is mounted privately by the daemon, which checks its share folders when it starts.
pub fn host_warnings(cfg: &Config) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    for (i, share) in cfg.smb.shares.iter().enumerate() {
        if let Some(u) = share.force_user.as_deref().filter(|u| accounts::user(u).is_none()) {
            out.push(format!(
                "smb.share[{i}].force_user: `{u}` is not a user on this node, so tree connects to `{}` are refused\n  hint: create it on every node (e.g. `useradd --system --no-create-home {u}`)",
                share.name
            ));
        }
        if let Some(g) = share.force_group.as_deref().filter(|g| accounts::group(g).is_none()) {
            out.push(format!(
                "smb.share[{i}].force_group: `{g}` is not a group on this node, so tree connects to `{}` are refused\n  hint: create it on every node (e.g. `groupadd --system {g}`)",
                share.name
            ));
        }
    }
    let Some(root) = cfg.volume.path.as_ref() else { return out };
    let root_writers: Vec<UnixUser> = {
        let mut w: Vec<UnixUser> =
            cfg.smb.shares.iter().filter(|s| s.path == "/").filter_map(|s| writer(s).ok().flatten()).collect();
        w.dedup();
        w
    };
    for (i, share) in cfg.smb.shares.iter().enumerate() {
        let folder = root.join(share.path.trim_start_matches('/'));
        let Ok(meta) = std::fs::metadata(&folder) else { continue }; // created by serve
        let ftype = if meta.is_dir() { FileType::Directory } else { FileType::Regular };
        let attr = Attr::with_owner(ftype, meta.mode() & 0o7777, meta.uid(), meta.gid());
        if share.path == "/" && accounts::privileged() && root_writers.len() == 1 {
            let names: Vec<Vec<u8>> = std::fs::read_dir(&folder)
                .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().into_encoded_bytes()).collect())
                .unwrap_or_else(|_| vec![b"?".to_vec()]);
            if is_fresh_root(&attr, &names, &reserved_names(cfg)) {
                continue; // handed to its writer at start
            }
        }
        let Ok(as_whom) = effective_guest(share) else { continue };
        if let Some(p) = guest_write_problem(share, &attr, as_whom) {
            out.push(format!(
                "smb.share[{i}]: {p}\n  hint: `chown {}:{} {}` (or set force_user to the folder's owner)",
                as_whom.uid,
                as_whom.gid,
                folder.display()
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(uid: u32, gid: u32, mode: u32) -> Attr {
        Attr::with_owner(FileType::Directory, mode, uid, gid)
    }

    fn share(text: &str) -> ShareConfig {
        toml::from_str(&format!("name = \"pub\"\n{text}")).unwrap()
    }

    #[test]
    fn the_writer_is_the_forced_user_or_the_guest_of_a_guest_only_share() {
        let root = UnixUser { uid: 0, gid: 0 };
        assert_eq!(writer(&share("writable = true\nforce_user = \"root\"")), Ok(Some(root)));
        assert_eq!(
            writer(&share("writable = true\nforce_user = \"0\"\nforce_group = \"7\"")),
            Ok(Some(UnixUser { uid: 0, gid: 7 }))
        );
        let guest = UnixUser { uid: accounts::GUEST.0, gid: accounts::GUEST.1 };
        assert_eq!(writer(&share("writable = true\nguest_ok = true\nguest_only = true")), Ok(Some(guest)));
        assert_eq!(writer(&share("writable = true\nguest_ok = true")), Ok(None), "users write as themselves");
        assert_eq!(writer(&share("force_user = \"root\"")), Ok(None), "read-only share");
        assert!(writer(&share("writable = true\nforce_user = \"no-such-user-nasgw\""))
            .unwrap_err()
            .contains("force_user"));
        assert!(writer(&share("writable = true\nforce_user = \"root\"\nforce_group = \"no-such-group-nasgw\""))
            .unwrap_err()
            .contains("force_group"));
    }

    #[test]
    fn only_an_unused_root_owned_root_is_fresh() {
        let reserved = vec![".nasgw".to_string(), "lock".to_string()];
        let names = |n: &[&str]| n.iter().map(|s| s.as_bytes().to_vec()).collect::<Vec<_>>();
        assert!(is_fresh_root(&dir(0, 0, 0o755), &names(&[".", "..", ".nasgw", "lock"]), &reserved));
        assert!(is_fresh_root(&dir(0, 0, 0o755), &[], &reserved));
        assert!(!is_fresh_root(&dir(0, 0, 0o755), &names(&[".nasgw", "data.txt"]), &reserved), "holds data");
        assert!(!is_fresh_root(&dir(1000, 0, 0o755), &[], &reserved), "someone owns it");
        assert!(!is_fresh_root(&dir(0, 100, 0o775), &[], &reserved), "a group was given");
    }

    #[test]
    fn guests_that_cannot_write_are_reported() {
        let s = share("writable = true\nguest_ok = true\nguest_only = true");
        let guest = UnixUser { uid: 65534, gid: 65534 };
        let p = guest_write_problem(&s, &dir(0, 0, 0o755), guest).expect("root 0755 is not writable by nobody");
        assert!(p.contains("pub") && p.contains("0755"), "{p}");
        assert_eq!(guest_write_problem(&s, &dir(65534, 65534, 0o755), guest), None);
        assert_eq!(guest_write_problem(&s, &dir(0, 0, 0o1777), guest), None);
        assert_eq!(guest_write_problem(&s, &dir(0, 65534, 0o775), guest), None, "group-writable");
        let ro = share("guest_ok = true");
        assert_eq!(guest_write_problem(&ro, &dir(0, 0, 0o755), guest), None, "read-only shares are not checked");
    }
}
