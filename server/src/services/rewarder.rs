//! The rewarder (SPEC §8): deterministic epoch rewards on the paths, bodies,
//! formulas and envelope of the original svc-rewarder
//! (`ron_proto::rewarder` holds the calculus and the formats).
//!
//! * A **run** is computed on the workers from a sealed snapshot (inline,
//!   or the index's object under `inputs_cid`) and a policy; the manifest's
//!   bytes go to the node's manifest store (kept by their BLAKE3, synced),
//!   then a run record (`RunRecord`) to the log.
//! * Each epoch belongs to one shard (`RunRecord::owner`), which keeps its
//!   record in RAM and in its view, and decides alone what is stored: the
//!   first run of an epoch, or a live run promoting a stored dry run of the
//!   same `run_key`. A request for a stored epoch with the same key gets the
//!   stored bytes again; with another key, 409.

pub mod admission;
pub mod pending;
pub mod routes;

use crate::config::Config;
use crate::core::Core;
use crate::http::RouteTable;
use crate::limits::REWARDER_PENDING_TICK;
use crate::log::view::{ServiceView, ViewChanges};
use crate::log::{Append, Item, LogAnswer, LogCall};
use crate::metrics::{LatencyHistogram, MetricsPart, header, histogram_lines, simple_lines};
use crate::service::{Replaying, Service, ShardAt, Starting};
use crate::services::index::objects::ObjectStore;
use crate::workers::Lane;
use ron_proto::rewarder::{LedgerResult, RUN_CODE, RunRecord};
use std::any::Any;
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

/// What every shard shares: the manifest store and the owed emissions.
pub struct RewarderShared {
    pub manifests: ObjectStore,
    pub pending: pending::Pending,
}

/// The runs a shard owns.
#[derive(Default)]
pub struct Runs {
    runs: HashMap<String, RunRecord>,
    /// Epochs changed since the last view write.
    changed: HashSet<String>,
    /// By epoch, BLAKE3 digests of request bodies known to be answered by
    /// its stored run (the body that computed it, bodies that replayed it):
    /// the same bytes again get the same answer without being parsed. RAM
    /// only (relearned after a restart), `KNOWN_BODIES_PER_EPOCH` each,
    /// forgotten when the run changes.
    known: HashMap<String, Vec<[u8; 32]>>,
}

/// Request bodies remembered per epoch (the newest).
const KNOWN_BODIES_PER_EPOCH: usize = 4;

impl Runs {
    /// Keeps `record` if it may replace what the epoch holds: nothing yet,
    /// or a dry run of the same key that this live run promotes.
    fn admit(&mut self, record: RunRecord) {
        let admitted = match self.runs.get(&record.epoch_id) {
            None => true,
            Some(stored) => {
                stored.run_key == record.run_key
                    && stored.ledger == LedgerResult::DryRun
                    && record.ledger != LedgerResult::DryRun
            }
        };
        if admitted {
            self.changed.insert(record.epoch_id.clone());
            self.known.remove(&record.epoch_id);
            self.runs.insert(record.epoch_id.clone(), record);
        }
    }

    /// Remembers that `body` is answered by the epoch's run whose manifest
    /// is `manifest` (if that is still its run).
    fn learn(&mut self, epoch_id: String, manifest: [u8; 32], body: [u8; 32]) {
        if self.runs.get(&epoch_id).is_none_or(|run| run.manifest != manifest) {
            return;
        }
        let known = self.known.entry(epoch_id).or_default();
        if !known.contains(&body) {
            if known.len() == KNOWN_BODIES_PER_EPOCH {
                known.remove(0);
            }
            known.push(body);
        }
    }
}

/// The rewarder on one shard.
pub struct Rewarder {
    core: Rc<Core>,
    shared: Arc<RewarderShared>,
    runs: RefCell<Runs>,
    /// Computes this shard runs now and those that wait for a slot.
    admission: admission::Admission,
    metrics: RefCell<RewarderMetrics>,
    /// The index, whose objects hold snapshots sent ahead of a compute.
    index: Rc<crate::services::index::Index>,
    /// The wallet, which issues the payouts.
    wallet: Rc<crate::services::wallet::Wallet>,
    /// The passport, whose keys sign manifests when `pq_mode` is on.
    passport: Rc<crate::services::passport::Passport>,
}

#[derive(Debug)]
pub enum Call {
    /// The epoch's stored run.
    Find { epoch_id: String },
    /// Stores a computed run (its manifest already in the store).
    Store { record: RunRecord },
    /// A request body answered by the epoch's run of `manifest`.
    Learn { epoch_id: String, manifest: [u8; 32], body: [u8; 32] },
}

#[derive(Debug)]
pub enum Answer {
    /// The stored run, and digests of bodies it answers (`Runs::known`).
    Found(Option<RunRecord>, Vec<[u8; 32]>),
    Stored(Stored),
    Learnt,
}

