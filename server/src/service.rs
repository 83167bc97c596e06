//! The service boundary: everything a service plugs into the node, declared
//! in one place ([`Service`]), and the registry that turns the node's list
//! of services (`crate::services`) into the route table, the mesh's
//! call handling, the log's apply and replay, the views and `/metrics`.
//!
//! Why a trait: a service's calls are typed on both ends (`Call` and
//! `Answer`, checked by the compiler), and most hooks have a default, so a
//! small service writes only what it uses. The registry erases the types
//! once (`Entry` before the executors start, `Running` on a shard); nothing
//! else in the node names a service.
//!
//! A service lives in its own folder under `services/` and is added by one
//! line in `services.rs`. Services start in that order on every shard (a
//! service may use the ones before it, [`Started::get`]) and stop in
//! reverse.

use crate::config::Config;
use crate::core::mesh::{MeshError, Payload, Wait};
use crate::core::{Core, Probe};
use crate::http::RouteTable;
use crate::http::client::Client;
use crate::log::view::{ServiceView, ViewChanges, ViewLayout, ViewSource};
use crate::log::{Committed, IdKey, Item};
use crate::metrics::{MetricsPart, MetricsSource};
use std::any::{Any, TypeId};
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

/// Where a shard's state is made.
#[derive(Clone, Copy, Debug)]
pub struct ShardAt<'a> {
    pub shard: usize,
    pub shard_count: usize,
    pub config: &'a Config,
}

/// What a service needs to start on a shard.
pub struct Starting<'a, S: Service> {
    pub core: &'a Rc<Core>,
    pub shared: Arc<S::Shared>,
    pub state: S::State,
    /// The services registered before this one, started on this shard.
    pub started: &'a Started,
    /// The service's tables in this shard's view (none in amnesia mode).
    pub view: Option<ServiceView>,
    /// Outbound HTTP connections to peers, on the shard's ring.
    pub client: &'a Rc<Client>,
}

