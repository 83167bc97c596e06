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

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Read the whole log and check every record (checksums, the root chain,
    /// each item's decoding, entry ids never repeated); changes nothing.
    /// Exit 0 when it is whole (a torn last record, never acknowledged, is
    /// reported), 1 on corruption, 2 when it could not tell (a node running
    /// on the data dir, a config or read error).
    VerifyLog,
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
    match cli.command {
        Some(Command::CheckHost) => {
            ron_server::check_host::report(&config);
            return ExitCode::SUCCESS;
        }
        Some(Command::VerifyLog) => return verify_log(&config),
        None => {}
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

/// `ron-node verify-log`: the full scan a start used to make, on demand.
fn verify_log(config: &Config) -> ExitCode {
    use ron_server::log::segments::{self, TornTail};
    let dir = config.data_dir.join("log");
    let registry = match ron_server::services::registry().enabled(config) {
        Ok(registry) => registry,
        Err(error) => {
            eprintln!("ron-node: {error:#}");
            return ExitCode::from(2);
        }
    };
    let in_use = node::data_dir_in_use(config);
    if in_use {
        println!(
            "note: a node is running on {}: records written during the scan may look torn or corrupt",
            config.data_dir.display()
        );
    }
    let mut checker = ron_server::service::Checker(&registry);
    // The whole log, every record hashed again: the index on disk is not
    // used.
    let (all, scan) = (segments::LogState::checking(), segments::Scan::all(TornTail::Report));
    let recovered = match segments::recover(&dir, all, scan, &mut checker) {
        Ok(recovered) => recovered,
        Err(error) => {
            eprintln!("ron-node: reading {}: {error}", dir.display());
            return ExitCode::from(2);
        }
    };
    let entries = recovered.state.accumulator.len();
    let root = ron_proto::merkle::hex(&recovered.state.accumulator.root());
    println!(
        "{}: {} records, {entries} entries, root {root}, read in {} ms",
        dir.display(),
        recovered.records,
        recovered.took.as_millis()
    );
    if let Some(torn) = &recovered.truncated {
        println!("torn tail: {torn}");
    }
    match &recovered.corruption {
        // On a running node that may be a record being written: say so,
        // and exit 2 (not known) rather than 1.
        Some(corruption) if in_use => {
            println!("inconclusive (the node is running): {corruption}");
            ExitCode::from(2)
        }
        Some(corruption) => {
            println!("CORRUPT: {corruption}");
            ExitCode::FAILURE
        }
        None => {
            println!("ok: every record's checksum, root and items check out");
            ExitCode::SUCCESS
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
