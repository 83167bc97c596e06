//! Starting and stopping a node: keys, listeners, one pinned executor per
//! shard, and the drain on SIGTERM/SIGINT.

use crate::access::{self, AdminToken};
use crate::committer::{self, CommitterLink, CommitterStart};
use crate::config::{Config, Layout};
use crate::keys::Keyring;
use crate::log::{self, Recovered};
use crate::mesh;
use crate::shard::{self, ShardStart};
use crate::socket_ring::ring_doorbell;
use crate::view::{ViewMeta, ViewStore, ViewWriter, view_dir};
use anyhow::Context as _;
use glommio::channels::shared_channel;
use glommio::{LocalExecutorBuilder, Placement};
use ron_proto::ledger::LogItem;
use ron_proto::merkle::Hash;
use ron_proto::wallet::Placement as LogPlacement;
use ron_shards::balances::{Balances, Item};
use ron_shards::passport::Revocations;
use ron_shards::wallet::Wallet;
use serde::Serialize;
use socket2::{Domain, Protocol, Socket, Type};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long binding a port that is still in use is retried at start.
const BIND_RETRY: Duration = Duration::from_secs(3);
/// Pending connections per listening socket.
const LISTEN_BACKLOG: i32 = 4096;
/// How long `start` waits for every shard to serve.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// What every shard may read about the node. Written at start, then only
/// flags change.
pub struct NodeShared {
    pub draining: AtomicBool,
    /// Set once by the committer; writes answer 503 DEGRADED from then on.
    pub ledger_safe_mode: AtomicBool,
    /// Entries whose record is durable. The committer raises it before it
    /// sends anyone a batch, so a read that finds its shard has applied this
    /// much sees every acknowledged write.
    pub ledger_durable_seq: AtomicU64,
    ledger_safe_reason: OnceLock<String>,
    pub shards: Vec<ShardStatus>,
    pub topology_json: &'static [u8],
    pub version_json: &'static [u8],
    /// The passport's keys as last rotated; each shard holds a copy it
    /// replaces when a rotation is broadcast.
    pub keys: Mutex<Arc<Keyring>>,
}

pub struct ShardStatus {
    pub serving: AtomicBool,
    pub shedding: AtomicBool,
    /// A duplicate of the shard's ring eventfd: writing it wakes the shard.
    wake: OnceLock<OwnedFd>,
}

impl ShardStatus {
    pub fn set_wake(&self, eventfd: RawFd) {
        // SAFETY: dup returns a new descriptor or -1.
        let copy = unsafe { libc::dup(eventfd) };
        assert!(copy >= 0, "duplicating the shard's eventfd");
        // SAFETY: a fresh descriptor owned by nobody else.
        let _ = self.wake.set(unsafe { OwnedFd::from_raw_fd(copy) });
    }

    fn wake(&self) {
        if let Some(fd) = self.wake.get() {
            ring_doorbell(fd.as_raw_fd());
        }
    }
}

impl NodeShared {
    pub fn enter_ledger_safe_mode(&self, reason: &str) {
        let _ = self.ledger_safe_reason.set(reason.to_owned());
        self.ledger_safe_mode.store(true, Ordering::Release);
    }

    pub fn ledger_safe_mode_reason(&self) -> Option<String> {
        if !self.ledger_safe_mode.load(Ordering::Acquire) {
            return None;
        }
        self.ledger_safe_reason.get().cloned()
    }

    /// What keeps the node from being ready; empty when it is.
    pub fn not_ready(&self) -> Vec<String> {
        let mut missing = Vec::new();
        if self.draining.load(Ordering::Relaxed) {
            missing.push("node is draining".to_owned());
        }
        if let Some(reason) = self.ledger_safe_mode_reason() {
            missing.push(format!("ledger in safe mode: {reason}"));
        }
        for (i, status) in self.shards.iter().enumerate() {
            if !status.serving.load(Ordering::Relaxed) {
                missing.push(format!("shard {i} is not serving"));
            }
            if status.shedding.load(Ordering::Relaxed) {
                missing.push(format!("shard {i} is shedding load"));
            }
        }
        missing
    }
}

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
}

/// Lives as long as the process: built once at start.
fn leak_json(value: &impl Serialize) -> &'static [u8] {
    Box::leak(simd_json::to_vec(value).expect("serializing").into_boxed_slice())
}

/// A running node.
pub struct NodeHandle {
    pub shared: Arc<NodeShared>,
    pub admin_token: AdminToken,
    executors: Vec<glommio::ExecutorJoinHandle<()>>,
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

