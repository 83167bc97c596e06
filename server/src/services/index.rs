//! The index (SPEC §7): `name:` and `b3:` keys → manifests → the nodes that
//! provide them, on the paths and fields of the original svc-index and
//! svc-dht.
//!
//! * **Pointers** (site and asset) and **provider records** are log items
//!   (`ron_proto::index`). Each lives on the shard its key routes to
//!   (`Route::owner`), in RAM and in that shard's view (`view`); every
//!   shard receives every index item, so that its answer cache learns
//!   what is stale (`ron_shards::index::Generations`).
//! * **Answers** (`/resolve`, `/providers`) are made on the shard that got
//!   the request, from calls to the owners of the key and of its manifest,
//!   and kept in that shard's cache (`cache`).
//! * **Objects** (manifest bytes) are kept by content id in one store per
//!   node (`objects`), read and written on the workers.
//! * Expired provider records are left out of every answer and dropped by
//!   a tick.

pub mod cache;
pub mod dht;
pub mod fetch;
pub mod objects;
pub mod routes;
pub mod view;

use crate::config::Config;
use crate::core::Core;
use crate::http::RouteTable;
use crate::limits::{INDEX_PURGE_PER_TICK, INDEX_PURGE_TICK};
use crate::log::Item;
use crate::log::view::{ServiceView, ViewChanges};
use crate::http::client::Client;
use crate::metrics::{
    CountHistogram, LatencyHistogram, MetricsPart, count_histogram_lines, header, histogram_lines,
    simple_lines,
};
use crate::service::{Replaying, Service, ShardAt, Starting};
use cache::AnswerCache;
use objects::ObjectStore;
use ron_proto::index::{
    ASSET_CODE, AssetPointer, Cid, IndexItem, PROVIDER_CODE, SITE_CODE, SitePointer,
};
use ron_shards::index::{self as state, Generations, Provider};
use std::any::Any;
use std::cell::RefCell;
use std::fmt::Write as _;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

/// What every shard shares: the object store and the DHT client.
pub struct IndexShared {
    pub objects: ObjectStore,
    pub dht: dht::Dht,
}

/// The index on one shard.
pub struct Index {
    core: Rc<Core>,
    shared: Arc<IndexShared>,
    state: RefCell<state::Index>,
    generations: RefCell<Generations>,
    cache: RefCell<AnswerCache>,
    metrics: RefCell<IndexMetrics>,
    /// Outbound connections, to other nodes.
    client: Rc<Client>,
}

#[derive(Debug)]
pub enum Call {
    Site { name: String },
    Asset { cid: Cid },
    /// The live providers of a cid, best first.
    Providers { cid: Cid },
}

#[derive(Debug)]
pub enum Answer {
    Site(Option<SitePointer>),
    Asset(Option<AssetPointer>),
    Providers(Vec<Provider>),
}

