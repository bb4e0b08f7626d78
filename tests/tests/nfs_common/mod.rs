//! Shared by the `nfs_*` tests: a daemon serving NFS on a free port, libnfs URLs, and a small
//! Rust NFSv3 client (the `nfs3_client` crate) with one helper per procedure the tests use.
#![allow(dead_code)]

use std::net::TcpStream as StdTcpStream;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use nasgw_tests::{free_port, wait_for, Daemon};
use nfs3_client::tokio::{TokioConnector, TokioIo};
use nfs3_client::{ConnectError, Nfs3Connection, Nfs3ConnectionBuilder};
use nfs3_types::nfs3::*;
use nfs3_types::rpc::{auth_unix, opaque_auth};
use nfs3_types::xdr_codec::Opaque;
use tokio::net::TcpStream;

/// A Rust client connection (MOUNT + NFS).
pub type Conn = Nfs3Connection<TokioIo<TcpStream>>;

/// A daemon under test with its NFS port.
pub struct Server {
    /// The daemon (stopped by PID when dropped).
    pub daemon: Option<Daemon>,
    /// Its NFS/MOUNT port.
    pub port: u16,
    /// Its directory (data is `dir/data`).
    pub dir: PathBuf,
    /// The `[nfs]` lines it was started with.
    pub nfs_extra: String,
    _tmp: Option<tempfile::TempDir>,
}

/// The config of a test daemon; `nfs_extra` adds `[nfs]` keys.
pub fn config(port: u16, nfs_extra: &str) -> String {
    format!(
        "[volume]\nname = \"smb\"\nbackend = \"local\"\npath = \"{{dir}}/data\"\n\n[nfs]\nlisten = \"127.0.0.1:{port}\"\n{nfs_extra}\n\n[smb]\nenabled = false\n\n[node]\ncontrol_socket = \"{{dir}}/ctl.sock\"\nstate_dir = \"{{dir}}/state\"\n"
    )
}

impl Server {
    /// Starts a daemon named `name` with extra `[nfs]` keys and waits until NFS accepts.
    pub fn start(name: &str, nfs_extra: &str) -> Server {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join(name);
        let mut s = Server { daemon: None, port: free_port(), dir, nfs_extra: nfs_extra.to_string(), _tmp: Some(tmp) };
        s.restart();
        s
    }

    /// (Re)starts the daemon on the same directory and port.
    pub fn restart(&mut self) {
        assert!(self.daemon.is_none(), "stop it first");
        let d = Daemon::start("nasgw", &self.dir, &config(self.port, &self.nfs_extra), None);
        let port = self.port;
        wait_for("NFS port", Duration::from_secs(20), Duration::from_millis(20), || {
            StdTcpStream::connect(("127.0.0.1", port)).ok()
        });
        self.daemon = Some(d);
    }

    /// SIGTERM and wait.
    pub fn stop(&mut self) {
        let st = self.daemon.take().expect("running").stop();
        assert!(st.success(), "clean stop: {st}");
    }

    /// SIGKILL (a crash).
    pub fn kill(&mut self) {
        self.daemon.take().expect("running").kill();
    }

    /// The served directory.
    pub fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// A libnfs URL of `path` inside the export (`path` starts with `/` or is empty).
    pub fn url(&self, path: &str) -> String {
        url(self.port, "smb", path, "")
    }

    /// The daemon's logs so far.
    pub fn logs(&self) -> String {
        self.daemon.as_ref().map(Daemon::logs).unwrap_or_default()
    }
}

/// A libnfs URL; `query` adds parameters such as `&uid=1000`.
pub fn url(port: u16, export: &str, path: &str, query: &str) -> String {
    format!("nfs://127.0.0.1/{export}{path}?version=3&nfsport={port}&mountport={port}{query}")
}

/// Runs a libnfs-utils tool.
pub fn libnfs(tool: &str, args: &[&str]) -> Output {
    nasgw_tests::require_tool(tool);
    std::process::Command::new(tool).args(args).output().unwrap_or_else(|e| panic!("cannot run {tool}: {e}"))
}