/// What became of a run offered to its epoch's owner.
#[derive(Debug)]
pub enum Stored {
    /// Kept: the answer is its manifest.
    Kept,
    /// The epoch holds a run of the same key that this one does not
    /// replace: the answer is that one's manifest.
    Existing(RunRecord),
    /// The epoch holds a run of another key.
    Conflict,
    /// The log did not take it (the reason, for the answer).
    Failed(crate::http::Reply),
}

impl Service for Rewarder {
    const NAME: &'static str = "rewarder";
    const LOG_CODES: &'static [u8] = &[RUN_CODE];
    const TABLES: &'static [&'static str] = &["runs"];
    const TICK: Option<Duration> = Some(REWARDER_PENDING_TICK);
    type Shared = RewarderShared;
    type State = Runs;
    type Call = Call;
    type Answer = Answer;

    fn prepare(config: &Config) -> anyhow::Result<RewarderShared> {
        let bytes_max = config.rewarder.manifests_bytes_max;
        let (manifests, pending) = if config.amnesia() {
            (ObjectStore::memory(bytes_max), pending::Pending::memory())
        } else {
            (
                ObjectStore::open(&config.data_dir.join("rewarder-manifests"), bytes_max)?,
                pending::Pending::open(&config.data_dir.join("rewarder-pending"))?,
            )
        };
        Ok(RewarderShared { manifests, pending })
    }

    fn state(_: &RewarderShared, _: ShardAt<'_>) -> Runs {
        Runs::default()
    }

    fn load(runs: &mut Runs, view: &ServiceView, _: u64) -> anyhow::Result<()> {
        view.each(0, |key: &[u8], value: &[u8]| {
            let record = RunRecord::decode(value)
                .map_err(|e| anyhow::anyhow!("a run in the view does not decode: {e}"))?;
            anyhow::ensure!(record.epoch_id.as_bytes() == key, "a run in the view under another epoch");
            runs.runs.insert(record.epoch_id.clone(), record);
            Ok(())
        })?;
        Ok(())
    }

    fn check(item: &[u8]) -> Result<(), String> {
        RunRecord::decode(item).map(drop).map_err(|e| e.to_string())
    }

    fn replay(states: &mut Replaying<'_, Runs>, item: Item<'_>) {
        let record = RunRecord::decode(item.bytes).expect("checked");
        let owner = RunRecord::owner(&record.epoch_id, states.shard_count());
        if let Some(runs) = states.get(owner) {
            runs.admit(record);
        }
    }

    fn start(start: Starting<'_, Rewarder>) -> Rc<Rewarder> {
        Rc::new(Rewarder {
            core: start.core.clone(),
            shared: start.shared,
            runs: RefCell::new(start.state),
            admission: admission::Admission::default(),
            metrics: RefCell::new(RewarderMetrics::default()),
            index: start.started.get::<crate::services::index::Index>(),
            wallet: start.started.get::<crate::services::wallet::Wallet>(),
            passport: start.started.get::<crate::services::passport::Passport>(),
        })
    }

    fn core(&self) -> &Rc<Core> {
        &self.core
    }

    fn routes(self: &Rc<Self>, table: &mut RouteTable) {
        routes::add(self, table);
    }

    async fn serve(self: Rc<Self>, call: Call) -> Answer {
        self.core.log.caught_up().await;
        match call {
            Call::Find { epoch_id } => {
                let runs = self.runs.borrow();
                let known = runs.known.get(&epoch_id).cloned().unwrap_or_default();
                Answer::Found(runs.runs.get(&epoch_id).cloned(), known)
            }
            Call::Store { record } => Answer::Stored(self.store(record).await),
            Call::Learn { epoch_id, manifest, body } => {
                self.runs.borrow_mut().learn(epoch_id, manifest, body);
                Answer::Learnt
            }
        }
    }

    fn apply(&self, item: Item<'_>) {
        let record = RunRecord::decode(item.bytes).expect("committed items decode");
        self.runs.borrow_mut().admit(record);
    }

    fn save(&self, changes: &mut ViewChanges, _: u64) {
        let mut runs = self.runs.borrow_mut();
        let changed = std::mem::take(&mut runs.changed);
        let mut value = Vec::new();
        for epoch_id in changed {
            let record = runs.runs.get(&epoch_id).expect("a changed run is kept");
            value.clear();
            record.encode(&mut value);
            changes.put(0, epoch_id.as_bytes(), &value);
        }
    }

    fn metrics(&self) -> Option<Box<dyn MetricsPart>> {
        let mut metrics = self.metrics.borrow().clone();
        metrics.kept = self.runs.borrow().runs.len() as u64;
        metrics.running = u64::from(self.admission.running());
        metrics.waiting = self.admission.waiting() as u64;
        let queue_max = &self.core.node.reload.rewarder_work_queue_max;
        metrics.work_queue_max = u64::from(crate::reload::Reloadable::get(queue_max));
        Some(Box::new(metrics))
    }

    /// Issues the emissions owed for the epochs this shard owns, while the
    /// ledger takes writes.
    async fn tick(self: Rc<Self>) {
        if self.core.log.in_safe_mode() {
            return;
        }
        let shared = self.shared.clone();
        let core = &self.core;
        let Ok(listed) = core.returns.run(&core.workers, Lane::Normal, move || shared.pending.list())
        else {
            return;
        };
        let epochs = match listed.await {
            Some(Ok(epochs)) => epochs,
            Some(Err(error)) => {
                tracing::error!(%error, "listing the pending emissions");
                return;
            }
            None => return,
        };
        self.metrics.borrow_mut().pending = epochs.len() as u64;
        for epoch_id in epochs.into_iter().filter(|e| self.owner(e) == core.id) {
            let record = self.runs.borrow().runs.get(&epoch_id).cloned();
            let Some(record) = record else {
                tracing::warn!(%epoch_id, "a pending emission of an epoch without a run");
                continue;
            };
            match routes::emit_run(&self, &record).await {
                routes::Emission::Done { .. } => {
                    tracing::info!(%epoch_id, "an owed emission is done");
                    let shared = self.shared.clone();
                    let work = move || shared.pending.remove(&epoch_id);
                    if let Ok(removed) = core.returns.run(&core.workers, Lane::Normal, work) {
                        let _ = removed.await;
                    }
                }
                routes::Emission::Deferred { .. } => return,
                routes::Emission::Refused(reply) => {
                    tracing::warn!(%epoch_id, status = reply.status, "an owed emission was refused; tried again later");
                }
            }
        }
    }

    fn stop(&self) {
        if self.core.config.amnesia() {
            self.shared.manifests.zeroize();
        }
    }
}

