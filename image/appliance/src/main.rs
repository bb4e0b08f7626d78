//! `nasgw-appliance`: the appliance image's boot services, all driven by the one `nasgw.toml`.
//!
//! - `system`: validates the file (as `nasgw check`), then the node's address, host name,
//!   firewall, accounts, time servers and SSH keys ([`system`]). A bad file stops here: its
//!   errors go to the console and the journal, and nothing that needs the file starts.
//! - `disks`: formats blank data disks for this node's bricks and mounts them ([`disks`]).
//! - `provision`: forms the GlusterFS pool and creates the volume ([`provision`]).
//! - `issue`: the console's login banner: addresses, provisioning, `nasgw status`.
//! - `update`: writes a new image into the root slot not running ([`update`]).

use nasgw_appliance::{disks, provision, system, update};

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use clap::{Parser, Subcommand};
use nasgw::config::{self, Config};

/// Where a bad config's errors are kept for the console banner.
const CONFIG_ERRORS: &str = "/run/nasgw/config-errors";

/// The appliance's boot services.
#[derive(Debug, Parser)]
#[command(name = "nasgw-appliance", version)]
struct Cli {
    /// Config file.
    #[arg(long, short = 'c', global = true, default_value = config::DEFAULT_PATH)]
    config: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Apply the file to the operating system: network, host name, firewall, accounts, time, SSH.
    System {
        /// Write under this directory instead of `/` (tests).
        #[arg(long, default_value = "/")]
        root: PathBuf,
    },
    /// Format blank data disks for this node's bricks and mount them.
    Disks,
    /// Form the GlusterFS pool and create, start and tune the volume `[volume] bricks` lists.
    Provision {
        /// Keep watching after the volume matches the file (for nodes added later).
        #[arg(long)]
        watch: bool,
    },
    /// Print the console banner (addresses, provisioning, `nasgw status`).
    Issue,
    /// Write a new appliance image (the raw `nasgw.img`) into the root slot not running and
    /// boot it next; the config, state and data disks are kept (also `nasgw-update IMAGE`).
    Update {
        /// The new image file.
        #[arg(required_unless_present = "rollback")]
        image: Option<PathBuf>,
        /// Boot the other slot next instead (undo an update, or redo it).
        #[arg(long, conflicts_with = "image")]
        rollback: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Cmd::Issue = cli.command {
        print!("{}", issue(&cli.config));
        return ExitCode::SUCCESS;
    }
    if let Cmd::Update { image, rollback } = &cli.command {
        // An update needs no valid config: it may be what fixes the node.
        let r = match image {
            Some(img) if !rollback => update::update(img),
            _ => update::rollback(),
        };
        return match r {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("nasgw-update: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let cfg = match load(&cli.config) {
        Some(c) => c,
        None => return ExitCode::from(2),
    };
    let result = match cli.command {
        Cmd::System { root } => system::apply(&cfg, &root),
        Cmd::Disks => disks_for(&cfg),
        Cmd::Provision { watch } => provision::run(&cfg, watch, &provision::status_file()),
        Cmd::Issue | Cmd::Update { .. } => unreachable!(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nasgw-appliance: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Loads and validates the file; prints every error (console and journal) and keeps them for
/// the banner.
fn load(path: &Path) -> Option<Config> {
    let _ = std::fs::remove_file(CONFIG_ERRORS);
    if !path.exists() {
        eprintln!("nasgw-appliance: {} is missing: put nasgw.toml on the partition labelled NASGW", path.display());
        let _ = std::fs::create_dir_all("/run/nasgw");
        let _ = std::fs::write(CONFIG_ERRORS, format!("{} is missing\n", path.display()));
        return None;
    }
    match config::load(Some(path)) {
        Ok(l) => Some(l.config),
        Err(errors) => {
            let mut text = String::new();
            for e in &errors {
                text.push_str(&format!("error: {e}\n"));
            }
            text.push_str(&format!(
                "{} error(s) in {}: this node starts nothing until the file is fixed (edit it on the NASGW partition, reboot)\n",
                errors.len(),
                path.display()
            ));
            eprint!("{text}");
            let _ = std::fs::create_dir_all("/run/nasgw");
            let _ = std::fs::write(CONFIG_ERRORS, text);
            None
        }
    }
}

fn disks_for(cfg: &Config) -> anyhow::Result<()> {
    if cfg.volume.bricks.is_empty() {
        return Ok(());
    }
    // The node's address comes up with the network (a static one within a second, DHCP later).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let want = loop {
        let local = ha::self_id::local_addresses()?;
        let want = provision::desired(cfg, &local).expect("bricks are listed");
        if want.me.is_some() || std::time::Instant::now() > deadline {
            break want;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    };
    if want.me.is_none() {
        println!("nasgw-appliance: no brick of [volume] bricks is on this node's addresses: no disk to prepare");
        return Ok(());
    }
    // Every disk must be known and probed by udev before one is judged blank (only brick
    // nodes wait for that; the boot of the others does not).
    let _ = Command::new("udevadm").args(["settle", "--timeout=120"]).status();
    let mount_points: Vec<String> = want
        .my_bricks()
        .iter()
        .map(|b| Path::new(provision::plan::path_of(b)).parent().map_or("/".into(), |p| p.display().to_string()))
        .collect();
    let missing = disks::apply(&disks::plan(&mount_points, &disks::devices()?))?;
    if !missing.is_empty() {
        anyhow::bail!("no data disk for the bricks under {missing:?}: attach a blank disk per brick");
    }
    Ok(())
}

/// The login banner: agetty shows it above the prompt (`\` escaped).
fn issue(config: &Path) -> String {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cmd = |prog: &str, args: &[&str]| {
        Command::new(prog)
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(if o.status.success() { &o.stdout } else { &o.stderr }).into_owned())
            .unwrap_or_default()
    };
    let mut s = read("/etc/nasgw-image").trim().to_string();
    s.push_str(&format!("  -  {}\n", read("/etc/hostname").trim()));
    s.push_str(&cmd("ip", &["-brief", "address", "show", "scope", "global"]));
    let errors = read(CONFIG_ERRORS);
    if !config.exists() {
        // Early in the boot the partition may not be mounted yet: no status to ask for then.
        s.push_str(&format!(
            "config {} IS MISSING: no partition labelled NASGW, or no nasgw.toml on it\n",
            config.display()
        ));
        s.push_str("\nNo password login: SSH with a key from [system] ssh_keys.\n\n");
        return s.replace('\\', "\\\\");
    } else if errors.is_empty() {
        s.push_str(&format!("config {}: valid\n", config.display()));
    } else {
        s.push_str(&format!("config {} HAS ERRORS:\n{errors}", config.display()));
    }
    let prov = read(provision::STATUS_FILE);
    if !prov.is_empty() {
        s.push_str(&format!("provision: {prov}"));
    }
    s.push_str("--- nasgw status\n");
    s.push_str(&cmd("nasgw", &["status"]));
    s.push_str("--- nasgw ip\n");
    s.push_str(&cmd("nasgw", &["ip"]));
    s.push_str("\nNo password login: SSH with a key from [system] ssh_keys.\n\n");
    s.replace('\\', "\\\\")
}
