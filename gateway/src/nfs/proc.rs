//! The NFSv3 procedures (RFC 1813 section 3.3), one method each, named for the procedure.
//! Each turns decoded arguments into namespace calls and appends its result to the reply.

use nfs3_types::nfs3::*;
use nfs3_types::xdr_codec::{Opaque, Pack, Void};

use super::args::{CreateMode, DirOp, MknodData, NfsArgs, Sattr, StableHow, MAX_IO};
use super::attr::{fattr, post_op, set_attr, status, wcc};
use super::budget::Reservation;
use super::dirlist::{self, EntryList};
use super::handle::HandleCodec;
use super::server::{NfsServer, Request};
use crate::vfs::changes::what;
use crate::vfs::{access, Attr, CreateHow, FileId, ReadData, ReadDir, SpecialFile, Stability};

/// The change-notification bits of an NFS SETATTR (what SMB watchers filter on).
fn changed_bits(s: &crate::vfs::SetAttr) -> u32 {
    let mut bits = 0;
    if s.size.is_some() {
        bits |= what::SIZE | what::LAST_WRITE;
    }
    if s.mode.is_some() {
        bits |= what::ATTRIBUTES | what::SECURITY;
    }
    if s.uid.is_some() || s.gid.is_some() {
        bits |= what::SECURITY;
    }
    if !matches!(s.mtime, crate::vfs::SetTime::DontChange) {
        bits |= what::LAST_WRITE;
    }
    if !matches!(s.atime, crate::vfs::SetTime::DontChange) {
        bits |= what::LAST_ACCESS;
    }
    bits
}

type R<T> = Result<T, nfsstat3>;

/// Appends `v` to the reply being built.
fn put<T: Pack>(out: &mut Vec<u8>, v: &T) {
    v.pack(out).expect("packing into a Vec cannot fail");
}

/// Appends a procedure's result: `ok`, or the status and what `fail` gives.
fn res<T: Pack, E: Pack>(out: &mut Vec<u8>, r: R<T>, fail: impl FnOnce() -> E) {
    match r {
        Ok(ok) => put(out, &Nfs3Result::<T, E>::Ok(ok)),
        Err(s) => put(out, &Nfs3Result::<T, E>::Err((s, fail()))),
    }
}

fn fh(h: Vec<u8>) -> nfs_fh3 {
    nfs_fh3 { data: Opaque::owned(h) }
}

impl NfsServer {
    /// Runs one decoded NFSv3 call and appends its result to `out`; a READ returns its data
    /// separately, to be sent after `out`, with the budget it holds (see [`NfsServer::read`]).
    pub(super) async fn nfs3(
        &self,
        req: &Request,
        args: NfsArgs<'_>,
        out: &mut Vec<u8>,
    ) -> Option<(ReadData, Option<Reservation>)> {
        match args {
            NfsArgs::Null => {}
            NfsArgs::Getattr { fh } => self.getattr(fh, out).await,
            NfsArgs::Setattr { fh, set, guard } => self.setattr(req, fh, set, guard, out).await,
            NfsArgs::Lookup(at) => self.lookup(req, at, out).await,
            NfsArgs::Access { fh, mask } => self.access(req, fh, mask, out).await,
            NfsArgs::Readlink { fh } => self.readlink(req, fh, out).await,
            NfsArgs::Read { fh, offset, count } => return self.read(req, fh, offset, count, out).await,
            NfsArgs::Write { fh, offset, stable, data } => self.write(req, fh, offset, stable, data, out).await,
            NfsArgs::Create { at, how } => self.create(req, at, how, out).await,
            NfsArgs::Mkdir { at, set } => self.mkdir(req, at, set, out).await,
            NfsArgs::Symlink { at, target, .. } => self.symlink(req, at, target, out).await,
            NfsArgs::Mknod { at, what } => self.mknod(req, at, what, out).await,
            NfsArgs::Remove(at) => self.remove(req, at, false, out).await,
            NfsArgs::Rmdir(at) => self.remove(req, at, true, out).await,
            NfsArgs::Rename { from, to } => self.rename(req, from, to, out).await,
            NfsArgs::Link { fh, at } => self.link(req, fh, at, out).await,
            NfsArgs::Readdir { dir, cookie, verf, count } => self.readdir(req, dir, cookie, verf, count, out).await,
            NfsArgs::Readdirplus { dir, cookie, verf, maxcount, .. } => {
                self.readdirplus(req, dir, cookie, verf, maxcount, out).await
            }
            NfsArgs::Fsstat { fh } => self.fsstat(fh, out).await,
            NfsArgs::Fsinfo { fh } => self.fsinfo(fh, out).await,
            NfsArgs::Pathconf { fh } => self.pathconf(fh, out).await,
            NfsArgs::Commit { fh, .. } => self.commit(fh, out).await,
        }
        None
    }

