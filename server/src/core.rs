//! The shard core: what every shard has whatever services it runs. Its id
//! and the config, the node's shared flags, the mesh to other shards, the
//! link to the log and its view, the workers, its metrics and its task
//! queue. It imports no service; services hold an `Rc<Core>`.
//!
//! Architecture invariant: nothing here is shared with another core except
//! through messages (the mesh, the log link, worker results) and the few
//! read-mostly atomics of `NodeShared`. Shard state is `Rc`/`RefCell`, so
//! handing it to another core does not compile.

pub mod mesh;
pub mod metrics;

use crate::config::Config;
use crate::log::view::ShardView;
use crate::log::{LogLink, LogShared};
use crate::metrics::MetricsSource;
use crate::workers::{Returns, Workers};
use glommio::TaskQueueHandle;
use mesh::Mesh;
use metrics::{CoreMetrics, LogShardGauges, Snapshot};
use std::cell::{Cell, RefCell};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Request handling and cross-shard messages run here: glommio polls I/O and
/// switches queues at least this often while the queue is busy.
pub const REQUEST_QUEUE_LATENCY: Duration = Duration::from_millis(1);

/// Asks a service whether it keeps the node from being ready (why, if so).
pub type Probe = Box<dyn Fn() -> Option<String> + Send + Sync>;

/// What every shard may read about the node. Written at start, then only
/// flags change.
pub struct NodeShared {
    pub draining: AtomicBool,
    pub log: Arc<LogShared>,
    pub shards: Vec<ShardStatus>,
    pub topology_json: &'static [u8],
    pub version_json: &'static [u8],
    /// The services' readiness (`Service::not_ready`).
    pub probes: Vec<Probe>,
    /// What SIGHUP reloads (`crate::reload`).
    pub reload: crate::reload::Reloadable,
}

pub struct ShardStatus {
    pub serving: AtomicBool,
    pub shedding: AtomicBool,
    /// A duplicate of the shard's ring eventfd: writing it wakes the shard.
    wake: OnceLock<OwnedFd>,
}

impl Default for ShardStatus {
    fn default() -> ShardStatus {
        ShardStatus {
            serving: AtomicBool::new(false),
            shedding: AtomicBool::new(false),
            wake: OnceLock::new(),
        }
    }
}

impl ShardStatus {
    pub fn set_wake(&self, eventfd: RawFd) {
        // SAFETY: dup returns a new descriptor or -1.
        let copy = unsafe { libc::dup(eventfd) };
        assert!(copy >= 0, "duplicating the shard's eventfd");
        // SAFETY: a fresh descriptor owned by nobody else.
        let _ = self.wake.set(unsafe { OwnedFd::from_raw_fd(copy) });
    }

    pub fn wake(&self) {
        if let Some(fd) = self.wake.get() {
            let one: u64 = 1;
            // SAFETY: writing 8 bytes from a live u64 to an eventfd we own.
            let _ = unsafe { libc::write(fd.as_raw_fd(), (&raw const one).cast(), 8) };
        }
    }
}

