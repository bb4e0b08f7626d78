//! Where an open's file is now. An open knows the directory and share-relative path it was
//! opened by, and this node moves its opens through that name when it renames it
//! ([`super::SmbServer::moved`]), but a rename through another node, another share, NFS or the
//! node's own mount reaches it only through the file's record in the cluster's lock table
//! ([`crate::locks::FileName`]), which every node holding the file has before such a rename is
//! answered. Whatever acts on the open's name (a rename by handle, a name query, a
//! delete-on-close) asks here first, as smbd's opens follow the share-mode record's base name.
//!
//! The record carries one name per file, and a file with hard links has several: the record's
//! may be another link's. So the rule ([`pick`]): the name the open knows wins while a lookup
//! of it still finds the open's file; only when it does not (renamed away through another node
//! or protocol) does the open follow the record's name, and only if that one finds the file.
//! A name that finds another file is never acted on.

use crate::locks::FileName;
use crate::vfs::FileId;

/// The open's directory and share-relative path once `name` (the record's) is applied to what
/// it knew (`parent`, `path`, through the share whose root is `root`). A rename through the
/// same share gives the whole new path; one through another share or protocol gives the new
/// directory and last component (the components above stay as they were: only shown, never
/// acted on, since actions go by the directory's identity). Unchanged when `name` is unusable.
pub fn apply(name: &FileName, root: FileId, parent: FileId, path: &[String]) -> (FileId, Vec<String>) {
    let Some(dir) = FileId::new(&name.parent) else { return (parent, path.to_vec()) };
    let Ok(last) = String::from_utf8(name.name.clone()) else { return (parent, path.to_vec()) };
    if name.root == root.as_bytes() && name.path.last() == Some(&last) {
        return (dir, name.path.clone());
    }
    let mut p = path.to_vec();
    match p.last_mut() {
        Some(l) => *l = last,
        // The share root itself has no name to change.
        None => return (parent, p),
    }
    (dir, p)
}

/// The record's name for a rename of a file to `path` in directory `parent` through the share
/// whose root is `root`.
pub fn of_rename(root: FileId, parent: FileId, path: &[String]) -> Option<FileName> {
    let last = path.last()?;
    Some(FileName {
        parent: parent.as_bytes().to_vec(),
        name: last.as_bytes().to_vec(),
        root: root.as_bytes().to_vec(),
        path: path.to_vec(),
        renames: 0,
    })
}

/// What a lookup of a candidate name found, for an open of some file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// The open's file.
    ThisFile,
    /// A symbolic link (the open may have come through it: its own name may be one).
    Symlink,
    /// Another file, or nothing.
    Elsewhere,
}

/// Which of the candidate names an open acts on, given what a lookup of each found: the open's
/// own names come first (the one this node keeps current, then the one the open holds), the
/// record's last. The first that finds the open's file wins; failing that, an own name that is
/// a symlink (the open came through it, and it is what a delete removes, as before); `None`
/// when no name is the open's file's: nothing may be done to any of them.
pub fn pick(found: &[(Found, bool)]) -> Option<usize> {
    found
        .iter()
        .position(|(f, _)| *f == Found::ThisFile)
        .or_else(|| found.iter().position(|(f, own)| *own && *f == Found::Symlink))
}

/// A name an open acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// The directory holding it.
    pub parent: FileId,
    /// The share-relative path (only its last component is acted on).
    pub path: Vec<String>,
    /// What the name is on the volume: the open's file, or the symlink the open came through.
    pub found: FileId,
}

/// The name an open of file `id` through the share whose root is `root` acts on, among its own
/// (`own`, newest first) and the record's (`record`), by [`pick`], each looked up once as
/// `cred`; `None` when none of them is the file's.
pub async fn locate(
    ns: &crate::vfs::Namespace,
    cred: &crate::vfs::Credentials,
    (id, root): (FileId, FileId),
    own: &[(FileId, Vec<String>)],
    record: Option<&FileName>,
) -> Option<Located> {
    let mut names: Vec<(FileId, Vec<String>, bool)> = Vec::new();
    for (parent, path) in own {
        if !names.iter().any(|(p, q, _)| p == parent && q == path) {
            names.push((*parent, path.clone(), true));
        }
    }
    if let (Some(n), Some((parent, path))) = (record, own.first()) {
        let (p, q) = apply(n, root, *parent, path);
        if !names.iter().any(|(a, b, _)| *a == p && *b == q) {
            names.push((p, q, false));
        }
    }
    let mut found = Vec::with_capacity(names.len());
    let mut ids = Vec::with_capacity(names.len());
    for (parent, path, own) in &names {
        let (what, id) = match path.last() {
            // The share root: its name never changes.
            None => (Found::ThisFile, id),
            Some(last) => match ns.lookup(cred, *parent, last.as_bytes()).await {
                Ok((now, _)) if now == id => (Found::ThisFile, now),
                Ok((now, a)) if a.ftype == crate::vfs::FileType::Symlink => (Found::Symlink, now),
                Ok((now, _)) => (Found::Elsewhere, now),
                Err(_) => (Found::Elsewhere, id),
            },
        };
        found.push((what, *own));
        ids.push(id);
    }
    let i = pick(&found)?;
    let (parent, path, _) = names.swap_remove(i);
    Some(Located { parent, path, found: ids[i] })
}

