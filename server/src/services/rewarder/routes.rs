//! The rewarder's routes (SPEC §8), with the original's checks in its
//! order, its texts and its nested envelope (`ErrorStyle::Rewarder`).

use super::admission::Entry;
use super::{Answer, Call, Rewarder, RewarderShared, Stored};
use crate::http::reply::mesh_failure;
use crate::http::routes::shaped_json;
use crate::http::{Access, Handled, Params, Reply, Request, RouteTable, Shed};
use crate::limits::LEDGER_RETRY;
use crate::reload::Reloadable;
use crate::retry::{Outcome as Retried, Retry};
use crate::service::Service;
use crate::services::index::objects::{PutError, Read};
use crate::services::passport::keys::Keyring;
use crate::services::wallet::routes::Issued;
use crate::workers::Lane;
use ron_proto::ErrorCode;
use ron_proto::error::ErrorStyle;
use ron_proto::http::Method;
use ron_proto::index::Cid;
use ron_proto::rewarder::{
    Attestation, ComputeRequest, LedgerResult, Manifest, Policy, Refusal, Run, RunRecord,
    Settlement, compute as compute_manifest, digest_of, parse_inputs_cid, run_key, seal,
    validate_epoch_id,
};
use ron_proto::token::scope::{REWARDER_INSPECT, REWARDER_RUN};
use ron_proto::token::to_base64url;
use serde::Serialize;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

fn get(field: &std::sync::atomic::AtomicU32) -> u32 {
    Reloadable::get(field)
}

/// The wallet route a settlement's issues go to.
const WALLET_ISSUE_PATH: &str = "/v1/issue";

pub fn add(rewarder: &Rc<Rewarder>, table: &mut RouteTable) {
    let (r, style) = (rewarder, ErrorStyle::Rewarder);
    let (run, inspect) = (Access::Scope(REWARDER_RUN), Access::Scope(REWARDER_INSPECT));
    let epoch = "/rewarder/epochs/{epoch_id}";
    let compute_path = "/rewarder/epochs/{epoch_id}/compute";
    let settlement_path = "/rewarder/epochs/{epoch_id}/settlement";
    let emit_path = "/rewarder/epochs/{epoch_id}/emit";
    table.add(r, Method::Post, compute_path, run, Shed::Yes, compute).errors(style);
    table.add(r, Method::Get, epoch, inspect, Shed::Yes, get_epoch).errors(style);
    table.add(r, Method::Get, settlement_path, inspect, Shed::Yes, settlement).errors(style);
    table.add(r, Method::Post, emit_path, run, Shed::Yes, emit).errors(style);
}

fn bad(message: impl Into<std::borrow::Cow<'static, str>>) -> Reply {
    Reply::error(ErrorCode::BadRequest, message)
}

fn not_found() -> Reply {
    Reply::error(ErrorCode::NotFound, "epoch manifest not found")
}

fn conflict() -> Reply {
    let message = "epoch already computed with different policy_hash or inputs_cid";
    Reply::error(ErrorCode::Conflict, message)
}

fn internal(message: impl Into<std::borrow::Cow<'static, str>>) -> Reply {
    Reply::error(ErrorCode::Internal, message)
}

fn busy(message: &'static str) -> Reply {
    let mut reply = Reply::error(ErrorCode::Busy, message);
    reply.retry_after_s = Some(1);
    reply
}

/// The epoch id of the path, checked.
fn epoch_of(params: &Params<'_>) -> Result<String, Reply> {
    let epoch_id = params.decoded(0).unwrap_or_default().into_owned();
    validate_epoch_id(&epoch_id).map_err(|refusal| refused(None, refusal))?;
    Ok(epoch_id)
}

