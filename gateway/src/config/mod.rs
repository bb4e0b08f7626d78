//! The one config file, `/etc/nasgw/nasgw.toml`: loading, validation with precise errors, the
//! embedded default, and the effective config `nasgw check` prints.

mod error;
mod locate;
mod model;
mod validate;

use std::path::{Path, PathBuf};

pub use error::ConfigError;
pub use locate::KeyPath;
pub use model::*;
pub use validate::{inside_volume, split_brick, validate, Problem};

use locate::SpannedDoc;

/// Where nasgw looks when no `--config` is given.
pub const DEFAULT_PATH: &str = "/etc/nasgw/nasgw.toml";

/// The config used when there is no file: `./nasgw-data` as volume `smb` on loopback ports that
/// need no root. Relative paths are relative to the working directory.
pub const EMBEDDED_DEFAULT: &str = include_str!("embedded_default.toml");

/// Where a loaded config came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A file on disk.
    File(PathBuf),
    /// [`EMBEDDED_DEFAULT`], because no file was named and none is at [`DEFAULT_PATH`].
    Embedded,
}

impl Source {
    /// How errors and logs name this source.
    pub fn display_name(&self) -> String {
        match self {
            Source::File(p) => p.display().to_string(),
            Source::Embedded => "<embedded default>".to_string(),
        }
    }
}

/// A valid config, paths made absolute, and where it came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The effective config.
    pub config: Config,
    /// Its origin.
    pub source: Source,
}

/// Loads `explicit`, else [`DEFAULT_PATH`] if it exists, else the embedded default.
pub fn load(explicit: Option<&Path>) -> Result<Loaded, Vec<ConfigError>> {
    let path = match explicit {
        Some(p) => Some(p.to_path_buf()),
        None => Some(PathBuf::from(DEFAULT_PATH)).filter(|p| p.exists()),
    };
    let Some(path) = path else {
        let cwd = std::env::current_dir().map_err(|e| {
            vec![ConfigError::whole_file("<embedded default>", format!("cannot read the working directory: {e}"), None)]
        })?;
        let config = parse(EMBEDDED_DEFAULT, "<embedded default>", &cwd)?;
        return Ok(Loaded { config, source: Source::Embedded });
    };
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(&path).map_err(|e| {
        let hint = match e.kind() {
            std::io::ErrorKind::NotFound => Some("create it (see examples/two-nodes.toml), or run without --config to use the embedded default; `nasgw check` prints it".to_string()),
            _ => None,
        };
        vec![ConfigError::whole_file(&origin, format!("cannot read the config file: {e}"), hint)]
    })?;
    let base = std::path::absolute(&path)
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("/"));
    let config = parse(&text, &origin, &base)?;
    Ok(Loaded { config, source: Source::File(path) })
}

/// Parses and validates `text`; relative paths are resolved against `base_dir`.
/// Returns every problem found, each with its line and column.
pub fn parse(text: &str, origin: &str, base_dir: &Path) -> Result<Config, Vec<ConfigError>> {
    let doc = SpannedDoc::parse(text);
    let mut config: Config = toml::from_str(text).map_err(|e| vec![serde_error(&e, text, origin, doc.as_ref())])?;
    let doc = doc.expect("text that deserialised is TOML");
    let problems = validate(&config);
    if !problems.is_empty() {
        let mut errors: Vec<ConfigError> = problems
            .into_iter()
            .map(|p| {
                let span = doc.span_of(&p.path);
                ConfigError::at(origin, text, span.start, format!("{}: {}", p.path, p.message), Some(p.hint))
            })
            .collect();
        errors.sort_by_key(|e| (e.line, e.column));
        return Err(errors);
    }
    normalise(&mut config, base_dir);
    Ok(config)
}

