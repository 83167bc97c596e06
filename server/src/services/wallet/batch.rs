//! Batches of writes: `POST /v1/transfers` `{"transfers": [...]}` and
//! `POST /v1/issues` `{"issues": [...]}`, up to `wallet.batch_transfers_max`
//! writes each, with the semantics of TigerBeetle's `create_transfers`:
//!
//! * each write is a transfer (or issue) as its own route takes it, with its
//!   own idempotency key and nonce, and gets its own result, in order: `OK`
//!   with its txid and seq, or the code and message its own route would
//!   answer (a write committed before with the same key and body is `OK`
//!   again, `replayed`);
//! * `"linked": true` links a write to the next one: a chain succeeds or
//!   fails whole (the others fail with `LINKED_EVENT_FAILED`; a chain left
//!   open by the last write fails with `LINKED_EVENT_CHAIN_OPEN`);
//! * a failed write also fails the payer's later nonces in the batch (they
//!   could not commit without it);
//! * every write that succeeds is in one log record, committed at once;
//! * while a batch is under way, no later nonce of its payers is reserved
//!   by anyone else (it waits, or is refused with 429): were one of the
//!   batch's nonces given back, the later one would commit past a gap.
//!
//! The answer is 200 whenever the batch was looked at, whatever each write
//! came to; a body that does not parse, or too many writes, is refused whole.
//! Each scope shard reserves its writes in one call, in batch order.

use super::routes::{Payment, Write, bad, checked_payment, facts, rejection};
use crate::services::passport::access::{self, Presented};
use super::{Answer, Call, Wallet};
use crate::clock::unix_now_ms;
use crate::core::mesh::{MeshError, Wait};
use crate::http::reply::{Body, degraded, link_failure, mesh_failure};
use crate::http::{Amount, Handled, Params, Reply, Request};
use crate::limits::RELEASE_RETRY;
use crate::retry::Outcome;
use crate::log::{Append, LogAnswer, LogCall, Part};
use crate::service::Service;
use ron_proto::ErrorCode;
use ron_proto::merkle;
use ron_proto::token::scope;
use ron_proto::wallet::{CompactString, OpKind, TxId, TxidText, WalletOp};
use ron_shards::wallet::{Reservation, parts, scope_account};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::Arc;

