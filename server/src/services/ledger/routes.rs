//! The ledger's routes: `POST /ingest`, `GET /roots`, the proof routes and
//! `GET /v1/ledger/balance`.

use super::{Answer, Call, Ledger};
use crate::core::mesh::{MeshError, Wait};
use crate::http::reply::{degraded, link_failure, mesh_failure};
use crate::http::{Access, Amount, Handled, Params, Reply, Request, RouteTable, Shed};
use crate::limits::{INGEST_IDEM_ID_BYTES_MAX, RELEASE_RETRY};
use crate::log::{Append, IdKey, LogAnswer, LogCall, Part, RootItem, id_key};
use crate::retry::Outcome;
use crate::service::Service;
use ron_proto::ErrorCode;
use ron_proto::error::Reason;
use ron_proto::http::Method;
use ron_proto::ledger::{EntryKind, EntryRef};
use ron_proto::merkle::{Hash, to_hex};
use ron_shards::balances::Item;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::rc::Rc;

/// Adds the ledger's routes.
pub fn add(ledger: &Rc<Ledger>, table: &mut RouteTable) {
    use Access::{Authenticated, Public, Scope};
    use ron_proto::token::scope::LEDGER_INGEST;
    let l = ledger;
    table.add(l, Method::Post, "/ingest", Scope(LEDGER_INGEST), Shed::Yes, ingest);
    table.add(l, Method::Get, "/roots", Public, Shed::Yes, roots);
    table.add(l, Method::Get, "/v1/ledger/balance", Authenticated, Shed::Yes, balance);
    table.add(l, Method::Get, "/v1/ledger/proof/inclusion", Authenticated, Shed::Yes, inclusion);
    table.add(l, Method::Get, "/v1/ledger/proof/consistency", Authenticated, Shed::Yes, consistency);
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IngestEntry<'a> {
    id: &'a str,
    kind: &'a str,
    account: &'a str,
    #[serde(borrow)]
    asset: Option<&'a str>,
    amount: Amount,
    ts: Option<u64>,
    #[serde(borrow)]
    memo: Option<&'a str>,
}

/// A request's batch, its strings borrowed from the body's copy.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IngestBody<'a> {
    #[serde(borrow)]
    batch: Vec<IngestEntry<'a>>,
    #[serde(borrow)]
    idem_id: Option<&'a str>,
}

#[derive(Serialize)]
struct IngestAnswer {
    accepted: bool,
    seq_start: u64,
    seq_end: u64,
    new_root: String,
    reasons: [Reason; 0],
}

