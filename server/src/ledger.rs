//! The shard's side of the ledger: the link to the committer and the ledger
//! routes (`POST /ingest`, `GET /roots`, the proof routes).

use crate::committer::{
    CommittedBatch, LedgerAnswer, LedgerCall, LedgerReply, LedgerRequest, Owned, ToShard,
};
use crate::log::{IdKey, RootItem, id_key};
use crate::mesh::{MeshError, ShardAnswer, ShardCall};
use crate::reply::{Handled, Reply};
use crate::routes::{Params, Request};
use crate::shard::Shard;
use futures_channel::oneshot;
use glommio::channels::shared_channel::{ConnectedReceiver, ConnectedSender};
use ron_proto::ErrorCode;
use ron_proto::error::Reason;
use ron_proto::ledger::{Entry, EntryKind};
use ron_proto::merkle::{Hash, to_hex};
use ron_shards::balances::Item;
use serde::{Deserialize, Serialize};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::task::{Poll, Waker};

/// Why a call to the committer did not get an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkError {
    /// This shard has as many calls in flight as its channel holds.
    Busy,
    /// The committer has stopped.
    Closed,
}

/// One shard's link to the committer: calls out, answers in, matched by id.
pub struct LedgerLink {
    /// `None` once the shard has closed its side (after its drain).
    calls: RefCell<Option<Rc<ConnectedSender<LedgerRequest>>>>,
    waiting: RefCell<HashMap<u64, oneshot::Sender<LedgerAnswer>>>,
    next_id: Cell<u64>,
    inflight_max: usize,
    /// The committer has stopped: nothing more will be applied.
    stopped: Cell<bool>,
}

impl LedgerLink {
    pub fn new(calls: ConnectedSender<LedgerRequest>, inflight_max: usize) -> LedgerLink {
        LedgerLink {
            calls: RefCell::new(Some(Rc::new(calls))),
            waiting: RefCell::new(HashMap::with_capacity(inflight_max.min(4096))),
            next_id: Cell::new(0),
            inflight_max,
            stopped: Cell::new(false),
        }
    }

    pub async fn call(&self, call: LedgerCall) -> Result<LedgerAnswer, LinkError> {
        // The answer channel holds `inflight_max` answers, so the committer
        // never waits for room in it.
        if self.waiting.borrow().len() >= self.inflight_max {
            return Err(LinkError::Busy);
        }
        let Some(calls) = self.calls.borrow().clone() else { return Err(LinkError::Closed) };
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let (sender, receiver) = oneshot::channel();
        self.waiting.borrow_mut().insert(id, sender);
        if calls.send(LedgerRequest { id, call }).await.is_err() {
            self.waiting.borrow_mut().remove(&id);
            return Err(LinkError::Closed);
        }
        receiver.await.map_err(|_| LinkError::Closed)
    }

    /// Closes this shard's side, so that the committer stops once every
    /// shard has.
    pub fn close(&self) {
        self.calls.borrow_mut().take();
    }

    fn deliver(&self, reply: LedgerReply) {
        if let Some(sender) = self.waiting.borrow_mut().remove(&reply.id) {
            let _ = sender.send(reply.answer);
        }
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped.get()
    }

    /// Calls in flight (the `queue_depth{q="committer"}` of this shard).
    pub fn inflight(&self) -> usize {
        self.waiting.borrow().len()
    }
}

/// How far this shard has applied the log.
pub struct Applied {
    seq: Cell<u64>,
    root: Cell<Hash>,
    /// Reads waiting for the shard to catch up with the durable log.
    waiters: RefCell<Vec<Waker>>,
}

impl Applied {
    pub fn new(seq: u64, root: Hash) -> Applied {
        Applied { seq: Cell::new(seq), root: Cell::new(root), waiters: RefCell::new(Vec::new()) }
    }

    pub fn seq(&self) -> u64 {
        self.seq.get()
    }

