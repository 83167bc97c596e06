//! `ron-load suite`: the canonical workloads of the seeds against a node the
//! suite starts itself (or one it is pointed at), round after round, each
//! scenario written as a [`Measurement`] (`OUT/<scenario>.json`) that
//! `ron-load compare` gates against a baseline, and the whole run as one
//! page, `OUT/report.html`, with a latency spectrum per scenario and a
//! throughput/latency curve per sweep.
//!
//! Per round it records the planned and answered rate, latency from the
//! intended send time (p50 … max and the percentile spectrum), the 429/503
//! share, answers by status, late sends, the node's CPU (from
//! `/proc/<pid>/stat`, both cores' time over the run) and RSS
//! (`/proc/<pid>/status`) after it, and from `/metrics` before and after:
//! the verify-cache hit rate, sequence gaps, the slowest fsync's bucket,
//! commit latency, batch sizes, the index cache hit ratio, revocation lag,
//! refusals and the entries made durable per second (what a batch of
//! writes came to, whatever its 200 said). After its rounds a scenario is swept: its rate is stepped
//! up until the node bends (answers fall under 90 % of the plan, or any
//! 429/503 appears: the backpressure the replay scenario is driven into).
//! Cold start is timed from exec to `/readyz` 200, on an empty data dir and
//! on the data the other scenarios left (a log to replay), and for the
//! micronode and macronode profiles.
//!
//! With a reference server (`--nginx-core`), each round and each sweep step
//! is followed by the reference at the same rate, kept beside the node's.

use crate::compare::{Measurement, Quantiles, Round, SweepPoint, median};
use crate::engine::{self, RunResult, RunSpec};
use crate::index_workload::{IndexMix, IndexSpec};
use crate::passport_workload::{PassportMix, PassportSpec};
use crate::reward_workload::{RewardMix, RewardSpec};
use crate::transport_workload::TransportSpec;
use crate::wallet_workload::{Mix, WalletSpec};
use crate::workload::WorkloadSpec;
use std::collections::{BTreeMap, HashMap};
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
    /// A node already running at `listen`, instead of one the suite starts
    /// (no cold-start scenarios then).
    pub attach: Option<Attach>,
    /// Sweep each load scenario after its rounds.
    pub sweep: bool,
    /// The baselines `report.html` draws and gates against
    /// (`<dir>/<scenario>.json`).
    pub baselines: PathBuf,
    /// What the generator does between events.
    pub idle: engine::Idle,
}

/// A node the suite did not start: its admin token and, for CPU and RSS,
/// its process id.
#[derive(Clone, Debug)]
pub struct Attach {
    pub token: String,
    pub pid: Option<u32>,
}

/// The body limit the suite's node runs with: the rewarder's L vector is a
/// 26 MB request.
const BODY_MAX_BYTES: usize = 64 << 20;

/// The suite's node's reward manifest store (`rewarder.manifests_bytes_max`).
const MANIFESTS_BYTES_MAX: u64 = 16 << 30;

/// The node under test.
pub(crate) struct Node {
    child: Option<Child>,
    pid: Option<u32>,
    target: SocketAddr,
    token: String,
}

impl Node {
    pub(crate) fn start(
        spec: &SuiteSpec,
        config: &Path,
        data: &Path,
    ) -> anyhow::Result<(Node, Duration)> {
        let started = Instant::now();
        let child = Command::new(&spec.node)
            .arg("--config")
            .arg(config)
            .arg("--data-dir")
            .arg(data)
            .args(["--listen", &spec.listen.to_string()])
            .args(["--shard-port-base", &spec.shard_port_base.to_string()])
            .env("RON_LIMITS_BODY_MAX_BYTES", BODY_MAX_BYTES.to_string())
            // Every reward run keeps its manifest: the reward scenarios'
            // sweeps write more than the default 1 GiB store holds (it
            // was full by reward_l_fresh, whose runs were then refused
            // with 422). The map is reserved, not written.
            .env("RON_REWARDER_MANIFESTS_BYTES_MAX", MANIFESTS_BYTES_MAX.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| anyhow::anyhow!("starting {}: {e}", spec.node.display()))?;
        let mut child = child;
        // An amnesic node prints its admin token (`RON_ADMIN_TOKEN=…`)
        // instead of writing it; the rest of its output is drained.
        let (printed, token_line) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().expect("piped");
        std::thread::spawn(move || {
            use std::io::BufRead as _;
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(token) = line.strip_prefix("RON_ADMIN_TOKEN=") {
                    let _ = printed.send(token.to_owned());
                }
            }
        });
        let pid = Some(child.id());
        let mut node = Node { child: Some(child), pid, target: spec.listen, token: String::new() };
        let deadline = started + Duration::from_secs(60);
        loop {
            if crate::fetch(spec.listen, "GET", "/readyz", None, None).is_ok() {
                break;
            }
            if let Some(status) = node.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                anyhow::bail!("the node exited at start: {status}");
            }
            anyhow::ensure!(Instant::now() < deadline, "the node was not ready within 60 s");
            std::thread::sleep(Duration::from_millis(5));
        }
        let ready = started.elapsed();
        node.token = match std::fs::read_to_string(data.join("admin.token")) {
            Ok(token) => token.trim().to_owned(),
            Err(_) => token_line.recv_timeout(Duration::from_secs(5)).unwrap_or_default(),
        };
        Ok((node, ready))
    }

    /// CPU time used so far, in seconds.
    fn cpu_seconds(&self) -> Option<f64> {
        let fields = stat_fields(&format!("/proc/{}/stat", self.pid?))?;
        Some(cpu_of(&fields))
    }

    /// CPU time used so far by each thread, in seconds, and the core it
    /// last ran on (shard, committer and lane threads are pinned).
    fn cpu_by_thread(&self) -> Option<HashMap<String, (usize, f64)>> {
        let mut threads = HashMap::new();
        for task in std::fs::read_dir(format!("/proc/{}/task", self.pid?)).ok()? {
            let task = task.ok()?;
            let Some(fields) = stat_fields(&format!("{}/stat", task.path().display())) else {
                continue;
            };
            let tid = task.file_name().to_string_lossy().into_owned();
            threads.insert(tid, (field(&fields, 39) as usize, cpu_of(&fields)));
        }
        Some(threads)
    }

    pub(crate) fn rss_mib(&self) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid?)).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map(|kib| kib / 1024.0)
    }

    pub(crate) fn stop(mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        // SAFETY: kill has no memory effects; the pid is our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
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

/// The fields of a `/proc/.../stat` line after the command's closing
/// parenthesis (field 3 on).
fn stat_fields(path: &str) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(path).ok()?;
    Some(stat.rsplit_once(')')?.1.split_whitespace().map(str::to_owned).collect())
}