/// Everything a service plugs into the node.
pub trait Service: Sized + 'static {
    /// Its name: logs, view tables (`<name>.<table>`), `services.enable`.
    const NAME: &'static str;
    /// First bytes of the log items it writes; no two services share one.
    const LOG_CODES: &'static [u8] = &[];
    /// Its tables in each shard's view.
    const TABLES: &'static [&'static str] = &[];
    /// Those of `TABLES` whose keys are random and written once, read one
    /// key at a time (receipts by txid): kept in the view's LSM tree, not in
    /// LMDB, where a write's puts would rewrite pages all over the table
    /// (`crate::log::view`).
    const LSM_TABLES: &'static [&'static str] = &[];
    /// Changed when its tables' encoding changes: a view written with
    /// another version is rebuilt from the log.
    const VIEW_VERSION: u32 = 1;
    /// Off unless the config's `services.enable` names it.
    const ENABLED_BY_DEFAULT: bool = true;
    /// How often `tick` runs on every shard, if at all.
    const TICK: Option<Duration> = None;

    /// Node-wide state, made once on the main thread before the shards
    /// start (the passport's keys, say).
    type Shared: Send + Sync + 'static;
    /// One shard's part, made before its executor starts: loaded from the
    /// view, then the log after it replayed into it.
    type State: Send + 'static;
    /// Calls one shard makes to another (`Service::call`), and answers.
    type Call: Send + std::fmt::Debug + 'static;
    type Answer: Send + std::fmt::Debug + 'static;

    fn prepare(config: &Config) -> anyhow::Result<Self::Shared>;

    /// An empty state for shard `at`.
    fn state(shared: &Self::Shared, at: ShardAt<'_>) -> Self::State;

    /// Loads what the shard's view kept; the view reflects the log through
    /// `through_seq`, and the log after it is replayed next.
    fn load(
        _state: &mut Self::State,
        _view: &ServiceView,
        _through_seq: u64,
    ) -> anyhow::Result<()> {
        Ok(())
    }

    /// Why the service keeps the node from being ready, if it does (read
    /// by `/readyz` from any shard).
    fn not_ready(_shared: &Self::Shared) -> Option<String> {
        None
    }

    /// Whether an item of this service decodes: recovery treats a record
    /// holding one that does not as corruption.
    fn check(_item: &[u8]) -> Result<(), String> {
        Ok(())
    }

    /// The unique key an item was appended with (`Append::unique`), which
    /// the log must know again after a restart.
    fn unique_key(_item: &[u8]) -> Option<IdKey> {
        None
    }

    /// Applies a recovered item to the states of the shards with a part in
    /// it: those whose view is behind it — or, for a service without view
    /// tables (its state is in the log only), every shard, whatever its view.
    fn replay(_states: &mut Replaying<'_, Self::State>, _item: Item<'_>) {}

    /// Starts the service on one shard.
    fn start(start: Starting<'_, Self>) -> Rc<Self>;

    /// The shard it runs on.
    fn core(&self) -> &Rc<Core>;

    fn routes(self: &Rc<Self>, _routes: &mut RouteTable) {}

    /// Serves a call from another shard (or this one).
    fn serve(self: Rc<Self>, call: Self::Call) -> impl Future<Output = Self::Answer> + 'static;

    /// Applies a durable item of this service that this shard has a part
    /// in; items come in log order, before anyone hears of them.
    fn apply(&self, _item: Item<'_>) {}

    /// Applies a run of durable items of this service, in log order: each
    /// with `apply`, unless the service applies them better together.
    fn apply_all(&self, items: &[Item<'_>]) {
        for item in items {
            self.apply(*item);
        }
    }

    /// Puts what changed since the last save into the view write that
    /// reaches `through_seq`.
    fn save(&self, _changes: &mut ViewChanges, _through_seq: u64) {}

    /// The view write reaching `through_seq` is committed.
    fn saved(&self, _through_seq: u64) {}

    /// Its metrics on this shard, if it has any (the same answer on every
    /// shard).
    fn metrics(&self) -> Option<Box<dyn MetricsPart>> {
        None
    }

    /// Runs every `TICK` until the log stops.
    fn tick(self: Rc<Self>) -> impl Future<Output = ()> + 'static {
        async {}
    }

    /// The shard is stopping (services stop in reverse order).
    fn stop(&self) {}

    /// Runs `call` on shard `target`'s instance of this service: in place
    /// when that is this shard, else over the mesh, for up to the request
    /// timeout.
    fn call(
        self: &Rc<Self>,
        target: usize,
        call: Self::Call,
    ) -> impl Future<Output = Result<Self::Answer, MeshError>> + 'static {
        self.call_waiting(target, call, Wait::Timeout)
    }

    /// Like `call`, waiting as `wait` says.
    fn call_waiting(
        self: &Rc<Self>,
        target: usize,
        call: Self::Call,
        wait: Wait,
    ) -> impl Future<Output = Result<Self::Answer, MeshError>> + 'static {
        let me = self.clone();
        async move {
            let core = me.core().clone();
            if target == core.id {
                return Ok(Self::serve(me, call).await);
            }
            let answer = core.mesh.call(target, TypeId::of::<Self>(), Box::new(call), wait).await?;
            Ok(*answer.downcast::<Self::Answer>().expect("a service answers its own calls"))
        }
    }
}

/// The states of one service on every shard, during replay at start.
pub struct Replaying<'a, State> {
    states: &'a mut [Box<dyn Any + Send>],
    wants: &'a dyn Fn(usize) -> bool,
    _state: PhantomData<State>,
}

impl<State: 'static> Replaying<'_, State> {
    pub fn shard_count(&self) -> usize {
        self.states.len()
    }

    /// Shard `shard`'s state, if it replays this item (its view does not
    /// hold it yet).
    pub fn get(&mut self, shard: usize) -> Option<&mut State> {
        if !(self.wants)(shard) {
            return None;
        }
        Some(self.states[shard].downcast_mut::<State>().expect("a service's own state"))
    }
}

/// The services started so far on a shard.
#[derive(Default)]
pub struct Started {
    services: Vec<(TypeId, Rc<dyn Any>)>,
}

