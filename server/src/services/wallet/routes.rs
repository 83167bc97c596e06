//! The wallet's routes (SPEC §5): issue, transfer, burn, hold, capture,
//! release, balance and receipts.

use super::{Answer, Call, Wallet};
use crate::clock::unix_now_ms;
use crate::core::mesh::{MeshError, Wait};
use crate::http::reply::{degraded, link_failure, mesh_failure};
use crate::http::{Access, Amount, Handled, Params, Reply, Request, RouteTable, Shed};
use crate::limits::{HOLD_TIMEOUT_S_MAX, TXID_TEXT_BYTES_MAX};
use crate::log::LogAnswer;
use crate::service::Service;
use crate::services::passport::access::{Facts, Presented};
use ron_proto::ErrorCode;
use ron_proto::http::Method;
use ron_proto::token::scope;
use ron_proto::wallet::{
    self, CanonicalRequest, HoldId, OpKind, Placement, WalletOp, hold_route, valid_account,
    valid_idempotency_key, valid_memo,
};
use ron_shards::wallet::{Funds, Rejection, Reserved, recorder};
use serde::Deserialize;
use std::borrow::Cow;
use std::rc::Rc;

/// Adds the wallet's routes.
pub fn add(wallet: &Rc<Wallet>, table: &mut RouteTable) {
    use Access::ScopeWithFacts as Facts;
    use scope::{WALLET_BURN, WALLET_ISSUE, WALLET_READ, WALLET_TRANSFER};
    let w = wallet;
    table.add(w, Method::Get, "/v1/balance", Facts(WALLET_READ), Shed::Yes, balance);
    table.add(w, Method::Post, "/v1/issue", Facts(WALLET_ISSUE), Shed::Yes, issue);
    table.add(w, Method::Post, "/v1/transfer", Facts(WALLET_TRANSFER), Shed::Yes, transfer);
    table.add(w, Method::Post, "/v1/burn", Facts(WALLET_BURN), Shed::Yes, burn);
    table.add(w, Method::Post, "/v1/hold", Facts(WALLET_TRANSFER), Shed::Yes, hold);
    table.add(w, Method::Post, "/v1/capture", Facts(WALLET_TRANSFER), Shed::Yes, capture);
    table.add(w, Method::Post, "/v1/release", Facts(WALLET_TRANSFER), Shed::Yes, release_hold);
    table.add(w, Method::Get, "/v1/tx/{txid}", Facts(WALLET_READ), Shed::Yes, tx);
    let (transfers, issues) = (super::batch::transfers, super::batch::issues);
    table.add(w, Method::Post, "/v1/transfers", Facts(WALLET_TRANSFER), Shed::Yes, transfers);
    table.add(w, Method::Post, "/v1/issues", Facts(WALLET_ISSUE), Shed::Yes, issues);
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IssueBody {
    to: String,
    asset: String,
    amount_minor: Amount,
    memo: Option<String>,
    idempotency_key: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TransferBody {
    from: String,
    to: String,
    asset: String,
    amount_minor: Amount,
    nonce: u64,
    memo: Option<String>,
    idempotency_key: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BurnBody {
    from: String,
    asset: String,
    amount_minor: Amount,
    nonce: u64,
    memo: Option<String>,
    idempotency_key: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HoldBody {
    from: String,
    to: String,
    asset: String,
    amount_minor: Amount,
    nonce: u64,
    timeout_s: Option<u32>,
    memo: Option<String>,
    idempotency_key: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaptureBody {
    hold_id: String,
    amount_minor: Option<Amount>,
    nonce: u64,
    idempotency_key: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReleaseBody {
    hold_id: String,
    nonce: u64,
    idempotency_key: Option<String>,
}

pub(super) fn bad(message: impl Into<String>) -> Reply {
    Reply::error(ErrorCode::BadRequest, message.into())
}

fn account(name: &str, value: &str) -> Result<(), Reply> {
    if valid_account(value) {
        Ok(())
    } else {
        Err(bad(format!("{name} must be 1..=256 bytes of [A-Za-z0-9:/_-]")))
    }
}

fn asset(wallet: &Wallet, value: &str) -> Result<(), Reply> {
    if wallet.core.config.wallet.assets.iter().any(|a| a == value) {
        Ok(())
    } else {
        Err(bad(format!("unknown asset {value:?}")))
    }
}

fn amount(wallet: &Wallet, value: Amount) -> Result<u128, Reply> {
    let amount = value.value().map_err(|why| bad(format!("amount_minor: {why}")))?;
    let max = wallet.amount_max;
    if amount > max {
        return Err(Reply::error(
            ErrorCode::LimitsExceeded,
            format!("amount_minor {amount} is over the limit {max}"),
        ));
    }
    Ok(amount)
}

fn memo(value: Option<&str>) -> Result<(), Reply> {
    match value {
        Some(memo) if !valid_memo(memo) => {
            Err(bad("memo must be at most 256 bytes without control characters"))
        }
        _ => Ok(()),
    }
}

fn nonce(value: u64) -> Result<u64, Reply> {
    if value == 0 { Err(bad("nonce must be at least 1")) } else { Ok(value) }
}

/// The idempotency key: the header (`Idempotency-Key` or
/// `X-Idempotency-Key`), else the body's `idempotency_key`. Required.
fn idempotency_key(request: &Request<'_>, body: Option<String>) -> Result<String, Reply> {
    let header = request.head.idempotency_key.map(|span| span.of(request.raw));
    let key = match header {
        Some(bytes) => std::str::from_utf8(bytes).ok().map(str::to_owned),
        None => body,
    };
    match key {
        Some(key) if valid_idempotency_key(&key) => Ok(key),
        Some(_) => Err(bad("the idempotency key must be 1..=64 bytes of [A-Za-z0-9-_:.]")),
        None => Err(bad("an Idempotency-Key header (or idempotency_key) is required")),
    }
}

/// A validated write, ready for its scope shard.
pub(super) struct Write {
    pub(super) op: WalletOp,
    pub(super) scope_shard: usize,
    route_scope: &'static str,
}

impl Write {
    /// The write of `canonical`, made at `now_ms` (a batch's writes share
    /// one reading of the clock).
    fn new(
        wallet: &Wallet,
        canonical: CanonicalRequest<'_>,
        route_scope: &'static str,
        now_ms: u64,
    ) -> Write {
        let txid = canonical.txid();
        let hold_id = match canonical.kind {
            OpKind::Hold => {
                Some(wallet::hold_id(canonical.from.expect("a hold has a payer"), &txid))
            }
            _ => canonical.hold_id.copied(),
        };
        let scope_shard = match (canonical.kind, hold_id) {
            (OpKind::Capture | OpKind::Release, Some(id)) => {
                ron_proto::routing::owner_of_route(hold_route(&id), wallet.core.count)
            }
            _ => wallet.core.owner(canonical.idem_owner.as_bytes()),
        };
        let op = WalletOp {
            kind: canonical.kind,
            from: canonical.from.map(Into::into),
            to: canonical.to.map(Into::into),
            asset: canonical.asset.unwrap_or_default().into(),
            amount: canonical.amount.unwrap_or(0),
            nonce: canonical.nonce,
            hold_id,
            timeout_s: canonical.timeout_s,
            idem: Some(canonical.idem.into()),
            txid,
            ts_ms: now_ms,
        };
        Write { op, scope_shard, route_scope }
    }
}

/// The account a write acts for, for the token's caveats.
fn acting_account(op: &WalletOp) -> Option<&str> {
    match op.kind {
        OpKind::Issue => op.to.as_deref(),
        _ => op.from.as_deref(),
    }
}

/// What a write is about, for the token's caveats.
pub(super) fn facts(op: &WalletOp) -> Facts<'_> {
    Facts { account: acting_account(op), asset: Some(op.asset.as_str()), amount: Some(op.amount) }
}

pub(super) fn rejection(rejection: Rejection) -> Reply {
    match rejection {
        Rejection::InsufficientFunds { available, needed } => Reply::error(
            ErrorCode::InsufficientFunds,
            format!("insufficient funds: {available} available, {needed} needed"),
        ),
        Rejection::NonceConflict { expected, got } => Reply::error(
            ErrorCode::NonceConflict,
            format!("nonce conflict: expected {expected}, got {got}"),
        ),
        Rejection::IdempotencyConflict => Reply::error(
            ErrorCode::IdempotencyConflict,
            "the idempotency key was used for a different request",
        ),
        Rejection::InFlight => {
            busy_retry("the same request is being committed; retry for its receipt")
        }
        Rejection::PayerUnsettled => {
            busy_retry("earlier nonces of this payer are still being settled by a batch; retry")
        }
        Rejection::UnknownHold => Reply::error(ErrorCode::NotFound, "no open hold with that id"),
        Rejection::HoldResolved => {
            Reply::error(ErrorCode::Conflict, "the hold is already being resolved")
        }
        Rejection::LimitsExceeded(why) => Reply::error(ErrorCode::LimitsExceeded, why),
    }
}

/// 429 with `Retry-After: 1`: what is in the way ends within moments.
fn busy_retry(message: &'static str) -> Reply {
    let mut reply = Reply::error(ErrorCode::Busy, message);
    reply.retry_after_s = Some(1);
    reply
}

/// Validates the caveats (for captures and releases, once the hold is
/// known), reserves on the scope shard, commits, and answers the receipt.
fn submit(wallet: &Rc<Wallet>, request: &Request<'_>, write: Write) -> Handled {
    if wallet.core.log.in_safe_mode() {
        return Handled::Now(degraded(None));
    }
    let names_hold_only = matches!(write.op.kind, OpKind::Capture | OpKind::Release);
    if !names_hold_only {
        if let Err(reply) = wallet.passport.authorize(request, write.route_scope, facts(&write.op)) {
            return Handled::Now(reply);
        }
    }
    // A capture's or release's caveats are checked against the hold once
    // its shard has reserved it (and the reservation released if refused).
    let hold_check = names_hold_only.then(|| {
        (
            request.head.authorization.map(|span| span.of(request.raw).to_vec()),
            request.head.method.as_str(),
            request.path().to_owned(),
            request.socket,
        )
    });
    let wallet = wallet.clone();
    let Write { op, scope_shard, route_scope } = write;
    Handled::Later(Box::pin(async move {
        let op = match reserve(&wallet, scope_shard, op).await {
            Ok(Reserved::Replay(txid)) => {
                wallet.metrics.borrow_mut().idem_replays += 1;
                return match committed(&wallet, txid).await {
                    Ok((op, placement)) => Reply::json_owned(200, wallet::receipt(&op, &placement)),
                    Err(reply) => reply,
                };
            }
            Ok(Reserved::Commit(op)) => op,
            Err(reply) => return reply,
        };
        if let Some((authorization, method, path, socket)) = hold_check {
            let presented = Presented {
                authorization: authorization.as_deref(),
                method,
                path: &path,
                socket,
            };
            let checked = wallet.passport.authorize_presented(&presented, Some(route_scope), facts(&op));
            if let Err(reply) = checked {
                release(&wallet, scope_shard, &op).await;
                return reply;
            }
        }
        commit(&wallet, op, scope_shard).await
    }))
}

/// Reserves `op` on its scope shard while the request still waits: the
/// call carries the request's deadline and its answer is always awaited
/// (`Wait::Answer`), so a reservation is never made for a request that gave
/// up, nor left without one to commit or release it.
async fn reserve(wallet: &Rc<Wallet>, scope_shard: usize, op: WalletOp) -> Result<Reserved, Reply> {
    let deadline = wallet.core.call_deadline();
    let call = Call::Reserve { op: Box::new(op), now_ms: unix_now_ms(), deadline };
    match wallet.call_waiting(scope_shard, call, Wait::Answer).await {
        Ok(Answer::Reserved(Ok(reserved))) => Ok(reserved),
        Ok(Answer::Reserved(Err(refused))) => Err(rejection(refused)),
        Ok(Answer::Late) => Err(mesh_failure(MeshError::TimedOut)),
        Ok(other) => panic!("a wallet reservation answered with {other:?}"),
        Err(error) => Err(mesh_failure(error)),
    }
}

/// Commits a reserved operation and answers its receipt; a write that does
/// not commit gives its reservation back.
pub(super) async fn commit(wallet: &Rc<Wallet>, op: WalletOp, scope_shard: usize) -> Reply {
    match wallet.append(&op).await {
        Ok(LogAnswer::Appended { seq_start, root, .. }) => {
            let placement = Placement { seq: seq_start, root };
            Reply::json_owned(200, wallet::receipt(&op, &placement))
        }
        Ok(LogAnswer::Degraded { reason }) => {
            release(wallet, scope_shard, &op).await;
            degraded(Some(&reason))
        }
        Ok(other) => panic!("a wallet append answered with {other:?}"),
        Err(error) => {
            release(wallet, scope_shard, &op).await;
            link_failure(error)
        }
    }
}

/// Gives back a reservation (a settlement of one; a busy shard is asked
/// again).
async fn release(wallet: &Rc<Wallet>, scope_shard: usize, op: &WalletOp) {
    super::batch::settle(wallet, vec![(scope_shard, op.clone())], Vec::new()).await;
}

macro_rules! body {
    ($request:expr, $ty:ty) => {
        match $request.json::<$ty>() {
            Ok(body) => body,
            Err(reply) => return Handled::Now(reply),
        }
    };
}

macro_rules! check {
    ($result:expr) => {
        match $result {
            Ok(value) => value,
            Err(reply) => return Handled::Now(reply),
        }
    };
}

/// What the four payment routes carry, whichever body it came from.
/// Its strings are borrowed from a batch's body, owned from a single
/// route's.
pub(super) struct Payment<'a> {
    pub(super) kind: OpKind,
    pub(super) from: Option<Cow<'a, str>>,
    pub(super) to: Option<Cow<'a, str>>,
    pub(super) asset: Cow<'a, str>,
    pub(super) amount_minor: Amount,
    pub(super) nonce: Option<u64>,
    pub(super) timeout_s: Option<u32>,
    pub(super) memo: Option<Cow<'a, str>>,
    pub(super) idempotency_key: Option<String>,
}

/// Validates a payment (issue, transfer, burn, hold) and submits it.
fn payment(
    wallet: &Rc<Wallet>,
    request: &Request<'_>,
    mut payment: Payment<'_>,
    route_scope: &'static str,
) -> Handled {
    let key = check!(idempotency_key(request, payment.idempotency_key.take()));
    let write = check!(checked_payment(wallet, payment, &key, route_scope, unix_now_ms()));
    submit(wallet, request, write)
}

/// A payment (issue, transfer, burn, hold) checked by the stateless rules,
/// as a write for its scope shard; its idempotency key is `key`.
pub(super) fn checked_payment(
    wallet: &Wallet,
    payment: Payment<'_>,
    key: &str,
    route_scope: &'static str,
    now_ms: u64,
) -> Result<Write, Reply> {
    for (name, value) in [("from", payment.from.as_deref()), ("to", payment.to.as_deref())] {
        if let Some(value) = value {
            account(name, value)?;
        }
    }
    if payment.from.is_some() && payment.from == payment.to {
        return Err(bad("from and to must differ"));
    }
    asset(wallet, &payment.asset)?;
    let amount = amount(wallet, payment.amount_minor)?;
    let nonce = payment.nonce.map(nonce).transpose()?;
    memo(payment.memo.as_deref())?;
    if payment.timeout_s.is_some_and(|t| t == 0 || t > HOLD_TIMEOUT_S_MAX) {
        return Err(Reply::error(
            ErrorCode::LimitsExceeded,
            format!("timeout_s must be 1..={HOLD_TIMEOUT_S_MAX}"),
        ));
    }
    if !valid_idempotency_key(key) {
        return Err(bad("the idempotency key must be 1..=64 bytes of [A-Za-z0-9-_:.]"));
    }
    let payer =
        payment.from.as_deref().or(payment.to.as_deref()).expect("a payment names an account");
    let canonical = CanonicalRequest {
        kind: payment.kind,
        from: payment.from.as_deref(),
        to: payment.to.as_deref(),
        asset: Some(&payment.asset),
        amount: Some(amount),
        nonce,
        hold_id: None,
        timeout_s: payment.timeout_s,
        memo: payment.memo.as_deref(),
        idem_owner: payer,
        idem: key,
    };
    Ok(Write::new(wallet, canonical, route_scope, now_ms))
}

/// `POST /v1/issue`.
fn issue(wallet: &Rc<Wallet>, request: &Request<'_>, _: &Params<'_>) -> Handled {
    let b = body!(request, IssueBody);
    let payment_of = Payment {
        kind: OpKind::Issue,
        from: None,
        to: Some(b.to.into()),
        asset: b.asset.into(),
        amount_minor: b.amount_minor,
        nonce: None,
        timeout_s: None,
        memo: b.memo.map(Cow::Owned),
        idempotency_key: b.idempotency_key,
    };
    payment(wallet, request, payment_of, scope::WALLET_ISSUE)
}

/// `POST /v1/transfer`.
fn transfer(wallet: &Rc<Wallet>, request: &Request<'_>, _: &Params<'_>) -> Handled {
    let b = body!(request, TransferBody);
    let payment_of = Payment {
        kind: OpKind::Transfer,
        from: Some(b.from.into()),
        to: Some(b.to.into()),
        asset: b.asset.into(),
        amount_minor: b.amount_minor,
        nonce: Some(b.nonce),
        timeout_s: None,
        memo: b.memo.map(Cow::Owned),
        idempotency_key: b.idempotency_key,
    };
    payment(wallet, request, payment_of, scope::WALLET_TRANSFER)
}

/// `POST /v1/burn`.
fn burn(wallet: &Rc<Wallet>, request: &Request<'_>, _: &Params<'_>) -> Handled {
    let b = body!(request, BurnBody);
    let payment_of = Payment {
        kind: OpKind::Burn,
        from: Some(b.from.into()),
        to: None,
        asset: b.asset.into(),
        amount_minor: b.amount_minor,
        nonce: Some(b.nonce),
        timeout_s: None,
        memo: b.memo.map(Cow::Owned),
        idempotency_key: b.idempotency_key,
    };
    payment(wallet, request, payment_of, scope::WALLET_BURN)
}

/// `POST /v1/hold`.
fn hold(wallet: &Rc<Wallet>, request: &Request<'_>, _: &Params<'_>) -> Handled {
    let b = body!(request, HoldBody);
    let payment_of = Payment {
        kind: OpKind::Hold,
        from: Some(b.from.into()),
        to: Some(b.to.into()),
        asset: b.asset.into(),
        amount_minor: b.amount_minor,
        nonce: Some(b.nonce),
        timeout_s: b.timeout_s,
        memo: b.memo.map(Cow::Owned),
        idempotency_key: b.idempotency_key,
    };
    payment(wallet, request, payment_of, scope::WALLET_TRANSFER)
}

fn hold_id(text: &str) -> Result<HoldId, Reply> {
    wallet::parse_hold_id(text).ok_or_else(|| bad("hold_id must be h_ and 32 hex digits"))
}

/// Validates a capture or release, which names only its hold, and submits
/// it.
fn resolution(
    wallet: &Rc<Wallet>,
    request: &Request<'_>,
    kind: OpKind,
    hold_text: &str,
    amount_minor: Option<Amount>,
    nonce_value: u64,
    body_key: Option<String>,
) -> Handled {
    let id = check!(hold_id(hold_text));
    let amount = match amount_minor {
        Some(value) => Some(check!(amount(wallet, value))),
        None => None,
    };
    let nonce = check!(nonce(nonce_value));
    let key = check!(idempotency_key(request, body_key));
    // The key's scope account is the hold's payer, which only its shard
    // knows; the hold id stands for it in the txid.
    let owner = format!("hold:{hold_text}");
    let canonical = CanonicalRequest {
        kind,
        from: None,
        to: None,
        asset: None,
        amount,
        nonce: Some(nonce),
        hold_id: Some(&id),
        timeout_s: None,
        memo: None,
        idem_owner: &owner,
        idem: &key,
    };
    submit(wallet, request, Write::new(wallet, canonical, scope::WALLET_TRANSFER, unix_now_ms()))
}

/// `POST /v1/capture`: all of the hold, or `amount_minor` of it (the rest
/// returns to `from`).
fn capture(wallet: &Rc<Wallet>, request: &Request<'_>, _: &Params<'_>) -> Handled {
    let b = body!(request, CaptureBody);
    resolution(
        wallet,
        request,
        OpKind::Capture,
        &b.hold_id,
        b.amount_minor,
        b.nonce,
        b.idempotency_key,
    )
}

/// `POST /v1/release`.
fn release_hold(wallet: &Rc<Wallet>, request: &Request<'_>, _: &Params<'_>) -> Handled {
    let b = body!(request, ReleaseBody);
    resolution(wallet, request, OpKind::Release, &b.hold_id, None, b.nonce, b.idempotency_key)
}

/// `{account, asset, amount_minor, as_of_height, stale_ms, as_of_seq}`:
/// the original svc-wallet's fields (its height is the log's seq, and the
/// answer is never stale: the owner has applied everything durable), then
/// ours. Accounts and assets were validated (no character in them needs
/// escaping).
fn write_balance(out: &mut Vec<u8>, account: &str, asset: &str, funds: Funds, as_of_seq: u64) {
    let (mut number, mut seq) = (itoa::Buffer::new(), itoa::Buffer::new());
    let seq = seq.format(as_of_seq);
    out.extend_from_slice(b"{\"account\":\"");
    out.extend_from_slice(account.as_bytes());
    out.extend_from_slice(b"\",\"asset\":\"");
    out.extend_from_slice(asset.as_bytes());
    out.extend_from_slice(b"\",\"amount_minor\":\"");
    out.extend_from_slice(number.format(funds.balance).as_bytes());
    out.extend_from_slice(b"\",\"as_of_height\":");
    out.extend_from_slice(seq.as_bytes());
    out.extend_from_slice(b",\"stale_ms\":0,\"as_of_seq\":");
    out.extend_from_slice(seq.as_bytes());
    out.push(b'}');
}

/// `GET /v1/balance?account=&asset=`: from the owner, once it has applied
/// everything durable.
fn balance(wallet: &Rc<Wallet>, request: &Request<'_>, _: &Params<'_>) -> Handled {
    let (account_id, asset_name) = match (request.query("account"), request.query("asset")) {
        (Ok(Some(a)), Ok(Some(b))) => (a, b),
        (Err(reply), _) | (_, Err(reply)) => return Handled::Now(reply),
        _ => return Handled::Now(bad("account and asset are required")),
    };
    check!(account("account", &account_id));
    check!(asset(wallet, &asset_name));
    let facts = Facts { account: Some(&account_id), asset: Some(&asset_name), amount: None };
    check!(wallet.passport.authorize(request, scope::WALLET_READ, facts));
    let core = &wallet.core;
    let owner = core.owner(account_id.as_bytes());
    // Owned here and caught up (the usual case): answer at once, from the
    // shard's scratch buffer (a hot read allocates nothing).
    if owner == core.id && core.log.is_caught_up() {
        let funds = wallet.state.borrow().funds(&account_id, &asset_name);
        let mut scratch = core.scratch.borrow_mut();
        scratch.clear();
        write_balance(&mut scratch, &account_id, &asset_name, funds, core.log.applied.seq());
        return Handled::Now(Reply::json_scratch(200));
    }
    let answer = |account: &str, asset: &str, funds: Funds, as_of_seq: u64| {
        let mut body = Vec::with_capacity(128 + account.len());
        write_balance(&mut body, account, asset, funds, as_of_seq);
        Reply::json_owned(200, body)
    };
    let (account_id, asset_name) = (account_id.into_owned(), asset_name.into_owned());
    let wallet = wallet.clone();
    Handled::Later(Box::pin(async move {
        let call = Call::Balance { account: account_id.clone(), asset: asset_name.clone() };
        match wallet.call(owner, call).await {
            Ok(Answer::Balance { funds, as_of_seq }) => {
                answer(&account_id, &asset_name, funds, as_of_seq)
            }
            Ok(other) => panic!("a wallet balance answered with {other:?}"),
            Err(error) => mesh_failure(error),
        }
    }))
}

/// The committed operation of `txid` and where it went, from the shard
/// that keeps its receipt.
async fn committed(wallet: &Rc<Wallet>, txid: wallet::TxId) -> Result<(WalletOp, Placement), Reply> {
    let keeper = recorder(&txid, wallet.core.count);
    match wallet.call(keeper, Call::Receipt { txid }).await {
        Ok(Answer::Receipt(Some(found))) => Ok(*found),
        Ok(Answer::Receipt(None)) => {
            Err(Reply::error(ErrorCode::NotFound, "no transaction with that id"))
        }
        Ok(Answer::Busy) => Err(busy_retry("the workers are full; retry")),
        Ok(other) => panic!("a receipt lookup answered with {other:?}"),
        Err(error) => Err(mesh_failure(error)),
    }
}

/// `GET /v1/tx/{txid}`: the receipt, from the shard that keeps it.
/// A token restricted to an account may read receipts that account is
/// `from` or `to` of; it is checked once the receipt is found.
/// Like the original svc-wallet, an id of 1..=80 printable ASCII bytes is
/// looked up (one of another shape is simply not found: 404) and only
/// anything else is refused with 400.
fn tx(wallet: &Rc<Wallet>, request: &Request<'_>, params: &Params<'_>) -> Handled {
    let text = params.get(0).unwrap_or("");
    if text.is_empty() || text.len() > TXID_TEXT_BYTES_MAX || !text.bytes().all(|b| b.is_ascii_graphic()) {
        return Handled::Now(bad(format!("txid must be 1..={TXID_TEXT_BYTES_MAX} printable ASCII bytes")));
    }
    let txid = wallet::parse_txid(text);
    let authorization = request.head.authorization.map(|span| span.of(request.raw).to_vec());
    let (method, path, socket) =
        (request.head.method.as_str(), request.path().to_owned(), request.socket);
    let wallet = wallet.clone();
    Handled::Later(Box::pin(async move {
        let presented = Presented {
            authorization: authorization.as_deref(),
            method,
            path: &path,
            socket,
        };
        let found = match txid {
            Some(txid) => committed(&wallet, txid).await,
            None => Err(Reply::error(ErrorCode::NotFound, "no transaction with that id")),
        };
        let (op, placement) = match found {
            Ok(found) => found,
            Err(reply) => {
                // Who is not authenticated learns nothing, not even whether
                // the transaction exists.
                let check = wallet.passport.authorize_presented(&presented, Some(scope::WALLET_READ), Facts::default());
                return match check {
                    Err(refused) if refused.status == 401 => refused,
                    _ => reply,
                };
            }
        };
        let mut verdict = Ok(());
        for account in [op.from.as_deref(), op.to.as_deref()].into_iter().flatten() {
            let facts =
                Facts { account: Some(account), asset: Some(op.asset.as_str()), amount: None };
            verdict = wallet.passport.authorize_presented(&presented, Some(scope::WALLET_READ), facts);
            if verdict.is_ok() {
                break;
            }
        }
        match verdict {
            Ok(()) => Reply::json_owned(200, wallet::receipt(&op, &placement)),
            Err(reply) => reply,
        }
    }))
}

/// What an issue made for another service came to.
#[derive(Debug)]
pub enum Issued {
    /// Committed now: its receipt.
    Committed(Vec<u8>),
    /// Committed before with the same key and body: its receipt again.
    Replayed(Vec<u8>),
    /// Not committed: the answer `POST /v1/issue` would have given.
    Refused(Reply),
}

/// An issue made for another service (the rewarder's emission): the
/// operation `POST /v1/issue` makes for this body and idempotency key —
/// the same checks, txid, reservation, commit and receipt — without an
/// HTTP request (the caller checked its own scope). An operation committed
/// before is found by its txid, however long ago (the idempotency records
/// expire; receipts do not).
pub async fn issue_for(
    wallet: &Rc<Wallet>,
    to: &str,
    asset_name: &str,
    amount_minor: u128,
    memo_text: &str,
    key: &str,
) -> Issued {
    let checked = account("to", to)
        .and_then(|()| asset(wallet, asset_name))
        .and_then(|()| amount(wallet, Amount::Text(Some(amount_minor))))
        .and_then(|_| memo(Some(memo_text)));
    if let Err(reply) = checked {
        return Issued::Refused(reply);
    }
    if !valid_idempotency_key(key) {
        return Issued::Refused(bad("the idempotency key must be 1..=64 bytes of [A-Za-z0-9-_:.]"));
    }
    if wallet.core.log.in_safe_mode() {
        return Issued::Refused(degraded(None));
    }
    let canonical = CanonicalRequest {
        kind: OpKind::Issue,
        from: None,
        to: Some(to),
        asset: Some(asset_name),
        amount: Some(amount_minor),
        nonce: None,
        hold_id: None,
        timeout_s: None,
        memo: Some(memo_text),
        idem_owner: to,
        idem: key,
    };
    if let Ok((op, placement)) = committed(wallet, canonical.txid()).await {
        return Issued::Replayed(wallet::receipt(&op, &placement));
    }
    let Write { op, scope_shard, .. } =
        Write::new(wallet, canonical, scope::WALLET_ISSUE, unix_now_ms());
    let op = match reserve(wallet, scope_shard, op).await {
        Ok(Reserved::Replay(txid)) => {
            wallet.metrics.borrow_mut().idem_replays += 1;
            return match committed(wallet, txid).await {
                Ok((op, placement)) => Issued::Replayed(wallet::receipt(&op, &placement)),
                Err(reply) => Issued::Refused(reply),
            };
        }
        Ok(Reserved::Commit(op)) => op,
        Err(reply) => return Issued::Refused(reply),
    };
    let reply = commit(wallet, op, scope_shard).await;
    match reply.body {
        crate::http::reply::Body::Owned(receipt) if reply.status == 200 => Issued::Committed(receipt),
        _ => Issued::Refused(reply),
    }
}
