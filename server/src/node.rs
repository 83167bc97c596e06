//! Starting and stopping a node: the services' node-wide state, recovery,
//! listeners, the workers, one pinned executor per shard (and the
//! committer's), and the drain on SIGTERM/SIGINT.

pub mod recover;
pub mod shard;

use crate::config::{Config, Layout};
use crate::core::{NodeShared, ShardStatus};
use crate::limits::{BIND_RETRY, LISTEN_BACKLOG, LOG_INFLIGHT_PER_SHARD_MIN, START_TIMEOUT};
use crate::log::LogShared;
use crate::log::committer::{self, CommitterLink, CommitterStart};
use crate::retry::Outcome;
use crate::service::{Registry, Service};
use crate::workers::{Job, Lane, WorkerThreads, Workers};
use anyhow::Context as _;
use glommio::channels::shared_channel;
use glommio::{LocalExecutorBuilder, Placement};
use serde::Serialize;
use shard::ShardStart;
use socket2::{Domain, Protocol, Socket, Type};
use std::any::Any;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[derive(Serialize)]
struct Topology<'a> {
    shards: usize,
    routing: Routing<'a>,
    listen: String,
    shard_port_base: u16,
    shard_ports: Vec<u16>,
    cores: Cores<'a>,
}

#[derive(Serialize)]
struct Routing<'a> {
    function: &'a str,
    domain: &'a str,
    key: &'a str,
}

#[derive(Serialize)]
struct Cores<'a> {
    shards: &'a [usize],
    committer: usize,
}

#[derive(Serialize)]
struct Version<'a> {
    name: &'a str,
    version: &'a str,
    git: &'a str,
    profile: &'a str,
    shards: usize,
    features: &'a [&'a str],
    services: Vec<&'static str>,
}

/// Lives as long as the process: built once at start.
fn leak_json(value: &impl Serialize) -> &'static [u8] {
    Box::leak(simd_json::to_vec(value).expect("serializing").into_boxed_slice())
}

/// A running node.
pub struct NodeHandle {
    pub shared: Arc<NodeShared>,
    registry: Arc<Registry>,
    /// Every service's node-wide state, in registry order.
    services: Vec<Arc<dyn Any + Send + Sync>>,
    executors: Vec<glommio::ExecutorJoinHandle<()>>,
    workers: Option<WorkerThreads>,
    /// Held while the node runs: one node per data directory.
    _data_dir_lock: Option<std::fs::File>,
}

impl NodeHandle {
    /// Stops accepting, lets in-flight requests finish (bounded by
    /// `drain_timeout_ms`), and makes every shard return.
    pub fn begin_drain(shared: &NodeShared) {
        shared.draining.store(true, Ordering::Release);
        for status in &shared.shards {
            status.wake();
        }
    }

    /// The node-wide state of service `S`, if it runs.
    pub fn service<S: Service>(&self) -> Option<Arc<S::Shared>> {
        let index = self.registry.names().iter().position(|name| *name == S::NAME)?;
        self.services[index].clone().downcast::<S::Shared>().ok()
    }

    /// Waits for every shard to return, then for the workers.
    pub fn join(mut self) -> anyhow::Result<()> {
        for executor in std::mem::take(&mut self.executors) {
            executor.join().map_err(|e| anyhow::anyhow!("a shard executor failed: {e}"))?;
        }
        if let Some(workers) = self.workers.take() {
            workers.stop();
        }
        Ok(())
    }
}