impl Started {
    /// The running `S`: a service may use those registered before it.
    pub fn get<S: Service>(&self) -> Rc<S> {
        let found = self.services.iter().find(|(id, _)| *id == TypeId::of::<S>());
        let (_, service) = found
            .unwrap_or_else(|| panic!("{} is used before it starts: register it earlier", S::NAME));
        service.clone().downcast::<S>().expect("registered by its type")
    }
}

/// A service before the executors start, its types erased.
trait Entry: Send + Sync {
    fn name(&self) -> &'static str;
    fn log_codes(&self) -> &'static [u8];
    fn enabled_by_default(&self) -> bool;
    fn add_tables(&self, layout: &mut ViewLayout) -> usize;
    fn prepare(&self, config: &Config) -> anyhow::Result<Arc<dyn Any + Send + Sync>>;
    fn state(&self, shared: &(dyn Any + Send + Sync), at: ShardAt<'_>) -> Box<dyn Any + Send>;
    fn load(
        &self,
        state: &mut Box<dyn Any + Send>,
        view: &ServiceView,
        through_seq: u64,
    ) -> anyhow::Result<()>;
    fn probe(&self, shared: Arc<dyn Any + Send + Sync>) -> Probe;
    fn check(&self, item: &[u8]) -> Result<(), String>;
    fn unique_key(&self, item: &[u8]) -> Option<IdKey>;
    fn replay(
        &self,
        states: &mut [Box<dyn Any + Send>],
        wants: &dyn Fn(usize) -> bool,
        item: Item<'_>,
    );
    fn start(&self, start: Erased<'_>) -> (Rc<dyn Running>, Rc<dyn Any>);
}

/// What `Entry::start` gets: `Starting` with its types erased.
struct Erased<'a> {
    core: &'a Rc<Core>,
    shared: Arc<dyn Any + Send + Sync>,
    state: Box<dyn Any + Send>,
    started: &'a Started,
    view: Option<ServiceView>,
    client: &'a Rc<Client>,
}

struct Of<S>(PhantomData<fn() -> S>);

impl<S: Service> Entry for Of<S> {
    fn name(&self) -> &'static str {
        S::NAME
    }

    fn log_codes(&self) -> &'static [u8] {
        S::LOG_CODES
    }

    fn enabled_by_default(&self) -> bool {
        S::ENABLED_BY_DEFAULT
    }

    fn add_tables(&self, layout: &mut ViewLayout) -> usize {
        layout.add(S::NAME, S::VIEW_VERSION, S::TABLES, S::LSM_TABLES)
    }

    fn prepare(&self, config: &Config) -> anyhow::Result<Arc<dyn Any + Send + Sync>> {
        Ok(Arc::new(S::prepare(config)?))
    }

    fn state(&self, shared: &(dyn Any + Send + Sync), at: ShardAt<'_>) -> Box<dyn Any + Send> {
        let shared = shared.downcast_ref::<S::Shared>().expect("a service's own shared state");
        Box::new(S::state(shared, at))
    }

    fn load(
        &self,
        state: &mut Box<dyn Any + Send>,
        view: &ServiceView,
        through_seq: u64,
    ) -> anyhow::Result<()> {
        let state = state.downcast_mut::<S::State>().expect("a service's own state");
        S::load(state, view, through_seq)
    }

    fn probe(&self, shared: Arc<dyn Any + Send + Sync>) -> Probe {
        let shared = shared.downcast::<S::Shared>().expect("a service's own shared state");
        Box::new(move || S::not_ready(&shared))
    }

    fn check(&self, item: &[u8]) -> Result<(), String> {
        S::check(item)
    }

    fn unique_key(&self, item: &[u8]) -> Option<IdKey> {
        S::unique_key(item)
    }

    fn replay(
        &self,
        states: &mut [Box<dyn Any + Send>],
        wants: &dyn Fn(usize) -> bool,
        item: Item<'_>,
    ) {
        S::replay(&mut Replaying { states, wants, _state: PhantomData }, item);
    }

    fn start(&self, start: Erased<'_>) -> (Rc<dyn Running>, Rc<dyn Any>) {
        let Erased { core, shared, state, started, view, client } = start;
        let shared = shared.downcast::<S::Shared>().expect("a service's own shared state");
        let state = *state.downcast::<S::State>().expect("a service's own state");
        let service = S::start(Starting { core, shared, state, started, view, client });
        (service.clone(), service)
    }
}

