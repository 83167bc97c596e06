//! `ron-load`: open-loop load against ron-node (or any HTTP/1.1 server).

use clap::{Args, Parser, Subcommand};
use ron_bench::engine::{self, Idle, RunSpec};
use ron_bench::index_workload::{IndexMix, IndexSpec};
use ron_bench::parse_duration;
use ron_bench::passport_workload::{self, PassportMix, PassportSpec};
use ron_bench::report::RunReport;
use ron_bench::reward_workload::{RewardMix, RewardSpec};
use ron_bench::sweep::{self, SweepSpec};
use ron_bench::wallet_workload::{Mix, WalletSpec};
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
    /// Write the rewarder's golden vectors (compute requests S, M, L) and
    /// their expected inputs_cid, run_key and commitment to `--out`.
    RewardVectors {
        #[arg(long, default_value = "testing/performance/vectors")]
        out: PathBuf,
    },
    /// Run the canonical workloads against a node the suite starts, each
    /// scenario's rounds written to `--out` as `<scenario>.json`.
    Suite {
        /// The ron-node binary.
        #[arg(long, default_value = "target/release/ron-node")]
        node: PathBuf,
        /// The node's config (a profile of tuning/).
        #[arg(long, default_value = "tuning/reference-2c-ledger.toml")]
        profile: PathBuf,
        #[arg(long, default_value = "testing/performance/runs/latest")]
        out: PathBuf,
        /// CI rates and key spaces (a minute or two).
        #[arg(long)]
        quick: bool,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        #[arg(long, value_parser = parse_duration, default_value = "10s")]
        duration: Duration,
        #[arg(long, value_parser = parse_duration, default_value = "2s")]
        warmup: Duration,
        /// Generator cores.
        #[arg(long, value_delimiter = ',', default_value = "0")]
        cores: Vec<usize>,
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        #[arg(long, default_value_t = 8100)]
        shard_port_base: u16,
        /// Only these scenarios (comma-separated).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Requests per second for every load scenario (instead of each
        /// one's own rate).
        #[arg(long)]
        rate: Option<f64>,
        /// Start the reference (nginx `return 200` on 127.0.0.1:8089, one
        /// worker pinned to this core; installed when absent) and measure it
        /// after every round.
        #[arg(long)]
        nginx_core: Option<usize>,
        /// Measure a node already listening at `--listen` (with this admin
        /// token file) instead of starting one; no cold-start scenarios.
        #[arg(long)]
        attach_token_file: Option<PathBuf>,
        /// That node's process id, for its CPU and RSS.
        #[arg(long)]
        attach_pid: Option<u32>,
        /// No sweep after each scenario's rounds.
        #[arg(long)]
        no_sweep: bool,
        /// The baselines report.html gates and draws against (default
        /// testing/performance/baselines/<profile>).
        #[arg(long)]
        baselines: Option<PathBuf>,
        /// The generator between events: `spin` (the baselines') or
        /// `sleep` (for a profile that puts node threads on its cores).
        #[arg(long, value_parser = parse_idle, default_value = "spin")]
        idle: Idle,
    },
    /// The compressed soak: write-mix at a share of the measured maximum
    /// for a duration, in windows; fails (exit 1) when RSS grows more than
    /// 2 % or p95 drifts more than 10 % over the steady windows.
    Soak {
        #[arg(long, default_value = "target/release/ron-node")]
        node: PathBuf,
        #[arg(long, default_value = "tuning/reference-2c-ledger.toml")]
        profile: PathBuf,
        #[arg(long, default_value = "testing/performance/runs/soak")]
        out: PathBuf,
        #[arg(long, value_parser = parse_duration, default_value = "10m")]
        duration: Duration,
        #[arg(long, value_parser = parse_duration, default_value = "30s")]
        window: Duration,
        /// The share of the maximum held.
        #[arg(long, default_value_t = 0.6)]
        fraction: f64,
        /// The maximum write-mix rate, when known (else measured first).
        #[arg(long)]
        max_rate: Option<f64>,
        #[arg(long, value_delimiter = ',', default_value = "0")]
        cores: Vec<usize>,
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        #[arg(long, default_value_t = 8100)]
        shard_port_base: u16,
        /// CI key spaces.
        #[arg(long)]
        quick: bool,
    },
    /// A directory of measurements (a suite run, or a profile's
    /// baselines) as a Markdown table of medians; optionally written into
    /// the README between its markers, and as the seeds' baseline shapes.
    Baselines {
        #[arg(default_value = "testing/performance/baselines/reference-2c-ledger")]
        dir: PathBuf,
        /// Replace the table between the README's markers.
        #[arg(long)]
        readme: Option<PathBuf>,
        /// With --readme: change nothing, exit 1 when the table differs.
        #[arg(long)]
        check: bool,
        /// Write the seeds' shapes (issuance-<size>.json,
        /// macronode/baseline.json, rewarder-<scale>.json) under this dir.
        #[arg(long)]
        seed_shapes: Option<PathBuf>,
        /// The machine, as the passport seed names it.
        #[arg(long, default_value = "2c/24g")]
        node_size: String,
        /// Write the directory's report.html (tables and plots) here.
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// Apply the regression gates to a run against its baseline (medians
    /// of rounds; reference-normalized when both carry reference rounds);
    /// exits 1 on a breach no valid waiver excuses.
    Compare {
        run: PathBuf,
        baseline: PathBuf,
        /// Time-boxed waivers (JSON list of {scenario, gate, reason, owner,
        /// expires}).
        #[arg(long, default_value = "testing/performance/waivers.json")]
        waivers: PathBuf,
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
    /// `get` (no token), `auth-get` (bearer token; a token implies it),
    /// `ledger-ingest` (POST /ingest, `--entries` Mint entries per request),
    /// a wallet mix: `wallet-setup` (fund the pool), `wallet-read`,
    /// `wallet-write` (with `--replay-percent` for replays), `wallet-transfer`,
    /// `wallet-transfers` (`POST /v1/transfers` of `--entries` transfers);
    /// a passport mix: `passport-verify`, `passport-mix` (80 % issue,
    /// 20 % verify), `passport-revoke` (verify with revocations); or an
    /// index mix: `index-setup` (pointers, objects, providers for `--keys`
    /// keys), `index-resolve` (80/20 hot:cold), `index-hot` (`--hot-keys`),
    /// `index-providers`, `index-cold` (every answer made afresh); or a
    /// rewarder mix over the `--scale` vector: `reward-fresh` (a new epoch
    /// per request), `reward-replay` (one epoch, stored after the first).
    #[arg(long)]
    workload: Option<String>,
    /// Passport mixes: `accept_algs` of the issues (e.g. `ed25519`).
    #[arg(long)]
    accept_algs: Option<String>,
    /// `passport-revoke`: one revocation every this many requests.
    #[arg(long, default_value_t = 100)]
    revoke_every: u64,
    /// Entries per ledger-ingest request, transfers per wallet-transfers one.
    #[arg(long, default_value_t = 16)]
    entries: usize,
    /// Index workloads: the key space `site-0.bench .. site-N-1.bench`.
    #[arg(long, default_value_t = 10_000)]
    keys: usize,
    /// `index-hot`: the keys resolved (the first this many).
    #[arg(long, default_value_t = 100)]
    hot_keys: usize,
    /// `index-setup`: the provider to name (a node's URL), else an
    /// unroutable `http://10.0.x.y:80` per key.
    #[arg(long)]
    provider_url: Option<String>,
    /// `index-setup`: the providers' TTL.
    #[arg(long, default_value_t = 86_400)]
    provider_ttl: u64,
    /// Rewarder workloads: the golden vector computed (S, M or L).
    #[arg(long, default_value = "S")]
    scale: String,
    /// Wallet workloads: the account pool `acct:0..N-1`.
    #[arg(long, default_value_t = 10_000)]
    accounts: usize,
    /// Wallet workloads: accounts that pay (the first this many of the pool).
    #[arg(long, default_value_t = 256)]
    payers: usize,
    /// Wallet workloads: what `wallet-setup` issues to each account.
    #[arg(long, default_value_t = 1_000_000_000)]
    funds: u128,
    /// `wallet-write`: the share of requests (in %) that re-send an
    /// acknowledged write (idempotent replays).
    #[arg(long, default_value_t = 0)]
    replay_percent: u32,
    /// Send each request to its owner shard's port (read from the target's
    /// `/v1/node/topology`).
    #[arg(long)]
    shard_aware: bool,
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
    /// Over the middle third of the measured time, this many times the
    /// rate (2: the seeds' burst runs; 1: steady).
    #[arg(long, default_value_t = 1.0)]
    burst: f64,
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
    /// Between events, `spin` (poll again at once: precise, and the whole
    /// core) or `sleep` (until an answer or the next send: leaves the core
    /// to the node's threads where a layout puts them beside the generator).
    #[arg(long, value_parser = parse_idle, default_value = "spin")]
    idle: Idle,
    /// Write the JSON report here.
    #[arg(long)]
    json: Option<PathBuf>,
}

impl Common {
    fn workload(&self, target: SocketAddr, shards: usize) -> anyhow::Result<WorkloadSpec> {
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
            (Some(name), token) if Mix::parse(name).is_some() => {
                let token = token.ok_or_else(|| anyhow::anyhow!("{name} needs a token"))?;
                Ok(WorkloadSpec::Wallet(WalletSpec {
                    mix: Mix::parse(name).expect("checked"),
                    token,
                    accounts: self.accounts,
                    funds: self.funds,
                    shards,
                    replay_percent: self.replay_percent,
                    payers: self.payers,
                    first_payer: 0,
                    batch: self.entries,
                }))
            }
            (Some(name), token) if IndexMix::parse(name).is_some() => {
                let mix = IndexMix::parse(name).expect("checked");
                anyhow::ensure!(
                    mix != IndexMix::Setup || token.is_some(),
                    "index-setup needs a token (index.write)"
                );
                Ok(WorkloadSpec::Index(IndexSpec {
                    mix,
                    token,
                    keys: self.keys,
                    hot_keys: self.hot_keys,
                    provider_url: self.provider_url.clone(),
                    provider_ttl_s: self.provider_ttl,
                }))
            }
            (Some(name), token) if RewardMix::parse(name).is_some() => {
                let token =
                    token.ok_or_else(|| anyhow::anyhow!("{name} needs a token (rewarder.run)"))?;
                let mix = RewardMix::parse(name).expect("checked");
                Ok(WorkloadSpec::Reward(RewardSpec::new(mix, token, &self.scale)?))
            }
            (Some(name), token) if PassportMix::parse(name).is_some() => {
                let token = token.ok_or_else(|| anyhow::anyhow!("{name} needs a token"))?;
                let pool = PassportSpec::issue_pool(target, &token)?;
                Ok(WorkloadSpec::Passport(PassportSpec {
                    mix: PassportMix::parse(name).expect("checked"),
                    token,
                    pool,
                    accept_algs: self.accept_algs.clone(),
                    revoke_every: self.revoke_every,
                }))
            }
            (Some(other), _) => {
                anyhow::bail!("unknown workload {other} (get, auth-get, ledger-ingest)")
            }
        }
    }

    fn spec(&self, target: SocketAddr, rate: f64) -> anyhow::Result<RunSpec> {
        let shard_targets = if self.shard_aware { shard_addresses(target)? } else { Vec::new() };
        Ok(RunSpec {
            target,
            shard_targets: shard_targets.clone(),
            workload: self.workload(target, shard_targets.len().max(1))?,
            rate,
            burst: self.burst,
            warmup: self.warmup,
            duration: self.duration,
            connections: self.connections,
            pipeline_max: self.pipeline_max,
            cores: self.cores.clone(),
            late_after: self.late_after,
            drain: self.drain,
            idle: self.idle,
        })
    }

    fn write_json(&self, value: &impl serde::Serialize) -> anyhow::Result<()> {
        if let Some(path) = &self.json {
            std::fs::write(path, simd_json::to_string_pretty(value)?)?;
        }
        Ok(())
    }
}

