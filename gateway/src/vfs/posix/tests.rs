//! Unit tests of the POSIX backend on a temporary directory. Kernel-handle cases need root
//! (CI runs as root) and are skipped with a message otherwise.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::sync::Arc;

use super::identity::IdentityKind;
use super::{PosixBackend, PosixOptions};
use std::os::fd::AsFd;

use super::sys;
use crate::vfs::{Attr, FileId, ReadData};
use crate::vfs::{
    Backend, CreateHow, Credentials, FileType, Namespace, SetAttr, SetTime, Stability, Timestamp, VfsError,
};

fn backend(dir: &std::path::Path, kind: IdentityKind) -> PosixBackend {
    let mut opts = PosixOptions::new("smb");
    opts.identity = Some(kind);
    PosixBackend::open(dir, opts).expect("open backend")
}

fn kinds() -> Vec<IdentityKind> {
    if unsafe { libc::geteuid() } == 0 {
        vec![IdentityKind::Kernel, IdentityKind::Inode]
    } else {
        eprintln!("not root: kernel-handle identities not tested");
        vec![IdentityKind::Inode]
    }
}

fn name(s: &str) -> crate::vfs::Name {
    crate::vfs::Name::new(s.as_bytes()).unwrap()
}

#[test]
fn create_write_read_and_attributes() {
    for kind in kinds() {
        let tmp = tempfile::tempdir().unwrap();
        let b = backend(tmp.path(), kind);
        let me = Credentials::root();
        let root = b.root();
        let (f, attr) = b.create(&me, &root, &name("a.txt"), 0o640, CreateHow::Guarded(SetAttr::default())).unwrap();
        assert_eq!(attr.ftype, FileType::Regular);
        assert_eq!(attr.mode, 0o640);
        let (n, st, after) = b.write(&me, &f, 3, b"hello", Stability::FileSync).unwrap();
        assert_eq!((n, st, after.map(|a| a.size)), (5, Stability::FileSync, Some(8)));
        let (data, eof, _) = b.read(&me, &f, 0, 100).unwrap();
        assert_eq!(data, b"\0\0\0hello");
        assert!(eof);
        let (data, eof, _) = b.read(&me, &f, 3, 2).unwrap();
        assert_eq!((data.as_slice(), eof), (&b"he"[..], false));
        assert_eq!(std::fs::read(tmp.path().join("a.txt")).unwrap(), b"\0\0\0hello");
        assert_eq!(
            b.create(&me, &root, &name("a.txt"), 0o644, CreateHow::Guarded(SetAttr::default())).unwrap_err(),
            VfsError::Exists
        );
        let set = SetAttr {
            size: Some(1),
            mode: Some(0o600),
            mtime: SetTime::Client(Timestamp { secs: 1_000_000, nanos: 7 }),
            ..SetAttr::default()
        };
        let a = b.setattr(&me, &f, &set).unwrap();
        assert_eq!((a.size, a.mode, a.mtime), (1, 0o600, Timestamp { secs: 1_000_000, nanos: 7 }));
        // Unchecked on an existing file applies the attributes (a truncation here).
        let set0 = SetAttr { size: Some(0), ..SetAttr::default() };
        let (f2, a2) = b.create(&me, &root, &name("a.txt"), 0o644, CreateHow::Unchecked(set0)).unwrap();
        assert_eq!((f2, a2.size), (f, 0));
    }
}

#[test]
fn exclusive_create_is_idempotent_per_verifier() {
    for kind in kinds() {
        let tmp = tempfile::tempdir().unwrap();
        let b = backend(tmp.path(), kind);
        let me = Credentials::root();
        let root = b.root();
        let v = *b"\x01\x02\x03\x04\x05\x06\x07\x08";
        let (id1, _) = b.create(&me, &root, &name("x"), 0o644, CreateHow::Exclusive(v)).unwrap();
        let (id2, _) = b.create(&me, &root, &name("x"), 0o644, CreateHow::Exclusive(v)).unwrap();
        assert_eq!(id1, id2, "a retransmitted exclusive create succeeds on its own file");
        let other = *b"\x09\x02\x03\x04\x05\x06\x07\x08";
        assert_eq!(b.create(&me, &root, &name("x"), 0o644, CreateHow::Exclusive(other)).unwrap_err(), VfsError::Exists);
    }
}

#[test]
fn identities_survive_restart_and_rename_and_go_stale_on_delete() {
    for kind in kinds() {
        let tmp = tempfile::tempdir().unwrap();
        let me = Credentials::root();
        let (fid, did) = {
            let b = backend(tmp.path(), kind);
            let (d, _) = b.mkdir(&me, &b.root(), &name("d"), 0o755).unwrap();
            let (f, _) = b.create(&me, &d, &name("f"), 0o644, CreateHow::Guarded(SetAttr::default())).unwrap();
            b.write(&me, &f, 0, b"the right file", Stability::FileSync).unwrap();
            (f, d)
        };
        // "Server down": rename the file and its directory behind the backend's back.
        std::fs::create_dir(tmp.path().join("e")).unwrap();
        std::fs::rename(tmp.path().join("d/f"), tmp.path().join("e/g")).unwrap();
        std::fs::rename(tmp.path().join("d"), tmp.path().join("d2")).unwrap();
        std::fs::write(tmp.path().join("e/decoy"), b"wrong file").unwrap();
        let b = backend(tmp.path(), kind);
        let (data, _, _) = b.read(&me, &fid, 0, 100).unwrap();
        assert_eq!(data, b"the right file", "{kind:?}");
        assert_eq!(b.getattr(&did).unwrap().ftype, FileType::Directory);
        // Delete, then create files that may reuse the inode: the old id must stay stale.
        std::fs::remove_file(tmp.path().join("e/g")).unwrap();
        for i in 0..20 {
            std::fs::write(tmp.path().join(format!("e/new{i}")), b"another file").unwrap();
        }
        let b = backend(tmp.path(), kind);
        assert_eq!(b.getattr(&fid).unwrap_err(), VfsError::Stale, "{kind:?}");
        assert_eq!(b.read(&me, &fid, 0, 100).unwrap_err(), VfsError::Stale);
    }
}