/// Asserts a tool run succeeded, showing its output otherwise.
pub fn ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// AUTH_UNIX credential.
pub fn unix(uid: u32, gid: u32, gids: Vec<u32>) -> opaque_auth<'static> {
    opaque_auth::auth_unix(&auth_unix { stamp: 1, machinename: Opaque::owned(b"test".to_vec()), uid, gid, gids })
}

/// Mounts `path` as `cred` with the Rust client.
pub async fn mount_as(port: u16, path: &str, cred: opaque_auth<'static>) -> Result<Conn, ConnectError> {
    Nfs3ConnectionBuilder::new(TokioConnector, "127.0.0.1", path)
        .connect_from_privileged_port(false)
        .mount_port(port)
        .nfs3_port(port)
        .credential(cred)
        .mount()
        .await
}

/// Mounts `/smb` as `uid`/`gid`.
pub async fn mount(port: u16, uid: u32, gid: u32) -> Conn {
    mount_as(port, "/smb", unix(uid, gid, vec![])).await.expect("mount /smb")
}

fn name(n: &str) -> filename3<'static> {
    filename3(Opaque::owned(n.as_bytes().to_vec()))
}

/// LOOKUP.
pub async fn lookup(c: &mut Conn, dir: &nfs_fh3, n: &[u8]) -> Result<(nfs_fh3, fattr3), nfsstat3> {
    let args = LOOKUP3args { what: diropargs3 { dir: dir.clone(), name: filename3(Opaque::owned(n.to_vec())) } };
    match c.lookup(&args).await.expect("rpc") {
        Nfs3Result::Ok(ok) => Ok((ok.object, ok.obj_attributes.unwrap())),
        Nfs3Result::Err((s, _)) => Err(s),
    }
}

/// GETATTR.
pub async fn getattr(c: &mut Conn, fh: &nfs_fh3) -> Result<fattr3, nfsstat3> {
    match c.getattr(&GETATTR3args { object: fh.clone() }).await.expect("rpc") {
        Nfs3Result::Ok(ok) => Ok(ok.obj_attributes),
        Nfs3Result::Err((s, _)) => Err(s),
    }
}

/// CREATE (GUARDED) with `mode`.
pub async fn create(c: &mut Conn, dir: &nfs_fh3, n: &str, mode: u32) -> Result<nfs_fh3, nfsstat3> {
    let how = createhow3::GUARDED(sattr3 { mode: Nfs3Option::Some(mode), ..Default::default() });
    let args = CREATE3args { where_: diropargs3 { dir: dir.clone(), name: name(n) }, how };
    match c.create(&args).await.expect("rpc") {
        Nfs3Result::Ok(ok) => Ok(ok.obj.unwrap()),
        Nfs3Result::Err((s, _)) => Err(s),
    }
}

/// MKDIR.
pub async fn mkdir(c: &mut Conn, dir: &nfs_fh3, n: &str) -> Result<nfs_fh3, nfsstat3> {
    let args = MKDIR3args {
        where_: diropargs3 { dir: dir.clone(), name: name(n) },
        attributes: sattr3 { mode: Nfs3Option::Some(0o755), ..Default::default() },
    };
    match c.mkdir(&args).await.expect("rpc") {
        Nfs3Result::Ok(ok) => Ok(ok.obj.unwrap()),
        Nfs3Result::Err((s, _)) => Err(s),
    }
}

/// SYMLINK.
pub async fn symlink(c: &mut Conn, dir: &nfs_fh3, n: &str, target: &str) -> Result<nfs_fh3, nfsstat3> {
    let args = SYMLINK3args {
        where_: diropargs3 { dir: dir.clone(), name: name(n) },
        symlink: symlinkdata3 {
            symlink_attributes: sattr3::default(),
            symlink_data: nfspath3(Opaque::owned(target.as_bytes().to_vec())),
        },
    };
    match c.symlink(&args).await.expect("rpc") {
        Nfs3Result::Ok(ok) => Ok(ok.obj.unwrap()),
        Nfs3Result::Err((s, _)) => Err(s),
    }
}