    /// Waits for every shard to return.
    pub fn join(self) -> anyhow::Result<()> {
        for executor in self.executors {
            executor.join().map_err(|e| anyhow::anyhow!("a shard executor failed: {e}"))?;
        }
        Ok(())
    }
}

/// Starts a node on `config` and returns once every shard serves.
pub fn start(config: Config) -> anyhow::Result<NodeHandle> {
    let online = online_cores();
    let layout = config.layout(online).context("core layout")?;
    raise_memlock(&config, &layout);
    let data_dir_lock = lock_data_dir(&config)?;
    let (keys, admin_token) = access::prepare(&config).context("preparing keys")?;
    let shard_count = layout.shards.len();
    let listeners = (0..shard_count)
        .map(|i| bind_shard_listeners(&config, i))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let shard_ports: Vec<u16> = if config.shard_port_base == 0 {
        Vec::new()
    } else {
        (0..shard_count).map(|i| config.shard_port_base + i as u16).collect()
    };
    let topology = Topology {
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
    };
    let version = Version {
        name: "ron-node",
        version: env!("CARGO_PKG_VERSION"),
        git: env!("RON_GIT_REVISION"),
        profile: config.profile.as_str(),
        shards: shard_count,
        features: &["socket-ring", "passport-mac", "passport-ed25519", "passport-ml-dsa-65"],
    };
    let shared = Arc::new(NodeShared {
        draining: AtomicBool::new(false),
        ledger_safe_mode: AtomicBool::new(false),
        ledger_durable_seq: AtomicU64::new(0),
        ledger_safe_reason: OnceLock::new(),
        shards: (0..shard_count)
            .map(|_| ShardStatus {
                serving: AtomicBool::new(false),
                shedding: AtomicBool::new(false),
                wake: OnceLock::new(),
            })
            .collect(),
        topology_json: leak_json(&topology),
        version_json: leak_json(&version),
        keys: Mutex::new(Arc::new(keys)),
    });
    let (recovered, revocations, shard_states) = recover_ledger(&config, &shared, shard_count)?;
    shared.ledger_durable_seq.store(recovered.state.accumulator.len(), Ordering::Release);
    let applied = (recovered.state.accumulator.len(), recovered.state.root());
    let mut shard_states = shard_states.into_iter();
    let config = Arc::new(config);
    let keys = shared.keys.lock().expect("not poisoned").clone();
    let ledger_inflight_max =
        (config.ledger.queue_capacity as usize / shard_count).max(LEDGER_INFLIGHT_PER_SHARD_MIN);
    let mut links = Vec::with_capacity(shard_count);
    let mut shard_ends = Vec::with_capacity(shard_count);
    for _ in 0..shard_count {
        let (call_sender, call_receiver) = shared_channel::new_bounded(ledger_inflight_max);
        let (answer_sender, answer_receiver) = shared_channel::new_bounded(ledger_inflight_max);
        links.push(CommitterLink { calls: call_receiver, answers: answer_sender });
        shard_ends.push((call_sender, answer_receiver));
    }
    let executor = &config.executor;
    let mut committer_start =
        Some(CommitterStart { config: config.clone(), node: shared.clone(), recovered, links });
    // A committer that shares a shard's core runs on that shard's executor.
    let host = layout.shards.iter().position(|core| *core == layout.committer);
    let mut executors = Vec::with_capacity(shard_count + 1);
    if host.is_none() {
        let start = committer_start.take().expect("not handed out yet");
        let committer = LocalExecutorBuilder::new(Placement::Fixed(layout.committer))
            .name("committer")
            .io_memory(executor.io_memory_kib * 1024)
            .ring_depth(executor.ring_depth)
            .preempt_timer(Duration::from_millis(executor.preempt_ms))
            .spawn(move || committer::run(start))
            .map_err(|e| {
                anyhow::anyhow!("starting the committer on core {}: {e}", layout.committer)
            })?;
        executors.push(committer);
    }
    let mesh = mesh::builder(shard_count, config.limits.mesh_inflight_per_target_max);
    for (id, ((core, listeners), (ledger_calls, ledger_answers))) in
        layout.shards.iter().zip(listeners).zip(shard_ends).enumerate()
    {
        let start = ShardStart {
            id,
            count: shard_count,
            config: config.clone(),
            node: shared.clone(),
            keys: keys.clone(),
            listeners,
            mesh: mesh.clone(),
            ledger_calls,
            ledger_answers,
            ledger_inflight_max,
            committer: if host == Some(id) { committer_start.take() } else { None },
            balances: Default::default(),
            wallet: Default::default(),
            revocations: Default::default(),
            applied,
            view: None,
        };
        let state = shard_states.next().expect("one state per shard");
        let start = ShardStart {
            balances: state.balances,
            wallet: state.wallet,
            revocations: revocations.clone(),
            view: state.view,
            ..start
        };
        let executor = &config.executor;
        let handle = LocalExecutorBuilder::new(Placement::Fixed(*core))
            .name(&format!("shard-{id}"))
            .io_memory(executor.io_memory_kib * 1024)
            .ring_depth(executor.ring_depth)
            .preempt_timer(Duration::from_millis(executor.preempt_ms))
            .spin_before_park(Duration::from_micros(executor.spin_before_park_us))
            .spawn(move || shard::run(start))
            .map_err(|e| {
                anyhow::anyhow!("starting the executor of shard {id} on core {core}: {e}")
            })?;
        executors.push(handle);
    }
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
    Ok(NodeHandle { shared, admin_token, executors, _data_dir_lock: data_dir_lock })
}