/// Starts a node on `config` and returns once every shard serves.
pub fn start(config: Config) -> anyhow::Result<NodeHandle> {
    let layout = config.layout(online_cores()).context("core layout")?;
    raise_memlock(&config, &layout);
    let data_dir_lock = lock_data_dir(&config)?;
    let registry = Arc::new(crate::services::registry().enabled(&config)?);
    let services = registry.prepare(&config)?;
    let shard_count = layout.shards.len();
    let listeners = (0..shard_count)
        .map(|i| bind_shard_listeners(&config, i))
        .collect::<anyhow::Result<Vec<_>>>()?;
    // Before the views open: their LSM trees' threads start on a worker.
    let workers = Workers::start(&config.workers_layout(shard_count))
        .context("starting the worker threads")?;
    let recovery = recover::recover(&config, &registry, &services, shard_count, workers.workers())?;
    let log = Arc::new(LogShared::new(recovery.recovered.state.accumulator.len()));
    if let Some(corruption) = &recovery.recovered.corruption {
        log.enter_safe_mode(corruption);
    }
    let shared = Arc::new(NodeShared {
        draining: AtomicBool::new(false),
        log: log.clone(),
        shards: (0..shard_count).map(|_| ShardStatus::default()).collect(),
        topology_json: leak_json(&topology(&config, &layout)),
        version_json: leak_json(&version(&config, &registry, shard_count)),
        probes: registry.probes(&services),
        reload: crate::reload::Reloadable::of(&config),
    });
    let config = Arc::new(config);
    if !config.amnesia() {
        let until = recovery.recovered.state.accumulator.len();
        verify_in_background(&config, &registry, &log, workers.workers(), until);
    }
    let launch = Launch {
        config: config.clone(),
        layout: layout.clone(),
        node: shared.clone(),
        log,
        registry: registry.clone(),
        services: services.clone(),
        workers: workers.workers().clone(),
    };
    let executors = launch.executors(recovery, listeners)?;
    let deadline = Instant::now() + START_TIMEOUT;
    while shared.shards.iter().any(|s| !s.serving.load(Ordering::Acquire)) {
        anyhow::ensure!(Instant::now() < deadline, "shards did not start within {START_TIMEOUT:?}");
        std::thread::sleep(Duration::from_millis(1));
    }
    tracing::info!(
        listen = %config.listen,
        shard_port_base = config.shard_port_base,
        shards = ?layout.shards,
        committer = layout.committer,
        profile = config.profile.as_str(),
        "ready"
    );
    Ok(NodeHandle {
        shared,
        registry,
        services,
        executors,
        workers: Some(workers),
        _data_dir_lock: data_dir_lock,
    })
}

/// Checks the whole log, through `until`, as `ron-node verify-log` does, on
/// a batch worker (`SCHED_IDLE`): a start reads only the log after the
/// index's checkpoint, so a corrupt older record is found here, and puts
/// the node in safe mode as it would at start.
fn verify_in_background(
    config: &Config,
    registry: &Arc<Registry>,
    log: &Arc<LogShared>,
    workers: &Workers,
    until: u64,
) {
    use crate::log::segments::{self, LogReader, LogState, Scan, TornTail};
    /// The checker, which stops when the node does.
    struct Stoppable<'a>(crate::service::Checker<'a>, Workers);
    impl LogReader for Stoppable<'_> {
        fn check(&mut self, item: &[u8]) -> Result<(), String> {
            self.0.check(item)
        }
        fn unique_key(&mut self, item: &[u8]) -> Option<crate::log::IdKey> {
            self.0.unique_key(item)
        }
        fn visit(&mut self, _: u64, _: &ron_proto::merkle::Hash, _: &[u8]) {}
        fn stopped(&self) -> bool {
            self.1.stopping()
        }
    }
    let (dir, registry, log) = (config.data_dir.join("log"), registry.clone(), log.clone());
    let stop = workers.clone();
    let job = Job::new(move || {
        let mut reader = Stoppable(crate::service::Checker(&registry), stop.clone());
        let scan = Scan { from: None, torn: TornTail::Report, until };
        match segments::recover(&dir, LogState::checking(), scan, &mut reader) {
            Ok(_) if stop.stopping() => tracing::info!("the background scan of the log stopped"),
            Ok(checked) => match checked.corruption.or_else(|| {
                // Every record through `until` was read at start: one
                // missing now is corruption too.
                let read = checked.state.accumulator.len();
                (read < until).then(|| match checked.truncated {
                    Some(torn) => torn,
                    None => format!("the log ends at seq {read}, before {until}"),
                })
            }) {
                Some(corruption) => {
                    tracing::error!(%corruption, "the background scan found the log corrupt: safe mode");
                    log.enter_safe_mode(&corruption);
                }
                None => tracing::info!(
                    records = checked.records,
                    entries = checked.state.accumulator.len(),
                    took_ms = checked.took.as_millis() as u64,
                    "the background scan checked the log"
                ),
            },
            Err(error) => tracing::warn!(%error, "the background scan of the log failed"),
        }
    });
    if workers.submit(Lane::Batch, job).is_err() {
        tracing::warn!("the background scan of the log did not start: the workers are full");
    }
}