#[test]
fn a_created_file_is_written_through_the_descriptor_that_created_it() {
    for kind in kinds() {
        let tmp = tempfile::tempdir().unwrap();
        let b = backend(tmp.path(), kind);
        let me = Credentials::root();
        // Read-only for everyone, yet written through the creating descriptor (as open(2)
        // with O_CREAT allows), as an NFS client writes a file it just created with mode 0444.
        let (f, _) = b.create(&me, &b.root(), &name("ro"), 0o444, CreateHow::Guarded(SetAttr::default())).unwrap();
        let opened = b.nodes.lock().unwrap().get(&f).and_then(|n| n.io()).expect("creation kept its fd");
        b.write(&me, &f, 0, b"data", Stability::FileSync).unwrap();
        let used = b.nodes.lock().unwrap().get(&f).and_then(|n| n.io()).unwrap();
        assert!(Arc::ptr_eq(&opened, &used), "no second open");
        assert_eq!(std::fs::read(tmp.path().join("ro")).unwrap(), b"data");
        assert_eq!(std::fs::metadata(tmp.path().join("ro")).unwrap().permissions().mode() & 0o777, 0o444);
    }
}

#[test]
fn writes_on_a_local_file_system_always_come_with_attributes() {
    let tmp = tempfile::tempdir().unwrap();
    let b = backend(tmp.path(), IdentityKind::Inode);
    assert!(b.is_local(), "the test directory is on a local file system");
    let me = Credentials::root();
    let (f, _) = b.create(&me, &b.root(), &name("f"), 0o644, CreateHow::Guarded(SetAttr::default())).unwrap();
    for (at, stable) in [(0, Stability::Unstable), (10, Stability::FileSync)] {
        let (n, got, attr) = b.write(&me, &f, at, b"abc", stable).unwrap();
        assert_eq!((n, got), (3, stable));
        assert_eq!(attr.map(|a| a.size), Some(at + 3), "a local stat costs nothing: always given");
    }
}

#[test]
fn cached_file_goes_stale_when_removed() {
    for kind in kinds() {
        let tmp = tempfile::tempdir().unwrap();
        let b = backend(tmp.path(), kind);
        let me = Credentials::root();
        let (f, _) = b.create(&me, &b.root(), &name("f"), 0o644, CreateHow::Guarded(SetAttr::default())).unwrap();
        b.write(&me, &f, 0, b"x", Stability::Unstable).unwrap();
        std::fs::remove_file(tmp.path().join("f")).unwrap();
        assert_eq!(b.write(&me, &f, 0, b"y", Stability::Unstable).unwrap_err(), VfsError::Stale);
        assert_eq!(b.getattr(&f).unwrap_err(), VfsError::Stale);
        let (g, _) = b.create(&me, &b.root(), &name("g"), 0o644, CreateHow::Guarded(SetAttr::default())).unwrap();
        b.remove(&me, &b.root(), &name("g")).unwrap();
        assert_eq!(b.getattr(&g).unwrap_err(), VfsError::Stale);
    }
}

#[test]
fn readdir_pages_list_every_name_exactly_once() {
    for kind in kinds() {
        let tmp = tempfile::tempdir().unwrap();
        for i in 0..1000 {
            std::fs::write(tmp.path().join(format!("file-{i:04}")), b"").unwrap();
        }
        let b = backend(tmp.path(), kind);
        let me = Credentials::root();
        let mut seen = std::collections::HashSet::new();
        let mut cookie = 0;
        let mut pages = 0;
        loop {
            let page = b.readdir(&me, &b.root(), cookie, 37, pages % 2 == 0).unwrap();
            pages += 1;
            for e in &page.entries {
                assert!(seen.insert(e.name.clone()), "{:?} listed twice", String::from_utf8_lossy(&e.name));
                if let Some((id, attr)) = &e.plus {
                    assert_eq!(b.getattr(id).unwrap().fileid, attr.fileid);
                }
                cookie = e.cookie;
            }
            if page.eof {
                break;
            }
            assert!(pages < 1000, "listing does not end");
        }
        assert_eq!(seen.len(), 1000);
    }
}

#[test]
fn caller_identity_owns_new_files_and_is_checked() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("not root: identity switching not tested");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let b = backend(tmp.path(), IdentityKind::Kernel);
    let user = Credentials { uid: 1234, gid: 5678, groups: vec![42] };
    let (f, attr) = b.create(&user, &b.root(), &name("mine"), 0o600, CreateHow::Guarded(SetAttr::default())).unwrap();
    assert_eq!((attr.uid, attr.gid), (1234, 5678));
    let md = std::fs::metadata(tmp.path().join("mine")).unwrap();
    assert_eq!((md.uid(), md.gid()), (1234, 5678));
    let (d, dattr) = b.mkdir(&user, &b.root(), &name("dir"), 0o700).unwrap();
    assert_eq!(dattr.uid, 1234);
    // Another user: no read on a 0600 file, no create in a 0700 directory, no chmod.
    let other = Credentials::new(999, 999);
    assert_eq!(b.read(&other, &f, 0, 10).unwrap_err(), VfsError::Access);
    assert_eq!(b.write(&other, &f, 0, b"x", Stability::Unstable).unwrap_err(), VfsError::Access);
    assert_eq!(
        b.create(&other, &d, &name("x"), 0o644, CreateHow::Guarded(SetAttr::default())).unwrap_err(),
        VfsError::Access
    );
    assert_eq!(
        b.setattr(&other, &f, &SetAttr { mode: Some(0o777), ..SetAttr::default() }).unwrap_err(),
        VfsError::Perm
    );
    // The thread is root again afterwards.
    let (r, _) = b
        .create(&Credentials::root(), &b.root(), &name("rootfile"), 0o644, CreateHow::Guarded(SetAttr::default()))
        .unwrap();
    assert_eq!(b.getattr(&r).unwrap().uid, 0);
}

