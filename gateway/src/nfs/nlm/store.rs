//! The status monitor's list, kept on the shared volume where a surviving node finds it: which
//! clients hold (or held) locks through which server address, and each address's NSM state
//! number. Laid out under the volume's reserved directory:
//!
//! ```text
//! /.nasgw/nlm/<server address>/state            the NSM state number (odd), text
//! /.nasgw/nlm/<server address>/clients/<client> the client's caller name
//! ```
//!
//! (an IPv6 address is written with `_` for `:`). A client is added before its first lock is
//! granted (so a node that dies right after granting has already left a trace of it), and
//! removed once it has held nothing for a while. Nothing here is wiped at start, unlike
//! NFS-Ganesha's recovery directory: it is exactly what a restarted or surviving node needs.
//! The directories are root's, mode 0700: NFS clients (root squashed) and SMB guests cannot
//! change whom a takeover notifies.

use std::net::IpAddr;

use crate::vfs::{CreateHow, Credentials, FileId, Namespace, SetAttr, Stability, VfsError, VfsResult};

/// One monitored client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Monitored {
    /// Its address (where its status monitor listens).
    pub client: IpAddr,
    /// The name its lock manager calls itself.
    pub caller: Vec<u8>,
}

/// The list on a volume.
#[derive(Clone)]
pub struct MonitorStore {
    ns: Namespace,
    cred: Credentials,
}

/// A directory entry name for an address.
pub fn address_name(a: IpAddr) -> String {
    a.to_canonical().to_string().replace(':', "_")
}

/// The address an entry name stands for.
pub fn name_address(n: &[u8]) -> Option<IpAddr> {
    std::str::from_utf8(n).ok()?.replace('_', ":").parse().ok()
}

impl MonitorStore {
    /// The list on `ns`'s volume.
    pub fn new(ns: Namespace) -> MonitorStore {
        MonitorStore { ns, cred: Credentials::root() }
    }

    async fn dir(&self, path: &[&str], create: bool) -> VfsResult<Option<FileId>> {
        let mut cur = self.ns.root();
        for part in path {
            cur = match self.ns.lookup(&self.cred, cur, part.as_bytes()).await {
                Ok((id, _)) => id,
                Err(VfsError::NotFound) if create => match self.ns.mkdir(&self.cred, cur, part.as_bytes(), 0o700).await
                {
                    Ok((id, _)) => id,
                    Err(VfsError::Exists) => self.ns.lookup(&self.cred, cur, part.as_bytes()).await?.0,
                    Err(e) => return Err(e),
                },
                Err(VfsError::NotFound) => return Ok(None),
                Err(e) => return Err(e),
            };
        }
        Ok(Some(cur))
    }

    async fn server_dir(&self, server: IpAddr, sub: Option<&str>, create: bool) -> VfsResult<Option<FileId>> {
        let s = address_name(server);
        let mut path = vec![crate::gluster::RESERVED_DIR, "nlm", s.as_str()];
        path.extend(sub);
        self.dir(&path, create).await
    }

    async fn write_file(&self, dir: FileId, name: &str, content: &[u8]) -> VfsResult<()> {
        let how = CreateHow::Unchecked(SetAttr { size: Some(0), ..SetAttr::default() });
        let (id, _) = self.ns.create(&self.cred, dir, name.as_bytes(), 0o600, how).await?;
        self.ns.write(&self.cred, id, 0, content.to_vec(), Stability::FileSync).await?;
        Ok(())
    }

