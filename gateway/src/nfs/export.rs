//! The export's access policy as pure functions: which clients may use it, which credential
//! flavors it accepts, and how a client's claimed identity becomes the [`Credentials`] the
//! namespace runs with (root squash).

use std::net::IpAddr;

use ipnet::IpNet;

use super::rpc::{Auth, AuthFailure};
use crate::config::NfsConfig;
use crate::vfs::Credentials;

/// Who may use the export and as whom.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportPolicy {
    /// Client networks allowed; everything else is refused.
    pub clients: Vec<IpNet>,
    /// Refuse every change (NFS3ERR_ROFS).
    pub read_only: bool,
    /// Map uid 0 to the anonymous identity.
    pub root_squash: bool,
    /// The anonymous uid (squashed root, AUTH_NONE).
    pub anon_uid: u32,
    /// The anonymous gid.
    pub anon_gid: u32,
    /// Accept AUTH_NONE callers (as the anonymous identity).
    pub allow_auth_none: bool,
}

impl ExportPolicy {
    /// The policy of `[nfs]`.
    pub fn from_config(c: &NfsConfig) -> Self {
        Self {
            clients: c.clients.clone(),
            read_only: c.read_only,
            root_squash: c.root_squash,
            anon_uid: c.anon_uid,
            anon_gid: c.anon_gid,
            allow_auth_none: c.allow_auth_none,
        }
    }

    /// True when `ip` is inside one of the allowed networks (IPv4-mapped IPv6 counts as IPv4).
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.clients.iter().any(|n| n.contains(&ip))
    }

    /// The identity a call runs with, or why it is refused. With root squash, uid 0 becomes
    /// the anonymous user, and gid 0 (primary or supplementary) of any caller becomes the
    /// anonymous group, as knfsd and Ganesha do: group root opens `root:root 0640` files.
    pub fn credentials(&self, auth: &Auth) -> Result<Credentials, AuthFailure> {
        match auth {
            Auth::Unix { uid, gid, gids } => {
                if *uid == 0 && self.root_squash {
                    Ok(self.anonymous())
                } else if self.root_squash {
                    let squash = |g: u32| if g == 0 { self.anon_gid } else { g };
                    Ok(Credentials { uid: *uid, gid: squash(*gid), groups: gids.iter().copied().map(squash).collect() })
                } else {
                    Ok(Credentials { uid: *uid, gid: *gid, groups: gids.clone() })
                }
            }
            Auth::None if self.allow_auth_none => Ok(self.anonymous()),
            Auth::None | Auth::Other(_) => Err(AuthFailure::TooWeak),
        }
    }

    /// Flavors MOUNT advertises (AUTH_UNIX, plus AUTH_NONE when allowed).
    pub fn auth_flavors(&self) -> Vec<u32> {
        if self.allow_auth_none {
            vec![1, 0]
        } else {
            vec![1]
        }
    }

    fn anonymous(&self) -> Credentials {
        Credentials::new(self.anon_uid, self.anon_gid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> ExportPolicy {
        ExportPolicy {
            clients: vec!["10.0.0.0/8".parse().unwrap(), "127.0.0.1/32".parse().unwrap()],
            read_only: false,
            root_squash: true,
            anon_uid: 65534,
            anon_gid: 65533,
            allow_auth_none: false,
        }
    }

    #[test]
    fn clients_outside_the_networks_are_refused() {
        let p = policy();
        assert!(p.allows("10.1.2.3".parse().unwrap()));
        assert!(p.allows("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!p.allows("127.0.0.2".parse().unwrap()));
        assert!(!p.allows("::1".parse().unwrap()));
    }

    #[test]
    fn root_is_squashed_and_auth_none_refused_by_default() {
        let mut p = policy();
        let root = Auth::Unix { uid: 0, gid: 0, gids: vec![0, 1] };
        assert_eq!(p.credentials(&root), Ok(Credentials::new(65534, 65533)));
        let user = Auth::Unix { uid: 1000, gid: 100, gids: vec![5] };
        assert_eq!(p.credentials(&user), Ok(Credentials { uid: 1000, gid: 100, groups: vec![5] }));
        let group_root = Auth::Unix { uid: 1000, gid: 0, gids: vec![5, 0] };
        assert_eq!(p.credentials(&group_root), Ok(Credentials { uid: 1000, gid: 65533, groups: vec![5, 65533] }));
        assert_eq!(p.credentials(&Auth::None), Err(AuthFailure::TooWeak));
        assert_eq!(p.credentials(&Auth::Other(6)), Err(AuthFailure::TooWeak));
        p.root_squash = false;
        p.allow_auth_none = true;
        assert_eq!(p.credentials(&root).unwrap().uid, 0);
        assert_eq!(p.credentials(&group_root).unwrap().groups, vec![5, 0], "no squash, no change");
        assert_eq!(p.credentials(&Auth::None), Ok(Credentials::new(65534, 65533)));
        assert_eq!(p.auth_flavors(), vec![1, 0]);
    }
}