// A batch's strings are borrowed from its body (a copy simd-json unescapes
// in place); each write's operation copies them once.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TransfersBody<'a> {
    #[serde(borrow)]
    transfers: Vec<TransferItem<'a>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TransferItem<'a> {
    #[serde(borrow)]
    from: Cow<'a, str>,
    #[serde(borrow)]
    to: Cow<'a, str>,
    #[serde(borrow)]
    asset: Cow<'a, str>,
    amount_minor: Amount,
    nonce: u64,
    #[serde(borrow)]
    memo: Option<Cow<'a, str>>,
    #[serde(borrow)]
    idempotency_key: Cow<'a, str>,
    #[serde(default)]
    linked: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IssuesBody<'a> {
    #[serde(borrow)]
    issues: Vec<IssueItem<'a>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IssueItem<'a> {
    #[serde(borrow)]
    to: Cow<'a, str>,
    #[serde(borrow)]
    asset: Cow<'a, str>,
    amount_minor: Amount,
    #[serde(borrow)]
    memo: Option<Cow<'a, str>>,
    #[serde(borrow)]
    idempotency_key: Cow<'a, str>,
    #[serde(default)]
    linked: bool,
}

/// `POST /v1/transfers`.
pub(super) fn transfers(wallet: &Rc<Wallet>, request: &Request<'_>, _: &Params<'_>) -> Handled {
    let mut copy = Vec::new();
    let body = match request.json_in::<TransfersBody>(&mut copy) {
        Ok(body) => body,
        Err(reply) => return Handled::Now(reply),
    };
    let items = body.transfers.into_iter().map(|t| {
        let payment = Payment {
            kind: OpKind::Transfer,
            from: Some(t.from),
            to: Some(t.to),
            asset: t.asset,
            amount_minor: t.amount_minor,
            nonce: Some(t.nonce),
            timeout_s: None,
            memo: t.memo,
            idempotency_key: None,
        };
        (payment, t.idempotency_key, t.linked)
    });
    batch(wallet, request, items.collect(), scope::WALLET_TRANSFER)
}

/// `POST /v1/issues`.
pub(super) fn issues(wallet: &Rc<Wallet>, request: &Request<'_>, _: &Params<'_>) -> Handled {
    let mut copy = Vec::new();
    let body = match request.json_in::<IssuesBody>(&mut copy) {
        Ok(body) => body,
        Err(reply) => return Handled::Now(reply),
    };
    let items = body.issues.into_iter().map(|i| {
        let payment = Payment {
            kind: OpKind::Issue,
            from: None,
            to: Some(i.to),
            asset: i.asset,
            amount_minor: i.amount_minor,
            nonce: None,
            timeout_s: None,
            memo: i.memo,
            idempotency_key: None,
        };
        (payment, i.idempotency_key, i.linked)
    });
    batch(wallet, request, items.collect(), scope::WALLET_ISSUE)
}

/// What became of one write of a batch.
enum Slot {
    /// Checked: to be reserved on its scope shard.
    Ready(Write),
    /// Sent to its scope shard (moved, not copied): its answer replaces it.
    Reserving,
    /// Reserved on its scope shard: to be committed, or released.
    Reserved { op: WalletOp, scope_shard: usize },
    /// The same request was committed before.
    Replayed(TxId),
    Committed { txid: TxId, seq: u64 },
    Failed { status: u16, code: &'static str, message: String },
}

const LINKED_EVENT_FAILED: &str = "LINKED_EVENT_FAILED";
const LINKED_EVENT_CHAIN_OPEN: &str = "LINKED_EVENT_CHAIN_OPEN";

impl Slot {
    fn failed(reply: Reply) -> Slot {
        let status = reply.status;
        match reply.body {
            Body::Error { code, message, .. } => {
                Slot::Failed { status, code: code.as_str(), message: message.into_owned() }
            }
            _ => Slot::Failed { status, code: "ERROR", message: String::new() },
        }
    }

    fn is_failed(&self) -> bool {
        matches!(self, Slot::Failed { .. })
    }

    /// Fails this write with `code` unless it already failed or committed;
    /// a reservation it held is handed back through `releases`.
    fn fail(&mut self, status: u16, code: &'static str, message: String, releases: &mut Releases) {
        match std::mem::replace(self, Slot::Failed { status, code, message }) {
            Slot::Reserved { op, scope_shard } => releases.push((scope_shard, op)),
            Slot::Ready(_) | Slot::Reserving => {}
            kept @ (Slot::Replayed(_) | Slot::Committed { .. } | Slot::Failed { .. }) => {
                *self = kept;
            }
        }
    }
}

/// Reservations to hand back: (scope shard, operation).
pub(super) type Releases = Vec<(usize, WalletOp)>;

/// One batch under way.
struct Batch {
    slots: Vec<Slot>,
    /// The index of the first write of each write's chain.
    chain: Vec<usize>,
    /// Each write's payer and nonce, if it has a nonce.
    payer_nonce: Vec<Option<(CompactString, u64)>>,
    /// Writes whose reservation was handed back: the payer's later nonces,
    /// reserved after theirs, cannot commit without them.
    released: Vec<bool>,
}

impl Batch {
    /// Spreads failures until none is left to spread: to the rest of a
    /// failed write's chain, and to the payer's later nonces after a write
    /// whose reservation was handed back. Each pass is linear in the
    /// batch; a pass that fails nothing more ends it. Returns the
    /// reservations the newly failed writes held.
    fn spread_failures(&mut self) -> Releases {
        let mut releases = Vec::new();
        loop {
            // The first failed write of each chain, and the lowest released
            // nonce of each payer.
            let mut failed_chains: HashMap<usize, usize> = HashMap::new();
            let mut released_from: HashMap<&str, (u64, usize)> = HashMap::new();
            for (i, slot) in self.slots.iter().enumerate() {
                if !slot.is_failed() {
                    continue;
                }
                failed_chains.entry(self.chain[i]).or_insert(i);
                if let (true, Some((payer, nonce))) = (self.released[i], &self.payer_nonce[i]) {
                    let lowest = released_from.entry(payer.as_str()).or_insert((*nonce, i));
                    if *nonce < lowest.0 {
                        *lowest = (*nonce, i);
                    }
                }
            }
            let mut newly = Vec::new();
            for j in 0..self.slots.len() {
                if self.slots[j].is_failed() {
                    continue;
                }
                if let Some(&i) = failed_chains.get(&self.chain[j]) {
                    let message = format!("write {i} of its linked chain failed");
                    newly.push((j, LINKED_EVENT_FAILED, message));
                } else if let Some((payer, nonce)) = &self.payer_nonce[j]
                    && let Some(&(lowest, i)) = released_from.get(payer.as_str())
                    && *nonce > lowest
                {
                    let message = format!("an earlier nonce of this payer (write {i}) failed");
                    newly.push((j, ErrorCode::NonceConflict.as_str(), message));
                }
            }
            let mut spread = false;
            for (j, code, message) in newly {
                let before = releases.len();
                self.slots[j].fail(409, code, message, &mut releases);
                self.released[j] = releases.len() > before;
                spread |= self.slots[j].is_failed();
            }
            if !spread {
                return releases;
            }
        }
    }
}

/// Checks every write, then reserves, commits and answers them.
fn batch(
    wallet: &Rc<Wallet>,
    request: &Request<'_>,
    items: Vec<(Payment<'_>, Cow<'_, str>, bool)>,
    route_scope: &'static str,
) -> Handled {
    let config = &wallet.core.config;
    let max = config.wallet.batch_transfers_max.min(config.ledger.batch_entries_max) as usize;
    if items.is_empty() {
        return Handled::Now(bad("a batch needs at least one write"));
    }
    if items.len() > max {
        let why = format!(
            "{} writes in one batch; at most {max} (wallet.batch_transfers_max, ledger.batch_entries_max)",
            items.len()
        );
        return Handled::Now(Reply::error(ErrorCode::LimitsExceeded, why));
    }
    if wallet.core.log.in_safe_mode() {
        return Handled::Now(degraded(None));
    }
    let count = items.len();
    let mut batch = Batch {
        slots: Vec::with_capacity(count),
        chain: Vec::with_capacity(count),
        payer_nonce: Vec::with_capacity(count),
        released: vec![false; count],
    };
    let mut chain_start = 0;
    let mut open = false;
    let now_ms = unix_now_ms();
    let (mut checked, links): (Vec<Result<Write, Reply>>, Vec<bool>) = items
        .into_iter()
        .map(|(payment, key, linked)| {
            (checked_payment(wallet, payment, &key, route_scope, now_ms), linked)
        })
        .unzip();
    // The token is verified once (refused whole, 401, if it does not
    // verify), then each checked write's caveats are decided with it.
    let writes = checked.iter().filter_map(|c| c.as_ref().ok());
    let mut refused: Vec<(usize, Reply)> = Vec::new();
    let presented = Presented::of(request, request.path());
    let decided = access::authorize_each(
        &wallet.passport,
        &presented,
        Some(route_scope),
        writes.map(|write| facts(&write.op)),
        |k, decided| {
            if let Err(reply) = decided {
                refused.push((k, reply));
            }
        },
    );
    if let Err(reply) = decided {
        return Handled::Now(reply);
    }
    // `refused` counts among the checked writes only: map back.
    let ok_indices: Vec<usize> =
        checked.iter().enumerate().filter_map(|(i, c)| c.is_ok().then_some(i)).collect();
    for (k, reply) in refused {
        checked[ok_indices[k]] = Err(reply);
    }
    for (i, (checked, linked)) in checked.into_iter().zip(links).enumerate() {
        let slot = match checked {
            Ok(write) => Slot::Ready(write),
            Err(reply) => Slot::failed(reply),
        };
        let payer_nonce = match &slot {
            Slot::Ready(write) => write.op.nonce.map(|n| (scope_account(&write.op).into(), n)),
            _ => None,
        };
        batch.slots.push(slot);
        batch.payer_nonce.push(payer_nonce);
        batch.chain.push(chain_start);
        open = linked;
        if !linked {
            chain_start = i + 1;
        }
    }
    if open {
        let last = count - 1;
        let mut ignored = Vec::new();
        let message = "the last write is linked to none".to_owned();
        batch.slots[last].fail(400, LINKED_EVENT_CHAIN_OPEN, message, &mut ignored);
    }
    let wallet = wallet.clone();
    Handled::Later(Box::pin(async move { run(&wallet, batch).await }))
}

async fn run(wallet: &Rc<Wallet>, mut batch: Batch) -> Reply {
    batch.spread_failures();
    reserve(wallet, &mut batch).await;
    // The payers whose nonces the batch reserved, by shard: settled (and
    // any reservation given back) once the batch is over.
    let reserved_payers: Vec<(usize, CompactString)> = batch
        .slots
        .iter()
        .filter_map(|slot| match slot {
            Slot::Reserved { op, scope_shard } if op.nonce.is_some() => {
                Some((*scope_shard, scope_account(op).into()))
            }
            _ => None,
        })
        .collect();
    let mut releases = batch.spread_failures();
    let mut ledger = None;
    let reserved: Vec<usize> =
        (0..batch.slots.len()).filter(|i| matches!(batch.slots[*i], Slot::Reserved { .. })).collect();
    if !reserved.is_empty() {
        let ops: Vec<&WalletOp> = reserved
            .iter()
            .map(|i| match &batch.slots[*i] {
                Slot::Reserved { op, .. } => op,
                _ => unreachable!("filtered above"),
            })
            .collect();
        match wallet.core.log.call(LogCall::Append(append_of(wallet, &ops))).await {
            Ok(LogAnswer::Appended { seq_start, seq_end, root }) => {
                for (k, i) in reserved.iter().enumerate() {
                    let Slot::Reserved { op, .. } = &batch.slots[*i] else { unreachable!() };
                    batch.slots[*i] = Slot::Committed { txid: op.txid, seq: seq_start + k as u64 };
                }
                ledger = Some((seq_start, seq_end, root));
            }
            answer => {
                let reply = match answer {
                    Ok(LogAnswer::Degraded { reason }) => degraded(Some(&reason)),
                    Ok(other) => panic!("a wallet append answered with {other:?}"),
                    Err(error) => link_failure(error),
                };
                let Slot::Failed { status, code, message } = Slot::failed(reply) else {
                    unreachable!("an error reply")
                };
                for i in reserved {
                    batch.slots[i].fail(status, code, message.clone(), &mut releases);
                }
            }
        }
    }
    settle(wallet, releases, reserved_payers).await;
    let replays = batch.slots.iter().filter(|s| matches!(s, Slot::Replayed(_))).count();
    wallet.metrics.borrow_mut().idem_replays += replays as u64;
    Reply::json_owned(200, answer(&batch, ledger))
}

/// Each scope shard reserves its writes in one call (all at once), in
/// batch order; like a single write's, the calls carry the request's
/// deadline and are awaited however late.
async fn reserve(wallet: &Rc<Wallet>, batch: &mut Batch) {
    let mut by_shard: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, slot) in batch.slots.iter().enumerate() {
        if let Slot::Ready(write) = slot {
            by_shard.entry(write.scope_shard).or_default().push(i);
        }
    }
    let (now_ms, deadline) = (unix_now_ms(), wallet.core.call_deadline());
    let calls = by_shard.iter().map(|(shard, indices)| {
        let ops = indices
            .iter()
            .map(|i| match std::mem::replace(&mut batch.slots[*i], Slot::Reserving) {
                Slot::Ready(write) => write.op,
                _ => unreachable!("grouped above"),
            })
            .collect();
        wallet.call_waiting(*shard, Call::ReserveBatch { ops, now_ms, deadline }, Wait::Answer)
    });
    let answers = futures::future::join_all(calls).await;
    for ((shard, indices), answer) in by_shard.into_iter().zip(answers) {
        let error = match answer {
            Ok(Answer::ReservedBatch { ops, results }) => {
                for ((i, op), result) in indices.into_iter().zip(ops).zip(results) {
                    batch.slots[i] = match result {
                        Ok(Reservation::Commit) => Slot::Reserved { op, scope_shard: shard },
                        Ok(Reservation::Replay(txid)) => Slot::Replayed(txid),
                        Err(refused) => Slot::failed(rejection(refused)),
                    };
                }
                continue;
            }
            Ok(Answer::Late) => MeshError::TimedOut,
            Ok(other) => panic!("a batch reservation answered with {other:?}"),
            Err(error) => error,
        };
        for i in indices {
            batch.slots[i] = Slot::failed(mesh_failure(error));
        }
    }
}

/// Ends the batch on each shard it reserved on, in one call each: hands
/// back the reservations of the writes that failed, latest first (so a
/// payer's nonce steps back one at a time), and settles its payers, whose
/// later nonces may then be reserved. A busy shard is asked again
/// (`RELEASE_RETRY`).
pub(super) async fn settle(
    wallet: &Rc<Wallet>,
    releases: Releases,
    payers: Vec<(usize, CompactString)>,
) {
    let mut by_shard: BTreeMap<usize, (Vec<WalletOp>, Vec<CompactString>)> = BTreeMap::new();
    for (shard, op) in releases {
        by_shard.entry(shard).or_default().0.push(op);
    }
    for (shard, payer) in payers {
        by_shard.entry(shard).or_default().1.push(payer);
    }
    for (shard, (mut release, payers)) in by_shard {
        release.sort_by_key(|op| std::cmp::Reverse(op.nonce));
        let (release, payers): (Arc<[WalletOp]>, Arc<[CompactString]>) =
            (release.into(), payers.into());
        let outcome = RELEASE_RETRY
            .run(
                || {
                    let call = Call::Settle { release: release.clone(), payers: payers.clone() };
                    wallet.call_waiting(shard, call, Wait::Answer)
                },
                |error| *error == MeshError::Busy,
            )
            .await;
        match outcome {
            Outcome::Done(Answer::Done) => {}
            Outcome::Done(other) => panic!("a settlement answered with {other:?}"),
            Outcome::Failed(error) | Outcome::GaveUp(error) => {
                tracing::error!(shard, ?error, "writes were not settled: reservations stay held");
            }
        }
    }
}

/// One append of every reserved write, in batch order: one log record.
fn append_of(wallet: &Wallet, ops: &[&WalletOp]) -> Append {
    let mut items = Vec::with_capacity(ops.len() * 192);
    let mut item_parts = Vec::with_capacity(ops.len() * 3);
    for (i, op) in ops.iter().enumerate() {
        let at = items.len();
        items.extend_from_slice(&[0, 0]);
        op.encode(&mut items);
        let len = u16::try_from(items.len() - at - 2).expect("an operation fits an item");
        items[at..at + 2].copy_from_slice(&len.to_le_bytes());
        for shard in parts(&op.as_ref(), wallet.core.count) {
            item_parts.push(Part { item: i as u32, shard: shard as u32 });
        }
    }
    Append { items, count: ops.len() as u32, unique: Vec::new(), idem: None, parts: item_parts }
}

#[derive(Serialize)]
struct OpAnswer<'a> {
    index: usize,
    status: u16,
    code: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    txid: Option<TxidText>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ledger_seq: Option<u64>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    replayed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
}