/// Canonical forms: absolute local paths, `/`-rooted paths inside the volume.
fn normalise(c: &mut Config, base: &Path) {
    let abs = |p: &mut PathBuf| {
        if p.is_relative() {
            *p = base.join(&*p);
        }
    };
    if let Some(p) = c.volume.path.as_mut() {
        abs(p);
    }
    if let Some(p) = c.volume.mount_point.as_mut() {
        abs(p);
    }
    if c.volume.servers.is_empty() {
        // A volume the nodes create: its volfile servers are the brick hosts, in brick order.
        for b in &c.volume.bricks {
            let (host, _) = validate::split_brick(b).expect("validated");
            if !c.volume.servers.iter().any(|s| s == host) {
                c.volume.servers.push(host.to_string());
            }
        }
    }
    if let Some(f) = c.fuse.as_mut() {
        abs(&mut f.mountpoint);
    }
    abs(&mut c.node.control_socket);
    abs(&mut c.node.state_dir);
    for s in &mut c.smb.shares {
        s.path = inside_volume(&s.path).expect("validated");
    }
    if let Some(cl) = c.cluster.as_mut() {
        cl.recovery_lock = inside_volume(&cl.recovery_lock).expect("validated");
        abs(&mut cl.secret_file);
        if let Some(n) = cl.notify_script.as_mut() {
            abs(n);
        }
    }
}

/// Turns a deserialiser error into one with a place and a hint.
fn serde_error(e: &toml::de::Error, text: &str, origin: &str, doc: Option<&SpannedDoc<'_>>) -> ConfigError {
    let offset = e.span().map_or(0, |s| s.start);
    let msg = e.message().trim().to_string();
    let path = doc.map(|d| d.path_at(offset)).unwrap_or_default();
    let hint = hint_for(&msg, &path);
    // The hint lists the valid keys; keep the message itself short.
    let msg = match msg.split_once(", expected") {
        Some((head, _)) if msg.starts_with("unknown field") => head.to_string(),
        _ => msg,
    };
    let message = if path.0.is_empty() { msg } else { format!("{path}: {msg}") };
    ConfigError::at(origin, text, offset, message, hint)
}

/// What would be right, judged from the deserialiser's message and the key it is about.
fn hint_for(msg: &str, path: &KeyPath) -> Option<String> {
    if let Some(rest) = msg.strip_prefix("unknown field `") {
        let (field, expected) = rest.split_once('`').unwrap_or((rest, ""));
        let choices: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
        let best = choices
            .iter()
            .map(|c| (strsim::damerau_levenshtein(field, c), *c))
            .min()
            .filter(|(d, c)| *d <= 2.max(c.len() / 3));
        return Some(match best {
            Some((_, c)) => format!("did you mean `{c}`? valid keys here: {}", choices.join(", ")),
            None => format!("valid keys here: {}", choices.join(", ")),
        });
    }
    if msg.starts_with("unknown variant") {
        return Some(msg.split_once("expected").map_or_else(String::new, |(_, e)| format!("expected {}", e.trim())));
    }
    let hint = match path.shape().as_str() {
        "cluster.public_addresses.address" => {
            "write an address with its prefix length, e.g. address = \"192.168.122.200/24\""
        }
        "cluster.nodes" => "write each node's IP address, e.g. nodes = [\"192.168.122.100\", \"192.168.122.101\"]",
        "nfs.listen" => "write address:port, e.g. listen = \"0.0.0.0:2049\"",
        "smb.listen" => "write address:port, e.g. listen = \"0.0.0.0:445\"",
        "cluster.port" => "a port number from 1 to 65535, e.g. port = 4379",
        _ if msg.starts_with("missing field") => "add the key; `nasgw check` with no file prints a complete example",
        _ if msg.starts_with("invalid type") => "see the config reference in the README for this key's type",
        _ => return None,
    };
    Some(hint.to_string())
}

/// The effective config as TOML, defaults filled in (what `nasgw check` prints). NT hashes are
/// password equivalents: they are shown as `<redacted>`, never printed.
pub fn render(c: &Config) -> String {
    let mut v = toml::Value::try_from(c).expect("config serialises");
    let users = v.get_mut("smb").and_then(|s| s.get_mut("user")).and_then(|u| u.as_array_mut());
    for u in users.into_iter().flatten() {
        if let Some(h) = u.get_mut("nt_hash") {
            *h = toml::Value::String("<redacted>".into());
        }
    }
    toml::to_string_pretty(&v).expect("config serialises")
}

