//! The passport (SPEC §6): capability tokens — issuance, verification,
//! attenuation, revocation, keys and their rotation, ML-DSA batch
//! signatures — and the gate every protected route of every service goes
//! through (token check, then counting caveats).
//!
//! Parts: `routes` (the HTTP surface), `access` (the admin token, the
//! authorization decision), `verifier` (revocations and the verify cache),
//! `metering` (the counting caveats, on the owner of each count), `keys`
//! (key files per kid, rotation, JWKS), `pq` (ML-DSA batches), `metrics`.
//!
//! Log items: revocations (`ron_proto::revocation`, code 0x30), applied by
//! every shard from the committed stream and kept in its view (table
//! `revocations`, by seq), so a start replays only the log after it. Spent
//! budgets are kept in files of their own (`budgets`).

pub mod access;
pub mod budgets;
pub mod keys;
pub mod metering;
pub mod metrics;
pub mod pq;
pub mod pq_store;
pub mod routes;
pub mod verifier;

use crate::clock::unix_now_s;
use crate::config::{Config, PqMode, Profile};
use crate::core::Core;
use crate::http::routes::{Gate, Handler};
use crate::http::{Access, Handled, Params, Reply, Request, RouteTable};
use crate::limits::{BUDGETS_SAVE_EVERY, PQ_BATCH_WINDOW};
use crate::workers::{Job, Lane};
use crate::log::Item;
use crate::log::view::{ServiceView, ViewChanges};
use crate::metrics::MetricsPart;
use crate::service::{Replaying, Service, ShardAt, Starting};
use access::{AdminToken, Facts, Presented};
use keys::Keyring;
use metering::{MeterCall, Refused};
use metrics::PassportMetrics;
use pq::{Backlogged, PqSigner, SignedBatch};
use ron_proto::attestation::Attestation;
use ron_proto::merkle::Hash;
use ron_proto::revocation::{REVOCATION_CODE, Revocation};
use ron_proto::token::{self, TokenView};
use ron_shards::passport::{Meters, Revocations, SpentBudget};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use verifier::{PassportState, Refusal, VerifyCache, cached_view};

/// What every shard shares: the keys as last rotated (each shard holds a
/// copy it replaces when a rotation is broadcast) and the admin token made
/// at start.
pub struct Shared {
    pub keys: Mutex<Arc<Keyring>>,
    pub admin_token: AdminToken,
}

/// The passport on one shard.
pub struct Passport {
    core: Rc<Core>,
    shared: Arc<Shared>,
    /// The keys; replaced whole by a rotation.
    keys: RefCell<Arc<Keyring>>,
    /// Revocations and the verify cache.
    state: RefCell<PassportState>,
    /// Revocations (seq, item) this shard's view does not have yet.
    unsaved: RefCell<Vec<(u64, Vec<u8>)>>,
    /// ML-DSA batch signatures of issued tokens.
    pq: PqSigner,
    /// A task closes the open PQ batch after its window.
    pq_closer_running: Cell<bool>,
    /// Counts of the token ids and tenants this shard owns (`metering`).
    meters: RefCell<Meters>,
    /// Where this shard keeps its spent budgets (none with amnesia), and
    /// the number of the last snapshot taken of them.
    budgets: Option<Arc<budgets::BudgetFile>>,
    budgets_taken: Cell<u64>,
    /// Ids of the tokens this shard mints.
    token_ids: routes::TokenIds,
    /// Decoded tokens, reused from request to request.
    token_scratch: RefCell<Vec<u8>>,
    metrics: RefCell<PassportMetrics>,
}

/// The passport's table: revocation items by seq (big-endian).
const REVOCATIONS: usize = 0;

/// A shard's revocations at start: every one, and those read from the log
/// that its view does not have yet.
#[derive(Default)]
pub struct Revoked {
    revocations: Revocations,
    unsaved: Vec<(u64, Vec<u8>)>,
}

#[derive(Debug)]
pub enum Call {
    /// Use these keys from now on (a rotation), unless newer ones are here.
    SetKeys(Arc<Keyring>),
    /// Count a request against a token id or tenant this shard owns.
    Meter(MeterCall),
    /// A signed ML-DSA batch of this shard's, for third parties.
    PqBatch { batch: u64 },
    /// Answer once the log through `seq`, a revocation, is applied here.
    RevocationApplied { seq: u64 },
}

