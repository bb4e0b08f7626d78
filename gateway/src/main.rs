//! The `nasgw` binary: parses the command line and runs one subcommand.

use std::process::ExitCode;

use clap::Parser;
use nasgw::cli::{Cli, Command, IpAction};
use nasgw::{config, control, daemon, logging};

/// Exit code for an invalid config (as `testparm` uses non-zero).
const EXIT_BAD_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve) {
        // A command's output cut short by its reader (`nasgw status | head -1`) ends it quietly,
        // as it does other Unix tools, instead of a panic in `println!`. The daemon keeps Rust's
        // ignored SIGPIPE: its sockets report EPIPE as an error.
        // SAFETY: restoring a signal's default disposition, before any other thread exists.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    if let Command::Passwd { user } = &cli.command {
        let path = cli.config.clone().unwrap_or_else(|| config::DEFAULT_PATH.into());
        return match nasgw::smb::passwd::run(&path, user) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let loaded = match config::load(cli.config.as_deref()) {
        Ok(l) => l,
        Err(errors) => {
            for e in &errors {
                eprintln!("error: {e}");
            }
            eprintln!("{} error(s) in the config; nothing was started", errors.len());
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    match cli.command {
        Command::Check { quiet } => {
            // The mount point is a fact of this node, but as much the file's business as a
            // typo: an error at its line.
            if let Some((message, hint)) = nasgw::fuse::mountpoint::check(&loaded.config) {
                eprintln!("error: {}", config::located(&loaded, "fuse.mountpoint", message, Some(hint)));
                return ExitCode::from(EXIT_BAD_CONFIG);
            }
            // Facts of this node a valid config still fails on (a readable secret, an unknown
            // force_user, a guest share its guests cannot write): warnings, the file is valid.
            let host = nasgw::provision::host_warnings(&loaded.config);
            for w in config::secret_file_warnings(&loaded).into_iter().chain(host) {
                eprintln!("warning: {w}");
            }
            if !quiet {
                println!("# Loaded config from {}; it is valid.", loaded.source.display_name());
                println!("# Effective config, every default filled in:\n");
                print!("{}", config::render(&loaded.config));
            }
            ExitCode::SUCCESS
        }
        Command::Serve => {
            logging::init(cli.log_format, &cli.log_level);
            for w in config::secret_file_warnings(&loaded) {
                tracing::warn!("{w}");
            }
            match daemon::serve(loaded) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Passwd { .. } => unreachable!("handled before loading the config"),
        Command::Status { json } => ask(&loaded, control::Request::Status, json, |r| match r {
            control::Response::Status(s) => Some(s.to_string()),
            _ => None,
        }),
        Command::Ip { verbose, json, action: None } => ask(&loaded, control::Request::Ip, json, |r| match r {
            control::Response::Ip(ip) => Some(ip.render(verbose).trim_end().to_string()),
            _ => None,
        }),
        Command::Ip { json, action: Some(IpAction::Move { address, node }), .. } => {
            ask(&loaded, control::Request::IpMove { address, node }, json, done)
        }
        Command::Connections { json } => ask(&loaded, control::Request::Connections, json, |r| match r {
            control::Response::Connections { now, connections } => {
                Some(nasgw::clients::render(connections, *now).trim_end().to_string())
            }
            _ => None,
        }),
        Command::Disable => ask(&loaded, control::Request::Disable, false, done),
        Command::Enable => ask(&loaded, control::Request::Enable, false, done),
    }
}

/// Shows the daemon's acknowledgement of an admin request.
fn done(r: &control::Response) -> Option<String> {
    match r {
        control::Response::Done { message } => Some(message.clone()),
        _ => None,
    }
}

/// Sends `req` to the daemon of this config and prints its answer.
fn ask(
    loaded: &config::Loaded,
    req: control::Request,
    json: bool,
    show: impl Fn(&control::Response) -> Option<String>,
) -> ExitCode {
    match control::request(&loaded.config.node.control_socket, &req) {
        Ok(control::Response::Error { message }) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
        Ok(resp) if json => {
            println!("{}", serde_json::to_string_pretty(&resp).expect("serialises"));
            ExitCode::SUCCESS
        }
        Ok(resp) => match show(&resp) {
            Some(text) => {
                println!("{text}");
                ExitCode::SUCCESS
            }
            None => {
                eprintln!("error: the daemon answered a different question: {resp:?}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