/// Field `n` (1-based, as proc(5) numbers them) as a number.
fn field(fields: &[String], n: usize) -> f64 {
    fields.get(n - 3).and_then(|f| f.parse().ok()).unwrap_or(0.0)
}

/// utime + stime (fields 14 and 15), in seconds.
fn cpu_of(fields: &[String]) -> f64 {
    // SAFETY: sysconf has no memory effects.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (field(fields, 14) + field(fields, 15)) / per_second
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut()
            && matches!(child.try_wait(), Ok(None))
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Key spaces (small in quick runs), and the payers of one run.
#[derive(Clone, Copy)]
pub(crate) struct Sizes {
    accounts: usize,
    keys: usize,
    /// A workload starts every payer at nonce 1 (resynchronizing on the
    /// node's `NONCE_CONFLICT`, 409), so each run pays from accounts no
    /// earlier run paid from: as many as its warm-up's paying writes
    /// (between 8 and 256), from `first_payer` on.
    payers: usize,
    first_payer: usize,
}

impl Sizes {
    pub(crate) fn new(quick: bool) -> Sizes {
        let (accounts, keys) = if quick { (500, 300) } else { (10_000, 10_000) };
        Sizes { accounts, keys, payers: 0, first_payer: 0 }
    }

    fn for_run(self, rate: f64, warmup: Duration) -> Sizes {
        static NEXT_PAYER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        // A quarter of the write mix pays (transfers, burns).
        let payers = ((rate * warmup.as_secs_f64() * 0.25) as usize).clamp(8, 256);
        let payers = payers.min(self.accounts);
        let first_payer =
            NEXT_PAYER.fetch_add(payers, std::sync::atomic::Ordering::Relaxed) % self.accounts;
        Sizes { payers, first_payer, ..self }
    }
}

/// A load scenario: its workloads at a rate, after the suite's setup.
pub(crate) struct Scenario {
    pub(crate) name: &'static str,
    /// Requests per second: quick (CI), reference node.
    rates: (f64, f64),
    connections: usize,
    /// The rate over the middle third of the measured time, as a multiple
    /// (the seeds' spike runs); 1 for a steady rate.
    burst: f64,
    /// Left out of quick runs (the rewarder's M and L vectors).
    full_only: bool,
    workload: fn(&Node, &Sizes) -> anyhow::Result<WorkloadSpec>,
}

fn wallet_spec(node: &Node, sizes: &Sizes, mix: Mix) -> WalletSpec {
    WalletSpec {
        mix,
        token: node.token.clone(),
        accounts: sizes.accounts,
        funds: 1_000_000_000,
        shards: 1,
        replay_percent: 0,
        payers: sizes.payers,
        first_payer: sizes.first_payer,
        batch: 1,
    }
}

fn wallet(node: &Node, sizes: &Sizes, mix: Mix, replay_percent: u32) -> WorkloadSpec {
    WorkloadSpec::Wallet(WalletSpec { replay_percent, ..wallet_spec(node, sizes, mix) })
}

/// Transfers in batches of `TRANSFER_BATCH`, paid by every account of the
/// pool in turn (a payer comes back after `accounts` transfers, so the
/// batches in flight do not race on one payer's nonces).
fn transfer_batches(node: &Node, sizes: &Sizes) -> WorkloadSpec {
    WorkloadSpec::Wallet(WalletSpec {
        payers: sizes.accounts,
        first_payer: 0,
        batch: TRANSFER_BATCH,
        ..wallet_spec(node, sizes, Mix::TransferBatch)
    })
}

/// Transfers per `POST /v1/transfers` of the `transfer_batch` scenario.
pub(crate) const TRANSFER_BATCH: usize = 64;

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

fn reward(node: &Node, mix: RewardMix, scale: &str) -> anyhow::Result<WorkloadSpec> {
    Ok(WorkloadSpec::Reward(RewardSpec::new(mix, node.token.clone(), scale)?))
}

fn ingest(node: &Node) -> WorkloadSpec {
    WorkloadSpec::LedgerIngest { token: node.token.clone(), entries: 16 }
}

/// `GET /roots` since 16 sequence numbers before the head: a client
/// polling for the roots it has not seen.
fn roots(node: &Node) -> anyhow::Result<WorkloadSpec> {
    let applied = scrape(node.target)?.get("ledger_applied_seq").copied().unwrap_or(0.0);
    let since = (applied as u64).saturating_sub(16);
    Ok(WorkloadSpec::Get { path: format!("/roots?since={since}") })
}

const fn steady(
    name: &'static str,
    rates: (f64, f64),
    connections: usize,
    workload: fn(&Node, &Sizes) -> anyhow::Result<WorkloadSpec>,
) -> Scenario {
    Scenario { name, rates, connections, burst: 1.0, full_only: false, workload }
}

pub(crate) const SCENARIOS: [Scenario; 23] = [
    steady("read_heavy", (500.0, 20_000.0), 64, |n, s| Ok(wallet(n, s, Mix::Read, 0))),
    steady("write_mix", (100.0, 5_000.0), 64, |n, s| Ok(wallet(n, s, Mix::Write, 0))),
    // Replays (+1 %); its sweep drives it into backpressure (429).
    steady("wallet_replay", (100.0, 5_000.0), 64, |n, s| Ok(wallet(n, s, Mix::Write, 1))),
    // Durable transfers, one per request and in batches (requests per
    // second; the batch scenario moves TRANSFER_BATCH transfers each).
    steady("transfer_single", (100.0, 5_000.0), 64, |n, s| Ok(wallet(n, s, Mix::Transfer, 0))),
    steady("transfer_batch", (10.0, 500.0), 16, |n, s| Ok(transfer_batches(n, s))),
    steady("wallet_adversarial", (100.0, 2_000.0), 64, |n, s| {
        Ok(WorkloadSpec::Transport(TransportSpec {
            inner: Box::new(wallet(n, s, Mix::Write, 0)),
            gzip_percent: 10,
            oversized_percent: 1,
            ratio_max: 10,
            body_max: BODY_MAX_BYTES,
        }))
    }),
    steady("passport_verify", (500.0, 20_000.0), 64, |n, _| passport(n, PassportMix::Verify)),
    steady("passport_issue", (100.0, 2_000.0), 64, |n, _| passport(n, PassportMix::Issue)),
    steady("passport_issue_verify", (100.0, 2_000.0), 64, |n, _| {
        passport(n, PassportMix::IssueVerify)
    }),
    // Verify with a revocation every 100 requests: the revocation lag.
    steady("passport_revoke", (500.0, 10_000.0), 64, |n, _| passport(n, PassportMix::Revoke)),
    Scenario {
        burst: 3.0,
        ..steady("passport_spike", (100.0, 2_000.0), 64, |n, _| {
            passport(n, PassportMix::IssueVerify)
        })
    },
    steady("index_resolve", (500.0, 20_000.0), 64, |n, s| Ok(index(n, s, IndexMix::Resolve))),
    steady("index_hot", (500.0, 20_000.0), 64, |n, s| Ok(index(n, s, IndexMix::Hot))),
    steady("index_cold", (200.0, 5_000.0), 64, |n, s| Ok(index(n, s, IndexMix::Cold))),
    steady("ledger_ingest", (50.0, 2_000.0), 16, |n, _| Ok(ingest(n))),
    steady("ledger_roots", (200.0, 2_000.0), 16, |n, _| roots(n)),
    steady("reward_s_fresh", (10.0, 100.0), 16, |n, _| reward(n, RewardMix::Fresh, "S")),
    steady("reward_s_replay", (20.0, 300.0), 16, |n, _| reward(n, RewardMix::Replay, "S")),
    Scenario {
        full_only: true,
        ..steady("reward_m_fresh", (2.0, 10.0), 8, |n, _| reward(n, RewardMix::Fresh, "M"))
    },
    Scenario {
        full_only: true,
        ..steady("reward_m_replay", (5.0, 100.0), 16, |n, _| reward(n, RewardMix::Replay, "M"))
    },
    Scenario {
        full_only: true,
        ..steady("reward_l_fresh", (1.0, 2.0), 4, |n, _| reward(n, RewardMix::Fresh, "L"))
    },
    Scenario {
        full_only: true,
        ..steady("reward_l_replay", (1.0, 10.0), 8, |n, _| reward(n, RewardMix::Replay, "L"))
    },
    // Every service at once, on the same connections, by weight.
    steady("all", (500.0, 10_000.0), 64, |n, s| {
        Ok(WorkloadSpec::Mixed(vec![
            (wallet(n, s, Mix::Read, 0), 40),
            (wallet(n, s, Mix::Write, 0), 15),
            (passport(n, PassportMix::Verify)?, 15),
            (index(n, s, IndexMix::Resolve), 20),
            (ingest(n), 5),
            (reward(n, RewardMix::Replay, "S")?, 5),
        ]))
    }),
];

/// The cold-start scenarios: the suite's profile on the data the runs left
/// (a log to replay) and on an empty data dir; the micronode and macronode
/// profiles on an empty one.
const COLD_STARTS: [(&str, Option<&str>); 4] = [
    ("cold_start_replay", None),
    ("cold_start_empty", None),
    ("cold_start_micronode", Some("micronode")),
    ("cold_start_macronode", Some("macronode")),
];

/// A cold start on a log of `LARGE_LOG_ENTRIES` entries, which the suite
/// writes first (ingest of `LARGE_LOG_BATCH` entries a request at
/// `LARGE_LOG_RATE`/s: about 100 s and 2 GB on the reference node). Only
/// when named (`--only cold_start_large`).
pub const COLD_START_LARGE: &str = "cold_start_large";
const LARGE_LOG_ENTRIES: u64 = 10_240_000;
const LARGE_LOG_BATCH: usize = 256;
const LARGE_LOG_RATE: f64 = 400.0;

/// Every scenario name, in the order the suite runs them.
pub fn scenario_names() -> Vec<&'static str> {
    let loads = SCENARIOS.iter().map(|s| s.name);
    loads.chain(COLD_STARTS.iter().map(|c| c.0)).chain([COLD_START_LARGE]).collect()
}