/// MKNOD of `what` (`mknoddata3`: a fifo, socket or device with its attributes).
pub async fn mknod(c: &mut Conn, dir: &nfs_fh3, n: &str, what: mknoddata3) -> Result<(nfs_fh3, fattr3), nfsstat3> {
    let args = MKNOD3args { where_: diropargs3 { dir: dir.clone(), name: name(n) }, what };
    match c.mknod(&args).await.expect("rpc") {
        Nfs3Result::Ok(ok) => Ok((ok.obj.unwrap(), ok.obj_attributes.unwrap())),
        Nfs3Result::Err((s, _)) => Err(s),
    }
}

/// `mknoddata3` of a fifo with `mode`.
pub fn fifo(mode: u32) -> mknoddata3 {
    mknoddata3::NF3FIFO(sattr3 { mode: Nfs3Option::Some(mode), ..Default::default() })
}

/// `mknoddata3` of a socket with `mode`.
pub fn socket(mode: u32) -> mknoddata3 {
    mknoddata3::NF3SOCK(sattr3 { mode: Nfs3Option::Some(mode), ..Default::default() })
}

/// `mknoddata3` of a character device (major, minor) with `mode`.
pub fn char_device(mode: u32, major: u32, minor: u32) -> mknoddata3 {
    mknoddata3::NF3CHR(devicedata3 {
        dev_attributes: sattr3 { mode: Nfs3Option::Some(mode), ..Default::default() },
        spec: specdata3 { specdata1: major, specdata2: minor },
    })
}

/// REMOVE.
pub async fn remove(c: &mut Conn, dir: &nfs_fh3, n: &str) -> Result<(), nfsstat3> {
    match c.remove(&REMOVE3args { object: diropargs3 { dir: dir.clone(), name: name(n) } }).await.expect("rpc") {
        Nfs3Result::Ok(_) => Ok(()),
        Nfs3Result::Err((s, _)) => Err(s),
    }
}

/// RMDIR of `dir/n`.
pub async fn rmdir(c: &mut Conn, dir: &nfs_fh3, n: &str) -> Result<(), nfsstat3> {
    match c.rmdir(&RMDIR3args { object: diropargs3 { dir: dir.clone(), name: name(n) } }).await.expect("rpc") {
        Nfs3Result::Ok(_) => Ok(()),
        Nfs3Result::Err((s, _)) => Err(s),
    }
}

/// LINK: `file` gets the name `dir/n` too.
pub async fn link(c: &mut Conn, file: &nfs_fh3, dir: &nfs_fh3, n: &str) -> Result<(), nfsstat3> {
    let args = LINK3args { file: file.clone(), link: diropargs3 { dir: dir.clone(), name: name(n) } };
    match c.link(&args).await.expect("rpc") {
        Nfs3Result::Ok(_) => Ok(()),
        Nfs3Result::Err((s, _)) => Err(s),
    }
}

/// RENAME.
pub async fn rename(c: &mut Conn, from_dir: &nfs_fh3, from: &str, to_dir: &nfs_fh3, to: &str) -> Result<(), nfsstat3> {
    let args = RENAME3args {
        from: diropargs3 { dir: from_dir.clone(), name: name(from) },
        to: diropargs3 { dir: to_dir.clone(), name: name(to) },
    };
    match c.rename(&args).await.expect("rpc") {
        Nfs3Result::Ok(_) => Ok(()),
        Nfs3Result::Err((s, _)) => Err(s),
    }
}

/// WRITE.
pub async fn write(
    c: &mut Conn,
    fh: &nfs_fh3,
    offset: u64,
    data: &[u8],
    stable: stable_how,
) -> Result<WRITE3resok, nfsstat3> {
    let args = WRITE3args { file: fh.clone(), offset, count: data.len() as u32, stable, data: Opaque::borrowed(data) };
    match c.write(&args).await.expect("rpc") {
        Nfs3Result::Ok(ok) => Ok(ok),
        Nfs3Result::Err((s, _)) => Err(s),
    }
}