    pub fn root(&self) -> Hash {
        self.root.get()
    }

    fn advance(&self, seq: u64, root: Hash) {
        assert!(seq > self.seq.get(), "batches arrive in log order");
        self.seq.set(seq);
        self.root.set(root);
        for waker in self.waiters.borrow_mut().drain(..) {
            waker.wake();
        }
    }
}

/// Whether this shard has applied everything durable so far.
pub fn is_caught_up(shard: &Shard) -> bool {
    shard.applied.seq() >= shard.node.ledger_durable_seq.load(Ordering::Acquire)
}

/// Waits until this shard has applied everything durable when the call
/// began: an acknowledged write is then visible here, whichever shard
/// acknowledged it.
pub async fn caught_up(shard: &Shard) {
    applied_through(shard, shard.node.ledger_durable_seq.load(Ordering::Acquire)).await;
}

/// Waits until this shard has applied the log through `seq` (or the
/// committer has stopped).
pub async fn applied_through(shard: &Shard, seq: u64) {
    std::future::poll_fn(|cx| {
        if shard.applied.seq() >= seq || shard.ledger.is_stopped() {
            return Poll::Ready(());
        }
        shard.applied.waiters.borrow_mut().push(cx.waker().clone());
        Poll::Pending
    })
    .await;
}

/// Applies a durable batch: what its owners reserved becomes balance, and
/// this shard's parts of its wallet operations take effect.
fn apply(shard: &Shard, batch: CommittedBatch) {
    shard.balances.borrow_mut().apply(&batch.items);
    let mut wallet = shard.wallet.borrow_mut();
    for (op, placement) in &batch.wallet {
        wallet.apply(op, *placement, true);
    }
    drop(wallet);
    if !batch.revocations.is_empty() {
        let lag = batch.durable_at.elapsed();
        let mut passport = shard.passport.borrow_mut();
        for (revocation, seq) in &batch.revocations {
            passport.apply(revocation, *seq, lag);
        }
    }
    shard.applied.advance(batch.last_seq, batch.root);
}

/// Applies durable batches and delivers answers until the committer stops.
pub async fn receive_answers(shard: Rc<Shard>, answers: ConnectedReceiver<ToShard>) {
    while let Some(message) = answers.recv().await {
        match message {
            ToShard::Reply(reply) => shard.ledger.deliver(reply),
            ToShard::Committed(batch) => apply(&shard, batch),
        }
    }
    // The committer is gone: nobody will answer the calls still waiting.
    shard.ledger.stopped.set(true);
    shard.ledger.waiting.borrow_mut().clear();
    for waker in shard.applied.waiters.borrow_mut().drain(..) {
        waker.wake();
    }
}

pub fn link_failure(error: LinkError) -> Reply {
    match error {
        LinkError::Busy => Reply::error(ErrorCode::Busy, "too many ledger calls in flight"),
        LinkError::Closed => {
            Reply::error(ErrorCode::Unavailable, "the ledger committer has stopped")
        }
    }
}

/// An amount: a u128 as a decimal string, or a JSON integer.
#[derive(Deserialize)]
#[serde(untagged)]
pub enum Amount {
    Text(String),
    Number(u64),
}

