//! Configuration (SPEC §2.2): embedded defaults, then a TOML file, then
//! `RON_<SECTION>_<FIELD>` environment variables, then command-line flags.
//! Unknown or invalid fields stop the process with a message naming the field.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// Log on disk with fsync per batch; LMDB views.
    Macronode,
    /// Everything in RAM (amnesia).
    Micronode,
}

impl Profile {
    pub const fn as_str(self) -> &'static str {
        match self {
            Profile::Macronode => "macronode",
            Profile::Micronode => "micronode",
        }
    }
}

/// `"auto"` or an explicit value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Auto<T> {
    Auto(AutoWord),
    Value(T),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AutoWord {
    Auto,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub profile: Profile,
    /// What the node logs, in `tracing` filter syntax (`info`, `debug`,
    /// `warn,ron_server=debug`); `RON_LOG` sets it too. Reloaded on SIGHUP.
    pub log: String,
    /// Every shard accepts here (SO_REUSEPORT).
    pub listen: SocketAddr,
    /// Shard i also listens on `shard_port_base + i`; 0 turns this off.
    pub shard_port_base: u16,
    pub data_dir: PathBuf,
    pub cores: Cores,
    pub executor: Executor,
    pub limits: Limits,
    pub ledger: Ledger,
    pub wallet: Wallet,
    pub passport: Passport,
    pub index: Index,
    pub rewarder: Rewarder,
    pub workers: Workers,
    pub services: Services,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Cores {
    /// Cores that run a shard each, or "auto": all online cores but the last.
    pub shards: Auto<Vec<usize>>,
    /// The core of the ledger committer, or "auto": the last online core.
    pub committer: Auto<usize>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Executor {
    /// glommio's registered I/O memory per executor. It is locked memory, so
    /// it must fit `ulimit -l` with every executor's share.
    pub io_memory_kib: usize,
    /// Depth of glommio's own rings.
    pub ring_depth: usize,
    /// glommio's preempt timer for queues that do not set their own latency.
    pub preempt_ms: u64,
    /// How long glommio spins before it parks an idle executor.
    pub spin_before_park_us: u64,
    /// Submission entries of each shard's socket ring.
    pub socket_ring_entries: u32,
    /// Provided receive buffers per shard, and their size.
    pub recv_buffers: u32,
    pub recv_buffer_bytes: usize,
    /// Idle turns of the socket-ring task before it parks on its eventfd.
    pub idle_turns_before_park: u32,
    /// The longest a parked shard sleeps without a wake-up (see `front::Park`).
    pub park_timeout_us: u64,
    /// How often each shard checks that a 1 ms glommio timer fires on time
    /// (`executor_timer_lateness_seconds`); 0 turns the probe off.
    pub timer_probe_interval_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub body_max_bytes: usize,
    pub header_max_bytes: usize,
    pub decompress_ratio_max: usize,
    pub inflight_per_shard_max: u32,
    pub connections_per_shard_max: u32,
    pub request_timeout_ms: u64,
    pub idle_timeout_ms: u64,
    pub header_read_timeout_ms: u64,
    /// Requests per second per tenant; 0 turns the limit off.
    pub tenant_rps_max: u32,
    pub drain_timeout_ms: u64,
    /// Cross-shard requests in flight from one shard to another.
    pub mesh_inflight_per_target_max: u32,
    /// Pipelined requests of one connection waiting for their turn to answer.
    pub pipeline_depth_max: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Ledger {
    pub batch_entries_max: u32,
    pub queue_capacity: u32,
    pub fsync: bool,
    pub segment_bytes: u64,
    /// Writes the next segment with zeros once the open one is half full,
    /// so that a record's sync only flushes (it doubles what the log writes
    /// to the device; off: segments are preallocated only).
    pub zero_segments: bool,
    /// A shard writes its LMDB view once it has applied this many entries
    /// since the last write, ...
    pub checkpoint_every: u64,
    /// ... or this long after the last write, whichever comes first.
    pub view_write_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Wallet {
    pub assets: Vec<String>,
    /// A u128 as a decimal string.
    pub amount_per_op_max: String,
    pub idempotency_ttl_s: u64,
    pub idempotency_keys_max: u32,
    /// A nonce up to this many ahead of a payer's next one waits for those
    /// before it (pipelined writes over several connections arrive out of
    /// order); 0 refuses any nonce but the next at once.
    pub nonce_window: u32,
    /// How long such a nonce waits before it is refused (`NONCE_CONFLICT`).
    pub nonce_wait_ms: u64,
    /// Writes in one `POST /v1/transfers` or `/v1/issues` (and at most
    /// `ledger.batch_entries_max`: a batch is one record).
    pub batch_transfers_max: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PqMode {
    Off,
    Mirror,
    Require,
    Enforce,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Passport {
    pub ttl_default_s: u64,
    pub ttl_max_s: u64,
    pub clock_skew_s: u64,
    pub caveats_max: usize,
    pub verify_cache_ttl_ms: u64,
    pub verify_cache_entries_max: u32,
    /// Bytes of tokens (text and decoded) one shard's verify cache keeps.
    pub verify_cache_bytes_max: u64,
    pub pq_mode: PqMode,
    /// Names the node answers to: its routes take tokens for any of them
    /// (and `aud` caveats naming one). The first is the audience of the
    /// tokens it mints itself (the admin token).
    pub audiences: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Index {
    /// Answers one shard's cache keeps, and bytes of them.
    pub cache_entries_max: u32,
    pub cache_bytes_max: u64,
    pub cache_ttl_ms: u64,
    /// How long a miss is remembered.
    pub negative_ttl_ms: u64,
    /// Reads without a token (else `index.read`).
    pub public_reads: bool,
    /// TTL of a provider record that names none, and the most one may ask.
    pub provider_ttl_default_s: u64,
    pub provider_ttl_max_s: u64,
    /// Provider records kept per cid.
    pub providers_per_cid_max: u32,
    /// Bytes of manifests the node keeps (the LMDB map, or RAM in amnesia).
    pub objects_bytes_max: u64,
    /// Where the DHT listens for peers (a multiaddr).
    pub dht_listen: String,
    /// This node's HTTP address as peers should use it; empty: `http://`
    /// and `listen` (127.0.0.1 for an unspecified address).
    pub advertise_url: String,
    /// DHT peers to bootstrap from (multiaddrs).
    pub peers: Vec<String>,
    /// Keys with Kademlia provider records the node keeps (its own and
    /// others').
    pub dht_keys_max: u32,
    pub alpha: u32,
    pub beta: u32,
    pub hedge_after_ms: u64,
    pub deadline_ms: u64,
    pub hops_max: u32,
}

/// The worker threads for CPU work off the request path (`crate::workers`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Workers {
    /// Threads for view writes, at `normal_nice`; 0: one per shard.
    pub normal_threads: u32,
    /// Threads at SCHED_IDLE (signatures); 0: one per shard.
    pub idle_threads: u32,
    /// Threads at SCHED_IDLE for long jobs (reward runs: the seed's compute
    /// workers); 0: one per shard.
    pub batch_threads: u32,
    /// Jobs waiting per lane, at most; more are refused.
    pub queue_max: u32,
    /// Cores to pin the threads to (round robin); empty: not pinned.
    pub cores: Vec<usize>,
    /// The nice level (0..=19) of the view writers' threads: above 0, a
    /// thread at normal priority that wakes (an executor, a client on the
    /// same core) preempts a view write, which still keeps a share of a
    /// busy core (`crate::workers`).
    pub normal_nice: i32,
}

/// Which services run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Services {
    /// Services that are off by default to turn on (by name).
    pub enable: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Rewarder {
    /// Computes waiting per shard for one of `inflight_max` slots; past it
    /// a compute answers 429 (each holds its body: an L snapshot is 26 MB).
    /// Reloaded on SIGHUP.
    pub work_queue_max: u32,
    /// Computes (and replays, which parse their body) running per shard on
    /// the workers' batch lane (`workers.batch_threads` are the seed's
    /// compute workers). Reloaded on SIGHUP.
    pub inflight_max: u32,
    /// Requests per second of one tenant (a token's `tenant` caveat) to the
    /// rewarder's routes, on top of `limits.tenant_rps_max`; 0 turns it
    /// off. Reloaded on SIGHUP.
    pub tenant_rps_max: u32,
    /// A payout issue slower than this defers the rest of the emission
    /// (quarantine-only).
    pub ledger_deadline_ms: u64,
    /// Tries again a payout issue the ledger refused for now (429, 503),
    /// with exponential backoff and jitter, before deferring the emission.
    pub ledger_retries_max: u32,
    /// `run_key`'s salt (the original's default).
    pub idempotency_salt: String,
    /// The manifest store's size (`data_dir/rewarder-manifests`, or RAM in
    /// amnesia).
    pub manifests_bytes_max: u64,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            profile: Profile::Macronode,
            log: "info".to_owned(),
            listen: "127.0.0.1:8080".parse().expect("a valid address"),
            shard_port_base: 8100,
            data_dir: PathBuf::from("./ron-data"),
            cores: Cores::default(),
            executor: Executor::default(),
            limits: Limits::default(),
            ledger: Ledger::default(),
            wallet: Wallet::default(),
            passport: Passport::default(),
            index: Index::default(),
            rewarder: Rewarder::default(),
            workers: Workers::default(),
            services: Services::default(),
        }
    }
}

impl Config {
    /// The URL peers reach this node's HTTP front at.
    pub fn advertise_url(&self) -> String {
        if !self.index.advertise_url.is_empty() {
            return self.index.advertise_url.clone();
        }
        let mut listen = self.listen;
        if listen.ip().is_unspecified() {
            listen.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        format!("http://{listen}")
    }

    /// The micronode profile: nothing touches the disk.
    pub fn amnesia(&self) -> bool {
        self.profile == Profile::Micronode
    }
}

impl Default for Cores {
    fn default() -> Cores {
        Cores { shards: Auto::Auto(AutoWord::Auto), committer: Auto::Auto(AutoWord::Auto) }
    }
}

impl Default for Executor {
    fn default() -> Executor {
        Executor {
            io_memory_kib: 512,
            ring_depth: 128,
            preempt_ms: 100,
            spin_before_park_us: 0,
            socket_ring_entries: 1024,
            recv_buffers: 1024,
            recv_buffer_bytes: 4096,
            idle_turns_before_park: 4,
            park_timeout_us: 2000,
            timer_probe_interval_ms: 100,
        }
    }
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            body_max_bytes: 1 << 20,
            header_max_bytes: 16 * 1024,
            decompress_ratio_max: 10,
            inflight_per_shard_max: 512,
            connections_per_shard_max: 4096,
            request_timeout_ms: 5000,
            idle_timeout_ms: 60_000,
            header_read_timeout_ms: 10_000,
            tenant_rps_max: 0,
            drain_timeout_ms: 10_000,
            mesh_inflight_per_target_max: 256,
            pipeline_depth_max: 128,
        }
    }
}

impl Default for Ledger {
    fn default() -> Ledger {
        Ledger {
            batch_entries_max: 8190,
            queue_capacity: 65_536,
            fsync: true,
            zero_segments: true,
            segment_bytes: 256 << 20,
            checkpoint_every: 100_000,
            view_write_ms: 1000,
        }
    }
}

impl Default for Wallet {
    fn default() -> Wallet {
        Wallet {
            assets: vec!["roc".to_owned()],
            amount_per_op_max: "1000000000000000000".to_owned(),
            idempotency_ttl_s: 86_400,
            idempotency_keys_max: 1_000_000,
            nonce_window: 32,
            nonce_wait_ms: 5,
            batch_transfers_max: 1024,
        }
    }
}

impl Default for Passport {
    fn default() -> Passport {
        Passport {
            ttl_default_s: 3600,
            ttl_max_s: 86_400,
            clock_skew_s: 60,
            caveats_max: 64,
            verify_cache_ttl_ms: 2000,
            verify_cache_entries_max: 65_536,
            verify_cache_bytes_max: 64 << 20,
            pq_mode: PqMode::Off,
            audiences: vec!["ron-node".to_owned()],
        }
    }
}

impl Default for Index {
    fn default() -> Index {
        Index {
            cache_entries_max: 65_536,
            cache_bytes_max: 32 << 20,
            cache_ttl_ms: 5000,
            negative_ttl_ms: 1000,
            public_reads: true,
            provider_ttl_default_s: 600,
            provider_ttl_max_s: 86_400,
            providers_per_cid_max: 64,
            objects_bytes_max: 256 << 20,
            dht_listen: "/ip4/127.0.0.1/tcp/0".to_owned(),
            advertise_url: String::new(),
            peers: Vec::new(),
            dht_keys_max: 16_384,
            alpha: 3,
            beta: 2,
            hedge_after_ms: 150,
            deadline_ms: 1200,
            hops_max: 5,
        }
    }
}

impl Default for Workers {
    fn default() -> Workers {
        Workers {
            normal_threads: 0,
            idle_threads: 0,
            batch_threads: 0,
            queue_max: 4096,
            cores: Vec::new(),
            normal_nice: 10,
        }
    }
}

impl Default for Rewarder {
    fn default() -> Rewarder {
        Rewarder {
            work_queue_max: 4096,
            inflight_max: 4,
            tenant_rps_max: 100,
            ledger_deadline_ms: 1000,
            ledger_retries_max: 2,
            idempotency_salt: ron_proto::rewarder::DEFAULT_SALT.to_owned(),
            manifests_bytes_max: 1 << 30,
        }
    }
}

/// A configuration that cannot be used. The message names the field.
#[derive(Debug, thiserror::Error)]
#[error("config: {0}")]
pub struct ConfigError(pub String);

/// The sections a `RON_<SECTION>_<FIELD>` variable may address.
const SECTIONS: [&str; 10] = [
    "cores", "executor", "limits", "ledger", "wallet", "passport", "index", "rewarder", "workers",
    "services",
];
const TOP_LEVEL: [&str; 5] = ["profile", "log", "listen", "shard_port_base", "data_dir"];

/// Command-line overrides, applied last.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub amnesia: bool,
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub shard_port_base: Option<u16>,
}

impl Config {
    /// Builds the configuration from a file's text (if any), the environment
    /// variables given, and command-line overrides, then validates it.
    pub fn load(
        file_text: Option<&str>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
        online_cores: usize,
    ) -> Result<Config, ConfigError> {
        let mut table: toml::Table = match file_text {
            Some(text) => text.parse().map_err(|e| ConfigError(format!("file: {e}")))?,
            None => toml::Table::new(),
        };
        apply_env(&mut table, env)?;
        let mut config: Config = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| {
                let path = e.path().to_string();
                ConfigError(format!("field `{path}`: {}", e.into_inner()))
            })?;
        if overrides.amnesia {
            config.profile = Profile::Micronode;
        }
        if let Some(listen) = overrides.listen {
            config.listen = listen;
        }
        if let Some(data_dir) = &overrides.data_dir {
            config.data_dir = data_dir.clone();
        }
        if let Some(base) = overrides.shard_port_base {
            config.shard_port_base = base;
        }
        config.validate(online_cores)?;
        Ok(config)
    }

    fn validate(&self, online_cores: usize) -> Result<(), ConfigError> {
        self.validate_limits()?;
        self.validate_executor()?;
        self.validate_services(online_cores)?;
        if let Err(error) = tracing_subscriber::EnvFilter::try_new(&self.log) {
            return Err(ConfigError(format!("field `log`: {error}")));
        }
        if self.wallet.amount_per_op_max.parse::<u128>().map_or(true, |v| v == 0) {
            return Err(ConfigError(
                "field `wallet.amount_per_op_max`: must be a positive u128 in decimal".into(),
            ));
        }
        range("wallet.nonce_window", self.wallet.nonce_window, 0, 1024)?;
        range("wallet.nonce_wait_ms", self.wallet.nonce_wait_ms, 0, 10_000)?;
        // The effective bound is also at most `ledger.batch_entries_max`
        // (a batch is one record): `services::wallet::batch`.
        let record_max = ron_proto::log::RECORD_ENTRIES_MAX as u32;
        range("wallet.batch_transfers_max", self.wallet.batch_transfers_max, 1, record_max)?;
        if self.wallet.assets.is_empty() {
            return Err(ConfigError("field `wallet.assets`: needs at least one asset".into()));
        }
        if self.listen.port() == 0 {
            return Err(ConfigError("field `listen`: needs a fixed port (shards share it)".into()));
        }
        let layout = self.layout(online_cores)?;
        if self.shard_port_base != 0 {
            let last = u32::from(self.shard_port_base) + layout.shards.len() as u32 - 1;
            if last > u32::from(u16::MAX) {
                return Err(ConfigError(
                    "field `shard_port_base`: shard ports run past 65535".into(),
                ));
            }
        }
        Ok(())
    }

    fn validate_limits(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        range("limits.body_max_bytes", l.body_max_bytes, 1, 64 << 20)?;
        range("limits.header_max_bytes", l.header_max_bytes, 1024, 1 << 20)?;
        range("limits.decompress_ratio_max", l.decompress_ratio_max, 1, 1000)?;
        range("limits.inflight_per_shard_max", l.inflight_per_shard_max, 1, 1 << 20)?;
        range("limits.connections_per_shard_max", l.connections_per_shard_max, 1, 1 << 20)?;
        range("limits.request_timeout_ms", l.request_timeout_ms, 1, 3_600_000)?;
        range("limits.idle_timeout_ms", l.idle_timeout_ms, 1, 3_600_000)?;
        range("limits.header_read_timeout_ms", l.header_read_timeout_ms, 1, 3_600_000)?;
        range("limits.drain_timeout_ms", l.drain_timeout_ms, 0, 3_600_000)?;
        range("limits.mesh_inflight_per_target_max", l.mesh_inflight_per_target_max, 1, 1 << 16)?;
        range("limits.pipeline_depth_max", l.pipeline_depth_max, 1, 1 << 16)?;
        Ok(())
    }

    fn validate_executor(&self) -> Result<(), ConfigError> {
        let e = &self.executor;
        range("executor.io_memory_kib", e.io_memory_kib, 64, 1 << 20)?;
        range("executor.ring_depth", e.ring_depth, 1, 32_768)?;
        range("executor.preempt_ms", e.preempt_ms, 1, 10_000)?;
        range("executor.spin_before_park_us", e.spin_before_park_us, 0, 1_000_000)?;
        range("executor.socket_ring_entries", e.socket_ring_entries, 8, 32_768)?;
        range("executor.recv_buffers", e.recv_buffers, 8, 32_768)?;
        if !e.recv_buffers.is_power_of_two() {
            return Err(ConfigError(
                "field `executor.recv_buffers`: must be a power of two".into(),
            ));
        }
        range("executor.recv_buffer_bytes", e.recv_buffer_bytes, 512, 1 << 20)?;
        range("executor.idle_turns_before_park", e.idle_turns_before_park, 1, 1_000_000)?;
        range("executor.park_timeout_us", e.park_timeout_us, 100, 1_000_000)?;
        range("executor.timer_probe_interval_ms", e.timer_probe_interval_ms, 0, 3_600_000)?;
        Ok(())
    }

    /// The sections of the services, the ledger's and the workers'.
    fn validate_services(&self, online_cores: usize) -> Result<(), ConfigError> {
        range(
            "passport.caveats_max",
            self.passport.caveats_max,
            1,
            ron_proto::token::CAVEATS_COUNT_MAX,
        )?;
        range("passport.ttl_max_s", self.passport.ttl_max_s, 1, 10 * 365 * 86_400)?;
        range("passport.verify_cache_bytes_max", self.passport.verify_cache_bytes_max, 0, 1 << 40)?;
        range("passport.ttl_default_s", self.passport.ttl_default_s, 1, self.passport.ttl_max_s)?;
        let audiences = &self.passport.audiences;
        if audiences.is_empty() {
            return Err(ConfigError("field `passport.audiences`: name at least one".into()));
        }
        let name_max = ron_proto::token::NAME_BYTES_MAX;
        if let Some(bad) = audiences.iter().find(|a| a.is_empty() || a.len() > name_max) {
            return Err(ConfigError(format!(
                "field `passport.audiences`: {bad:?} must be 1..={name_max} bytes"
            )));
        }
        range(
            "ledger.batch_entries_max",
            self.ledger.batch_entries_max,
            1,
            ron_proto::log::RECORD_ENTRIES_MAX as u32,
        )?;
        range("ledger.queue_capacity", self.ledger.queue_capacity, 1, 1 << 24)?;
        range("ledger.segment_bytes", self.ledger.segment_bytes, 1 << 16, 1 << 40)?;
        range("ledger.checkpoint_every", self.ledger.checkpoint_every, 1, 1 << 40)?;
        range("ledger.view_write_ms", self.ledger.view_write_ms, 10, 3_600_000)?;
        self.validate_index()?;
        self.validate_rewarder()?;
        range("workers.normal_threads", self.workers.normal_threads, 0, 1024)?;
        range("workers.idle_threads", self.workers.idle_threads, 0, 1024)?;
        range("workers.batch_threads", self.workers.batch_threads, 0, 1024)?;
        range("workers.queue_max", self.workers.queue_max, 1, 1 << 20)?;
        range("workers.normal_nice", self.workers.normal_nice, 0, 19)?;
        for core in &self.workers.cores {
            if *core >= online_cores {
                return Err(ConfigError(format!(
                    "field `workers.cores`: core {core} is not online (this host has {online_cores})"
                )));
            }
        }
        Ok(())
    }

    fn validate_rewarder(&self) -> Result<(), ConfigError> {
        let r = &self.rewarder;
        range("rewarder.inflight_max", r.inflight_max, 1, 1 << 16)?;
        range("rewarder.work_queue_max", r.work_queue_max, 0, 1 << 20)?;
        range("rewarder.ledger_retries_max", r.ledger_retries_max, 0, 16)?;
        range("rewarder.manifests_bytes_max", r.manifests_bytes_max, 1 << 20, 1 << 40)?;
        if r.idempotency_salt.is_empty() {
            return Err(ConfigError("field `rewarder.idempotency_salt`: must not be empty".into()));
        }
        Ok(())
    }

    fn validate_index(&self) -> Result<(), ConfigError> {
        let i = &self.index;
        range("index.cache_entries_max", i.cache_entries_max, 1, 1 << 24)?;
        range("index.cache_bytes_max", i.cache_bytes_max, 64 << 10, 1 << 40)?;
        range("index.cache_ttl_ms", i.cache_ttl_ms, 0, 3_600_000)?;
        range("index.negative_ttl_ms", i.negative_ttl_ms, 0, 3_600_000)?;
        range("index.provider_ttl_max_s", i.provider_ttl_max_s, 1, u64::from(u32::MAX))?;
        range("index.provider_ttl_default_s", i.provider_ttl_default_s, 1, i.provider_ttl_max_s)?;
        range("index.providers_per_cid_max", i.providers_per_cid_max, 1, 1024)?;
        range("index.objects_bytes_max", i.objects_bytes_max, 1 << 20, 1 << 44)?;
        range("index.dht_keys_max", i.dht_keys_max, 1, 1 << 22)?;
        if !i.advertise_url.is_empty() && !ron_proto::index::valid_node_uri(&i.advertise_url) {
            return Err(ConfigError("field `index.advertise_url`: not a URL".into()));
        }
        range("index.alpha", i.alpha, 1, 32)?;
        range("index.beta", i.beta, 0, 32)?;
        range("index.hops_max", i.hops_max, 1, 64)?;
        range("index.deadline_ms", i.deadline_ms, 1, 600_000)?;
        range("index.hedge_after_ms", i.hedge_after_ms, 0, i.deadline_ms)?;
        Ok(())
    }

    /// The cores of the shards and of the committer.
    pub fn layout(&self, online_cores: usize) -> Result<Layout, ConfigError> {
        assert!(online_cores > 0);
        let shards = match &self.cores.shards {
            Auto::Auto(_) if online_cores == 1 => vec![0],
            Auto::Auto(_) => (0..online_cores - 1).collect(),
            Auto::Value(cores) => cores.clone(),
        };
        let committer = match self.cores.committer {
            Auto::Auto(_) => online_cores - 1,
            Auto::Value(core) => core,
        };
        if shards.is_empty() {
            return Err(ConfigError("field `cores.shards`: needs at least one core".into()));
        }
        for (i, core) in shards.iter().enumerate() {
            if *core >= online_cores {
                return Err(ConfigError(format!(
                    "field `cores.shards`: core {core} is not online (this host has {online_cores})"
                )));
            }
            if shards[..i].contains(core) {
                return Err(ConfigError(format!(
                    "field `cores.shards`: core {core} is listed twice"
                )));
            }
        }
        if committer >= online_cores {
            return Err(ConfigError(format!(
                "field `cores.committer`: core {committer} is not online (this host has {online_cores})"
            )));
        }
        Ok(Layout { shards, committer })
    }
}

impl Config {
    /// The worker threads this config asks for on `shards` shards.
    pub fn workers_layout(&self, shards: usize) -> crate::workers::WorkersLayout {
        let or_per_shard = |threads: u32| if threads == 0 { shards } else { threads as usize };
        crate::workers::WorkersLayout {
            normal_threads: or_per_shard(self.workers.normal_threads),
            idle_threads: or_per_shard(self.workers.idle_threads),
            batch_threads: or_per_shard(self.workers.batch_threads),
            queue_max: self.workers.queue_max as usize,
            cores: self.workers.cores.clone(),
            normal_nice: self.workers.normal_nice,
        }
    }
}

/// `value` within `low..=high`, or an error naming `field`.
fn range<T: PartialOrd + std::fmt::Display>(
    field: &str,
    value: T,
    low: T,
    high: T,
) -> Result<(), ConfigError> {
    if value < low || value > high {
        return Err(ConfigError(format!("field `{field}`: {value} is outside {low}..={high}")));
    }
    Ok(())
}

/// The cores this process may run on.
pub fn online_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Which core runs what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub shards: Vec<usize>,
    pub committer: usize,
}

fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    for (name, raw) in env {
        let Some(key) = name.strip_prefix("RON_") else { continue };
        let key = key.to_ascii_lowercase();
        let value = parse_env_value(&raw);
        if TOP_LEVEL.contains(&key.as_str()) {
            table.insert(key, value);
            continue;
        }
        let Some(section) = SECTIONS.iter().find(|s| key.starts_with(&format!("{s}_"))) else {
            // RON_LOG and test knobs are not configuration.
            continue;
        };
        let field = key[section.len() + 1..].to_owned();
        let entry = table
            .entry(section.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let toml::Value::Table(section_table) = entry else {
            return Err(ConfigError(format!("field `{section}`: must be a table")));
        };
        section_table.insert(field, value);
    }
    Ok(())
}

/// An environment value is read as a TOML value when it is one (`8192`,
/// `true`, `[0, 1]`), and as a string otherwise (`127.0.0.1:9000`, `auto`).
fn parse_env_value(raw: &str) -> toml::Value {
    match format!("v = {raw}").parse::<toml::Table>() {
        Ok(mut table) => table.remove("v").expect("the key just parsed"),
        Err(_) => toml::Value::String(raw.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: Option<&str>, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Config::load(text, env, &Overrides::default(), 2)
    }

    #[test]
    fn defaults_are_valid_and_auto_layout_leaves_the_last_core_to_the_committer() {
        let config = load(None, &[]).unwrap();
        assert_eq!(config.layout(2).unwrap(), Layout { shards: vec![0], committer: 1 });
        assert_eq!(config.layout(1).unwrap(), Layout { shards: vec![0], committer: 0 });
        assert_eq!(config.layout(8).unwrap().shards, (0..7).collect::<Vec<_>>());
    }

    #[test]
    fn every_tuning_profile_is_valid() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tuning");
        let mut checked = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let text = std::fs::read_to_string(&path).unwrap();
                let config = load(Some(&text), &[]).unwrap_or_else(|e| panic!("{path:?}: {e}"));
                config.layout(2).unwrap_or_else(|e| panic!("{path:?}: {e}"));
                checked += 1;
            }
        }
        assert!(checked >= 4);
    }

    #[test]
    fn file_then_env() {
        let text = "shard_port_base = 9100\n[limits]\nbody_max_bytes = 2048\n[cores]\nshards = [0, 1]\ncommitter = 1\n";
        let config = load(
            Some(text),
            &[
                ("RON_LIMITS_BODY_MAX_BYTES", "4096"),
                ("RON_SHARD_PORT_BASE", "9200"),
                ("RON_LOG", "debug"),
                ("RON_CRASH_CYCLES", "3"),
            ],
        )
        .unwrap();
        assert_eq!(config.limits.body_max_bytes, 4096);
        assert_eq!(config.shard_port_base, 9200);
        assert_eq!(config.layout(2).unwrap(), Layout { shards: vec![0, 1], committer: 1 });
        let config =
            load(None, &[("RON_LISTEN", "127.0.0.1:9000"), ("RON_CORES_SHARDS", "auto")]).unwrap();
        assert_eq!(config.listen.port(), 9000);
    }

    #[test]
    fn errors_name_the_field() {
        type Case<'a> = (Option<&'a str>, &'a [(&'a str, &'a str)], &'a str);
        let cases: [Case<'_>; 13] = [
            (Some("[limits]\nbody_max_byte = 1\n"), &[], "body_max_byte"),
            (Some("[limits]\nbody_max_bytes = \"x\"\n"), &[], "limits.body_max_bytes"),
            (None, &[("RON_LIMITS_BODY_MAX_BYTES", "0")], "limits.body_max_bytes"),
            (None, &[("RON_LEDGER_SEGMENT_BYTE", "1")], "segment_byte"),
            (Some("colour = 1\n"), &[], "colour"),
            (Some("[cores]\nshards = [5]\n"), &[], "cores.shards"),
            (Some("profile = \"picnode\"\n"), &[], "profile"),
            (None, &[("RON_PASSPORT_AUDIENCES", "[]")], "passport.audiences"),
            (Some("[passport]\naudiences = [\"\"]\n"), &[], "passport.audiences"),
            (None, &[("RON_LOG", "ron_server=loud")], "log"),
            (None, &[("RON_WALLET_NONCE_WINDOW", "1025")], "wallet.nonce_window"),
            (Some("[workers]\nnormal_nice = 20\n"), &[], "workers.normal_nice"),
            (Some("[workers]\nnormal_nice = -1\n"), &[], "workers.normal_nice"),
        ];
        for (text, env, field) in cases {
            let message = load(text, env).unwrap_err().to_string();
            assert!(message.contains(field), "{message} should name {field}");
        }
    }
}
