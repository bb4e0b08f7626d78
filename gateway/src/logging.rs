//! Log output: human-readable by default, JSON lines with `--log-format json`.
//! The level comes from `--log-level`, or `RUST_LOG` when set (e.g. `RUST_LOG=nasgw=debug`).

use std::io::IsTerminal;

use clap::ValueEnum;
use tracing_subscriber::EnvFilter;

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One readable line per event.
    Human,
    /// One JSON object per event, for log collectors.
    Json,
    /// Straight to the systemd journal, each event's fields as journal fields (`journalctl
    /// -o verbose` shows them; `journalctl VOLUME=smb` selects by them). Falls back to human
    /// lines when there is no journal.
    Journald,
}

/// Installs the global subscriber; logs go to stderr so stdout stays for command output.
pub fn init(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Human => builder.try_init().map_err(|e| e.to_string()),
        LogFormat::Json => builder.json().flatten_event(true).try_init().map_err(|e| e.to_string()),
        LogFormat::Journald => match tracing_journald::layer() {
            Ok(layer) => {
                use tracing_subscriber::layer::SubscriberExt;
                use tracing_subscriber::util::SubscriberInitExt;
                let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
                tracing_subscriber::registry()
                    .with(filter)
                    .with(layer.with_syslog_identifier("nasgw".into()))
                    .try_init()
                    .map_err(|e| e.to_string())
            }
            Err(_) => builder.try_init().map_err(|e| e.to_string()),
        },
    };
}

/// A client-supplied string (a MOUNT path, an NTLM user name) as a log field: control
/// characters, newlines and escape sequences are shown escaped (`\n`, `\u{1b}`), so a client
/// cannot forge log lines or recolour a terminal. Every such field goes through it.
pub struct Untrusted<'a>(pub &'a [u8]);

impl std::fmt::Display for Untrusted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for chunk in self.0.utf8_chunks() {
            write!(f, "{}", chunk.valid().escape_debug())?;
            for b in chunk.invalid() {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

/// [`Untrusted`] of a string.
pub fn untrusted(s: &(impl AsRef<[u8]> + ?Sized)) -> Untrusted<'_> {
    Untrusted(s.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_strings_cannot_break_or_colour_a_log_line() {
        let forged = b"/smb\n2026-01-01T00:00:00Z  INFO nasgw: FAKE\x1b[31m\r\xff";
        let shown = untrusted(&forged[..]).to_string();
        assert!(!shown.chars().any(|c| c.is_control()), "{shown}");
        assert_eq!(shown, "/smb\\n2026-01-01T00:00:00Z  INFO nasgw: FAKE\\u{1b}[31m\\r\\xff");
        assert_eq!(untrusted("alice").to_string(), "alice");
        assert_eq!(untrusted("Zoë").to_string(), "Zoë");
    }
}