/// Sweep steps, as multiples of the scenario's rate: doubling from a
/// quarter until the node bends (at most 64 times the rate).
const SWEEP_STEPS: [f64; 9] = [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];
const SWEEP_STEPS_QUICK: [f64; 2] = [0.5, 2.0];

impl SuiteSpec {
    fn wanted(&self, name: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == name)
    }

    fn run_spec(&self, target: SocketAddr, workload: WorkloadSpec, rate: f64) -> RunSpec {
        RunSpec {
            target,
            shard_targets: Vec::new(),
            workload,
            rate,
            burst: 1.0,
            warmup: self.warmup,
            duration: self.duration,
            connections: 64,
            pipeline_max: 64,
            cores: self.cores.clone(),
            late_after: Duration::from_millis(1),
            drain: Duration::from_secs(3),
            idle: self.idle,
        }
    }

    fn measurement(&self, scenario: &str, rounds: Vec<Round>) -> Measurement {
        Measurement {
            scenario: scenario.to_owned(),
            profile: self.profile_name.clone(),
            command: Some(std::env::args().collect::<Vec<_>>().join(" ")),
            date: Some(crate::compare::today()),
            rounds,
            ..Measurement::default()
        }
    }
}

/// How one measured run goes.
pub(crate) struct Shape {
    pub(crate) rate: f64,
    pub(crate) connections: usize,
    pub(crate) burst: f64,
    pub(crate) warmup: Duration,
    pub(crate) duration: Duration,
}

