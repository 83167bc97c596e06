//! `ron-load suite`: the canonical workloads of the seeds against a node the
//! suite starts itself, round after round, each scenario written as a
//! [`Measurement`] (`OUT/<scenario>.json`) that `ron-load compare` gates
//! against a baseline.
//!
//! Per round it records the answered rate, p95 from the intended send time,
//! the 429/503 share, answers by status, late sends, the node's CPU (from
//! `/proc/<pid>/stat`, both cores' time over the run) and RSS
//! (`/proc/<pid>/status`) after it, and from `/metrics` before and after:
//! the verify-cache hit rate, sequence gaps, the slowest fsync's bucket. Cold
//! start is timed from exec to `/readyz` 200, on an empty data dir and on
//! the data the other scenarios left (a log to replay).
//!
//! With a reference server (`--nginx-core`), each round is followed by a
//! round of the reference at the same rate, kept beside the node's.
//!
//! First steps of issue 14: one node, fixed rates (`--quick` for CI); no
//! sweeps, metrics deltas or plots yet.

use crate::compare::{Measurement, Round, median};
use crate::engine::{self, RunSpec};
use crate::index_workload::{IndexMix, IndexSpec};
use crate::passport_workload::{PassportMix, PassportSpec};
use crate::report::RunReport;
use crate::reward_workload::{RewardMix, RewardSpec};
use crate::wallet_workload::{Mix, WalletSpec};
use crate::workload::WorkloadSpec;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How the suite runs.
#[derive(Clone, Debug)]
pub struct SuiteSpec {
    /// The `ron-node` binary to start.
    pub node: PathBuf,
    /// Its config file (a profile of `tuning/`).
    pub profile: PathBuf,
    pub profile_name: String,
    /// Where the node's data and the results go.
    pub out: PathBuf,
    /// CI rates and sizes instead of the reference node's.
    pub quick: bool,
    pub rounds: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// Generator cores.
    pub cores: Vec<usize>,
    pub listen: SocketAddr,
    pub shard_port_base: u16,
    /// Only these scenarios (all when empty).
    pub only: Vec<String>,
    /// Every load scenario at this rate instead of its own.
    pub rate: Option<f64>,
    /// The reference server (nginx `return 200`), measured at each round's
    /// rate right after it, so that `compare` can divide out the machine.
    pub reference: Option<SocketAddr>,
}

/// The node under test, started by the suite.
struct Node {
    child: Child,
    target: SocketAddr,
    token: String,
}

impl Node {
    fn start(spec: &SuiteSpec, data: &Path) -> anyhow::Result<(Node, Duration)> {
        let started = Instant::now();
        let child = Command::new(&spec.node)
            .arg("--config")
            .arg(&spec.profile)
            .arg("--data-dir")
            .arg(data)
            .args(["--listen", &spec.listen.to_string()])
            .args(["--shard-port-base", &spec.shard_port_base.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| anyhow::anyhow!("starting {}: {e}", spec.node.display()))?;
        let mut node = Node { child, target: spec.listen, token: String::new() };
        let deadline = started + Duration::from_secs(60);
        loop {
            if crate::fetch(spec.listen, "GET", "/readyz", None, None).is_ok() {
                break;
            }
            if let Some(status) = node.child.try_wait()? {
                anyhow::bail!("the node exited at start: {status}");
            }
            anyhow::ensure!(Instant::now() < deadline, "the node was not ready within 60 s");
            std::thread::sleep(Duration::from_millis(5));
        }
        let ready = started.elapsed();
        node.token = std::fs::read_to_string(data.join("admin.token"))
            .map_err(|e| anyhow::anyhow!("the admin token: {e}"))?
            .trim()
            .to_owned();
        Ok((node, ready))
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU time used so far, in seconds.
    fn cpu_seconds(&self) -> f64 {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())) else {
            return 0.0;
        };
        // After the command's closing parenthesis: state is field 3,
        // utime and stime fields 14 and 15.
        let fields: Vec<&str> =
            stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
        let ticks = |i: usize| fields.get(i - 3).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
        // SAFETY: sysconf has no memory effects.
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        (ticks(14) + ticks(15)) / per_second
    }