    fn writable(&self) -> R<()> {
        if self.policy.read_only {
            Err(nfsstat3::NFS3ERR_ROFS)
        } else {
            Ok(())
        }
    }

    async fn attr_of(&self, id: FileId) -> Option<Attr> {
        self.ns.getattr(id).await.ok()
    }

    async fn getattr(&self, h: &[u8], out: &mut Vec<u8>) {
        let r: R<GETATTR3resok> = async {
            let id = self.id(h)?;
            let a = self.ns.getattr(id).await.map_err(status)?;
            Ok(GETATTR3resok { obj_attributes: fattr(&a) })
        }
        .await;
        res(out, r, || Void)
    }

    async fn setattr(&self, req: &Request, h: &[u8], set: Sattr, guard: Option<(u32, u32)>, out: &mut Vec<u8>) {
        let mut before = None;
        let r: R<SETATTR3resok> = async {
            let id = self.id(h)?;
            let pre = self.ns.getattr(id).await.map_err(status)?;
            before = Some(pre);
            self.writable()?;
            if let Some((s, ns)) = guard {
                let c = super::attr::time(pre.ctime);
                if (c.seconds, c.nseconds) != (s, ns) {
                    return Err(nfsstat3::NFS3ERR_NOT_SYNC);
                }
            }
            if set.size.is_some() && pre.ftype == crate::vfs::FileType::Regular {
                self.sharing.may_resize(id).await?;
            }
            let asked = set_attr(&set);
            let after = self.ns.setattr(&req.cred, id, asked).await.map_err(status)?;
            // SMB clients watching the file's directory see the change (CHANGE_NOTIFY).
            self.ns.modified_by_id(id, changed_bits(&asked)).await;
            Ok(SETATTR3resok { obj_wcc: wcc(Some(&pre), Some(&after)) })
        }
        .await;
        res(out, r, || SETATTR3resfail { obj_wcc: wcc(before.as_ref(), None) })
    }

    async fn lookup(&self, req: &Request, at: DirOp<'_>, out: &mut Vec<u8>) {
        let mut dir_attr = None;
        let r: R<LOOKUP3resok> = async {
            let dir = self.id(at.dir)?;
            let found = self.ns.lookup(&req.cred, dir, at.name).await;
            dir_attr = self.attr_of(dir).await;
            let (id, a) = found.map_err(status)?;
            Ok(LOOKUP3resok {
                object: fh(self.handles.encode(&id)),
                obj_attributes: post_op(Some(&a)),
                dir_attributes: post_op(dir_attr.as_ref()),
            })
        }
        .await;
        res(out, r, || LOOKUP3resfail { dir_attributes: post_op(dir_attr.as_ref()) })
    }

    async fn access(&self, req: &Request, h: &[u8], mask: u32, out: &mut Vec<u8>) {
        let r: R<ACCESS3resok> = async {
            let id = self.id(h)?;
            let a = self.ns.getattr(id).await.map_err(status)?;
            let mut granted = access::granted(&a, &req.cred, mask);
            if self.policy.read_only {
                granted &= !(access::MODIFY | access::EXTEND | access::DELETE);
            }
            Ok(ACCESS3resok { obj_attributes: post_op(Some(&a)), access: granted })
        }
        .await;
        res(out, r, ACCESS3resfail::default)
    }