/// Runs a scenario's workload once and measures the round.
pub(crate) fn measure(
    spec: &SuiteSpec,
    node: &Node,
    sizes: Sizes,
    scenario: &Scenario,
    shape: &Shape,
    label: &str,
) -> anyhow::Result<Round> {
    let workload = (scenario.workload)(node, &sizes.for_run(shape.rate, shape.warmup))?;
    let run = RunSpec {
        burst: shape.burst,
        warmup: shape.warmup,
        duration: shape.duration,
        connections: shape.connections,
        ..spec.run_spec(node.target, workload, shape.rate)
    };
    let metrics_before = scrape(node.target)?;
    let cpu_before = node.cpu_seconds();
    let threads_before = node.cpu_by_thread();
    let started = Instant::now();
    let result = with_progress(label, shape.warmup + shape.duration, || engine::run(&run))?;
    let elapsed = started.elapsed().as_secs_f64();
    let mut round = round_of(&result, shape);
    if !result.statuses.is_empty() && result.statuses.keys().all(|status| *status >= 400) {
        // A round of refusals measures the refusal, not the scenario.
        progress(format_args!("{label}: WARNING: no request succeeded: {:?}", result.statuses));
    }
    round.cpu_pct = node.cpu_seconds().zip(cpu_before).map(|(a, b)| 100.0 * (a - b) / elapsed);
    let threads_after = node.cpu_by_thread();
    round.rss_mib = node.rss_mib();
    metric_deltas(&metrics_before, &scrape(node.target)?, elapsed, &mut round);
    // Each thread's CPU over the round, on the core it ran on last.
    if let (Some(before), Some(after), Some(metrics)) =
        (threads_before, threads_after, round.metrics.as_mut())
    {
        let mut by_core: BTreeMap<usize, f64> = BTreeMap::new();
        for (tid, (core, seconds)) in after {
            let used = seconds - before.get(&tid).map_or(0.0, |(_, s)| *s);
            *by_core.entry(core).or_default() += used;
        }
        for (core, used) in by_core {
            metrics.insert(format!("cpu_core{core}_pct"), 100.0 * used / elapsed);
        }
    }
    Ok(round)
}

/// The percentiles of the spectrum.
const SPECTRUM: [f64; 14] =
    [0.0, 25.0, 50.0, 75.0, 90.0, 95.0, 97.5, 99.0, 99.5, 99.9, 99.95, 99.99, 99.999, 100.0];

/// A round's figures from the generator's side.
fn round_of(result: &RunResult, shape: &Shape) -> Round {
    let h = &result.latency_ns;
    let ms = |quantile: f64| h.value_at_quantile(quantile) as f64 / 1e6;
    let answered: u64 = result.statuses.values().sum();
    let count = |f: fn(u16) -> bool| -> u64 {
        result.statuses.iter().filter(|(s, _)| f(**s)).map(|(_, n)| n).sum()
    };
    let shed = count(|s| matches!(s, 429 | 503));
    Round {
        // The plan after the warm-up (a burst raises it above the rate).
        target_rps: Some(result.planned as f64 / shape.duration.as_secs_f64()),
        p95_ms: Some(ms(0.95)),
        throughput_rps: Some(count(|s| s < 400) as f64 / shape.duration.as_secs_f64()),
        shed_share: Some(if answered == 0 { 0.0 } else { shed as f64 / answered as f64 }),
        writes_refused_share: (!result.outcomes.is_empty()).then(|| {
            let all: u64 = result.outcomes.values().sum();
            let ok = result.outcomes.get("OK").copied().unwrap_or(0);
            (all - ok) as f64 / all as f64
        }),
        statuses: Some(result.statuses.clone()),
        late_sends: Some(result.late),
        latency_ms: Some(Quantiles {
            p50: ms(0.50),
            p90: ms(0.90),
            p95: ms(0.95),
            p99: ms(0.99),
            p999: ms(0.999),
            max: h.max() as f64 / 1e6,
        }),
        spectrum: Some(
            SPECTRUM
                .iter()
                .map(|p| {
                    let v = if *p >= 100.0 { h.max() } else { h.value_at_quantile(p / 100.0) };
                    [*p, v as f64 / 1e6]
                })
                .collect(),
        ),
        ..Round::default()
    }
}