/// A refusal as answered (a quarantine is counted).
fn refused(rewarder: Option<&Rewarder>, refusal: Refusal) -> Reply {
    match refusal {
        Refusal::BadRequest(message) => bad(message),
        Refusal::Quarantined(message) => {
            if let Some(rewarder) = rewarder {
                let mut metrics = rewarder.metrics.borrow_mut();
                metrics.quarantined += 1;
                metrics.invariant_fail += 1;
            }
            tracing::warn!(%message, "a reward run was quarantined");
            Reply::error(ErrorCode::Quarantined, message)
        }
    }
}

/// `POST /rewarder/epochs/{epoch_id}/compute`: the run's manifest — the
/// stored one when the epoch holds this run already. The epoch's stored
/// run is asked of its owner first; then one job on the workers parses the
/// body (its snapshot's strings borrowed from it), checks it in the
/// original's order, and either reads the stored manifest (a replay) or
/// seals, computes and stores a new one, which the owner then keeps.
fn compute(rewarder: &Rc<Rewarder>, request: &Request<'_>, params: &Params<'_>) -> Handled {
    let started = Instant::now();
    if let Err(reply) = request.says_json() {
        return Handled::Now(reply);
    }
    let reload = &rewarder.core.node.reload;
    let (inflight_max, queue_max) =
        (get(&reload.rewarder_inflight_max), get(&reload.rewarder_work_queue_max));
    let Some(entry) = rewarder.admission.enter(inflight_max, queue_max) else {
        return Handled::Now(busy("compute workers exhausted"));
    };
    let epoch_id = params.decoded(0).unwrap_or_default().into_owned();
    let body = request.body_bytes();
    let rewarder = rewarder.clone();
    Handled::Later(Box::pin(async move {
        if let Entry::Queued(turn) = entry {
            if turn.await.is_err() {
                return Reply::error(ErrorCode::Unavailable, "the shard stopped");
            }
        }
        let _slot = Slot(&rewarder);
        let reply = compute_run(&rewarder, epoch_id, body).await;
        rewarder.metrics.borrow_mut().compute.record(started.elapsed());
        reply
    }))
}

/// Gives the compute slot back when the compute ends, however it ends.
struct Slot<'a>(&'a Rewarder);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.admission.leave(get(&self.0.core.node.reload.rewarder_inflight_max));
    }
}

async fn compute_run(rewarder: &Rc<Rewarder>, epoch_id: String, body: bytes::Bytes) -> Reply {
    let owner = rewarder.owner(&epoch_id);
    let (stored, known) = if validate_epoch_id(&epoch_id).is_ok() {
        match rewarder.call(owner, Call::Find { epoch_id: epoch_id.clone() }).await {
            Ok(Answer::Found(stored, known)) => (stored, known),
            Ok(other) => unreachable!("a find answered {other:?}"),
            Err(error) => return mesh_failure(error),
        }
    } else {
        (None, Vec::new())
    };
    let job = Job {
        epoch_id: epoch_id.clone(),
        body,
        stored,
        known,
        salt: rewarder.core.config.rewarder.idempotency_salt.clone(),
        attest: (rewarder.core.config.passport.pq_mode != crate::config::PqMode::Off)
            .then(|| rewarder.passport.keys()),
        shared: rewarder.shared.clone(),
        index: rewarder.index.shared().clone(),
    };
    let (record, bytes, payouts, body) =
        match on_worker(rewarder, Lane::Batch, move || job.run()).await {
            Ok(Outcome::Computed { record, bytes, payouts, body }) => (record, bytes, payouts, body),
            Ok(Outcome::Replayed { bytes, learn }) => {
                {
                    let mut metrics = rewarder.metrics.borrow_mut();
                    metrics.replay += 1;
                    metrics.replay_known += u64::from(learn.is_none());
                }
                if let Some((manifest, body)) = learn {
                    learn_body(rewarder, owner, epoch_id, manifest, body).await;
                }
                return Reply::json_owned(200, bytes);
            }
        Ok(Outcome::Conflict) => {
            rewarder.metrics.borrow_mut().conflict += 1;
            return conflict();
        }
        Ok(Outcome::Refused(refusal)) => return refused(Some(rewarder), refusal),
        Ok(Outcome::Answer(reply)) => return reply,
        Err(reply) => return reply,
    };
    let (ledger, manifest) = (record.ledger, record.manifest);
    match rewarder.call(owner, Call::Store { record: *record }).await {
        Ok(Answer::Stored(Stored::Kept)) => {
            {
                let mut metrics = rewarder.metrics.borrow_mut();
                metrics.ok += 1;
                metrics.intents_planned += payouts;
                if ledger == LedgerResult::DryRun {
                    metrics.intents_dry_run += payouts;
                }
            }
            learn_body(rewarder, owner, epoch_id, manifest, body).await;
            Reply::json_owned(200, bytes)
        }
        Ok(Answer::Stored(Stored::Existing(stored))) => {
            rewarder.metrics.borrow_mut().replay += 1;
            manifest_reply(rewarder, &stored).await
        }
        Ok(Answer::Stored(Stored::Conflict)) => {
            rewarder.metrics.borrow_mut().conflict += 1;
            conflict()
        }
        Ok(Answer::Stored(Stored::Failed(reply))) => reply,
        Ok(other) => unreachable!("a store answered {other:?}"),
        Err(error) => mesh_failure(error),
    }
}

