//! A shard: one pinned glommio executor that owns its connections, its keys'
//! state and its metrics. Nothing here is shared with another core except
//! through messages (the mesh) and a few read-mostly atomics in `NodeShared`.

use crate::committer::{self, CommitterStart, LedgerRequest, ToShard};
use crate::config::Config;
use crate::front::{Front, Mailbox};
use crate::keys::Keyring;
use crate::ledger::{self, Applied, LedgerLink};
use crate::mesh::{self, Mesh, MeshBuilderFull};
use crate::metrics::ShardMetrics;
use crate::node::NodeShared;
use crate::pq::PqSigner;
use crate::reply::CorrId;
use crate::socket_ring::SocketRing;
use crate::verifier::{PassportState, VerifyCache};
use crate::view::{self, ShardView, ViewWriter};
use glommio::channels::shared_channel::{SharedReceiver, SharedSender};
use glommio::{Latency, Shares, TaskQueueHandle};
use ron_shards::balances::Balances;
use ron_shards::passport::{Meters, Revocations};
use ron_shards::wallet::Wallet;
use std::cell::{Cell, RefCell};
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

/// Request handling and cross-shard messages run here: glommio polls I/O and
/// switches queues at least this often while the queue is busy.
pub const REQUEST_QUEUE_LATENCY: Duration = Duration::from_millis(1);

pub struct Shard {
    pub id: usize,
    pub count: usize,
    pub config: Arc<Config>,
    pub node: Arc<NodeShared>,
    /// The passport's keys; replaced whole by a rotation.
    pub keys: RefCell<Arc<Keyring>>,
    pub metrics: RefCell<ShardMetrics>,
    pub mesh: Mesh,
    pub ledger: LedgerLink,
    pub balances: RefCell<Balances>,
    /// The wallet state this shard owns.
    pub wallet: RefCell<Wallet>,
    /// Revocations and the verify cache.
    pub passport: RefCell<PassportState>,
    /// ML-DSA batch signatures of issued tokens.
    pub pq: PqSigner,
    /// Counts of the token ids and tenants this shard owns (`metering`).
    pub meters: RefCell<Meters>,
    /// Ids of the tokens this shard mints.
    pub token_ids: crate::passport::TokenIds,
    /// How far `balances` reflect the log.
    pub applied: Applied,
    pub view: ShardView,
    /// The `Latency::Matters` queue of requests and mesh messages.
    pub queue: TaskQueueHandle,
    /// Body bytes of synchronous answers, reused from request to request.
    pub scratch: RefCell<Vec<u8>>,
    /// Decoded tokens, reused from request to request.
    pub token_scratch: RefCell<Vec<u8>>,
    /// Requests answered later (by a task) that have not finished.
    pub inflight: Cell<u32>,
    pub mailbox: Mailbox,
    pub date: RefCell<HttpDate>,
    corr_counter: Cell<u64>,
}

impl Shard {
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

    /// A copy of this shard's metrics with its ledger gauges filled in.
    pub fn metrics_snapshot(&self) -> ShardMetrics {
        let mut metrics = self.metrics.borrow().clone();
        let (view_seq, view_writes, view_write_failures) = self.view.stats().unwrap_or_default();
        metrics.ledger_shards = vec![crate::metrics::LedgerShardGauges {
            shard: self.id,
            applied_seq: self.applied.seq(),
            view_seq,
            view_writes,
            view_write_failures,
        }];
        (metrics.passport.pq_batch_sign, metrics.passport.pq_batch_tokens) = self.pq.stats();
        let passport = self.passport.borrow();
        (metrics.passport.cache_hits, metrics.passport.cache_misses) = passport.cache.counts();
        metrics.passport.cache_entries = passport.cache.len() as u64;
        metrics
    }

    pub fn next_corr_id(&self) -> CorrId {
        let counter = self.corr_counter.get();
        self.corr_counter.set(counter + 1);
        CorrId::generate(self.id, counter)
    }

    /// Seconds since the epoch, for token validity.
    pub fn unix_now_s() -> u64 {
        SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
    }

    /// Milliseconds since the epoch, for log items and counts.
    pub fn unix_now_ms() -> u64 {
        SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
    }
}

/// The `Date` header, formatted once per second.
pub struct HttpDate {
    text: [u8; 29],
    second: u64,
}

impl HttpDate {
    fn new() -> HttpDate {
        let mut date = HttpDate { text: [b' '; 29], second: u64::MAX };
        date.refresh();
        date
    }

    pub fn refresh(&mut self) {
        let now = SystemTime::now();
        let second = now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if second != self.second {
            let text = httpdate::fmt_http_date(now);
            if text.len() == self.text.len() {
                self.text.copy_from_slice(text.as_bytes());
            }
            self.second = second;
        }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.text
    }
}

/// Every `interval`, measures how late a 1 ms glommio timer fires on this
/// shard: the canary for a task that holds the executor too long.
async fn timer_probe(shard: Rc<Shard>, interval: Duration) {
    const PROBE: Duration = Duration::from_millis(1);
    loop {
        glommio::timer::sleep(interval.saturating_sub(PROBE)).await;
        let start = std::time::Instant::now();
        glommio::timer::sleep(PROBE).await;
        let late = start.elapsed().saturating_sub(PROBE);
        shard.metrics.borrow_mut().timer_lateness.record(late);
    }
}