#[tokio::test]
async fn names_and_walks_cannot_escape_the_root() {
    let outer = tempfile::tempdir().unwrap();
    let root = outer.path().join("vol");
    std::fs::create_dir_all(root.join("a/b")).unwrap();
    std::fs::write(outer.path().join("secret"), b"outside").unwrap();
    std::fs::write(root.join("a/b/inside"), b"inside").unwrap();
    std::os::unix::fs::symlink(outer.path().join("secret"), root.join("abs")).unwrap();
    std::os::unix::fs::symlink("../../secret", root.join("a/rel")).unwrap();
    std::os::unix::fs::symlink("b/inside", root.join("a/ok")).unwrap();
    let kind = *kinds().last().unwrap();
    let ns = Namespace::new(Arc::new(backend(&root, kind)));
    let me = Credentials::root();
    let r = ns.root();
    for bad in [&b"a/b"[..], b"", b"x\0"] {
        assert_eq!(ns.lookup(&me, r, bad).await.unwrap_err(), VfsError::BadName);
    }
    assert_eq!(ns.lookup(&me, r, b"..").await.unwrap().0, r, "the root is its own parent");
    assert_eq!(ns.walk(&me, r, b"../secret", true).await.unwrap_err(), VfsError::Escape);
    assert_eq!(ns.walk(&me, r, b"abs", true).await.unwrap_err(), VfsError::Escape);
    assert_eq!(ns.walk(&me, r, b"a/rel", true).await.unwrap_err(), VfsError::Escape);
    // Not following the last symlink returns the link itself.
    assert_eq!(ns.walk(&me, r, b"abs", false).await.unwrap().1.ftype, FileType::Symlink);
    let (f, _) = ns.walk(&me, r, b"a/ok", true).await.unwrap();
    assert_eq!(ns.read(&me, f, 0, 100).await.unwrap().0, b"inside");
    let (f2, _) = ns.walk(&me, r, b"/a/./b/../b/inside", true).await.unwrap();
    assert_eq!(f, f2);
    // A symlink lookup by name is never followed by the server.
    let (l, la) = ns.lookup(&me, r, b"abs").await.unwrap();
    assert_eq!(la.ftype, FileType::Symlink);
    assert_eq!(ns.read(&me, l, 0, 10).await.unwrap_err(), VfsError::Invalid);
}

#[test]
fn rename_link_symlink_and_rmdir() {
    for kind in kinds() {
        let tmp = tempfile::tempdir().unwrap();
        let b = backend(tmp.path(), kind);
        let me = Credentials::root();
        let root = b.root();
        let (d, _) = b.mkdir(&me, &root, &name("d"), 0o755).unwrap();
        let (f, _) = b.create(&me, &d, &name("f"), 0o644, CreateHow::Guarded(SetAttr::default())).unwrap();
        b.rename(&me, &d, &name("f"), &root, &name("g")).unwrap();
        assert_eq!(b.lookup(&me, &root, &name("g")).unwrap().0, f);
        let a = b.link(&me, &f, &d, &name("h")).unwrap();
        assert_eq!(a.nlink, 2);
        let (s, _) = b.symlink(&me, &root, &name("s"), b"d/h").unwrap();
        assert_eq!(b.readlink(&me, &s).unwrap(), b"d/h");
        assert_eq!(b.rmdir(&me, &root, &name("d")).unwrap_err(), VfsError::NotEmpty);
        b.remove(&me, &d, &name("h")).unwrap();
        b.rmdir(&me, &root, &name("d")).unwrap();
        assert_eq!(b.getattr(&d).unwrap_err(), VfsError::Stale);
        assert_eq!(b.getattr(&f).unwrap().nlink, 1);
        assert_eq!(b.parent(&me, &root).unwrap().0, root);
        let st = b.statfs(&root).unwrap();
        assert!(st.total_bytes > 0 && st.name_max >= 255);
        b.fsync(&f).unwrap();
        b.sync_all().unwrap();
    }
}

/// Every name with its identity and attributes, listed in pages of 7 with attributes.
fn list_plus(b: &PosixBackend, cred: &Credentials, dir: &FileId) -> Result<Vec<(Vec<u8>, FileId, Attr)>, VfsError> {
    let (mut out, mut cookie) = (Vec::new(), 0);
    loop {
        let page = b.readdir(cred, dir, cookie, 7, true)?;
        for e in page.entries {
            cookie = e.cookie;
            let (id, a) = e.plus.expect("a plus listing has identities");
            out.push((e.name, id, a));
        }
        if page.eof {
            return Ok(out);
        }
    }
}