    fn rss_mib(&self) -> f64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0)
    }

    fn stop(mut self) -> anyhow::Result<()> {
        // SAFETY: kill has no memory effects; the pid is our own child.
        unsafe { libc::kill(self.pid() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                anyhow::bail!("the node did not stop within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // Its ports are released a moment after it exits.
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect_timeout(&self.target, Duration::from_millis(50)).is_ok()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A load scenario: a workload at a rate, after its setup.
struct Scenario {
    name: &'static str,
    /// Requests per second: quick (CI), reference node.
    rates: (f64, f64),
    connections: usize,
    workload: fn(&Node, &Sizes) -> anyhow::Result<WorkloadSpec>,
}

/// Key spaces: small in quick runs.
struct Sizes {
    accounts: usize,
    keys: usize,
}

fn wallet(node: &Node, sizes: &Sizes, mix: Mix) -> WorkloadSpec {
    WorkloadSpec::Wallet(WalletSpec {
        mix,
        token: node.token.clone(),
        accounts: sizes.accounts,
        funds: 1_000_000_000,
        shards: 1,
        replay_percent: 0,
        payers: 256.min(sizes.accounts),
    })
}

fn index(node: &Node, sizes: &Sizes, mix: IndexMix) -> WorkloadSpec {
    WorkloadSpec::Index(IndexSpec {
        mix,
        token: Some(node.token.clone()),
        keys: sizes.keys,
        hot_keys: 100.min(sizes.keys),
        provider_url: None,
        provider_ttl_s: 86_400,
    })
}

fn passport(node: &Node, mix: PassportMix) -> anyhow::Result<WorkloadSpec> {
    Ok(WorkloadSpec::Passport(PassportSpec {
        mix,
        token: node.token.clone(),
        pool: PassportSpec::issue_pool(node.target, &node.token)?,
        accept_algs: None,
        revoke_every: 100,
    }))
}

const SCENARIOS: [Scenario; 7] = [
    Scenario {
        name: "read_heavy",
        rates: (500.0, 20_000.0),
        connections: 64,
        workload: |n, s| Ok(wallet(n, s, Mix::Read)),
    },
    Scenario {
        name: "write_mix",
        rates: (100.0, 5_000.0),
        connections: 64,
        workload: |n, s| Ok(wallet(n, s, Mix::Write)),
    },
    Scenario {
        name: "passport_verify",
        rates: (500.0, 20_000.0),
        connections: 64,
        workload: |n, _| passport(n, PassportMix::Verify),
    },
    Scenario {
        name: "passport_issue_verify",
        rates: (100.0, 2_000.0),
        connections: 64,
        workload: |n, _| passport(n, PassportMix::IssueVerify),
    },
    Scenario {
        name: "index_resolve",
        rates: (500.0, 20_000.0),
        connections: 64,
        workload: |n, s| Ok(index(n, s, IndexMix::Resolve)),
    },
    Scenario {
        name: "ledger_ingest",
        rates: (50.0, 2_000.0),
        connections: 16,
        workload: |n, _| Ok(WorkloadSpec::LedgerIngest { token: n.token.clone(), entries: 16 }),
    },
    Scenario {
        name: "reward_s_replay",
        rates: (20.0, 300.0),
        connections: 16,
        workload: |n, _| {
            Ok(WorkloadSpec::Reward(RewardSpec::new(RewardMix::Replay, n.token.clone(), "S")?))
        },
    },
];

/// The cold-start scenarios: a log to replay, an empty data dir.
const COLD_START_REPLAY: &str = "cold_start_replay";
const COLD_START_EMPTY: &str = "cold_start_empty";

/// Every scenario name, in the order the suite runs them.
pub fn scenario_names() -> Vec<&'static str> {
    SCENARIOS.iter().map(|s| s.name).chain([COLD_START_REPLAY, COLD_START_EMPTY]).collect()
}

impl SuiteSpec {
    fn wanted(&self, name: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == name)
    }

    fn run_spec(
        &self,
        target: SocketAddr,
        workload: WorkloadSpec,
        rate: f64,
        connections: usize,
    ) -> RunSpec {
        RunSpec {
            target,
            shard_targets: Vec::new(),
            workload,
            rate,
            burst: 1.0,
            warmup: self.warmup,
            duration: self.duration,
            connections,
            pipeline_max: 64,
            cores: self.cores.clone(),
            late_after: Duration::from_millis(1),
            drain: Duration::from_secs(3),
        }
    }

    fn measurement(&self, scenario: &str, rounds: Vec<Round>) -> Measurement {
        Measurement {
            scenario: scenario.to_owned(),
            profile: self.profile_name.clone(),
            command: Some(std::env::args().collect::<Vec<_>>().join(" ")),
            date: Some(crate::compare::today()),
            rounds,
            reference_rounds: Vec::new(),
        }
    }
}

/// Runs the suite; returns every scenario's measurement (also written to
/// `out`).
pub fn run(spec: &SuiteSpec) -> anyhow::Result<Vec<Measurement>> {
    std::fs::create_dir_all(&spec.out)?;
    let data = spec.out.join("node-data");
    let _ = std::fs::remove_dir_all(&data);
    let sizes = if spec.quick {
        Sizes { accounts: 500, keys: 300 }
    } else {
        Sizes { accounts: 10_000, keys: 10_000 }
    };
    let (node, _) = Node::start(spec, &data)?;
    progress(format_args!("node ready at {} (pid {})", node.target, node.pid()));
    // Setup: funded accounts, index keys.
    let setup = |workload: WorkloadSpec, requests: usize| -> anyhow::Result<()> {
        let rate = if spec.quick { 500.0 } else { 5_000.0 };
        let mut run = spec.run_spec(node.target, workload, rate, 16);
        run.warmup = Duration::ZERO;
        run.duration = Duration::from_secs_f64((requests as f64 / rate).max(0.5) + 0.2);
        let result = engine::run(&run)?;
        anyhow::ensure!(result.errors() == 0, "a setup request failed: {:?}", result.statuses);
        Ok(())
    };
    setup(wallet(&node, &sizes, Mix::Setup), sizes.accounts)?;
    setup(index(&node, &sizes, IndexMix::Setup), 3 * sizes.keys)?;
    // The replayed epoch, computed once: the scenario measures replays.
    let scale = crate::reward_vectors::SCALES[0];
    let body = crate::reward_vectors::body(&crate::reward_vectors::request(scale));
    let path = format!("/rewarder/epochs/{}/compute", RewardSpec::replay_epoch(scale));
    let body = std::str::from_utf8(&body).expect("vectors are JSON");
    crate::fetch(node.target, "POST", &path, Some(&node.token), Some(body))?;
    let mut measured = Vec::new();
    for scenario in SCENARIOS.iter().filter(|s| spec.wanted(s.name)) {
        let own = if spec.quick { scenario.rates.0 } else { scenario.rates.1 };
        let rate = spec.rate.unwrap_or(own);
        let (mut rounds, mut reference_rounds) = (Vec::new(), Vec::new());
        for round in 1..=spec.rounds {
            progress(format_args!("{} round {round}/{} at {rate}/s", scenario.name, spec.rounds));
            let workload = (scenario.workload)(&node, &sizes)?;
            let run = spec.run_spec(node.target, workload, rate, scenario.connections);
            let metrics_before = scrape(node.target)?;
            let cpu_before = node.cpu_seconds();
            let started = Instant::now();
            let result = engine::run(&run)?;
            let cpu = node.cpu_seconds() - cpu_before;
            let metrics_after = scrape(node.target)?;
            let report = RunReport::new(&run, &result);
            let answered: u64 = report.statuses.values().sum();
            let ok = answers(&report, |s| s < 400);
            let shed = answers(&report, |s| matches!(s, 429 | 503));
            let mut measured_round = Round {
                p95_ms: Some(report.latency.p95_us / 1000.0),
                throughput_rps: Some(ok as f64 / run.duration.as_secs_f64()),
                cpu_pct: Some(100.0 * cpu / started.elapsed().as_secs_f64()),
                rss_mib: Some(node.rss_mib()),
                shed_share: Some(if answered == 0 { 0.0 } else { shed as f64 / answered as f64 }),
                statuses: Some(report.statuses.clone()),
                late_sends: Some(report.late_sends),
                ..Round::default()
            };
            metric_deltas(&metrics_before, &metrics_after, &mut measured_round);
            rounds.push(measured_round);
            if let Some(reference) = spec.reference {
                let get = WorkloadSpec::Get { path: "/".to_owned() };
                let run = spec.run_spec(reference, get, rate, scenario.connections);
                let report = RunReport::new(&run, &engine::run(&run)?);
                let ok = answers(&report, |s| s < 400);
                reference_rounds.push(Round {
                    p95_ms: Some(report.latency.p95_us / 1000.0),
                    throughput_rps: Some(ok as f64 / run.duration.as_secs_f64()),
                    ..Round::default()
                });
            }
        }
        let mut measurement = spec.measurement(scenario.name, rounds);
        measurement.reference_rounds = reference_rounds;
        measured.push(measurement);
    }
    node.stop()?;
    // Exec to /readyz 200: on the data the runs left (a log to replay),
    // and on an empty data dir.
    let empty = spec.out.join("node-empty");
    for (name, dir) in [(COLD_START_REPLAY, &data), (COLD_START_EMPTY, &empty)] {
        if !spec.wanted(name) {
            continue;
        }
        let mut rounds = Vec::new();
        for round in 1..=spec.rounds {
            if dir == &empty {
                let _ = std::fs::remove_dir_all(dir);
            }
            let (node, ready) = Node::start(spec, dir)?;
            progress(format_args!("{name} round {round}: {ready:?}"));
            node.stop()?;
            let ms = ready.as_secs_f64() * 1000.0;
            rounds.push(Round { cold_start_p95_ms: Some(ms), ..Round::default() });
        }
        measured.push(spec.measurement(name, rounds));
    }
    for measurement in &measured {
        let path = spec.out.join(format!("{}.json", measurement.scenario));
        std::fs::write(&path, serde_json::to_string_pretty(measurement)?)?;
    }
    Ok(measured)
}

/// Answers whose status `counts`.
fn answers(report: &RunReport, counts: impl Fn(u16) -> bool) -> u64 {
    report.statuses.iter().filter(|(status, _)| counts(**status)).map(|(_, n)| n).sum()
}

/// The node's `/metrics` samples, by series (`name{labels}`).
fn scrape(target: SocketAddr) -> anyhow::Result<std::collections::HashMap<String, f64>> {
    let text = String::from_utf8(crate::fetch(target, "GET", "/metrics", None, None)?)?;
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter_map(|(series, value)| Some((series.to_owned(), value.parse().ok()?)))
        .collect())
}

/// What a round's `/metrics` deltas tell: the verify-cache hit rate (when
/// the round verified tokens), sequence gaps, the slowest fsync's bucket.
fn metric_deltas(
    before: &std::collections::HashMap<String, f64>,
    after: &std::collections::HashMap<String, f64>,
    round: &mut Round,
) {
    let delta =
        |series: &str| after.get(series).unwrap_or(&0.0) - before.get(series).unwrap_or(&0.0);
    let (hits, misses) =
        (delta("passport_verify_cache_hits_total"), delta("passport_verify_cache_misses_total"));
    if hits + misses > 0.0 {
        round.verify_hit_rate = Some(hits / (hits + misses));
    }
    round.seq_gaps = Some(delta("ledger_seq_gap_detected_total").max(0.0) as u64);
    let fsyncs = delta("ledger_fsync_seconds_count");
    if fsyncs > 0.0 {
        // The smallest bucket that holds every fsync of the round.
        let mut bounds: Vec<(f64, f64)> = after
            .keys()
            .filter_map(|k| {
                k.strip_prefix("ledger_fsync_seconds_bucket{le=\"")?
                    .strip_suffix("\"}")
                    .map(|le| (k, le))
            })
            .filter_map(|(k, le)| Some((le.parse::<f64>().ok()?, delta(k))))
            .collect();
        bounds.sort_by(|a, b| a.0.total_cmp(&b.0));
        round.fsync_max_ms = bounds.iter().find(|(_, n)| *n >= fsyncs).map(|(le, _)| le * 1000.0);
    }
}

/// One line of progress on standard error.
fn progress(line: std::fmt::Arguments<'_>) {
    eprintln!("ron-load suite: {line}");
}

/// The medians of each scenario, as a table for people.
pub fn summary(measured: &[Measurement]) -> String {
    use std::fmt::Write as _;
    let text = |value: Option<f64>| value.map_or("-".to_owned(), |v| format!("{v:.3}"));
    let mut out = format!(
        "{:<24} {:>10} {:>12} {:>12} {:>8} {:>8} {:>8} {:>12}\n",
        "scenario",
        "p95 ms",
        "nginx p95 ms",
        "answered/s",
        "cpu %",
        "rss MiB",
        "shed %",
        "cold start ms"
    );
    for m in measured {
        let of = |figure: fn(&Round) -> Option<f64>| text(median(&m.rounds, figure));
        let _ = writeln!(
            out,
            "{:<24} {:>10} {:>12} {:>12} {:>8} {:>8} {:>8} {:>12}",
            m.scenario,
            of(|r| r.p95_ms),
            text(median(&m.reference_rounds, |r| r.p95_ms)),
            of(|r| r.throughput_rps),
            of(|r| r.cpu_pct),
            of(|r| r.rss_mib),
            of(|r| r.shed_share.map(|s| s * 100.0)),
            of(|r| r.cold_start_p95_ms),
        );
    }
    out
}