/// Brings open `f` up to its file's current name, if this node knows a newer one that is the
/// file's while the open's own name no longer is (see the module doc). Looks names up only
/// when the record's name differs from the open's.
pub async fn refresh(server: &super::SmbServer, f: &mut super::cmd::open::FileOpen) {
    if f.state.stream.is_some() || f.path.is_empty() {
        // A stream open's record is the stream's; the base file's renames are not in it.
        return;
    }
    let Some(n) = server.locks.current_name(&f.id) else { return };
    if apply(&n, f.root, f.parent, &f.path) == (f.parent, f.path.clone()) {
        return;
    }
    let own = [(f.parent, f.path.clone())];
    if let Some(at) = locate(&server.ns, &f.cred, (f.id, f.root), &own, Some(&n)).await {
        (f.parent, f.path) = (at.parent, at.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> FileId {
        FileId::new(s.as_bytes()).unwrap()
    }

    fn comps(p: &[&str]) -> Vec<String> {
        p.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_rename_through_the_same_share_gives_the_whole_path() {
        let n = of_rename(id("root"), id("e"), &comps(&["e", "y"])).unwrap();
        assert_eq!(apply(&n, id("root"), id("d"), &comps(&["d", "x"])), (id("e"), comps(&["e", "y"])));
    }

    #[test]
    fn a_rename_through_another_share_or_protocol_gives_the_directory_and_name() {
        let n = of_rename(id("other"), id("e"), &comps(&["sub", "e", "y"])).unwrap();
        assert_eq!(apply(&n, id("root"), id("d"), &comps(&["d", "x"])), (id("e"), comps(&["d", "y"])));
        let nfs = FileName { parent: b"e".to_vec(), name: b"z".to_vec(), root: vec![], path: vec![], renames: 3 };
        assert_eq!(apply(&nfs, id("root"), id("d"), &comps(&["d", "x"])), (id("e"), comps(&["d", "z"])));
    }

    #[test]
    fn unusable_names_change_nothing() {
        let bad = FileName { parent: vec![], name: b"z".to_vec(), root: vec![], path: vec![], renames: 1 };
        assert_eq!(apply(&bad, id("root"), id("d"), &comps(&["x"])), (id("d"), comps(&["x"])));
        let not_utf8 = FileName { parent: b"e".to_vec(), name: vec![0xff], root: vec![], path: vec![], renames: 1 };
        assert_eq!(apply(&not_utf8, id("root"), id("d"), &comps(&["x"])), (id("d"), comps(&["x"])));
        let root_open = of_rename(id("root"), id("e"), &comps(&["y"])).unwrap();
        assert_eq!(apply(&root_open, id("other"), id("d"), &[]), (id("d"), vec![]));
    }

    #[test]
    fn the_own_name_wins_while_it_is_the_file() {
        use Found::*;
        // A hard link's name, while the record names another link of the file.
        assert_eq!(pick(&[(ThisFile, true), (ThisFile, false)]), Some(0));
        // Renamed away through another node: the record's name, once it is the file.
        assert_eq!(pick(&[(Elsewhere, true), (ThisFile, false)]), Some(1));
        // The old name is another file's now, and so is the record's: nothing is the file's.
        assert_eq!(pick(&[(Elsewhere, true), (Elsewhere, false)]), None);
        // The name this node keeps current first, then the one the open holds.
        assert_eq!(pick(&[(Elsewhere, true), (ThisFile, true), (ThisFile, false)]), Some(1));
        // The open came through a symlink: that name still goes, unless a name is the file.
        assert_eq!(pick(&[(Symlink, true), (Elsewhere, false)]), Some(0));
        assert_eq!(pick(&[(Symlink, true), (ThisFile, false)]), Some(1));
        // A symlink under the record's name is never the open's.
        assert_eq!(pick(&[(Elsewhere, true), (Symlink, false)]), None);
        assert_eq!(pick(&[]), None);
    }
}