#[test]
fn remembered_listings_follow_every_change() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("not root: remembered listings need kernel handles");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    for i in 0..50 {
        std::fs::write(tmp.path().join(format!("f{i:02}")), b"").unwrap();
    }
    let sub = tmp.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    std::fs::write(sub.join("secret"), b"").unwrap();
    std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o711)).unwrap();
    // Only a directory unchanged for a while is remembered.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let b = backend(tmp.path(), IdentityKind::Kernel);
    let me = Credentials::root();
    let remembered = |b: &PosixBackend| b.listings.as_ref().expect("ext4, tmpfs...").lock().unwrap().len();
    let first = list_plus(&b, &me, &b.root()).unwrap();
    assert_eq!(first.len(), 51);
    assert_eq!(remembered(&b), 51);
    assert_eq!(list_plus(&b, &me, &b.root()).unwrap(), first, "a remembered listing is the same listing");
    let names: Vec<_> = b.readdir(&me, &b.root(), 0, 100, false).unwrap().entries.into_iter().map(|e| e.name).collect();
    assert_eq!(names, first.iter().map(|e| e.0.clone()).collect::<Vec<_>>());

    // A file changed behind the server's back: its attributes are fresh.
    std::fs::write(tmp.path().join("f03"), b"hello").unwrap();
    let now = list_plus(&b, &me, &b.root()).unwrap();
    assert_eq!(now.iter().find(|e| e.0 == b"f03").unwrap().2.size, 5);

    // A name removed and made again (its inode number is likely reused): the listing has the
    // new file's identity, and the old identity is stale.
    let old = first.iter().find(|e| e.0 == b"f05").unwrap().1;
    std::fs::remove_file(tmp.path().join("f05")).unwrap();
    std::fs::write(tmp.path().join("f05"), b"new").unwrap();
    let now = list_plus(&b, &me, &b.root()).unwrap();
    let (_, new, attr) = now.iter().find(|e| e.0 == b"f05").unwrap().clone();
    assert_ne!(new, old);
    assert_eq!(b.lookup(&me, &b.root(), &name("f05")).unwrap(), (new, attr));
    assert_eq!(b.getattr(&old).unwrap_err(), VfsError::Stale);
    assert_eq!(now.len(), 51);

    // Reading a directory needs read permission, remembered or not.
    let (sub_id, _) = b.lookup(&me, &b.root(), &name("sub")).unwrap();
    assert_eq!(list_plus(&b, &me, &sub_id).unwrap().len(), 1);
    let other = Credentials::new(999, 999);
    assert_eq!(list_plus(&b, &other, &sub_id).unwrap_err(), VfsError::Access);
}

/// The bytes a read gave, wherever they are.
fn bytes_of(data: &ReadData) -> Vec<u8> {
    match data {
        ReadData::Bytes(b) => b.clone(),
        ReadData::File(s) => {
            let mut buf = vec![0; s.len as usize];
            let n = nix_pread(s.fd.as_fd(), &mut buf, s.offset);
            buf.truncate(n);
            buf
        }
    }
}

fn nix_pread(fd: std::os::fd::BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> usize {
    use std::os::fd::AsRawFd;
    let n = unsafe { libc::pread(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), offset as libc::off_t) };
    usize::try_from(n).unwrap()
}

#[test]
fn reads_leave_cached_data_in_the_file_and_read_the_rest() {
    use std::os::fd::AsRawFd;
    for kind in kinds() {
        let tmp = tempfile::tempdir().unwrap();
        let b = backend(tmp.path(), kind);
        let me = Credentials::root();
        let (f, _) = b.create(&me, &b.root(), &name("data"), 0o644, CreateHow::Guarded(SetAttr::default())).unwrap();
        let content: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        b.write(&me, &f, 0, &content, Stability::FileSync).unwrap();
        // Just written: in the page cache (if the kernel can tell, cachestat is Linux 6.5+).
        let (data, eof, attr) = b.read_slice(&me, &f, 100, 5000).unwrap();
        assert_eq!((bytes_of(&data), eof, attr.size), (content[100..5100].to_vec(), false, 20_000));
        let file = std::fs::File::open(tmp.path().join("data")).unwrap();
        if sys::all_cached(file.as_fd(), 0, 1) {
            assert!(matches!(data, ReadData::File(_)), "cached data is left in the file");
            let (slice, eof, _) = b.read_cached(&me, &f, 100, 5000).unwrap().expect("cached");
            assert_eq!((bytes_of(&ReadData::File(slice)), eof), (content[100..5100].to_vec(), false));
        }
        let (data, eof, _) = b.read_slice(&me, &f, 19_990, 5000).unwrap();
        assert_eq!((bytes_of(&data), eof), (content[19_990..].to_vec(), true));
        // Dropped from the cache: read into memory, never sent from an async task.
        assert_eq!(unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) }, 0);
        if !sys::all_cached(file.as_fd(), 0, 20_000) {
            assert!(b.read_cached(&me, &f, 0, 20_000).unwrap().is_none(), "never waits for the disk");
            let (data, _, _) = b.read_slice(&me, &f, 0, 20_000).unwrap();
            assert!(matches!(data, ReadData::Bytes(_)));
            assert_eq!(bytes_of(&data), content);
        }
        let (data, eof, _) = b.read_slice(&me, &f, 30_000, 10).unwrap();
        assert!(data.is_empty() && eof);
    }
}

async fn write_from_reaches_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let ns = Namespace::new(Arc::new(backend(tmp.path(), *kinds().last().unwrap())));
    let me = Credentials::root();
    let (f, _) = ns.create(&me, ns.root(), b"w", 0o644, CreateHow::Guarded(SetAttr::default())).await.unwrap();
    let data = vec![9u8; 100_000];
    let (n, st, a) = ns.write_from(&me, f, 10, &data, Stability::FileSync).await.unwrap();
    assert_eq!((n, st, a.map(|a| a.size)), (100_000, Stability::FileSync, Some(100_010)));
    assert_eq!(std::fs::read(tmp.path().join("w")).unwrap()[10..], data[..]);
    assert!(ns.is_local(), "a temporary directory is on a local file system");
}

#[tokio::test(flavor = "multi_thread")]
async fn write_from_on_the_multi_threaded_runtime() {
    write_from_reaches_the_file().await;
}