pub(crate) fn sweep_point(round: &Round) -> SweepPoint {
    SweepPoint {
        target_rps: round.target_rps.unwrap_or(0.0),
        throughput_rps: round.throughput_rps.unwrap_or(0.0),
        p50_ms: round.latency_ms.map_or(0.0, |l| l.p50),
        p99_ms: round.latency_ms.map_or(0.0, |l| l.p99),
        shed_share: round.shed_share.unwrap_or(0.0),
        committed_entries_per_s: round
            .metrics
            .as_ref()
            .and_then(|metrics| metrics.get("committed_entries_per_s").copied()),
        writes_refused_share: round.writes_refused_share,
    }
}

/// A step past which a sweep stops: answers under 90 % of the plan, or
/// any backpressure, or writes refused inside answers (a batch's 200 with
/// refused writes).
pub(crate) fn bent(point: &SweepPoint) -> bool {
    point.throughput_rps < 0.9 * point.target_rps
        || point.shed_share > 0.0
        || point.writes_refused_share.unwrap_or(0.0) > 0.0
}

/// The reference (nginx `return 200`) at a rate, as a round.
fn reference_round(
    spec: &SuiteSpec,
    reference: SocketAddr,
    shape: &Shape,
) -> anyhow::Result<Round> {
    let run = RunSpec {
        connections: shape.connections,
        burst: shape.burst,
        warmup: shape.warmup,
        duration: shape.duration,
        ..spec.run_spec(reference, WorkloadSpec::Get { path: "/".to_owned() }, shape.rate)
    };
    Ok(round_of(&engine::run(&run)?, shape))
}

/// Runs the suite; returns every scenario's measurement (also written to
/// `out`, with `report.html`).
pub fn run(spec: &SuiteSpec) -> anyhow::Result<Vec<Measurement>> {
    std::fs::create_dir_all(&spec.out)?;
    let data = spec.out.join("node-data");
    let node = match &spec.attach {
        Some(attach) => Node {
            child: None,
            pid: attach.pid,
            target: spec.listen,
            token: attach.token.trim().to_owned(),
        },
        None => {
            let _ = std::fs::remove_dir_all(&data);
            Node::start(spec, &spec.profile, &data)?.0
        }
    };
    progress(format_args!("node ready at {} (pid {:?})", node.target, node.pid));
    let sizes = Sizes::new(spec.quick);
    let scenarios: Vec<&Scenario> = SCENARIOS
        .iter()
        .filter(|s| spec.wanted(s.name) && !(spec.quick && s.full_only && spec.only.is_empty()))
        .collect();
    setup(spec, &node, &sizes, &scenarios)?;
    let mut measured = Vec::new();
    for scenario in scenarios {
        measured.push(run_scenario(spec, &node, &sizes, scenario)?);
    }
    node.stop()?;
    if spec.attach.is_none() {
        measured.extend(cold_starts(spec, &data)?);
        // A full run leaves gigabytes of log and views behind.
        let _ = std::fs::remove_dir_all(&data);
        let _ = std::fs::remove_dir_all(spec.out.join("node-empty"));
    }
    write_results(spec, &measured)?;
    Ok(measured)
}

/// One setup pass: `requests` requests of a setup workload, each of which
/// must succeed.
fn setup_run(
    spec: &SuiteSpec,
    node: &Node,
    workload: WorkloadSpec,
    requests: usize,
) -> anyhow::Result<()> {
    let rate = if spec.quick { 500.0 } else { 5_000.0 };
    let mut run = spec.run_spec(node.target, workload, rate);
    run.connections = 16;
    run.warmup = Duration::ZERO;
    run.duration = Duration::from_secs_f64((requests as f64 / rate).max(0.5) + 0.2);
    let result = engine::run(&run)?;
    anyhow::ensure!(result.errors() == 0, "a setup request failed: {:?}", result.statuses);
    Ok(())
}

/// Funded accounts, index keys, the replayed rewarder epochs.
pub(crate) fn setup(
    spec: &SuiteSpec,
    node: &Node,
    sizes: &Sizes,
    scenarios: &[&Scenario],
) -> anyhow::Result<()> {
    let run = |workload, requests| setup_run(spec, node, workload, requests);
    let any = |prefixes: &[&str]| {
        scenarios.iter().any(|s| s.name == "all" || prefixes.iter().any(|p| s.name.starts_with(p)))
    };
    if any(&["read_heavy", "write_mix", "wallet_", "transfer_"]) {
        progress(format_args!("setup: {} funded accounts", sizes.accounts));
        run(wallet(node, sizes, Mix::Setup, 0), sizes.accounts)?;
    }
    if any(&["index_"]) {
        progress(format_args!("setup: {} index keys", sizes.keys));
        run(index(node, sizes, IndexMix::Setup), 3 * sizes.keys)?;
    }
    // The replayed epochs, computed once: those scenarios measure replays.
    for scale in crate::reward_vectors::SCALES {
        let replayed = |s: &&Scenario| {
            s.name == "all" || s.name == format!("reward_{}_replay", scale.name.to_lowercase())
        };
        if !scenarios.iter().any(replayed) {
            continue;
        }
        let body = crate::reward_vectors::body(&crate::reward_vectors::request(scale));
        let path = format!("/rewarder/epochs/{}/compute", RewardSpec::replay_epoch(scale));
        let body = std::str::from_utf8(&body).expect("vectors are JSON");
        crate::fetch(node.target, "POST", &path, Some(&node.token), Some(body))?;
    }
    Ok(())
}