impl Rewarder {
    /// The shard that owns `epoch_id`'s runs.
    pub fn owner(&self, epoch_id: &str) -> usize {
        RunRecord::owner(epoch_id, self.core.count)
    }

    /// On the epoch's owner: appends `record` if the epoch takes it, and
    /// says what the epoch holds once it is applied.
    async fn store(&self, record: RunRecord) -> Stored {
        let verdict = |runs: &Runs, record: &RunRecord| match runs.runs.get(&record.epoch_id) {
            None => None,
            Some(stored) if stored == record => Some(Stored::Kept),
            Some(stored) if stored.run_key != record.run_key => Some(Stored::Conflict),
            Some(stored)
                if stored.ledger != LedgerResult::DryRun || record.ledger == LedgerResult::DryRun =>
            {
                Some(Stored::Existing(stored.clone()))
            }
            Some(_) => None,
        };
        if let Some(known) = verdict(&self.runs.borrow(), &record) {
            return known;
        }
        let append = Append::item(|out| record.encode(out), [self.core.id]);
        match self.core.log.call(LogCall::Append(append)).await {
            Ok(LogAnswer::Appended { .. }) => {}
            Ok(LogAnswer::Degraded { reason }) => {
                return Stored::Failed(crate::http::reply::degraded(Some(&reason)));
            }
            Ok(other) => panic!("a run append answered with {other:?}"),
            Err(error) => return Stored::Failed(crate::http::reply::link_failure(error)),
        }
        // Applied before the append answered: the epoch now holds this run,
        // or the one another request stored first.
        verdict(&self.runs.borrow(), &record).expect("an appended run is applied")
    }
}

/// What the rewarder counts on a shard.
#[derive(Clone, Debug, Default)]
pub struct RewarderMetrics {
    /// Computes from the request to the answer (a wait for a slot included).
    pub compute: LatencyHistogram,
    /// Runs by outcome: computed and stored, answered from the store,
    /// quarantined, refused as conflicting.
    pub ok: u64,
    pub replay: u64,
    /// Replays of a body known to the epoch's owner: answered unparsed.
    pub replay_known: u64,
    pub quarantined: u64,
    pub conflict: u64,
    /// Overflows and broken invariants (every quarantine).
    pub invariant_fail: u64,
    /// Payout issues by result: committed by an emission, found committed
    /// already, planned by a dry run, refused.
    pub intents_accepted: u64,
    pub intents_dup: u64,
    pub intents_dry_run: u64,
    pub intents_error: u64,
    /// Payouts of the runs computed.
    pub intents_planned: u64,
    /// Emissions put off while the ledger could not take them, and the
    /// epochs owed now (filled in by the tick).
    pub emissions_deferred: u64,
    pub pending: u64,
    /// Runs this shard keeps, computes running on the workers and waiting
    /// for a slot (filled in at scrape).
    pub kept: u64,
    pub running: u64,
    pub waiting: u64,
    /// `rewarder.work_queue_max` (per shard; summed over shards).
    pub work_queue_max: u64,
}

