//! The folded names of a local volume's directories, kept current by inotify: the inotify
//! instance, its watches and the reading of its queue around the pure
//! [`crate::vfs::folding::FoldedIndexes`] (the rule that makes the names trustworthy is in
//! [`crate::vfs::folding`]).
//!
//! The queue is read only when a case-insensitive search asks (one non-blocking `read` that
//! usually finds the events of the creates since the last search), never by a task of its own:
//! an idle watch costs a little kernel memory, and a queue left to fill up overflows, which
//! forgets everything and costs one listing per directory when next asked.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};

use super::folding::{FoldedIndexes, FoldedNames, Lookup, NameEvent};
use super::types::FileId;

/// Bytes read from the queue at once (an event is 16 bytes and its name, at most 255).
const READ_BUF: usize = 32 * 1024;

/// Followed directories' folded names, for one namespace.
pub struct LocalFoldedNames {
    state: Mutex<State>,
    /// Listings made for case-insensitive searches (tests, diagnostics).
    listings: AtomicU64,
}

struct State {
    /// Made at the first directory followed; `Some(None)`: inotify is unavailable.
    inotify: Option<Option<Inotify>>,
    index: FoldedIndexes<WatchDescriptor>,
    buf: Vec<u8>,
}

impl Default for LocalFoldedNames {
    fn default() -> Self {
        Self {
            state: Mutex::new(State { inotify: None, index: FoldedIndexes::default(), buf: vec![0; READ_BUF] }),
            listings: AtomicU64::new(0),
        }
    }
}

impl LocalFoldedNames {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What is known of the entry of `dir` that folds like `name`, once every change queued
    /// so far is applied.
    pub fn find(&self, dir: &FileId, name: &str) -> Lookup {
        let mut st = self.state();
        st.drain();
        st.index.find(dir, name)
    }

    /// Follows directory `dir` (`fd`: its `O_PATH` descriptor) from now on, before it is
    /// listed; returns the generation to hand to [`LocalFoldedNames::listed`]. `None` when it
    /// cannot be (no inotify, the kernel's watch limit, another id of the same directory
    /// followed already): then nothing is remembered and each search lists.
    pub fn follow(&self, dir: FileId, fd: OwnedFd) -> Option<u64> {
        let mut guard = self.state();
        let st = &mut *guard;
        st.drain();
        if let Some(generation) = st.index.follows(&dir) {
            return Some(generation);
        }
        let inotify = st.inotify.get_or_insert_with(|| match Inotify::init() {
            Ok(i) => Some(i),
            Err(e) => {
                tracing::warn!(error = %e, "inotify unavailable: case-insensitive searches list the directory each time");
                None
            }
        });
        let Some(inotify) = inotify else { return None };
        // The descriptor's magic link reaches exactly its directory, whatever its path is now.
        let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
        let mask =
            WatchMask::CREATE | WatchMask::DELETE | WatchMask::MOVED_FROM | WatchMask::MOVED_TO | WatchMask::ONLYDIR;
        let wd = match inotify.watches().add(&path, mask) {
            Ok(wd) => wd,
            Err(e) => {
                tracing::debug!(error = %e, "cannot follow a directory for case-insensitive searches");
                return None;
            }
        };
        drop(fd);
        if st.index.is_watching(&wd) {
            return None;
        }
        let (generation, gone) = st.index.follow(dir, wd);
        st.remove(gone);
        Some(generation)
    }

    /// `names`: the entries of `dir`, listed after its following `generation` began (see
    /// [`LocalFoldedNames::follow`]). Applies the changes made meanwhile, keeps the result and
    /// answers the entry that folds like `name`.
    pub fn listed(&self, dir: &FileId, generation: u64, names: FoldedNames, name: &str) -> Option<Vec<u8>> {
        // Forgotten meanwhile (memory bound, overflow): the listing itself is as fresh.
        let listed = names.find(name).map(<[u8]>::to_vec);
        let mut st = self.state();
        st.drain();
        let gone = st.index.listed(dir, generation, names);
        st.remove(gone);
        match st.index.find(dir, name) {
            Lookup::Known(found) => found,
            _ => listed,
        }
    }

    /// Counts one listing made for a case-insensitive search.
    pub fn count_listing(&self) {
        self.listings.fetch_add(1, Ordering::Relaxed);
    }

    /// Listings made for case-insensitive searches so far (tests, diagnostics).
    pub fn listings(&self) -> u64 {
        self.listings.load(Ordering::Relaxed)
    }

    /// Directories followed now (tests, diagnostics).
    pub fn followed(&self) -> usize {
        self.state().index.len()
    }
}