fn run_scenario(
    spec: &SuiteSpec,
    node: &Node,
    sizes: &Sizes,
    scenario: &Scenario,
) -> anyhow::Result<Measurement> {
    let own = if spec.quick { scenario.rates.0 } else { scenario.rates.1 };
    let rate = spec.rate.unwrap_or(own);
    let shape = |rate: f64, burst: f64, warmup: Duration, duration: Duration| Shape {
        rate,
        connections: scenario.connections,
        burst,
        warmup,
        duration,
    };
    if scenario.name.starts_with("index_") || scenario.name == "all" {
        // Provider records live `index.provider_ttl_max_s` (600 s by
        // default): the setup again renews them for this scenario.
        progress(format_args!("{}: renewing the index keys' providers", scenario.name));
        setup_run(spec, node, index(node, sizes, IndexMix::Setup), 3 * sizes.keys)?;
    }
    let mut measurement = spec.measurement(scenario.name, Vec::new());
    for round in 1..=spec.rounds {
        let label = format!("{} round {round}/{} at {rate}/s", scenario.name, spec.rounds);
        progress(format_args!("{label}"));
        let run = shape(rate, scenario.burst, spec.warmup, spec.duration);
        measurement.rounds.push(measure(spec, node, *sizes, scenario, &run, &label)?);
        if let Some(reference) = spec.reference {
            measurement.reference_rounds.push(reference_round(spec, reference, &run)?);
        }
    }
    if spec.sweep {
        let steps: &[f64] = if spec.quick { &SWEEP_STEPS_QUICK } else { &SWEEP_STEPS };
        let (warmup, duration) = (spec.warmup / 2, spec.duration / 2);
        let mut reference_bent = false;
        for factor in steps {
            let step = shape(rate * factor, 1.0, warmup, duration);
            let label = format!("{} sweep at {}/s", scenario.name, step.rate);
            progress(format_args!("{label}"));
            let point = sweep_point(&measure(spec, node, *sizes, scenario, &step, &label)?);
            measurement.sweep.push(point.clone());
            if let Some(reference) = spec.reference.filter(|_| !reference_bent) {
                let reference = sweep_point(&reference_round(spec, reference, &step)?);
                reference_bent = bent(&reference);
                measurement.reference_sweep.push(reference);
            }
            if bent(&point) {
                break;
            }
        }
    }
    Ok(measurement)
}

/// Exec to `/readyz` 200, `rounds` times each.
fn cold_starts(spec: &SuiteSpec, data: &Path) -> anyhow::Result<Vec<Measurement>> {
    let mut measured = Vec::new();
    let empty = spec.out.join("node-empty");
    for (name, profile) in COLD_STARTS {
        if !spec.wanted(name) {
            continue;
        }
        let config = match profile {
            Some(profile) => spec.profile.with_file_name(format!("{profile}.toml")),
            None => spec.profile.clone(),
        };
        if !config.exists() {
            progress(format_args!("{name}: no {}, skipped", config.display()));
            continue;
        }
        let replay = name == "cold_start_replay";
        let mut rounds = Vec::new();
        for round in 1..=spec.rounds {
            let dir = if replay { data } else { &empty };
            if !replay {
                let _ = std::fs::remove_dir_all(dir);
            }
            let (node, ready) = Node::start(spec, &config, dir)?;
            progress(format_args!("{name} round {round}: {ready:?}"));
            let rss = node.rss_mib();
            node.stop()?;
            let ms = ready.as_secs_f64() * 1000.0;
            rounds.push(Round { cold_start_p95_ms: Some(ms), rss_mib: rss, ..Round::default() });
        }
        measured.push(spec.measurement(name, rounds));
    }
    if spec.only.iter().any(|o| o == COLD_START_LARGE) {
        measured.push(cold_start_large(spec)?);
    }
    Ok(measured)
}