impl NodeShared {
    /// What keeps the node from being ready; empty when it is.
    pub fn not_ready(&self) -> Vec<String> {
        let mut missing = Vec::new();
        if self.draining.load(Ordering::Relaxed) {
            missing.push("node is draining".to_owned());
        }
        if let Some(reason) = self.log.safe_mode_reason() {
            missing.push(format!("ledger in safe mode: {reason}"));
        }
        missing.extend(self.probes.iter().filter_map(|probe| probe()));
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

/// One shard's core.
pub struct Core {
    pub id: usize,
    pub count: usize,
    pub config: Arc<Config>,
    pub node: Arc<NodeShared>,
    pub mesh: Rc<Mesh>,
    pub log: Rc<LogLink>,
    pub view: Rc<ShardView>,
    pub workers: Workers,
    /// Results of this shard's jobs (`crate::workers`).
    pub returns: Returns,
    pub metrics: RefCell<CoreMetrics>,
    /// The services' metrics, gathered with the core's at a scrape.
    metric_sources: RefCell<Vec<Rc<dyn MetricsSource>>>,
    /// The `Latency::Matters` queue of requests and mesh messages.
    pub queue: TaskQueueHandle,
    /// Body bytes of synchronous answers, reused from request to request.
    pub scratch: RefCell<Vec<u8>>,
    /// Requests answered later (by a task) that have not finished.
    pub inflight: Cell<u32>,
}

/// What a shard's core is made of.
pub struct CoreParts {
    pub id: usize,
    pub count: usize,
    pub config: Arc<Config>,
    pub node: Arc<NodeShared>,
    pub mesh: Rc<Mesh>,
    pub log: Rc<LogLink>,
    pub view: Rc<ShardView>,
    pub workers: Workers,
    pub returns: Returns,
    pub queue: TaskQueueHandle,
}

impl Core {
    pub fn new(parts: CoreParts) -> Core {
        assert!(parts.id < parts.count);
        Core {
            id: parts.id,
            count: parts.count,
            config: parts.config,
            node: parts.node,
            mesh: parts.mesh,
            log: parts.log,
            view: parts.view,
            workers: parts.workers,
            returns: parts.returns,
            metrics: RefCell::new(CoreMetrics::new(Vec::new())),
            metric_sources: RefCell::new(Vec::new()),
            queue: parts.queue,
            scratch: RefCell::new(Vec::with_capacity(4096)),
            inflight: Cell::new(0),
        }
    }

    /// When a call made now stops mattering to its caller: the request
    /// timeout from now. Calls that reserve carry it (`mesh::Wait::Answer`).
    pub fn call_deadline(&self) -> std::time::Instant {
        std::time::Instant::now()
            + std::time::Duration::from_millis(self.config.limits.request_timeout_ms)
    }

    /// Sizes the per-route metrics for the shard's route table.
    pub fn set_routes(&self, labels: Vec<&'static str>) {
        *self.metrics.borrow_mut() = CoreMetrics::new(labels);
    }

    /// Whether a sheddable request may start, given the in-flight cap.
    pub fn admit(&self) -> bool {
        !self.note_load()
    }

    /// Publishes whether the shard is at its in-flight cap (for `/readyz`);
    /// returns that.
    pub fn note_load(&self) -> bool {
        let over = self.inflight.get() >= self.config.limits.inflight_per_shard_max;
        let status = &self.node.shards[self.id];
        if status.shedding.load(Ordering::Relaxed) != over {
            status.shedding.store(over, Ordering::Relaxed);
        }
        over
    }

    /// The shard that owns `key`.
    pub fn owner(&self, key: &[u8]) -> usize {
        ron_proto::routing::owner(key, self.count)
    }

    /// Runs `future` on the shard's request queue, detached.
    pub fn spawn(&self, future: impl Future<Output = ()> + 'static) {
        glommio::spawn_local_into(future, self.queue).expect("the shard's queue exists").detach();
    }

    /// Gathers `source`'s metrics with the core's at every scrape.
    pub fn add_metrics_source(&self, source: Rc<dyn MetricsSource>) {
        self.metric_sources.borrow_mut().push(source);
    }

    /// A copy of this shard's metrics, core and services.
    pub fn snapshot(&self) -> Snapshot {
        let mut core = self.metrics.borrow().clone();
        core.mesh_calls = self.mesh.calls();
        let (view_seq, view_writes, view_write_failures, view_lsm_bytes) =
            self.view.stats().unwrap_or_default();
        core.log_shards = vec![LogShardGauges {
            shard: self.id,
            applied_seq: self.log.applied.seq(),
            view_seq,
            view_writes,
            view_write_failures,
            view_lsm_bytes,
        }];
        let mut services = Vec::new();
        for source in self.metric_sources.borrow().iter() {
            source.snapshot(&mut services);
        }
        Snapshot { core, services }
    }
}