#[tokio::test]
async fn write_from_on_a_current_thread_runtime() {
    write_from_reaches_the_file().await;
}

#[test]
fn borrowed_writes_land_whether_calls_run_in_place_or_not() {
    let tmp = tempfile::tempdir().unwrap();
    let ns = Namespace::new(Arc::new(backend(tmp.path(), IdentityKind::Inode)));
    let write = |ns: Namespace, rt: tokio::runtime::Runtime, name: &'static str, in_place: bool| {
        std::thread::spawn(move || {
            if in_place {
                crate::vfs::in_place::run_calls_in_place();
            }
            assert_eq!(crate::vfs::in_place::calls_run_in_place(), in_place);
            rt.block_on(async {
                let me = Credentials::root();
                let (f, _) =
                    ns.create(&me, ns.root(), name.as_bytes(), 0o644, CreateHow::Guarded(SetAttr::default())).await?;
                ns.write_from(&me, f, 0, name.as_bytes(), Stability::Unstable).await
            })
        })
        .join()
        .unwrap()
    };
    let current = || tokio::runtime::Builder::new_current_thread().build().unwrap();
    let multi = tokio::runtime::Builder::new_multi_thread().worker_threads(1).build().unwrap();
    assert_eq!(write(ns.clone(), current(), "in-place", true).unwrap().0, 8);
    assert_eq!(write(ns.clone(), current(), "handed-off", false).unwrap().0, 10);
    assert_eq!(write(ns.clone(), multi, "multi", false).unwrap().0, 5);
    for name in ["in-place", "handed-off", "multi"] {
        assert_eq!(std::fs::read(tmp.path().join(name)).unwrap(), name.as_bytes());
    }
    // The mode belongs to the thread that asked for it.
    assert!(!crate::vfs::in_place::calls_run_in_place());
}

/// Descriptors of this process open on a removed file named `name`.
fn open_on_removed(name: &str) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|t| t.to_string_lossy().ends_with(&format!("{name} (deleted)")))
        .count()
}

#[test]
fn a_removed_files_last_close_waits_for_the_reply_on_in_place_threads() {
    let tmp = tempfile::tempdir().unwrap();
    let b = Arc::new(backend(tmp.path(), IdentityKind::Inode));
    let me = Credentials::root();
    let root = b.root();
    for n in ["later.txt", "now.txt"] {
        b.create(&me, &root, &name(n), 0o644, CreateHow::Guarded(SetAttr::default())).unwrap();
        // Cached with a descriptor (what an SMB open or an NFS handle use leaves behind).
        b.lookup(&me, &root, &name(n)).unwrap();
    }
    let (b2, later) = (b.clone(), tmp.path().join("later.txt"));
    std::thread::spawn(move || {
        crate::vfs::in_place::run_calls_in_place();
        b2.remove(&Credentials::root(), &b2.root(), &name("later.txt")).unwrap();
        assert!(std::fs::symlink_metadata(later).is_err(), "the name is gone at once");
        // Its path descriptor, and the I/O one its create left open.
        assert!(open_on_removed("later.txt") > 0, "the file itself is freed after the reply");
        crate::vfs::in_place::drop_deferred();
        assert_eq!(open_on_removed("later.txt"), 0);
    })
    .join()
    .unwrap();
    // Other threads (NFS on the shared runtime) free it at once.
    b.remove(&me, &root, &name("now.txt")).unwrap();
    assert_eq!(open_on_removed("now.txt"), 0);
}

#[test]
fn files_removed_behind_the_servers_back_are_let_go() {
    let tmp = tempfile::tempdir().unwrap();
    let b = backend(tmp.path(), IdentityKind::Inode);
    let me = Credentials::root();
    let root = b.root();
    let (f, _) = b.create(&me, &root, &name("elsewhere.bin"), 0o644, CreateHow::Guarded(SetAttr::default())).unwrap();
    b.write(&me, &f, 0, &[1u8; 4096], Stability::FileSync).unwrap();
    let (kept, _) = b.create(&me, &root, &name("kept.bin"), 0o644, CreateHow::Guarded(SetAttr::default())).unwrap();
    b.write(&me, &kept, 0, &[2u8; 10], Stability::Unstable).unwrap();
    // Another node (or anything but this server) removes it: the cache still holds it open.
    std::fs::remove_file(tmp.path().join("elsewhere.bin")).unwrap();
    assert!(open_on_removed("elsewhere.bin") >= 1, "the cached descriptors pin the removed file");
    assert_eq!(b.release_removed(), 1);
    assert_eq!(open_on_removed("elsewhere.bin"), 0, "its space is free");
    assert_eq!(b.release_removed(), 0);
    assert_eq!(b.getattr(&kept).unwrap().size, 10, "files still named stay served");
    assert!(matches!(b.getattr(&f), Err(VfsError::Stale)));
}

#[test]
fn a_flush_closes_a_duplicate_and_keeps_the_descriptor() {
    use std::io::Write;
    use std::os::fd::AsFd;
    let mut f = tempfile::tempfile().unwrap();
    super::sys::flush(f.as_fd()).unwrap();
    f.write_all(b"still open").unwrap();
    let open = std::fs::read_dir("/proc/self/fd").unwrap().count();
    super::sys::flush(f.as_fd()).unwrap();
    assert_eq!(std::fs::read_dir("/proc/self/fd").unwrap().count(), open, "no descriptor left behind");
}

