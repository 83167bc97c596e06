//! A shard: one pinned glommio executor that builds its core, starts every
//! service on it, and serves until the node drains.

use crate::config::Config;
use crate::core::mesh::{self, Mesh, MeshBuilderFull};
use crate::core::{Core, CoreParts, NodeShared, REQUEST_QUEUE_LATENCY};
use crate::http::RouteTable;
use crate::http::client::{Client, ClientLimits};
use crate::http::front::Front;
use crate::http::socket_ring::SocketRing;
use crate::log::committer::{self, CommitterStart, LogRequest, ToShard};
use crate::log::view::{self, ShardView, ViewSchedule, ViewSource};
use crate::log::{Applied, LogLink, LogShared};
use crate::node::recover::ShardViewStart;
use crate::service::{Registry, ShardServices};
use crate::workers::{Inbox, Returns, Workers};
use glommio::channels::shared_channel::{SharedReceiver, SharedSender};
use glommio::{Latency, Shares};
use ron_proto::merkle::Hash;
use std::any::Any;
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// What a shard executor needs to start.
pub struct ShardStart {
    pub id: usize,
    pub count: usize,
    pub config: Arc<Config>,
    pub node: Arc<NodeShared>,
    pub log: Arc<LogShared>,
    pub registry: Arc<Registry>,
    /// Every service's node-wide state, in registry order.
    pub shared: Vec<Arc<dyn Any + Send + Sync>>,
    /// This shard's state of every service, in registry order.
    pub states: Vec<Box<dyn Any + Send>>,
    pub listeners: Vec<OwnedFd>,
    pub mesh: MeshBuilderFull,
    pub log_calls: SharedSender<LogRequest>,
    pub log_answers: SharedReceiver<ToShard>,
    /// Calls this shard may have in flight to the committer.
    pub log_inflight_max: usize,
    /// The committer, when it shares this shard's core: it then runs in a
    /// task queue of this executor rather than on a thread of its own, so
    /// the two interleave at task granularity instead of OS time slices.
    pub committer: Option<CommitterStart>,
    /// The log prefix the states reflect: its last seq and root.
    pub applied: (u64, Hash),
    /// This shard's view (none in amnesia mode).
    pub view: Option<ShardViewStart>,
    pub workers: Workers,
}

/// Every `interval`, measures how late a 1 ms glommio timer fires on this
/// shard: the canary for a task that holds the executor too long.
async fn timer_probe(core: Rc<Core>, interval: Duration) {
    const PROBE: Duration = Duration::from_millis(1);
    loop {
        glommio::timer::sleep(interval.saturating_sub(PROBE)).await;
        let start = std::time::Instant::now();
        glommio::timer::sleep(PROBE).await;
        let late = start.elapsed().saturating_sub(PROBE);
        core.metrics.borrow_mut().timer_lateness.record(late);
    }
}