impl Service for Index {
    const NAME: &'static str = "index";
    const LOG_CODES: &'static [u8] = &[SITE_CODE, ASSET_CODE, PROVIDER_CODE];
    const TABLES: &'static [&'static str] = view::TABLES;
    const TICK: Option<Duration> = Some(INDEX_PURGE_TICK);
    type Shared = IndexShared;
    type State = state::Index;
    type Call = Call;
    type Answer = Answer;

    fn prepare(config: &Config) -> anyhow::Result<IndexShared> {
        let bytes_max = config.index.objects_bytes_max;
        let objects = if config.amnesia() {
            ObjectStore::memory(bytes_max)
        } else {
            ObjectStore::open(&config.data_dir.join("index-objects"), bytes_max)?
        };
        let dht = dht::Dht::start(config, config.advertise_url())?;
        Ok(IndexShared { objects, dht })
    }

    fn not_ready(shared: &IndexShared) -> Option<String> {
        shared.dht.not_ready()
    }

    fn state(_: &IndexShared, at: ShardAt<'_>) -> state::Index {
        state::Index::new(at.config.index.providers_per_cid_max as usize)
    }

    fn load(index: &mut state::Index, view: &ServiceView, _: u64) -> anyhow::Result<()> {
        view::load(index, view)
    }

    fn check(item: &[u8]) -> Result<(), String> {
        IndexItem::decode(item).map(drop).map_err(|e| e.to_string())
    }

    fn replay(states: &mut Replaying<'_, state::Index>, item: Item<'_>) {
        let item = IndexItem::decode(item.bytes).expect("checked");
        let owner = item.route().owner(states.shard_count());
        if let Some(index) = states.get(owner) {
            index.apply(item, crate::clock::unix_now_ms());
        }
    }

    fn start(start: Starting<'_, Index>) -> Rc<Index> {
        let config = &start.core.config.index;
        let cache = AnswerCache::new(
            config.cache_entries_max as usize,
            config.cache_bytes_max as usize,
            Duration::from_millis(config.cache_ttl_ms),
            Duration::from_millis(config.negative_ttl_ms),
        );
        let index = Rc::new(Index {
            core: start.core.clone(),
            shared: start.shared,
            state: RefCell::new(start.state),
            generations: RefCell::new(Generations::default()),
            cache: RefCell::new(cache),
            metrics: RefCell::new(IndexMetrics::default()),
            client: start.client.clone(),
        });
        // Announce again what this shard's records still provide.
        let live = index.state.borrow().live_cids(crate::clock::unix_now_ms());
        for (cid, until_ms) in live {
            index.announce(cid, until_ms);
        }
        index
    }

    fn core(&self) -> &Rc<Core> {
        &self.core
    }

    fn routes(self: &Rc<Self>, table: &mut RouteTable) {
        routes::add(self, table);
    }

    async fn serve(self: Rc<Self>, call: Call) -> Answer {
        self.core.log.caught_up().await;
        let state = self.state.borrow();
        match call {
            Call::Site { name } => Answer::Site(state.site(&name).cloned()),
            Call::Asset { cid } => Answer::Asset(state.asset(&cid).cloned()),
            Call::Providers { cid } => {
                Answer::Providers(state.providers(&cid, crate::clock::unix_now_ms()))
            }
        }
    }

    /// Every shard gets every index item: answers it cached from the key
    /// are stale; the owner applies it.
    fn apply(&self, item: Item<'_>) {
        let item = IndexItem::decode(item.bytes).expect("committed items decode");
        let route = item.route();
        self.generations.borrow_mut().bump(route);
        if route.owner(self.core.count) == self.core.id {
            if let IndexItem::Provider(record) = &item {
                self.announce(record.cid, record.expires_ms);
            }
            self.state.borrow_mut().apply(item, crate::clock::unix_now_ms());
        }
    }

    fn save(&self, changes: &mut ViewChanges, _: u64) {
        let mut state = self.state.borrow_mut();
        let changed = state.take_changes();
        view::save(changes, &state, changed);
    }

    fn metrics(&self) -> Option<Box<dyn MetricsPart>> {
        let mut metrics = self.metrics.borrow().clone();
        let cache = self.cache.borrow();
        (metrics.cache_hits, metrics.cache_misses) = (cache.hits, cache.misses);
        metrics.cache_entries = cache.len() as u64;
        let state = self.state.borrow();
        metrics.provider_set_changes = state.provider_set_changes();
        metrics.kept = state.counts();
        Some(Box::new(metrics))
    }

    /// Drops dead provider records (answers already leave them out).
    async fn tick(self: Rc<Self>) {
        let now_ms = crate::clock::unix_now_ms();
        self.state.borrow_mut().purge(now_ms, INDEX_PURGE_PER_TICK);
    }

    fn stop(&self) {
        if self.core.config.amnesia() {
            // Nothing of what the node was told outlives it.
            self.cache.borrow_mut().clear();
            self.state.borrow_mut().zeroize();
            self.shared.objects.zeroize();
        }
    }
}

impl Index {
    /// What every shard shares (the rewarder reads snapshots from the
    /// objects).
    pub fn shared(&self) -> &Arc<IndexShared> {
        &self.shared
    }

    /// The shard that owns `route`.
    pub fn owner(&self, route: ron_proto::index::Route<'_>) -> usize {
        route.owner(self.core.count)
    }

    /// Tells the DHT this node provides `cid` until `until_ms` (a full
    /// queue drops it, counted: the next record of the cid, or a restart,
    /// announces it again).
    fn announce(&self, cid: Cid, until_ms: u64) {
        let _ = self.shared.dht.send(dht::Command::Provide { cid, until_ms });
    }
}

/// What the index counts on a shard.
#[derive(Clone, Debug, Default)]
pub struct IndexMetrics {
    /// `/resolve` of `name:` and of `b3:` keys, from the parsed request to
    /// the answer (cache hits included).
    pub resolve_name: LatencyHistogram,
    pub resolve_cid: LatencyHistogram,
    /// Filled in at scrape.
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub cache_entries: u64,
    pub provider_set_changes: u64,
    /// Sites, assets and cids with providers this shard owns.
    pub kept: (usize, usize, usize),
    /// Objects whose bytes did not match their cid, read from disk and
    /// fetched from a peer.
    pub integrity_fail_disk: u64,
    pub integrity_fail_peer: u64,
    /// DHT lookups: their time, rounds, and those that timed out.
    pub dht_lookup: LatencyHistogram,
    pub dht_hops: CountHistogram,
    pub dht_lookups_failed: u64,
    /// Outcomes of hedged fetches (see `fetch`).
    pub hedge_win: u64,
    pub hedge_lose: u64,
    pub hedge_tie: u64,
}

