//! The command line: `nasgw serve | check | status | ip [move ADDR NODE] | connections | disable | enable`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::logging::LogFormat;

/// nasgw: one binary per storage node serves a GlusterFS volume over SMB and NFS and moves the
/// service addresses between nodes when one dies.
#[derive(Debug, Parser)]
#[command(name = "nasgw", version, propagate_version = true)]
pub struct Cli {
    /// Config file [default: /etc/nasgw/nasgw.toml if it exists, else the embedded default]
    #[arg(long, short = 'c', global = true, value_name = "FILE", env = "NASGW_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log line format.
    #[arg(long, global = true, value_enum, default_value = "human")]
    pub log_format: LogFormat,
    /// Log level or filter (overridden by RUST_LOG).
    #[arg(long, global = true, default_value = "info", value_name = "FILTER")]
    pub log_level: String,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: serve the volume over NFS and SMB, take part in the cluster.
    Serve,
    /// Validate the config and print it with every default filled in (like Samba's testparm).
    Check {
        /// Print nothing when valid; only the exit code and errors.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Show the cluster's nodes and their states (like `ctdb status`).
    Status {
        /// Print the daemon's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Set an SMB user's password: stores its NT hash as `[[smb.user]]` in the config file
    /// (reads the password from the terminal, or one line of stdin).
    Passwd {
        /// The user's name.
        user: String,
    },
    /// Show the public addresses and which node holds each (like `ctdb ip`).
    Ip {
        /// Also show each address's interface, connections and last move.
        #[arg(long, short)]
        verbose: bool,
        /// Print the daemon's JSON answer.
        #[arg(long)]
        json: bool,
        /// `move ADDR NODE`: move a public address.
        #[command(subcommand)]
        action: Option<IpAction>,
    },
    /// List this node's client connections: protocol, addresses, users and open files (like
    /// `smbstatus`).
    Connections {
        /// Print the daemon's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Take this node out of service: its public addresses move to other nodes (like `ctdb disable`).
    Disable,
    /// Put this node back in service (like `ctdb enable`).
    Enable,
}

/// `nasgw ip` subcommands.
#[derive(Debug, Subcommand)]
pub enum IpAction {
    /// Move public address ADDR to node NODE (its pnn, as `nasgw status` shows), like `ctdb moveip`.
    Move {
        /// The public address.
        address: std::net::IpAddr,
        /// The node number that should hold it.
        node: u32,
    },
}