/// Takes `data_dir/LOCK` (flock), so that two nodes never write one log.
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

/// Calls one shard may have in flight to the committer, at least.
const LEDGER_INFLIGHT_PER_SHARD_MIN: usize = 64;

/// One shard's state at start.
struct ShardState {
    balances: Balances,
    wallet: Wallet,
    view: Option<ViewWriter>,
}

/// Reads the log back (unless nothing is kept on disk), loads each shard's
/// view and replays the log after it, and reports what recovery found.
fn recover_ledger(
    config: &Config,
    shared: &NodeShared,
    shard_count: usize,
) -> anyhow::Result<(Recovered, Revocations, Vec<ShardState>)> {
    let mut balances: Vec<Balances> = (0..shard_count).map(|_| Balances::default()).collect();
    let wallet = &config.wallet;
    let new_wallet = |i: usize| {
        let ttl_ms = wallet.idempotency_ttl_s.saturating_mul(1000);
        Wallet::new(i, shard_count, ttl_ms, wallet.idempotency_keys_max as usize)
    };
    let mut wallets: Vec<Wallet> = (0..shard_count).map(new_wallet).collect();
    if config.amnesia() {
        let states = balances.into_iter().zip(wallets).map(|(balances, wallet)| ShardState {
            balances,
            wallet,
            view: None,
        });
        return Ok((Recovered::empty(), Revocations::default(), states.collect()));
    }
    let stores = open_views(config, shard_count, &mut balances, &mut wallets)?;
    let dir = config.data_dir.join("log");
    // Each shard replays the log after what its view holds.
    let from: Vec<u64> = stores.iter().map(|(_, meta)| meta.map_or(0, |m| m.applied_seq)).collect();
    // Receipts up to a view's seq are read from the view when asked for.
    for (wallet, from) in wallets.iter_mut().zip(&from) {
        wallet.set_receipts_kept_through(*from);
    }
    let mut replay = Replay {
        balances: &mut balances,
        wallets: &mut wallets,
        tail: vec![0; shard_count],
        short: 0,
        revocations: Revocations::default(),
    };
    // Each shard replays the log after its view.
    let recovered = log::recover(&dir, &mut |seq, root, item| {
        replay.item(seq, root, item, &|shard| seq > from[shard]);
    })
    .with_context(|| format!("reading the log in {}", dir.display()))?;
    // A view counts only if the log has its root at its seq; one that is
    // ahead of the log or from another log is rebuilt from this one.
    let roots = &recovered.state.roots;
    let stale: Vec<usize> = (0..shard_count)
        .filter(|i| {
            stores[*i].1.is_some_and(|meta| {
                let at = roots.partition_point(|r| r.seq < meta.applied_seq);
                roots.get(at).is_none_or(|r| r.seq != meta.applied_seq || r.root != meta.root)
            })
        })
        .collect();
    if !stale.is_empty() {
        tracing::warn!(shards = ?stale, "views do not match the log: rebuilding them from the log");
        for i in &stale {
            stores[*i].0.clear()?;
            replay.balances[*i] = Balances::default();
            replay.wallets[*i] = new_wallet(*i);
            replay.tail[*i] = 0;
        }
        // Only these shards, from the start: the whole log is read again.
        log::recover(&dir, &mut |seq, root, item| {
            replay.item(seq, root, item, &|shard| stale.contains(&shard));
        })
        .with_context(|| format!("reading the log in {}", dir.display()))?;
    }
    let Replay { tail, short, revocations, .. } = replay;
    if short > 0 {
        tracing::error!(short, "the log holds debits beyond their balances (stopped at zero)");
    }
    if let Some(truncated) = &recovered.truncated {
        tracing::warn!(%truncated, "ledger log: removed a torn last record");
    }
    if let Some(corruption) = &recovered.corruption {
        tracing::error!(%corruption, "ledger log is corrupt: starting in safe mode");
        shared.enter_ledger_safe_mode(corruption);
    }
    if !config.ledger.fsync {
        tracing::warn!(
            "ledger.fsync = false: acknowledged entries are NOT durable (CPU-path measurements only)"
        );
    }
    tracing::info!(
        records = recovered.records,
        entries = recovered.state.accumulator.len(),
        took_ms = recovered.took.as_millis() as u64,
        "ledger log recovered"
    );
    let mut states = Vec::with_capacity(shard_count);
    for (i, (((store, meta), balances), wallet)) in
        stores.into_iter().zip(balances).zip(wallets).enumerate()
    {
        let view_seq = if stale.contains(&i) { 0 } else { meta.map_or(0, |m| m.applied_seq) };
        tracing::info!(
            shard = i,
            view_seq,
            accounts = balances.len(),
            tail_entries = tail[i],
            "shard view loaded, log after it replayed"
        );
        let view = ViewWriter::spawn(i, store, view_seq)?;
        states.push(ShardState { balances, wallet, view: Some(view) });
    }
    Ok((recovered, revocations, states))
}