/// What every executor is started with.
struct Launch {
    config: Arc<Config>,
    layout: Layout,
    node: Arc<NodeShared>,
    log: Arc<LogShared>,
    registry: Arc<Registry>,
    services: Vec<Arc<dyn Any + Send + Sync>>,
    workers: Workers,
}

impl Launch {
    /// Starts the committer (on its own core, or hosted by the shard on
    /// its core) and one executor per shard.
    fn executors(
        &self,
        recovery: recover::Recovery,
        listeners: Vec<Vec<OwnedFd>>,
    ) -> anyhow::Result<Vec<glommio::ExecutorJoinHandle<()>>> {
        let (config, layout) = (&self.config, &self.layout);
        let shard_count = layout.shards.len();
        let applied = (recovery.recovered.state.accumulator.len(), recovery.recovered.state.root());
        let log_inflight_max =
            (config.ledger.queue_capacity as usize / shard_count).max(LOG_INFLIGHT_PER_SHARD_MIN);
        let mut links = Vec::with_capacity(shard_count);
        let mut shard_ends = Vec::with_capacity(shard_count);
        for _ in 0..shard_count {
            let (call_sender, call_receiver) = shared_channel::new_bounded(log_inflight_max);
            let (answer_sender, answer_receiver) = shared_channel::new_bounded(log_inflight_max);
            links.push(CommitterLink { calls: call_receiver, answers: answer_sender });
            shard_ends.push((call_sender, answer_receiver));
        }
        let (recovered, mut states) = (recovery.recovered, recovery.states);
        let shared = self.log.clone();
        let mut committer = Some(CommitterStart {
            config: config.clone(),
            shared,
            recovered,
            links,
            workers: self.workers.clone(),
        });
        // A committer that shares a shard's core runs on that shard's executor.
        let host = layout.shards.iter().position(|core| *core == layout.committer);
        let mut executors = Vec::with_capacity(shard_count + 1);
        if host.is_none() {
            let start = committer.take().expect("not handed out yet");
            let handle = executor_builder(config, layout.committer, "committer")
                .spawn(move || committer::run(start))
                .map_err(|e| {
                    anyhow::anyhow!("starting the committer on core {}: {e}", layout.committer)
                })?;
            executors.push(handle);
        }
        let mesh =
            crate::core::mesh::builder(shard_count, config.limits.mesh_inflight_per_target_max);
        let mut views = recovery.views.into_iter();
        let parts = layout.shards.iter().zip(listeners).zip(shard_ends).enumerate();
        for (id, ((core, listeners), (log_calls, log_answers))) in parts {
            let start = ShardStart {
                id,
                count: shard_count,
                config: config.clone(),
                node: self.node.clone(),
                log: self.log.clone(),
                registry: self.registry.clone(),
                shared: self.services.clone(),
                states: states.take_shard(id),
                listeners,
                mesh: mesh.clone(),
                log_calls,
                log_answers,
                log_inflight_max,
                committer: if host == Some(id) { committer.take() } else { None },
                applied,
                view: views.next().expect("one view per shard"),
                workers: self.workers.clone(),
            };
            let handle = executor_builder(config, *core, &format!("shard-{id}"))
                .spin_before_park(Duration::from_micros(config.executor.spin_before_park_us))
                .spawn(move || shard::run(start))
                .map_err(|e| {
                    anyhow::anyhow!("starting the executor of shard {id} on core {core}: {e}")
                })?;
            executors.push(handle);
        }
        Ok(executors)
    }
}

/// An executor pinned to `core`, with the config's glommio settings.
fn executor_builder(config: &Config, core: usize, name: &str) -> LocalExecutorBuilder {
    let executor = &config.executor;
    LocalExecutorBuilder::new(Placement::Fixed(core))
        .name(name)
        .io_memory(executor.io_memory_kib * 1024)
        .ring_depth(executor.ring_depth)
        .preempt_timer(Duration::from_millis(executor.preempt_ms))
}