fn parse_idle(name: &str) -> Result<Idle, String> {
    Idle::parse(name).ok_or_else(|| format!("`{name}`: spin or sleep"))
}

/// The shard ports of the node at `target`, from `/v1/node/topology`.
fn shard_addresses(target: SocketAddr) -> anyhow::Result<Vec<SocketAddr>> {
    let mut body = ron_bench::fetch(target, "GET", "/v1/node/topology", None, None)?;
    let value = simd_json::to_owned_value(&mut body)?;
    use simd_json::prelude::*;
    let ports: Vec<SocketAddr> = value
        .get("shard_ports")
        .and_then(|p| p.as_array())
        .ok_or_else(|| anyhow::anyhow!("the topology has no shard_ports (shard_port_base = 0?)"))?
        .iter()
        .filter_map(|p| p.as_u64())
        .map(|port| SocketAddr::new(target.ip(), port as u16))
        .collect();
    anyhow::ensure!(!ports.is_empty(), "the node lists no shard ports");
    Ok(ports)
}

/// The node's revocation propagation percentiles (bucket upper bounds).
fn print_propagation(target: SocketAddr) -> anyhow::Result<()> {
    let metrics = ron_bench::fetch(target, "GET", "/metrics", None, None)?;
    let response = String::from_utf8_lossy(&metrics);
    let (count, found) = passport_workload::histogram_percentiles(
        &response,
        "passport_revocation_propagation_seconds",
        &[0.5, 0.9, 0.99, 1.0],
    );
    let found: Vec<String> = found.iter().map(|(q, le)| format!("p{}<={le}s", q * 100.0)).collect();
    println!(
        "  revocation propagation (node, since start): {count} revocations, {}",
        found.join(" ")
    );
    Ok(())
}