/// Log items replayed into the shards' state at start.
struct Replay<'a> {
    balances: &'a mut [Balances],
    wallets: &'a mut [Wallet],
    /// Items each shard replayed.
    tail: Vec<u64>,
    /// Debits that found too little (never expected).
    short: u64,
    /// Every shard holds every revocation.
    revocations: Revocations,
}

impl Replay<'_> {
    /// Applies item `seq` to every shard with a part in it that `wants` it.
    fn item(&mut self, seq: u64, root: &Hash, item: &LogItem, wants: &dyn Fn(usize) -> bool) {
        let shard_count = self.balances.len();
        match item {
            LogItem::Entry(entry) => {
                let owner = ron_proto::routing::owner(entry.account.as_bytes(), shard_count);
                if wants(owner) {
                    self.short += self.balances[owner].replay(&[Item::of(0, entry)]);
                    self.tail[owner] += 1;
                }
            }
            LogItem::Wallet(op) => {
                let placement = LogPlacement { seq, root: *root };
                for shard in ron_shards::wallet::parts(op, shard_count) {
                    if wants(shard) {
                        self.wallets[shard].apply(op, placement, false);
                        self.tail[shard] += 1;
                    }
                }
            }
            LogItem::Revocation(revocation) => {
                self.revocations.apply(&revocation.revoked);
            }
        }
    }
}

/// Opens the view of every shard and loads those written for this layout;
/// a view of another layout is cleared (rebuilt from the log), and views of
/// shards that no longer exist are removed.
fn open_views(
    config: &Config,
    shard_count: usize,
    balances: &mut [Balances],
    wallets: &mut [Wallet],
) -> anyhow::Result<Vec<(ViewStore, Option<ViewMeta>)>> {
    for entry in std::fs::read_dir(&config.data_dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if let Some(i) = name.strip_prefix("shard-").and_then(|i| i.parse::<usize>().ok()) {
            if i >= shard_count {
                tracing::info!(path = %path.display(), "removing the view of a shard that no longer exists");
                std::fs::remove_dir_all(&path)
                    .with_context(|| format!("removing {}", path.display()))?;
            }
        }
    }
    let mut stores = Vec::with_capacity(shard_count);
    for (i, (balances, wallet)) in balances.iter_mut().zip(wallets.iter_mut()).enumerate() {
        let dir = view_dir(&config.data_dir, i);
        let store = ViewStore::open(&dir)?;
        let meta = match store.meta()? {
            Some(meta) if meta.shard as usize == i && meta.shard_count as usize == shard_count => {
                store.load(balances)?;
                store.load_wallet(wallet)?;
                store.drop_mapped_pages();
                Some(meta)
            }
            Some(meta) => {
                tracing::info!(
                    shard = i,
                    was = meta.shard_count,
                    now = shard_count,
                    "the shard count changed: rebuilding the view from the log"
                );
                store.clear()?;
                None
            }
            None => {
                // New, or written by a build this one cannot read.
                store.clear()?;
                None
            }
        };
        stores.push((store, meta));
    }
    Ok(stores)
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
    let deadline = Instant::now() + BIND_RETRY;
    loop {
        match socket.bind(&address.into()) {
            Ok(()) => break,
            Err(error)
                if error.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(error) => return Err(error).with_context(|| format!("binding {address}")),
        }
    }
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

pub fn online_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

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