/// A service running on a shard, its types erased.
trait Running {
    fn service_type(&self) -> TypeId;
    fn serve(self: Rc<Self>, call: Payload) -> Pin<Box<dyn Future<Output = Payload>>>;
    fn routes(self: Rc<Self>, routes: &mut RouteTable);
    fn apply_all(&self, items: &[Item<'_>]);
    fn save(&self, changes: &mut ViewChanges, through_seq: u64);
    fn saved(&self, through_seq: u64);
    fn metrics(&self) -> Option<Box<dyn MetricsPart>>;
    fn tick_every(&self) -> Option<Duration>;
    fn tick(self: Rc<Self>) -> Pin<Box<dyn Future<Output = ()>>>;
    fn stop(&self);
}

impl<S: Service> Running for S {
    fn service_type(&self) -> TypeId {
        TypeId::of::<S>()
    }

    fn serve(self: Rc<Self>, call: Payload) -> Pin<Box<dyn Future<Output = Payload>>> {
        let call = *call.downcast::<S::Call>().expect("calls reach their own service");
        Box::pin(async move { Box::new(S::serve(self, call).await) as Payload })
    }

    fn routes(self: Rc<Self>, routes: &mut RouteTable) {
        Service::routes(&self, routes);
    }

    fn apply_all(&self, items: &[Item<'_>]) {
        Service::apply_all(self, items);
    }

    fn save(&self, changes: &mut ViewChanges, through_seq: u64) {
        Service::save(self, changes, through_seq);
    }

    fn saved(&self, through_seq: u64) {
        Service::saved(self, through_seq);
    }

    fn metrics(&self) -> Option<Box<dyn MetricsPart>> {
        Service::metrics(self)
    }

    fn tick_every(&self) -> Option<Duration> {
        S::TICK
    }

    fn tick(self: Rc<Self>) -> Pin<Box<dyn Future<Output = ()>>> {
        Box::pin(Service::tick(self))
    }

    fn stop(&self) {
        Service::stop(self);
    }
}

/// The node's services, in start order.
#[derive(Default)]
pub struct Registry {
    entries: Vec<Box<dyn Entry>>,
    /// Services this config turned off: their items in the log are still
    /// checked and their unique keys still known, but nothing applies them.
    off: Vec<Box<dyn Entry>>,
}

impl Registry {
    /// Adds `S` after the services added so far.
    pub fn add<S: Service>(&mut self) {
        assert!(
            !self.entries.iter().any(|e| e.name() == S::NAME),
            "two services are named {}",
            S::NAME
        );
        assert!(
            S::LOG_CODES.is_empty() || !S::TABLES.is_empty(),
            "{} writes log items but has no view tables: a start replays only the log after the views",
            S::NAME
        );
        for code in S::LOG_CODES {
            let taken = self.entries.iter().chain(&self.off).find(|e| e.log_codes().contains(code));
            if let Some(other) = taken {
                panic!("{} and {} both claim log item code {code:#04x}", other.name(), S::NAME);
            }
        }
        self.entries.push(Box::new(Of::<S>(PhantomData)));
    }

    /// The services this config runs: those on by default and those
    /// `services.enable` names. An unknown name is an error.
    pub fn enabled(self, config: &Config) -> anyhow::Result<Registry> {
        for name in &config.services.enable {
            anyhow::ensure!(
                self.entries.iter().any(|e| e.name() == name),
                "config: field `services.enable`: no service is named {name:?}"
            );
        }
        let on = |e: &dyn Entry| {
            e.enabled_by_default() || config.services.enable.iter().any(|n| n == e.name())
        };
        let (entries, off) = self.entries.into_iter().partition(|e| on(&**e));
        Ok(Registry { entries, off })
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.entries.iter().map(|e| e.name()).collect()
    }

    /// The tables of every service, and where each service's start.
    pub fn view_layout(&self) -> (ViewLayout, Vec<usize>) {
        let mut layout = ViewLayout::default();
        let bases = self.entries.iter().map(|e| e.add_tables(&mut layout)).collect();
        (layout, bases)
    }

    /// Every service's node-wide state.
    pub fn prepare(&self, config: &Config) -> anyhow::Result<Vec<Arc<dyn Any + Send + Sync>>> {
        self.entries
            .iter()
            .map(|e| {
                e.prepare(config).map_err(|error| error.context(format!("preparing {}", e.name())))
            })
            .collect()
    }

    /// What `/readyz` asks each service (`Service::not_ready`).
    pub fn probes(&self, shared: &[Arc<dyn Any + Send + Sync>]) -> Vec<Probe> {
        self.entries.iter().zip(shared).map(|(e, shared)| e.probe(shared.clone())).collect()
    }

    /// The index of the running service whose items start with `code`.
    fn by_code(&self, code: u8) -> Option<usize> {
        self.entries.iter().position(|e| e.log_codes().contains(&code))
    }

    /// The service, running or off, whose items start with `code`.
    fn any_by_code(&self, code: u8) -> Option<&dyn Entry> {
        let all = self.entries.iter().chain(&self.off);
        all.map(|e| &**e).find(|e| e.log_codes().contains(&code))
    }

    /// Whether `item` is one some service (running or off) writes, and
    /// decodes as such.
    pub fn check_item(&self, item: &[u8]) -> Result<(), String> {
        let code = *item.first().ok_or("an empty item")?;
        let entry = self
            .any_by_code(code)
            .ok_or_else(|| format!("no service writes items of code {code:#04x}"))?;
        entry.check(item)
    }

    /// The unique key `item` (checked) was appended with, if any.
    pub fn unique_key(&self, item: &[u8]) -> Option<IdKey> {
        self.any_by_code(item[0]).expect("checked").unique_key(item)
    }
}

/// A log reader that checks every item and applies none: the log's own
/// state (tree, roots, unique keys) is all it rebuilds (`ron-node
/// verify-log`).
pub struct Checker<'a>(pub &'a Registry);

impl crate::log::segments::LogReader for Checker<'_> {
    fn check(&mut self, item: &[u8]) -> Result<(), String> {
        self.0.check_item(item)
    }

    fn unique_key(&mut self, item: &[u8]) -> Option<IdKey> {
        self.0.unique_key(item)
    }

    fn visit(&mut self, _: u64, _: &ron_proto::merkle::Hash, _: &[u8]) {}
}

/// Every service's state of every shard, before the executors start.
pub struct States {
    /// By service, then by shard.
    states: Vec<Vec<Box<dyn Any + Send>>>,
}

impl States {
    /// Empty states of `shard_count` shards.
    pub fn new(
        registry: &Registry,
        shared: &[Arc<dyn Any + Send + Sync>],
        config: &Config,
        shard_count: usize,
    ) -> States {
        let states = registry
            .entries
            .iter()
            .zip(shared)
            .map(|(entry, shared)| {
                (0..shard_count)
                    .map(|shard| entry.state(&**shared, ShardAt { shard, shard_count, config }))
                    .collect()
            })
            .collect();
        States { states }
    }

