//! The rewarder's routes (SPEC §8), with the original's checks in its
//! order, its texts and its nested envelope (`ErrorStyle::Rewarder`).

use super::{Answer, Call, Rewarder, Stored};
use crate::http::reply::mesh_failure;
use crate::http::routes::shaped_json;
use crate::http::{Access, Handled, Params, Reply, Request, RouteTable, Shed};
use crate::service::Service;
use crate::services::index::objects::{PutError, Read};
use crate::services::wallet::routes::Issued;
use crate::workers::Lane;
use ron_proto::ErrorCode;
use ron_proto::error::ErrorStyle;
use ron_proto::http::Method;
use ron_proto::index::Cid;
use ron_proto::rewarder::{
    Attestation, ComputeRequest, LedgerResult, Manifest, Policy, Refusal, Run, RunRecord,
    Settlement, Snapshot, compute as compute_manifest, digest_of, parse_inputs_cid, run_key, seal,
    validate_epoch_id,
};
use ron_proto::token::scope::{REWARDER_INSPECT, REWARDER_RUN};
use ron_proto::token::to_base64url;
use serde::Serialize;
use std::rc::Rc;
use std::time::Instant;

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
/// stored one when the epoch holds this run already.
fn compute(rewarder: &Rc<Rewarder>, request: &Request<'_>, params: &Params<'_>) -> Handled {
    let started = Instant::now();
    if let Err(reply) = request.says_json() {
        return Handled::Now(reply);
    }
    // A large body (a snapshot of many actors) is parsed on a worker, not
    // on the shard's thread; a small one at once.
    let parsed = if request.body.len() <= INLINE_PARSE_BYTES_MAX {
        Ok(shaped_json::<ComputeRequest>(request.body))
    } else {
        let bytes = request.body.to_vec();
        let core = &rewarder.core;
        match core.returns.run(&core.workers, Lane::Normal, move || shaped_json(&bytes)) {
            Ok(parsing) => Err(parsing),
            Err(_) => return Handled::Now(busy("the workers' queue is full")),
        }
    };
    let epoch_id = params.decoded(0).unwrap_or_default().into_owned();
    let rewarder = rewarder.clone();
    Handled::Later(Box::pin(async move {
        let body = match parsed {
            Ok(parsed) => parsed,
            Err(parsing) => parsing.await.unwrap_or_else(|| {
                Err(Reply::error(ErrorCode::Unavailable, "the shard stopped"))
            }),
        };
        let reply = match body {
            Ok(body) => checked_run(&rewarder, epoch_id, body).await,
            Err(reply) => reply,
        };
        rewarder.metrics.borrow_mut().compute.record(started.elapsed());
        reply
    }))
}

/// Bodies parsed on the shard's thread, at most (0.5 MB of JSON takes it
/// about 2 ms).
const INLINE_PARSE_BYTES_MAX: usize = 64 << 10;

/// The original's checks after the body's, in its order, then the run.
async fn checked_run(rewarder: &Rc<Rewarder>, epoch_id: String, body: ComputeRequest) -> Reply {
    if let Err(refusal) = validate_epoch_id(&epoch_id) {
        return refused(None, refusal);
    }
    let inputs_cid = match parse_inputs_cid(&body.inputs_cid) {
        Ok(cid) => cid,
        Err(refusal) => return refused(None, refusal),
    };
    // Only the case here, as the original: the form is checked with the
    // policy, after a stored run had its say.
    if body.policy_hash != body.policy_hash.to_ascii_lowercase() {
        return bad("policy_hash must be lowercase canonical b3 hex");
    }
    let salt = &rewarder.core.config.rewarder.idempotency_salt;
    let key = run_key(salt, &epoch_id, &body.policy_hash, &inputs_cid);
    run(rewarder, epoch_id, inputs_cid, key, body).await
}