/// Writes a log of `LARGE_LOG_ENTRIES` entries, stops the node (SIGTERM),
/// then times exec to `/readyz` 200 on it, `rounds` times.
fn cold_start_large(spec: &SuiteSpec) -> anyhow::Result<Measurement> {
    let dir = spec.out.join("node-large");
    let _ = std::fs::remove_dir_all(&dir);
    let (node, _) = Node::start(spec, &spec.profile, &dir)?;
    let requests = LARGE_LOG_ENTRIES / LARGE_LOG_BATCH as u64;
    progress(format_args!("{COLD_START_LARGE}: writing {LARGE_LOG_ENTRIES} entries"));
    let ingest = WorkloadSpec::LedgerIngest { token: node.token.clone(), entries: LARGE_LOG_BATCH };
    let mut run = spec.run_spec(node.target, ingest, LARGE_LOG_RATE);
    run.warmup = Duration::ZERO;
    run.duration = Duration::from_secs_f64(requests as f64 / LARGE_LOG_RATE);
    let result = engine::run(&run)?;
    anyhow::ensure!(result.errors() == 0, "an ingest request failed: {:?}", result.statuses);
    let entries = scrape(node.target)?.get("ledger_entries_total").copied().unwrap_or(0.0);
    node.stop()?;
    progress(format_args!("{COLD_START_LARGE}: {entries} entries written"));
    let mut rounds = Vec::new();
    for round in 1..=spec.rounds {
        let (node, ready) = Node::start(spec, &spec.profile, &dir)?;
        progress(format_args!("{COLD_START_LARGE} round {round}: {ready:?}"));
        let rss = node.rss_mib();
        node.stop()?;
        let ms = ready.as_secs_f64() * 1000.0;
        rounds.push(Round { cold_start_p95_ms: Some(ms), rss_mib: rss, ..Round::default() });
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(spec.measurement(COLD_START_LARGE, rounds))
}

/// `OUT/<scenario>.json` for each scenario and `OUT/report.html`.
fn write_results(spec: &SuiteSpec, measured: &[Measurement]) -> anyhow::Result<()> {
    let mut baselines = BTreeMap::new();
    for measurement in measured {
        let path = spec.out.join(format!("{}.json", measurement.scenario));
        std::fs::write(&path, serde_json::to_string_pretty(measurement)?)?;
        let baseline = spec.baselines.join(format!("{}.json", measurement.scenario));
        if let Ok(text) = std::fs::read_to_string(&baseline) {
            let parsed: Measurement = serde_json::from_str(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", baseline.display()))?;
            baselines.insert(measurement.scenario.clone(), parsed);
        }
    }
    let title = format!("ron-node benchmark suite: {}", spec.profile_name);
    let page = crate::html::report(&title, measured, &baselines, &crate::compare::today())?;
    std::fs::write(spec.out.join("report.html"), page)?;
    progress(format_args!("results in {}", spec.out.join("report.html").display()));
    Ok(())
}

/// The node's `/metrics` samples, by series (`name{labels}`).
fn scrape(target: SocketAddr) -> anyhow::Result<HashMap<String, f64>> {
    let text = String::from_utf8(crate::fetch(target, "GET", "/metrics", None, None)?)?;
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter_map(|(series, value)| Some((series.to_owned(), value.parse().ok()?)))
        .collect())
}

/// The upper bound of the histogram bucket holding `quantile` of the
/// observations made between two scrapes (labels other than `le` summed).
fn bucket_quantile(
    before: &HashMap<String, f64>,
    after: &HashMap<String, f64>,
    family: &str,
    quantile: f64,
) -> Option<f64> {
    let prefix = format!("{family}_bucket{{");
    let mut by_bound: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
    for (series, value) in after {
        let Some(labels) = series.strip_prefix(&prefix) else {
            continue;
        };
        let le = labels.split("le=\"").nth(1)?.split('"').next()?;
        let bound = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
        let delta = value - before.get(series).unwrap_or(&0.0);
        by_bound.entry(bound.to_bits()).or_insert((bound, 0.0)).1 += delta;
    }
    let mut buckets: Vec<(f64, f64)> = by_bound.into_values().collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let count = buckets.last()?.1;
    if count <= 0.0 {
        return None;
    }
    buckets.iter().find(|(_, n)| *n >= quantile * count).map(|(le, _)| *le)
}

/// What a round's `/metrics` deltas tell, over its `elapsed_s` (warm-up
/// and drain included).
fn metric_deltas(
    before: &HashMap<String, f64>,
    after: &HashMap<String, f64>,
    elapsed_s: f64,
    round: &mut Round,
) {
    let delta =
        |series: &str| after.get(series).unwrap_or(&0.0) - before.get(series).unwrap_or(&0.0);
    let ratio = |hits: f64, misses: f64| (hits + misses > 0.0).then(|| hits / (hits + misses));
    round.verify_hit_rate = ratio(
        delta("passport_verify_cache_hits_total"),
        delta("passport_verify_cache_misses_total"),
    );
    round.seq_gaps = Some(delta("ledger_seq_gap_detected_total").max(0.0) as u64);
    round.fsync_max_ms =
        bucket_quantile(before, after, "ledger_fsync_seconds", 1.0).map(|s| s * 1000.0);
    let mut metrics = BTreeMap::new();
    let ms = |family: &str, q: f64| bucket_quantile(before, after, family, q).map(|s| s * 1000.0);
    let mut put = |name: &str, value: Option<f64>| {
        if let Some(value) = value.filter(|v| v.is_finite()) {
            metrics.insert(name.to_owned(), value);
        }
    };
    put("commit_p95_ms", ms("ledger_commit_latency_seconds", 0.95));
    put("commit_p99_ms", ms("ledger_commit_latency_seconds", 0.99));
    let batches = delta("ledger_batch_entries_count");
    put("batch_entries_mean", (batches > 0.0).then(|| delta("ledger_batch_entries_sum") / batches));
    put("batch_entries_p99", bucket_quantile(before, after, "ledger_batch_entries", 0.99));
    // What became durable, whatever the answers said (a batch's writes
    // each have their own result inside a 200).
    put("committed_entries_per_s", Some(delta("ledger_batch_entries_sum") / elapsed_s));
    put(
        "index_cache_hit_ratio",
        ratio(delta("index_cache_hits_total"), delta("index_cache_misses_total")),
    );
    put("revocation_lag_p99_ms", ms("passport_revocation_propagation_seconds", 0.99));
    let refused: f64 =
        after.keys().filter(|k| k.starts_with("rejected_total{")).map(|k| delta(k)).sum();
    put("rejected", Some(refused));
    round.metrics = Some(metrics);
}

/// One line of progress on standard error.
pub(crate) fn progress(line: std::fmt::Arguments<'_>) {
    eprintln!("ron-load suite: {line}");
}

/// Runs `work`; on a terminal, a line counts its seconds meanwhile.
fn with_progress<T>(label: &str, total: Duration, work: impl FnOnce() -> T) -> T {
    use std::io::IsTerminal as _;
    if !std::io::stderr().is_terminal() || total < Duration::from_secs(3) {
        return work();
    }
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let started = Instant::now();
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let elapsed = started.elapsed().as_secs_f64();
                eprint!("\r  {label}: {elapsed:.0} s of {:.0} s ", total.as_secs_f64());
                std::thread::sleep(Duration::from_millis(500));
            }
            eprintln!();
        });
        let out = work();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        out
    })
}