impl Amount {
    /// The amount, which must be positive.
    pub fn value(self) -> Result<u128, String> {
        let amount = match self {
            Amount::Number(n) => u128::from(n),
            Amount::Text(text) => {
                if text.is_empty() || text.len() > 39 || !text.bytes().all(|b| b.is_ascii_digit()) {
                    return Err("amount must be a decimal u128".to_owned());
                }
                text.parse::<u128>().map_err(|_| "amount must be a decimal u128".to_owned())?
            }
        };
        if amount == 0 {
            return Err("amount must be positive".to_owned());
        }
        Ok(amount)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IngestEntry {
    id: String,
    kind: String,
    account: String,
    asset: Option<String>,
    amount: Amount,
    ts: Option<u64>,
    memo: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IngestBody {
    batch: Vec<IngestEntry>,
    idem_id: Option<String>,
}

#[derive(Serialize)]
struct IngestAnswer {
    accepted: bool,
    seq_start: u64,
    seq_end: u64,
    new_root: String,
    reasons: [Reason; 0],
}

fn parse_entry(entry: IngestEntry) -> Result<Entry, String> {
    let kind =
        EntryKind::parse(&entry.kind).ok_or_else(|| format!("unknown kind {}", entry.kind))?;
    let amount = entry.amount.value()?;
    let entry = Entry {
        id: entry.id,
        kind,
        account: entry.account,
        asset: entry.asset,
        amount,
        ts: entry.ts,
        memo: entry.memo,
    };
    entry.check().map_err(str::to_owned)?;
    Ok(entry)
}

/// Conservation per asset (SPEC §4.3): when any tracked entry (Credit,
/// Transfer, Debit, Hold, Reverse) is present, what they add equals what
/// they take. Mint and Burn change supply and are not tracked.
fn conservation_violations(entries: &[Entry]) -> Vec<Reason> {
    let mut sums: BTreeMap<&str, (u128, u128, u32)> = BTreeMap::new();
    for (idx, entry) in entries.iter().enumerate() {
        let asset = entry.asset.as_deref().unwrap_or("");
        let sum = sums.entry(asset).or_insert((0, 0, idx as u32));
        match entry.kind {
            EntryKind::Credit | EntryKind::Transfer => sum.0 = sum.0.saturating_add(entry.amount),
            EntryKind::Debit | EntryKind::Hold | EntryKind::Reverse => {
                sum.1 = sum.1.saturating_add(entry.amount)
            }
            EntryKind::Mint | EntryKind::Burn => {}
        }
    }
    sums.into_iter()
        .filter(|(_, (credits, debits, _))| credits != debits)
        .map(|(asset, (credits, debits, first))| Reason {
            idx: first,
            reason: format!("conservation: asset {asset:?} credits {credits} != debits {debits}"),
        })
        .collect()
}

/// `POST /ingest`: validates a batch, commits it atomically through the
/// committer and answers once it is durable.
pub fn ingest(shard: &Rc<Shard>, request: &Request<'_>, _: &Params<'_>) -> Handled {
    if shard.node.ledger_safe_mode.load(std::sync::atomic::Ordering::Acquire) {
        return Handled::Now(Reply::error(ErrorCode::Degraded, "the ledger is in safe mode"));
    }
    let body: IngestBody = match request.json() {
        Ok(body) => body,
        Err(reply) => return Handled::Now(reply),
    };
    let idem = match &body.idem_id {
        Some(idem_id) if idem_id.is_empty() || idem_id.len() > IDEM_ID_BYTES_MAX => {
            return Handled::Now(Reply::error(
                ErrorCode::BadRequest,
                format!("idem_id must be 1..={IDEM_ID_BYTES_MAX} bytes"),
            ));
        }
        Some(idem_id) => Some(id_key(&format!("idem:{idem_id}"))),
        None => None,
    };
    let batch_max = shard.config.ledger.batch_entries_max as usize;
    if body.batch.is_empty() || body.batch.len() > batch_max {
        return Handled::Now(Reply::error(
            ErrorCode::LimitsExceeded,
            format!("batch must hold 1..={batch_max} entries"),
        ));
    }
    let mut entries = Vec::with_capacity(body.batch.len());
    let mut reasons = Vec::new();
    for (idx, entry) in body.batch.into_iter().enumerate() {
        match parse_entry(entry) {
            Ok(entry) => entries.push(entry),
            Err(reason) => reasons.push(Reason { idx: idx as u32, reason }),
        }
    }
    if !reasons.is_empty() {
        return Handled::Now(Reply::rejected(ErrorCode::BadRequest, "invalid entries", reasons));
    }
    let violations = conservation_violations(&entries);
    if !violations.is_empty() {
        return Handled::Now(Reply::rejected(
            ErrorCode::LimitsExceeded,
            "the batch does not conserve every asset",
            violations,
        ));
    }
    let mut encoded = Vec::with_capacity(entries.len() * 64);
    let mut scratch = Vec::with_capacity(ron_proto::ledger::ENTRY_BYTES_MAX);
    let ids: Vec<IdKey> = entries.iter().map(|e| id_key(&e.id)).collect();
    for entry in &entries {
        scratch.clear();
        entry.encode(&mut scratch);
        encoded.extend_from_slice(&(scratch.len() as u16).to_le_bytes());
        encoded.extend_from_slice(&scratch);
    }
    let count = entries.len() as u32;
    let mut owners: BTreeMap<usize, Vec<Item>> = BTreeMap::new();
    for (idx, entry) in entries.iter().enumerate() {
        let owner = ron_proto::routing::owner(entry.account.as_bytes(), shard.count);
        owners.entry(owner).or_default().push(Item::of(idx as u32, entry));
    }
    let shard = shard.clone();
    Handled::Later(Box::pin(async move {
        // A replay gets the original answer and touches nothing.
        if let Some(key) = idem {
            match shard.ledger.call(LedgerCall::Idem { key }).await {
                Ok(LedgerAnswer::Replayed { seq_start, seq_end, root }) => {
                    return accepted(seq_start, seq_end, &root);
                }
                Ok(LedgerAnswer::Unknown) => {}
                Ok(other) => panic!("idem lookup answered with {other:?}"),
                Err(error) => return link_failure(error),
            }
        }
        // The owners reserve the debits; then the committer orders and
        // persists, and sends every owner its items to apply before it
        // answers; a request that does not commit releases instead.
        let mut reserved = Vec::with_capacity(owners.len());
        let mut refused = Vec::new();
        for (owner, items) in &owners {
            match shard.mesh.call(&shard, *owner, ShardCall::Reserve { items: items.clone() }).await
            {
                Ok(ShardAnswer::Reserved(Ok(()))) => reserved.push(*owner),
                Ok(ShardAnswer::Reserved(Err(reasons))) => refused.extend(reasons),
                Ok(other) => panic!("reserve answered with {other:?}"),
                Err(error) => {
                    release(&shard, &owners, &reserved).await;
                    return crate::ops::mesh_failure(error);
                }
            }
            if !refused.is_empty() {
                break;
            }
        }
        if !refused.is_empty() {
            release(&shard, &owners, &reserved).await;
            return Reply::rejected(ErrorCode::InsufficientFunds, "insufficient funds", refused);
        }
        let owned = owners
            .iter()
            .map(|(owner, items)| (*owner, Owned { items: items.clone(), ..Owned::default() }))
            .collect();
        let call = LedgerCall::Append { entries: encoded, count, ids, idem, owned };
        let answer = shard.ledger.call(call).await;
        if !matches!(answer, Ok(LedgerAnswer::Appended { .. })) {
            release(&shard, &owners, &reserved).await;
        }
        match answer {
            Ok(
                LedgerAnswer::Appended { seq_start, seq_end, root }
                | LedgerAnswer::Replayed { seq_start, seq_end, root },
            ) => accepted(seq_start, seq_end, &root),
            Ok(LedgerAnswer::Duplicate { indices }) => Reply::rejected(
                ErrorCode::Conflict,
                "entry ids already committed",
                indices
                    .into_iter()
                    .map(|idx| Reason { idx, reason: "duplicate_id".to_owned() })
                    .collect(),
            ),
            Ok(LedgerAnswer::Degraded { reason }) => {
                Reply::error(ErrorCode::Degraded, format!("the ledger is in safe mode: {reason}"))
            }
            Ok(other) => panic!("append answered with {other:?}"),
            Err(error) => link_failure(error),
        }
    }))
}

/// `idem_id`s, in bytes.
const IDEM_ID_BYTES_MAX: usize = 128;

fn accepted(seq_start: u64, seq_end: u64, root: &Hash) -> Reply {
    let answer =
        IngestAnswer { accepted: true, seq_start, seq_end, new_root: to_hex(root), reasons: [] };
    Reply::json_owned(200, simd_json::to_vec(&answer).expect("serializing"))
}

/// Gives back what the owners reserved for a request that did not commit.
/// A busy owner is asked again; one that does not answer in time is logged
/// (its reservation stays until a restart).
async fn release(shard: &Rc<Shard>, owners: &BTreeMap<usize, Vec<Item>>, reserved: &[usize]) {
    for owner in reserved {
        loop {
            let call = ShardCall::Release { items: owners[owner].clone() };
            match shard.mesh.call(shard, *owner, call).await {
                Ok(ShardAnswer::Done) => break,
                Ok(other) => panic!("release answered with {other:?}"),
                Err(MeshError::Busy) => glommio::timer::sleep(SETTLE_RETRY).await,
                Err(error) => {
                    tracing::error!(owner, ?error, "an owner did not release a reservation");
                    break;
                }
            }
        }
    }
}

/// How long a release waits before asking a busy owner again.
const SETTLE_RETRY: std::time::Duration = std::time::Duration::from_micros(200);

#[derive(Serialize)]
struct BalanceAnswer {
    account: String,
    asset: String,
    balance: String,
    reserved: String,
}

/// `GET /v1/ledger/balance?account=A&asset=X`: an account's balance from
/// its owner shard.
pub fn balance(shard: &Rc<Shard>, request: &Request<'_>, _: &Params<'_>) -> Handled {
    let (account, asset) = match (request.query("account"), request.query("asset")) {
        (Ok(Some(account)), Ok(asset)) if !account.is_empty() => {
            (account.into_owned(), asset.map(|a| a.into_owned()).unwrap_or_default())
        }
        (Err(reply), _) | (_, Err(reply)) => return Handled::Now(reply),
        _ => return Handled::Now(Reply::error(ErrorCode::BadRequest, "account is required")),
    };
    let owner = ron_proto::routing::owner(account.as_bytes(), shard.count);
    let shard = shard.clone();
    Handled::Later(Box::pin(async move {
        let call = ShardCall::Balance { account: account.clone(), asset: asset.clone() };
        match shard.mesh.call(&shard, owner, call).await {
            Ok(ShardAnswer::Balance(found)) => {
                let answer = BalanceAnswer {
                    account,
                    asset,
                    balance: found.balance.to_string(),
                    reserved: found.reserved.to_string(),
                };
                Reply::json_owned(200, simd_json::to_vec(&answer).expect("serializing"))
            }
            Ok(other) => panic!("balance answered with {other:?}"),
            Err(error) => crate::ops::mesh_failure(error),
        }
    }))
}

#[derive(Serialize)]
struct RootJson {
    seq: u64,
    root: String,
    ts: u64,
}

#[derive(Serialize)]
struct RootsAnswer {
    roots: Vec<RootJson>,
    next: Option<u64>,
}

fn number_param(request: &Request<'_>, name: &str) -> Result<Option<u64>, Reply> {
    request.query(name)?.map(|text| text.parse::<u64>()).transpose().map_err(|_| {
        Reply::error(ErrorCode::BadRequest, format!("{name} must be a non-negative integer"))
    })
}

fn required_param(request: &Request<'_>, name: &str) -> Result<u64, Reply> {
    number_param(request, name)?
        .ok_or_else(|| Reply::error(ErrorCode::BadRequest, format!("{name} is required")))
}

/// Two required numbers, or the 400 about the first that is missing or bad.
fn required_pair(request: &Request<'_>, first: &str, second: &str) -> Result<(u64, u64), Reply> {
    Ok((required_param(request, first)?, required_param(request, second)?))
}

fn root_json(item: &RootItem) -> RootJson {
    RootJson { seq: item.seq, root: to_hex(&item.root), ts: item.committed_ms }
}

/// `GET /roots?since=S`: the root after every batch whose last entry is
/// after S, oldest first, a page at a time; served in safe mode too.
pub fn roots(shard: &Rc<Shard>, request: &Request<'_>, _: &Params<'_>) -> Handled {
    let since = match number_param(request, "since") {
        Ok(since) => since.unwrap_or(0),
        Err(reply) => return Handled::Now(reply),
    };
    let shard = shard.clone();
    Handled::Later(Box::pin(async move {
        match shard.ledger.call(LedgerCall::Roots { since }).await {
            Ok(LedgerAnswer::Roots { items, next }) => {
                let answer = RootsAnswer { roots: items.iter().map(root_json).collect(), next };
                Reply::json_owned(200, simd_json::to_vec(&answer).expect("serializing"))
            }
            Ok(other) => panic!("roots answered with {other:?}"),
            Err(error) => link_failure(error),
        }
    }))
}

fn hexes(hashes: &[Hash]) -> Vec<String> {
    hashes.iter().map(to_hex).collect()
}

#[derive(Serialize)]
struct InclusionAnswer {
    seq: u64,
    tree_size: u64,
    leaf_hash: String,
    path: Vec<String>,
    root: String,
}

#[derive(Serialize)]
struct ConsistencyAnswer {
    from: u64,
    to: u64,
    from_root: String,
    to_root: String,
    path: Vec<String>,
}

fn out_of_range(durable: u64) -> Reply {
    Reply::error(ErrorCode::NotFound, format!("the durable log holds entries 1..={durable}"))
}

/// `GET /v1/ledger/proof/inclusion?seq=S&root_seq=R`: the audit path of
/// entry S in the tree of the first R entries.
pub fn inclusion(shard: &Rc<Shard>, request: &Request<'_>, _: &Params<'_>) -> Handled {
    let (seq, tree_size) = match required_pair(request, "seq", "root_seq") {
        Ok(pair) => pair,
        Err(reply) => return Handled::Now(reply),
    };
    let shard = shard.clone();
    Handled::Later(Box::pin(async move {
        match shard.ledger.call(LedgerCall::Inclusion { seq, tree_size }).await {
            Ok(LedgerAnswer::Inclusion { leaf, path, root }) => {
                let answer = InclusionAnswer {
                    seq,
                    tree_size,
                    leaf_hash: to_hex(&leaf),
                    path: hexes(&path),
                    root: to_hex(&root),
                };
                Reply::json_owned(200, simd_json::to_vec(&answer).expect("serializing"))
            }
            Ok(LedgerAnswer::OutOfRange { durable }) => out_of_range(durable),
            Ok(other) => panic!("inclusion answered with {other:?}"),
            Err(error) => link_failure(error),
        }
    }))
}

/// `GET /v1/ledger/proof/consistency?from=A&to=B`.
pub fn consistency(shard: &Rc<Shard>, request: &Request<'_>, _: &Params<'_>) -> Handled {
    let (from, to) = match required_pair(request, "from", "to") {
        Ok(pair) => pair,
        Err(reply) => return Handled::Now(reply),
    };
    let shard = shard.clone();
    Handled::Later(Box::pin(async move {
        match shard.ledger.call(LedgerCall::Consistency { from, to }).await {
            Ok(LedgerAnswer::Consistency { path, first_root, second_root }) => {
                let answer = ConsistencyAnswer {
                    from,
                    to,
                    from_root: to_hex(&first_root),
                    to_root: to_hex(&second_root),
                    path: hexes(&path),
                };
                Reply::json_owned(200, simd_json::to_vec(&answer).expect("serializing"))
            }
            Ok(LedgerAnswer::OutOfRange { durable }) => out_of_range(durable),
            Ok(other) => panic!("consistency answered with {other:?}"),
            Err(error) => link_failure(error),
        }
    }))
}