    async fn read_file(&self, dir: FileId, name: &str) -> VfsResult<Option<Vec<u8>>> {
        match self.ns.lookup(&self.cred, dir, name.as_bytes()).await {
            Ok((id, _)) => Ok(Some(self.ns.read(&self.cred, id, 0, 4096).await?.0)),
            Err(VfsError::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Records that `client` (calling itself `caller`) holds locks through `server`.
    pub async fn add(&self, server: IpAddr, client: IpAddr, caller: &[u8]) -> VfsResult<()> {
        let dir = self.server_dir(server, Some("clients"), true).await?.ok_or(VfsError::NotFound)?;
        self.write_file(dir, &address_name(client), caller).await
    }

    /// Forgets `client` of `server`.
    pub async fn remove(&self, server: IpAddr, client: IpAddr) -> VfsResult<()> {
        let Some(dir) = self.server_dir(server, Some("clients"), false).await? else { return Ok(()) };
        match self.ns.remove(&self.cred, dir, address_name(client).as_bytes(), None).await {
            Ok(()) | Err(VfsError::NotFound) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The clients that held locks through `server`.
    pub async fn clients(&self, server: IpAddr) -> VfsResult<Vec<Monitored>> {
        let Some(dir) = self.server_dir(server, Some("clients"), false).await? else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        for name in self.names(dir).await? {
            let Some(client) = name_address(&name) else { continue };
            let Ok(name) = std::str::from_utf8(&name) else { continue };
            if let Some(caller) = self.read_file(dir, name).await? {
                out.push(Monitored { client, caller });
            }
        }
        Ok(out)
    }

    async fn names(&self, dir: FileId) -> VfsResult<Vec<Vec<u8>>> {
        let mut names = Vec::new();
        let mut cookie = 0;
        loop {
            let page = self.ns.readdir(&self.cred, dir, cookie, 512, false).await?;
            for e in &page.entries {
                cookie = e.cookie;
                if e.name != b"." && e.name != b".." {
                    names.push(e.name.clone());
                }
            }
            if page.eof || page.entries.is_empty() {
                return Ok(names);
            }
        }
    }

    /// Every server address with a list.
    pub async fn servers(&self) -> VfsResult<Vec<IpAddr>> {
        let Some(dir) = self.dir(&[crate::gluster::RESERVED_DIR, "nlm"], false).await? else { return Ok(Vec::new()) };
        Ok(self.names(dir).await?.iter().filter_map(|n| name_address(n)).collect())
    }

    /// The current NSM state number of `server` (1 when never set).
    pub async fn state(&self, server: IpAddr) -> VfsResult<u32> {
        let Some(dir) = self.server_dir(server, None, false).await? else { return Ok(1) };
        Ok(self.read_file(dir, "state").await?.and_then(|b| parse_state(&b)).unwrap_or(1))
    }

    /// Moves `server`'s state number to the next odd value (a "reboot" its clients must see
    /// as new) and returns it.
    pub async fn next_state(&self, server: IpAddr) -> VfsResult<u32> {
        let dir = self.server_dir(server, None, true).await?.ok_or(VfsError::NotFound)?;
        let now = self.read_file(dir, "state").await?.and_then(|b| parse_state(&b)).unwrap_or(1);
        let next = next_odd(now);
        self.write_file(dir, "state", format!("{next}\n").as_bytes()).await?;
        Ok(next)
    }
}

fn parse_state(b: &[u8]) -> Option<u32> {
    std::str::from_utf8(b).ok()?.trim().parse().ok()
}

/// The next odd state number after `n` (NSM: odd = up), wrapping past `u32::MAX`... to 1.
pub fn next_odd(n: u32) -> u32 {
    let next = if n % 2 == 0 { n.wrapping_add(1) } else { n.wrapping_add(2) };
    if next == 0 || next % 2 == 0 {
        1
    } else {
        next
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::vfs::posix::{PosixBackend, PosixOptions};

    #[test]
    fn names_and_state_numbers() {
        for a in ["198.18.1.2", "fd18::101"] {
            let ip: IpAddr = a.parse().unwrap();
            assert_eq!(name_address(address_name(ip).as_bytes()), Some(ip));
            assert!(!address_name(ip).contains(':'));
        }
        assert_eq!(name_address(b"junk"), None);
        assert_eq!((next_odd(1), next_odd(2), next_odd(7)), (3, 3, 9));
        assert_eq!(next_odd(u32::MAX), 1);
    }

    #[tokio::test]
    async fn clients_and_states_survive_a_new_store_on_the_same_volume() {
        let dir = tempfile::tempdir().unwrap();
        let ns = || Namespace::new(Arc::new(PosixBackend::open(dir.path(), PosixOptions::new("t")).unwrap()));
        let s = MonitorStore::new(ns());
        let server: IpAddr = "198.18.1.2".parse().unwrap();
        let c1: IpAddr = "198.18.0.20".parse().unwrap();
        let c2: IpAddr = "fd18::20".parse().unwrap();
        assert!(s.clients(server).await.unwrap().is_empty());
        assert_eq!(s.state(server).await.unwrap(), 1);
        s.add(server, c1, b"kclient").await.unwrap();
        s.add(server, c2, b"other").await.unwrap();
        s.add(server, c1, b"kclient").await.unwrap();
        assert_eq!(s.next_state(server).await.unwrap(), 3);
        // Another node (another process) reads the same list.
        let t = MonitorStore::new(ns());
        let mut got = t.clients(server).await.unwrap();
        got.sort_by_key(|m| m.client);
        assert_eq!(
            got,
            vec![
                Monitored { client: c1, caller: b"kclient".to_vec() },
                Monitored { client: c2, caller: b"other".to_vec() }
            ]
        );
        assert_eq!(t.servers().await.unwrap(), vec![server]);
        assert_eq!(t.next_state(server).await.unwrap(), 5);
        assert_eq!(s.state(server).await.unwrap(), 5);
        t.remove(server, c1).await.unwrap();
        t.remove(server, c1).await.unwrap();
        assert_eq!(s.clients(server).await.unwrap().len(), 1);
        let meta = std::fs::metadata(dir.path().join(".nasgw/nlm")).unwrap();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777, 0o700);
    }
}