/// Writes `S.json`, `M.json`, `L.json` (compute requests) and
/// `expected.json` (what the node must answer for each) to `out`.
fn write_reward_vectors(out: &std::path::Path) -> anyhow::Result<()> {
    use ron_bench::reward_vectors::{SCALES, body, expected, request};
    std::fs::create_dir_all(out)?;
    let mut all = std::collections::BTreeMap::new();
    for scale in SCALES {
        let path = out.join(format!("{}.json", scale.name));
        std::fs::write(&path, body(&request(scale)))?;
        let expected = expected(scale);
        println!("{} -> {} ({} payouts)", path.display(), expected.commitment, expected.payouts);
        all.insert(scale.name, expected);
    }
    let mut text = serde_json::to_string_pretty(&all)?;
    text.push('\n');
    std::fs::write(out.join("expected.json"), text)?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::RewardVectors { out } => write_reward_vectors(&out)?,
        Command::Suite {
            node,
            profile,
            out,
            quick,
            rounds,
            duration,
            warmup,
            cores,
            listen,
            shard_port_base,
            only,
            rate,
            nginx_core,
            attach_token_file,
            attach_pid,
            no_sweep,
            baselines,
            idle,
        } => {
            use ron_bench::suite::{Attach, SuiteSpec, run, scenario_names, summary};
            for name in &only {
                anyhow::ensure!(
                    scenario_names().contains(&name.as_str()),
                    "no scenario {name} (scenarios: {})",
                    scenario_names().join(", ")
                );
            }
            let profile_name =
                profile.file_stem().map_or(String::new(), |s| s.to_string_lossy().into_owned());
            let mut spec = SuiteSpec {
                node,
                profile,
                profile_name: profile_name.clone(),
                out,
                quick,
                rounds: rounds.max(1),
                warmup,
                duration,
                cores,
                listen,
                shard_port_base,
                only,
                rate,
                reference: None,
                attach: None,
                sweep: !no_sweep,
                baselines: baselines.unwrap_or_else(|| {
                    PathBuf::from("testing/performance/baselines").join(&profile_name)
                }),
                idle,
            };
            if let Some(path) = attach_token_file {
                let token = std::fs::read_to_string(&path)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
                spec.attach = Some(Attach { token, pid: attach_pid });
            }
            let script = "bench/scripts/nginx-reference.sh";
            if let Some(core) = nginx_core {
                let started = std::process::Command::new("bash")
                    .args([script, "start", "8089", &core.to_string()])
                    .status()?;
                anyhow::ensure!(started.success(), "{script} start failed");
                spec.reference = Some("127.0.0.1:8089".parse().expect("an address"));
            }
            let measured = run(&spec);
            if nginx_core.is_some() {
                let _ = std::process::Command::new("bash").args([script, "stop"]).status();
            }
            print!("{}", summary(&measured?));
        }
        Command::Soak {
            node,
            profile,
            out,
            duration,
            window,
            fraction,
            max_rate,
            cores,
            listen,
            shard_port_base,
            quick,
        } => {
            use ron_bench::soak::{self, P95_DRIFT_MAX_PCT, RSS_GROWTH_MAX_PCT, SoakSpec};
            use ron_bench::suite::SuiteSpec;
            let spec = SuiteSpec {
                node,
                profile_name: String::new(),
                profile,
                out,
                quick,
                rounds: 1,
                warmup: Duration::ZERO,
                duration: window,
                cores,
                listen,
                shard_port_base,
                only: Vec::new(),
                rate: None,
                reference: None,
                attach: None,
                sweep: false,
                baselines: PathBuf::new(),
                idle: Idle::Spin,
            };
            let report = soak::run(&spec, &SoakSpec { duration, window, fraction, max_rate })?;
            println!(
                "soak at {:.0}/s ({fraction} of {:.0}/s), {} windows: RSS growth {:+.2} % (limit {RSS_GROWTH_MAX_PCT} %), p95 drift {:+.1} % (limit {P95_DRIFT_MAX_PCT} %): {}",
                report.rate,
                report.max_rate,
                report.windows.len(),
                report.rss_growth_pct,
                report.p95_drift_pct,
                if report.passed { "passed" } else { "FAILED" }
            );
            if !report.passed {
                std::process::exit(1);
            }
        }
        Command::Baselines { dir, readme, check, seed_shapes, node_size, report } => {
            use ron_bench::baselines;
            let measured = baselines::read_dir(&dir)?;
            let table = baselines::table(&measured);
            print!("{table}");
            if let Some(readme) = readme {
                let text = std::fs::read_to_string(&readme)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", readme.display()))?;
                let new = baselines::with_table(&text, &table)?;
                if check && new != text {
                    eprintln!(
                        "{}: the table is not the one {} gives; run ron-load baselines {} --readme {}",
                        readme.display(),
                        dir.display(),
                        dir.display(),
                        readme.display()
                    );
                    std::process::exit(1);
                } else if !check {
                    std::fs::write(&readme, new)?;
                }
            }
            if let Some(path) = report {
                let all: Vec<_> = measured.values().cloned().collect();
                let title = format!("ron-node benchmark suite: {}", dir.display());
                let page = ron_bench::html::report(
                    &title,
                    &all,
                    &Default::default(),
                    &ron_bench::compare::today(),
                )?;
                std::fs::write(&path, page)?;
            }
            if let Some(out) = seed_shapes {
                for (name, value) in baselines::seed_shapes(&measured, &node_size) {
                    let path = out.join(name);
                    if let Some(parent) = path.parent() {
                        std::fs::create_dir_all(parent)?;
                    }
                    std::fs::write(&path, serde_json::to_string_pretty(&value)? + "\n")?;
                    eprintln!("wrote {}", path.display());
                }
            }
        }
        Command::Compare { run, baseline, waivers } => {
            use ron_bench::compare::{Measurement, Waiver, check_waivers, compare, table, today};
            let read = |path: &PathBuf| -> anyhow::Result<Measurement> {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
                serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
            };
            let waivers: Vec<Waiver> = match std::fs::read_to_string(&waivers) {
                Ok(text) => serde_json::from_str(&text)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", waivers.display()))?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                Err(e) => anyhow::bail!("{}: {e}", waivers.display()),
            };
            check_waivers(&waivers)?;
            let (run, baseline) = (read(&run)?, read(&baseline)?);
            let verdicts = compare(&run, &baseline, &waivers, &today())?;
            print!("{}", table(&run.scenario, &verdicts));
            if verdicts.iter().any(|v| v.fails()) {
                std::process::exit(1);
            }
        }
        Command::Run { target, rate, common } => {
            let spec = common.spec(target, rate)?;
            let result = engine::run(&spec)?;
            let report = RunReport::new(&spec, &result);
            print!("{}", report.summary());
            common.write_json(&report)?;
            if matches!(&spec.workload, WorkloadSpec::Passport(p) if p.mix == PassportMix::Revoke) {
                print_propagation(target)?;
            }
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