/// An error about key `key` (e.g. `fuse.mountpoint`) found by a check of this node rather
/// than of the file alone, placed at the key's line and column in the loaded file.
pub fn located(loaded: &Loaded, key: &str, message: String, hint: Option<String>) -> ConfigError {
    let origin = loaded.source.display_name();
    let text = match &loaded.source {
        Source::File(p) => std::fs::read_to_string(p).unwrap_or_default(),
        Source::Embedded => EMBEDDED_DEFAULT.to_string(),
    };
    let path = KeyPath::parse(key);
    let offset = SpannedDoc::parse(&text).map_or(0, |d| d.span_of(&path).start);
    ConfigError::at(&origin, &text, offset, format!("{path}: {message}"), hint)
}

/// Warnings about files that hold secrets but are readable by other local users: the config
/// when it has `[[smb.user]]` NT hashes (password equivalents), and the cluster secret (it
/// signs heartbeats and file handles). `nasgw check` prints them and the daemon logs them.
pub fn secret_file_warnings(loaded: &Loaded) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut look = |path: &Path, what: &str| {
        if let Ok(m) = std::fs::metadata(path) {
            if m.mode() & 0o044 != 0 {
                out.push(format!(
                    "{} holds {what} but is readable by other users (mode {:o}); run `chmod 600 {}`",
                    path.display(),
                    m.mode() & 0o7777,
                    path.display()
                ));
            }
        }
    };
    if let (Source::File(p), false) = (&loaded.source, loaded.config.smb.users.is_empty()) {
        look(p, "SMB users' NT hashes");
    }
    if let Some(c) = &loaded.config.cluster {
        look(&c.secret_file, "the cluster secret");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<ConfigError> {
        parse(text, "t.toml", Path::new("/etc/nasgw")).unwrap_err()
    }

    #[test]
    fn render_never_prints_nt_hashes_and_warns_about_readable_secret_files() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let hash = "0123456789abcdef0123456789abcdef";
        let text = format!(
            "[volume]\nname=\"smb\"\nbackend=\"local\"\npath=\"/x\"\n[[smb.user]]\nname=\"alice\"\nnt_hash=\"{hash}\"\n"
        );
        let path = dir.path().join("nasgw.toml");
        std::fs::write(&path, &text).unwrap();
        let loaded = load(Some(&path)).unwrap();
        let shown = render(&loaded.config);
        assert!(!shown.contains(hash) && shown.contains("<redacted>"), "{shown}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let w = secret_file_warnings(&loaded);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("NT hashes") && w[0].contains("644"), "{w:?}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(secret_file_warnings(&loaded).is_empty());
    }

    #[test]
    fn embedded_default_is_valid() {
        let c = parse(EMBEDDED_DEFAULT, "<embedded default>", Path::new("/w")).unwrap();
        assert_eq!(c.volume.name, "smb");
        assert_eq!(c.volume.path.as_deref(), Some(Path::new("/w/nasgw-data")));
        assert!(c.nfs.listen.ip().is_loopback() && c.nfs.listen.port() > 1024);
        assert!(c.smb.listen.ip().is_loopback() && c.smb.listen.port() > 1024);
    }

    #[test]
    fn typo_in_a_key_names_line_column_and_suggestion() {
        let e = errors("[volume]\nnmae = \"smb\"\nbackend = \"local\"\npath = \"/x\"\n");
        assert_eq!(e.len(), 1);
        assert_eq!((e[0].line, e[0].column), (2, 1));
        assert!(e[0].message.contains("unknown field `nmae`"), "{}", e[0]);
        assert!(e[0].hint.as_deref().unwrap().contains("did you mean `name`"), "{}", e[0]);
    }

    #[test]
    fn zero_copy_reads_is_on_by_default_and_a_mistyped_value_is_located() {
        let base = "[volume]\nname=\"smb\"\nbackend=\"local\"\npath=\"/x\"\n[nfs]\n";
        let p = |extra: &str| parse(&format!("{base}{extra}"), "t.toml", Path::new("/etc/nasgw"));
        assert!(p("").unwrap().nfs.zero_copy_reads);
        assert!(!p("zero_copy_reads = false\n").unwrap().nfs.zero_copy_reads);
        let e = p("listen = \"0.0.0.0:2049\"\nzero_copy_reads = \"no\"\n").unwrap_err();
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].line, 7, "{}", e[0]);
        assert!(e[0].message.contains("invalid type") && e[0].message.contains("bool"), "{}", e[0]);
        let e = p("zero_copy_read = false\n").unwrap_err();
        assert!(e[0].hint.as_deref().unwrap_or("").contains("zero_copy_reads"), "{}", e[0]);
    }

    #[test]
    fn bad_public_address_is_located() {
        let text = "[volume]\nname=\"smb\"\nbackend=\"local\"\npath=\"/x\"\n[cluster]\nnodes=[\"10.0.0.1\"]\nrecovery_lock=\"/lock\"\nsecret_file=\"k\"\npublic_addresses=[{address=\"10.0.0.300/24\", interface=\"eth0\"}]\n";
        let e = errors(text);
        assert_eq!(e[0].line, 9, "{}", e[0]);
        assert!(e[0].message.starts_with("cluster.public_addresses[0].address"), "{}", e[0]);
        assert!(e[0].hint.as_deref().unwrap().contains("prefix length"));
    }

    #[test]
    fn ipv6_public_addresses_need_listeners_on_ipv6() {
        let cluster = "[cluster]\nnodes=[\"10.0.0.1\"]\nrecovery_lock=\"/lock\"\nsecret_file=\"k\"\npublic_addresses=[{address=\"fd18::101/64\", interface=\"eth0\"}]\n";
        let base = "[volume]\nname=\"smb\"\nbackend=\"local\"\npath=\"/x\"\n";
        let e = errors(&format!("{base}[smb]\nlisten=\"0.0.0.0:445\"\n[nfs]\nenabled=false\n{cluster}"));
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].line, 6, "{}", e[0]);
        assert!(e[0].message.contains("fd18::101 is IPv6 but SMB listens on IPv4 only"), "{}", e[0]);
        assert!(e[0].hint.as_deref().unwrap().contains("listen = \"[::]:445\""), "{}", e[0]);
        let ok = format!("{base}[smb]\nlisten=\"[::]:445\"\n[nfs]\nlisten=\"[::]:2049\"\n{cluster}");
        assert!(parse(&ok, "t.toml", Path::new("/etc/nasgw")).is_ok());
    }

    #[test]
    fn share_outside_volume_is_refused_with_a_hint() {
        let text =
            "[volume]\nname=\"smb\"\nbackend=\"local\"\npath=\"/srv\"\n[[smb.share]]\nname=\"pub\"\npath=\"../etc\"\n";
        let e = errors(text);
        assert_eq!((e[0].line, e[0].column), (7, 6), "{}", e[0]);
        assert!(e[0].message.contains("outside the volume"));
    }

    #[test]
    fn host_path_for_a_share_gets_a_did_you_mean() {
        let text = "[volume]\nname=\"smb\"\nbackend=\"local\"\npath=\"/srv\"\n[[smb.share]]\nname=\"pub\"\npath=\"/srv/pub\"\n";
        let e = errors(text);
        assert!(e[0].hint.as_deref().unwrap().contains("path = \"/pub\""), "{}", e[0]);
    }

    #[test]
    fn missing_required_key_points_at_its_table() {
        let e = errors("[volume]\nname = \"smb\"\n");
        assert!(e[0].message.contains("missing field `backend`"), "{}", e[0]);
        assert_eq!(e[0].line, 1);
    }

    #[test]
    fn several_rule_violations_are_all_reported() {
        let text = "[volume]\nname=\"smb\"\nbackend=\"gluster\"\n[[smb.share]]\nname=\"a\"\nguest_only=true\n";
        let e = errors(text);
        assert_eq!(e.len(), 2, "{e:?}");
    }

    #[test]
    fn effective_config_round_trips() {
        let c = parse(EMBEDDED_DEFAULT, "e", Path::new("/w")).unwrap();
        let again = parse(&render(&c), "r", Path::new("/other")).unwrap();
        assert_eq!(c, again);
    }
}