#[tokio::test]
async fn special_files_are_made_listed_and_never_opened_for_io() {
    use crate::vfs::SpecialFile;
    for kind in kinds() {
        let tmp = tempfile::tempdir().unwrap();
        let ns = Namespace::new(Arc::new(backend(tmp.path(), kind)));
        let root_cred = Credentials::root();
        let root = ns.root();
        let mut made = Vec::new();
        for (n, k, mode) in [
            ("fifo", SpecialFile::Fifo, 0o640),
            ("sock", SpecialFile::Socket, 0o777),
            ("chr", SpecialFile::CharDevice(1, 3), 0o600),
            ("blk", SpecialFile::BlockDevice(7, 200), 0o660),
        ] {
            if k.is_device() && unsafe { libc::geteuid() } != 0 {
                continue;
            }
            let (id, a) = ns.mknod(&root_cred, root, n.as_bytes(), k, mode).await.unwrap();
            assert_eq!((a.ftype, a.mode), (k.file_type(), mode), "{n}");
            let meta = std::fs::symlink_metadata(tmp.path().join(n)).unwrap();
            assert_eq!(meta.mode() & 0o7777, mode, "{n}: exactly the mode asked, whatever the umask");
            if let SpecialFile::CharDevice(ma, mi) | SpecialFile::BlockDevice(ma, mi) = k {
                assert_eq!(a.rdev, (ma, mi), "{n}");
                assert_eq!(meta.rdev(), libc::makedev(ma, mi), "{n}");
            }
            assert_eq!(ns.getattr(id).await.unwrap().ftype, k.file_type());
            // Reading or writing a fifo or a device would block or touch hardware: refused.
            assert_eq!(ns.read(&root_cred, id, 0, 10).await.unwrap_err(), VfsError::Invalid, "{n}");
            let w = ns.write(&root_cred, id, 0, b"x".to_vec(), Stability::FileSync).await;
            assert_eq!(w.unwrap_err(), VfsError::Invalid, "{n}");
            made.push((n, id, k));
        }
        // The same names again: EEXIST.
        assert_eq!(ns.mknod(&root_cred, root, b"fifo", SpecialFile::Fifo, 0o644).await.unwrap_err(), VfsError::Exists);
        // A listing with attributes shows each with its type and numbers.
        let page = ns.readdir(&root_cred, root, 0, 100, true).await.unwrap();
        for (n, id, k) in &made {
            let e = page.entries.iter().find(|e| e.name == n.as_bytes()).unwrap();
            let (eid, a) = e.plus.unwrap();
            assert_eq!((eid, a.ftype), (*id, k.file_type()), "{n}");
        }
        // Devices are for root only; fifos and sockets for anyone who may write the folder.
        if unsafe { libc::geteuid() } == 0 {
            let user = Credentials::new(4242, 4242);
            std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
            let dev = ns.mknod(&user, root, b"c2", SpecialFile::CharDevice(1, 3), 0o644).await;
            assert_eq!(dev.unwrap_err(), VfsError::Perm);
            // Even past the namespace's check, the kernel refuses it (no CAP_MKNOD as the user).
            let b = ns.backend();
            let direct = b.mknod(&user, &root, &name("c3"), SpecialFile::BlockDevice(1, 3), 0o644);
            assert_eq!(direct.unwrap_err(), VfsError::Perm);
            let (_, a) = ns.mknod(&user, root, b"userfifo", SpecialFile::Fifo, 0o600).await.unwrap();
            assert_eq!((a.uid, a.gid, a.ftype), (4242, 4242, FileType::Fifo));
            assert!(!tmp.path().join("c2").exists() && !tmp.path().join("c3").exists());
        }
    }
}

#[test]
fn times_of_a_symlink_are_its_own() {
    for kind in kinds() {
        let tmp = tempfile::tempdir().unwrap();
        let b = backend(tmp.path(), kind);
        let me = Credentials::root();
        let root = b.root();
        b.create(&me, &root, &name("target"), 0o644, CreateHow::Guarded(SetAttr::default())).unwrap();
        let (link, _) = b.symlink(&me, &root, &name("link"), b"target").unwrap();
        let t = Timestamp { secs: 1_234_567, nanos: 89 };
        let set = SetAttr { atime: SetTime::Client(t), mtime: SetTime::Client(t), ..SetAttr::default() };
        let a = b.setattr(&me, &link, &set).unwrap();
        assert_eq!((a.ftype, a.mtime, a.atime), (FileType::Symlink, t, t));
        assert_eq!(std::fs::symlink_metadata(tmp.path().join("link")).unwrap().mtime(), 1_234_567);
        assert_ne!(std::fs::metadata(tmp.path().join("target")).unwrap().mtime(), 1_234_567, "not the target's");
    }
}

#[test]
fn the_mount_shares_the_descriptor_a_create_opened() {
    for kind in kinds() {
        let tmp = tempfile::tempdir().unwrap();
        let b = backend(tmp.path(), kind);
        let me = Credentials::root();
        let (f, _) = b.create(&me, &b.root(), &name("new"), 0o644, CreateHow::Guarded(SetAttr::default())).unwrap();
        let opened = b.nodes.lock().unwrap().get(&f).and_then(|n| n.io()).unwrap();
        // The passthrough backing file is that descriptor, not a new open of the file.
        assert!(Arc::ptr_eq(&opened, &b.shared_data(&f).unwrap()));
        assert!(Arc::ptr_eq(&b.shared_data(&f).unwrap(), &b.shared_data(&f).unwrap()));
        assert_eq!(b.shared_data(&b.root()).unwrap_err(), VfsError::IsDir);
    }
}

#[test]
fn an_open_with_o_trunc_truncates_an_existing_file_and_leaves_a_new_one_alone() {
    for kind in kinds() {
        let tmp = tempfile::tempdir().unwrap();
        let b = backend(tmp.path(), kind);
        let me = Credentials::root();
        let trunc = || CreateHow::Unchecked(SetAttr { size: Some(0), ..SetAttr::default() });
        let (f, a) = b.create(&me, &b.root(), &name("t"), 0o644, trunc()).unwrap();
        assert_eq!(a.size, 0);
        b.write(&me, &f, 0, b"data", Stability::FileSync).unwrap();
        let (g, a) = b.create(&me, &b.root(), &name("t"), 0o644, trunc()).unwrap();
        assert_eq!((g, a.size), (f, 0), "the existing file is truncated");
        assert_eq!(std::fs::metadata(tmp.path().join("t")).unwrap().len(), 0);
    }
}

