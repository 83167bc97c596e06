//! `ron-node`: starts a node on the embedded defaults, a config file, the
//! environment and flags; `ron-node check-host` reports on the host.

use clap::{Parser, Subcommand};
use ron_server::config::{Config, Overrides};
use ron_server::node::{self, NodeHandle};
use ron_server::services::passport::{Passport, access::AdminToken};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "ron-node",
    version,
    about = "The RON macronode: ledger, wallet, passport, index and rewarder."
)]
struct Cli {
    /// A TOML configuration file (see tuning/).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Keep everything in RAM (the micronode profile).
    #[arg(long)]
    amnesia: bool,
    /// The address every shard accepts on.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Where the log, views and keys live.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Shard i also listens on this port + i (0 = off).
    #[arg(long)]
    shard_port_base: Option<u16>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Report what this host offers a latency-critical node, and what to change.
    CheckHost,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let file_text = match &cli.config {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => Some(text),
            Err(error) => {
                eprintln!("ron-node: config file {}: {error}", path.display());
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    let overrides = Overrides {
        amnesia: cli.amnesia,
        listen: cli.listen,
        data_dir: cli.data_dir,
        shard_port_base: cli.shard_port_base,
    };
    let config = match Config::load(
        file_text.as_deref(),
        std::env::vars(),
        &overrides,
        node::online_cores(),
    ) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("ron-node: {error}");
            return ExitCode::from(2);
        }
    };
    ron_server::logging::init(&config.log);
    if let Some(Command::CheckHost) = cli.command {
        ron_server::check_host::report(&config);
        return ExitCode::SUCCESS;
    }
    // Before the node starts: a signal that arrives while it starts is kept
    // and drains it once it runs, instead of killing it half-started.
    let mut signals = match signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP]) {
        Ok(signals) => signals,
        Err(error) => {
            eprintln!("ron-node: installing signal handlers: {error}");
            return ExitCode::FAILURE;
        }
    };
    let running = config.clone();
    let handle = match node::start(config) {
        Ok(handle) => handle,
        Err(error) => {
            eprintln!("ron-node: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    let passport = handle.service::<Passport>().expect("the passport always runs");
    match &passport.admin_token {
        AdminToken::Print(token) => println!("RON_ADMIN_TOKEN={token}"),
        AdminToken::Written(path) => {
            tracing::info!(path = %path.display(), "wrote the admin token")
        }
        AdminToken::Existing(path) => tracing::info!(path = %path.display(), "admin token"),
    }
    let shared = handle.shared.clone();
    std::thread::spawn(move || {
        let mut seen = 0;
        for signal in signals.forever() {
            if signal == SIGHUP {
                reload(cli.config.as_deref(), &overrides, &running, &shared);
                continue;
            }
            seen += 1;
            if seen == 1 {
                tracing::info!(signal, "draining");
                NodeHandle::begin_drain(&shared);
            } else {
                tracing::warn!(signal, "second signal: exiting now");
                std::process::exit(1);
            }
        }
    });
    match handle.join() {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("ron-node: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// SIGHUP: the configuration read again as at start; its reloadable part
/// applied (`ron_server::reload`), the rest reported and left for a
/// restart. A configuration that does not load changes nothing.
fn reload(
    path: Option<&std::path::Path>,
    overrides: &Overrides,
    running: &Config,
    shared: &ron_server::core::NodeShared,
) {
    let text = match path.map(std::fs::read_to_string).transpose() {
        Ok(text) => text,
        Err(error) => {
            tracing::error!(%error, "SIGHUP: the config file could not be read; nothing changed");
            return;
        }
    };
    let new = match Config::load(text.as_deref(), std::env::vars(), overrides, node::online_cores())
    {
        Ok(new) => new,
        Err(error) => {
            tracing::error!(%error, "SIGHUP: the config does not load; nothing changed");
            return;
        }
    };
    // Logged under the new log filter.
    let reloaded = shared.reload.apply(running, &new);
    tracing::info!(changed = ?reloaded.changed, "SIGHUP: configuration reloaded");
    if !reloaded.restart.is_empty() {
        tracing::warn!(
            fields = ?reloaded.restart,
            "SIGHUP: these fields changed and need a restart; they were not applied"
        );
    }
}