/// Tells the epoch's owner that `body` is answered by its run of
/// `manifest` (a failed call only costs a parse next time).
async fn learn_body(
    rewarder: &Rc<Rewarder>,
    owner: usize,
    epoch_id: String,
    manifest: [u8; 32],
    body: [u8; 32],
) {
    if let Err(error) = rewarder.call(owner, Call::Learn { epoch_id, manifest, body }).await {
        tracing::debug!(?error, "a request body was not remembered");
    }
}

/// A compute's work on a worker thread.
struct Job {
    epoch_id: String,
    body: bytes::Bytes,
    /// The epoch's stored run, when it has one, and digests of the bodies
    /// it is known to answer.
    stored: Option<RunRecord>,
    known: Vec<[u8; 32]>,
    salt: String,
    /// The keys that sign the manifest (`pq_mode` on).
    attest: Option<Arc<Keyring>>,
    shared: Arc<RewarderShared>,
    index: Arc<crate::services::index::IndexShared>,
}

/// What the job found.
enum Outcome {
    /// A new manifest, stored; its record for the epoch's owner, and the
    /// digest of the body that made it.
    Computed { record: Box<RunRecord>, bytes: Vec<u8>, payouts: u64, body: [u8; 32] },
    /// The stored run's manifest; (its digest, the body's) when the body
    /// was not known to be answered by it.
    Replayed { bytes: Vec<u8>, learn: Option<([u8; 32], [u8; 32])> },
    Conflict,
    Refused(Refusal),
    Answer(Reply),
}

impl From<Refusal> for Outcome {
    fn from(refusal: Refusal) -> Outcome {
        Outcome::Refused(refusal)
    }
}

impl Job {
    fn run(self) -> Outcome {
        match self.checked() {
            Ok(outcome) | Err(outcome) => outcome,
        }
    }

