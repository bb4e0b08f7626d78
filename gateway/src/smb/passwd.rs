//! `nasgw passwd USER`: stores a user's NT hash (never the password) in the config file as a
//! `[[smb.user]]` table, editing the file with `toml_edit` so the admin's comments and layout
//! survive.

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};
use toml_edit::{value, ArrayOfTables, DocumentMut, Item, Table};

use super::auth::{hash_hex, ntlmssp};

/// Sets (or adds) `user`'s NT hash for `password` in the TOML text `doc`; returns the new text.
pub fn set_in_text(doc: &str, user: &str, password: &str) -> Result<String> {
    let mut doc: DocumentMut = doc.parse().context("the config file is not valid TOML")?;
    let hash = hash_hex(&ntlmssp::nt_hash(password));
    let smb = doc.entry("smb").or_insert_with(|| Item::Table(Table::new()));
    let Some(smb) = smb.as_table_like_mut() else { bail!("[smb] is not a table") };
    let users = smb.entry("user").or_insert(Item::ArrayOfTables(ArrayOfTables::new()));
    let Some(users) = users.as_array_of_tables_mut() else { bail!("smb.user is not a list of [[smb.user]] tables") };
    let existing =
        users.iter_mut().find(|t| t.get("name").and_then(|n| n.as_str()).is_some_and(|n| n.eq_ignore_ascii_case(user)));
    match existing {
        Some(t) => {
            t["nt_hash"] = value(hash);
        }
        None => {
            let mut t = Table::new();
            t["name"] = value(user);
            t["nt_hash"] = value(hash);
            users.push(t);
        }
    }
    Ok(doc.to_string())
}

/// Reads the new password: from the terminal without echo (asked twice), or one line of stdin.
pub fn read_password(user: &str) -> Result<String> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        let first = prompt_hidden(&format!("New SMB password for {user}: "))?;
        let again = prompt_hidden("Retype new SMB password: ")?;
        if first != again {
            bail!("the passwords differ; nothing was changed");
        }
        return Ok(first);
    }
    let mut line = String::new();
    stdin.lock().read_line(&mut line)?;
    let pw = line.trim_end_matches(['\r', '\n']).to_string();
    Ok(pw)
}

fn prompt_hidden(prompt: &str) -> Result<String> {
    eprint!("{prompt}");
    std::io::stderr().flush()?;
    // SAFETY: termios calls on fd 0 with a zeroed struct filled by tcgetattr.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    let have = unsafe { libc::tcgetattr(0, &mut t) } == 0;
    if have {
        let mut quiet = t;
        quiet.c_lflag &= !libc::ECHO;
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &quiet) };
    }
    let mut line = String::new();
    let r = std::io::stdin().lock().read_line(&mut line);
    if have {
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &t) };
    }
    eprintln!();
    r?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

/// Runs `nasgw passwd USER` on the config file at `path`.
pub fn run(path: &Path, user: &str) -> Result<()> {
    if user.is_empty() || user.contains(['\\', '/', ':', '@', ' ']) {
        bail!("`{user}` is not a usable user name");
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let password = read_password(user)?;
    if password.is_empty() {
        bail!("empty password refused; nothing was changed");
    }
    let new = set_in_text(&text, user, &password)?;
    replace_keeping_owner_and_mode(path, new.as_bytes())?;
    println!("SMB password of `{user}` set in {} (restart nasgw to apply)", path.display());
    Ok(())
}

/// Replaces `path` with `content` atomically (a temporary file renamed over it) that keeps
/// the original's owner, group and mode: the file holds NT hashes, which are password
/// equivalents, so a umask must never widen who can read it. The temporary file is created
/// 0600 and only then given the original's mode.
pub fn replace_keeping_owner_and_mode(path: &Path, content: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
    let meta = std::fs::metadata(path).with_context(|| format!("cannot stat {}", path.display()))?;
    let tmp = path.with_extension("toml.nasgw-tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    let done = (|| -> Result<()> {
        f.write_all(content)?;
        std::os::unix::fs::fchown(&f, Some(meta.uid()), Some(meta.gid()))
            .context("cannot give the new file the original's owner")?;
        f.set_permissions(std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    })();
    if done.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    done.with_context(|| format!("cannot replace {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_replaced_config_keeps_its_mode_whatever_the_umask() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nasgw.toml");
        std::fs::write(&path, "old").unwrap();
        for mode in [0o600, 0o640] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            // SAFETY: umask only changes this process's file creation mask.
            let old = unsafe { libc::umask(0) };
            let r = replace_keeping_owner_and_mode(&path, b"new");
            // SAFETY: as above, restoring it.
            unsafe { libc::umask(old) };
            r.unwrap();
            let m = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
            assert_eq!(m, mode, "mode kept");
            assert_eq!(std::fs::read(&path).unwrap(), b"new");
        }
    }

    #[test]
    fn adds_then_updates_a_user_keeping_comments() {
        let text = "# my NAS\n[volume]\nname = \"smb\" # the volume\nbackend = \"local\"\npath = \"/srv\"\n";
        let once = set_in_text(text, "alice", "one").unwrap();
        assert!(once.contains("# my NAS") && once.contains("# the volume"));
        assert!(once.contains("[[smb.user]]") && once.contains("name = \"alice\""));
        assert!(!once.contains("one\""), "the password itself is never written");
        let twice = set_in_text(&once, "ALICE", "two").unwrap();
        assert_eq!(twice.matches("[[smb.user]]").count(), 1);
        assert!(twice.contains(&hash_hex(&ntlmssp::nt_hash("two"))));
    }
}