#[derive(Serialize)]
struct BatchAnswer<'a> {
    results: Vec<OpAnswer<'a>>,
    /// Writes committed by this request (replays not counted).
    committed: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    ledger_seq_start: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ledger_seq_end: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ledger_root: Option<String>,
}

fn answer(batch: &Batch, ledger: Option<(u64, u64, merkle::Hash)>) -> Vec<u8> {
    let results = batch
        .slots
        .iter()
        .enumerate()
        .map(|(index, slot)| {
            let ok = |txid: &TxId, ledger_seq, replayed| OpAnswer {
                index,
                status: 200,
                code: "OK",
                txid: Some(TxidText::of(txid)),
                ledger_seq,
                replayed,
                message: None,
            };
            match slot {
                Slot::Committed { txid, seq } => ok(txid, Some(*seq), false),
                Slot::Replayed(txid) => ok(txid, None, true),
                Slot::Failed { status, code, message } => OpAnswer {
                    index,
                    status: *status,
                    code,
                    txid: None,
                    ledger_seq: None,
                    replayed: false,
                    message: Some(message),
                },
                Slot::Ready(_) | Slot::Reserving | Slot::Reserved { .. } => {
                    unreachable!("every write is settled")
                }
            }
        })
        .collect();
    let committed = batch.slots.iter().filter(|s| matches!(s, Slot::Committed { .. })).count();
    let answer = BatchAnswer {
        results,
        committed,
        ledger_seq_start: ledger.map(|l| l.0),
        ledger_seq_end: ledger.map(|l| l.1),
        ledger_root: ledger.map(|l| merkle::hex(&l.2)),
    };
    simd_json::to_vec(&answer).expect("serializing")
}
