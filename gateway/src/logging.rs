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
