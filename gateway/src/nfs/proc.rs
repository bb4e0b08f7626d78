//! The NFSv3 procedures (RFC 1813 section 3.3), one method each, named for the procedure.
//! Each turns decoded arguments into namespace calls and returns the packed result body.

use nfs3_types::nfs3::*;
use nfs3_types::xdr_codec::{BoundedList, Opaque, Pack, Void};

use super::args::{CreateMode, DirOp, NfsArgs, Sattr, StableHow, MAX_IO};
use super::attr::{fattr, post_op, set_attr, status, wcc};
use super::server::{NfsServer, Request};
use crate::vfs::{access, Attr, CreateHow, FileId, FileType, Stability};

type R<T> = Result<T, nfsstat3>;

/// Packs `v` into a fresh body buffer.
fn packed<T: Pack>(v: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.packed_size());
    v.pack(&mut out).expect("packing into a Vec cannot fail");
    out
}

fn res<T: Pack, E: Pack>(r: R<T>, fail: impl FnOnce() -> E) -> Vec<u8> {
    match r {
        Ok(ok) => packed(&Nfs3Result::<T, E>::Ok(ok)),
        Err(s) => packed(&Nfs3Result::<T, E>::Err((s, fail()))),
    }
}

fn fh(h: Vec<u8>) -> nfs_fh3 {
    nfs_fh3 { data: Opaque::owned(h) }
}

/// Entry size budgets of READDIR/READDIRPLUS replies: status, directory attributes, verifier,
/// list terminator and eof flag.
const READDIR_OVERHEAD: usize = 4 + 4 + 84 + 8 + 4 + 4;

impl NfsServer {
    /// Runs one decoded NFSv3 call and returns its packed result.
    pub(super) async fn nfs3(&self, req: &Request, args: NfsArgs<'_>) -> Vec<u8> {
        match args {
            NfsArgs::Null => Vec::new(),
            NfsArgs::Getattr { fh } => self.getattr(fh).await,
            NfsArgs::Setattr { fh, set, guard } => self.setattr(req, fh, set, guard).await,
            NfsArgs::Lookup(at) => self.lookup(req, at).await,
            NfsArgs::Access { fh, mask } => self.access(req, fh, mask).await,
            NfsArgs::Readlink { fh } => self.readlink(req, fh).await,
            NfsArgs::Read { fh, offset, count } => self.read_into(req, fh, offset, count, Vec::new()).await,
            NfsArgs::Write { fh, offset, stable, data } => self.write(req, fh, offset, stable, data).await,
            NfsArgs::Create { at, how } => self.create(req, at, how).await,
            NfsArgs::Mkdir { at, set } => self.mkdir(req, at, set).await,
            NfsArgs::Symlink { at, target, .. } => self.symlink(req, at, target).await,
            NfsArgs::Mknod { at, .. } => self.mknod(at).await,
            NfsArgs::Remove(at) => self.remove(req, at, false).await,
            NfsArgs::Rmdir(at) => self.remove(req, at, true).await,
            NfsArgs::Rename { from, to } => self.rename(req, from, to).await,
            NfsArgs::Link { fh, at } => self.link(req, fh, at).await,
            NfsArgs::Readdir { dir, cookie, verf, count } => self.readdir(req, dir, cookie, verf, count).await,
            NfsArgs::Readdirplus { dir, cookie, verf, maxcount, .. } => {
                self.readdirplus(req, dir, cookie, verf, maxcount).await
            }
            NfsArgs::Fsstat { fh } => self.fsstat(fh).await,
            NfsArgs::Fsinfo { fh } => self.fsinfo(fh).await,
            NfsArgs::Pathconf { fh } => self.pathconf(fh).await,
            NfsArgs::Commit { fh, .. } => self.commit(fh).await,
        }
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

    async fn getattr(&self, h: &[u8]) -> Vec<u8> {
        let r: R<GETATTR3resok> = async {
            let id = self.id(h)?;
            let a = self.ns.getattr(id).await.map_err(status)?;
            Ok(GETATTR3resok { obj_attributes: fattr(&a) })
        }
        .await;
        res(r, || Void)
    }

    async fn setattr(&self, req: &Request, h: &[u8], set: Sattr, guard: Option<(u32, u32)>) -> Vec<u8> {
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
            let after = self.ns.setattr(&req.cred, id, set_attr(&set)).await.map_err(status)?;
            Ok(SETATTR3resok { obj_wcc: wcc(Some(&pre), Some(&after)) })
        }
        .await;
        res(r, || SETATTR3resfail { obj_wcc: wcc(before.as_ref(), None) })
    }

