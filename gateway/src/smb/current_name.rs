//! Where an open's file is now. An open knows the directory and share-relative path it was
//! opened by, and this node moves its opens when it renames their file ([`super::SmbServer::moved`]),
//! but a rename through another node, another share, NFS or the node's own mount reaches it
//! only through the file's record in the cluster's lock table ([`crate::locks::FileName`]),
//! which every node holding the file has before such a rename is answered. Whatever acts on the
//! open's name (a rename by handle, a name query, a delete-on-close) asks here first, as smbd's
//! opens follow the share-mode record's base name.

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

/// Brings open `f` up to its file's current name, if this node knows a newer one.
pub fn refresh(locks: &crate::locks::LockService, f: &mut super::cmd::open::FileOpen) {
    if f.state.stream.is_some() {
        // A stream open's record is the stream's; the base file's renames are not in it.
        return;
    }
    if let Some(n) = locks.current_name(&f.id) {
        (f.parent, f.path) = apply(&n, f.root, f.parent, &f.path);
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
}
