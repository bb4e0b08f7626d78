//! The workloads that need one NFSv3 connection for many files (creates, listing, stats),
//! driven by the `nfs3_client` crate over one TCP connection, one request at a time, the way a
//! single-threaded application on a kernel client would issue them (with a cold attribute cache).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use nfs3_client::io::{AsyncRead, AsyncWrite};
use nfs3_client::net::Connector;
use nfs3_client::nfs3_types::nfs3::{
    self, createhow3, diropargs3, filename3, nfs_fh3, sattr3, stable_how, COMMIT3args, CREATE3args, GETATTR3args,
    LOOKUP3args, MKDIR3args, Nfs3Option, Nfs3Result, READDIRPLUS3args, WRITE3args,
};
use nfs3_client::nfs3_types::rpc::{auth_unix, opaque_auth};
use nfs3_client::nfs3_types::xdr_codec::Opaque;
use nfs3_client::tokio::TokioIo;
use nfs3_client::{Nfs3Connection, Nfs3ConnectionBuilder};
use tokio::net::{TcpSocket, TcpStream};

/// Where an NFSv3 server is: its export path and ports.
#[derive(Clone, Debug)]
pub struct NfsEndpoint {
    /// The export as MOUNT takes it (`/smb` for nasgw, the real path for Ganesha).
    pub export: String,
    /// NFS port.
    pub nfs_port: u16,
    /// MOUNT port.
    pub mount_port: u16,
    /// nasgw's metrics port (`GET /metrics`), to tell which path served its READs; `None`
    /// for an anchor.
    pub metrics_port: Option<u16>,
}

/// The AUTH_UNIX identity every client of the bench uses: an ordinary user, so no server's
/// root squashing changes what is measured.
pub const UID: u32 = 1000;
/// See [`UID`].
pub const GID: u32 = 1000;

impl NfsEndpoint {
    /// A libnfs URL (for `nfs-cp`) naming `file` at the export's top level.
    pub fn url(&self, file: &str) -> String {
        format!(
            "nfs://127.0.0.1{}/{file}?version=3&nfsport={}&mountport={}&uid={UID}&gid={GID}",
            self.export.trim_end_matches('/'),
            self.nfs_port,
            self.mount_port
        )
    }
}

/// Tokio TCP with Nagle off, as kernel RPC clients run: an RPC written in two pieces must not
/// wait for the previous reply's delayed ACK.
struct NoDelay;

impl Connector for NoDelay {
    type Connection = TokioIo<TcpStream>;

    async fn connect(&self, addr: SocketAddr) -> std::io::Result<Self::Connection> {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        Ok(TokioIo::new(s))
    }

    async fn connect_with_port(&self, addr: SocketAddr, local_port: u16) -> std::io::Result<Self::Connection> {
        let socket = TcpSocket::new_v4()?;
        // The privileged ports (300-1023) are few: 64 clients' MOUNT and NFS connections to two
        // servers leave them in TIME_WAIT for a minute, and the third round found none left.
        // Loopback reuses a TIME_WAIT port for a new connection (`tcp_tw_reuse`) once bind allows it.
        socket.set_reuseaddr(true)?;
        socket.bind(SocketAddr::from(([0, 0, 0, 0], local_port)))?;
        let s = socket.connect(addr).await?;
        s.set_nodelay(true)?;
        Ok(TokioIo::new(s))
    }
}

/// How long a client waits before sending a call again that was answered NFS3ERR_JUKEBOX
/// ("busy, try later"): the Linux client's `NFS_JUKEBOX_RETRY_TIME`.
pub const JUKEBOX_WAIT: Duration = Duration::from_secs(5);

/// Whether a call was answered NFS3ERR_JUKEBOX.
fn is_jukebox<T, E>(r: &Nfs3Result<T, E>) -> bool {
    matches!(r, Nfs3Result::Err((nfs3::nfsstat3::NFS3ERR_JUKEBOX, _)))
}

/// One mounted NFSv3 connection.
pub struct Session<IO> {
    conn: Nfs3Connection<IO>,
    root: nfs_fh3,
    jukebox_waits: u64,
}