#[test]
fn a_listing_without_attributes_tells_each_entry_type() {
    for kind in kinds() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("d")).unwrap();
        std::fs::write(tmp.path().join("f"), b"").unwrap();
        std::os::unix::fs::symlink("f", tmp.path().join("l")).unwrap();
        let b = backend(tmp.path(), kind);
        let page = b.readdir(&Credentials::root(), &b.root(), 0, 100, false).unwrap();
        let mut got: Vec<_> = page.entries.iter().map(|e| (e.name.clone(), e.kind, e.plus.is_some())).collect();
        got.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            got,
            [
                (b"d".to_vec(), Some(FileType::Directory), false),
                (b"f".to_vec(), Some(FileType::Regular), false),
                (b"l".to_vec(), Some(FileType::Symlink), false),
            ]
        );
    }
}

#[test]
fn sweep_slices_cover_every_node_in_turn() {
    let mut at = 0;
    // Short enough: all of it, every time.
    assert_eq!(super::sweep_slice(vec![1, 2, 3], &mut at, 4), vec![1, 2, 3]);
    assert_eq!(at, 0);
    // 10 items, 4 at a time: every item within three sweeps, then around again.
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.extend(super::sweep_slice((0..10).collect(), &mut at, 4));
    }
    assert_eq!(seen, vec![0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]);
    // The list shrank meanwhile (files evicted): still a full slice, from where it wraps.
    assert_eq!(super::sweep_slice((0..5).collect(), &mut at, 4), vec![2, 3, 4, 0]);
}

#[test]
fn a_removed_file_the_cache_evicts_is_closed_off_the_callers_thread() {
    let tmp = tempfile::tempdir().unwrap();
    let mut opts = PosixOptions::new("smb");
    opts.identity = Some(IdentityKind::Inode);
    opts.cache_entries = 16;
    let b = PosixBackend::open(tmp.path(), opts).expect("open backend");
    let me = Credentials::root();
    let root = b.root();
    let (f, _) = b.create(&me, &root, &name("evicted.bin"), 0o644, CreateHow::Guarded(SetAttr::default())).unwrap();
    b.write(&me, &f, 0, &[1u8; 4096], Stability::Unstable).unwrap();
    std::fs::remove_file(tmp.path().join("evicted.bin")).unwrap();
    assert!(open_on_removed("evicted.bin") >= 1, "the cached descriptors pin the removed file");
    // Newer files push it out of the cache; its last close happens on the close pool.
    for i in 0..32 {
        b.create(&me, &root, &name(&format!("n{i}")), 0o644, CreateHow::Guarded(SetAttr::default())).unwrap();
    }
    let start = std::time::Instant::now();
    while open_on_removed("evicted.bin") > 0 && start.elapsed() < std::time::Duration::from_secs(20) {
        std::thread::yield_now();
    }
    assert_eq!(open_on_removed("evicted.bin"), 0, "its space is free once the eviction's close ran");
    let closers = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|c| c.trim() == "nasgw-close")
        .count();
    assert!(closers >= 1, "closed by the close pool, not under the cache's lock on the caller's thread");
    assert!(matches!(b.getattr(&f), Err(VfsError::Stale)));
}

/// What the kernel says of `p` now, as the backend would list it (atime aside: not followed).
fn on_disk(b: &PosixBackend, p: &std::path::Path) -> Attr {
    let c = sys::cstring(p.as_os_str().as_encoded_bytes()).unwrap();
    let cwd = unsafe { std::os::fd::BorrowedFd::borrow_raw(libc::AT_FDCWD) };
    let mut a = b.attr(&sys::statx(cwd, &c).unwrap());
    a.atime = Timestamp::default();
    a
}