impl MetricsPart for RewarderMetrics {
    fn merge(&mut self, other: &dyn MetricsPart) {
        let other: &RewarderMetrics = other.as_any().downcast_ref().expect("the rewarder's metrics");
        self.compute.add(&other.compute);
        self.ok += other.ok;
        self.replay += other.replay;
        self.replay_known += other.replay_known;
        self.quarantined += other.quarantined;
        self.conflict += other.conflict;
        self.invariant_fail += other.invariant_fail;
        self.intents_accepted += other.intents_accepted;
        self.intents_dup += other.intents_dup;
        self.intents_dry_run += other.intents_dry_run;
        self.intents_error += other.intents_error;
        self.intents_planned += other.intents_planned;
        self.emissions_deferred += other.emissions_deferred;
        self.pending = self.pending.max(other.pending);
        self.kept += other.kept;
        self.running += other.running;
        self.waiting += other.waiting;
        self.work_queue_max += other.work_queue_max;
    }

    fn render(&self, out: &mut String) {
        let name = "reward_compute_latency_seconds";
        header(out, name, "histogram", "Computes, from the request to the answer (a wait for a slot included).");
        histogram_lines(out, name, None, &self.compute);
        let name = "reward_runs_total";
        header(out, name, "counter", "Computes by outcome (ok, replay, quarantined, conflict).");
        for (status, count) in [
            ("ok", self.ok),
            ("replay", self.replay),
            ("quarantined", self.quarantined),
            ("conflict", self.conflict),
        ] {
            let _ = writeln!(out, "{name}{{status=\"{status}\"}} {count}");
        }
        let name = "ledger_intents_total";
        header(out, name, "counter", "Payout issues by result (accepted, dup, dry_run, error).");
        for (result, count) in [
            ("accepted", self.intents_accepted),
            ("dup", self.intents_dup),
            ("dry_run", self.intents_dry_run),
            ("error", self.intents_error),
        ] {
            let _ = writeln!(out, "{name}{{result=\"{result}\"}} {count}");
        }
        simple_lines(
            out,
            &[
                ("settlement_intents_planned_total", "counter", "Payouts of the runs computed.", self.intents_planned as f64),
                ("reward_emissions_deferred_total", "counter", "Emissions put off while the ledger could not take them (quarantine-only).", self.emissions_deferred as f64),
                ("reward_emissions_pending", "gauge", "Epochs whose emission is owed.", self.pending as f64),
                ("reward_invariant_fail_total", "counter", "Runs quarantined: an overflow or a broken invariant.", self.invariant_fail as f64),
                ("reward_runs_kept", "gauge", "Epochs with a stored run.", self.kept as f64),
                ("reward_replays_unparsed_total", "counter", "Replays of a request body the run is known to answer: not parsed again.", self.replay_known as f64),
                ("reward_runs_running", "gauge", "Computes running on the workers (rewarder.inflight_max per shard).", self.running as f64),
                ("reward_work_queue_max", "gauge", "Runs that may wait for a slot, over all shards (rewarder.work_queue_max per shard).", self.work_queue_max as f64),
            ],
        );
    }

    fn queue_depths(&self, out: &mut Vec<(&'static str, u64)>) {
        out.push(("rewarder", self.waiting));
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(ledger: LedgerResult, manifest: u8) -> RunRecord {
        RunRecord {
            epoch_id: "e".into(),
            run_key: [1; 32],
            commitment: [2; 32],
            manifest: [manifest; 32],
            ledger,
            manifest_bytes: 10,
        }
    }

    #[test]
    fn known_bodies_belong_to_the_run_they_were_answered_by() {
        let mut runs = Runs::default();
        runs.admit(record(LedgerResult::DryRun, 7));
        // Only for the epoch's current run, at most a few, newest kept.
        runs.learn("e".into(), [8; 32], [1; 32]);
        assert!(!runs.known.contains_key("e"));
        for body in 0..6u8 {
            runs.learn("e".into(), [7; 32], [body; 32]);
        }
        runs.learn("e".into(), [7; 32], [5; 32]);
        assert_eq!(runs.known["e"], [[2; 32], [3; 32], [4; 32], [5; 32]]);
        // A live run promoting the dry run: what the dry run answered is
        // forgotten; a replayed record of the same run changes nothing.
        runs.admit(record(LedgerResult::Accepted, 9));
        assert!(!runs.known.contains_key("e"));
        runs.learn("e".into(), [9; 32], [1; 32]);
        runs.admit(record(LedgerResult::Accepted, 9));
        assert_eq!(runs.known["e"], [[1; 32]]);
    }
}