    /// The original's checks in its order: the body's shape, the epoch id,
    /// `inputs_cid`, the case of `policy_hash`; then the stored run has its
    /// say; then the snapshot is sealed and the policy resolved.
    fn checked(self) -> Result<Outcome, Outcome> {
        // The same bytes as a body the stored run answers: the same answer,
        // without parsing them again (the seed's steady load is replays).
        let digest = *blake3::hash(&self.body).as_bytes();
        if let Some(stored) = self.stored.as_ref().filter(|_| self.known.contains(&digest)) {
            let bytes = read_manifest(&self.shared, stored)?;
            return Ok(Outcome::Replayed { bytes, learn: None });
        }
        let body: ComputeRequest<'_> = shaped_json(&self.body).map_err(Outcome::Answer)?;
        validate_epoch_id(&self.epoch_id)?;
        let inputs_cid = parse_inputs_cid(&body.inputs_cid)?;
        if body.policy_hash != body.policy_hash.to_ascii_lowercase() {
            return Err(Outcome::Answer(bad("policy_hash must be lowercase canonical b3 hex")));
        }
        let key = run_key(&self.salt, &self.epoch_id, &body.policy_hash, &inputs_cid);
        if let Some(stored) = &self.stored {
            if stored.run_key != digest_of(&key).expect("run keys are b3 digests") {
                return Ok(Outcome::Conflict);
            }
            // A dry run asks for nothing new; a live one only promotes a dry run.
            if body.dry_run || stored.ledger != LedgerResult::DryRun {
                let bytes = read_manifest(&self.shared, stored)?;
                return Ok(Outcome::Replayed { bytes, learn: Some((stored.manifest, digest)) });
            }
        }
        let object;
        let mut snapshot = match body.snapshot {
            Some(snapshot) => snapshot,
            None => {
                object = snapshot_object(&self.index, &inputs_cid)?;
                serde_json::from_slice(&object).map_err(|e| {
                    Outcome::Answer(bad(format!(
                        "the object under inputs_cid is not a snapshot: {e}"
                    )))
                })?
            }
        };
        seal(&mut snapshot, &inputs_cid)?;
        let policy = Policy::resolve(body.policy, &body.policy_id, &body.policy_hash)?;
        let ledger = if body.dry_run { LedgerResult::DryRun } else { LedgerResult::Accepted };
        let mut manifest = compute_manifest(&Run {
            epoch_id: &self.epoch_id,
            run_key: &key,
            inputs_cid: &inputs_cid,
            snapshot: &snapshot,
            policy: &policy,
            ledger,
        })?;
        if let Some(keys) = self.attest {
            let set = keys.current();
            let message = manifest.attestation_message();
            manifest.attestation = Some(Attestation {
                sig_ed25519: Some(to_base64url(&set.sign_ed25519(&message))),
                sig_pq: Some(to_base64url(&set.sign_ml_dsa(&message))),
                signed_at_millis: crate::clock::unix_now_ms(),
                kid: Some(set.kid),
            });
        }
        let bytes = manifest.to_bytes();
        let record = RunRecord::of(&manifest, &bytes);
        match self.shared.manifests.put(&Cid(record.manifest), &bytes) {
            Ok(_) => {}
            Err(PutError::Full) => {
                let message = "the manifest store is full (rewarder.manifests_bytes_max)";
                return Err(Outcome::Answer(Reply::error(ErrorCode::LimitsExceeded, message)));
            }
            Err(error) => {
                tracing::error!(%error, "a manifest was not stored");
                return Err(Outcome::Answer(internal("the manifest was not stored")));
            }
        }
        let payouts = manifest.payouts.len() as u64;
        Ok(Outcome::Computed { record: Box::new(record), bytes, payouts, body: digest })
    }
}

/// Runs `work` on a worker lane — runs on the batch lane (SCHED_IDLE
/// threads of their own: a run takes what the shards leave), short reads
/// and writes of the stores on the normal one: its result, or the answer
/// when the lane's queue is full (429) or the shard stopped (503).
async fn on_worker<T: Send + 'static>(
    rewarder: &Rewarder,
    lane: Lane,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Reply> {
    let core = &rewarder.core;
    let Ok(done) = core.returns.run(&core.workers, lane, work) else {
        return Err(busy("the workers' queue is full"));
    };
    done.await.ok_or_else(|| Reply::error(ErrorCode::Unavailable, "the shard stopped"))
}