    /// Puts shard `shard` of every service back to empty.
    pub fn reset(
        &mut self,
        registry: &Registry,
        shared: &[Arc<dyn Any + Send + Sync>],
        config: &Config,
        shard: usize,
    ) {
        let shard_count = self.states[0].len();
        for ((entry, shared), states) in registry.entries.iter().zip(shared).zip(&mut self.states) {
            states[shard] = entry.state(&**shared, ShardAt { shard, shard_count, config });
        }
    }

    /// Loads shard `shard`'s view, which reflects the log through
    /// `through_seq`, into every service's state.
    pub fn load(
        &mut self,
        registry: &Registry,
        bases: &[usize],
        shard: usize,
        store: &Arc<crate::log::view::ViewStore>,
        through_seq: u64,
    ) -> anyhow::Result<()> {
        for ((entry, base), states) in registry.entries.iter().zip(bases).zip(&mut self.states) {
            let view = ServiceView::new(store.clone(), *base);
            entry
                .load(&mut states[shard], &view, through_seq)
                .map_err(|error| error.context(format!("loading {}'s view", entry.name())))?;
        }
        Ok(())
    }

    /// Shard `shard`'s states, one per service, to move to its executor.
    pub fn take_shard(&mut self, shard: usize) -> Vec<Box<dyn Any + Send>> {
        self.states
            .iter_mut()
            .map(|states| std::mem::replace(&mut states[shard], Box::new(())))
            .collect()
    }
}

/// Hands recovered items to their services: implements the log's reader.
pub struct Replayer<'a> {
    pub registry: &'a Registry,
    pub states: &'a mut States,
    /// Whether shard `i` replays item `seq` (its view is behind it).
    pub wants: &'a dyn Fn(usize, u64) -> bool,
}