fn topology<'a>(config: &'a Config, layout: &'a Layout) -> Topology<'a> {
    let shard_count = layout.shards.len();
    let shard_ports: Vec<u16> = if config.shard_port_base == 0 {
        Vec::new()
    } else {
        (0..shard_count).map(|i| config.shard_port_base + i as u16).collect()
    };
    Topology {
        shards: shard_count,
        routing: Routing {
            function: ron_proto::routing::ROUTING_FUNCTION,
            domain: "ron-shard-v1",
            key: "account id (wallet), content id or name (index), epoch id (rewarder), token id (passport)",
        },
        listen: config.listen.to_string(),
        shard_port_base: config.shard_port_base,
        shard_ports,
        cores: Cores { shards: &layout.shards, committer: layout.committer },
    }
}

fn version<'a>(config: &'a Config, registry: &Registry, shard_count: usize) -> Version<'a> {
    Version {
        name: "ron-node",
        version: env!("CARGO_PKG_VERSION"),
        git: env!("RON_GIT_REVISION"),
        profile: config.profile.as_str(),
        shards: shard_count,
        features: &["socket-ring", "passport-mac", "passport-ed25519", "passport-ml-dsa-65"],
        services: registry.names(),
    }
}

/// Takes `data_dir/LOCK` (flock), so that two nodes never write one log.
/// Whether a running node holds `config`'s data dir (its `LOCK`).
pub fn data_dir_in_use(config: &Config) -> bool {
    let Ok(file) = std::fs::File::open(config.data_dir.join("LOCK")) else { return false };
    // SAFETY: flock on a descriptor this function owns.
    let free = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0;
    !free
}

fn lock_data_dir(config: &Config) -> anyhow::Result<Option<std::fs::File>> {
    if config.amnesia() {
        return Ok(None);
    }
    let dir = &config.data_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("LOCK");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: flock on a descriptor this function owns.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    anyhow::ensure!(locked, "another ron-node is using {} (its LOCK is held)", dir.display());
    Ok(Some(file))
}

/// Shard `i` accepts on the shared address (SO_REUSEPORT) and on its own port.
fn bind_shard_listeners(config: &Config, i: usize) -> anyhow::Result<Vec<OwnedFd>> {
    let mut sockets = vec![listen_on(config.listen, true)?];
    if config.shard_port_base != 0 {
        let mut own = config.listen;
        own.set_port(config.shard_port_base + i as u16);
        sockets.push(listen_on(own, false)?);
    }
    Ok(sockets)
}

fn listen_on(address: SocketAddr, shared: bool) -> anyhow::Result<OwnedFd> {
    let socket =
        Socket::new(Domain::for_address(address), Type::STREAM.cloexec(), Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(shared)?;
    // Accepted sockets inherit it: answers leave at once.
    socket.set_nodelay(true)?;
    socket.set_nonblocking(true)?;
    // A node that just died may still hold its ports for a moment: io_uring
    // releases the files of pending requests (a multishot accept) after the
    // process has exited. A restart waits for that, briefly.
    let busy = |error: &std::io::Error| error.kind() == std::io::ErrorKind::AddrInUse;
    match BIND_RETRY.run_blocking(|| socket.bind(&address.into()), busy) {
        Outcome::Done(()) => {}
        Outcome::Failed(error) | Outcome::GaveUp(error) => {
            return Err(error).with_context(|| format!("binding {address}"));
        }
    }
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

pub use crate::config::online_cores;

/// glommio registers `io_memory` with each executor's rings as locked memory.
/// Raise the soft limit toward the hard one when the executors need more.
fn raise_memlock(config: &Config, layout: &Layout) {
    let executors = layout.shards.len() as u64 + 1;
    let wanted = executors * (config.executor.io_memory_kib as u64 * 1024 + (1 << 20));
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } != 0 || limit.rlim_cur >= wanted
    {
        return;
    }
    let raised = libc::rlimit { rlim_cur: wanted.min(limit.rlim_max), rlim_max: limit.rlim_max };
    // SAFETY: setrlimit reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &raised) } != 0 {
        tracing::warn!(wanted, current = limit.rlim_cur, "cannot raise the memlock limit");
    }
}