/// The medians of each scenario, as a table for people.
pub fn summary(measured: &[Measurement]) -> String {
    use std::fmt::Write as _;
    let text = |value: Option<f64>| value.map_or("-".to_owned(), |v| format!("{v:.3}"));
    let mut out = format!(
        "{:<24} {:>10} {:>10} {:>12} {:>12} {:>8} {:>8} {:>8} {:>12}\n",
        "scenario",
        "p95 ms",
        "p99 ms",
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
            "{:<24} {:>10} {:>10} {:>12} {:>12} {:>8} {:>8} {:>8} {:>12}",
            m.scenario,
            of(|r| r.p95_ms),
            of(|r| r.latency_ms.map(|l| l.p99)),
            text(median(&m.reference_rounds, |r| r.p95_ms)),
            of(|r| r.throughput_rps),
            of(|r| r.cpu_pct),
            of(|r| r.rss_mib),
            of(|r| r.shed_share.map(|s| s * 100.0)),
            of(|r| r.cold_start_p95_ms),
        );
        if let Some(last) = m.sweep.iter().rev().find(|p| !bent(p)) {
            // Where requests carry several entries (batches, ingest), what
            // the log took at that step.
            let committed = match last.committed_entries_per_s {
                Some(entries) if entries > last.throughput_rps * 1.5 => {
                    format!(", {entries:.0} entries committed/s")
                }
                _ => String::new(),
            };
            let _ = writeln!(
                out,
                "{:<24} sweep: sustained {:.0}/s (p99 {:.3} ms{committed}), {} steps",
                "",
                last.throughput_rps,
                last.p99_ms,
                m.sweep.len()
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_deltas_give_the_bound_holding_the_quantile() {
        let series =
            |route: &str, le: &str| format!("x_seconds_bucket{{route=\"{route}\",le=\"{le}\"}}");
        let mut before = HashMap::new();
        let mut after = HashMap::new();
        for (route, counts) in [("a", [5.0, 8.0, 10.0]), ("b", [0.0, 0.0, 10.0])] {
            for (le, n) in ["0.001", "0.01", "+Inf"].iter().zip(counts) {
                before.insert(series(route, le), 1.0_f64.min(n));
                after.insert(series(route, le), n + 1.0_f64.min(n));
            }
        }
        // 20 observations: 5 ≤ 1 ms, 8 ≤ 10 ms, 20 ≤ +Inf.
        assert_eq!(bucket_quantile(&before, &after, "x_seconds", 0.25), Some(0.001));
        assert_eq!(bucket_quantile(&before, &after, "x_seconds", 0.4), Some(0.01));
        assert_eq!(bucket_quantile(&before, &after, "x_seconds", 0.99), Some(f64::INFINITY));
        assert_eq!(bucket_quantile(&before, &before, "x_seconds", 0.5), None);
        assert_eq!(bucket_quantile(&before, &after, "y_seconds", 0.5), None);
    }

    #[test]
    fn a_sweep_step_keeps_what_the_log_committed() {
        let mut metrics = BTreeMap::new();
        metrics.insert("committed_entries_per_s".to_owned(), 64_000.0);
        let round = Round { target_rps: Some(1000.0), metrics: Some(metrics), ..Round::default() };
        let point = sweep_point(&round);
        assert_eq!(point.committed_entries_per_s, Some(64_000.0));
        let text = serde_json::to_string(&point).unwrap();
        assert!(text.contains("\"committed_entries_per_s\":64000.0"), "{text}");
        // A reference server's step has none, and files written before
        // steps recorded it still read.
        assert_eq!(sweep_point(&Round::default()).committed_entries_per_s, None);
        let old =
            r#"{"target_rps":1.0,"throughput_rps":1.0,"p50_ms":1.0,"p99_ms":1.0,"shed_share":0.0}"#;
        let read: SweepPoint = serde_json::from_str(old).unwrap();
        assert_eq!(read.committed_entries_per_s, None);
    }

    #[test]
    fn a_sweep_stops_where_answers_fall_short_or_shedding_starts() {
        let point = |target: f64, answered: f64, shed: f64| SweepPoint {
            target_rps: target,
            throughput_rps: answered,
            shed_share: shed,
            ..SweepPoint::default()
        };
        assert!(!bent(&point(100.0, 95.0, 0.0)));
        assert!(bent(&point(100.0, 85.0, 0.0)));
        assert!(bent(&point(100.0, 100.0, 0.001)));
        // A batch's 200 with writes refused inside it.
        let refused =
            |share| SweepPoint { writes_refused_share: share, ..point(100.0, 100.0, 0.0) };
        assert!(!bent(&refused(None)) && !bent(&refused(Some(0.0))));
        assert!(bent(&refused(Some(0.01))));
    }
}