#[derive(Debug)]
pub enum Answer {
    Done,
    Metered(Result<(), Refused>),
    PqBatch(Option<Box<SignedBatch>>),
    /// How long after it was durable the revocation was applied here.
    RevocationApplied { lag: Option<Duration> },
}

impl Service for Passport {
    const NAME: &'static str = "passport";
    const LOG_CODES: &'static [u8] = &[REVOCATION_CODE];
    const TICK: Option<Duration> = Some(BUDGETS_SAVE_EVERY);
    type Shared = Shared;
    /// Each shard's view keeps every revocation, by seq, so that a start
    /// replays only the log after it.
    const TABLES: &'static [&'static str] = &["revocations"];
    type State = Revoked;
    type Call = Call;
    type Answer = Answer;

    fn prepare(config: &Config) -> anyhow::Result<Shared> {
        let (keys, admin_token) = access::prepare(config)?;
        Ok(Shared { keys: Mutex::new(Arc::new(keys)), admin_token })
    }

    fn state(_: &Shared, _: ShardAt<'_>) -> Revoked {
        Revoked::default()
    }

    fn load(revoked: &mut Revoked, view: &ServiceView, _: u64) -> anyhow::Result<()> {
        view.each(REVOCATIONS, |_, item| {
            let revocation = Revocation::decode(item)?;
            revoked.revocations.apply(&revocation.revoked);
            Ok(())
        })?;
        Ok(())
    }

    fn check(item: &[u8]) -> Result<(), String> {
        Revocation::decode(item).map(drop).map_err(|e| e.to_string())
    }

    fn replay(states: &mut Replaying<'_, Revoked>, item: Item<'_>) {
        let revocation = Revocation::decode(item.bytes).expect("checked");
        // Every shard holds every revocation.
        for shard in 0..states.shard_count() {
            if let Some(revoked) = states.get(shard) {
                revoked.revocations.apply(&revocation.revoked);
                revoked.unsaved.push((item.seq, item.bytes.to_vec()));
            }
        }
    }

    fn start(start: Starting<'_, Passport>) -> Rc<Passport> {
        let core = start.core.clone();
        let config = &core.config.passport;
        let cache = VerifyCache::new(
            config.verify_cache_entries_max as usize,
            config.verify_cache_bytes_max as usize,
            Duration::from_millis(config.verify_cache_ttl_ms),
        );
        let signing = config.pq_mode != PqMode::Off;
        let keys = start.shared.keys.lock().expect("not poisoned").clone();
        let budgets = (core.config.profile != Profile::Micronode)
            .then(|| Arc::new(budgets::BudgetFile::new(&core.config.data_dir, core.id)));
        // Signed batches stay on disk as long as a token in them can verify.
        let keep = Duration::from_secs(config.ttl_max_s + config.clock_skew_s);
        let pq_store = (core.config.profile != Profile::Micronode)
            .then(|| (pq_store::dir(&core.config.data_dir), keep));
        let mut meters = Meters::default();
        if let Some(file) = &budgets {
            let owned = |id: &[u8; 16]| core.owner(id) == core.id;
            for budget in file.load_all(unix_now_s(), owned) {
                meters.load_budget(budget);
            }
        }
        Rc::new(Passport {
            pq: PqSigner::new(core.id, signing.then(|| core.workers.clone()), pq_store)
                .expect("randomness for batch numbers"),
            core,
            shared: start.shared,
            keys: RefCell::new(keys),
            state: RefCell::new(PassportState::new(start.state.revocations, cache)),
            unsaved: RefCell::new(start.state.unsaved),
            pq_closer_running: Cell::new(false),
            meters: RefCell::new(meters),
            budgets,
            budgets_taken: Cell::new(0),
            token_ids: routes::TokenIds::new().expect("randomness for token ids"),
            token_scratch: RefCell::new(Vec::with_capacity(token::TOKEN_BINARY_BYTES_MAX)),
            metrics: RefCell::new(PassportMetrics::default()),
        })
    }

    fn core(&self) -> &Rc<Core> {
        &self.core
    }

    fn routes(self: &Rc<Self>, table: &mut RouteTable) {
        routes::add(self, table);
        table.set_gate(Rc::new(TokenGate(self.clone())));
    }

    async fn serve(self: Rc<Self>, call: Call) -> Answer {
        match call {
            Call::SetKeys(keys) => {
                let mut mine = self.keys.borrow_mut();
                if keys.current().kid > mine.current().kid {
                    *mine = keys;
                }
                Answer::Done
            }
            Call::Meter(call) => Answer::Metered(metering::count(&self, &call)),
            Call::PqBatch { batch } => {
                if let Some(found) = self.pq.batch(batch) {
                    return Answer::PqBatch(Some(Box::new(found)));
                }
                let dir = self.pq.store_dir().cloned();
                Answer::PqBatch(pq_store::find_later(&self.core, dir, self.core.id, batch).await)
            }
            Call::RevocationApplied { seq } => {
                self.core.log.applied_through(seq).await;
                Answer::RevocationApplied { lag: self.state.borrow().lag(seq) }
            }
        }
    }

    fn apply(&self, item: Item<'_>) {
        let revocation = Revocation::decode(item.bytes).expect("committed items decode");
        let lag = item.durable_at.map(|at| at.elapsed()).unwrap_or_default();
        self.state.borrow_mut().apply(&revocation, item.seq, lag);
        self.unsaved.borrow_mut().push((item.seq, item.bytes.to_vec()));
    }

    fn save(&self, changes: &mut ViewChanges, _: u64) {
        for (seq, item) in self.unsaved.borrow_mut().drain(..) {
            changes.put(REVOCATIONS, &seq.to_be_bytes(), &item);
        }
    }

    /// Writes the spent budgets when one was spent since the last tick.
    async fn tick(self: Rc<Self>) {
        let Some((generation, budgets, file)) = self.budgets_snapshot() else { return };
        let write = move || {
            if let Err(error) = file.write(generation, &budgets) {
                tracing::warn!(%error, "spent budgets were not written");
            }
        };
        if self.core.workers.submit(Lane::Normal, Job::new(write)).is_err() {
            // The workers are full: the next tick writes them.
            self.meters.borrow_mut().budgets_unsaved();
        }
    }

    fn stop(&self) {
        if let Some((generation, budgets, file)) = self.budgets_snapshot()
            && let Err(error) = file.write(generation, &budgets)
        {
            tracing::warn!(%error, "spent budgets were not written at stop");
        }
    }

    fn metrics(&self) -> Option<Box<dyn MetricsPart>> {
        let mut metrics = self.metrics.borrow().clone();
        (metrics.pq_batch_sign, metrics.pq_batch_tokens) = self.pq.stats();
        let state = self.state.borrow();
        (metrics.cache_hits, metrics.cache_misses) = state.cache.counts();
        metrics.cache_entries = state.cache.len() as u64;
        Some(Box::new(metrics))
    }
}