impl State {
    /// Applies every queued event.
    fn drain(&mut self) {
        let Some(Some(inotify)) = &mut self.inotify else { return };
        loop {
            let (batch, failed) = match inotify.read_events(&mut self.buf) {
                Ok(events) => (events.filter_map(name_event).collect(), false),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::warn!(error = %e, "inotify read failed: case-insensitive searches list again");
                    (vec![NameEvent::Overflow], true)
                }
            };
            for wd in self.index.apply(batch) {
                let _ = inotify.watches().remove(wd);
            }
            if failed {
                break;
            }
        }
    }

    /// Removes the watches of directories no longer followed.
    fn remove(&mut self, gone: Vec<WatchDescriptor>) {
        if let Some(Some(inotify)) = &mut self.inotify {
            for wd in gone {
                let _ = inotify.watches().remove(wd);
            }
        }
    }
}

/// The meaning of one inotify event for a followed directory's names.
fn name_event(e: inotify::Event<&std::ffi::OsStr>) -> Option<NameEvent<WatchDescriptor>> {
    let m = e.mask;
    if m.contains(EventMask::Q_OVERFLOW) {
        return Some(NameEvent::Overflow);
    }
    if m.intersects(EventMask::IGNORED | EventMask::UNMOUNT) {
        return Some(NameEvent::Ended(e.wd));
    }
    let name = e.name?.as_bytes().to_vec();
    if m.intersects(EventMask::CREATE | EventMask::MOVED_TO) {
        Some(NameEvent::Added(e.wd, name))
    } else if m.contains(EventMask::DELETE) {
        Some(NameEvent::Removed(e.wd, name))
    } else if m.contains(EventMask::MOVED_FROM) {
        Some(NameEvent::MovedOut(e.wd))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::vfs::posix::{PosixBackend, PosixOptions};
    use crate::vfs::{CreateHow, Credentials, Namespace, SetAttr, VfsError};

    fn ns(dir: &std::path::Path) -> Namespace {
        Namespace::new(Arc::new(PosixBackend::open(dir, PosixOptions::new("smb")).unwrap()))
    }

    #[tokio::test]
    async fn changes_made_behind_the_namespace_are_seen_at_once() {
        let tmp = tempfile::tempdir().unwrap();
        let ns = ns(tmp.path());
        let (me, root) = (Credentials::root(), ns.root());
        std::fs::write(tmp.path().join("Report.TXT"), b"r").unwrap();
        let (real, id, _) = ns.lookup_nocase(&me, root, "report.txt").await.unwrap();
        assert_eq!(real, b"Report.TXT");
        assert_eq!(id, ns.lookup(&me, root, b"Report.TXT").await.unwrap().0);
        assert_eq!(ns.lookup_nocase(&me, root, "nothing").await.unwrap_err(), VfsError::NotFound);
        assert_eq!(ns.remembered_folded_dirs(), 1, "remembered at once, no settling");
        assert_eq!(ns.nocase_listings(), 1);
        // Made and removed by a local program, with no pause: each seen by the next search,
        // which does not list the directory again.
        let p = |n: &str| tmp.path().join(n);
        std::fs::write(p("Other"), b"o").unwrap();
        assert_eq!(ns.find_nocase(&me, root, "OTHER").await.unwrap().as_deref(), Some(&b"Other"[..]));
        std::fs::remove_file(p("Other")).unwrap();
        assert_eq!(ns.find_nocase(&me, root, "other").await.unwrap(), None);
        std::fs::create_dir(p("Sub")).unwrap();
        assert_eq!(ns.find_nocase(&me, root, "SUB").await.unwrap().as_deref(), Some(&b"Sub"[..]));
        assert_eq!(ns.nocase_listings(), 1);
        // Renamed: seen too, by listing the directory once more.
        std::fs::rename(p("Report.TXT"), p("rePORT.txt")).unwrap();
        assert_eq!(ns.find_nocase(&me, root, "REPORT.TXT").await.unwrap().as_deref(), Some(&b"rePORT.txt"[..]));
        assert_eq!(ns.find_nocase(&me, root, "other").await.unwrap(), None);
        assert_eq!(ns.nocase_listings(), 2);
        std::fs::rename(p("rePORT.txt"), p("Sub/Moved.txt")).unwrap();
        assert_eq!(ns.find_nocase(&me, root, "report.txt").await.unwrap(), None, "moved out");
        let (sub, _) = ns.lookup_nocase(&me, root, "sub").await.map(|(_, id, a)| (id, a)).unwrap();
        assert_eq!(ns.find_nocase(&me, sub, "MOVED.TXT").await.unwrap().as_deref(), Some(&b"Moved.txt"[..]));
        assert_eq!(ns.nocase_listings(), 4);
        assert_eq!(ns.remembered_folded_dirs(), 2);
        // Two names exchanged (renameat2 RENAME_EXCHANGE): both stay.
        std::fs::write(p("Sub/Other.txt"), b"").unwrap();
        let (a, b) = (
            std::ffi::CString::new(p("Sub/Moved.txt").into_os_string().into_encoded_bytes()).unwrap(),
            std::ffi::CString::new(p("Sub/Other.txt").into_os_string().into_encoded_bytes()).unwrap(),
        );
        // SAFETY: two valid NUL-terminated paths.
        let r =
            unsafe { libc::renameat2(libc::AT_FDCWD, a.as_ptr(), libc::AT_FDCWD, b.as_ptr(), libc::RENAME_EXCHANGE) };
        assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
        assert_eq!(ns.find_nocase(&me, sub, "moved.TXT").await.unwrap().as_deref(), Some(&b"Moved.txt"[..]));
        assert_eq!(ns.find_nocase(&me, sub, "other.TXT").await.unwrap().as_deref(), Some(&b"Other.txt"[..]));
        // A removed directory (its watch ends once nothing holds it open) answers nothing.
        std::fs::remove_dir_all(p("Sub")).unwrap();
        assert_eq!(ns.find_nocase(&me, root, "sub").await.unwrap(), None);
        let gone = ns.find_nocase(&me, sub, "moved.txt").await;
        assert!(matches!(gone, Ok(None) | Err(VfsError::Stale)), "{gone:?}");
        assert_eq!(ns.nocase_listings(), 5, "the exchange listed Sub again; removals list nothing");
    }

    #[tokio::test]
    async fn a_folder_filled_through_the_namespace_is_listed_once() {
        let tmp = tempfile::tempdir().unwrap();
        let ns = ns(tmp.path());
        let other = self::ns(tmp.path());
        let (me, root) = (Credentials::root(), ns.root());
        let (dir, _) = ns.mkdir(&me, root, b"fill", 0o755).await.unwrap();
        let how = || CreateHow::Guarded(SetAttr::default());
        // As an SMB CREATE of a new name does: search for another case, then create.
        for i in 0..2000 {
            let name = format!("File{i:04}.txt");
            assert_eq!(ns.find_nocase(&me, dir, &name.to_uppercase()).await.unwrap(), None, "{name}");
            ns.create(&me, dir, name.as_bytes(), 0o644, how()).await.unwrap();
            if i % 250 == 0 {
                // Someone else adds a name right after ours: another namespace on the same
                // folder, and a local program.
                let (o, _) = other.lookup(&me, other.root(), b"fill").await.unwrap();
                other.create(&me, o, format!("Theirs{i}").as_bytes(), 0o644, how()).await.unwrap();
                std::fs::write(tmp.path().join(format!("fill/Local{i}")), b"").unwrap();
                let theirs = ns.find_nocase(&me, dir, &format!("THEIRS{i}")).await.unwrap();
                assert_eq!(theirs, Some(format!("Theirs{i}").into_bytes()));
                let local = ns.find_nocase(&me, dir, &format!("local{i}")).await.unwrap();
                assert_eq!(local, Some(format!("Local{i}").into_bytes()));
            }
        }
        for i in (0..2000).step_by(97) {
            let found = ns.find_nocase(&me, dir, &format!("file{i:04}.TXT")).await.unwrap();
            assert_eq!(found, Some(format!("File{i:04}.txt").into_bytes()));
        }
        assert_eq!(ns.nocase_listings(), 1, "the folder was listed once, not once per file");
        ns.remove(&me, dir, b"File0001.txt", None).await.unwrap();
        assert_eq!(ns.find_nocase(&me, dir, "FILE0001.TXT").await.unwrap(), None);
        assert_eq!(ns.nocase_listings(), 1);
        ns.rename(&me, dir, b"File0002.txt", dir, b"FILE0002.TXT", None).await.unwrap();
        assert_eq!(ns.find_nocase(&me, dir, "file0002.txt").await.unwrap().as_deref(), Some(&b"FILE0002.TXT"[..]));
        assert_eq!(ns.nocase_listings(), 2, "a rename costs one listing more");
    }

    #[tokio::test]
    async fn a_directory_being_filled_is_searched_page_by_page() {
        // The first search lists more than one page of 4096 entries.
        let tmp = tempfile::tempdir().unwrap();
        let ns = ns(tmp.path());
        let (me, root) = (Credentials::root(), ns.root());
        for i in 0..5000 {
            std::fs::write(tmp.path().join(format!("f{i:05}")), b"").unwrap();
        }
        std::fs::write(tmp.path().join("Late.Name"), b"").unwrap();
        assert_eq!(ns.find_nocase(&me, root, "LATE.name").await.unwrap().as_deref(), Some(&b"Late.Name"[..]));
        assert_eq!(ns.find_nocase(&me, root, "F04999").await.unwrap().as_deref(), Some(&b"f04999"[..]));
        assert_eq!(ns.find_nocase(&me, root, "absent").await.unwrap(), None);
    }
}