impl crate::log::segments::LogReader for Replayer<'_> {
    fn check(&mut self, item: &[u8]) -> Result<(), String> {
        self.registry.check_item(item)
    }

    fn unique_key(&mut self, item: &[u8]) -> Option<IdKey> {
        self.registry.unique_key(item)
    }

    fn visit(&mut self, seq: u64, root: &ron_proto::merkle::Hash, item: &[u8]) {
        // An item of a service that is off is known, and applied by nobody.
        let Some(index) = self.registry.by_code(item[0]) else { return };
        let entry = &self.registry.entries[index];
        let wants = |shard: usize| (self.wants)(shard, seq);
        let item = Item { seq, root, bytes: item, durable_at: None };
        entry.replay(&mut self.states.states[index], &wants, item);
    }
}

/// The services running on one shard, in start order.
pub struct ShardServices {
    running: Vec<Rc<dyn Running>>,
    /// The service of each item code (an index into `running`).
    by_code: [Option<u8>; 256],
    /// Each service's first view table.
    bases: Vec<usize>,
}

impl ShardServices {
    /// Starts every service on this shard, in order, and fills the route
    /// table.
    pub fn start(
        registry: &Registry,
        core: &Rc<Core>,
        client: &Rc<Client>,
        shared: Vec<Arc<dyn Any + Send + Sync>>,
        states: Vec<Box<dyn Any + Send>>,
        bases: Vec<usize>,
        routes: &mut RouteTable,
    ) -> Rc<ShardServices> {
        let mut started = Started::default();
        let mut running = Vec::with_capacity(registry.entries.len());
        let store = core.view.store().cloned();
        let parts = registry.entries.iter().zip(shared).zip(states).zip(&bases);
        for (((entry, shared), state), base) in parts {
            let view = store.as_ref().map(|store| ServiceView::new(store.clone(), *base));
            let erased = Erased { core, shared, state, started: &started, view, client };
            let (service, any) = entry.start(erased);
            started.services.push((service.service_type(), any));
            service.clone().routes(routes);
            running.push(service);
        }
        routes.check();
        let mut by_code = [None; 256];
        for (index, entry) in registry.entries.iter().enumerate() {
            for code in entry.log_codes() {
                by_code[usize::from(*code)] = Some(index as u8);
            }
        }
        let services = Rc::new(ShardServices { running, by_code, bases });
        core.add_metrics_source(services.clone());
        for service in &services.running {
            if let Some(every) = service.tick_every() {
                let (core, service) = (core.clone(), service.clone());
                core.clone().spawn(async move {
                    while !core.log.is_stopped() {
                        glommio::timer::sleep(every).await;
                        service.clone().tick().await;
                    }
                });
            }
        }
        services
    }

    /// Serves a call from another shard.
    pub fn serve(&self, service: TypeId, call: Payload) -> Pin<Box<dyn Future<Output = Payload>>> {
        let running = self.running.iter().find(|s| s.service_type() == service);
        running.expect("calls reach a service this shard runs").clone().serve(call)
    }

    /// Applies this shard's items of a durable batch, in log order.
    /// Each run of one service's items goes to it at once.
    pub fn apply(&self, committed: &Committed) {
        let items: Vec<Item<'_>> = committed.items().collect();
        for run in items.chunk_by(|a, b| a.bytes[0] == b.bytes[0]) {
            let code = run[0].bytes[0];
            let index = self.by_code[usize::from(code)]
                .unwrap_or_else(|| panic!("a committed item of unknown code {code:#04x}"));
            self.running[usize::from(index)].apply_all(run);
        }
    }