/// Mounts `ep` as uid/gid [`UID`]/[`GID`] from a privileged port, as a kernel client does.
pub async fn connect(ep: &NfsEndpoint) -> Result<Session<TokioIo<TcpStream>>> {
    let cred = auth_unix { stamp: 0, machinename: Opaque::borrowed(b"bench"), uid: UID, gid: GID, gids: vec![] };
    let conn = Nfs3ConnectionBuilder::new(NoDelay, "127.0.0.1", &ep.export)
        .mount_port(ep.mount_port)
        .nfs3_port(ep.nfs_port)
        .credential(opaque_auth::auth_unix(&cred))
        .mount()
        .await
        .map_err(|e| anyhow!("mount {}: {e}", ep.export))?;
    let root = conn.root_nfs_fh3();
    Ok(Session { conn, root, jukebox_waits: 0 })
}

fn name(s: &str) -> filename3<'static> {
    filename3(Opaque::owned(s.as_bytes().to_vec()))
}

fn ok<T, E>(what: &str, r: Nfs3Result<T, E>) -> Result<T> {
    match r {
        Nfs3Result::Ok(v) => Ok(v),
        Nfs3Result::Err((status, _)) => bail!("{what}: {status:?}"),
    }
}

impl<IO: AsyncRead + AsyncWrite + Send> Session<IO> {
    /// The export's root handle.
    pub fn root(&self) -> nfs_fh3 {
        self.root.clone()
    }

    /// LOOKUP of `n` in `dir`.
    pub async fn lookup(&mut self, dir: &nfs_fh3, n: &str) -> Result<nfs_fh3> {
        let r = self.conn.lookup(&LOOKUP3args { what: diropargs3 { dir: dir.clone(), name: name(n) } }).await?;
        Ok(ok(&format!("LOOKUP {n}"), r)?.object)
    }

    /// MKDIR `n` in `dir` (mode 0777) and returns its handle.
    pub async fn mkdir(&mut self, dir: &nfs_fh3, n: &str) -> Result<nfs_fh3> {
        let attributes = sattr3 { mode: Nfs3Option::Some(0o777), ..Default::default() };
        let r =
            self.conn.mkdir(&MKDIR3args { where_: diropargs3 { dir: dir.clone(), name: name(n) }, attributes }).await?;
        match ok(&format!("MKDIR {n}"), r)?.obj {
            Nfs3Option::Some(fh) => Ok(fh),
            Nfs3Option::None => self.lookup(dir, n).await,
        }
    }

    /// Calls answered NFS3ERR_JUKEBOX and sent again after [`JUKEBOX_WAIT`] so far.
    pub fn jukebox_waits(&self) -> u64 {
        self.jukebox_waits
    }

    /// Waits [`JUKEBOX_WAIT`] after a JUKEBOX answer, as a kernel client does, and counts it.
    async fn wait_jukebox(&mut self) {
        self.jukebox_waits += 1;
        tokio::time::sleep(JUKEBOX_WAIT).await;
    }

    /// Creates `count` files of `data` in `dir` as `cp` on a kernel client does: CREATE
    /// (GUARDED), WRITE (UNSTABLE), COMMIT at close. A call answered NFS3ERR_JUKEBOX is sent
    /// again after [`JUKEBOX_WAIT`], as the Linux client does. Returns the number of files.
    pub async fn create_files(&mut self, dir: &nfs_fh3, count: usize, data: &[u8]) -> Result<u64> {
        for i in 0..count {
            let n = format!("c{i:05}");
            let mut waited = false;
            let made = loop {
                let how = createhow3::GUARDED(sattr3 { mode: Nfs3Option::Some(0o644), ..Default::default() });
                let args = CREATE3args { where_: diropargs3 { dir: dir.clone(), name: name(&n) }, how };
                let r = self.conn.create(&args).await?;
                if is_jukebox(&r) {
                    self.wait_jukebox().await;
                    waited = true;
                    continue;
                }
                break r;
            };
            let fh = match made {
                // The busy answer may have come after the file was made.
                Nfs3Result::Err((nfs3::nfsstat3::NFS3ERR_EXIST, _)) if waited => self.lookup(dir, &n).await?,
                r => match ok(&format!("CREATE {n}"), r)?.obj {
                    Nfs3Option::Some(fh) => fh,
                    Nfs3Option::None => self.lookup(dir, &n).await?,
                },
            };
            let w = WRITE3args {
                file: fh.clone(),
                offset: 0,
                count: data.len() as u32,
                stable: stable_how::UNSTABLE,
                data: Opaque::borrowed(data),
            };
            let r = loop {
                let r = self.conn.write(&w).await?;
                if !is_jukebox(&r) {
                    break r;
                }
                self.wait_jukebox().await;
            };
            let done = ok(&format!("WRITE {n}"), r)?.count as usize;
            if done != data.len() {
                bail!("WRITE {n}: short write {done} of {}", data.len());
            }
            let c = COMMIT3args { file: fh, offset: 0, count: 0 };
            let r = loop {
                let r = self.conn.commit(&c).await?;
                if !is_jukebox(&r) {
                    break r;
                }
                self.wait_jukebox().await;
            };
            ok(&format!("COMMIT {n}"), r)?;
        }
        Ok(count as u64)
    }