impl MetricsPart for IndexMetrics {
    fn merge(&mut self, other: &dyn MetricsPart) {
        let other: &IndexMetrics = other.as_any().downcast_ref().expect("the index's metrics");
        self.resolve_name.add(&other.resolve_name);
        self.resolve_cid.add(&other.resolve_cid);
        self.cache_hits += other.cache_hits;
        self.cache_misses += other.cache_misses;
        self.cache_entries += other.cache_entries;
        self.provider_set_changes += other.provider_set_changes;
        self.kept.0 += other.kept.0;
        self.kept.1 += other.kept.1;
        self.kept.2 += other.kept.2;
        self.integrity_fail_disk += other.integrity_fail_disk;
        self.integrity_fail_peer += other.integrity_fail_peer;
        self.dht_lookup.add(&other.dht_lookup);
        self.dht_hops.add(&other.dht_hops);
        self.dht_lookups_failed += other.dht_lookups_failed;
        self.hedge_win += other.hedge_win;
        self.hedge_lose += other.hedge_lose;
        self.hedge_tie += other.hedge_tie;
    }

    fn render(&self, out: &mut String) {
        let name = "index_resolve_latency_seconds";
        header(out, name, "histogram", "Resolving a key, by type (name, cid), cache hits included.");
        histogram_lines(out, name, Some(("type", "name")), &self.resolve_name);
        histogram_lines(out, name, Some(("type", "cid")), &self.resolve_cid);
        let name = "index_integrity_fail_total";
        header(out, name, "counter", "Objects whose bytes did not hash to their cid, by where read.");
        let _ = writeln!(out, "{name}{{stage=\"disk\"}} {}", self.integrity_fail_disk);
        let _ = writeln!(out, "{name}{{stage=\"peer\"}} {}", self.integrity_fail_peer);
        dht_lines(self, out);
        let lookups = self.cache_hits + self.cache_misses;
        let ratio = if lookups == 0 { 0.0 } else { self.cache_hits as f64 / lookups as f64 };
        simple_lines(
            out,
            &[
                ("index_cache_hits_total", "counter", "Answers served from a shard's cache.", self.cache_hits as f64),
                ("index_cache_misses_total", "counter", "Answers made afresh (cache miss or ?fresh=true).", self.cache_misses as f64),
                ("index_cache_hit_ratio", "gauge", "Hits over lookups since start.", ratio),
                ("index_cache_entries", "gauge", "Answers in the shards' caches.", self.cache_entries as f64),
                ("index_provider_set_changes_total", "counter", "Times a cid's set of provider nodes changed.", self.provider_set_changes as f64),
                ("index_sites", "gauge", "Site pointers kept.", self.kept.0 as f64),
                ("index_assets", "gauge", "Asset pointers kept.", self.kept.1 as f64),
                ("index_provided_cids", "gauge", "Cids with provider records kept.", self.kept.2 as f64),
            ],
        );
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// The DHT's lines: lookup time in milliseconds (as the seed names it),
/// rounds, and hedge outcomes.
fn dht_lines(metrics: &IndexMetrics, out: &mut String) {
    let name = "index_dht_lookup_ms";
    header(out, name, "histogram", "DHT provider lookups, in milliseconds.");
    for le in [1u64, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000] {
        let count = metrics.dht_lookup.count_at_most_ns(le * 1_000_000);
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {count}");
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", metrics.dht_lookup.count());
    let _ = writeln!(out, "{name}_sum {}", metrics.dht_lookup.sum_ns() as f64 / 1e6);
    let _ = writeln!(out, "{name}_count {}", metrics.dht_lookup.count());
    header(out, "index_dht_lookup_hops", "histogram", "Rounds of requests per DHT lookup.");
    count_histogram_lines(out, "index_dht_lookup_hops", &metrics.dht_hops);
    let name = "dht_hedged_requests_total";
    header(out, name, "counter", "Hedged manifest fetches by outcome of the hedge (win, lose, tie).");
    let _ = writeln!(out, "{name}{{result=\"win\"}} {}", metrics.hedge_win);
    let _ = writeln!(out, "{name}{{result=\"lose\"}} {}", metrics.hedge_lose);
    let _ = writeln!(out, "{name}{{result=\"tie\"}} {}", metrics.hedge_tie);
    let name = "index_dht_lookups_failed_total";
    header(out, name, "counter", "DHT lookups that timed out.");
    let _ = writeln!(out, "{name} {}", metrics.dht_lookups_failed);
}