/// The body of a shard executor: join the mesh, open the socket ring,
/// start the services, serve until the node drains.
pub async fn run(start: ShardStart) {
    let starting = crate::wake::wake_every(crate::wake::START_WAKE);
    let executor = glommio::executor();
    let queue = executor.create_task_queue(
        Shares::Static(1000),
        Latency::Matters(REQUEST_QUEUE_LATENCY),
        "requests",
    );
    let committer = start.committer.map(|committer| {
        let queue = executor.create_task_queue(
            Shares::Static(1000),
            Latency::Matters(REQUEST_QUEUE_LATENCY),
            "committer",
        );
        glommio::spawn_local_into(committer::run(committer), queue).expect("the queue exists")
    });
    let (senders, receivers) = start.mesh.join().await.expect("joining the shard mesh");
    assert_eq!(senders.peer_id(), start.id, "mesh order follows shard order");
    let log_calls = start.log_calls.connect().await;
    let log_answers = start.log_answers.connect().await;
    let config = start.config.clone();
    let executor_config = &config.executor;
    let ring = SocketRing::new(
        executor_config.socket_ring_entries,
        executor_config.recv_buffers as u16,
        executor_config.recv_buffer_bytes,
    )
    .expect("creating the shard's socket ring");
    start.node.shards[start.id].set_wake(ring.eventfd());
    let client = Rc::new(Client::new(ClientLimits::from_config(&config)));
    let timeout = Duration::from_millis(config.limits.request_timeout_ms);
    let inflight_max = config.limits.mesh_inflight_per_target_max;
    let mesh = Rc::new(Mesh::new(senders, start.count, inflight_max, timeout));
    let applied = Applied::new(start.applied.0, start.applied.1);
    let log = LogLink::new(start.log.clone(), applied, log_calls, start.log_inflight_max);
    let view = start.view.map(|v| (v.store, v.seq));
    let core = build_core(
        &start.node,
        &config,
        view,
        &start.workers,
        queue,
        ring.eventfd(),
        mesh.clone(),
        Rc::new(log),
    );
    core.add_metrics_source(client.clone());
    let mut routes = RouteTable::default();
    let (_, bases) = start.registry.view_layout();
    let (shared, states) = (start.shared, start.states);
    let services =
        ShardServices::start(&start.registry, &core, &client, shared, states, bases, &mut routes);
    core.set_routes(routes.labels());
    let serving = services.clone();
    let serve: mesh::Serve = Rc::new(move |service, call| serving.serve(service, call));
    mesh::spawn_receivers(mesh, receivers, serve, queue);
    let answers = {
        let (log, services) = (core.log.clone(), services.clone());
        glommio::spawn_local_into(
            async move { crate::log::receive(&log, log_answers, |batch| services.apply(batch)).await },
            queue,
        )
        .expect("the queue exists")
    };
    let source: Rc<dyn ViewSource> = services.clone();
    core.spawn(view::keep(core.view.clone(), core.log.clone(), source));
    let front = Front::new(core.clone(), Rc::new(routes), ring, client, start.listeners)
        .expect("arming the listeners");
    let probe_interval = Duration::from_millis(config.executor.timer_probe_interval_ms);
    if !probe_interval.is_zero() {
        core.spawn(timer_probe(core.clone(), probe_interval));
    }
    drop(starting);
    tracing::info!(shard = start.id, services = ?start.registry.names(), "serving");
    serve_until_drained(&core, front, &services, committer, answers).await;
}

/// Serves until the node drains, then stops in order: the link to the
/// committer, the committer (when hosted here), the committed stream, the
/// view's last write, the services.
async fn serve_until_drained(
    core: &Rc<Core>,
    front: Front,
    services: &Rc<ShardServices>,
    committer: Option<glommio::Task<()>>,
    answers: glommio::Task<()>,
) {
    let status = &core.node.shards[core.id];
    status.serving.store(true, Ordering::Release);
    glommio::spawn_local_into(front.run(), core.queue).expect("the queue exists").await;
    core.log.close();
    if let Some(committer) = committer {
        // It stops once every shard has closed its link.
        committer.await;
    }
    // Batches of other shards' requests keep coming until the committer
    // stops; then the view gets its last write.
    answers.await;
    view::finish(&core.view, &core.log, &**services).await;
    services.stop();
    status.serving.store(false, Ordering::Release);
    tracing::info!(shard = core.id, "drained");
}

/// The shard's core: its view (written by the workers), its inbox for
/// the workers' results (rung on the ring's `eventfd`), the mesh and the
/// log link.
#[allow(clippy::too_many_arguments)]
fn build_core(
    node: &Arc<NodeShared>,
    config: &Arc<Config>,
    view: Option<(Arc<crate::log::view::ViewStore>, u64)>,
    workers: &Workers,
    queue: glommio::TaskQueueHandle,
    eventfd: std::os::fd::RawFd,
    mesh: Rc<Mesh>,
    log: Rc<LogLink>,
) -> Rc<Core> {
    let (id, count) = (mesh.me(), node.shards.len());
    let inbox = Arc::new(Inbox::default());
    inbox.set_doorbell(eventfd);
    let schedule = ViewSchedule {
        shard: id,
        shard_count: count,
        items_max: config.ledger.checkpoint_every,
        interval: Duration::from_millis(config.ledger.view_write_ms),
    };
    let (store, seq) = view.map_or((None, 0), |(store, seq)| (Some(store), seq));
    let view_workers = store.is_some().then(|| workers.clone());
    let view = Rc::new(ShardView::new(store, view_workers, seq, schedule));
    Rc::new(Core::new(CoreParts {
        id,
        count,
        config: config.clone(),
        node: node.clone(),
        mesh,
        log,
        view,
        workers: workers.clone(),
        returns: Returns::new(inbox),
        queue,
    }))
}
