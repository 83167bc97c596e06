//! `ron-load`: open-loop load against ron-node (or any HTTP/1.1 server).

use clap::{Args, Parser, Subcommand};
use ron_bench::engine::{self, RunSpec};
use ron_bench::parse_duration;
use ron_bench::report::RunReport;
use ron_bench::sweep::{self, SweepSpec};
use ron_bench::workload::WorkloadSpec;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "ron-load", about = "Open-loop, coordinated-omission-corrected HTTP load.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// One run at one rate.
    Run {
        #[arg(long)]
        target: SocketAddr,
        /// Requests per second.
        #[arg(long)]
        rate: f64,
        #[command(flatten)]
        common: Common,
    },
    /// Step the rate over one or more targets (interleaved) and find where p99 bends.
    Sweep {
        /// `name=ADDR`, repeatable; steps alternate between targets.
        #[arg(long = "target", required = true)]
        targets: Vec<String>,
        #[arg(long)]
        from: f64,
        #[arg(long)]
        to: f64,
        #[arg(long)]
        step: f64,
        /// Interleaved rounds at half of each target's maximum.
        #[arg(long, default_value_t = 3)]
        half_load_rounds: usize,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Args)]
struct Common {
    /// `get` (no token), `auth-get` (bearer token; a token implies it) or
    /// `ledger-ingest` (POST /ingest, `--entries` Mint entries per request).
    #[arg(long)]
    workload: Option<String>,
    /// Entries per ledger-ingest request.
    #[arg(long, default_value_t = 16)]
    entries: usize,
    #[arg(long, default_value = "/healthz")]
    path: String,
    /// A file holding the token, e.g. ron-data/admin.token.
    #[arg(long)]
    token_file: Option<PathBuf>,
    #[arg(long)]
    token: Option<String>,
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    duration: Duration,
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    warmup: Duration,
    #[arg(long, default_value_t = 64)]
    connections: usize,
    #[arg(long, default_value_t = 64)]
    pipeline_max: usize,
    /// Cores to pin generator threads to, e.g. `1` or `2,3`.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    cores: Vec<usize>,
    /// A send this far behind plan counts as late.
    #[arg(long, value_parser = parse_duration, default_value = "1ms")]
    late_after: Duration,
    #[arg(long, value_parser = parse_duration, default_value = "3s")]
    drain: Duration,
    /// Write the JSON report here.
    #[arg(long)]
    json: Option<PathBuf>,
}

impl Common {
    fn workload(&self) -> anyhow::Result<WorkloadSpec> {
        let token = match (&self.token, &self.token_file) {
            (Some(token), _) => Some(token.clone()),
            (None, Some(file)) => Some(
                std::fs::read_to_string(file)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?,
            ),
            (None, None) => None,
        };
        let path = self.path.clone();
        match (self.workload.as_deref(), token) {
            (None | Some("auth-get"), Some(token)) => Ok(WorkloadSpec::AuthGet { path, token }),
            (None | Some("get"), None) => Ok(WorkloadSpec::Get { path }),
            (Some("auth-get"), None) => anyhow::bail!("auth-get needs --token or --token-file"),
            (Some("ledger-ingest"), Some(token)) => {
                Ok(WorkloadSpec::LedgerIngest { token, entries: self.entries })
            }
            (Some("ledger-ingest"), None) => {
                anyhow::bail!("ledger-ingest needs --token or --token-file")
            }
            (Some(other), _) => {
                anyhow::bail!("unknown workload {other} (get, auth-get, ledger-ingest)")
            }
        }
    }

    fn spec(&self, target: SocketAddr, rate: f64) -> anyhow::Result<RunSpec> {
        Ok(RunSpec {
            target,
            workload: self.workload()?,
            rate,
            warmup: self.warmup,
            duration: self.duration,
            connections: self.connections,
            pipeline_max: self.pipeline_max,
            cores: self.cores.clone(),
            late_after: self.late_after,
            drain: self.drain,
        })
    }

    fn write_json(&self, value: &impl serde::Serialize) -> anyhow::Result<()> {
        if let Some(path) = &self.json {
            std::fs::write(path, simd_json::to_string_pretty(value)?)?;
        }
        Ok(())
    }
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run { target, rate, common } => {
            let spec = common.spec(target, rate)?;
            let result = engine::run(&spec)?;
            let report = RunReport::new(&spec, &result);
            print!("{}", report.summary());
            common.write_json(&report)?;
        }
        Command::Sweep { targets, from, to, step, half_load_rounds, common } => {
            anyhow::ensure!(
                from > 0.0 && step > 0.0 && to >= from,
                "need 0 < from <= to and step > 0"
            );
            let targets = targets
                .iter()
                .map(|t| {
                    let (name, address) = t.split_once('=').unwrap_or((t.as_str(), t.as_str()));
                    Ok((name.to_owned(), address.parse::<SocketAddr>()?))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let mut rates = Vec::new();
            let mut rate = from;
            while rate <= to + 1e-9 {
                rates.push(rate);
                rate += step;
            }
            let spec = SweepSpec {
                base: common.spec(targets[0].1, from)?,
                targets,
                rates,
                half_load_rounds,
                bend_factor: 3.0,
                bend_floor_us: 1000.0,
            };
            let report = sweep::sweep(&spec, |name, run| print!("[{name}] {}", run.summary()))?;
            println!("\nsummary");
            for target in &report.targets {
                println!(
                    "  {:<10} max sustained {:>9.0}/s (achieved {:.0}/s)  p99 bends at {}  p99 @50% {:.1} us (rounds {:?})  p99.9 @50% {:.1} us",
                    target.name,
                    target.max_rate,
                    target.max_achieved_rate,
                    target.knee_rate.map_or_else(|| "-".to_owned(), |r| format!("{r:.0}/s")),
                    target.half_load_p99_median_us,
                    target
                        .half_load_p99_us
                        .iter()
                        .map(|v| (v * 10.0).round() / 10.0)
                        .collect::<Vec<_>>(),
                    target.half_load_p999_median_us,
                );
            }
            if let [first, second, ..] = report.targets.as_slice()
                && second.max_rate > 0.0
            {
                println!(
                    "  ratio {}/{}: {:.3}",
                    first.name,
                    second.name,
                    first.max_rate / second.max_rate
                );
            }
            common.write_json(&report)?;
        }
    }
    Ok(())
}