/// The bytes of the index object under `inputs_cid`: a snapshot sent
/// ahead of the compute (`PUT /v1/index/objects`).
fn snapshot_object(
    index: &crate::services::index::IndexShared,
    inputs_cid: &str,
) -> Result<Vec<u8>, Outcome> {
    let cid = Cid(digest_of(inputs_cid).expect("a parsed inputs_cid"));
    match index.objects.get(&cid) {
        Ok(Read::Found(bytes)) => Ok(bytes),
        Ok(Read::Missing | Read::Corrupt) => {
            Err(Outcome::Answer(bad("no inline snapshot, and no object under inputs_cid")))
        }
        Err(error) => {
            tracing::error!(%error, "reading a snapshot object");
            Err(Outcome::Answer(internal("the snapshot could not be read")))
        }
    }
}

/// The stored manifest's bytes, read on a worker.
fn read_manifest(shared: &RewarderShared, record: &RunRecord) -> Result<Vec<u8>, Outcome> {
    match shared.manifests.get(&Cid(record.manifest)) {
        Ok(Read::Found(bytes)) => Ok(bytes),
        Ok(Read::Missing | Read::Corrupt) => {
            tracing::error!(epoch = %record.epoch_id, "a stored manifest is missing or corrupt");
            Err(Outcome::Answer(internal("the stored manifest could not be read")))
        }
        Err(error) => {
            tracing::error!(%error, "reading a manifest");
            Err(Outcome::Answer(internal("the stored manifest could not be read")))
        }
    }
}

/// The stored manifest's bytes.
async fn manifest_bytes(rewarder: &Rewarder, record: &RunRecord) -> Result<Vec<u8>, Reply> {
    let shared = rewarder.shared.clone();
    let record = record.clone();
    let read = move || read_manifest(&shared, &record);
    on_worker(rewarder, Lane::Normal, read).await?.map_err(|outcome| {
        match outcome {
            Outcome::Answer(reply) => reply,
            _ => internal("the stored manifest could not be read"),
        }
    })
}

async fn manifest_reply(rewarder: &Rewarder, record: &RunRecord) -> Reply {
    match manifest_bytes(rewarder, record).await {
        Ok(bytes) => Reply::json_owned(200, bytes),
        Err(reply) => reply,
    }
}

/// The epoch's stored run, from its owner.
async fn find(rewarder: &Rc<Rewarder>, epoch_id: String) -> Result<RunRecord, Reply> {
    let owner = rewarder.owner(&epoch_id);
    match rewarder.call(owner, Call::Find { epoch_id }).await {
        Ok(Answer::Found(Some(record), _)) => Ok(record),
        Ok(Answer::Found(None, _)) => Err(not_found()),
        Ok(other) => unreachable!("a find answered {other:?}"),
        Err(error) => Err(mesh_failure(error)),
    }
}

/// `GET /rewarder/epochs/{epoch_id}`: the stored manifest, byte for byte.
fn get_epoch(rewarder: &Rc<Rewarder>, _: &Request<'_>, params: &Params<'_>) -> Handled {
    let epoch_id = match epoch_of(params) {
        Ok(epoch_id) => epoch_id,
        Err(reply) => return Handled::Now(reply),
    };
    let rewarder = rewarder.clone();
    Handled::Later(Box::pin(async move {
        match find(&rewarder, epoch_id).await {
            Ok(record) => manifest_reply(&rewarder, &record).await,
            Err(reply) => reply,
        }
    }))
}

/// `GET /rewarder/epochs/{epoch_id}/settlement`: the wallet issues the
/// stored manifest plans, with their keys and memos.
fn settlement(rewarder: &Rc<Rewarder>, _: &Request<'_>, params: &Params<'_>) -> Handled {
    let epoch_id = match epoch_of(params) {
        Ok(epoch_id) => epoch_id,
        Err(reply) => return Handled::Now(reply),
    };
    let rewarder = rewarder.clone();
    Handled::Later(Box::pin(async move {
        let manifest = match find(&rewarder, epoch_id).await {
            Ok(record) => match stored_manifest(&rewarder, &record).await {
                Ok(manifest) => manifest,
                Err(reply) => return reply,
            },
            Err(reply) => return reply,
        };
        let settlement = Settlement::of(&manifest, WALLET_ISSUE_PATH);
        Reply::json_owned(200, serde_json::to_vec(&settlement).expect("a settlement serializes"))
    }))
}