    async fn readlink(&self, req: &Request, h: &[u8], out: &mut Vec<u8>) {
        let r: R<READLINK3resok<'static>> = async {
            let id = self.id(h)?;
            let target = self.ns.readlink(&req.cred, id).await.map_err(status)?;
            let a = self.attr_of(id).await;
            Ok(READLINK3resok { symlink_attributes: post_op(a.as_ref()), data: nfspath3(Opaque::owned(target)) })
        }
        .await;
        res(out, r, READLINK3resfail::default)
    }

    /// READ: the result's head in `out`; the data returned for the caller to send after `out`
    /// (never copied into it: from memory as it is, or spliced from the file), followed
    /// by its XDR padding. The reply's memory is reserved only once the handle is known good, and shrunk to
    /// what the reply keeps once the backend (which checks the caller's permission) answered:
    /// nothing for a file slice spliced from the page cache, nothing for an error.
    ///
    /// Without [`NfsServer::zero_copy_reads`] the data is always read into memory: a spliced
    /// reply's pages are the file's until the client has them, so a truncate meanwhile zeroes
    /// data the reply already promised; a copy is taken once and stays what was read.
    async fn read(
        &self,
        req: &Request,
        h: &[u8],
        offset: u64,
        count: u32,
        out: &mut Vec<u8>,
    ) -> Option<(ReadData, Option<Reservation>)> {
        let id = match self.id(h) {
            Ok(id) => id,
            Err(s) => {
                res::<READ3resok<'static>, _>(out, Err(s), READ3resfail::default);
                return None;
            }
        };
        let count = count.min(MAX_IO);
        if let Err(s) = self.sharing.io(id, offset, u64::from(count), false).await {
            res::<READ3resok<'static>, _>(out, Err(s), READ3resfail::default);
            return None;
        }
        let mut hold = self.budget.reply(req.client, count as usize).await;
        let read = if self.zero_copy_reads {
            self.ns.read_slice(&req.cred, id, offset, count).await
        } else {
            self.ns.read_copied(&req.cred, id, offset, count).await
        };
        match read {
            Ok((data, eof, a)) => {
                if let Some(h) = &mut hold {
                    h.shrink_to(match &data {
                        ReadData::Bytes(b) => b.len(),
                        ReadData::File(_) => 0,
                    });
                }
                let n = data.len() as u32;
                put(out, &nfsstat3::NFS3_OK);
                put(out, &post_op(Some(&a)));
                put(out, &n);
                put(out, &eof);
                put(out, &n);
                Some((data, hold))
            }
            Err(e) => {
                res::<READ3resok<'static>, _>(out, Err(status(e)), READ3resfail::default);
                None
            }
        }
    }

    async fn write(&self, req: &Request, h: &[u8], offset: u64, stable: StableHow, data: &[u8], out: &mut Vec<u8>) {
        let r: R<WRITE3resok> = async {
            let id = self.id(h)?;
            self.writable()?;
            self.sharing.io(id, offset, data.len() as u64, true).await?;
            let how = match stable {
                StableHow::Unstable => Stability::Unstable,
                StableHow::DataSync => Stability::DataSync,
                StableHow::FileSync => Stability::FileSync,
            };
            let (n, got, a) = self.ns.write_from(&req.cred, id, offset, data, how).await.map_err(status)?;
            // SMB clients watching the file's directory see the write (at most once a second).
            self.ns.modified_by_id(id, what::SIZE | what::LAST_WRITE).await;
            let committed = match got {
                Stability::Unstable => stable_how::UNSTABLE,
                Stability::DataSync => stable_how::DATA_SYNC,
                Stability::FileSync => stable_how::FILE_SYNC,
            };
            Ok(WRITE3resok {
                // No attributes when the backend would have to wait for them (GlusterFS after
                // an UNSTABLE write): they are optional, and a client that wants them asks.
                file_wcc: wcc(None, a.as_ref()),
                count: n,
                committed,
                verf: writeverf3(self.write_verifier),
            })
        }
        .await;
        res(out, r, WRITE3resfail::default)
    }

    /// Common tail of CREATE, MKDIR, SYMLINK and MKNOD: the new object's handle and attributes plus the
    /// directory's after-attributes.
    async fn made(
        &self,
        dir: Option<FileId>,
        made: R<(FileId, Attr)>,
    ) -> (R<(post_op_fh3, post_op_attr, wcc_data)>, wcc_data) {
        let dir_after = match dir {
            Some(d) => self.attr_of(d).await,
            None => None,
        };
        let dir_wcc = || wcc(None, dir_after.as_ref());
        match made {
            Ok((id, a)) => {
                (Ok((Nfs3Option::Some(fh(self.handles.encode(&id))), post_op(Some(&a)), dir_wcc())), dir_wcc())
            }
            Err(s) => (Err(s), dir_wcc()),
        }
    }

    async fn create(&self, req: &Request, at: DirOp<'_>, how: CreateMode, out: &mut Vec<u8>) {
        let dir = self.id(at.dir).ok();
        let made = async {
            let dir = self.id(at.dir)?;
            self.writable()?;
            let (mode, how) = match how {
                CreateMode::Unchecked(s) => (s.mode.unwrap_or(0o644), CreateHow::Unchecked(without_mode(&s))),
                CreateMode::Guarded(s) => (s.mode.unwrap_or(0o644), CreateHow::Guarded(without_mode(&s))),
                CreateMode::Exclusive(v) => (0o644, CreateHow::Exclusive(v)),
            };
            self.ns.create(&req.cred, dir, at.name, mode, how).await.map_err(status)
        }
        .await;
        let (r, fail) = self.made(dir, made).await;
        let r = r.map(|(obj, obj_attributes, dir_wcc)| CREATE3resok { obj, obj_attributes, dir_wcc });
        res(out, r, || CREATE3resfail { dir_wcc: fail })
    }

    async fn mkdir(&self, req: &Request, at: DirOp<'_>, set: Sattr, out: &mut Vec<u8>) {
        let dir = self.id(at.dir).ok();
        let made = async {
            let dir = self.id(at.dir)?;
            self.writable()?;
            self.ns.mkdir(&req.cred, dir, at.name, set.mode.unwrap_or(0o755)).await.map_err(status)
        }
        .await;
        let (r, fail) = self.made(dir, made).await;
        let r = r.map(|(obj, obj_attributes, dir_wcc)| MKDIR3resok { obj, obj_attributes, dir_wcc });
        res(out, r, || MKDIR3resfail { dir_wcc: fail })
    }

    async fn symlink(&self, req: &Request, at: DirOp<'_>, target: &[u8], out: &mut Vec<u8>) {
        let dir = self.id(at.dir).ok();
        let made = async {
            let dir = self.id(at.dir)?;
            self.writable()?;
            self.ns.symlink(&req.cred, dir, at.name, target).await.map_err(status)
        }
        .await;
        let (r, fail) = self.made(dir, made).await;
        let r = r.map(|(obj, obj_attributes, dir_wcc)| SYMLINK3resok { obj, obj_attributes, dir_wcc });
        res(out, r, || SYMLINK3resfail { dir_wcc: fail })
    }

    /// MKNOD: a fifo, a socket's name or (for a non-squashed root only: NFS3ERR_PERM otherwise)
    /// a device node, with the requested mode; other attributes (owner, times) are applied
    /// afterwards as for CREATE.
    async fn mknod(&self, req: &Request, at: DirOp<'_>, what: MknodData, out: &mut Vec<u8>) {
        let dir = self.id(at.dir).ok();
        let made = async {
            let dir = self.id(at.dir)?;
            self.writable()?;
            let (kind, set) = match what {
                MknodData::CharDevice(s, (major, minor)) => (SpecialFile::CharDevice(major, minor), s),
                MknodData::BlockDevice(s, (major, minor)) => (SpecialFile::BlockDevice(major, minor), s),
                MknodData::Socket(s) => (SpecialFile::Socket, s),
                MknodData::Fifo(s) => (SpecialFile::Fifo, s),
                MknodData::BadType(_) => return Err(nfsstat3::NFS3ERR_BADTYPE),
            };
            let mode = set.mode.unwrap_or(0o644);
            let (id, attr) = self.ns.mknod(&req.cred, dir, at.name, kind, mode).await.map_err(status)?;
            // A special file has no size to set; owner and times as the client asked.
            let mut rest = without_mode(&set);
            rest.size = None;
            if rest.is_empty() {
                return Ok((id, attr));
            }
            let attr = self.ns.setattr(&req.cred, id, rest).await.map_err(status)?;
            Ok((id, attr))
        }
        .await;
        let (r, fail) = self.made(dir, made).await;
        let r = r.map(|(obj, obj_attributes, dir_wcc)| MKNOD3resok { obj, obj_attributes, dir_wcc });
        res(out, r, || MKNOD3resfail { dir_wcc: fail })
    }

    async fn remove(&self, req: &Request, at: DirOp<'_>, dir_only: bool, out: &mut Vec<u8>) {
        let dir = self.id(at.dir).ok();
        let r: R<()> = async {
            let dir = self.id(at.dir)?;
            self.writable()?;
            let target = self.ns.lookup(&req.cred, dir, at.name).await.ok().map(|(t, _)| t);
            if let Some(t) = target {
                self.sharing.may_remove(t).await?;
            }
            if dir_only {
                self.ns.rmdir(&req.cred, dir, at.name).await.map_err(status)
            } else {
                self.ns.remove(&req.cred, dir, at.name, target).await.map_err(status)
            }
        }
        .await;
        let after = match dir {
            Some(d) => self.attr_of(d).await,
            None => None,
        };
        if dir_only {
            let r = r.map(|()| RMDIR3resok { dir_wcc: wcc(None, after.as_ref()) });
            res(out, r, || RMDIR3resfail { dir_wcc: wcc(None, after.as_ref()) })
        } else {
            let r = r.map(|()| REMOVE3resok { dir_wcc: wcc(None, after.as_ref()) });
            res(out, r, || REMOVE3resfail { dir_wcc: wcc(None, after.as_ref()) })
        }
    }

    async fn rename(&self, req: &Request, from: DirOp<'_>, to: DirOp<'_>, out: &mut Vec<u8>) {
        let (fd, td) = (self.id(from.dir).ok(), self.id(to.dir).ok());
        let r: R<()> = async {
            let (fd, td) = (self.id(from.dir)?, self.id(to.dir)?);
            self.writable()?;
            // The file renamed, and the one the new name replaces, must both allow it.
            let (mut renamed, mut replaced) = (None, None);
            for (d, n, source) in [(fd, from.name, true), (td, to.name, false)] {
                if let Ok((target, _)) = self.ns.lookup(&req.cred, d, n).await {
                    self.sharing.may_remove(target).await?;
                    *(if source { &mut renamed } else { &mut replaced }) = Some(target);
                }
            }
            self.ns.rename(&req.cred, fd, from.name, td, to.name, replaced).await.map_err(status)?;
            // SMB opens of the file on any node act on its new name from now on.
            if let Some(file) = renamed {
                self.sharing.renamed(file, td, to.name).await;
            }
            Ok(())
        }
        .await;
        let fa = match fd {
            Some(d) => self.attr_of(d).await,
            None => None,
        };
        let ta = match td {
            Some(d) => self.attr_of(d).await,
            None => None,
        };
        let r = r.map(|()| RENAME3resok { fromdir_wcc: wcc(None, fa.as_ref()), todir_wcc: wcc(None, ta.as_ref()) });
        res(out, r, || RENAME3resfail { fromdir_wcc: wcc(None, fa.as_ref()), todir_wcc: wcc(None, ta.as_ref()) })
    }

    async fn link(&self, req: &Request, h: &[u8], at: DirOp<'_>, out: &mut Vec<u8>) {
        let dir = self.id(at.dir).ok();
        let r: R<Attr> = async {
            let (id, dir) = (self.id(h)?, self.id(at.dir)?);
            self.writable()?;
            self.ns.link(&req.cred, id, dir, at.name).await.map_err(status)
        }
        .await;
        let after = match dir {
            Some(d) => self.attr_of(d).await,
            None => None,
        };
        match r {
            Ok(a) => put(
                out,
                &LINK3res::Ok(LINK3resok {
                    file_attributes: post_op(Some(&a)),
                    linkdir_wcc: wcc(None, after.as_ref()),
                }),
            ),
            Err(s) => put(
                out,
                &LINK3res::Err((
                    s,
                    LINK3resfail { file_attributes: Nfs3Option::None, linkdir_wcc: wcc(None, after.as_ref()) },
                )),
            ),
        }
    }

    fn check_cookie(&self, dir: &FileId, cookie: u64, verf: [u8; 8]) -> R<cookieverf3> {
        let ours = self.ns.cookie_verifier(dir).to_be_bytes();
        if cookie != 0 && verf != [0; 8] && verf != ours {
            return Err(nfsstat3::NFS3ERR_BAD_COOKIE);
        }
        Ok(cookieverf3(ours))
    }

    /// The directory, cookie verifier, page and directory attributes of a READDIR(PLUS) call.
    async fn page(
        &self,
        req: &Request,
        h: &[u8],
        cookie: u64,
        verf: [u8; 8],
        want: impl FnOnce(&FileId) -> usize,
        plus: bool,
    ) -> R<(cookieverf3, ReadDir, Option<Attr>)> {
        let dir = self.id(h)?;
        let cookieverf = self.check_cookie(&dir, cookie, verf)?;
        let page = self.ns.readdir(&req.cred, dir, cookie, want(&dir), plus).await.map_err(status)?;
        let attrs = match page.dir_attr {
            Some(a) => Some(a),
            None => self.attr_of(dir).await,
        };
        Ok((cookieverf, page, attrs))
    }

    async fn readdir(&self, req: &Request, h: &[u8], cookie: u64, verf: [u8; 8], count: u32, out: &mut Vec<u8>) {
        let budget = (count as usize).min(MAX_IO as usize).saturating_sub(dirlist::OVERHEAD);
        // An entry with a name of up to 12 bytes takes 36 bytes.
        let page = self.page(req, h, cookie, verf, |_| (budget / 36).clamp(1, 8192), false).await;
        let (cookieverf, page, attrs) = match page {
            Ok(p) => p,
            Err(s) => return res::<READDIR3resok<'static>, _>(out, Err(s), READDIR3resfail::default),
        };
        let at = out.len();
        put(out, &nfsstat3::NFS3_OK);
        put(out, &post_op(attrs.as_ref()));
        put(out, &cookieverf);
        let mut list = EntryList::new(out, budget);
        for e in &page.entries {
            if !list.push(e.fileid, &e.name, e.cookie) {
                break;
            }
        }
        finish_list(list, at, page.entries.len(), page.eof, || READDIR3resfail {
            dir_attributes: post_op(attrs.as_ref()),
        });
    }

    async fn readdirplus(&self, req: &Request, h: &[u8], cookie: u64, verf: [u8; 8], maxcount: u32, out: &mut Vec<u8>) {
        let budget = (maxcount as usize).min(MAX_IO as usize).saturating_sub(dirlist::OVERHEAD);
        // An entry with a name of up to 12 bytes, attributes and a handle as long as the
        // directory's: no more are read (and stat'ed) than will probably fit.
        let want = |dir: &FileId| (budget / (36 + 96 + HandleCodec::len_of(dir).div_ceil(4) * 4)).clamp(1, 4096);
        let page = self.page(req, h, cookie, verf, want, true).await;
        let (cookieverf, page, attrs) = match page {
            Ok(p) => p,
            Err(s) => return res::<READDIRPLUS3resok<'static>, _>(out, Err(s), READDIRPLUS3resfail::default),
        };
        let at = out.len();
        put(out, &nfsstat3::NFS3_OK);
        put(out, &post_op(attrs.as_ref()));
        put(out, &cookieverf);
        let mut list = EntryList::new(out, budget);
        for e in &page.entries {
            let plus = e.plus.as_ref().map(|(id, a)| (id, a));
            if !list.push_plus(e.fileid, &e.name, e.cookie, plus, &self.handles) {
                break;
            }
        }
        finish_list(list, at, page.entries.len(), page.eof, || READDIRPLUS3resfail {
            dir_attributes: post_op(attrs.as_ref()),
        });
    }

    async fn fsstat(&self, h: &[u8], out: &mut Vec<u8>) {
        let r: R<FSSTAT3resok> = async {
            let id = self.id(h)?;
            let st = self.ns.statfs(id).await.map_err(status)?;
            let a = self.attr_of(id).await;
            Ok(FSSTAT3resok {
                obj_attributes: post_op(a.as_ref()),
                tbytes: st.total_bytes,
                fbytes: st.free_bytes,
                abytes: st.avail_bytes,
                tfiles: st.total_files,
                ffiles: st.free_files,
                afiles: st.avail_files,
                invarsec: 0,
            })
        }
        .await;
        res(out, r, FSSTAT3resfail::default)
    }

    async fn fsinfo(&self, h: &[u8], out: &mut Vec<u8>) {
        let r: R<FSINFO3resok> = async {
            let id = self.id(h)?;
            let a = self.ns.getattr(id).await.map_err(status)?;
            Ok(FSINFO3resok {
                obj_attributes: post_op(Some(&a)),
                rtmax: MAX_IO,
                rtpref: MAX_IO,
                rtmult: 4096,
                wtmax: MAX_IO,
                wtpref: MAX_IO,
                wtmult: 4096,
                dtpref: 64 * 1024,
                maxfilesize: i64::MAX as u64,
                time_delta: nfstime3 { seconds: 0, nseconds: 1 },
                properties: FSF3_LINK | FSF3_SYMLINK | FSF3_HOMOGENEOUS | FSF3_CANSETTIME,
            })
        }
        .await;
        res(out, r, FSINFO3resfail::default)
    }

    async fn pathconf(&self, h: &[u8], out: &mut Vec<u8>) {
        let r: R<PATHCONF3resok> = async {
            let id = self.id(h)?;
            let a = self.ns.getattr(id).await.map_err(status)?;
            Ok(PATHCONF3resok {
                obj_attributes: post_op(Some(&a)),
                linkmax: 65000,
                name_max: 255,
                no_trunc: true,
                chown_restricted: true,
                case_insensitive: false,
                case_preserving: true,
            })
        }
        .await;
        res(out, r, PATHCONF3resfail::default)
    }

    async fn commit(&self, h: &[u8], out: &mut Vec<u8>) {
        let r: R<COMMIT3resok> = async {
            let id = self.id(h)?;
            // The sync first (the backend checks that the file is still there): on GlusterFS a
            // stat before it would wait for the same flush, and one after it is answered from
            // the attributes the sync brought back. The attributes before are optional.
            self.ns.fsync(id).await.map_err(status)?;
            // A file deleted meanwhile: STALE (its data went nowhere a client can read).
            let after = self.ns.getattr(id).await.map_err(status)?;
            Ok(COMMIT3resok { file_wcc: wcc(None, Some(&after)), verf: writeverf3(self.write_verifier) })
        }
        .await;
        res(out, r, || COMMIT3resfail { file_wcc: wcc_data::default() })
    }
}

/// Ends a READDIR(PLUS) entry list begun at `at` with `total` entries read: eof only when
/// every entry fitted; TOOSMALL (the list replaced by the failure) when none did.
fn finish_list<E: Pack>(list: EntryList<'_>, at: usize, total: usize, eof: bool, fail: impl FnOnce() -> E) {
    let fitted = list.count();
    if fitted == 0 && total > 0 {
        let out = list.into_out();
        out.truncate(at);
        return res::<Void, E>(out, Err(nfsstat3::NFS3ERR_TOOSMALL), fail);
    }
    list.finish(eof && fitted == total);
}

/// Zero bytes that pad `n` bytes of opaque data to a multiple of 4 (XDR).
pub(super) fn xdr_pad(n: usize) -> usize {
    (4 - n % 4) % 4
}

fn without_mode(s: &Sattr) -> crate::vfs::SetAttr {
    let mut set = set_attr(s);
    set.mode = None;
    set
}