    /// The shard is stopping: services stop in reverse order.
    pub fn stop(&self) {
        for service in self.running.iter().rev() {
            service.stop();
        }
    }
}

impl ViewSource for ShardServices {
    fn save(&self, changes: &mut ViewChanges, through_seq: u64) {
        for (service, base) in self.running.iter().zip(&self.bases) {
            changes.set_base(*base);
            service.save(changes, through_seq);
        }
    }

    fn saved(&self, through_seq: u64) {
        for service in &self.running {
            service.saved(through_seq);
        }
    }
}

impl MetricsSource for ShardServices {
    fn snapshot(&self, out: &mut Vec<Box<dyn MetricsPart>>) {
        out.extend(self.running.iter().filter_map(|s| s.metrics()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A service that declares only what it must, with `CODE` as its log
    /// code.
    struct Tiny<const CODE: u8>;

    impl<const CODE: u8> Service for Tiny<CODE> {
        const NAME: &'static str = if CODE == 1 { "tiny-one" } else { "tiny-other" };
        const LOG_CODES: &'static [u8] = &[CODE];
        const TABLES: &'static [&'static str] = &["t"];
        const ENABLED_BY_DEFAULT: bool = CODE == 1;
        type Shared = ();
        type State = ();
        type Call = ();
        type Answer = ();

        fn prepare(_: &Config) -> anyhow::Result<()> {
            Ok(())
        }

        fn state(_: &(), _: ShardAt<'_>) {}

        fn start(_: Starting<'_, Self>) -> Rc<Self> {
            Rc::new(Tiny)
        }

        fn core(&self) -> &Rc<Core> {
            unreachable!("never started in these tests")
        }

        async fn serve(self: Rc<Self>, _: ()) {}
    }

    #[test]
    fn services_are_enabled_by_default_or_by_name_and_unknown_names_refused() {
        let registry = || {
            let mut registry = Registry::default();
            registry.add::<Tiny<1>>();
            registry.add::<Tiny<2>>();
            registry
        };
        let mut config = Config::default();
        assert_eq!(registry().enabled(&config).unwrap().names(), ["tiny-one"]);
        config.services.enable = vec!["tiny-other".to_owned()];
        assert_eq!(registry().enabled(&config).unwrap().names(), ["tiny-one", "tiny-other"]);
        config.services.enable = vec!["nobody".to_owned()];
        let error = registry().enabled(&config).err().expect("refused").to_string();
        assert!(error.contains("services.enable") && error.contains("nobody"), "{error}");
    }

    #[test]
    #[should_panic(expected = "both claim log item code 0x01")]
    fn two_services_cannot_claim_one_log_code() {
        struct Other;
        impl Service for Other {
            const NAME: &'static str = "other";
            const LOG_CODES: &'static [u8] = &[1];
            const TABLES: &'static [&'static str] = &["t"];
            type Shared = ();
            type State = ();
            type Call = ();
            type Answer = ();
            fn prepare(_: &Config) -> anyhow::Result<()> {
                Ok(())
            }
            fn state(_: &(), _: ShardAt<'_>) {}
            fn start(_: Starting<'_, Self>) -> Rc<Self> {
                Rc::new(Other)
            }
            fn core(&self) -> &Rc<Core> {
                unreachable!("never started in these tests")
            }
            async fn serve(self: Rc<Self>, _: ()) {}
        }
        let mut registry = Registry::default();
        registry.add::<Tiny<1>>();
        registry.add::<Other>();
    }

    #[test]
    fn the_node_s_services_claim_distinct_codes_and_tables() {
        let registry = crate::services::registry();
        assert_eq!(
            registry.names(),
            ["passport", "ops", "ledger", "wallet", "index", "rewarder", "echo"]
        );
        let (layout, bases) = registry.view_layout();
        assert!(bases.windows(2).all(|w| w[0] <= w[1]));
        assert_ne!(layout.signature(), ViewLayout::default().signature());
    }
}