/// `POST /rewarder/epochs/{epoch_id}/emit`: one wallet issue per payout of
/// the stored live run, each with its key and memo, committed by the
/// wallet of this node (no HTTP hop); a payout issued before, by an
/// earlier emit or one cut short by a crash, is found and not issued again.
/// While the ledger cannot take them (safe mode, or an issue slower than
/// `rewarder.ledger_deadline_ms`), the rest is owed: marked durably,
/// answered 202 with `quarantine: true`, and issued by the node itself once
/// the ledger takes writes again (`Rewarder::tick`).
fn emit(rewarder: &Rc<Rewarder>, _: &Request<'_>, params: &Params<'_>) -> Handled {
    let epoch_id = match epoch_of(params) {
        Ok(epoch_id) => epoch_id,
        Err(reply) => return Handled::Now(reply),
    };
    let rewarder = rewarder.clone();
    Handled::Later(Box::pin(async move {
        let record = match find(&rewarder, epoch_id).await {
            Ok(record) => record,
            Err(reply) => return reply,
        };
        if record.ledger == LedgerResult::DryRun {
            return bad(
                "cannot emit settlement for dry-run manifest; recompute with dry_run=false first",
            );
        }
        #[derive(Serialize)]
        struct Emitted<'a> {
            result: &'static str,
            #[serde(skip_serializing_if = "std::ops::Not::not")]
            quarantine: bool,
            batch: &'a Settlement,
            #[serde(skip_serializing_if = "Option::is_none")]
            receipts: Option<Vec<serde_json::Value>>,
        }
        let (status, body) = match emit_run(&rewarder, &record).await {
            Emission::Done { batch, receipts } => {
                if let Err(reply) = mark(&rewarder, &record.epoch_id, false).await {
                    return reply;
                }
                let body = Emitted { result: "accepted", quarantine: false, batch: &batch, receipts: Some(receipts) };
                (200, serde_json::to_vec(&body))
            }
            Emission::Deferred { batch } => {
                if let Err(reply) = mark(&rewarder, &record.epoch_id, true).await {
                    return reply;
                }
                let body = Emitted { result: "quarantined", quarantine: true, batch: &batch, receipts: None };
                (202, serde_json::to_vec(&body))
            }
            Emission::Refused(reply) => return reply,
        };
        Reply::json_owned(status, body.expect("an emission serializes"))
    }))
}

/// Marks the epoch's emission as owed (`owed`) or done, on a worker.
async fn mark(rewarder: &Rewarder, epoch_id: &str, owed: bool) -> Result<(), Reply> {
    let shared = rewarder.shared.clone();
    let epoch_id = epoch_id.to_owned();
    let work = move || {
        if owed { shared.pending.add(&epoch_id) } else { shared.pending.remove(&epoch_id) }
    };
    on_worker(rewarder, Lane::Normal, work).await?.map_err(|error| {
        tracing::error!(%error, "marking a pending emission");
        internal("the pending emission could not be marked")
    })
}

/// How an emission ended.
pub enum Emission {
    /// Every payout issued, now or before: the receipts.
    Done { batch: Settlement, receipts: Vec<serde_json::Value> },
    /// The ledger cannot take it now; what is left is owed.
    Deferred { batch: Settlement },
    Refused(Reply),
}