    /// Creates an empty file (CREATE UNCHECKED, mode 0644) for each of `names` in `dir`, one
    /// request at a time; returns how many. What makes a big directory fast: no data, no COMMIT.
    pub async fn create_empty(&mut self, dir: &nfs_fh3, names: &[String]) -> Result<u64> {
        for n in names {
            let how = createhow3::UNCHECKED(sattr3 { mode: Nfs3Option::Some(0o644), ..Default::default() });
            let r =
                self.conn.create(&CREATE3args { where_: diropargs3 { dir: dir.clone(), name: name(n) }, how }).await?;
            ok(&format!("CREATE {n}"), r)?;
        }
        Ok(names.len() as u64)
    }

    /// Lists `dir` with READDIRPLUS in 64 KiB pages (what `ls -l` makes a kernel client send)
    /// and returns the names, without `.` and `..`.
    pub async fn list(&mut self, dir: &nfs_fh3) -> Result<Vec<String>> {
        let mut names = Vec::new();
        let mut cookie = 0;
        let mut cookieverf = nfs3::cookieverf3::default();
        loop {
            let args = READDIRPLUS3args { dir: dir.clone(), cookie, cookieverf, dircount: 65536, maxcount: 65536 };
            let r = self.conn.readdirplus(&args).await?;
            let page = ok("READDIRPLUS", r)?;
            let entries = page.reply.entries.into_inner();
            if entries.is_empty() && !page.reply.eof {
                bail!("READDIRPLUS returned an empty page before eof");
            }
            for e in &entries {
                let n = String::from_utf8_lossy(&e.name.0).into_owned();
                if n != "." && n != ".." {
                    names.push(n);
                }
            }
            if page.reply.eof {
                return Ok(names);
            }
            cookie = entries.last().map(|e| e.cookie).context("no entries")?;
            cookieverf = page.cookieverf;
        }
    }

    /// `stat` of each name in `dir` as a cold kernel client does it: LOOKUP, then GETATTR.
    pub async fn stat_all(&mut self, dir: &nfs_fh3, names: &[String]) -> Result<u64> {
        for n in names {
            let fh = self.lookup(dir, n).await?;
            let r = self.conn.getattr(&GETATTR3args { object: fh }).await?;
            ok(&format!("GETATTR {n}"), r)?;
        }
        Ok(names.len() as u64)
    }

    /// Whether `n` exists in `dir` (LOOKUP; NOENT is `false`).
    pub async fn exists(&mut self, dir: &nfs_fh3, n: &str) -> Result<bool> {
        let r = self.conn.lookup(&LOOKUP3args { what: diropargs3 { dir: dir.clone(), name: name(n) } }).await?;
        match r {
            Nfs3Result::Ok(_) => Ok(true),
            Nfs3Result::Err((nfs3::nfsstat3::NFS3ERR_NOENT, _)) => Ok(false),
            Nfs3Result::Err((status, _)) => bail!("LOOKUP {n}: {status:?}"),
        }
    }

    /// GETATTR of `fh`.
    pub async fn getattr(&mut self, fh: &nfs_fh3) -> Result<()> {
        let r = self.conn.getattr(&GETATTR3args { object: fh.clone() }).await?;
        ok("GETATTR", r)?;
        Ok(())
    }

    /// Unmounts (MOUNT UMNT) and closes.
    pub async fn close(self) -> Result<()> {
        self.conn.unmount().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_jukebox_is_waited_out() {
        assert!(is_jukebox(&Nfs3Result::<(), ()>::Err((nfs3::nfsstat3::NFS3ERR_JUKEBOX, ()))));
        assert!(!is_jukebox(&Nfs3Result::<(), ()>::Err((nfs3::nfsstat3::NFS3ERR_EXIST, ()))));
        assert!(!is_jukebox(&Nfs3Result::<(), ()>::Ok(())));
        // The Linux client's NFS_JUKEBOX_RETRY_TIME.
        assert_eq!(JUKEBOX_WAIT, Duration::from_secs(5));
    }
}