#[test]
fn remembered_attributes_follow_every_change_at_once() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("not root: remembered attributes need kernel handles and fanotify");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    std::fs::create_dir(&dir).unwrap();
    for i in 0..20 {
        std::fs::write(dir.join(format!("f{i:02}")), b"").unwrap();
    }
    std::fs::create_dir(dir.join("sub")).unwrap();
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    settle(&dir);
    let b = backend(tmp.path(), IdentityKind::Kernel);
    let Some(watched) = b.listed_attrs.as_ref() else {
        eprintln!("no fanotify file-system mark here: nothing to test");
        return;
    };
    let me = Credentials::root();
    let (d, _) = b.lookup(&me, &b.root(), &name("d")).unwrap();
    // Every listed attribute is what the kernel says now.
    let check = |what: &str| {
        let listed = list_plus(&b, &me, &d).unwrap();
        let names: Vec<_> =
            std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_encoded_bytes()).collect();
        assert_eq!(listed.len(), names.len(), "{what}: every name");
        for (n, _, mut a) in listed {
            a.atime = Timestamp::default();
            let p = dir.join(std::ffi::OsStr::from_bytes(&n));
            assert_eq!(a, on_disk(&b, &p), "{what}: {}", p.display());
        }
    };
    check("first listing");
    check("second listing");
    let known = watched.len();
    assert!(known >= 21, "the entries' attributes are remembered ({known})");
    let before = b.readdir(&me, &d, 0, 100, true).unwrap();
    let f = |n: &str| dir.join(n);

    std::fs::write(f("f01"), b"hello").unwrap();
    check("a write");
    std::fs::OpenOptions::new().write(true).open(f("f01")).unwrap().set_len(2).unwrap();
    check("a truncate");
    std::fs::set_permissions(f("f02"), std::fs::Permissions::from_mode(0o600)).unwrap();
    check("a chmod");
    std::os::unix::fs::chown(f("f03"), Some(1234), Some(5678)).unwrap();
    check("a chown");
    let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
    std::fs::File::options().write(true).open(f("f04")).unwrap().set_modified(old).unwrap();
    check("times set");
    std::fs::hard_link(f("f05"), elsewhere.join("link")).unwrap();
    check("a hard link made in another directory");
    std::fs::remove_file(elsewhere.join("link")).unwrap();
    check("that link removed");
    std::fs::create_dir(dir.join("sub/inner")).unwrap();
    check("a subdirectory's own entries");
    xattr_set(&f("f08"));
    check("an extended attribute");
    // A file system mounted over a remembered subdirectory: the name now denotes its root.
    let mnt = dir.join("sub");
    let cmnt = sys::cstring(mnt.as_os_str().as_encoded_bytes()).unwrap();
    let r = unsafe { libc::mount(c"t".as_ptr(), cmnt.as_ptr(), c"tmpfs".as_ptr(), 0, c"mode=0750".as_ptr().cast()) };
    assert_eq!(r, 0, "mount: {}", std::io::Error::last_os_error());
    struct Unmount(std::ffi::CString);
    impl Drop for Unmount {
        fn drop(&mut self) {
            unsafe { libc::umount2(self.0.as_ptr(), libc::MNT_DETACH) };
        }
    }
    let unmount = Unmount(cmnt);
    check("a file system mounted inside");
    std::fs::set_permissions(&mnt, std::fs::Permissions::from_mode(0o700)).unwrap();
    check("a chmod of its root");
    // Remembered with the mount in place (the directory changed, then settled): the mounted
    // root's changes reach no mark of ours, so it is stat'ed every time.
    std::fs::write(f("x"), b"").unwrap();
    std::fs::remove_file(f("x")).unwrap();
    settle(&dir);
    check("listed with the mount in place");
    check("listed again");
    std::fs::set_permissions(&mnt, std::fs::Permissions::from_mode(0o750)).unwrap();
    check("another chmod of the mounted root");
    drop(unmount);
    check("unmounted");
    // nasgw's own writes and SETATTRs, through descriptors opened by handle.
    let id = before.entries.iter().find(|e| e.name == b"f09").unwrap().plus.unwrap().0;
    b.write(&me, &id, 0, b"through nasgw", Stability::Unstable).unwrap();
    check("a write through the backend");
    b.setattr(&me, &id, &SetAttr { mode: Some(0o640), ..SetAttr::default() }).unwrap();
    check("a SETATTR through the backend");
    // Last: a change of the directory's entries forgets its remembered listing for a second.
    std::fs::rename(f("f06"), f("f07")).unwrap();
    check("a rename over another file");
}

/// Polls the clock until `dir`'s ctime is old enough for its listing to be remembered.
fn settle(dir: &std::path::Path) {
    let ctime = std::fs::metadata(dir).unwrap().ctime();
    while sys::now().secs < ctime + 2 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn xattr_set(p: &std::path::Path) {
    let c = sys::cstring(p.as_os_str().as_encoded_bytes()).unwrap();
    let r = unsafe { libc::setxattr(c.as_ptr(), c"user.t".as_ptr(), b"v".as_ptr().cast(), 1, 0) };
    assert_eq!(r, 0, "setxattr: {}", std::io::Error::last_os_error());
}

/// A link, unlink or rename names the files whose link count and ctime it changed (the mount's
/// kernel caches those per inode), once something listens to attribute changes, and is
/// published as one message to the other nodes.
#[tokio::test]
async fn name_changes_name_the_files_whose_link_count_they_changed() {
    use std::sync::Mutex;
    let tmp = tempfile::tempdir().unwrap();
    let ns = Namespace::new(Arc::new(backend(tmp.path(), *kinds().last().unwrap())));
    let (me, root) = (Credentials::root(), ns.root());
    let how = || CreateHow::Guarded(SetAttr::default());
    let (a, _) = ns.create(&me, root, b"a", 0o644, how()).await.unwrap();
    let (o, _) = ns.create(&me, root, b"o", 0o644, how()).await.unwrap();
    let sent = Arc::new(Mutex::new(Vec::new()));
    let s = sent.clone();
    ns.changes().set_remote(Box::new(move |b| s.lock().unwrap().push(b)));
    let files = |sent: &Mutex<Vec<Vec<u8>>>| -> Vec<Vec<FileId>> {
        sent.lock().unwrap().drain(..).map(|b| crate::vfs::changes::decode(&b).unwrap().files).collect()
    };
    // Nothing caches attributes: no files named.
    ns.link(&me, a, root, b"b").await.unwrap();
    assert_eq!(files(&sent), vec![vec![]]);
    let told = Arc::new(Mutex::new(Vec::new()));
    let t = told.clone();
    ns.changes().listen_attributes(Box::new(move |f| t.lock().unwrap().push(*f)));
    ns.remove(&me, root, b"b", Some(a)).await.unwrap();
    ns.link(&me, a, root, b"b").await.unwrap();
    ns.rename(&me, root, b"o", root, b"b", Some(a)).await.unwrap();
    ns.rename(&me, root, b"a", root, b"c", None).await.unwrap();
    assert_eq!(files(&sent), vec![vec![a], vec![a], vec![o, a], vec![a]], "one message per change");
    assert_eq!(*told.lock().unwrap(), vec![a, a, o, a, a], "this node's listeners are told too");
    assert_eq!(ns.getattr(a).await.unwrap().nlink, 1);
}