fn parse_entry(entry: IngestEntry<'_>) -> Result<EntryRef<'_>, String> {
    let kind =
        EntryKind::parse(entry.kind).ok_or_else(|| format!("unknown kind {}", entry.kind))?;
    let amount = entry.amount.value()?;
    let entry = EntryRef {
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
fn conservation_violations(entries: &[EntryRef<'_>]) -> Vec<Reason> {
    let mut sums: BTreeMap<&str, (u128, u128, u32)> = BTreeMap::new();
    for (idx, entry) in entries.iter().enumerate() {
        let asset = entry.asset.unwrap_or("");
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

/// A batch that passed every check, ready to commit.
struct Batch {
    idem: Option<IdKey>,
    append: Append,
    /// The items each owner reserves, by owner.
    owners: BTreeMap<usize, Vec<Item>>,
}

/// `POST /ingest`: validates a batch, commits it atomically through the
/// committer and answers once it is durable.
fn ingest(ledger: &Rc<Ledger>, request: &Request<'_>, _: &Params<'_>) -> Handled {
    if ledger.core.log.in_safe_mode() {
        return Handled::Now(degraded(None));
    }
    let batch = match validate(ledger, request) {
        Ok(batch) => batch,
        Err(reply) => return Handled::Now(reply),
    };
    let ledger = ledger.clone();
    Handled::Later(Box::pin(async move { commit(&ledger, batch).await }))
}

/// The stateless checks of an ingest request: body, ids, limits, entries,
/// conservation; and the append it makes.
fn validate(ledger: &Ledger, request: &Request<'_>) -> Result<Batch, Reply> {
    let mut body_copy = Vec::new();
    let body: IngestBody<'_> = request.json_in(&mut body_copy)?;
    let idem = match &body.idem_id {
        Some(idem_id) if idem_id.is_empty() || idem_id.len() > INGEST_IDEM_ID_BYTES_MAX => {
            return Err(Reply::error(
                ErrorCode::BadRequest,
                format!("idem_id must be 1..={INGEST_IDEM_ID_BYTES_MAX} bytes"),
            ));
        }
        Some(idem_id) => Some(id_key(&format!("idem:{idem_id}"))),
        None => None,
    };
    let batch_max = ledger.core.config.ledger.batch_entries_max as usize;
    if body.batch.is_empty() || body.batch.len() > batch_max {
        return Err(Reply::error(
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
        return Err(Reply::rejected(ErrorCode::BadRequest, "invalid entries", reasons));
    }
    let violations = conservation_violations(&entries);
    if !violations.is_empty() {
        return Err(Reply::rejected(
            ErrorCode::LimitsExceeded,
            "the batch does not conserve every asset",
            violations,
        ));
    }
    let mut items = Vec::with_capacity(entries.len() * 64);
    let mut scratch = Vec::with_capacity(ron_proto::ledger::ENTRY_BYTES_MAX);
    let mut owners: BTreeMap<usize, Vec<Item>> = BTreeMap::new();
    let mut parts = Vec::with_capacity(entries.len());
    for (idx, entry) in entries.iter().enumerate() {
        scratch.clear();
        entry.encode(&mut scratch);
        items.extend_from_slice(&(scratch.len() as u16).to_le_bytes());
        items.extend_from_slice(&scratch);
        let owner = ledger.core.owner(entry.account.as_bytes());
        owners.entry(owner).or_default().push(Item::of(idx as u32, *entry));
        parts.push(Part { item: idx as u32, shard: owner as u32 });
    }
    let unique = entries.iter().map(|e| id_key(e.id)).collect();
    let append = Append { items, count: entries.len() as u32, unique, idem, parts };
    Ok(Batch { idem, append, owners })
}

/// Commits a validated batch: a replay gets the original answer and
/// touches nothing; otherwise the owners reserve the debits, the committer
/// orders and persists and has every owner apply its entries before it
/// answers, and a batch that does not commit releases instead.
async fn commit(ledger: &Rc<Ledger>, batch: Batch) -> Reply {
    let Batch { idem, append, owners } = batch;
    if let Some(key) = idem {
        match ledger.core.log.call(LogCall::Idem { key }).await {
            Ok(LogAnswer::Replayed { seq_start, seq_end, root }) => {
                return accepted(seq_start, seq_end, &root);
            }
            Ok(LogAnswer::Unknown) => {}
            Ok(other) => panic!("idem lookup answered with {other:?}"),
            Err(error) => return link_failure(error),
        }
    }
    // Each owner reserves only while the request still waits (the call
    // carries its deadline) and every answer is awaited, so no reservation
    // is left without this request to commit or release it.
    let deadline = ledger.core.call_deadline();
    let mut reserved = Vec::with_capacity(owners.len());
    for (owner, items) in &owners {
        let call = Call::Reserve { items: items.clone(), deadline };
        let refused = match ledger.call_waiting(*owner, call, Wait::Answer).await {
            Ok(Answer::Reserved(Ok(()))) => {
                reserved.push(*owner);
                continue;
            }
            Ok(Answer::Reserved(Err(reasons))) => {
                Reply::rejected(ErrorCode::InsufficientFunds, "insufficient funds", reasons)
            }
            Ok(Answer::Late) => mesh_failure(MeshError::TimedOut),
            Ok(other) => panic!("reserve answered with {other:?}"),
            Err(error) => mesh_failure(error),
        };
        release(ledger, &owners, &reserved).await;
        return refused;
    }
    let answer = ledger.core.log.call(LogCall::Append(append)).await;
    if !matches!(answer, Ok(LogAnswer::Appended { .. })) {
        release(ledger, &owners, &reserved).await;
    }
    match answer {
        Ok(
            LogAnswer::Appended { seq_start, seq_end, root }
            | LogAnswer::Replayed { seq_start, seq_end, root },
        ) => accepted(seq_start, seq_end, &root),
        Ok(LogAnswer::Duplicate { indices }) => Reply::rejected(
            ErrorCode::Conflict,
            "entry ids already committed",
            indices.into_iter().map(|idx| Reason { idx, reason: "duplicate_id".to_owned() }).collect(),
        ),
        Ok(LogAnswer::Degraded { reason }) => degraded(Some(&reason)),
        Ok(other) => panic!("append answered with {other:?}"),
        Err(error) => link_failure(error),
    }
}

fn accepted(seq_start: u64, seq_end: u64, root: &Hash) -> Reply {
    let answer =
        IngestAnswer { accepted: true, seq_start, seq_end, new_root: to_hex(root), reasons: [] };
    Reply::json_owned(200, simd_json::to_vec(&answer).expect("serializing"))
}

/// Gives back what the owners reserved for a request that did not commit.
/// A busy owner is asked again (`RELEASE_RETRY`); a release that cannot be
/// sent is logged (its reservation stays until a restart).
async fn release(ledger: &Rc<Ledger>, owners: &BTreeMap<usize, Vec<Item>>, reserved: &[usize]) {
    for owner in reserved {
        let outcome = RELEASE_RETRY
            .run(
                || {
                    let call = Call::Release { items: owners[owner].clone() };
                    ledger.call_waiting(*owner, call, Wait::Answer)
                },
                |error| *error == MeshError::Busy,
            )
            .await;
        match outcome {
            Outcome::Done(Answer::Done) => {}
            Outcome::Done(other) => panic!("release answered with {other:?}"),
            Outcome::Failed(error) | Outcome::GaveUp(error) => {
                tracing::error!(owner, ?error, "an owner did not release a reservation");
            }
        }
    }
}

#[derive(Serialize)]
struct BalanceAnswer {
    account: String,
    asset: String,
    balance: String,
    reserved: String,
}

/// `GET /v1/ledger/balance?account=A&asset=X`: an account's balance from
/// its owner shard.
fn balance(ledger: &Rc<Ledger>, request: &Request<'_>, _: &Params<'_>) -> Handled {
    let (account, asset) = match (request.query("account"), request.query("asset")) {
        (Ok(Some(account)), Ok(asset)) if !account.is_empty() => {
            (account.into_owned(), asset.map(|a| a.into_owned()).unwrap_or_default())
        }
        (Err(reply), _) | (_, Err(reply)) => return Handled::Now(reply),
        _ => return Handled::Now(Reply::error(ErrorCode::BadRequest, "account is required")),
    };
    let owner = ledger.core.owner(account.as_bytes());
    let ledger = ledger.clone();
    Handled::Later(Box::pin(async move {
        let call = Call::Balance { account: account.clone(), asset: asset.clone() };
        match ledger.call(owner, call).await {
            Ok(Answer::Balance(found)) => {
                let answer = BalanceAnswer {
                    account,
                    asset,
                    balance: found.balance.to_string(),
                    reserved: found.reserved.to_string(),
                };
                Reply::json_owned(200, simd_json::to_vec(&answer).expect("serializing"))
            }
            Ok(other) => panic!("balance answered with {other:?}"),
            Err(error) => mesh_failure(error),
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
fn roots(ledger: &Rc<Ledger>, request: &Request<'_>, _: &Params<'_>) -> Handled {
    let since = match number_param(request, "since") {
        Ok(since) => since.unwrap_or(0),
        Err(reply) => return Handled::Now(reply),
    };
    let ledger = ledger.clone();
    Handled::Later(Box::pin(async move {
        match ledger.core.log.call(LogCall::Roots { since }).await {
            Ok(LogAnswer::Roots { items, next }) => {
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
fn inclusion(ledger: &Rc<Ledger>, request: &Request<'_>, _: &Params<'_>) -> Handled {
    let (seq, tree_size) = match required_pair(request, "seq", "root_seq") {
        Ok(pair) => pair,
        Err(reply) => return Handled::Now(reply),
    };
    let ledger = ledger.clone();
    Handled::Later(Box::pin(async move {
        match ledger.core.log.call(LogCall::Inclusion { seq, tree_size }).await {
            Ok(LogAnswer::Inclusion { leaf, path, root }) => {
                let answer = InclusionAnswer {
                    seq,
                    tree_size,
                    leaf_hash: to_hex(&leaf),
                    path: hexes(&path),
                    root: to_hex(&root),
                };
                Reply::json_owned(200, simd_json::to_vec(&answer).expect("serializing"))
            }
            Ok(LogAnswer::OutOfRange { durable }) => out_of_range(durable),
            Ok(other) => panic!("inclusion answered with {other:?}"),
            Err(error) => link_failure(error),
        }
    }))
}

/// `GET /v1/ledger/proof/consistency?from=A&to=B`.
fn consistency(ledger: &Rc<Ledger>, request: &Request<'_>, _: &Params<'_>) -> Handled {
    let (from, to) = match required_pair(request, "from", "to") {
        Ok(pair) => pair,
        Err(reply) => return Handled::Now(reply),
    };
    let ledger = ledger.clone();
    Handled::Later(Box::pin(async move {
        match ledger.core.log.call(LogCall::Consistency { from, to }).await {
            Ok(LogAnswer::Consistency { path, first_root, second_root }) => {
                let answer = ConsistencyAnswer {
                    from,
                    to,
                    from_root: to_hex(&first_root),
                    to_root: to_hex(&second_root),
                    path: hexes(&path),
                };
                Reply::json_owned(200, simd_json::to_vec(&answer).expect("serializing"))
            }
            Ok(LogAnswer::OutOfRange { durable }) => out_of_range(durable),
            Ok(other) => panic!("consistency answered with {other:?}"),
            Err(error) => link_failure(error),
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The batch borrows its strings from the body's copy, escaped ones
    /// included (simd-json unescapes them in place).
    #[test]
    fn an_ingest_body_borrows_its_strings_escaped_or_not() {
        let mut body = br#"{"batch":[{"id":"e\u0031\"","kind":"Mint","account":"a\\b",
            "asset":"roc","amount":"7","memo":"\u00e9"}],"idem_id":"k\n"}"#
            .to_vec();
        let parsed: IngestBody<'_> = simd_json::serde::from_slice(&mut body).unwrap();
        let entry = parse_entry(parsed.batch.into_iter().next().unwrap()).unwrap();
        assert_eq!((entry.id, entry.account, entry.asset), ("e1\"", "a\\b", Some("roc")));
        assert_eq!((entry.amount, entry.memo, parsed.idem_id), (7, Some("é"), Some("k\n")));
    }
}