/// READ.
pub async fn read(c: &mut Conn, fh: &nfs_fh3, offset: u64, count: u32) -> Result<(Vec<u8>, bool), nfsstat3> {
    match c.read(&READ3args { file: fh.clone(), offset, count }).await.expect("rpc") {
        Nfs3Result::Ok(ok) => Ok((ok.data.to_vec(), ok.eof)),
        Nfs3Result::Err((s, _)) => Err(s),
    }
}

/// COMMIT.
pub async fn commit(c: &mut Conn, fh: &nfs_fh3) -> Result<writeverf3, nfsstat3> {
    match c.commit(&COMMIT3args { file: fh.clone(), offset: 0, count: 0 }).await.expect("rpc") {
        Nfs3Result::Ok(ok) => Ok(ok.verf),
        Nfs3Result::Err((s, _)) => Err(s),
    }
}

/// Lists a directory completely with READDIR (`plus` = READDIRPLUS) in pages of `count` bytes,
/// following cookies; returns every name in order and the number of calls.
pub async fn list(c: &mut Conn, dir: &nfs_fh3, plus: bool, count: u32) -> (Vec<Vec<u8>>, usize) {
    let mut names = Vec::new();
    let (mut cookie, mut verf, mut calls) = (0u64, cookieverf3([0; 8]), 0);
    loop {
        calls += 1;
        let eof = if plus {
            let args =
                READDIRPLUS3args { dir: dir.clone(), cookie, cookieverf: verf, dircount: count, maxcount: count };
            match c.readdirplus(&args).await.expect("rpc") {
                Nfs3Result::Ok(ok) => {
                    verf = ok.cookieverf;
                    for e in ok.reply.entries.0 {
                        assert!(
                            e.name_handle.is_some() && e.name_attributes.is_some(),
                            "READDIRPLUS gives handles and attributes"
                        );
                        names.push(e.name.0.to_vec());
                        cookie = e.cookie;
                    }
                    ok.reply.eof
                }
                Nfs3Result::Err((s, _)) => panic!("READDIRPLUS failed: {s}"),
            }
        } else {
            let args = READDIR3args { dir: dir.clone(), cookie, cookieverf: verf, count };
            match c.readdir(&args).await.expect("rpc") {
                Nfs3Result::Ok(ok) => {
                    verf = ok.cookieverf;
                    for e in ok.reply.entries.0 {
                        names.push(e.name.0.to_vec());
                        cookie = e.cookie;
                    }
                    ok.reply.eof
                }
                Nfs3Result::Err((s, _)) => panic!("READDIR failed: {s}"),
            }
        };
        if eof {
            return (names, calls);
        }
    }
}

/// Owner and group of a path on disk.
pub fn owner(p: &Path) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(p).unwrap();
    (m.uid(), m.gid())
}

/// Every entry of `dir` with its attributes and handle, by READDIRPLUS in pages of `maxcount`
/// bytes (`dircount` of them names and cookies); an entry without attributes or a handle
/// fails the test.
pub async fn readdirplus_all(
    c: &mut Conn,
    dir: &nfs_fh3,
    dircount: u32,
    maxcount: u32,
) -> Vec<(Vec<u8>, fattr3, nfs_fh3)> {
    let mut out = Vec::new();
    let (mut cookie, mut verf) = (0u64, cookieverf3([0; 8]));
    loop {
        let args = READDIRPLUS3args { dir: dir.clone(), cookie, cookieverf: verf, dircount, maxcount };
        match c.readdirplus(&args).await.expect("rpc") {
            Nfs3Result::Ok(ok) => {
                verf = ok.cookieverf;
                for e in ok.reply.entries.0 {
                    cookie = e.cookie;
                    let Nfs3Option::Some(a) = e.name_attributes else { panic!("no attributes") };
                    let Nfs3Option::Some(fh) = e.name_handle else { panic!("no handle") };
                    out.push((e.name.0.to_vec(), a, fh));
                }
                if ok.reply.eof {
                    return out;
                }
            }
            Nfs3Result::Err((s, _)) => panic!("READDIRPLUS failed: {s}"),
        }
    }
}