/// Issues the payouts of `record` not issued yet, in account order.
pub async fn emit_run(rewarder: &Rc<Rewarder>, record: &RunRecord) -> Emission {
    let manifest = match stored_manifest(rewarder, record).await {
        Ok(manifest) => manifest,
        Err(reply) => return Emission::Refused(reply),
    };
    let batch = Settlement::of(&manifest, WALLET_ISSUE_PATH);
    let config = &rewarder.core.config.rewarder;
    let deadline = std::time::Duration::from_millis(config.ledger_deadline_ms);
    let retry = Retry { attempts_max: 1 + config.ledger_retries_max, ..LEDGER_RETRY };
    let mut receipts = Vec::with_capacity(batch.requests.len());
    for (at, issue) in batch.requests.iter().enumerate() {
        if rewarder.core.log.in_safe_mode() {
            rewarder.metrics.borrow_mut().emissions_deferred += 1;
            return Emission::Deferred { batch };
        }
        let key = issue.idempotency_key.as_deref().expect("settlements key every issue");
        let memo = issue.memo.as_deref().expect("settlements memo every issue");
        let started = Instant::now();
        // Refused for now (429, 503): tried again, `ledger_retries_max`
        // times; refused still, the emission goes on later.
        let issued = retry
            .run(
                || async {
                    match crate::services::wallet::routes::issue_for(
                        &rewarder.wallet,
                        &issue.to,
                        issue.asset,
                        issue.amount_minor.0,
                        memo,
                        key,
                    )
                    .await
                    {
                        Issued::Refused(reply) => Err(reply),
                        issued => Ok(issued),
                    }
                },
                |reply| matches!(reply.error_code(), Some(ErrorCode::Busy | ErrorCode::Unavailable)),
            )
            .await;
        let receipt = match issued {
            Retried::Done(Issued::Committed(receipt)) => {
                rewarder.metrics.borrow_mut().intents_accepted += 1;
                receipt
            }
            Retried::Done(Issued::Replayed(receipt)) => {
                rewarder.metrics.borrow_mut().intents_dup += 1;
                receipt
            }
            Retried::Done(Issued::Refused(_)) => unreachable!("refusals are errors here"),
            Retried::GaveUp(reply) => {
                tracing::warn!(epoch = %record.epoch_id, status = reply.status, "the ledger refused a payout after every retry: the emission goes on later");
                rewarder.metrics.borrow_mut().emissions_deferred += 1;
                return Emission::Deferred { batch };
            }
            Retried::Failed(reply) if reply.error_code() == Some(ErrorCode::Degraded) => {
                rewarder.metrics.borrow_mut().emissions_deferred += 1;
                return Emission::Deferred { batch };
            }
            Retried::Failed(reply) => {
                rewarder.metrics.borrow_mut().intents_error += 1;
                return Emission::Refused(issue_refused(&issue.to, reply));
            }
        };
        // The original re-serializes the wallet's answers: keys sorted.
        let receipt: serde_json::Value = serde_json::from_slice(&receipt).expect("receipts are JSON");
        receipts.push(receipt);
        if started.elapsed() > deadline && at + 1 < batch.requests.len() {
            tracing::warn!(epoch = %record.epoch_id, elapsed = ?started.elapsed(), "the ledger is slow: the emission goes on later");
            rewarder.metrics.borrow_mut().emissions_deferred += 1;
            return Emission::Deferred { batch };
        }
    }
    Emission::Done { batch, receipts }
}

/// A payout the wallet did not issue: the emission stops there (what was
/// issued stays issued, and a later emit goes on from it).
fn issue_refused(to: &str, reply: Reply) -> Reply {
    let (code, message) = match &reply.body {
        crate::http::reply::Body::Error { code, message, .. } => (*code, message.to_string()),
        _ => (ErrorCode::Internal, String::new()),
    };
    match code {
        ErrorCode::Busy => busy("a payout of this run is being issued; retry"),
        _ => Reply::error(
            ErrorCode::Unavailable,
            format!("wallet issue to {to} rejected with HTTP {}: {message}", reply.status),
        ),
    }
}

/// The stored manifest, parsed.
async fn stored_manifest(rewarder: &Rewarder, record: &RunRecord) -> Result<Manifest, Reply> {
    let bytes = manifest_bytes(rewarder, record).await?;
    serde_json::from_slice(&bytes).map_err(|error| {
        tracing::error!(%error, "a stored manifest does not parse");
        internal("the stored manifest could not be read")
    })
}