    async fn lookup(&self, req: &Request, at: DirOp<'_>) -> Vec<u8> {
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
        res(r, || LOOKUP3resfail { dir_attributes: post_op(dir_attr.as_ref()) })
    }

    async fn access(&self, req: &Request, h: &[u8], mask: u32) -> Vec<u8> {
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
        res(r, ACCESS3resfail::default)
    }

    async fn readlink(&self, req: &Request, h: &[u8]) -> Vec<u8> {
        let r: R<READLINK3resok<'static>> = async {
            let id = self.id(h)?;
            let target = self.ns.readlink(&req.cred, id).await.map_err(status)?;
            let a = self.attr_of(id).await;
            Ok(READLINK3resok { symlink_attributes: post_op(a.as_ref()), data: nfspath3(Opaque::owned(target)) })
        }
        .await;
        res(r, READLINK3resfail::default)
    }

    /// READ, appended to the reply buffer `out` with the data read straight into it (the hot
    /// path: no intermediate copies of up to 1 MiB).
    pub(super) async fn read_into(
        &self,
        req: &Request,
        h: &[u8],
        offset: u64,
        count: u32,
        mut out: Vec<u8>,
    ) -> Vec<u8> {
        let id = match self.id(h) {
            Ok(id) => id,
            Err(s) => {
                out.extend_from_slice(&res::<READ3resok<'static>, _>(Err(s), READ3resfail::default));
                return out;
            }
        };
        // status, post_op_attr (present), count, eof, data length.
        const HEAD: usize = 4 + 4 + 84 + 4 + 4 + 4;
        let at = out.len();
        out.resize(at + HEAD, 0);
        let (mut out, r) = self.ns.read_append(&req.cred, id, offset, count.min(MAX_IO), out).await;
        match r {
            Ok((n, eof, a)) => {
                let mut head = Vec::with_capacity(HEAD);
                nfsstat3::NFS3_OK.pack(&mut head).expect("Vec");
                post_op(Some(&a)).pack(&mut head).expect("Vec");
                n.pack(&mut head).expect("Vec");
                eof.pack(&mut head).expect("Vec");
                n.pack(&mut head).expect("Vec");
                debug_assert_eq!(head.len(), HEAD);
                out[at..at + HEAD].copy_from_slice(&head);
                out.resize(out.len() + (4 - n as usize % 4) % 4, 0);
            }
            Err(e) => {
                out.truncate(at);
                out.extend_from_slice(&res::<READ3resok<'static>, _>(Err(status(e)), READ3resfail::default));
            }
        }
        out
    }

    async fn write(&self, req: &Request, h: &[u8], offset: u64, stable: StableHow, data: &[u8]) -> Vec<u8> {
        let r: R<WRITE3resok> = async {
            let id = self.id(h)?;
            self.writable()?;
            let how = match stable {
                StableHow::Unstable => Stability::Unstable,
                StableHow::DataSync => Stability::DataSync,
                StableHow::FileSync => Stability::FileSync,
            };
            let (n, got, a) = self.ns.write(&req.cred, id, offset, data.to_vec(), how).await.map_err(status)?;
            let committed = match got {
                Stability::Unstable => stable_how::UNSTABLE,
                Stability::DataSync => stable_how::DATA_SYNC,
                Stability::FileSync => stable_how::FILE_SYNC,
            };
            Ok(WRITE3resok {
                file_wcc: wcc(None, Some(&a)),
                count: n,
                committed,
                verf: writeverf3(self.write_verifier),
            })
        }
        .await;
        res(r, WRITE3resfail::default)
    }

    /// Common tail of CREATE, MKDIR and SYMLINK: the new object's handle and attributes plus the
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

    async fn create(&self, req: &Request, at: DirOp<'_>, how: CreateMode) -> Vec<u8> {
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
        res(r, || CREATE3resfail { dir_wcc: fail })
    }

    async fn mkdir(&self, req: &Request, at: DirOp<'_>, set: Sattr) -> Vec<u8> {
        let dir = self.id(at.dir).ok();
        let made = async {
            let dir = self.id(at.dir)?;
            self.writable()?;
            self.ns.mkdir(&req.cred, dir, at.name, set.mode.unwrap_or(0o755)).await.map_err(status)
        }
        .await;
        let (r, fail) = self.made(dir, made).await;
        let r = r.map(|(obj, obj_attributes, dir_wcc)| MKDIR3resok { obj, obj_attributes, dir_wcc });
        res(r, || MKDIR3resfail { dir_wcc: fail })
    }

    async fn symlink(&self, req: &Request, at: DirOp<'_>, target: &[u8]) -> Vec<u8> {
        let dir = self.id(at.dir).ok();
        let made = async {
            let dir = self.id(at.dir)?;
            self.writable()?;
            self.ns.symlink(&req.cred, dir, at.name, target).await.map_err(status)
        }
        .await;
        let (r, fail) = self.made(dir, made).await;
        let r = r.map(|(obj, obj_attributes, dir_wcc)| SYMLINK3resok { obj, obj_attributes, dir_wcc });
        res(r, || SYMLINK3resfail { dir_wcc: fail })
    }

    async fn mknod(&self, at: DirOp<'_>) -> Vec<u8> {
        let r: R<MKNOD3resok> = async {
            self.id(at.dir)?;
            self.writable()?;
            Err(nfsstat3::NFS3ERR_NOTSUPP)
        }
        .await;
        res(r, || MKNOD3resfail { dir_wcc: wcc_data::default() })
    }

    async fn remove(&self, req: &Request, at: DirOp<'_>, dir_only: bool) -> Vec<u8> {
        let dir = self.id(at.dir).ok();
        let r: R<()> = async {
            let dir = self.id(at.dir)?;
            self.writable()?;
            if dir_only {
                self.ns.rmdir(&req.cred, dir, at.name).await.map_err(status)
            } else {
                self.ns.remove(&req.cred, dir, at.name).await.map_err(status)
            }
        }
        .await;
        let after = match dir {
            Some(d) => self.attr_of(d).await,
            None => None,
        };
        if dir_only {
            let r = r.map(|()| RMDIR3resok { dir_wcc: wcc(None, after.as_ref()) });
            res(r, || RMDIR3resfail { dir_wcc: wcc(None, after.as_ref()) })
        } else {
            let r = r.map(|()| REMOVE3resok { dir_wcc: wcc(None, after.as_ref()) });
            res(r, || REMOVE3resfail { dir_wcc: wcc(None, after.as_ref()) })
        }
    }

    async fn rename(&self, req: &Request, from: DirOp<'_>, to: DirOp<'_>) -> Vec<u8> {
        let (fd, td) = (self.id(from.dir).ok(), self.id(to.dir).ok());
        let r: R<()> = async {
            let (fd, td) = (self.id(from.dir)?, self.id(to.dir)?);
            self.writable()?;
            self.ns.rename(&req.cred, fd, from.name, td, to.name).await.map_err(status)
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
        res(r, || RENAME3resfail { fromdir_wcc: wcc(None, fa.as_ref()), todir_wcc: wcc(None, ta.as_ref()) })
    }

    async fn link(&self, req: &Request, h: &[u8], at: DirOp<'_>) -> Vec<u8> {
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
            Ok(a) => packed(&LINK3res::Ok(LINK3resok {
                file_attributes: post_op(Some(&a)),
                linkdir_wcc: wcc(None, after.as_ref()),
            })),
            Err(s) => packed(&LINK3res::Err((
                s,
                LINK3resfail { file_attributes: Nfs3Option::None, linkdir_wcc: wcc(None, after.as_ref()) },
            ))),
        }
    }

    fn check_cookie(&self, dir: &FileId, cookie: u64, verf: [u8; 8]) -> R<cookieverf3> {
        let ours = self.ns.cookie_verifier(dir).to_be_bytes();
        if cookie != 0 && verf != [0; 8] && verf != ours {
            return Err(nfsstat3::NFS3ERR_BAD_COOKIE);
        }
        Ok(cookieverf3(ours))
    }

    async fn readdir(&self, req: &Request, h: &[u8], cookie: u64, verf: [u8; 8], count: u32) -> Vec<u8> {
        let r: R<READDIR3resok<'static>> = async {
            let dir = self.id(h)?;
            let cookieverf = self.check_cookie(&dir, cookie, verf)?;
            let budget = (count as usize).min(MAX_IO as usize).saturating_sub(READDIR_OVERHEAD);
            let want = (budget / 24).clamp(1, 8192);
            let page = self.ns.readdir(&req.cred, dir, cookie, want, false).await.map_err(status)?;
            let attrs = self.attr_of(dir).await;
            let total = page.entries.len();
            let mut list = BoundedList::new(budget);
            let mut fitted = 0;
            for e in page.entries {
                let entry = entry3 { fileid: e.fileid, name: filename3(Opaque::owned(e.name)), cookie: e.cookie };
                if list.try_push(entry).is_err() {
                    break;
                }
                fitted += 1;
            }
            if fitted == 0 && total > 0 {
                return Err(nfsstat3::NFS3ERR_TOOSMALL);
            }
            let eof = page.eof && fitted == total;
            Ok(READDIR3resok {
                dir_attributes: post_op(attrs.as_ref()),
                cookieverf,
                reply: dirlist3 { entries: list.into_inner(), eof },
            })
        }
        .await;
        res(r, READDIR3resfail::default)
    }

    async fn readdirplus(&self, req: &Request, h: &[u8], cookie: u64, verf: [u8; 8], maxcount: u32) -> Vec<u8> {
        let r: R<READDIRPLUS3resok<'static>> = async {
            let dir = self.id(h)?;
            let cookieverf = self.check_cookie(&dir, cookie, verf)?;
            let budget = (maxcount as usize).min(MAX_IO as usize).saturating_sub(READDIR_OVERHEAD);
            let want = (budget / 180).clamp(1, 4096);
            let page = self.ns.readdir(&req.cred, dir, cookie, want, true).await.map_err(status)?;
            let attrs = self.attr_of(dir).await;
            let total = page.entries.len();
            let mut list = BoundedList::new(budget);
            let mut fitted = 0;
            for e in page.entries {
                let (handle, attr) = match &e.plus {
                    Some((id, a)) => (Nfs3Option::Some(fh(self.handles.encode(id))), post_op(Some(a))),
                    None => (Nfs3Option::None, Nfs3Option::None),
                };
                let entry = entryplus3 {
                    fileid: e.fileid,
                    name: filename3(Opaque::owned(e.name)),
                    cookie: e.cookie,
                    name_attributes: attr,
                    name_handle: handle,
                };
                if list.try_push(entry).is_err() {
                    break;
                }
                fitted += 1;
            }
            if fitted == 0 && total > 0 {
                return Err(nfsstat3::NFS3ERR_TOOSMALL);
            }
            let eof = page.eof && fitted == total;
            Ok(READDIRPLUS3resok {
                dir_attributes: post_op(attrs.as_ref()),
                cookieverf,
                reply: dirlistplus3 { entries: list.into_inner(), eof },
            })
        }
        .await;
        res(r, READDIRPLUS3resfail::default)
    }

    async fn fsstat(&self, h: &[u8]) -> Vec<u8> {
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
        res(r, FSSTAT3resfail::default)
    }

    async fn fsinfo(&self, h: &[u8]) -> Vec<u8> {
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
        res(r, FSINFO3resfail::default)
    }

    async fn pathconf(&self, h: &[u8]) -> Vec<u8> {
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
        res(r, PATHCONF3resfail::default)
    }

    async fn commit(&self, h: &[u8]) -> Vec<u8> {
        let r: R<COMMIT3resok> = async {
            let id = self.id(h)?;
            let a = self.ns.getattr(id).await.map_err(status)?;
            if a.ftype == FileType::Regular {
                self.ns.fsync(id).await.map_err(status)?;
            }
            let after = self.attr_of(id).await;
            Ok(COMMIT3resok { file_wcc: wcc(Some(&a), after.as_ref()), verf: writeverf3(self.write_verifier) })
        }
        .await;
        res(r, || COMMIT3resfail { file_wcc: wcc_data::default() })
    }
}

fn without_mode(s: &Sattr) -> crate::vfs::SetAttr {
    let mut set = set_attr(s);
    set.mode = None;
    set
}