/// What a shard executor needs to start.
pub struct ShardStart {
    pub id: usize,
    pub count: usize,
    pub config: Arc<Config>,
    pub node: Arc<NodeShared>,
    pub keys: Arc<Keyring>,
    pub listeners: Vec<OwnedFd>,
    pub mesh: MeshBuilderFull,
    pub ledger_calls: SharedSender<LedgerRequest>,
    pub ledger_answers: SharedReceiver<ToShard>,
    /// Calls this shard may have in flight to the committer.
    pub ledger_inflight_max: usize,
    /// The committer, when it shares this shard's core: it then runs in a
    /// task queue of this executor rather than on a thread of its own, so
    /// the two interleave at task granularity instead of OS time slices.
    pub committer: Option<CommitterStart>,
    /// The balances of the accounts this shard owns, from its view and the
    /// log after it.
    pub balances: Balances,
    /// The wallet state this shard owns, replayed from the log.
    pub wallet: Wallet,
    /// Every revocation in the log.
    pub revocations: Revocations,
    /// The log prefix `balances` reflect: its last seq and root.
    pub applied: (u64, ron_proto::merkle::Hash),
    /// The writer of this shard's LMDB view (none in amnesia mode).
    pub view: Option<ViewWriter>,
}

/// The body of a shard executor: join the mesh, open the socket ring, serve
/// until the node drains.
pub async fn run(start: ShardStart) {
    let executor = glommio::executor();
    let queue = executor.create_task_queue(
        Shares::Static(1000),
        Latency::Matters(REQUEST_QUEUE_LATENCY),
        "requests",
    );
    let ShardStart {
        id,
        count,
        config,
        node,
        keys,
        listeners,
        mesh,
        ledger_calls,
        ledger_answers,
        ledger_inflight_max,
        committer,
        balances,
        wallet,
        revocations,
        applied,
        view,
    } = start;
    let committer = committer.map(|start| {
        let queue = executor.create_task_queue(
            Shares::Static(1000),
            Latency::Matters(REQUEST_QUEUE_LATENCY),
            "committer",
        );
        glommio::spawn_local_into(committer::run(start), queue).expect("the queue exists")
    });
    let (senders, receivers) = mesh.join().await.expect("joining the shard mesh");
    let ledger_link = LedgerLink::new(ledger_calls.connect().await, ledger_inflight_max);
    let ledger_answers = ledger_answers.connect().await;
    assert_eq!(senders.peer_id(), id, "mesh order follows shard order");
    let executor_config = &config.executor;
    let ring = SocketRing::new(
        executor_config.socket_ring_entries,
        executor_config.recv_buffers as u16,
        executor_config.recv_buffer_bytes,
    )
    .expect("creating the shard's socket ring");
    node.shards[id].set_wake(ring.eventfd());
    let mesh = Mesh::new(
        senders,
        count,
        config.limits.mesh_inflight_per_target_max,
        Duration::from_millis(config.limits.request_timeout_ms),
    );
    let verify_cache = VerifyCache::new(
        config.passport.verify_cache_entries_max as usize,
        Duration::from_millis(config.passport.verify_cache_ttl_ms),
    );
    let pq = PqSigner::new(id, config.passport.pq_mode != crate::config::PqMode::Off)
        .expect("starting the shard's ML-DSA signer");
    let shard = Rc::new(Shard {
        id,
        count,
        config,
        node,
        keys: RefCell::new(keys),
        metrics: RefCell::new(ShardMetrics::default()),
        mesh,
        ledger: ledger_link,
        balances: RefCell::new(balances),
        wallet: RefCell::new(wallet),
        passport: RefCell::new(PassportState::new(revocations, verify_cache)),
        pq,
        meters: RefCell::new(Meters::default()),
        token_ids: crate::passport::TokenIds::new().expect("randomness for token ids"),
        applied: Applied::new(applied.0, applied.1),
        view: ShardView::new(view),
        queue,
        scratch: RefCell::new(Vec::with_capacity(4096)),
        token_scratch: RefCell::new(Vec::with_capacity(ron_proto::token::TOKEN_BINARY_BYTES_MAX)),
        inflight: Cell::new(0),
        mailbox: Mailbox::default(),
        date: RefCell::new(HttpDate::new()),
        corr_counter: Cell::new(0),
    });
    mesh::spawn_receivers(&shard, receivers);
    let answers =
        glommio::spawn_local_into(ledger::receive_answers(shard.clone(), ledger_answers), queue)
            .expect("the queue exists");
    glommio::spawn_local_into(view::keep(shard.clone()), queue).expect("the queue exists").detach();
    glommio::spawn_local_into(crate::wallet::expire_holds(shard.clone()), queue)
        .expect("the queue exists")
        .detach();
    let front = Front::new(shard.clone(), ring, listeners).expect("arming the listeners");
    let probe_interval = Duration::from_millis(shard.config.executor.timer_probe_interval_ms);
    if !probe_interval.is_zero() {
        glommio::spawn_local_into(timer_probe(shard.clone(), probe_interval), queue)
            .expect("the queue exists")
            .detach();
    }
    shard.node.shards[id].serving.store(true, Ordering::Release);
    tracing::info!(shard = id, "serving");
    glommio::spawn_local_into(front.run(), queue).expect("the queue exists").await;
    shard.ledger.close();
    if let Some(committer) = committer {
        // It stops once every shard has closed its link.
        committer.await;
    }
    // Batches of other shards' requests keep coming until the committer
    // stops; then the view gets its last write.
    answers.await;
    view::finish(&shard).await;
    shard.node.shards[id].serving.store(false, Ordering::Release);
    tracing::info!(shard = id, "drained");
}