impl Passport {
    /// The spent budgets if one was spent since the last snapshot, with the
    /// snapshot's number and the file they go to.
    fn budgets_snapshot(&self) -> Option<(u64, Vec<SpentBudget>, Arc<budgets::BudgetFile>)> {
        let file = self.budgets.clone()?;
        if file.take_failed() {
            self.meters.borrow_mut().budgets_unsaved();
        }
        let budgets = self.meters.borrow_mut().take_changed_budgets(unix_now_s())?;
        self.budgets_taken.set(self.budgets_taken.get() + 1);
        Some((self.budgets_taken.get(), budgets, file))
    }
}

/// The passport as the gate of every protected route.
struct TokenGate(Rc<Passport>);

impl Gate for TokenGate {
    fn admit(
        &self,
        request: &Request<'_>,
        path: &str,
        params: &Params<'_>,
        access: Access,
        handler: &Handler,
    ) -> Handled {
        let scope = match access {
            Access::Public | Access::ScopeWithFacts(_) => None,
            Access::Authenticated => Some(None),
            Access::Scope(scope) => Some(Some(scope)),
        };
        let passport = &self.0;
        if let Some(scope) = scope {
            let presented = Presented::of(request, path);
            if let Err(reply) = access::authorize(passport, &presented, scope, Facts::default()) {
                return Handled::Now(reply);
            }
        }
        // The rewarder clamps each tenant's requests to it as well.
        let clamp = path.starts_with("/rewarder/").then(|| metering::ServiceClamp {
            service: "rewarder",
            limit: "rewarder.tenant_rps_max",
            rps: crate::reload::Reloadable::get(&passport.core.node.reload.rewarder_tenant_rps_max),
        });
        metering::meter_then(passport, request, params, handler, clamp)
    }
}