/// Releases a compute slot when the compute ends, however it ends.
struct Slot<'a>(&'a Rewarder);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.inflight.set(self.0.inflight.get() - 1);
    }
}

async fn run(
    rewarder: &Rc<Rewarder>,
    epoch_id: String,
    inputs_cid: String,
    key: String,
    body: ComputeRequest,
) -> Reply {
    let owner = rewarder.owner(&epoch_id);
    let stored = match rewarder.call(owner, Call::Find { epoch_id: epoch_id.clone() }).await {
        Ok(Answer::Found(stored)) => stored,
        Ok(other) => unreachable!("a find answered {other:?}"),
        Err(error) => return mesh_failure(error),
    };
    let key_digest = digest_of(&key).expect("run keys are b3 digests");
    if let Some(stored) = stored {
        if stored.run_key != key_digest {
            rewarder.metrics.borrow_mut().conflict += 1;
            return conflict();
        }
        // A dry run asks for nothing new; a live one only promotes a dry run.
        if body.dry_run || stored.ledger != LedgerResult::DryRun {
            rewarder.metrics.borrow_mut().replay += 1;
            return manifest_reply(rewarder, &stored).await;
        }
    }
    if rewarder.inflight.get() >= rewarder.core.config.rewarder.inflight_max {
        return busy("compute workers exhausted");
    }
    rewarder.inflight.set(rewarder.inflight.get() + 1);
    let _slot = Slot(rewarder);
    let snapshot = match body.snapshot {
        Some(snapshot) => snapshot,
        None => match stored_snapshot(rewarder, &inputs_cid).await {
            Ok(snapshot) => snapshot,
            Err(reply) => return reply,
        },
    };
    let ComputeRequest { policy, policy_id, policy_hash, dry_run, .. } = body;
    let ledger = if dry_run { LedgerResult::DryRun } else { LedgerResult::Accepted };
    let shared = rewarder.shared.clone();
    let attest = (rewarder.core.config.passport.pq_mode != crate::config::PqMode::Off)
        .then(|| rewarder.passport.keys());
    let work = move || -> Result<(RunRecord, Vec<u8>, u64), Failure> {
        let mut snapshot = snapshot;
        seal(&mut snapshot, &inputs_cid)?;
        let policy = Policy::resolve(policy, &policy_id, &policy_hash)?;
        let mut manifest = compute_manifest(&Run {
            epoch_id: &epoch_id,
            run_key: &key,
            inputs_cid: &inputs_cid,
            snapshot: &snapshot,
            policy: &policy,
            ledger,
        })?;
        if let Some(keys) = attest {
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
        shared.manifests.put(&Cid(record.manifest), &bytes).map_err(Failure::Store)?;
        Ok((record, bytes, manifest.payouts.len() as u64))
    };
    let (record, bytes, payouts) = match on_worker(rewarder, work).await {
        Ok(Ok(done)) => done,
        Ok(Err(Failure::Refused(refusal))) => return refused(Some(rewarder), refusal),
        Ok(Err(Failure::Store(PutError::Full))) => {
            let message = "the manifest store is full (rewarder.manifests_bytes_max)";
            return Reply::error(ErrorCode::LimitsExceeded, message);
        }
        Ok(Err(Failure::Store(error))) => {
            tracing::error!(%error, "a manifest was not stored");
            return internal("the manifest was not stored");
        }
        Err(reply) => return reply,
    };
    let ledger = record.ledger;
    match rewarder.call(owner, Call::Store { record }).await {
        Ok(Answer::Stored(Stored::Kept)) => {
            let mut metrics = rewarder.metrics.borrow_mut();
            metrics.ok += 1;
            metrics.intents_planned += payouts;
            if ledger == LedgerResult::DryRun {
                metrics.intents_dry_run += payouts;
            }
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

/// Why a compute on the workers did not give a manifest.
enum Failure {
    Refused(Refusal),
    Store(PutError),
}

impl From<Refusal> for Failure {
    fn from(refusal: Refusal) -> Failure {
        Failure::Refused(refusal)
    }
}

/// Runs `work` on the normal worker lane: its result, or the answer when
/// the lane's queue is full (429) or the shard stopped (503).
async fn on_worker<T: Send + 'static>(
    rewarder: &Rewarder,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Reply> {
    let core = &rewarder.core;
    let Ok(done) = core.returns.run(&core.workers, Lane::Normal, work) else {
        return Err(busy("the workers' queue is full"));
    };
    done.await.ok_or_else(|| Reply::error(ErrorCode::Unavailable, "the shard stopped"))
}

/// The snapshot kept as an index object under `inputs_cid` (its canonical
/// bytes, as `PUT /v1/index/objects` took them).
async fn stored_snapshot(rewarder: &Rewarder, inputs_cid: &str) -> Result<Snapshot, Reply> {
    let cid = Cid(digest_of(inputs_cid).expect("a parsed inputs_cid"));
    let index = rewarder.index.shared().clone();
    match on_worker(rewarder, move || index.objects.get(&cid)).await? {
        Ok(Read::Found(bytes)) => serde_json::from_slice(&bytes)
            .map_err(|e| bad(format!("the object under inputs_cid is not a snapshot: {e}"))),
        Ok(Read::Missing | Read::Corrupt) => {
            Err(bad("no inline snapshot, and no object under inputs_cid"))
        }
        Err(error) => {
            tracing::error!(%error, "reading a snapshot object");
            Err(internal("the snapshot could not be read"))
        }
    }
}

/// The stored manifest's bytes.
async fn manifest_bytes(rewarder: &Rewarder, record: &RunRecord) -> Result<Vec<u8>, Reply> {
    let cid = Cid(record.manifest);
    let shared = rewarder.shared.clone();
    match on_worker(rewarder, move || shared.manifests.get(&cid)).await? {
        Ok(Read::Found(bytes)) => Ok(bytes),
        Ok(Read::Missing | Read::Corrupt) => {
            tracing::error!(epoch = %record.epoch_id, "a stored manifest is missing or corrupt");
            Err(internal("the stored manifest could not be read"))
        }
        Err(error) => {
            tracing::error!(%error, "reading a manifest");
            Err(internal("the stored manifest could not be read"))
        }
    }
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
        Ok(Answer::Found(Some(record))) => Ok(record),
        Ok(Answer::Found(None)) => Err(not_found()),
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
    on_worker(rewarder, work).await?.map_err(|error| {
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
    let deadline = std::time::Duration::from_millis(rewarder.core.config.rewarder.ledger_deadline_ms);
    let mut receipts = Vec::with_capacity(batch.requests.len());
    for (at, issue) in batch.requests.iter().enumerate() {
        if rewarder.core.log.in_safe_mode() {
            rewarder.metrics.borrow_mut().emissions_deferred += 1;
            return Emission::Deferred { batch };
        }
        let key = issue.idempotency_key.as_deref().expect("settlements key every issue");
        let memo = issue.memo.as_deref().expect("settlements memo every issue");
        let started = Instant::now();
        let issued = crate::services::wallet::routes::issue_for(
            &rewarder.wallet,
            &issue.to,
            issue.asset,
            issue.amount_minor.0,
            memo,
            key,
        )
        .await;
        let receipt = match issued {
            Issued::Committed(receipt) => {
                rewarder.metrics.borrow_mut().intents_accepted += 1;
                receipt
            }
            Issued::Replayed(receipt) => {
                rewarder.metrics.borrow_mut().intents_dup += 1;
                receipt
            }
            Issued::Refused(reply) if reply.error_code() == Some(ErrorCode::Degraded) => {
                rewarder.metrics.borrow_mut().emissions_deferred += 1;
                return Emission::Deferred { batch };
            }
            Issued::Refused(reply) => {
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