impl Passport {
    pub fn config(&self) -> &crate::config::Passport {
        &self.core.config.passport
    }

    /// The node-wide passport state.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    pub fn keys(&self) -> Arc<Keyring> {
        self.keys.borrow().clone()
    }

    /// Why tokens cannot be minted, if they cannot.
    pub fn issuance_unavailable(&self) -> Option<String> {
        self.keys.borrow().issuance_unavailable.clone()
    }

    /// Checks `request` (to `path`) for `scope` with what the handler
    /// knows it is about.
    pub fn authorize(
        &self,
        request: &Request<'_>,
        scope: &str,
        facts: Facts<'_>,
    ) -> Result<(), Reply> {
        let presented = Presented::of(request, request.path());
        access::authorize(self, &presented, Some(scope), facts)
    }

    /// Checks what a request presented (kept by a handler that learns the
    /// facts later).
    pub fn authorize_presented(
        &self,
        presented: &Presented<'_>,
        scope: Option<&str>,
        facts: Facts<'_>,
    ) -> Result<(), Reply> {
        access::authorize(self, presented, scope, facts)
    }

    /// Verifies `text` as a credential of this node (the cache, or
    /// decoding, the key, the tag; then revocations), and hands the decoded
    /// token to `then` for its caveats.
    pub fn with_verified<R>(
        &self,
        text: &[u8],
        then: impl FnOnce(&TokenView<'_>) -> R,
    ) -> Result<R, Refusal> {
        let caveats_max = self.config().caveats_max;
        {
            let state = self.state.borrow();
            let policy_epoch = state.revocations.current_epoch();
            if let Some(binary) = state.cache.get(text, policy_epoch, Instant::now()) {
                let view = cached_view(binary, caveats_max).expect("cached tokens decode");
                if self.keys.borrow().root(view.kid, unix_now_s()).is_none() {
                    return Err(Refusal::UnknownKid);
                }
                if state.refuses(&view) {
                    return Err(Refusal::Revoked);
                }
                return Ok(then(&view));
            }
        }
        let mut scratch = self.token_scratch.borrow_mut();
        token::decode(text, caveats_max, &mut scratch)?;
        let view = token::decode_binary(&scratch, caveats_max).expect("decoded just now");
        {
            let keys = self.keys.borrow();
            let root = keys.root(view.kid, unix_now_s()).ok_or(Refusal::UnknownKid)?;
            if !view.verify_tag(root) {
                return Err(Refusal::BadTag);
            }
            if self.config().pq_mode == PqMode::Enforce && !pq::attested(&view, &keys) {
                return Err(Refusal::PqRequired);
            }
        }
        {
            let mut state = self.state.borrow_mut();
            if state.refuses(&view) {
                return Err(Refusal::Revoked);
            }
            let policy_epoch = state.revocations.current_epoch();
            state.cache.insert(text, &view, &scratch, policy_epoch);
        }
        Ok(then(&view))
    }

    /// Puts `leaf` in this shard's open batch and answers its place at
    /// once; the batch is signed within `PQ_BATCH_WINDOW` plus one
    /// signature, unless the workers are behind.
    fn attest(self: &Rc<Self>, leaf: Hash) -> Result<Attestation, Backlogged> {
        let attestation = self.pq.add(self.keys(), leaf)?;
        if !self.pq_closer_running.replace(true) {
            let passport = self.clone();
            self.core.spawn(async move {
                // Closes the batch after its window, and hands waiting
                // batches to the workers until none waits.
                loop {
                    glommio::timer::sleep(PQ_BATCH_WINDOW).await;
                    if !passport.pq.close() {
                        break;
                    }
                }
                passport.pq_closer_running.set(false);
            });
        }
        Ok(attestation)
    }
}
